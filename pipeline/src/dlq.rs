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
//!
//! This module sits *below* [`crate::batch`]: a [`crate::batch::Batch`]
//! carries the records the transform stage parked, so that they are
//! written in the batch's transaction; it therefore holds only what a
//! parked record is and its codec (the envelope's JSON form). What turns a
//! batch's row change back into a change or a key
//! ([`crate::batch::event_for`], [`crate::batch::key_text`]) lives with the
//! rows, in `batch`; the runtime and the sinks decide when to park.

use std::sync::Arc;

use crate::envelope::{Decoder, Encoder, Encoding};
use crate::error::{PipelineError, Stage};
use crate::event::{ChangeEvent, Origin, Position};

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
    pub origin: Option<Origin>,
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
    use crate::batch::{event_for, key_text, RowChange};
    use crate::event::{Column, Datum, TableId, TableSchema};
    use crate::value::Value;

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
