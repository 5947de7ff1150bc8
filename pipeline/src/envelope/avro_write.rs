//! Writing the Avro datum of an envelope: the Debezium-shaped record, each
//! value in its column's natural branch or as a `ferry.Value`.

use super::decimal::decimal_to_avro;
use super::schema::{temporal_index, AvroType, SchemaPlan};
use super::{invalid, unencodable, EnvelopeError, MAX_DEPTH};
use crate::event::{ChangeEvent, Datum, Op, Row};
use crate::value::{Numeric, Value};

pub(super) fn op_code(op: Op) -> &'static str {
    match op {
        Op::Insert => "c",
        Op::Update => "u",
        Op::Delete => "d",
        Op::Read => "r",
        Op::Truncate => "t",
    }
}

pub(super) fn op_from_code(s: &str) -> Result<Op, EnvelopeError> {
    Ok(match s {
        "c" => Op::Insert,
        "u" => Op::Update,
        "d" => Op::Delete,
        "r" => Op::Read,
        "t" => Op::Truncate,
        other => return Err(invalid(format!("unknown op {other:?}"))),
    })
}

pub(super) struct AvroWriter {
    pub(super) buf: Vec<u8>,
}

impl AvroWriter {
    /// Zig-zag varint (Avro `int`, `long`, lengths, union indexes).
    pub(super) fn long(&mut self, v: i64) {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        while n >= 0x80 {
            self.buf.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.buf.push(n as u8);
    }

    pub(super) fn bool(&mut self, b: bool) {
        self.buf.push(u8::from(b));
    }

    pub(super) fn double(&mut self, f: f64) {
        self.buf.extend_from_slice(&f.to_le_bytes());
    }

    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.long(b.len() as i64);
        self.buf.extend_from_slice(b);
    }

    pub(super) fn string(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
}

pub(super) fn write_envelope(
    w: &mut AvroWriter,
    plan: &SchemaPlan,
    ev: &ChangeEvent,
    pipeline: &str,
    now_ms: i64,
) -> Result<(), EnvelopeError> {
    write_row_opt(w, plan, ev.before.as_ref(), None)?;
    let mut unchanged = Vec::new();
    write_row_opt(w, plan, ev.after.as_ref(), Some(&mut unchanged))?;
    if !unchanged.is_empty() {
        w.long(unchanged.len() as i64);
        for &i in &unchanged {
            w.string(&plan.columns[i].field);
        }
    }
    w.long(0);
    w.string(op_code(ev.op));
    // ferry.Source
    w.string("ferry");
    w.string(pipeline);
    w.string(&ev.table.id.schema);
    w.string(&ev.table.id.name);
    // Avro has no unsigned long: the bits travel as is.
    w.long(ev.position.commit_lsn as i64);
    w.long(ev.position.ordinal as i64);
    match ev.xid {
        None => w.long(0),
        Some(x) => {
            w.long(1);
            w.long(i64::from(x));
        }
    }
    match &ev.resume_token {
        None => w.long(0),
        Some(t) => {
            w.long(1);
            w.string(t);
        }
    }
    w.long(ev.commit_ts_micros.div_euclid(1000));
    w.long(ev.commit_ts_micros);
    w.bool(ev.op == Op::Read);
    // Envelope ts_ms; the marker field is null and takes no byte.
    w.long(now_ms);
    Ok(())
}

pub(super) fn check_row_len(plan: &SchemaPlan, row: &Row) -> Result<(), EnvelopeError> {
    if row.len() != plan.columns.len() {
        return Err(unencodable(format!(
            "a row of {} datums for the {} columns of {}",
            row.len(),
            plan.columns.len(),
            plan.table.id
        )));
    }
    Ok(())
}

pub(super) fn write_row_opt(
    w: &mut AvroWriter,
    plan: &SchemaPlan,
    row: Option<&Row>,
    mut unchanged: Option<&mut Vec<usize>>,
) -> Result<(), EnvelopeError> {
    let Some(row) = row else {
        w.long(0);
        return Ok(());
    };
    check_row_len(plan, row)?;
    w.long(1);
    for (i, (col, datum)) in plan.columns.iter().zip(row).enumerate() {
        match datum {
            Datum::UnchangedToast => match unchanged.as_deref_mut() {
                Some(u) => {
                    u.push(i);
                    w.long(0);
                }
                None => return Err(unencodable("an unchanged TOAST datum in `before`")),
            },
            Datum::Value(Value::Null) => w.long(0),
            Datum::Value(v) => {
                if !write_natural(w, col.avro_type, v) {
                    w.long(col.avro_type.generic_branch());
                    write_generic(w, v, 0)?;
                }
            }
        }
    }
    Ok(())
}

/// Writes the natural branch when `v` is the column type's natural variant;
/// writes nothing and returns false otherwise.
pub(super) fn write_natural(w: &mut AvroWriter, avro_type: AvroType, v: &Value) -> bool {
    match (avro_type, v) {
        (AvroType::Boolean, Value::Bool(b)) => {
            w.long(1);
            w.bool(*b);
        }
        (AvroType::Int, Value::Int(i)) if i32::try_from(*i).is_ok() => {
            w.long(1);
            w.long(*i);
        }
        (AvroType::Long, Value::Int(i)) => {
            w.long(1);
            w.long(*i);
        }
        (AvroType::Double, Value::Float(f)) => {
            w.long(1);
            w.double(*f);
        }
        (AvroType::Decimal { precision, scale }, Value::Numeric(Numeric::Finite(d))) => {
            match decimal_to_avro(d, precision, scale) {
                Some(b) => {
                    w.long(1);
                    w.bytes(&b);
                }
                None => return false,
            }
        }
        (AvroType::NumericText, Value::Numeric(Numeric::Finite(d))) => {
            w.long(1);
            w.string(&d.to_string());
        }
        (AvroType::Text, Value::Text(s)) | (AvroType::Json, Value::Json(s)) => {
            w.long(1);
            w.string(s);
        }
        // The natural branch does not carry the kind: only the column's own.
        (AvroType::Temporal(k), Value::Temporal(vk, s)) if k == *vk => {
            w.long(1);
            w.string(s);
        }
        (AvroType::Uuid, Value::Uuid(u)) => {
            w.long(1);
            let mut buf = uuid::Uuid::encode_buffer();
            w.string(u.hyphenated().encode_lower(&mut buf));
        }
        (AvroType::Bytes, Value::Bytes(b)) => {
            w.long(1);
            w.bytes(b);
        }
        _ => return false,
    }
    true
}

/// A `ferry.Value` record.
pub(super) fn write_generic(
    w: &mut AvroWriter,
    v: &Value,
    depth: usize,
) -> Result<(), EnvelopeError> {
    let too_deep = || unencodable(format!("a value nested deeper than {MAX_DEPTH} levels"));
    match v {
        Value::Null => w.long(0),
        Value::Bool(b) => {
            w.long(1);
            w.bool(*b);
        }
        Value::Int(i) => {
            w.long(2);
            w.long(*i);
        }
        Value::Float(f) => {
            w.long(3);
            w.double(*f);
        }
        Value::Numeric(n) => {
            w.long(4);
            w.string(&n.to_string());
        }
        Value::Text(s) => {
            w.long(5);
            w.string(s);
        }
        Value::Json(s) => {
            w.long(6);
            w.string(s);
        }
        Value::Uuid(u) => {
            w.long(7);
            w.buf.extend_from_slice(u.as_bytes());
        }
        Value::Bytes(b) => {
            w.long(8);
            w.bytes(b);
        }
        Value::Temporal(k, s) => {
            w.long(9);
            w.long(temporal_index(*k) as i64);
            w.string(s);
        }
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep());
            }
            w.long(10);
            if !items.is_empty() {
                w.long(items.len() as i64);
                for item in items {
                    write_generic(w, item, depth + 1)?;
                }
            }
            w.long(0);
        }
        Value::ObjectId(id) => {
            w.long(11);
            w.buf.extend_from_slice(id);
        }
        Value::Document(fields) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep());
            }
            w.long(12);
            if !fields.is_empty() {
                w.long(fields.len() as i64);
                for (name, item) in fields {
                    w.string(name);
                    write_generic(w, item, depth + 1)?;
                }
            }
            w.long(0);
        }
    }
    Ok(())
}
