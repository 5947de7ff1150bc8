//! Convex values, read from Convex's encoded JSON (the export routes'
//! `format=convex_encoded_json`), as Ferry values. Pure: no I/O.
//!
//! Decoding (encoded JSON → [`Value`]):
//!
//! | Convex value | encoded JSON | Ferry value |
//! |---|---|---|
//! | null, boolean, string | `null`, `true`, `"s"` | `Null`, `Bool`, `Text` |
//! | `v.id("t")` | the id string | `Text` |
//! | Float64 finite | a JSON number | `Float` |
//! | Float64 NaN, ±Inf, -0 | `{"$float": base64(f64 LE)}` | `Float` (bits kept) |
//! | Int64 | `{"$integer": base64(i64 LE)}` | `Int` (all 64 bits) |
//! | Bytes | `{"$bytes": base64}` | `Bytes` |
//! | Array | array | `Array` |
//! | Object | object | `Document` (fields by name) |
//!
//! A document stays a `Document` of typed values, so that mappings see
//! each field with its type (an Int64 into a bigint column, bytes into a
//! bytea); in a jsonb column it is written as every document is (see
//! `ferry_pipeline::json::write_json`: numbers exact, NaN/±Infinity as
//! strings, bytes as `{"$binary": …}`). `_creationTime` (fractional
//! milliseconds) becomes a `timestamptz` at microseconds, the most
//! PostgreSQL holds.

use base64::Engine as _;
use ferry_pipeline::calendar::civil_from_days;
use ferry_pipeline::value::{TemporalKind, Value};
use serde_json::Value as Json;

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn b64(tag: &str, s: &Json) -> Result<Vec<u8>, DecodeError> {
    let text = s
        .as_str()
        .ok_or_else(|| DecodeError(format!("{tag} is not a string")))?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| DecodeError(format!("{tag} {text:?}: {e}")))
}

fn eight(tag: &str, s: &Json) -> Result<[u8; 8], DecodeError> {
    let bytes = b64(tag, s)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| DecodeError(format!("{tag} holds {} bytes, not 8", bytes.len())))
}

/// A Convex value from its encoded JSON.
pub fn decode(v: &Json) -> Result<Value, DecodeError> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::String(s) => Value::Text(s.clone()),
        // Convex wrote the shortest text of its float64: parsing gives the
        // same bits back.
        Json::Number(n) => Value::Float(
            n.to_string()
                .parse::<f64>()
                .map_err(|e| DecodeError(format!("number {n}: {e}")))?,
        ),
        Json::Array(items) => Value::Array(items.iter().map(decode).collect::<Result<_, _>>()?),
        Json::Object(map) => {
            if map.len() == 1 {
                let (k, inner) = map.iter().next().expect("one entry");
                match k.as_str() {
                    "$integer" => return Ok(Value::Int(i64::from_le_bytes(eight(k, inner)?))),
                    "$float" => return Ok(Value::Float(f64::from_le_bytes(eight(k, inner)?))),
                    "$bytes" => return Ok(Value::Bytes(b64(k, inner)?)),
                    _ => {}
                }
            }
            Value::Document(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), decode(v)?)))
                    .collect::<Result<_, DecodeError>>()?,
            )
        }
    })
}

/// `_creationTime` (milliseconds since the epoch, fractional) as a
/// `timestamptz`, rounded to the microsecond.
pub fn creation_time(ms: f64) -> Result<Value, DecodeError> {
    if !ms.is_finite() {
        return Err(DecodeError(format!("_creationTime {ms} is not a time")));
    }
    let micros = (ms * 1000.0).round() as i64;
    let (days, rem) = (
        micros.div_euclid(86_400_000_000),
        micros.rem_euclid(86_400_000_000),
    );
    let (y, m, d) = civil_from_days(days);
    let secs = rem / 1_000_000;
    Ok(Value::Temporal(
        TemporalKind::Timestamptz,
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}+00",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            rem % 1_000_000
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn enc_int(i: i64) -> Json {
        let mut s = String::new();
        ferry_pipeline::json::base64_into(&mut s, &i.to_le_bytes());
        json!({ "$integer": s })
    }

    #[test]
    fn every_type_arrives_exact() {
        assert_eq!(
            decode(&json!({"$integer": "AQAAAAAAAAA="})).unwrap(),
            Value::Int(1)
        );
        assert_eq!(
            decode(&json!({"$integer": "//////////8="})).unwrap(),
            Value::Int(-1)
        );
        let big = (1i64 << 53) + 1;
        assert_eq!(decode(&enc_int(big)).unwrap(), Value::Int(big));
        assert_eq!(decode(&enc_int(i64::MAX)).unwrap(), Value::Int(i64::MAX));
        let Value::Float(nan) = decode(&json!({"$float": "AAAAAAAA+H8="})).unwrap() else {
            panic!()
        };
        assert!(nan.is_nan());
        assert_eq!(
            decode(&json!({"$float": "AAAAAAAA8H8="})).unwrap(),
            Value::Float(f64::INFINITY)
        );
        assert_eq!(
            decode(&json!({"$float": "AAAAAAAA8P8="})).unwrap(),
            Value::Float(f64::NEG_INFINITY)
        );
        let Value::Float(nz) = decode(&json!({"$float": "AAAAAAAAAIA="})).unwrap() else {
            panic!()
        };
        assert!(nz == 0.0 && nz.is_sign_negative());
        assert_eq!(
            decode(&json!({"$bytes": "aGVsbG8="})).unwrap(),
            Value::Bytes(b"hello".to_vec())
        );
        let doc: Json = serde_json::from_str(
            r#"{"a":[1.5,{"$integer":"KgAAAAAAAAA="}],"b":{"c":"x"},"d":0.1}"#,
        )
        .unwrap();
        assert_eq!(
            decode(&doc).unwrap(),
            Value::Document(vec![
                (
                    "a".into(),
                    Value::Array(vec![Value::Float(1.5), Value::Int(42)])
                ),
                (
                    "b".into(),
                    Value::Document(vec![("c".into(), Value::Text("x".into()))])
                ),
                ("d".into(), Value::Float(0.1)),
            ])
        );
        assert!(decode(&json!({"$integer": "AQ=="})).is_err());
    }

    #[test]
    fn creation_time_keeps_microseconds() {
        assert_eq!(
            creation_time(1_700_000_000_123.456).unwrap(),
            Value::Temporal(
                TemporalKind::Timestamptz,
                "2023-11-14 22:13:20.123456+00".into()
            )
        );
        assert_eq!(
            creation_time(0.0).unwrap(),
            Value::Temporal(
                TemporalKind::Timestamptz,
                "1970-01-01 00:00:00.000000+00".into()
            )
        );
    }

    proptest! {
        #[test]
        fn int64_and_float64_round_trip(i in any::<i64>(), bits in any::<u64>()) {
            prop_assert_eq!(decode(&enc_int(i)).unwrap(), Value::Int(i));
            let f = f64::from_bits(bits);
            let mut s = String::new();
            ferry_pipeline::json::base64_into(&mut s, &f.to_le_bytes());
            let Value::Float(g) = decode(&json!({"$float": s})).unwrap() else { panic!() };
            prop_assert_eq!(g.to_bits(), bits);
            if f.is_finite() {
                // A plain JSON number (Convex's shortest text) reads back exact.
                let n: Json = serde_json::from_str(&format!("{f:?}")).unwrap();
                let Value::Float(h) = decode(&n).unwrap() else { panic!() };
                prop_assert_eq!(h.to_bits(), f.to_bits());
            }
        }
    }
}
