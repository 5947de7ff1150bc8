//! `ferry-bench --kafka`: Ferry on the embedded bus against Ferry on the
//! Kafka bus, on the foundation workload of the default mode (same seed,
//! same backlog, same steady load), in one invocation, the configurations
//! alternating run by run:
//!
//! 1. embedded bus: one `ferry run`;
//! 2. Kafka bus, source + 1 worker (`--role source`, `--role worker`);
//! 3. Kafka bus, source + 2 workers (one consumer group).
//!
//! The Kafka topics have 2 partitions (`--kafka-partitions 1,3,6` and
//! `--kafka-workers 1,2,3` run every pair instead; `--kafka-key-changes`
//! and `--kafka-truncate-every n` add barriers to the backlog); the broker
//! is tansu (memory storage) on the same machine, a fresh one per run, as
//! are the PostgreSQL clusters.
//!
//! Throughput: the seed is snapshotted, then the source is stopped (the
//! workers keep running, their consumer group joined and stable) while the
//! backlog is written; the clock starts when the source starts again and
//! stops when the target matches a fingerprint of the source (per table:
//! row count and sums over the columns the backlog changes). A single
//! marker row does not do on Kafka: the partitions are applied
//! independently, and a marker on one says nothing of the others. The
//! embedded run is timed with the same criterion. Lag and peak RSS are
//! measured as in the default mode; the RSS is the sum over the ferry
//! processes (their `VmHWM`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use tokio_postgres::Client;

use super::completion::{check_no_resnapshot, fingerprint, guarded, wait_fingerprint, Watched};
use super::{
    current_lsn, ferry_exe, machine, measure_lag, median_outcome, percentile, prepare_source,
    utc_date_today, wait_confirmed, wait_rows, wait_slot_inactive, write_backlog, Args,
    FerryProcess, Outcome,
};

/// The pipeline's tables (each a data topic on Kafka).
const TABLES: [&str; 3] = ["public.accounts", "public.transfers", "public.probe"];

/// What is compared between source and target: per table the row count and
/// sums over the columns the backlog changes (every update adds to a
/// balance and moves `updated_at`; inserts and deletes move the count and
/// the id sum).
const FINGERPRINT_SQL: &str = "SELECT
  (SELECT count(*)::text || ' ' || coalesce(round(sum(balance), 10)::text, '-') || ' '
          || coalesce(sum(extract(epoch FROM updated_at))::text, '-') FROM accounts)
  || ' | ' ||
  (SELECT count(*)::text || ' ' || coalesce(sum(id)::text, '-') || ' '
          || coalesce(round(sum(amount), 10)::text, '-') FROM transfers)
  || ' | ' ||
  (SELECT count(*)::text || ' ' || coalesce(sum(id)::text, '-') FROM probe)";

/// A necessary condition for the fingerprint, cheap enough to poll often
/// (two index lookups): the backlog's last transfer and its marker row are
/// in the target.
const GATE_SQL: &str = "SELECT (SELECT max(id) FROM transfers),
        EXISTS (SELECT 1 FROM probe WHERE id = -1)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Embedded,
    Kafka { workers: usize, partitions: usize },
}

impl Setup {
    /// The embedded bus, then every partitions × workers pair asked for.
    fn all(args: &Args) -> Vec<Setup> {
        let mut all = vec![Setup::Embedded];
        for &partitions in &args.kafka_partitions {
            for &workers in &args.kafka_workers {
                all.push(Setup::Kafka {
                    workers,
                    partitions,
                });
            }
        }
        all
    }

    fn name(self) -> String {
        match self {
            Setup::Embedded => "embedded bus".into(),
            Setup::Kafka {
                workers: 1,
                partitions,
            } => format!("Kafka, {partitions} partitions, source + 1 worker"),
            Setup::Kafka {
                workers,
                partitions,
            } => format!("Kafka, {partitions} partitions, source + {workers} workers"),
        }
    }

    /// Its key in the JSON report (and its logs' file names).
    fn key(self) -> String {
        match self {
            Setup::Embedded => "embedded".into(),
            Setup::Kafka {
                workers,
                partitions,
            } => format!("kafka_{partitions}p_{workers}w"),
        }
    }

    fn partitions(self) -> usize {
        match self {
            Setup::Embedded => 1,
            Setup::Kafka { partitions, .. } => partitions,
        }
    }

    fn processes(self) -> usize {
        match self {
            Setup::Embedded => 1,
            Setup::Kafka { workers, .. } => 1 + workers,
        }
    }
}

/// One run's (or the medians') figures.
#[derive(Debug, Clone, serde::Serialize)]
struct KafkaOutcome {
    #[serde(flatten)]
    outcome: Outcome,
    /// Ferry processes (source, workers).
    processes: usize,
    /// CPU seconds of the ferry processes during the timed backlog.
    ferry_cpu_secs: f64,
    /// Of which the workers' (Kafka only).
    workers_cpu_secs: Option<f64>,
    /// CPU seconds of the broker during the timed backlog.
    broker_cpu_secs: Option<f64>,
    /// CPU seconds of the source cluster's walsender during the timed
    /// backlog (it starts with the source's second life).
    walsender_cpu_secs: f64,
    /// CPU seconds of the target cluster's client backends (the sink's
    /// sessions) during the timed backlog.
    target_backends_cpu_secs: f64,
    /// Seconds the workers took to join their group before the backlog
    /// (not timed).
    group_join_secs: Option<f64>,
    /// Partition revocations the workers logged during the timed backlog
    /// (0: no rebalance in the window).
    revocations_in_window: usize,
    /// Full fingerprint comparisons made while waiting.
    fingerprint_checks: usize,
    /// The slowest probe of the steady load.
    lag_max_ms: f64,
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
    let tansu = tansu_path()?;
    // Ctrl-C or SIGTERM drops the benchmark's future, and with it every
    // child process (ferry, broker) and cluster it holds.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = run_all(args, &tansu) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; child processes stopped"),
        _ = term.recv() => bail!("terminated; child processes stopped"),
    }
}

async fn run_all(args: &Args, tansu: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let runs = args.repeat.max(1);
    if let Some(only) = &args.kafka_only {
        let setup = match only.as_str() {
            "embedded" => Setup::Embedded,
            n => Setup::Kafka {
                workers: n.parse()?,
                partitions: args.kafka_partitions.first().copied().unwrap_or(2),
            },
        };
        for run in 0..runs {
            eprintln!("run {} of {runs}: {}", run + 1, setup.name());
            let o = bench_one(args, setup, run, tansu).await?;
            println!("{}", serde_json::to_string(&o)?);
        }
        return Ok(());
    }
    let setups = Setup::all(args);
    let mut all: Vec<Vec<KafkaOutcome>> = vec![Vec::new(); setups.len()];
    for run in 0..runs {
        for (i, &setup) in setups.iter().enumerate() {
            eprintln!("run {} of {runs}: {}", run + 1, setup.name());
            let o = bench_one(args, setup, run, tansu)
                .await
                .with_context(|| format!("{} (run {})", setup.name(), run + 1))?;
            all[i].push(o);
        }
    }
    let medians: Vec<KafkaOutcome> = all.iter().map(|runs| median(runs)).collect();
    let rate = |i: usize| medians[i].outcome.rows_per_sec;
    let find = |workers: usize| {
        setups.iter().position(|s| {
            matches!(s, Setup::Kafka { workers: w, partitions } if *w == workers && *partitions == args.kafka_partitions[0])
        })
    };
    let ratio = |a: Option<usize>, b: Option<usize>| match (a, b) {
        (Some(a), Some(b)) => rate(a) / rate(b),
        _ => f64::NAN,
    };
    let kafka1_vs_embedded = ratio(find(1), Some(0));
    let kafka2_vs_kafka1 = ratio(find(2), find(1));
    let kafka2_vs_embedded = ratio(find(2), Some(0));

    println!();
    println!(
        "| configuration | ferry processes | changes | seconds | rows/s | lag p50 (ms) | lag p99 (ms) | peak RSS (MB, sum of processes, max of runs) | ferry CPU s (workers) | broker CPU s | walsender CPU s | target backends CPU s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &medians {
        let o = &m.outcome;
        println!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {} | {:.1}{} | {} | {:.1} | {:.1} |",
            o.name,
            m.processes,
            o.changes,
            o.seconds,
            o.rows_per_sec,
            o.lag_p50_ms,
            o.lag_p99_ms,
            o.peak_rss_mb.map_or("-".to_string(), |m| format!("{m:.1}")),
            m.ferry_cpu_secs,
            m.workers_cpu_secs
                .map_or(String::new(), |s| format!(" ({s:.1})")),
            m.broker_cpu_secs
                .map_or("-".to_string(), |s| format!("{s:.1}")),
            m.walsender_cpu_secs,
            m.target_backends_cpu_secs,
        );
    }
    let verdict = if kafka1_vs_embedded >= 0.7 {
        "met"
    } else {
        "not met"
    };
    println!(
        "\nKafka (1 worker) / embedded throughput: {kafka1_vs_embedded:.2}x (target >= 0.7x: {verdict})"
    );
    println!("Kafka (2 workers) / Kafka (1 worker) throughput: {kafka2_vs_kafka1:.2}x");
    println!("Kafka (2 workers) / embedded throughput: {kafka2_vs_embedded:.2}x");
    for (i, setup) in setups.iter().enumerate() {
        println!(
            "{} / embedded throughput: {:.2}x",
            setup.name(),
            rate(i) / rate(0)
        );
    }
    for (setup, runs) in setups.iter().zip(&all) {
        let rates: Vec<String> = runs
            .iter()
            .map(|o| format!("{:.0}", o.outcome.rows_per_sec))
            .collect();
        println!("{} rows/s per run: {}", setup.name(), rates.join(" / "));
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("benchmark wall time: {:.1} min", elapsed / 60.0);

    if let Some(dir) = args.kafka_out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut per_run = serde_json::Map::new();
    for (setup, runs) in setups.iter().zip(&all) {
        per_run.insert(setup.key(), serde_json::to_value(runs)?);
    }
    let report = serde_json::json!({
        "machine": machine(),
        "date": utc_date_today(),
        "broker": "tansu (memory storage), same machine",
        "args": {
            "changes": args.changes, "rows_per_txn": args.rows_per_txn, "accounts": args.accounts,
            "steady_rate": args.steady_rate, "steady_secs": args.steady_secs, "runs": runs,
            "partitions": args.kafka_partitions, "workers": args.kafka_workers,
            "key_changes": args.kafka_key_changes, "truncate_every": args.kafka_truncate_every,
        },
        "completion": "target matches the source's fingerprint (per table: count and sums over the changed columns)",
        "results": medians,
        "ratios": {
            "kafka_1w_over_embedded": kafka1_vs_embedded,
            "kafka_2w_over_kafka_1w": kafka2_vs_kafka1,
            "kafka_2w_over_embedded": kafka2_vs_embedded,
            "target_kafka_over_embedded": 0.7,
            "target_met": kafka1_vs_embedded >= 0.7,
        },
        "runs": per_run,
        "wall_secs": elapsed,
    });
    std::fs::write(&args.kafka_out, serde_json::to_string_pretty(&report)?)?;
    println!("report written to {}", args.kafka_out.display());
    Ok(())
}

/// The median of each figure over the runs of one configuration (peak RSS:
/// the largest).
fn median(runs: &[KafkaOutcome]) -> KafkaOutcome {
    let outcomes: Vec<Outcome> = runs.iter().map(|r| r.outcome.clone()).collect();
    let med =
        |f: &dyn Fn(&KafkaOutcome) -> f64| percentile(&runs.iter().map(f).collect::<Vec<_>>(), 0.5);
    let broker: Vec<f64> = runs.iter().filter_map(|r| r.broker_cpu_secs).collect();
    let join: Vec<f64> = runs.iter().filter_map(|r| r.group_join_secs).collect();
    let workers: Vec<f64> = runs.iter().filter_map(|r| r.workers_cpu_secs).collect();
    KafkaOutcome {
        outcome: median_outcome(&outcomes),
        processes: runs[0].processes,
        ferry_cpu_secs: med(&|r| r.ferry_cpu_secs),
        workers_cpu_secs: (!workers.is_empty()).then(|| percentile(&workers, 0.5)),
        broker_cpu_secs: (!broker.is_empty()).then(|| percentile(&broker, 0.5)),
        walsender_cpu_secs: med(&|r| r.walsender_cpu_secs),
        target_backends_cpu_secs: med(&|r| r.target_backends_cpu_secs),
        group_join_secs: (!join.is_empty()).then(|| percentile(&join, 0.5)),
        revocations_in_window: runs.iter().map(|r| r.revocations_in_window).sum(),
        fingerprint_checks: runs.iter().map(|r| r.fingerprint_checks).sum(),
        lag_max_ms: med(&|r| r.lag_max_ms),
    }
}

/// One run of one configuration, on fresh clusters (and a fresh broker).
async fn bench_one(
    args: &Args,
    setup: Setup,
    run: usize,
    tansu: &Path,
) -> anyhow::Result<KafkaOutcome> {
    let dir = tempfile::tempdir()?;
    let mut fleet = Fleet {
        procs: Vec::new(),
        broker: None,
    };
    if let Setup::Kafka { .. } = setup {
        let broker = Broker::start(tansu, dir.path()).await?;
        eprintln!("  broker on port {}", broker.port);
        fleet.broker = Some(broker);
    }
    let source = LocalCluster::start(ClusterOptions::default()).await?;
    let target = LocalCluster::start(ClusterOptions::default()).await?;
    let src = prepare_source(&source, args.accounts).await?;
    target.create_database("bench").await?;
    let config = dir.path().join("ferry.toml");
    let prefix = format!("bench-{}-{}", run + 1, setup.key().replace('_', "-"));
    std::fs::write(
        &config,
        config_toml(
            &source,
            &target,
            setup,
            fleet.broker.as_ref(),
            &prefix,
            args.kafka_linger_ms,
            args.kafka_compression.as_deref(),
        ),
    )?;

    // Workers first, and their group settled: the rebalances of joining
    // are not part of the timed window.
    let mut group_join_secs = None;
    let source_role = match setup {
        Setup::Embedded => "all",
        Setup::Kafka { workers, .. } => {
            let t0 = Instant::now();
            // One worker first, until it holds every partition (it has
            // created Ferry's tables in the target), then the others and
            // their rebalance: a join that goes the same way every run.
            // (Workers starting together on an empty target once raced in
            // the catalogs; the sink now takes an advisory lock for DDL.)
            for i in 0..workers {
                let log = dir.path().join(format!("worker-{}.log", i + 1));
                fleet.spawn(&format!("worker {}", i + 1), &config, "worker", &log)?;
                if i == 0 || i + 1 == workers {
                    let logs = fleet.worker_logs();
                    guarded(
                        &mut fleet,
                        wait_group(
                            &logs,
                            setup.partitions() * TABLES.len(),
                            Duration::from_secs(120),
                        ),
                    )
                    .await?;
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            eprintln!("  {workers} worker(s) joined, partitions assigned, in {secs:.1}s");
            group_join_secs = Some(secs);
            "source"
        }
    };

    // First life of the source: slot, snapshot of the seed.
    let first_log = dir.path().join("source-1.log");
    fleet.spawn("source (snapshot)", &config, source_role, &first_log)?;
    let lsn0 = current_lsn(&src).await?;
    let dst = target.connect("bench").await?;
    guarded(&mut fleet, wait_rows(&dst, "accounts", args.accounts)).await?;
    guarded(
        &mut fleet,
        wait_confirmed(&src, "ferry", lsn0, Duration::from_secs(300)),
    )
    .await?;
    // Every table's snapshot recorded (in Kafka, or in the target) before
    // the stop: the second life must not copy anything again.
    guarded(&mut fleet, wait_snapshots_recorded(&dst)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut first = fleet.procs.pop().context("the source process")?;
    first.process.stop();
    drop(first);
    wait_slot_inactive(&src, "ferry").await?;

    let (changes, _end_lsn) = if args.kafka_key_changes || args.kafka_truncate_every.is_some() {
        write_backlog_with_barriers(&src, args).await?
    } else {
        write_backlog(&src, args).await?
    };
    let expected = fingerprint(&src, FINGERPRINT_SQL).await?;
    let expected_last: Option<i64> = src
        .query_one("SELECT max(id) FROM transfers", &[])
        .await?
        .get(0);

    // The group must still be the one that settled before the backlog.
    let logs = fleet.worker_logs();
    if !logs.is_empty() {
        guarded(
            &mut fleet,
            wait_group(
                &logs,
                setup.partitions() * TABLES.len(),
                Duration::from_secs(60),
            ),
        )
        .await?;
    }
    let revoked_before = revocations(&logs);
    let cpu_before = fleet.ferry_cpu(None);
    let workers_before = fleet.ferry_cpu(Some("worker"));
    let broker_before = fleet.broker.as_ref().and_then(Broker::cpu_seconds);
    // The sink's sessions are open (workers) or not yet (embedded); the
    // walsender starts with the source below.
    let target_before = backend_cpus(&dst, "client backend").await?;

    let started = Instant::now();
    let second_log = dir.path().join("source-2.log");
    fleet.spawn("source", &config, source_role, &second_log)?;
    let wait = wait_fingerprint(
        &dst,
        FINGERPRINT_SQL,
        &expected,
        || gate(&dst, expected_last),
        Duration::from_secs(1800),
    );
    let (done, checks) = guarded(&mut fleet, wait).await?;
    let seconds = done.duration_since(started).as_secs_f64();
    let ferry_cpu_secs = fleet.ferry_cpu(None) - cpu_before;
    let workers_cpu_secs = match setup {
        Setup::Embedded => None,
        Setup::Kafka { .. } => Some(fleet.ferry_cpu(Some("worker")) - workers_before),
    };
    let broker_cpu_secs = match (
        broker_before,
        fleet.broker.as_ref().and_then(Broker::cpu_seconds),
    ) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let target_backends_cpu_secs =
        backends_cpu_since(&dst, "client backend", &target_before).await?;
    let walsender_cpu_secs = backends_cpu(&src, "walsender").await?;
    let revocations_in_window = revocations(&logs) - revoked_before;
    eprintln!(
        "  backlog applied in {seconds:.1}s ({:.0} rows/s; CPU s: ferry {ferry_cpu_secs:.1} (workers {}), broker {}, walsender {walsender_cpu_secs:.1}, target backends {target_backends_cpu_secs:.1}; {checks} fingerprint checks, {revocations_in_window} revocations)",
        changes as f64 / seconds,
        workers_cpu_secs.map_or("-".into(), |s| format!("{s:.1}")),
        broker_cpu_secs.map_or("-".into(), |s| format!("{s:.1}")),
    );
    check_no_resnapshot(&second_log, "source", TABLES.len())?;

    let lags = guarded(&mut fleet, measure_lag(&source, &target, args)).await?;
    let peak_rss_mb = fleet.peak_rss_mb();
    let lag_max_ms = lags.iter().copied().fold(f64::NAN, f64::max);
    eprintln!(
        "  steady load: {} probes, lag p50 {:.1} ms, p99 {:.1} ms, max {lag_max_ms:.1} ms",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
    );
    // The last run's logs beside the report, for looking into a result.
    // Logs are large and not committed: under target/, not beside the
    // report (docs/bench/, committed with the figures it backs).
    {
        let logs_dir = std::path::Path::new("target/bench-logs/kafka-logs");
        std::fs::create_dir_all(logs_dir)?;
        for name in [
            "worker-1.log",
            "worker-2.log",
            "source-1.log",
            "source-2.log",
        ] {
            let from = dir.path().join(name);
            if from.exists() {
                let _ = std::fs::copy(&from, logs_dir.join(format!("{}-{name}", setup.key())));
            }
        }
        if let Some(b) = &fleet.broker {
            let _ = std::fs::copy(&b.log, logs_dir.join(format!("{}-broker.log", setup.key())));
        }
    }
    // Ferry and the broker stop before the clusters.
    drop(fleet);
    Ok(KafkaOutcome {
        outcome: Outcome::of_run(&setup.name(), changes, seconds, &lags, peak_rss_mb),
        processes: setup.processes(),
        ferry_cpu_secs,
        workers_cpu_secs,
        broker_cpu_secs,
        walsender_cpu_secs,
        target_backends_cpu_secs,
        group_join_secs,
        revocations_in_window,
        fingerprint_checks: checks,
        lag_max_ms,
    })
}

/// The foundation backlog, plus what makes barriers on several partitions:
/// with `--kafka-key-changes`, per step a tenth of the step's surviving
/// transfers move to a negative id (a key change) and the previous step's
/// move back; with `--kafka-truncate-every n`, a TRUNCATE of `probe` every
/// n steps. The fingerprint (counts and id sums) covers both.
async fn write_backlog_with_barriers(c: &Client, args: &Args) -> anyhow::Result<(u64, u64)> {
    let started = Instant::now();
    let (mut changes, mut step, mut truncates) = (0u64, 0i64, 0u64);
    let rows = args.rows_per_txn;
    while changes < args.changes {
        changes += ferry_testkit::workload::mixed_step(c, step, rows, args.accounts).await?;
        if args.kafka_key_changes {
            // The step deleted ids first..first+rows/2-1; the rest remain.
            let first = step * rows + 1 + rows / 2;
            let last = first + (rows / 10).max(1) - 1;
            changes += c
                .execute(
                    "UPDATE transfers SET id = -id WHERE id BETWEEN $1 AND $2",
                    &[&first, &last],
                )
                .await?;
            if step > 0 {
                let (pf, pl) = (first - rows, last - rows);
                changes += c
                    .execute(
                        "UPDATE transfers SET id = -id WHERE id BETWEEN $1 AND $2",
                        &[&-pl, &-pf],
                    )
                    .await?;
            }
        }
        if let Some(n) = args.kafka_truncate_every {
            if n > 0 && step % n == n - 1 {
                c.execute("TRUNCATE probe", &[]).await?;
                truncates += 1;
                changes += 1;
            }
        }
        step += 1;
    }
    c.execute("INSERT INTO probe VALUES (-1, now())", &[])
        .await?;
    let lsn = current_lsn(c).await?;
    eprintln!(
        "  backlog: {changes} changes ({truncates} truncates) written in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok((changes, lsn))
}

/// `producer = { … }` for the options given, or nothing (Ferry's defaults).
fn producer_toml(linger_ms: Option<u32>, compression: Option<&str>) -> String {
    let mut props = Vec::new();
    if let Some(l) = linger_ms {
        props.push(format!("\"linger.ms\" = \"{l}\""));
    }
    if let Some(c) = compression {
        props.push(format!("\"compression.type\" = \"{c}\""));
    }
    if props.is_empty() {
        String::new()
    } else {
        format!("producer = {{ {} }}\n", props.join(", "))
    }
}

fn config_toml(
    source: &LocalCluster,
    target: &LocalCluster,
    setup: Setup,
    broker: Option<&Broker>,
    prefix: &str,
    linger_ms: Option<u32>,
    compression: Option<&str>,
) -> String {
    let tables = TABLES
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let (bus, kafka) = match (setup, broker) {
        (Setup::Kafka { .. }, Some(b)) => (
            "kafka",
            format!(
                r#"
[kafka]
brokers = "127.0.0.1:{port}"
topic_prefix = "{prefix}"
partitions = {partitions}
group_id = "{prefix}"
# librdkafka's defaults make a group join take ~20 s.
consumer = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
{producer}"#,
                port = b.port,
                partitions = setup.partitions(),
                producer = producer_toml(linger_ms, compression),
            ),
        ),
        _ => ("embedded", String::new()),
    };
    format!(
        r#"
[pipeline]
name = "bench"
bus = "{bus}"
batch_size = 10000

[source]
kind = "postgres"
url = "{}"
tables = [{tables}]
status_interval_ms = 100

[sink]
kind = "postgres"
url = "{}"
{kafka}"#,
        source.url("bench"),
        target.url("bench")
    )
}

/// The ferry processes of a run, and its broker. Dropping it kills them
/// all (ferry first).
struct Fleet {
    procs: Vec<Proc>,
    broker: Option<Broker>,
}

struct Proc {
    name: String,
    role: String,
    log: PathBuf,
    process: FerryProcess,
}

impl Fleet {
    fn spawn(&mut self, name: &str, config: &Path, role: &str, log: &Path) -> anyhow::Result<()> {
        let out = std::fs::File::create(log)?;
        let nice = std::env::var("FERRY_BENCH_SOURCE_NICE")
            .ok()
            .filter(|_| role == "source");
        let mut cmd = match &nice {
            Some(n) => {
                let mut c = Command::new("nice");
                c.args(["-n", n]).arg(ferry_exe()?);
                c
            }
            None => Command::new(ferry_exe()?),
        };
        let child = cmd
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .args(["--role", role])
            // The group check reads the workers' info lines;
            // FERRY_BENCH_LOG (a filter, e.g. "info,ferry_pipeline=debug")
            // makes them more verbose.
            .env(
                "RUST_LOG",
                std::env::var("FERRY_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawn ferry")?;
        self.procs.push(Proc {
            name: name.into(),
            role: role.into(),
            log: log.to_path_buf(),
            process: FerryProcess(child),
        });
        Ok(())
    }

    fn worker_logs(&self) -> Vec<PathBuf> {
        self.procs
            .iter()
            .filter(|p| p.role == "worker")
            .map(|p| p.log.clone())
            .collect()
    }

    /// CPU seconds of the ferry processes (of one role, or all).
    fn ferry_cpu(&self, role: Option<&str>) -> f64 {
        self.procs
            .iter()
            .filter(|p| role.is_none_or(|r| p.role == r))
            .filter_map(|p| cpu_seconds(p.process.0.id()))
            .sum()
    }

    /// The sum of the ferry processes' peak RSS.
    fn peak_rss_mb(&self) -> Option<f64> {
        let each: Option<Vec<f64>> = self.procs.iter().map(|p| p.process.peak_rss_mb()).collect();
        each.map(|v| v.iter().sum())
    }
}

impl Watched for Fleet {
    /// An error naming the first process that exited, with its log.
    fn check(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.process.0.try_wait() {
                bail!(
                    "ferry ({}) exited with {status}:\n{}",
                    p.name,
                    tail(&p.log, 30)
                );
            }
        }
        if let Some(b) = &mut self.broker {
            if let Ok(Some(status)) = b.child.try_wait() {
                bail!("the broker exited with {status}:\n{}", tail(&b.log, 30));
            }
        }
        Ok(())
    }

    /// The last lines of every log, for an error.
    fn tails(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            s.push_str(&format!("--- ferry ({}):\n{}\n", p.name, tail(&p.log, 15)));
        }
        if let Some(b) = &self.broker {
            s.push_str(&format!("--- broker:\n{}\n", tail(&b.log, 15)));
        }
        s
    }
}

/// The last `n` lines of a log file.
pub(super) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// CPU seconds (user + system) process `pid` has used.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // utime and stime: the 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds (user + system) of the cluster's backends of one
/// `backend_type`, the asking session left out.
pub(super) async fn backends_cpu(c: &Client, backend_type: &str) -> anyhow::Result<f64> {
    Ok(backend_cpus(c, backend_type).await?.values().sum())
}

/// CPU seconds (user + system) of each of the cluster's backends of one
/// `backend_type`, by pid, the asking session left out.
async fn backend_cpus(c: &Client, backend_type: &str) -> anyhow::Result<HashMap<i32, f64>> {
    let rows = c
        .query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = $1 AND pid <> pg_backend_pid()",
            &[&backend_type],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let pid: i32 = r.get(0);
            Some((pid, cpu_seconds(pid as u32)?))
        })
        .collect())
}

/// CPU seconds the backends alive now used since `before` was taken (a
/// backend that started since counts whole).
async fn backends_cpu_since(
    c: &Client,
    backend_type: &str,
    before: &HashMap<i32, f64>,
) -> anyhow::Result<f64> {
    Ok(backend_cpus(c, backend_type)
        .await?
        .iter()
        .map(|(pid, now)| now - before.get(pid).copied().unwrap_or(0.0))
        .sum())
}

/// The JSON log lines of a ferry process.
pub(super) fn log_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

const ASSIGNED: &str = "partitions assigned; starting at the sink's progress";
const REVOKED: &str = "partitions revoked";

/// Partitions a worker owns per its log: those of its last assignment,
/// unless a revocation came after it (librdkafka's default, eager
/// protocol: each rebalance revokes everything, then assigns afresh).
fn owned_partitions(path: &Path) -> Option<usize> {
    let mut owned = None;
    for e in log_events(path) {
        match e["message"].as_str() {
            Some(ASSIGNED) => {
                let list = e["partitions"].as_str().unwrap_or("");
                owned = Some(list.matches("(\"").count());
            }
            Some(REVOKED) => owned = None,
            _ => {}
        }
    }
    owned
}

/// Revocations logged by the workers so far.
fn revocations(logs: &[PathBuf]) -> usize {
    logs.iter()
        .map(|l| {
            log_events(l)
                .iter()
                .filter(|e| e["message"].as_str() == Some(REVOKED))
                .count()
        })
        .sum()
}

/// Waits until every worker holds an assignment and together they own all
/// `partitions`: the group's rebalances are over.
async fn wait_group(logs: &[PathBuf], partitions: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let owned: Vec<Option<usize>> = logs.iter().map(|l| owned_partitions(l)).collect();
        let settled = owned.iter().all(|o| o.is_some_and(|n| n > 0))
            && owned.iter().map(|o| o.unwrap_or(0)).sum::<usize>() == partitions;
        if settled {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the workers' group did not settle in {timeout:?} (partitions owned: {owned:?}, expected {partitions} in all)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the target records a completed snapshot of every table.
pub(super) async fn wait_snapshots_recorded(dst: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: i64 = dst
            .query_one(
                "SELECT count(*) FROM ferry_snapshot WHERE pipeline = 'bench'",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n >= TABLES.len() as i64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the snapshots of the seed were not recorded in the target ({n} of {})",
                TABLES.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gate of [`wait_fingerprint`]: the backlog's last transfer (`None`:
/// no transfer) and the marker row are in the target.
async fn gate(dst: &Client, last_transfer: Option<i64>) -> bool {
    match dst.query_one(GATE_SQL, &[]).await {
        Ok(r) => r.get::<_, Option<i64>>(0) == last_transfer && r.get::<_, bool>(1),
        Err(_) => false,
    }
}

/// The `tansu` to run: `FERRY_TANSU`, else `target/kafka-venv/bin/tansu`
/// (tests/run.sh installs it there).
fn tansu_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_TANSU") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("FERRY_TANSU={} is not a file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    // target/release/ferry-bench -> target/kafka-venv/bin/tansu
    let mut candidates = Vec::new();
    if let Some(target) = exe.parent().and_then(Path::parent) {
        candidates.push(target.join("kafka-venv/bin/tansu"));
    }
    candidates.push(PathBuf::from("target/kafka-venv/bin/tansu"));
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "the Kafka-protocol broker tansu is missing: run tests/run.sh (it installs it into target/kafka-venv) or set FERRY_TANSU"
        )
    })
}

/// A `tansu broker` with memory storage on a free port of 127.0.0.1.
/// Killed on drop.
struct Broker {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Broker {
    async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Broker> {
        // The free port can be taken between the probe and the broker's
        // bind: then try another.
        let mut last = None;
        for attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let log = dir.join(format!("broker-{attempt}.log"));
            match Broker::launch(bin, dir, port, &log).await {
                Ok(b) => return Ok(b),
                Err(Launch::AddrInUse(e)) => last = Some(e),
                Err(Launch::Failed(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no port")))
    }

    async fn launch(bin: &Path, dir: &Path, port: u16, log: &Path) -> Result<Broker, Launch> {
        let failed = |e: anyhow::Error| Launch::Failed(e);
        let out = std::fs::File::create(log)
            .context("broker log")
            .map_err(failed)?;
        let err = out.try_clone().context("broker log").map_err(failed)?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .arg("broker")
            .args(["--cluster-id", "bench"])
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            // A schema registry would validate (and refuse) Ferry's records.
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            // FERRY_TANSU_LOG (e.g. "debug") makes the broker's log verbose.
            .env(
                "RUST_LOG",
                std::env::var("FERRY_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))
            .map_err(failed)?;
        let mut broker = Broker {
            child,
            port,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            // tansu logs the failed bind, then exits.
            if text.contains("AddrInUse") || text.contains("Address in use") {
                return Err(Launch::AddrInUse(anyhow::anyhow!(
                    "port {port} taken:\n{}",
                    tail(log, 20)
                )));
            }
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(Launch::Failed(anyhow::anyhow!(
                    "{} exited with {status} before it was ready:\n{}",
                    bin.display(),
                    tail(log, 30)
                )));
            }
            // "ready in" comes after the bind: the port is the broker's.
            if text.contains("ready in")
                && tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            {
                return Ok(broker);
            }
            if Instant::now() > deadline {
                let _ = broker.child.kill();
                return Err(Launch::Failed(anyhow::anyhow!(
                    "the broker was not ready in 30 s:\n{}",
                    tail(log, 30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.child.id())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Memory storage: nothing to flush.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a broker launch failed: a port taken meanwhile is worth another try.
enum Launch {
    AddrInUse(anyhow::Error),
    Failed(anyhow::Error),
}
