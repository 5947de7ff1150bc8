//! Convex → PostgreSQL end to end: the real `ferry` binary reading the
//! streaming export of the Convex test server (tests/convex-server, whose
//! export routes keep a change log of every commit) into a PostgreSQL
//! cluster, both started by each test.
//!
//! Every test ends with an exact comparison through the server's query
//! route: for each Convex document the target row with its `_id` holds a
//! `document` equal (as jsonb text, PostgreSQL normalizing both sides) to
//! what the source's codec makes of it, and the row counts are equal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_convex_source::value::decode;
use ferry_postgres_sink::literal::to_pg_text;
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

use crate::support::convex::ConvexServer;
use crate::support::kafka::{pipeline_name, with_kafka_bus, KafkaBroker};
use crate::support::{ferry_cmd, start_kafka_for_bus, unique_db, Ferry};

/// The target schema of the root component's tables.
const SCHEMA: &str = "convex";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A Convex test server, a target cluster, and (on the Kafka pass) a
/// broker.
struct Fx {
    server: ConvexServer,
    target: LocalCluster,
    pg_db: String,
    dir: tempfile::TempDir,
    kafka: Option<KafkaBroker>,
}

impl Fx {
    async fn start(prefix: &str, env: &[(&str, &str)]) -> Fx {
        let server = ConvexServer::start_env(env);
        let (target, kafka) = tokio::join!(
            LocalCluster::start(ClusterOptions::default()),
            start_kafka_for_bus()
        );
        let target = target.expect("start target PostgreSQL");
        let pg_db = unique_db(prefix);
        target
            .create_database(&pg_db)
            .await
            .expect("create target db");
        Fx {
            server,
            target,
            pg_db,
            dir: tempfile::tempdir().expect("temp dir"),
            kafka,
        }
    }

    async fn pg(&self) -> tokio_postgres::Client {
        self.target
            .connect(&self.pg_db)
            .await
            .expect("connect target")
    }

    /// A config mirroring `tables` of the server into the target; on the
    /// Kafka bus with a `[kafka]` section of its own.
    fn config(&self, tables: &[&str], source_extra: &str) -> PathBuf {
        self.config_with(tables, source_extra, "")
    }

    /// [`Fx::config`] with more `[pipeline]` keys.
    fn config_with(&self, tables: &[&str], source_extra: &str, pipeline_extra: &str) -> PathBuf {
        let text = format!(
            "[pipeline]\nname = \"test\"\nbatch_linger_ms = 10\nmax_retry_delay_secs = 1\n{pipeline_extra}\n\n{}\n[sink]\nkind = \"postgres\"\nurl = \"{}\"\n",
            self.server.source_toml(tables, source_extra),
            self.target.url(&self.pg_db)
        );
        let text = match &self.kafka {
            Some(k) => {
                let prefix = format!("{}_c_{}", self.pg_db, pipeline_name(&text));
                with_kafka_bus(&text, k.port, &prefix, 1)
            }
            None => text,
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("ferry-convex-{n}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// `Ok(rows)` when the target's `table` equals the source's, document
    /// by document; `Err` says the first difference.
    async fn compare(&self, pg: &tokio_postgres::Client, table: &str) -> Result<usize, String> {
        let docs = self.server.table(table).await;
        let mut want_json = String::from("[");
        for (i, d) in docs.iter().enumerate() {
            if i > 0 {
                want_json.push(',');
            }
            let id = d["_id"].as_str().expect("_id");
            let v = decode(d).expect("a document the codec reads");
            let doc = to_pg_text(&v).expect("a document is never NULL");
            want_json.push_str(&format!("{{\"id\":{id:?},\"doc\":{doc}}}"));
        }
        want_json.push(']');
        // Both sides through jsonb: PostgreSQL's own normalization.
        let want: BTreeMap<String, String> = pg
            .query(
                "SELECT e->>'id', (e->'doc')::text FROM jsonb_array_elements($1::text::jsonb) e",
                &[&want_json],
            )
            .await
            .map_err(|e| format!("expected documents: {e}"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let got: BTreeMap<String, String> = pg
            .query(
                &format!("SELECT _id, document::text FROM {SCHEMA}.{table}"),
                &[],
            )
            .await
            .map_err(|e| format!("target {table}: {e}"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if want.len() != got.len() {
            return Err(format!(
                "{table}: {} source documents, {} target rows",
                want.len(),
                got.len()
            ));
        }
        for (id, doc) in &want {
            match got.get(id) {
                Some(g) if g == doc => {}
                Some(g) => return Err(format!("{table} {id}: target {g}, source {doc}")),
                None => return Err(format!("{table} {id}: missing in the target")),
            }
        }
        Ok(want.len())
    }

    /// Waits until every table is mirrored exactly; fails at once if ferry
    /// exits.
    async fn wait_mirrored(&self, tables: &[&str], ferry: &mut Ferry, timeout: Duration) {
        let pg = self.pg().await;
        let deadline = Instant::now() + timeout;
        for t in tables {
            loop {
                if let Some(status) = ferry.exited() {
                    panic!("ferry exited ({status}); log:\n{}", ferry.log_text());
                }
                match self.compare(&pg, t).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        panic!(
                            "{t} not mirrored after {timeout:?}: {e}\nlog:\n{}",
                            ferry.log_text()
                        )
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    let mut s = String::new();
    ferry_pipeline::json::base64_into(&mut s, bytes);
    s
}

fn int64(i: i64) -> Json {
    json!({ "$integer": b64(&i.to_le_bytes()) })
}

fn float_special(f: f64) -> Json {
    json!({ "$float": b64(&f.to_le_bytes()) })
}

/// A document with every Convex type, varied by `rng`.
fn random_doc(rng: &mut impl Rng, n: u64, user: Option<&str>) -> Json {
    let f = match rng.random_range(0..10) {
        0 => float_special(f64::NAN),
        1 => float_special(f64::INFINITY),
        2 => float_special(f64::NEG_INFINITY),
        3 => float_special(-0.0),
        4 => json!(5.0),
        _ => json!(rng.random::<f64>() * 1e6),
    };
    let mut doc = json!({
        "name": format!("doc {n} \u{e9}\"'\\"),
        "n": int64(rng.random::<i64>()),
        "big": int64((1i64 << 53) + rng.random_range(1..1000)),
        "f": f,
        "bytes": { "$bytes": b64(&rng.random::<[u8; 7]>()) },
        "tags": ["a", 1.5, int64(-1), null, true],
        "nested": { "k": { "deep": [n as f64, { "x": "y" }] } },
    });
    if let Some(u) = user {
        doc["user"] = json!(u);
    }
    doc
}

/// Inserts `count` documents into `table` in writes of `per` each; their ids.
async fn preload(
    server: &ConvexServer,
    table: &str,
    count: usize,
    per: usize,
    rng: &mut impl Rng,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut n = 0;
    while n < count {
        let ops: Vec<Json> = (0..per.min(count - n))
            .map(|i| json!({"op": "insert", "table": table, "doc": random_doc(rng, (n + i) as u64, None)}))
            .collect();
        n += ops.len();
        ids.extend(server.write(Json::Array(ops)).await);
    }
    ids
}

/// One application write of 1..=`max` ops on `ids` (kept current).
async fn churn(
    server: &ConvexServer,
    table: &str,
    ids: &mut Vec<String>,
    max: usize,
    rng: &mut impl Rng,
) -> usize {
    let k = rng.random_range(1..=max);
    let mut ops = Vec::new();
    let mut touched = std::collections::HashSet::new();
    for i in 0..k {
        let r = rng.random_range(0..10);
        if ids.is_empty() || r < 3 {
            ops.push(
                json!({"op": "insert", "table": table, "doc": random_doc(rng, i as u64, None)}),
            );
        } else {
            let j = rng.random_range(0..ids.len());
            let id = ids[j].clone();
            if !touched.insert(id.clone()) {
                continue;
            }
            if r < 5 {
                ids.swap_remove(j);
                ops.push(json!({"op": "delete", "id": id}));
            } else if r < 8 {
                ops.push(json!({"op": "patch", "id": id, "doc": {"n": int64(rng.random()), "patched": true}}));
            } else {
                ops.push(
                    json!({"op": "replace", "id": id, "doc": random_doc(rng, i as u64, None)}),
                );
            }
        }
    }
    let n = ops.len();
    let got = server.write(Json::Array(ops.clone())).await;
    for (op, id) in ops.iter().zip(got) {
        if op["op"] == "insert" {
            ids.push(id);
        }
    }
    n
}

/// Every type, inserts, patches, replaces and deletes while ferry follows;
/// `_creation_time` and `_ts` columns hold what Convex gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_source_mirrors_every_type_and_follows() {
    let fx = Fx::start("cxs_types", &[]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let users = preload(&fx.server, "users", 50, 25, &mut rng).await;
    let posts: Vec<Json> = (0..20)
        .map(|i| json!({"op": "insert", "table": "posts", "doc": random_doc(&mut rng, i, Some(&users[i as usize]))}))
        .collect();
    let mut posts = fx.server.write(Json::Array(posts)).await;
    let config = fx.config(&["users", "posts"], "");
    let mut ferry = Ferry::spawn(&config);
    fx.wait_mirrored(&["users", "posts"], &mut ferry, Duration::from_secs(60))
        .await;
    let mut users = users;
    for _ in 0..30 {
        churn(&fx.server, "users", &mut users, 10, &mut rng).await;
        churn(&fx.server, "posts", &mut posts, 5, &mut rng).await;
    }
    fx.wait_mirrored(&["users", "posts"], &mut ferry, Duration::from_secs(60))
        .await;
    // A table not configured is not mirrored.
    fx.server
        .write(json!([{"op": "insert", "table": "other", "doc": {"x": 1.0}}]))
        .await;
    let pg = fx.pg().await;
    let doc = &fx.server.table("users").await[0];
    let row = pg
        .query_one(
            &format!("SELECT (extract(epoch from _creation_time) * 1000)::float8, _ts FROM {SCHEMA}.users WHERE _id = $1"),
            &[&doc["_id"].as_str().unwrap()],
        )
        .await
        .expect("a mirrored user");
    let created: f64 = row.get(0);
    assert!(
        (created - doc["_creationTime"].as_f64().unwrap()).abs() < 0.001,
        "{created} vs {}",
        doc["_creationTime"]
    );
    let ts: i64 = row.get(1);
    assert!(ts > 1_600_000_000_000_000_000, "_ts in ns: {ts}");
    let other: bool = pg
        .query_one("SELECT to_regclass('convex.other') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!other, "a table not in source.tables was mirrored");
}

/// Writes continue while the snapshot is paged (100 documents a page):
/// the copy at one timestamp, then the deltas from it, leave no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_source_writes_during_snapshot() {
    let fx = Fx::start("cxs_during", &[("FERRY_TEST_SNAPSHOT_PAGE", "100")]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut a = preload(&fx.server, "a", 3000, 250, &mut rng).await;
    let mut b = preload(&fx.server, "b", 2000, 250, &mut rng).await;
    // Every user table (no `tables`): listed by json_schemas.
    let config = fx.config(&[], "");
    let mut ferry = Ferry::spawn(&config);
    let start = Instant::now();
    let mut changes = 0;
    while start.elapsed() < Duration::from_secs(6) {
        changes += churn(&fx.server, "a", &mut a, 20, &mut rng).await;
        changes += churn(&fx.server, "b", &mut b, 20, &mut rng).await;
    }
    assert!(changes > 100, "only {changes} changes during the snapshot");
    fx.wait_mirrored(&["a", "b"], &mut ferry, Duration::from_secs(60))
        .await;
}

/// `kill -9` of ferry at random moments over a 50k-change run (twice
/// during the copy, then while it follows), with 429/503 and dropped connections injected: afterwards the
/// target equals the source and no row ever moved back to an older
/// version (a trigger on the target records any `_ts` going down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_source_kill9_at_random_moments() {
    const CHANGES: usize = 50_000;
    const KILLS: usize = 6;
    let fx = Fx::start("cxs_kill", &[("FERRY_TEST_SNAPSHOT_PAGE", "200")]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut a = preload(&fx.server, "a", 2000, 250, &mut rng).await;
    let mut b = preload(&fx.server, "b", 1000, 250, &mut rng).await;
    let config = fx.config(&["a", "b"], "");
    let pg = fx.pg().await;
    let mut ferry = Ferry::spawn(&config);
    // Killed during the copy (200 documents a page), which starts again.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
        ferry.kill9();
        ferry = Ferry::spawn(&config);
    }
    // The copy completes, then the guard goes on.
    fx.wait_mirrored(&["a", "b"], &mut ferry, Duration::from_secs(60))
        .await;
    pg.batch_execute(&format!(
        "CREATE TABLE public.moved_back (tbl text, id text, old_ts bigint, new_ts bigint);
         CREATE FUNCTION public.no_move_back() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW._ts < OLD._ts THEN
             INSERT INTO public.moved_back VALUES (TG_TABLE_NAME, NEW._id, OLD._ts, NEW._ts);
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER no_move_back BEFORE UPDATE ON {SCHEMA}.a FOR EACH ROW EXECUTE FUNCTION public.no_move_back();
         CREATE TRIGGER no_move_back BEFORE UPDATE ON {SCHEMA}.b FOR EACH ROW EXECUTE FUNCTION public.no_move_back();"
    ))
    .await
    .expect("create the move-back guard");
    let mut changes = 3000;
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_millis(rng.random_range(500..2500));
    let mut faults = 0;
    let started = Instant::now();
    while changes < CHANGES || kills < KILLS {
        changes += churn(&fx.server, "a", &mut a, 40, &mut rng).await;
        changes += churn(&fx.server, "b", &mut b, 40, &mut rng).await;
        if Instant::now() >= next_kill {
            if let Some(status) = ferry.exited() {
                panic!("ferry exited ({status}); log:\n{}", ferry.log_text());
            }
            ferry.kill9();
            kills += 1;
            ferry = Ferry::spawn(&config);
            if faults < 3 {
                fx.server
                    .fault_export(["429", "503", "drop"][faults], 2)
                    .await;
                faults += 1;
            }
            next_kill = Instant::now() + Duration::from_millis(rng.random_range(300..1500));
        }
    }
    let writing = started.elapsed();
    fx.wait_mirrored(&["a", "b"], &mut ferry, Duration::from_secs(60))
        .await;
    let moved: i64 = pg
        .query_one("SELECT count(*) FROM public.moved_back", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(moved, 0, "rows moved back to an older version");
    let dup: i64 = pg
        .query_one(
            &format!("SELECT count(*) - count(DISTINCT _id) FROM {SCHEMA}.a"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dup, 0);
    eprintln!("{changes} changes in {writing:?}, {kills} kills");
}

/// 429, 503 and dropped connections on the export routes are retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_source_retries_429_503_and_drops() {
    let fx = Fx::start("cxs_retry", &[]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut a = preload(&fx.server, "a", 500, 250, &mut rng).await;
    let config = fx.config(&["a"], "");
    let mut ferry = Ferry::spawn(&config);
    fx.wait_mirrored(&["a"], &mut ferry, Duration::from_secs(60))
        .await;
    for mode in ["429", "503", "drop"] {
        fx.server.fault_export(mode, 2).await;
        churn(&fx.server, "a", &mut a, 20, &mut rng).await;
    }
    // The faults are taken by ferry's polls.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fx.server.audit().await["faultsLeft"].as_f64() != Some(0.0) {
        assert!(Instant::now() < deadline, "faults never consumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        churn(&fx.server, "a", &mut a, 20, &mut rng).await;
    }
    fx.wait_mirrored(&["a"], &mut ferry, Duration::from_secs(60))
        .await;
    assert!(
        ferry.log_text().contains("retrying"),
        "no retry logged:\n{}",
        ferry.log_text()
    );
}

/// A cursor older than the retention stops ferry with a message that says
/// what happened and what to do; `on_expired_cursor = "resnapshot"` copies
/// everything again (deletes made meanwhile included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_source_expired_cursor_stops_then_resnapshots() {
    let fx = Fx::start("cxs_expired", &[]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut a = preload(&fx.server, "a", 300, 100, &mut rng).await;
    let config = fx.config(&["a"], "");
    let mut ferry = Ferry::spawn(&config);
    fx.wait_mirrored(&["a"], &mut ferry, Duration::from_secs(60))
        .await;
    ferry.kill9();
    for _ in 0..20 {
        churn(&fx.server, "a", &mut a, 10, &mut rng).await;
    }
    // The change log since the stored cursor is gone.
    fx.server.test_route("prune", json!({})).await;
    let mut ferry = Ferry::spawn(&config);
    ferry.expect_exit(
        3,
        Duration::from_secs(30),
        "ferry kept running on an expired cursor",
    );
    let log = ferry.log_text();
    assert!(log.contains("InvalidWindowToReadDocuments"), "{log}");
    assert!(log.contains("on_expired_cursor = \"resnapshot\""), "{log}");
    let config = fx.config(&["a"], "on_expired_cursor = \"resnapshot\"");
    let mut ferry = Ferry::spawn(&config);
    fx.wait_mirrored(&["a"], &mut ferry, Duration::from_secs(60))
        .await;
    for _ in 0..5 {
        churn(&fx.server, "a", &mut a, 10, &mut rng).await;
    }
    fx.wait_mirrored(&["a"], &mut ferry, Duration::from_secs(60))
        .await;
}

/// An export that is not enabled (403 `StreamingExportNotEnabled`) is a
/// clear configuration error in `ferry check` and in `ferry run`; bad keys
/// are named in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_source_export_not_enabled_and_config_errors() {
    let fx = Fx::start("cxs_check", &[("FERRY_TEST_EXPORT", "disabled")]).await;
    fx.server
        .write(json!([{"op": "insert", "table": "a", "doc": {"x": 1.0}}]))
        .await;
    let config = fx.config(&["a"], "");
    let (code, out) = ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Streaming export is not enabled"), "{out}");
    assert!(
        !out.contains(crate::support::convex::DEPLOY_KEY),
        "the deploy key was printed: {out}"
    );
    let mut ferry = Ferry::spawn(&config);
    ferry.expect_exit(3, Duration::from_secs(30), "ferry ran without the export");
    assert!(ferry.log_text().contains("StreamingExportNotEnabled"));
    fx.server
        .test_route("export", json!({"enabled": true}))
        .await;
    let (code, out) = ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // Inside the tagged `[source]` section serde names the section and
    // the values it expected (see `deserialize_toml`).
    for (extra, key) in [
        (
            "on_expired_cursor = \"later\"",
            "expected `fail` or `resnapshot`",
        ),
        ("poll_max_ms = 0", "source.poll_max_ms"),
    ] {
        let bad = fx.config(&["a"], extra);
        let (code, out) = ferry_cmd(&["check", "--config", bad.to_str().unwrap()]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(key), "{key}: {out}");
    }
    let bad = fx.config(&["_system"], "");
    let (code, out) = ferry_cmd(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("source.tables[0]"), "{out}");
}

const MAPPING: &str = r#"
[id_maps.users]
kind = "uuid_v7"

[id_maps.posts]
kind = "bigint"
start = 1000

[[tables]]
source = "convex.users"
target = "public.users"
rest = "extra"
drop = ["_creationTime"]
[tables.columns]
id = { from = "_id", id_map = "users" }
name = "name"
n = "n"
big = "big"
f = "f"
bytes = "bytes"

[[tables]]
source = "convex.posts"
target = "public.posts"
rest = "extra"
drop = ["_creationTime"]
[tables.columns]
id = { from = "_id", id_map = "posts" }
user_id = { from = "user", id_map = "users" }
title = "name"
"#;

/// The new id of each Convex id of `namespace`, from `ferry_id_map`
/// (empty until the sink made the table).
async fn id_map(pg: &tokio_postgres::Client, namespace: &str) -> BTreeMap<String, String> {
    let rows = pg
        .query(
            "SELECT legacy_id, new_id::text FROM public.ferry_id_map WHERE namespace = $1",
            &[&namespace],
        )
        .await
        .unwrap_or_default();
    rows.iter()
        .map(|r| {
            let legacy: String = r.get(0);
            (legacy.trim_matches('"').to_string(), r.get(1))
        })
        .collect()
}

/// `Ok` when the mapped tables hold exactly the source's documents: each
/// user under its id-map uuid with its typed columns, each post under its
/// bigint with `user_id` the uuid of the user it references.
async fn compare_mapped(fx: &Fx, pg: &tokio_postgres::Client) -> Result<(), String> {
    let users = fx.server.table("users").await;
    let posts = fx.server.table("posts").await;
    let uid = id_map(pg, "users").await;
    let pid = id_map(pg, "posts").await;
    let got_users: BTreeMap<String, (String, Option<i64>, Option<i64>)> = pg
        .query("SELECT id::text, name, n, big FROM public.users", &[])
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    if got_users.len() != users.len() {
        return Err(format!(
            "{} users, {} in the target",
            users.len(),
            got_users.len()
        ));
    }
    for u in &users {
        let id = u["_id"].as_str().unwrap();
        let new = uid.get(id).ok_or(format!("user {id} not in the id map"))?;
        let want = (
            u["name"].as_str().unwrap().to_string(),
            Some(crate::support::convex::int64(&u["n"])),
            u.get("big").map(crate::support::convex::int64),
        );
        match got_users.get(new) {
            Some(g) if *g == want => {}
            g => return Err(format!("user {id} ({new}): target {g:?}, source {want:?}")),
        }
    }
    let got_posts: BTreeMap<String, (Option<String>, Option<String>)> = pg
        .query(
            "SELECT id::text, user_id::text, title FROM public.posts",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    if got_posts.len() != posts.len() {
        return Err(format!(
            "{} posts, {} in the target",
            posts.len(),
            got_posts.len()
        ));
    }
    for p in &posts {
        let id = p["_id"].as_str().unwrap();
        let new = pid.get(id).ok_or(format!("post {id} not in the id map"))?;
        let user = uid.get(p["user"].as_str().unwrap()).cloned();
        let want = (user, p["name"].as_str().map(String::from));
        match got_posts.get(new) {
            Some(g) if *g == want => {}
            g => return Err(format!("post {id} ({new}): target {g:?}, source {want:?}")),
        }
    }
    Ok(())
}

/// Convex → PostgreSQL through a mapping: Convex ids through the id map
/// (uuid for users, bigints for posts), `v.id("users")` references
/// translated into the user's new id, allocated ahead when the post is
/// copied before its user (posts are copied first), Int64 into bigint,
/// bytes into bytea, the rest into jsonb; then changes followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_source_mapped_through_the_id_map() {
    let fx = Fx::start("cxs_mapped", &[]).await;
    let pg = fx.pg().await;
    pg.batch_execute(
        "CREATE TABLE public.users (id uuid PRIMARY KEY, name text NOT NULL, n bigint, big bigint,
             f double precision, bytes bytea, extra jsonb);
         CREATE TABLE public.posts (id bigint PRIMARY KEY, user_id uuid, title text, extra jsonb);",
    )
    .await
    .expect("create the mapped tables");
    let mapping = fx.dir.path().join("mapping.toml");
    std::fs::write(&mapping, MAPPING).expect("write the mapping");
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let users = preload(&fx.server, "users", 200, 100, &mut rng).await;
    let posts: Vec<Json> = (0..150)
        .map(|i| json!({"op": "insert", "table": "posts", "doc": random_doc(&mut rng, i, Some(&users[i as usize]))}))
        .collect();
    fx.server.write(Json::Array(posts)).await;
    let config = fx.config_with(
        &["posts", "users"],
        "",
        &format!("mappings = {:?}", mapping.to_str().unwrap()),
    );
    // `ferry check` compares the mapping with json_schemas' shapes.
    let (code, out) = ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("mapping of convex.users: every field json_schemas lists"),
        "{out}"
    );
    let mut ferry = Ferry::spawn(&config);
    let wait = |ferry: &mut Ferry| {
        if let Some(status) = ferry.exited() {
            panic!("ferry exited ({status}); log:\n{}", ferry.log_text());
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        wait(&mut ferry);
        match compare_mapped(&fx, &pg).await {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => panic!("not mapped: {e}\n{}", ferry.log_text()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // Followed: a renamed user, a new post of an existing user, a deleted post.
    let first = fx.server.table("posts").await[0]["_id"]
        .as_str()
        .unwrap()
        .to_string();
    fx.server
        .write(json!([
            {"op": "patch", "id": users[0], "doc": {"name": "renamed"}},
            {"op": "insert", "table": "posts", "doc": {"name": "new post", "user": users[5]}},
            {"op": "delete", "id": first},
        ]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        wait(&mut ferry);
        match compare_mapped(&fx, &pg).await {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => panic!("not mapped: {e}\n{}", ferry.log_text()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let bytes: Option<Vec<u8>> = pg
        .query_one(
            "SELECT bytes FROM public.users WHERE name <> 'renamed' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bytes.map(|b| b.len()), Some(7), "bytes into bytea");
}

/// Against a real deployment, only when `CONVEX_URL` and
/// `CONVEX_DEPLOY_KEY` are set (no Convex backend can run here): `ferry
/// check` passes, and every table is copied (row counts equal to a bare
/// paging of `list_snapshot`). Reads only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_source_live() {
    let (Ok(url), Ok(key)) = (
        std::env::var("CONVEX_URL"),
        std::env::var("CONVEX_DEPLOY_KEY"),
    ) else {
        eprintln!("convex_source_live skipped: CONVEX_URL and CONVEX_DEPLOY_KEY are not set");
        return;
    };
    let target = LocalCluster::start(ClusterOptions::default())
        .await
        .expect("start target PostgreSQL");
    let db = unique_db("cxs_live");
    target.create_database(&db).await.expect("create target db");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"live\"\n\n[source]\nkind = \"convex\"\nurl = \"{url}\"\ndeploy_key = \"${{CONVEX_DEPLOY_KEY}}\"\n\n[sink]\nkind = \"postgres\"\nurl = \"{}\"\n",
            target.url(&db)
        ),
    )
    .expect("write config");
    let (code, out) = ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert!(!out.contains(&key), "the deploy key was printed");
    assert_eq!(code, 0, "{out}");
    let client =
        ferry_convex_source::client::Client::new(&url, ferry_pipeline::config::Secret::new(key))
            .expect("client");
    let tables = client.tables("").await.expect("json_schemas");
    let mut ferry = Ferry::spawn(&config);
    let pg = target.connect(&db).await.expect("connect target");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !ferry.log_text().contains("following the change log") {
        assert!(ferry.exited().is_none(), "{}", ferry.log_text());
        assert!(Instant::now() < deadline, "no copy in 10 min");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for t in &tables {
        let (mut n, mut snapshot, mut cursor) = (0i64, None, None::<String>);
        loop {
            let page = client
                .list_snapshot("", Some(t), snapshot, cursor.as_deref())
                .await
                .expect("list_snapshot");
            n += page.values.len() as i64;
            snapshot = Some(page.snapshot);
            if !page.has_more {
                break;
            }
            cursor = page.cursor;
        }
        // The copy's rows are committed shortly after the source moves on;
        // a deployment written to meanwhile may differ: it must settle.
        let settle = Instant::now() + Duration::from_secs(60);
        loop {
            let got: i64 = pg
                .query_one(&format!("SELECT count(*) FROM {SCHEMA}.\"{t}\""), &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or(-1);
            if got == n {
                eprintln!("{t}: {n} documents copied");
                break;
            }
            assert!(
                Instant::now() < settle,
                "{t}: {n} documents, {got} rows\n{}",
                ferry.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
