//! The initial snapshot: gap-free under concurrent writes (parallel chunked
//! COPY), adoption of a pre-existing slot with every change applied exactly
//! once, and the refusal of a table without a primary key.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{ferry_cmd, ConfigBuilder, Ferry, Pair};

/// Waits until the ferry log contains `needle`; panics (with the log) if
/// ferry exits first or `timeout` passes.
fn wait_log(ferry: &mut Ferry, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if ferry.log_text().contains(needle) {
            return;
        }
        if let Some(status) = ferry.exited() {
            panic!(
                "ferry exited ({status}) before logging {needle:?}:\n{}",
                ferry.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "ferry did not log {needle:?} within {timeout:?}:\n{}",
            ferry.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pair.wait_equal`, with ferry's log in the panic message.
async fn wait_equal_logged(pair: &Pair, ferry: &Ferry, tables: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match pair.compare(tables).await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "target never matched source: {e}\nferry log:\n{}",
                    ferry.log_text()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A small deterministic generator (xorshift), so that a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const ROWS: i64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_100k_rows_under_concurrent_writes() {
    let pair = Pair::start("snap").await;
    let src = pair.src().await;
    src.batch_execute(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL, pad text);
         INSERT INTO big SELECT g, 0, md5(g::text) || md5((-g)::text) FROM generate_series(1, {ROWS}) g;"
    ))
    .await
    .unwrap();
    src.batch_execute("VACUUM ANALYZE big").await.unwrap();
    // relpages drives the chunking: make sure there are many chunks of 64.
    let pages: i32 = src
        .query_one("SELECT relpages FROM pg_class WHERE relname = 'big'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(pages > 64 * 8, "only {pages} pages: too few chunks");

    // Writer: small transactions of inserts, updates (also of the key) and
    // deletes, from before ferry starts until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let client = pair.src().await;
        let stop = Arc::clone(&stop);
        let commits = Arc::clone(&commits);
        tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let a = rng.below(ROWS as u64) as i64 + 1;
                let b = rng.below(ROWS as u64) as i64 + 1;
                let c = rng.below(ROWS as u64) as i64 + 1;
                let mut sql = format!(
                    "BEGIN;
                     INSERT INTO big VALUES ({new}, {i}, 'new {i}');
                     UPDATE big SET v = v + 1, pad = pad || '+' WHERE id = {a};
                     DELETE FROM big WHERE id = {b};",
                    new = 1_000_000 + i
                );
                if i % 5 == 0 {
                    sql.push_str(&format!(
                        "UPDATE big SET v = v + 1 WHERE id BETWEEN {c} AND {c} + 40;"
                    ));
                }
                if i % 7 == 0 {
                    // Key change; the target key is fresh.
                    sql.push_str(&format!(
                        "UPDATE big SET id = {moved} WHERE id = {c};",
                        moved = 2_000_000 + i
                    ));
                }
                sql.push_str("COMMIT;");
                client
                    .batch_execute(&sql)
                    .await
                    .expect("writer transaction");
                commits.fetch_add(1, Ordering::Relaxed);
            }
            i
        })
    };
    // Let the writer get going before the slot and snapshot exist.
    while commits.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let tables = ["public.big"];
    let config = ConfigBuilder::new(&pair)
        .tables(&tables)
        .snapshot_chunk_pages(64)
        .build();
    let mut ferry = Ferry::spawn(&config);
    let (exported, copied) = tokio::task::block_in_place(|| {
        wait_log(&mut ferry, "snapshot exported", Duration::from_secs(30));
        let exported = commits.load(Ordering::Relaxed);
        wait_log(
            &mut ferry,
            "snapshot of table copied",
            Duration::from_secs(50),
        );
        (exported, commits.load(Ordering::Relaxed))
    });
    eprintln!("writer commits: {exported} at export, {copied} when copied");
    // Keep writing while streaming, then stop and compare.
    let target = copied + 200;
    let deadline = Instant::now() + Duration::from_secs(30);
    while commits.load(Ordering::Relaxed) < target {
        assert!(Instant::now() < deadline, "writer stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.expect("writer task");
    eprintln!("writer committed {written} transactions");
    wait_equal_logged(&pair, &ferry, &tables, Duration::from_secs(50)).await;
    assert!(
        ferry.exited().is_none(),
        "ferry exited: {}",
        ferry.log_text()
    );
}

/// Source table `acct` with 1000 rows, and its target twin with an audit
/// trigger that records every row version ferry writes: a change applied
/// twice shows up twice.
async fn audited_pair(prefix: &str) -> Pair {
    let pair = Pair::start(prefix).await;
    pair.src()
        .await
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text);
             INSERT INTO acct SELECT g, 0, 'before slot' FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    pair.dst()
        .await
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text);
             CREATE TABLE audit (id int, v int, note text);
             CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO audit VALUES (NEW.id, NEW.v, NEW.note); RETURN NEW; END $$;
             CREATE TRIGGER acct_audit AFTER INSERT OR UPDATE ON acct
                 FOR EACH ROW EXECUTE FUNCTION audit_row();",
        )
        .await
        .unwrap();
    pair
}

/// Changes committed after the slot exists and before ferry starts.
const AFTER_SLOT: &str = "
    INSERT INTO acct SELECT g, 1, 'after slot' FROM generate_series(1001, 1100) g;
    UPDATE acct SET v = v + 10, note = 'updated after slot' WHERE id <= 50;
    DELETE FROM acct WHERE id BETWEEN 51 AND 60;
    UPDATE acct SET v = v + 100 WHERE id <= 20;";

/// Ids in `lo..=hi` whose row versions were written to the target other
/// than exactly once.
async fn not_once(dst: &tokio_postgres::Client, lo: i32, hi: i32) -> Vec<(i32, i64)> {
    dst.query(
        "SELECT id, count(*) FROM audit WHERE id BETWEEN $1 AND $2
          GROUP BY id HAVING count(*) <> 1 ORDER BY id",
        &[&lo, &hi],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
    .collect()
}

/// A slot created before ferry's first start (and before its publication
/// exists), with changes committed after it and a transaction still open
/// when ferry starts: every change lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_existing_slot_applies_every_change_exactly_once() {
    let pair = audited_pair("preslot").await;
    let src = pair.src().await;
    src.batch_execute("SELECT pg_create_logical_replication_slot('ferry', 'pgoutput')")
        .await
        .unwrap();
    src.batch_execute(AFTER_SLOT).await.unwrap();
    let open = pair.src().await;
    open.batch_execute(
        "BEGIN;
         INSERT INTO acct SELECT g, 2, 'open at start' FROM generate_series(2001, 2050) g;
         UPDATE acct SET v = v + 1000, note = 'open update' WHERE id BETWEEN 100 AND 109;",
    )
    .await
    .unwrap();

    let tables = ["public.acct"];
    let config = ConfigBuilder::new(&pair).tables(&tables).build();
    let mut ferry = Ferry::spawn(&config);
    // Ferry has to wait for the open transaction before it can stream:
    // commit it once ferry is under way.
    tokio::task::block_in_place(|| {
        wait_log(
            &mut ferry,
            "replication slot predates the publication",
            Duration::from_secs(30),
        )
    });
    open.batch_execute("COMMIT").await.unwrap();
    src.batch_execute(
        "INSERT INTO acct SELECT g, 3, 'streamed' FROM generate_series(3001, 3010) g;
         UPDATE acct SET v = v + 1 WHERE id = 1;",
    )
    .await
    .unwrap();
    wait_equal_logged(&pair, &ferry, &tables, Duration::from_secs(40)).await;

    // Exactly once: nothing but id 1 (updated again while streaming) was
    // written twice.
    let dst = pair.dst().await;
    assert_eq!(
        not_once(&dst, 2, 3010).await,
        vec![],
        "written more than once"
    );
    let deleted: i64 = dst
        .query_one("SELECT count(*) FROM acct WHERE id BETWEEN 51 AND 60", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(deleted, 0);
    assert!(
        ferry.exited().is_none(),
        "ferry exited: {}",
        ferry.log_text()
    );
}

/// A slot and publication made by the operator (publication first), and a
/// transaction that is open when the snapshot is exported and commits
/// after: the snapshot does not hold it, the stream applies it once, and
/// what the snapshot holds is not applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_open_across_the_snapshot_is_applied_once() {
    let pair = audited_pair("openacross").await;
    let src = pair.src().await;
    src.batch_execute("CREATE PUBLICATION ferry FOR TABLE acct")
        .await
        .unwrap();
    src.batch_execute("SELECT pg_create_logical_replication_slot('ferry', 'pgoutput')")
        .await
        .unwrap();
    src.batch_execute(AFTER_SLOT).await.unwrap();
    let open = pair.src().await;
    open.batch_execute(
        "BEGIN;
         INSERT INTO acct SELECT g, 2, 'open across snapshot' FROM generate_series(2001, 2050) g;
         UPDATE acct SET v = v + 1000, note = 'open update' WHERE id BETWEEN 100 AND 109;",
    )
    .await
    .unwrap();

    let tables = ["public.acct"];
    let config = ConfigBuilder::new(&pair).tables(&tables).build();
    let mut ferry = Ferry::spawn(&config);
    tokio::task::block_in_place(|| {
        wait_log(&mut ferry, "snapshot exported", Duration::from_secs(30))
    });
    open.batch_execute("COMMIT").await.unwrap();
    src.batch_execute(
        "INSERT INTO acct SELECT g, 3, 'streamed' FROM generate_series(3001, 3010) g;
         UPDATE acct SET v = v + 1 WHERE id = 1;",
    )
    .await
    .unwrap();
    wait_equal_logged(&pair, &ferry, &tables, Duration::from_secs(40)).await;

    // The rows written after the slot and before the start: once, by the
    // snapshot (not again by the stream). The open transaction: once, by
    // the stream, on top of the snapshot's version of ids 100-109. Id 1 is
    // updated again while streaming.
    let dst = pair.dst().await;
    assert_eq!(
        not_once(&dst, 2, 99).await,
        vec![],
        "written more than once"
    );
    assert_eq!(
        not_once(&dst, 110, 3010).await,
        vec![],
        "written more than once"
    );
    let open_updates: i64 = dst
        .query_one("SELECT count(*) FROM audit WHERE note = 'open update'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(open_updates, 10, "open transaction's updates applied once");
    assert!(
        ferry.exited().is_none(),
        "ferry exited: {}",
        ferry.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_without_primary_key_is_refused() {
    let pair = Pair::start("nopk").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE keyed (id int PRIMARY KEY, v text);
         CREATE TABLE nokey (id int, v text);
         INSERT INTO nokey VALUES (1, 'a'), (1, 'a');",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.keyed", "public.nokey"])
        .build();

    let (code, out) = ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "ferry check must fail:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("[FAIL] table public.nokey") && l.contains("no primary key")),
        "no FAIL line for public.nokey:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("[ ok ] table public.keyed")),
        "{out}"
    );

    let mut ferry = Ferry::spawn(&config);
    let status = tokio::task::block_in_place(|| ferry.wait_exit(Duration::from_secs(30)))
        .unwrap_or_else(|| panic!("ferry kept running:\n{}", ferry.log_text()));
    let log = ferry.log_text();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(
        log.contains("public.nokey has no primary key"),
        "log does not name the keyless table:\n{log}"
    );
    // Nothing was set up for a pipeline that cannot run.
    let slots: i64 = src
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a refused pipeline left a replication slot");
}
