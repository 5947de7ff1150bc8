//! `ferry-bench --mapping`: Ferry mirroring the foundation workload's
//! tables as they are against Ferry writing them through a realistic
//! mapping file (docs/mappings.md), same seed, same backlog, embedded bus,
//! the two alternating run by run (fresh clusters each run).
//!
//! The mapping: `public.accounts` → `public.accounts_v2` (uuid keys from a
//! `uuid_v5` id map, renamed columns, the balance rounded to cents, a field
//! of the `meta` jsonb as an integer column and the rest of it in a jsonb
//! column, the enum as text) and `public.transfers` → `public.transfers_v2`
//! (uuid keys from a `uuid_v7` id map, both account references through the
//! accounts' id map, the amount as exact numeric of the source's precision
//! and scale, a constant column). `public.probe` is mirrored in both modes
//! (the backlog's marker and the lag probes). The target tables are created
//! before Ferry starts; `ferry mapping check` must pass before the first
//! mapped run.
//!
//! Throughput: the seed is snapshotted, Ferry is stopped while the backlog
//! is written, and the clock runs from Ferry's restart until the target
//! matches a fingerprint of the source: per table the row count and sums of
//! the columns the backlog changes (on the mapped side over the renamed
//! columns; keys are uuids there, so they are only counted). A cheap gate
//! (the backlog's last transfer and the marker row are in the target) is
//! polled first, as in `--kafka`. Then the steady load measures the lag,
//! the fingerprint must match again, and the run fails on any row in
//! `ferry_dlq` or any mapped transfer whose account reference does not
//! resolve to an `accounts_v2` row.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use tokio_postgres::Client;

use super::completion::{check_no_resnapshot, fingerprint, guarded, wait_fingerprint, Watched};
use super::kafka::{backends_cpu, log_events, tail, wait_snapshots_recorded};
use super::{
    current_lsn, ferry_exe, machine, measure_lag, median_outcome, percentile, prepare_source,
    utc_date_today, wait_confirmed, wait_rows, wait_slot_inactive, write_backlog, Args,
    FerryProcess, Outcome,
};

/// The pipeline's source tables.
const TABLES: [&str; 3] = ["public.accounts", "public.transfers", "public.probe"];

/// The mapping file of the mapped runs (written beside the configuration).
const MAPPINGS_TOML: &str = r#"# ferry-bench --mapping: the foundation workload into tables designed
# for it (created by the bench before Ferry starts).

# Accounts get derived ids: UUIDv5(namespace, legacy id), the same in
# every run and environment.
[id_maps.accounts]
kind = "uuid_v5"
namespace_uuid = "6f1c8f0e-2b1d-4c1e-9a5e-3d2f1b0c4a77"

# Transfers get a new UUIDv7 each, stored in ferry_id_map.
[id_maps.transfers]
kind = "uuid_v7"

# accounts (id bigint, owner text, balance numeric(38,10), tags text[],
#           meta jsonb {tier, note}, mood enum, updated_at timestamptz)
[[tables]]
source = "public.accounts"
target = "public.accounts_v2"
# meta.note (what no column takes) lands here as {"meta": {"note": ...}}.
rest = "extra"

[tables.columns]
id          = { from = "id", id_map = "accounts" }
owner_name  = "owner"
# numeric(38,10) into numeric(20,2): rounding to cents is asked for here
# (without `round` every balance would be parked: needs_rounding).
balance_eur = { from = "balance", round = "half_up" }
tags        = "tags"
tier        = "meta.tier"
status      = "mood"
modified_at = "updated_at"
# migrated_at: no rule; the target's default applies on insert.

# transfers (id bigint, from_id bigint, to_id bigint,
#            amount numeric(38,10), note text, created_at timestamptz)
[[tables]]
source = "public.transfers"
target = "public.transfers_v2"

[tables.columns]
id           = { from = "id", id_map = "transfers" }
# References through the accounts' id map (allocated ahead if the account
# has not arrived; uuid_v5 ids are derived anyway).
from_account = { from = "from_id", id_map = "accounts" }
to_account   = { from = "to_id", id_map = "accounts" }
amount       = "amount"
note         = "note"
created_at   = "created_at"
currency     = { default = "EUR" }
"#;

/// The target tables of the mapping, created before Ferry starts.
const TARGET_SQL: &str = "
CREATE TABLE public.accounts_v2 (
    id           uuid PRIMARY KEY,
    owner_name   text NOT NULL,
    balance_eur  numeric(20, 2) NOT NULL,
    tags         text[],
    tier         integer,
    status       text,
    modified_at  timestamptz NOT NULL,
    extra        jsonb,
    migrated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.transfers_v2 (
    id            uuid PRIMARY KEY,
    from_account  uuid NOT NULL,
    to_account    uuid NOT NULL,
    amount        numeric(38, 10) NOT NULL,
    note          text,
    created_at    timestamptz NOT NULL,
    currency      text NOT NULL
);";

/// The source's fingerprint, as the unmapped target must show it.
const FINGERPRINT_PLAIN: &str = "SELECT
  (SELECT count(*)::text || ' ' || coalesce(sum(balance)::text, '-') || ' '
          || coalesce(sum(extract(epoch FROM updated_at))::text, '-') FROM accounts)
  || ' | ' ||
  (SELECT count(*)::text || ' ' || coalesce(sum(amount)::text, '-') FROM transfers)
  || ' | ' ||
  (SELECT count(*)::text || ' ' || coalesce(sum(id)::text, '-') FROM probe)";

/// The source's fingerprint, as the mapped target must show it (the
/// balance rounded like the mapping rounds it: half away from zero, which
/// is PostgreSQL's `round` for numeric).
const FINGERPRINT_SOURCE_MAPPED: &str = "SELECT
  (SELECT count(*)::text || ' ' || coalesce(sum(round(balance, 2))::text, '-') || ' '
          || coalesce(sum(extract(epoch FROM updated_at))::text, '-') FROM accounts)
  || ' | ' ||
  (SELECT count(*)::text || ' ' || coalesce(sum(amount)::text, '-') FROM transfers)
  || ' | ' ||
  (SELECT count(*)::text || ' ' || coalesce(sum(id)::text, '-') FROM probe)";

/// The same aggregates over the mapped target's tables.
const FINGERPRINT_TARGET_MAPPED: &str = "SELECT
  (SELECT count(*)::text || ' ' || coalesce(sum(balance_eur)::text, '-') || ' '
          || coalesce(sum(extract(epoch FROM modified_at))::text, '-') FROM accounts_v2)
  || ' | ' ||
  (SELECT count(*)::text || ' ' || coalesce(sum(amount)::text, '-') FROM transfers_v2)
  || ' | ' ||
  (SELECT count(*)::text || ' ' || coalesce(sum(id)::text, '-') FROM probe)";

/// The gate: the backlog's last transfer (its legacy id as text, $1) and
/// the marker row are in the target. Two index lookups (three mapped).
const GATE_PLAIN: &str = "SELECT EXISTS (SELECT 1 FROM transfers WHERE id = $1::text::bigint)
        AND EXISTS (SELECT 1 FROM probe WHERE id = -1)";
const GATE_MAPPED: &str =
    "SELECT EXISTS (SELECT 1 FROM ferry_id_map m JOIN transfers_v2 t ON t.id = m.new_id::uuid
                      WHERE m.namespace = 'transfers' AND m.legacy_id = $1)
        AND EXISTS (SELECT 1 FROM probe WHERE id = -1)";

/// Mapped transfers whose account references do not resolve.
const DANGLING_SQL: &str = "SELECT count(*) FROM transfers_v2 t
  WHERE NOT EXISTS (SELECT 1 FROM accounts_v2 a WHERE a.id = t.from_account)
     OR NOT EXISTS (SELECT 1 FROM accounts_v2 a WHERE a.id = t.to_account)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unmapped,
    Mapped,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Unmapped, Mode::Mapped];

    fn name(self) -> &'static str {
        match self {
            Mode::Unmapped => "no mapping (tables mirrored)",
            Mode::Mapped => "mapping (accounts_v2, transfers_v2)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mode::Unmapped => "unmapped",
            Mode::Mapped => "mapped",
        }
    }

    fn source_fingerprint(self) -> &'static str {
        match self {
            Mode::Unmapped => FINGERPRINT_PLAIN,
            Mode::Mapped => FINGERPRINT_SOURCE_MAPPED,
        }
    }

    fn target_fingerprint(self) -> &'static str {
        match self {
            Mode::Unmapped => FINGERPRINT_PLAIN,
            Mode::Mapped => FINGERPRINT_TARGET_MAPPED,
        }
    }

    fn gate(self) -> &'static str {
        match self {
            Mode::Unmapped => GATE_PLAIN,
            Mode::Mapped => GATE_MAPPED,
        }
    }

    /// The target table that receives `public.accounts`.
    fn accounts_target(self) -> &'static str {
        match self {
            Mode::Unmapped => "accounts",
            Mode::Mapped => "accounts_v2",
        }
    }
}

/// One run's (or the medians') figures.
#[derive(Debug, Clone, serde::Serialize)]
struct MappingOutcome {
    #[serde(flatten)]
    outcome: Outcome,
    mapped: bool,
    /// CPU seconds (user + system) of the ferry process during the timed
    /// backlog (it starts with the clock).
    ferry_cpu_secs: f64,
    /// CPU seconds of the target's backends serving ferry's connections,
    /// and of the source's walsender, during the timed backlog (both start
    /// with ferry; read from /proc when the fingerprint matched).
    target_backends_cpu_secs: f64,
    walsender_cpu_secs: f64,
    /// Seconds from the first start until the seed's accounts were in the
    /// target (not timed in the figure; polled every 100 ms).
    seed_snapshot_secs: f64,
    /// Full fingerprint comparisons made while waiting.
    fingerprint_checks: usize,
    /// The slowest probe of the steady load.
    lag_max_ms: f64,
    /// Rows of `ferry_dlq` after the run (must be 0).
    dlq_rows: Option<i64>,
    /// Rows of `ferry_id_map` per namespace after the run (mapped only).
    id_map_rows: BTreeMap<String, i64>,
    /// ERROR and WARN lines in ferry's logs (both lives).
    log_errors: usize,
    log_warnings: usize,
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
    // Ctrl-C or SIGTERM drops the benchmark's future, and with it the ferry
    // process and the clusters it holds.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = run_all(args) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; child processes stopped"),
        _ = term.recv() => bail!("terminated; child processes stopped"),
    }
}

async fn run_all(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let runs = args.repeat.max(1);
    let mut all: Vec<Vec<MappingOutcome>> = vec![Vec::new(); Mode::ALL.len()];
    let mut check_output = None;
    for run in 0..runs {
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            eprintln!("run {} of {runs}: {}", run + 1, mode.name());
            let o = bench_one(args, mode, &mut check_output)
                .await
                .with_context(|| format!("{} (run {})", mode.name(), run + 1))?;
            all[i].push(o);
        }
    }
    let medians: Vec<MappingOutcome> = all.iter().map(|r| median(r)).collect();
    let ratio = medians[1].outcome.rows_per_sec / medians[0].outcome.rows_per_sec;
    let cpu_ratio = medians[1].ferry_cpu_secs / medians[0].ferry_cpu_secs;

    println!();
    println!(
        "| configuration | changes | seconds | rows/s | mapped / unmapped | ferry CPU s | target backends CPU s | walsender CPU s | lag p50 (ms) | lag p99 (ms) | peak RSS (MB, max of runs) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, m) in medians.iter().enumerate() {
        let o = &m.outcome;
        println!(
            "| {} | {} | {:.1} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            o.name,
            o.changes,
            o.seconds,
            o.rows_per_sec,
            if i == 0 {
                "1.00x".to_string()
            } else {
                format!("{ratio:.2}x")
            },
            m.ferry_cpu_secs,
            m.target_backends_cpu_secs,
            m.walsender_cpu_secs,
            o.lag_p50_ms,
            o.lag_p99_ms,
            o.peak_rss_mb.map_or("-".to_string(), |m| format!("{m:.1}")),
        );
    }
    println!("\nmapped / unmapped throughput: {ratio:.2}x (ferry CPU: {cpu_ratio:.2}x)");
    for (mode, runs) in Mode::ALL.iter().zip(&all) {
        let rates: Vec<String> = runs
            .iter()
            .map(|o| format!("{:.0}", o.outcome.rows_per_sec))
            .collect();
        let cpu: Vec<String> = runs
            .iter()
            .map(|o| format!("{:.1}", o.ferry_cpu_secs))
            .collect();
        println!(
            "{}: rows/s per run {}; ferry CPU s per run {}",
            mode.name(),
            rates.join(" / "),
            cpu.join(" / ")
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("benchmark wall time: {:.1} min", elapsed / 60.0);

    if let Some(dir) = args.mapping_out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut per_run = serde_json::Map::new();
    for (mode, runs) in Mode::ALL.iter().zip(&all) {
        per_run.insert(mode.key().into(), serde_json::to_value(runs)?);
    }
    let report = serde_json::json!({
        "machine": machine(),
        "date": utc_date_today(),
        "bus": "embedded",
        "args": {
            "changes": args.changes, "rows_per_txn": args.rows_per_txn, "accounts": args.accounts,
            "steady_rate": args.steady_rate, "steady_secs": args.steady_secs, "runs": runs,
        },
        "completion": "target matches the source's fingerprint (per table: count and sums of the changed columns, over the renamed columns when mapped)",
        "mappings_toml": MAPPINGS_TOML,
        "target_sql": TARGET_SQL,
        "mapping_check_output": check_output,
        "results": medians,
        "ratios": {
            "mapped_over_unmapped_rows_per_sec": ratio,
            "mapped_over_unmapped_ferry_cpu": cpu_ratio,
        },
        "runs": per_run,
        "wall_secs": elapsed,
    });
    std::fs::write(&args.mapping_out, serde_json::to_string_pretty(&report)?)?;
    println!("report written to {}", args.mapping_out.display());
    Ok(())
}

/// The median of each figure over the runs of one mode (peak RSS: the
/// largest; counts of problems: the sum).
fn median(runs: &[MappingOutcome]) -> MappingOutcome {
    let outcomes: Vec<Outcome> = runs.iter().map(|r| r.outcome.clone()).collect();
    let med = |f: &dyn Fn(&MappingOutcome) -> f64| {
        percentile(&runs.iter().map(f).collect::<Vec<_>>(), 0.5)
    };
    MappingOutcome {
        outcome: median_outcome(&outcomes),
        mapped: runs[0].mapped,
        ferry_cpu_secs: med(&|r| r.ferry_cpu_secs),
        target_backends_cpu_secs: med(&|r| r.target_backends_cpu_secs),
        walsender_cpu_secs: med(&|r| r.walsender_cpu_secs),
        seed_snapshot_secs: med(&|r| r.seed_snapshot_secs),
        fingerprint_checks: runs.iter().map(|r| r.fingerprint_checks).sum(),
        lag_max_ms: med(&|r| r.lag_max_ms),
        dlq_rows: runs.iter().filter_map(|r| r.dlq_rows).reduce(|a, b| a + b),
        id_map_rows: runs
            .last()
            .map(|r| r.id_map_rows.clone())
            .unwrap_or_default(),
        log_errors: runs.iter().map(|r| r.log_errors).sum(),
        log_warnings: runs.iter().map(|r| r.log_warnings).sum(),
    }
}

fn config_toml(source: &LocalCluster, target: &LocalCluster, mode: Mode) -> String {
    let tables = TABLES
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mappings = match mode {
        Mode::Unmapped => "",
        Mode::Mapped => "mappings = \"mappings.toml\"\n",
    };
    format!(
        r#"
[pipeline]
name = "bench"
batch_size = 10000
{mappings}
[source]
kind = "postgres"
url = "{}"
tables = [{tables}]
status_interval_ms = 100

[sink]
kind = "postgres"
url = "{}"
"#,
        source.url("bench"),
        target.url("bench")
    )
}

/// `ferry run` with JSON logs (for the resume check and the error count).
fn spawn_ferry(config: &Path, log: &Path) -> anyhow::Result<FerryProcess> {
    let out = std::fs::File::create(log)?;
    let child = Command::new(ferry_exe()?)
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("FERRY_BENCH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("spawn ferry")?;
    Ok(FerryProcess(child))
}

/// `ferry mapping check`; an error unless it exits 0. Returns its output.
fn mapping_check(config: &Path) -> anyhow::Result<String> {
    let out = Command::new(ferry_exe()?)
        .args(["mapping", "check", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .context("run ferry mapping check")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "`ferry mapping check --config {}` exited with {}:\n{text}",
            config.display(),
            out.status
        );
    }
    Ok(text)
}

/// One run of one mode, on fresh clusters.
async fn bench_one(
    args: &Args,
    mode: Mode,
    check_output: &mut Option<String>,
) -> anyhow::Result<MappingOutcome> {
    let dir = tempfile::tempdir()?;
    let source = LocalCluster::start(ClusterOptions::default()).await?;
    let target = LocalCluster::start(ClusterOptions::default()).await?;
    let src = prepare_source(&source, args.accounts).await?;
    target.create_database("bench").await?;
    let dst = target.connect("bench").await?;
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, config_toml(&source, &target, mode))?;
    if mode == Mode::Mapped {
        std::fs::write(dir.path().join("mappings.toml"), MAPPINGS_TOML)?;
        dst.batch_execute(TARGET_SQL)
            .await
            .context("create the mapping's target tables")?;
        if check_output.is_none() {
            let text = mapping_check(&config)?;
            eprintln!("  ferry mapping check: exit 0\n{}", indent(&text));
            *check_output = Some(text);
        }
    }

    // First life: slot, snapshot of the seed; then stopped while the
    // backlog is written.
    let first_log = dir.path().join("ferry-1.log");
    let t0 = Instant::now();
    let mut first = spawn_ferry(&config, &first_log)?;
    let lsn0 = current_lsn(&src).await?;
    guarded(
        &mut Watch(&mut first, &first_log),
        wait_rows(&dst, mode.accounts_target(), args.accounts),
    )
    .await?;
    let seed_snapshot_secs = t0.elapsed().as_secs_f64();
    guarded(
        &mut Watch(&mut first, &first_log),
        wait_confirmed(&src, "ferry", lsn0, Duration::from_secs(300)),
    )
    .await?;
    guarded(
        &mut Watch(&mut first, &first_log),
        wait_snapshots_recorded(&dst),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.stop();
    drop(first);
    wait_slot_inactive(&src, "ferry").await?;

    let (changes, _end_lsn) = write_backlog(&src, args).await?;
    let expected = fingerprint(&src, mode.source_fingerprint()).await?;
    let last: Option<i64> = src
        .query_one("SELECT max(id) FROM transfers", &[])
        .await?
        .get(0);
    let last = last.context("the backlog left no transfer")?.to_string();

    let started = Instant::now();
    let second_log = dir.path().join("ferry-2.log");
    let mut ferry = spawn_ferry(&config, &second_log)?;
    let wait = wait_fingerprint(
        &dst,
        mode.target_fingerprint(),
        &expected,
        || gate(&dst, mode, &last),
        Duration::from_secs(1800),
    );
    let (done, checks) = guarded(&mut Watch(&mut ferry, &second_log), wait).await?;
    let seconds = done.duration_since(started).as_secs_f64();
    let ferry_cpu_secs = ferry.cpu_seconds().unwrap_or(f64::NAN);
    let target_backends_cpu_secs = backends_cpu(&dst, "client backend").await?;
    let walsender_cpu_secs = backends_cpu(&src, "walsender").await?;
    eprintln!(
        "  backlog applied in {seconds:.1}s ({:.0} rows/s; CPU s: ferry {ferry_cpu_secs:.1}, target backends {target_backends_cpu_secs:.1}, walsender {walsender_cpu_secs:.1}; {checks} fingerprint checks; seed snapshot {seed_snapshot_secs:.1}s)",
        changes as f64 / seconds,
    );
    check_no_resnapshot(&second_log, "ferry", TABLES.len())?;

    let lags = guarded(
        &mut Watch(&mut ferry, &second_log),
        measure_lag(&source, &target, args),
    )
    .await?;
    let peak_rss_mb = ferry.peak_rss_mb();
    let lag_max_ms = lags.iter().copied().fold(f64::NAN, f64::max);
    eprintln!(
        "  steady load: {} probes, lag p50 {:.1} ms, p99 {:.1} ms, max {lag_max_ms:.1} ms",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
    );

    // After the steady load: the target still matches the source, nothing
    // was parked, every reference resolves.
    let expected = fingerprint(&src, mode.source_fingerprint()).await?;
    let last: Option<i64> = src
        .query_one("SELECT max(id) FROM transfers", &[])
        .await?
        .get(0);
    let last = last.context("no transfer")?.to_string();
    let wait = wait_fingerprint(
        &dst,
        mode.target_fingerprint(),
        &expected,
        || gate(&dst, mode, &last),
        Duration::from_secs(120),
    );
    guarded(&mut Watch(&mut ferry, &second_log), wait)
        .await
        .context("the target does not match the source after the steady load")?;
    let dlq_rows: Option<i64> = dst
        .query_one("SELECT count(*) FROM ferry_dlq", &[])
        .await
        .map(|r| r.get(0))
        .ok();
    let mut id_map_rows = BTreeMap::new();
    if mode == Mode::Mapped {
        match dlq_rows {
            Some(0) => {}
            Some(n) => {
                let sample = dst
                    .query(
                        "SELECT coalesce(error_code, '-') || ': ' || coalesce(error_message, '-')
                           FROM ferry_dlq LIMIT 5",
                        &[],
                    )
                    .await
                    .map(|rows| {
                        rows.iter()
                            .map(|r| r.get::<_, String>(0))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                bail!("{n} row(s) in ferry_dlq after the mapped run, e.g.:\n{sample}");
            }
            None => bail!("ferry_dlq could not be read in the target after the mapped run"),
        }
        let dangling: i64 = dst.query_one(DANGLING_SQL, &[]).await?.get(0);
        if dangling != 0 {
            bail!("{dangling} mapped transfer(s) reference an account that is not in accounts_v2");
        }
        for r in dst
            .query(
                "SELECT namespace, count(*) FROM ferry_id_map GROUP BY namespace ORDER BY 1",
                &[],
            )
            .await?
        {
            id_map_rows.insert(r.get::<_, String>(0), r.get::<_, i64>(1));
        }
        eprintln!("  ferry_dlq: 0 rows; references resolve; ferry_id_map rows: {id_map_rows:?}");
    } else if let Some(n) = dlq_rows.filter(|&n| n != 0) {
        bail!("{n} row(s) in ferry_dlq after the unmapped run");
    }
    let (mut log_errors, mut log_warnings) = (0, 0);
    for log in [&first_log, &second_log] {
        for e in log_events(log) {
            match e["level"].as_str() {
                Some("ERROR") => {
                    log_errors += 1;
                    eprintln!("  ferry logged an error: {e}");
                }
                Some("WARN") => {
                    log_warnings += 1;
                    eprintln!("  ferry logged a warning: {e}");
                }
                _ => {}
            }
        }
    }

    // The last run's logs (and the mapping) beside the report.
    // Logs are large and not committed: under target/, not beside the
    // report (docs/bench/, committed with the figures it backs).
    {
        let logs_dir = std::path::Path::new("target/bench-logs/mapping-logs");
        std::fs::create_dir_all(logs_dir)?;
        for (from, name) in [(&first_log, "ferry-1.log"), (&second_log, "ferry-2.log")] {
            let _ = std::fs::copy(from, logs_dir.join(format!("{}-{name}", mode.key())));
        }
        if mode == Mode::Mapped {
            std::fs::write(logs_dir.join("mappings.toml"), MAPPINGS_TOML)?;
            std::fs::write(logs_dir.join("target.sql"), TARGET_SQL)?;
        }
    }
    // Ferry stops before the clusters.
    drop(ferry);
    Ok(MappingOutcome {
        outcome: Outcome::of_run(mode.name(), changes, seconds, &lags, peak_rss_mb),
        mapped: mode == Mode::Mapped,
        ferry_cpu_secs,
        target_backends_cpu_secs,
        walsender_cpu_secs,
        seed_snapshot_secs,
        fingerprint_checks: checks,
        lag_max_ms,
        dlq_rows,
        id_map_rows,
        log_errors,
        log_warnings,
    })
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one ferry process of a run, and its log, as [`guarded`] watches
/// them.
struct Watch<'a>(&'a mut FerryProcess, &'a Path);

impl Watched for Watch<'_> {
    fn check(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.0 .0.try_wait() {
            bail!("ferry exited with {status}:\n{}", tail(self.1, 30));
        }
        Ok(())
    }

    fn tails(&self) -> String {
        format!("ferry's log (last lines):\n{}", tail(self.1, 30))
    }
}

/// The gate of [`wait_fingerprint`]: the backlog's last transfer and the
/// marker row are in the target.
async fn gate(dst: &Client, mode: Mode, last_transfer: &str) -> bool {
    match dst.query_one(mode.gate(), &[&last_transfer]).await {
        Ok(r) => r.get::<_, Option<bool>>(0).unwrap_or(false),
        Err(_) => false,
    }
}
