//! JSON text of values: documents, arrays and scalars as exact JSON, for
//! jsonb columns (the sink) and for the mapping's `rest` column and JSON
//! coercions (the transform stage). One writer, so both agree digit for
//! digit.

use std::fmt::Write as _;

use crate::value::{object_id_hex, Numeric, Value};

/// The JSON text of a value (see [`write_json`]).
pub fn json_text(v: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, v);
    out
}

/// JSON text of a value inside a document, for a jsonb column.
///
/// Numbers stay exact: a numeric is written as its plain decimal digits
/// (jsonb stores JSON numbers as numeric, so no digit is lost), integers
/// as integers, floats in their shortest round-trip form. JSON has no
/// NaN or infinities, so those become the strings `"NaN"`, `"Infinity"`,
/// `"-Infinity"`. Types JSON lacks use MongoDB Extended JSON wrappers
/// (`{"$oid": …}`, `{"$binary": …}`) so that they stay recognisable;
/// temporal values and UUIDs become their text. [`Value::Json`] is already
/// JSON text and is embedded as is.
pub fn write_json(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) if f.is_finite() => out.push_str(&float_text(*f)),
        Value::Float(f) => write_json_string(out, &float_text(*f)),
        Value::Numeric(n @ Numeric::Finite(_)) => {
            // Plain notation, no leading zeros: valid JSON number syntax.
            let _ = write!(out, "{n}");
        }
        Value::Numeric(n) => write_json_string(out, &n.to_string()),
        Value::Text(s) | Value::Temporal(_, s) => write_json_string(out, s),
        Value::Json(s) => out.push_str(s),
        Value::Uuid(u) => write_json_string(out, &u.to_string()),
        Value::Bytes(b) => {
            // `Bytes` carries no BSON subtype, so it is written as generic.
            out.push_str(r#"{"$binary":{"base64":""#);
            base64_into(out, b);
            out.push_str(r#"","subType":"00"}}"#);
        }
        Value::ObjectId(id) => {
            out.push_str(r#"{"$oid":""#);
            out.push_str(&object_id_hex(id));
            out.push_str(r#""}"#);
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Value::Document(fields) => {
            out.push('{');
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(out, name);
                out.push(':');
                write_json(out, item);
            }
            out.push('}');
        }
    }
}

/// A JSON string literal. Control characters are escaped as JSON requires;
/// a NUL becomes `\u0000`, valid JSON that PostgreSQL's jsonb nevertheless
/// rejects, so such a row fails loudly at the target instead of losing it.
pub fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Standard base64 with padding (RFC 4648), as Extended JSON's `$binary`
/// uses.
pub fn base64_into(out: &mut String, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

/// Shortest text that reads back to the same f64 (Rust's formatting is
/// shortest round-trip, and float8in/float4in round correctly).
///
/// Plain notation for everyday magnitudes; outside them Rust's `Display`
/// would pad to hundreds of digits (`1e300` as `1000…000`), still exact
/// but bulky, so switch to scientific (`1e300`, `5e-324`), which float8in
/// accepts too. Specials use PostgreSQL's spellings, not Rust's `inf`.
///
/// Ferry's text of a float wherever it becomes SQL, JSON or a text column.
/// Two other spellings exist on purpose: `decimal::float_plain_text` (plain
/// digits always, for rejection records) and the Kafka envelope's
/// `float_envelope_text` (`{:?}` notation, frozen as wire format).
pub fn float_text(f: f64) -> String {
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
