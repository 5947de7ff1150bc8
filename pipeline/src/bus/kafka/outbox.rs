//! The source's way out to Kafka: every message is enqueued with a
//! sequence number, and one *delivered watermark* says how far Kafka has
//! acknowledged all of them.
//!
//! librdkafka reports each delivery to a callback on the producer's polling
//! thread. A future per message (rdkafka's `FutureProducer`) costs a
//! oneshot channel, an allocation and a task wake-up for every change; here
//! the callback marks its sequence number done and advances the watermark
//! past every leading done number, and a waiter is woken only once the
//! watermark reaches what it waits for. Deliveries complete out of order
//! across partitions, so the watermark, not the latest callback, is what
//! releases acknowledgements.
//!
//! A delivery that failed (librdkafka retried until it gave up: a topic
//! that vanished, a fatal idempotence error) stops the watermark for good
//! and is reported to every waiter: nothing after it may be acknowledged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

use super::kafka_err;
use crate::error::{PipelineError, Stage};

/// Why a message was not delivered.
#[derive(Debug, Clone)]
pub struct DeliveryFailure {
    /// librdkafka's final error.
    pub error: KafkaError,
    /// The message's topic.
    pub topic: String,
}

impl DeliveryFailure {
    /// The pipeline error it stops the source with.
    pub fn to_error(&self) -> PipelineError {
        let what = match self.error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                format!(
                    "topic {} does not exist any more (deleted, or the broker lost its data); nothing was skipped, the source stops",
                    self.topic
                )
            }
            _ => format!("deliver to Kafka topic {}", self.topic),
        };
        kafka_err(Stage::Source, &what, self.error.clone())
    }
}

/// The delivered watermark, shared by the polling thread (which advances
/// it) and the tasks that wait on it.
#[derive(Default)]
struct Watermark {
    /// Every sequence number below this one is delivered.
    delivered: AtomicU64,
    /// The lowest target a waiter waits for (`u64::MAX`: none); the
    /// callback wakes waiters only once the watermark reaches it.
    wanted: AtomicU64,
    failed: AtomicBool,
    notify: Notify,
    state: Mutex<WatermarkState>,
}

#[derive(Default)]
struct WatermarkState {
    /// `done[i]`: sequence number `delivered + i` was delivered (out of
    /// order: a later partition's ack came first).
    done: VecDeque<bool>,
    /// Single messages waited for by themselves (a handful at most); the
    /// callback wakes the waiters once one of them is delivered.
    awaited: Vec<u64>,
    failure: Option<DeliveryFailure>,
}

/// Whether message `seq` was delivered: below the watermark `delivered`,
/// or marked in `done` (which starts at it).
fn is_delivered(done: &VecDeque<bool>, delivered: u64, seq: u64) -> bool {
    match seq.checked_sub(delivered) {
        None => true,
        Some(i) => done.get(i as usize) == Some(&true),
    }
}

impl Watermark {
    fn new() -> Self {
        Self {
            wanted: AtomicU64::new(u64::MAX),
            ..Default::default()
        }
    }

    /// Called on the polling thread for each delivery report.
    fn report(&self, seq: u64, result: Result<(), DeliveryFailure>) {
        let mut state = self.state.lock().expect("watermark lock");
        if let Err(f) = result {
            state.failure.get_or_insert(f);
            drop(state);
            self.failed.store(true, Ordering::SeqCst);
            self.notify.notify_waiters();
            return;
        }
        let base = self.delivered.load(Ordering::Relaxed);
        // A number below the watermark cannot come twice; ignore it if a
        // misbehaving client reported it again.
        let Some(i) = seq.checked_sub(base) else {
            return;
        };
        let i = i as usize;
        if i >= state.done.len() {
            state.done.resize(i + 1, false);
        }
        state.done[i] = true;
        let mut advanced = 0;
        while state.done.front() == Some(&true) {
            state.done.pop_front();
            advanced += 1;
        }
        let now = base + advanced;
        // Stored under the lock: `wait_one` reads both together.
        self.delivered.store(now, Ordering::SeqCst);
        let WatermarkState { done, awaited, .. } = &mut *state;
        let before = awaited.len();
        awaited.retain(|&a| !is_delivered(done, now, a));
        let one_reached = awaited.len() < before;
        drop(state);
        let reached = advanced > 0 && now >= self.wanted.load(Ordering::SeqCst);
        if reached {
            self.wanted.store(u64::MAX, Ordering::SeqCst);
        }
        if reached || one_reached {
            // Every waiter checks again, and those still waiting register
            // their targets again.
            self.notify.notify_waiters();
        }
    }

    fn failure(&self) -> Option<DeliveryFailure> {
        if !self.failed.load(Ordering::SeqCst) {
            return None;
        }
        self.state.lock().expect("watermark lock").failure.clone()
    }

    /// Waits until every sequence number below `upto` is delivered.
    async fn wait(&self, upto: u64) -> Result<(), DeliveryFailure> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the checks below, so a report between them
            // and the await still wakes this waiter.
            notified.as_mut().enable();
            self.wanted.fetch_min(upto, Ordering::SeqCst);
            if let Some(f) = self.failure() {
                return Err(f);
            }
            if self.delivered.load(Ordering::SeqCst) >= upto {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Waits until message `seq` itself is delivered, not what was sent
    /// before it.
    async fn wait_one(&self, seq: u64) -> Result<(), DeliveryFailure> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(f) = self.failure() {
                return Err(f);
            }
            {
                // Checked and registered under the lock the callback marks
                // deliveries under: none is missed in between.
                let mut state = self.state.lock().expect("watermark lock");
                let delivered = self.delivered.load(Ordering::SeqCst);
                if is_delivered(&state.done, delivered, seq) {
                    return Ok(());
                }
                if !state.awaited.contains(&seq) {
                    state.awaited.push(seq);
                }
            }
            notified.await;
        }
    }
}

/// The producer's context: librdkafka's logs to tracing, deliveries to the
/// watermark.
pub struct OutboxContext {
    watermark: Arc<Watermark>,
}

impl ClientContext for OutboxContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        super::LogContext.log(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        super::LogContext.error(error, reason);
    }
}

impl ProducerContext for OutboxContext {
    /// The message's sequence number.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let result = match result {
            Ok(_) => Ok(()),
            Err((error, m)) => Err(DeliveryFailure {
                error: error.clone(),
                topic: m.topic().to_string(),
            }),
        };
        self.watermark.report(seq as u64, result);
    }
}

/// One message to enqueue.
pub struct Outgoing<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The key bytes (they choose the partition).
    pub key: &'a [u8],
    /// The value bytes.
    pub payload: &'a [u8],
    /// Headers, if any.
    pub headers: Option<OwnedHeaders>,
    /// A fixed partition (table-wide markers); else by key.
    pub partition: Option<i32>,
}

/// An idempotent producer whose deliveries advance one watermark.
///
/// Guarantees: [`Outbox::send`] enqueues or fails, never drops; once
/// [`Outbox::delivered`] returns `Ok` for `n`, Kafka acknowledged every
/// message whose sequence number is below `n`; after a failed delivery it
/// returns that failure for every `n` beyond it.
pub struct Outbox {
    producer: ThreadedProducer<OutboxContext>,
    watermark: Arc<Watermark>,
    next: AtomicU64,
}

impl Outbox {
    /// Wraps a producer made from `config`.
    pub fn new(config: &rdkafka::config::ClientConfig) -> Result<Self, PipelineError> {
        let watermark = Arc::new(Watermark::new());
        let producer = config
            .create_with_context(OutboxContext {
                watermark: Arc::clone(&watermark),
            })
            .map_err(|e| kafka_err(Stage::Source, "create the Kafka producer", e))?;
        Ok(Self {
            producer,
            watermark,
            next: AtomicU64::new(0),
        })
    }

    /// The client, for metadata requests.
    pub fn client(&self) -> &rdkafka::client::Client<OutboxContext> {
        self.producer.client()
    }

    /// Messages enqueued so far: [`Outbox::delivered`] of this number
    /// waits for every one of them.
    pub fn sent(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Enqueues `m` and returns its sequence number. A full queue (the
    /// broker is slow or away) makes the caller wait: that is the
    /// backpressure that keeps the source's memory bounded.
    pub async fn send(&self, m: Outgoing<'_>) -> Result<u64, PipelineError> {
        if let Some(f) = self.watermark.failure() {
            return Err(f.to_error());
        }
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let mut record = BaseRecord::with_opaque_to(m.topic, seq as usize)
            .key(m.key)
            .payload(m.payload);
        if let Some(h) = m.headers {
            record = record.headers(h);
        }
        if let Some(p) = m.partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(seq),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => {
                    return Err(kafka_err(
                        Stage::Source,
                        &format!("produce to {}", m.topic),
                        e,
                    ))
                }
            }
        }
    }

    /// How many messages, from the first, Kafka has acknowledged without a
    /// gap (the watermark).
    pub fn delivered_so_far(&self) -> u64 {
        self.watermark.delivered.load(Ordering::SeqCst)
    }

    /// Waits until Kafka acknowledged every message numbered below `upto`.
    pub async fn delivered(&self, upto: u64) -> Result<(), PipelineError> {
        self.watermark.wait(upto).await.map_err(|f| f.to_error())
    }

    /// Takes the next sequence number without producing, and reports a
    /// delivery, as librdkafka would: for tests of what waits on the
    /// watermark.
    #[cfg(test)]
    pub(crate) fn fake_send(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    /// See [`Outbox::fake_send`].
    #[cfg(test)]
    pub(crate) fn fake_delivery(&self, seq: u64) {
        self.watermark.report(seq, Ok(()));
    }

    /// Enqueues `m` and waits until Kafka acknowledged it. Only it: what
    /// is in flight before it (a source's backlog of changes, on other
    /// partitions) is not waited for; a writer schema is published before
    /// its table's next change without draining the producer's queue.
    pub async fn send_and_wait(&self, m: Outgoing<'_>) -> Result<(), PipelineError> {
        let seq = self.send(m).await?;
        self.watermark.wait_one(seq).await.map_err(|f| f.to_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(w: &Watermark, seq: u64) {
        w.report(seq, Ok(()));
    }

    #[test]
    fn watermark_advances_past_leading_deliveries_only() {
        let w = Watermark::new();
        ok(&w, 1);
        ok(&w, 2);
        assert_eq!(w.delivered.load(Ordering::SeqCst), 0);
        ok(&w, 0);
        assert_eq!(w.delivered.load(Ordering::SeqCst), 3);
        ok(&w, 4);
        assert_eq!(w.delivered.load(Ordering::SeqCst), 3);
        ok(&w, 3);
        assert_eq!(w.delivered.load(Ordering::SeqCst), 5);
        // A repeated report below the watermark changes nothing.
        ok(&w, 1);
        assert_eq!(w.delivered.load(Ordering::SeqCst), 5);
        assert!(w.state.lock().unwrap().done.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_wake_when_their_target_is_reached() {
        let w = Arc::new(Watermark::new());
        let near = tokio::spawn({
            let w = Arc::clone(&w);
            async move { w.wait(2).await }
        });
        let far = tokio::spawn({
            let w = Arc::clone(&w);
            async move { w.wait(1000).await }
        });
        let reporter = std::thread::spawn({
            let w = Arc::clone(&w);
            move || {
                // Out of order in pairs, like two partitions.
                for pair in (0..1000u64).collect::<Vec<_>>().chunks(2) {
                    ok(&w, pair[1]);
                    ok(&w, pair[0]);
                }
            }
        });
        near.await.unwrap().unwrap();
        far.await.unwrap().unwrap();
        reporter.join().unwrap();
        assert_eq!(w.delivered.load(Ordering::SeqCst), 1000);
        // Already reached: returns at once.
        w.wait(1000).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_single_message_is_waited_for_without_what_came_before() {
        let w = Arc::new(Watermark::new());
        // 0..=9 in flight; 7 and 3 are waited for by themselves.
        let seven = tokio::spawn({
            let w = Arc::clone(&w);
            async move { w.wait_one(7).await }
        });
        let three = tokio::spawn({
            let w = Arc::clone(&w);
            async move { w.wait_one(3).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        ok(&w, 7);
        tokio::time::timeout(Duration::from_secs(5), seven)
            .await
            .expect("7 delivered: its waiter wakes though 0..7 are in flight")
            .unwrap()
            .unwrap();
        assert!(!three.is_finished());
        // 3 arrives as part of the watermark passing it.
        for seq in [0, 1, 2, 3] {
            ok(&w, seq);
        }
        tokio::time::timeout(Duration::from_secs(5), three)
            .await
            .expect("3 delivered")
            .unwrap()
            .unwrap();
        assert_eq!(w.delivered.load(Ordering::SeqCst), 4);
        // Delivered before: at once, below and above the watermark.
        w.wait_one(2).await.unwrap();
        w.wait_one(7).await.unwrap();
    }

    #[tokio::test]
    async fn a_failure_stops_the_watermark_for_every_waiter() {
        let w = Watermark::new();
        ok(&w, 0);
        w.report(
            1,
            Err(DeliveryFailure {
                error: KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition),
                topic: "ferry.public.t".into(),
            }),
        );
        ok(&w, 2);
        assert_eq!(w.delivered.load(Ordering::SeqCst), 1);
        let e = w.wait(3).await.unwrap_err().to_error();
        assert!(e.to_string().contains("ferry.public.t"), "{e}");
        assert!(e.to_string().contains("does not exist any more"), "{e}");
        // Even a target below the failure is refused: the source stops.
        assert!(w.wait(1).await.is_err());
        assert!(w.wait_one(2).await.is_err());
    }
}
