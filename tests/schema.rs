//! Shapes of tables and schema changes: partitioned tables, generated
//! columns, unique values changing hands within a batch, columns widened,
//! added and dropped while changes flow.

use std::time::Duration;

use crate::support::{ConfigBuilder, Ferry, Pair};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_table_streams_under_its_own_name() {
    let pair = Pair::start("parts").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE events (id bigint, day date NOT NULL, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
         CREATE TABLE events_a PARTITION OF events FOR VALUES FROM ('2020-01-01') TO ('2025-01-01');
         CREATE TABLE events_b PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2030-01-01');
         INSERT INTO events SELECT g, DATE '2020-01-01' + (g * 7), 'v' || g FROM generate_series(1, 300) g;",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.events"]).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.events"], WAIT).await;
    src.batch_execute(
        "INSERT INTO events VALUES (1000, '2026-05-05', 'late'), (1001, '2021-05-05', 'early');
         UPDATE events SET v = 'changed' WHERE id % 10 = 0;
         DELETE FROM events WHERE id % 13 = 0;",
    )
    .await
    .unwrap();
    pair.wait_equal(&["public.events"], WAIT).await;
    assert!(ferry.exited().is_none(), "{}", ferry.log_text());
    // A restart finds the publication as it left it.
    ferry.kill9();
    src.batch_execute("UPDATE events SET v = 'after restart' WHERE id = 1000")
        .await
        .unwrap();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.events"], WAIT).await;
    assert!(ferry.exited().is_none(), "{}", ferry.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_and_unique_values_changing_hands() {
    let pair = Pair::start("uniq").await;
    let src = pair.src().await;
    let dst = pair.dst().await;
    src.batch_execute(
        "CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE, n int,
                              twice int GENERATED ALWAYS AS (n * 2) STORED);
         INSERT INTO people (id, email, n) VALUES (1, 'x@a', 1), (2, 'z@a', 2), (3, 'q@a', 3);",
    )
    .await
    .unwrap();
    // The target keeps its own unique index (and computes `twice` itself).
    dst.batch_execute(
        "CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE, n int,
                              twice int GENERATED ALWAYS AS (n * 2) STORED);",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.people"]).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.people"], WAIT).await;
    // In one transaction (so one batch): row 2 is touched first, then 1
    // gives up x, then 2 takes it; then 3 and 1 swap through a free value.
    src.batch_execute(
        "BEGIN;
         UPDATE people SET n = 20 WHERE id = 2;
         UPDATE people SET email = 'y@a' WHERE id = 1;
         UPDATE people SET email = 'x@a' WHERE id = 2;
         UPDATE people SET email = 'tmp' WHERE id = 3;
         UPDATE people SET email = 'q@a' WHERE id = 1;
         UPDATE people SET email = 'y@a' WHERE id = 3;
         COMMIT;",
    )
    .await
    .unwrap();
    pair.wait_equal(&["public.people"], WAIT).await;
    let twice: i32 = dst
        .query_one("SELECT twice FROM people WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 40);
    assert!(ferry.exited().is_none(), "{}", ferry.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_widened_added_and_dropped_while_streaming() {
    let pair = Pair::start("ddl").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name varchar(5), price numeric(6,2), note text);
         INSERT INTO items VALUES (1, 'abc', 1.25, 'n1'), (2, 'de', 2.50, 'n2');",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.items"]).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.items"], WAIT).await;
    // Widened: values that the old target columns would truncate or round.
    src.batch_execute(
        "ALTER TABLE items ALTER COLUMN name TYPE varchar(50), ALTER COLUMN price TYPE numeric(12,4);
         INSERT INTO items VALUES (3, 'a much longer name', 12345.6789, 'n3');
         UPDATE items SET price = 1.0001 WHERE id = 1;",
    )
    .await
    .unwrap();
    pair.wait_equal(&["public.items"], WAIT).await;
    // Added and dropped, with changes before and after in one transaction.
    src.batch_execute(
        "BEGIN;
         UPDATE items SET note = 'before' WHERE id = 2;
         ALTER TABLE items ADD COLUMN tag text;
         UPDATE items SET tag = 't' WHERE id = 2;
         ALTER TABLE items DROP COLUMN note;
         UPDATE items SET name = 'after drop' WHERE id = 3;
         COMMIT;",
    )
    .await
    .unwrap();
    let dst = pair.dst().await;
    // The target keeps the dropped column (Ferry never drops data); compare
    // the source's columns.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let rows = dst
            .query(
                "SELECT id, name, price::text, tag FROM items ORDER BY id",
                &[],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r.get::<_, i32>(0),
                            r.get::<_, Option<String>>(1),
                            r.get::<_, Option<String>>(2),
                            r.get::<_, Option<String>>(3),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let want = vec![
            (1, Some("abc".to_string()), Some("1.0001".to_string()), None),
            (
                2,
                Some("de".to_string()),
                Some("2.5000".to_string()),
                Some("t".to_string()),
            ),
            (
                3,
                Some("after drop".to_string()),
                Some("12345.6789".to_string()),
                None,
            ),
        ];
        if rows == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "target {rows:?}\n{}",
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ferry.exited().is_none(), "{}", ferry.log_text());
}
