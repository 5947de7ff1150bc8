//! The worker side of the Kafka bus (`ferry run --role worker`): joins the
//! pipeline's consumer group, decodes, and feeds the same batch builder and
//! writer as the embedded bus.
//!
//! Where a partition starts: the sink's stored progress for it (written in
//! the same transaction as the rows), read when the partition is assigned;
//! the beginning of the topic when the sink has none. Kafka's committed
//! offsets are committed after each sink commit, for lag tooling, but the
//! sink's record is the truth: after a crash or a rebalance nothing is lost
//! and nothing is applied twice. Two workers racing on a partition during a
//! rebalance are fenced by the sink (see
//! [`crate::checkpoint::BusOffsets`]): the loser rejoins and resumes from
//! the winner's progress.
//!
//! A source that restarts re-produces changes Kafka already has (it resumes
//! from its last confirmed position). Within a partition positions only
//! grow, so the worker skips changes at or below the last position it
//! applied from that partition: a row never moves back to an older state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::Offset;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::producer::{
    HEADER_BARRIER, HEADER_BARRIER_PARTITIONS, HEADER_SNAPSHOT_DONE, HEADER_SNAPSHOT_START,
};
use super::{client_config, ensure_topics, kafka_err, registry, schema_store};
use crate::channel::{self, BusSender};
use crate::checkpoint::{BusOffsets, PartitionProgress, STALE_OFFSETS};
use crate::config::KafkaConfig;
use crate::envelope::{Decoder, EnvelopeError, SchemaRef};
use crate::error::{retry_backoff, Disposition, ErrorClass, PipelineError, Stage};
use crate::event::{Barrier, BarrierCopy, BarrierKind, BusMessage, SourceAck};
use crate::metrics::metrics;
use crate::runtime::{
    flatten, spawn_apply, wait_retry, AfterCommit, ApplyMode, RuntimeOptions, UniqueWait, BURST,
    UNIQUE_WAIT,
};
use crate::sink::Sink;
use crate::FastHashMap;

/// What a worker consumes.
#[derive(Debug, Clone)]
pub enum Subscription {
    /// The data topics of the configured tables.
    Topics(Vec<String>),
    /// Every data topic under the prefix (a MongoDB source mirroring all
    /// collections): `^<prefix>\.[^.]+\.[^.]+$`.
    Prefix,
}

/// Per assigned partition: where the sink's progress is, and the last
/// position applied from it. Keyed by the topic's shared name, so that the
/// per-message lookup allocates nothing.
type Progress = Arc<Mutex<FastHashMap<(Arc<str>, i32), PartitionProgress>>>;

/// Per partition: the offset and timestamp of the record a check expects.
type Expected = FastHashMap<(Arc<str>, i32), (i64, i64)>;

/// Partitions assigned one record before the sink's progress, to read
/// again the record the target applied last: a log made anew since (a
/// broker that lost its data, a topic deleted and recreated, refilled by a
/// restarted source) has other records at those offsets, and resuming at
/// the stored offset would silently skip the start of it. Offsets alone
/// cannot tell (the new log may have grown past them).
#[derive(Default)]
struct ResumeChecks {
    /// Whether any check is outstanding: read per message, without a lock.
    pending: AtomicBool,
    expected: Mutex<Expected>,
}

impl ResumeChecks {
    fn set(&self, f: impl FnOnce(&mut Expected)) {
        let mut expected = self.expected.lock().expect("resume checks lock");
        f(&mut expected);
        self.pending.store(!expected.is_empty(), Ordering::Release);
    }

    /// Whether `offset` of `topic[partition]` is the record a check waits
    /// for, and the same record the target applied (then it is not applied
    /// again); an error when another record stands at its offset.
    fn verify(
        &self,
        topic: &Arc<str>,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
    ) -> Result<bool, PipelineError> {
        let mut expected = self.expected.lock().expect("resume checks lock");
        let Some((at, ts)) = expected.remove(&(Arc::clone(topic), partition)) else {
            return Ok(false);
        };
        self.pending.store(!expected.is_empty(), Ordering::Release);
        if offset == at + 1 {
            // The broker answered from the next record on (tansu 0.6 does
            // for an offset inside a producer batch): nothing to compare,
            // and nothing skipped, as `at + 1` is where the worker resumes.
            return Ok(false);
        }
        if offset != at {
            // Data topics are never compacted and their offsets have no
            // gaps: records between the one asked for and this one were
            // skipped by the broker (tansu 0.6 answers a fetch inside a
            // producer batch with the next batch). Never silently.
            return Err(PipelineError::fatal(
                Stage::Decode,
                format!(
                    "{topic}[{partition}]: the broker returned offset {offset} for a fetch at {at}: records {} to {} would be skipped. Nothing was skipped, the worker stops; this broker (version) does not serve fetches inside a batch (docs/kafka.md)",
                    at + 1,
                    offset - 1
                ),
            )
            .with_code(SKIPPED_RECORDS));
        }
        if timestamp == Some(ts) {
            return Ok(true);
        }
        Err(PipelineError::fatal(
            Stage::Decode,
            format!(
                "{topic}[{partition}]: the record at offset {at} is not the one the target applied last (timestamp {} instead of {ts}): the topic's log was made anew since (a broker that lost its data, or the topic deleted and recreated); resuming after it would skip the start of the new log. Nothing was skipped, the worker stops. To start over: stop the pipeline, run `ferry kafka reset --config <file> --yes`, start it again",
                timestamp.map_or_else(|| "none".to_string(), |t| t.to_string())
            ),
        )
        .with_code(LOG_REPLACED))
    }
}

/// The error code of a partition whose log is not the one the target's
/// progress refers to.
const LOG_REPLACED: &str = "ferry-log-replaced";

/// The error code of a fetch that jumped past records.
const SKIPPED_RECORDS: &str = "ferry-skipped-records";

/// Partitions held at a cross-partition barrier. A held partition yields
/// nothing: what librdkafka fetched before the pause is dropped unrecorded
/// and read again once the barrier is done. Shared with the rebalance
/// callback, which drops the holds of partitions revoked or assigned anew:
/// a new owner starts at the target's progress, which is before the copy
/// (an arrival does not consume it), and meets the barrier again.
#[derive(Default)]
struct Holds {
    /// Whether any hold exists: read per message, without a lock.
    any: AtomicBool,
    map: Mutex<FastHashMap<(Arc<str>, i32), Hold>>,
    /// Whether any local hold exists: read per message, without a lock.
    local_any: AtomicBool,
    local: Mutex<Vec<LocalHold>>,
    /// Set by the rebalance callback: local holds whose partners may no
    /// longer be this worker's go through the target instead.
    rebalanced: AtomicBool,
}

/// A partition held at a barrier copy whose every partition this worker
/// owns: its records after the copy are kept here, in order, instead of
/// being sent on, until the worker reads the copies of the other
/// partitions; then the barrier's event is folded into the batch in the
/// source's order (as on one partition) and the records kept are read
/// again from memory. Nothing is written to the target for the wait, no
/// commit is forced and nothing is fetched twice: a key change across
/// partitions costs about what it costs on one. A buffer that reaches
/// [`LOCAL_HOLD_BYTES`] pauses its partition (what follows is fetched
/// again after the barrier). A rebalance turns the remaining local holds
/// into holds through the target (see [`hold_at`]).
struct LocalHold {
    /// The copy on this partition (`copies` holds it).
    barrier: Barrier,
    buffer: std::collections::VecDeque<rdkafka::message::OwnedMessage>,
    bytes: usize,
    /// Paused when the buffer filled up: fetched again from the record
    /// after the buffer once the barrier is done.
    paused: bool,
}

/// Memory a local hold keeps per partition before it pauses it.
const LOCAL_HOLD_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq)]
enum Hold {
    /// Arrived at barrier `id` with its copy at `offset`; waits until done.
    Waiting { id: String, offset: i64 },
    /// The barrier is done and the partition sought back to its copy at
    /// `offset`: records fetched before the seek are stale until it comes.
    Passing { offset: i64 },
    /// A local hold that paused its partition (its buffer was full) is
    /// done, and the partition sought to `offset`, the record after its
    /// buffer: records fetched before the seek are stale until it comes,
    /// and that one is read as usual.
    Resuming { offset: i64 },
}

impl Holds {
    fn local<R>(&self, f: impl FnOnce(&mut Vec<LocalHold>) -> R) -> R {
        let mut local = self.local.lock().expect("local holds lock");
        let r = f(&mut local);
        self.local_any.store(!local.is_empty(), Ordering::Release);
        r
    }

    /// Drops the local holds of `parts` (revoked, or starting afresh at
    /// the target's progress) and marks the others for [`hold_at`].
    fn rebalance(&self, parts: &[(String, i32)]) {
        self.local(|l| {
            l.retain(|h| {
                !parts
                    .iter()
                    .any(|(t, p)| **t == *h.barrier.topic && *p == h.barrier.partition)
            })
        });
        self.rebalanced.store(true, Ordering::Release);
    }

    fn is_local(&self, topic: &str, partition: i32) -> bool {
        self.local_any.load(Ordering::Acquire)
            && self.local(|l| {
                l.iter()
                    .any(|h| &*h.barrier.topic == topic && h.barrier.partition == partition)
            })
    }

    /// Whether a partition waits at a barrier through the target (its
    /// records are fetched again once released).
    fn held_in_target(&self, topic: &str, partition: i32) -> bool {
        self.any.load(Ordering::Acquire)
            && self.update(|map| {
                map.iter().any(|((t, p), h)| {
                    &**t == topic
                        && *p == partition
                        && matches!(h, Hold::Waiting { .. } | Hold::Passing { .. })
                })
            })
    }

    /// A record fetched before the seek of a [`Hold::Resuming`] partition:
    /// stale. The record sought to ends the hold.
    fn stale(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.any.load(Ordering::Acquire)
            && self.update(|map| {
                let found = map.iter().find_map(|((t, p), h)| match h {
                    Hold::Resuming { offset: at } if &**t == topic && *p == partition => {
                        Some((Arc::clone(t), *at))
                    }
                    _ => None,
                });
                match found {
                    Some((_, at)) if at != offset => true,
                    Some((t, _)) => {
                        map.remove(&(t, partition));
                        false
                    }
                    None => false,
                }
            })
    }

    /// Keeps a record of a locally held partition (see [`LocalHold`]).
    fn keep<S: BusOffsets>(
        &self,
        consumer: &StreamConsumer<WorkerContext<S>>,
        topic: &str,
        partition: i32,
        message: impl FnOnce() -> rdkafka::message::OwnedMessage,
    ) -> Result<(), PipelineError> {
        let pause = self.local(|l| {
            let Some(h) = l
                .iter_mut()
                .find(|h| &*h.barrier.topic == topic && h.barrier.partition == partition)
            else {
                return false;
            };
            if h.paused {
                // Fetched again after the barrier.
                return false;
            }
            let m = message();
            h.bytes += m.payload().map_or(0, <[u8]>::len) + 64;
            h.buffer.push_back(m);
            h.paused = h.bytes >= LOCAL_HOLD_BYTES;
            h.paused
        });
        if pause {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            consumer
                .pause(&tpl)
                .map_err(|e| kafka_err(Stage::Decode, "pause a partition at a barrier", e))?;
        }
        Ok(())
    }

    fn update<R>(&self, f: impl FnOnce(&mut FastHashMap<(Arc<str>, i32), Hold>) -> R) -> R {
        let mut map = self.map.lock().expect("holds lock");
        let r = f(&mut map);
        self.any.store(!map.is_empty(), Ordering::Release);
        metrics().kafka_held.set(
            map.values()
                .filter(|h| matches!(h, Hold::Waiting { .. }))
                .count() as i64,
        );
        r
    }

    /// What to do with a record of a partition that may be held: `None` to
    /// handle it, `Some(false)` to drop it, `Some(true)` for the copy read
    /// again after its barrier is done (consumed without applying it).
    fn screen(&self, topic: &Arc<str>, partition: i32, offset: i64) -> Option<bool> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.update(|map| {
            let key = (Arc::clone(topic), partition);
            match map.get(&key) {
                None => None,
                Some(Hold::Waiting { .. }) => Some(false),
                Some(Hold::Passing { offset: at }) if *at == offset => {
                    map.remove(&key);
                    Some(true)
                }
                Some(Hold::Passing { .. }) => Some(false),
                Some(Hold::Resuming { offset: at }) if *at == offset => {
                    map.remove(&key);
                    None
                }
                Some(Hold::Resuming { .. }) => Some(false),
            }
        })
    }
}

/// The barrier a record carries, if it is a barrier copy. Only truncates
/// (snapshot starts included) and updates that carry their old row (key
/// changes, REPLICA IDENTITY FULL) can be: other records' headers are not
/// read.
fn barrier_id<M: Message>(m: &M, ev: &crate::event::ChangeEvent) -> Option<String> {
    let candidate = ev.op == crate::event::Op::Truncate
        || (ev.op == crate::event::Op::Update && ev.before.is_some());
    if candidate {
        header(m, HEADER_BARRIER)
    } else {
        None
    }
}

/// Parses a barrier copy's headers into an arrival of `partition`.
fn parse_barrier(
    id: String,
    partitions: Option<String>,
    topic: &Arc<str>,
    partition: i32,
    offset: i64,
    event: crate::event::ChangeEvent,
) -> Result<Barrier, PipelineError> {
    let bad = |what: &str| {
        PipelineError::fatal(
            Stage::Decode,
            format!("{topic}[{partition}]@{offset}: unreadable barrier ({what})"),
        )
    };
    let kind = BarrierKind::of_id(&id).ok_or_else(|| bad(&id))?;
    let partitions: Vec<i32> = partitions
        .ok_or_else(|| bad("no partitions"))?
        .split(',')
        .map(|p| p.trim().parse::<i32>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("partitions"))?;
    let seq = match kind {
        BarrierKind::SnapshotStart => id[2..].parse::<i64>().map_err(|_| bad(&id))?,
        _ => 0,
    };
    Ok(Barrier {
        topic: Arc::clone(topic),
        partition,
        offset,
        id,
        kind,
        seq,
        partitions,
        event,
        copies: Vec::new(),
    })
}

/// The consumer's callbacks: logs, and the rebalance that starts each
/// assigned partition at the sink's progress.
struct WorkerContext<S: BusOffsets> {
    store: tokio::sync::Mutex<S>,
    runtime: tokio::runtime::Handle,
    progress: Progress,
    checks: Arc<ResumeChecks>,
    /// Why the last assignment could not be honoured; the consume loop
    /// stops with it.
    failure: Mutex<Option<PipelineError>>,
    holds: Arc<Holds>,
    /// The consumer group's join state and rebalance count, from
    /// librdkafka's statistics (for the "waiting for an assignment" log).
    group_state: Mutex<Option<(String, i64)>>,
    /// Per partition, the high watermark of the last Fetch response
    /// (librdkafka's statistics, every second): see [`check_topics`].
    fetched_high: Mutex<FastHashMap<(String, i32), i64>>,
    /// The partitions `ferry_kafka_consumer_lag_messages` reports.
    lag_labels: Mutex<FastHashMap<(String, i32), ()>>,
    /// The pipeline's retry cap and stop signal, for reading the sink's
    /// progress on an assignment.
    max_retry_delay: Duration,
    shutdown: watch::Receiver<bool>,
}

/// How long an assignment waits out a sink that answers its progress read
/// with transient errors (429, 5xx, a dropped connection) before the
/// worker gives up the assignment and rejoins. Retried here, in place: a
/// rejoin costs seconds of group protocol per attempt, so against a sink
/// that is overloaded for a while the worker spent every attempt on one
/// failed read and applied nothing (the Convex sink's kill -9 and overload
/// test, issue #16). Kept well below librdkafka's `max.poll.interval.ms`
/// (300 s by default): the rebalance callback runs inside the poll.
const ASSIGN_RETRY_BUDGET: Duration = Duration::from_secs(60);

/// The sink's progress for `parts`, transient errors retried with the
/// pipeline's backoff for up to `budget`; the last error after that, or at
/// once for an error that is not transient, or when asked to stop.
async fn load_progress<S: BusOffsets>(
    store: &mut S,
    parts: &[(String, i32)],
    max_retry_delay: Duration,
    budget: Duration,
    shutdown: watch::Receiver<bool>,
) -> Result<std::collections::HashMap<(String, i32), PartitionProgress>, PipelineError> {
    let deadline = std::time::Instant::now() + budget;
    let mut backoff = retry_backoff(max_retry_delay);
    loop {
        match store.load_bus_offsets(parts).await {
            Ok(m) => return Ok(m),
            Err(e)
                if e.disposition() == Disposition::Retry
                    && std::time::Instant::now() < deadline =>
            {
                wait_retry(&e, &mut backoff, shutdown.clone()).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

impl<S: BusOffsets> ClientContext for WorkerContext<S> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_librdkafka(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker blips are retried by librdkafka; say so once per event.
        warn!(%error, reason, "Kafka client error (retrying)");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut fetched = self.fetched_high.lock().expect("fetched high lock");
        let mut lagging = self.lag_labels.lock().expect("lag labels lock");
        let lag = &metrics().kafka_consumer_lag;
        let mut seen = FastHashMap::default();
        for (name, t) in &statistics.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.hi_offset >= 0 {
                    fetched.insert((name.clone(), *p), part.hi_offset);
                }
                // librdkafka's lag is against the committed offset, which
                // this worker commits to Kafka after each sink commit: the
                // sink's progress as Kafka tooling sees it. -1 for
                // partitions not assigned here.
                if *p >= 0 && part.consumer_lag >= 0 {
                    let partition = p.to_string();
                    lag.with_label_values(&[name, &partition])
                        .set(part.consumer_lag);
                    seen.insert((name.clone(), *p), ());
                }
            }
        }
        drop(fetched);
        // A partition revoked from this worker stops being reported here
        // (its new owner reports it).
        for (name, p) in lagging.keys() {
            if !seen.contains_key(&(name.clone(), *p)) {
                let _ = lag.remove_label_values(&[name, &p.to_string()]);
            }
        }
        *lagging = seen;
        drop(lagging);
        if let Some(g) = statistics.cgrp {
            *self.group_state.lock().expect("group state lock") =
                Some((g.join_state, g.rebalance_cnt));
        }
    }
}

/// librdkafka's log lines, through tracing.
pub fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => error!(target: "librdkafka", fac, "{msg}"),
        RDKafkaLogLevel::Warning => warn!(target: "librdkafka", fac, "{msg}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            info!(target: "librdkafka", fac, "{msg}")
        }
        RDKafkaLogLevel::Debug => debug!(target: "librdkafka", fac, "{msg}"),
    }
}

impl<S: BusOffsets> ConsumerContext for WorkerContext<S> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // The callback runs inside the consumer's poll, on a
                // runtime worker thread: block it (not the runtime) for the
                // one query that says where each partition starts.
                let loaded = tokio::task::block_in_place(|| {
                    self.runtime.block_on(async {
                        let mut store = self.store.lock().await;
                        load_progress(
                            &mut *store,
                            &parts,
                            self.max_retry_delay,
                            ASSIGN_RETRY_BUDGET,
                            self.shutdown.clone(),
                        )
                        .await
                    })
                });
                let stored = match loaded {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "could not read the sink's progress for the assigned partitions");
                        *self.failure.lock().expect("failure lock") = Some(e);
                        return;
                    }
                };
                let mut progress = self.progress.lock().expect("progress lock");
                let mut checks = Vec::new();
                for (topic, partition) in &parts {
                    let key = (Arc::from(topic.as_str()), *partition);
                    let offset = match stored.get(&(topic.clone(), *partition)) {
                        Some(p) => {
                            progress.insert(key.clone(), *p);
                            match p.last_timestamp {
                                Some(ts) if p.next_offset > 0 => {
                                    checks.push((key, Some((p.next_offset - 1, ts))));
                                    Offset::Offset(p.next_offset - 1)
                                }
                                _ => {
                                    checks.push((key, None));
                                    Offset::Offset(p.next_offset)
                                }
                            }
                        }
                        None => {
                            progress.remove(&key);
                            checks.push((key, None));
                            Offset::Beginning
                        }
                    };
                    let _ = tpl.set_partition_offset(topic, *partition, offset);
                }
                drop(progress);
                self.holds.update(|holds| {
                    for (t, p) in &parts {
                        holds.remove(&(Arc::from(t.as_str()), *p));
                    }
                });
                self.holds.rebalance(&parts);
                self.checks.set(|expected| {
                    for (key, check) in checks {
                        match check {
                            Some(c) => expected.insert(key, c),
                            None => expected.remove(&key),
                        };
                    }
                });
                info!(partitions = ?parts, "partitions assigned; starting at the sink's progress");
                let res = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = res {
                    *self.failure.lock().expect("failure lock") =
                        Some(kafka_err(Stage::Decode, "assign partitions", e));
                }
                // A partition paused at a barrier may stay paused across a
                // re-assignment (librdkafka#1849): it starts afresh.
                let _ = consumer.resume(tpl);
                #[cfg(feature = "test-hooks")]
                gate::on_assign(consumer, &parts);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!(partitions = ?parts, "partitions revoked");
                let mut progress = self.progress.lock().expect("progress lock");
                for (t, p) in &parts {
                    progress.remove(&(Arc::from(t.as_str()), *p));
                }
                drop(progress);
                self.holds.update(|holds| {
                    for (t, p) in &parts {
                        holds.remove(&(Arc::from(t.as_str()), *p));
                    }
                });
                self.holds.rebalance(&parts);
                self.checks.set(|expected| {
                    for (t, p) in &parts {
                        expected.remove(&(Arc::from(t.as_str()), *p));
                    }
                });
                let _ = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
            }
            other => {
                warn!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Runs a worker until `shutdown` (Ok) or an error that cannot be retried.
/// `make` builds a fresh sink and progress store for each (re)join.
pub async fn run<K, S, F>(
    k: &KafkaConfig,
    subscription: Subscription,
    mut make: F,
    opts: RuntimeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError>
where
    K: Sink,
    S: BusOffsets,
    F: FnMut() -> (K, S),
{
    let mut backoff = retry_backoff(opts.max_retry_delay);
    loop {
        let res = run_once(k, &subscription, &mut make, &opts, shutdown.clone()).await;
        match res {
            Err(e) if e.code.as_deref() == Some(STALE_OFFSETS) => {
                info!(error = %e, "another worker applied these offsets first; rejoining from the sink's progress");
            }
            Err(e) if e.disposition() == Disposition::Retry && !*shutdown.borrow() => {
                wait_retry(&e, &mut backoff, shutdown.clone()).await?;
            }
            other => return other,
        }
    }
}

async fn run_once<K, S, F>(
    k: &KafkaConfig,
    subscription: &Subscription,
    make: &mut F,
    opts: &RuntimeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError>
where
    K: Sink,
    S: BusOffsets,
    F: FnMut() -> (K, S),
{
    let (sink, store) = make();
    let unique_wait: Arc<UniqueWait> = Arc::default();
    // Created here too, so that a worker started before its source finds
    // its topics; a topic that disappears later is then an error.
    if let Subscription::Topics(names) = subscription {
        ensure_topics(k, names, false, Stage::Decode).await?;
    }
    let progress: Progress = Arc::default();
    let checks: Arc<ResumeChecks> = Arc::default();
    let holds: Arc<Holds> = Arc::default();
    let context = WorkerContext {
        store: tokio::sync::Mutex::new(store),
        runtime: tokio::runtime::Handle::current(),
        progress: Arc::clone(&progress),
        checks: Arc::clone(&checks),
        failure: Mutex::new(None),
        holds: Arc::clone(&holds),
        group_state: Mutex::new(None),
        fetched_high: Mutex::new(FastHashMap::default()),
        lag_labels: Mutex::new(FastHashMap::default()),
        max_retry_delay: opts.max_retry_delay,
        shutdown: shutdown.clone(),
    };
    let mut cfg = client_config(k, &Default::default());
    // Defaults a user may override: a worker that dies is noticed in
    // seconds, not the 45 s librdkafka waits by default.
    cfg.set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // A fetch waits at most this long for data: brokers that do not
        // answer as soon as data arrives (tansu) otherwise add up to
        // librdkafka's default 500 ms to every change's lag.
        .set("fetch.wait.max.ms", "20")
        // The group's join state and rebalance count (the log of a worker
        // waiting for an assignment), and each partition's fetch high
        // watermark (the topic check).
        .set("statistics.interval.ms", "1000")
        // Large documents (MongoDB allows 16 MB) must fit in a fetch.
        .set("fetch.max.bytes", "134217728")
        .set("receive.message.max.bytes", "135000000");
    if matches!(subscription, Subscription::Prefix) {
        // New collections' topics are found on the next metadata refresh
        // (librdkafka's default is 5 minutes).
        cfg.set("topic.metadata.refresh.interval.ms", "5000");
    }
    for (key, v) in &k.consumer {
        cfg.set(key, v);
    }
    let consumer: StreamConsumer<WorkerContext<S>> = cfg
        .set("group.id", k.group(&opts.pipeline))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Never jump silently: a missing offset is an error.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "false")
        .create_with_context(context)
        .map_err(|e| kafka_err(Stage::Decode, "create the Kafka consumer", e))?;
    let consumer = Arc::new(consumer);
    match subscription {
        Subscription::Topics(names) => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            consumer.subscribe(&names)
        }
        Subscription::Prefix => {
            let p = regex_escape(&k.topic_prefix);
            consumer.subscribe(&[&format!("^{p}\\.[^.]+\\.[^.]+$")])
        }
    }
    .map_err(|e| kafka_err(Stage::Decode, "subscribe", e))?;
    // Whether a unique value may reach the target out of the source's
    // order (see `UniqueWait`); assumed when the metadata cannot say.
    let several = {
        let c = Arc::clone(&consumer);
        let names = match subscription {
            Subscription::Topics(n) => Some(n.clone()),
            Subscription::Prefix => None,
        };
        let prefix = format!("{}.", k.topic_prefix);
        tokio::task::spawn_blocking(move || {
            c.fetch_metadata(None, Duration::from_secs(10))
                .map(|m| {
                    m.topics().iter().any(|t| {
                        let ours = match &names {
                            Some(n) => n.iter().any(|n| n == t.name()),
                            None => t.name().starts_with(&prefix),
                        };
                        ours && t.partitions().len() > 1
                    })
                })
                .unwrap_or(true)
        })
        .await
        .unwrap_or(true)
    };
    unique_wait
        .several_partitions
        .store(several, Ordering::Release);

    let committer = Arc::clone(&consumer);
    // Held partitions look at their barriers again after each commit (it
    // may have carried the arrival that completes one).
    let committed = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&committed);
    let after_commit: AfterCommit = Arc::new(move |offsets| {
        notify.notify_one();
        let mut tpl = TopicPartitionList::new();
        for o in offsets {
            let _ = tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.offset));
        }
        // For lag tooling only (the sink holds the truth): a failure, e.g.
        // for a partition just revoked, is harmless.
        if let Err(e) = committer.commit(&tpl, CommitMode::Async) {
            debug!(error = %e, "offset commit to Kafka failed");
        }
    });
    let dlq_topic = super::Topics::new(&k.topic_prefix).dlq();
    ensure_topics(k, std::slice::from_ref(&dlq_topic), false, Stage::Decode).await?;
    let on_parked = dead_letter_mirror(k, &opts.pipeline, dlq_topic);
    let mut backoff = retry_backoff(opts.max_retry_delay);
    let mut sink = Some(sink);
    let mut decoder = Decoder::new();
    loop {
        // While a unique value waits for another partition (see
        // `UniqueWait`), rounds alternate between a larger first batch
        // (2, 4, then 8 times the configured size: this worker's own
        // lagging partitions come into the batch, where the sink applies
        // the handover in order) and batches of one change (each worker
        // commits what it can up to the refused change, so that two
        // workers that each wait for a value the other one lets go later
        // in its batch both get through).
        let mut session = opts.clone();
        let rounds = unique_wait.rounds();
        session.batch_size = match rounds {
            0 => opts.batch_size,
            r if r % 2 == 1 => opts.batch_size << r.div_ceil(2).min(3),
            _ => 1,
        };
        let (bus_tx, bus_rx) = channel::bounded(session.bus_capacity);
        let (ack_tx, _ack_rx) = watch::channel(SourceAck(0));
        let apply = spawn_apply(
            bus_rx,
            sink.take().unwrap_or_else(|| make().0),
            ack_tx,
            ApplyMode::Worker {
                after_commit: Arc::clone(&after_commit),
                on_parked: Arc::clone(&on_parked),
                unique_wait: Arc::clone(&unique_wait),
            },
            &session,
            shutdown.clone(),
        );
        let apply_task = apply.task;
        let _apply = apply.abort;
        let reader = Reader {
            k: k.clone(),
            pipeline: opts.pipeline.clone(),
            decoder,
            bus: bus_tx,
            progress: Arc::clone(&progress),
            checks: Arc::clone(&checks),
            holds: Arc::clone(&holds),
            topic_names: FastHashMap::default(),
            replay: Default::default(),
        };
        // The loop runs as a task of the runtime, beside the apply task: a
        // message handed to the apply side then wakes a task on the same
        // worker threads instead of crossing from the thread that called
        // `block_on`.
        let consume = tokio::spawn(consume(
            Arc::clone(&consumer),
            subscription.clone(),
            reader,
            apply_task,
            shutdown.clone(),
            Arc::clone(&committed),
            k.group(&opts.pipeline),
        ));
        let _consume = crate::runtime::AbortOnDrop(vec![consume.abort_handle()]);
        match consume.await {
            Ok(Err(Rewind { error, reader })) if !*shutdown.borrow() => {
                // Nothing of the batch was committed: read every assigned
                // partition again from the target's progress, in this
                // session (a rejoin would rebalance the whole group).
                info!(error = %error, round = unique_wait.rounds(), "a unique value is still held in the target; reading the partitions again from the sink's progress");
                decoder = reader.decoder;
                wait_retry(&error, &mut backoff, shutdown.clone()).await?;
                rewind(&consumer, opts.max_retry_delay, shutdown.clone()).await?;
                if let Some((topic, partition)) = unique_wait.take_blocked() {
                    // Held back while the other partitions go on; a
                    // rebalance resumes it anyway (assignments start
                    // afresh).
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&topic, partition);
                    if consumer.pause(&tpl).is_ok() {
                        let c = Arc::clone(&consumer);
                        tokio::spawn(async move {
                            tokio::time::sleep(UNIQUE_HOLD).await;
                            let _ = c.resume(&tpl);
                        });
                    }
                }
            }
            Ok(Err(Rewind { error, .. })) => return Err(error),
            Ok(Ok(r)) => return r,
            Err(e) => return flatten(Err(e)),
        }
    }
}

/// How long a partition whose change waits for a unique value is held
/// back while the worker's other partitions go on.
const UNIQUE_HOLD: Duration = Duration::from_secs(2);

/// The consume loop gave its reader back: the apply side stopped with
/// [`UNIQUE_WAIT`].
struct Rewind {
    error: PipelineError,
    reader: Reader,
}

/// Seeks every assigned partition back to the target's progress, as an
/// assignment does (holds and checks dropped: a barrier arrival that was
/// not committed is met again).
async fn rewind<S: BusOffsets>(
    consumer: &Arc<StreamConsumer<WorkerContext<S>>>,
    max_retry_delay: Duration,
    shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let assigned = consumer
        .assignment()
        .map_err(|e| kafka_err(Stage::Decode, "read the assignment", e))?;
    let parts: Vec<(String, i32)> = assigned
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    let ctx = consumer.context();
    let stored = {
        let mut store = ctx.store.lock().await;
        load_progress(
            &mut *store,
            &parts,
            max_retry_delay,
            ASSIGN_RETRY_BUDGET,
            shutdown,
        )
        .await?
    };
    ctx.holds.update(|holds| {
        for (t, p) in &parts {
            holds.remove(&(Arc::from(t.as_str()), *p));
        }
    });
    ctx.holds.rebalance(&parts);
    ctx.checks.set(|expected| {
        for (t, p) in &parts {
            expected.remove(&(Arc::from(t.as_str()), *p));
        }
    });
    let mut seeks = Vec::new();
    {
        let mut progress = ctx.progress.lock().expect("progress lock");
        for (topic, partition) in &parts {
            let key = (Arc::from(topic.as_str()), *partition);
            let offset = match stored.get(&(topic.clone(), *partition)) {
                Some(p) => {
                    progress.insert(key, *p);
                    Offset::Offset(p.next_offset)
                }
                None => {
                    progress.remove(&key);
                    Offset::Beginning
                }
            };
            seeks.push((topic.clone(), *partition, offset));
        }
    }
    // A partition paused at a barrier starts afresh.
    let _ = consumer.resume(&assigned);
    let c = Arc::clone(consumer);
    tokio::task::spawn_blocking(move || {
        for (topic, partition, offset) in seeks {
            // librdkafka drops what it fetched before the seek.
            c.seek(&topic, partition, offset, Duration::from_secs(10))
                .map_err(|e| kafka_err(Stage::Decode, "seek a partition back", e))?;
        }
        Ok::<(), PipelineError>(())
    })
    .await
    .map_err(|e| PipelineError::fatal(Stage::Decode, format!("seek task: {e}")))?
}

/// Feeds consumed messages to the apply side until shutdown (then lets the
/// apply side commit what it has) or an error.
///
/// Per message only the consumer's future and the apply task's handle are
/// polled: the timer, the shutdown signal and the topic check are set up
/// once, not per message (a fresh timer per message was a tenth of the
/// worker's CPU).
async fn consume<S: BusOffsets>(
    consumer: Arc<StreamConsumer<WorkerContext<S>>>,
    subscription: Subscription,
    mut reader: Reader,
    mut apply_task: tokio::task::JoinHandle<Result<(), PipelineError>>,
    shutdown: watch::Receiver<bool>,
    committed: Arc<tokio::sync::Notify>,
    group: String,
) -> Result<Result<(), PipelineError>, Rewind> {
    // Errors of the loop itself; the apply side's UNIQUE_WAIT gives the
    // reader back instead.
    let res = consume_loop(
        consumer,
        subscription,
        &mut reader,
        &mut apply_task,
        shutdown,
        committed,
        group,
    )
    .await;
    let error = match res {
        Ok(None) => {
            // Shutdown: let the apply side commit what it has, then stop.
            drop(reader);
            return Ok(flatten(apply_task.await));
        }
        Ok(Some(Ok(()))) => return Ok(Ok(())),
        Ok(Some(Err(e))) => e,
        // A send to an apply side that stopped fails with "stopped": the
        // apply side's own error says why.
        Err(e) if apply_task.is_finished() || reader.bus.is_closed() => {
            match tokio::time::timeout(Duration::from_secs(5), &mut apply_task).await {
                Ok(r) => flatten(r).err().unwrap_or(e),
                Err(_) => e,
            }
        }
        Err(e) => e,
    };
    if error.code.as_deref() == Some(UNIQUE_WAIT) {
        return Err(Rewind { error, reader });
    }
    Ok(Err(error))
}

async fn consume_loop<S: BusOffsets>(
    consumer: Arc<StreamConsumer<WorkerContext<S>>>,
    subscription: Subscription,
    reader: &mut Reader,
    apply_task: &mut tokio::task::JoinHandle<Result<(), PipelineError>>,
    shutdown: watch::Receiver<bool>,
    committed: Arc<tokio::sync::Notify>,
    group: String,
) -> Result<Option<Result<(), PipelineError>>, PipelineError> {
    let mut shutdown_rx = shutdown;
    // (The `Ref` wait_for returns must not live in the select's output: it
    // is not Send.)
    let stop = async move {
        let _ = shutdown_rx.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checked = std::time::Instant::now();
    let mut check: Option<tokio::task::JoinHandle<Result<(), PipelineError>>> = None;
    let holds = Arc::clone(&reader.holds);
    // Held partitions ask the target whether their barriers are done:
    // after each commit, and on this tick while any is held (never without
    // holds). Barriers whose partitions one worker owns never come here
    // (held in memory); the others are done by another worker's commit,
    // which only this poll sees: every 10 ms (one primary-key lookup
    // while holding; at 50 ms the wait was about half of each barrier's
    // cost).
    let mut hold_tick = tokio::time::interval(Duration::from_millis(10));
    hold_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting = Waiting::default();
    // One stream for the whole loop: `recv` registers and drops a waker
    // slot (a lock each way) per message.
    let mut messages = consumer.stream();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            res = &mut *apply_task => return Ok(Some(flatten(res))),
            _ = hold_tick.tick(), if holds.any.load(Ordering::Acquire) => {
                release_done(&consumer, &holds).await?;
            }
            _ = committed.notified(), if holds.any.load(Ordering::Acquire) => {
                release_done(&consumer, &holds).await?;
            }
            _ = tick.tick() => {
                if holds.rebalanced.load(Ordering::Acquire) {
                    unhold_locals(&consumer, reader).await?;
                }
                waiting.tick(&consumer, &group);
                #[cfg(feature = "test-hooks")]
                gate::on_tick(&*consumer);
                // The check runs beside the consume loop (its requests may
                // wait behind a fetch at the broker): its verdict is read
                // once it is in.
                if check.as_ref().is_some_and(|h| h.is_finished()) {
                    let h = check.take().expect("checked above");
                    h.await.map_err(|e| {
                        PipelineError::fatal(Stage::Decode, format!("topic check: {e}"))
                    })??;
                }
                if check.is_none() && checked.elapsed() >= Duration::from_secs(5) {
                    checked = std::time::Instant::now();
                    let c = Arc::clone(&consumer);
                    let names = match &subscription {
                        Subscription::Topics(n) => n.clone(),
                        Subscription::Prefix => Vec::new(),
                    };
                    let owned: Vec<((String, i32), PartitionProgress)> = reader
                        .progress
                        .lock()
                        .expect("progress lock")
                        .iter()
                        .map(|((t, p), v)| ((t.to_string(), *p), *v))
                        .collect();
                    let fetched = c.context().fetched_high.lock().expect("fetched high lock").clone();
                    check = Some(tokio::task::spawn_blocking(move || {
                        check_topics(&c, &names, &owned, &fetched)
                    }));
                }
            }
            msg = messages.next() => {
                let msg = msg.expect("Kafka message streams never end");
                if let Some(m) = accept(msg, &subscription)? {
                    take(&consumer, reader, &m).await?;
                }
                // What librdkafka has already fetched goes through without
                // a turn of the select: its other branches (the shutdown
                // watch, the apply task, the timer) polled once per message
                // were a tenth of the worker's CPU.
                for _ in 0..BURST {
                    // A rebalance callback (run inside the poll) that
                    // failed ends the burst; the check below stops the
                    // worker.
                    if consumer.context().failure.lock().expect("failure lock").is_some() {
                        break;
                    }
                    let Some(Some(msg)) = messages.next().now_or_never() else {
                        break;
                    };
                    if let Some(m) = accept(msg, &subscription)? {
                        take(&consumer, reader, &m).await?;
                    }
                }
            }
        }
        if let Some(e) = consumer
            .context()
            .failure
            .lock()
            .expect("failure lock")
            .take()
        {
            return Err(e);
        }
    }
    drop(messages);
    Ok(None)
}

/// One record from the consumer: kept by its partition's local hold, or
/// handled (a barrier copy arrives), then what a completed local hold
/// gives back is read again.
async fn take<S: BusOffsets>(
    consumer: &StreamConsumer<WorkerContext<S>>,
    reader: &mut Reader,
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> Result<(), PipelineError> {
    if reader.holds.rebalanced.load(Ordering::Acquire) {
        unhold_locals(consumer, reader).await?;
    }
    let (topic, partition) = (m.topic(), m.partition());
    if reader.holds.is_local(topic, partition) {
        if !reader.holds.stale(topic, partition, m.offset()) {
            reader
                .holds
                .keep(consumer, topic, partition, || m.detach())?;
        }
        return Ok(());
    }
    if let Some(b) = reader.handle(m, false).await? {
        arrive(consumer, reader, b).await?;
    }
    drain(consumer, reader).await
}

/// Reads again, in order, the records that completed local holds kept;
/// a copy among them may hold its partition again (the rest is kept).
async fn drain<S: BusOffsets>(
    consumer: &StreamConsumer<WorkerContext<S>>,
    reader: &mut Reader,
) -> Result<(), PipelineError> {
    while let Some(m) = reader.replay.pop_front() {
        let (topic, partition) = (m.topic(), m.partition());
        if reader.holds.held_in_target(topic, partition) {
            // Fetched again once that barrier is released.
            continue;
        }
        if reader.holds.is_local(topic, partition) {
            let topic = topic.to_string();
            reader.holds.keep(consumer, &topic, partition, || m)?;
            continue;
        }
        if let Some(b) = reader.handle(&m, true).await? {
            arrive(consumer, reader, b).await?;
        }
    }
    Ok(())
}

/// After a rebalance: the remaining local holds wait through the target
/// (their partners may be another worker's now); what they kept is
/// dropped and fetched again once the barrier is done.
async fn unhold_locals<S: BusOffsets>(
    consumer: &StreamConsumer<WorkerContext<S>>,
    reader: &mut Reader,
) -> Result<(), PipelineError> {
    reader.holds.rebalanced.store(false, Ordering::Release);
    let held = reader.holds.local(std::mem::take);
    for h in held {
        debug!(topic = %h.barrier.topic, partition = h.barrier.partition, barrier = %h.barrier.id, "rebalance: a local hold waits through the target");
        hold_at(consumer, reader, h.barrier).await?;
    }
    Ok(())
}

/// A partition reached a barrier copy: passed at once if the barrier is
/// done already (read again by a new owner after a rebalance); held in
/// memory if this worker owns every partition of the barrier (see
/// [`LocalHold`]); else held through the target (see [`hold_at`]).
async fn arrive<S: BusOffsets>(
    consumer: &StreamConsumer<WorkerContext<S>>,
    reader: &mut Reader,
    mut b: Barrier,
) -> Result<(), PipelineError> {
    // Only a copy at or before the partition's progress when it was
    // assigned can belong to a barrier that is done (this partition's
    // arrival was committed, and the copy not consumed): the others do
    // not ask the target.
    let read_before = reader
        .progress
        .lock()
        .expect("progress lock")
        .get(&(Arc::clone(&b.topic), b.partition))
        .is_none_or(|p| b.offset <= p.next_offset);
    if read_before {
        let key = [(b.topic.to_string(), b.id.clone())];
        let done = consumer
            .context()
            .store
            .lock()
            .await
            .barriers_done(&key)
            .await?;
        if !done.is_empty() {
            debug!(topic = %b.topic, partition = b.partition, barrier = %b.id, "barrier already done; passing its copy");
            return reader
                .send(BusMessage::Consumed {
                    topic: b.topic,
                    partition: b.partition,
                    offset: b.offset,
                    position: None,
                    timestamp: None,
                })
                .await;
        }
    }
    // Snapshot starts (rare) keep the target's bookkeeping of attempts.
    let owns_all = b.kind != BarrierKind::SnapshotStart
        && consumer.assignment().is_ok_and(|a| {
            b.partitions
                .iter()
                .all(|p| a.find_partition(&b.topic, *p).is_some())
        });
    if !owns_all {
        return hold_at(consumer, reader, b).await;
    }
    let partners = |h: &LocalHold, b: &Barrier| {
        h.barrier.topic == b.topic && h.barrier.id == b.id && h.barrier.partition != b.partition
    };
    let waiting = b.partitions.len() - 1;
    let complete = reader.holds.local(|l| {
        if l.iter().filter(|h| partners(h, &b)).count() < waiting {
            return None;
        }
        let (done, rest): (Vec<LocalHold>, Vec<LocalHold>) =
            std::mem::take(l).into_iter().partition(|h| partners(h, &b));
        *l = rest;
        Some(done)
    });
    let Some(held) = complete else {
        debug!(topic = %b.topic, partition = b.partition, barrier = %b.id, partitions = ?b.partitions, "partition arrived at a barrier; holding it in memory");
        reader.holds.local(|l| {
            l.push(LocalHold {
                barrier: b,
                buffer: Default::default(),
                bytes: 0,
                paused: false,
            })
        });
        return Ok(());
    };
    b.copies
        .extend(held.iter().flat_map(|h| h.barrier.copies.iter().copied()));
    b.copies.sort_by_key(|c| c.partition);
    debug!(topic = %b.topic, barrier = %b.id, "every partition of the barrier reached on this worker; applied in order");
    let topic = Arc::clone(&b.topic);
    reader.send(BusMessage::Barrier(Box::new(b))).await?;
    for h in held {
        if h.paused {
            let partition = h.barrier.partition;
            let next = h
                .buffer
                .back()
                .map_or(h.barrier.offset + 1, |m| m.offset() + 1);
            reader.holds.update(|map| {
                map.insert(
                    (Arc::clone(&topic), partition),
                    Hold::Resuming { offset: next },
                )
            });
            tokio::task::block_in_place(|| {
                consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(next),
                    Duration::from_secs(10),
                )
            })
            .map_err(|e| kafka_err(Stage::Decode, "seek a partition after a barrier", e))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            consumer
                .resume(&tpl)
                .map_err(|e| kafka_err(Stage::Decode, "resume a partition after a barrier", e))?;
        }
        reader.replay.extend(h.buffer);
    }
    Ok(())
}

/// Holds a partition at its barrier copy through the target: paused, its
/// arrival sent to the apply side, which records it in the target with
/// the rows before it; released once the target says the barrier is done
/// (see [`release_done`]).
async fn hold_at<S: BusOffsets>(
    consumer: &StreamConsumer<WorkerContext<S>>,
    reader: &mut Reader,
    mut b: Barrier,
) -> Result<(), PipelineError> {
    b.copies.clear();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&b.topic, b.partition);
    consumer
        .pause(&tpl)
        .map_err(|e| kafka_err(Stage::Decode, "pause a partition at a barrier", e))?;
    reader.holds.update(|h| {
        h.insert(
            (Arc::clone(&b.topic), b.partition),
            Hold::Waiting {
                id: b.id.clone(),
                offset: b.offset,
            },
        )
    });
    debug!(topic = %b.topic, partition = b.partition, barrier = %b.id, partitions = ?b.partitions, "partition arrived at a barrier; holding it");
    reader.send(BusMessage::Barrier(Box::new(b))).await
}

/// Releases the held partitions whose barriers are done: each is sought
/// back to its copy (read again, and consumed without being applied) and
/// resumed.
async fn release_done<S: BusOffsets>(
    consumer: &StreamConsumer<WorkerContext<S>>,
    holds: &Holds,
) -> Result<(), PipelineError> {
    let waiting: Vec<((Arc<str>, i32), String, i64)> = holds.update(|map| {
        map.iter()
            .filter_map(|(k, h)| match h {
                Hold::Waiting { id, offset } => Some((k.clone(), id.clone(), *offset)),
                Hold::Passing { .. } | Hold::Resuming { .. } => None,
            })
            .collect()
    });
    if waiting.is_empty() {
        return Ok(());
    }
    let ids: Vec<(String, String)> = waiting
        .iter()
        .map(|((t, _), id, _)| (t.to_string(), id.clone()))
        .collect();
    let done = consumer
        .context()
        .store
        .lock()
        .await
        .barriers_done(&ids)
        .await?;
    for ((topic, partition), id, offset) in waiting {
        if !done.contains(&(topic.to_string(), id.clone())) {
            continue;
        }
        // Still ours (a rebalance may have dropped the hold meanwhile).
        let still = holds.update(|map| {
            let key = (Arc::clone(&topic), partition);
            let held = map.get(&key)
                == Some(&Hold::Waiting {
                    id: id.clone(),
                    offset,
                });
            if held {
                map.insert(key, Hold::Passing { offset });
            }
            held
        });
        if !still {
            continue;
        }
        tokio::task::block_in_place(|| {
            consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            )
        })
        .map_err(|e| kafka_err(Stage::Decode, "seek a partition back to its barrier", e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        consumer
            .resume(&tpl)
            .map_err(|e| kafka_err(Stage::Decode, "resume a partition after a barrier", e))?;
        debug!(%topic, partition, barrier = %id, "barrier done; partition released");
    }
    Ok(())
}

/// A worker without partitions says so, every 5 s after the first 5 s:
/// a group that never finishes rebalancing looks otherwise like an idle
/// pipeline.
#[derive(Default)]
struct Waiting {
    since: Option<std::time::Instant>,
    logged: Option<std::time::Instant>,
    members: Option<tokio::task::JoinHandle<Option<usize>>>,
}

impl Waiting {
    fn tick<S: BusOffsets>(
        &mut self,
        consumer: &Arc<StreamConsumer<WorkerContext<S>>>,
        group: &str,
    ) {
        let assigned = consumer.assignment().map_or(0, |a| a.count());
        metrics().kafka_assigned.set(assigned as i64);
        if assigned > 0 {
            if self.logged.is_some() {
                info!(
                    group = %group,
                    partitions = assigned,
                    "partition assignment received"
                );
            }
            *self = Waiting::default();
            metrics().kafka_waiting.set(0);
            return;
        }
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < Duration::from_secs(5) {
            return;
        }
        metrics().kafka_waiting.set(1);
        if let Some(h) = self.members.take_if(|h| h.is_finished()) {
            let members = h.now_or_never().and_then(Result::ok).flatten();
            let (state, generation) = consumer
                .context()
                .group_state
                .lock()
                .expect("group state lock")
                .clone()
                .map_or((String::from("unknown"), -1), |s| s);
            if let Some(n) = members {
                metrics().kafka_members.set(n as i64);
            }
            info!(
                group = %group,
                members = %members.map_or_else(|| "unknown".to_string(), |n| n.to_string()),
                generation,
                state = %state,
                waiting_s = since.elapsed().as_secs(),
                "waiting for a partition assignment"
            );
            self.logged = Some(std::time::Instant::now());
        }
        if self.members.is_none()
            && self
                .logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(4))
        {
            let c = Arc::clone(consumer);
            let group = group.to_string();
            self.members = Some(tokio::task::spawn_blocking(move || {
                c.fetch_group_list(Some(&group), Duration::from_secs(2))
                    .ok()
                    .and_then(|l| l.groups().first().map(|g| g.members().len()))
            }));
        }
    }
}

/// Test hook (feature `test-hooks`, on in `cargo test` builds only):
/// `FERRY_TEST_GATE_PARTITION=<topic>:<partition>:<file>` keeps that
/// partition paused from its assignment until `<file>` exists, so that a
/// test can make one partition lag behind the others deterministically.
#[cfg(feature = "test-hooks")]
mod gate {
    use std::sync::atomic::{AtomicBool, Ordering};

    use rdkafka::consumer::Consumer;
    use rdkafka::topic_partition_list::TopicPartitionList;

    static OPEN: AtomicBool = AtomicBool::new(false);

    fn spec() -> Option<(String, i32, String)> {
        let v = std::env::var("FERRY_TEST_GATE_PARTITION").ok()?;
        let mut it = v.splitn(3, ':');
        let (t, p, f) = (it.next()?, it.next()?, it.next()?);
        Some((t.to_string(), p.parse().ok()?, f.to_string()))
    }

    pub(super) fn on_assign<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
        consumer: &C,
        parts: &[(String, i32)],
    ) {
        let Some((topic, partition, file)) = spec() else {
            return;
        };
        if OPEN.load(Ordering::Acquire) || std::path::Path::new(&file).exists() {
            return;
        }
        if parts.iter().any(|(t, p)| *t == topic && *p == partition) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            let _ = consumer.pause(&tpl);
            tracing::warn!(%topic, partition, "test hook: partition gated");
        }
    }

    pub(super) fn on_tick<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(consumer: &C) {
        let Some((topic, partition, file)) = spec() else {
            return;
        };
        if !OPEN.load(Ordering::Acquire) && std::path::Path::new(&file).exists() {
            OPEN.store(true, Ordering::Release);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            let _ = consumer.resume(&tpl);
            tracing::warn!(%topic, partition, "test hook: partition released");
        }
    }
}

/// A received message, `None` for an error librdkafka retries by itself
/// (or a pattern that matches no topic yet), `Err` for one that stops the
/// worker.
fn accept<'a>(
    msg: Result<rdkafka::message::BorrowedMessage<'a>, KafkaError>,
    subscription: &Subscription,
) -> Result<Option<rdkafka::message::BorrowedMessage<'a>>, PipelineError> {
    match msg {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            let e = consumer_error(e);
            // A pattern that matches no topic yet (no collection created
            // so far) is not an error.
            let pattern_empty = matches!(subscription, Subscription::Prefix)
                && e.code.as_deref() == Some("UnknownTopicOrPartition");
            if e.class == ErrorClass::Transient || pattern_empty {
                debug!(error = %e, "consumer error (librdkafka retries)");
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// Mirrors parked records to the dead-letter topic, with Kafka Connect's
/// error header names where they fit. The target's `ferry_dlq` (written in
/// the batch's transaction) stays the record of truth that `ferry dlq
/// replay` works from; the topic is for the tooling around Kafka, so a
/// failed send is logged, not retried for ever.
fn dead_letter_mirror(k: &KafkaConfig, pipeline: &str, topic: String) -> crate::dlq::OnParked {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    // Created on the first parked record: most workers never park one, and
    // an idle producer still costs a polling thread and broker connections.
    let producer: std::sync::OnceLock<super::Producer> = std::sync::OnceLock::new();
    let k = k.clone();
    let pipeline = pipeline.to_string();
    Arc::new(move |parked: &[crate::dlq::Parked]| {
        if parked.is_empty() {
            return;
        }
        let producer = match producer.get() {
            Some(p) => p,
            None => match super::producer::create_producer(&k) {
                Ok(p) => producer.get_or_init(|| p),
                Err(e) => {
                    warn!(error = %e, "could not create the producer for the dead-letter topic (the records are in ferry_dlq)");
                    return;
                }
            },
        };
        for p in parked {
            let table = p.table.to_string();
            let position = p.record.position.map(|x| x.to_string()).unwrap_or_default();
            let code = p.record.error.code.clone().unwrap_or_default();
            let pairs: [(&str, &str); 8] = [
                ("__connect.errors.connector.name", &pipeline),
                ("__connect.errors.stage", &p.record.error.stage),
                ("__connect.errors.class.name", &p.record.error.class),
                (
                    "__connect.errors.exception.class.name",
                    &p.record.error.class,
                ),
                (
                    "__connect.errors.exception.message",
                    &p.record.error.message,
                ),
                ("ferry.errors.code", &code),
                ("ferry.table", &table),
                ("ferry.position", &position),
            ];
            let mut headers = OwnedHeaders::new();
            for (key, value) in pairs {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            if let Some(o) = &p.record.origin {
                let (partition, offset) = (o.partition.to_string(), o.offset.to_string());
                for (key, value) in [
                    ("__connect.errors.topic", &o.topic[..]),
                    ("__connect.errors.partition", &partition),
                    ("__connect.errors.offset", &offset),
                ] {
                    headers = headers.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    });
                }
            }
            let record = FutureRecord::to(&topic)
                .key(&p.record.key)
                .payload(&p.record.event)
                .headers(headers);
            if let Err((e, _)) = producer.send_result(record) {
                warn!(error = %e, table = %table, "could not mirror a parked record to the dead-letter topic (it is in ferry_dlq)");
            }
        }
        // Deliveries complete in the background (librdkafka's thread).
        producer.poll(Duration::ZERO);
    })
}

/// What librdkafka does not report by itself: a subscribed topic that is
/// gone (a consumer group just stops getting it), and a partition whose end
/// is below the sink's progress (the broker lost data: there is nothing to
/// fetch, and waiting would hide it). Either stops the worker.
fn check_topics<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    names: &[String],
    owned: &[((String, i32), PartitionProgress)],
    fetched_high: &FastHashMap<(String, i32), i64>,
) -> Result<(), PipelineError> {
    // One topic per request: an all-topics request against tansu after it
    // lost its data crashed librdkafka 2.12 (a NULL topic name reaching its
    // metadata cache).
    let mut topics: Vec<&String> = names
        .iter()
        .chain(owned.iter().map(|((t, _), _)| t))
        .collect();
    topics.sort();
    topics.dedup();
    for t in topics {
        let md = match consumer
            .client()
            .fetch_metadata(Some(t), Duration::from_secs(5))
        {
            Ok(md) => md,
            // The broker is away: librdkafka reconnects; check again later.
            Err(e) => {
                debug!(error = %e, "topic check: no metadata");
                return Ok(());
            }
        };
        let exists = md
            .topics()
            .iter()
            .any(|m| m.name() == t && m.error().is_none() && !m.partitions().is_empty());
        if !exists {
            return Err(PipelineError::fatal(
                Stage::Decode,
                format!("topic {t} does not exist any more (deleted, or the broker lost its data); nothing was skipped, the worker stops. To start over: stop the pipeline, run `ferry kafka reset --config <file> --yes`, start it again"),
            )
            .with_code("UnknownTopicOrPartition"));
        }
    }
    for ((t, p), progress) in owned {
        match consumer.fetch_watermarks(t, *p, Duration::from_secs(5)) {
            // ListOffsets(latest) is the high watermark on Apache Kafka.
            // tansu 0.6 (memory storage) answers the last batch's base
            // offset + 1 instead, below the end when a batch holds several
            // records. So the end is below the progress only if the high
            // watermark of the last Fetch response (librdkafka's
            // statistics) says so too; until one is known, the check waits
            // (a fetch beyond the end of a log that lost its records fails
            // with OffsetOutOfRange, which stops the worker as well).
            Ok((_, high))
                if high < progress.next_offset
                    && fetched_high
                        .get(&(t.clone(), *p))
                        .is_none_or(|&fetched| fetched >= progress.next_offset) =>
            {
                debug!(topic = %t, partition = p, list_offsets = high, fetched = ?fetched_high.get(&(t.clone(), *p)), next = progress.next_offset, "broker's ListOffsets is below the progress, its fetch high watermark is not: trusting the fetch");
            }
            Ok((_, high)) if high < progress.next_offset => {
                return Err(PipelineError::fatal(
                    Stage::Decode,
                    format!(
                        "{t}[{p}] ends at offset {high}, but the target already applied up to {}: the offsets this worker must resume from are no longer in Kafka (the broker lost data); nothing was skipped, the worker stops. To start over: stop the pipeline, run `ferry kafka reset --config <file> --yes`, start it again",
                        progress.next_offset
                    ),
                )
                .with_code("OffsetOutOfRange"));
            }
            _ => {}
        }
    }
    Ok(())
}

fn consumer_error(e: KafkaError) -> PipelineError {
    let offsets = matches!(
        e.rdkafka_error_code(),
        Some(
            rdkafka::error::RDKafkaErrorCode::OffsetOutOfRange
                | rdkafka::error::RDKafkaErrorCode::AutoOffsetReset
        )
    );
    let topic = matches!(
        e.rdkafka_error_code(),
        Some(
            rdkafka::error::RDKafkaErrorCode::UnknownTopicOrPartition
                | rdkafka::error::RDKafkaErrorCode::UnknownTopic
                | rdkafka::error::RDKafkaErrorCode::UnknownPartition
        )
    );
    let what = if offsets {
        "the offsets this worker must resume from are no longer in Kafka (retention, or a broker that lost its data); nothing was skipped. Restore the topic, or start over: stop the pipeline, run `ferry kafka reset --config <file> --yes`, start it again"
    } else if topic {
        "a topic this worker consumes does not exist any more (deleted?); nothing was skipped. Recreate it by restarting the source, or re-snapshot"
    } else {
        "consume from Kafka"
    };
    kafka_err(Stage::Decode, what, e)
}

/// POSIX regex escape for librdkafka's topic patterns.
fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header's value as text.
fn header<M: Message>(m: &M, name: &str) -> Option<String> {
    m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// Decodes messages and sends them on to the apply side.
struct Reader {
    k: KafkaConfig,
    pipeline: String,
    decoder: Decoder,
    bus: BusSender,
    progress: Progress,
    checks: Arc<ResumeChecks>,
    holds: Arc<Holds>,
    topic_names: FastHashMap<String, Arc<str>>,
    /// Records a completed local hold kept, to be read again in order.
    replay: std::collections::VecDeque<rdkafka::message::OwnedMessage>,
}

impl Reader {
    /// Decodes the message in place (the payload is not copied) and sends
    /// its change, then its offset, to the apply side. A barrier copy is
    /// returned instead (see [`arrive`]).
    async fn handle<M: Message>(
        &mut self,
        m: &M,
        replayed: bool,
    ) -> Result<Option<Barrier>, PipelineError> {
        let topic = match self.topic_names.get(m.topic()) {
            Some(t) => Arc::clone(t),
            None => {
                let t: Arc<str> = Arc::from(m.topic());
                self.topic_names
                    .insert(m.topic().to_string(), Arc::clone(&t));
                t
            }
        };
        let (partition, offset) = (m.partition(), m.offset());
        let timestamp = m.timestamp().to_millis();
        // A message read again from a local hold's buffer comes before
        // anything the partition's hold screens (see `LocalHold`).
        let screened = if replayed {
            None
        } else {
            self.holds.screen(&topic, partition, offset)
        };
        match screened {
            None => {}
            Some(false) => return Ok(None),
            Some(true) => {
                // The copy of a barrier that is done: consumed, not
                // applied (its action was).
                self.send(BusMessage::Consumed {
                    topic,
                    partition,
                    offset,
                    position: None,
                    timestamp,
                })
                .await?;
                return Ok(None);
            }
        }
        if self.checks.pending.load(Ordering::Acquire)
            && self.checks.verify(&topic, partition, offset, timestamp)?
        {
            // The record the target applied last, read again to check the
            // log: not applied twice.
            return Ok(None);
        }
        let mut position = None;
        if let Some(payload) = m.payload() {
            let ev = self.decode(payload, &topic, partition, offset).await?;
            // Re-produced by a restarted source: already applied from this
            // partition (positions only grow within one).
            let replay = ev.position.commit_lsn != 0 && {
                let mut progress = self.progress.lock().expect("progress lock");
                let key = (Arc::clone(&topic), partition);
                let seen = progress.get(&key).and_then(|p| p.position);
                if Some(ev.position) <= seen {
                    true
                } else {
                    progress
                        .entry(key)
                        .and_modify(|p| p.position = Some(ev.position))
                        .or_insert(PartitionProgress {
                            next_offset: offset,
                            position: Some(ev.position),
                            last_timestamp: None,
                        });
                    false
                }
            };
            if ev.position.commit_lsn != 0 && !replay {
                position = Some(ev.position);
            }
            if !replay {
                if let Some(id) = barrier_id(m, &ev) {
                    let parts = header(m, HEADER_BARRIER_PARTITIONS);
                    return parse_barrier(id, parts, &topic, partition, offset, ev).map(|mut b| {
                        b.copies = vec![BarrierCopy {
                            partition,
                            offset,
                            timestamp,
                        }];
                        Some(b)
                    });
                }
                // Markers are rare: look at headers only for truncates.
                let msg = if ev.op == crate::event::Op::Truncate {
                    match (
                        header(m, HEADER_SNAPSHOT_START).as_deref(),
                        header(m, HEADER_SNAPSHOT_DONE),
                    ) {
                        (Some("truncate"), _) => BusMessage::SnapshotStart { table: ev.table },
                        (Some(_), _) => BusMessage::EnsureTable { table: ev.table },
                        (None, Some(done)) => {
                            let v: serde_json::Value =
                                serde_json::from_str(&done).map_err(|e| {
                                    PipelineError::fatal(
                                        Stage::Decode,
                                        format!("unreadable snapshot marker: {e}"),
                                    )
                                })?;
                            BusMessage::SnapshotDone {
                                table: ev.table.id.clone(),
                                rows: v["rows"].as_u64().unwrap_or(0),
                                state: v["state"].clone(),
                            }
                        }
                        (None, None) => BusMessage::Change(ev),
                    }
                } else {
                    BusMessage::Change(ev)
                };
                self.send(msg).await?;
            }
        }
        self.send(BusMessage::Consumed {
            topic,
            partition,
            offset,
            position,
            timestamp,
        })
        .await?;
        Ok(None)
    }

    async fn send(&self, msg: BusMessage) -> Result<(), PipelineError> {
        self.bus.send(msg).await
    }

    async fn decode(
        &mut self,
        payload: &[u8],
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<crate::event::ChangeEvent, PipelineError> {
        let mut fetched = false;
        loop {
            match self.decoder.decode(payload) {
                Ok(ev) => return Ok(ev),
                Err(EnvelopeError::UnknownSchema(r)) if !fetched => {
                    self.fetch(r).await?;
                    fetched = true;
                }
                Err(e) => {
                    return Err(PipelineError::new(
                        ErrorClass::Permanent,
                        Stage::Decode,
                        format!("cannot decode the message at {topic}[{partition}]@{offset}: {e}"),
                    ))
                }
            }
        }
    }

    async fn fetch(&mut self, r: SchemaRef) -> Result<(), PipelineError> {
        match r {
            SchemaRef::Registry(id) => {
                let url = self.k.schema_registry_url.as_deref().ok_or_else(|| {
                    PipelineError::fatal(
                        Stage::Decode,
                        format!("a message names registry schema {id}, but kafka.schema_registry_url is not set"),
                    )
                })?;
                let schema = registry::fetch(url, id).await?;
                self.decoder.add_schema(&schema, Some(id)).map_err(|e| {
                    PipelineError::fatal(Stage::Decode, format!("registry schema {id}: {e}"))
                })?;
            }
            SchemaRef::Fingerprint(_) => {
                for schema in schema_store::read_all(&self.k, &self.pipeline).await? {
                    if let Err(e) = self.decoder.add_schema(&schema, None) {
                        warn!(error = %e, "unreadable schema in the schema topic");
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose progress reads fail transiently `fail` times first.
    struct Flaky {
        fail: usize,
        calls: usize,
    }

    impl BusOffsets for Flaky {
        async fn load_bus_offsets(
            &mut self,
            _: &[(String, i32)],
        ) -> Result<std::collections::HashMap<(String, i32), PartitionProgress>, PipelineError>
        {
            self.calls += 1;
            if self.calls <= self.fail {
                return Err(PipelineError::transient(Stage::Sink, "HTTP 429"));
            }
            Ok(Default::default())
        }
    }

    /// The Convex sink's overload test stalled on the Kafka bus: each
    /// transient failure of the progress read on an assignment cost a
    /// rejoin of the group (seconds), so an overloaded sink used up every
    /// attempt. The read is retried in place, within a budget.
    #[tokio::test]
    async fn an_assignment_waits_out_a_transiently_failing_progress_read() {
        let (_stop, shutdown) = watch::channel(false);
        let parts = vec![("t".to_string(), 0)];
        let mut flaky = Flaky { fail: 5, calls: 0 };
        let got = load_progress(
            &mut flaky,
            &parts,
            Duration::from_millis(20),
            ASSIGN_RETRY_BUDGET,
            shutdown.clone(),
        )
        .await;
        assert!(got.is_ok(), "{got:?}");
        assert_eq!(flaky.calls, 6, "retried in place until it answered");

        // Past the budget, the error goes to the rejoin path as before.
        let mut down = Flaky {
            fail: usize::MAX,
            calls: 0,
        };
        let got = load_progress(
            &mut down,
            &parts,
            Duration::from_millis(20),
            Duration::from_millis(200),
            shutdown,
        )
        .await;
        assert!(got.is_err_and(|e| e.disposition() == Disposition::Retry));
        assert!(down.calls >= 2, "{} calls", down.calls);
    }

    #[test]
    fn barrier_headers_parse() {
        let schema = Arc::new(crate::event::TableSchema {
            id: crate::event::TableId::new("public", "t"),
            columns: Vec::new(),
            primary_key: Vec::new(),
            child: None,
        });
        let ev = crate::event::ChangeEvent::snapshot_read(schema, Vec::new());
        let t: Arc<str> = Arc::from("ferry.public.t");
        let b = parse_barrier(
            "k:0/16B3A28#3".into(),
            Some("2,0".into()),
            &t,
            2,
            41,
            ev.clone(),
        )
        .unwrap();
        assert_eq!(b.kind, BarrierKind::KeyChange);
        assert_eq!((b.partition, b.offset, b.seq), (2, 41, 0));
        assert_eq!(b.partitions, vec![2, 0]);
        let s = parse_barrier(
            "s:1700000000000001".into(),
            Some("0,1,2".into()),
            &t,
            1,
            0,
            ev.clone(),
        )
        .unwrap();
        assert_eq!(
            (s.kind, s.seq),
            (BarrierKind::SnapshotStart, 1_700_000_000_000_001)
        );
        assert!(parse_barrier("x:1".into(), Some("0".into()), &t, 0, 0, ev.clone()).is_err());
        assert!(parse_barrier("t:0/1#1".into(), None, &t, 0, 0, ev).is_err());
    }

    #[test]
    fn a_held_partition_yields_nothing_until_its_copy_comes_again() {
        let holds = Holds::default();
        let t: Arc<str> = Arc::from("ferry.public.t");
        assert_eq!(holds.screen(&t, 0, 5), None, "no hold: handled");
        holds.update(|m| {
            m.insert(
                (Arc::clone(&t), 0),
                Hold::Waiting {
                    id: "t:0/1#1".into(),
                    offset: 7,
                },
            )
        });
        assert_eq!(
            holds.screen(&t, 0, 8),
            Some(false),
            "fetched before the pause"
        );
        assert_eq!(holds.screen(&t, 1, 8), None, "other partitions flow");
        holds.update(|m| m.insert((Arc::clone(&t), 0), Hold::Passing { offset: 7 }));
        assert_eq!(
            holds.screen(&t, 0, 9),
            Some(false),
            "stale, before the seek"
        );
        assert_eq!(holds.screen(&t, 0, 7), Some(true), "the copy again: passed");
        assert_eq!(holds.screen(&t, 0, 8), None, "released");
        assert!(!holds.any.load(Ordering::Acquire));
    }

    #[test]
    fn a_resuming_partition_drops_stale_records_until_the_one_sought() {
        let holds = Holds::default();
        let t: Arc<str> = Arc::from("ferry.public.t");
        holds.update(|m| m.insert((Arc::clone(&t), 2), Hold::Resuming { offset: 40 }));
        assert!(holds.stale(&t, 2, 41), "fetched before the seek");
        assert!(!holds.stale(&t, 1, 41), "other partitions flow");
        assert_eq!(holds.screen(&t, 2, 39), Some(false), "stale, screened too");
        assert!(!holds.stale(&t, 2, 40), "the record sought: read");
        assert_eq!(holds.screen(&t, 2, 41), None, "released");
        assert!(!holds.any.load(Ordering::Acquire));
        assert!(!holds.held_in_target(&t, 2));
        holds.update(|m| {
            m.insert(
                (Arc::clone(&t), 2),
                Hold::Waiting {
                    id: "k:0/1#1".into(),
                    offset: 50,
                },
            )
        });
        assert!(holds.held_in_target(&t, 2));
    }

    #[test]
    fn a_rebalance_drops_the_local_holds_of_its_partitions() {
        let holds = Holds::default();
        let t: Arc<str> = Arc::from("ferry.public.t");
        let schema = Arc::new(crate::event::TableSchema {
            id: crate::event::TableId::new("public", "t"),
            columns: Vec::new(),
            primary_key: Vec::new(),
            child: None,
        });
        let ev = crate::event::ChangeEvent::snapshot_read(schema, Vec::new());
        for p in [0, 1] {
            let b = parse_barrier("k:0/1#1".into(), Some("0,1,2".into()), &t, p, 3, ev.clone())
                .unwrap();
            holds.local(|l| {
                l.push(LocalHold {
                    barrier: b,
                    buffer: Default::default(),
                    bytes: 0,
                    paused: false,
                })
            });
        }
        assert!(holds.is_local(&t, 0) && holds.is_local(&t, 1));
        assert!(!holds.is_local(&t, 2));
        holds.rebalance(&[(t.to_string(), 0)]);
        assert!(!holds.is_local(&t, 0), "revoked: dropped");
        assert!(holds.is_local(&t, 1), "kept, for a hold through the target");
        assert!(holds.rebalanced.load(Ordering::Acquire));
    }

    #[test]
    fn prefix_pattern_escapes() {
        assert_eq!(regex_escape("ferry"), "ferry");
        assert_eq!(regex_escape("a.b-c"), "a\\.b-c");
    }

    #[test]
    fn a_resume_check_passes_skips_or_stops() {
        let checks = ResumeChecks::default();
        let t: Arc<str> = Arc::from("ferry.public.t");
        let other: Arc<str> = Arc::from("ferry.public.u");
        checks.set(|e| {
            e.insert((Arc::clone(&t), 0), (41, 1_700));
            e.insert((Arc::clone(&t), 1), (9, 1_800));
            e.insert((Arc::clone(&t), 2), (5, 1_900));
        });
        assert!(checks.pending.load(Ordering::Acquire));
        // No check on this partition: applied as usual.
        assert!(!checks.verify(&other, 0, 0, Some(1)).unwrap());
        // The record applied last, as recorded: not applied again, and the
        // check is done.
        assert!(checks.verify(&t, 0, 41, Some(1_700)).unwrap());
        assert!(!checks.verify(&t, 0, 42, Some(1_701)).unwrap());
        // The next record instead (a broker answering from the next
        // batch): nothing to compare, nothing skipped.
        assert!(!checks.verify(&t, 1, 10, Some(1)).unwrap());
        // Records jumped over: the worker stops.
        checks.set(|e| {
            e.insert((Arc::clone(&t), 1), (9, 1_800));
        });
        let e = checks.verify(&t, 1, 12, Some(1)).unwrap_err();
        assert_eq!(e.code.as_deref(), Some(SKIPPED_RECORDS));
        assert!(e.to_string().contains("records 10 to 11"), "{e}");
        // Another record at that offset: the log was made anew.
        let e = checks.verify(&t, 2, 5, Some(2_000)).unwrap_err();
        assert_eq!(e.code.as_deref(), Some(LOG_REPLACED));
        assert!(e.to_string().contains("made anew"), "{e}");
        assert!(!checks.pending.load(Ordering::Acquire));
    }
}
