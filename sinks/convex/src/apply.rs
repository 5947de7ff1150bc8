//! A batch as calls of the module's `ferry:apply`: rows encoded in Convex's
//! JSON, split so that each call stays well inside Convex's per-transaction
//! limits, the checkpoint on the last call. Pure: no I/O.
//!
//! Per call at most `rows_per_call` rows (each row reads one index range
//! and writes two documents: Convex allows 4096 ranges and 16 000 writes)
//! and about [`MAX_CALL_BYTES`] of arguments (Convex allows 16 MiB of
//! arguments and of writes).

use ferry_pipeline::batch::{event_for, key_json, key_text, Batch, RowChange};
use ferry_pipeline::dlq::{encode_event, DeadLetter, Parked, RecordError};
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{Datum, Position, TableSchema};
use serde_json::{json, Value as Json};

use crate::value::{self, Options};

/// Arguments of one call stay under this many bytes (half of Convex's
/// 16 MiB, leaving room for what the module writes besides the rows).
pub(crate) const MAX_CALL_BYTES: usize = 8 << 20;

/// What the planner needs from the sink.
pub(crate) struct Context<'a> {
    pub pipeline: &'a str,
    pub opts: Options,
    pub table_order: &'a [String],
}

/// One row as the module reads it, with what is needed to park it.
pub(crate) struct PlannedRow {
    pub json: Json,
    pub bytes: usize,
    pub table: usize,
    pub index: usize,
}

/// A batch, planned.
pub(crate) struct Plan {
    pub truncate: Vec<String>,
    pub rows: Vec<PlannedRow>,
    /// Records the codec refused, parked with the batch.
    pub parked: Vec<Parked>,
    pub checkpoint: Json,
    pub bus_first: Vec<Json>,
    /// (table, row) of the records the codec refused, in the order they
    /// follow the batch's own parked records in `parked`.
    pub refused: Vec<(usize, usize)>,
}

/// (table, row) of the records the codec refused.
pub(crate) fn parked_of(plan: &Plan) -> Vec<(usize, usize)> {
    plan.refused.clone()
}

/// The Convex table a source table is written to: its name.
pub(crate) fn convex_table(schema: &TableSchema) -> String {
    schema.id.name.clone()
}

/// Fixed-width hex, so that versions compare as text in source order.
pub(crate) fn position_text(p: &Position) -> String {
    format!("{:016x}{:016x}", p.commit_lsn, p.ordinal)
}

/// Tables in the configured order (listed first), then batch order.
fn table_order(batch: &Batch, order: &[String]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..batch.tables.len()).collect();
    idx.sort_by_key(|&i| {
        let id = &batch.tables[i].schema.id;
        order
            .iter()
            .position(|t| *t == id.name || *t == id.to_string())
            .unwrap_or(usize::MAX)
    });
    idx
}

pub(crate) fn plan(batch: &Batch, cx: &Context<'_>) -> Result<Plan, PipelineError> {
    let mut plan = Plan {
        truncate: Vec::new(),
        rows: Vec::new(),
        parked: batch.parked.clone(),
        checkpoint: checkpoint(batch),
        bus_first: batch
            .bus
            .iter()
            .map(|((topic, partition), r)| json!({"topic": &**topic, "partition": partition, "first": r.first}))
            .collect(),
        refused: Vec::new(),
    };
    // On the embedded bus the batch's last position orders every row's
    // change; on the Kafka bus a row's partition offset does (positions of
    // several partitions do not form one order).
    let batch_version = batch
        .last_position
        .filter(|p| p.commit_lsn != 0)
        .map(|p| position_text(&p));
    for ti in table_order(batch, cx.table_order) {
        let tb = &batch.tables[ti];
        if !tb.prunes.is_empty() {
            return Err(PipelineError::fatal(
                Stage::Sink,
                "child tables of a mapping are not supported by the Convex sink yet",
            ));
        }
        let table = convex_table(&tb.schema);
        if tb.truncate || tb.snapshot_start {
            plan.truncate.push(table.clone());
        }
        for i in tb.rows_by_last_touch() {
            let change = &tb.rows[i];
            let version = match (&batch_version, tb.origins.get(i).and_then(Option::as_ref)) {
                (_, Some(o)) if !batch.bus.is_empty() => Some(format!("{:016x}", o.offset)),
                (v, _) if batch.bus.is_empty() => v.clone(),
                _ => None,
            };
            let encoded = encode_row(&tb.schema, change, &table, version.as_deref(), cx);
            match encoded {
                Ok(rows) => {
                    for json in rows {
                        let bytes = json.to_string().len();
                        plan.rows.push(PlannedRow {
                            json,
                            bytes,
                            table: ti,
                            index: i,
                        });
                    }
                }
                Err(rejection) => {
                    let e = PipelineError::new(
                        ferry_pipeline::error::ErrorClass::Permanent,
                        Stage::Sink,
                        rejection.message,
                    )
                    .with_code(rejection.rule);
                    plan.parked.push(park(batch, ti, i, cx.pipeline, &e)?);
                    plan.refused.push((ti, i));
                }
            }
        }
    }
    Ok(plan)
}

/// The parked record of row `i` of table `ti`.
pub(crate) fn park(
    batch: &Batch,
    ti: usize,
    i: usize,
    pipeline: &str,
    e: &PipelineError,
) -> Result<Parked, PipelineError> {
    let tb = &batch.tables[ti];
    let change = &tb.rows[i];
    let ev = event_for(&tb.schema, change)
        .ok_or_else(|| PipelineError::fatal(Stage::Sink, "a vanished row cannot be parked"))?;
    Ok(Parked {
        table: tb.schema.id.clone(),
        record: DeadLetter {
            event: encode_event(&ev, pipeline)?,
            key: key_text(&tb.schema, change).unwrap_or_default(),
            error: RecordError::of(e),
            position: batch.last_position,
            origin: tb.origins.get(i).cloned().flatten(),
        },
        superseded: false,
    })
}

fn op_name(change: &RowChange) -> &'static str {
    match change {
        RowChange::Delete(_) => "delete",
        RowChange::Patch(_) | RowChange::Rekey { .. } => "update",
        _ => "upsert",
    }
}

/// A parked record as the module's `parked` argument.
pub(crate) fn parked_json(p: &Parked, op: &str) -> Json {
    let r = &p.record;
    json!({
        "table": convex_table_of(&p.table),
        "key": r.key,
        "op": op,
        "event": String::from_utf8_lossy(&r.event),
        "errorClass": r.error.class,
        "errorCode": r.error.code,
        "errorMessage": r.error.message,
        "stage": r.error.stage,
        "position": r.position.map(|p| position_text(&p)),
        "origin": r.origin.as_ref().map(|o| json!({"topic": &*o.topic, "partition": o.partition, "offset": o.offset})),
        "superseded": p.superseded,
    })
}

fn convex_table_of(id: &ferry_pipeline::event::TableId) -> String {
    id.name.clone()
}

/// The op of a batch row, for its parked record.
pub(crate) fn op_of(batch: &Batch, ti: usize, i: usize) -> &'static str {
    op_name(&batch.tables[ti].rows[i])
}

fn encode_row(
    schema: &TableSchema,
    change: &RowChange,
    table: &str,
    version: Option<&str>,
    cx: &Context<'_>,
) -> Result<Vec<Json>, value::Rejection> {
    let key = |values: &[ferry_pipeline::value::Value]| key_json(values);
    let doc = |row: &[Datum]| {
        value::document(
            schema.columns.iter().zip(row).filter_map(|(c, d)| match d {
                Datum::Value(v) => Some((c.name.as_str(), c.type_sql.as_str(), v)),
                Datum::UnchangedToast => None,
            }),
            cx.opts,
        )
    };
    let row_key = |row: &[Datum]| {
        let values: Vec<_> = schema
            .primary_key
            .iter()
            .map(|&i| match row.get(i) {
                Some(Datum::Value(v)) => v.clone(),
                _ => ferry_pipeline::value::Value::Null,
            })
            .collect();
        key(&values)
    };
    let one = |op: &str, k: String, d: Option<Json>| {
        let mut j = json!({"table": table, "key": k, "op": op, "version": version});
        if let Some(d) = d {
            j["doc"] = d;
        }
        j
    };
    Ok(match change {
        RowChange::Upsert(row) => vec![one("upsert", row_key(row), Some(doc(row)?))],
        RowChange::Patch(row) => vec![one("patch", row_key(row), Some(doc(row)?))],
        RowChange::Delete(k) => vec![one("delete", key(k), None)],
        RowChange::Rekey { old_key, row } => {
            // The target may keep values only the old row has: a rekey
            // with unchanged large values cannot be rebuilt here.
            if row.iter().any(|d| matches!(d, Datum::UnchangedToast)) {
                return Err(value::Rejection {
                    rule: "convex-rekey-toast",
                    message: "a key-changing update that kept unchanged large values: the Convex sink needs the whole row (REPLICA IDENTITY FULL)".into(),
                });
            }
            vec![
                one("delete", key(old_key), None),
                one("upsert", row_key(row), Some(doc(row)?)),
            ]
        }
        RowChange::Vanished => Vec::new(),
    })
}

/// The checkpoint the batch's last call records.
fn checkpoint(batch: &Batch) -> Json {
    let mut snapshots: Vec<Json> = batch
        .tables
        .iter()
        .filter_map(|tb| {
            tb.snapshot_done
                .as_ref()
                .map(|(rows, state)| json!({"table": tb.schema.id.to_string(), "rows": rows, "state": state}))
        })
        .collect();
    snapshots.extend(
        batch
            .snapshot_marks
            .iter()
            .map(|(t, rows, state)| json!({"table": t.to_string(), "rows": rows, "state": state})),
    );
    let bus: Vec<Json> = batch
        .bus
        .iter()
        .map(|((topic, partition), r)| {
            json!({
                "topic": &**topic,
                "partition": partition,
                "next": r.next,
                "position": r.position.map(|p| position_text(&p)),
                "lastTimestamp": r.last_timestamp,
            })
        })
        .collect();
    json!({
        "position": batch.last_position.map(|p| position_text(&p)),
        "resumeToken": batch.last_resume_token.as_deref(),
        "snapshots": snapshots,
        "bus": bus,
    })
}

/// Splits the plan's rows into calls of at most `rows_per_call` rows and
/// [`MAX_CALL_BYTES`]; always at least one call (the checkpoint's).
pub(crate) fn chunks(rows: &[PlannedRow], rows_per_call: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in rows.iter().enumerate() {
        if i > start && (i - start >= rows_per_call || bytes + r.bytes > MAX_CALL_BYTES) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += r.bytes;
    }
    out.push(start..rows.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(bytes: usize) -> PlannedRow {
        PlannedRow {
            json: Json::Null,
            bytes,
            table: 0,
            index: 0,
        }
    }

    #[test]
    fn chunks_respect_rows_and_bytes() {
        assert_eq!(chunks(&[], 10), vec![0..0]);
        let rows: Vec<_> = (0..25).map(|_| row(10)).collect();
        assert_eq!(chunks(&rows, 10), vec![0..10, 10..20, 20..25]);
        let big: Vec<_> = (0..5).map(|_| row(3 << 20)).collect();
        assert_eq!(chunks(&big, 1000), vec![0..2, 2..4, 4..5]);
    }

    #[test]
    fn versions_sort_as_text_in_source_order() {
        let a = position_text(&Position {
            commit_lsn: 0x1_0000_0000,
            ordinal: 2,
        });
        let b = position_text(&Position {
            commit_lsn: 0x1_0000_0000,
            ordinal: 10,
        });
        let c = position_text(&Position {
            commit_lsn: 0x2_0000_0000,
            ordinal: 0,
        });
        assert!(a < b && b < c);
    }
}
