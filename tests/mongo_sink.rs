//! PostgreSQL → MongoDB through the MongoDB sink (sinks/mongodb), against
//! the harness's SecantusDB: exact BSON types, inserts/updates/deletes and
//! a key change, a value MongoDB cannot hold parked in
//! `ferry_dead_letters` (and listed by `ferry dlq list`), and `kill -9`
//! under a workload ending in an equal collection.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use rand::{Rng, SeedableRng};

use crate::support::convex::with_sink;
use crate::support::mongo::{MongoOptions, MongoServer, MongoToPg};
use crate::support::{ferry_cmd, wait_for, ConfigBuilder, Ferry, Pair};

/// The `[sink]` section for `server`'s database `db`.
fn sink_toml(server: &MongoServer, db: &str) -> String {
    format!(
        "[sink]\nkind = \"mongodb\"\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        server.url()
    )
}

async fn docs(db: &mongodb::Database, coll: &str) -> Vec<Document> {
    db.collection::<Document>(coll)
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("read documents")
}

async fn count(db: &mongodb::Database, coll: &str) -> u64 {
    db.collection::<Document>(coll)
        .count_documents(doc! {})
        .await
        .unwrap_or(0)
}

fn dec(s: &str) -> Bson {
    Bson::Decimal128(s.parse().expect("decimal128"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_changes_and_dead_letters() {
    let (pair, server) = tokio::join!(
        Pair::start("mongo_sink"),
        MongoServer::start(MongoOptions::default())
    );
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, amount numeric(38,10), big bigint,
             uid uuid, data bytea, at timestamptz, doc jsonb, tags text[], n integer, note text);
         CREATE TABLE lines (order_id integer, n integer, qty integer, PRIMARY KEY (order_id, n));
         INSERT INTO accounts VALUES
           (1, 0.10, 9007199254740993, '0123456789abcdef0123456789abcdef', '\\x0102ff',
            '2024-01-02 03:04:05.678+00', '{\"a\": {\"b\": 1.5}, \"l\": [1, \"x\"]}', '{a,b}', 7, 'one'),
           (2, 1234567890123456789012345678.12, -9223372036854775808, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, -0.0000000001, 0, NULL, '\\x', '1970-01-01 00:00:00+00', 'null', '{}', -2147483648, '');
         INSERT INTO lines VALUES (1, 1, 5), (1, 2, 6);",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.accounts", "public.lines"])
        .build();
    with_sink(&config, &sink_toml(&server, "app"));
    let ferry = Ferry::spawn(&config);
    let client = server.client().await;
    let db = client.database("app");
    wait_for(
        "the snapshot in MongoDB",
        &ferry,
        Duration::from_secs(60),
        || async { count(&db, "accounts").await == 3 && count(&db, "lines").await == 2 },
    )
    .await;

    let by_id: BTreeMap<i64, Document> = docs(&db, "accounts")
        .await
        .into_iter()
        .map(|d| (d.get_i64("_id").expect("int64 _id"), d))
        .collect();
    let one = &by_id[&1];
    assert_eq!(one.get("amount"), Some(&dec("0.1000000000")), "{one}");
    assert_eq!(one.get("big"), Some(&Bson::Int64(9_007_199_254_740_993)));
    let Some(Bson::Binary(uid)) = one.get("uid") else {
        panic!("uuid as binary: {one}")
    };
    assert_eq!(uid.subtype, mongodb::bson::spec::BinarySubtype::Uuid);
    assert_eq!(uid.bytes.len(), 16);
    let Some(Bson::Binary(data)) = one.get("data") else {
        panic!("bytea as binary: {one}")
    };
    assert_eq!(data.bytes, vec![1, 2, 0xff]);
    assert_eq!(
        one.get("at"),
        Some(&Bson::DateTime(mongodb::bson::DateTime::from_millis(
            1_704_164_645_678
        )))
    );
    assert_eq!(
        one.get_document("doc").unwrap(),
        &doc! {"a": {"b": dec("1.5")}, "l": [1i64, "x"]}
    );
    assert_eq!(
        one.get("tags"),
        Some(&Bson::Array(vec!["a".into(), "b".into()]))
    );
    assert_eq!(one.get("n"), Some(&Bson::Int32(7)));
    let two = &by_id[&2];
    assert_eq!(
        two.get("amount"),
        // 38 digits: trailing zeros give way until 34 fit.
        Some(&dec("1234567890123456789012345678.120000"))
    );
    assert_eq!(two.get("big"), Some(&Bson::Int64(i64::MIN)));
    assert_eq!(two.get("uid"), Some(&Bson::Null));
    let three = &by_id[&3];
    assert_eq!(three.get("amount"), Some(&dec("-1E-10")));
    assert_eq!(three.get("doc"), Some(&Bson::Null));
    assert_eq!(three.get("n"), Some(&Bson::Int32(i32::MIN)));
    let lines = docs(&db, "lines").await;
    assert!(
        lines
            .iter()
            .any(|d| d.get_document("_id").ok() == Some(&doc! {"order_id": 1, "n": 2})),
        "{lines:?}"
    );

    // Updates keep fields the row does not carry; deletes; a key change.
    db.collection::<Document>("accounts")
        .update_one(doc! {"_id": 1i64}, doc! {"$set": {"extra": "kept"}})
        .await
        .unwrap();
    src.batch_execute(
        "UPDATE accounts SET amount = amount + 0.01, note = 'changed' WHERE id = 1;
         DELETE FROM accounts WHERE id = 3;
         UPDATE accounts SET id = 20 WHERE id = 2;
         DELETE FROM lines WHERE n = 1;
         INSERT INTO accounts (id, amount) VALUES (4, 99.99);",
    )
    .await
    .unwrap();
    wait_for(
        "the changes in MongoDB",
        &ferry,
        Duration::from_secs(60),
        || async {
            let mut ids: Vec<i64> = docs(&db, "accounts")
                .await
                .iter()
                .filter_map(|d| d.get_i64("_id").ok())
                .collect();
            ids.sort_unstable();
            ids == [1, 4, 20] && count(&db, "lines").await == 1
        },
    )
    .await;
    let one = db
        .collection::<Document>("accounts")
        .find_one(doc! {"_id": 1i64})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.get("amount"), Some(&dec("0.1100000000")));
    assert_eq!(one.get_str("note"), Ok("changed"));
    assert_eq!(one.get_str("extra"), Ok("kept"), "$set keeps other fields");
    let twenty = db
        .collection::<Document>("accounts")
        .find_one(doc! {"_id": 20i64})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        twenty.get("amount"),
        // 38 digits: trailing zeros give way until 34 fit.
        Some(&dec("1234567890123456789012345678.120000"))
    );

    // A value Decimal128 cannot hold exactly, and one below the
    // millisecond: parked, while the rows around them land.
    src.batch_execute(
        "INSERT INTO accounts (id, amount) VALUES (5, 1234567890123456789012345678.1234567891);
         INSERT INTO accounts (id, at) VALUES (6, '2024-01-02 03:04:05.678901+00');
         INSERT INTO accounts (id, amount) VALUES (7, 7.00);",
    )
    .await
    .unwrap();
    wait_for(
        "row 7 and two dead letters",
        &ferry,
        Duration::from_secs(60),
        || async {
            count(&db, "ferry_dead_letters").await == 2
                && db
                    .collection::<Document>("accounts")
                    .find_one(doc! {"_id": 7i64})
                    .await
                    .ok()
                    .flatten()
                    .is_some()
        },
    )
    .await;
    assert!(db
        .collection::<Document>("accounts")
        .find_one(doc! {"_id": 5i64})
        .await
        .unwrap()
        .is_none());
    let (code, out) = ferry_cmd(&["dlq", "list", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("| accounts | permanent | mongodb-decimal128-range | 1 |"),
        "{out}"
    );
    assert!(out.contains("mongodb-datetime-precision"), "{out}");
    assert!(out.contains("2 record(s)"), "{out}");

    // A later change of a parked row supersedes its record; replay
    // removes it without applying it.
    src.batch_execute("UPDATE accounts SET amount = 5.00 WHERE id = 5;")
        .await
        .unwrap();
    wait_for(
        "row 5 fixed at the source",
        &ferry,
        Duration::from_secs(60),
        || async {
            db.collection::<Document>("accounts")
                .find_one(doc! {"_id": 5i64})
                .await
                .ok()
                .flatten()
                .is_some()
        },
    )
    .await;
    let (code, out) = ferry_cmd(&[
        "dlq",
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--table",
        "accounts",
    ]);
    assert_eq!(code, 1, "row 6 still cannot be written: {out}");
    assert!(out.contains("superseded 1, failed again 1"), "{out}");
    let five = db
        .collection::<Document>("accounts")
        .find_one(doc! {"_id": 5i64})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(five.get("amount"), Some(&dec("5.0000000000")));
    ferry.terminate();
}

/// The source's `items` as id → (v, amount text).
async fn source_items(
    src: &tokio_postgres::Client,
) -> BTreeMap<i64, (Option<i64>, Option<String>)> {
    src.query("SELECT id, v, amount::text FROM items", &[])
        .await
        .expect("read source")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// The collection as the same map; `Err` on a document of another shape.
async fn target_items(
    db: &mongodb::Database,
) -> Result<BTreeMap<i64, (Option<i64>, Option<String>)>, String> {
    let mut out = BTreeMap::new();
    for d in docs(db, "items").await {
        let id = d.get_i64("_id").map_err(|_| format!("bad _id: {d}"))?;
        let v = match d.get("v") {
            Some(Bson::Int64(v)) => Some(*v),
            Some(Bson::Null) | None => None,
            _ => return Err(format!("bad v: {d}")),
        };
        let amount = match d.get("amount") {
            Some(Bson::Decimal128(a)) => Some(a.to_string()),
            Some(Bson::Null) | None => None,
            _ => return Err(format!("bad amount: {d}")),
        };
        if out.insert(id, (v, amount)).is_some() {
            return Err(format!("duplicate {id}"));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_a_workload_leaves_an_equal_collection() {
    let (pair, server) = tokio::join!(
        Pair::start("mongo_sink_kill"),
        MongoServer::start(MongoOptions::default())
    );
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, v bigint, amount numeric(12,2));
         INSERT INTO items SELECT g, g, g * 1.25 FROM generate_series(1, 2000) g;",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .batch_size(250)
        .build();
    with_sink(&config, &sink_toml(&server, "app"));
    let client = server.client().await;
    let db = client.database("app");
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let mut ferry = Ferry::spawn(&config);
    let mut next_id = 10_000i64;
    for round in 0..8 {
        let lo = rng.random_range(1..1800i64);
        src.batch_execute(&format!(
            "UPDATE items SET v = v + 1, amount = amount + 0.01 WHERE id BETWEEN {lo} AND {lo} + 300;
             DELETE FROM items WHERE id % 53 = {r} AND id BETWEEN {lo} AND {lo} + 200;
             INSERT INTO items SELECT g, NULL, g * 0.10 FROM generate_series({next_id}, {next_id} + 199) g;",
            r = round % 53
        ))
        .await
        .unwrap();
        next_id += 200;
        // Kill at a moment that depends on the round: sometimes mid-batch.
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
        ferry.kill9();
        ferry = Ferry::spawn(&config);
    }
    let want = source_items(&src).await;
    wait_for(
        "an equal collection",
        &ferry,
        Duration::from_secs(120),
        || async {
            let want: BTreeMap<i64, (Option<i64>, Option<String>)> = want
                .iter()
                .map(|(k, (v, a))| {
                    (
                        *k,
                        (
                            *v,
                            a.as_ref().map(|a| {
                                a.parse::<mongodb::bson::Decimal128>().unwrap().to_string()
                            }),
                        ),
                    )
                })
                .collect();
            target_items(&db).await.is_ok_and(|got| got == want)
        },
    )
    .await;
    let got = target_items(&db).await.expect("well-formed documents");
    assert_eq!(got.len(), want.len());
    assert_eq!(count(&db, "ferry_dead_letters").await, 0);
    ferry.terminate();
}

/// A reverse pipeline (PostgreSQL → MongoDB, this sink) and a forward one
/// (MongoDB → PostgreSQL) on the same MongoDB database at once: what the
/// reverse pipeline writes is not replicated forward (the loop marker),
/// while the application's own writes to the same collection are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_writes_are_not_echoed_forward() {
    let fx = MongoToPg::start("mongo_sink_loop", MongoOptions::default()).await;
    // The reverse pipeline's source: another database of the same cluster.
    let reverse_db = crate::support::unique_db("mongo_sink_rev");
    fx.target.create_database(&reverse_db).await.unwrap();
    let rsrc = fx.target.connect(&reverse_db).await.unwrap();
    rsrc.batch_execute("CREATE TABLE orders (_id text PRIMARY KEY, total numeric(12,2));")
        .await
        .unwrap();
    let mongo = fx.db().await;
    mongo
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": "app-1", "total": dec("1.00")})
        .await
        .unwrap();
    let forward = fx.config(&[], "", "");
    let text = format!(
        r#"
[pipeline]
name = "reverse"
batch_linger_ms = 10
max_retry_delay_secs = 2

[source]
kind = "postgres"
url = "{}"
tables = ["public.orders"]
slot = "ferry_reverse"
# A reverse pipeline starts at cutover: no copy (a snapshot start would
# empty the collection, as it empties a PostgreSQL target table).
snapshot = "never"
status_interval_ms = 200
heartbeat_secs = 1

{}"#,
        fx.target.url(&reverse_db),
        sink_toml(&fx.mongo, "app")
    );
    let text = match &fx.kafka {
        Some(k) => {
            let prefix = format!("{reverse_db}_r");
            crate::support::kafka::with_kafka_bus(&text, k.port, &prefix, 1)
        }
        None => text,
    };
    let reverse = fx.dir.path().join("reverse.toml");
    std::fs::write(&reverse, text).unwrap();
    let fwd = Ferry::spawn(&forward);
    let rev = Ferry::spawn(&reverse);
    let pg = fx.pg().await;
    let forward_ids = || async {
        let mut ids: Vec<String> = pg
            .query("SELECT _id #>> '{}' FROM app.orders", &[])
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    };
    wait_for("app-1 forward", &fwd, Duration::from_secs(60), || async {
        forward_ids().await == ["app-1"]
    })
    .await;
    wait_for(
        "the reverse pipeline streaming",
        &rev,
        Duration::from_secs(60),
        || async { rev.log_text().contains("streaming from slot") },
    )
    .await;
    // The reverse pipeline writes rows into the same collection.
    rsrc.batch_execute(
        "INSERT INTO orders SELECT 'ferry-' || g, g * 0.10 FROM generate_series(1, 50) g;
         UPDATE orders SET total = total + 1 WHERE _id = 'ferry-7';",
    )
    .await
    .unwrap();
    wait_for(
        "the reverse rows in MongoDB",
        &rev,
        Duration::from_secs(60),
        || async { count(&mongo, "orders").await == 51 },
    )
    .await;
    // Then the application writes again: once that arrived forward, the
    // forward stream is past the reverse pipeline's writes.
    mongo
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": "app-2", "total": dec("2.00")})
        .await
        .unwrap();
    wait_for("app-2 forward", &fwd, Duration::from_secs(60), || async {
        forward_ids().await.contains(&"app-2".to_string())
    })
    .await;
    assert_eq!(
        forward_ids().await,
        ["app-1", "app-2"],
        "rows the reverse pipeline wrote were echoed forward"
    );
    let seven = mongo
        .collection::<Document>("orders")
        .find_one(doc! {"_id": "ferry-7"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seven.get("total"), Some(&dec("1.70")));
    fwd.terminate();
    rev.terminate();
}
