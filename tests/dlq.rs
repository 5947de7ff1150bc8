//! The dead-letter queue: records the target refuses (a CHECK on an amount,
//! NOT NULL, a foreign key, a value too large for an index) are parked with their reason while good traffic
//! lands; a later change of a parked row lands and supersedes the parked
//! one; after the target is fixed, `ferry dlq replay` drains the queue and
//! the target equals the source. A target that is away is retried, never
//! dead-lettered. Runs on both buses (FERRY_TEST_BUS).

use std::time::{Duration, Instant};

use crate::support::{ferry_cmd, wait_for, ConfigBuilder, Ferry, Pair};

const TABLE: &str = "public.payments";

async fn dlq_rows(pair: &Pair) -> Vec<(String, Option<String>, bool)> {
    pair.dst()
        .await
        .query(
            "SELECT error_class, error_code, superseded_at IS NOT NULL FROM public.ferry_dlq ORDER BY id",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_parked_then_replayed() {
    let pair = Pair::start("dlq").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE payments (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, note text, parent_id bigint);
         INSERT INTO payments SELECT g, g * 1.5, 'seed', 1 FROM generate_series(1, 200) g;",
    )
    .await
    .unwrap();
    // The target is stricter than the source: a money rule, a NOT NULL
    // note, and a foreign key to a table only the target has.
    pair.dst()
        .await
        .batch_execute(
            "CREATE TABLE parents (id bigint PRIMARY KEY);
             INSERT INTO parents VALUES (1);
             CREATE TABLE payments (id bigint PRIMARY KEY,
                 amount numeric(12,2) NOT NULL CONSTRAINT amount_not_negative CHECK (amount >= 0),
                 note text NOT NULL,
                 parent_id bigint REFERENCES parents (id));
             CREATE INDEX payments_note ON payments (note);",
        )
        .await
        .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&[TABLE]).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&[TABLE], Duration::from_secs(60)).await;

    // Poison, with good rows around it in the same transactions.
    src.batch_execute(
        "BEGIN;
         INSERT INTO payments VALUES (1001, 10.00, 'good', 1), (1002, -5.00, 'negative', 1), (1003, 11.00, 'good', 1);
         COMMIT;
         BEGIN;
         INSERT INTO payments VALUES (1004, 12.00, NULL, 1), (1005, 13.00, 'good', 1);
         UPDATE payments SET amount = amount + 1 WHERE id <= 100;
         COMMIT;
         INSERT INTO payments VALUES (1006, 14.00, 'orphan', 999), (1007, 15.00, 'good', 1);
         INSERT INTO payments SELECT 1008, 16.00, string_agg(md5(g::text), ''), 1 FROM generate_series(1, 400) g;",
    )
    .await
    .unwrap();
    let dst = pair.dst().await;
    wait_for(
        "three parked records and the good rows",
        &ferry,
        Duration::from_secs(60),
        || async {
            let good: i64 = dst
                .query_one(
                    "SELECT count(*) FROM payments WHERE id IN (1001, 1003, 1005, 1007)",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0);
            good == 4 && dlq_rows(&pair).await.len() == 4
        },
    )
    .await;
    assert!(
        ferry.exited().is_none(),
        "ferry stopped: {}",
        ferry.log_text()
    );
    let rows = dlq_rows(&pair).await;
    let codes: Vec<Option<String>> = rows.iter().map(|r| r.1.clone()).collect();
    assert_eq!(
        codes,
        vec![
            Some("23514".into()),
            Some("23502".into()),
            Some("23503".into()),
            // A value too large for the target's index: it will never fit.
            Some("54000".into()),
        ],
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| r.0 == "permanent" && !r.2), "{rows:?}");
    // The updates of the same transactions landed.
    let updated: i64 = dst
        .query_one(
            "SELECT count(*) FROM payments WHERE id <= 100 AND amount = id * 1.5 + 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(updated, 100);

    if let Some(broker) = &pair.kafka {
        // On the Kafka bus the parked records are mirrored to the
        // dead-letter topic, with Kafka Connect's error headers.
        let topic = format!("{}_test._dlq", pair.db);
        let headers = read_dlq_topic(&broker.bootstrap(), &topic, 4).await;
        let data_topic = format!("{}_test.public.payments", pair.db);
        assert!(
            headers
                .iter()
                .all(|h| h["__connect.errors.topic"] == data_topic
                    && h["__connect.errors.offset"].parse::<i64>().is_ok()
                    && h["__connect.errors.partition"] == "0"),
            "{headers:?}"
        );
        let codes: Vec<String> = headers
            .iter()
            .map(|h| h["ferry.errors.code"].clone())
            .collect();
        assert_eq!(
            codes,
            vec!["23514", "23502", "23503", "54000"],
            "{headers:?}"
        );
        assert!(
            headers
                .iter()
                .all(|h| h["__connect.errors.class.name"] == "permanent"
                    && h["ferry.table"] == "public.payments"
                    && !h["__connect.errors.exception.message"].is_empty()),
            "{headers:?}"
        );
    }

    // A later change of a parked row lands and supersedes the parked one.
    src.batch_execute("UPDATE payments SET note = 'fixed at the source' WHERE id = 1004")
        .await
        .unwrap();
    wait_for(
        "the later change of row 1004",
        &ferry,
        Duration::from_secs(30),
        || async { dlq_rows(&pair).await.iter().filter(|r| r.2).count() == 1 },
    )
    .await;

    let cfg = config.to_str().unwrap();
    // Grouped by table, class and rule (the SQLSTATE here), with a record
    // number to show.
    let ids: Vec<i64> = dst
        .query("SELECT id FROM public.ferry_dlq ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (code, out) = ferry_cmd(&["dlq", "list", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    for (rule, superseded, id) in [
        ("23514", 0, ids[0]),
        ("23502", 1, ids[1]),
        ("23503", 0, ids[2]),
        ("54000", 0, ids[3]),
    ] {
        assert!(
            out.contains(&format!(
                "| public.payments | permanent | {rule} | 1 | {superseded} |"
            )) && out.contains(&format!(" | {id} |\n")),
            "{rule}: {out}"
        );
    }
    assert!(out.contains("4 record(s)"), "{out}");
    // Filters: the rule, a bare table name, several ids, time; JSON.
    let (code, out) = ferry_cmd(&["dlq", "list", "--config", cfg, "--rule", "23503", "--json"]);
    assert_eq!(code, 0, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("dlq list --json");
    assert_eq!(doc["records"], 1, "{out}");
    assert_eq!(doc["groups"][0]["table"], "public.payments", "{out}");
    assert_eq!(doc["groups"][0]["rule"], "23503", "{out}");
    assert_eq!(doc["groups"][0]["examples"][0], ids[2], "{out}");
    let (_, out) = ferry_cmd(&["dlq", "list", "--config", cfg, "--table", "payments"]);
    assert!(out.contains("4 record(s)"), "a bare table name: {out}");
    let (id0, id3) = (ids[0].to_string(), ids[3].to_string());
    let (_, out) = ferry_cmd(&["dlq", "list", "--config", cfg, "--id", &id0, "--id", &id3]);
    assert!(out.contains("2 record(s)"), "two ids: {out}");
    let (_, out) = ferry_cmd(&[
        "dlq",
        "list",
        "--config",
        cfg,
        "--before",
        "2000-01-01T00:00:00Z",
    ]);
    assert!(out.contains("0 record(s)"), "--before: {out}");
    // A name that holds nothing says what it looked for and what exists.
    let (code, out) = ferry_cmd(&[
        "dlq",
        "list",
        "--config",
        cfg,
        "--table",
        "billing.payments",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "no records for billing.payments; the queue holds records for: public.payments (4)"
        ),
        "{out}"
    );
    // A selection shown in full.
    let (code, out) = ferry_cmd(&[
        "dlq", "show", "--config", cfg, "--table", "payments", "--rule", "23514", "--limit", "5",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("amount_not_negative") && !out.contains("orphan"),
        "{out}"
    );
    // Before the fix, a dry run says, record by record, that the three live
    // records fail again, and changes nothing.
    let (code, out) = ferry_cmd(&["dlq", "replay", "--config", cfg, "--dry-run"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("would apply 0, superseded 1, failed again 3"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "record {} public.payments 1002: would fail again:",
            ids[0]
        )) && out.contains(&format!(
            "record {} public.payments 1004: superseded",
            ids[1]
        )),
        "{out}"
    );
    let (code, out) = ferry_cmd(&[
        "dlq",
        "replay",
        "--config",
        cfg,
        "--dry-run",
        "--rule",
        "23503",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("would apply 0, superseded 0, failed again 1"),
        "{out}"
    );
    assert_eq!(dlq_rows(&pair).await.len(), 4);
    let id = ids[0];
    let (code, out) = ferry_cmd(&["dlq", "show", &id.to_string(), "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("amount_not_negative") && out.contains("-5.00"),
        "{out}"
    );

    // Fix the target, replay: the queue drains and the target equals the
    // source.
    dst.batch_execute(
        "ALTER TABLE payments DROP CONSTRAINT amount_not_negative;
         INSERT INTO parents VALUES (999);
         DROP INDEX payments_note;
         CREATE INDEX payments_note ON payments (md5(note));",
    )
    .await
    .unwrap();
    let (code, out) = ferry_cmd(&["dlq", "replay", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("applied 3, superseded 1, failed again 0"),
        "{out}"
    );
    assert!(dlq_rows(&pair).await.is_empty());
    pair.wait_equal(&[TABLE], Duration::from_secs(30)).await;
    // Purge needs a filter and a confirmation.
    let (code, out) = ferry_cmd(&["dlq", "purge", "--config", cfg]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = ferry_cmd(&["dlq", "purge", "--config", cfg, "--table", TABLE]);
    assert_eq!(code, 2, "{out}");
    assert!(
        ferry.exited().is_none(),
        "ferry stopped: {}",
        ferry.log_text()
    );
}

/// The target is away for 20 s while changes flow: ferry retries, parks
/// nothing, loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_outage_is_retried_not_dead_lettered() {
    let mut pair = Pair::start("dlqoutage").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE payments (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, note text, parent_id bigint);
         INSERT INTO payments SELECT g, g, 'seed', 1 FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&[TABLE]).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&[TABLE], Duration::from_secs(60)).await;
    pair.target.stop().await.expect("stop the target");
    for i in 0..20 {
        src.execute(
            "INSERT INTO payments SELECT g, g, 'during', 1 FROM generate_series($1::bigint, $1::bigint + 49) g",
            &[&(1000i64 + i * 50)],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    pair.target.start_again().await.expect("start the target");
    pair.wait_equal(&[TABLE], Duration::from_secs(90)).await;
    assert!(
        dlq_rows(&pair).await.is_empty(),
        "an outage was dead-lettered"
    );
    assert!(
        ferry.exited().is_none(),
        "ferry stopped: {}",
        ferry.log_text()
    );
    assert!(
        ferry.log_text().contains("retrying"),
        "no retry logged:\n{}",
        ferry.log_text()
    );
}

/// A replay killed with -9 part way, then run again: every record is
/// applied once (each in its own transaction with its removal from the
/// queue), the queue drains, the target equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_killed_and_resumed_drains_the_queue() {
    let pair = Pair::start("dlqkill").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE payments (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, note text, parent_id bigint);",
    )
    .await
    .unwrap();
    pair.dst()
        .await
        .batch_execute(
            "CREATE TABLE payments (id bigint PRIMARY KEY,
                 amount numeric(12,2) NOT NULL CONSTRAINT amount_not_negative CHECK (amount >= 0),
                 note text, parent_id bigint);",
        )
        .await
        .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&[TABLE]).build();
    let mut ferry = Ferry::spawn(&config);
    src.batch_execute(
        "INSERT INTO payments SELECT g, CASE WHEN g % 2 = 0 THEN -g ELSE g END, 'x', 1 FROM generate_series(1, 80) g;",
    )
    .await
    .unwrap();
    let dst = pair.dst().await;
    wait_for(
        "40 parked records",
        &ferry,
        Duration::from_secs(60),
        || async { dlq_rows(&pair).await.len() == 40 },
    )
    .await;
    dst.batch_execute("ALTER TABLE payments DROP CONSTRAINT amount_not_negative")
        .await
        .unwrap();
    let cfg = config.to_str().unwrap();
    // 20 records a second: the 40 take about 2 s, long enough to see the
    // replay under way and kill it there.
    let mut replay = crate::support::ferry_command(config.parent().unwrap())
        .args(["dlq", "replay", "--config", cfg, "--rate", "20"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ferry dlq replay");
    // Under way: some records left the queue, not all of them.
    wait_for(
        "the replay to be under way",
        &ferry,
        Duration::from_secs(30),
        || async {
            let n = dlq_rows(&pair).await.len();
            0 < n && n < 40
        },
    )
    .await;
    let still_running = replay.try_wait().expect("try_wait").is_none();
    let _ = replay.kill();
    let status = replay.wait().expect("wait for the killed replay");
    assert!(
        still_running,
        "the replay had finished ({status}) before the kill"
    );
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the replay ended by {status}, not the kill"
        );
    }
    let left = dlq_rows(&pair).await.len();
    assert!(
        0 < left && left < 40,
        "the kill did not land mid-replay: {left} left"
    );
    // Each record left the queue in the transaction that applied it: the
    // target holds exactly the ones that left (the odd ids were never
    // parked).
    let replayed: i64 = dst
        .query_one("SELECT count(*) FROM payments WHERE id % 2 = 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        replayed,
        40 - left as i64,
        "{left} records left in the queue, {replayed} in the target"
    );
    let (code, out) = ferry_cmd(&["dlq", "replay", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("applied {left}, superseded 0, failed again 0")),
        "{out}"
    );
    assert!(dlq_rows(&pair).await.is_empty());
    pair.wait_equal(&[TABLE], Duration::from_secs(30)).await;
    assert!(
        ferry.exited().is_none(),
        "ferry stopped: {}",
        ferry.log_text()
    );
}

/// The headers of the first `n` messages of a dead-letter topic.
async fn read_dlq_topic(
    bootstrap: &str,
    topic: &str,
    n: usize,
) -> Vec<std::collections::HashMap<String, String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "dlq-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        c.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < n {
            assert!(
                Instant::now() < deadline,
                "{topic}: only {} of {n} messages",
                out.len()
            );
            if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
                let mut h = std::collections::HashMap::new();
                if let Some(hs) = m.headers() {
                    for x in hs.iter() {
                        h.insert(
                            x.key.to_string(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(h);
            }
        }
        out
    })
    .await
    .expect("reader")
}
