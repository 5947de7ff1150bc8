//! Smoke test: snapshot then streaming, with the real binary.

use std::time::Duration;

use crate::support::{Ferry, Pair};

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
    let config = pair.config(&["public.items"], "", "");
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
