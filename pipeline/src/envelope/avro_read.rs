//! Reading an Avro datum back: every length and count is checked against
//! the bytes left, and nesting is bounded, before anything is allocated.

use std::sync::Arc;

use super::avro_write::op_from_code;
use super::decimal::decimal_from_avro;
use super::schema::{AvroType, SchemaPlan, TEMPORAL_KINDS};
use super::{invalid, EnvelopeError, GENERIC_BRANCHES, MAX_DEPTH};
use crate::event::{ChangeEvent, Datum, Position, Row};
use crate::value::{Numeric, Value};

/// Reads Avro binary from a slice. Every length and count is checked
/// against the bytes left before anything is allocated.
pub(super) struct AvroReader<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> AvroReader<'a> {
    pub(super) fn long(&mut self) -> Result<i64, EnvelopeError> {
        let mut n = 0u64;
        let mut shift = 0u32;
        loop {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| invalid("truncated value"))?;
            self.buf = rest;
            if shift == 63 && b > 1 {
                return Err(invalid("varint longer than 64 bits"));
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    pub(super) fn int(&mut self) -> Result<i32, EnvelopeError> {
        i32::try_from(self.long()?).map_err(|_| invalid("int out of range"))
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        if n > self.buf.len() {
            return Err(invalid("truncated value"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(super) fn bytes(&mut self) -> Result<&'a [u8], EnvelopeError> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| invalid("negative length"))?;
        self.take(n)
    }

    pub(super) fn string(&mut self) -> Result<&'a str, EnvelopeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| invalid("a string that is not UTF-8"))
    }

    pub(super) fn bool(&mut self) -> Result<bool, EnvelopeError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(invalid(format!("boolean byte {b}"))),
        }
    }

    pub(super) fn double(&mut self) -> Result<f64, EnvelopeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(f64::from_le_bytes(b))
    }

    pub(super) fn union(&mut self, branches: i64) -> Result<i64, EnvelopeError> {
        let i = self.long()?;
        if (0..branches).contains(&i) {
            Ok(i)
        } else {
            Err(invalid(format!("union branch {i} of {branches}")))
        }
    }

    /// The item count of the next array block, 0 at the end. Every item
    /// Ferry writes takes at least one byte, which bounds the count.
    pub(super) fn block(&mut self) -> Result<usize, EnvelopeError> {
        let n = self.long()?;
        let count = if n < 0 {
            // A negative count is followed by the block's size in bytes.
            let _size = self.long()?;
            n.checked_neg()
                .ok_or_else(|| invalid("array block count"))?
        } else {
            n
        };
        usize::try_from(count)
            .ok()
            .filter(|&c| c <= self.buf.len())
            .ok_or_else(|| invalid("array block count beyond the value"))
    }
}

pub(super) fn read_envelope(plan: &SchemaPlan, datum: &[u8]) -> Result<ChangeEvent, EnvelopeError> {
    let mut r = AvroReader { buf: datum };
    let before = read_row_opt(&mut r, plan)?;
    let mut after = read_row_opt(&mut r, plan)?;
    loop {
        let n = r.block()?;
        if n == 0 {
            break;
        }
        for _ in 0..n {
            let name = r.string()?;
            mark_unchanged(plan, after.as_mut(), name)?;
        }
    }
    let op = op_from_code(r.string()?)?;
    let _connector = r.string()?;
    let _pipeline = r.string()?;
    let schema = r.string()?;
    let table = r.string()?;
    if schema != plan.table.id.schema || table != plan.table.id.name {
        return Err(invalid(format!(
            "source {schema}.{table} in an envelope of {}",
            plan.table.id
        )));
    }
    let commit_lsn = r.long()? as u64;
    let ordinal = r.long()? as u64;
    let xid = match r.union(2)? {
        0 => None,
        _ => Some(u32::try_from(r.long()?).map_err(|_| invalid("xid out of range"))?),
    };
    let resume_token = match r.union(2)? {
        0 => None,
        _ => Some(Arc::<str>::from(r.string()?)),
    };
    let _ts_ms = r.long()?;
    let commit_ts_micros = r.long()?;
    let _snapshot = r.bool()?;
    let _encoded_ms = r.long()?;
    if !r.buf.is_empty() {
        return Err(invalid(format!("{} bytes after the envelope", r.buf.len())));
    }
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

pub(super) fn mark_unchanged(
    plan: &SchemaPlan,
    after: Option<&mut Row>,
    name: &str,
) -> Result<(), EnvelopeError> {
    let i = *plan
        .field_index
        .get(name)
        .ok_or_else(|| invalid(format!("unchanged column {name:?} is not in the table")))?;
    let row = after.ok_or_else(|| invalid("unchanged columns without an `after` row"))?;
    match &mut row[i] {
        d @ Datum::Value(Value::Null) => *d = Datum::UnchangedToast,
        _ => return Err(invalid(format!("unchanged column {name:?} holds a value"))),
    }
    Ok(())
}

pub(super) fn read_row_opt(
    r: &mut AvroReader<'_>,
    plan: &SchemaPlan,
) -> Result<Option<Row>, EnvelopeError> {
    if r.union(2)? == 0 {
        return Ok(None);
    }
    let mut row = Vec::with_capacity(plan.columns.len());
    for col in &plan.columns {
        let generic = col.avro_type.generic_branch();
        let v = match r.union(generic + 1)? {
            0 => Value::Null,
            b if b == generic => read_generic(r, 0)?,
            _ => read_natural(r, col.avro_type)?,
        };
        row.push(Datum::Value(v));
    }
    Ok(Some(row))
}

pub(super) fn read_natural(
    r: &mut AvroReader<'_>,
    avro_type: AvroType,
) -> Result<Value, EnvelopeError> {
    Ok(match avro_type {
        AvroType::Boolean => Value::Bool(r.bool()?),
        AvroType::Int => Value::Int(i64::from(r.int()?)),
        AvroType::Long => Value::Int(r.long()?),
        AvroType::Double => Value::Float(r.double()?),
        AvroType::Decimal { precision, scale } => Value::Numeric(Numeric::Finite(
            decimal_from_avro(r.bytes()?, precision, scale)?,
        )),
        AvroType::NumericText => Value::Numeric(Numeric::Finite(
            r.string()?
                .parse()
                .map_err(|e| invalid(format!("numeric value: {e}")))?,
        )),
        AvroType::Text => Value::Text(r.string()?.to_owned()),
        AvroType::Json => Value::Json(r.string()?.to_owned()),
        AvroType::Temporal(k) => Value::Temporal(k, r.string()?.to_owned()),
        AvroType::Uuid => Value::Uuid(
            uuid::Uuid::parse_str(r.string()?).map_err(|e| invalid(format!("uuid: {e}")))?,
        ),
        AvroType::Bytes => Value::Bytes(r.bytes()?.to_vec()),
        AvroType::Generic => return Err(invalid("no natural branch for this column")),
    })
}

pub(super) fn read_generic(r: &mut AvroReader<'_>, depth: usize) -> Result<Value, EnvelopeError> {
    let too_deep = || invalid(format!("a value nested deeper than {MAX_DEPTH} levels"));
    Ok(match r.union(GENERIC_BRANCHES)? {
        0 => Value::Null,
        1 => Value::Bool(r.bool()?),
        2 => Value::Int(r.long()?),
        3 => Value::Float(r.double()?),
        4 => Value::Numeric(
            r.string()?
                .parse()
                .map_err(|e| invalid(format!("numeric value: {e}")))?,
        ),
        5 => Value::Text(r.string()?.to_owned()),
        6 => Value::Json(r.string()?.to_owned()),
        7 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(r.take(16)?);
            Value::Uuid(uuid::Uuid::from_bytes(b))
        }
        8 => Value::Bytes(r.bytes()?.to_vec()),
        9 => {
            let k = usize::try_from(r.int()?)
                .ok()
                .and_then(|i| TEMPORAL_KINDS.get(i))
                .ok_or_else(|| invalid("temporal kind out of range"))?
                .0;
            Value::Temporal(k, r.string()?.to_owned())
        }
        10 => {
            if depth >= MAX_DEPTH {
                return Err(too_deep());
            }
            let mut items = Vec::new();
            loop {
                let n = r.block()?;
                if n == 0 {
                    break;
                }
                items.reserve(n.min(4096));
                for _ in 0..n {
                    items.push(read_generic(r, depth + 1)?);
                }
            }
            Value::Array(items)
        }
        11 => {
            let mut b = [0u8; 12];
            b.copy_from_slice(r.take(12)?);
            Value::ObjectId(b)
        }
        12 => {
            if depth >= MAX_DEPTH {
                return Err(too_deep());
            }
            let mut fields = Vec::new();
            loop {
                let n = r.block()?;
                if n == 0 {
                    break;
                }
                fields.reserve(n.min(4096));
                for _ in 0..n {
                    let name = r.string()?.to_owned();
                    fields.push((name, read_generic(r, depth + 1)?));
                }
            }
            Value::Document(fields)
        }
        b => return Err(invalid(format!("ferry.Value branch {b}"))),
    })
}
