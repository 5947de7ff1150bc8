//! What is durable downstream, and the store that keeps it.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use crate::error::PipelineError;
use crate::event::{Position, TableId};

/// A table whose initial snapshot is complete.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub rows: u64,
    /// The source's opaque record of which snapshot it was.
    pub state: serde_json::Value,
}

/// Everything durable downstream for one pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// The position of the last applied change; every change at or before
    /// it is durable downstream and is skipped when the source replays it.
    pub position: Option<Position>,
    /// Tables whose snapshot completed.
    pub snapshots: HashMap<TableId, SnapshotRecord>,
    /// Where a token-resumed source (MongoDB) continues: the token of the
    /// last applied change.
    pub resume_token: Option<String>,
}

impl Checkpoint {
    /// Where a restarted source resumes, in words for the log: the resume
    /// token when the source resumes by token (MongoDB), else the position
    /// (a PostgreSQL LSN and ordinal, a change-log sequence), else the
    /// beginning.
    pub fn resume_point(&self) -> String {
        match (&self.resume_token, &self.position) {
            (Some(token), _) => format!("resume token {token}"),
            (None, Some(p)) => format!("position {p}"),
            (None, None) => "the beginning (no checkpoint)".to_string(),
        }
    }
}

/// Where a pipeline's checkpoint lives.
///
/// Contract: [`CheckpointStore::load`] returns exactly what the sink
/// committed last: a checkpoint is written in the same transaction as the
/// data it covers (see [`crate::sink::Sink::write_batch`]), so after a crash
/// at any point the loaded position and the target's rows agree.
pub trait CheckpointStore: Send {
    /// Reads the pipeline's checkpoint (empty on first start). An error means
    /// the checkpoint could not be read, never "no checkpoint".
    fn load(&mut self) -> impl Future<Output = Result<Checkpoint, PipelineError>> + Send;
}

/// A worker's durable progress on one partition of the Kafka bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The first offset not yet applied.
    pub next_offset: i64,
    /// The source position of the last change applied from the partition.
    pub position: Option<Position>,
    /// The timestamp of the record at `next_offset - 1`, when known. A
    /// resuming worker reads that record again and compares: a log made
    /// anew since (a broker that lost its data, a topic deleted and
    /// recreated) holds other records at the same offsets, and resuming
    /// there would skip the start of it.
    pub last_timestamp: Option<i64>,
}

/// Where Kafka workers keep their progress: in the sink, written in the
/// same transaction as the rows (see [`crate::batch::Batch::bus`]).
///
/// Contract: [`BusOffsets::load_bus_offsets`] returns what committed
/// batches wrote, and a sink refuses (with [`STALE_OFFSETS`]) a batch whose
/// first offset of any partition is below the stored next offset: that
/// batch was already applied, by this worker before a crash or by another
/// one after a rebalance.
pub trait BusOffsets: Send + 'static {
    /// Stored progress for `partitions` (`(topic, partition)`); a partition
    /// with none is absent.
    fn load_bus_offsets(
        &mut self,
        partitions: &[(String, i32)],
    ) -> impl Future<Output = Result<HashMap<(String, i32), PartitionProgress>, PipelineError>> + Send;

    /// Which of `barriers` (`(topic, barrier id)`) are done: every
    /// partition they cover has arrived and their action is committed (see
    /// [`crate::event::Barrier`]). A sink that writes arrivals keeps them
    /// in the target, in the same transaction as the partitions' offsets.
    /// The default refuses: a sink without barriers cannot consume topics
    /// of several partitions that carry them.
    fn barriers_done(
        &mut self,
        barriers: &[(String, String)],
    ) -> impl Future<Output = Result<HashSet<(String, String)>, PipelineError>> + Send {
        let _ = barriers;
        async {
            Err(PipelineError::fatal(
                crate::error::Stage::Sink,
                "this sink does not keep cross-partition barriers: use one partition per topic",
            ))
        }
    }
}

/// The `_id` of the loop marker Ferry's MongoDB sink writes into
/// `ferry_checkpoints` in every transaction, for the session (`lsid.id`)
/// it writes with; Ferry's MongoDB source skips change events of sessions
/// that have one, so that a reverse pipeline's writes are not replicated
/// back (sinks/mongodb, connectors/mongodb `loop_marker`).
pub fn mongo_loop_marker_id(lsid: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("ferry-session/");
    for b in lsid {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The error code of a batch refused because its offsets were already
/// applied; the worker reloads its progress and consumes again from there.
pub const STALE_OFFSETS: &str = "ferry-stale-offsets";
