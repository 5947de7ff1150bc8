//! Smoke test: snapshot then streaming, with the real binary.

use std::time::Duration;

use crate::support::{http_get, metrics_addr, ConfigBuilder, Ferry, Pair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream() {
    let pair = Pair::start("basic").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(12,2));
         INSERT INTO items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.items"]).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.items"], Duration::from_secs(60))
        .await;
    src.batch_execute(
        "UPDATE items SET price = price * 2 WHERE id % 3 = 0;
         DELETE FROM items WHERE id % 7 = 0;
         INSERT INTO items VALUES (5000, 'new', 1.00);",
    )
    .await
    .unwrap();
    pair.wait_equal(&["public.items"], Duration::from_secs(60))
        .await;
    assert!(
        ferry.exited().is_none(),
        "ferry exited: {}",
        ferry.log_text()
    );
}

/// A primary-key change that leaves a large (TOASTed) value untouched under
/// REPLICA IDENTITY DEFAULT: the stream carries neither the old value nor the
/// whole old row, so the target must move its own row to the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_keeps_untouched_toast() {
    let pair = Pair::start("rekey").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs SELECT g, 't' || g, repeat(md5(g::text), 400) FROM generate_series(1, 20) g;",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.docs"]).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.docs"], Duration::from_secs(60))
        .await;
    src.batch_execute(
        "UPDATE docs SET id = id + 100, title = 'moved' WHERE id <= 5;
         UPDATE docs SET title = 'again' WHERE id = 101;
         INSERT INTO docs VALUES (1, 'reused key', 'small');
         UPDATE docs SET title = 'just title' WHERE id = 10;",
    )
    .await
    .unwrap();
    pair.wait_equal(&["public.docs"], Duration::from_secs(60))
        .await;
    assert!(
        ferry.exited().is_none(),
        "ferry exited: {}",
        ferry.log_text()
    );
    // The stream really left the value out: the target moved its own row.
    assert!(
        ferry.log_text().contains("moved a row to a new key"),
        "{}",
        ferry.log_text()
    );
}

/// `/metrics` serves events by table and op, lag, batch latency and
/// snapshot progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint() {
    let pair = Pair::start("metrics").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE m (id int PRIMARY KEY, v text);
         INSERT INTO m SELECT g, 'v' FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.m"]).build();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&config, text).unwrap();
    let ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.m"], Duration::from_secs(60))
        .await;
    src.batch_execute("UPDATE m SET v = 'w' WHERE id <= 10; DELETE FROM m WHERE id = 50;")
        .await
        .unwrap();
    pair.wait_equal(&["public.m"], Duration::from_secs(60))
        .await;
    let addr = metrics_addr(&ferry).await;
    let body = http_get(&addr, "/metrics");
    for needle in [
        "ferry_events_total{op=\"read\",stage=\"sink\",table=\"public.m\"} 50",
        "ferry_events_total{op=\"update\",stage=\"sink\",table=\"public.m\"} 10",
        "ferry_events_total{op=\"delete\",stage=\"sink\",table=\"public.m\"} 1",
        "ferry_replication_lag_seconds{pipeline=\"test\"}",
        "ferry_replication_lag_bytes",
        "ferry_sink_batch_duration_seconds_bucket",
        "ferry_snapshot_rows_total{table=\"public.m\"} 50",
    ] {
        assert!(body.contains(needle), "missing {needle} in:\n{body}");
    }
}

/// The README's quickstart: `ferry demo` ends with an exact mirror.
#[test]
fn demo_ends_with_an_exact_mirror() {
    let (code, out) = crate::support::ferry_cmd(&[
        "demo",
        "--seconds",
        "3",
        "--rate",
        "100",
        "--accounts",
        "2000",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("the target is an exact mirror of the source."),
        "{out}"
    );
}
