//! A way back (docs/rollback.md), PostgreSQL → PostgreSQL through a
//! mapping (a renamed column, a bigserial key → UUIDs through the id map,
//! money of another precision): the forward pipeline copies and follows,
//! `ferry rollback init` writes the reverse pipeline, both run at once
//! while each side's application writes its own rows (inserts, updates,
//! deletes, money), and:
//! - the old side ends as the application would have left it, rows
//!   created on the new side with fresh legacy ids from the old table's
//!   own sequence, recorded in the id map;
//! - no echo: every write a trigger logs on each side for the rows that
//!   side's application owns is one of that application's writes;
//! - a kill -9 of the reverse pipeline mid-stream ends in the same state.
//!
//! Runs on both buses (FERRY_TEST_BUS).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{ferry_cmd, wait_for, ConfigBuilder, Ferry, Pair};

const MAPPING: &str = r#"
[id_maps.accounts]
kind = "uuid_v7"

[[tables]]
source = "public.legacy_accounts"
target = "public.accounts"
[tables.columns]
id = { from = "id", id_map = "accounts" }
name = "full_name"
balance = "balance"
"#;

/// Each side's write log: one row per row-level write, with the row's key.
const WRITE_LOG: &str = r#"
CREATE TABLE writes (n bigserial PRIMARY KEY, op text NOT NULL, row_key text NOT NULL);
CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO writes (op, row_key)
  VALUES (TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id::text ELSE NEW.id::text END);
  RETURN NULL;
END $$;
"#;

/// (legacy id, name, balance, status), by legacy id.
type Account = (i64, String, Option<String>, Option<String>);

async fn old_rows(old: &tokio_postgres::Client) -> Vec<Account> {
    old.query(
        "SELECT id, full_name, balance::text, status FROM legacy_accounts ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// The new side's rows under their legacy ids (rows without a mapping yet
/// are left out, and counted by the caller); nothing before the forward
/// sink made its id map.
async fn new_rows(new: &tokio_postgres::Client) -> (Vec<Account>, i64) {
    let Ok(rows) = new
        .query(
            "SELECT m.legacy_id::bigint, a.name, a.balance::text, a.status
               FROM accounts a JOIN ferry_id_map m
                 ON m.namespace = 'accounts' AND m.new_id = a.id::text
              ORDER BY 1",
            &[],
        )
        .await
    else {
        return (Vec::new(), -1);
    };
    let rows = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let total: i64 = new
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    (rows, total)
}

/// Both sides hold the same accounts, every new row mapped.
async fn converged(old: &tokio_postgres::Client, new: &tokio_postgres::Client) -> bool {
    let (n, total) = new_rows(new).await;
    let o = old_rows(old).await;
    n.len() as i64 == total && n == o
}

async fn wait_converged(
    what: &str,
    ferry: &Ferry,
    old: &tokio_postgres::Client,
    new: &tokio_postgres::Client,
) {
    wait_for(what, ferry, Duration::from_secs(120), || {
        converged(old, new)
    })
    .await;
}

/// The uuid of a legacy id on the new side.
async fn new_id(new: &tokio_postgres::Client, legacy: i64) -> String {
    new.query_one(
        "SELECT new_id FROM ferry_id_map WHERE namespace = 'accounts' AND legacy_id = $1",
        &[&legacy.to_string()],
    )
    .await
    .unwrap()
    .get(0)
}

/// Writes logged for the given row keys.
async fn writes_of(client: &tokio_postgres::Client, keys: &[String]) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM writes WHERE row_key = ANY($1)",
            &[&keys],
        )
        .await
        .unwrap()
        .get(0)
}

fn reverse_config(dir: &Path) -> PathBuf {
    dir.join("test_rollback.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_pipeline_after_cutover() {
    let pair = Pair::start("rollback").await;
    let old = pair.src().await;
    let new = pair.dst().await;
    old.batch_execute(WRITE_LOG).await.unwrap();
    new.batch_execute(WRITE_LOG).await.unwrap();
    old.batch_execute(
        "CREATE TABLE legacy_accounts (id bigserial PRIMARY KEY, full_name text NOT NULL,
                                       balance numeric(12,2), status text);
         CREATE TRIGGER log AFTER INSERT OR UPDATE OR DELETE ON legacy_accounts
           FOR EACH ROW EXECUTE FUNCTION log_write();
         INSERT INTO legacy_accounts (full_name, balance, status)
           SELECT 'acct ' || i, (i * 100.25)::numeric(12,2), 'open' FROM generate_series(1, 20) i;",
    )
    .await
    .unwrap();
    new.batch_execute(
        "CREATE TABLE accounts (id uuid PRIMARY KEY, name text NOT NULL,
                                balance numeric(14,2), status text);
         CREATE TRIGGER log AFTER INSERT OR UPDATE OR DELETE ON accounts
           FOR EACH ROW EXECUTE FUNCTION log_write();",
    )
    .await
    .unwrap();
    std::fs::write(pair.dir.path().join("mappings.toml"), MAPPING).unwrap();
    let forward_config = ConfigBuilder::new(&pair)
        .tables(&["public.legacy_accounts"])
        .mappings("mappings.toml")
        .build();
    let forward = Ferry::spawn(&forward_config);
    wait_converged("the forward copy", &forward, &old, &new).await;

    // Before cutover: the reverse pipeline, its slot made now.
    let (code, out) = ferry_cmd(&[
        "rollback",
        "init",
        "--config",
        forward_config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("numeric(14,2) back into numeric(12,2)"),
        "{out}"
    );
    assert!(!out.contains("LOSSY"), "{out}");
    let reverse_config = reverse_config(pair.dir.path());
    let text = std::fs::read_to_string(&reverse_config).unwrap();
    assert!(text.contains("snapshot = \"never\""), "{text}");
    let inverse =
        std::fs::read_to_string(pair.dir.path().join("test_rollback.mappings.toml")).unwrap();
    assert!(inverse.contains("kind = \"inverse\""), "{inverse}");
    assert!(inverse.contains("legacy_accounts_id_seq"), "{inverse}");
    let mut reverse = Ferry::spawn(&reverse_config);

    // Only changes made from here on are counted.
    old.batch_execute("DELETE FROM writes").await.unwrap();
    new.batch_execute("DELETE FROM writes").await.unwrap();

    // Both applications at once, on disjoint rows. The old one owns legacy
    // ids 1..=10 and the rows it creates; the new one 11..=20 and its own.
    let mut old_ops = 0i64;
    let mut new_ops = 0i64;
    let mut old_keys: Vec<String> = (1..=10).map(|i: i64| i.to_string()).collect();
    let mut new_keys = Vec::new();
    for i in 11..=20 {
        new_keys.push(new_id(&new, i).await);
    }
    let mut created = Vec::new();
    for round in 0..5i64 {
        for i in 1..=10i64 {
            old.execute(
                "UPDATE legacy_accounts SET balance = balance + $2::text::numeric WHERE id = $1",
                &[&i, &format!("{round}.01")],
            )
            .await
            .unwrap();
            old_ops += 1;
        }
        let id: i64 = old
            .query_one(
                "INSERT INTO legacy_accounts (full_name, balance, status) VALUES ($1, 7.10, 'open') RETURNING id",
                &[&format!("old app {round}")],
            )
            .await
            .unwrap()
            .get(0);
        old_keys.push(id.to_string());
        old_ops += 1;
        for k in &new_keys[..9] {
            new.execute(
                "UPDATE accounts SET balance = 98765.43 - $2::int, name = name || '+' WHERE id = $1::text::uuid",
                &[k, &(round as i32)],
            )
            .await
            .unwrap();
            new_ops += 1;
        }
        let u: String = new
            .query_one(
                "INSERT INTO accounts VALUES (gen_random_uuid(), $1, 0.01, 'new') RETURNING id::text",
                &[&format!("new app {round}")],
            )
            .await
            .unwrap()
            .get(0);
        created.push(u.clone());
        new_keys.push(u);
        new_ops += 1;
    }
    new.execute(
        "DELETE FROM accounts WHERE id = $1::text::uuid",
        &[&new_keys[9]],
    )
    .await
    .unwrap();
    new_ops += 1;
    new.execute(
        "UPDATE accounts SET status = 'closed', balance = 1234567890.99 WHERE id = $1::text::uuid",
        &[&created[0]],
    )
    .await
    .unwrap();
    new_ops += 1;

    // Markers: once each side's last write crossed, everything before it
    // was processed (an echo would have been written by then).
    let marker: i64 = old
        .query_one(
            "INSERT INTO legacy_accounts (full_name) VALUES ('old marker') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    old_keys.push(marker.to_string());
    old_ops += 1;
    let u: String = new
        .query_one(
            "INSERT INTO accounts (id, name) VALUES (gen_random_uuid(), 'new marker') RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    new_keys.push(u);
    new_ops += 1;
    wait_converged("both directions", &reverse, &old, &new).await;

    // Rows created on the new side got legacy ids from the old sequence,
    // recorded in the map; the deleted row is gone on both sides.
    for u in &created {
        let legacy: String = new
            .query_one(
                "SELECT legacy_id FROM ferry_id_map WHERE namespace = 'accounts' AND new_id = $1",
                &[u],
            )
            .await
            .unwrap()
            .get(0);
        let legacy: i64 = legacy.parse().unwrap();
        assert!(legacy > 20, "{legacy}");
    }
    let closed: (String, String) = {
        let r = old
            .query_one(
                "SELECT o.status, o.balance::text FROM legacy_accounts o WHERE o.full_name = 'new app 0'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(closed, ("closed".into(), "1234567890.99".into()));
    // No echo: each application's rows were written on its own side by it
    // alone (a pipeline sending back what the other wrote would add writes).
    assert_eq!(writes_of(&old, &old_keys).await, old_ops, "old side");
    assert_eq!(writes_of(&new, &new_keys).await, new_ops, "new side");

    // kill -9 of the reverse pipeline while it streams a burst.
    for i in 0..200i32 {
        let k = &new_keys[(i as usize) % 9];
        new.execute(
            "UPDATE accounts SET balance = $2::text::numeric WHERE id = $1::text::uuid",
            &[k, &format!("{i}.{:02}", i % 100)],
        )
        .await
        .unwrap();
        if i % 20 == 0 {
            new.execute(
                "INSERT INTO accounts VALUES (gen_random_uuid(), $1, 1.50, 'burst')",
                &[&format!("burst {i}")],
            )
            .await
            .unwrap();
        }
        if i == 100 {
            reverse.kill9();
        }
    }
    let reverse = Ferry::spawn(&reverse_config);
    wait_converged("the reverse pipeline after kill -9", &reverse, &old, &new).await;
    // Every legacy id is the one its row has: one per new row, no doubles.
    let legacy_ids: i64 = old
        .query_one("SELECT count(DISTINCT id) FROM legacy_accounts", &[])
        .await
        .unwrap()
        .get(0);
    let new_count: i64 = new
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(legacy_ids, new_count);
    drop(forward);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_init_refuses_a_lossy_mapping() {
    let pair = Pair::start("rollback_lossy").await;
    let old = pair.src().await;
    let new = pair.dst().await;
    old.batch_execute(
        "CREATE TABLE legacy_accounts (id bigserial PRIMARY KEY, full_name text NOT NULL,
                                       balance numeric(12,3), secret text);",
    )
    .await
    .unwrap();
    new.batch_execute(
        "CREATE TABLE accounts (id uuid PRIMARY KEY, name text NOT NULL, balance numeric(14,2),
                                currency text NOT NULL);",
    )
    .await
    .unwrap();
    // Rounded money, a constant column, a dropped field.
    let mapping = MAPPING
        .replace(
            "balance = \"balance\"",
            "balance = { from = \"balance\", round = \"half_even\" }\ncurrency = { default = \"EUR\" }",
        )
        .replace(
            "target = \"public.accounts\"\n",
            "target = \"public.accounts\"\ndrop = [\"secret\"]\n",
        );
    std::fs::write(pair.dir.path().join("mappings.toml"), mapping).unwrap();
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.legacy_accounts"])
        .mappings("mappings.toml")
        .build();
    let (code, out) = ferry_cmd(&["rollback", "init", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for field in [
        "public.accounts.balance",
        "public.accounts.currency",
        "public.legacy_accounts.secret",
    ] {
        assert!(
            out.lines()
                .any(|l| l.contains("LOSSY") && l.contains(field)),
            "{field}: {out}"
        );
    }
    assert!(out.contains("--accept-lossy"), "{out}");
    assert!(!reverse_config(pair.dir.path()).exists(), "nothing written");
    let (code, out) = ferry_cmd(&[
        "rollback",
        "init",
        "--config",
        config.to_str().unwrap(),
        "--accept-lossy",
        "--no-slot",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(reverse_config(pair.dir.path()).exists(), "{out}");
}

/// A MongoDB → PostgreSQL pipeline's way back: the reverse config writes
/// to the MongoDB sink (its section exactly as that sink reads it), the
/// inverse mapping gives `_id` and field paths, legacy ids as ObjectIds.
/// (Running it needs the MongoDB sink; `rollback init` needs only the new
/// database.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_init_for_a_mongodb_source() {
    let pair = Pair::start("rollback_mongo").await;
    let new = pair.dst().await;
    new.batch_execute(
        "CREATE TABLE escrows (id uuid PRIMARY KEY, buyer_id uuid, amount numeric(12,2),
                               city text, status text);",
    )
    .await
    .unwrap();
    std::fs::write(
        pair.dir.path().join("mappings.toml"),
        r#"
[id_maps.escrows]
kind = "uuid_v7"
[id_maps.users]
kind = "uuid_v7"

[[tables]]
source = "shop.escrows"
target = "public.escrows"
[tables.columns]
id = { from = "_id", id_map = "escrows" }
buyer_id = { from = "buyerId", id_map = "users" }
amount = "amount"
city = "delivery.address.city"
"#,
    )
    .unwrap();
    let config = pair.dir.path().join("escrow.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
name = "escrow"
mappings = "mappings.toml"

[source]
kind = "mongodb"
url = "mongodb://127.0.0.1:1/?replicaSet=rs0"
database = "shop"
collections = ["escrows"]

[sink]
kind = "postgres"
url = "{}"
"#,
            pair.target.url(&pair.db)
        ),
    )
    .unwrap();
    let (code, out) = ferry_cmd(&["rollback", "init", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let reverse = std::fs::read_to_string(pair.dir.path().join("escrow_rollback.toml")).unwrap();
    assert!(
        reverse.contains(&format!(
            "[sink]\nkind = \"mongodb\"\nurl = \"mongodb://127.0.0.1:1/?replicaSet=rs0\"\ndatabase = \"shop\"\nid_map_url = \"{}\"\n",
            pair.target.url(&pair.db)
        )),
        "{reverse}"
    );
    let inverse =
        std::fs::read_to_string(pair.dir.path().join("escrow_rollback.mappings.toml")).unwrap();
    for needle in [
        "target = \"shop.escrows\"",
        "[tables.columns._id]",
        "[tables.columns.\"delivery.address.city\"]",
        "[tables.columns.buyerId]",
        "legacy = \"object_id\"",
    ] {
        assert!(inverse.contains(needle), "{needle}: {inverse}");
    }
    // The reverse slot exists in the new database from now on.
    let slots: i64 = new
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'escrow_rollback'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1);
    new.execute("SELECT pg_drop_replication_slot('escrow_rollback')", &[])
        .await
        .unwrap();
}

/// The MongoDB way back, end to end: MongoDB → PostgreSQL through a
/// mapping (ObjectIds → UUIDs through the id map, a Decimal128 amount →
/// numeric(12,2), a nested path → a column), cutover, then the application
/// writes on PostgreSQL (an update, a delete, a new row with money) while
/// the reverse pipeline `ferry rollback init` wrote runs into the MongoDB
/// sink: the collection ends as the application would have left it,
/// amounts exact as Decimal128, the new row under a fresh ObjectId
/// recorded in the id map, and again after a kill -9 of the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_reverse_pipeline_after_cutover() {
    use crate::support::mongo::{MongoOptions, MongoToPg};
    use mongodb::bson::{doc, oid::ObjectId, Bson, Decimal128, Document};

    let fx = MongoToPg::start("rb_mongo", MongoOptions::default()).await;
    let escrows = fx.db().await.collection::<Document>("escrows");
    let dec = |s: &str| s.parse::<Decimal128>().unwrap();
    let ids: Vec<ObjectId> = (0..4).map(|_| ObjectId::new()).collect();
    for (n, id) in ids.iter().enumerate() {
        escrows
            .insert_one(doc! {
                "_id": *id, "amount": dec(&format!("{}.50", 10 + n)),
                "delivery": {"address": {"city": "Lyon"}}, "status": "open",
            })
            .await
            .unwrap();
    }
    let pg = fx.pg().await;
    pg.batch_execute(
        "CREATE TABLE public.escrows (id uuid PRIMARY KEY, amount numeric(12,2), city text, status text)",
    )
    .await
    .unwrap();
    let mappings = fx.dir.path().join("escrow-mappings.toml");
    std::fs::write(
        &mappings,
        format!(
            r#"
[id_maps.escrows]
kind = "uuid_v7"

[[tables]]
source = "{}.escrows"
target = "public.escrows"
[tables.columns]
id = {{ from = "_id", id_map = "escrows" }}
amount = "amount"
city = "delivery.address.city"
status = "status"
"#,
            fx.mongo_db
        ),
    )
    .unwrap();
    let config = fx.config_into(&fx.pg_db, &["escrows"], "", "");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[pipeline]\n",
        &format!("[pipeline]\nmappings = {:?}\n", mappings.to_str().unwrap()),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let mut forward = Ferry::spawn(&config);
    wait_for(
        "the forward copy",
        &forward,
        Duration::from_secs(60),
        || async {
            pg.query_one("SELECT count(*) FROM public.escrows", &[])
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) == 4)
        },
    )
    .await;

    let (code, out) = ferry_cmd(&["rollback", "init", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let reverse_config = reverse_config(config.parent().unwrap());
    // Cutover: the forward pipeline stops, the application moves.
    forward.kill9();
    let mut reverse = Ferry::spawn(&reverse_config);

    let new_id = |legacy: ObjectId| {
        let pg = &pg;
        async move {
            pg.query_one(
                "SELECT new_id FROM ferry_id_map WHERE namespace = 'escrows' AND legacy_id = $1",
                &[&legacy.to_hex()],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
        }
    };
    let (first, second) = (new_id(ids[0]).await, new_id(ids[1]).await);
    let created = "0190f1a8-7c1e-7abc-8def-0123456789ab";
    pg.batch_execute(&format!(
        "UPDATE public.escrows SET amount = 11.25, status = 'paid' WHERE id = '{first}';
         DELETE FROM public.escrows WHERE id = '{second}';
         INSERT INTO public.escrows VALUES ('{created}', 99.99, 'Paris', 'open');"
    ))
    .await
    .unwrap();

    // What the application would have left in MongoDB.
    let expected = |created_amount: &str, created_legacy: Option<ObjectId>| {
        let mut want: Vec<(String, String, String, String)> = vec![
            (
                ids[0].to_hex(),
                "11.25".into(),
                "Lyon".into(),
                "paid".into(),
            ),
            (
                ids[2].to_hex(),
                "12.50".into(),
                "Lyon".into(),
                "open".into(),
            ),
            (
                ids[3].to_hex(),
                "13.50".into(),
                "Lyon".into(),
                "open".into(),
            ),
        ];
        if let Some(l) = created_legacy {
            want.push((
                l.to_hex(),
                created_amount.into(),
                "Paris".into(),
                "open".into(),
            ));
        }
        want.sort();
        want
    };
    let mongo_state = || {
        let escrows = escrows.clone();
        async move {
            use futures_util::TryStreamExt;
            let docs: Vec<Document> = escrows
                .find(doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let mut got: Vec<(String, String, String, String)> = docs
                .iter()
                .map(|d| {
                    let id = match d.get("_id") {
                        Some(Bson::ObjectId(o)) => o.to_hex(),
                        other => format!("not an ObjectId: {other:?}"),
                    };
                    let amount = match d.get("amount") {
                        Some(Bson::Decimal128(x)) => x.to_string(),
                        other => format!("not a Decimal128: {other:?}"),
                    };
                    let city = d
                        .get_document("delivery")
                        .and_then(|x| x.get_document("address"))
                        .and_then(|x| x.get_str("city"))
                        .unwrap_or("-")
                        .to_string();
                    (
                        id,
                        amount,
                        city,
                        d.get_str("status").unwrap_or("-").to_string(),
                    )
                })
                .collect();
            got.sort();
            got
        }
    };
    let legacy_of_created = || {
        let pg = &pg;
        async move {
            pg.query_opt(
                "SELECT legacy_id FROM ferry_id_map WHERE namespace = 'escrows' AND new_id = $1",
                &[&created],
            )
            .await
            .unwrap()
            .map(|r| ObjectId::parse_str(r.get::<_, String>(0)).expect("an ObjectId legacy id"))
        }
    };
    let mut last = Vec::new();
    let converged = async {
        loop {
            let legacy = legacy_of_created().await;
            last = mongo_state().await;
            if let Some(l) = legacy.filter(|_| last == expected("99.99", legacy)) {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let created_legacy = match tokio::time::timeout(Duration::from_secs(60), converged).await {
        Ok(l) => l,
        Err(_) => panic!(
            "MongoDB never matched the application's writes: {last:?}\nreverse log:\n{}",
            reverse.log_text()
        ),
    };

    // kill -9 of the reverse, a write meanwhile, a restart: the same
    // legacy id, the new amount.
    reverse.kill9();
    pg.batch_execute(&format!(
        "UPDATE public.escrows SET amount = 100.01 WHERE id = '{created}'"
    ))
    .await
    .unwrap();
    let reverse = Ferry::spawn(&reverse_config);
    let mut last = Vec::new();
    let converged = async {
        loop {
            last = mongo_state().await;
            if last == expected("100.01", Some(created_legacy)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), converged)
        .await
        .is_err()
    {
        panic!(
            "MongoDB never matched after the restart: {last:?}\nreverse log:\n{}",
            reverse.log_text()
        );
    }
}
