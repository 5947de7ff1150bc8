//! PostgreSQL → Convex through Ferry's real Convex module, served by the
//! Convex test server (tests/convex-server): `kill -9` of ferry at random
//! moments while a server answers 429/503 and drops connections (some after
//! committing), then every document must equal its source row, and no row
//! may have been written twice at one version.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value as Json;

use crate::support::convex::{base64, int64, with_sink, ConvexServer};
use crate::support::{wait_for, ConfigBuilder, Ferry, Pair};

/// The source's rows of `items` as `(key text, (id, name, price, big, data))`.
async fn source_rows(
    src: &tokio_postgres::Client,
) -> Vec<(
    String,
    (
        i64,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<Vec<u8>>,
    ),
)> {
    src.query(
        "SELECT id, name, price::text, big, data FROM items ORDER BY id",
        &[],
    )
    .await
    .expect("read source")
    .iter()
    .map(|r| {
        let id: i64 = r.get(0);
        (
            format!("[\"{id}\"]"),
            (id, r.get(1), r.get(2), r.get(3), r.get(4)),
        )
    })
    .collect()
}

fn text(v: &Json) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Compares the target with the source; `Err` says the first difference.
async fn compare(src: &tokio_postgres::Client, server: &ConvexServer) -> Result<usize, String> {
    let want = source_rows(src).await;
    let (mut got, documents) = server.dump("items").await;
    got.sort_by_key(|(_, d)| int64(&d["id"]));
    if got.len() != want.len() || documents != want.len() {
        return Err(format!(
            "{} source rows, {} keyed documents, {documents} documents",
            want.len(),
            got.len()
        ));
    }
    for ((wk, (id, name, price, big, data)), (gk, doc)) in want.iter().zip(&got) {
        let same = wk == gk
            && int64(&doc["id"]) == *id
            && text(&doc["name"]) == *name
            && text(&doc["price"]) == *price
            // (A document not caught up yet may still have no `big`: a
            // difference, not a panic, while the target converges.)
            && (doc["big"].is_null() && big.is_none()
                || big.is_some_and(|b| !doc["big"].is_null() && int64(&doc["big"]) == b))
            && (doc["data"].is_null() && data.is_none()
                || data.as_ref().is_some_and(|d| {
                    doc["data"]["$bytes"].as_str().map(base64).as_ref() == Some(d)
                }));
        if !same {
            return Err(format!(
                "row {wk}: source {:?}, target {doc}",
                (id, name, price, big, data)
            ));
        }
    }
    Ok(want.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_overload_leave_an_exact_mirror() {
    let pair = Pair::start("convex_kill").await;
    let server = ConvexServer::start();
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(12,2), big bigint, data bytea);
         INSERT INTO items SELECT g, 'item ' || g, g * 1.25, 9223372036854775807 - g, decode(md5(g::text), 'hex')
           FROM generate_series(1, 2000) g;",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .batch_size(300)
        .build();
    with_sink(&config, &server.sink_toml("rows_per_call = 120"));

    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mut ferry = Ferry::spawn(&config);
    // ~12k changes in rounds of 100 statements-worth of rows, with a kill
    // or a burst of faults between rounds.
    let mut next_id = 100_000i64;
    for round in 0..12 {
        let lo = rng.random_range(1..1900i64);
        src.batch_execute(&format!(
            "UPDATE items SET name = name || '+', price = price + 0.01 WHERE id BETWEEN {lo} AND {lo} + 400;
             DELETE FROM items WHERE id % 97 = {r} AND id BETWEEN {lo} AND {lo} + 300;
             INSERT INTO items SELECT g, NULL, NULL, NULL, NULL FROM generate_series({next_id}, {next_id} + 299) g;
             UPDATE items SET big = -g.g FROM generate_series({next_id}, {next_id} + 149) g(g) WHERE items.id = g.g;",
            r = round % 97
        ))
        .await
        .unwrap();
        next_id += 300;
        // One burst at a time: the next only once the last is used up.
        wait_for(
            "the last burst of faults to be used up",
            &ferry,
            Duration::from_secs(90),
            || async { server.audit().await["faultsLeft"].as_f64() == Some(0.0) },
        )
        .await;
        match round % 4 {
            0 => server.fault("429", 4).await,
            1 => server.fault("503", 3).await,
            2 => server.fault("drop-after-commit", 2).await,
            _ => server.fault("drop", 2).await,
        }
        if round % 3 == 2 {
            // Let some batches land first, at a random moment.
            let calls = server.audit().await["calls"].as_f64().unwrap_or(0.0);
            let more = rng.random_range(1..6) as f64;
            wait_for(
                "a few calls to land",
                &ferry,
                Duration::from_secs(60),
                || async { server.audit().await["calls"].as_f64().unwrap_or(0.0) >= calls + more },
            )
            .await;
            ferry.kill9();
            ferry = Ferry::spawn(&config);
        }
    }
    // The test's own queries below go through the same routes: the last
    // burst is ferry's to use up first.
    wait_for(
        "the last burst of faults to be used up",
        &ferry,
        Duration::from_secs(90),
        || async { server.audit().await["faultsLeft"].as_f64() == Some(0.0) },
    )
    .await;
    let mut last = String::new();
    // The Kafka pass replays every change from the topic after its kills
    // (about twice the calls of the embedded pass, which copies the table
    // again), each restart waits for the killed member's session to end
    // before its partition is assigned, and the test server's index
    // lookups scan the table (convex-test): it converges later, never
    // differently.
    let settle = if pair.kafka.is_some() { 360 } else { 120 };
    let deadline = std::time::Instant::now() + Duration::from_secs(settle);
    loop {
        match compare(&src, &server).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                last = e;
                assert!(
                    ferry.exited().is_none(),
                    "ferry exited: {}",
                    ferry.log_text()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("the Convex target never matched the source: {e} (before: {last})"),
        }
    }
    let audit = server.audit().await;
    assert_eq!(
        audit["twice"],
        serde_json::json!([]),
        "rows written twice at one version: {audit}"
    );
    assert!(
        ferry.exited().is_none(),
        "ferry exited: {}",
        ferry.log_text()
    );
}

/// Values at Convex's edges: int64 2^63-1, bytes, NaN and ±Infinity,
/// nested arrays and jsonb objects land exactly; a jsonb nested deeper than
/// Convex allows and a document over 1 MiB are dead-lettered with their
/// reason (in the deployment's `ferry_dlq`), while their neighbours land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_edges_land_exactly_or_are_dead_lettered() {
    let pair = Pair::start("convex_values").await;
    let server = ConvexServer::start();
    let src = pair.src().await;
    let deep = format!("{}1{}", "[".repeat(20), "]".repeat(20));
    src.batch_execute(&format!(
        "CREATE TABLE edges (id bigint PRIMARY KEY, big bigint, f float8, b bytea, arr int[][], doc jsonb, body text);
         INSERT INTO edges VALUES
           (1, 9223372036854775807, 'NaN', '\\x00ff10', '{{{{1,2}},{{3,4}}}}', '{{\"a\": {{\"b\": [1, 2.5, null]}}}}', 'ok'),
           (2, -9223372036854775808, 'Infinity', '', NULL, NULL, NULL),
           (3, 0, '-Infinity', NULL, NULL, '{deep}', NULL),
           (4, 1, 1.5, NULL, NULL, NULL, repeat('x', 1100000));"
    ))
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.edges"]).build();
    with_sink(&config, &server.sink_toml(""));
    let ferry = Ferry::spawn(&config);
    wait_for(
        "two rows landed and two parked",
        &ferry,
        Duration::from_secs(90),
        || async {
            let landed = server.dump("edges").await.0.len();
            let parked = server
                .query("testing:table", serde_json::json!({"table": "ferry_dlq"}))
                .await;
            landed == 2 && parked.as_array().map_or(0, Vec::len) == 2
        },
    )
    .await;
    let (mut rows, documents) = server.dump("edges").await;
    assert_eq!(documents, 2);
    rows.sort_by_key(|(_, d)| int64(&d["id"]));
    let one = &rows[0].1;
    assert_eq!(int64(&one["big"]), i64::MAX);
    assert_eq!(one["f"], serde_json::json!({"$float": "AAAAAAAA+H8="}));
    assert_eq!(one["b"], serde_json::json!({"$bytes": "AP8Q"}));
    // int4[][]: nested arrays of Float64, like an int4 column.
    assert_eq!(one["arr"][1][0].as_f64(), Some(3.0), "{one}");
    let b = &one["doc"]["a"]["b"];
    assert_eq!(
        (b[0].as_f64(), b[1].as_f64(), b[2].is_null()),
        (Some(1.0), Some(2.5), true),
        "{one}"
    );
    let two = &rows[1].1;
    assert_eq!(int64(&two["big"]), i64::MIN);
    assert_eq!(two["f"], serde_json::json!({"$float": "AAAAAAAA8H8="}));
    assert_eq!(two["b"], serde_json::json!({"$bytes": ""}));
    let parked = server
        .query("testing:table", serde_json::json!({"table": "ferry_dlq"}))
        .await;
    let mut reasons: Vec<(String, String)> = parked
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["errorCode"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("[\"3\"]".to_string(), "convex-too-deep".to_string()),
            (
                "[\"4\"]".to_string(),
                "convex-document-too-large".to_string()
            ),
        ]
    );
    // `ferry dlq list` reads them from the deployment.
    let (code, out) =
        crate::support::ferry_cmd(&["dlq", "list", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // By table, class and rule.
    assert!(
        out.contains("| edges | permanent | convex-too-deep | 1 | 0 |")
            && out.contains("| edges | permanent | convex-document-too-large | 1 | 0 |")
            && out.contains("2 record(s)"),
        "{out}"
    );
}

/// `ferry dlq replay` on a Convex target, the operator's loop: amounts
/// refused under `numeric = "float64"` (0.10 has no exact float64) are
/// parked; a dry run says they would fail again; with the configuration
/// fixed (`numeric = "string"`) a dry run says they would apply, and the
/// replay applies them exactly without touching the pipeline's checkpoint
/// and empties the queue; a record whose row changed since is superseded,
/// not applied over the newer row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_after_a_fix() {
    let pair = Pair::start("convex_replay").await;
    let server = ConvexServer::start();
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE money (id bigint PRIMARY KEY, amount numeric(12,2));
         INSERT INTO money VALUES (1, 1.50), (2, 0.10), (3, 0.20);",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.money"]).build();
    with_sink(&config, &server.sink_toml("numeric = \"float64\""));
    let mut ferry = Ferry::spawn(&config);
    let parked = || async {
        server
            .query("testing:table", serde_json::json!({"table": "ferry_dlq"}))
            .await
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_for(
        "one row landed and two parked",
        &ferry,
        Duration::from_secs(90),
        || async { server.dump("money").await.0.len() == 1 && parked().await == 2 },
    )
    .await;
    let checkpoint = || async {
        server
            .query(
                "testing:table",
                serde_json::json!({"table": "ferry_checkpoints"}),
            )
            .await
    };
    // Row 3 changes (and is refused again: 0.30 has no exact float64
    // either); its first record is superseded by the second.
    src.batch_execute("UPDATE money SET amount = 0.30 WHERE id = 3")
        .await
        .unwrap();
    wait_for(
        "the update parked too",
        &ferry,
        Duration::from_secs(60),
        || async { parked().await == 3 },
    )
    .await;
    ferry.terminate();
    assert!(
        tokio::task::block_in_place(|| ferry.wait_exit(Duration::from_secs(30))).is_some(),
        "ferry did not stop on SIGTERM"
    );
    let before = checkpoint().await;
    let cfg = config.to_str().unwrap();

    let (code, out) = crate::support::ferry_cmd(&["dlq", "replay", "--config", cfg, "--dry-run"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("would fail again")
            && out.contains("no exact float64")
            && out.contains("superseded 1"),
        "{out}"
    );
    assert_eq!(parked().await, 3, "a dry run changes nothing");

    // The fix: numerics as exact strings.
    let fixed = config.with_file_name("fixed.toml");
    std::fs::copy(&config, &fixed).unwrap();
    with_sink(&fixed, &server.sink_toml("numeric = \"string\""));
    let fixed = fixed.to_str().unwrap();
    let (code, out) =
        crate::support::ferry_cmd(&["dlq", "replay", "--config", fixed, "--dry-run", "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        (
            report["report"]["applied"].as_u64(),
            report["report"]["superseded"].as_u64(),
            report["report"]["failed"].as_u64()
        ),
        (Some(2), Some(1), Some(0)),
        "{out}"
    );
    let (code, out) = crate::support::ferry_cmd(&["dlq", "replay", "--config", fixed]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("applied 2, superseded 1, failed again 0"),
        "{out}"
    );
    assert_eq!(parked().await, 0, "the queue is empty after the replay");
    let (mut rows, _) = server.dump("money").await;
    rows.sort_by_key(|(_, d)| int64(&d["id"]));
    let amounts: Vec<(i64, serde_json::Value)> = rows
        .iter()
        .map(|(_, d)| (int64(&d["id"]), d["amount"].clone()))
        .collect();
    assert_eq!(
        amounts,
        vec![
            (1, serde_json::json!(1.5)),
            (2, serde_json::json!("0.10")),
            (3, serde_json::json!("0.30")),
        ]
    );
    assert_eq!(
        checkpoint().await,
        before,
        "a replay never moves the checkpoint"
    );
}
