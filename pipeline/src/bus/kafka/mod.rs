//! The Kafka bus: sources produce each change to a topic per source table,
//! keyed by primary key; workers consume them in a group into the sink.
//!
//! Guarantees, and where they come from:
//! - Per-row order: one key always lands on one partition (librdkafka's
//!   `murmur2_random` partitioner, the Java client's default), and the
//!   idempotent producer (`enable.idempotence`, `acks=all`) never reorders
//!   or duplicates within a producer session.
//! - Order across partitions where one event concerns several: a key
//!   change whose keys hash to different partitions, a TRUNCATE, a
//!   snapshot start are sent to each partition concerned and applied once
//!   all of them reached it (a barrier: [`producer`], [`worker`], the
//!   sink's `ferry_barriers`).
//! - Nothing lost: the source confirms a position upstream (slot ack,
//!   stored resume token) only after Kafka acknowledged every message
//!   before it ([`producer`]).
//! - Nothing applied twice, even across rebalances: the worker's progress
//!   (next offset and last source position per partition) is written by the
//!   sink in the same transaction as the rows; a new owner of a partition
//!   starts exactly there, and a write whose offsets another worker already
//!   passed is refused ([`crate::checkpoint::BusOffsets`], [`worker`]).
//!   Kafka's own committed offsets follow the sink's, for lag tooling.
//! - Never a silent skip: offsets out of range and vanished topics stop the
//!   worker with a message (`auto.offset.reset=error`).

pub mod check;
pub mod outbox;
pub mod partitioner;
pub mod producer;
pub mod registry;
pub mod reset;
pub mod schema_store;
pub mod source_checkpoint;
pub mod worker;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaConfig;
use crate::error::{ErrorClass, PipelineError, Stage};
use crate::event::TableId;

/// Names Ferry's topics.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// `<prefix>.<schema>.<table>`, with characters Kafka does not allow in
    /// topic names replaced by `_`.
    pub fn data(&self, table: &TableId) -> String {
        format!(
            "{}.{}.{}",
            self.prefix,
            topic_part(&table.schema),
            topic_part(&table.name)
        )
    }

    /// Writer schemas of the self-describing Avro encoding (compacted).
    pub fn schemas(&self) -> String {
        format!("{}._schemas", self.prefix)
    }

    /// The sources' checkpoints (compacted, keyed by pipeline).
    pub fn checkpoints(&self) -> String {
        format!("{}._checkpoints", self.prefix)
    }

    /// Records the workers parked (a mirror of `ferry_dlq` in the target,
    /// with Kafka Connect's error headers).
    pub fn dlq(&self) -> String {
        format!("{}._dlq", self.prefix)
    }
}

fn topic_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The context of Ferry's Kafka clients: librdkafka's log lines and
/// errors go to tracing (a broker that is away shows in the log while
/// librdkafka retries).
#[derive(Clone, Copy, Default)]
pub struct LogContext;

impl rdkafka::client::ClientContext for LogContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        worker::log_librdkafka(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error (retrying)");
    }
}

/// The producer type of the Kafka bus.
pub type Producer = rdkafka::producer::FutureProducer<LogContext>;

/// The settings every Ferry client shares, then `[kafka.client]` (the
/// user's connection security, among others), then `extra` (the user's
/// `[kafka.producer]` or `[kafka.consumer]`). Every client Ferry makes,
/// admin clients included, starts from here: none reaches the brokers in
/// another way than the others.
pub fn client_config(
    k: &KafkaConfig,
    extra: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    // rdkafka takes the level from the `log` crate, which Ferry does not
    // use: follow tracing's filter for the `librdkafka` target instead.
    c.set_log_level(
        if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
            rdkafka::config::RDKafkaLogLevel::Debug
        } else {
            rdkafka::config::RDKafkaLogLevel::Info
        },
    );
    c.set("bootstrap.servers", &k.brokers)
        // Reconnect quickly after a broker blip, but back off exponentially.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        .set("socket.keepalive.enable", "true");
    for (key, v) in k.client.iter().chain(extra) {
        c.set(key, v);
    }
    c
}

/// Classifies a Kafka client error: a broker that is away, slow or
/// electing a leader is transient; authentication, authorization, invalid
/// configuration and a fatal idempotence state stop the pipeline.
pub fn classify(e: &KafkaError) -> ErrorClass {
    use RDKafkaErrorCode as C;
    let code = match e {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => return ErrorClass::Fatal,
        other => other.rdkafka_error_code(),
    };
    match code {
        Some(
            C::Authentication
            | C::SaslAuthenticationFailed
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidConfig
            | C::Fatal
            | C::OutOfOrderSequenceNumber
            | C::UnknownProducerId
            | C::InvalidProducerEpoch
            | C::ProducerFenced
            | C::OffsetOutOfRange
            | C::AutoOffsetReset
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::MessageSizeTooLarge,
        ) => ErrorClass::Fatal,
        _ => ErrorClass::Transient,
    }
}

/// A Kafka error as a pipeline error, with the librdkafka code.
pub fn kafka_err(stage: Stage, what: &str, e: KafkaError) -> PipelineError {
    let class = classify(&e);
    let code = e
        .rdkafka_error_code()
        .map(|c| format!("{c:?}"))
        .unwrap_or_else(|| "client".into());
    PipelineError::new(class, stage, format!("{what}: {e}"))
        .with_code(code)
        .with_source(e)
}

/// Creates the topics that are missing, with the configured partitions and
/// replication (compacted when `compact`). Topics that exist are left as
/// they are.
pub async fn ensure_topics(
    k: &KafkaConfig,
    names: &[String],
    compact: bool,
    stage: Stage,
) -> Result<(), PipelineError> {
    if names.is_empty() {
        return Ok(());
    }
    ensure_topics_with(&admin_client(k, stage)?, k, names, compact, stage).await
}

/// An admin client for [`ensure_topics_with`] (a librdkafka instance of its
/// own, with its threads and broker connections: worth keeping for a
/// process that ensures topics as it meets tables).
pub fn admin_client(
    k: &KafkaConfig,
    stage: Stage,
) -> Result<AdminClient<DefaultClientContext>, PipelineError> {
    admin_config(k)
        .create()
        .map_err(|e| kafka_err(stage, "create a Kafka admin client", e))
}

/// The settings of Ferry's admin clients: [`client_config`] with no extras.
pub fn admin_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(k, &Default::default());
    // Its metadata lookups must never create a topic (with the broker's
    // defaults) on a broker with `auto.create.topics.enable`: librdkafka
    // allows that by default for this (producer-type) handle.
    c.set("allow.auto.create.topics", "false");
    c
}

/// librdkafka's version and `builtin.features` (`ssl`, `sasl_scram`, …) as
/// linked into this binary.
pub fn librdkafka_build() -> (String, String) {
    let (_, version) = rdkafka::util::get_rdkafka_version();
    let features = ClientConfig::new()
        .create_native_config()
        .ok()
        .and_then(|c| c.get("builtin.features").ok())
        .unwrap_or_default();
    (version, features)
}

/// [`ensure_topics`] through an existing admin client.
pub async fn ensure_topics_with(
    admin: &AdminClient<DefaultClientContext>,
    k: &KafkaConfig,
    names: &[String],
    compact: bool,
    stage: Stage,
) -> Result<(), PipelineError> {
    if names.is_empty() {
        return Ok(());
    }
    // Only what is missing is created: a principal without the CREATE
    // permission (ACLs) can run on topics made for it beforehand, where
    // CreateTopics on an existing topic answers "not authorized" rather
    // than "already exists".
    let missing = blocking(|| missing_topics(admin.inner(), names, stage))?;
    if missing.is_empty() {
        return Ok(());
    }
    // Ferry's own compacted topics hold one small record per key: one
    // partition keeps them in one order.
    let partitions = if compact { 1 } else { k.partitions };
    let topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|n| {
            let t = NewTopic::new(n, partitions, TopicReplication::Fixed(k.replication_factor));
            if compact {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(topics.iter(), &opts)
        .await
        .map_err(|e| kafka_err(stage, "create Kafka topics", e))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                let e = KafkaError::AdminOp(code);
                return Err(kafka_err(stage, &format!("create Kafka topic {name}"), e));
            }
        }
    }
    Ok(())
}

/// Those of `names` the broker's metadata does not know. Any other error
/// on a topic (not authorized, for one) is returned as it is.
fn missing_topics<'a>(
    client: &rdkafka::client::Client<impl rdkafka::client::ClientContext>,
    names: &'a [String],
    stage: Stage,
) -> Result<Vec<&'a String>, PipelineError> {
    let mut missing = Vec::new();
    for name in names {
        let md = client
            .fetch_metadata(Some(name), Duration::from_secs(10))
            .map_err(|e| kafka_err(stage, &format!("read metadata of topic {name}"), e))?;
        let topic = md.topics().iter().find(|t| t.name() == name);
        match topic.map(|t| t.error().map(RDKafkaErrorCode::from)) {
            None | Some(Some(RDKafkaErrorCode::UnknownTopicOrPartition)) => missing.push(name),
            // A topic another process is creating exists already.
            Some(None | Some(RDKafkaErrorCode::LeaderNotAvailable)) => {}
            Some(Some(code)) => {
                let e = KafkaError::MetadataFetch(code);
                return Err(kafka_err(stage, &format!("topic {name}"), e));
            }
        }
    }
    Ok(missing)
}

/// Runs a blocking librdkafka call (a metadata request waits for the
/// broker) without stalling the other tasks of a multi-threaded runtime.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Partitions of `topic`, from the broker's metadata.
pub fn partition_count(
    client: &rdkafka::client::Client<impl rdkafka::client::ClientContext>,
    topic: &str,
    stage: Stage,
) -> Result<usize, PipelineError> {
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| kafka_err(stage, &format!("read metadata of topic {topic}"), e))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| PipelineError::fatal(stage, format!("topic {topic} does not exist")))?;
    if let Some(e) = t.error() {
        let e = KafkaError::MetadataFetch(e.into());
        return Err(kafka_err(stage, &format!("topic {topic}"), e));
    }
    Ok(t.partitions().len())
}

/// Runs `source` into Kafka (`ferry run --role source`) until `shutdown`
/// (Ok) or an error that cannot be retried.
pub async fn run_source<S: crate::source::Source>(
    source: S,
    k: &KafkaConfig,
    opts: crate::runtime::RuntimeOptions,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let topics = Topics::new(&k.topic_prefix);
    let mut own = vec![topics.checkpoints()];
    if k.schema_registry_url.is_none() && k.encoding == crate::envelope::Encoding::Avro {
        own.push(topics.schemas());
    }
    let mut backoff = crate::error::retry_backoff(opts.max_retry_delay);
    let checkpoint = loop {
        let attempt = async {
            // Both at once: each costs a librdkafka client's start (about
            // 0.1 s), and on a restart the topics are there already. On a
            // first start the read may fail for want of the topic; it is
            // read again once the topic exists.
            let (ensured, loaded) = tokio::join!(
                ensure_topics(k, &own, true, Stage::Source),
                source_checkpoint::load(k, &opts.pipeline)
            );
            ensured?;
            match loaded {
                Ok(c) => Ok(c),
                Err(_) => source_checkpoint::load(k, &opts.pipeline).await,
            }
        };
        match attempt.await {
            Ok(c) => break c,
            Err(e) if e.disposition() == crate::error::Disposition::Retry => {
                crate::runtime::wait_retry(&e, &mut backoff, shutdown.clone()).await?;
            }
            Err(e) => return Err(e),
        }
    };
    tracing::info!(
        resume_from = %checkpoint.resume_point(),
        snapshots_done = checkpoint.snapshots.len(),
        "loaded the source checkpoint from Kafka"
    );
    let (bus_tx, bus_rx) = crate::channel::bounded(opts.bus_capacity);
    let (ack_tx, ack_rx) = tokio::sync::watch::channel(crate::event::SourceAck(0));
    let downstream = producer::spawn(k, &opts.pipeline, bus_rx, ack_tx, checkpoint.clone())?;
    crate::runtime::drive_source(
        source, bus_tx, ack_rx, checkpoint, downstream, &opts, shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_kafka_safe() {
        let t = Topics::new("ferry");
        assert_eq!(
            t.data(&TableId::new("public", "orders")),
            "ferry.public.orders"
        );
        assert_eq!(t.data(&TableId::new("my db", "a.b$c")), "ferry.my_db.a_b_c");
        assert_eq!(t.schemas(), "ferry._schemas");
        assert_eq!(t.checkpoints(), "ferry._checkpoints");
    }

    fn secured() -> KafkaConfig {
        let text = r#"
brokers = "b1:9093"
client = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-256", "sasl.username" = "ferry", "sasl.password" = "pw", "ssl.ca.location" = "/ca.pem" }
producer = { "linger.ms" = "7" }
consumer = { "fetch.min.bytes" = "2" }
"#;
        toml::from_str(text).unwrap()
    }

    #[test]
    fn every_client_gets_the_users_security() {
        let k = secured();
        let admin = admin_config(&k);
        let producer = producer::producer_config(&k);
        let consumer = client_config(&k, &k.consumer);
        for (name, c) in [
            ("admin", &admin),
            ("producer", &producer),
            ("consumer", &consumer),
        ] {
            assert_eq!(c.get("security.protocol"), Some("SASL_SSL"), "{name}");
            assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-256"), "{name}");
            assert_eq!(c.get("sasl.password"), Some("pw"), "{name}");
            assert_eq!(c.get("ssl.ca.location"), Some("/ca.pem"), "{name}");
            assert_eq!(c.get("bootstrap.servers"), Some("b1:9093"), "{name}");
        }
        assert_eq!(producer.get("linger.ms"), Some("7"));
        assert_eq!(admin.get("linger.ms"), None);
        assert_eq!(consumer.get("fetch.min.bytes"), Some("2"));
    }

    #[test]
    fn librdkafka_speaks_tls_and_sasl() {
        let (version, features) = librdkafka_build();
        let features: Vec<&str> = features.split(',').collect();
        for f in [
            "ssl",
            "sasl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
        ] {
            assert!(
                features.contains(&f),
                "librdkafka {version}: {features:?} lacks {f}"
            );
        }
        // The properties librdkafka refuses without them are accepted.
        let mut k = secured();
        k.client.0.remove("ssl.ca.location");
        admin_config(&k)
            .create::<AdminClient<DefaultClientContext>>()
            .expect("a SASL_SSL client can be created");
    }

    #[test]
    fn classification() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(classify(&e), ErrorClass::Transient);
        let e = KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange);
        assert_eq!(classify(&e), ErrorClass::Fatal);
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert_eq!(classify(&e), ErrorClass::Fatal);
    }
}
