//! The runtime: runs a source into the bus and the apply loop out of it.
//! These are the parts both buses share; each bus wires them in
//! [`crate::bus`] (the embedded one in [`crate::bus::embedded::run`]).
//!
//! The apply loop owns the at-least-once → exactly-once-in-effect step: it
//! skips changes at or before the sink's durable checkpoint, folds the rest
//! into batches, has the sink commit each batch together with its
//! checkpoint, and only then releases the source's acknowledgement.

use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn, Instrument};

use crate::batch::Batch;
use crate::channel::{BusReceiver, BusSender};
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::clock::now_micros;
use crate::error::{retry_backoff, Disposition, PipelineError, Stage};
use crate::event::{BusMessage, PartitionOffset, Position, SourceAck, TableId, TableSchema};
use crate::metrics::metrics;
use crate::metrics::status::status;
use crate::sink::Sink;
use crate::source::{Source, SourceContext};

/// Tuning of the apply loop.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub pipeline: String,
    pub batch_size: usize,
    pub linger: Duration,
    pub bus_capacity: usize,
    pub max_retry_delay: Duration,
    /// The mapping, when one is configured: mapped tables' changes go
    /// through it before the batch (see [`crate::transform`]).
    pub transformer: Option<Arc<crate::transform::Transformer>>,
    /// Compiles the mapping again against the target's schema as it is
    /// now. Called when the mapping refuses a change (at most every
    /// [`SCHEMA_REREAD_INTERVAL`]): the refusal may come from a column
    /// that was widened, made nullable or added since the plan was
    /// compiled, and the refused change is tried once more with the new
    /// plan, so a fixed column takes effect without a restart and a
    /// dead-letter reason never names a type the column no longer has.
    pub refresh_transformer: Option<TransformerRefresh>,
}

/// How often at most the apply loop re-reads the target's schema after
/// refusals (a flood of bad records costs one catalog query per interval).
pub const SCHEMA_REREAD_INTERVAL: Duration = Duration::from_secs(5);

/// The future a [`TransformerRefresh`] returns.
pub type RefreshFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Arc<crate::transform::Transformer>, String>> + Send,
    >,
>;

/// See [`RuntimeOptions::refresh_transformer`]. Contract: the returned
/// transformer maps the same source tables as the one it replaces (it is
/// the same mapping file compiled against a newer catalog); an error
/// (target unreachable, the mapping no longer fits) keeps the old plan.
#[derive(Clone)]
pub struct TransformerRefresh(pub Arc<dyn Fn() -> RefreshFuture + Send + Sync>);

impl std::fmt::Debug for TransformerRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransformerRefresh")
    }
}

impl From<&crate::config::PipelineConfig> for RuntimeOptions {
    fn from(p: &crate::config::PipelineConfig) -> Self {
        Self {
            pipeline: p.name.clone(),
            batch_size: p.batch_size,
            linger: Duration::from_millis(p.batch_linger_ms),
            bus_capacity: p.bus_capacity,
            max_retry_delay: Duration::from_secs(p.max_retry_delay_secs),
            transformer: None,
            refresh_transformer: None,
        }
    }
}

/// Runs `source` until it stops, with `downstream` consuming what it sends
/// (the apply side on the embedded bus, the Kafka producer otherwise) and
/// releasing acks on `acks`. Returns the first error of either side.
pub async fn drive_source<S: Source>(
    source: S,
    bus: BusSender,
    acks: watch::Receiver<SourceAck>,
    checkpoint: Checkpoint,
    downstream: Spawned,
    opts: &RuntimeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    for table in checkpoint.snapshots.keys() {
        status().known(&table.to_string());
    }
    let ctx = SourceContext {
        bus,
        acks,
        checkpoint,
        shutdown: shutdown.clone(),
    };
    let span = tracing::info_span!("source", pipeline = %opts.pipeline);
    let mut source_task = tokio::spawn(source.run(ctx).instrument(span));
    let Spawned {
        task: mut apply_task,
        abort: _downstream_tasks,
    } = downstream;
    let _source = AbortOnDrop(vec![source_task.abort_handle()]);
    tokio::select! {
        res = &mut apply_task => match flatten(res) {
            // The apply loop also ends (Ok) when the bus closes, which is
            // what a source that stopped on an error does: unless asked to
            // shut down, the source's result is the pipeline's. (Found by
            // tests/snapshot.rs: a refused keyless table exited 0.)
            Ok(()) if !*shutdown.borrow() => flatten(source_task.await),
            other => {
                source_task.abort();
                other
            }
        },
        res = &mut source_task => {
            match flatten(res) {
                // The source stopped on request: let the apply loop drain.
                Ok(()) => flatten(apply_task.await),
                Err(e) => {
                    apply_task.abort();
                    Err(e)
                }
            }
        }
    }
}

/// A spawned part of a pipeline: its result, and the tasks to abort when
/// the pipeline stops.
pub struct Spawned {
    pub task: tokio::task::JoinHandle<Result<(), PipelineError>>,
    pub abort: AbortOnDrop,
}

/// Called after each batch commit with the next offset of every partition
/// the batch consumed (the Kafka worker commits them to the group).
pub type AfterCommit = Arc<dyn Fn(&[PartitionOffset]) + Send + Sync>;

/// The error code of a batch that a Kafka worker gives back to be read
/// again (see [`UniqueWait`]).
pub const UNIQUE_WAIT: &str = "ferry-unique-wait";

/// PostgreSQL's `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";

/// How long a Kafka worker waits, at most, for a unique value to be let go
/// by a row of another partition before it parks the row that wants it
/// (as on one partition). Longer than a killed worker's session timeout
/// and its successor's catch-up.
pub const UNIQUE_WAIT_BUDGET: Duration = Duration::from_secs(120);

/// A Kafka worker on topics of several partitions: a unique value that
/// changes hands between two rows whose keys hash to different partitions
/// (a row lets it go in one transaction, another takes it in a later one)
/// reaches the target in partition order, not the source's: the row that
/// takes it may come first and be refused (23505) while the row that
/// still holds it waits, unapplied, on its partition (this worker's, or
/// another's).
///
/// Instead of parking it, the writer gives the batch back: nothing of it
/// is committed, the worker reads its partitions again from the target's
/// progress, after a backoff (so that another worker's partition catches
/// up), rounds alternating between a larger first batch (so that this
/// worker's own lagging partitions come into the same batch, where the
/// sink applies a unique value's handover row by row in order) and
/// batches of one change (so that what precedes the refused change is
/// committed), the refused change's partition held back for a moment
/// while the worker's other partitions go on: two workers that each wait
/// for a value the other one lets go later on another partition both get
/// through. Once a batch
/// commits the wait is over; a conflict that outlasts
/// [`UNIQUE_WAIT_BUDGET`] is a real one (the target holds the value for
/// good) and the row is parked as on one partition. Costs nothing without
/// a conflict.
#[derive(Debug, Default)]
pub struct UniqueWait {
    /// Whether a consumed topic has several partitions (one partition
    /// keeps the source's order: a conflict there is a real one).
    pub several_partitions: std::sync::atomic::AtomicBool,
    /// Since when the current wait lasts, and its rounds so far.
    state: std::sync::Mutex<Option<(Instant, u32)>>,
    /// The partition of a refused batch that applied changes of one
    /// partition only: the worker holds it back for a moment while its
    /// other partitions go on (they may hold the change that lets the
    /// value go, or one another worker waits for).
    blocked: std::sync::Mutex<Option<(Arc<str>, i32)>>,
}

impl UniqueWait {
    /// On a unique violation: whether to give the batch back (and count a
    /// round) rather than park the refused row.
    fn should_wait(&self, budget: Duration) -> bool {
        if !self
            .several_partitions
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return false;
        }
        let mut state = self.state.lock().expect("unique wait lock");
        match &mut *state {
            None => {
                *state = Some((Instant::now(), 1));
                true
            }
            Some((since, rounds)) if since.elapsed() < budget => {
                *rounds += 1;
                true
            }
            Some(_) => {
                *state = None;
                false
            }
        }
    }

    /// A batch committed: any wait is over.
    fn resolved(&self) {
        let mut state = self.state.lock().expect("unique wait lock");
        if state.is_some() {
            *state = None;
        }
    }

    /// The partition to hold back after the last refusal, if known.
    pub fn take_blocked(&self) -> Option<(Arc<str>, i32)> {
        self.blocked.lock().expect("unique wait lock").take()
    }

    /// Rounds of the current wait (0 without one).
    pub fn rounds(&self) -> u32 {
        self.state
            .lock()
            .expect("unique wait lock")
            .map_or(0, |(_, r)| r)
    }
}

/// How the apply side recognizes replays.
pub enum ApplyMode {
    /// One ordered stream: changes at or below the highest position seen
    /// (starting at the checkpoint) are replays.
    Embedded { seen_up_to: Option<Position> },
    /// Kafka worker: the consumer already skipped replays per partition;
    /// progress travels as [`BusMessage::Consumed`]; parked records are
    /// mirrored to the dead-letter topic.
    Worker {
        after_commit: AfterCommit,
        on_parked: crate::dlq::OnParked,
        unique_wait: Arc<UniqueWait>,
    },
}

/// Starts the apply side (batch builder and writer) on `rx`.
pub fn spawn_apply<K: Sink>(
    rx: BusReceiver,
    sink: K,
    acks: watch::Sender<SourceAck>,
    mode: ApplyMode,
    opts: &RuntimeOptions,
    shutdown: watch::Receiver<bool>,
) -> Spawned {
    let (seen_up_to, skip_replays, after_commit, on_parked, unique_wait) = match mode {
        ApplyMode::Embedded { seen_up_to } => (seen_up_to, true, None, None, None),
        ApplyMode::Worker {
            after_commit,
            on_parked,
            unique_wait,
        } => (
            None,
            false,
            Some(after_commit),
            Some(on_parked),
            Some(unique_wait),
        ),
    };
    // One job queued at most: the builder waits for the writer rather than
    // piling batches up (memory stays bounded by about two batches).
    let (job_tx, job_rx) = mpsc::channel(1);
    let (done_tx, done_rx) = watch::channel(0u64);
    let writer = Writer {
        sink,
        acks,
        done: done_tx,
        opts: opts.clone(),
        shutdown: shutdown.clone(),
        after_commit,
        on_parked,
        unique_wait,
    };
    let apply: ApplyLoop<K> = ApplyLoop {
        rx,
        seen_up_to,
        skip_replays,
        opts: opts.clone(),
        shutdown,
        jobs: job_tx,
        done: done_rx,
        sent: 0,
        batch: Batch::default(),
        pending_ack: None,
        last_commit_ts: None,
        mapped_counts: HashMap::new(),
        awaiting_offset: false,
        lag_tables: HashMap::new(),
        lag_last: None,
        snapshots_done: Vec::new(),
        schema_read_at: None,
    };
    if !skip_replays {
        // A Kafka worker has no snapshot phase of its own: the copies of
        // tables arrive as rows, tracked by their lag (the source process
        // reports snapshot progress).
        status().set_streaming();
    }
    let span = tracing::info_span!("apply", pipeline = %opts.pipeline);
    let mut writer_task = tokio::spawn(writer.run(job_rx).instrument(span.clone()));
    let apply_task = tokio::spawn(apply.run().instrument(span));
    // Whatever way the pipeline stops, no task of it keeps running
    // detached (aborting a JoinHandle's owner does not stop it).
    let handles = vec![writer_task.abort_handle(), apply_task.abort_handle()];
    // The writer's result is the apply side's result: the builder only
    // stops early when the writer did (or on a bug, which it logs).
    let task = tokio::spawn(async move {
        match apply_task.await {
            Ok(Ok(())) => flatten(writer_task.await),
            Ok(Err(WriterGone)) => match flatten((&mut writer_task).await) {
                Err(e) => Err(e),
                Ok(()) => Err(PipelineError::fatal(
                    Stage::Sink,
                    "the apply loop stopped unexpectedly",
                )),
            },
            Err(e) => {
                writer_task.abort();
                Err(PipelineError::fatal(
                    Stage::Sink,
                    format!("apply loop panicked: {e}"),
                ))
            }
        }
    });
    let abort = AbortOnDrop(handles.into_iter().chain([task.abort_handle()]).collect());
    Spawned { task, abort }
}

/// Aborts tasks when dropped: a task tied to the lifetime of its owner,
/// even when the owner is itself aborted.
pub struct AbortOnDrop(pub Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

pub fn flatten(
    res: Result<Result<(), PipelineError>, tokio::task::JoinError>,
) -> Result<(), PipelineError> {
    match res {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(PipelineError::fatal(
            Stage::Sink,
            format!("task panicked: {e}"),
        )),
    }
}

pub async fn load_checkpoint<K: CheckpointStore>(
    sink: &mut K,
    opts: &RuntimeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Checkpoint, PipelineError> {
    let mut backoff = retry_backoff(opts.max_retry_delay);
    loop {
        match sink.load().await {
            Ok(c) => return Ok(c),
            Err(e) if e.disposition() == Disposition::Retry => {
                wait_retry(&e, &mut backoff, shutdown.clone()).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The one way a transient failure is waited out, by the runtime and by
/// sources alike: logs it, counts it (`ferry_retries_total`,
/// `ferry_errors_total`), sleeps one backoff step. Fails if asked to stop
/// meanwhile.
pub async fn wait_retry(
    e: &PipelineError,
    backoff: &mut crate::error::RetryBackoff,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
    metrics()
        .retries
        .with_label_values(&[
            e.stage.as_str(),
            crate::error::retry_reason(e.code.as_deref()),
        ])
        .inc();
    metrics()
        .errors
        .with_label_values(&[e.stage.as_str(), e.class.as_str()])
        .inc();
    status().error(&e.to_string());
    let retry_in_ms = delay.as_millis() as u64;
    match e.stage {
        Stage::Source | Stage::Snapshot => {
            warn!(error = %e, retry_in_ms, "source failed, reconnecting")
        }
        _ => warn!(error = %e, retry_in_ms, "transient failure, retrying"),
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = shutdown.wait_for(|s| *s) => Err(PipelineError::stopped(e.stage)),
    }
}

/// What the runtime reports about a batch once it is written.
struct Summary {
    events: usize,
    /// Next offset per consumed partition (Kafka bus).
    bus_offsets: Vec<PartitionOffset>,
    counts: Vec<(TableId, crate::event::Op, u64)>,
    last_position: Option<Position>,
    /// Records the transform stage parked (mirrored once durable).
    parked: Vec<crate::dlq::Parked>,
    /// The job's number, and the source commit time of the last change of
    /// each table in it (the status views' per-table lag).
    seq: u64,
    lag_tables: Vec<(TableId, i64)>,
    /// Tables whose snapshot ends with this job.
    snapshots_done: Vec<TableId>,
    /// See [`crate::batch::Batch::last_resume_token_micros`].
    resume_token_micros: Option<i64>,
    /// Kafka bus: the partitions the batch applies changes of (replays
    /// skipped by position are only consumed).
    changed: Vec<(Arc<str>, i32)>,
}

/// A batch on its way to the sink, with what to release once it is durable.
struct Job<P> {
    /// `None` when the job only releases an ack.
    prepared: P,
    summary: Summary,
    /// The source position that may be confirmed after this job.
    ack: Option<SourceAck>,
    /// Commit time of the last source transaction in the batch.
    commit_ts: Option<i64>,
}

/// Writes jobs to the sink one after the other, retrying transient errors,
/// and releases each job's ack only after its commit. Runs beside the
/// builder so that the next batch is gathered while the sink commits.
struct Writer<K: Sink> {
    sink: K,
    acks: watch::Sender<SourceAck>,
    /// Jobs finished so far (the builder compares with jobs sent).
    done: watch::Sender<u64>,
    opts: RuntimeOptions,
    shutdown: watch::Receiver<bool>,
    after_commit: Option<AfterCommit>,
    on_parked: Option<crate::dlq::OnParked>,
    unique_wait: Option<Arc<UniqueWait>>,
}

impl<K: Sink> Writer<K> {
    async fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job<Option<K::Prepared>>>,
    ) -> Result<(), PipelineError> {
        let mut finished = 0u64;
        while let Some(job) = jobs.recv().await {
            self.write(job).await?;
            finished += 1;
            self.done.send_replace(finished);
        }
        Ok(())
    }

    async fn write(&mut self, job: Job<Option<K::Prepared>>) -> Result<(), PipelineError> {
        let Job {
            prepared,
            summary,
            ack,
            commit_ts,
        } = job;
        if let Some(prepared) = prepared {
            let started = Instant::now();
            let mut backoff = retry_backoff(self.opts.max_retry_delay);
            loop {
                match self.sink.write_batch(&prepared).await {
                    Ok(()) => {
                        if let Some(w) = &self.unique_wait {
                            w.resolved();
                        }
                        if !summary.parked.is_empty() {
                            if let Some(on_parked) = &self.on_parked {
                                on_parked(&summary.parked);
                            }
                        }
                        break;
                    }
                    Err(e) if e.disposition() == Disposition::Retry => {
                        wait_retry(&e, &mut backoff, self.shutdown.clone()).await?;
                    }
                    Err(e)
                        if e.code.as_deref() == Some(UNIQUE_VIOLATION)
                            && self
                                .unique_wait
                                .as_ref()
                                .is_some_and(|w| w.should_wait(UNIQUE_WAIT_BUDGET)) =>
                    {
                        if let (Some(w), [one]) = (&self.unique_wait, &summary.changed[..]) {
                            *w.blocked.lock().expect("unique wait lock") = Some(one.clone());
                        }
                        return Err(PipelineError::transient(
                            Stage::Sink,
                            format!("{e}: the row that holds the value may have a change pending on another partition; reading the partitions again"),
                        )
                        .with_code(UNIQUE_WAIT));
                    }
                    Err(e) if e.disposition() == Disposition::DeadLetter => {
                        metrics()
                            .errors
                            .with_label_values(&[e.stage.as_str(), e.class.as_str()])
                            .inc();
                        warn!(error = %e, events = summary.events, "batch refused; writing it record by record to park what cannot be mirrored");
                        self.write_isolating(&prepared, &e).await?;
                        break;
                    }
                    Err(e) => {
                        metrics()
                            .errors
                            .with_label_values(&[e.stage.as_str(), e.class.as_str()])
                            .inc();
                        status().error(&e.to_string());
                        return Err(e);
                    }
                }
            }
            for p in &summary.parked {
                status().parked(&p.table.to_string(), &p.record.error.message);
            }
            for (table, ts) in &summary.lag_tables {
                status().applied(&table.to_string(), summary.seq, *ts);
            }
            // Embedded bus only (a Kafka worker has an `after_commit`): see
            // `BusMessage::SnapshotStart` in the apply loop.
            if self.after_commit.is_none() {
                for table in &summary.snapshots_done {
                    status().snapshot_finished(&table.to_string());
                }
            }
            let m = metrics();
            if let Some(us) = summary.resume_token_micros {
                m.resume_token_time.set(us as f64 / 1e6);
            }
            m.batch_duration
                .with_label_values(&[K::KIND])
                .observe(started.elapsed().as_secs_f64());
            m.batch_events
                .with_label_values(&[K::KIND])
                .observe(summary.events as f64);
            for (table, op, n) in &summary.counts {
                m.events
                    .with_label_values(&["sink", &table.to_string(), op.as_str()])
                    .inc_by(*n);
            }
            if let Some(ts) = commit_ts {
                let lag = (now_micros() - ts).max(0) as f64 / 1e6;
                m.lag_seconds
                    .with_label_values(&[&self.opts.pipeline])
                    .set(lag);
            }
            if let Some(after) = &self.after_commit {
                if !summary.bus_offsets.is_empty() {
                    after(&summary.bus_offsets);
                }
            }
            debug!(
                events = summary.events,
                position = ?summary.last_position,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "batch committed"
            );
        }
        if let Some(ack) = ack {
            // Everything before `ack` is durable now: this job, and every
            // job before it (jobs are written in order).
            self.acks.send_if_modified(|cur| {
                if ack > *cur {
                    *cur = ack;
                    true
                } else {
                    false
                }
            });
        }
        Ok(())
    }
}

impl<K: Sink> Writer<K> {
    /// The batch once more, record by record, parking the records that fail
    /// permanently; transient errors are retried like any write.
    async fn write_isolating(
        &mut self,
        prepared: &K::Prepared,
        cause: &PipelineError,
    ) -> Result<(), PipelineError> {
        let mut backoff = retry_backoff(self.opts.max_retry_delay);
        loop {
            match self.sink.write_isolating(prepared, cause).await {
                Ok(parked) => {
                    for p in &parked {
                        status().parked(&p.table.to_string(), &p.record.error.message);
                    }
                    if !parked.is_empty() {
                        warn!(
                            parked = parked.len(),
                            "records parked in the dead-letter queue; the rest of the batch landed"
                        );
                        if let Some(on_parked) = &self.on_parked {
                            on_parked(&parked);
                        }
                    }
                    return Ok(());
                }
                Err(e) if e.disposition() == Disposition::Retry => {
                    wait_retry(&e, &mut backoff, self.shutdown.clone()).await?;
                }
                Err(e) => {
                    metrics()
                        .errors
                        .with_label_values(&[e.stage.as_str(), e.class.as_str()])
                        .inc();
                    return Err(e);
                }
            }
        }
    }
}

/// Messages a receive loop (the apply loop's channel, the Kafka worker's
/// consumer) takes that are already there, at most, between two turns of
/// its select: about half a millisecond of work, so shutdown, a failure
/// and the linger deadline are still seen that soon.
pub(crate) const BURST: usize = 256;

/// Folds bus messages into batches and hands them to the [`Writer`].
///
/// Batching adapts to load: while the writer commits a batch, the next one
/// grows (up to `batch_size`); as soon as the writer is idle, what has been
/// gathered is handed over at the next transaction boundary, so light
/// traffic is applied without waiting. `linger` bounds how long a batch
/// waits for the end of a transaction.
struct ApplyLoop<K: Sink> {
    rx: BusReceiver,
    /// The highest position already durable or folded into a batch. The
    /// source delivers changes in position order, so anything at or below
    /// it is a replay (restart, or a reconnect that resent transactions
    /// from the slot's confirmed position) and is skipped: re-applying it
    /// could move a row back to an older state.
    seen_up_to: Option<Position>,
    /// Whether to skip by `seen_up_to` (one ordered stream only).
    skip_replays: bool,
    opts: RuntimeOptions,
    shutdown: watch::Receiver<bool>,
    jobs: mpsc::Sender<Job<Option<K::Prepared>>>,
    done: watch::Receiver<u64>,
    sent: u64,
    batch: Batch,
    pending_ack: Option<SourceAck>,
    last_commit_ts: Option<i64>,
    /// Mapped source changes since the last hand-off, per table and op.
    mapped_counts: HashMap<TableId, [u64; crate::event::Op::ALL.len()]>,
    /// Kafka worker: a change is in the batch whose message offset has not
    /// arrived yet. The batch waits for it: handed off without it, the
    /// batch would carry rows without their partition's progress (and the
    /// fence that goes with it).
    awaiting_offset: bool,
    /// Per table in the batch being built: the source commit time of its
    /// last change (its first one was reported to the status then).
    lag_tables: HashMap<TableId, i64>,
    /// The table of the last change and its time, not yet in `lag_tables`.
    lag_last: Option<(Arc<TableSchema>, i64)>,
    /// Tables whose snapshot ends in the batch being built.
    snapshots_done: Vec<TableId>,
    /// When the target's schema was last re-read after a refusal.
    schema_read_at: Option<Instant>,
}

/// The writer stopped; its own error says why.
struct WriterGone;

impl<K: Sink> ApplyLoop<K> {
    fn writer_idle(&self) -> bool {
        *self.done.borrow() == self.sent
    }

    /// Waits until the writer is idle, then hands it the current batch (and
    /// the pending ack). Sends nothing when there is nothing to do.
    async fn hand_off(&mut self) -> Result<(), WriterGone> {
        if self.batch.is_empty() && self.pending_ack.is_none() {
            return Ok(());
        }
        // Received-from-source counts, per batch rather than per event:
        // what the batch holds, except the rows a mapping made (their
        // source changes are counted under the source's table).
        let counts: Vec<_> = self
            .batch
            .counts()
            .map(|(t, op, n)| (t.clone(), op, n))
            .collect();
        let transformer = self.opts.transformer.clone();
        for (table, op, n) in &counts {
            if transformer.as_ref().is_some_and(|t| t.is_target(table)) {
                continue;
            }
            metrics()
                .events
                .with_label_values(&["source", &table.to_string(), op.as_str()])
                .inc_by(*n);
        }
        for (table, per_op) in self.mapped_counts.drain() {
            for op in crate::event::Op::ALL {
                if per_op[op as usize] > 0 {
                    metrics()
                        .events
                        .with_label_values(&["source", &table.to_string(), op.as_str()])
                        .inc_by(per_op[op as usize]);
                }
            }
        }
        let batch = std::mem::take(&mut self.batch);
        self.flush_lag_last();
        let summary = Summary {
            events: batch.events,
            bus_offsets: batch
                .bus
                .iter()
                .map(|((topic, partition), r)| PartitionOffset {
                    topic: Arc::clone(topic),
                    partition: *partition,
                    offset: r.next,
                })
                .collect(),
            counts,
            last_position: batch.last_position,
            parked: batch.parked.clone(),
            seq: self.sent,
            lag_tables: self.lag_tables.drain().collect(),
            snapshots_done: std::mem::take(&mut self.snapshots_done),
            resume_token_micros: batch.last_resume_token_micros,
            changed: batch
                .bus
                .iter()
                .filter(|(_, r)| r.position.is_some())
                .map(|((topic, partition), _)| (Arc::clone(topic), *partition))
                .collect(),
        };
        // Encode before waiting: this overlaps with the writer's work.
        let prepared = (!batch.is_empty()).then(|| K::prepare(batch));
        let sent = self.sent;
        self.done
            .wait_for(|d| *d == sent)
            .await
            .map_err(|_| WriterGone)?;
        let job = Job {
            prepared,
            summary,
            ack: self.pending_ack.take(),
            commit_ts: self.last_commit_ts.take(),
        };
        self.jobs.send(job).await.map_err(|_| WriterGone)?;
        self.sent += 1;
        Ok(())
    }

    /// Reports the first change of a table in the batch being built to the
    /// status (its lag starts counting from that change's source commit).
    fn track_lag(&mut self, ev: &crate::event::ChangeEvent) {
        let ts = ev.commit_ts_micros;
        // Runs of one table (a snapshot, a bulk load) cost a pointer
        // comparison per change, not a hash of its name.
        if let Some((table, last)) = self.lag_last.as_mut() {
            if Arc::ptr_eq(table, &ev.table) {
                *last = ts;
                return;
            }
        }
        self.flush_lag_last();
        if !self.lag_tables.contains_key(&ev.table.id) {
            status().arrived(&ev.table.id.to_string(), self.sent, ts);
        }
        self.lag_tables.insert(ev.table.id.clone(), ts);
        self.lag_last = Some((Arc::clone(&ev.table), ts));
    }

    fn flush_lag_last(&mut self) {
        if let Some((table, ts)) = self.lag_last.take() {
            self.lag_tables.insert(table.id.clone(), ts);
        }
    }

    /// The target tables of a mapped source table.
    fn mapped_targets(&self, table: &TableId) -> Option<Vec<Arc<TableSchema>>> {
        self.opts.transformer.as_ref()?.target_schemas(table)
    }

    /// Runs a mapped change through the mapping into the batch, or parks
    /// it (with its source change, for a replay) when a rule refuses it.
    /// The mapping compiled again against the target's current schema, at
    /// most every [`SCHEMA_REREAD_INTERVAL`]; `None` when not due, not
    /// configured, or the re-read failed (the current plan stays).
    async fn refreshed_transformer(&mut self) -> Option<Arc<crate::transform::Transformer>> {
        let refresh = self.opts.refresh_transformer.clone()?;
        if self
            .schema_read_at
            .is_some_and(|t| t.elapsed() < SCHEMA_REREAD_INTERVAL)
        {
            return None;
        }
        self.schema_read_at = Some(Instant::now());
        match (refresh.0)().await {
            Ok(t) => {
                debug!("re-read the target's schema after a refusal");
                self.opts.transformer = Some(Arc::clone(&t));
                Some(t)
            }
            Err(e) => {
                warn!(error = %e, "could not re-read the target's schema after a refusal; the mapping stays as compiled");
                None
            }
        }
    }

    async fn transform(
        &mut self,
        t: &crate::transform::Transformer,
        ev: crate::event::ChangeEvent,
    ) -> Result<(), WriterGone> {
        use crate::transform::Output;
        let counts = match self.mapped_counts.get_mut(&ev.table.id) {
            Some(c) => c,
            None => self
                .mapped_counts
                .entry(ev.table.id.clone())
                .or_insert([0; crate::event::Op::ALL.len()]),
        };
        counts[ev.op as usize] += 1;
        let mut result = t.apply(&ev);
        if matches!(result, Some(Err(_))) {
            // The target's DDL may have changed since the plan was made.
            if let Some(fresh) = self.refreshed_transformer().await {
                result = fresh.apply(&ev);
            }
        }
        match result {
            None => self.batch.push(ev),
            Some(Ok(outputs)) => {
                if ev.op == crate::event::Op::Truncate {
                    self.batch.emptied_sources.push(ev.table.id.clone());
                }
                let key = crate::transform::source_key(&ev);
                for o in outputs {
                    match o {
                        Output::Change(c) => self.batch.push(c),
                        Output::Prune {
                            table,
                            parent_key,
                            keep_below,
                        } => self.batch.prune(&table, parent_key, keep_below),
                    }
                }
                // A record of this row refused earlier in the batch is
                // superseded by this change.
                for p in self.batch.parked.iter_mut() {
                    if p.table == ev.table.id && p.record.key == key {
                        p.superseded = true;
                    }
                }
                self.batch.source_keys.push((ev.table.id.clone(), key));
            }
            Some(Err(rejected)) => {
                tracing::warn!(table = %ev.table.id, rule = %rejected.rule, message = %rejected.message, "record refused by the mapping; parking it in the dead-letter queue");
                let event = match crate::dlq::encode_event(&ev, &self.opts.pipeline) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode a refused change for the dead-letter queue");
                        return Err(WriterGone);
                    }
                };
                let parked = crate::dlq::Parked {
                    table: ev.table.id.clone(),
                    record: crate::dlq::DeadLetter {
                        event,
                        key: crate::transform::source_key(&ev),
                        error: crate::dlq::RecordError {
                            class: crate::error::ErrorClass::Permanent.as_str().to_string(),
                            code: Some(rejected.rule),
                            message: rejected.message,
                            stage: Stage::Transform.as_str().to_string(),
                        },
                        position: (ev.position.commit_lsn != 0).then_some(ev.position),
                        origin: None,
                    },
                    superseded: false,
                };
                self.batch.park(&ev, parked);
            }
        }
        Ok(())
    }

    /// After a change went into the batch: hand the batch off when full
    /// (mapped changes are handed off whole, never split between their
    /// parent and child rows).
    async fn after_push(
        &mut self,
        deadline: &mut Option<Instant>,
        overdue: &mut bool,
        at_boundary: bool,
    ) -> Result<(), WriterGone> {
        if !self.awaiting_offset
            && (self.batch.events >= self.opts.batch_size
                || ((at_boundary || *overdue) && self.writer_idle()))
        {
            self.hand_off().await?;
            *deadline = None;
            *overdue = false;
        } else if deadline.is_none() && !*overdue && !self.batch.is_empty() {
            *deadline = Some(Instant::now() + self.opts.linger);
        }
        Ok(())
    }

    async fn run(mut self) -> Result<(), WriterGone> {
        let mut deadline: Option<Instant> = None;
        // Whether the last message closed a source transaction (or marked
        // the stream idle): a batch may commit there without splitting one.
        let mut at_boundary = true;
        // Schemas of the tables being copied: a table's rows may fill
        // several batches, so its `SnapshotDone` can arrive in a batch that
        // holds none of them.
        let mut snapshotting: HashMap<TableId, Arc<TableSchema>> = HashMap::new();
        let mut shutdown = self.shutdown.clone();
        let mut done = self.done.clone();
        // The batch has waited `linger`: hand it off mid-transaction as soon
        // as the writer is free.
        let mut overdue = false;
        // Kafka worker: whether a change arrived since the last tick; a
        // tick without one, with nothing pending, means caught up (lag 0).
        let mut received = false;
        let mut idle_tick = tokio::time::interval(Duration::from_secs(1));
        idle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Messages taken straight off the channel since the last select.
        let mut burst = 0;
        loop {
            // What is already queued is taken without a turn of the select:
            // its branches (two watches, a timer set up anew, the tick) cost
            // more per message than the message itself. The select still
            // runs every `BURST` messages, and whenever the queue is empty;
            // `writer_idle` reads the writer's progress directly.
            let queued = if burst < BURST {
                self.rx.try_recv()
            } else {
                None
            };
            let msg = if let Some(m) = queued {
                burst += 1;
                Some(Some(m))
            } else {
                burst = 0;
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|s| *s) => None,
                    // Always watched: a finished job may let the pending batch
                    // go, and a writer that stopped on an error must stop the
                    // pipeline now, not when the next change arrives.
                    changed = done.changed() => {
                        changed.map_err(|_| WriterGone)?;
                        Some(None)
                    }
                    _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                        overdue = true;
                        deadline = None;
                        Some(None)
                    }
                    m = self.rx.recv() => m.map(Some),
                    _ = idle_tick.tick(), if !self.skip_replays => {
                        if !std::mem::take(&mut received) && self.batch.is_empty() && self.writer_idle() {
                            metrics()
                                .lag_seconds
                                .with_label_values(&[&self.opts.pipeline])
                                .set(0.0);
                        }
                        Some(None)
                    }
                }
            };
            let Some(msg) = msg else {
                // Source gone or shutdown: commit what we have, then stop.
                self.hand_off().await?;
                return Ok(());
            };
            if let Some(msg) = msg {
                metrics().bus_depth.set(self.rx.depth() as i64);
                match msg {
                    BusMessage::Change(ev) => {
                        at_boundary = false;
                        if self.skip_replays && ev.position.commit_lsn != 0 {
                            if Some(ev.position) <= self.seen_up_to {
                                continue;
                            }
                            self.seen_up_to = Some(ev.position);
                        }
                        if let Some(t) = self.opts.transformer.clone() {
                            if t.maps(&ev.table.id) {
                                if !self.skip_replays && ev.op != crate::event::Op::Read {
                                    self.last_commit_ts = Some(ev.commit_ts_micros);
                                }
                                received = true;
                                self.awaiting_offset = !self.skip_replays;
                                self.track_lag(&ev);
                                self.transform(&t, ev).await?;
                                self.after_push(&mut deadline, &mut overdue, at_boundary)
                                    .await?;
                                continue;
                            }
                        }
                        if self.batch.needs_own_batch(&ev) {
                            self.hand_off().await?;
                            deadline = None;
                            overdue = false;
                        }
                        // Counted per batch in `hand_off` (a labelled
                        // counter per event costs a hash and allocations).
                        if !self.skip_replays && ev.op != crate::event::Op::Read {
                            // Kafka carries no transaction ends: the lag is
                            // that of the last change applied.
                            self.last_commit_ts = Some(ev.commit_ts_micros);
                        }
                        received = true;
                        self.awaiting_offset = !self.skip_replays;
                        // After any hand-off above: the change is in the
                        // batch being built. Snapshot rows too (their time
                        // is when they were read): a copy held up at the
                        // target shows as lag.
                        self.track_lag(&ev);
                        self.batch.push(ev);
                    }
                    BusMessage::Commit {
                        ack,
                        commit_ts_micros,
                        ..
                    } => {
                        status().set_streaming();
                        at_boundary = true;
                        self.pending_ack = Some(ack.max(self.pending_ack.unwrap_or_default()));
                        self.last_commit_ts = Some(commit_ts_micros);
                    }
                    BusMessage::Resume { resume_token } => {
                        status().set_streaming();
                        at_boundary = true;
                        self.batch.resume_at(resume_token);
                    }
                    BusMessage::Consumed {
                        topic,
                        partition,
                        offset,
                        position,
                        timestamp,
                    } => {
                        // Kafka messages are not grouped in transactions:
                        // every message is a boundary.
                        at_boundary = true;
                        self.awaiting_offset = false;
                        self.batch
                            .consumed(&topic, partition, offset, position, timestamp);
                    }
                    BusMessage::EnsureTable { table } => match self.mapped_targets(&table.id) {
                        Some(targets) => {
                            for t in &targets {
                                self.batch.touch(t);
                            }
                        }
                        None => {
                            snapshotting.insert(table.id.clone(), Arc::clone(&table));
                            self.batch.touch(&table);
                        }
                    },
                    BusMessage::Idle { ack } => {
                        status().set_streaming();
                        at_boundary = true;
                        self.pending_ack = Some(ack.max(self.pending_ack.unwrap_or_default()));
                        if self.batch.is_empty() && self.writer_idle() {
                            metrics()
                                .lag_seconds
                                .with_label_values(&[&self.opts.pipeline])
                                .set(0.0);
                        }
                    }
                    BusMessage::SnapshotStart { table } => {
                        if self.skip_replays {
                            // A Kafka worker sees a copy start on every
                            // partition but its end on one only: the
                            // source process reports snapshot state there,
                            // and the worker the lag of the rows.
                            status().snapshot_started(&table.id.to_string());
                        }
                        at_boundary = false;
                        match self.mapped_targets(&table.id) {
                            Some(targets) => {
                                for t in &targets {
                                    self.batch.snapshot_start(t);
                                }
                                self.batch.emptied_sources.push(table.id.clone());
                            }
                            None => {
                                snapshotting.insert(table.id.clone(), Arc::clone(&table));
                                self.batch.snapshot_start(&table)
                            }
                        }
                    }
                    BusMessage::Barrier(barrier) if !barrier.copies.is_empty() => {
                        // One worker read every copy, nothing past any of
                        // them: the source's order holds in this batch, so
                        // the event folds in like a change on one
                        // partition (no hand-off), and all copies are
                        // consumed with it (the sink fences each one's
                        // partition, and records the barrier done).
                        let barrier = *barrier;
                        let ev = barrier.event.clone();
                        let position = (ev.position.commit_lsn != 0).then_some(ev.position);
                        self.last_commit_ts = Some(ev.commit_ts_micros);
                        received = true;
                        self.track_lag(&ev);
                        match self.opts.transformer.clone() {
                            Some(t) if t.maps(&ev.table.id) => self.transform(&t, ev).await?,
                            _ => {
                                if self.batch.needs_own_batch(&ev) {
                                    self.hand_off().await?;
                                    deadline = None;
                                    overdue = false;
                                }
                                self.batch.push(ev);
                            }
                        }
                        self.batch.arrive_local(&barrier);
                        for c in &barrier.copies {
                            self.batch.consumed(
                                &barrier.topic,
                                c.partition,
                                c.offset,
                                position,
                                c.timestamp,
                            );
                        }
                        self.awaiting_offset = false;
                        at_boundary = true;
                    }
                    BusMessage::Barrier(barrier) => {
                        // The action is folded on its own, through the
                        // mapping like any change, and applied by the sink
                        // only if this arrival completes the barrier. The
                        // rows before it stay in the batch (applied first,
                        // in the same transaction).
                        let mut main = std::mem::take(&mut self.batch);
                        let barrier = *barrier;
                        let table = Arc::clone(&barrier.event.table);
                        match barrier.kind {
                            crate::event::BarrierKind::SnapshotStart => {
                                match self.mapped_targets(&table.id) {
                                    Some(targets) => {
                                        for t in &targets {
                                            self.batch.snapshot_start(t);
                                            main.touch(t);
                                        }
                                        self.batch.emptied_sources.push(table.id.clone());
                                    }
                                    None => {
                                        snapshotting.insert(table.id.clone(), Arc::clone(&table));
                                        self.batch.snapshot_start(&table);
                                    }
                                }
                            }
                            crate::event::BarrierKind::KeyChange
                            | crate::event::BarrierKind::Truncate => {
                                let ev = barrier.event.clone();
                                match self.opts.transformer.clone() {
                                    Some(t) if t.maps(&ev.table.id) => {
                                        self.transform(&t, ev).await?
                                    }
                                    _ => self.batch.push(ev),
                                }
                            }
                        }
                        let action = std::mem::replace(&mut self.batch, main);
                        received = true;
                        self.batch.arrive(&barrier, action);
                        // Other partitions (maybe other workers) wait for
                        // this arrival: no linger.
                        at_boundary = true;
                        self.hand_off().await?;
                        deadline = None;
                        overdue = false;
                        continue;
                    }
                    BusMessage::SnapshotDone { table, rows, state }
                        if self.mapped_targets(&table).is_some() =>
                    {
                        // Recorded under the source table's name: that is
                        // what the source asks for when it restarts.
                        self.snapshots_done.push(table.clone());
                        self.batch.snapshot_marks.push((table, rows, state));
                        if !self.skip_replays {
                            // See the unmapped case below.
                            self.awaiting_offset = true;
                            continue;
                        }
                        at_boundary = true;
                        self.hand_off().await?;
                        deadline = None;
                        overdue = false;
                        continue;
                    }
                    BusMessage::SnapshotDone { table, rows, state } => {
                        // The batch's schema if it holds the table, else the
                        // one its start announced (the batch was handed off
                        // since).
                        let schema = self
                            .batch
                            .tables
                            .iter()
                            .find(|t| t.schema.id == table)
                            .map(|t| Arc::clone(&t.schema))
                            .or_else(|| snapshotting.get(&table).map(Arc::clone));
                        snapshotting.remove(&table);
                        self.snapshots_done.push(table.clone());
                        match schema {
                            Some(s) => self.batch.snapshot_done(&s, rows, state),
                            None => {
                                // The source announces every table before
                                // its rows; without it, a bug: stop loudly.
                                tracing::error!(%table, "snapshot finished without a start");
                                return Err(WriterGone);
                            }
                        }
                        // A finished table is a natural commit point on
                        // the embedded bus. A Kafka worker commits it with
                        // the marker's own offset (the `Consumed` that comes
                        // next): committed apart, a crash in between made the
                        // worker replay the marker alone on every restart
                        // ("snapshot finished without a start").
                        if !self.skip_replays {
                            self.awaiting_offset = true;
                            continue;
                        }
                        at_boundary = true;
                        self.hand_off().await?;
                        deadline = None;
                        overdue = false;
                        continue;
                    }
                }
            }
            if !self.awaiting_offset
                && (self.batch.events >= self.opts.batch_size
                    || ((at_boundary || overdue) && self.writer_idle()))
            {
                // Full, or the sink is free: ship what we have. An empty
                // batch still carries the pending ack (released after
                // earlier jobs).
                self.hand_off().await?;
                deadline = None;
                overdue = false;
            } else if deadline.is_none() && !overdue && !self.batch.is_empty() {
                deadline = Some(Instant::now() + self.opts.linger);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The runtime against an in-memory source and sink: what is skipped,
    //! when acks are released, and that transient sink errors are retried.

    use std::sync::Mutex;

    use super::*;
    use crate::batch::RowChange;
    use crate::bus::embedded::run;
    use crate::event::{ChangeEvent, Column, Datum, Op};
    use crate::value::Value;

    fn schema() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            id: TableId::new("public", "t"),
            columns: vec![Column {
                name: "id".into(),
                type_oid: 20,
                type_sql: "bigint".into(),
                nullable: false,
                is_key: true,
                enum_labels: None,
                id_map: None,
            }],
            primary_key: vec![0],
            child: None,
        })
    }

    fn insert(id: i64, lsn: u64, ordinal: u64) -> BusMessage {
        BusMessage::Change(ChangeEvent {
            table: schema(),
            op: Op::Insert,
            before: None,
            after: Some(vec![Datum::Value(Value::Int(id))]),
            position: Position {
                commit_lsn: lsn,
                ordinal,
            },
            xid: Some(1),
            commit_ts_micros: 0,
            resume_token: None,
        })
    }

    fn commit(lsn: u64, end: u64) -> BusMessage {
        BusMessage::Commit {
            position: Position {
                commit_lsn: lsn,
                ordinal: 0,
            },
            ack: SourceAck(end),
            commit_ts_micros: 0,
        }
    }

    /// Sends a script, then waits until the runtime acked `until`, and
    /// reports every ack it saw.
    struct ScriptSource {
        script: Vec<BusMessage>,
        until: u64,
        seen_acks: Arc<Mutex<Vec<u64>>>,
    }

    impl Source for ScriptSource {
        async fn run(self, mut ctx: SourceContext) -> Result<(), PipelineError> {
            for m in self.script {
                ctx.bus.send(m).await?;
            }
            loop {
                let ack = ctx.acks.borrow_and_update().0;
                self.seen_acks.lock().unwrap().push(ack);
                if ack >= self.until {
                    return Ok(());
                }
                if ctx.acks.changed().await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    #[derive(Default)]
    struct Recorded {
        /// Keys written, per committed batch.
        batches: Vec<Vec<i64>>,
        failures_left: u32,
        position: Option<Position>,
    }

    struct MemorySink {
        state: Arc<Mutex<Recorded>>,
        checkpoint: Option<Position>,
    }

    impl CheckpointStore for MemorySink {
        async fn load(&mut self) -> Result<Checkpoint, PipelineError> {
            Ok(Checkpoint {
                position: self.checkpoint,
                snapshots: HashMap::new(),
                resume_token: None,
            })
        }
    }

    impl Sink for MemorySink {
        const KIND: &'static str = "memory";

        type Prepared = Batch;
        fn prepare(batch: Batch) -> Batch {
            batch
        }
        async fn write_batch(&mut self, batch: &Batch) -> Result<(), PipelineError> {
            let mut st = self.state.lock().unwrap();
            if st.failures_left > 0 {
                st.failures_left -= 1;
                return Err(PipelineError::transient(Stage::Sink, "connection reset"));
            }
            let keys = batch
                .tables
                .iter()
                .flat_map(|t| t.rows.iter())
                .filter_map(|r| match r {
                    RowChange::Upsert(row) => match &row[0] {
                        Datum::Value(Value::Int(i)) => Some(*i),
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            st.batches.push(keys);
            st.position = batch.last_position.or(st.position);
            Ok(())
        }
    }

    fn opts() -> RuntimeOptions {
        RuntimeOptions {
            pipeline: "test".into(),
            batch_size: 1000,
            linger: Duration::from_millis(5),
            bus_capacity: 16,
            max_retry_delay: Duration::from_millis(400),
            transformer: None,
            refresh_transformer: None,
        }
    }

    #[tokio::test]
    async fn replays_are_skipped_and_acks_follow_commits() {
        let state = Arc::new(Mutex::new(Recorded {
            failures_left: 2,
            ..Recorded::default()
        }));
        let seen_acks = Arc::new(Mutex::new(Vec::new()));
        let source = ScriptSource {
            script: vec![
                // Already durable (checkpoint is 20#1): skipped.
                insert(1, 10, 1),
                commit(10, 11),
                insert(2, 20, 1),
                commit(20, 21),
                insert(3, 30, 1),
                insert(4, 30, 2),
                commit(30, 31),
                // A reconnect resends transaction 30: skipped.
                insert(3, 30, 1),
                insert(4, 30, 2),
                commit(30, 31),
                insert(5, 40, 1),
                commit(40, 41),
            ],
            until: 41,
            seen_acks: Arc::clone(&seen_acks),
        };
        let sink = MemorySink {
            state: Arc::clone(&state),
            checkpoint: Some(Position {
                commit_lsn: 20,
                ordinal: 1,
            }),
        };
        let (_stop, shutdown) = watch::channel(false);
        tokio::time::timeout(Duration::from_secs(20), run(source, sink, opts(), shutdown))
            .await
            .expect("pipeline finished")
            .expect("pipeline ok");
        let st = state.lock().unwrap();
        let written: Vec<i64> = st.batches.iter().flatten().copied().collect();
        assert_eq!(written, vec![3, 4, 5], "batches: {:?}", st.batches);
        assert_eq!(
            st.position,
            Some(Position {
                commit_lsn: 40,
                ordinal: 1
            })
        );
        // Both transient failures were retried; nothing was acked past what
        // was committed, and acks only grow.
        assert_eq!(st.failures_left, 0);
        let acks = seen_acks.lock().unwrap();
        assert!(acks.windows(2).all(|w| w[0] <= w[1]), "{acks:?}");
        assert_eq!(*acks.last().unwrap(), 41);
    }
}
