//! Crash and outage tests: `kill -9` of ferry at random moments (one during
//! the initial snapshot), restarts of the source and of the target while
//! traffic flows, and an idle slot that must keep advancing.
//!
//! Each ends with a row-by-row comparison of source and target: nothing may
//! be lost, duplicated or moved back to an older state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_testkit::workload;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use crate::support::{ConfigBuilder, Ferry, Pair};

/// Accounts seeded for the kill test: enough that its snapshot takes a
/// moment, so that a kill can land in the middle of it.
const CRASH_ACCOUNTS: i64 = 300_000;
/// Row changes the kill test's workload makes at least.
const CRASH_CHANGES: u64 = 200_000;
/// Ids of single-row payments: far above the bulk steps' ids.
const PAYMENT_IDS: i64 = 10_000_000;
/// Ids of marker rows written to prove that changes flow again.
const MARKER_IDS: i64 = 50_000_000;

/// Background traffic on the workload tables through its own connection.
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<anyhow::Result<u64>>,
}

impl Traffic {
    /// Runs `workload::mixed_step` (`rows` per step) followed by five single-row
    /// payments, one round at most every `pace`, until asked to stop and at
    /// least `min_changes` row changes were made. With `tolerate_outage`,
    /// errors (the source restarting) are survived by reconnecting and
    /// moving on to fresh keys; otherwise the first error ends the traffic.
    fn start(
        url: String,
        accounts: i64,
        rows: i64,
        pace: Duration,
        min_changes: u64,
        tolerate_outage: bool,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(AtomicU64::new(0));
        let (stop2, changes2) = (Arc::clone(&stop), Arc::clone(&changes));
        let handle = tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut step = 0i64;
            let mut pay = PAYMENT_IDS;
            let mut errors = 0u64;
            let started = Instant::now();
            loop {
                if stop2.load(Ordering::SeqCst) && changes2.load(Ordering::SeqCst) >= min_changes {
                    return Ok(changes2.load(Ordering::SeqCst));
                }
                // Pace the rounds so that the traffic spans the test's events.
                let due = started + pace * u32::try_from(step).unwrap_or(u32::MAX);
                tokio::time::sleep_until(due.into()).await;
                let round = async {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        client = Some(ferry_postgres_source::connect(&url).await?);
                    }
                    let c = client.as_mut().expect("connected above");
                    let mut n = workload::mixed_step(c, step, rows, accounts).await?;
                    for _ in 0..5 {
                        n += workload::payment(c, pay, accounts).await?;
                        pay += 1;
                    }
                    anyhow::Ok(n)
                }
                .await;
                // A failed step may have committed part of its statements:
                // the next step uses fresh keys either way.
                step += 1;
                pay += 5;
                match round {
                    Ok(n) => {
                        changes2.fetch_add(n, Ordering::SeqCst);
                    }
                    Err(e) if tolerate_outage => {
                        errors += 1;
                        assert!(errors < 1000, "traffic keeps failing: {e:#}");
                        client = None;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e.context(format!("traffic step {}", step - 1))),
                }
            }
        });
        Traffic { stop, handle }
    }

    /// Asks the traffic to stop (once it made its minimum) and waits for it.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .await
            .expect("traffic task panicked")
            .expect("traffic failed")
    }
}

/// A ferry that must still be running; panics with its log otherwise.
fn assert_running(ferry: &mut Ferry, what: &str) {
    if let Some(status) = ferry.exited() {
        panic!(
            "ferry exited ({status}) {what}; its log:\n{}",
            ferry.log_text()
        );
    }
}

/// Polls `probe` every 100 ms until it returns `Some`; `None` once
/// `timeout` has passed.
async fn try_poll<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`try_poll`] that panics with `what` and ferry's log on timeout.
async fn poll<T, F, Fut>(timeout: Duration, what: &str, ferry: &Ferry, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match try_poll(timeout, probe).await {
        Some(v) => v,
        None => panic!(
            "timed out after {timeout:?}: {what}; ferry's log:\n{}",
            ferry.log_text()
        ),
    }
}

/// The target's `(accounts rows, snapshots recorded)` for pipeline `test`;
/// `None` while the tables do not exist yet.
async fn snapshot_progress(pair: &Pair) -> Option<(i64, i64)> {
    let t = pair.target.connect(&pair.db).await.ok()?;
    let row = t
        .query_one(
            "SELECT (SELECT count(*) FROM public.accounts),
                    (SELECT count(*) FROM public.ferry_snapshot WHERE pipeline = 'test')",
            &[],
        )
        .await
        .ok()?;
    Some((row.get(0), row.get(1)))
}

/// [`Pair::wait_equal`] that shows ferry's log (after the logs of its
/// `earlier` runs) when the tables never match.
async fn wait_equal(
    pair: &Pair,
    tables: &[&str],
    timeout: Duration,
    ferry: &Ferry,
    earlier: &[String],
) {
    let deadline = Instant::now() + timeout;
    loop {
        match pair.compare(tables).await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!(
                "target never matched source: {e}; logs of the earlier runs:\n{}\n\
                 log of the last run:\n{}",
                earlier.join("\n--- next run ---\n"),
                ferry.log_text()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Whether the target holds transfer `id`.
async fn target_has_transfer(pair: &Pair, id: i64) -> bool {
    let Ok(t) = pair.target.connect(&pair.db).await else {
        return false;
    };
    t.query_opt("SELECT 1 FROM public.transfers WHERE id = $1", &[&id])
        .await
        .is_ok_and(|r| r.is_some())
}

/// Writes marker transfer `id` into the source (retrying while the source
/// comes back) and waits until ferry delivered it to the target.
async fn marker_arrives(pair: &Pair, ferry: &Ferry, id: i64, what: &str) {
    poll(Duration::from_secs(30), "write a marker into the source", ferry, || async {
        let s = pair.source.connect(&pair.db).await.ok()?;
        s.execute(
            "INSERT INTO transfers (id, from_id, to_id, amount, note) VALUES ($1, 1, 2, 1.00, 'marker')",
            &[&id],
        )
        .await
        .ok()
    })
    .await;
    poll(Duration::from_secs(60), what, ferry, || async {
        target_has_transfer(pair, id).await.then_some(())
    })
    .await;
}

/// `kill -9` at random moments during a 200k-change run, the first one in
/// the middle of the initial snapshot; after the last restart the target
/// equals the source row for row and holds the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_moments() {
    let seed: u64 = std::env::var("FERRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill9_at_random_moments: FERRY_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Kill 1 once the snapshot copied at least this many accounts.
    let snapshot_kill_rows = rng.random_range(1..=CRASH_ACCOUNTS / 3);
    let delays: Vec<Duration> = (0..5)
        .map(|_| Duration::from_millis(rng.random_range(300..=3000)))
        .collect();

    let started = Instant::now();
    let pair = Pair::start("crash").await;
    let src = pair.src().await;
    workload::seed(&src, CRASH_ACCOUNTS)
        .await
        .expect("seed the workload");
    let config = ConfigBuilder::new(&pair).tables(&workload::TABLES).build();
    let traffic = Traffic::start(
        pair.source.url(&pair.db),
        CRASH_ACCOUNTS,
        2000,
        Duration::from_millis(400),
        CRASH_CHANGES,
        false,
    );

    // Kill 1: in the middle of the initial snapshot (rows arrived in the
    // target, the snapshot is not recorded as complete).
    let mut ferry = Ferry::spawn(&config);
    let mut logs = Vec::new();
    let (rows, _) = poll(
        Duration::from_secs(60),
        "the initial snapshot to copy rows",
        &ferry,
        || async {
            snapshot_progress(&pair)
                .await
                .filter(|&(rows, _)| rows >= snapshot_kill_rows)
        },
    )
    .await;
    ferry.kill9();
    let (_, done) = snapshot_progress(&pair)
        .await
        .expect("target readable after the kill");
    assert_eq!(
        done, 0,
        "the snapshot completed before the kill ({rows} rows seen): seed more rows"
    );
    eprintln!("killed during the snapshot with {rows} accounts copied");
    logs.push(ferry.log_text());
    ferry = Ferry::spawn(&config);

    // Let the snapshot complete so that the next kills hit the stream.
    let t = Instant::now();
    poll(
        Duration::from_secs(120),
        "the initial snapshot to complete after the restart",
        &ferry,
        || async {
            snapshot_progress(&pair)
                .await
                .filter(|&(_, done)| done == workload::TABLES.len() as i64)
        },
    )
    .await;
    eprintln!("snapshot completed {:?} after the restart", t.elapsed());

    // Kills 2..: at random moments while the traffic streams.
    for delay in &delays {
        tokio::time::sleep(*delay).await;
        assert_running(&mut ferry, "before a kill");
        ferry.kill9();
        logs.push(ferry.log_text());
        ferry = Ferry::spawn(&config);
    }
    let changes = traffic.finish().await;
    eprintln!(
        "{} kills (delays {delays:?}), {changes} row changes, {:?} so far",
        delays.len() + 1,
        started.elapsed()
    );
    assert!(changes >= CRASH_CHANGES);

    let caught_up = Instant::now();
    let tables = workload::TABLES;
    let equal = tokio::time::timeout(
        Duration::from_secs(125),
        wait_equal(&pair, &tables, Duration::from_secs(120), &ferry, &logs),
    )
    .await;
    if equal.is_err() {
        panic!("comparison hung; last ferry log:\n{}", ferry.log_text());
    }
    eprintln!(
        "target equal {:?} after the traffic stopped",
        caught_up.elapsed()
    );
    assert_running(&mut ferry, "after catching up");

    let dst = pair.dst().await;
    // Where the applied position is kept depends on the bus: one position
    // on the embedded bus, one per partition on Kafka.
    let position_sql = match crate::support::kafka::bus() {
        crate::support::kafka::Bus::Embedded => {
            "SELECT commit_lsn::text FROM public.ferry_checkpoint WHERE pipeline = 'test'"
        }
        crate::support::kafka::Bus::Kafka => {
            "SELECT max(commit_lsn)::text FROM public.ferry_bus_offsets WHERE pipeline = 'test'"
        }
    };
    let row = dst
        .query_opt(position_sql, &[])
        .await
        .expect("read the applied position");
    let row = row.expect("no applied position for pipeline test");
    let lsn: Option<String> = row.get(0);
    let lsn = lsn.expect("no applied position for pipeline test");
    assert_ne!(lsn, "0/0", "the checkpoint holds no position");
    let snapshots: i64 = dst
        .query_one(
            "SELECT count(*) FROM public.ferry_snapshot WHERE pipeline = 'test'",
            &[],
        )
        .await
        .expect("read ferry_snapshot")
        .get(0);
    assert_eq!(snapshots, workload::TABLES.len() as i64);
    eprintln!("kill9_at_random_moments took {:?}", started.elapsed());
}

/// The source, then the target, restarted while traffic flows: ferry
/// reconnects by itself, keeps running, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_and_target_restart_mid_stream() {
    let started = Instant::now();
    let mut pair = Pair::start("restart").await;
    let accounts = 5_000;
    let src = pair.src().await;
    workload::seed(&src, accounts).await.expect("seed");
    drop(src);
    let tables = workload::TABLES;
    let config = ConfigBuilder::new(&pair).tables(&tables).build();
    let mut ferry = Ferry::spawn(&config);
    wait_equal(&pair, &tables, Duration::from_secs(60), &ferry, &[]).await;

    let traffic = Traffic::start(
        pair.source.url(&pair.db),
        accounts,
        500,
        Duration::from_millis(100),
        0,
        true,
    );
    poll(
        Duration::from_secs(30),
        "traffic to reach the target",
        &ferry,
        // Step 0 deletes its first half: 251..=500 stay.
        || async { target_has_transfer(&pair, 251).await.then_some(()) },
    )
    .await;

    let t = Instant::now();
    pair.source.restart().await.expect("restart the source");
    eprintln!("source restarted in {:?}", t.elapsed());
    marker_arrives(
        &pair,
        &ferry,
        MARKER_IDS,
        "a change made after the source restart to reach the target",
    )
    .await;
    assert_running(&mut ferry, "after the source restart");

    let t = Instant::now();
    pair.target.restart().await.expect("restart the target");
    eprintln!("target restarted in {:?}", t.elapsed());
    marker_arrives(
        &pair,
        &ferry,
        MARKER_IDS + 1,
        "a change made after the target restart to reach the target",
    )
    .await;
    assert_running(&mut ferry, "after the target restart");

    let changes = traffic.finish().await;
    eprintln!("{changes} row changes during the restarts");
    wait_equal(&pair, &tables, Duration::from_secs(120), &ferry, &[]).await;
    assert_running(&mut ferry, "after catching up");
    let log = ferry.log_text();
    assert!(
        log.contains("source failed, reconnecting"),
        "ferry never noticed the source restart; its log:\n{log}"
    );
    eprintln!(
        "source_and_target_restart_mid_stream took {:?}",
        started.elapsed()
    );
}

/// With no traffic on the replicated tables but WAL written in another
/// database of the source cluster, the slot's confirmed position keeps
/// advancing: an idle pipeline does not pin WAL. Checked with the heartbeat
/// on (the test config's 1 s) and off (keepalives alone must do it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slot_advances() {
    let started = Instant::now();
    let pair = Pair::start("idle").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let tables = ["public.items"];
    let with_heartbeat = ConfigBuilder::new(&pair).tables(&tables).build();
    let text = std::fs::read_to_string(&with_heartbeat).expect("read config");
    assert!(
        text.contains("heartbeat_secs = 1"),
        "config changed: {text}"
    );
    let without_heartbeat = pair.dir.path().join("no-heartbeat.toml");
    std::fs::write(
        &without_heartbeat,
        text.replace("heartbeat_secs = 1", "heartbeat_secs = 0"),
    )
    .expect("write config");

    // WAL traffic in another database of the same cluster.
    pair.source
        .create_database("other")
        .await
        .expect("create database other");
    let other = pair.source.connect("other").await.expect("connect other");
    other
        .batch_execute("CREATE TABLE noise (id bigserial PRIMARY KEY, at timestamptz)")
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let noise = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                other
                    .execute("INSERT INTO noise (at) VALUES (now())", &[])
                    .await
                    .expect("write noise");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    for (config, what) in [
        (&with_heartbeat, "with the heartbeat"),
        (&without_heartbeat, "without the heartbeat"),
    ] {
        let mut ferry = Ferry::spawn(config);
        wait_equal(&pair, &tables, Duration::from_secs(60), &ferry, &[]).await;
        let start: String = src
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let t = Instant::now();
        let reached = tokio::time::timeout(
            Duration::from_secs(35),
            poll(
                Duration::from_secs(30),
                &format!("the idle slot to advance past {start} {what}"),
                &ferry,
                || async {
                    let row = src
                        .query_one(
                            "SELECT confirmed_flush_lsn::text, confirmed_flush_lsn > $1::text::pg_lsn
                               FROM pg_replication_slots WHERE slot_name = 'ferry'",
                            &[&start],
                        )
                        .await
                        .expect("read pg_replication_slots");
                    let passed: Option<bool> = row.get(1);
                    passed
                        .unwrap_or(false)
                        .then(|| row.get::<_, Option<String>>(0))
                },
            ),
        )
        .await;
        let Ok(lsn) = reached else {
            panic!("polling the slot hung {what}; log:\n{}", ferry.log_text());
        };
        eprintln!(
            "slot advanced {what} from {start} to {lsn:?} in {:?}",
            t.elapsed()
        );
        assert_running(&mut ferry, what);
        ferry.kill9();
    }
    stop.store(true, Ordering::SeqCst);
    noise.await.expect("noise task");
    eprintln!("idle_slot_advances took {:?}", started.elapsed());
}
