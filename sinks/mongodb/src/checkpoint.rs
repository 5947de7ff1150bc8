//! The pipeline's checkpoint in `ferry_checkpoints` (in the sink's
//! database), written in each batch's transaction:
//!
//! | `_id` | what |
//! |---|---|
//! | `<pipeline>` | `position` (32 hex digits, LSN then ordinal), `resume_token` |
//! | `<pipeline>/snapshot/<schema.table>` | `table`, `rows`, `state` (JSON text) |
//! | `<pipeline>/bus/<topic>:<partition>` | `topic`, `partition`, `next`, `position`, `last_timestamp` |
//! | `ferry-session/<lsid>` | the loop marker: a session Ferry's sink writes with (see `ferry_pipeline::checkpoint::mongo_loop_marker_id`) |
//!
//! Every document but the markers carries `pipeline`, which [`load`]
//! reads by.

use std::collections::HashMap;

use bson::{doc, Bson, Document};
use ferry_pipeline::batch::Batch;
// The loop marker's `_id` for a session (`lsid.id`): Ferry's MongoDB
// source skips change events of transactions whose session has one
// (connectors/mongodb, `loop_marker`).
use ferry_pipeline::checkpoint::mongo_loop_marker_id as marker_id;
use ferry_pipeline::checkpoint::{Checkpoint, PartitionProgress, SnapshotRecord};
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{Position, TableId};

/// The collection.
pub const CHECKPOINTS: &str = "ferry_checkpoints";

/// Fixed-width hex, so that positions compare as text in source order.
pub fn position_text(p: &Position) -> String {
    format!("{:016x}{:016x}", p.commit_lsn, p.ordinal)
}

/// The inverse of [`position_text`].
pub fn parse_position(s: &str) -> Option<Position> {
    if s.len() != 32 {
        return None;
    }
    Some(Position {
        commit_lsn: u64::from_str_radix(&s[..16], 16).ok()?,
        ordinal: u64::from_str_radix(&s[16..], 16).ok()?,
    })
}

/// The `_id` of a bus partition's progress.
pub(crate) fn bus_id(pipeline: &str, topic: &str, partition: i32) -> String {
    format!("{pipeline}/bus/{topic}:{partition}")
}

/// The `update` statements that record `batch`'s checkpoint (and the loop
/// marker of the session `lsid`).
pub(crate) fn statements(pipeline: &str, batch: &Batch, lsid: Option<&[u8]>) -> Vec<Document> {
    let mut out = Vec::new();
    let mut set = doc! {"pipeline": pipeline};
    if let Some(p) = batch.last_position {
        set.insert("position", position_text(&p));
    }
    if let Some(t) = batch.last_resume_token.as_deref() {
        set.insert("resume_token", t);
    }
    out.push(doc! {"q": {"_id": pipeline}, "u": {"$set": set}, "upsert": true});
    let snapshot = |table: &TableId, rows: u64, state: &serde_json::Value| {
        doc! {
            "q": {"_id": format!("{pipeline}/snapshot/{table}")},
            "u": {"$set": {
                "pipeline": pipeline,
                "table": table.to_string(),
                "rows": i64::try_from(rows).unwrap_or(i64::MAX),
                "state": state.to_string(),
            }},
            "upsert": true,
        }
    };
    for tb in &batch.tables {
        if let Some((rows, state)) = &tb.snapshot_done {
            out.push(snapshot(&tb.schema.id, *rows, state));
        }
    }
    for (t, rows, state) in &batch.snapshot_marks {
        out.push(snapshot(t, *rows, state));
    }
    for ((topic, partition), r) in &batch.bus {
        let mut set = doc! {
            "pipeline": pipeline,
            "topic": &**topic,
            "partition": *partition,
            "next": r.next,
        };
        if let Some(p) = r.position {
            set.insert("position", position_text(&p));
        }
        if let Some(ts) = r.last_timestamp {
            set.insert("last_timestamp", ts);
        }
        out.push(doc! {
            "q": {"_id": bus_id(pipeline, topic, *partition)},
            "u": {"$set": set},
            "upsert": true,
        });
    }
    if let Some(lsid) = lsid {
        out.push(doc! {
            "q": {"_id": marker_id(lsid)},
            "u": {"$set": {"kind": "ferry-sink-session"}},
            "upsert": true,
        });
    }
    out
}

fn bad(what: &str) -> PipelineError {
    PipelineError::fatal(
        Stage::Sink,
        format!("{CHECKPOINTS} holds an unreadable {what}: was it written by Ferry?"),
    )
}

fn int(d: &Document, key: &str) -> Option<i64> {
    match d.get(key)? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    }
}

/// What the pipeline's documents say.
pub(crate) struct Stored {
    pub checkpoint: Checkpoint,
    /// (topic, partition) → progress.
    pub bus: HashMap<(String, i32), PartitionProgress>,
}

/// Reads the pipeline's documents (every one with `pipeline` = its name).
pub(crate) fn parse(pipeline: &str, docs: &[Document]) -> Result<Stored, PipelineError> {
    let mut cp = Checkpoint::default();
    let mut bus = HashMap::new();
    let snapshot_prefix = format!("{pipeline}/snapshot/");
    let bus_prefix = format!("{pipeline}/bus/");
    for d in docs {
        let id = d.get_str("_id").map_err(|_| bad("document id"))?;
        if id == pipeline {
            if let Ok(p) = d.get_str("position") {
                cp.position = Some(parse_position(p).ok_or_else(|| bad("position"))?);
            }
            cp.resume_token = d.get_str("resume_token").ok().map(str::to_string);
        } else if id.starts_with(&snapshot_prefix) {
            let table = d
                .get_str("table")
                .ok()
                .and_then(TableId::parse)
                .ok_or_else(|| bad("snapshot record"))?;
            let state = d
                .get_str("state")
                .ok()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or(serde_json::Value::Null);
            cp.snapshots.insert(
                table,
                SnapshotRecord {
                    rows: int(d, "rows").unwrap_or(0).max(0) as u64,
                    state,
                },
            );
        } else if id.starts_with(&bus_prefix) {
            let topic = d.get_str("topic").map_err(|_| bad("bus topic"))?;
            let partition = int(d, "partition").ok_or_else(|| bad("bus partition"))?;
            bus.insert(
                (topic.to_string(), partition as i32),
                PartitionProgress {
                    next_offset: int(d, "next").ok_or_else(|| bad("bus offset"))?,
                    position: d.get_str("position").ok().and_then(parse_position),
                    last_timestamp: int(d, "last_timestamp"),
                },
            );
        }
    }
    Ok(Stored {
        checkpoint: cp,
        bus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_writes() {
        let docs = vec![
            doc! {"_id": "p", "pipeline": "p", "position": "00000001000000020000000000000003", "resume_token": "tok"},
            doc! {"_id": "p/snapshot/public.t", "pipeline": "p", "table": "public.t", "rows": 5i64, "state": "{\"lsn\":\"0/1\"}"},
            doc! {"_id": "p/bus/ferry.t:0", "pipeline": "p", "topic": "ferry.t", "partition": 0, "next": 42i64},
        ];
        let s = parse("p", &docs).unwrap();
        assert_eq!(
            s.checkpoint.position,
            Some(Position {
                commit_lsn: 0x1_0000_0002,
                ordinal: 3
            })
        );
        assert_eq!(s.checkpoint.resume_token.as_deref(), Some("tok"));
        assert_eq!(s.checkpoint.snapshots[&TableId::new("public", "t")].rows, 5);
        assert_eq!(s.bus[&("ferry.t".to_string(), 0)].next_offset, 42);
        assert_eq!(marker_id(&[0xab, 1]), "ferry-session/ab01");
    }
}
