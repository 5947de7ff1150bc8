//! The dead-letter queue: records that could not be mirrored, parked with
//! everything needed to fix and replay them, while good traffic flows on.
//!
//! A record is one row's change as the batch applied it (the row's last
//! image in the batch, or its delete), kept as a self-describing JSON
//! envelope (the Kafka bus's JSON form: the table's schema and the values,
//! exact), so that a replay rebuilds the very change.
//!
//! Order safety: a row whose earlier change is parked still receives its
//! later changes; the sink marks the parked record *superseded* in the same
//! transaction as the later change, and a replay never applies a superseded
//! record (it would move the row back to an older state). See
//! docs/operations.md.

use std::sync::Arc;

use crate::batch::RowChange;
use crate::error::{PipelineError, Stage};
use crate::event::{ChangeEvent, Datum, Op, Position, TableSchema};
use crate::kafka::envelope::{Decoder, Encoder, Encoding};
use crate::value::Value;

/// One parked record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The change, as [`encode_event`] wrote it.
    pub event: Vec<u8>,
    /// The row's key as JSON text (the same text for the same key), to find
    /// the records a later change supersedes.
    pub key: String,
    pub error: RecordError,
    /// The source position of the batch the change was applied in.
    pub position: Option<Position>,
    /// On the Kafka bus: the message the row's change came from.
    pub origin: Option<crate::batch::Origin>,
}

/// A record parked by a sink, with its table (what the Kafka bus mirrors
/// to its dead-letter topic).
#[derive(Debug, Clone)]
pub struct Parked {
    pub table: crate::event::TableId,
    pub record: DeadLetter,
    /// A later change of the same row landed in the same batch: the record
    /// is parked already superseded (a replay must not apply it).
    pub superseded: bool,
}

/// Told about records once they are parked (durably, with their batch).
pub type OnParked = Arc<dyn Fn(&[Parked]) + Send + Sync>;

/// Why a record was parked.
#[derive(Debug, Clone)]
pub struct RecordError {
    pub class: String,
    /// SQLSTATE, HTTP status, or a rule name.
    pub code: Option<String>,
    pub message: String,
    pub stage: String,
}

impl RecordError {
    pub fn of(e: &PipelineError) -> Self {
        Self {
            class: e.class.as_str().to_string(),
            code: e.code.clone(),
            message: e.message.clone(),
            stage: e.stage.as_str().to_string(),
        }
    }
}

/// The change a batch's row change stands for: the event that, applied
/// alone, has the same effect.
pub fn event_for(schema: &Arc<TableSchema>, change: &RowChange) -> Option<ChangeEvent> {
    let key_row = |key: &[Value]| -> Vec<Datum> {
        let mut row = vec![Datum::Value(Value::Null); schema.columns.len()];
        for (v, &i) in key.iter().zip(&schema.primary_key) {
            row[i] = Datum::Value(v.clone());
        }
        row
    };
    let (op, before, after) = match change {
        RowChange::Upsert(row) => (Op::Insert, None, Some(row.clone())),
        RowChange::Patch(row) => (Op::Update, None, Some(row.clone())),
        RowChange::Delete(key) => (Op::Delete, Some(key_row(key)), None),
        RowChange::Rekey { old_key, row } => {
            (Op::Update, Some(key_row(old_key)), Some(row.clone()))
        }
        RowChange::Vanished => return None,
    };
    let mut ev = ChangeEvent::snapshot_read(Arc::clone(schema), Vec::new());
    ev.op = op;
    ev.before = before;
    ev.after = after;
    Some(ev)
}

/// The key of `change` as JSON text.
pub fn key_text(schema: &TableSchema, change: &RowChange) -> Option<String> {
    let values: Vec<Value> = match change {
        RowChange::Upsert(row) | RowChange::Patch(row) | RowChange::Rekey { row, .. } => {
            crate::batch::key_values(schema, row)
        }
        RowChange::Delete(key) => key.clone(),
        RowChange::Vanished => return None,
    };
    Some(key_json(&values))
}

/// Key values as JSON text: exact (numbers and decimals as their digits),
/// one spelling per key.
pub fn key_json(values: &[Value]) -> String {
    let parts: Vec<serde_json::Value> = values
        .iter()
        .map(|v| serde_json::Value::String(value_text(v)))
        .collect();
    serde_json::Value::Array(parts).to_string()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Numeric(n) => n.to_string(),
        Value::Text(s) | Value::Json(s) => s.clone(),
        Value::Uuid(u) => u.to_string(),
        Value::Temporal(_, s) => s.clone(),
        Value::ObjectId(id) => crate::value::object_id_hex(id),
        other => format!("{other:?}"),
    }
}

/// The replayable form of a change (self-describing JSON, exact).
pub fn encode_event(ev: &ChangeEvent, pipeline: &str) -> Result<Vec<u8>, PipelineError> {
    Encoder::new(Encoding::Json, pipeline)
        .encode(ev)
        .map(|(bytes, _)| bytes)
        .map_err(|e| PipelineError::fatal(Stage::Sink, format!("encode a dead letter: {e}")))
}

/// The change in a parked record.
pub fn decode_event(bytes: &[u8]) -> Result<ChangeEvent, PipelineError> {
    Decoder::new()
        .decode(bytes)
        .map_err(|e| PipelineError::fatal(Stage::Sink, format!("unreadable dead letter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Column, TableId};

    fn schema() -> Arc<TableSchema> {
        let col = |name: &str, ty: &str, key: bool| Column {
            name: name.into(),
            type_oid: 0,
            type_sql: ty.into(),
            nullable: !key,
            is_key: key,
            enum_labels: None,
            id_map: None,
        };
        Arc::new(TableSchema {
            id: TableId::new("public", "payments"),
            columns: vec![
                col("id", "bigint", true),
                col("amount", "numeric(12,2)", false),
            ],
            primary_key: vec![0],
            child: None,
        })
    }

    #[test]
    fn records_round_trip_exactly() {
        let s = schema();
        let amount = Value::Numeric("12345678901.50".parse().unwrap());
        for change in [
            RowChange::Upsert(vec![
                Datum::Value(Value::Int(7)),
                Datum::Value(amount.clone()),
            ]),
            RowChange::Patch(vec![Datum::Value(Value::Int(7)), Datum::UnchangedToast]),
            RowChange::Delete(vec![Value::Int(7)]),
        ] {
            let ev = event_for(&s, &change).unwrap();
            let back = decode_event(&encode_event(&ev, "p").unwrap()).unwrap();
            assert_eq!(back.op, ev.op);
            assert_eq!(back.before, ev.before);
            assert_eq!(back.after, ev.after);
            assert_eq!(*back.table, *s);
            assert_eq!(key_text(&s, &change).unwrap(), "[\"7\"]");
        }
        assert!(event_for(&s, &RowChange::Vanished).is_none());
    }
}
