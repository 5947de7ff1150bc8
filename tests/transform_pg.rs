//! Mappings with a PostgreSQL source: a legacy table with text ids, money
//! as text and a jsonb column becomes a table keyed by bigint ids from the
//! id map, with exact numeric money, a column from a jsonb path and the
//! rest as jsonb. Checked row by row against values computed here; a bad
//! amount is parked with its rule while good rows land; a key-changing
//! update moves the row. Runs on both buses (FERRY_TEST_BUS).

use std::time::Duration;

use crate::support::{wait_for, ConfigBuilder, Ferry, Pair};

const MAPPING: &str = r#"
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
status = { from = "status", default = "new" }
"#;

type OrderRow = (
    String,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The target's orders with their legacy ids, by legacy id.
async fn rows(dst: &tokio_postgres::Client) -> Vec<OrderRow> {
    let q =
        "SELECT m.legacy_id, o.id, o.amount::text, o.city, o.customer_name, o.status, o.extra::text
               FROM orders o JOIN ferry_id_map m ON m.namespace = 'orders' AND m.new_id = o.id::text
              ORDER BY m.legacy_id";
    dst.query(q, &[])
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r.get(0),
                        r.get(1),
                        r.get(2),
                        r.get(3),
                        r.get(4),
                        r.get(5),
                        r.get(6),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_source_through_a_mapping() {
    let pair = Pair::start("map_pg").await;
    let src = pair.src().await;
    src.batch_execute(
        r#"CREATE TABLE legacy_orders (code text PRIMARY KEY, "amountText" text, meta jsonb,
                                       "customerName" text, status text);
           INSERT INTO legacy_orders VALUES
             ('A-1', '12.5', '{"address": {"city": "Lyon", "zip": "69001"}}', 'Ann', 'paid'),
             ('A-2', '1E+2', '{"address": {"city": "Oslo"}}', 'Bo', NULL),
             ('A-3', '0.125', '{}', 'Cy', 'paid');"#,
    )
    .await
    .unwrap();
    let dst = pair.dst().await;
    dst.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL,
                              city text, customer_name text, status text, extra jsonb,
                              loaded_at timestamptz DEFAULT now());",
    )
    .await
    .unwrap();
    let mapping = ConfigBuilder::new(&pair)
        .tables(&["public.legacy_orders"])
        .mappings("mappings.toml")
        .build();
    let dir = mapping.parent().unwrap().to_path_buf();
    std::fs::write(dir.join("mappings.toml"), MAPPING).unwrap();

    let mut ferry = Ferry::spawn(&mapping);
    wait_for("the snapshot", &ferry, Duration::from_secs(60), || async {
        rows(&dst).await.len() == 2
    })
    .await;
    let got = rows(&dst).await;
    // Ids from the sequence, starting at 500; money exact at scale 2; the
    // jsonb path; snake_case by name; a present NULL stays NULL; the zip
    // that no rule took stays in `extra`.
    assert_eq!(got[0].0, "A-1");
    assert!(got.iter().all(|r| r.1 >= 500), "{got:?}");
    assert_eq!(got[0].2, "12.50");
    assert_eq!(got[0].3.as_deref(), Some("Lyon"));
    assert_eq!(got[0].4.as_deref(), Some("Ann"));
    assert_eq!(got[0].5.as_deref(), Some("paid"));
    assert_eq!(
        got[0].6.as_deref(),
        Some(r#"{"meta": {"address": {"zip": "69001"}}}"#)
    );
    assert_eq!(got[1].2, "100.00");
    assert_eq!(got[1].5, None);
    assert_eq!(got[1].6, None);
    // 0.125 needs rounding: parked with its rule, the raw value and the
    // field; nothing written for it.
    let parked = dst
        .query_one(
            "SELECT error_code, error_message, stage, table_name FROM ferry_dlq",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        parked.get::<_, Option<String>>(0).as_deref(),
        Some("needs_rounding")
    );
    let message: String = parked.get(1);
    assert!(
        message.contains("amountText") && message.contains("0.125") && message.contains("A-3"),
        "{message}"
    );
    assert_eq!(parked.get::<_, String>(2), "transform");
    assert_eq!(parked.get::<_, String>(3), "legacy_orders");

    // Streaming: an update, a fix of the bad row (supersedes its record), a
    // key change, a delete.
    let a1 = got[0].1;
    src.batch_execute(
        r#"UPDATE legacy_orders SET "amountText" = '13', status = 'refunded' WHERE code = 'A-1';
           UPDATE legacy_orders SET "amountText" = '0.13' WHERE code = 'A-3';
           UPDATE legacy_orders SET code = 'B-2' WHERE code = 'A-2';
           INSERT INTO legacy_orders (code, "amountText") VALUES ('A-4', '7');
           DELETE FROM legacy_orders WHERE code = 'A-4';"#,
    )
    .await
    .unwrap();
    wait_for("the changes", &ferry, Duration::from_secs(60), || async {
        let r = rows(&dst).await;
        r.len() == 3 && r.iter().any(|x| x.0 == "B-2")
    })
    .await;
    let got = rows(&dst).await;
    let keys: Vec<&str> = got.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(keys, ["A-1", "A-3", "B-2"]);
    assert_eq!(got[0].1, a1, "an update keeps the row's id");
    assert_eq!(got[0].2, "13.00");
    assert_eq!(got[0].5.as_deref(), Some("refunded"));
    assert_eq!(got[1].2, "0.13");
    assert_eq!(got[2].2, "100.00");
    let superseded: bool = dst
        .query_one("SELECT superseded_at IS NOT NULL FROM ferry_dlq", &[])
        .await
        .unwrap()
        .get(0);
    assert!(superseded, "the fixed row supersedes its parked record");
    let count: i64 = dst
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        count, 3,
        "the old key of the moved row and the deleted row are gone"
    );
    ferry.kill9();
}

const LIVE_MAPPING: &str = r#"
[[tables]]
source = "public.legacy_payments"
target = "public.payments"
[tables.columns]
id = "id"
amount = { from = "amount" }
note = { from = "note" }
"#;

/// The target's schema is live: refusals caused by the target's DDL
/// (a numeric too narrow, a NOT NULL) name the column as it is, and once
/// the column is fixed with ALTER the next changes land and a replay
/// drains the queue, without restarting ferry. (A mapped table: its plan
/// is compiled against the target. An unmapped table's target columns
/// follow the source's types on their own: the sink widens them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_ddl_takes_effect_without_a_restart() {
    let pair = Pair::start("live_ddl").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE legacy_payments (id bigint PRIMARY KEY, amount numeric, note text);
         INSERT INTO legacy_payments VALUES (1, 10.50, 'a');",
    )
    .await
    .unwrap();
    let dst = pair.dst().await;
    dst.batch_execute(
        "CREATE TABLE payments (id bigint PRIMARY KEY, amount numeric(6,2) NOT NULL, note text NOT NULL);",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.legacy_payments"])
        .mappings("mappings.toml")
        .build();
    let dir = config.parent().unwrap().to_path_buf();
    std::fs::write(dir.join("mappings.toml"), LIVE_MAPPING).unwrap();
    let mut ferry = Ferry::spawn(&config);
    let count = |sql: &'static str| {
        let dst = &dst;
        async move {
            dst.query_one(sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(-1)
        }
    };
    wait_for("the snapshot", &ferry, Duration::from_secs(60), || async {
        count("SELECT count(*) FROM payments").await == 1
    })
    .await;

    // Refused by the target as it is: too large for numeric(6,2), no note.
    src.batch_execute("INSERT INTO legacy_payments VALUES (2, 123456.78, 'big'), (3, 1.00, NULL);")
        .await
        .unwrap();
    wait_for(
        "two parked records",
        &ferry,
        Duration::from_secs(60),
        || async { count("SELECT count(*) FROM ferry_dlq").await == 2 },
    )
    .await;
    let reasons: Vec<(String, String)> = dst
        .query(
            "SELECT coalesce(error_code, ''), error_message FROM ferry_dlq ORDER BY row_key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        reasons[0].0 == "too_large" && reasons[0].1.contains("numeric(6,2)"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].0 == "null_in_not_null" && reasons[1].1.contains("is null"),
        "{reasons:?}"
    );

    // Fix the target while ferry runs.
    dst.batch_execute(
        "ALTER TABLE payments ALTER amount TYPE numeric(12,2), ALTER note DROP NOT NULL;",
    )
    .await
    .unwrap();
    // The refusal-triggered re-read happens at most every 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    src.batch_execute("INSERT INTO legacy_payments VALUES (4, 234567.89, NULL);")
        .await
        .unwrap();
    wait_for(
        "the new row, landed under the widened columns",
        &ferry,
        Duration::from_secs(60),
        || async {
            count("SELECT count(*) FROM payments WHERE id = 4 AND amount = 234567.89 AND note IS NULL")
                .await
                == 1
        },
    )
    .await;
    assert_eq!(count("SELECT count(*) FROM ferry_dlq").await, 2);
    // The parked records apply now, with the pipeline still running.
    let cfg = config.to_str().unwrap();
    let (code, out) = crate::support::ferry_cmd(&["dlq", "replay", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("applied 2, superseded 0, failed again 0"),
        "{out}"
    );
    assert_eq!(count("SELECT count(*) FROM payments").await, 4);
    assert!(
        ferry.exited().is_none(),
        "ferry stopped: {}",
        ferry.log_text()
    );
}
