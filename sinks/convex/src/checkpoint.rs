//! The pipeline's checkpoint as Ferry's module keeps it (`ferry_checkpoints`,
//! written by `ferry:apply` in the same transaction as the rows), read back
//! through `ferry:checkpointOf`.

use std::collections::{HashMap, HashSet};

use ferry_pipeline::checkpoint::{Checkpoint, PartitionProgress, SnapshotRecord};
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{Position, TableId};
use serde_json::Value as Json;

/// What `ferry:checkpointOf` returned.
pub struct Stored {
    pub checkpoint: Checkpoint,
    /// `topic:partition` → progress.
    pub bus: HashMap<String, PartitionProgress>,
    /// Tables with parked records.
    pub dlq_tables: HashSet<String>,
}

fn bad(what: &str) -> PipelineError {
    PipelineError::fatal(
        Stage::Sink,
        format!(
            "ferry:checkpointOf returned an unreadable {what}: is the deployed module Ferry's?"
        ),
    )
}

/// Parses a version/position text (`apply::position_text`).
pub(crate) fn parse_position(s: &str) -> Option<Position> {
    if s.len() != 32 {
        return None;
    }
    Some(Position {
        commit_lsn: u64::from_str_radix(&s[..16], 16).ok()?,
        ordinal: u64::from_str_radix(&s[16..], 16).ok()?,
    })
}

fn int(j: &Json) -> Option<i64> {
    // Numbers come back as Float64 (plain JSON numbers) in encoded JSON.
    j.as_f64().map(|f| f as i64)
}

pub(crate) fn parse(v: &Json) -> Result<Stored, PipelineError> {
    let mut cp = Checkpoint::default();
    if let Some(p) = v.get("position").and_then(Json::as_str) {
        cp.position = Some(parse_position(p).ok_or_else(|| bad("position"))?);
    }
    cp.resume_token = v
        .get("resumeToken")
        .and_then(Json::as_str)
        .map(str::to_string);
    for s in v
        .get("snapshots")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let table = s
            .get("table")
            .and_then(Json::as_str)
            .and_then(TableId::parse)
            .ok_or_else(|| bad("snapshot"))?;
        cp.snapshots.insert(
            table,
            SnapshotRecord {
                rows: s.get("rows").and_then(int).unwrap_or(0) as u64,
                state: s.get("state").cloned().unwrap_or(Json::Null),
            },
        );
    }
    let mut bus = HashMap::new();
    for b in v.get("bus").and_then(Json::as_array).into_iter().flatten() {
        let entry = b
            .get("entry")
            .and_then(Json::as_str)
            .ok_or_else(|| bad("bus entry"))?;
        bus.insert(
            entry.to_string(),
            PartitionProgress {
                next_offset: b
                    .get("next")
                    .and_then(int)
                    .ok_or_else(|| bad("bus offset"))?,
                position: b
                    .get("position")
                    .and_then(Json::as_str)
                    .and_then(parse_position),
                last_timestamp: b.get("lastTimestamp").and_then(int),
            },
        );
    }
    let dlq_tables = v
        .get("dlqTables")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    Ok(Stored {
        checkpoint: cp,
        bus,
        dlq_tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_module_returns() {
        let v = serde_json::json!({
            "position": "00000001000000020000000000000003",
            "resumeToken": null,
            "snapshots": [{"table": "public.t", "rows": 5.0, "state": {"lsn": "0/1"}}],
            "bus": [{"entry": "ferry.t:0", "next": 42.0, "position": null, "lastTimestamp": null}],
            "dlqTables": ["t"],
        });
        let s = parse(&v).unwrap();
        assert_eq!(
            s.checkpoint.position,
            Some(Position {
                commit_lsn: 0x1_0000_0002,
                ordinal: 3
            })
        );
        assert_eq!(s.checkpoint.snapshots[&TableId::new("public", "t")].rows, 5);
        assert_eq!(s.bus["ferry.t:0"].next_offset, 42);
        assert!(s.dlq_tables.contains("t"));
    }
}
