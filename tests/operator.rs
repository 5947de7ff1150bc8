//! Operator mistakes and orchestration, met plainly: a second Ferry on a
//! slot that is in use, and SIGTERM while the pipeline retries.

use std::time::Duration;

use ferry_testkit::ClusterOptions;

use crate::support::{wait_for, ConfigBuilder, Ferry, Pair};

/// A second `ferry run` of the same pipeline finds the slot active for the
/// first one: it stops with who holds the slot (after the server's own
/// `wal_sender_timeout`, the time a crashed predecessor's session may
/// linger), instead of retrying for ever; the first keeps streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_ferry_on_a_slot_in_use_stops_clearly() {
    let source = ClusterOptions {
        extra_settings: vec![("wal_sender_timeout".into(), "3s".into())],
        ..ClusterOptions::default()
    };
    let pair = Pair::start_with("slot_busy", source, ClusterOptions::default()).await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.items"]).build();
    let mut first = Ferry::spawn(&config);
    pair.wait_equal(&["public.items"], Duration::from_secs(60))
        .await;
    let mut second = Ferry::spawn(&config);
    second.expect_exit(3, Duration::from_secs(90), "the second ferry kept retrying");
    let log = second.log_text();
    assert!(log.contains("is in use by another session"), "{log}");
    assert!(log.contains("source.slot"), "{log}");
    src.batch_execute("INSERT INTO items VALUES (1000, 'after')")
        .await
        .unwrap();
    pair.wait_equal(&["public.items"], Duration::from_secs(60))
        .await;
    assert!(first.exited().is_none(), "{}", first.log_text());
}

/// SIGTERM while the target is down and the sink retries: a clean stop,
/// exit 0, promptly; the next run catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_retrying_exits_0() {
    let mut pair = Pair::start("sigterm").await;
    let src = pair.src().await;
    src.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text);")
        .await
        .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.items"]).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.items"], Duration::from_secs(60))
        .await;
    pair.target.stop().await.unwrap();
    src.batch_execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 50) g")
        .await
        .unwrap();
    wait_for(
        "the sink retrying",
        &ferry,
        Duration::from_secs(60),
        || async { ferry.log_text().contains("retrying") },
    )
    .await;
    ferry.terminate();
    ferry.expect_exit(0, Duration::from_secs(20), "no exit 20 s after SIGTERM");
    pair.target.start_again().await.unwrap();
    let _again = Ferry::spawn(&config);
    pair.wait_equal(&["public.items"], Duration::from_secs(60))
        .await;
}

/// A target table dropped by hand while Ferry was stopped: the next start
/// refuses (it would re-create it empty and stream on, short of every row
/// copied before) and names `--recopy`, which copies it again while the
/// stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_target_table_is_refused_then_recopied() {
    let pair = Pair::start("lost_table").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 129) g;",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.items"]).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.items"], Duration::from_secs(60))
        .await;
    ferry.kill9();
    pair.dst()
        .await
        .batch_execute("DROP TABLE public.items")
        .await
        .unwrap();
    src.batch_execute("INSERT INTO items VALUES (1000, 'while stopped')")
        .await
        .unwrap();
    let mut refused = Ferry::spawn(&config);
    refused.expect_exit(3, Duration::from_secs(60), "ferry streamed on after a DROP");
    let log = refused.log_text();
    assert!(log.contains("does not exist"), "{log}");
    assert!(log.contains("copied 129 rows"), "{log}");
    assert!(log.contains("--recopy public.items"), "{log}");
    let _recopied = Ferry::spawn_with(&config, &["--recopy", "public.items"]);
    pair.wait_equal(&["public.items"], Duration::from_secs(60))
        .await;
}

/// `source.tables` names as SQL reads quoted identifiers (a space and a dot
/// inside quotes), and a name that does not resolve says which part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_table_names_and_which_part_is_missing() {
    let pair = Pair::start("quoted").await;
    let src = pair.src().await;
    src.batch_execute(
        r#"CREATE SCHEMA "Sales Ops";
           CREATE TABLE "Sales Ops"."Order Items" (id int PRIMARY KEY, "v.x" text);
           INSERT INTO "Sales Ops"."Order Items" SELECT g, 'v' || g FROM generate_series(1, 50) g;"#,
    )
    .await
    .unwrap();
    let name = r#""Sales Ops"."Order Items""#;
    let config = ConfigBuilder::new(&pair).tables(&[name]).build();
    let (code, out) = crate::support::ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["Sales Ops.Order Items"], Duration::from_secs(60))
        .await;
    src.batch_execute(r#"UPDATE "Sales Ops"."Order Items" SET "v.x" = 'changed' WHERE id < 10"#)
        .await
        .unwrap();
    pair.wait_equal(&["Sales Ops.Order Items"], Duration::from_secs(60))
        .await;
    assert!(ferry.exited().is_none(), "{}", ferry.log_text());
    ferry.kill9();
    for (wrong, says) in [
        (
            r#""Sales Op"."Order Items""#,
            r#"schema "Sales Op" does not exist"#,
        ),
        (
            r#""Sales Ops"."order items""#,
            r#"no table "order items" in schema "Sales Ops" (there is "Order Items""#,
        ),
    ] {
        let config = ConfigBuilder::new(&pair).tables(&[wrong]).build();
        let (code, out) =
            crate::support::ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(says), "{out}");
    }
}

/// `sink.create_tables` with columns the stream cannot recreate (a domain,
/// a composite type, a generated column): `ferry check` says so per column
/// and `ferry run` refuses before copying anything; once the operator
/// created the table, both go ahead and the target computes its own
/// generated column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_the_sink_cannot_create_are_refused_up_front() {
    let pair = Pair::start("create_refused").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0);
         CREATE TYPE address AS (street text, city text);
         CREATE TABLE shops (id int PRIMARY KEY, stock positive, addr address,
                             n int, twice int GENERATED ALWAYS AS (n * 2) STORED);
         INSERT INTO shops (id, stock, addr, n) VALUES (1, 5, ROW('Main St', 'Oslo'), 4);",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.shops"]).build();
    let (code, out) = crate::support::ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for says in [
        r#"column "stock" has the domain type positive"#,
        r#"column "addr" has the composite type address"#,
        r#"column "twice" is generated"#,
    ] {
        assert!(out.contains(says), "{says}: {out}");
    }
    let mut refused = Ferry::spawn(&config);
    refused.expect_exit(2, Duration::from_secs(60), "ferry ran");
    let slots: i64 = src
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        slots, 0,
        "a slot was created for a pipeline that cannot run"
    );
    // The operator creates the types and the table (with its generated
    // column): check and run go ahead.
    pair.dst()
        .await
        .batch_execute(
            "CREATE DOMAIN positive AS int CHECK (VALUE > 0);
             CREATE TYPE address AS (street text, city text);
             CREATE TABLE shops (id int PRIMARY KEY, stock positive, addr address,
                                 n int, twice int GENERATED ALWAYS AS (n * 2) STORED);",
        )
        .await
        .unwrap();
    let (code, out) = crate::support::ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let _ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.shops"], Duration::from_secs(60))
        .await;
}

/// `ferry_replication_lag_bytes` keeps rising while the target is down
/// (the bus is full and the stream stops reading, keepalives included: the
/// figure used to freeze there), and falls back once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_bytes_keep_rising_while_the_target_is_down() {
    let mut pair = Pair::start("lag_bytes").await;
    let src = pair.src().await;
    src.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text);")
        .await
        .unwrap();
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .extra_pipeline("bus_capacity = 4")
        .build();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&config, text).unwrap();
    let ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.items"], Duration::from_secs(60))
        .await;
    let addr = crate::support::metrics_addr(&ferry).await;
    let lag = || {
        crate::support::http_get(&addr, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("ferry_replication_lag_bytes "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .expect("ferry_replication_lag_bytes in /metrics")
    };
    pair.target.stop().await.unwrap();
    let mut seen = Vec::new();
    for round in 0..3 {
        src.batch_execute(&format!(
            "INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series({0} * 2000 + 1, {0} * 2000 + 2000) g",
            round
        ))
        .await
        .unwrap();
        let floor = seen.last().copied().unwrap_or(0);
        wait_for(
            "the lag to grow past the last reading",
            &ferry,
            Duration::from_secs(30),
            || {
                let now = lag();
                std::future::ready(now > floor)
            },
        )
        .await;
        seen.push(lag());
    }
    pair.target.start_again().await.unwrap();
    pair.wait_equal(&["public.items"], Duration::from_secs(90))
        .await;
    let high = *seen.last().unwrap();
    wait_for(
        "the lag to fall back",
        &ferry,
        Duration::from_secs(30),
        || std::future::ready(lag() < high),
    )
    .await;
}
