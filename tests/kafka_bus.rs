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
use crate::support::{wait_for, ConfigBuilder, Ferry, Pair};

const TABLE: &str = "public.accounts";
const ROWS: i64 = 3_000;

/// A pair with a broker, whatever bus the suite runs on.
pub(crate) async fn pair_with_broker(prefix: &str) -> Pair {
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
    ConfigBuilder::new(pair)
        .tables(&[TABLE])
        .batch_size(500)
        .partitions(partitions)
        .build()
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

/// A copy of `cfg` for the worker called `name`: its sink connects with
/// `application_name = <name>`, which [`audit_offsets`] records with each
/// write of a partition's progress. Same pipeline, group and topics.
fn worker_config(pair: &Pair, cfg: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(cfg).unwrap();
    let url = format!("url = \"{}\"", pair.target.url(&pair.db));
    assert_eq!(text.matches(&url).count(), 1, "one sink url in:\n{text}");
    let named = format!(
        "url = \"{}?application_name={name}\"",
        pair.target.url(&pair.db)
    );
    let path = cfg.with_file_name(format!("{name}.toml"));
    std::fs::write(&path, text.replacen(&url, &named, 1)).unwrap();
    path
}

/// On the target, every write of a worker's progress in
/// `ferry_bus_offsets` (a partition's next offset, committed with the
/// batch it covers), with the `application_name` of the worker that wrote
/// it: which worker applied which partition, and when (`seq`). Created
/// once Ferry has created `ferry_bus_offsets`.
async fn audit_offsets(pair: &Pair) {
    pair.dst()
        .await
        .batch_execute(
            "CREATE TABLE offset_writes (seq bigserial PRIMARY KEY, app text NOT NULL,
                 partition int NOT NULL, old_next bigint, new_next bigint NOT NULL);
             CREATE FUNCTION audit_offsets() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO offset_writes (app, partition, old_next, new_next)
               VALUES (current_setting('application_name'), NEW.partition,
                       CASE WHEN TG_OP = 'UPDATE' THEN OLD.next_offset END, NEW.next_offset);
               RETURN NULL;
             END $$;
             CREATE TRIGGER audit AFTER INSERT OR UPDATE ON ferry_bus_offsets FOR EACH ROW
               WHEN (NEW.topic LIKE '%.public.accounts') EXECUTE FUNCTION audit_offsets();",
        )
        .await
        .unwrap();
}

/// The partitions whose progress worker `app` wrote after `seq`.
async fn applied_by(pair: &Pair, app: &str, after: i64) -> Vec<i32> {
    pair.dst()
        .await
        .query(
            "SELECT DISTINCT partition FROM offset_writes WHERE app = $1 AND seq > $2 ORDER BY 1",
            &[&app, &after],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The last `seq` of [`audit_offsets`] (0 before any write).
async fn last_write(pair: &Pair) -> i64 {
    pair.dst()
        .await
        .query_one("SELECT coalesce(max(seq), 0) FROM offset_writes", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether `newcomer` and `incumbent` split the partitions: since the
/// newcomer's first write, each applied a partition the other did not.
async fn split(pair: &Pair, newcomer: &str, incumbent: &str) -> bool {
    let first: Option<i64> = pair
        .dst()
        .await
        .query_one(
            "SELECT min(seq) FROM offset_writes WHERE app = $1",
            &[&newcomer],
        )
        .await
        .unwrap()
        .get(0);
    let Some(first) = first else { return false };
    let new = applied_by(pair, newcomer, first - 1).await;
    let old = applied_by(pair, incumbent, first).await;
    new.iter().any(|p| !old.contains(p)) && old.iter().any(|p| !new.contains(p))
}

/// Every write of a partition's progress moved it forward: no range of
/// offsets was applied twice, by one worker or two.
async fn assert_offsets_only_forward(pair: &Pair) {
    let rows = pair
        .dst()
        .await
        .query(
            "SELECT app, partition, old_next, new_next FROM offset_writes
              WHERE new_next <= old_next ORDER BY seq LIMIT 10",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, i32, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert!(
        seen.is_empty(),
        "progress written again or backwards (worker, partition, old, new): {seen:?}"
    );
}

/// Two workers on two partitions, while traffic flows: a second worker
/// joins and takes one partition (each then applies one of them), the
/// first leaves (killed -9: the second applies both), and comes back (the
/// partitions split again). Each step waits for what the target shows:
/// the workers' progress rows in `ferry_bus_offsets`, audited with the
/// name of the worker that wrote them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_rebalance_under_traffic() {
    let pair = pair_with_broker("kbrebal").await;
    setup(&pair).await;
    let cfg = config(&pair, 2);
    let mut source = spawn(&cfg, "source");
    let mut a = spawn(&worker_config(&pair, &cfg, "first"), "worker");
    wait_equal(&pair, &[&source, &a], Duration::from_secs(90)).await;
    audit_offsets(&pair).await;
    let both = || vec![0, 1];
    let wait = Duration::from_secs(60);

    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(pair.source.url(&pair.db), Arc::clone(&stop));
    wait_for(
        "the first worker applying both partitions",
        &a,
        wait,
        || async { applied_by(&pair, "first", 0).await == both() },
    )
    .await;

    let mut b = spawn(&worker_config(&pair, &cfg, "second"), "worker");
    wait_for("the second worker taking a partition", &b, wait, || async {
        split(&pair, "second", "first").await
    })
    .await;
    assert!(
        b.log_text().contains("partitions assigned"),
        "the second worker applied without an assignment logged:\n{}",
        b.log_text()
    );
    assert!(
        a.log_text().contains("partitions revoked"),
        "the first worker gave up a partition without a revocation logged:\n{}",
        a.log_text()
    );
    alive(&mut a, "first worker");
    alive(&mut b, "second worker");

    a.kill9();
    let killed_at = last_write(&pair).await;
    wait_for(
        "the second worker applying both partitions",
        &b,
        wait,
        || async { applied_by(&pair, "second", killed_at).await == both() },
    )
    .await;
    alive(&mut b, "second worker");

    let mut a = spawn(&worker_config(&pair, &cfg, "first_again"), "worker");
    wait_for(
        "the first worker back with a partition",
        &a,
        wait,
        || async { split(&pair, "first_again", "second").await },
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    let committed = load.await.unwrap();
    assert!(committed > 50, "traffic made {committed} transactions");
    wait_equal(&pair, &[&source, &a, &b], Duration::from_secs(120)).await;
    assert_never_backwards(&pair).await;
    assert_offsets_only_forward(&pair).await;
    alive(&mut a, "first worker, back");
    alive(&mut b, "second worker");
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
    let fresh = ConfigBuilder::new(pair)
        .tables(&[TABLE])
        .batch_size(500)
        .build();
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
/// new logs. A restarted worker stops with a message saying so (and naming
/// `ferry kafka reset`); it never jumps to whatever the topics hold now.
/// The target keeps what it had. Then `ferry kafka reset` (refused while
/// workers may be running, unless forced) and a restart start the pipeline
/// over: the target ends equal to the source, rows deleted in between
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_its_data_stops_the_worker() {
    let (pair, prefix, mock, cfg) = caught_up_then_killed("kblost2").await;
    drop(mock);

    let (_empty, port) = mock_cluster(&prefix);
    mock_config(&pair, port, &prefix, Some(&cfg));
    let mut worker = spawn(&cfg, "worker");
    assert_stops_saying(&mut worker, "worker", "no longer in Kafka");
    assert!(
        worker.log_text().contains("ferry kafka reset"),
        "the message names the command that starts over"
    );
    pair.compare(&[TABLE])
        .await
        .unwrap_or_else(|e| panic!("the target changed: {e}"));

    // Starting over: rows deleted meanwhile must not stay in the target.
    pair.src()
        .await
        .batch_execute("DELETE FROM accounts WHERE id % 5 = 0")
        .await
        .unwrap();
    let path = cfg.to_str().unwrap();
    let (code, out) = crate::support::ferry_cmd(&["kafka", "reset", "--config", path, "--yes"]);
    assert_ne!(code, 0, "refused right after the workers stopped: {out}");
    assert!(out.contains("stop its workers first"), "{out}");
    let (code, out) =
        crate::support::ferry_cmd(&["kafka", "reset", "--config", path, "--yes", "--force"]);
    assert_eq!(code, 0, "{out}");
    let source = spawn(&cfg, "source");
    let worker = spawn(&cfg, "worker");
    wait_equal(&pair, &[&source, &worker], Duration::from_secs(90)).await;
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
