//! [`Value`] → PostgreSQL text input.
//!
//! Owns the text the sink hands to PostgreSQL's input functions (as text
//! parameters cast to the column type, or in COPY): the inverse of the
//! source's text codec. Every value must come back bit-for-bit once the
//! target parses it, so this module never rounds, reformats dates or picks
//! a "nicer" notation that the input function would read differently.
//! Pure and I/O-free.

use std::fmt::Write as _;

use ferry_pipeline::value::Value;

/// The text PostgreSQL's input function for the value's type reads back
/// exactly; `None` for [`Value::Null`] (SQL NULL, not a string).
///
/// Arrays become array literals in which every non-null element is
/// double-quoted, so that no element text (`NULL`, empty, spaces, commas,
/// braces) can be mistaken for syntax.
pub fn to_pg_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => if *b { "t" } else { "f" }.to_owned(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => float_text(*f),
        Value::Numeric(n) => n.to_string(),
        Value::Text(s) | Value::Json(s) | Value::Temporal(_, s) => s.clone(),
        // Display is the hyphenated lowercase form uuid_in reads.
        Value::Uuid(u) => u.to_string(),
        Value::Bytes(b) => bytea_hex(b),
        Value::Array(items) => {
            let mut out = String::new();
            write_array(&mut out, items);
            out
        }
    })
}

/// Shortest text that reads back to the same f64 (Rust's formatting is
/// shortest round-trip, and float8in/float4in round correctly).
///
/// Plain notation for everyday magnitudes; outside them Rust's `Display`
/// would pad to hundreds of digits (`1e300` as `1000…000`), still exact
/// but bulky, so switch to scientific (`1e300`, `5e-324`), which float8in
/// accepts too. Specials use PostgreSQL's spellings, not Rust's `inf`.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else if f == 0.0 || (1e-5..1e17).contains(&f.abs()) {
        // `-0` keeps the sign: float8in reads it as negative zero.
        format!("{f}")
    } else {
        format!("{f:e}")
    }
}

/// bytea hex format: `\x` then two lowercase hex digits per byte.
fn bytea_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + 2 * bytes.len());
    out.push_str("\\x");
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn write_array(out: &mut String, items: &[Value]) {
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Array(sub) => write_array(out, sub),
            other => match to_pg_text(other) {
                None => out.push_str("NULL"),
                Some(text) => {
                    out.push('"');
                    for c in text.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                }
            },
        }
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_pipeline::value::{Numeric, TemporalKind};

    fn t(v: Value) -> String {
        to_pg_text(&v).expect("not null")
    }

    fn txt(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    #[test]
    fn null_is_none() {
        assert_eq!(to_pg_text(&Value::Null), None);
    }

    #[test]
    fn scalars() {
        assert_eq!(t(Value::Bool(true)), "t");
        assert_eq!(t(Value::Bool(false)), "f");
        assert_eq!(t(Value::Int(i64::MIN)), "-9223372036854775808");
        assert_eq!(t(Value::Int(0)), "0");
        assert_eq!(t(txt("")), "");
        assert_eq!(t(txt("ab   ")), "ab   ");
        assert_eq!(t(txt("a\"b\\c\n{NULL}")), "a\"b\\c\n{NULL}");
        assert_eq!(
            t(Value::Json(r#"{"b": 1,  "a": [1.0]}"#.into())),
            r#"{"b": 1,  "a": [1.0]}"#
        );
        assert_eq!(
            t(Value::Temporal(
                TemporalKind::Interval,
                "1 year 2 mons -3 days 04:05:06.7".into()
            )),
            "1 year 2 mons -3 days 04:05:06.7"
        );
        assert_eq!(
            t(Value::Temporal(
                TemporalKind::Timestamptz,
                "infinity".into()
            )),
            "infinity"
        );
    }

    #[test]
    fn numerics() {
        for s in [
            "1.50",
            "-0.000000001",
            "0",
            "123456789012345678901234567890.000000000000000000001",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert_eq!(t(Value::Numeric(s.parse::<Numeric>().unwrap())), s);
        }
        // Scientific input comes out plain, which numeric_in reads as the
        // same value and scale.
        assert_eq!(t(Value::Numeric("1.5E+3".parse().unwrap())), "1500");
        assert_eq!(t(Value::Numeric("1E-2".parse().unwrap())), "0.01");
    }

    #[test]
    fn floats() {
        let cases: [(f64, &str); 16] = [
            (0.1, "0.1"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5, "1.5"),
            (-2.0, "-2"),
            (0.0, "0"),
            (-0.0, "-0"),
            (123456.789, "123456.789"),
            (1e16, "10000000000000000"),
            (1e17, "1e17"),
            (1e300, "1e300"),
            (1e-5, "0.00001"),
            (1e-7, "1e-7"),
            (1.2345678901234568e-300, "1.2345678901234568e-300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
        ];
        for (f, want) in cases {
            assert_eq!(t(Value::Float(f)), want);
            // Exactness: Rust's reader (correctly rounding, like strtod)
            // gives back the same bits.
            assert_eq!(want.parse::<f64>().unwrap().to_bits(), f.to_bits());
        }
        assert_eq!(t(Value::Float(f64::NAN)), "NaN");
        assert_eq!(t(Value::Float(f64::INFINITY)), "Infinity");
        assert_eq!(t(Value::Float(f64::NEG_INFINITY)), "-Infinity");
    }

    #[test]
    fn floats_round_trip_exhaustively_sampled() {
        // A deterministic spread over the whole bit space, subnormals and
        // extremes included (no proptest in this crate).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if !f.is_finite() {
                continue;
            }
            let text = t(Value::Float(f));
            assert!(!text.contains("inf") && !text.contains("NaN"), "{text}");
            assert_eq!(
                text.parse::<f64>().unwrap().to_bits(),
                f.to_bits(),
                "{text}"
            );
        }
    }

    #[test]
    fn uuid_hyphenated_lowercase() {
        let u = Value::Uuid("A0EEBC999C0B4EF8BB6D6BB9BD380A11".parse().unwrap());
        assert_eq!(t(u), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    }

    #[test]
    fn bytea() {
        assert_eq!(t(Value::Bytes(vec![])), "\\x");
        assert_eq!(t(Value::Bytes(vec![0, 0xff, 0x7f, 0xab])), "\\x00ff7fab");
    }

    #[test]
    fn arrays() {
        assert_eq!(t(Value::Array(vec![])), "{}");
        assert_eq!(
            t(Value::Array(vec![
                txt("a\"b"),
                txt("c\\d"),
                Value::Null,
                txt("NULL"),
                txt(""),
                txt("x,y"),
                txt("{}"),
                txt(" "),
            ])),
            r#"{"a\"b","c\\d",NULL,"NULL","","x,y","{}"," "}"#
        );
        assert_eq!(
            t(Value::Array(vec![
                Value::Array(vec![Value::Int(1), Value::Int(2)]),
                Value::Array(vec![Value::Int(3), Value::Null]),
            ])),
            r#"{{"1","2"},{"3",NULL}}"#
        );
        assert_eq!(
            t(Value::Array(vec![Value::Bytes(vec![0, 0xff])])),
            r#"{"\\x00ff"}"#
        );
        assert_eq!(
            t(Value::Array(vec![
                Value::Numeric("1.50".parse().unwrap()),
                Value::Numeric(Numeric::NaN),
                Value::Numeric(Numeric::NegInfinity),
            ])),
            r#"{"1.50","NaN","-Infinity"}"#
        );
        assert_eq!(
            t(Value::Array(vec![
                Value::Float(f64::NAN),
                Value::Float(f64::NEG_INFINITY),
                Value::Float(1e-300),
            ])),
            r#"{"NaN","-Infinity","1e-300"}"#
        );
        assert_eq!(
            t(Value::Array(vec![Value::Json(r#"{"a": 1}"#.into())])),
            r#"{"{\"a\": 1}"}"#
        );
        assert_eq!(
            t(Value::Array(vec![Value::Bool(true), Value::Bool(false)])),
            r#"{"t","f"}"#
        );
        assert_eq!(
            t(Value::Array(vec![Value::Uuid(
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".parse().unwrap()
            )])),
            r#"{"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}"#
        );
        assert_eq!(
            t(Value::Array(vec![Value::Temporal(
                TemporalKind::Timestamptz,
                "2024-01-01 00:00:00+00".into()
            )])),
            r#"{"2024-01-01 00:00:00+00"}"#
        );
        assert_eq!(
            t(Value::Array(vec![Value::Array(vec![Value::Array(vec![
                txt("é\u{1F600}")
            ])])])),
            "{{{\"é\u{1F600}\"}}}"
        );
    }
}
