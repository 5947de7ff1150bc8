//! The status views against a running pipeline: `/ready` turns 200 only
//! once the snapshot is committed and the lag is under the bound,
//! `ferry status --once` prints every table with its state (and says
//! stopped once the process is gone), and the status page, opened in
//! headless Chromium, shows every table behind while a backlog waits and
//! caught up after, with points on its lag charts, and what is parked. The backlog is made
//! by holding a lock on the target tables: the sink's writes wait, the
//! changes wait with them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{ferry_cmd, http_get, metrics_addr, wait_for, ConfigBuilder, Ferry, Pair};

/// `ferry status --once` with these endpoints: (exit code, stdout and stderr).
fn status_once(cfg: &str, endpoints: &[&str]) -> (i32, String) {
    let mut args = vec!["status", "--config", cfg, "--once"];
    for e in endpoints {
        args.extend(["--endpoint", e]);
    }
    ferry_cmd(&args)
}

const TABLES: [&str; 2] = ["public.orders", "public.customers"];

/// A table as a view shows it: name, state, lag in seconds.
type Row = (String, String, f64);

/// `GET path`: (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let resp = http_get(addr, path);
    let code = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (code, body)
}

fn status_json(addr: &str) -> Value {
    let (code, body) = get(addr, "/status.json");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status.json is JSON")
}

/// Each table's (state, lag) in a report.
fn tables_of(report: &Value) -> Vec<Row> {
    report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                t["state"].as_str().unwrap().to_string(),
                t["lag_seconds"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Headless Chromium, as Debian packages it. Fails (never skips) when it
/// is missing: tests/run.sh installs it.
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("chromium is not installed: tests/run.sh installs Debian's `chromium` package");
}

/// Loads `url` in a fresh headless Chromium, lets the page run for a few
/// seconds of virtual time, and returns the DOM it built (and writes a
/// screenshot to `screenshot` when given).
fn browse(url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--virtual-time-budget=6000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("chromium could not be started");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's rows: table → (state, lag), and its charts: table → points.
fn page_rows(dom: &str) -> (Vec<Row>, Vec<(String, usize)>) {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
        Some(tag[at..].split('"').next()?.to_string())
    };
    let mut rows = Vec::new();
    for tag in dom.split("<tr ").skip(1) {
        let tag = tag.split('>').next().unwrap_or("");
        if let (Some(t), Some(s), Some(l)) = (
            attr(tag, "data-table"),
            attr(tag, "data-state"),
            attr(tag, "data-lag"),
        ) {
            rows.push((t, s, l.parse().unwrap_or(-1.0)));
        }
    }
    let mut charts = Vec::new();
    for chart in dom.split("<div class=\"chart\"").skip(1) {
        let table = attr(chart, "data-table").unwrap_or_default();
        let points = chart
            .split("data-points=\"")
            .nth(1)
            .and_then(|p| p.split('"').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        charts.push((table, points));
    }
    (rows, charts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_views_follow_a_backlog() {
    let pair = Pair::start("status").await;
    let ddl = "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(12,2));
               CREATE TABLE customers (id int PRIMARY KEY, name text);";
    let src = pair.src().await;
    src.batch_execute(ddl).await.unwrap();
    src.batch_execute(
        "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 2000) g;
         INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 500) g;",
    )
    .await
    .unwrap();
    // The target tables exist beforehand, so that a lock can hold the
    // snapshot back.
    let mut dst = pair.dst().await;
    dst.batch_execute(ddl).await.unwrap();
    // A rule only the target has: a customer named 'refused' is parked.
    dst.batch_execute("ALTER TABLE customers ADD CONSTRAINT no_refused CHECK (name <> 'refused')")
        .await
        .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&TABLES).build();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\nready_max_lag_secs = 3\n");
    std::fs::write(&config, text).unwrap();
    let cfg = config.to_str().unwrap().to_string();

    // 1. The snapshot waits on the lock: not ready, a table snapshotting.
    let lock = dst.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE orders, customers IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut ferry = Ferry::spawn(&config);
    let addr = metrics_addr(&ferry).await;
    assert_eq!(get(&addr, "/health").0, 200);
    // On the Kafka bus the copy is done for the source once it is in
    // Kafka; the rows held up at the target show as lag (docs/status.md).
    let kafka = pair.kafka.is_some();
    wait_for(
        "a table snapshotting (Kafka: its rows behind)",
        &ferry,
        Duration::from_secs(60),
        || {
            let r = status_json(&addr);
            let t = tables_of(&r);
            std::future::ready(if kafka {
                t.iter().any(|t| t.2 > 3.5)
            } else {
                t.iter().any(|t| t.1 == "snapshotting")
            })
        },
    )
    .await;
    let (code, body) = get(&addr, "/ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");
    let (code, out) = ferry_cmd(&["status", "--config", &cfg, "--once", "--endpoint", &addr]);
    assert_eq!(code, 0, "{out}");
    if !kafka {
        assert!(out.contains("snapshotting ["), "{out}");
    }
    assert!(out.contains("not ready"), "{out}");
    lock.rollback().await.unwrap();

    // 2. Snapshot committed, streaming, no lag: ready.
    pair.wait_equal(&TABLES, Duration::from_secs(90)).await;
    wait_for("/ready 200", &ferry, Duration::from_secs(60), || {
        std::future::ready(get(&addr, "/ready").0 == 200)
    })
    .await;
    // Logging to a file, not a terminal: log lines, no progress bar.
    let log = ferry.log_text();
    assert!(log.contains("snapshot of table copied"), "{log}");
    assert!(!log.contains("ETA"), "a progress bar in a log file: {log}");
    let report = status_json(&addr);
    for (table, state, lag) in tables_of(&report) {
        assert_eq!(state, "streaming", "{table}: {report}");
        assert_eq!(lag, 0.0, "{table}: {report}");
    }
    let (code, out) = ferry_cmd(&["status", "--config", &cfg, "--once", "--endpoint", &addr]);
    assert_eq!(code, 0, "{out}");
    for t in TABLES {
        let line = out
            .lines()
            .find(|l| l.starts_with(t))
            .unwrap_or_else(|| panic!("{t} missing: {out}"));
        assert!(line.contains("streaming"), "{out}");
    }
    assert!(out.contains("| ready |"), "{out}");
    let (code, json) = ferry_cmd(&["status", "--config", &cfg, "--json", "--endpoint", &addr]);
    assert_eq!(code, 0, "{json}");
    let parsed: Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(parsed["process"], "running");
    // Live: the screen is cleared and redrawn, frame after frame.
    let mut live = crate::support::ferry_command(config.parent().unwrap())
        .args([
            "status",
            "--config",
            &cfg,
            "--endpoint",
            &addr,
            "--interval",
            "0.3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferry status");
    let mut stdout = live.stdout.take().unwrap();
    let frames = std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Until three frames have been drawn (or the pipe closes).
        while String::from_utf8_lossy(&seen).matches("\x1b[2J").count() < 3 {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !frames.is_finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = live.kill();
    let _ = live.wait();
    let frames = frames.join().unwrap();
    assert_eq!(frames.matches("\x1b[2J").count(), 3, "{frames}");
    assert_eq!(frames.matches("public.orders").count(), 3, "{frames}");

    // 3. A backlog: the target tables locked, changes to both waiting.
    let lock = dst.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE orders, customers IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    src.batch_execute(
        "BEGIN;
         INSERT INTO orders SELECT g, g FROM generate_series(2001, 3000) g;
         UPDATE customers SET name = name || '!' WHERE id <= 100;
         COMMIT;",
    )
    .await
    .unwrap();
    wait_for(
        "every table behind by more than ready_max_lag_secs",
        &ferry,
        Duration::from_secs(60),
        || {
            let r = status_json(&addr);
            let t = tables_of(&r);
            std::future::ready(t.len() == TABLES.len() && t.iter().all(|t| t.2 > 3.5))
        },
    )
    .await;
    let (code, body) = get(&addr, "/ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("behind"), "{body}");
    let (_, out) = ferry_cmd(&["status", "--config", &cfg, "--once", "--endpoint", &addr]);
    for t in TABLES {
        let line = out.lines().find(|l| l.starts_with(t)).unwrap();
        assert!(!line.contains(" 0.0 s"), "{t} shows no lag: {out}");
    }
    let page = format!("http://{addr}/");
    let dom = browse(&page, None);
    let (rows, _) = page_rows(&dom);
    for t in TABLES {
        let row = rows
            .iter()
            .find(|r| r.0 == t)
            .unwrap_or_else(|| panic!("{t} not on the page: {dom}"));
        assert!(
            row.2 > 0.0,
            "{t} shows no lag while its changes wait: {row:?}"
        );
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .to_path_buf();
    browse(&page, Some(&target.join("status-page-backlog.png")));

    // 4. The lock goes: the backlog drains, lag back to 0, ready again.
    lock.rollback().await.unwrap();
    pair.wait_equal(&TABLES, Duration::from_secs(90)).await;
    wait_for("/ready 200 again", &ferry, Duration::from_secs(60), || {
        std::future::ready(get(&addr, "/ready").0 == 200)
    })
    .await;
    let dom = browse(&page, None);
    let (rows, charts) = page_rows(&dom);
    for t in TABLES {
        let row = rows.iter().find(|r| r.0 == t).unwrap();
        assert_eq!(row.1, "streaming", "{row:?}");
        assert_eq!(row.2, 0.0, "{t} still behind after the drain: {row:?}");
        let points = charts.iter().find(|c| c.0 == t).map_or(0, |c| c.1);
        assert!(points > 0, "{t}'s chart has no points: {dom}");
    }
    // 5. A record the target refuses: parked, and shown with its reason.
    src.batch_execute("INSERT INTO customers VALUES (9999, 'refused')")
        .await
        .unwrap();
    wait_for(
        "the refused record parked",
        &ferry,
        Duration::from_secs(60),
        || {
            let r = status_json(&addr);
            let parked = r["tables"].as_array().unwrap().iter().any(|t| {
                t["table"] == "public.customers"
                    && t["dead_lettered"] == 1
                    && t["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("no_refused"))
            });
            std::future::ready(parked && r["dlq_depth"] == 1)
        },
    )
    .await;
    let (_, out) = ferry_cmd(&["status", "--config", &cfg, "--once", "--endpoint", &addr]);
    let line = out
        .lines()
        .find(|l| l.starts_with("public.customers"))
        .unwrap();
    assert!(line.contains("no_refused"), "{out}");
    assert!(out.contains("dead-letter queue 1"), "{out}");
    let dom = browse(&page, None);
    assert!(
        dom.contains("no_refused"),
        "the parking reason is not on the page: {dom}"
    );
    let shot = target.join("status-page.png");
    browse(&page, Some(&shot));
    let size = std::fs::metadata(&shot).map_or(0, |m| m.len());
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
    eprintln!("status page screenshot: {}", shot.display());

    // 6. No process: read from the target, said to be stopped.
    ferry.kill9();
    let (code, out) = ferry_cmd(&["status", "--config", &cfg, "--once", "--endpoint", &addr]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("STOPPED"), "{out}");
    for t in TABLES {
        let line = out.lines().find(|l| l.starts_with(t)).unwrap();
        assert!(line.contains("stopped"), "{out}");
    }
    assert!(out.contains("dead-letter queue 1"), "{out}");
    let (code, json) = ferry_cmd(&["status", "--config", &cfg, "--json", "--endpoint", &addr]);
    assert_eq!(code, 1, "{json}");
    // stdout first, then stderr's log lines (the sink connecting).
    let parsed: Value = serde_json::Deserializer::from_str(&json)
        .into_iter()
        .next()
        .expect("--json prints JSON")
        .expect("--json prints JSON");
    assert_eq!(parsed["process"], "stopped");
    let customers = parsed["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.customers")
        .expect("customers in the stopped report");
    assert_eq!(customers["dead_lettered"], 1, "{json}");
    assert_eq!(customers["snapshot"]["done"], true, "{json}");
}

/// The alert rules pass `promtool check rules`, and fire on the series
/// they are meant for (`promtool test rules`, deploy/prometheus/alerts_test.yml).
/// Fails when promtool is missing: tests/run.sh installs Debian's
/// `prometheus` package.
#[test]
fn alert_rules_pass_promtool() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect(
                "promtool could not be started: tests/run.sh installs Debian's prometheus package",
            );
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `ferry run` on a terminal (a pseudo-terminal from `script`) draws a
/// progress bar per table being copied, which ends `copied`, with the log
/// lines in between (a run logging to a file has no bar: checked in
/// `status_views_follow_a_backlog`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_progress_bars_on_a_terminal() {
    let pair = Pair::start("status_tty").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, v text);
         INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 30000) g;",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.big"]).build();
    let typescript = config.with_extension("tty.log");
    let cmd = format!(
        "exec {} run --config {}",
        crate::support::ferry_bin().display(),
        config.display()
    );
    let mut script = Command::new("script")
        .args(["-q", "-f", "-e", "-c", &cmd])
        .arg(&typescript)
        .current_dir(config.parent().unwrap())
        .env("RUST_LOG", "info")
        .env("TERM", "xterm")
        .env("COLUMNS", "160")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux) could not be started");
    // Stops ferry (the child `script` exec'd) and `script`, whatever happens.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.0))
                .unwrap_or_default();
            for pid in children.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
    let stop = Stop(script.id());
    pair.wait_equal(&["public.big"], Duration::from_secs(120))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = std::fs::read_to_string(&typescript).unwrap_or_default();
        if out.contains("copied") && out.contains("ETA") {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress bar on the terminal:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(stop);
    let _ = script.wait();
    assert!(out.contains("public.big"), "{out}");
    assert!(
        out.contains("/30000 rows"),
        "the bar ends at the rows copied: {out}"
    );
    // The log lines still reach the terminal.
    assert!(out.contains("snapshot of table copied"), "{out}");
}

/// A Kafka deployment of several processes (a source and two workers, each
/// with its own metrics endpoint): `ferry status` given every endpoint
/// prints every table streaming, caught up and ready. Runs on a broker of
/// its own whatever `FERRY_TEST_BUS` says (skipped on the Kafka pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_merges_the_processes_of_a_kafka_deployment() {
    let pair = crate::kafka_bus::pair_with_broker("status_kafka").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(12,2));
         CREATE TABLE customers (id int PRIMARY KEY, name text);
         INSERT INTO orders SELECT g, g FROM generate_series(1, 500) g;
         INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair)
        .tables(&TABLES)
        .partitions(2)
        .build();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&config, text).unwrap();
    let cfg = config.to_str().unwrap().to_string();
    let source = Ferry::spawn_with(&config, &["--role", "source"]);
    let w1 = Ferry::spawn_with(&config, &["--role", "worker"]);
    let w2 = Ferry::spawn_with(&config, &["--role", "worker"]);
    let addrs = [
        metrics_addr(&source).await,
        metrics_addr(&w1).await,
        metrics_addr(&w2).await,
    ];
    let endpoints: Vec<&str> = addrs.iter().map(String::as_str).collect();
    pair.wait_equal(&TABLES, Duration::from_secs(120)).await;
    src.batch_execute("UPDATE orders SET amount = amount + 1 WHERE id <= 50")
        .await
        .unwrap();
    pair.wait_equal(&TABLES, Duration::from_secs(120)).await;
    // Every process answers, every table is streaming with no lag, and
    // every process is ready.
    let mut last = String::new();
    let settled = async {
        loop {
            let (code, out) = status_once(&cfg, &endpoints);
            let ok = code == 0
                && out.contains("| ready |")
                && TABLES.iter().all(|t| {
                    out.lines()
                        .find(|l| l.starts_with(t))
                        .is_some_and(|l| l.contains("streaming") && l.contains(" 0.0 s"))
                });
            last = out;
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), settled)
        .await
        .is_err()
    {
        panic!("ferry status never showed every table streaming and ready:\n{last}");
    }
    for a in &addrs {
        assert!(last.contains(a.as_str()), "{a} not named: {last}");
    }
    // Caught up: between them, the workers report every partition of the
    // data topics with no message waiting (the lag is against the offsets
    // committed after each sink commit, refreshed every second).
    let mut lags = String::new();
    let caught_up = async {
        loop {
            lags = addrs[1..]
                .iter()
                .flat_map(|a| {
                    http_get(a, "/metrics")
                        .lines()
                        .filter(|l| l.starts_with("ferry_kafka_consumer_lag_messages{"))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
                .join("\n");
            let data: Vec<&str> = lags
                .lines()
                .filter(|l| l.contains("orders") || l.contains("customers"))
                .collect();
            // Two tables × two partitions, each reported by its owner.
            if data.len() == 4 && data.iter().all(|l| l.ends_with(" 0")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), caught_up)
        .await
        .is_err()
    {
        panic!("the workers never reported every data partition caught up:\n{lags}");
    }
    drop((source, w1, w2));
}
