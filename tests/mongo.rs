//! MongoDB → PostgreSQL end to end: the real `ferry` binary between a
//! MongoDB-wire-protocol server (SecantusDB, see tests/support/mongo.rs)
//! and a PostgreSQL cluster, both started by each test.
//!
//! Every test ends with an exact comparison: for each MongoDB document the
//! target row with its `_id` holds a `document` equal (as jsonb, numbers
//! compared exactly) to what the source's codec makes of it, and the row
//! counts are equal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{
    doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document, JavaScriptCodeWithScope,
    Regex, Timestamp,
};
use mongodb::Collection;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use crate::support::mongo::{
    compare_collection, log_tail, wait_mirrored_while, MongoOptions, MongoServer, MongoToPg,
};
use crate::support::{ferry_cmd, Ferry};

/// The target schema when the sink names none: the MongoDB database.
const SCHEMA: &str = "app";

fn dec(s: &str) -> Decimal128 {
    s.parse()
        .unwrap_or_else(|e| panic!("Decimal128 {s:?}: {e:?}"))
}

/// Waits for `ferry` to exit within `timeout` and returns its code and log;
/// panics if it is still running then.
fn wait_exit(ferry: &mut Ferry, timeout: Duration) -> (i32, String) {
    let status = tokio::task::block_in_place(|| ferry.wait_exit(timeout));
    let log = ferry.log_text();
    match status {
        Some(s) => (s.code().unwrap_or(-1), log),
        None => panic!(
            "ferry still running after {timeout:?}; log:\n{}",
            log_tail(&log, 60)
        ),
    }
}

/// The error ferry printed when it stopped (its last `ferry: …` line).
fn exit_message(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| l.starts_with("ferry: "))
        .unwrap_or_else(|| {
            panic!(
                "no `ferry: <error>` line in the log:\n{}",
                log_tail(log, 40)
            )
        })
}

/// Panics with the log if `ferry` has exited.
fn assert_running(ferry: &mut Ferry, when: &str) {
    if let Some(status) = ferry.exited() {
        panic!(
            "ferry exited ({status}) {when}; log:\n{}",
            log_tail(&ferry.log_text(), 80)
        );
    }
}

/// Waits until every collection is mirrored exactly, failing at once if
/// ferry dies.
async fn wait_all(fx: &MongoToPg, collections: &[&str], ferry: &mut Ferry, timeout: Duration) {
    wait_all_in(fx, SCHEMA, collections, ferry, timeout).await
}

/// [`wait_all`] into the target schema `schema`.
async fn wait_all_in(
    fx: &MongoToPg,
    schema: &str,
    collections: &[&str],
    ferry: &mut Ferry,
    timeout: Duration,
) {
    let db = fx.db().await;
    let pg = fx.pg().await;
    for c in collections {
        wait_mirrored_while(&db, &pg, schema, c, timeout, Some(&mut *ferry)).await;
    }
}

/// Whether the target has a table `app.<name>`.
async fn target_has_table(pg: &tokio_postgres::Client, name: &str) -> bool {
    pg.query_one(
        "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
        &[&SCHEMA, &name],
    )
    .await
    .expect("to_regclass")
    .get(0)
}

/// The harness itself: the server starts, answers, serves a change stream,
/// and keeps its data across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_harness_round_trip_and_restart() {
    let mut server = MongoServer::start(MongoOptions::default()).await;
    let client = server.client().await;
    let coll: Collection<Document> = client.database("app").collection("t");
    let mut stream = coll.watch().await.expect("watch");
    coll.insert_one(doc! {"_id": 1, "d": dec("1E+2")})
        .await
        .expect("insert");
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("change event within 10 s")
        .expect("an event")
        .expect("change stream");
    assert_eq!(
        event.document_key,
        Some(doc! {"_id": 1}),
        "unexpected event {event:?}"
    );
    drop(stream);
    server.restart().await;
    let client = server.client().await;
    let coll: Collection<Document> = client.database("app").collection("t");
    let got = coll
        .find_one(doc! {"_id": 1})
        .await
        .expect("find")
        .expect("the document survives the restart");
    assert_eq!(got.get("d"), Some(&Bson::Decimal128(dec("1E+2"))));
}

/// Inserts, `$set`, `$inc` on Decimal128, `$unset`, `$push`/`$pull`,
/// replace, upsert and deletes while ferry streams: the target equals the
/// source, and a collection that is not listed is not mirrored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_crud_streaming() {
    let started = Instant::now();
    let fx = MongoToPg::start("mcrud", MongoOptions::default()).await;
    let db = fx.db().await;
    let payments: Collection<Document> = db.collection("payments");
    let users: Collection<Document> = db.collection("users");
    let audit: Collection<Document> = db.collection("audit");
    // A little of everything before ferry starts: the snapshot's part.
    let early = ObjectId::new();
    payments
        .insert_one(doc! {"_id": early, "amount": dec("5.00"), "status": "new"})
        .await
        .unwrap();
    users
        .insert_one(doc! {"_id": "u0", "name": "Zoé", "balance": dec("0")})
        .await
        .unwrap();
    audit
        .insert_one(doc! {"_id": 1, "what": "boot"})
        .await
        .unwrap();

    let config = fx.config(&["payments", "users"], "", "");
    let mut ferry = Ferry::spawn(&config);

    let mut pids = Vec::new();
    let mut batch = Vec::new();
    for i in 0..50 {
        let id = ObjectId::new();
        pids.push(id);
        batch.push(doc! {
            "_id": id,
            "amount": dec(&format!("{}.{:02}", 10 + i, i)),
            "currency": "EUR",
            "status": "new",
            "created": DateTime::now(),
            "items": [{"sku": format!("sku-{i}"), "qty": i}],
        });
    }
    payments.insert_many(batch).await.unwrap();
    let mut ubatch = Vec::new();
    for i in 1..=10 {
        let tags = if i % 3 == 0 {
            vec!["vip", "old"]
        } else {
            vec!["new"]
        };
        ubatch.push(doc! {
            "_id": format!("u{i}"),
            "name": format!("user {i}"),
            "email": format!("u{i}@example.com"),
            "balance": dec("0"),
            "tags": tags,
            "opt": i,
        });
    }
    users.insert_many(ubatch).await.unwrap();

    // $set + $inc on Decimal128.
    payments
        .update_one(
            doc! {"_id": pids[0]},
            doc! {"$set": {"status": "paid"}, "$inc": {"amount": dec("0.01")}},
        )
        .await
        .unwrap();
    payments
        .update_many(
            doc! {"status": "new"},
            doc! {"$inc": {"amount": dec("-0.005")}, "$set": {"reviewed": true}},
        )
        .await
        .unwrap();
    payments
        .update_one(
            doc! {"_id": early},
            doc! {"$mul": {"amount": dec("1.5")}, "$set": {"status": "late"}},
        )
        .await
        .unwrap();
    // A hundred $inc of 0.1 on one balance: exactly 10.0, never 9.99999.
    for _ in 0..100 {
        users
            .update_one(doc! {"_id": "u1"}, doc! {"$inc": {"balance": dec("0.1")}})
            .await
            .unwrap();
    }
    // Array operators.
    payments
        .update_one(
            doc! {"_id": pids[2]},
            doc! {"$push": {"items": {"sku": "extra", "qty": 1}}},
        )
        .await
        .unwrap();
    payments
        .update_one(doc! {"_id": pids[3]}, doc! {"$pull": {"items": {"qty": 3}}})
        .await
        .unwrap();
    // $unset (field gone) differs from $set null (field present, null).
    users
        .update_one(doc! {"_id": "u2"}, doc! {"$unset": {"opt": ""}})
        .await
        .unwrap();
    users
        .update_one(doc! {"_id": "u4"}, doc! {"$set": {"opt": Bson::Null}})
        .await
        .unwrap();
    // Replace: fields that are not in the new document disappear.
    users
        .replace_one(
            doc! {"_id": "u5"},
            doc! {"_id": "u5", "renamed": "yes", "balance": dec("-12.345")},
        )
        .await
        .unwrap();
    // Upsert that inserts.
    users
        .update_one(
            doc! {"_id": "u99"},
            doc! {"$set": {"name": "upserted", "balance": dec("1E+2")}},
        )
        .upsert(true)
        .await
        .unwrap();
    // Deletes.
    payments.delete_one(doc! {"_id": pids[1]}).await.unwrap();
    users.delete_many(doc! {"tags": "vip"}).await.unwrap();
    // Delete, then insert the same _id with other content.
    payments.delete_one(doc! {"_id": pids[4]}).await.unwrap();
    payments
        .insert_one(doc! {"_id": pids[4], "amount": dec("0.000"), "status": "reborn"})
        .await
        .unwrap();
    // Not listed: must not reach the target.
    audit
        .insert_one(doc! {"_id": 2, "what": "x"})
        .await
        .unwrap();

    wait_all(
        &fx,
        &["payments", "users"],
        &mut ferry,
        Duration::from_secs(30),
    )
    .await;
    let pg = fx.pg().await;
    // Spot checks that do not go through the codec.
    let row = pg
        .query_one(
            "SELECT document->'balance' = '10.0'::jsonb, (document->'balance')::text FROM app.users WHERE _id = '\"u1\"'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "100 × $inc 0.1 is not exactly 10: {:?}",
        row.get::<_, String>(1)
    );
    let row = pg
        .query_one(
            "SELECT document ? 'opt' FROM app.users WHERE _id = '\"u2\"'",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "an $unset field is still there");
    let row = pg
        .query_one(
            "SELECT document->'opt' = 'null'::jsonb FROM app.users WHERE _id = '\"u4\"'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "a field set to null is not JSON null"
    );
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM app.payments WHERE _id = jsonb_build_object('$oid', $1::text) AND document->'_id' = jsonb_build_object('$oid', $1::text)",
            &[&pids[0].to_hex()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "ObjectId _id is not the hex text / {{\"$oid\"}} pair");
    assert!(
        !target_has_table(&pg, "audit").await,
        "the unlisted collection audit was mirrored"
    );
    assert_running(&mut ferry, "after mirroring");
    eprintln!("mongo_crud_streaming: {:?}", started.elapsed());
}

/// Random inserts, updates and deletes on `coll` until `stop` is set;
/// returns how many operations it made. Ids `0..existing` exist at start;
/// new documents get ids from `existing` up.
struct Churn {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<u64>,
}

impl Churn {
    fn start(coll: Collection<Document>, existing: i64, seed: u64) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handle = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut next = existing;
            let mut ops = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                let target = rng.random_range(0..next);
                let cents = rng.random_range(-10_000i64..10_000);
                let sign = if cents < 0 { "-" } else { "" };
                let amount = dec(&format!(
                    "{sign}{}.{:02}",
                    cents.abs() / 100,
                    cents.abs() % 100
                ));
                match rng.random_range(0..100) {
                    0..30 => {
                        coll.insert_one(doc_for(next, amount))
                            .await
                            .expect("churn insert");
                        next += 1;
                    }
                    30..70 => {
                        coll.update_one(
                            doc! {"_id": target},
                            doc! {
                                "$inc": {"amount": amount, "version": 1},
                                "$set": {"touched": DateTime::now()},
                            },
                        )
                        .await
                        .expect("churn update");
                    }
                    70..85 => {
                        coll.replace_one(doc! {"_id": target}, doc_for(target, amount))
                            .await
                            .expect("churn replace");
                    }
                    _ => {
                        coll.delete_one(doc! {"_id": target})
                            .await
                            .expect("churn delete");
                    }
                }
                ops += 1;
            }
            ops
        });
        Churn { stop, handle }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.expect("churn task")
    }
}

fn doc_for(id: i64, amount: Decimal128) -> Document {
    doc! {
        "_id": id,
        "name": format!("account {id}"),
        "amount": amount,
        "version": 0,
        "tags": ["a", {"k": id}],
        "created": DateTime::from_millis(1_700_000_000_000 + id),
    }
}

/// Inserts `n` documents `doc_for(0..n)` in batches.
async fn seed_docs(coll: &Collection<Document>, n: i64) {
    for start in (0..n).step_by(2000) {
        let batch: Vec<Document> = (start..(start + 2000).min(n))
            .map(|i| doc_for(i, dec(&format!("{i}.50"))))
            .collect();
        coll.insert_many(batch).await.expect("seed");
    }
}

fn seed_from_env(var: &str, test: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: {var}={seed}");
    seed
}

/// 20k documents exist; writes, updates and deletes go on while ferry
/// snapshots them and switches to the stream: the target equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_snapshot_while_writing() {
    let started = Instant::now();
    let seed = seed_from_env("FERRY_MONGO_SEED", "mongo_snapshot_while_writing");
    let fx = MongoToPg::start("msnap", MongoOptions::default()).await;
    let db = fx.db().await;
    let coll: Collection<Document> = db.collection("accounts");
    seed_docs(&coll, 20_000).await;
    eprintln!("seeded 20k documents in {:?}", started.elapsed());
    let config = fx.config(&["accounts"], "snapshot_batch_size = 500", "");
    let churn = Churn::start(coll.clone(), 20_000, seed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ferry = Ferry::spawn(&config);
    let t = Instant::now();
    // Writes overlap the whole snapshot: keep going until the target has
    // most rows, then a little longer so that the stream's part follows.
    let pg = fx.pg().await;
    loop {
        assert_running(&mut ferry, "during the snapshot");
        let rows: i64 = if target_has_table(&pg, "accounts").await {
            pg.query_one("SELECT count(*) FROM app.accounts", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or(0)
        } else {
            0
        };
        if rows >= 20_000 || t.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ops = churn.finish().await;
    eprintln!("{ops} writes during the first {:?} of ferry", t.elapsed());
    assert!(ops > 100, "the writer made only {ops} writes");
    wait_all(&fx, &["accounts"], &mut ferry, Duration::from_secs(40)).await;
    assert_running(&mut ferry, "after mirroring");
    eprintln!("mongo_snapshot_while_writing: {:?}", started.elapsed());
}

/// Writes go on while ferry is killed with SIGKILL three times, the first
/// in the middle of the initial snapshot, the others at random moments of
/// the stream, and restarted each time: the target equals the source, and
/// the checkpoint holds a resume token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_resume_after_kill9() {
    const DOCS: i64 = 20_000;
    let started = Instant::now();
    let seed = seed_from_env("FERRY_MONGO_SEED", "mongo_resume_after_kill9");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let snapshot_kill_rows = rng.random_range(1..=DOCS / 3);
    let delays: Vec<Duration> = (0..2)
        .map(|_| Duration::from_millis(rng.random_range(300..=2500)))
        .collect();
    let fx = MongoToPg::start("mkill", MongoOptions::default()).await;
    let db = fx.db().await;
    let coll: Collection<Document> = db.collection("accounts");
    seed_docs(&coll, DOCS).await;
    let config = fx.config(&["accounts"], "snapshot_batch_size = 200", "");
    let churn = Churn::start(coll.clone(), DOCS, seed ^ 0x5eed);
    let pg = fx.pg().await;
    let mut ferry = Ferry::spawn(&config);
    let mut logs = Vec::new();

    // Kill 1: rows of the snapshot arrived, the snapshot is not complete.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert_running(&mut ferry, "during the snapshot");
        let rows: i64 = pg
            .query_one("SELECT count(*) FROM app.accounts", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if rows >= snapshot_kill_rows {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the snapshot copied only {rows} rows in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ferry.kill9();
    let done: i64 = pg
        .query_one(
            "SELECT count(*) FROM public.ferry_snapshot WHERE pipeline = 'test'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    assert_eq!(
        done, 0,
        "the snapshot completed before the kill: seed more documents"
    );
    logs.push(ferry.log_text());
    ferry = Ferry::spawn(&config);

    // Kills 2 and 3: at random moments.
    for delay in &delays {
        tokio::time::sleep(*delay).await;
        assert_running(&mut ferry, "before a kill");
        ferry.kill9();
        logs.push(ferry.log_text());
        ferry = Ferry::spawn(&config);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ops = churn.finish().await;
    eprintln!(
        "3 kills (the first after {snapshot_kill_rows} snapshot rows, then after \
         {delays:?}), {ops} writes"
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match compare_collection(&db, &pg, SCHEMA, "accounts").await {
            Ok(()) => break,
            Err(e) => {
                if let Some(status) = ferry.exited() {
                    panic!(
                        "ferry exited ({status}) after the kills: {e}\nlast log:\n{}\n\nearlier \
                         runs:\n{}",
                        log_tail(&ferry.log_text(), 60),
                        logs.iter()
                            .map(|l| log_tail(l, 20))
                            .collect::<Vec<_>>()
                            .join("\n----\n")
                    );
                }
                if Instant::now() > deadline {
                    panic!(
                        "target never matched after the kills: {e}\nlast log:\n{}",
                        log_tail(&ferry.log_text(), 60)
                    );
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    assert_running(&mut ferry, "after catching up");
    let token: Option<String> = match crate::support::kafka::bus() {
        // The target can equal the source before the checkpoint row exists:
        // a snapshot restarted by the last kill reads the final state, and
        // the changes made during it (which write the checkpoint with their
        // token) are applied after it. Wait for them, with ferry running.
        crate::support::kafka::Bus::Embedded => {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let token: Option<String> = pg
                    .query_opt(
                        "SELECT resume_token FROM public.ferry_checkpoint WHERE pipeline = 'test'",
                        &[],
                    )
                    .await
                    .expect("read the checkpoint")
                    .and_then(|r| r.get(0));
                if token.is_some() || Instant::now() > deadline {
                    break token;
                }
                assert_running(&mut ferry, "waiting for the checkpoint");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // On Kafka the source keeps its checkpoint in Kafka.
        crate::support::kafka::Bus::Kafka => {
            let cfg = ferry_pipeline::config::Config::load(&config).expect("config");
            ferry_pipeline::bus::kafka::source_checkpoint::load(cfg.kafka.as_ref().unwrap(), "test")
                .await
                .expect("the source checkpoint in Kafka")
                .resume_token
        }
    };
    assert!(token.is_some(), "no resume token in the checkpoint");
    eprintln!("mongo_resume_after_kill9: {:?}", started.elapsed());
}

/// The stored resume token falls out of a small oplog while ferry is down:
/// by default ferry stops (exit 3) and says why and which setting decides;
/// with `on_history_lost = "resnapshot"` it copies everything again
/// (including the deletes it missed) and streams on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_resume_token_expired() {
    let started = Instant::now();
    let fx = MongoToPg::start(
        "mexpire",
        MongoOptions {
            oplog_max_entries: Some(50),
            ..Default::default()
        },
    )
    .await;
    let db = fx.db().await;
    let coll: Collection<Document> = db.collection("payments");
    seed_docs(&coll, 100).await;
    let config = fx.config(&["payments"], "", "");
    let mut ferry = Ferry::spawn(&config);
    wait_all(&fx, &["payments"], &mut ferry, Duration::from_secs(30)).await;
    // Some streamed changes, so that a token from the stream is stored.
    for i in 0..5i64 {
        coll.update_one(doc! {"_id": i}, doc! {"$set": {"streamed": true}})
            .await
            .unwrap();
    }
    wait_all(&fx, &["payments"], &mut ferry, Duration::from_secs(30)).await;
    ferry.kill9();

    // More than 1000 changes while ferry is down: SecantusDB prunes every
    // 1000 oplog writes, down to the newest 50. Deletes among them, which
    // only a full copy can notice once the oplog lost them.
    for i in 50..100i64 {
        coll.delete_one(doc! {"_id": i}).await.unwrap();
    }
    for start in (1000..2100i64).step_by(100) {
        let batch: Vec<Document> = (start..start + 100)
            .map(|i| doc_for(i, dec("1.25")))
            .collect();
        coll.insert_many(batch).await.unwrap();
    }

    let mut ferry = Ferry::spawn(&config);
    let (code, log) = wait_exit(&mut ferry, Duration::from_secs(30));
    assert_eq!(
        code,
        3,
        "expected exit 3 on a lost resume point; log:\n{}",
        log_tail(&log, 40)
    );
    let msg = exit_message(&log);
    assert!(
        msg.contains("on_history_lost"),
        "the error does not name on_history_lost: {msg}"
    );
    assert!(
        msg.to_lowercase().contains("oplog"),
        "the error does not say the resume point left the oplog: {msg}"
    );

    let config = fx.config(&["payments"], "on_history_lost = \"resnapshot\"", "");
    let mut ferry = Ferry::spawn(&config);
    wait_all(&fx, &["payments"], &mut ferry, Duration::from_secs(40)).await;
    // And it streams again after the copy.
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"after": "resnapshot"}})
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 2}).await.unwrap();
    wait_all(&fx, &["payments"], &mut ferry, Duration::from_secs(30)).await;
    assert_running(&mut ferry, "after the resnapshot");
    eprintln!("mongo_resume_token_expired: {:?}", started.elapsed());
}

/// One document with every BSON type the codec knows, and the edge values
/// of each.
fn all_types(id: impl Into<Bson>, oid: ObjectId, now: DateTime) -> Document {
    let mut doc = doc! {
        "_id": id.into(),
        "dec_1e2": dec("1E+2"),
        "dec_neg0": dec("-0"),
        "dec_34": dec("1234567890123456789012345678901234"),
        "dec_34frac": dec("1.234567890123456789012345678901234"),
        "dec_neg34": dec("-9999999999999999999999999999999999E-20"),
        "dec_small": dec("1.000E-10"),
        "dec_money": dec("19.90"),
        "dec_nan": dec("NaN"),
        "dec_inf": dec("Infinity"),
        "dec_ninf": dec("-Infinity"),
        "oid": oid,
        "i32_min": i32::MIN,
        "i32_max": i32::MAX,
        "i64": 9_007_199_254_740_993i64,
        "i64_min": i64::MIN,
        "i64_max": i64::MAX,
        "d01": 0.1f64,
        "d1e300": 1e300f64,
        "d_neg0": -0.0f64,
        "d_tiny": 5e-324f64,
        "d_max": f64::MAX,
        "d_nan": f64::NAN,
        "d_inf": f64::INFINITY,
        "d_ninf": f64::NEG_INFINITY,
    };
    // Two halves: one `doc!` this long exceeds the macro recursion limit.
    doc.extend(doc! {
        "date_now": now,
        "date_1900": DateTime::from_millis(-2_208_988_800_000),
        "date_9999": DateTime::from_millis(253_402_300_799_999),
        "date_epoch": DateTime::from_millis(0),
        "date_pre_epoch_ms": DateTime::from_millis(-1),
        "ts": Timestamp { time: 1_700_000_000, increment: 7 },
        "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: b"0123456789abcdef".to_vec() },
        "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 2, 255] },
        "bin_empty": Binary { subtype: BinarySubtype::Generic, bytes: vec![] },
        "s": "naïve café 日本語 🚀 \"quoted\" back\\slash \n\t ctrl\u{1}\u{1f} del\u{7f} ls\u{2028}",
        "s_empty": "",
        "t": true,
        "f": false,
        "nul": Bson::Null,
        "nested": {"a": {"b": {"c": [1, {"d": Bson::Null}], "e": {}}}, "empty_arr": []},
        "mixed": [
            1, "two", 3.5, dec("4.50"), Bson::Null, true, oid, now,
            [1, [2, [3]]], {"k": "v"}, i64::MAX, Binary { subtype: BinarySubtype::Generic, bytes: vec![7] },
        ],
        "regex": Regex { pattern: "^a.*b$".into(), options: "im".into() },
        "minkey": Bson::MinKey,
        "maxkey": Bson::MaxKey,
        "dbref": {"$ref": "users", "$id": oid, "$db": "app"},
        "code": Bson::JavaScriptCode("function() { return 1; }".into()),
        "code_scope": Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
            code: "function() { return x; }".into(),
            scope: doc! {"x": 1},
        }),
        "clé \"quoted\" key": 1,
    });
    doc
}

/// Hand-written expectations for `all_types` that do not go through the
/// codec: `(jsonb path expression, expected jsonb)`.
fn independent_expectations(oid: &ObjectId) -> Vec<(String, String)> {
    let hex = oid.to_hex();
    [
        ("dec_1e2", "100".to_owned()),
        ("dec_neg0", "0".to_owned()),
        ("dec_34", "1234567890123456789012345678901234".to_owned()),
        (
            "dec_34frac",
            "1.234567890123456789012345678901234".to_owned(),
        ),
        (
            "dec_neg34",
            "-99999999999999.99999999999999999999".to_owned(),
        ),
        ("dec_small", "0.0000000001".to_owned()),
        ("dec_money", "19.90".to_owned()),
        ("dec_nan", r#""NaN""#.to_owned()),
        ("dec_inf", r#""Infinity""#.to_owned()),
        ("dec_ninf", r#""-Infinity""#.to_owned()),
        ("oid", format!(r#"{{"$oid": "{hex}"}}"#)),
        ("i32_min", "-2147483648".to_owned()),
        ("i64", "9007199254740993".to_owned()),
        ("i64_min", "-9223372036854775808".to_owned()),
        ("i64_max", "9223372036854775807".to_owned()),
        ("d01", "0.1".to_owned()),
        ("d1e300", "1e300".to_owned()),
        ("d_tiny", "5e-324".to_owned()),
        ("d_max", "1.7976931348623157e308".to_owned()),
        ("date_1900", r#""1900-01-01 00:00:00+00""#.to_owned()),
        ("date_9999", r#""9999-12-31 23:59:59.999+00""#.to_owned()),
        (
            "date_pre_epoch_ms",
            r#""1969-12-31 23:59:59.999+00""#.to_owned(),
        ),
        (
            "ts",
            r#"{"$timestamp": {"t": 1700000000, "i": 7}}"#.to_owned(),
        ),
        (
            "uuid",
            r#""30313233-3435-3637-3839-616263646566""#.to_owned(),
        ),
        (
            "bin",
            r#"{"$binary": {"base64": "AAEC/w==", "subType": "00"}}"#.to_owned(),
        ),
        ("t", "true".to_owned()),
        ("nul", "null".to_owned()),
        (
            "regex",
            r#"{"$regularExpression": {"pattern": "^a.*b$", "options": "im"}}"#.to_owned(),
        ),
        ("minkey", r#"{"$minKey": 1}"#.to_owned()),
        ("maxkey", r#"{"$maxKey": 1}"#.to_owned()),
        (
            "dbref",
            format!(r#"{{"$ref": "users", "$id": {{"$oid": "{hex}"}}, "$db": "app"}}"#),
        ),
        (
            "code",
            r#"{"$code": "function() { return 1; }"}"#.to_owned(),
        ),
        (
            "nested",
            r#"{"a": {"b": {"c": [1, {"d": null}], "e": {}}}, "empty_arr": []}"#.to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Every BSON type, through the snapshot, the stream's inserts and an
/// update's full-document lookup, with `_id`s of several types: exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_every_bson_type_round_trips() {
    let started = Instant::now();
    let fx = MongoToPg::start("mtypes", MongoOptions::default()).await;
    let db = fx.db().await;
    let coll: Collection<Document> = db.collection("types");
    let oid = ObjectId::new();
    let now = DateTime::now();
    let snap_oid = ObjectId::new();
    coll.insert_many([
        all_types("snap-all", oid, now),
        all_types(snap_oid, oid, now),
        all_types(7i32, oid, now),
        all_types(1i64 << 40, oid, now),
        doc! {"_id": "missing-opt"},
        doc! {"_id": "upd", "x": 1},
    ])
    .await
    .unwrap();

    let config = fx.config(&["types"], "", "");
    let mut ferry = Ferry::spawn(&config);
    wait_all(&fx, &["types"], &mut ferry, Duration::from_secs(30)).await;

    let stream_oid = ObjectId::new();
    coll.insert_many([
        all_types("stream-all", oid, now),
        all_types(stream_oid, oid, now),
        all_types(8i32, oid, now),
        all_types((1i64 << 40) + 1, oid, now),
        all_types(doc! {"a": 1, "b": "x"}, oid, now),
    ])
    .await
    .unwrap();
    // The update path: the whole document comes from a lookup.
    let mut set = all_types("upd", oid, now);
    set.remove("_id");
    coll.update_one(doc! {"_id": "upd"}, doc! {"$set": set})
        .await
        .unwrap();

    wait_all(&fx, &["types"], &mut ferry, Duration::from_secs(30)).await;

    let pg = fx.pg().await;
    let checks = independent_expectations(&oid);
    for id in ["snap-all", "stream-all", "upd"] {
        for (field, want) in &checks {
            let row = pg
                .query_one(
                    "SELECT document->($2::text) = $3::text::jsonb, (document->($2::text))::text FROM app.types WHERE _id = to_jsonb($1::text)",
                    &[&id, field, want],
                )
                .await
                .unwrap_or_else(|e| panic!("row {id}: {e}"));
            let actual: Option<String> = row.get(1);
            assert_eq!(
                row.get::<_, Option<bool>>(0),
                Some(true),
                "{id}.{field}: expected {want}, target has {actual:?}"
            );
        }
        let row = pg
            .query_one(
                "SELECT document->>'s', document ? 'nul', document->'_id' FROM app.types WHERE _id = to_jsonb($1::text)",
                &[&id],
            )
            .await
            .unwrap();
        let s: String = row.get(0);
        assert_eq!(
            Some(&Bson::String(s)),
            all_types("x", oid, now).get("s"),
            "{id}: unicode text"
        );
        assert!(row.get::<_, bool>(1), "{id}: the null field is missing");
    }
    let row = pg
        .query_one(
            "SELECT document ? 'nul' FROM app.types WHERE _id = '\"missing-opt\"'",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "a missing field became present");
    // `_id`s (jsonb): ObjectId → {"$oid": hex}, integers → numbers.
    for id in [
        format!("{{\"$oid\": \"{}\"}}", snap_oid.to_hex()),
        format!("{{\"$oid\": \"{}\"}}", stream_oid.to_hex()),
        "7".to_owned(),
        "8".to_owned(),
        (1i64 << 40).to_string(),
        ((1i64 << 40) + 1).to_string(),
    ] {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM app.types WHERE _id = $1::text::jsonb",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "no target row with _id {id:?}");
    }
    assert_running(&mut ferry, "after mirroring");
    eprintln!("mongo_every_bson_type_round_trips: {:?}", started.elapsed());
}

/// ~10 MB documents (one big string, one array of 250k subdocuments),
/// through the snapshot and the stream, inserted and updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_large_documents() {
    let started = Instant::now();
    let fx = MongoToPg::start("mlarge", MongoOptions::default()).await;
    let db = fx.db().await;
    let coll: Collection<Document> = db.collection("big");
    let ten_mb = |c: char| c.to_string().repeat(10 * 1024 * 1024);
    let many = |n: i32| -> Vec<Bson> {
        (0..n)
            .map(|i| Bson::Document(doc! {"i": i, "v": "abcdefgh"}))
            .collect()
    };
    coll.insert_one(doc! {"_id": "str-snap", "s": ten_mb('a')})
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": "arr-snap", "items": many(250_000)})
        .await
        .unwrap();
    let config = fx.config(&["big"], "", "");
    let mut ferry = Ferry::spawn(&config);
    wait_all(&fx, &["big"], &mut ferry, Duration::from_secs(40)).await;
    eprintln!(
        "snapshot of the large documents mirrored at {:?}",
        started.elapsed()
    );

    coll.insert_one(doc! {"_id": "str-stream", "s": ten_mb('b')})
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": "arr-stream", "items": many(250_000)})
        .await
        .unwrap();
    // Updates: a whole new 10 MB value, and small changes to a big array.
    coll.update_one(
        doc! {"_id": "str-snap"},
        doc! {"$set": {"s": ten_mb('c'), "v": 2}},
    )
    .await
    .unwrap();
    coll.update_one(
        doc! {"_id": "arr-snap"},
        doc! {"$push": {"items": {"i": -1, "v": "pushed"}}},
    )
    .await
    .unwrap();
    coll.update_one(
        doc! {"_id": "arr-snap"},
        doc! {"$set": {"items.0.v": "changed", "items.1000.i": 1_000_000}},
    )
    .await
    .unwrap();
    coll.update_one(doc! {"_id": "str-stream"}, doc! {"$set": {"small": true}})
        .await
        .unwrap();
    wait_all(&fx, &["big"], &mut ferry, Duration::from_secs(40)).await;
    assert_running(&mut ferry, "after mirroring");
    eprintln!("mongo_large_documents: {:?}", started.elapsed());
}

/// Seeds `payments` and `users` (and an unlisted `audit`), starts ferry on
/// the two with `source_extra` and waits until they are mirrored.
async fn two_collections(fx: &MongoToPg, source_extra: &str) -> Ferry {
    let db = fx.db().await;
    for name in ["payments", "users", "audit"] {
        let c: Collection<Document> = db.collection(name);
        c.insert_many((0..20i64).map(|i| doc_for(i, dec("2.50"))))
            .await
            .unwrap();
    }
    let config = fx.config(&["payments", "users"], source_extra, "");
    let mut ferry = Ferry::spawn(&config);
    wait_all(
        fx,
        &["payments", "users"],
        &mut ferry,
        Duration::from_secs(30),
    )
    .await;
    ferry
}

/// With the default `on_collection_gone = "fail"`: dropping an unlisted
/// collection changes nothing; dropping a mirrored one stops ferry with
/// exit 3 and a log that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_collection_drop_fails() {
    let started = Instant::now();
    let fx = MongoToPg::start("mdrop", MongoOptions::default()).await;
    let mut ferry = two_collections(&fx, "").await;
    let db = fx.db().await;
    db.collection::<Document>("audit").drop().await.unwrap();
    db.collection::<Document>("payments")
        .insert_one(doc_for(100, dec("1")))
        .await
        .unwrap();
    wait_all(&fx, &["payments"], &mut ferry, Duration::from_secs(30)).await;
    assert_running(&mut ferry, "after an unlisted collection was dropped");

    db.collection::<Document>("users").drop().await.unwrap();
    let (code, log) = wait_exit(&mut ferry, Duration::from_secs(30));
    assert_eq!(code, 3, "log:\n{}", log_tail(&log, 40));
    let msg = exit_message(&log);
    assert!(
        msg.contains("users"),
        "the error does not name users: {msg}"
    );
    assert!(
        msg.contains("on_collection_gone"),
        "the error does not name on_collection_gone: {msg}"
    );
    // A restart does not skip past the drop.
    let config = fx.config(&["payments", "users"], "", "");
    let mut again = Ferry::spawn(&config);
    let (code, log) = wait_exit(&mut again, Duration::from_secs(30));
    assert_eq!(
        code,
        3,
        "restart after the drop; log:\n{}",
        log_tail(&log, 40)
    );
    eprintln!("mongo_collection_drop_fails: {:?}", started.elapsed());
}

/// Renaming a mirrored collection stops ferry too (exit 3, named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_collection_rename_fails() {
    let started = Instant::now();
    let fx = MongoToPg::start("mrename", MongoOptions::default()).await;
    let mut ferry = two_collections(&fx, "").await;
    let client = fx.mongo.client().await;
    client
        .database("admin")
        .run_command(doc! {"renameCollection": "app.payments", "to": "app.payments_old"})
        .await
        .expect("renameCollection");
    let (code, log) = wait_exit(&mut ferry, Duration::from_secs(30));
    assert_eq!(code, 3, "log:\n{}", log_tail(&log, 40));
    let msg = exit_message(&log);
    assert!(
        msg.contains("payments"),
        "the error does not name payments: {msg}"
    );
    assert!(
        msg.contains("on_collection_gone"),
        "the error does not name on_collection_gone: {msg}"
    );
    eprintln!("mongo_collection_rename_fails: {:?}", started.elapsed());
}

/// With `on_collection_gone = "ignore"` a drop is logged and
/// ferry keeps mirroring the rest; the target keeps the rows it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_collection_drop_ignored() {
    let started = Instant::now();
    let fx = MongoToPg::start("mignore", MongoOptions::default()).await;
    let mut ferry = two_collections(&fx, "on_collection_gone = \"ignore\"").await;
    let db = fx.db().await;
    db.collection::<Document>("users").drop().await.unwrap();
    let payments: Collection<Document> = db.collection("payments");
    payments.insert_one(doc_for(100, dec("1"))).await.unwrap();
    payments
        .update_one(doc! {"_id": 1i64}, doc! {"$set": {"after_drop": true}})
        .await
        .unwrap();
    wait_all(&fx, &["payments"], &mut ferry, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_running(
        &mut ferry,
        "after a mirrored collection was dropped (ignore)",
    );
    let pg = fx.pg().await;
    let kept: i64 = pg
        .query_one("SELECT count(*) FROM app.users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 20, "the target's users rows changed after the drop");
    eprintln!("mongo_collection_drop_ignored: {:?}", started.elapsed());
}

/// The MongoDB server restarts while ferry streams: ferry reconnects,
/// resumes and mirrors what was written before and after (into the
/// schema `sink.schema` names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_server_restart_while_streaming() {
    let started = Instant::now();
    let mut fx = MongoToPg::start("mrestart", MongoOptions::default()).await;
    let db = fx.db().await;
    let coll: Collection<Document> = db.collection("accounts");
    seed_docs(&coll, 500).await;
    // A target schema of its own (`sink.schema`).
    let config = fx.config(&["accounts"], "", "schema = \"mirror\"");
    let mut ferry = Ferry::spawn(&config);
    wait_all_in(
        &fx,
        "mirror",
        &["accounts"],
        &mut ferry,
        Duration::from_secs(30),
    )
    .await;
    for i in 0..50i64 {
        coll.update_one(doc! {"_id": i}, doc! {"$set": {"before_restart": true}})
            .await
            .unwrap();
    }
    fx.mongo.restart().await;
    let db = fx.db().await;
    let coll: Collection<Document> = db.collection("accounts");
    for i in 50..100i64 {
        coll.update_one(doc! {"_id": i}, doc! {"$set": {"after_restart": true}})
            .await
            .unwrap();
    }
    coll.delete_one(doc! {"_id": 200i64}).await.unwrap();
    coll.insert_one(doc_for(10_000, dec("3"))).await.unwrap();
    wait_all_in(
        &fx,
        "mirror",
        &["accounts"],
        &mut ferry,
        Duration::from_secs(40),
    )
    .await;
    assert_running(&mut ferry, "after the server restart");
    let pg = fx.pg().await;
    assert!(
        !target_has_table(&pg, "accounts").await,
        "rows went to app.accounts despite sink.schema = \"mirror\""
    );
    eprintln!(
        "mongo_server_restart_while_streaming: {:?}",
        started.elapsed()
    );
}

/// Documents that are distinct in MongoDB (`_id` 7 and "7", an ObjectId
/// and the string of its hex digits, `true` and "t") must never share one
/// target row: either each is mirrored to a row of its own, or ferry stops
/// and says why. A row silently overwritten by another document is data
/// loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_distinct_ids_never_share_a_row() {
    let started = Instant::now();
    let fx = MongoToPg::start("mids", MongoOptions::default()).await;
    let db = fx.db().await;
    let coll: Collection<Document> = db.collection("ids");
    let oid = ObjectId::new();
    coll.insert_many([
        doc! {"_id": 7, "kind": "int"},
        doc! {"_id": oid, "kind": "objectid"},
    ])
    .await
    .unwrap();
    let config = fx.config(&["ids"], "", "");
    let mut ferry = Ferry::spawn(&config);
    wait_all(&fx, &["ids"], &mut ferry, Duration::from_secs(30)).await;
    // One at a time, so that no two land in one batch.
    for d in [
        doc! {"_id": "7", "kind": "string"},
        doc! {"_id": oid.to_hex(), "kind": "hex string"},
        doc! {"_id": true, "kind": "bool"},
        doc! {"_id": "t", "kind": "t"},
    ] {
        coll.insert_one(d).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 6);
    let pg = fx.pg().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let diff = match compare_collection(&db, &pg, SCHEMA, "ids").await {
            Ok(()) => break,
            Err(e) => e,
        };
        if let Some(status) = ferry.exited() {
            let log = ferry.log_text();
            assert_ne!(status.code(), Some(0), "ferry exited 0: {diff}");
            let msg = exit_message(&log);
            assert!(
                msg.contains("_id"),
                "ferry stopped without naming the _id clash: {msg}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "distinct documents were merged into one target row, silently (ferry still \
             running): {diff}\nferry log:\n{}",
            log_tail(&ferry.log_text(), 30)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "mongo_distinct_ids_never_share_a_row: {:?}",
        started.elapsed()
    );
}

/// A document PostgreSQL cannot hold (a string with a NUL character,
/// which jsonb refuses) is never altered or skipped silently: it is parked
/// in the dead-letter queue with its reason (SQLSTATE 22P05) and the exact
/// document, the target holds no altered copy, and the good document of
/// the same batch lands; ferry keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_unmirrorable_document_is_parked_with_reason() {
    let started = Instant::now();
    let fx = MongoToPg::start("mbad", MongoOptions::default()).await;
    let db = fx.db().await;
    // (collection, written before ferry starts (the snapshot reads it) or
    // once it streams, document)
    let cases = [
        ("nul_snapshot", true, doc! {"_id": 1, "s": "a\u{0}b"}),
        (
            "nul_stream",
            false,
            doc! {"_id": 1, "d": {"x": "tab\tnul\u{0}"}},
        ),
    ];
    for (name, before, bad) in cases {
        let pg_db = format!("{}_{name}", fx.pg_db);
        fx.target
            .create_database(&pg_db)
            .await
            .expect("create target db");
        let coll: Collection<Document> = db.collection(name);
        coll.insert_one(doc! {"_id": 0, "ok": true}).await.unwrap();
        if before {
            coll.insert_one(bad.clone()).await.unwrap();
        }
        let config = fx.config_into(&pg_db, &[name], "", "");
        let mut ferry = Ferry::spawn(&config);
        if !before {
            // Streaming once the snapshot's row is there.
            let pg = fx.target.connect(&pg_db).await.expect("connect target");
            wait_mirrored_while(
                &db,
                &pg,
                SCHEMA,
                name,
                Duration::from_secs(20),
                Some(&mut ferry),
            )
            .await;
            coll.insert_one(bad.clone()).await.unwrap();
        }
        let pg = fx.target.connect(&pg_db).await.expect("connect target");
        let deadline = Instant::now() + Duration::from_secs(30);
        let parked = loop {
            let rows = pg
                .query(
                    "SELECT table_name, error_code, error_message, event FROM public.ferry_dlq",
                    &[],
                )
                .await
                .unwrap_or_default();
            if let Some(r) = rows.first() {
                break (
                    r.get::<_, String>(0),
                    r.get::<_, Option<String>>(1),
                    r.get::<_, String>(2),
                    r.get::<_, String>(3),
                );
            }
            assert!(
                ferry.exited().is_none(),
                "{name}: ferry stopped: {}",
                log_tail(&ferry.log_text(), 30)
            );
            assert!(
                Instant::now() < deadline,
                "{name}: nothing parked 30 s after the document was written; log:\n{}",
                log_tail(&ferry.log_text(), 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(parked.0, name);
        assert_eq!(parked.1.as_deref(), Some("22P05"), "{parked:?}");
        // The parked change holds the document exactly, NUL included.
        assert!(parked.3.contains("\\u0000"), "{name}: {}", parked.3);
        let n: i64 = pg
            .query_one(
                &format!("SELECT count(*) FROM app.{name} WHERE _id = '1'"),
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        assert_eq!(n, 0, "{name}: an altered copy reached the target");
        let ok: i64 = pg
            .query_one(
                &format!("SELECT count(*) FROM app.{name} WHERE _id = '0'"),
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        assert_eq!(ok, 1, "{name}: the good document did not land");
        assert!(ferry.exited().is_none(), "{name}: ferry stopped");
    }
    eprintln!(
        "mongo_unmirrorable_document_is_parked_with_reason: {:?}",
        started.elapsed()
    );
}

/// No collections listed: every collection of the database is mirrored,
/// including one created while ferry runs (and across a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_all_collections_includes_new_ones() {
    let started = Instant::now();
    let fx = MongoToPg::start("mall", MongoOptions::default()).await;
    let db = fx.db().await;
    let first: Collection<Document> = db.collection("first");
    first
        .insert_many((0..10i64).map(|i| doc_for(i, dec("1.10"))))
        .await
        .unwrap();
    let config = fx.config(&[], "", "");
    let mut ferry = Ferry::spawn(&config);
    wait_all(&fx, &["first"], &mut ferry, Duration::from_secs(30)).await;
    let later: Collection<Document> = db.collection("later");
    later
        .insert_many((0..10i64).map(|i| doc_for(i, dec("2.20"))))
        .await
        .unwrap();
    later
        .update_one(doc! {"_id": 3i64}, doc! {"$set": {"changed": true}})
        .await
        .unwrap();
    first.delete_one(doc! {"_id": 4i64}).await.unwrap();
    wait_all(
        &fx,
        &["first", "later"],
        &mut ferry,
        Duration::from_secs(20),
    )
    .await;
    // After a restart too.
    ferry.kill9();
    let third: Collection<Document> = db.collection("third");
    third.insert_one(doc_for(1, dec("3.30"))).await.unwrap();
    let mut ferry = Ferry::spawn(&config);
    later.delete_one(doc! {"_id": 5i64}).await.unwrap();
    let fourth: Collection<Document> = db.collection("fourth");
    fourth.insert_one(doc_for(1, dec("4.40"))).await.unwrap();
    wait_all(
        &fx,
        &["first", "later", "third", "fourth"],
        &mut ferry,
        Duration::from_secs(20),
    )
    .await;
    assert_running(&mut ferry, "after mirroring");
    eprintln!(
        "mongo_all_collections_includes_new_ones: {:?}",
        started.elapsed()
    );
}

/// Heavy traffic on a collection that is not mirrored must not leave the
/// stored resume point behind: ferry saw those changes while it ran, so
/// after a restart it resumes, even though the oplog has since dropped
/// everything older than that traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_resume_point_advances_past_unlisted_traffic() {
    let started = Instant::now();
    let fx = MongoToPg::start(
        "madvance",
        MongoOptions {
            oplog_max_entries: Some(50),
            ..Default::default()
        },
    )
    .await;
    let db = fx.db().await;
    let payments: Collection<Document> = db.collection("payments");
    let audit: Collection<Document> = db.collection("audit");
    seed_docs(&payments, 10).await;
    let config = fx.config(&["payments"], "", "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&config, text).unwrap();
    let mut ferry = Ferry::spawn(&config);
    wait_all(&fx, &["payments"], &mut ferry, Duration::from_secs(30)).await;
    payments
        .update_one(doc! {"_id": 1i64}, doc! {"$set": {"streamed": true}})
        .await
        .unwrap();
    wait_all(&fx, &["payments"], &mut ferry, Duration::from_secs(30)).await;
    // The age of the point a restart would resume from is exported: the
    // stored token's source time is recent (an applied change, or the
    // idle stream's newer resume point).
    let addr = crate::support::metrics_addr(&ferry).await;
    let resume_time = wait_for_resume_time(&addr).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - resume_time).abs() < 120.0,
        "ferry_source_resume_token_timestamp_seconds {resume_time} is not near now ({now})"
    );
    // 1200 changes to an unlisted collection while ferry streams: SecantusDB
    // prunes the oplog to its newest 50 entries on the way.
    for start in (0..1200i64).step_by(100) {
        audit
            .insert_many((start..start + 100).map(|i| doc_for(i, dec("0.01"))))
            .await
            .unwrap();
    }
    // Give ferry time to read past them (and to store where it is).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_running(&mut ferry, "while the unlisted collection changed");
    ferry.kill9();

    let mut ferry = Ferry::spawn(&config);
    payments
        .update_one(doc! {"_id": 2i64}, doc! {"$set": {"after_restart": true}})
        .await
        .unwrap();
    wait_all(&fx, &["payments"], &mut ferry, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_running(&mut ferry, "after the restart");
    eprintln!(
        "mongo_resume_point_advances_past_unlisted_traffic: {:?}",
        started.elapsed()
    );
}

/// `ferry_source_resume_token_timestamp_seconds` from `/metrics` once a
/// batch carrying a resume token has committed (within 30 s).
async fn wait_for_resume_time(addr: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = crate::support::http_get(addr, "/metrics");
        let value = body
            .lines()
            .find_map(|l| l.strip_prefix("ferry_source_resume_token_timestamp_seconds "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| *v > 0.0);
        if let Some(v) = value {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no ferry_source_resume_token_timestamp_seconds in:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `snapshot = "never"`: nothing is copied; only what changes once ferry
/// streams reaches the target (an update brings its whole document).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_snapshot_never_streams_only_new_changes() {
    let started = Instant::now();
    let fx = MongoToPg::start("mnever", MongoOptions::default()).await;
    let db = fx.db().await;
    let coll: Collection<Document> = db.collection("accounts");
    seed_docs(&coll, 10).await;
    let config = fx.config(&["accounts"], "snapshot = \"never\"", "");
    let mut ferry = Ferry::spawn(&config);
    // Touch a marker until it arrives: from then on the stream is open.
    let pg = fx.pg().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        coll.update_one(doc! {"_id": "marker"}, doc! {"$inc": {"n": 1}})
            .upsert(true)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_running(&mut ferry, "before streaming");
        if target_has_table(&pg, "accounts").await {
            let n: i64 = pg
                .query_one(
                    "SELECT count(*) FROM app.accounts WHERE _id = '\"marker\"'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if n == 1 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the marker never arrived");
    }
    coll.update_one(doc! {"_id": 3i64}, doc! {"$set": {"touched": true}})
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 4i64}).await.unwrap();
    coll.insert_one(doc_for(100, dec("7.77"))).await.unwrap();
    // The target holds exactly the marker, 3 and 100, each equal to MongoDB.
    let deadline = Instant::now() + Duration::from_secs(20);
    // `_id` is jsonb: strings keep their quotes.
    let want = ["\"marker\"", "100", "3"];
    loop {
        let ids: Vec<String> = pg
            .query("SELECT _id::text FROM app.accounts ORDER BY _id::text", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "target ids {ids:?}, expected {want:?}; log:\n{}",
            log_tail(&ferry.log_text(), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in [
        Bson::Int64(3),
        Bson::Int64(100),
        Bson::String("marker".into()),
    ] {
        let d = coll
            .find_one(doc! {"_id": id.clone()})
            .await
            .unwrap()
            .expect("document");
        let same: bool = pg
            .query_one(
                "SELECT document = $2::text::jsonb FROM app.accounts WHERE _id = $1::text::jsonb",
                &[
                    &crate::support::mongo::expected_id(&id),
                    &crate::support::mongo::expected_document(&d),
                ],
            )
            .await
            .unwrap()
            .get(0);
        assert!(same, "document {id} differs");
    }
    assert_running(&mut ferry, "after mirroring");
    eprintln!(
        "mongo_snapshot_never_streams_only_new_changes: {:?}",
        started.elapsed()
    );
}

/// `ferry check` with a MongoDB source: every prerequisite listed, a
/// missing collection fails, an unreachable server fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_check_lists_prerequisites() {
    let started = Instant::now();
    let fx = MongoToPg::start("mcheck", MongoOptions::default()).await;
    let db = fx.db().await;
    seed_docs(&db.collection("payments"), 10).await;
    let run = |config: std::path::PathBuf| {
        tokio::task::block_in_place(|| ferry_cmd(&["check", "--config", config.to_str().unwrap()]))
    };
    let (code, out) = run(fx.config(&["payments"], "", ""));
    assert_eq!(code, 0, "{out}");
    for line in [
        "[ ok ] source reachable",
        "[ ok ] replica set",
        "[ ok ] change stream",
        "[ ok ] collection app.payments",
        "[ ok ] target reachable",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "missing {line:?}:\n{out}"
        );
    }
    let (code, out) = run(fx.config(&["payments", "nope"], "", ""));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("[FAIL] collection app.nope")),
        "{out}"
    );
    // An unreachable server (short server selection, so as not to wait 30 s).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = crate::support::mongo::mongo_config_text(
        &format!(
            "mongodb://127.0.0.1:{closed}/?directConnection=true&serverSelectionTimeoutMS=2000"
        ),
        "app",
        &["payments"],
        &fx.target.url(&fx.pg_db),
        "",
        "",
    );
    let path = fx.dir.path().join("unreachable.toml");
    std::fs::write(&path, text).unwrap();
    let (code, out) = run(path);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("[FAIL] source reachable")),
        "{out}"
    );
    eprintln!("mongo_check_lists_prerequisites: {:?}", started.elapsed());
}
