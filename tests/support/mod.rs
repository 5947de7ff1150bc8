//! Shared support for the end-to-end tests: throwaway clusters, a unique
//! database per test, the real `ferry` binary as a child process, and the
//! row-by-row comparison of source and target.
//!
//! Every test that needs PostgreSQL starts it here; if it cannot, the test
//! fails (it never returns early and passes).

#![allow(dead_code)]

pub mod config;
pub mod convex;
pub mod dns;
pub mod kafka;
pub mod mongo;
pub mod sqlite;
// `ferry parity`'s comparison, the same file the binary compiles (see its
// module doc): no production crate exports it for the tests.
#[path = "../../pipeline/bin/ferry/parity.rs"]
pub mod parity;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_pipeline::event::TableId;
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};

pub use config::ConfigBuilder;
use kafka::{Bus, KafkaBroker};

/// A source and a target cluster with one fresh database each, and on the
/// Kafka bus (`FERRY_TEST_BUS=kafka`, see [`kafka::bus`]) a broker.
pub struct Pair {
    pub source: LocalCluster,
    pub target: LocalCluster,
    pub db: String,
    pub dir: tempfile::TempDir,
    /// `Some` on the Kafka bus: every config of this pair uses it.
    pub kafka: Option<KafkaBroker>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A database name unique to this test process and call.
pub fn unique_db(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A broker when the suite runs on the Kafka bus, started off the async
/// workers (the start blocks); its panic stays the test's panic.
pub async fn start_kafka_for_bus() -> Option<KafkaBroker> {
    match kafka::bus() {
        Bus::Embedded => None,
        Bus::Kafka => match tokio::task::spawn_blocking(KafkaBroker::start).await {
            Ok(broker) => Some(broker),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
    }
}

impl Pair {
    /// Starts both clusters (and the broker on the Kafka bus) and creates
    /// the test's database on each cluster.
    pub async fn start(prefix: &str) -> Pair {
        Self::start_with(prefix, ClusterOptions::default(), ClusterOptions::default()).await
    }

    /// [`Pair::start`] with clusters of the given options (TLS, password
    /// methods: [`ferry_testkit::Security`]).
    pub async fn start_with(prefix: &str, source: ClusterOptions, target: ClusterOptions) -> Pair {
        let (source, target, kafka) = tokio::join!(
            LocalCluster::start(source),
            LocalCluster::start(target),
            start_kafka_for_bus()
        );
        let source = source.expect("start source PostgreSQL (see TEST-SERVICES in the README)");
        let target = target.expect("start target PostgreSQL");
        let db = unique_db(prefix);
        source.create_database(&db).await.expect("create source db");
        target.create_database(&db).await.expect("create target db");
        Pair {
            source,
            target,
            db,
            dir: tempfile::tempdir().expect("temp dir"),
            kafka,
        }
    }

    pub async fn src(&self) -> tokio_postgres::Client {
        self.source.connect(&self.db).await.expect("connect source")
    }

    pub async fn dst(&self) -> tokio_postgres::Client {
        self.target.connect(&self.db).await.expect("connect target")
    }

    /// Waits until every table is equal on both sides, or panics with the
    /// last difference after `timeout`.
    pub async fn wait_equal(&self, tables: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.compare(tables).await;
            match last {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("target never matched source: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Compares every table row by row; `Err` describes the first difference
    /// (or the error that prevented the comparison).
    pub async fn compare(&self, tables: &[&str]) -> Result<(), String> {
        let s = ferry_postgres_source::connect(&self.source.url(&self.db))
            .await
            .map_err(|e| e.to_string())?;
        let t = ferry_postgres_source::connect(&self.target.url(&self.db))
            .await
            .map_err(|e| e.to_string())?;
        for table in tables {
            let id = TableId::parse(table).expect("table name");
            let p = parity::compare(&s, &t, &id, &id)
                .await
                .map_err(|e| e.to_string())?;
            if !p.is_equal() {
                return Err(format!(
                    "{table}: source {} rows, target {} rows, {} differing: {:?}",
                    p.source_rows, p.target_rows, p.mismatches, p.examples
                ));
            }
        }
        Ok(())
    }
}

/// The `ferry` binary under test.
pub fn ferry_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

/// `ferry` as a child of a test, with `dir` (a temp dir of the test) as its
/// working directory: with the kernel's default `core_pattern` (`core`) a
/// crash writes its core file to the working directory, which must never
/// be the checkout. (Not `ulimit -c 0`: a core in the temp dir can still
/// be kept for debugging, and the command line stays plain.)
pub fn ferry_command(dir: &Path) -> Command {
    let mut cmd = Command::new(ferry_bin());
    cmd.current_dir(dir);
    cmd
}

/// A running `ferry run` child; killed with SIGKILL on drop.
pub struct Ferry {
    pub child: Child,
    pub log: PathBuf,
}

impl Ferry {
    /// Starts `ferry run --config <config>`, logging to a file beside it.
    pub fn spawn(config: &Path) -> Ferry {
        Self::spawn_with(config, &[])
    }

    /// Starts `ferry run --config <config> <extra…>` (e.g. `--role worker`).
    pub fn spawn_with(config: &Path, extra: &[&str]) -> Ferry {
        Self::spawn_env(config, extra, &[])
    }

    /// [`Ferry::spawn_with`] with more environment variables (test hooks).
    pub fn spawn_env(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Ferry {
        let log = config.with_extension(format!("{}.log", NEXT.fetch_add(1, Ordering::Relaxed)));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        // FERRY_TEST_GDB=1: run under gdb, which prints every thread's
        // backtrace into the log if ferry crashes (debugging aid).
        let mut cmd = if std::env::var_os("FERRY_TEST_GDB").is_some() {
            let mut c = Command::new("gdb");
            c.args([
                "-q",
                "-batch",
                "-ex",
                "run",
                "-ex",
                "thread apply all bt",
                "--args",
            ])
            .arg(ferry_bin());
            c
        } else {
            Command::new(ferry_bin())
        };
        // The config's folder is the test's temp dir: a core dump of ferry
        // (or of gdb) lands there, not in the checkout (see
        // [`ferry_command`]). Relative paths in a config are resolved
        // against the config's folder, never the working directory.
        let dir = config.parent().expect("a config inside a folder");
        let child = cmd
            .current_dir(dir)
            .args(["run", "--config"])
            .arg(config)
            .args(extra)
            // FERRY_TEST_RUST_LOG overrides the filter (debugging aid, e.g.
            // "info,librdkafka=debug" with librdkafka's `debug` property).
            .env(
                "RUST_LOG",
                std::env::var("FERRY_TEST_RUST_LOG")
                    .unwrap_or_else(|_| "info,ferry_postgres_sink=debug".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn ferry");
        Ferry { child, log }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (through `kill`: the workspace forbids `unsafe`): the clean
    /// stop an orchestrator asks for (a worker leaves its group).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for exit up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Waits up to `within` for the process to exit with `code`; panics
    /// with `what` (what it did instead of stopping) and its log otherwise.
    pub fn expect_exit(&mut self, code: i32, within: Duration, what: &str) {
        let status = self
            .wait_exit(within)
            .unwrap_or_else(|| panic!("{what}: {}", self.log_text()));
        assert_eq!(status.code(), Some(code), "{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        self.kill9();
        // A test that failed (e.g. in `wait_equal`, which has no handle on
        // this process) still shows what ferry said: CI keeps only stdout.
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(200).collect();
            eprintln!(
                "---- ferry's log ({}), last {} lines ----",
                self.log.display(),
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Runs `ferry <args>` to completion; returns (exit code, stdout+stderr).
pub fn ferry_cmd(args: &[&str]) -> (i32, String) {
    // Its own working directory (see [`ferry_command`]); the arguments
    // name absolute paths.
    let dir = tempfile::tempdir().expect("temp dir for ferry");
    let out = ferry_command(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ferry");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Polls `probe` every 200 ms until it holds; after `timeout`, fails with
/// `what` and ferry's log.
pub async fn wait_for<F, Fut>(what: &str, ferry: &Ferry, timeout: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !probe().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; ferry's log:\n{}",
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET path` from `addr` over HTTP/1.0: the whole response, headers too.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The address a ferry serves /metrics on, from its log (`serving /metrics
/// bound=127.0.0.1:N`), once it is there.
pub async fn metrics_addr(ferry: &Ferry) -> String {
    let mut addr = None;
    wait_for(
        "the metrics address in the log",
        ferry,
        Duration::from_secs(30),
        || {
            addr = ferry
                .log_text()
                .lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|l| l.split("bound=").nth(1))
                .map(|a| {
                    // The address, without the ANSI colour codes of a terminal log.
                    a.split_whitespace()
                        .next()
                        .unwrap_or("")
                        .trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':')
                        .to_string()
                });
            std::future::ready(addr.is_some())
        },
    )
    .await;
    addr.expect("found above")
}
