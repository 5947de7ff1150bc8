//! Ferry values as Convex values, in Convex's encoded JSON (the form the
//! HTTP function API reads arguments in). Pure: no I/O.
//!
//! | Ferry value | Convex value (encoded JSON) |
//! |---|---|
//! | `Null`, `Bool`, `Text` | null, boolean, string |
//! | `Int` of an `int8`/`bigint` (or untyped) column | Int64: `{"$integer": base64(i64 LE)}` |
//! | `Int` of an `int2`/`int4` column | Float64 (always exact) |
//! | `Float` finite, not -0 | Float64: a JSON number |
//! | `Float` NaN, ±Inf, -0 | `{"$float": base64(f64 LE)}` |
//! | `Numeric` | string of its exact digits, or Float64 when the sink says `numeric = "float64"` and the float holds it exactly (else refused) |
//! | `Json` (json, jsonb) | the JSON itself (objects, arrays); a number a Float64 cannot hold exactly is refused |
//! | `Uuid`, `ObjectId` | string (lowercase hex) |
//! | `Bytes` | `{"$bytes": base64}` |
//! | `Temporal` timestamp/timestamptz/date | Float64 milliseconds since the epoch (UTC), microseconds as the fraction; ±infinity as `$float` ±Inf |
//! | `Temporal` time, timetz, interval | the source's ISO text |
//! | `Array` | array |
//! | `Document` | object |
//!
//! What Convex cannot hold is refused with the reason (the record is then
//! dead-lettered), never truncated: field names starting with `$` (or `_`
//! at the top level), nesting deeper than [`MAX_NESTING`], arrays longer
//! than [`MAX_ARRAY_LEN`], objects with more than [`MAX_OBJECT_FIELDS`]
//! fields, documents larger than [`MAX_DOCUMENT_BYTES`].

use std::fmt::Write as _;

use ferry_pipeline::config::ConvexNumeric;
use ferry_pipeline::json::base64_into;
use ferry_pipeline::value::{object_id_hex, Numeric, TemporalKind, Value};
use serde_json::{Map, Number, Value as Json};

/// Convex's nesting limit (`MAX_DOCUMENT_NESTING`).
pub const MAX_NESTING: usize = 16;
/// Convex's array length limit (`MAX_ARRAY_LEN`).
pub const MAX_ARRAY_LEN: usize = 8192;
/// Convex's object field limit (`MAX_OBJECT_FIELDS`).
pub const MAX_OBJECT_FIELDS: usize = 1024;
/// Convex's document size limit (`MAX_USER_SIZE`, 1 MiB, which includes
/// `_id` and `_creationTime`): the encoded JSON is kept this much below it.
pub const MAX_DOCUMENT_BYTES: usize = (1 << 20) - 1024;

/// Why a value cannot be written to Convex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A stable name for the rule (the dead-letter record's code).
    pub rule: &'static str,
    pub message: String,
}

fn reject(rule: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        rule,
        message: message.into(),
    }
}

/// How the sink writes values it has a choice for.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub numeric: ConvexNumeric,
}

/// A whole document from `(column name, column type, value)` fields.
pub fn document<'a>(
    fields: impl IntoIterator<Item = (&'a str, &'a str, &'a Value)>,
    opts: Options,
) -> Result<Json, Rejection> {
    let mut out = Map::new();
    for (name, ty, v) in fields {
        check_field_name(name, true)?;
        out.insert(name.to_string(), column(v, ty, opts, 1)?);
    }
    if out.len() > MAX_OBJECT_FIELDS {
        return Err(reject(
            "convex-too-many-fields",
            format!("{} fields, Convex allows {MAX_OBJECT_FIELDS}", out.len()),
        ));
    }
    let doc = Json::Object(out);
    let size = doc.to_string().len();
    if size > MAX_DOCUMENT_BYTES {
        return Err(reject(
            "convex-document-too-large",
            format!("the document is {size} bytes, Convex allows 1 MiB"),
        ));
    }
    Ok(doc)
}

/// Field names: non-empty, not `$…` anywhere, not `_…` at the top level.
fn check_field_name(name: &str, top: bool) -> Result<(), Rejection> {
    if name.starts_with('$') {
        return Err(reject(
            "convex-field-name",
            format!("field name {name:?} starts with `$`, which Convex reserves"),
        ));
    }
    if top && name.starts_with('_') {
        return Err(reject(
            "convex-field-name",
            format!("top-level field name {name:?} starts with `_`, which Convex reserves for system fields"),
        ));
    }
    if name.is_empty() || name.len() > 1024 || name.chars().any(|c| c.is_control()) {
        return Err(reject(
            "convex-field-name",
            format!(
                "field name {name:?} is empty, longer than 1024 bytes or has control characters"
            ),
        ));
    }
    Ok(())
}

fn depth_ok(depth: usize) -> Result<(), Rejection> {
    if depth > MAX_NESTING {
        return Err(reject(
            "convex-too-deep",
            format!("nested deeper than the {MAX_NESTING} levels Convex allows"),
        ));
    }
    Ok(())
}

/// One column's value; `ty` is the column's SQL type (picks Int64 or
/// Float64 for integers).
pub fn column(v: &Value, ty: &str, opts: Options, depth: usize) -> Result<Json, Rejection> {
    // `integer[]` (or `_int4`): the elements follow the element type.
    let element = ty.trim().trim_end_matches("[]").trim_start_matches('_');
    small_ints(v, is_small_int(element), opts, depth)
}

fn small_ints(v: &Value, small: bool, opts: Options, depth: usize) -> Result<Json, Rejection> {
    match v {
        Value::Int(i) if small => Ok(Json::Number(Number::from(*i))),
        Value::Array(items) if small => {
            depth_ok(depth)?;
            array_len_ok(items.len())?;
            Ok(Json::Array(
                items
                    .iter()
                    .map(|i| small_ints(i, small, opts, depth + 1))
                    .collect::<Result<_, _>>()?,
            ))
        }
        _ => value(v, opts, depth),
    }
}

fn is_small_int(ty: &str) -> bool {
    let t = ty.trim().to_ascii_lowercase();
    matches!(
        t.as_str(),
        "smallint" | "integer" | "int" | "int2" | "int4" | "int32"
    )
}

/// A value of any depth (`depth` 1 is a top-level field's value).
pub fn value(v: &Value, opts: Options, depth: usize) -> Result<Json, Rejection> {
    depth_ok(depth)?;
    Ok(match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => integer(*i),
        Value::Float(f) => float(*f),
        Value::Numeric(n) => numeric(n, opts.numeric)?,
        Value::Text(s) => Json::String(s.clone()),
        Value::Json(text) => {
            let j: Json = serde_json::from_str(text)
                .map_err(|e| reject("convex-json", format!("unreadable json: {e}")))?;
            json(&j, depth)?
        }
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Bytes(b) => tagged("$bytes", b),
        Value::Temporal(kind, text) => temporal(*kind, text)?,
        Value::Array(items) => {
            array_len_ok(items.len())?;
            Json::Array(
                items
                    .iter()
                    .map(|i| value(i, opts, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        Value::ObjectId(id) => Json::String(object_id_hex(id)),
        Value::Document(fields) => {
            if fields.len() > MAX_OBJECT_FIELDS {
                return Err(reject(
                    "convex-too-many-fields",
                    format!("{} fields, Convex allows {MAX_OBJECT_FIELDS}", fields.len()),
                ));
            }
            let mut m = Map::new();
            for (k, f) in fields {
                check_field_name(k, false)?;
                m.insert(k.clone(), value(f, opts, depth + 1)?);
            }
            Json::Object(m)
        }
    })
}

fn array_len_ok(n: usize) -> Result<(), Rejection> {
    if n > MAX_ARRAY_LEN {
        return Err(reject(
            "convex-array-too-long",
            format!("an array of {n} elements, Convex allows {MAX_ARRAY_LEN}"),
        ));
    }
    Ok(())
}

/// `{"$integer": …}`: Convex reads every plain JSON number as a Float64.
pub fn integer(i: i64) -> Json {
    tagged("$integer", &i.to_le_bytes())
}

/// A plain number when finite and not -0, else `{"$float": …}`.
pub fn float(f: f64) -> Json {
    if f.is_finite() && !(f == 0.0 && f.is_sign_negative()) {
        if let Some(n) = Number::from_f64(f) {
            return Json::Number(n);
        }
    }
    tagged("$float", &f.to_le_bytes())
}

fn tagged(tag: &str, bytes: &[u8]) -> Json {
    let mut s = String::new();
    base64_into(&mut s, bytes);
    let mut m = Map::new();
    m.insert(tag.to_string(), Json::String(s));
    Json::Object(m)
}

/// A numeric as its exact digits, or as a Float64 that holds it exactly.
pub fn numeric(n: &Numeric, mode: ConvexNumeric) -> Result<Json, Rejection> {
    match (mode, n) {
        (ConvexNumeric::String, n) => Ok(Json::String(n.to_string())),
        (ConvexNumeric::Float64, Numeric::NaN) => Ok(float(f64::NAN)),
        (ConvexNumeric::Float64, Numeric::PosInfinity) => Ok(float(f64::INFINITY)),
        (ConvexNumeric::Float64, Numeric::NegInfinity) => Ok(float(f64::NEG_INFINITY)),
        (ConvexNumeric::Float64, Numeric::Finite(d)) => {
            let text = d.to_string();
            let f: f64 = text
                .parse()
                .map_err(|_| reject("convex-numeric", format!("{text} is not a number")))?;
            if same_decimal(&text, f) {
                Ok(float(if f == 0.0 { 0.0 } else { f }))
            } else {
                Err(reject(
                    "convex-numeric-inexact",
                    format!(
                        "{text} has no exact float64 (numeric = \"float64\"): write it as a string"
                    ),
                ))
            }
        }
    }
}

/// Whether `f` is exactly the decimal `text` (compared as exact decimals,
/// trailing zeros aside): Rust prints the float's exact binary value's
/// shortest round-trip text, so compare `f`'s full expansion instead.
fn same_decimal(text: &str, f: f64) -> bool {
    if !f.is_finite() {
        return false;
    }
    // The float's exact value: f = m × 2^e, which has a finite decimal
    // expansion; format with enough digits (1074 covers every subnormal).
    let exact = format!("{f:.1074}");
    canonical(&exact) == canonical(text)
}

/// A decimal text with no sign on zero, no leading or trailing zeros.
fn canonical(s: &str) -> String {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.is_empty() && frac.is_empty() {
        return "0".into();
    }
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// A JSON value (json, jsonb) as a Convex value.
fn json(j: &Json, depth: usize) -> Result<Json, Rejection> {
    depth_ok(depth)?;
    Ok(match j {
        Json::Number(n) => {
            let text = n.to_string();
            let f: f64 = text
                .parse()
                .map_err(|_| reject("convex-json", format!("{text} is not a number")))?;
            if !same_decimal(&canonical_number(&text), f) {
                return Err(reject(
                    "convex-json-number-inexact",
                    format!("the json number {text} has no exact float64, which is Convex's only number type in JSON"),
                ));
            }
            float(f)
        }
        Json::Array(items) => {
            array_len_ok(items.len())?;
            Json::Array(
                items
                    .iter()
                    .map(|i| json(i, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        Json::Object(m) => {
            if m.len() > MAX_OBJECT_FIELDS {
                return Err(reject(
                    "convex-too-many-fields",
                    format!("{} fields, Convex allows {MAX_OBJECT_FIELDS}", m.len()),
                ));
            }
            let mut out = Map::new();
            for (k, v) in m {
                check_field_name(k, false)?;
                out.insert(k.clone(), json(v, depth + 1)?);
            }
            Json::Object(out)
        }
        other => other.clone(),
    })
}

/// A JSON number's text in plain notation (`1e3` → `1000`).
fn canonical_number(text: &str) -> String {
    match text.parse::<ferry_pipeline::value::Decimal>() {
        Ok(d) => d.to_string(),
        Err(_) => text.to_string(),
    }
}

/// Timestamps and dates as Float64 milliseconds since the epoch (UTC);
/// times and intervals as their text.
fn temporal(kind: TemporalKind, text: &str) -> Result<Json, Rejection> {
    match kind {
        TemporalKind::Time | TemporalKind::TimeTz | TemporalKind::Interval => {
            return Ok(Json::String(text.to_string()))
        }
        _ => {}
    }
    match text {
        "infinity" => return Ok(float(f64::INFINITY)),
        "-infinity" => return Ok(float(f64::NEG_INFINITY)),
        _ => {}
    }
    let micros = epoch_micros(text).ok_or_else(|| {
        reject(
            "convex-timestamp",
            format!("{text:?} is not an ISO date or timestamp"),
        )
    })?;
    // Milliseconds with the microseconds as the fraction, parsed from
    // decimal text: the nearest float, whose shortest text is that decimal
    // for every date within ±285 000 years.
    let mut s = String::new();
    let (neg, abs) = (micros < 0, micros.unsigned_abs());
    if neg {
        s.push('-');
    }
    let _ = write!(s, "{}.{:03}", abs / 1000, abs % 1000);
    let f: f64 = s
        .parse()
        .map_err(|_| reject("convex-timestamp", format!("{text:?} out of range")))?;
    Ok(float(if f == 0.0 { 0.0 } else { f }))
}

/// Microseconds since 1970-01-01 UTC of PostgreSQL's ISO output
/// (`2024-01-02 03:04:05.123456+05:30`, `0044-03-15 BC`, `2024-01-02`).
fn epoch_micros(text: &str) -> Option<i64> {
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    let (date, rest) = match text.find([' ', 'T']) {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    let mut d = date.rsplitn(3, '-');
    let day: u32 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let mut year: i64 = d.next()?.parse().ok()?;
    if bc {
        year = 1 - year;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = ferry_pipeline::calendar::days_from_civil(year, month, day);
    let mut micros = days.checked_mul(86_400_000_000)?;
    if !rest.is_empty() {
        let split = rest.find(['+', '-', 'Z']).unwrap_or(rest.len());
        let (clock, offset) = rest.split_at(split);
        let mut c = clock.split(':');
        let h: i64 = c.next()?.parse().ok()?;
        let m: i64 = c.next()?.parse().ok()?;
        let sec = c.next().unwrap_or("0");
        let (s, frac) = sec.split_once('.').unwrap_or((sec, ""));
        let s: i64 = s.parse().ok()?;
        let mut f = frac.to_string();
        if f.len() > 6 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        while f.len() < 6 {
            f.push('0');
        }
        let us: i64 = f.parse().ok()?;
        micros = micros.checked_add(((h * 60 + m) * 60 + s) * 1_000_000 + us)?;
        if !offset.is_empty() && offset != "Z" {
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let mut o = offset[1..].split(':');
            let oh: i64 = o.next()?.parse().ok()?;
            let om: i64 = o.next().unwrap_or("0").parse().ok()?;
            let os: i64 = o.next().unwrap_or("0").parse().ok()?;
            micros = micros.checked_sub(sign * ((oh * 60 + om) * 60 + os) * 1_000_000)?;
        }
    }
    Some(micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STRING: Options = Options {
        numeric: ConvexNumeric::String,
    };
    const FLOAT: Options = Options {
        numeric: ConvexNumeric::Float64,
    };

    fn enc(v: &Value) -> String {
        value(v, STRING, 1).unwrap().to_string()
    }

    #[test]
    fn integers_and_floats_use_convex_tags() {
        // Examples computed in shared/ref/convex-http-api.md (A.5).
        assert_eq!(enc(&Value::Int(1)), r#"{"$integer":"AQAAAAAAAAA="}"#);
        assert_eq!(enc(&Value::Int(-1)), r#"{"$integer":"//////////8="}"#);
        assert_eq!(enc(&Value::Int(i64::MAX)), r#"{"$integer":"/////////38="}"#);
        assert_eq!(enc(&Value::Float(f64::NAN)), r#"{"$float":"AAAAAAAA+H8="}"#);
        assert_eq!(
            enc(&Value::Float(f64::INFINITY)),
            r#"{"$float":"AAAAAAAA8H8="}"#
        );
        assert_eq!(
            enc(&Value::Float(f64::NEG_INFINITY)),
            r#"{"$float":"AAAAAAAA8P8="}"#
        );
        assert_eq!(enc(&Value::Float(-0.0)), r#"{"$float":"AAAAAAAAAIA="}"#);
        assert_eq!(enc(&Value::Float(1.5)), "1.5");
        assert_eq!(
            enc(&Value::Bytes(b"hello".to_vec())),
            r#"{"$bytes":"aGVsbG8="}"#
        );
        assert_eq!(
            column(&Value::Int(7), "integer", STRING, 1)
                .unwrap()
                .to_string(),
            "7"
        );
    }

    #[test]
    fn numerics_are_exact_or_refused() {
        let n = |s: &str| s.parse::<Numeric>().unwrap();
        assert_eq!(
            numeric(&n("12.50"), ConvexNumeric::String).unwrap(),
            Json::String("12.50".into())
        );
        assert_eq!(
            numeric(&n("12.5"), ConvexNumeric::Float64)
                .unwrap()
                .to_string(),
            "12.5"
        );
        assert_eq!(
            numeric(&n("0.25"), ConvexNumeric::Float64)
                .unwrap()
                .to_string(),
            "0.25"
        );
        let e = numeric(&n("0.1"), ConvexNumeric::Float64).unwrap_err();
        assert_eq!(e.rule, "convex-numeric-inexact");
        let big = n("123456789012345678.123456789012345678");
        assert!(numeric(&big, ConvexNumeric::Float64).is_err());
        assert_eq!(
            numeric(&big, ConvexNumeric::String).unwrap(),
            Json::String(big.to_string())
        );
        assert_eq!(
            value(&Value::Numeric(n("NaN")), FLOAT, 1)
                .unwrap()
                .to_string(),
            r#"{"$float":"AAAAAAAA+H8="}"#
        );
    }

    #[test]
    fn timestamps_are_epoch_milliseconds() {
        let t = |k, s: &str| temporal(k, s).unwrap().to_string();
        assert_eq!(
            t(TemporalKind::Timestamptz, "1970-01-01 00:00:00+00"),
            "0.0"
        );
        assert_eq!(
            t(TemporalKind::Timestamptz, "2023-11-14 22:13:20.123456+00"),
            "1700000000123.456"
        );
        assert_eq!(
            t(TemporalKind::Timestamptz, "2023-11-14 23:13:20+01"),
            "1700000000000.0"
        );
        assert_eq!(
            t(TemporalKind::Timestamp, "1969-12-31 23:59:59.999"),
            "-1.0"
        );
        assert_eq!(t(TemporalKind::Date, "2023-11-14"), "1699920000000.0");
        assert_eq!(
            t(TemporalKind::Date, "infinity"),
            r#"{"$float":"AAAAAAAA8H8="}"#
        );
        assert_eq!(t(TemporalKind::Time, "10:00:00"), r#""10:00:00""#);
        assert!(temporal(TemporalKind::Date, "yesterday").is_err());
    }

    #[test]
    fn what_convex_cannot_hold_is_refused() {
        let mut deep = Value::Int(1);
        for _ in 0..MAX_NESTING {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(value(&deep, STRING, 1).unwrap_err().rule, "convex-too-deep");
        let long = Value::Array(vec![Value::Null; MAX_ARRAY_LEN + 1]);
        assert_eq!(
            value(&long, STRING, 1).unwrap_err().rule,
            "convex-array-too-long"
        );
        let dollar = Value::Json(r#"{"a":{"$set":1}}"#.into());
        assert_eq!(
            value(&dollar, STRING, 1).unwrap_err().rule,
            "convex-field-name"
        );
        let big = Value::Text("x".repeat(1 << 20));
        let e = document([("body", "text", &big)], STRING).unwrap_err();
        assert_eq!(e.rule, "convex-document-too-large");
        let e = document([("_id", "text", &Value::Null)], STRING).unwrap_err();
        assert_eq!(e.rule, "convex-field-name");
        let inexact = Value::Json("12345678901234567890123".into());
        assert_eq!(
            value(&inexact, STRING, 1).unwrap_err().rule,
            "convex-json-number-inexact"
        );
        assert_eq!(
            enc(&Value::Json(r#"{"a":[1,2.5,{"b":null}]}"#.into())),
            r#"{"a":[1.0,2.5,{"b":null}]}"#
        );
    }

    proptest! {
        #[test]
        fn integers_round_trip(i in any::<i64>()) {
            let j = integer(i);
            let b64 = j["$integer"].as_str().unwrap().to_string();
            prop_assert_eq!(b64.len(), 12);
            prop_assert_eq!(decode_b64(&b64), i.to_le_bytes().to_vec());
        }

        #[test]
        fn floats_are_plain_or_tagged(bits in any::<u64>()) {
            let f = f64::from_bits(bits);
            match float(f) {
                Json::Number(n) => prop_assert_eq!(n.to_string().parse::<f64>().unwrap().to_bits(), bits),
                Json::Object(m) => {
                    prop_assert!(!f.is_finite() || f == 0.0);
                    prop_assert_eq!(decode_b64(m["$float"].as_str().unwrap()), bits.to_le_bytes().to_vec());
                }
                other => prop_assert!(false, "{other}"),
            }
        }

        #[test]
        fn float64_numerics_are_exact_when_accepted(m in -1_000_000_000i64..1_000_000_000, scale in 0u32..6) {
            let text = if scale == 0 { m.to_string() } else {
                let s = format!("{:0>w$}", m.unsigned_abs(), w = scale as usize + 1);
                let (i, f) = s.split_at(s.len() - scale as usize);
                format!("{}{i}.{f}", if m < 0 { "-" } else { "" })
            };
            let n: Numeric = text.parse().unwrap();
            if let Ok(Json::Number(x)) = numeric(&n, ConvexNumeric::Float64) {
                let f: f64 = x.to_string().parse().unwrap();
                prop_assert_eq!(canonical(&format!("{f:.1074}")), canonical(&text));
            }
        }
    }

    fn decode_b64(s: &str) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes().filter(|&c| c != b'=') {
            bits = (bits << 6) | A.iter().position(|&a| a == c).unwrap() as u32;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        out
    }
}
