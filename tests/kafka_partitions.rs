//! The Kafka bus on several partitions per topic: the target ends equal
//! to the source, row for row, under key changes (across partitions, back
//! and forth, with a unique column keeping its value), TRUNCATEs, deletes
//! and re-inserts of the same key, snapshots interrupted by kill -9, and
//! kill -9 of the source and of workers (issue #24). Also: a worker that
//! waits for an assignment says so, and the test broker's known quirks
//! (so that a broker change is noticed: docs/kafka.md, "Tested against").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_pipeline::bus::kafka::partitioner::partition_for;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::support::kafka::KafkaBroker;
use crate::support::{wait_for, ConfigBuilder, Ferry, Pair};

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

fn config(pair: &Pair, table: &str, partitions: i32) -> PathBuf {
    ConfigBuilder::new(pair)
        .tables(&[table])
        .batch_size(200)
        .partitions(partitions)
        .build()
}

/// The data topic of `public.<table>` for configs of [`config`].
fn topic(pair: &Pair, table: &str) -> String {
    format!("{}_test.public.{table}", pair.db)
}

fn spawn(cfg: &Path, role: &str) -> Ferry {
    Ferry::spawn_with(cfg, &["--role", role])
}

fn alive(f: &mut Ferry, what: &str) {
    assert!(f.exited().is_none(), "{what} exited: {}", f.log_text());
}

/// Waits until source and target hold the same rows of `table`; on a
/// timeout, fails with the difference and the processes' logs.
async fn wait_equal(pair: &Pair, table: &str, procs: &[&Ferry], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match pair.compare(&[table]).await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                let logs: Vec<String> = procs.iter().map(|f| f.log_text()).collect();
                panic!(
                    "target never matched source: {e}\n\nlogs:\n{}",
                    logs.join("\n-----\n")
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn dlq_records(pair: &Pair) -> i64 {
    pair.dst()
        .await
        .query_one("SELECT count(*) FROM ferry_dlq", &[])
        .await
        .unwrap()
        .get(0)
}

/// Every message of `topic` (`partitions` of them), as (partition, key).
fn read_keys(broker: &str, topic: &str, partitions: i32) -> Vec<(i32, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "ferry-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut eof = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while eof.len() < partitions as usize && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push((m.partition(), m.key().unwrap_or_default().to_vec())),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            _ => {}
        }
    }
    assert_eq!(eof.len(), partitions as usize, "read {topic} to its end");
    out
}

/// The Kafka key of `items` row `(a, 'k')`.
fn item_key(a: i32) -> String {
    format!("{{\"a\":\"{a}\",\"b\":\"k\"}}")
}

/// Two keys of `items` (`(a, b)`, b = 'k') on different partitions of 3,
/// as Ferry keys them (`{"a":"1","b":"k"}`).
fn keys_on_two_partitions() -> ((i32, i32), (i32, i32)) {
    let key = item_key;
    let first = partition_for(key(1).as_bytes(), 3);
    let other = (2..100)
        .find(|&a| partition_for(key(a).as_bytes(), 3) != first)
        .expect("a key on another partition");
    ((1, first), (other, partition_for(key(other).as_bytes(), 3)))
}

/// The resurrected old key, made deterministic: the old key's
/// partition is held back (a test hook gates it until a file exists) while
/// the key change on the new key's partition is consumed. Before barriers,
/// the worker applied the move there (delete old, insert new) and then,
/// once the gate opened, the old key's insert and update: the old key came
/// back. Now the move waits for the old key's partition to reach its copy.
/// Also checks that every key landed on the partition Ferry's partitioner
/// computes (keys of plain changes are placed by librdkafka).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resurrected_old_key_cannot_happen() {
    let pair = pair_with_broker("kpkey").await;
    let ddl = "CREATE TABLE items (a int, b text, v int NOT NULL, PRIMARY KEY (a, b))";
    pair.src().await.batch_execute(ddl).await.unwrap();
    pair.dst().await.batch_execute(ddl).await.unwrap();
    let cfg = config(&pair, "public.items", 3);
    let topic = topic(&pair, "items");
    let ((k1, p1), (k2, p2)) = keys_on_two_partitions();

    // The snapshot (a barrier on every partition) and a first row, with an
    // ungated worker.
    let mut source = spawn(&cfg, "source");
    let mut worker = spawn(&cfg, "worker");
    pair.src()
        .await
        .batch_execute("INSERT INTO items VALUES (1000, 'x', 1)")
        .await
        .unwrap();
    wait_equal(
        &pair,
        "public.items",
        &[&source, &worker],
        Duration::from_secs(60),
    )
    .await;
    worker.kill9();

    let src = pair.src().await;
    src.batch_execute(&format!(
        "INSERT INTO items VALUES ({k1}, 'k', 1);
         UPDATE items SET v = 2 WHERE a = {k1};
         UPDATE items SET a = {k2} WHERE a = {k1};"
    ))
    .await
    .unwrap();

    let gate = pair.dir.path().join("gate");
    let spec = format!("{topic}:{p1}:{}", gate.display());
    // The worker's debug lines say when a partition is held in memory (a
    // worker that owns both partitions holds them there, not in the
    // target).
    let mut worker = Ferry::spawn_env(
        &cfg,
        &["--role", "worker"],
        &[
            ("FERRY_TEST_GATE_PARTITION", spec.as_str()),
            (
                "RUST_LOG",
                "info,ferry_postgres_sink=debug,ferry_pipeline::bus::kafka::worker=debug",
            ),
        ],
    );
    // The new key's partition consumed up to the move (applied, before
    // barriers; held at its copy, now: in the target, or in memory).
    let dst = pair.dst().await;
    wait_for("the key change consumed", &worker, Duration::from_secs(60), || async {
        let moved = dst
            .query_one(&format!("SELECT count(*) FROM items WHERE a = {k2}"), &[])
            .await
            .map(|r| r.get::<_, i64>(0) > 0)
            .unwrap_or(false);
        let arrived = dst
            .query_one(
                "SELECT count(*) FROM ferry_barriers WHERE barrier LIKE 'k:%' AND $1 = ANY(arrived)",
                &[&p2],
            )
            .await
            .map(|r| r.get::<_, i64>(0) > 0)
            .unwrap_or(false);
        moved || arrived || worker.log_text().contains("holding it in memory")
    })
    .await;
    std::fs::write(&gate, b"open").unwrap();
    // A later row on the gated partition: once it is applied, so is
    // everything before it there (the old key's insert and update).
    let sentinel = (k2 + 1..1000)
        .find(|&a| partition_for(item_key(a).as_bytes(), 3) == p1)
        .expect("a key on the gated partition");
    src.batch_execute(&format!("INSERT INTO items VALUES ({sentinel}, 'k', 9)"))
        .await
        .unwrap();
    wait_for(
        "the gated partition consumed",
        &worker,
        Duration::from_secs(60),
        || async {
            dst.query_one(
                &format!("SELECT count(*) FROM items WHERE a = {sentinel}"),
                &[],
            )
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == 1)
        },
    )
    .await;
    wait_equal(
        &pair,
        "public.items",
        &[&source, &worker],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(dlq_records(&pair).await, 0, "nothing parked");
    let expected: Vec<i32> = dst
        .query_one(
            "SELECT expected FROM ferry_barriers WHERE barrier LIKE 'k:%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(expected, vec![p1, p2], "the key change's two partitions");
    alive(&mut source, "source");
    alive(&mut worker, "worker");

    // Plain changes were placed by librdkafka, copies by Ferry: one key,
    // one partition, the one Ferry computes.
    let broker = pair.kafka.as_ref().unwrap().bootstrap();
    let keys = tokio::task::spawn_blocking(move || read_keys(&broker, &topic, 3))
        .await
        .unwrap();
    for (p, key) in keys {
        if key != b"{}" {
            assert_eq!(
                p,
                partition_for(&key, 3),
                "key {} on partition {p}",
                String::from_utf8_lossy(&key)
            );
        }
    }
}

/// What the random workload knows of the source: the keys that exist, and
/// a counter for fresh unique values.
struct Model {
    keys: Vec<(i32, i32)>,
    next_u: i64,
}

impl Model {
    fn pick(&self, rng: &mut rand::rngs::StdRng) -> Option<(i32, i32)> {
        (!self.keys.is_empty()).then(|| self.keys[rng.random_range(0..self.keys.len())])
    }
}

/// One source transaction of the random workload, as SQL.
fn transaction(
    rng: &mut rand::rngs::StdRng,
    m: &mut Model,
    table: &str,
    truncates: bool,
) -> String {
    let mut sql = String::from("BEGIN;");
    if truncates && rng.random_range(0..60) == 0 {
        sql.push_str(&format!("TRUNCATE {table};"));
        m.keys.clear();
    }
    for _ in 0..rng.random_range(1..6) {
        match rng.random_range(0..10) {
            // A key change that keeps the unique value, back and forth.
            0..=2 => {
                let Some((a, b)) = m.pick(rng) else { continue };
                let to = if a >= 1000 { a - 1000 } else { a + 1000 };
                if m.keys.contains(&(to, b)) {
                    continue;
                }
                sql.push_str(&format!(
                    "UPDATE {table} SET a = {to}, v = v + 1 WHERE a = {a} AND b = {b};"
                ));
                m.keys.retain(|k| *k != (a, b));
                m.keys.push((to, b));
            }
            3..=5 => {
                let Some((a, b)) = m.pick(rng) else { continue };
                sql.push_str(&format!(
                    "UPDATE {table} SET v = v + 1 WHERE a = {a} AND b = {b};"
                ));
            }
            // Delete, then maybe the same key again (a new unique value).
            6 | 7 => {
                let Some((a, b)) = m.pick(rng) else { continue };
                sql.push_str(&format!("DELETE FROM {table} WHERE a = {a} AND b = {b};"));
                m.keys.retain(|k| *k != (a, b));
                if rng.random_bool(0.5) {
                    m.next_u += 1;
                    sql.push_str(&format!(
                        "INSERT INTO {table} VALUES ({a}, {b}, 0, 'u{}');",
                        m.next_u
                    ));
                    m.keys.push((a, b));
                }
            }
            _ => {
                let (a, b) = (rng.random_range(0..40), rng.random_range(0..5));
                if m.keys.contains(&(a, b)) || m.keys.contains(&(a + 1000, b)) {
                    continue;
                }
                m.next_u += 1;
                sql.push_str(&format!(
                    "INSERT INTO {table} VALUES ({a}, {b}, 0, 'u{}');",
                    m.next_u
                ));
                m.keys.push((a, b));
            }
        }
    }
    sql.push_str("COMMIT;");
    sql
}

/// Three partitions, a source and two workers, five tables each with its
/// own seeded random workload (composite keys, key changes back and forth
/// keeping a unique value, deletes and re-inserts of the same key,
/// TRUNCATEs), interleaved; the source and the workers are killed with -9
/// at random points (another seed) and restarted. At the end every table
/// of the target equals the source's row for row and nothing was parked.
/// (One pipeline for the five seeds: a consumer group's joins and a killed
/// member's session timeout dominate a run, once instead of five times.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_partitions_end_equal_under_key_changes_truncates_and_kill9() {
    const SEEDS: u64 = 5;
    let pair = pair_with_broker("kpseed").await;
    let src = pair.src().await;
    let mut tables = Vec::new();
    let mut workloads = Vec::new();
    for seed in 1..=SEEDS {
        let name = format!("t{seed}");
        let ddl = format!(
            "CREATE TABLE {name} (a int, b int, v int NOT NULL, u text NOT NULL UNIQUE, PRIMARY KEY (a, b))"
        );
        src.batch_execute(&ddl).await.unwrap();
        pair.dst().await.batch_execute(&ddl).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut model = Model {
            keys: Vec::new(),
            next_u: seed as i64 * 1_000_000,
        };
        // A first population, copied by the snapshot.
        for _ in 0..10 {
            let sql = transaction(&mut rng, &mut model, &name, false);
            src.batch_execute(&sql).await.unwrap();
        }
        tables.push(format!("public.{name}"));
        workloads.push((name, rng, model));
    }
    let names: Vec<&str> = tables.iter().map(String::as_str).collect();
    let cfg = ConfigBuilder::new(&pair)
        .tables(&names)
        .batch_size(200)
        .partitions(3)
        .build();
    let started = Instant::now();
    let mut source = spawn(&cfg, "source");
    let mut workers = [spawn(&cfg, "worker"), spawn(&cfg, "worker")];
    // Copied first: the kills then hit a pipeline at work.
    for table in &tables {
        wait_equal(
            &pair,
            table,
            &[&source, &workers[0], &workers[1]],
            Duration::from_secs(90),
        )
        .await;
    }
    let mut chaos = rand::rngs::StdRng::seed_from_u64(0);
    let rounds = 100;
    let kills: Vec<(usize, usize)> = (0..4)
        .map(|i| (chaos.random_range(5..rounds), i % 3))
        .collect();
    for round in 0..rounds {
        for &(at, who) in &kills {
            if at != round {
                continue;
            }
            if who == 2 {
                alive(&mut source, "source");
                source.kill9();
                source = spawn(&cfg, "source");
            } else {
                alive(&mut workers[who], "worker");
                workers[who].kill9();
                workers[who] = spawn(&cfg, "worker");
            }
        }
        for (name, rng, model) in &mut workloads {
            let sql = transaction(rng, model, name, true);
            src.batch_execute(&sql).await.unwrap();
        }
        let pause = chaos.random_range(0..40);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let sent = started.elapsed();
    for table in &tables {
        wait_equal(
            &pair,
            table,
            &[&source, &workers[0], &workers[1]],
            Duration::from_secs(120),
        )
        .await;
    }
    eprintln!(
        "{SEEDS} seeds: workload sent in {sent:?}, target equal after {:?}",
        started.elapsed()
    );
    assert_eq!(dlq_records(&pair).await, 0, "nothing parked");
    alive(&mut source, "source");
    for w in &mut workers {
        alive(w, "worker");
    }
}

/// Both workers of a group stopped with SIGTERM (they leave the group) and
/// started again: the group settles again and the pipeline goes on.
///
/// Ignored: a tansu 0.6 quirk. In one run of two (2026-12-03) the new
/// group never finished rebalancing: its members looped between wait-join
/// and wait-sync for the whole minute (tansu fixed its generation and
/// SyncGroup handling after 0.6), and they said so every 5 s (`waiting for
/// a partition assignment … members=2 … state=wait-sync`, item 3 of issue
/// #24), applying nothing and losing nothing. Run it with `--ignored`
/// against a new broker; once it passes every time, drop the `ignore` and
/// the quirk from docs/kafka.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu 0.6: after both members left, the group intermittently never settles (docs/kafka.md)"]
async fn both_workers_sigtermed_and_restarted_settle_again() {
    let pair = pair_with_broker("kpterm").await;
    pair.src()
        .await
        .batch_execute("CREATE TABLE items (a int, b text, v int NOT NULL, PRIMARY KEY (a, b))")
        .await
        .unwrap();
    let cfg = config(&pair, "public.items", 3);
    let mut source = spawn(&cfg, "source");
    let mut workers = [spawn(&cfg, "worker"), spawn(&cfg, "worker")];
    let src = pair.src().await;
    src.batch_execute("INSERT INTO items SELECT g, 'k', 1 FROM generate_series(1, 100) g")
        .await
        .unwrap();
    wait_equal(
        &pair,
        "public.items",
        &[&source, &workers[0], &workers[1]],
        Duration::from_secs(60),
    )
    .await;
    for w in &mut workers {
        w.terminate();
    }
    for w in &mut workers {
        assert!(
            w.wait_exit(Duration::from_secs(30)).is_some(),
            "a worker did not stop on SIGTERM: {}",
            w.log_text()
        );
    }
    let mut workers = [spawn(&cfg, "worker"), spawn(&cfg, "worker")];
    src.batch_execute("UPDATE items SET v = 2; INSERT INTO items VALUES (1000, 'k', 1)")
        .await
        .unwrap();
    wait_equal(
        &pair,
        "public.items",
        &[&source, &workers[0], &workers[1]],
        Duration::from_secs(60),
    )
    .await;
    alive(&mut source, "source");
    for w in &mut workers {
        alive(w, "worker");
    }
}

/// The sum of the high watermarks of `topic`'s partitions.
fn topic_end(broker: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "ferry-test-watermarks")
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(_, high)| high)
        })
        .sum()
}

/// A snapshot on three partitions, its source killed with -9 mid-copy;
/// rows deleted before it copies again. Each attempt empties the target
/// table first (a barrier on every partition; the first attempt's is
/// completed by the second's where it never reached a partition), so no
/// deleted row is left over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_snapshot_on_three_partitions_leaves_no_deleted_rows() {
    const ROWS: i64 = 60_000;
    let pair = pair_with_broker("kpsnap").await;
    pair.src()
        .await
        .batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, pad text NOT NULL);
             INSERT INTO big SELECT g, repeat('x', 50) FROM generate_series(1, {ROWS}) g;"
        ))
        .await
        .unwrap();
    let cfg = ConfigBuilder::new(&pair)
        .tables(&["public.big"])
        .partitions(3)
        .snapshot_chunk_pages(8)
        .build();
    let topic = topic(&pair, "big");
    let broker = pair.kafka.as_ref().unwrap().bootstrap();
    let mut source = spawn(&cfg, "source");
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let (b, t) = (broker.clone(), topic.clone());
        let end = tokio::task::spawn_blocking(move || topic_end(&b, &t, 3))
            .await
            .unwrap();
        if end >= 2_000 {
            source.kill9();
            break end;
        }
        assert!(
            Instant::now() < deadline,
            "the copy never started: {}",
            source.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        at_kill < ROWS,
        "the copy finished before the kill ({at_kill} messages): the test did not interrupt it"
    );
    pair.src()
        .await
        .batch_execute("DELETE FROM big WHERE id % 7 = 0")
        .await
        .unwrap();
    let mut source = spawn(&cfg, "source");
    let mut worker = spawn(&cfg, "worker");
    wait_equal(
        &pair,
        "public.big",
        &[&source, &worker],
        Duration::from_secs(120),
    )
    .await;
    let attempts: i64 = pair
        .dst()
        .await
        .query_one(
            "SELECT count(*) FROM ferry_barriers WHERE kind = 's' AND done_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 2, "two snapshot attempts, both done");
    alive(&mut source, "source");
    alive(&mut worker, "worker");
}

/// One partition, two workers: the one without a partition says so (at
/// INFO, with the group and its members) and shows it in a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waiting_for_an_assignment_says_so() {
    let pair = pair_with_broker("kpwait").await;
    pair.src()
        .await
        .batch_execute("CREATE TABLE solo (id int PRIMARY KEY)")
        .await
        .unwrap();
    let cfg = config(&pair, "public.solo", 1);
    let mut source = spawn(&cfg, "source");
    let mut a = spawn(&cfg, "worker");
    let mut b = spawn(&cfg, "worker");
    let says = |f: &Ferry| {
        let log = f.log_text();
        log.lines().any(|l| {
            l.contains("waiting for a partition assignment")
                && l.contains("members=2")
                && l.contains(&format!("group={}_test", pair.db))
        })
    };
    wait_for(
        "a worker logging its wait",
        &a,
        Duration::from_secs(60),
        || async { says(&a) || says(&b) },
    )
    .await;
    alive(&mut source, "source");
    alive(&mut a, "worker a");
    alive(&mut b, "worker b");
}

/// tansu 0.6 (memory storage) answers ListOffsets(latest) with the last
/// producer batch's base offset + 1, not the high watermark that Fetch
/// reports (Apache Kafka: both the same). Ferry's "log ends below the
/// target's progress" check trusts the fetch high watermark when it is
/// higher (docs/kafka.md). If this fails, the broker changed: update the
/// docs' "Tested against".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_list_offsets_is_the_last_batch_base_plus_one() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = tokio::task::spawn_blocking(KafkaBroker::start)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let bootstrap = broker.bootstrap();
    let topic = "quirk.listoffsets";
    let admin: rdkafka::admin::AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    admin
        .create_topics(
            &[rdkafka::admin::NewTopic::new(
                topic,
                1,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "200")
        .create()
        .unwrap();
    // Ten records sent together: one batch.
    let payloads: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    let sends: Vec<_> = payloads
        .iter()
        .map(|payload| {
            producer.send(
                FutureRecord::to(topic).key("k").payload(payload),
                Duration::from_secs(10),
            )
        })
        .collect();
    for s in futures_util::future::join_all(sends).await {
        s.unwrap();
    }
    let b = bootstrap.clone();
    let (listed, fetched) = tokio::task::spawn_blocking(move || {
        let listed = topic_end(&b, topic, 1);
        let fetched = read_keys(&b, topic, 1).len() as i64;
        (listed, fetched)
    })
    .await
    .unwrap();
    assert_eq!(fetched, 10, "every record is fetched");
    assert_eq!(
        listed, 1,
        "ListOffsets(latest) after one batch of ten: the broker now answers {listed} (the high watermark is 10)"
    );
}

/// A unique value that changes hands between two different rows whose
/// keys hash to different partitions, made deterministic: the partition of
/// the row that lets the value go is held back (test hook) while the row
/// that takes it is consumed. The take is refused by the target (23505),
/// and was parked in the dead-letter queue; now the worker gives the batch
/// back and reads its partitions again until the holder's change is
/// applied, and nothing is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_value_moving_to_a_row_of_another_partition_is_not_parked() {
    let pair = pair_with_broker("kpuniq").await;
    let ddl = "CREATE TABLE items (a int, b text, u text NOT NULL UNIQUE, PRIMARY KEY (a, b))";
    pair.src().await.batch_execute(ddl).await.unwrap();
    pair.dst().await.batch_execute(ddl).await.unwrap();
    let cfg = config(&pair, "public.items", 3);
    let topic = topic(&pair, "items");
    let ((k1, p1), (k2, _)) = keys_on_two_partitions();
    let src = pair.src().await;
    src.batch_execute(&format!(
        "INSERT INTO items VALUES ({k1}, 'k', 'x'), ({k2}, 'k', 'y')"
    ))
    .await
    .unwrap();
    let mut source = spawn(&cfg, "source");
    let mut worker = spawn(&cfg, "worker");
    wait_equal(
        &pair,
        "public.items",
        &[&source, &worker],
        Duration::from_secs(60),
    )
    .await;
    worker.kill9();
    // Two transactions: the first row lets 'x' go, the second takes it.
    src.batch_execute(&format!("UPDATE items SET u = 'z' WHERE a = {k1}"))
        .await
        .unwrap();
    src.batch_execute(&format!("UPDATE items SET u = 'x' WHERE a = {k2}"))
        .await
        .unwrap();
    let gate = pair.dir.path().join("gate");
    let spec = format!("{topic}:{p1}:{}", gate.display());
    let mut worker = Ferry::spawn_env(
        &cfg,
        &["--role", "worker"],
        &[("FERRY_TEST_GATE_PARTITION", spec.as_str())],
    );
    wait_for(
        "the take refused while the holder's partition is held",
        &worker,
        Duration::from_secs(60),
        || async { worker.log_text().contains("a unique value is still held") },
    )
    .await;
    assert_eq!(dlq_records(&pair).await, 0, "nothing parked while waiting");
    std::fs::write(&gate, b"open").unwrap();
    wait_equal(
        &pair,
        "public.items",
        &[&source, &worker],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(dlq_records(&pair).await, 0, "nothing parked");
    alive(&mut source, "source");
    alive(&mut worker, "worker");
}

/// One source transaction of the handover workload: unique values move
/// between existing rows (within one transaction or across two), or to a
/// new row after their row's delete. `rows` holds each key's value.
fn handover(
    rng: &mut rand::rngs::StdRng,
    rows: &mut Vec<(i32, String)>,
    next_u: &mut i64,
    table: &str,
) -> Vec<String> {
    let mut fresh = || {
        *next_u += 1;
        format!("u{next_u}")
    };
    let pick = |rng: &mut rand::rngs::StdRng, n: usize| rng.random_range(0..n);
    match rng.random_range(0..10) {
        // X lets its value go, Y takes it: in one transaction or two.
        0..=5 if rows.len() >= 2 => {
            let x = pick(rng, rows.len());
            let y = (x + 1 + pick(rng, rows.len() - 1)) % rows.len();
            let (ax, ux) = rows[x].clone();
            let ay = rows[y].0;
            let new = fresh();
            let release = format!("UPDATE {table} SET u = '{new}' WHERE a = {ax};");
            let take = format!("UPDATE {table} SET u = '{ux}' WHERE a = {ay};");
            rows[x].1 = new;
            rows[y].1 = ux;
            if rng.random_bool(0.5) {
                vec![format!("BEGIN;{release}{take}COMMIT;")]
            } else {
                vec![release, take]
            }
        }
        // X deleted, its value taken by a new row.
        6 | 7 if !rows.is_empty() => {
            let x = pick(rng, rows.len());
            let (ax, ux) = rows.remove(x);
            let a = (0..10_000)
                .map(|_| rng.random_range(0..500))
                .find(|a| !rows.iter().any(|(k, _)| k == a) && *a != ax)
                .expect("a free key");
            rows.push((a, ux.clone()));
            vec![
                format!("DELETE FROM {table} WHERE a = {ax};"),
                format!("INSERT INTO {table} VALUES ({a}, 'k', '{ux}');"),
            ]
        }
        _ => {
            let a = (0..10_000)
                .map(|_| rng.random_range(0..500))
                .find(|a| !rows.iter().any(|(k, _)| k == a))
                .expect("a free key");
            let u = fresh();
            rows.push((a, u.clone()));
            vec![format!("INSERT INTO {table} VALUES ({a}, 'k', '{u}');")]
        }
    }
}

/// Three partitions, a source and two workers, unique values changing
/// hands between different rows (whose keys hash to any partition), with
/// the source and the workers killed with -9 at random points: the target
/// ends equal to the source and nothing is parked (docs/kafka.md; this
/// was a known limit of several partitions).
///
/// Ignored: it does not converge (re-run 2026-12-03 on commit `41310c8`:
/// after the workload the target held 184 of the source's 308 rows, 256
/// lines differing, after 160 unique-value waits; the live worker's waits
/// went on every ~4 s, round 27 and counting, until the 180 s deadline).
/// The cause is not the wait's rounds but that the source's order between
/// two *different* rows is lost on several partitions, and no worker-side
/// retry can get it back: a row R of partition 2 can take value u (free in
/// the target) before the change of Y on partition 1 that took u earlier in
/// the source, and let it go before R took it, is applied. Y's take is then
/// refused until R's later release of u, while R's partition may itself be
/// refused behind a value that Y's partition lets go only after Y's take:
/// a cycle that per-change rounds cannot break, and larger batches only
/// sometimes fold away (a batch of one worker cannot fold the other's
/// rows). Exactness needs the source's order for the handover itself: a
/// pair barrier (as for key changes) between the partition of a unique
/// value's previous holder and its taker's, which needs the table's unique
/// indexes in the source's schema (not carried today). The deterministic
/// case (`a_unique_value_moving_to_a_row_of_another_partition_is_not_parked`)
/// passes. Run it with `--ignored` when working on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "issue #24: unique values moving between different rows of different partitions can form a cycle of refusals no worker-side wait breaks; needs source-side handover barriers (see the doc comment, docs/kafka.md)"]
async fn unique_values_changing_hands_across_partitions_under_kill9() {
    let pair = pair_with_broker("kphand").await;
    let ddl = "CREATE TABLE hand (a int, b text, u text NOT NULL UNIQUE, PRIMARY KEY (a, b))";
    let src = pair.src().await;
    src.batch_execute(ddl).await.unwrap();
    pair.dst().await.batch_execute(ddl).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(24);
    let mut rows = Vec::new();
    let mut next_u = 0;
    for _ in 0..30 {
        for sql in handover(&mut rng, &mut rows, &mut next_u, "hand") {
            src.batch_execute(&sql).await.unwrap();
        }
    }
    // Small batches: a worker that catches up after a kill applies one
    // partition's backlog ahead of another's (librdkafka hands over a
    // fetch partition by partition), so values reach the target out of
    // the source's order.
    let cfg = ConfigBuilder::new(&pair)
        .tables(&["public.hand"])
        .batch_size(20)
        .partitions(3)
        .build();
    let mut source = spawn(&cfg, "source");
    let mut workers = [spawn(&cfg, "worker"), spawn(&cfg, "worker")];
    wait_equal(
        &pair,
        "public.hand",
        &[&source, &workers[0], &workers[1]],
        Duration::from_secs(90),
    )
    .await;
    let mut chaos = rand::rngs::StdRng::seed_from_u64(7);
    let rounds = 1500;
    let kills: Vec<(usize, usize)> = (0..4)
        .map(|i| (chaos.random_range(10..rounds), i % 3))
        .collect();
    for round in 0..rounds {
        for &(at, who) in &kills {
            if at != round {
                continue;
            }
            if who == 2 {
                alive(&mut source, "source");
                source.kill9();
                source = spawn(&cfg, "source");
            } else {
                alive(&mut workers[who], "worker");
                workers[who].kill9();
                workers[who] = spawn(&cfg, "worker");
            }
        }
        for sql in handover(&mut rng, &mut rows, &mut next_u, "hand") {
            src.batch_execute(&sql).await.unwrap();
        }
        if round % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(chaos.random_range(0..40))).await;
        }
    }
    wait_equal(
        &pair,
        "public.hand",
        &[&source, &workers[0], &workers[1]],
        Duration::from_secs(180),
    )
    .await;
    // How often a value reached the target out of order (a worker that
    // was killed meanwhile took its count with it): for the record.
    let waits: usize = workers
        .iter()
        .map(|w| w.log_text().matches("a unique value is still held").count())
        .sum();
    eprintln!("{rounds} rounds: {waits} unique-value waits in the live workers' logs");
    assert_eq!(dlq_records(&pair).await, 0, "nothing parked");
    alive(&mut source, "source");
    for w in &mut workers {
        alive(w, "worker");
    }
}
