//! A batch encoded into statement parameters ahead of time.
//!
//! Encoding every value into text and the text into PostgreSQL's binary
//! `text[]` format is CPU work that needs no connection: the runtime does it
//! ([`prepare`]) while the previous batch is still committing, so the
//! target is not left waiting for it.

use std::collections::HashMap;

use bytes::BytesMut;
use ferry_pipeline::batch::{Batch, RowChange, TableBatch};
use ferry_pipeline::event::Datum;
use ferry_pipeline::value::Value;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::literal;

/// Header of a one-dimensional array: ndim, has-null flag, element type,
/// length, lower bound.
const HEADER: usize = 20;
const TEXT_OID: u32 = 25;

/// A `text[]` parameter in PostgreSQL's binary array format.
#[derive(Debug, Clone)]
pub struct TextArray {
    bytes: Vec<u8>,
}

/// Builds a [`TextArray`] element by element.
pub struct TextArrayBuilder {
    bytes: Vec<u8>,
    len: u32,
    has_null: bool,
}

impl TextArrayBuilder {
    pub fn with_capacity(elements: usize) -> Self {
        let mut bytes = Vec::with_capacity(HEADER + elements * 16);
        bytes.resize(HEADER, 0);
        Self {
            bytes,
            len: 0,
            has_null: false,
        }
    }

    pub fn push(&mut self, text: Option<&str>) {
        self.len += 1;
        match text {
            None => {
                self.has_null = true;
                self.bytes.extend_from_slice(&(-1i32).to_be_bytes());
            }
            Some(t) => {
                self.bytes
                    .extend_from_slice(&(t.len() as i32).to_be_bytes());
                self.bytes.extend_from_slice(t.as_bytes());
            }
        }
    }

    /// Appends a value's text, borrowing it where the value already holds
    /// text (most columns), so that encoding allocates nothing per value.
    pub fn push_value(&mut self, v: &Value) {
        match v {
            Value::Text(s) | Value::Json(s) | Value::Temporal(_, s) => self.push(Some(s)),
            Value::Int(i) => {
                use std::io::Write;
                // Length placeholder, then the digits, then the real length.
                let at = self.bytes.len();
                self.bytes.extend_from_slice(&[0; 4]);
                let _ = write!(self.bytes, "{i}");
                let len = (self.bytes.len() - at - 4) as i32;
                self.bytes[at..at + 4].copy_from_slice(&len.to_be_bytes());
                self.len += 1;
            }
            other => self.push(literal::to_pg_text(other).as_deref()),
        }
    }

    pub fn finish(mut self) -> TextArray {
        self.bytes[0..4].copy_from_slice(&1i32.to_be_bytes());
        self.bytes[4..8].copy_from_slice(&i32::from(self.has_null).to_be_bytes());
        self.bytes[8..12].copy_from_slice(&TEXT_OID.to_be_bytes());
        self.bytes[12..16].copy_from_slice(&(self.len as i32).to_be_bytes());
        self.bytes[16..20].copy_from_slice(&1i32.to_be_bytes());
        TextArray { bytes: self.bytes }
    }
}

impl ToSql for TextArray {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.bytes);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT_ARRAY
    }

    to_sql_checked!();
}

/// One group of rows and their column arrays.
#[derive(Debug, Clone)]
pub struct Rows {
    pub count: usize,
    pub columns: Vec<TextArray>,
}

/// Everything one table's statements need.
#[derive(Debug, Clone, Default)]
pub struct PreparedTable {
    /// Key columns of the rows to delete.
    pub deletes: Option<Rows>,
    /// Every column of the rows to insert or replace.
    pub upserts: Option<Rows>,
    /// Per set of columns present (false: unchanged TOAST), those columns.
    pub patches: Vec<(Vec<bool>, Rows)>,
}

/// A batch with its parameters encoded.
pub struct PreparedBatch {
    pub batch: Batch,
    /// Parallel to `batch.tables`.
    pub tables: Vec<PreparedTable>,
    /// Parallel to `batch.arrivals`: each barrier's action (taken out of
    /// the arrival).
    pub actions: Vec<PreparedBatch>,
}

/// Encodes a batch (CPU only).
pub fn prepare(mut batch: Batch) -> PreparedBatch {
    let tables = batch.tables.iter().map(prepare_table).collect();
    let actions = batch
        .arrivals
        .iter_mut()
        .map(|a| prepare(std::mem::take(&mut a.action)))
        .collect();
    PreparedBatch {
        batch,
        tables,
        actions,
    }
}

fn prepare_table(tb: &TableBatch) -> PreparedTable {
    let width = tb.schema.columns.len();
    let mut deletes = Vec::new();
    let mut upserts = Vec::new();
    let mut patches: HashMap<Vec<bool>, Vec<&Vec<Datum>>> = HashMap::new();
    // Each row's final write, in the order the source made those writes.
    for r in tb.rows_by_last_touch().into_iter().map(|i| &tb.rows[i]) {
        match r {
            RowChange::Delete(k) => deletes.push(k),
            RowChange::Upsert(row) => upserts.push(row),
            RowChange::Patch(row) => {
                let mask: Vec<bool> = (0..width)
                    .map(|i| !matches!(row.get(i), Some(Datum::UnchangedToast)))
                    .collect();
                patches.entry(mask).or_default().push(row);
            }
            RowChange::Rekey { .. } | RowChange::Vanished => {}
        }
    }
    let mut out = PreparedTable::default();
    if !deletes.is_empty() {
        let keys = tb.schema.primary_key.len();
        let mut cols: Vec<TextArrayBuilder> = (0..keys)
            .map(|_| TextArrayBuilder::with_capacity(deletes.len()))
            .collect();
        for k in &deletes {
            for (i, col) in cols.iter_mut().enumerate() {
                col.push_value(k.get(i).unwrap_or(&Value::Null));
            }
        }
        out.deletes = Some(Rows {
            count: deletes.len(),
            columns: cols.into_iter().map(TextArrayBuilder::finish).collect(),
        });
    }
    if !upserts.is_empty() {
        let all: Vec<usize> = (0..width).collect();
        out.upserts = Some(column_arrays(&upserts, &all));
    }
    for (mask, rows) in patches {
        let present: Vec<usize> = (0..width).filter(|&i| mask[i]).collect();
        let arrays = column_arrays(&rows, &present);
        out.patches.push((mask, arrays));
    }
    out
}

/// Column-major arrays of the chosen columns of `rows`; a row narrower than
/// the schema (written before a column was added) reads NULL there.
pub(crate) fn column_arrays(rows: &[&Vec<Datum>], columns: &[usize]) -> Rows {
    let mut out: Vec<TextArrayBuilder> = columns
        .iter()
        .map(|_| TextArrayBuilder::with_capacity(rows.len()))
        .collect();
    for row in rows {
        for (j, &i) in columns.iter().enumerate() {
            match row.get(i) {
                Some(Datum::Value(v)) => out[j].push_value(v),
                _ => out[j].push(None),
            }
        }
    }
    Rows {
        count: rows.len(),
        columns: out.into_iter().map(TextArrayBuilder::finish).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_text_array_layout() {
        let mut b = TextArrayBuilder::with_capacity(2);
        b.push(Some("ab"));
        b.push(None);
        let a = b.finish();
        let expected: Vec<u8> = [
            &1i32.to_be_bytes()[..],
            &1i32.to_be_bytes(),
            &25u32.to_be_bytes(),
            &2i32.to_be_bytes(),
            &1i32.to_be_bytes(),
            &2i32.to_be_bytes(),
            b"ab",
            &(-1i32).to_be_bytes(),
        ]
        .concat();
        assert_eq!(a.bytes, expected);
    }

    #[test]
    fn values_encode_like_their_text() {
        let mut fast = TextArrayBuilder::with_capacity(4);
        let mut slow = TextArrayBuilder::with_capacity(4);
        for v in [
            Value::Int(-42),
            Value::Text("x y".into()),
            Value::Null,
            Value::Bool(true),
        ] {
            fast.push_value(&v);
            slow.push(literal::to_pg_text(&v).as_deref());
        }
        assert_eq!(fast.finish().bytes, slow.finish().bytes);
    }
}
