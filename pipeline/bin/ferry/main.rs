//! The `ferry` command: parses arguments and wires the runtime to the
//! concrete source and sink. Logic lives in the crates; this file only
//! orchestrates.

#[cfg(feature = "kafka")]
mod bus;
mod create_tables;
mod cutover;
mod demo;
mod dlq;
mod mapping;
mod parity;
mod progress;
mod recopy;
mod rollback;
mod sample;
mod source_rows;
mod sqlite;
mod status;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ferry_convex_sink::ConvexSink;
use ferry_convex_source::ConvexSource;
use ferry_mongodb_sink::MongoSink;
use ferry_mongodb_source::MongoSource;
use ferry_pipeline::bus::embedded;
#[cfg(feature = "kafka")]
use ferry_pipeline::bus::kafka::{self, worker::Subscription};
use ferry_pipeline::config::{BusKind, Config, SinkConfig, SourceConfig};
use ferry_pipeline::event::TableId;
use ferry_pipeline::runtime::RuntimeOptions;
use ferry_pipeline::sink::Sink;
use ferry_pipeline::telemetry::{self, LogFormat};
use ferry_postgres_sink::PostgresSink;
use ferry_postgres_source::PostgresSource;
use ferry_sqlite_source::SqliteSource;
use tokio::sync::watch;

/// Exit codes, so that scripts can tell a mismatch from an error.
pub(crate) mod exit {
    pub(crate) const OK: u8 = 0;
    /// A check failed or the mirror differs from the source.
    pub(crate) const MISMATCH: u8 = 1;
    /// The configuration is invalid.
    pub(crate) const CONFIG: u8 = 2;
    /// The pipeline stopped on an error.
    pub(crate) const PIPELINE: u8 = 3;
    /// A database could not be read: nothing was verified.
    pub(crate) const UNVERIFIED: u8 = 4;
}

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Change-data-capture pipeline for zero-downtime database migrations"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Human)]
    log_format: LogFormatArg,
    /// More log lines on stderr: `-v` shows one-shot commands' progress
    /// (connections, what they do), `-vv` debug lines. `RUST_LOG`, when
    /// set, decides instead.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

/// Which part of a pipeline a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Role {
    Source,
    Worker,
    All,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: snapshot what is not copied yet, then stream.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// With `pipeline.bus = "kafka"`: run only the source (producing to
        /// Kafka), only a worker (consuming and writing to the sink), or
        /// both in this process.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
        /// Copy this source table again (`schema.table`; repeatable): its
        /// target table is emptied and its snapshot forgotten, then copied
        /// while the stream goes on. For a table dropped or emptied by hand.
        #[arg(long, value_name = "TABLE")]
        recopy: Vec<String>,
    },
    /// Check the configuration and the databases' prerequisites.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Compare every configured table with its mirror, row by row
    /// (reads both tables through Ferry: small tables; see `verify`).
    Parity {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Prove every table's mirror equal to its source: chunk hashes
    /// computed in each database, differing chunks down to rows
    /// (docs/verify.md). Exit 0 equal, 1 different, 4 not verified.
    Verify(verify::VerifyArgs),
    /// Cutover readiness: `check` says per table what still blocks it
    /// (lag, dead letters, last verify, drift in the soak period).
    Cutover(cutover::CutoverArgs),
    /// Start two local PostgreSQL clusters, generate traffic, replicate it
    /// and show lag and a row-by-row comparison.
    Demo(demo::DemoArgs),
    /// The dead-letter queue: list, show, replay, purge.
    Dlq(dlq::DlqArgs),
    /// Mapping files (docs/mappings.md): check one against the target.
    Mapping(mapping::MappingArgs),
    /// The id map: legacy ids and the new ids they were given.
    Idmap(mapping::IdmapArgs),
    /// SQLite sources: install or remove the change log, compare counts.
    Sqlite(sqlite::SqliteArgs),
    /// A way back after cutover: `init` writes the reverse pipeline
    /// (docs/rollback.md).
    Rollback(rollback::RollbackArgs),
    /// Every table's state, lag, rate and parked records: live like `top`,
    /// `--once` for one frame, `--json` for machines.
    Status(status::StatusArgs),
    /// The Kafka bus: `reset` starts a pipeline over after its broker lost
    /// its data.
    #[cfg(feature = "kafka")]
    Kafka(bus::KafkaArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A running pipeline logs what it does; a one-shot command's output is
    // what it prints, and its connection chatter only with -v.
    let long_running = match &cli.command {
        Command::Run { .. } | Command::Demo(_) => true,
        Command::Verify(args) => args.watch.is_some(),
        _ => false,
    };
    let level = match (cli.verbose, long_running) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    let format = match cli.log_format {
        LogFormatArg::Human => LogFormat::Human,
        LogFormatArg::Json => LogFormat::Json,
    };
    // Snapshot progress bars only where someone watches: `ferry run` on a
    // terminal with human-readable logs.
    let bars = (matches!(cli.command, Command::Run { .. })
        && format == LogFormat::Human
        && std::io::IsTerminal::is_terminal(&std::io::stderr()))
    .then(progress::Bars::new);
    match &bars {
        Some(b) => telemetry::init_with_writer(format, level, b.writer()),
        None => telemetry::init(format, level),
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = runtime_threads(&cli.command) {
        builder.worker_threads(n);
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(exit::PIPELINE);
        }
    };
    let code = rt.block_on(async move {
        if let Some(bars) = bars {
            tokio::spawn(bars.follow());
        }
        match cli.command {
            Command::Run {
                config,
                role,
                recopy,
            } => run(&config, role, &recopy).await,
            Command::Check { config } => check(&config).await,
            Command::Parity { config } => parity(&config).await,
            Command::Verify(args) => match load(&args.config).await {
                Ok(config) => verify::run(args, config).await,
                // As every command: 2 for an invalid configuration.
                Err(code) => code,
            },
            Command::Cutover(args) => cutover::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Dlq(args) => dlq::run(args).await,
            Command::Mapping(args) => mapping::run_mapping(args).await,
            Command::Idmap(args) => mapping::run_idmap(args).await,
            Command::Sqlite(args) => sqlite::run(args).await,
            Command::Rollback(args) => rollback::run(args).await,
            Command::Status(args) => status::run(args).await,
            #[cfg(feature = "kafka")]
            Command::Kafka(args) => bus::run(args).await,
        }
    });
    ExitCode::from(code)
}

/// Runtime worker threads for `command`, where Ferry knows better than
/// one per core (tokio's default, or `TOKIO_WORKER_THREADS` when set).
///
/// A source on the Kafka bus is a chain of tasks (the replication
/// stream's reader, the decoder, the encoder feeding librdkafka, the
/// delivery tracker), each handing every change to the next. On two
/// threads each hand-off wakes the other, parked thread: tens of thousands
/// of context switches a second, a third of the source's CPU on a 2-core
/// machine. On one thread a hand-off is a queue push; librdkafka's own
/// threads do the network work beside it.
fn runtime_threads(command: &Command) -> Option<usize> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    match command {
        Command::Run {
            role: Role::Source, ..
        } => Some(1),
        _ => None,
    }
}

/// Loads and validates the configuration, including the connection URLs
/// as each driver parses them (no connection is made).
async fn load(path: &Path) -> Result<Config, u8> {
    let config = Config::load(path).map_err(|e| {
        eprintln!("invalid configuration {}: {e}", path.display());
        exit::CONFIG
    })?;
    // Each error names its key (`source.url: …`), never the URL.
    let source = match &config.source {
        SourceConfig::Postgres(s) => ferry_postgres_source::conn_info(s).map(|_| ()),
        SourceConfig::Mongodb(s) => ferry_mongodb_source::config::check_url(s.url.expose())
            .await
            .map_err(|why| format!("source.url: {why}")),
        SourceConfig::Sqlite(s) => {
            ferry_sqlite_source::config::check_path(s).map_err(|why| format!("source.path: {why}"))
        }
        // Checked by `Config::validate`.
        SourceConfig::Convex(_) => Ok(()),
    };
    let sink = match &config.sink {
        SinkConfig::Postgres(dst) => ferry_postgres_sink::config::conn_info(dst).map(|_| ()),
        // Checked by `Config::validate`.
        SinkConfig::Convex(_) => Ok(()),
        SinkConfig::Mongodb(s) => ferry_mongodb_source::config::check_url(s.url.expose())
            .await
            .map_err(|why| format!("sink.url: {why}")),
    };
    for result in [source, sink] {
        if let Err(why) = result {
            eprintln!("invalid configuration {}: {why}", path.display());
            return Err(exit::CONFIG);
        }
    }
    Ok(config)
}

/// Turns SIGINT/SIGTERM into a shutdown signal.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

async fn run(path: &Path, role: Role, recopy: &[String]) -> u8 {
    let config = match load(path).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(why) = bus_unavailable(&config) {
        eprintln!("invalid configuration {}: {why}", path.display());
        return exit::CONFIG;
    }
    tracing::info!(?role, version = env!("CARGO_PKG_VERSION"), config = %path.display(), "starting");
    if let Some(mut endpoint) = config.metrics.endpoint() {
        endpoint.pipeline = config.pipeline.name.clone();
        let https = endpoint.tls.is_some();
        match ferry_pipeline::metrics::endpoint::serve(endpoint).await {
            Ok(bound) => {
                tracing::info!(%bound, https, "serving /metrics, /status.json, /health, /ready and the status page at /")
            }
            Err(e) => {
                eprintln!("[metrics]: {e}");
                return exit::CONFIG;
            }
        }
    }
    if role != Role::Source {
        if let Err(code) = recopy::guard(&config, recopy).await {
            return code;
        }
        // What `ferry check` refuses, refused before anything is copied; a
        // target down at start is waited for by the pipeline instead.
        match create_tables::findings(&config).await {
            Ok(refused) if !refused.is_empty() => {
                for f in &refused {
                    eprintln!("ferry: {f}");
                }
                return exit::CONFIG;
            }
            Ok(_) => {}
            Err(e) if e.disposition() == ferry_pipeline::error::Disposition::Retry => {
                tracing::warn!(error = %e, "create_tables check skipped: a database is unreachable");
            }
            Err(e) => {
                eprintln!("ferry: {e}");
                return exit::PIPELINE;
            }
        }
    }
    // The mapping is compiled against the live target before anything
    // runs (the source role does not transform).
    let transformer = if role == Role::Source {
        None
    } else {
        match mapping::transformer(&config).await {
            Ok(t) => t,
            Err(mapping::Unusable::Findings(findings)) => {
                for f in &findings {
                    eprintln!("invalid mapping: {f}");
                }
                eprintln!("ferry: the mapping does not fit the target (see `ferry mapping check`)");
                return exit::CONFIG;
            }
            Err(mapping::Unusable::Unreachable(e)) => {
                eprintln!("ferry: cannot read the target schema for the mapping: {e}");
                return exit::PIPELINE;
            }
        }
    };
    match run_pipeline(&config, role, shutdown_signal(), transformer).await {
        Ok(()) => exit::OK,
        // SIGTERM while a stage waited to retry: a clean stop.
        Err(e) if e.is_stop() => {
            tracing::info!(stage = e.stage.as_str(), "stopped while retrying");
            exit::OK
        }
        Err(e) => {
            tracing::error!(error = %e, "pipeline stopped");
            eprintln!("ferry: {e}");
            exit::PIPELINE
        }
    }
}

/// Wires the configured source and sink into the runtime.
pub(crate) async fn run_pipeline(
    config: &Config,
    role: Role,
    shutdown: watch::Receiver<bool>,
    transformer: Option<std::sync::Arc<ferry_pipeline::transform::Transformer>>,
) -> Result<(), ferry_pipeline::error::PipelineError> {
    let mut opts = RuntimeOptions::from(&config.pipeline);
    if transformer.is_some() {
        // After a refusal the runtime compiles the same mapping against the
        // target as it is now (a column widened, a NOT NULL dropped).
        let config = std::sync::Arc::new(config.clone());
        opts.refresh_transformer = Some(ferry_pipeline::runtime::TransformerRefresh(
            std::sync::Arc::new(move || {
                let config = std::sync::Arc::clone(&config);
                Box::pin(async move {
                    match mapping::transformer(&config).await {
                        Ok(Some(t)) => Ok(t),
                        Ok(None) => Err("no mapping is configured".to_string()),
                        Err(mapping::Unusable::Unreachable(e)) => Err(e),
                        Err(mapping::Unusable::Findings(f)) => Err(format!(
                            "the mapping no longer fits the target: {}",
                            f.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; ")
                        )),
                    }
                })
            }),
        ));
    }
    opts.transformer = transformer;
    #[cfg(feature = "kafka")]
    if let (BusKind::Kafka, Some(k)) = (config.pipeline.bus, &config.kafka) {
        return run_on_kafka(config, k, role, &opts, shutdown).await;
    }
    if let Some(why) = bus_unavailable(config) {
        return Err(ferry_pipeline::error::PipelineError::fatal(
            ferry_pipeline::error::Stage::Source,
            why,
        ));
    }
    if role != Role::All {
        return Err(ferry_pipeline::error::PipelineError::fatal(
            ferry_pipeline::error::Stage::Source,
            "--role source|worker needs pipeline.bus = \"kafka\"",
        ));
    }
    let name = config.pipeline.name.clone();
    match &config.sink {
        SinkConfig::Postgres(dst) => {
            run_embedded(config, PostgresSink::new(dst.clone(), name), opts, shutdown).await
        }
        SinkConfig::Convex(dst) => {
            run_embedded(config, ConvexSink::new(dst.clone(), name), opts, shutdown).await
        }
        SinkConfig::Mongodb(dst) => {
            run_embedded(config, MongoSink::new(dst.clone(), name), opts, shutdown).await
        }
    }
}

/// The embedded bus from the configured source into `sink`.
async fn run_embedded<K: Sink>(
    config: &Config,
    sink: K,
    opts: RuntimeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ferry_pipeline::error::PipelineError> {
    match &config.source {
        SourceConfig::Postgres(src) => {
            let source = PostgresSource::new(src.clone(), opts.max_retry_delay);
            embedded::run(source, sink, opts, shutdown).await
        }
        SourceConfig::Mongodb(src) => {
            let source = MongoSource::new(src.clone(), opts.max_retry_delay);
            embedded::run(source, sink, opts, shutdown).await
        }
        SourceConfig::Sqlite(src) => {
            let source = SqliteSource::new(src.clone(), opts.max_retry_delay);
            embedded::run(source, sink, opts, shutdown).await
        }
        SourceConfig::Convex(src) => {
            let source = ConvexSource::new(src.clone(), opts.max_retry_delay);
            embedded::run(source, sink, opts, shutdown).await
        }
    }
}

/// Why the configured bus cannot run in this build: `bus = "kafka"` in a
/// `ferry` built without the `kafka` feature, refused at start rather than
/// quietly run on another bus.
fn bus_unavailable(config: &Config) -> Option<&'static str> {
    (config.pipeline.bus == BusKind::Kafka && !cfg!(feature = "kafka")).then_some(
        "pipeline.bus = \"kafka\", but this ferry was built without the Kafka bus \
         (cargo feature `kafka`, on by default): rebuild with it, or use bus = \"embedded\"",
    )
}

/// The Kafka bus: the source producing to Kafka, a worker consuming into
/// the sink, or both in one process (`role`).
#[cfg(feature = "kafka")]
async fn run_on_kafka(
    config: &Config,
    k: &ferry_pipeline::config::KafkaConfig,
    role: Role,
    opts: &RuntimeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ferry_pipeline::error::PipelineError> {
    let name = config.pipeline.name.clone();
    match &config.sink {
        SinkConfig::Postgres(dst) => {
            let make = || PostgresSink::new(dst.clone(), name.clone());
            run_kafka_with(config, k, role, opts, shutdown, make).await
        }
        SinkConfig::Convex(dst) => {
            let make = || ConvexSink::new(dst.clone(), name.clone());
            run_kafka_with(config, k, role, opts, shutdown, make).await
        }
        SinkConfig::Mongodb(dst) => {
            let make = || MongoSink::new(dst.clone(), name.clone());
            run_kafka_with(config, k, role, opts, shutdown, make).await
        }
    }
}

/// [`run_on_kafka`] with the sink `make` builds.
#[cfg(feature = "kafka")]
async fn run_kafka_with<K, F>(
    config: &Config,
    k: &ferry_pipeline::config::KafkaConfig,
    role: Role,
    opts: &RuntimeOptions,
    shutdown: watch::Receiver<bool>,
    make: F,
) -> Result<(), ferry_pipeline::error::PipelineError>
where
    K: Sink + ferry_pipeline::checkpoint::BusOffsets,
    F: Fn() -> K,
{
    let source = async {
        match &config.source {
            SourceConfig::Postgres(src) => {
                let source = PostgresSource::new(src.clone(), opts.max_retry_delay);
                kafka::run_source(source, k, opts.clone(), shutdown.clone()).await
            }
            SourceConfig::Mongodb(src) => {
                let source = MongoSource::new(src.clone(), opts.max_retry_delay);
                kafka::run_source(source, k, opts.clone(), shutdown.clone()).await
            }
            SourceConfig::Sqlite(src) => {
                let source = SqliteSource::new(src.clone(), opts.max_retry_delay);
                kafka::run_source(source, k, opts.clone(), shutdown.clone()).await
            }
            SourceConfig::Convex(src) => {
                let source = ConvexSource::new(src.clone(), opts.max_retry_delay);
                kafka::run_source(source, k, opts.clone(), shutdown.clone()).await
            }
        }
    };
    let subscription = match &config.source {
        SourceConfig::Mongodb(m) if m.collections.is_empty() => Subscription::Prefix,
        // Every table of the file: their names are known only at start.
        SourceConfig::Sqlite(s) if s.tables.is_empty() => Subscription::Prefix,
        SourceConfig::Convex(c) if c.tables.is_empty() => Subscription::Prefix,
        other => {
            let topics = kafka::Topics::new(&k.topic_prefix);
            Subscription::Topics(other.tables().iter().map(|t| topics.data(t)).collect())
        }
    };
    let worker = kafka::worker::run(
        k,
        subscription,
        || (make(), make()),
        opts.clone(),
        shutdown.clone(),
    );
    match role {
        Role::Source => source.await,
        Role::Worker => worker.await,
        // Both in one process: the first error stops both.
        Role::All => tokio::try_join!(source, worker).map(|_| ()),
    }
}

fn tables(config: &Config) -> Vec<TableId> {
    config.source.tables()
}

async fn check(path: &Path) -> u8 {
    let config = match load(path).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("[ ok ] configuration: {}", path.display());
    let dst = match &config.sink {
        SinkConfig::Postgres(dst) => dst,
        SinkConfig::Mongodb(dst) => {
            let findings =
                ferry_mongodb_sink::check::sink_findings(dst, &config.pipeline.name).await;
            for f in &findings {
                println!("{f}");
            }
            return if findings.iter().all(|f| f.ok) {
                exit::OK
            } else {
                exit::MISMATCH
            };
        }
        SinkConfig::Convex(dst) => {
            let mut sink = ConvexSink::new(dst.clone(), config.pipeline.name.clone());
            return match ferry_pipeline::checkpoint::CheckpointStore::load(&mut sink).await {
                Ok(_) => {
                    println!("[ ok ] sink: Ferry's Convex module answers at {}", dst.url);
                    exit::OK
                }
                Err(e) => {
                    println!("[FAIL] sink: {e}");
                    exit::MISMATCH
                }
            };
        }
    };
    let mut findings = match &config.source {
        SourceConfig::Postgres(src) => ferry_postgres_source::check::source_findings(src).await,
        SourceConfig::Mongodb(src) => ferry_mongodb_source::check::source_findings(src).await,
        SourceConfig::Sqlite(src) => ferry_sqlite_source::check::source_findings(src).await,
        SourceConfig::Convex(src) => ferry_convex_source::check::source_findings(src).await,
    };
    // Before data arrives: what a mapping leaves out of the shapes Convex
    // reports.
    if let (SourceConfig::Convex(src), Some(m)) = (&config.source, &config.mappings) {
        findings.extend(ferry_convex_source::check::mapping_findings(src, m).await);
    }
    // Mapped tables are checked against the mapping's targets below.
    let mapped: Vec<TableId> = config
        .mappings
        .iter()
        .flat_map(|m| m.tables.iter().filter_map(|t| TableId::parse(&t.source)))
        .collect();
    let unmapped: Vec<TableId> = tables(&config)
        .into_iter()
        .filter(|t| !mapped.contains(t))
        .collect();
    findings.extend(ferry_postgres_sink::target_findings(dst, &unmapped).await);
    match create_tables::findings(&config).await {
        Ok(f) => findings.extend(f),
        Err(e) => findings.push(ferry_pipeline::prerequisite::Finding::fail(
            "tables to create",
            e.to_string(),
        )),
    }
    #[cfg(feature = "kafka")]
    if let (BusKind::Kafka, Some(k)) = (config.pipeline.bus, &config.kafka) {
        let topics = kafka::check::used_topics(k, &tables(&config));
        findings.extend(kafka::check::findings(k, &topics));
    }
    if config.mappings.is_some() {
        use ferry_pipeline::prerequisite::Finding;
        match mapping::transformer(&config).await {
            Ok(_) => findings.push(Finding::pass("mapping", "fits the target schema")),
            Err(mapping::Unusable::Findings(problems)) => findings.extend(
                problems
                    .iter()
                    .map(|p| Finding::fail("mapping", p.to_string())),
            ),
            Err(mapping::Unusable::Unreachable(e)) => findings.push(Finding::fail(
                "mapping",
                format!("cannot read the target schema: {e}"),
            )),
        }
    }
    for f in &findings {
        println!("{f}");
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    if failed == 0 {
        println!("all {} checks passed", findings.len());
        exit::OK
    } else {
        println!(
            "{failed} of {} checks failed: fix them and run `ferry check` again",
            findings.len()
        );
        exit::MISMATCH
    }
}

async fn parity(path: &Path) -> u8 {
    let config = match load(path).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let SourceConfig::Postgres(src) = &config.source else {
        // Never a green result for what was not compared.
        eprintln!("ferry parity: NOT VERIFIED: row-by-row parity is implemented for PostgreSQL sources only");
        return exit::UNVERIFIED;
    };
    if config.mappings.is_some() {
        // A mapped table's rows are not its source's rows: comparing them
        // needs the mapping in reverse, which parity does not do yet.
        eprintln!("ferry parity: NOT VERIFIED: row-by-row parity does not compare mapped tables (pipeline.mappings is set)");
        return exit::UNVERIFIED;
    }
    let SinkConfig::Postgres(dst) = &config.sink else {
        eprintln!("ferry parity: NOT VERIFIED: row-by-row parity is implemented for PostgreSQL targets only");
        return exit::UNVERIFIED;
    };
    let sink = PostgresSink::new(dst.clone(), config.pipeline.name.clone());
    let pairs: Vec<(TableId, TableId)> = tables(&config)
        .into_iter()
        .map(|t| {
            let target = sink.target_id(&t);
            (t, target)
        })
        .collect();
    let conns = ferry_postgres_source::conn_info(src)
        .and_then(|s| ferry_postgres_sink::config::conn_info(dst).map(|t| (s, t)));
    let (source_conn, target_conn) = match conns {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry parity: NOT VERIFIED: {e}");
            return exit::UNVERIFIED;
        }
    };
    match compare_all(&source_conn, &target_conn, &pairs).await {
        Ok(all_equal) => {
            if all_equal {
                exit::OK
            } else {
                exit::MISMATCH
            }
        }
        Err(e) => {
            eprintln!("ferry parity: NOT VERIFIED: {e}");
            exit::UNVERIFIED
        }
    }
}

/// Prints one line per table; `Ok(true)` only when every table is equal.
pub(crate) async fn compare_all(
    source: &ferry_pgconn::PgConnInfo,
    target: &ferry_pgconn::PgConnInfo,
    pairs: &[(TableId, TableId)],
) -> Result<bool, ferry_pipeline::error::PipelineError> {
    use ferry_pipeline::error::Stage;
    let source = source.connect(Stage::Source, "source").await?;
    let target = target.connect(Stage::Sink, "target").await?;
    let mut all_equal = true;
    for (s, t) in pairs {
        let p = parity::compare(&source, &target, s, t).await?;
        if p.is_equal() {
            println!("[equal] {s}: {} rows", p.source_rows);
        } else {
            all_equal = false;
            println!(
                "[DIFF ] {s}: source {} rows, target {} rows, {} differing lines",
                p.source_rows, p.target_rows, p.mismatches
            );
            for line in &p.examples {
                println!("          {line}");
            }
        }
    }
    Ok(all_equal)
}
