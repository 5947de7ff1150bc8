//! `ferry check` for the Kafka bus: the brokers answer Ferry's admin client
//! (with the user's `[kafka.client]` security, as every client gets it),
//! and the topics Ferry will use exist or can be created.
//!
//! ACLs: the Rust client has no DescribeAcls, so they are checked where
//! they show: a topic the principal may not describe comes back from the
//! metadata request as "not authorized", which is reported as such.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer as _, ProducerContext};

use super::{admin_config, blocking, librdkafka_build, LogContext};
use crate::config::KafkaConfig;
use crate::prerequisite::Finding;

/// How long the brokers may take to answer the metadata request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps librdkafka's reports of failed connections (they name the broker
/// and the cause: `sasl_ssl://b1:9093/bootstrap: SSL handshake failed: …`),
/// which a failed request's own error (`broker transport failure`) does
/// not. They come as log lines (delivered from librdkafka's threads) and,
/// when the client is polled, as errors.
#[derive(Default)]
struct Reports(Mutex<Vec<String>>);

impl Reports {
    fn keep(&self, line: &str) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // The same failure repeats on every reconnect.
        if !seen.iter().any(|s| s == line) && seen.len() < 4 {
            seen.push(line.to_string());
        }
    }

    fn text(&self) -> String {
        self.0.lock().map(|r| r.join("; ")).unwrap_or_default()
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

impl ClientContext for Reports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        // Connection failures (facility FAIL) are errors; warnings are
        // advice (CONFWARN) that would hide them.
        if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error) {
            self.keep(msg);
        }
        LogContext.log(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if reason.is_empty() {
            self.keep(&error.to_string());
        } else {
            self.keep(reason);
        }
    }
}

/// The topics a pipeline over `tables` uses: one per table (none listed
/// for a MongoDB source that mirrors every collection), then Ferry's own.
pub fn used_topics(k: &KafkaConfig, tables: &[crate::event::TableId]) -> Vec<String> {
    let topics = super::Topics::new(&k.topic_prefix);
    let mut out: Vec<String> = tables.iter().map(|t| topics.data(t)).collect();
    out.push(topics.checkpoints());
    out.push(topics.dlq());
    if k.schema_registry_url.is_none() && k.encoding == crate::envelope::Encoding::Avro {
        out.push(topics.schemas());
    }
    out
}

/// The findings for `[kafka]` and the `topics` Ferry will produce to or
/// consume from (its own topics included).
pub fn findings(k: &KafkaConfig, topics: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    let (version, features) = librdkafka_build();
    let protocol = k
        .client
        .get("security.protocol")
        .map_or("plaintext", String::as_str)
        .to_ascii_lowercase();
    out.push(Finding::pass(
        "kafka client",
        format!("librdkafka {version} ({features}); security.protocol = {protocol}"),
    ));
    // The admin clients' settings, on the kind of handle librdkafka's admin
    // clients are (a producer's), which unlike rdkafka's AdminClient can
    // be polled for librdkafka's reports. Nothing is produced.
    let admin: BaseProducer<Reports> = match admin_config(k).create_with_context(Reports::default())
    {
        Ok(a) => a,
        Err(e) => {
            // A bad property (an unreadable ssl.ca.location, an unknown
            // sasl.mechanism) is refused here, with librdkafka's reason.
            out.push(Finding::fail(
                "kafka client",
                format!("[kafka.client]: {e}"),
            ));
            return out;
        }
    };
    // Asked again every 2 s until an answer, a reported failure (a TLS or
    // SASL error will not go away by waiting), or the timeout.
    let started = std::time::Instant::now();
    let metadata = loop {
        let md = blocking(|| {
            admin
                .client()
                .fetch_metadata(None, Duration::from_secs(2).min(METADATA_TIMEOUT))
        });
        admin.poll(Duration::ZERO);
        let reported = !admin.context().text().is_empty();
        if md.is_ok() || reported || started.elapsed() >= METADATA_TIMEOUT {
            break md;
        }
    };
    let md = match metadata {
        Ok(md) => md,
        Err(e) => {
            let reports = admin.context().text();
            let why = if reports.is_empty() {
                // A TLS client facing a plaintext listener (or the other way
                // round) often hears nothing back.
                format!("{e} (does the listener speak {protocol}?)")
            } else {
                format!("{e}: {reports}")
            };
            out.push(Finding::fail(
                "kafka brokers",
                format!(
                    "no answer from {} over {protocol} in {:.0?}: {why}",
                    k.brokers,
                    started.elapsed()
                ),
            ));
            return out;
        }
    };
    let brokers: Vec<String> = md
        .brokers()
        .iter()
        .map(|b| format!("{}@{}:{}", b.id(), b.host(), b.port()))
        .collect();
    out.push(Finding::pass(
        "kafka brokers",
        format!(
            "{} answered over {protocol}: {}",
            k.brokers,
            brokers.join(", ")
        ),
    ));
    for name in topics {
        let subject = format!("kafka topic {name}");
        // One request per topic: a cluster-wide listing leaves out the
        // topics the principal may not describe, where this one names them.
        let md = match blocking(|| admin.client().fetch_metadata(Some(name), METADATA_TIMEOUT)) {
            Ok(md) => md,
            Err(e) => {
                out.push(Finding::fail(subject, e.to_string()));
                continue;
            }
        };
        let topic = md.topics().iter().find(|t| t.name() == name);
        match topic.map(|t| (t.partitions().len(), t.error().map(RDKafkaErrorCode::from))) {
            Some((n, None)) => out.push(Finding::pass(subject, format!("{n} partitions"))),
            None | Some((_, Some(RDKafkaErrorCode::UnknownTopicOrPartition))) => {
                out.push(Finding::pass(
                    subject,
                    "does not exist yet: Ferry creates it at start \
                     (the principal needs CREATE on it, or create it beforehand)",
                ))
            }
            Some((_, Some(code @ RDKafkaErrorCode::TopicAuthorizationFailed))) => {
                out.push(Finding::fail(
                    subject,
                    format!(
                        "{code}: grant the principal DESCRIBE, READ and WRITE on it \
                         (and CREATE, unless it is created beforehand)"
                    ),
                ))
            }
            Some((_, Some(code))) => out.push(Finding::fail(subject, code.to_string())),
        }
    }
    out
}
