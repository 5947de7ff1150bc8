//! `ferry verify`: planted differences are each found (exit 1), equal
//! data is green (exit 0), every error path exits 4, and a verify under
//! live traffic reports no false drift.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{ferry_cmd, ConfigBuilder, Ferry, Pair};

fn cmd(args: &[&str]) -> (i32, String) {
    tokio::task::block_in_place(|| ferry_cmd(args))
}

/// `ferry verify --config <config> --json …`: the exit code and the
/// parsed report (output that is not JSON fails the test).
fn verify_json(config: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["verify", "--config", config.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let (code, out) = cmd(&args);
    let json = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report:\n{out}"));
    (
        code,
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}")),
    )
}

/// The one table's report.
fn table(report: &serde_json::Value) -> &serde_json::Value {
    &report["tables"][0]
}

const SCHEMA: &str = "CREATE TABLE items (
        id int PRIMARY KEY,
        name text,
        price numeric(12,2),
        doc jsonb,
        total numeric GENERATED ALWAYS AS (price * 2) STORED
    );";
const ROWS: &str = "INSERT INTO items (id, name, price, doc)
    SELECT g, 'item ' || g, g * 1.25, jsonb_build_object('a', g, 'b', 'x')
      FROM generate_series(1, 1000) g;";

/// Both sides hold the same table (written directly: verify needs no
/// running pipeline); small chunks so that several are compared.
async fn planted_pair(prefix: &str) -> (Pair, PathBuf) {
    let pair = Pair::start(prefix).await;
    for c in [pair.src().await, pair.dst().await] {
        c.batch_execute(&format!("{SCHEMA}{ROWS}")).await.unwrap();
    }
    let config = ConfigBuilder::new(&pair).tables(&["public.items"]).build();
    (pair, config)
}

const FAST: &[&str] = &["--chunk-rows", "100", "--settle", "0"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_differences_are_each_found() {
    let (pair, config) = planted_pair("verify_plant").await;
    let dst = pair.dst().await;

    let (code, r) = verify_json(&config, FAST);
    assert_eq!(code, 0, "{r}");
    assert_eq!(table(&r)["source_rows"], 1000, "{r}");
    assert_eq!(table(&r)["target_rows"], 1000, "{r}");
    assert_eq!(table(&r)["chunks"], 11, "{r}");
    // The human table says the same.
    let (code, out) = cmd(&["verify", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("public.items") && out.contains("equal"),
        "{out}"
    );

    // (plant, undo, differing rows)
    let cases: &[(&str, &str, &str, u64)] = &[
        (
            "changed value",
            "UPDATE items SET name = 'renamed' WHERE id = 250",
            "UPDATE items SET name = 'item 250' WHERE id = 250",
            1,
        ),
        (
            "missing row",
            "DELETE FROM items WHERE id = 512",
            "INSERT INTO items (id, name, price, doc) VALUES (512, 'item 512', 640.00, '{\"a\": 512, \"b\": \"x\"}')",
            1,
        ),
        (
            "extra rows, inside and past the source's keys",
            "INSERT INTO items (id, name) VALUES (-5, 'before'), (5000, 'after')",
            "DELETE FROM items WHERE id IN (-5, 5000)",
            2,
        ),
        (
            "decimal off by one unit in the last place",
            "UPDATE items SET price = price + 0.01 WHERE id = 42",
            "UPDATE items SET price = price - 0.01 WHERE id = 42",
            1,
        ),
        (
            "jsonb value differs",
            "UPDATE items SET doc = '{\"a\": 7, \"b\": \"y\"}' WHERE id = 7",
            "UPDATE items SET doc = '{\"a\": 7, \"b\": \"x\"}' WHERE id = 7",
            1,
        ),
        (
            "generated column missing on the target",
            "ALTER TABLE items DROP COLUMN total",
            "ALTER TABLE items ADD COLUMN total numeric GENERATED ALWAYS AS (price * 2) STORED",
            1000,
        ),
        (
            "column missing on the target",
            "ALTER TABLE items DROP COLUMN name",
            "ALTER TABLE items ADD COLUMN name text; UPDATE items SET name = 'item ' || id",
            1000,
        ),
        (
            "column only in the target",
            "ALTER TABLE items ADD COLUMN extra int",
            "ALTER TABLE items DROP COLUMN extra",
            1000,
        ),
    ];
    for (what, plant, undo, rows) in cases {
        dst.batch_execute(plant).await.unwrap();
        let (code, r) = verify_json(&config, &[FAST, &["--show", "3"]].concat());
        assert_eq!(code, 1, "{what}: {r}");
        assert_eq!(r["ok"], false, "{what}: {r}");
        assert_eq!(table(&r)["differing_rows"], *rows, "{what}: {r}");
        assert!(table(&r)["error"].is_null(), "{what}: {r}");
        assert!(
            !table(&r)["examples"].as_array().unwrap().is_empty(),
            "{what}: no example rows: {r}"
        );
        dst.batch_execute(undo).await.unwrap();
        let (code, r) = verify_json(&config, FAST);
        assert_eq!(code, 0, "after undoing {what}: {r}");
    }
    let (code, r) = verify_json(&config, FAST);
    assert_eq!(code, 0, "{r}");

    // A column the target has as a plain column with the same values as
    // the source's generated column is equal: values are compared, not DDL.
    dst.batch_execute(
        "ALTER TABLE items DROP COLUMN total; ALTER TABLE items ADD COLUMN total numeric;
         UPDATE items SET total = price * 2",
    )
    .await
    .unwrap();
    let (code, r) = verify_json(&config, FAST);
    assert_eq!(code, 0, "{r}");

    // jsonb key order compares equal; key sets do not.
    let src = pair.src().await;
    src.batch_execute("UPDATE items SET doc = '{\"a\": 3, \"b\": \"x\"}'::jsonb WHERE id = 3")
        .await
        .unwrap();
    dst.batch_execute("UPDATE items SET doc = '{\"b\": \"x\",  \"a\": 3}'::jsonb WHERE id = 3")
        .await
        .unwrap();
    let (code, r) = verify_json(&config, FAST);
    assert_eq!(code, 0, "jsonb key order: {r}");

    // The side-by-side view names the key and both rows.
    dst.batch_execute("UPDATE items SET name = 'wrong' WHERE id = 99")
        .await
        .unwrap();
    let (code, out) = cmd(&[
        "verify",
        "--config",
        config.to_str().unwrap(),
        "--show",
        "1",
        "--settle",
        "0",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DIFF"), "{out}");
    assert!(out.contains("\"99\""), "{out}");
    assert!(out.contains("item 99") && out.contains("wrong"), "{out}");
    assert!(out.contains("1 of 1 table(s) differ"), "{out}");

    // A differing row with an unresolved dead letter is reported as such,
    // not as drift — and is still not green.
    dst.batch_execute(
        "CREATE TABLE public.ferry_dlq (id bigserial PRIMARY KEY, pipeline text NOT NULL,
             table_schema text NOT NULL, table_name text NOT NULL, row_key text NOT NULL,
             superseded_at timestamptz);
         INSERT INTO public.ferry_dlq (pipeline, table_schema, table_name, row_key)
             VALUES ('test', 'public', 'items', '[\"99\"]')",
    )
    .await
    .unwrap();
    let (code, r) = verify_json(&config, FAST);
    assert_eq!(code, 1, "{r}");
    assert_eq!(table(&r)["differing_rows"], 0, "{r}");
    assert_eq!(table(&r)["dead_lettered"], 1, "{r}");
    // Resolved (superseded) dead letters no longer explain a difference.
    dst.batch_execute("UPDATE public.ferry_dlq SET superseded_at = now()")
        .await
        .unwrap();
    let (code, r) = verify_json(&config, FAST);
    assert_eq!(code, 1, "{r}");
    assert_eq!(table(&r)["differing_rows"], 1, "{r}");
    assert_eq!(table(&r)["dead_lettered"], 0, "{r}");

    // Every run is recorded per table for `ferry cutover check`.
    let runs: i64 = dst
        .query_one(
            "SELECT count(*) FROM public.ferry_verify_runs
              WHERE pipeline = 'test' AND table_name = 'items'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(runs >= 10, "{runs} runs recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_type_without_a_hash_function_is_compared_by_its_text() {
    // `json` (not jsonb) and `point` have no hash function: the row's text
    // is hashed instead, and a difference is still found.
    let pair = Pair::start("verify_nohash").await;
    for c in [pair.src().await, pair.dst().await] {
        c.batch_execute(
            "CREATE TABLE shapes (id int PRIMARY KEY, j json, p point);
             INSERT INTO shapes SELECT g, json_build_object('g', g), point(g, g)
               FROM generate_series(1, 300) g;",
        )
        .await
        .unwrap();
    }
    let config = ConfigBuilder::new(&pair).tables(&["public.shapes"]).build();
    let (code, r) = verify_json(&config, FAST);
    assert_eq!(code, 0, "{r}");
    pair.dst()
        .await
        .batch_execute("UPDATE shapes SET p = point(0, 0) WHERE id = 150")
        .await
        .unwrap();
    let (code, r) = verify_json(&config, FAST);
    assert_eq!(code, 1, "{r}");
    assert_eq!(table(&r)["differing_rows"], 1, "{r}");
}

/// A config of the pair with either URL replaced.
fn config_with(pair: &Pair, src: Option<&str>, dst: Option<&str>, tables: &str) -> PathBuf {
    let text = format!(
        "[pipeline]\nname = \"test\"\n\n[source]\nkind = \"postgres\"\nurl = \"{}\"\ntables = [{tables}]\n\n[sink]\nkind = \"postgres\"\nurl = \"{}\"\n",
        src.map(str::to_owned)
            .unwrap_or_else(|| pair.source.url(&pair.db)),
        dst.map(str::to_owned)
            .unwrap_or_else(|| pair.target.url(&pair.db)),
    );
    let path = pair
        .dir
        .path()
        .join(format!("verify-{}.toml", rand::random::<u32>()));
    std::fs::write(&path, text).unwrap();
    path
}

fn expect_unverified(config: &Path, what: &str) {
    let (code, out) = cmd(&["verify", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 4, "{what}: {out}");
    assert!(out.contains("NOT VERIFIED"), "{what}: {out}");
    assert!(!out.contains("all 1 table(s) equal"), "{what}: {out}");
    let (code, r) = verify_json(config, &[]);
    assert_eq!(code, 4, "{what}: {r}");
    assert_eq!(r["ok"], false, "{what}: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_path_exits_4() {
    let (pair, _) = planted_pair("verify_err").await;
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let nowhere = format!("postgres://postgres@127.0.0.1:{closed}/{}", pair.db);
    let items = "\"public.items\"";
    expect_unverified(
        &config_with(&pair, Some(&nowhere), None, items),
        "unreachable source",
    );
    expect_unverified(
        &config_with(&pair, None, Some(&nowhere), items),
        "unreachable target",
    );
    // A source table the target lacks: that table is skipped, which is an
    // error even though the other table is equal.
    pair.src()
        .await
        .batch_execute(
            "CREATE TABLE unmirrored (id int PRIMARY KEY); INSERT INTO unmirrored VALUES (1)",
        )
        .await
        .unwrap();
    let both = config_with(&pair, None, None, "\"public.items\", \"public.unmirrored\"");
    let (code, out) = cmd(&["verify", "--config", both.to_str().unwrap()]);
    assert_eq!(code, 4, "missing target table: {out}");
    assert!(out.contains("does not exist"), "{out}");
    assert!(out.contains("NOT VERIFIED"), "{out}");
    // A query that fails: the target's reader may not read the table.
    let dst = pair.dst().await;
    dst.batch_execute("CREATE ROLE verify_reader LOGIN; REVOKE ALL ON items FROM PUBLIC")
        .await
        .unwrap();
    let reader = pair
        .target
        .url(&pair.db)
        .replace("postgres://postgres@", "postgres://verify_reader@");
    expect_unverified(
        &config_with(&pair, None, Some(&reader), items),
        "query failure (permission denied)",
    );
    // A mapping that does not fit the target (its table is missing):
    // nothing compared, never green.
    let mapped = ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .mappings("mapping.toml")
        .build();
    std::fs::write(
        pair.dir.path().join("mapping.toml"),
        "[[tables]]\nsource = \"public.items\"\ntarget = \"public.nowhere\"\n[tables.columns]\nid = \"id\"\n",
    )
    .unwrap();
    expect_unverified(&mapped, "mapping that does not fit the target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_under_live_traffic_reports_no_false_drift() {
    let pair = Pair::start("verify_live").await;
    let src = pair.src().await;
    // No generated column: whether the target gets one is `create_tables`'
    // business, not this test's.
    src.batch_execute(&format!(
        "{}{ROWS}",
        SCHEMA.replace(
            ",\n        total numeric GENERATED ALWAYS AS (price * 2) STORED",
            ""
        )
    ))
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.items"]).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.items"], Duration::from_secs(60))
        .await;

    // Updates, inserts and deletes all the time verify runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = std::sync::Arc::clone(&stop);
        let src = pair.src().await;
        tokio::spawn(async move {
            let mut i: i64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let id = (i * 37) % 900 + 1;
                src.batch_execute(&format!(
                    "UPDATE items SET price = price + 1, doc = doc || '{{\"n\": {i}}}' WHERE id = {id};
                     INSERT INTO items (id, name, price) VALUES ({}, 'new', 1);
                     DELETE FROM items WHERE id = {};",
                    2000 + i,
                    1999 + i
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let (code, r) = verify_json(&config, &["--chunk-rows", "200"]);
        assert_eq!(
            code,
            0,
            "false drift under traffic: {r}\n{}",
            ferry.log_text()
        );
    }
    // A real difference, on a row the traffic never touches, survives.
    pair.dst()
        .await
        .batch_execute("UPDATE items SET name = 'drift' WHERE id = 950")
        .await
        .unwrap();
    let (code, r) = verify_json(&config, &["--chunk-rows", "200"]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(table(&r)["differing_rows"], 1, "{r}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();
    ferry.kill9();
}

const PG_MAPPING: &str = r#"
[id_maps.orders]
kind = "bigint"
start = 500

[[tables]]
source = "public.legacy_orders"
target = "public.orders"
snake_case = true
rest = "extra"
[tables.columns]
id = { from = "code", id_map = "orders" }
amount = { from = "amountText" }
city = "meta.address.city"
"#;

/// The report of `target` in a verify report.
fn target_report<'a>(r: &'a serde_json::Value, target: &str) -> &'a serde_json::Value {
    r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target)
        .unwrap_or_else(|| panic!("no report for {target}: {r}"))
}

/// Plants `plant` in the target, expects verify to find `rows` differing
/// rows in `target`, undoes it and expects green again.
async fn expect_found(
    dst: &tokio_postgres::Client,
    config: &Path,
    (what, plant, undo): (&str, &str, &str),
    target: &str,
    rows: u64,
) {
    dst.batch_execute(plant).await.unwrap();
    // The pipeline is stopped: nothing is in flight, no re-check rounds.
    let (code, r) = verify_json(config, &["--show", "2", "--settle", "0"]);
    assert_eq!(code, 1, "{what}: {r}");
    assert_eq!(
        target_report(&r, target)["differing_rows"],
        rows,
        "{what}: {r}"
    );
    dst.batch_execute(undo).await.unwrap();
    let (code, r) = verify_json(config, &["--settle", "0"]);
    assert_eq!(code, 0, "after undoing {what}: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_postgres_table_compares_through_the_mapping() {
    let pair = Pair::start("verify_map_pg").await;
    pair.src()
        .await
        .batch_execute(
            r#"CREATE TABLE legacy_orders (code text PRIMARY KEY, "amountText" text, meta jsonb);
               INSERT INTO legacy_orders VALUES
                 ('A-1', '12.5', '{"address": {"city": "Lyon", "zip": "69001"}}'),
                 ('A-2', '1E+2', '{"address": {"city": "Oslo"}}');"#,
        )
        .await
        .unwrap();
    let dst = pair.dst().await;
    dst.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, city text,
                              extra jsonb, loaded_at timestamptz DEFAULT now());",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.legacy_orders"])
        .mappings("mappings.toml")
        .build();
    std::fs::write(config.parent().unwrap().join("mappings.toml"), PG_MAPPING).unwrap();
    let mut ferry = Ferry::spawn(&config);
    crate::support::wait_for("the snapshot", &ferry, Duration::from_secs(60), || async {
        let n: i64 = dst
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        n == 2
    })
    .await;
    ferry.kill9();

    let (code, r) = verify_json(&config, &[]);
    assert_eq!(code, 0, "{r}\n{}", ferry.log_text());
    assert_eq!(target_report(&r, "public.orders")["source_rows"], 2, "{r}");
    assert_eq!(target_report(&r, "public.orders")["target_rows"], 2, "{r}");
    // The shadows are gone.
    let left: i64 = dst
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'ferry_verify'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    // `--show` prints both keys: the legacy one and the new one.
    dst.batch_execute("UPDATE orders SET city = 'Paris' WHERE city = 'Lyon'")
        .await
        .unwrap();
    let (code, r) = verify_json(&config, &["--show", "1"]);
    assert_eq!(code, 1, "{r}");
    let ex = &target_report(&r, "public.orders")["examples"][0];
    assert_eq!(ex["source_key"], serde_json::json!(["A-1"]), "{r}");
    assert!(
        ex["target_key"][0]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= 500,
        "{r}"
    );
    assert!(ex["source"].as_str().unwrap().contains("Lyon"), "{r}");
    assert!(ex["target"].as_str().unwrap().contains("Paris"), "{r}");
    dst.batch_execute("UPDATE orders SET city = 'Lyon' WHERE city = 'Paris'")
        .await
        .unwrap();
    expect_found(
        &dst,
        &config,
        (
            "a wrong cent",
            "UPDATE orders SET amount = amount + 0.01 WHERE amount = 12.50",
            "UPDATE orders SET amount = 12.50 WHERE amount = 12.51",
        ),
        "public.orders",
        1,
    )
    .await;
    expect_found(
        &dst,
        &config,
        (
            "a wrong id-map translation",
            "UPDATE ferry_id_map SET new_id = '9999' WHERE legacy_id = 'A-2'",
            "UPDATE ferry_id_map SET new_id = (SELECT id::text FROM orders WHERE city = 'Oslo') WHERE legacy_id = 'A-2'",
        ),
        // Row 9999 expected, the old id found instead.
        "public.orders",
        2,
    )
    .await;
    expect_found(
        &dst,
        &config,
        (
            "an id-map entry missing",
            "UPDATE ferry_id_map SET namespace = 'hidden' WHERE legacy_id = 'A-2'",
            "UPDATE ferry_id_map SET namespace = 'orders' WHERE legacy_id = 'A-2'",
        ),
        // A-2 has no new id (its row cannot be built), and the target's
        // row for it is extra.
        "public.orders",
        2,
    )
    .await;
    expect_found(
        &dst,
        &config,
        (
            "a jsonb value in rest",
            "UPDATE orders SET extra = '{\"meta\": {\"address\": {\"zip\": \"69002\"}}}' WHERE city = 'Lyon'",
            "UPDATE orders SET extra = '{\"meta\": {\"address\": {\"zip\": \"69001\"}}}' WHERE city = 'Lyon'",
        ),
        "public.orders",
        1,
    )
    .await;
    // A column the target fills itself (loaded_at) is not the mapping's:
    // changing it is no drift.
    dst.batch_execute("UPDATE orders SET loaded_at = now() - interval '1 day'")
        .await
        .unwrap();
    let (code, r) = verify_json(&config, &[]);
    assert_eq!(code, 0, "{r}");

    // A source row the mapping rejects (0.125 needs rounding) is counted
    // as dead-lettered: not drift, not green.
    pair.src()
        .await
        .batch_execute("INSERT INTO legacy_orders VALUES ('A-3', '0.125', '{}')")
        .await
        .unwrap();
    let (code, r) = verify_json(&config, &[]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(
        target_report(&r, "public.orders")["dead_lettered"],
        1,
        "{r}"
    );
    assert_eq!(
        target_report(&r, "public.orders")["differing_rows"],
        0,
        "{r}"
    );
}

const MONGO_MAPPING: &str = r#"
[id_maps.payments]
kind = "bigint"
start = 1000

[[tables]]
source = "app.payments"
target = "public.payments"
snake_case = true
unmapped = "drop"
[tables.columns]
id = { from = "_id", id_map = "payments" }
amount = { from = "amount" }
buyer = "buyer.name"
meta = "meta"

[[tables.children]]
from = "items"
target = "public.payment_items"
parent_key = ["payment_id"]
position = "position"
unmapped = "drop"
[tables.children.columns]
sku = "sku"
price = { from = "price" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_source_mapped_and_mirrored() {
    use crate::support::mongo::{MongoOptions, MongoToPg};
    use mongodb::bson::{doc, Decimal128, Document};
    let dec = |s: &str| s.parse::<Decimal128>().unwrap();
    let fx = MongoToPg::start("verify_mongo", MongoOptions::default()).await;
    let db = fx.db().await;
    let payments: mongodb::Collection<Document> = db.collection("payments");
    let notes: mongodb::Collection<Document> = db.collection("notes");
    for i in 0..20 {
        payments
            .insert_one(doc! {
                "_id": mongodb::bson::oid::ObjectId::new(),
                "amount": dec(&format!("{}.{:02}", 10 + i, i)),
                "buyer": {"name": format!("buyer {i}")},
                "meta": {"a": i, "b": "x"},
                "items": [{"sku": format!("s{i}"), "price": dec("1.50")},
                          {"sku": format!("t{i}"), "price": dec("2.25")}],
            })
            .await
            .unwrap();
    }
    notes
        .insert_many(vec![
            doc! {"_id": 1, "text": "one"},
            doc! {"_id": "two", "text": "two"},
        ])
        .await
        .unwrap();
    let dst = fx.pg().await;
    dst.batch_execute(
        "CREATE TABLE public.payments (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL,
                                       buyer text, meta jsonb);
         CREATE TABLE public.payment_items (payment_id bigint NOT NULL, position integer NOT NULL,
                                            sku text, price numeric(12,2),
                                            PRIMARY KEY (payment_id, position));",
    )
    .await
    .unwrap();
    let config = fx.config(&["payments", "notes"], "", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "[pipeline]\n",
            "[pipeline]\nmappings = \"verify-mappings.toml\"\n",
            1,
        ),
    )
    .unwrap();
    std::fs::write(fx.dir.path().join("verify-mappings.toml"), MONGO_MAPPING).unwrap();
    let mut ferry = Ferry::spawn(&config);
    crate::support::wait_for("the snapshot", &ferry, Duration::from_secs(60), || async {
        let n: i64 = dst
            .query_one(
                "SELECT (SELECT count(*) FROM public.payment_items)
                      + coalesce((SELECT count(*) FROM pg_tables WHERE tablename = 'notes'), 0)",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        n == 41
    })
    .await;
    crate::support::wait_for("the notes", &ferry, Duration::from_secs(60), || async {
        dst.query_one("SELECT count(*) FROM app.notes", &[])
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == 2)
    })
    .await;
    ferry.kill9();

    let (code, r) = verify_json(&config, &["--chunk-rows", "7"]);
    assert_eq!(code, 0, "{r}\n{}", ferry.log_text());
    assert_eq!(
        target_report(&r, "public.payments")["source_rows"],
        20,
        "{r}"
    );
    assert_eq!(
        target_report(&r, "public.payment_items")["target_rows"],
        40,
        "{r}"
    );
    assert_eq!(target_report(&r, "app.notes")["target_rows"], 2, "{r}");

    expect_found(
        &dst,
        &config,
        (
            "a wrong cent",
            "UPDATE payments SET amount = amount + 0.01 WHERE buyer = 'buyer 3'",
            "UPDATE payments SET amount = amount - 0.01 WHERE buyer = 'buyer 3'",
        ),
        "public.payments",
        1,
    )
    .await;
    expect_found(
        &dst,
        &config,
        (
            "a child row missing",
            "DELETE FROM payment_items WHERE sku = 't4'",
            "INSERT INTO payment_items SELECT id, 1, 't4', 2.25 FROM payments WHERE buyer = 'buyer 4'",
        ),
        "public.payment_items",
        1,
    )
    .await;
    expect_found(
        &dst,
        &config,
        (
            "a wrong id-map translation",
            "UPDATE ferry_id_map SET new_id = '99999'
              WHERE new_id = (SELECT id::text FROM payments WHERE buyer = 'buyer 5')",
            "UPDATE ferry_id_map SET new_id = (SELECT id::text FROM payments WHERE buyer = 'buyer 5')
              WHERE new_id = '99999'",
        ),
        // The parent expected under 99999 (missing) and found under its
        // old id (extra); the same for its two children.
        "public.payments",
        2,
    )
    .await;
    expect_found(
        &dst,
        &config,
        (
            "a jsonb value",
            "UPDATE payments SET meta = '{\"a\": 6, \"b\": \"y\"}' WHERE buyer = 'buyer 6'",
            "UPDATE payments SET meta = '{\"b\": \"x\", \"a\": 6}' WHERE buyer = 'buyer 6'",
        ),
        "public.payments",
        1,
    )
    .await;
    expect_found(
        &dst,
        &config,
        (
            "a mirrored document changed",
            "UPDATE app.notes SET document = jsonb_set(document, '{text}', '\"uno\"') WHERE document->>'text' = 'one'",
            "UPDATE app.notes SET document = jsonb_set(document, '{text}', '\"one\"') WHERE document->>'text' = 'uno'",
        ),
        "app.notes",
        1,
    )
    .await;
}

/// `ferry cutover check --config <config> <extra…>`: exit code and output.
fn cutover(config: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["cutover", "check", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    cmd(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_check_blocks_on_each_condition() {
    let mut pair = Pair::start("verify_cutover").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 200) g;
         CREATE TABLE other (id int PRIMARY KEY);
         INSERT INTO other VALUES (1);",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.items", "public.other"])
        .extra_sink("\n[cutover]\nmax_lag_bytes = 1048576")
        .build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.items", "public.other"], Duration::from_secs(60))
        .await;
    let dst = pair.dst().await;

    // Never verified: blocked.
    let (code, out) = cutover(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[BLOCKED] public.items") && out.contains("never"),
        "{out}"
    );
    let (code, r) = verify_json(&config, &[]);
    assert_eq!(code, 0, "{r}");
    let (code, out) = cutover(&config, &[]);
    assert_eq!(code, 0, "{out}\n{}", ferry.log_text());
    assert!(out.contains("[ready  ] public.items"), "{out}");

    // An unresolved dead letter blocks its table only: `--table` cuts the
    // other one over.
    dst.batch_execute(
        "INSERT INTO public.ferry_dlq (pipeline, table_schema, table_name, row_key, op, event,
                                      error_class, error_message, stage)
         VALUES ('test', 'public', 'other', '[\"1\"]', 'insert', '{}', 'permanent', 'planted', 'sink')",
    )
    .await
    .unwrap();
    let (code, out) = cutover(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[BLOCKED] public.other") && out.contains("dead-letter"),
        "{out}"
    );
    let (code, out) = cutover(&config, &["--table", "public.items"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("public.other"), "{out}");
    dst.batch_execute("UPDATE public.ferry_dlq SET superseded_at = now()")
        .await
        .unwrap();
    let (code, out) = cutover(&config, &[]);
    assert_eq!(code, 0, "{out}");

    // Drift: the last verify is not green, and once it is again the
    // drift still blocks for the soak period.
    dst.batch_execute("UPDATE items SET name = 'drift' WHERE id = 5")
        .await
        .unwrap();
    let (code, r) = verify_json(&config, &["--settle", "1"]);
    assert_eq!(code, 1, "{r}");
    let (code, out) = cutover(&config, &["--table", "public.items"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not green") && out.contains("soak"), "{out}");
    dst.batch_execute("UPDATE items SET name = 'item 5' WHERE id = 5")
        .await
        .unwrap();
    let (code, r) = verify_json(&config, &[]);
    assert_eq!(code, 0, "{r}");
    let (code, out) = cutover(&config, &["--table", "public.items"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("soak") && !out.contains("not green"), "{out}");
    // Eight days later (the default soak is seven).
    dst.batch_execute(
        "UPDATE public.ferry_verify_runs SET finished_at = finished_at - interval '8 days'
          WHERE drift_rows > 0",
    )
    .await
    .unwrap();
    let (code, out) = cutover(&config, &[]);
    assert_eq!(code, 0, "{out}");

    // The last green verify is too old.
    dst.batch_execute(
        "UPDATE public.ferry_verify_runs SET finished_at = finished_at - interval '2 days',
                                             started_at = started_at - interval '2 days'",
    )
    .await
    .unwrap();
    let (code, out) = cutover(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("older than"), "{out}");
    let (code, r) = verify_json(&config, &[]);
    assert_eq!(code, 0, "{r}");
    let (code, out) = cutover(&config, &[]);
    assert_eq!(code, 0, "{out}");

    // Lag: the pipeline stopped while the source wrote ~3 MB.
    ferry.kill9();
    src.batch_execute(
        "INSERT INTO items SELECT g, repeat('x', 1000) FROM generate_series(1000, 4000) g",
    )
    .await
    .unwrap();
    let (code, out) = cutover(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("lag:"), "{out}");
    // Running again, the lag drains.
    let ferry = Ferry::spawn(&config);
    crate::support::wait_for("the lag to drain", &ferry, Duration::from_secs(60), || {
        let config = config.clone();
        async move { cutover(&config, &["--table", "public.other"]).0 == 0 }
    })
    .await;

    // The target unreachable: not checked, never ready.
    drop(dst);
    drop(ferry);
    pair.target.stop().await.expect("stop target");
    let (code, out) = cutover(&config, &[]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("NOT CHECKED"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_mode_exports_drift_and_last_success() {
    let (pair, _) = planted_pair("verify_watch").await;
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .extra_sink("\n[metrics]\nlisten = \"127.0.0.1:0\"")
        .build();
    let log = config.with_extension("watch.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = crate::support::ferry_command(pair.dir.path())
        .args(["verify", "--watch", "1", "--settle", "0", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn ferry verify --watch");
    let ferry = Ferry { child, log };
    let addr = crate::support::metrics_addr(&ferry).await;
    let metric = |name: &str| {
        let body = crate::support::http_get(&addr, "/metrics");
        body.lines()
            .find(|l| l.starts_with(&format!("{name}{{table=\"public.items\"}}")))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    crate::support::wait_for("a green run", &ferry, Duration::from_secs(30), || async {
        metric("ferry_verify_last_success_timestamp").is_some_and(|t| t > 1.7e9)
            && metric("ferry_verify_drift_rows") == Some(0.0)
    })
    .await;
    let rows = metric("ferry_verify_rows_checked_total").unwrap_or(0.0);
    assert!(rows >= 1000.0, "{rows}");
    pair.dst()
        .await
        .batch_execute("UPDATE items SET name = 'drift' WHERE id IN (1, 2)")
        .await
        .unwrap();
    crate::support::wait_for("the drift", &ferry, Duration::from_secs(30), || async {
        metric("ferry_verify_drift_rows") == Some(2.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_table_under_live_traffic_reports_no_false_drift() {
    let pair = Pair::start("verify_map_live").await;
    let src = pair.src().await;
    src.batch_execute(
        r#"CREATE TABLE legacy_orders (code text PRIMARY KEY, "amountText" text, meta jsonb);
           INSERT INTO legacy_orders SELECT 'A-' || g, g || '.25', '{"address": {"city": "Lyon"}}'
             FROM generate_series(1, 300) g;"#,
    )
    .await
    .unwrap();
    let dst = pair.dst().await;
    dst.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, city text,
                              extra jsonb, loaded_at timestamptz DEFAULT now());",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.legacy_orders"])
        .mappings("mappings.toml")
        .build();
    std::fs::write(config.parent().unwrap().join("mappings.toml"), PG_MAPPING).unwrap();
    let mut ferry = Ferry::spawn(&config);
    crate::support::wait_for("the snapshot", &ferry, Duration::from_secs(60), || async {
        dst.query_one("SELECT count(*) FROM orders", &[])
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == 300)
    })
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = std::sync::Arc::clone(&stop);
        let src = pair.src().await;
        tokio::spawn(async move {
            let mut i: i64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                src.batch_execute(&format!(
                    r#"UPDATE legacy_orders SET "amountText" = '{i}.50' WHERE code = 'A-{}';
                       INSERT INTO legacy_orders VALUES ('B-{i}', '1', '{{}}');"#,
                    i % 300 + 1
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    for _ in 0..2 {
        let (code, r) = verify_json(&config, &[]);
        assert_eq!(
            code,
            0,
            "false drift under traffic: {r}\n{}",
            ferry.log_text()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();
    ferry.kill9();
}
