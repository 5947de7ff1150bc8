//! [`Value`] → PostgreSQL text input.
//!
//! Owns the text the sink hands to PostgreSQL's input functions (as text
//! parameters cast to the column type, or in COPY): the inverse of the
//! source's text codec. Every value must come back bit-for-bit once the
//! target parses it, so this module never rounds, reformats dates or picks
//! a "nicer" notation that the input function would read differently.
//! Pure and I/O-free.

use std::fmt::Write as _;

use ferry_pipeline::json::{float_text, write_json};
use ferry_pipeline::value::{object_id_hex, Value};

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
        Value::ObjectId(id) => object_id_hex(id),
        Value::Document(_) => {
            let mut out = String::new();
            write_json(&mut out, v);
            out
        }
    })
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
    use ferry_pipeline::json::base64_into;
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

    #[test]
    fn object_id_is_lowercase_hex() {
        let id = [0x65, 0x0a, 0xff, 0, 1, 2, 3, 4, 5, 6, 0xab, 0xcd];
        assert_eq!(t(Value::ObjectId(id)), "650aff00010203040506abcd");
        assert_eq!(
            t(Value::Array(vec![Value::ObjectId(id), Value::Null])),
            r#"{"650aff00010203040506abcd",NULL}"#
        );
    }

    #[test]
    fn base64_rfc4648_vectors() {
        for (raw, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = String::new();
            base64_into(&mut out, raw.as_bytes());
            assert_eq!(out, want);
        }
        let mut out = String::new();
        base64_into(&mut out, &[0xfb, 0xff, 0xbf]);
        assert_eq!(out, "+/+/");
    }

    #[test]
    fn document_is_json_with_exact_numbers() {
        let doc = Value::Document(vec![
            ("_id".into(), Value::ObjectId([0xab; 12])),
            ("n".into(), Value::Int(i64::MIN)),
            (
                "amount".into(),
                Value::Numeric("123456789012345678901234567890.1234".parse().unwrap()),
            ),
            ("tiny".into(), Value::Numeric("1E-30".parse().unwrap())),
            ("nan".into(), Value::Numeric(Numeric::NaN)),
            ("inf".into(), Value::Numeric(Numeric::NegInfinity)),
            ("f".into(), Value::Float(0.1)),
            ("big".into(), Value::Float(1e300)),
            ("negzero".into(), Value::Float(-0.0)),
            ("fnan".into(), Value::Float(f64::NAN)),
            ("finf".into(), Value::Float(f64::INFINITY)),
            ("s".into(), txt("a\"b\\c\n\t\u{1}\u{0}é")),
            ("ok".into(), Value::Bool(true)),
            ("none".into(), Value::Null),
            ("bin".into(), Value::Bytes(b"foob".to_vec())),
            (
                "u".into(),
                Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".parse().unwrap()),
            ),
            (
                "at".into(),
                Value::Temporal(
                    TemporalKind::Timestamptz,
                    "2024-01-02 03:04:05.678+00".into(),
                ),
            ),
            (
                "ts".into(),
                Value::Json(r#"{"$timestamp":{"t":1,"i":2}}"#.into()),
            ),
            (
                "list".into(),
                Value::Array(vec![
                    Value::Int(1),
                    Value::Document(vec![]),
                    Value::Array(vec![]),
                ]),
            ),
            (
                "we\"ird\nkey".into(),
                Value::Document(vec![("".into(), Value::Null)]),
            ),
        ]);
        let text = t(doc);
        assert_eq!(
            text,
            concat!(
                r#"{"_id":{"$oid":"abababababababababababab"},"n":-9223372036854775808,"#,
                r#""amount":123456789012345678901234567890.1234,"#,
                r#""tiny":0.000000000000000000000000000001,"nan":"NaN","inf":"-Infinity","#,
                r#""f":0.1,"big":1e300,"negzero":-0,"fnan":"NaN","finf":"Infinity","#,
                r#""s":"a\"b\\c\n\t\u0001\u0000é","ok":true,"none":null,"#,
                r#""bin":{"$binary":{"base64":"Zm9vYg==","subType":"00"}},"#,
                r#""u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","#,
                r#""at":"2024-01-02 03:04:05.678+00","ts":{"$timestamp":{"t":1,"i":2}},"#,
                r#""list":[1,{},[]],"we\"ird\nkey":{"":null}}"#
            )
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["s"], "a\"b\\c\n\t\u{1}\u{0}é");
        assert_eq!(parsed["n"], i64::MIN);
        // A document inside an array column is one JSON element.
        assert_eq!(
            t(Value::Array(vec![Value::Document(vec![(
                "a".into(),
                Value::Int(1)
            )])])),
            r#"{"{\"a\":1}"}"#
        );
    }

    /// A deterministic pseudo-random generator (xorshift64), as above.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn text(&mut self) -> String {
            const CHARS: [char; 12] = [
                'a',
                'Z',
                '0',
                ' ',
                '"',
                '\\',
                '\n',
                '\u{0}',
                '\u{1f}',
                'é',
                '\u{1F600}',
                '{',
            ];
            (0..self.below(6))
                .map(|_| CHARS[self.below(CHARS.len() as u64) as usize])
                .collect()
        }
        fn digits(&mut self, max: u64) -> String {
            (0..1 + self.below(max))
                .map(|_| char::from(b'0' + self.below(10) as u8))
                .collect()
        }
    }

    /// A random value of every kind a document can hold, nested up to
    /// `depth` levels.
    fn random_value(r: &mut Rng, depth: u32) -> Value {
        let kinds = if depth == 0 { 14 } else { 16 };
        match r.below(kinds) {
            0 => Value::Null,
            1 => Value::Bool(r.below(2) == 0),
            2 => Value::Int(r.next() as i64),
            3 => Value::Float(f64::from_bits(r.next())),
            4 => Value::Float([0.0, -0.0, f64::NAN, f64::INFINITY, 1e-7][r.below(5) as usize]),
            5 => {
                // Up to 40 digits and scale 40: inside f64's range, so
                // that serde_json (no arbitrary precision here) reads it.
                let sign = if r.below(2) == 0 { "-" } else { "" };
                let s = format!("{sign}{}.{}", r.digits(40), r.digits(40));
                Value::Numeric(s.parse().unwrap())
            }
            6 => Value::Numeric(
                [Numeric::NaN, Numeric::PosInfinity, Numeric::NegInfinity][r.below(3) as usize]
                    .clone(),
            ),
            7 => Value::Text(r.text()),
            8 => Value::Json(
                [
                    r#"{"$minKey":1}"#,
                    r#"[1, "a", null]"#,
                    r#""x""#,
                    "null",
                    "-1.5e-3",
                ][r.below(5) as usize]
                    .into(),
            ),
            9 => Value::Uuid(
                format!("{:016x}{:016x}", r.next(), r.next())
                    .parse()
                    .unwrap(),
            ),
            10 => Value::Bytes((0..r.below(8)).map(|_| r.next() as u8).collect()),
            11 => Value::Temporal(
                TemporalKind::Timestamptz,
                "0001-12-31 23:59:59.999+00 BC".into(),
            ),
            12 => {
                let mut id = [0u8; 12];
                id.iter_mut().for_each(|b| *b = r.next() as u8);
                Value::ObjectId(id)
            }
            13 => Value::Text(String::new()),
            14 => Value::Array(
                (0..r.below(4))
                    .map(|_| random_value(r, depth - 1))
                    .collect(),
            ),
            _ => Value::Document(
                (0..r.below(4))
                    .map(|i| (format!("{i}{}", r.text()), random_value(r, depth - 1)))
                    .collect(),
            ),
        }
    }

    fn assert_close(got: f64, want: f64) {
        assert!(
            got == want || (got - want).abs() <= want.abs() * 1e-15,
            "{got} vs {want}"
        );
    }

    /// Checks that `json` (parsed) says what `v` holds.
    fn check(v: &Value, json: &serde_json::Value) {
        use serde_json::Value as J;
        match (v, json) {
            (Value::Null, J::Null) => {}
            (Value::Bool(b), J::Bool(j)) => assert_eq!(b, j),
            (Value::Int(i), J::Number(n)) => assert_eq!(n.as_i64(), Some(*i)),
            // serde_json's default float reading is only nearly correctly
            // rounded, so the numbers are compared to within an ulp or so;
            // the exact text is pinned by the tests above.
            (Value::Float(f), J::Number(n)) => assert_close(n.as_f64().unwrap(), *f),
            (Value::Float(f), J::String(s)) => assert_eq!(*s, float_text(*f)),
            (Value::Numeric(Numeric::Finite(d)), J::Number(n)) => {
                assert_close(n.as_f64().unwrap(), d.to_string().parse().unwrap())
            }
            (Value::Numeric(n), J::String(s)) => assert_eq!(*s, n.to_string()),
            (Value::Text(t) | Value::Temporal(_, t), J::String(s)) => assert_eq!(t, s),
            (Value::Json(t), j) => {
                assert_eq!(serde_json::from_str::<serde_json::Value>(t).unwrap(), *j)
            }
            (Value::Uuid(u), J::String(s)) => assert_eq!(*s, u.to_string()),
            (Value::Bytes(_), j) => assert_eq!(j["$binary"]["subType"], "00"),
            (Value::ObjectId(id), j) => assert_eq!(j["$oid"], object_id_hex(id).as_str()),
            (Value::Array(items), J::Array(js)) => {
                assert_eq!(items.len(), js.len());
                items.iter().zip(js).for_each(|(v, j)| check(v, j));
            }
            (Value::Document(fields), J::Object(map)) => {
                // Names are unique here (index prefix).
                assert_eq!(fields.len(), map.len());
                for (name, v) in fields {
                    check(v, &map[name.as_str()]);
                }
            }
            (v, j) => panic!("{v:?} written as {j}"),
        }
    }

    #[test]
    fn random_documents_are_valid_json() {
        let mut r = Rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..5_000 {
            let doc = Value::Document(
                (0..r.below(5))
                    .map(|i| (format!("k{i}"), random_value(&mut r, 3)))
                    .collect(),
            );
            let text = t(doc.clone());
            let parsed: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            check(&doc, &parsed);
        }
    }
}
