//! The JSON form: the key (a JSON object of the key columns' exact text)
//! and the self-describing `{"schema", "payload"}` value, for debugging
//! and for the dead-letter queue.

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value as Json;

use super::avro_read::mark_unchanged;
use super::avro_write::{check_row_len, op_code, op_from_code};
use super::schema::{temporal_index, SchemaPlan, TEMPORAL_KINDS};
use super::{invalid, unencodable, EnvelopeError, MAX_DEPTH, MAX_JSON_DEPTH};
use crate::event::{ChangeEvent, Datum, Op, Position, Row};
use crate::value::{object_id_hex, Value};

/// A JSON string literal (the same writer as jsonb values').
pub(super) fn json_string(out: &mut String, s: &str) {
    crate::json::write_json_string(out, s);
}

pub(super) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Shortest text that reads back to the same f64, in Rust's `{:?}`
/// notation: always a `.` or an exponent (`1.0`, `1e300`, `5e-324`), so
/// the text reads as a float; PostgreSQL's spellings for the specials.
/// Unlike [`crate::json::float_text`] (`1`, plain up to 1e17) this is wire
/// format: it is in encoded keys and tagged values, so it never changes.
pub(super) fn float_envelope_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        format!("{f:?}")
    }
}

pub(super) fn parse_float_text(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok().filter(|f| f.is_finite()),
    }
}

/// A key column's value: exact text, JSON arrays/objects for nested ones.
pub(super) fn key_value(out: &mut String, v: Option<&Value>, depth: usize) {
    let text: String = match v {
        None | Some(Value::Null) => {
            out.push_str("null");
            return;
        }
        // Such an event cannot be encoded anyway (MAX_DEPTH).
        Some(Value::Array(_) | Value::Document(_)) if depth >= MAX_DEPTH => {
            out.push_str("null");
            return;
        }
        Some(Value::Array(items)) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                key_value(out, Some(item), depth + 1);
            }
            out.push(']');
            return;
        }
        Some(Value::Document(fields)) => {
            out.push('{');
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(out, name);
                out.push(':');
                key_value(out, Some(item), depth + 1);
            }
            out.push('}');
            return;
        }
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Int(i)) => i.to_string(),
        Some(Value::Float(f)) => float_envelope_text(*f),
        Some(Value::Numeric(n)) => n.to_string(),
        Some(Value::Text(s) | Value::Json(s) | Value::Temporal(_, s)) => {
            json_string(out, s);
            return;
        }
        Some(Value::Uuid(u)) => u.to_string(),
        Some(Value::Bytes(b)) => format!("\\x{}", hex(b)),
        Some(Value::ObjectId(id)) => object_id_hex(id),
    };
    json_string(out, &text);
}

pub(super) fn encode_json(
    plan: &SchemaPlan,
    ev: &ChangeEvent,
    pipeline: &str,
    now_ms: i64,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = String::with_capacity(plan.table_json.len() + 320 + 32 * plan.columns.len());
    out.push_str(r#"{"schema":"#);
    out.push_str(&plan.table_json);
    out.push_str(r#","payload":{"before":"#);
    json_row(&mut out, plan, ev.before.as_ref(), None)?;
    out.push_str(r#","after":"#);
    let mut unchanged = Vec::new();
    json_row(&mut out, plan, ev.after.as_ref(), Some(&mut unchanged))?;
    out.push_str(r#","unchanged":["#);
    for (n, &i) in unchanged.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        json_string(&mut out, &plan.columns[i].field);
    }
    let _ = write!(
        out,
        r#"],"op":"{}","source":{{"connector":"ferry","name":"#,
        op_code(ev.op)
    );
    json_string(&mut out, pipeline);
    out.push_str(r#","schema":"#);
    json_string(&mut out, &ev.table.id.schema);
    out.push_str(r#","table":"#);
    json_string(&mut out, &ev.table.id.name);
    let _ = write!(
        out,
        r#","commit_lsn":{},"ordinal":{},"xid":"#,
        ev.position.commit_lsn, ev.position.ordinal
    );
    match ev.xid {
        Some(x) => {
            let _ = write!(out, "{x}");
        }
        None => out.push_str("null"),
    }
    out.push_str(r#","resume_token":"#);
    match &ev.resume_token {
        Some(t) => json_string(&mut out, t),
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        r#","ts_ms":{},"ts_us":{},"snapshot":{}}},"ts_ms":{now_ms}}}}}"#,
        ev.commit_ts_micros.div_euclid(1000),
        ev.commit_ts_micros,
        ev.op == Op::Read
    );
    Ok(out.into_bytes())
}

pub(super) fn json_row(
    out: &mut String,
    plan: &SchemaPlan,
    row: Option<&Row>,
    mut unchanged: Option<&mut Vec<usize>>,
) -> Result<(), EnvelopeError> {
    let Some(row) = row else {
        out.push_str("null");
        return Ok(());
    };
    check_row_len(plan, row)?;
    out.push('{');
    for (i, (col, datum)) in plan.columns.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(out, &col.field);
        out.push(':');
        match datum {
            Datum::UnchangedToast => match unchanged.as_deref_mut() {
                Some(u) => {
                    u.push(i);
                    out.push_str("null");
                }
                None => return Err(unencodable("an unchanged TOAST datum in `before`")),
            },
            Datum::Value(v) => json_value(out, v, 0)?,
        }
    }
    out.push('}');
    Ok(())
}

/// The tagged JSON form of a value: `null`, `true`/`false`, integers and
/// text as plain JSON; every other variant as a one-key object naming it.
pub(super) fn json_value(out: &mut String, v: &Value, depth: usize) -> Result<(), EnvelopeError> {
    let too_deep = || {
        unencodable(format!(
            "a value nested deeper than {MAX_JSON_DEPTH} levels (JSON encoding)"
        ))
    };
    let tagged = |out: &mut String, tag: &str, text: &str| {
        let _ = write!(out, r#"{{"{tag}":"#);
        json_string(out, text);
        out.push('}');
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Text(s) => json_string(out, s),
        // Every NaN reads back as the canonical one; keep any other bits.
        Value::Float(f) if f.is_nan() && f.to_bits() != f64::NAN.to_bits() => {
            tagged(out, "float_bits", &format!("{:016x}", f.to_bits()));
        }
        Value::Float(f) => tagged(out, "float", &float_envelope_text(*f)),
        Value::Numeric(n) => tagged(out, "numeric", &n.to_string()),
        Value::Json(s) => tagged(out, "json", s),
        Value::Uuid(u) => tagged(out, "uuid", &u.to_string()),
        Value::Bytes(b) => tagged(out, "bytes", &hex(b)),
        Value::Temporal(k, s) => tagged(out, TEMPORAL_KINDS[temporal_index(*k)].1, s),
        Value::ObjectId(id) => tagged(out, "oid", &object_id_hex(id)),
        Value::Array(items) => {
            if depth >= MAX_JSON_DEPTH {
                return Err(too_deep());
            }
            out.push_str(r#"{"array":["#);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_value(out, item, depth + 1)?;
            }
            out.push_str("]}");
        }
        Value::Document(fields) => {
            if depth >= MAX_JSON_DEPTH {
                return Err(too_deep());
            }
            // Alternating names and values: an array keeps order and
            // repeated names, and costs one nesting level less than pairs.
            out.push_str(r#"{"doc":["#);
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(out, name);
                out.push(',');
                json_value(out, item, depth + 1)?;
            }
            out.push_str("]}");
        }
    }
    Ok(())
}

pub(super) fn read_json_payload(
    plan: &SchemaPlan,
    payload: &serde_json::Map<String, Json>,
) -> Result<ChangeEvent, EnvelopeError> {
    let field = |name: &str| {
        payload
            .get(name)
            .ok_or_else(|| invalid(format!("payload without {name}")))
    };
    let before = read_json_row(plan, field("before")?)?;
    let mut after = read_json_row(plan, field("after")?)?;
    for name in field("unchanged")?
        .as_array()
        .ok_or_else(|| invalid("unchanged is not an array"))?
    {
        let name = name
            .as_str()
            .ok_or_else(|| invalid("unchanged holds a non-string"))?;
        mark_unchanged(plan, after.as_mut(), name)?;
    }
    let op = op_from_code(
        field("op")?
            .as_str()
            .ok_or_else(|| invalid("op is not a string"))?,
    )?;
    let source = field("source")?
        .as_object()
        .ok_or_else(|| invalid("source is not an object"))?;
    let get = |name: &str| {
        source
            .get(name)
            .ok_or_else(|| invalid(format!("source without {name}")))
    };
    let bad = |name: &str| invalid(format!("source.{name} has the wrong type"));
    let schema = get("schema")?.as_str().ok_or_else(|| bad("schema"))?;
    let table = get("table")?.as_str().ok_or_else(|| bad("table"))?;
    if schema != plan.table.id.schema || table != plan.table.id.name {
        return Err(invalid(format!(
            "source {schema}.{table} in a value of {}",
            plan.table.id
        )));
    }
    let commit_lsn = get("commit_lsn")?
        .as_u64()
        .ok_or_else(|| bad("commit_lsn"))?;
    let ordinal = get("ordinal")?.as_u64().ok_or_else(|| bad("ordinal"))?;
    let xid = match get("xid")? {
        Json::Null => None,
        x => Some(
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad("xid"))?,
        ),
    };
    let resume_token = match get("resume_token")? {
        Json::Null => None,
        t => Some(Arc::<str>::from(
            t.as_str().ok_or_else(|| bad("resume_token"))?,
        )),
    };
    let commit_ts_micros = get("ts_us")?.as_i64().ok_or_else(|| bad("ts_us"))?;
    Ok(ChangeEvent {
        table: Arc::clone(&plan.table),
        op,
        before,
        after,
        position: Position {
            commit_lsn,
            ordinal,
        },
        xid,
        commit_ts_micros,
        resume_token,
    })
}

pub(super) fn read_json_row(plan: &SchemaPlan, v: &Json) -> Result<Option<Row>, EnvelopeError> {
    let obj = match v {
        Json::Null => return Ok(None),
        Json::Object(obj) => obj,
        _ => return Err(invalid("a row that is not an object")),
    };
    if obj.len() != plan.columns.len() {
        return Err(invalid(format!(
            "a row of {} fields for {} columns",
            obj.len(),
            plan.columns.len()
        )));
    }
    plan.columns
        .iter()
        .map(|c| {
            let v = obj
                .get(&c.field)
                .ok_or_else(|| invalid(format!("a row without {:?}", c.field)))?;
            Ok(Datum::Value(read_json_value(v, 0)?))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

pub(super) fn read_json_value(v: &Json, depth: usize) -> Result<Value, EnvelopeError> {
    let bad = |what: &str| invalid(format!("bad JSON value: {what}"));
    let obj = match v {
        Json::Null => return Ok(Value::Null),
        Json::Bool(b) => return Ok(Value::Bool(*b)),
        Json::Number(n) => return n.as_i64().map(Value::Int).ok_or_else(|| bad("not an i64")),
        Json::String(s) => return Ok(Value::Text(s.clone())),
        Json::Array(_) => return Err(bad("a bare array")),
        Json::Object(obj) => obj,
    };
    let mut entries = obj.iter();
    let (Some((tag, payload)), None) = (entries.next(), entries.next()) else {
        return Err(bad("an object with other than one tag"));
    };
    if let Some(&(kind, _)) = TEMPORAL_KINDS.iter().find(|(_, t)| t == tag) {
        let s = payload.as_str().ok_or_else(|| bad(tag))?;
        return Ok(Value::Temporal(kind, s.to_owned()));
    }
    let text = || payload.as_str().ok_or_else(|| bad(tag));
    Ok(match tag.as_str() {
        "float" => Value::Float(parse_float_text(text()?).ok_or_else(|| bad("float"))?),
        "float_bits" => Value::Float(f64::from_bits(
            u64::from_str_radix(text()?, 16).map_err(|_| bad("float_bits"))?,
        )),
        "numeric" => Value::Numeric(text()?.parse().map_err(|_| bad("numeric"))?),
        "json" => Value::Json(text()?.to_owned()),
        "uuid" => Value::Uuid(uuid::Uuid::parse_str(text()?).map_err(|_| bad("uuid"))?),
        "bytes" => Value::Bytes(unhex(text()?).ok_or_else(|| bad("bytes"))?),
        "oid" => Value::ObjectId(
            unhex(text()?)
                .and_then(|b| <[u8; 12]>::try_from(b).ok())
                .ok_or_else(|| bad("oid"))?,
        ),
        "array" | "doc" if depth >= MAX_JSON_DEPTH => return Err(bad("nested too deeply")),
        "array" => Value::Array(
            payload
                .as_array()
                .ok_or_else(|| bad("array"))?
                .iter()
                .map(|item| read_json_value(item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        "doc" => {
            let items = payload.as_array().ok_or_else(|| bad("doc"))?;
            if items.len() % 2 != 0 {
                return Err(bad("doc"));
            }
            Value::Document(
                items
                    .chunks(2)
                    .map(|pair| {
                        let name = pair[0].as_str().ok_or_else(|| bad("doc field name"))?;
                        Ok((name.to_owned(), read_json_value(&pair[1], depth + 1)?))
                    })
                    .collect::<Result<_, EnvelopeError>>()?,
            )
        }
        other => return Err(bad(other)),
    })
}
