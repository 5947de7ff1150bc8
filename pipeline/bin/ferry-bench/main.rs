//! `ferry-bench`: Ferry against PostgreSQL's native logical replication
//! (CREATE SUBSCRIPTION), on the same machine, in the same run.
//!
//! 1. Throughput: a backlog of mixed changes (inserts, updates, deletes in
//!    transactions of `--rows-per-txn` rows) is written while replication is
//!    paused, followed by a marker row; then replication starts and the
//!    clock runs until the marker is visible in the target. Both peers apply
//!    in commit order, so the marker's arrival means the whole backlog is
//!    applied; the same criterion measures both.
//! 2. Lag: a steady load of `--steady-rate` rows/s, with a probe row
//!    inserted every 100 ms and timed until it is visible in the target;
//!    p50/p99 of those times.
//! 3. Ferry's peak RSS (VmHWM of the ferry process).
//!
//! Run `cargo build --release --bins && target/release/ferry-bench`; it
//! prints a Markdown table and writes JSON to `--out`.

mod completion;
mod convex_source;
mod kafka;
mod mapping;
mod mongo;
mod mongo_sink;
mod shapes;
mod snapshot;
mod sqlite;
mod verify;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use ferry_testkit::workload;
use tokio_postgres::Client;

#[derive(Parser)]
#[command(about = "Ferry vs native logical replication, PostgreSQL to PostgreSQL")]
struct Args {
    /// Row changes in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    changes: u64,
    /// Rows per bulk statement (each step makes 2.5x this many changes).
    #[arg(long, default_value_t = 2_000)]
    rows_per_txn: i64,
    /// Accounts seeded before the run.
    #[arg(long, default_value_t = 100_000)]
    accounts: i64,
    /// Rows per second of the steady load for the lag measurement.
    #[arg(long, default_value_t = 5_000)]
    steady_rate: u64,
    /// Seconds of steady load.
    #[arg(long, default_value_t = 20)]
    steady_secs: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "docs/bench/pg_to_pg.json")]
    out: PathBuf,
    /// Only run Ferry (skip the native peer).
    #[arg(long)]
    ferry_only: bool,
    /// Instead of the peers: compare the sink's statement shapes for
    /// applying a batch (unnest upsert vs COPY to staging + merge).
    #[arg(long)]
    shapes: bool,
    /// Instead of the peers: the MongoDB source against the bare driver
    /// (snapshot and change stream), with this many documents.
    #[arg(long)]
    mongo: Option<i64>,
    /// Instead of the peers: the MongoDB sink (PostgreSQL → MongoDB)
    /// against the bare driver's bulk upserts of the same documents,
    /// `--mongo-sink-docs` of them, medians of `--repeat` runs.
    #[arg(long)]
    mongo_sink: bool,
    #[arg(long, default_value_t = 20_000)]
    mongo_sink_docs: i64,
    /// Instead of the peers: the Convex source against a bare HTTP client
    /// paging the same export routes of the Convex test server (snapshot,
    /// delta catch-up, lag), with `--convex-docs` documents; writes
    /// `--convex-out`.
    #[arg(long)]
    convex_source: bool,
    #[arg(long, default_value_t = 20_000)]
    convex_docs: u64,
    #[arg(long, default_value = "docs/bench/convex_source.json")]
    convex_out: PathBuf,
    /// Instead of the peers: Ferry on the embedded bus against Ferry on the
    /// Kafka bus (source + 1 worker, source + 2 workers; topics with 2
    /// partitions) on a local tansu broker, same workload; writes
    /// `--kafka-out`.
    #[arg(long)]
    kafka: bool,
    /// With `--kafka`: run only this configuration (`embedded`, `1`, `2`
    /// or `3` workers, on the first `--kafka-partitions`) and print its
    /// figures, without ratios or report; for profiling one of them.
    #[arg(long, value_parser = ["embedded", "1", "2", "3"])]
    kafka_only: Option<String>,
    /// With `--kafka`: partitions per data topic; several values (`1,3,6`)
    /// run each with every `--kafka-workers` count.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    kafka_partitions: Vec<usize>,
    /// With `--kafka`: worker counts to run (`1,2,3`).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    kafka_workers: Vec<usize>,
    /// With `--kafka`: the backlog also changes primary keys (a tenth of
    /// each step's surviving transfers move to a negative id, and the
    /// previous step's move back): cross-partition barriers on several
    /// partitions.
    #[arg(long)]
    kafka_key_changes: bool,
    /// With `--kafka`: the backlog also truncates the `probe` table every
    /// this many steps (a barrier on every partition of its topic).
    #[arg(long)]
    kafka_truncate_every: Option<i64>,
    /// With `--kafka`: the producer's `linger.ms` (Ferry's default when
    /// not given), to measure the throughput/lag trade.
    #[arg(long)]
    kafka_linger_ms: Option<u32>,
    /// With `--kafka`: the producer's `compression.type` (Ferry's default,
    /// lz4, when not given; `none` to compare).
    #[arg(long, value_parser = ["none", "lz4", "snappy", "gzip"])]
    kafka_compression: Option<String>,
    /// Where the JSON report of `--kafka` goes.
    #[arg(long, default_value = "docs/bench/kafka.json")]
    kafka_out: PathBuf,
    /// Instead of the peers: Ferry without a mapping (tables mirrored)
    /// against Ferry through a realistic mapping file (renamed columns, id
    /// maps, exact decimals), embedded bus, same workload; writes
    /// `--mapping-out`.
    #[arg(long)]
    mapping: bool,
    /// Where the JSON report of `--mapping` goes.
    #[arg(long, default_value = "docs/bench/mapping.json")]
    mapping_out: PathBuf,
    /// Rows per batch for `--shapes`.
    #[arg(long, default_value_t = 5000)]
    shape_rows: i64,
    /// Instead of the peers: the SQLite source's snapshot of a
    /// `--sqlite-rows` file into PostgreSQL next to `sqlite3 .dump | psql`,
    /// and the application's insert rate without and with Ferry's
    /// triggers; writes `--sqlite-out`.
    #[arg(long)]
    sqlite: bool,
    #[arg(long, default_value_t = 1_000_000)]
    sqlite_rows: i64,
    /// Single-row insert transactions per trigger-overhead measurement.
    #[arg(long, default_value_t = 20_000)]
    sqlite_inserts: i64,
    #[arg(long, default_value = "docs/bench/sqlite.json")]
    sqlite_out: PathBuf,
    /// `ferry verify` against `COPY … ORDER BY key | md5sum` of both sides
    /// on one `--verify-rows`-row table; writes `--verify-out`.
    #[arg(long)]
    verify: bool,
    /// Rows of the `--verify` table (1,000,000; 10,000,000 for the
    /// issue's full size on a larger machine).
    #[arg(long, default_value_t = 1_000_000)]
    verify_rows: u64,
    /// Where the JSON report of `--verify` goes.
    #[arg(long, default_value = "docs/bench/verify.json")]
    verify_out: PathBuf,
    /// Instead of the peers: Ferry's initial snapshot of a
    /// `--snapshot-rows`-row, 6-column table against `pg_dump -t | psql`,
    /// with CPU seconds per process; writes `--snapshot-out`.
    #[arg(long)]
    snapshot: bool,
    #[arg(long, default_value_t = 1_000_000)]
    snapshot_rows: u64,
    #[arg(long, default_value = "docs/bench/pg_snapshot.json")]
    snapshot_out: PathBuf,
    /// With `--snapshot`: `perf record` ferry during the first run's
    /// snapshot into this file (`perf report -i FILE`).
    #[arg(long)]
    snapshot_perf: Option<PathBuf>,
    /// Runs per peer (fresh clusters each time, peers alternating); the
    /// table shows medians.
    #[arg(long, visible_alias = "runs", default_value_t = 3)]
    repeat: usize,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Outcome {
    name: String,
    changes: u64,
    seconds: f64,
    rows_per_sec: f64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    lag_probes: usize,
    peak_rss_mb: Option<f64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Err(why) = LocalCluster::binaries_available() {
        bail!("ferry-bench needs PostgreSQL's server binaries: {why}");
    }
    if let Some(docs) = args.mongo {
        return mongo::run(docs, &ferry_exe()?).await;
    }
    if args.mongo_sink {
        return mongo_sink::run(args.mongo_sink_docs, args.repeat, &ferry_exe()?).await;
    }
    if args.convex_source {
        return convex_source::run(args.convex_docs, &args.convex_out, &ferry_exe()?).await;
    }
    if args.kafka {
        return kafka::run(&args).await;
    }
    if args.sqlite {
        return sqlite::run(
            args.sqlite_rows,
            args.sqlite_inserts,
            args.repeat,
            &args.sqlite_out,
            &ferry_exe()?,
        )
        .await;
    }
    if args.mapping {
        return mapping::run(&args).await;
    }
    if args.verify {
        return verify::run(
            args.verify_rows,
            args.repeat,
            &args.verify_out,
            &ferry_exe()?,
        )
        .await;
    }
    if args.snapshot {
        ferry_exe()?;
        return snapshot::run(
            args.snapshot_rows,
            args.repeat,
            &args.snapshot_out,
            args.snapshot_perf.as_deref(),
        )
        .await;
    }
    if args.shapes {
        return shapes::run(args.shape_rows, 2 * args.repeat.max(1) + 1).await;
    }
    let mut native_runs = Vec::new();
    let mut ferry_runs = Vec::new();
    for run in 0..args.repeat.max(1) {
        eprintln!("run {} of {}", run + 1, args.repeat.max(1));
        if !args.ferry_only {
            native_runs.push(
                bench_native(&args)
                    .await
                    .context("native logical replication")?,
            );
        }
        ferry_runs.push(bench_ferry(&args).await.context("ferry")?);
    }
    let mut results = Vec::new();
    if !args.ferry_only {
        results.push(median_outcome(&native_runs));
    }
    results.push(median_outcome(&ferry_runs));

    println!();
    println!(
        "| peer | changes | seconds | rows/s | lag p50 (ms) | lag p99 (ms) | peak RSS (MB, max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {} |",
            r.name,
            r.changes,
            r.seconds,
            r.rows_per_sec,
            r.lag_p50_ms,
            r.lag_p99_ms,
            r.peak_rss_mb.map_or("-".to_string(), |m| format!("{m:.1}"))
        );
    }
    if results.len() == 2 {
        println!(
            "\nferry / native throughput: {:.2}x",
            results[1].rows_per_sec / results[0].rows_per_sec
        );
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let report = serde_json::json!({
        "machine": machine(),
        "date": utc_date_today(),
        "args": {
            "changes": args.changes, "rows_per_txn": args.rows_per_txn, "accounts": args.accounts,
            "steady_rate": args.steady_rate, "steady_secs": args.steady_secs,
        },
        "results": results,
        "runs": { "native": native_runs, "ferry": ferry_runs },
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("report written to {}", args.out.display());
    Ok(())
}

const PROBE_SQL: &str = "CREATE TABLE probe (id bigint PRIMARY KEY, sent_at timestamptz NOT NULL)";

async fn prepare_source(cluster: &LocalCluster, accounts: i64) -> anyhow::Result<Client> {
    cluster.create_database("bench").await?;
    let c = cluster.connect("bench").await?;
    workload::seed(&c, accounts).await?;
    c.batch_execute(PROBE_SQL).await?;
    Ok(c)
}

/// Writes the backlog; returns the changes made and the WAL end after it.
async fn write_backlog(c: &Client, args: &Args) -> anyhow::Result<(u64, u64)> {
    let started = Instant::now();
    let mut changes = 0;
    let mut step = 0;
    while changes < args.changes {
        changes += workload::mixed_step(c, step, args.rows_per_txn, args.accounts).await?;
        step += 1;
    }
    c.execute("INSERT INTO probe VALUES (-1, now())", &[])
        .await?;
    let lsn = current_lsn(c).await?;
    eprintln!(
        "  backlog: {changes} changes written in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok((changes, lsn))
}

async fn current_lsn(c: &Client) -> anyhow::Result<u64> {
    let s: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    ferry_pipeline::event::parse_lsn(&s).context("lsn")
}

async fn confirmed(c: &Client, slot: &str) -> anyhow::Result<u64> {
    let s: Option<String> = c
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .get(0);
    Ok(s.and_then(|s| ferry_pipeline::event::parse_lsn(&s))
        .unwrap_or(0))
}

async fn wait_confirmed(
    c: &Client,
    slot: &str,
    lsn: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if confirmed(c, slot).await? >= lsn {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("slot {slot} did not reach the end of the backlog in {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Steady load plus probes; returns the probe lags in milliseconds.
async fn measure_lag(
    source: &LocalCluster,
    target: &LocalCluster,
    args: &Args,
) -> anyhow::Result<Vec<f64>> {
    let mut load = source.connect("bench").await?;
    let probe_src = source.connect("bench").await?;
    let probe_dst = target.connect("bench").await?;
    let secs = args.steady_secs;
    // 10 transactions a second, each inserting rate/10 transfers.
    let per_txn = (args.steady_rate / 10).max(1) as i64;
    let loader = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut next_id = 50_000_000_000i64;
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            tick.tick().await;
            let tx = load.transaction().await?;
            tx.execute(
                "INSERT INTO transfers (id, from_id, to_id, amount, note)
                 SELECT g, 1, 2, 1.5, 'steady' FROM generate_series($1::bigint, $2::bigint) g",
                &[&next_id, &(next_id + per_txn - 1)],
            )
            .await?;
            tx.commit().await?;
            next_id += per_txn;
        }
        anyhow::Ok(())
    });
    let mut lags = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut id = 0i64;
    while Instant::now() < end {
        id += 1;
        let sent = Instant::now();
        probe_src
            .execute("INSERT INTO probe VALUES ($1, now())", &[&id])
            .await?;
        let seen = loop {
            let n = probe_dst
                .query_opt("SELECT 1 FROM probe WHERE id = $1", &[&id])
                .await;
            if matches!(n, Ok(Some(_))) {
                break Instant::now();
            }
            if sent.elapsed() > Duration::from_secs(30) {
                bail!("probe {id} never arrived");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        lags.push(seen.duration_since(sent).as_secs_f64() * 1000.0);
        let wait = Duration::from_millis(100).saturating_sub(sent.elapsed());
        tokio::time::sleep(wait).await;
    }
    loader.await??;
    Ok(lags)
}

impl Outcome {
    /// One run's figures from its raw measurements.
    fn of_run(
        name: &str,
        changes: u64,
        seconds: f64,
        lags: &[f64],
        peak_rss_mb: Option<f64>,
    ) -> Self {
        Outcome {
            name: name.into(),
            changes,
            seconds,
            rows_per_sec: changes as f64 / seconds,
            lag_p50_ms: percentile(lags, 0.5),
            lag_p99_ms: percentile(lags, 0.99),
            lag_probes: lags.len(),
            peak_rss_mb,
        }
    }
}

/// The median of each figure over several runs.
fn median_outcome(runs: &[Outcome]) -> Outcome {
    let med =
        |f: &dyn Fn(&Outcome) -> f64| percentile(&runs.iter().map(f).collect::<Vec<_>>(), 0.5);
    Outcome {
        name: format!("{} (median of {})", runs[0].name, runs.len()),
        changes: runs[0].changes,
        seconds: med(&|o| o.seconds),
        rows_per_sec: med(&|o| o.rows_per_sec),
        lag_p50_ms: med(&|o| o.lag_p50_ms),
        lag_p99_ms: med(&|o| o.lag_p99_ms),
        lag_probes: runs.iter().map(|o| o.lag_probes).sum(),
        peak_rss_mb: runs
            .iter()
            .filter_map(|o| o.peak_rss_mb)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i]
}

async fn bench_native(args: &Args) -> anyhow::Result<Outcome> {
    eprintln!("native logical replication:");
    let source = LocalCluster::start(ClusterOptions::default()).await?;
    // The launcher waits wal_retrieve_retry_interval (5 s by default) before
    // it restarts an apply worker after ENABLE: not part of the apply rate.
    let target = LocalCluster::start(ClusterOptions {
        extra_settings: vec![("wal_retrieve_retry_interval".into(), "100ms".into())],
        ..ClusterOptions::default()
    })
    .await?;
    let src = prepare_source(&source, args.accounts).await?;
    target.create_database("bench").await?;
    let dst = target.connect("bench").await?;
    dst.batch_execute(workload::SCHEMA_SQL).await?;
    dst.batch_execute(PROBE_SQL).await?;
    src.batch_execute("CREATE PUBLICATION bench FOR TABLE accounts, transfers, probe")
        .await?;
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname=bench",
        source.port()
    );
    // copy_data = true: the subscription copies the seed like Ferry's
    // snapshot does; then it is disabled while the backlog is written.
    dst.batch_execute(&format!(
        "CREATE SUBSCRIPTION bench CONNECTION '{conninfo}' PUBLICATION bench WITH (copy_data = true, slot_name = 'bench')"
    ))
    .await?;
    let lsn0 = current_lsn(&src).await?;
    wait_confirmed(&src, "bench", lsn0, Duration::from_secs(300)).await?;
    wait_rows(&dst, "accounts", args.accounts).await?;
    dst.batch_execute("ALTER SUBSCRIPTION bench DISABLE")
        .await?;
    // Wait until the walsender is gone so the backlog really waits.
    wait_slot_inactive(&src, "bench").await?;
    let (changes, _end_lsn) = write_backlog(&src, args).await?;
    let started = Instant::now();
    dst.batch_execute("ALTER SUBSCRIPTION bench ENABLE").await?;
    let done = wait_marker(&dst, Duration::from_secs(1800)).await?;
    let seconds = done.duration_since(started).as_secs_f64();
    eprintln!("  applied in {seconds:.1}s");
    let lags = measure_lag(&source, &target, args).await?;
    Ok(Outcome::of_run(
        "native (CREATE SUBSCRIPTION)",
        changes,
        seconds,
        &lags,
        None,
    ))
}

/// Waits until the backlog's marker row is in the target.
async fn wait_marker(dst: &Client, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = dst
            .query_opt("SELECT 1 FROM probe WHERE id = -1", &[])
            .await
        {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("the backlog's marker did not arrive in {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_rows(c: &Client, table: &str, n: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let got: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if got >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{table} never reached {n} rows");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_slot_inactive(c: &Client, slot: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active: bool = c
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .get(0);
        if !active {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("slot {slot} stayed active");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `ferry` binary next to this one.
fn ferry_exe() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name("ferry");
    if !p.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --bins`",
            p.display()
        );
    }
    Ok(p)
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

struct FerryProcess(Child);

impl FerryProcess {
    fn spawn(config: &std::path::Path, log: &std::path::Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let child = Command::new(ferry_exe()?)
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self(child))
    }

    /// CPU seconds (user + system) the process has used.
    fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(self.0.id())
    }

    /// Peak resident set size (VmHWM), in MB.
    fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    fn stop(&mut self) {
        // SIGTERM for a clean shutdown, then make sure.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench_ferry(args: &Args) -> anyhow::Result<Outcome> {
    eprintln!("ferry:");
    let source = LocalCluster::start(ClusterOptions::default()).await?;
    let target = LocalCluster::start(ClusterOptions::default()).await?;
    let src = prepare_source(&source, args.accounts).await?;
    target.create_database("bench").await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
name = "bench"
batch_size = 10000

[source]
kind = "postgres"
url = "{}"
tables = ["public.accounts", "public.transfers", "public.probe"]
status_interval_ms = 100

[sink]
kind = "postgres"
url = "{}"
"#,
            source.url("bench"),
            target.url("bench")
        ),
    )?;
    let log = dir.path().join("ferry.log");
    // First run: slot, snapshot of the seed; then stop while the backlog is
    // written.
    let mut ferry = FerryProcess::spawn(&config, &log)?;
    let lsn0 = current_lsn(&src).await?;
    let dst = target.connect("bench").await?;
    wait_rows(&dst, "accounts", args.accounts).await?;
    wait_confirmed(&src, "ferry", lsn0, Duration::from_secs(300)).await?;
    ferry.stop();
    wait_slot_inactive(&src, "ferry").await?;
    let (changes, _end_lsn) = write_backlog(&src, args).await?;
    let started = Instant::now();
    let ferry = FerryProcess::spawn(&config, &log)?;
    let done = wait_marker(&dst, Duration::from_secs(1800)).await;
    if done.is_err() {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    let seconds = done?.duration_since(started).as_secs_f64();
    eprintln!(
        "  applied in {seconds:.1}s (ferry used {:.1} CPU seconds)",
        ferry.cpu_seconds().unwrap_or(f64::NAN)
    );
    let lags = measure_lag(&source, &target, args).await?;
    let rss = ferry.peak_rss_mb();
    if let Some(dir) = args.out.parent() {
        // Keep ferry's log beside the report, for looking into a result.
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::copy(&log, dir.join("ferry.log"));
    }
    drop(ferry);
    Ok(Outcome::of_run(
        "ferry (embedded bus)",
        changes,
        seconds,
        &lags,
        rss,
    ))
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        })
        .unwrap_or_default();
    format!("{cpus} cpus, {model}, MemTotal {mem} kB")
}

/// Today's date in UTC from the system clock, `YYYY-MM-DD` (the report's
/// date).
fn utc_date_today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, m, d) = ferry_pipeline::calendar::civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}
