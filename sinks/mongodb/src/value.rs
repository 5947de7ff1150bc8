//! [`Value`] → BSON: how a Ferry row's values become a MongoDB document's
//! fields. Pure and I/O-free; the inverse of the MongoDB source's
//! `bson_value` wherever the value came from MongoDB.
//!
//! | [`Value`] | BSON |
//! |---|---|
//! | `Null` | Null |
//! | `Bool` | Boolean |
//! | `Int` | Int32 when the column is `smallint`/`integer` (or arrays of them), else Int64 |
//! | `Float` | Double |
//! | `Numeric` | Decimal128, exact; NaN and ±Infinity as Decimal128's own; a value Decimal128 cannot hold exactly (more than 34 significant digits, exponent outside -6176..=6111) is refused |
//! | `Text` | String |
//! | `Json` | the parsed JSON ([`json_to_bson`]) |
//! | `Uuid` | Binary subtype 4 |
//! | `Bytes` | Binary subtype 0 |
//! | `Temporal` timestamptz, timestamp, date | DateTime (timestamp without time zone read as UTC, a date at midnight UTC); a value with non-zero digits below the millisecond, or ±infinity, is refused (BSON DateTime counts milliseconds) |
//! | `Temporal` time, timetz, interval | String, PostgreSQL's text |
//! | `Array` | Array, elements by the same rules |
//! | `ObjectId` | ObjectId |
//! | `Document` | Document, field order kept |
//!
//! A refusal is a [`Rejection`]: the sink dead-letters the row with its
//! reason, never writes a rounded or clamped value.

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, DateTime, Decimal128, Document};
use ferry_pipeline::calendar::days_from_civil;
use ferry_pipeline::value::{Decimal, Numeric, TemporalKind, Value};

/// The largest document MongoDB stores (`maxBsonObjectSize`).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// Why a value cannot be written; `rule` is the dead-letter record's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub rule: &'static str,
    pub message: String,
}

fn reject(rule: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        rule,
        message: message.into(),
    }
}

/// Whether a column of this SQL type holds 32-bit integers (so that its
/// values are written as Int32, as a MongoDB application writing them
/// would). Anything else integral is Int64.
fn is_int32_type(type_sql: &str) -> bool {
    let base = type_sql.trim_end_matches("[]");
    matches!(base, "smallint" | "integer" | "int2" | "int4" | "int")
}

/// One column value as BSON; `type_sql` is the column's type (it only
/// picks Int32 over Int64).
pub fn to_bson(v: &Value, type_sql: &str) -> Result<Bson, Rejection> {
    Ok(match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Int(i) => match i32::try_from(*i) {
            Ok(small) if is_int32_type(type_sql) => Bson::Int32(small),
            _ => Bson::Int64(*i),
        },
        Value::Float(f) => Bson::Double(*f),
        Value::Numeric(n) => Bson::Decimal128(numeric_to_decimal128(n)?),
        Value::Text(s) => Bson::String(s.clone()),
        Value::Json(text) => json_to_bson(text, false)?,
        Value::Uuid(u) => Bson::Binary(Binary {
            subtype: BinarySubtype::Uuid,
            bytes: u.as_bytes().to_vec(),
        }),
        Value::Bytes(b) => Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: b.clone(),
        }),
        Value::Temporal(kind, text) => temporal_to_bson(*kind, text)?,
        Value::Array(items) => Bson::Array(
            items
                .iter()
                .map(|item| to_bson(item, type_sql))
                .collect::<Result<_, _>>()?,
        ),
        Value::ObjectId(id) => Bson::ObjectId(bson::oid::ObjectId::from_bytes(*id)),
        Value::Document(fields) => {
            let mut d = Document::new();
            for (name, item) in fields {
                d.insert(name.clone(), to_bson(item, "")?);
            }
            Bson::Document(d)
        }
    })
}

/// Decimal128's coefficient holds at most this many digits.
const DECIMAL128_DIGITS: usize = 34;
/// Decimal128's exponent range.
const DECIMAL128_EXP: std::ops::RangeInclusive<i64> = -6176..=6111;

/// An exact [`Numeric`] as a Decimal128.
///
/// The scale is kept (`0.10` stays `0.10`, as Decimal128 keeps trailing
/// zeros) unless the coefficient would need more than 34 digits: then
/// trailing zeros are dropped (`1.500…0` with 40 digits is still exactly
/// 1.5). A value that still needs more than 34 significant digits, or an
/// exponent out of range, is refused: Decimal128 would round it.
pub fn numeric_to_decimal128(n: &Numeric) -> Result<Decimal128, Rejection> {
    let d = match n {
        Numeric::NaN => return Ok(parse_decimal128("NaN")),
        Numeric::PosInfinity => return Ok(parse_decimal128("Infinity")),
        Numeric::NegInfinity => return Ok(parse_decimal128("-Infinity")),
        Numeric::Finite(d) => d,
    };
    decimal_to_decimal128(d)
}

fn parse_decimal128(s: &str) -> Decimal128 {
    s.parse().expect("a literal Decimal128 special")
}

fn decimal_to_decimal128(d: &Decimal) -> Result<Decimal128, Rejection> {
    let too_big = || {
        reject(
            "mongodb-decimal128-range",
            format!(
                "numeric {d} needs more than Decimal128's 34 significant digits \
                 (or an exponent outside -6176..=6111): it cannot be stored exactly"
            ),
        )
    };
    let mut digits = d.digits();
    let mut exponent = -i64::from(d.scale());
    while digits.len() > DECIMAL128_DIGITS && digits.ends_with('0') {
        digits = &digits[..digits.len() - 1];
        exponent += 1;
    }
    if digits.len() > DECIMAL128_DIGITS {
        return Err(too_big());
    }
    // Too small an exponent with trailing zeros to spare, or too large one
    // with room in the coefficient: move them (same value, other scale).
    let mut owned;
    while exponent < *DECIMAL128_EXP.start() && digits.ends_with('0') && digits != "0" {
        digits = &digits[..digits.len() - 1];
        exponent += 1;
    }
    if exponent < *DECIMAL128_EXP.start() && digits == "0" {
        exponent = *DECIMAL128_EXP.start();
    }
    if exponent > *DECIMAL128_EXP.end() {
        let pad = exponent - DECIMAL128_EXP.end();
        if digits == "0" {
            exponent = *DECIMAL128_EXP.end();
        } else if digits.len() as i64 + pad <= DECIMAL128_DIGITS as i64 {
            owned = digits.to_string();
            owned.extend(std::iter::repeat_n('0', pad as usize));
            digits = &owned;
            exponent = *DECIMAL128_EXP.end();
        }
    }
    if !DECIMAL128_EXP.contains(&exponent) {
        return Err(too_big());
    }
    let sign = if d.is_negative() { "-" } else { "" };
    let text = format!("{sign}{digits}E{exponent}");
    let out: Decimal128 = text.parse().map_err(|_| too_big())?;
    // Belt and braces: the value read back is the same number.
    let back: Decimal = out.to_string().parse().map_err(|_| too_big())?;
    if !same_number(&back, d) {
        return Err(too_big());
    }
    Ok(out)
}

/// Numeric equality of two decimals whatever their scales.
fn same_number(a: &Decimal, b: &Decimal) -> bool {
    let norm = |d: &Decimal| {
        let digits = d.digits();
        let trimmed = digits.trim_end_matches('0');
        if trimmed.is_empty() {
            return (false, String::new(), 0i64);
        }
        let exp = -i64::from(d.scale()) + (digits.len() - trimmed.len()) as i64;
        (d.is_negative(), trimmed.to_string(), exp)
    };
    norm(a) == norm(b)
}

const MILLIS_PER_DAY: i64 = 86_400_000;

/// PostgreSQL's ISO text of a date or timestamp (`DateStyle=ISO`,
/// `TimeZone=UTC`, as Ferry's sessions pin them) as a BSON DateTime.
pub fn temporal_to_bson(kind: TemporalKind, text: &str) -> Result<Bson, Rejection> {
    match kind {
        TemporalKind::Time | TemporalKind::TimeTz | TemporalKind::Interval => {
            return Ok(Bson::String(text.to_string()))
        }
        TemporalKind::Date | TemporalKind::Timestamp | TemporalKind::Timestamptz => {}
    }
    let bad = || {
        reject(
            "mongodb-datetime",
            format!("{text:?} is not a date or timestamp a BSON DateTime can hold"),
        )
    };
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(b) => (b, true),
        None => (text, false),
    };
    let (date, rest) = body.split_once(' ').unwrap_or((body, ""));
    let mut parts = date.rsplitn(3, '-');
    let (day, month, year) = (parts.next(), parts.next(), parts.next());
    let (Some(day), Some(month), Some(year)) = (day, month, year) else {
        return Err(bad());
    };
    let year: i64 = year.parse().map_err(|_| bad())?;
    let month: u32 = month.parse().map_err(|_| bad())?;
    let day: u32 = day.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    // PostgreSQL counts BC years from 1: 1 BC is astronomical year 0.
    let year = if bc { 1 - year } else { year };
    let mut millis = days_from_civil(year, month, day) * MILLIS_PER_DAY;
    if !rest.is_empty() {
        // `03:04:05.678901+00`, `+05:30`, `-08`: the offset starts at the
        // first sign after the seconds.
        let (clock, offset) = match rest.find(['+', '-']) {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
        let mut f = hms.split(':');
        let h: i64 = f.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let m: i64 = f.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let s: i64 = f.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let (ms_digits, below) = frac.split_at(frac.len().min(3));
        if below.bytes().any(|b| b != b'0') {
            return Err(reject(
                "mongodb-datetime-precision",
                format!(
                    "{text:?} has digits below the millisecond, which a BSON DateTime \
                     cannot hold; the value is not rounded"
                ),
            ));
        }
        let ms: i64 = if ms_digits.is_empty() {
            0
        } else {
            format!("{ms_digits:0<3}").parse().map_err(|_| bad())?
        };
        millis += ((h * 60 + m) * 60 + s) * 1000 + ms;
        if let Some(off) = offset {
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let mut o = off[1..].split(':');
            let oh: i64 = o.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let om: i64 = o.next().map_or(Ok(0), str::parse).map_err(|_| bad())?;
            let os: i64 = o.next().map_or(Ok(0), str::parse).map_err(|_| bad())?;
            millis -= sign * ((oh * 60 + om) * 60 + os) * 1000;
        }
    }
    Ok(Bson::DateTime(DateTime::from_millis(millis)))
}

/// JSON text (a json/jsonb column) as BSON.
///
/// - Objects become documents, arrays arrays, strings strings.
/// - Integers become Int64 (a value beyond i64 becomes an exact
///   Decimal128); numbers with a fraction or an exponent become exact
///   Decimal128: jsonb stores every number as numeric, so whether it was
///   a money value or a double upstream is no longer known, and Decimal128
///   is the type that keeps every digit.
/// - An object whose keys are MongoDB Extended JSON (`{"$oid": …}`,
///   `{"$binary": …}`, `{"$timestamp": …}`, `{"$date": …}`,
///   `{"$numberDecimal": …}`, …) becomes that BSON type: the forward
///   MongoDB → PostgreSQL path writes ObjectIds and binaries that way.
/// - With `mirror` (the `document` column of Ferry's MongoDB mirror
///   shape), a string in exactly the form the forward path writes BSON
///   DateTimes (`2024-01-02 03:04:05.678+00`) becomes a DateTime again.
pub fn json_to_bson(text: &str, mirror: bool) -> Result<Bson, Rejection> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| reject("mongodb-json", format!("unreadable JSON: {e}")))?;
    json_value_to_bson(&v, mirror)
}

fn json_value_to_bson(v: &serde_json::Value, mirror: bool) -> Result<Bson, Rejection> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => Bson::Null,
        J::Bool(b) => Bson::Boolean(*b),
        J::Number(n) => json_number(&n.to_string())?,
        J::String(s) if mirror && is_forward_datetime(s) => {
            temporal_to_bson(TemporalKind::Timestamptz, s)?
        }
        J::String(s) => Bson::String(s.clone()),
        J::Array(items) => Bson::Array(
            items
                .iter()
                .map(|i| json_value_to_bson(i, mirror))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(fields) => {
            if fields
                .keys()
                .next()
                .is_some_and(|k| is_extended_json_key(k))
            {
                return Bson::try_from(v.clone()).map_err(|e| {
                    reject(
                        "mongodb-extended-json",
                        format!("{v} is not valid MongoDB Extended JSON: {e}"),
                    )
                });
            }
            let mut d = Document::new();
            for (k, item) in fields {
                d.insert(k.clone(), json_value_to_bson(item, mirror)?);
            }
            Bson::Document(d)
        }
    })
}

fn is_extended_json_key(k: &str) -> bool {
    matches!(
        k,
        "$oid"
            | "$binary"
            | "$uuid"
            | "$date"
            | "$numberDecimal"
            | "$numberLong"
            | "$numberInt"
            | "$numberDouble"
            | "$timestamp"
            | "$regularExpression"
            | "$code"
            | "$symbol"
            | "$minKey"
            | "$maxKey"
            | "$undefined"
            | "$dbPointer"
    )
}

fn json_number(text: &str) -> Result<Bson, Rejection> {
    if !text.contains(['.', 'e', 'E']) {
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Bson::Int64(i));
        }
    }
    let d: Decimal = text
        .parse()
        .map_err(|_| reject("mongodb-json", format!("{text} is not a JSON number")))?;
    Ok(Bson::Decimal128(decimal_to_decimal128(&d)?))
}

/// `YYYY-MM-DD HH:MM:SS[.f{1,3}]+00[ BC]`: the MongoDB source's text of a
/// BSON DateTime (`bson_value::timestamptz_text`), and nothing else.
fn is_forward_datetime(s: &str) -> bool {
    let s = s.strip_suffix(" BC").unwrap_or(s);
    let Some(s) = s.strip_suffix("+00") else {
        return false;
    };
    let b = s.as_bytes();
    let Some(space) = s.find(' ') else {
        return false;
    };
    let (date, clock) = (&s[..space], &s[space + 1..]);
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    let mut d = date.splitn(3, '-');
    let date_ok = matches!((d.next(), d.next(), d.next()),
        (Some(y), Some(m), Some(dd)) if y.len() >= 4 && digits(y) && m.len() == 2 && digits(m) && dd.len() == 2 && digits(dd));
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let clock_ok = hms.len() == 8
        && hms.split(':').all(|p| p.len() == 2 && digits(p))
        && (frac.is_empty() || (frac.len() <= 3 && digits(frac)));
    !b.is_empty() && date_ok && clock_ok
}

/// The BSON size of a document, to refuse one over
/// [`MAX_DOCUMENT_BYTES`] before the server does.
pub fn document_bytes(doc: &Document) -> usize {
    let mut buf = Vec::new();
    match doc.to_writer(&mut buf) {
        Ok(()) => buf.len(),
        // Unwritable means unstorable: over any limit.
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<String, Rejection> {
        numeric_to_decimal128(&s.parse().unwrap()).map(|d| d.to_string())
    }

    #[test]
    fn money_is_exact_decimal128() {
        assert_eq!(dec("0.10").unwrap(), "0.10");
        assert_eq!(
            dec("-12345678901234567890.1234567890").unwrap(),
            "-12345678901234567890.1234567890"
        );
        assert_eq!(dec("0").unwrap(), "0");
        assert_eq!(dec("NaN").unwrap(), "NaN");
        assert_eq!(dec("-Infinity").unwrap(), "-Infinity");
        // 34 significant digits fit; 35 do not.
        let max = "9".repeat(34);
        assert_eq!(dec(&max).unwrap(), max);
        let e = dec(&format!("{max}.1")).unwrap_err();
        assert_eq!(e.rule, "mongodb-decimal128-range");
        // Trailing zeros beyond 34 digits are dropped (only those), the
        // value stays.
        let long = format!("1.5{}", "0".repeat(40));
        assert_eq!(dec(&long).unwrap(), format!("1.5{}", "0".repeat(32)));
        // Numeric(38,10) money: 28 integer digits and 10 decimals = 38
        // digits, beyond Decimal128 unless trailing zeros give way.
        assert_eq!(
            dec("1234567890123456789012345678.1200000000").unwrap(),
            "1234567890123456789012345678.120000"
        );
        assert!(dec("1234567890123456789012345678.1234567891").is_err());
    }

    #[test]
    fn ints_follow_the_column_type() {
        assert_eq!(to_bson(&Value::Int(5), "integer").unwrap(), Bson::Int32(5));
        assert_eq!(to_bson(&Value::Int(5), "bigint").unwrap(), Bson::Int64(5));
        let big = (1i64 << 53) + 1;
        assert_eq!(
            to_bson(&Value::Int(big), "bigint").unwrap(),
            Bson::Int64(big)
        );
        assert_eq!(
            to_bson(&Value::Array(vec![Value::Int(1), Value::Null]), "integer[]").unwrap(),
            Bson::Array(vec![Bson::Int32(1), Bson::Null])
        );
    }

    #[test]
    fn datetimes_to_the_millisecond() {
        let ts = |s: &str| temporal_to_bson(TemporalKind::Timestamptz, s);
        assert_eq!(
            ts("2024-01-02 03:04:05.678+00").unwrap(),
            Bson::DateTime(DateTime::from_millis(1_704_164_645_678))
        );
        assert_eq!(
            ts("2024-01-02 03:04:05.678000+00").unwrap(),
            ts("2024-01-02 03:04:05.678+00").unwrap()
        );
        assert_eq!(
            ts("2024-01-02 05:04:05+02").unwrap(),
            Bson::DateTime(DateTime::from_millis(1_704_164_645_000))
        );
        assert_eq!(
            ts("2024-01-02 03:04:05.6789+00").unwrap_err().rule,
            "mongodb-datetime-precision"
        );
        assert_eq!(ts("infinity").unwrap_err().rule, "mongodb-datetime");
        assert_eq!(
            temporal_to_bson(TemporalKind::Date, "1970-01-02").unwrap(),
            Bson::DateTime(DateTime::from_millis(86_400_000))
        );
        assert_eq!(
            ts("0001-01-01 00:00:00+00 BC").unwrap(),
            // 1 BC is astronomical year 0.
            Bson::DateTime(DateTime::from_millis(-62_167_219_200_000))
        );
        assert_eq!(
            temporal_to_bson(TemporalKind::Time, "10:00:00").unwrap(),
            Bson::String("10:00:00".into())
        );
    }

    #[test]
    fn json_decodes_the_forward_conventions() {
        let b = json_to_bson(
            r#"{"_id":{"$oid":"650aff00010203040506abcd"},"amount":0.10,"n":9007199254740993,"when":"2024-01-02 03:04:05.678+00","bin":{"$binary":{"base64":"AQI=","subType":"00"}},"tags":["a",1]}"#,
            true,
        )
        .unwrap();
        let Bson::Document(d) = b else { panic!() };
        assert!(matches!(d.get("_id"), Some(Bson::ObjectId(_))));
        assert_eq!(
            d.get("amount").unwrap().to_string(),
            "Decimal128(0.10)".replace(
                "Decimal128(0.10)",
                &Bson::Decimal128("0.10".parse().unwrap()).to_string()
            )
        );
        assert_eq!(d.get("n"), Some(&Bson::Int64(9_007_199_254_740_993)));
        assert!(matches!(d.get("when"), Some(Bson::DateTime(_))));
        assert!(matches!(d.get("bin"), Some(Bson::Binary(_))));
        // Outside the mirror shape a date-like string stays a string.
        let Bson::Document(d) =
            json_to_bson(r#"{"when":"2024-01-02 03:04:05+00"}"#, false).unwrap()
        else {
            panic!()
        };
        assert!(matches!(d.get("when"), Some(Bson::String(_))));
    }

    #[test]
    fn uuid_and_bytes_are_binary() {
        let u = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let Bson::Binary(b) = to_bson(&Value::Uuid(u), "uuid").unwrap() else {
            panic!()
        };
        assert_eq!(b.subtype, BinarySubtype::Uuid);
        assert_eq!(b.bytes, u.as_bytes().to_vec());
        let Bson::Binary(b) = to_bson(&Value::Bytes(vec![1, 2]), "bytea").unwrap() else {
            panic!()
        };
        assert_eq!(b.subtype, BinarySubtype::Generic);
    }
}
