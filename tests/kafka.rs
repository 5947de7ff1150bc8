//! The Kafka test broker itself (tests/support/kafka.rs): it starts, and
//! serves what Ferry's Kafka bus relies on through librdkafka, the client
//! Ferry uses. Runs on either bus.

use std::time::{Duration, Instant};

use ferry_pipeline::config::{BusKind, Config};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::support::kafka::{kafka_toml, with_kafka_bus, KafkaBroker};

/// Topic creation through the admin API, idempotent produce, a consumer
/// group that reads it all back and commits, the committed offset read back
/// from the broker; then a restart, which (memory-only storage) loses the
/// topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_starts_and_accepts_produce_fetch() {
    let started = Instant::now();
    let mut broker = tokio::task::spawn_blocking(KafkaBroker::start)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let start_time = started.elapsed();
    let bootstrap = broker.bootstrap();
    let topic = "ferry_harness.public.items";

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("CreateTopics request");
    assert_eq!(created.len(), 1);
    if let Err((name, code)) = &created[0] {
        panic!(
            "create topic {name}: {code}\nbroker log:\n{}",
            broker.log_tail(30)
        );
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    for i in 0..10i64 {
        let key = format!("k{i}");
        let payload = format!("v{i}");
        let (partition, offset) = producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map(|d| (d.partition, d.offset))
            .unwrap_or_else(|(e, _)| {
                panic!("produce {i}: {e}\nbroker log:\n{}", broker.log_tail(30))
            });
        assert_eq!((partition, offset), (0, i), "message {i}");
    }

    let group = format!("ferry_harness_{}", std::process::id());
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // ~3 s to join the group instead of ~20 s with the defaults.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let consume_started = Instant::now();
    for i in 0..10i64 {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no message {i} within 30 s\nbroker log:\n{}",
                    broker.log_tail(30)
                )
            })
            .expect("consume");
        assert_eq!(msg.offset(), i);
        assert_eq!(msg.key(), Some(format!("k{i}").as_bytes()));
        assert_eq!(msg.payload(), Some(format!("v{i}").as_bytes()));
        if i == 9 {
            consumer
                .commit_message(&msg, CommitMode::Sync)
                .expect("commit offset");
        }
    }
    let consume_time = consume_started.elapsed();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("fetch committed offsets");
    assert_eq!(
        committed.find_partition(topic, 0).map(|p| p.offset()),
        Some(Offset::Offset(10)),
        "committed offset"
    );
    drop(consumer);

    // Memory-only: the restarted broker answers on the same port, empty.
    let restart_started = Instant::now();
    tokio::task::block_in_place(|| broker.restart());
    let restart_time = restart_started.elapsed();
    let md =
        tokio::task::block_in_place(|| admin.inner().fetch_metadata(None, Duration::from_secs(10)))
            .expect("metadata after restart");
    assert!(
        md.topics().iter().all(|t| t.name() != topic),
        "the topic survived a restart of the memory-only broker: {:?}",
        md.topics().iter().map(|t| t.name()).collect::<Vec<_>>()
    );
    eprintln!(
        "kafka broker: start {start_time:?}, group join + 10 messages {consume_time:?}, \
         restart {restart_time:?}, total {:?}",
        started.elapsed()
    );
}

/// The configs the fixtures write on the Kafka bus: one `bus` key in
/// `[pipeline]`, and a `[kafka]` section Ferry accepts.
#[test]
fn kafka_bus_config_is_valid() {
    let base = r#"
[pipeline]
name = "test"
batch_linger_ms = 10
{extra}

[source]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:5432/a"
tables = ["public.items"]

[sink]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:5433/b"
"#;
    let env = |_: &str| None;
    let text = with_kafka_bus(&base.replace("{extra}", ""), 9092, "t_1", 2);
    assert_eq!(text.matches("bus =").count(), 1, "{text}");
    let config = Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    assert_eq!(config.pipeline.bus, BusKind::Kafka);
    let kafka = config.kafka.expect("[kafka]");
    assert_eq!(kafka.brokers, "127.0.0.1:9092");
    assert_eq!(kafka.topic_prefix, "t_1");
    assert_eq!(kafka.partitions, 2);
    assert_eq!(
        kafka.consumer.get("session.timeout.ms").map(String::as_str),
        Some("6000")
    );

    // A test that names the bus keeps its choice.
    let text = with_kafka_bus(
        &base.replace("{extra}", "bus = \"embedded\""),
        9092,
        "t_2",
        1,
    );
    assert_eq!(text.matches("bus =").count(), 1, "{text}");
    let config = Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    assert_eq!(config.pipeline.bus, BusKind::Embedded);
    assert!(kafka_toml(9092, "p", 1).contains("topic_prefix = \"p\""));
}

/// `ferry check` on the Kafka bus passes against a plain broker: the
/// brokers answer Ferry's admin client, the topics it will use are listed,
/// and the binary's librdkafka speaks TLS and SASL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_against_a_plain_broker() {
    let mut pair = crate::support::Pair::start("kcheck").await;
    if pair.kafka.is_none() {
        pair.kafka = Some(
            tokio::task::spawn_blocking(KafkaBroker::start)
                .await
                .expect("broker"),
        );
    }
    pair.src()
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let config = crate::support::ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .build();
    let (code, out) = crate::support::ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let client = out
        .lines()
        .find(|l| l.starts_with("[ ok ] kafka client: librdkafka"))
        .unwrap_or_else(|| panic!("no kafka client line:\n{out}"));
    for feature in ["ssl", "sasl_plain", "sasl_scram", "sasl_oauthbearer"] {
        assert!(
            client.split([' ', ',', '(', ')']).any(|w| w == feature),
            "{feature} missing: {client}"
        );
    }
    let port = pair.kafka.as_ref().unwrap().port;
    for line in [
        format!("[ ok ] kafka brokers: 127.0.0.1:{port} answered over plaintext"),
        "[ ok ] kafka topic ".to_string(),
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&line)),
            "missing {line:?}:\n{out}"
        );
    }
    assert!(out.contains(".public.items: "), "{out}");
}

/// The admin client reaches the brokers with the user's `[kafka.client]`
/// security: configured for SASL against a plaintext listener, `ferry
/// check` fails with a finding that names the broker and the broker's own
/// answer to the SASL handshake (so the handshake was sent), and never
/// prints the SASL password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_clearly_when_the_broker_does_not_speak_the_configured_security() {
    let broker = tokio::task::spawn_blocking(KafkaBroker::start)
        .await
        .expect("broker");
    let dir = tempfile::tempdir().unwrap();
    let base = r#"
[pipeline]
name = "sec"

[source]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:1/a"
tables = ["public.items"]

[sink]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:1/b"
"#;
    let text = format!(
        "{}client = {{ \"security.protocol\" = \"SASL_PLAINTEXT\", \"sasl.mechanism\" = \"PLAIN\", \
         \"sasl.username\" = \"ferry\", \"sasl.password\" = \"hunter2-kafka\" }}\n",
        with_kafka_bus(base, broker.port, "sec", 1)
    );
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    let started = Instant::now();
    let (code, out) = crate::support::ferry_cmd(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("[FAIL] kafka brokers"))
        .unwrap_or_else(|| panic!("no failed kafka brokers finding:\n{out}"));
    assert!(
        line.contains(&format!("127.0.0.1:{}", broker.port)),
        "{line}"
    );
    assert!(line.contains("over sasl_plaintext"), "{line}");
    assert!(
        line.contains("SASL PLAIN mechanism handshake failed"),
        "{line}"
    );
    assert!(!out.contains("hunter2"), "{out}");
    // The broker's answer ends the wait (no 10 s timeout).
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}
