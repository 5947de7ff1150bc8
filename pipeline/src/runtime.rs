//! The runtime: runs a source into the bus and the apply loop out of it.
//!
//! The apply loop owns the at-least-once → exactly-once-in-effect step: it
//! skips changes at or before the sink's durable checkpoint, folds the rest
//! into batches, has the sink commit each batch together with its
//! checkpoint, and only then releases the source's acknowledgement.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use crate::batch::Batch;
use crate::bus::{self, BusReceiver};
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::error::{retry_backoff, Disposition, PipelineError, Stage};
use crate::event::{BusMessage, Position, SourceAck};
use crate::metrics::metrics;
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
}

impl From<&crate::config::PipelineConfig> for RuntimeOptions {
    fn from(p: &crate::config::PipelineConfig) -> Self {
        Self {
            pipeline: p.name.clone(),
            batch_size: p.batch_size,
            linger: Duration::from_millis(p.batch_linger_ms),
            bus_capacity: p.bus_capacity,
            max_retry_delay: Duration::from_secs(p.max_retry_delay_secs),
        }
    }
}

/// Runs `source` into `sink` on the embedded bus until `shutdown` turns
/// true (returns `Ok`) or an error that cannot be retried (returns it).
pub async fn run<S: Source, K: Sink>(
    source: S,
    mut sink: K,
    opts: RuntimeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let checkpoint = load_checkpoint(&mut sink, &opts, shutdown.clone()).await?;
    info!(
        position = %checkpoint.position.map(|p| p.to_string()).unwrap_or_else(|| "none".into()),
        snapshots_done = checkpoint.snapshots.len(),
        "loaded checkpoint"
    );
    let (bus_tx, bus_rx) = bus::embedded(opts.bus_capacity);
    let (ack_tx, ack_rx) = watch::channel(SourceAck(0));
    let ctx = SourceContext {
        bus: bus_tx,
        acks: ack_rx,
        checkpoint: checkpoint.clone(),
        shutdown: shutdown.clone(),
    };
    let span = tracing::info_span!("source", pipeline = %opts.pipeline);
    let mut source_task = tokio::spawn(source.run(ctx).instrument(span));
    let apply = ApplyLoop {
        sink,
        rx: bus_rx,
        acks: ack_tx,
        seen_up_to: checkpoint.position,
        opts: opts.clone(),
        shutdown: shutdown.clone(),
    };
    let span = tracing::info_span!("apply", pipeline = %opts.pipeline);
    let mut apply_task = tokio::spawn(apply.run().instrument(span));
    tokio::select! {
        res = &mut apply_task => {
            source_task.abort();
            flatten(res)
        }
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

fn flatten(
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

async fn load_checkpoint<K: CheckpointStore>(
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

/// Logs, counts and sleeps one backoff step; fails if asked to stop.
async fn wait_retry(
    e: &PipelineError,
    backoff: &mut backon::ExponentialBackoff,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
    metrics()
        .retries
        .with_label_values(&[e.stage.as_str()])
        .inc();
    metrics()
        .errors
        .with_label_values(&[e.stage.as_str(), e.class.as_str()])
        .inc();
    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "transient failure, retrying");
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = shutdown.wait_for(|s| *s) => Err(PipelineError::transient(e.stage, "stopped while retrying")),
    }
}

struct ApplyLoop<K: Sink> {
    sink: K,
    rx: BusReceiver,
    acks: watch::Sender<SourceAck>,
    /// The highest position already durable or folded into the current
    /// batch. The source delivers changes in position order, so anything at
    /// or below it is a replay (restart, or a reconnect that resent
    /// transactions from the slot's confirmed position) and is skipped:
    /// re-applying it could move a row back to an older state.
    seen_up_to: Option<Position>,
    opts: RuntimeOptions,
    shutdown: watch::Receiver<bool>,
}

impl<K: Sink> ApplyLoop<K> {
    async fn run(mut self) -> Result<(), PipelineError> {
        let mut batch = Batch::default();
        // The ack to release once the current batch is durable.
        let mut pending_ack: Option<SourceAck> = None;
        let mut last_commit_ts: Option<i64> = None;
        let mut deadline: Option<Instant> = None;
        // Whether the last message closed a source transaction (or marked
        // the stream idle): a batch may commit there without splitting one.
        let mut at_boundary;
        // Schemas of the tables being copied: a table's rows may fill
        // several batches, so its `SnapshotDone` can arrive in a batch that
        // holds none of them.
        let mut snapshotting: std::collections::HashMap<
            crate::event::TableId,
            std::sync::Arc<crate::event::TableSchema>,
        > = std::collections::HashMap::new();
        loop {
            let msg = match deadline {
                None => {
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        m = self.rx.recv() => m,
                        _ = shutdown.wait_for(|s| *s) => None,
                    }
                }
                Some(d) => match tokio::time::timeout_at(d.into(), self.rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => {
                        self.flush(&mut batch, &mut pending_ack, &mut last_commit_ts)
                            .await?;
                        deadline = None;
                        continue;
                    }
                },
            };
            let Some(msg) = msg else {
                self.flush(&mut batch, &mut pending_ack, &mut last_commit_ts)
                    .await?;
                return Ok(());
            };
            metrics().bus_depth.set(self.rx.depth() as i64);
            match msg {
                BusMessage::Change(ev) => {
                    at_boundary = false;
                    if ev.position.commit_lsn != 0 {
                        if Some(ev.position) <= self.seen_up_to {
                            continue;
                        }
                        self.seen_up_to = Some(ev.position);
                    }
                    if batch.needs_own_batch(&ev) {
                        self.flush(&mut batch, &mut pending_ack, &mut last_commit_ts)
                            .await?;
                        deadline = None;
                    }
                    metrics()
                        .events
                        .with_label_values(&["source", &ev.table.id.to_string(), ev.op.as_str()])
                        .inc();
                    batch.push(ev);
                }
                BusMessage::Commit {
                    ack,
                    commit_ts_micros,
                    ..
                } => {
                    at_boundary = true;
                    pending_ack = Some(ack.max(pending_ack.unwrap_or_default()));
                    last_commit_ts = Some(commit_ts_micros);
                }
                BusMessage::Idle { ack } => {
                    at_boundary = true;
                    pending_ack = Some(ack.max(pending_ack.unwrap_or_default()));
                    if batch.is_empty() {
                        metrics()
                            .lag_seconds
                            .with_label_values(&[&self.opts.pipeline])
                            .set(0.0);
                    }
                }
                BusMessage::SnapshotStart { table } => {
                    at_boundary = false;
                    snapshotting.insert(table.id.clone(), std::sync::Arc::clone(&table));
                    batch.snapshot_start(&table)
                }
                BusMessage::SnapshotDone { table, rows, state } => {
                    // The batch's schema if it holds the table, else the one
                    // its start announced (the batch was flushed since).
                    let schema = batch
                        .tables
                        .iter()
                        .find(|t| t.schema.id == table)
                        .map(|t| std::sync::Arc::clone(&t.schema))
                        .or_else(|| snapshotting.get(&table).map(std::sync::Arc::clone));
                    snapshotting.remove(&table);
                    match schema {
                        Some(s) => batch.snapshot_done(&s, rows, state),
                        None => {
                            return Err(PipelineError::fatal(
                                Stage::Snapshot,
                                format!(
                                "snapshot of {table} finished in a batch that never saw it start"
                            ),
                            ))
                        }
                    }
                    // A finished table is a natural commit point.
                    self.flush(&mut batch, &mut pending_ack, &mut last_commit_ts)
                        .await?;
                    deadline = None;
                    continue;
                }
            }
            if batch.is_empty() {
                // Nothing to write: everything before the ack is durable.
                if let Some(ack) = pending_ack.take() {
                    self.release(ack);
                }
                continue;
            }
            // Commit when the batch is full, or at a transaction boundary
            // when nothing else is waiting: under load, batches grow while
            // the previous one commits; when traffic is light, a change is
            // applied without waiting for the linger time.
            if batch.events >= self.opts.batch_size || (at_boundary && self.rx.depth() == 0) {
                self.flush(&mut batch, &mut pending_ack, &mut last_commit_ts)
                    .await?;
                deadline = None;
            } else if deadline.is_none() {
                deadline = Some(Instant::now() + self.opts.linger);
            }
        }
    }

    fn release(&self, ack: SourceAck) {
        self.acks.send_if_modified(|cur| {
            if ack > *cur {
                *cur = ack;
                true
            } else {
                false
            }
        });
    }

    async fn flush(
        &mut self,
        batch: &mut Batch,
        pending_ack: &mut Option<SourceAck>,
        last_commit_ts: &mut Option<i64>,
    ) -> Result<(), PipelineError> {
        if batch.is_empty() {
            if let Some(ack) = pending_ack.take() {
                self.release(ack);
            }
            return Ok(());
        }
        let started = Instant::now();
        let mut backoff = retry_backoff(self.opts.max_retry_delay);
        loop {
            match self.sink.write_batch(batch).await {
                Ok(()) => break,
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
        let m = metrics();
        m.batch_duration
            .with_label_values(&["postgres"])
            .observe(started.elapsed().as_secs_f64());
        m.batch_events
            .with_label_values(&["postgres"])
            .observe(batch.events as f64);
        for ((table, op), n) in &batch.counts {
            m.events
                .with_label_values(&["sink", &table.to_string(), op.as_str()])
                .inc_by(*n);
        }
        if let Some(ts) = last_commit_ts.take() {
            let lag = (now_micros() - ts).max(0) as f64 / 1e6;
            m.lag_seconds
                .with_label_values(&[&self.opts.pipeline])
                .set(lag);
        }
        debug!(events = batch.events, position = ?batch.last_position, "batch committed");
        *batch = Batch::default();
        if let Some(ack) = pending_ack.take() {
            self.release(ack);
        }
        Ok(())
    }
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
