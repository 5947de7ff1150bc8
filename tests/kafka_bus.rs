//! The Kafka bus under failure: the source and the workers as separate
//! processes, killed with -9 while traffic flows; two workers rebalancing
//! partitions between them; a broker that goes away and comes back; a
//! topic that vanishes; a broker that loses everything.
//!
//! These always run on a broker of their own (whatever `FERRY_TEST_BUS`
//! says). Each ends with a row-by-row comparison of source and target, and
//! a target-side audit proves that no row was ever written with an older or
//! the same version again: nothing was lost, nothing applied twice, no row
//! moved back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use crate::support::kafka::KafkaBroker;
use crate::support::{Ferry, Pair};

const TABLE: &str = "public.accounts";
const ROWS: i64 = 3_000;

/// A pair with a broker, whatever bus the suite runs on.
async fn pair_with_broker(prefix: &str) -> Pair {
    let mut pair = Pair::start(prefix).await;
    if pair.kafka.is_none() {
        pair.kafka = Some(
            tokio::task::spawn_blocking(KafkaBroker::start)
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        );
    }
    pair
}

/// The pair's config with `partitions` partitions per data topic.
fn config(pair: &Pair, partitions: i32) -> PathBuf {
    let path = pair.config(&[TABLE], "batch_size = 500", "");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("partitions = 1"), "{text}");
    let text = text.replace("partitions = 1", &format!("partitions = {partitions}"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Source table with a version per row, and on the target an audit of
/// every write that did not move a row forward.
async fn setup(pair: &Pair) {
    pair.src()
        .await
        .batch_execute(&format!(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, version bigint NOT NULL, balance numeric(20,2) NOT NULL, note text);
             INSERT INTO accounts SELECT g, 1, g * 1.25, 'seed' FROM generate_series(1, {ROWS}) g;"
        ))
        .await
        .unwrap();
    // Created by hand so that the audit trigger exists before the first
    // row arrives (Ferry only adds what is missing).
    pair.dst()
        .await
        .batch_execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, version bigint NOT NULL, balance numeric(20,2) NOT NULL, note text);
             CREATE TABLE audit_backwards (id bigint, old_version bigint, new_version bigint, at timestamptz DEFAULT now());
             CREATE FUNCTION audit_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.version <= OLD.version THEN
                 INSERT INTO audit_backwards (id, old_version, new_version) VALUES (OLD.id, OLD.version, NEW.version);
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER audit BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION audit_accounts();",
        )
        .await
        .unwrap();
}

/// Small transactions that update (version + 1), insert and delete rows
/// until stopped; returns how many it committed.
fn traffic(url: String, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let client = ferry_postgres_source::connect(&url).await.expect("connect");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut next_id = ROWS + 1;
        let mut committed = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let mut sql = String::from("BEGIN;");
            for _ in 0..20 {
                let id = rng.random_range(1..next_id);
                match rng.random_range(0..10) {
                    0 => sql.push_str(&format!("DELETE FROM accounts WHERE id = {id};")),
                    1 | 2 => {
                        sql.push_str(&format!(
                            "INSERT INTO accounts VALUES ({next_id}, 1, {}.{:02}, 'new');",
                            rng.random_range(0..100_000),
                            rng.random_range(0..100)
                        ));
                        next_id += 1;
                    }
                    _ => sql.push_str(&format!(
                        "UPDATE accounts SET version = version + 1, balance = balance + 1.01 WHERE id = {id};"
                    )),
                }
            }
            sql.push_str("COMMIT;");
            client.batch_execute(&sql).await.expect("traffic");
            committed += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        committed
    })
}

async fn assert_never_backwards(pair: &Pair) {
    let rows = pair
        .dst()
        .await
        .query(
            "SELECT id, old_version, new_version FROM audit_backwards LIMIT 10",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(i64, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        seen.is_empty(),
        "rows written again with an older or the same version (id, old, new): {seen:?}"
    );
}

/// [`Pair::wait_equal`] that shows the processes' logs when it fails.
async fn wait_equal(pair: &Pair, procs: &[&Ferry], timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match pair.compare(&[TABLE]).await {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => {
                let mut logs: Vec<String> = procs.iter().map(|f| f.log_text()).collect();
                if let Ok(dir) = std::env::var("FERRY_TEST_KEEP_LOGS") {
                    for (i, l) in logs.iter().enumerate() {
                        let _ = std::fs::write(format!("{dir}/proc{i}.log"), l);
                    }
                }
                if let Some(k) = &pair.kafka {
                    logs.push(format!("broker:\n{}", k.log_tail(80)));
                }
                panic!(
                    "target never matched source: {e}\n\nlogs:\n{}",
                    logs.join("\n-----\n")
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn alive(f: &mut Ferry, what: &str) {
    assert!(f.exited().is_none(), "{what} exited: {}", f.log_text());
}

fn spawn(config: &Path, role: &str) -> Ferry {
    Ferry::spawn_with(config, &["--role", role])
}

/// Source and worker in separate processes; each is killed with -9 twice
/// while traffic flows, and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_worker_and_source_loses_nothing() {
    let pair = pair_with_broker("kbkill").await;
    setup(&pair).await;
    let cfg = config(&pair, 2);
    let mut source = spawn(&cfg, "source");
    let mut worker = spawn(&cfg, "worker");
    pair.wait_equal(&[TABLE], Duration::from_secs(90)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(pair.source.url(&pair.db), Arc::clone(&stop));
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        alive(&mut worker, "worker");
        worker.kill9();
        tokio::time::sleep(Duration::from_millis(700)).await;
        worker = spawn(&cfg, "worker");
        tokio::time::sleep(Duration::from_millis(1500 + 300 * round)).await;
        alive(&mut source, "source");
        source.kill9();
        tokio::time::sleep(Duration::from_millis(500)).await;
        source = spawn(&cfg, "source");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let committed = load.await.unwrap();
    assert!(committed > 50, "traffic made {committed} transactions");
    pair.wait_equal(&[TABLE], Duration::from_secs(120)).await;
    assert_never_backwards(&pair).await;
    alive(&mut source, "source");
    alive(&mut worker, "worker");
}

/// Two workers on two partitions: a second worker joins while traffic
/// flows (the partitions are split), the first leaves (killed -9; the
/// second takes everything), and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_rebalance_under_traffic() {
    let pair = pair_with_broker("kbrebal").await;
    setup(&pair).await;
    let cfg = config(&pair, 2);
    let mut source = spawn(&cfg, "source");
    let mut a = spawn(&cfg, "worker");
    pair.wait_equal(&[TABLE], Duration::from_secs(90)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(pair.source.url(&pair.db), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut b = spawn(&cfg, "worker");
    // The join and the split take a few seconds with 6 s sessions.
    tokio::time::sleep(Duration::from_secs(6)).await;
    alive(&mut a, "worker a");
    alive(&mut b, "worker b");
    a.kill9();
    tokio::time::sleep(Duration::from_secs(8)).await;
    alive(&mut b, "worker b");
    let mut a = spawn(&cfg, "worker");
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    pair.wait_equal(&[TABLE], Duration::from_secs(120)).await;
    assert_never_backwards(&pair).await;
    let both = format!("{}\n{}", a.log_text(), b.log_text());
    assert!(
        both.contains("partitions assigned"),
        "no assignment logged:\n{both}"
    );
    alive(&mut a, "worker a");
    alive(&mut b, "worker b");
    alive(&mut source, "source");
}

/// A broker that restarts empty (memory-only storage): the offsets the
/// worker must resume from are gone. Ferry stops with a message saying so;
/// it never jumps to whatever is there now.
///
/// Ignored in the suite: about one run in five, librdkafka 2.12 itself
/// crashes (SIGSEGV in `rd_kafka_metadata_update_op`, an open librdkafka
/// bug: confluentinc/librdkafka#5280) on what the emptied tansu answers,
/// before Ferry's own check stops it. Run with `--ignored`. The same
/// failure runs in the suite on the mock cluster
/// ([`a_broker_that_lost_its_data_stops_the_worker`],
/// [`a_log_made_anew_stops_the_worker`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "librdkafka 2.12 can crash on an emptied tansu (confluentinc/librdkafka#5280)"]
async fn broker_that_lost_everything_stops_the_pipeline() {
    let mut pair = pair_with_broker("kblost").await;
    setup(&pair).await;
    let cfg = config(&pair, 1);
    let mut ferry = Ferry::spawn(&cfg);
    pair.wait_equal(&[TABLE], Duration::from_secs(90)).await;
    let broker = pair.kafka.as_mut().unwrap();
    tokio::task::block_in_place(|| broker.restart());
    pair.src()
        .await
        .batch_execute("UPDATE accounts SET version = version + 1 WHERE id <= 10")
        .await
        .unwrap();
    let status = tokio::task::block_in_place(|| ferry.wait_exit(Duration::from_secs(60)));
    let log = ferry.log_text();
    let status =
        status.unwrap_or_else(|| panic!("ferry kept running on an emptied broker:\n{log}"));
    assert!(!status.success(), "exit {status}:\n{log}");
    assert!(
        status.code() == Some(3),
        "ferry did not stop on its own error ({status}):\n{log}"
    );
    assert!(
        log.contains("no longer in Kafka")
            || log.contains("does not exist any more")
            || log.contains("UnknownProducerId")
            || log.contains("OutOfOrderSequence"),
        "no clear message:\n{log}"
    );
}

/// librdkafka's mock cluster: a Kafka-protocol broker that this test
/// process runs on a port of 127.0.0.1, with its log, offsets and groups in
/// memory. Unlike tansu it can be taken down and brought back with its data
/// (`broker_down` closes every connection and refuses new ones), and a
/// topic can be made to vanish from its metadata. It implements no
/// CreateTopics: [`mock_cluster`] creates the topics Ferry would, and
/// Ferry, finding them in the metadata, creates nothing.
type Mock = rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// The data topic of [`TABLE`] under `prefix`.
fn data_topic(prefix: &str) -> String {
    format!("{prefix}.public.accounts")
}

/// A one-broker mock cluster holding Ferry's topics for `prefix` (the data
/// topic with 2 partitions), and its port.
fn mock_cluster(prefix: &str) -> (Mock, u16) {
    let mock = Mock::new(1).expect("librdkafka mock cluster");
    let bootstrap = mock.bootstrap_servers();
    let port = bootstrap
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("mock bootstrap {bootstrap:?}"));
    for (topic, partitions) in [
        (data_topic(prefix), 2),
        (format!("{prefix}._schemas"), 1),
        (format!("{prefix}._checkpoints"), 1),
        (format!("{prefix}._dlq"), 2),
    ] {
        mock.create_topic(&topic, partitions, 1)
            .unwrap_or_else(|e| panic!("create {topic} on the mock: {e}"));
    }
    (mock, port)
}

/// A pair without a broker of its own (the test brings a mock), whatever
/// the bus, with [`setup`] done.
async fn pair_for_mock(prefix: &str) -> Pair {
    let mut pair = Pair::start(prefix).await;
    pair.kafka = None;
    setup(&pair).await;
    pair
}

/// Writes the pair's config for a Kafka bus on the mock at `port` (2
/// partitions, topic prefix `prefix`) to `path`, or to a new file.
fn mock_config(pair: &Pair, port: u16, prefix: &str, path: Option<&Path>) -> PathBuf {
    let fresh = pair.config(&[TABLE], "batch_size = 500", "");
    let text = std::fs::read_to_string(&fresh).unwrap();
    let text = crate::support::kafka::with_kafka_bus(&text, port, prefix, 2);
    let path = path.map_or(fresh, Path::to_path_buf);
    std::fs::write(&path, text).unwrap();
    path
}

/// A pipeline on a mock broker: a source and a worker (separate
/// processes) started and caught up with the seed.
struct OnMock {
    pair: Pair,
    prefix: String,
    mock: Mock,
    cfg: PathBuf,
    source: Ferry,
    worker: Ferry,
}

async fn start_on_mock(name: &str) -> OnMock {
    let pair = pair_for_mock(name).await;
    let prefix = format!("{}_mock", pair.db);
    let (mock, port) = mock_cluster(&prefix);
    let cfg = mock_config(&pair, port, &prefix, None);
    let source = spawn(&cfg, "source");
    let worker = spawn(&cfg, "worker");
    wait_equal(&pair, &[&source, &worker], Duration::from_secs(90)).await;
    OnMock {
        pair,
        prefix,
        mock,
        cfg,
        source,
        worker,
    }
}

/// [`start_on_mock`], then both processes killed with -9: the target holds
/// the seed and its progress, the mock the log it came from.
async fn caught_up_then_killed(name: &str) -> (Pair, String, Mock, PathBuf) {
    let mut m = start_on_mock(name).await;
    m.worker.kill9();
    m.source.kill9();
    (m.pair, m.prefix, m.mock, m.cfg)
}

/// The broker goes away for five seconds while traffic flows, then comes
/// back with everything it had: the source's deliveries wait and are
/// retried (the slot keeps what Kafka has not acknowledged), the worker
/// loses its connections and its group coordinator and resumes, and the
/// target ends equal, with nothing applied twice. On the mock (see
/// [`Mock`]): tansu restarts either empty (memory storage) or without its
/// consumer groups settling (SQLite, [`durable_broker_restart_loses_nothing`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_and_back_loses_nothing() {
    let OnMock {
        pair,
        mock,
        mut source,
        mut worker,
        ..
    } = start_on_mock("kbdown").await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(pair.source.url(&pair.db), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_secs(2)).await;
    mock.broker_down(1).expect("broker down");
    tokio::time::sleep(Duration::from_secs(5)).await;
    alive(&mut source, "source while the broker is down");
    alive(&mut worker, "worker while the broker is down");
    // The outage was real: what the traffic wrote meanwhile cannot have
    // reached the target.
    assert!(
        pair.compare(&[TABLE]).await.is_err(),
        "the target kept up while the broker was down"
    );
    mock.broker_up(1).expect("broker up");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let committed = load.await.unwrap();
    assert!(committed > 50, "traffic made {committed} transactions");
    wait_equal(&pair, &[&source, &worker], Duration::from_secs(120)).await;
    assert_never_backwards(&pair).await;
    alive(&mut source, "source");
    alive(&mut worker, "worker");
}

/// Waits for `f` to exit and asserts it stopped on its own error (exit 3)
/// with a log that says `says`.
fn assert_stops_saying(f: &mut Ferry, what: &str, says: &str) {
    let status = tokio::task::block_in_place(|| f.wait_exit(Duration::from_secs(60)));
    let log = f.log_text();
    let status = status.unwrap_or_else(|| panic!("{what} kept running:\n{log}"));
    assert_eq!(
        status.code(),
        Some(3),
        "{what} did not stop on its own error ({status}):\n{log}"
    );
    assert!(log.contains(says), "{what}: no {says:?} in its log:\n{log}");
}

/// The data topic disappears from the broker (deleted): the worker stops
/// with a message that says so, rather than waiting for a topic that
/// never comes back or starting over on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_topic_stops_the_worker() {
    let OnMock {
        pair: _pair,
        prefix,
        mock,
        source: _source,
        mut worker,
        ..
    } = start_on_mock("kbgone").await;
    mock.topic_error(
        &data_topic(&prefix),
        rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
    )
    .expect("topic error on the mock");
    assert_stops_saying(&mut worker, "worker", "does not exist any more");
}

/// The broker comes back empty (it lost its data) with the same topics:
/// the offsets the target's progress resumes from are past the end of the
/// new logs. A restarted worker stops with a message saying so; it never
/// jumps to whatever the topics hold now. The target keeps what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_its_data_stops_the_worker() {
    let (pair, prefix, mock, cfg) = caught_up_then_killed("kblost2").await;
    drop(mock);

    let (_empty, port) = mock_cluster(&prefix);
    mock_config(&pair, port, &prefix, Some(&cfg));
    let mut worker = spawn(&cfg, "worker");
    assert_stops_saying(&mut worker, "worker", "no longer in Kafka");
    pair.compare(&[TABLE])
        .await
        .unwrap_or_else(|e| panic!("the target changed: {e}"));
}

/// The broker comes back empty, and the source, restarted first, fills the
/// topics anew (it finds no checkpoint in Kafka: it copies every table
/// again) until they are longer than the target's progress. Offsets alone
/// would let a worker resume mid-log and miss the start of that copy; the
/// worker reads again the record it applied last, finds another one at its
/// offset, and stops. It applies nothing from the new log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_made_anew_stops_the_worker() {
    let (pair, prefix, mock, cfg) = caught_up_then_killed("kbanew").await;
    let ends = |mock: &Mock| -> Vec<i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .create()
            .expect("consumer for watermarks");
        (0..2)
            .map(|p| {
                c.fetch_watermarks(&data_topic(&prefix), p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect()
    };
    let before = tokio::task::block_in_place(|| ends(&mock));
    drop(mock);

    let (empty, port) = mock_cluster(&prefix);
    mock_config(&pair, port, &prefix, Some(&cfg));
    let source = spawn(&cfg, "source");
    // The copy alone makes a log as long as the old one (the same rows);
    // an update of every row after it makes it longer.
    let grown_to = |goal: Vec<i64>, strictly: bool| {
        let (empty, source) = (&empty, &source);
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let now = tokio::task::block_in_place(|| ends(empty));
                if now
                    .iter()
                    .zip(&goal)
                    .all(|(n, g)| if strictly { n > g } else { n >= g })
                {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the new log did not grow to {goal:?} ({now:?}):\n{}",
                    source.log_text()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    grown_to(before.clone(), false).await;
    pair.src()
        .await
        .batch_execute("UPDATE accounts SET version = version + 1")
        .await
        .unwrap();
    grown_to(before, true).await;
    let mut worker = spawn(&cfg, "worker");
    assert_stops_saying(&mut worker, "worker", "made anew");
    let moved: i64 = pair
        .dst()
        .await
        .query_one("SELECT count(*) FROM accounts WHERE version > 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(moved, 0, "the worker applied changes from the new log");
}

/// A durable broker (SQLite storage) stopped for a few seconds while
/// traffic flows, then started again: the source waits (its deliveries are
/// retried, the slot keeps what is not acknowledged), the worker
/// reconnects, and the target ends equal, with nothing applied twice.
///
/// Ignored in the suite: against tansu 0.6 with SQLite storage, the
/// producer recovers after the restart (librdkafka's debug log shows the
/// queued message sets delivered), but the consumer group never settles:
/// FindCoordinator keeps failing, the session times out and the group
/// rebalances every ~6 s, so the worker applies nothing (and loses
/// nothing: its progress stays in the sink). A broker that goes away and
/// comes back with its data runs in the suite on the mock cluster
/// ([`broker_down_and_back_loses_nothing`]). Debug with
/// FERRY_TEST_KAFKA_DEBUG=cgrp,fetch FERRY_TEST_RUST_LOG=info,librdkafka=debug
/// FERRY_TEST_KEEP_LOGS=/tmp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu 0.6 (SQLite): the consumer group never settles after a broker restart"]
async fn durable_broker_restart_loses_nothing() {
    let mut pair = Pair::start("kbrestart").await;
    pair.kafka = Some(
        tokio::task::spawn_blocking(KafkaBroker::start_durable)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
    );
    setup(&pair).await;
    let cfg = config(&pair, 2);
    if let Ok(debug) = std::env::var("FERRY_TEST_KAFKA_DEBUG") {
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "consumer = {",
            &format!("producer = {{ \"debug\" = \"{debug}\", \"log_level\" = \"7\" }}\nconsumer = {{ \"debug\" = \"{debug}\", \"log_level\" = \"7\", "),
        );
        std::fs::write(&cfg, text).unwrap();
    }
    let mut source = spawn(&cfg, "source");
    let mut worker = spawn(&cfg, "worker");
    pair.wait_equal(&[TABLE], Duration::from_secs(90)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(pair.source.url(&pair.db), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let broker = pair.kafka.as_mut().unwrap();
    tokio::task::block_in_place(|| broker.stop());
    tokio::time::sleep(Duration::from_secs(5)).await;
    alive(&mut source, "source while the broker is down");
    alive(&mut worker, "worker while the broker is down");
    let broker = pair.kafka.as_mut().unwrap();
    tokio::task::block_in_place(|| broker.restart());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    wait_equal(&pair, &[&source, &worker], Duration::from_secs(120)).await;
    assert_never_backwards(&pair).await;
    alive(&mut source, "source");
    alive(&mut worker, "worker");
}
