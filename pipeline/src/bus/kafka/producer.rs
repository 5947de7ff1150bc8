//! The source side of the Kafka bus: what a source sends is produced to a
//! topic per source table, keyed by primary key, and the source's
//! acknowledgements are released only once Kafka acknowledged every
//! message before them.
//!
//! Two tasks: the *forwarder* encodes and enqueues messages through the
//! [`Outbox`] (librdkafka batches and retries them; a full queue makes it
//! wait, which makes the source wait: memory stays bounded however long the
//! broker is away), and the *tracker* releases, in order, what the
//! outbox's delivered watermark makes durable: source acks, completed
//! snapshots, resume tokens.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use tokio::sync::{mpsc, watch};
use tracing::info;

use super::outbox::{Outbox, Outgoing};
use super::{
    admin_client, blocking, client_config, ensure_topics_with, kafka_err, partition_count,
    schema_store, source_checkpoint, Topics,
};
use crate::channel::BusReceiver;
use crate::checkpoint::{Checkpoint, SnapshotRecord};
use crate::config::KafkaConfig;
use crate::envelope::{Encoder, NewSchema};
use crate::error::{PipelineError, Stage};
use crate::event::{BusMessage, ChangeEvent, Op, SourceAck, TableId, TableSchema};
use crate::metrics::metrics;
use crate::runtime::{AbortOnDrop, Spawned};
use crate::FastHashMap;

/// Header with the change's source position (`LSN#ordinal`).
pub const HEADER_POSITION: &str = "ferry.position";
/// Header with the source transaction id.
pub const HEADER_XID: &str = "ferry.xid";
/// Header marking a snapshot start: `truncate` (empty the target table
/// first; on several partitions a barrier, see [`HEADER_BARRIER`]) or, from
/// older sources, `keep` (only create it).
pub const HEADER_SNAPSHOT_START: &str = "ferry.snapshot-start";

/// Header of a barrier copy: the barrier's id (`k:<position>` key change,
/// `t:<position>` truncate, `s:<micros>` snapshot start). The same event is
/// sent to every partition listed in [`HEADER_BARRIER_PARTITIONS`]; workers
/// apply it once all of them reached their copy (docs/kafka.md).
pub const HEADER_BARRIER: &str = "ferry.barrier";
/// Header of a barrier copy: the partitions it covers (`0,2`).
pub const HEADER_BARRIER_PARTITIONS: &str = "ferry.barrier-partitions";
/// Header of a key change's copies: `out` (on the old key's partition) or
/// `in` (on the new key's). For people and tools; workers do not read it.
pub const HEADER_REKEY: &str = "ferry.rekey";
/// Debezium's header on the old key's copy of a key change: the new key.
pub const HEADER_DEBEZIUM_NEWKEY: &str = "__debezium.newkey";
/// Debezium's header on the new key's copy of a key change: the old key.
pub const HEADER_DEBEZIUM_OLDKEY: &str = "__debezium.oldkey";

/// Header marking a completed snapshot: `{"rows": n, "state": …}`. The
/// worker records it in the target, where `ferry_snapshot` shows it as on
/// the embedded bus (for operators; the source's own record is in Kafka).
pub const HEADER_SNAPSHOT_DONE: &str = "ferry.snapshot-done";

/// Creates an idempotent producer with [`producer_config`] that reports
/// deliveries through futures (for occasional messages: the dead-letter
/// mirror).
pub fn create_producer(k: &KafkaConfig) -> Result<super::Producer, PipelineError> {
    producer_config(k)
        .create_with_context(super::LogContext)
        .map_err(|e| kafka_err(Stage::Source, "create the Kafka producer", e))
}

/// The settings of the idempotent producer Ferry's guarantees rest on.
pub fn producer_config(k: &KafkaConfig) -> rdkafka::config::ClientConfig {
    let kbytes = (k.max_in_flight_mb * 1024).min(i32::MAX as u64);
    client_config(k, &k.producer)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The Java client's partitioner: the same key lands on the same
        // partition whichever client produced it.
        .set("partitioner", "murmur2_random")
        // A topic that vanished (deleted, or a broker that lost its data)
        // must not come back empty with the broker's default partitions:
        // producing to it fails instead.
        .set("allow.auto.create.topics", "false")
        // A broker that is away is waited for (librdkafka retries with
        // exponential backoff); the queue bound below is the backpressure.
        .set("delivery.timeout.ms", "2147483647")
        .set("queue.buffering.max.kbytes", kbytes.to_string())
        .set("queue.buffering.max.messages", "1000000")
        // MongoDB documents reach 16 MB; the broker's own limit
        // (message.max.bytes / max.message.bytes) must allow them too.
        .set("message.max.bytes", "67108864")
        .set_defaults()
        .clone()
}

trait ProducerDefaults {
    fn set_defaults(&mut self) -> &mut Self;
}

impl ProducerDefaults for rdkafka::config::ClientConfig {
    /// Defaults a user may override under `[kafka.producer]`:
    ///
    /// - `linger.ms = 50`. Measured with `ferry-bench --kafka
    ///   --kafka-linger-ms` (docs/BENCHMARKS.md): 20 ms gave about 15% more
    ///   throughput on a backlog than 5 ms and 40% less broker CPU (fewer,
    ///   larger produce requests); 50 ms about 8% more than 20 ms, with
    ///   less CPU in the source, the broker and the walsender; 100 ms no
    ///   more. The price is median lag at a steady trickle: about 60 ms
    ///   instead of 30. A migration catching up matters more.
    /// - `compression.type = lz4`. With `ferry-bench --kafka --kafka-only
    ///   1|embedded --changes 600000` (alternating runs) the broker used
    ///   0.6-0.9 CPU s instead of 1.1-1.2 on the backlog, rows/s within
    ///   the noise; a real broker also stores and replicates fewer bytes.
    fn set_defaults(&mut self) -> &mut Self {
        if self.get("linger.ms").is_none() {
            self.set("linger.ms", "50");
        }
        if self.get("compression.type").is_none() {
            self.set("compression.type", "lz4");
        }
        self
    }
}

/// A table-wide marker travelling as a truncate-shaped event with a header.
#[derive(Clone, Copy)]
enum Marker<'a> {
    /// `truncate` or `keep`.
    SnapshotStart(&'a str),
    /// `{"rows": n, "state": …}`.
    SnapshotDone(&'a str),
}

/// What the tracker releases once every message enqueued before it is
/// delivered (`upto`: the outbox's [`Outbox::sent`] count at the time).
enum Pending {
    Ack {
        ack: SourceAck,
        upto: u64,
    },
    Snapshot {
        table: TableId,
        record: SnapshotRecord,
        upto: u64,
    },
    Resume {
        token: Arc<str>,
        upto: u64,
    },
    /// The forwarder is done: everything it sent must be delivered.
    Drained {
        upto: u64,
    },
}

impl Pending {
    fn upto(&self) -> u64 {
        match self {
            Pending::Ack { upto, .. }
            | Pending::Snapshot { upto, .. }
            | Pending::Resume { upto, .. }
            | Pending::Drained { upto } => *upto,
        }
    }
}

/// Starts producing what arrives on `rx` to Kafka; acks go to `acks`.
/// `checkpoint` is the source's checkpoint as loaded from Kafka.
pub fn spawn(
    k: &KafkaConfig,
    pipeline: &str,
    rx: BusReceiver,
    acks: watch::Sender<SourceAck>,
    checkpoint: Checkpoint,
) -> Result<Spawned, PipelineError> {
    let outbox = Arc::new(Outbox::new(&producer_config(k))?);
    let topics = Topics::new(&k.topic_prefix);
    // Unbounded, but the tracker takes entries off at once (it queues them
    // itself, coalescing a MongoDB source's resume token per change), and
    // librdkafka's own queue bound stops the forwarder long before this
    // matters.
    let (pending_tx, pending_rx) = mpsc::unbounded_channel();
    let tracker = Tracker {
        outbox: Arc::clone(&outbox),
        checkpoint_topic: topics.checkpoints(),
        pipeline: pipeline.to_string(),
        acks,
        checkpoint,
        dirty: false,
        last_write: Instant::now(),
    };
    let fwd = Forwarder {
        k: k.clone(),
        outbox,
        topics,
        encoder: Encoder::new(k.encoding, pipeline),
        pending: pending_tx,
        admin: None,
        partitions: HashMap::new(),
        ensured: HashSet::new(),
        schemas: HashMap::new(),
        outs: FastHashMap::default(),
        header_buf: String::new(),
        value_buf: Vec::new(),
        key_buf: String::new(),
        old_key_buf: String::new(),
        last_snapshot_micros: 0,
    };
    let mut tracker_task = tokio::spawn(tracker.run(pending_rx));
    let mut fwd_task = tokio::spawn(fwd.run(rx));
    let handles = vec![tracker_task.abort_handle(), fwd_task.abort_handle()];
    let task = tokio::spawn(async move {
        tokio::select! {
            r = &mut fwd_task => match crate::runtime::flatten(r) {
                // All sent: wait until Kafka has all of it.
                Ok(()) => crate::runtime::flatten(tracker_task.await),
                Err(e) => Err(e),
            },
            r = &mut tracker_task => match crate::runtime::flatten(r) {
                Ok(()) => crate::runtime::flatten(fwd_task.await),
                Err(e) => Err(e),
            },
        }
    });
    let abort = AbortOnDrop(handles.into_iter().chain([task.abort_handle()]).collect());
    Ok(Spawned { task, abort })
}

struct Forwarder {
    k: KafkaConfig,
    outbox: Arc<Outbox>,
    topics: Topics,
    encoder: Encoder,
    pending: mpsc::UnboundedSender<Pending>,
    /// Made when the first table is met, then kept: a client per table
    /// cost about 0.1 s each (threads, connection, metadata), with the
    /// stream stopped.
    admin: Option<AdminClient<DefaultClientContext>>,
    /// Partitions per data topic (known once the topic is ensured).
    partitions: HashMap<TableId, usize>,
    ensured: HashSet<TableId>,
    /// The last schema seen per table (a snapshot's end names only the
    /// table).
    schemas: HashMap<TableId, Arc<TableSchema>>,
    /// Per schema (by its `Arc`, which sources share between the events of
    /// a table): the topic and the events to count. One lookup per event
    /// instead of hashing the table's name several times.
    outs: FastHashMap<usize, TableOut>,
    /// Reused for the position and xid headers' text.
    header_buf: String,
    /// Reused for each message's value and key (librdkafka copies them).
    value_buf: Vec<u8>,
    key_buf: String,
    /// A key change's old key (only key-changing updates fill it).
    old_key_buf: String,
    /// The last snapshot barrier's time (µs): ids of snapshot attempts
    /// increase within the process even if the clock does not.
    last_snapshot_micros: i64,
}

/// One copy of a barrier event.
struct BarrierCopy<'a> {
    key: &'a [u8],
    partition: i32,
    extra: [(&'static str, &'a [u8]); 2],
}

struct TableOut {
    /// Keeps the pointer the map is keyed by alive.
    schema: Arc<TableSchema>,
    topic: Arc<str>,
    partitions: usize,
    /// Events produced per op since the last flush to the metrics.
    counts: [u64; Op::ALL.len()],
}

impl Forwarder {
    async fn run(mut self, mut rx: BusReceiver) -> Result<(), PipelineError> {
        while let Some(msg) = rx.recv().await {
            metrics().bus_depth.set(rx.depth() as i64);
            match msg {
                BusMessage::Change(ev) => self.change(ev, None).await?,
                BusMessage::Commit { ack, .. } | BusMessage::Idle { ack } => {
                    // The source's part of `/ready` in a `--role source`
                    // process: it streams (the workers report the rest).
                    crate::metrics::status::status().set_streaming();
                    self.flush_counts();
                    let upto = self.outbox.sent();
                    self.pend(Pending::Ack { ack, upto })?
                }
                BusMessage::Resume { resume_token } => {
                    let upto = self.outbox.sent();
                    self.pend(Pending::Resume {
                        token: resume_token,
                        upto,
                    })?
                }
                BusMessage::SnapshotStart { table } => {
                    crate::metrics::status::status().snapshot_started(&table.id.to_string());
                    self.snapshot_start(table).await?
                }
                BusMessage::SnapshotDone { table, rows, state } => {
                    self.flush_counts();
                    self.snapshot_done(&table, rows, &state).await?;
                    let upto = self.outbox.sent();
                    self.pend(Pending::Snapshot {
                        table,
                        record: SnapshotRecord { rows, state },
                        upto,
                    })?
                }
                // Worker-side messages never come from a source.
                BusMessage::Consumed { .. }
                | BusMessage::EnsureTable { .. }
                | BusMessage::Barrier(_) => {}
            }
        }
        self.flush_counts();
        let upto = self.outbox.sent();
        self.pend(Pending::Drained { upto })
    }

    /// Counted per event locally, published per transaction: a labelled
    /// counter costs a hash and an allocation per call.
    fn flush_counts(&mut self) {
        for out in self.outs.values_mut() {
            for op in Op::ALL {
                let n = std::mem::take(&mut out.counts[op as usize]);
                if n > 0 {
                    metrics()
                        .events
                        .with_label_values(&["bus", &out.schema.id.to_string(), op.as_str()])
                        .inc_by(n);
                }
            }
        }
    }

    fn pend(&self, p: Pending) -> Result<(), PipelineError> {
        self.pending
            .send(p)
            .map_err(|_| PipelineError::fatal(Stage::Source, "the Kafka delivery tracker stopped"))
    }

    async fn ensure(&mut self, table: &TableSchema) -> Result<usize, PipelineError> {
        if !self.ensured.contains(&table.id) {
            let topic = self.topics.data(&table.id);
            let admin = match &mut self.admin {
                Some(a) => a,
                slot => slot.insert(admin_client(&self.k, Stage::Source)?),
            };
            let names = std::slice::from_ref(&topic);
            ensure_topics_with(admin, &self.k, names, false, Stage::Source).await?;
            let n = blocking(|| partition_count(self.outbox.client(), &topic, Stage::Source))?;
            self.partitions.insert(table.id.clone(), n);
            self.ensured.insert(table.id.clone());
        }
        Ok(self.partitions[&table.id])
    }

    async fn snapshot_done(
        &mut self,
        table: &TableId,
        rows: u64,
        state: &serde_json::Value,
    ) -> Result<(), PipelineError> {
        let Some(schema) = self.schemas.get(table).cloned() else {
            return Ok(());
        };
        let mut ev = ChangeEvent::snapshot_read(schema, Vec::new());
        ev.op = Op::Truncate;
        ev.after = None;
        let done = serde_json::json!({ "rows": rows, "state": state }).to_string();
        self.change(ev, Some(Marker::SnapshotDone(&done))).await
    }

    async fn snapshot_start(&mut self, table: Arc<TableSchema>) -> Result<(), PipelineError> {
        self.ensure(&table).await?;
        // The target table is emptied before the copy: on several
        // partitions through a barrier (see `barrier`).
        let mode = Marker::SnapshotStart("truncate");
        let mut ev = ChangeEvent::snapshot_read(table, Vec::new());
        ev.op = Op::Truncate;
        ev.after = None;
        self.change(ev, Some(mode)).await
    }

    async fn change(
        &mut self,
        ev: ChangeEvent,
        marker: Option<Marker<'_>>,
    ) -> Result<(), PipelineError> {
        let ptr = Arc::as_ptr(&ev.table) as usize;
        if !self.outs.contains_key(&ptr) {
            let partitions = self.ensure(&ev.table).await?;
            self.schemas
                .insert(ev.table.id.clone(), Arc::clone(&ev.table));
            // A newer shape of the table replaces the older one's entry.
            self.outs.retain(|_, o| o.schema.id != ev.table.id);
            self.outs.insert(
                ptr,
                TableOut {
                    schema: Arc::clone(&ev.table),
                    topic: Arc::from(self.topics.data(&ev.table.id)),
                    partitions,
                    counts: [0; Op::ALL.len()],
                },
            );
        }
        let (topic, n) = {
            let out = self.outs.get_mut(&ptr).expect("inserted above");
            out.counts[ev.op as usize] += 1;
            (Arc::clone(&out.topic), out.partitions)
        };
        let encode_err = |e| {
            PipelineError::fatal(
                Stage::Source,
                format!("encode a change of {}: {e}", ev.table.id),
            )
        };
        let new_schema = self
            .encoder
            .encode_into(&ev, &mut self.value_buf)
            .map_err(encode_err)?;
        if let Some(schema) = new_schema {
            self.publish_schema(&schema).await?;
            if self.k.schema_registry_url.is_some() {
                // Now that the registry gave the schema an id, frame the
                // message the Confluent way.
                self.encoder
                    .encode_into(&ev, &mut self.value_buf)
                    .map_err(encode_err)?;
            }
        }
        self.encoder.key_into(&ev, &mut self.key_buf);
        if n > 1 {
            if let Some(seq) = self.barrier(&ev, &topic, n, marker).await? {
                return match ev.resume_token {
                    Some(token) => self.pend(Pending::Resume {
                        token,
                        upto: seq + 1,
                    }),
                    None => Ok(()),
                };
            }
        }
        // One header list per message (librdkafka takes it over); the
        // texts are written into one reused buffer.
        let buf = &mut self.header_buf;
        buf.clear();
        let _ = write!(buf, "{}", ev.position);
        let position_end = buf.len();
        if let Some(x) = ev.xid {
            let _ = write!(buf, "{x}");
        }
        let mut headers = OwnedHeaders::new_with_capacity(3).insert(Header {
            key: HEADER_POSITION,
            value: Some(&buf.as_bytes()[..position_end]),
        });
        if ev.xid.is_some() {
            headers = headers.insert(Header {
                key: HEADER_XID,
                value: Some(&buf.as_bytes()[position_end..]),
            });
        }
        match marker {
            Some(Marker::SnapshotStart(mode)) => {
                headers = headers.insert(Header {
                    key: HEADER_SNAPSHOT_START,
                    value: Some(mode.as_bytes()),
                })
            }
            Some(Marker::SnapshotDone(done)) => {
                headers = headers.insert(Header {
                    key: HEADER_SNAPSHOT_DONE,
                    value: Some(done.as_bytes()),
                })
            }
            None => {}
        }
        // Table-wide markers go to partition 0 (the only one when they
        // truncate).
        let partition = (marker.is_some() || ev.op == Op::Truncate).then_some(0);
        let seq = self
            .outbox
            .send(Outgoing {
                topic: &topic,
                key: self.key_buf.as_bytes(),
                payload: &self.value_buf,
                headers: Some(headers),
                partition,
            })
            .await?;
        match ev.resume_token {
            Some(token) => self.pend(Pending::Resume {
                token,
                upto: seq + 1,
            }),
            None => Ok(()),
        }
    }

    /// On a topic of `n > 1` partitions, sends the events that must be
    /// ordered across partitions as barrier copies (the value and key are
    /// already encoded), and returns the last copy's outbox sequence; `None`
    /// for every other event (sent as usual, by key):
    ///
    /// - a TRUNCATE and a snapshot start: one copy per partition;
    /// - a key-changing update whose old and new keys hash to different
    ///   partitions: a copy keyed by the old key on its partition (`out`),
    ///   one keyed by the new key on its partition (`in`), as Debezium
    ///   splits it, with Debezium's key headers.
    ///
    /// Every copy is enqueued before the transaction's acknowledgement
    /// (acks and checkpoints are unchanged): a source that dies mid-way
    /// re-produces the event with the same `k:`/`t:` id. Snapshot attempts
    /// get a new `s:` id; workers let a later attempt complete an earlier
    /// one that never reached every partition.
    async fn barrier(
        &mut self,
        ev: &ChangeEvent,
        topic: &str,
        n: usize,
        marker: Option<Marker<'_>>,
    ) -> Result<Option<u64>, PipelineError> {
        let id = match (marker, ev.op) {
            (Some(Marker::SnapshotStart(_)), _) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as i64);
                self.last_snapshot_micros = now.max(self.last_snapshot_micros + 1);
                format!("s:{}", self.last_snapshot_micros)
            }
            (Some(Marker::SnapshotDone(_)), _) => return Ok(None),
            (None, Op::Truncate) => format!("t:{}", ev.position),
            (None, Op::Update) if ev.before.is_some() => {
                self.encoder.old_key_into(ev, &mut self.old_key_buf);
                if self.old_key_buf == self.key_buf {
                    return Ok(None);
                }
                let from = super::partitioner::partition_for(self.old_key_buf.as_bytes(), n);
                let to = super::partitioner::partition_for(self.key_buf.as_bytes(), n);
                if from == to {
                    return Ok(None);
                }
                let id = format!("k:{}", ev.position);
                let parts = format!("{from},{to}");
                let copies = [
                    BarrierCopy {
                        key: self.old_key_buf.as_bytes(),
                        partition: from,
                        extra: [
                            (HEADER_REKEY, b"out"),
                            (HEADER_DEBEZIUM_NEWKEY, self.key_buf.as_bytes()),
                        ],
                    },
                    BarrierCopy {
                        key: self.key_buf.as_bytes(),
                        partition: to,
                        extra: [
                            (HEADER_REKEY, b"in"),
                            (HEADER_DEBEZIUM_OLDKEY, self.old_key_buf.as_bytes()),
                        ],
                    },
                ];
                return send_copies(
                    &self.outbox,
                    ev,
                    topic,
                    &self.value_buf,
                    &id,
                    &parts,
                    &copies,
                    marker,
                )
                .await
                .map(Some);
            }
            _ => return Ok(None),
        };
        let parts = (0..n).map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let copies: Vec<BarrierCopy<'_>> = (0..n as i32)
            .map(|p| BarrierCopy {
                key: self.key_buf.as_bytes(),
                partition: p,
                extra: [("", b""), ("", b"")],
            })
            .collect();
        send_copies(
            &self.outbox,
            ev,
            topic,
            &self.value_buf,
            &id,
            &parts,
            &copies,
            marker,
        )
        .await
        .map(Some)
    }

    async fn publish_schema(&mut self, schema: &NewSchema) -> Result<(), PipelineError> {
        if let Some(url) = &self.k.schema_registry_url {
            let id = super::registry::register(
                url,
                &self.topics.data(&schema.subject_table),
                &schema.avro_json,
            )
            .await?;
            self.encoder.set_registry_id(schema.fingerprint, id);
            return Ok(());
        }
        // The topic was ensured at start (`run_source`); one deleted since
        // fails the delivery, and the source stops.
        let topic = self.topics.schemas();
        schema_store::publish(&self.outbox, &topic, schema).await?;
        info!(table = %schema.subject_table, fingerprint = format!("{:016x}", schema.fingerprint), "published a writer schema");
        Ok(())
    }
}

/// Sends one barrier event's copies; returns the last one's sequence.
#[allow(clippy::too_many_arguments)]
async fn send_copies(
    outbox: &Outbox,
    ev: &ChangeEvent,
    topic: &str,
    value: &[u8],
    id: &str,
    parts: &str,
    copies: &[BarrierCopy<'_>],
    marker: Option<Marker<'_>>,
) -> Result<u64, PipelineError> {
    let position = ev.position.to_string();
    let xid = ev.xid.map(|x| x.to_string());
    let mut last = 0;
    for c in copies {
        let mut headers = OwnedHeaders::new_with_capacity(7).insert(Header {
            key: HEADER_POSITION,
            value: Some(position.as_bytes()),
        });
        if let Some(x) = &xid {
            headers = headers.insert(Header {
                key: HEADER_XID,
                value: Some(x.as_bytes()),
            });
        }
        if let Some(Marker::SnapshotStart(mode)) = marker {
            headers = headers.insert(Header {
                key: HEADER_SNAPSHOT_START,
                value: Some(mode.as_bytes()),
            });
        }
        headers = headers
            .insert(Header {
                key: HEADER_BARRIER,
                value: Some(id.as_bytes()),
            })
            .insert(Header {
                key: HEADER_BARRIER_PARTITIONS,
                value: Some(parts.as_bytes()),
            });
        for (key, value) in c.extra.iter().filter(|(k, _)| !k.is_empty()) {
            headers = headers.insert(Header {
                key,
                value: Some(*value),
            });
        }
        last = outbox
            .send(Outgoing {
                topic,
                key: c.key,
                payload: value,
                headers: Some(headers),
                partition: Some(c.partition),
            })
            .await?;
    }
    Ok(last)
}

/// Queues `p` for release. A MongoDB source sends a resume token with every
/// change: a token waiting behind another one replaces it (only the newest
/// is kept once both are delivered), so the queue holds a few entries, not
/// one per change. The front entry is never replaced: its bound must not
/// move, or a source that keeps sending would never see it released.
fn enqueue(queue: &mut VecDeque<Pending>, p: Pending) {
    if matches!(p, Pending::Resume { .. })
        && queue.len() >= 2
        && matches!(queue.back(), Some(Pending::Resume { .. }))
    {
        *queue.back_mut().expect("len >= 2") = p;
    } else {
        queue.push_back(p);
    }
}

/// Releases, in order, what the delivered watermark makes durable.
struct Tracker {
    outbox: Arc<Outbox>,
    checkpoint_topic: String,
    pipeline: String,
    acks: watch::Sender<SourceAck>,
    checkpoint: Checkpoint,
    /// The checkpoint changed since it was last written.
    dirty: bool,
    last_write: Instant,
}

impl Tracker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) -> Result<(), PipelineError> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut queue: VecDeque<Pending> = VecDeque::new();
        let mut open = true;
        loop {
            // Wait for the oldest entry, then release everything the
            // watermark covers by then. Deliveries are reported a produce
            // response at a time, so this wakes about once per response,
            // not once per source transaction; waiting for the newest entry
            // instead would never end while the source keeps sending.
            let front = queue.front().map(Pending::upto);
            tokio::select! {
                p = rx.recv(), if open => match p {
                    Some(p) => enqueue(&mut queue, p),
                    None => open = false,
                },
                r = self.outbox.delivered(front.unwrap_or(0)), if front.is_some() => {
                    r?;
                    let reached = self.outbox.delivered_so_far();
                    while queue.front().is_some_and(|p| p.upto() <= reached) {
                        let p = queue.pop_front().expect("checked");
                        self.release(p).await?;
                    }
                }
                _ = tick.tick() => {
                    if self.dirty && self.last_write.elapsed() >= Duration::from_secs(1) {
                        self.write().await?;
                    }
                }
            }
            if !open && queue.is_empty() {
                // The forwarder is done and everything it sent is durable.
                if self.dirty {
                    self.write().await?;
                }
                return Ok(());
            }
        }
    }

    async fn release(&mut self, p: Pending) -> Result<(), PipelineError> {
        match p {
            Pending::Ack { ack, .. } => {
                self.acks.send_if_modified(|cur| {
                    if ack > *cur {
                        *cur = ack;
                        true
                    } else {
                        false
                    }
                });
            }
            Pending::Resume { token, .. } => {
                self.checkpoint.resume_token = Some(token.to_string());
                self.dirty = true;
            }
            Pending::Snapshot { table, record, .. } => {
                // Completed snapshots are written at once: the source must
                // not copy the table again after a restart.
                let name = table.to_string();
                self.checkpoint.snapshots.insert(table, record);
                self.write().await?;
                // Delivered to Kafka: done for the source (the workers
                // report the table until they committed it).
                crate::metrics::status::status().snapshot_finished(&name);
            }
            Pending::Drained { .. } => {}
        }
        Ok(())
    }

    async fn write(&mut self) -> Result<(), PipelineError> {
        source_checkpoint::store(
            &self.outbox,
            &self.checkpoint_topic,
            &self.pipeline,
            &self.checkpoint,
        )
        .await?;
        self.dirty = false;
        self.last_write = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_tokens_coalesce_behind_the_front() {
        let resume = |t: &str, upto| Pending::Resume {
            token: Arc::from(t),
            upto,
        };
        let mut q = VecDeque::new();
        for (i, t) in ["a", "b", "c", "d"].into_iter().enumerate() {
            enqueue(&mut q, resume(t, i as u64 + 1));
        }
        let tokens: Vec<(String, u64)> = q
            .iter()
            .map(|p| match p {
                Pending::Resume { token, upto } => (token.to_string(), *upto),
                _ => unreachable!(),
            })
            .collect();
        // The front keeps its bound; the newest token replaced the others.
        assert_eq!(tokens, vec![("a".into(), 1), ("d".into(), 4)]);
        // An ack is never merged away.
        enqueue(
            &mut q,
            Pending::Ack {
                ack: SourceAck(9),
                upto: 5,
            },
        );
        enqueue(&mut q, resume("e", 6));
        assert_eq!(q.len(), 4);
    }

    /// While the source keeps sending, acknowledgements are released as
    /// deliveries catch up, not only once the traffic stops.
    #[tokio::test]
    async fn acks_advance_under_continuous_traffic() {
        let mut config = rdkafka::config::ClientConfig::new();
        // No broker is contacted: deliveries are reported by hand.
        config.set("bootstrap.servers", "127.0.0.1:1");
        let outbox = Arc::new(Outbox::new(&config).unwrap());
        let (acks_tx, acks_rx) = watch::channel(SourceAck(0));
        let (pending_tx, pending_rx) = mpsc::unbounded_channel();
        let tracker = Tracker {
            outbox: Arc::clone(&outbox),
            checkpoint_topic: "ferry._checkpoints".into(),
            pipeline: "test".into(),
            acks: acks_tx,
            checkpoint: Checkpoint::default(),
            dirty: false,
            last_write: Instant::now(),
        };
        let task = tokio::spawn(tracker.run(pending_rx));
        // Each round: 10 messages and a transaction end; deliveries lag
        // 5 rounds behind the sends.
        let mut sent = Vec::new();
        for round in 1..=200u64 {
            for _ in 0..10 {
                sent.push(outbox.fake_send());
            }
            pending_tx
                .send(Pending::Ack {
                    ack: SourceAck(round),
                    upto: outbox.sent(),
                })
                .unwrap();
            if round > 5 {
                let start = ((round - 6) * 10) as usize;
                for &seq in &sent[start..start + 10] {
                    outbox.fake_delivery(seq);
                }
            }
            tokio::task::yield_now().await;
        }
        // Still sending (nothing closed), deliveries 5 rounds behind: the
        // acks released are those of the delivered rounds.
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut rx = acks_rx.clone();
            rx.wait_for(|a| a.0 == 195).await.unwrap();
        })
        .await
        .expect("acks stalled while traffic continued");
        assert_eq!(acks_rx.borrow().0, 195, "no ack beyond what is delivered");
        for &seq in &sent[1950..] {
            outbox.fake_delivery(seq);
        }
        drop(pending_tx);
        task.await.unwrap().unwrap();
        assert_eq!(acks_rx.borrow().0, 200);
    }
}
