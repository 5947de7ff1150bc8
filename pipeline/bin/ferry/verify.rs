//! `ferry verify`: proves that every mirrored table in the target holds
//! what its source table holds, at a cost that scales to large tables.
//!
//! How (PostgreSQL source and target, mirrored tables):
//!
//! 1. **Columns.** Every column of both sides takes part, generated columns
//!    included. A column that only one side has is compared as a marker
//!    (`<absent>`) on the other, so a column the target lacks, or has in
//!    addition, makes every row differ instead of being silently ignored.
//! 2. **Chunks over the key order.** The source's key order is cut into
//!    ranges of `--chunk-rows` rows (an index scan with `OFFSET` per
//!    boundary); the first and last ranges are open, so a target row outside
//!    the source's keys still lands in a chunk.
//! 3. **A hash per chunk, computed in PostgreSQL on each side.** Per row:
//!    a 64-bit hash of `ROW(cols…)`; per chunk: `count(*)` and the
//!    *sum* of these 64-bit values (exact: `sum(int8)` accumulates in 128
//!    bits). Why this choice:
//!    - `ROW(…)::text` is the type's own output under fixed session
//!      settings (the snapshot's `SESSION_SETTINGS`), so equal values have
//!      equal text for every type; `jsonb` prints its keys in its canonical
//!      order (key order compares equal, a value that differs does not);
//!      `numeric` prints its scale (one unit in the last place differs).
//!    - The row hash is the cheapest one both servers compute alike:
//!      `hash_record_extended` (per-type hashes, no text), else
//!      `hashtextextended` of the row's text, else md5's first 64 bits
//!      (see [`row_hash`] for what each compares).
//!    - A sum rather than `md5(string_agg(… ORDER BY key))`: a sum does not
//!      depend on row order, so each side reads its range in whatever order
//!      its plan gives (no sort, no per-chunk string of all rows). Changes
//!      only cancel out if the 64-bit sums of different row sets collide:
//!      about 2^-64 per chunk for any non-adversarial data.
//! 4. **Down to rows, only where a chunk differs.** A differing chunk
//!    (count or sum) is read again as (key, row md5) pairs from both sides
//!    and matched by key. The chunk size is the bisection's floor: at the
//!    default 10,000 rows that is ~0.5 MB per side, and splitting the range
//!    further would cost more round trips than it saves.
//! 5. **Differences in flight.** While replication runs, a row read from
//!    the source may not have reached the target yet. Each differing row is
//!    read again: source first, then the source's WAL position `L`; then the
//!    target once its checkpoint (`ferry_checkpoint.commit_lsn`) has passed
//!    `L` or the round's delay has elapsed (0.25 s, doubling, within
//!    `--settle`: on the Kafka bus or with the pipeline stopped the
//!    checkpoint does not tell); then the source again. A target row equal
//!    to either source read matched the source at some moment and is not
//!    drift. Only differences that survive every round are reported.
//! 6. **Dead letters.** A differing row whose key has an unresolved record
//!    in `ferry_dlq` (not superseded) is counted as dead-lettered: the
//!    operator already knows about it (`ferry dlq`), it is not drift.
//!
//! Every error — a database unreachable, a query failed, a table missing on
//! either side — is reported and makes the run exit 4: an error is never a
//! pass. Each table's result is recorded in `ferry_verify_runs` in the
//! target (for `ferry cutover check`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_pgconn::PgConnInfo;
use ferry_pipeline::config::{Config, SinkConfig, SourceConfig};
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{quote_ident, quote_literal, ChangeEvent, Datum, TableId};
use ferry_pipeline::transform::{Output, Transformer};
use ferry_pipeline::value::Value;
use ferry_postgres_sink::id_map;
use ferry_postgres_sink::literal::to_pg_text;
use ferry_postgres_source::pg_err;
use ferry_postgres_source::snapshot::SESSION_SETTINGS;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::exit;

/// `ferry verify`
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct VerifyArgs {
    #[arg(long, short)]
    pub(crate) config: PathBuf,
    /// Print the report as JSON (one object) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print the first N differing rows of each table, source and target
    /// side by side.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) show: usize,
    /// Only this source table (`schema.table`; repeatable).
    #[arg(long, value_name = "TABLE")]
    pub(crate) table: Vec<String>,
    /// Rows per chunk (the unit hashed on each side and re-read row by row
    /// when it differs).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) chunk_rows: u64,
    /// Chunks compared at once (each holds one connection per side).
    #[arg(long, default_value_t = 2)]
    pub(crate) jobs: usize,
    /// Longest wait, in seconds, for a differing row to settle while
    /// replication runs (docs/verify.md); 0 reports at once.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) settle: f64,
    /// Do not record the result in the target's `ferry_verify_runs`.
    #[arg(long)]
    pub(crate) no_record: bool,
    /// Continuous mode: verify again every this many seconds, until
    /// SIGTERM/SIGINT, exporting `ferry_verify_*` on `[metrics] listen`.
    /// Each run is recorded; a failed run is logged and retried at the
    /// next interval.
    #[arg(long, value_name = "SECONDS")]
    pub(crate) watch: Option<u64>,
}

/// One table's outcome.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TableReport {
    pub(crate) table: String,
    pub(crate) target: String,
    pub(crate) source_rows: u64,
    pub(crate) target_rows: u64,
    pub(crate) chunks: u64,
    /// Rows that differ, are missing from the target or are extra in it,
    /// after re-checks, excluding dead-lettered ones.
    pub(crate) differing_rows: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) columns_only_in_source: Vec<String>,
    pub(crate) columns_only_in_target: Vec<String>,
    pub(crate) seconds: f64,
    /// Why the table could not be verified; `Some` is never a pass.
    pub(crate) error: Option<String>,
    /// The first `--show` differing rows.
    pub(crate) examples: Vec<Example>,
    /// The differing keys (target key texts), for re-checks.
    #[serde(skip)]
    pub(crate) differing_keys: Vec<Vec<String>>,
    #[serde(skip)]
    pub(crate) started: Option<std::time::SystemTime>,
}

impl TableReport {
    pub(crate) fn ok(&self) -> bool {
        // Counts are not compared on their own: a row missing or extra
        // is a differing row (or a dead-lettered one), and under live
        // traffic the chunk counts were read at slightly different moments.
        // A dead-lettered row is not drift, but it is not equal either:
        // green means equal, nothing else.
        self.error.is_none()
            && self.differing_rows == 0
            && self.dead_lettered == 0
            && self.columns_only_in_source.is_empty()
            && self.columns_only_in_target.is_empty()
    }
}

/// A differing row, both sides' text (`None`: absent on that side).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Example {
    pub(crate) source_key: Vec<String>,
    pub(crate) target_key: Vec<String>,
    pub(crate) source: Option<String>,
    pub(crate) target: Option<String>,
}

/// Runs `ferry verify` (once, or with `--watch` until a signal); returns
/// the exit code.
pub(crate) async fn run(args: VerifyArgs, config: Config) -> u8 {
    let Some(every) = args.watch else {
        return run_once(&args, &config).await;
    };
    if let Some(endpoint) = config.metrics.endpoint() {
        match ferry_pipeline::metrics::endpoint::serve(endpoint).await {
            Ok(bound) => tracing::info!(%bound, "serving /metrics"),
            Err(e) => {
                eprintln!("[metrics]: {e}");
                return exit::CONFIG;
            }
        }
    }
    let mut shutdown = crate::shutdown_signal();
    loop {
        let code = run_once(&args, &config).await;
        tracing::info!(code, "verify run finished");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
            _ = shutdown.changed() => return exit::OK,
        }
    }
}

/// Exports one run's result (`--watch`).
fn export(reports: &[TableReport]) {
    let m = ferry_pipeline::metrics::metrics();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for r in reports {
        if r.error.is_some() {
            continue;
        }
        m.verify_drift
            .with_label_values(&[&r.target])
            .set(r.differing_rows as i64);
        m.verify_rows_checked
            .with_label_values(&[&r.target])
            .inc_by(r.source_rows);
        if r.ok() {
            m.verify_last_success
                .with_label_values(&[&r.target])
                .set(now);
        }
    }
}

async fn run_once(args: &VerifyArgs, config: &Config) -> u8 {
    let args = args.clone();
    let config = config.clone();
    let reports = match verify(&args, &config).await {
        Ok(r) => r,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "error": e, "tables": []})
                );
            } else {
                eprintln!("ferry verify: NOT VERIFIED: {e}");
            }
            return exit::UNVERIFIED;
        }
    };
    let mut record_error = None;
    if !args.no_record {
        if let Err(e) = record(&config, &reports).await {
            record_error = Some(format!("recording the result in ferry_verify_runs: {e}"));
        }
    }
    print(&args, &reports, record_error.as_deref());
    if args.watch.is_some() {
        export(&reports);
    }
    if record_error.is_some() || reports.iter().any(|r| r.error.is_some()) {
        exit::UNVERIFIED
    } else if reports.iter().all(TableReport::ok) {
        exit::OK
    } else {
        exit::MISMATCH
    }
}

fn print(args: &VerifyArgs, reports: &[TableReport], record_error: Option<&str>) {
    let ok = record_error.is_none() && reports.iter().all(TableReport::ok);
    if args.json {
        let v = serde_json::json!({
            "ok": ok,
            "error": record_error,
            "tables": reports,
        });
        println!("{v}");
        return;
    }
    println!(
        "{:<32} {:>12} {:>12} {:>7} {:>10} {:>13} {:>8}  status",
        "table", "source rows", "target rows", "chunks", "differing", "dead-lettered", "time"
    );
    for r in reports {
        let status = match (&r.error, r.ok()) {
            (Some(_), _) => "NOT VERIFIED",
            (None, true) => "equal",
            (None, false)
                if r.differing_rows == 0
                    && r.columns_only_in_source.is_empty()
                    && r.columns_only_in_target.is_empty() =>
            {
                "DEAD-LETTERED (see ferry dlq)"
            }
            (None, false) => "DIFF",
        };
        println!(
            "{:<32} {:>12} {:>12} {:>7} {:>10} {:>13} {:>7.1}s  {status}",
            r.table,
            r.source_rows,
            r.target_rows,
            r.chunks,
            r.differing_rows,
            r.dead_lettered,
            r.seconds
        );
        if let Some(e) = &r.error {
            println!("    error: {e}");
        }
        if !r.columns_only_in_source.is_empty() {
            println!(
                "    columns only in the source: {}",
                r.columns_only_in_source.join(", ")
            );
        }
        if !r.columns_only_in_target.is_empty() {
            println!(
                "    columns only in the target: {}",
                r.columns_only_in_target.join(", ")
            );
        }
        for ex in &r.examples {
            println!(
                "    source key {:?} -> target key {:?}",
                ex.source_key, ex.target_key
            );
            println!(
                "      source: {}",
                ex.source.as_deref().unwrap_or("(no row)")
            );
            println!(
                "      target: {}",
                ex.target.as_deref().unwrap_or("(no row)")
            );
        }
    }
    if let Some(e) = record_error {
        println!("error: {e}");
    }
    let errors = reports.iter().filter(|r| r.error.is_some()).count();
    if errors > 0 || record_error.is_some() {
        println!("NOT VERIFIED: {errors} table(s) could not be compared");
    } else if ok {
        println!("all {} table(s) equal", reports.len());
    } else {
        let d = reports.iter().filter(|r| !r.ok()).count();
        println!("{d} of {} table(s) differ", reports.len());
    }
}

/// Connections of both sides.
struct Conns {
    source: PgConnInfo,
    target: PgConnInfo,
}

/// Everything known about one table pair before its chunks are compared.
struct Plan {
    source: TableId,
    target: TableId,
    /// Per column of the union: the source's and the target's expression.
    source_cols: Vec<String>,
    target_cols: Vec<String>,
    key: Vec<String>,
    /// Key column types (source), for literals.
    key_types: Vec<String>,
    /// Inclusive upper bounds of each chunk but the last, as key texts.
    bounds: Vec<Vec<String>>,
    /// The 64-bit hash of a row's text (`{}`: the text), see
    /// [`row_hash`].
    row_hash: &'static str,
}

/// What a chunk's comparison found.
#[derive(Default)]
struct ChunkResult {
    source_rows: u64,
    target_rows: u64,
    /// Keys that differ (changed, missing or extra).
    differing: Vec<Vec<String>>,
}

/// The comparison of every configured table; `Err` when nothing could be
/// compared (unsupported configuration, a database unreachable).
async fn verify(args: &VerifyArgs, config: &Config) -> Result<Vec<TableReport>, String> {
    let SinkConfig::Postgres(dst) = &config.sink else {
        return Err(
            "ferry verify compares PostgreSQL targets only (sink.kind = convex: not yet)".into(),
        );
    };
    let transformer = match crate::mapping::transformer(config).await {
        Ok(t) => t,
        Err(crate::mapping::Unusable::Unreachable(e)) => {
            return Err(format!(
                "pipeline.mappings: cannot read the target schema: {e}"
            ))
        }
        Err(crate::mapping::Unusable::Findings(f)) => {
            let f: Vec<String> = f.iter().map(ToString::to_string).collect();
            return Err(format!(
                "pipeline.mappings does not fit the target (ferry mapping check): {}",
                f.join("; ")
            ));
        }
    };
    let mut tables = config.source.tables();
    if !args.table.is_empty() {
        let wanted: Vec<TableId> = args
            .table
            .iter()
            .filter_map(|t| TableId::parse(t))
            .collect();
        for w in &args.table {
            if TableId::parse(w).is_none_or(|t| !tables.contains(&t)) {
                return Err(format!("--table {w}: not a table of this pipeline"));
            }
        }
        tables.retain(|t| wanted.contains(t));
    }
    let target = ferry_postgres_sink::config::conn_info(dst)?;
    // PostgreSQL tables mirrored as they are: compared database to
    // database. Everything else is staged (see `verify_staged`).
    let (direct, staged): (Vec<TableId>, Vec<TableId>) =
        tables.into_iter().partition(|t| match &config.source {
            SourceConfig::Postgres(_) => !transformer.as_ref().is_some_and(|tr| tr.maps(t)),
            _ => false,
        });
    let jobs = args.jobs.max(1);
    let pipeline = config.pipeline.name.clone();
    let mut reports = Vec::new();
    if let (SourceConfig::Postgres(src), false) = (&config.source, direct.is_empty()) {
        let conns = Conns {
            source: ferry_postgres_source::conn_info(src)?,
            target: target.clone(),
        };
        // One pool of connection pairs, shared by every table's chunks: the
        // parallelism is bounded over tables and chunks together.
        let pool = pool(&conns, jobs).await.map_err(|e| e.to_string())?;
        for source in direct {
            let target = ferry_postgres_sink::config::target_id(dst, &source);
            let started = Instant::now();
            let mut report = new_report(&source, &target);
            if let Err(e) =
                verify_table(args, &pool, &pipeline, &source, &target, &mut report).await
            {
                report.error = Some(e.to_string());
            }
            report.seconds = started.elapsed().as_secs_f64();
            reports.push(report);
        }
    }
    if !staged.is_empty() {
        // Both sides of a staged comparison are in the target.
        let conns = Conns {
            source: target.clone(),
            target,
        };
        let pool = pool(&conns, jobs).await.map_err(|e| e.to_string())?;
        for source in staged {
            reports
                .extend(settle_staged(args, config, transformer.as_deref(), &pool, &source).await);
        }
    }
    Ok(reports)
}

async fn pool(conns: &Conns, jobs: usize) -> Result<Pool, PipelineError> {
    let mut pairs = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        pairs.push(connect_pair(conns).await?);
    }
    Ok(Arc::new(Mutex::new(pairs)))
}

async fn connect_pair(conns: &Conns) -> Result<(Client, Client), PipelineError> {
    let s = conns.source.connect(Stage::Source, "source").await?;
    let t = conns.target.connect(Stage::Sink, "target").await?;
    for c in [&s, &t] {
        c.batch_execute(SESSION_SETTINGS)
            .await
            .map_err(|e| pg_err(Stage::Sink, "session settings", e))?;
    }
    Ok((s, t))
}

type Pool = Arc<Mutex<Vec<(Client, Client)>>>;

/// Takes a connection pair from the pool, runs `f`, and gives it back
/// (a pair whose query failed is given back too: the error is the table's,
/// and a broken connection fails the next query just as clearly).
async fn with_pair<T, F>(pool: &Pool, f: F) -> Result<T, PipelineError>
where
    F: for<'a> FnOnce(
        &'a Client,
        &'a Client,
    ) -> futures_util::future::BoxFuture<'a, Result<T, PipelineError>>,
{
    let pair = take(pool).await;
    let out = f(&pair.0, &pair.1).await;
    pool.lock().await.push(pair);
    out
}

/// A connection pair from the pool (give it back with a push).
async fn take(pool: &Pool) -> (Client, Client) {
    loop {
        if let Some(p) = pool.lock().await.pop() {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn verify_table(
    args: &VerifyArgs,
    pool: &Pool,
    pipeline: &str,
    source: &TableId,
    target: &TableId,
    report: &mut TableReport,
) -> Result<(), PipelineError> {
    let chunk_rows = args.chunk_rows.max(1);
    let (plan, only_src, only_dst) = {
        let (s, t) = (source.clone(), target.clone());
        with_pair(pool, move |sc, tc| {
            Box::pin(async move { plan(sc, tc, &s, &t, chunk_rows, None).await })
        })
        .await?
    };
    report.columns_only_in_source = only_src;
    report.columns_only_in_target = only_dst;
    let plan = Arc::new(plan);
    let differing = compare_chunks(pool, &plan, args.jobs, report).await?;
    if differing.is_empty() {
        return Ok(());
    }
    // Re-check what differs while replication may still be applying it.
    let settle = Duration::from_secs_f64(args.settle.max(0.0));
    let differing = {
        let plan = Arc::clone(&plan);
        let pipeline = pipeline.to_owned();
        with_pair(pool, move |sc, tc| {
            Box::pin(async move { settle_rows(sc, tc, &plan, &pipeline, differing, settle).await })
        })
        .await?
    };
    let dead: HashSet<String> = {
        let (s, t) = (source.clone(), target.clone());
        let pipeline = pipeline.to_owned();
        with_pair(pool, move |_, tc| {
            Box::pin(async move { dead_letter_keys(tc, &pipeline, &s, &t).await })
        })
        .await?
    };
    let (dead_rows, drift): (Vec<_>, Vec<_>) = differing
        .into_iter()
        .partition(|k| dead.contains(&key_json(k)));
    report.dead_lettered = dead_rows.len() as u64;
    report.differing_rows = drift.len() as u64;
    if args.show > 0 && !drift.is_empty() {
        let shown: Vec<Vec<String>> = drift.into_iter().take(args.show).collect();
        report.examples = examples(pool, &plan, shown).await?;
    }
    Ok(())
}

/// Both sides' rows of `keys`, for `--show`.
async fn examples(
    pool: &Pool,
    plan: &Arc<Plan>,
    keys: Vec<Vec<String>>,
) -> Result<Vec<Example>, PipelineError> {
    let plan = Arc::clone(plan);
    with_pair(pool, move |sc, tc| {
        Box::pin(async move {
            let s = row_texts(
                sc,
                &plan,
                &plan.source,
                &plan.source_cols,
                &keys,
                Stage::Source,
            )
            .await?;
            let t = row_texts(
                tc,
                &plan,
                &plan.target,
                &plan.target_cols,
                &keys,
                Stage::Sink,
            )
            .await?;
            Ok(keys
                .iter()
                .map(|k| Example {
                    source_key: k.clone(),
                    target_key: k.clone(),
                    source: s.get(k).cloned(),
                    target: t.get(k).cloned(),
                })
                .collect())
        })
    })
    .await
}

/// A column of a table as verify compares it.
struct Col {
    name: String,
    ty: String,
}

async fn columns(
    client: &Client,
    id: &TableId,
    stage: Stage,
) -> Result<Option<(Vec<Col>, Vec<String>)>, PipelineError> {
    let side = if stage == Stage::Source {
        "source"
    } else {
        "target"
    };
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    coalesce(array_position(pk.indkey::int2[], a.attnum), -1)::int4
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
              ORDER BY a.attnum",
            &[&id.schema, &id.name],
        )
        .await
        .map_err(|e| pg_err(stage, &format!("read the {side} columns of {id}"), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut cols = Vec::new();
    let mut key: Vec<(i32, String)> = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        let pos: i32 = r.get(2);
        if pos >= 0 {
            key.push((pos, name.clone()));
        }
        cols.push(Col { name, ty: r.get(1) });
    }
    key.sort();
    Ok(Some((cols, key.into_iter().map(|(_, n)| n).collect())))
}

/// The row hash, the cheapest both sides compute alike (`{rec}`: the
/// row as `ROW(cols…)`). `sum(int8)` accumulates exactly (in 128 bits).
///
/// - `hash_record_extended` (PostgreSQL 14+) hashes each column with its
///   type's own hash function, without printing it: about 3x cheaper than
///   hashing the row's text. It compares *values*: `1.5` and `1.50` in an
///   unconstrained `numeric` column hash alike (a fixed scale,
///   `numeric(12,2)`, has one spelling), as do `-0` and `0`; every other
///   difference counts. Used only when every column type of the table has
///   a hash function and both servers hash a probe row alike.
/// - `hashtextextended` of the row's text otherwise, when both servers
///   hash a probe text alike (same byte order: hash partitioning has the
///   same limit).
/// - The first 64 bits of md5 of the row's text otherwise: the same
///   everywhere.
const RECORD_HASH: &str = "hash_record_extended({rec}, 0)";
const TEXT_HASH: &str = "hashtextextended({rec}::text, 0)";
const PORTABLE_HASH: &str = "('x' || left(md5({rec}::text), 16))::bit(64)::int8";

async fn row_hash(
    sc: &Client,
    tc: &Client,
    source: (&TableId, &[String]),
    target: (&TableId, &[String]),
) -> &'static str {
    async fn same(sc: &Client, tc: &Client, q: &str) -> bool {
        let (s, t) = tokio::join!(sc.query_one(q, &[]), tc.query_one(q, &[]));
        matches!((s, t), (Ok(s), Ok(t)) if s.get::<_, i64>(0) == t.get::<_, i64>(0))
    }
    if !same(
        sc,
        tc,
        "SELECT hashtextextended('ferry verify: \u{ff} byte-order probe', 0)",
    )
    .await
    {
        return PORTABLE_HASH;
    }
    let probe = "SELECT hash_record_extended(ROW(1::int8, '\u{ff}'::text, 1.50::numeric, \
                 '{\"a\": [1, \"b\"]}'::jsonb, timestamptz '2026-01-01 00:00:00+00', 1.5::float8), 0)";
    if !same(sc, tc, probe).await {
        return TEXT_HASH;
    }
    // Every column type must have a hash function: try one row per side
    // (an empty table hashes nothing, either way).
    let try_row = |(t, cols): (&TableId, &[String])| {
        format!(
            "SELECT hash_record_extended(ROW({}), 0) FROM {} LIMIT 1",
            cols.join(", "),
            t.quoted()
        )
    };
    let (qs, qt) = (try_row(source), try_row(target));
    let (s, t) = tokio::join!(sc.query_opt(&qs, &[]), tc.query_opt(&qt, &[]));
    if s.is_ok() && t.is_ok() {
        RECORD_HASH
    } else {
        TEXT_HASH
    }
}

/// The marker that stands for a column one side lacks.
const ABSENT: &str = "'<absent>'::text";

async fn plan(
    sc: &Client,
    tc: &Client,
    source: &TableId,
    target: &TableId,
    chunk_rows: u64,
    only: Option<&[String]>,
) -> Result<(Plan, Vec<String>, Vec<String>), PipelineError> {
    let Some((mut scols, key)) = columns(sc, source, Stage::Source).await? else {
        return Err(PipelineError::fatal(
            Stage::Source,
            format!("source table {source} does not exist"),
        ));
    };
    let Some((mut tcols, tkey)) = columns(tc, target, Stage::Sink).await? else {
        return Err(PipelineError::fatal(
            Stage::Sink,
            format!("target table {target} does not exist: table skipped"),
        ));
    };
    // A shadow (staged tables) has no key of its own: the target's.
    let key = if key.is_empty() { tkey } else { key };
    if let Some(only) = only {
        scols.retain(|c| only.contains(&c.name));
        tcols.retain(|c| only.contains(&c.name));
    }
    if key.is_empty() {
        return Err(PipelineError::fatal(
            Stage::Source,
            format!("source table {source} has no primary key: table skipped"),
        ));
    }
    for k in &key {
        if !tcols.iter().any(|c| &c.name == k) {
            return Err(PipelineError::fatal(
                Stage::Sink,
                format!("target table {target} lacks key column {k}: table skipped"),
            ));
        }
    }
    let tnames: HashSet<&str> = tcols.iter().map(|c| c.name.as_str()).collect();
    let snames: HashSet<&str> = scols.iter().map(|c| c.name.as_str()).collect();
    let mut source_cols = Vec::new();
    let mut target_cols = Vec::new();
    let mut only_src = Vec::new();
    let mut only_dst = Vec::new();
    for c in &scols {
        source_cols.push(quote_ident(&c.name));
        if tnames.contains(c.name.as_str()) {
            target_cols.push(quote_ident(&c.name));
        } else {
            target_cols.push(ABSENT.into());
            only_src.push(c.name.clone());
        }
    }
    for c in &tcols {
        if !snames.contains(c.name.as_str()) {
            source_cols.push(ABSENT.into());
            target_cols.push(quote_ident(&c.name));
            only_dst.push(c.name.clone());
        }
    }
    let key_types: Vec<String> = key
        .iter()
        .map(|k| {
            scols
                .iter()
                .find(|c| &c.name == k)
                .map(|c| c.ty.clone())
                .unwrap_or_else(|| "text".into())
        })
        .collect();
    let mut plan = Plan {
        source: source.clone(),
        target: target.clone(),
        source_cols,
        target_cols,
        key,
        key_types,
        bounds: Vec::new(),
        row_hash: PORTABLE_HASH,
    };
    plan.row_hash = row_hash(
        sc,
        tc,
        (source, &plan.source_cols),
        (target, &plan.target_cols),
    )
    .await;
    // Boundaries: every chunk_rows-th key of the source, one index scan
    // each from the previous boundary.
    let keys = plan.key_list();
    let texts = plan.key_texts();
    loop {
        let after = match plan.bounds.last() {
            Some(b) => format!("WHERE ({keys}) > ({})", plan.literals(b)),
            None => String::new(),
        };
        let q = format!(
            "SELECT {texts} FROM {} {after} ORDER BY {keys} OFFSET {} LIMIT 1",
            source.quoted(),
            chunk_rows - 1
        );
        let row = sc
            .query_opt(&q, &[])
            .await
            .map_err(|e| pg_err(Stage::Source, &format!("chunk boundaries of {source}"), e))?;
        match row {
            Some(r) => {
                let b: Vec<Option<String>> = r.get(0);
                plan.bounds
                    .push(b.into_iter().map(Option::unwrap_or_default).collect());
            }
            None => break,
        }
    }
    Ok((plan, only_src, only_dst))
}

impl Plan {
    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The key as a `text[]` expression.
    fn key_texts(&self) -> String {
        let parts: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("{}::text", quote_ident(k)))
            .collect();
        format!("ARRAY[{}]", parts.join(", "))
    }

    fn literals(&self, key: &[String]) -> String {
        key.iter()
            .zip(&self.key_types)
            .map(|(v, ty)| format!("{}::{ty}", quote_literal(v)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The predicate of chunk `i`.
    fn range(&self, i: usize) -> String {
        let keys = self.key_list();
        let lower = i
            .checked_sub(1)
            .map(|j| format!("({keys}) > ({})", self.literals(&self.bounds[j])));
        let upper = self
            .bounds
            .get(i)
            .map(|b| format!("({keys}) <= ({})", self.literals(b)));
        match (lower, upper) {
            (Some(l), Some(u)) => format!("{l} AND {u}"),
            (Some(l), None) => l,
            (None, Some(u)) => u,
            // One chunk: every row with a key (a shadow's row whose id the
            // id map lacks has none, and is counted apart).
            (None, None) => self
                .key
                .iter()
                .map(|k| format!("{} IS NOT NULL", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(" AND "),
        }
    }

    fn row_expr(cols: &[String]) -> String {
        format!("ROW({})::text", cols.join(", "))
    }

    /// The predicate selecting exactly `keys`.
    fn key_in(&self, keys: &[Vec<String>]) -> String {
        let tuples: Vec<String> = keys
            .iter()
            .map(|k| format!("({})", self.literals(k)))
            .collect();
        format!("({}) IN ({})", self.key_list(), tuples.join(", "))
    }
}

/// The key as the dead-letter queue spells it (`["42"]`): the pipeline's
/// own spelling of a key of text parts.
fn key_json(key: &[String]) -> String {
    let parts: Vec<ferry_pipeline::value::Value> = key
        .iter()
        .map(|k| ferry_pipeline::value::Value::Text(k.clone()))
        .collect();
    ferry_pipeline::batch::key_json(&parts)
}

/// Every chunk of `plan`, `jobs` at a time: adds the row counts and the
/// number of chunks to `report`, returns the keys that differ.
async fn compare_chunks(
    pool: &Pool,
    plan: &Arc<Plan>,
    jobs: usize,
    report: &mut TableReport,
) -> Result<Vec<Vec<String>>, PipelineError> {
    let n = plan.bounds.len() + 1;
    report.chunks = n as u64;
    let results: Vec<ChunkResult> = stream::iter(0..n)
        .map(|i| {
            let plan = Arc::clone(plan);
            async move {
                with_pair(pool, move |sc, tc| {
                    Box::pin(async move { compare_chunk(sc, tc, &plan, i).await })
                })
                .await
            }
        })
        .buffered(jobs.max(1))
        .try_collect()
        .await?;
    let mut differing = Vec::new();
    for r in results {
        report.source_rows += r.source_rows;
        report.target_rows += r.target_rows;
        differing.extend(r.differing);
    }
    Ok(differing)
}

async fn compare_chunk(
    sc: &Client,
    tc: &Client,
    plan: &Plan,
    i: usize,
) -> Result<ChunkResult, PipelineError> {
    let range = plan.range(i);
    let agg = |table: &TableId, cols: &[String]| {
        format!(
            "SELECT count(*)::int8, coalesce(sum({}), 0)::text FROM {} WHERE {range}",
            plan.row_hash
                .replace("{rec}", &format!("ROW({})", cols.join(", "))),
            table.quoted()
        )
    };
    let (qs, qt) = (
        agg(&plan.source, &plan.source_cols),
        agg(&plan.target, &plan.target_cols),
    );
    let (s, t) = tokio::join!(sc.query_one(&qs, &[]), tc.query_one(&qt, &[]));
    let s = s.map_err(|e| {
        pg_err(
            Stage::Source,
            &format!("hash a chunk of {}", plan.source),
            e,
        )
    })?;
    let t = t.map_err(|e| pg_err(Stage::Sink, &format!("hash a chunk of {}", plan.target), e))?;
    let (sn, sh): (i64, String) = (s.get(0), s.get(1));
    let (tn, th): (i64, String) = (t.get(0), t.get(1));
    let mut out = ChunkResult {
        source_rows: sn as u64,
        target_rows: tn as u64,
        differing: Vec::new(),
    };
    if sn == tn && sh == th {
        return Ok(out);
    }
    let rows = |table: &TableId, cols: &[String]| {
        format!(
            "SELECT {}, md5({}) FROM {} WHERE {range}",
            plan.key_texts(),
            Plan::row_expr(cols),
            table.quoted()
        )
    };
    let (qs, qt) = (
        rows(&plan.source, &plan.source_cols),
        rows(&plan.target, &plan.target_cols),
    );
    let (s, t) = tokio::join!(sc.query(&qs, &[]), tc.query(&qt, &[]));
    let s = s.map_err(|e| pg_err(Stage::Source, &format!("read rows of {}", plan.source), e))?;
    let t = t.map_err(|e| pg_err(Stage::Sink, &format!("read rows of {}", plan.target), e))?;
    out.differing = diff_keys(hashes(s), hashes(t));
    Ok(out)
}

fn hashes(rows: Vec<tokio_postgres::Row>) -> HashMap<Vec<String>, String> {
    rows.into_iter()
        .map(|r| {
            let k: Vec<Option<String>> = r.get(0);
            (
                k.into_iter().map(Option::unwrap_or_default).collect(),
                r.get(1),
            )
        })
        .collect()
}

/// Keys whose rows differ or exist on one side only, sorted.
fn diff_keys(
    source: HashMap<Vec<String>, String>,
    mut target: HashMap<Vec<String>, String>,
) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (k, h) in source {
        match target.remove(&k) {
            Some(t) if t == h => {}
            _ => out.push(k),
        }
    }
    out.extend(target.into_keys());
    out.sort();
    out
}

/// Row hashes of `keys` on one side.
async fn row_hashes(
    client: &Client,
    plan: &Plan,
    table: &TableId,
    cols: &[String],
    keys: &[Vec<String>],
    stage: Stage,
) -> Result<HashMap<Vec<String>, String>, PipelineError> {
    let mut out = HashMap::new();
    for part in keys.chunks(1000) {
        let q = format!(
            "SELECT {}, md5({}) FROM {} WHERE {}",
            plan.key_texts(),
            Plan::row_expr(cols),
            table.quoted(),
            plan.key_in(part)
        );
        let rows = client
            .query(&q, &[])
            .await
            .map_err(|e| pg_err(stage, &format!("re-read rows of {table}"), e))?;
        out.extend(hashes(rows));
    }
    Ok(out)
}

/// Row texts of `keys` on one side (for `--show`).
async fn row_texts(
    client: &Client,
    plan: &Plan,
    table: &TableId,
    cols: &[String],
    keys: &[Vec<String>],
    stage: Stage,
) -> Result<HashMap<Vec<String>, String>, PipelineError> {
    let q = format!(
        "SELECT {}, {} FROM {} WHERE {}",
        plan.key_texts(),
        Plan::row_expr(cols),
        table.quoted(),
        plan.key_in(keys)
    );
    let rows = client
        .query(&q, &[])
        .await
        .map_err(|e| pg_err(stage, &format!("read rows of {table}"), e))?;
    Ok(hashes(rows))
}

/// Re-reads `keys` in rounds with growing delays (module doc, point 5);
/// returns the keys that differed in every round.
async fn settle_rows(
    sc: &Client,
    tc: &Client,
    plan: &Plan,
    pipeline: &str,
    mut keys: Vec<Vec<String>>,
    settle: Duration,
) -> Result<Vec<Vec<String>>, PipelineError> {
    let mut delay = Duration::from_millis(250);
    let mut waited = Duration::ZERO;
    while !keys.is_empty() && waited < settle {
        let s = row_hashes(
            sc,
            plan,
            &plan.source,
            &plan.source_cols,
            &keys,
            Stage::Source,
        )
        .await?;
        let lsn: String = sc
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| pg_err(Stage::Source, "read the source WAL position", e))?
            .get(0);
        // Until the checkpoint passes `lsn`, at most the round's delay
        // (0.25 s, doubling, within `--settle`): on the Kafka bus, or with
        // the pipeline stopped, the checkpoint does not tell, and the
        // rounds must go on.
        let round = delay.min(settle - waited);
        let began = Instant::now();
        while began.elapsed() < round && !checkpoint_passed(tc, pipeline, &lsn).await? {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        waited += round;
        delay *= 2;
        let t = row_hashes(
            tc,
            plan,
            &plan.target,
            &plan.target_cols,
            &keys,
            Stage::Sink,
        )
        .await?;
        // The source again: a row changed since its first read may have
        // reached the target in its newer state. Equal to either state the
        // source had, it is not drift.
        let s2 = row_hashes(
            sc,
            plan,
            &plan.source,
            &plan.source_cols,
            &keys,
            Stage::Source,
        )
        .await?;
        keys.retain(|k| s.get(k) != t.get(k) && s2.get(k) != t.get(k));
    }
    Ok(keys)
}

/// Whether the pipeline's checkpoint in the target has passed `lsn`
/// (false when there is no checkpoint table or row).
async fn checkpoint_passed(tc: &Client, pipeline: &str, lsn: &str) -> Result<bool, PipelineError> {
    let row = tc
        .query_opt(
            "SELECT commit_lsn >= $2::text::pg_lsn FROM public.ferry_checkpoint
              WHERE to_regclass('public.ferry_checkpoint') IS NOT NULL AND pipeline = $1",
            &[&pipeline, &lsn],
        )
        .await;
    match row {
        Ok(r) => Ok(r.is_some_and(|r| r.get(0))),
        // No checkpoint table: the target was never written by a pipeline.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(false),
        Err(e) => Err(pg_err(Stage::Sink, "read the checkpoint", e)),
    }
}

/// Keys of `table` with an unresolved dead-letter record.
async fn dead_letter_keys(
    tc: &Client,
    pipeline: &str,
    source: &TableId,
    target: &TableId,
) -> Result<HashSet<String>, PipelineError> {
    let exists: bool = tc
        .query_one("SELECT to_regclass('public.ferry_dlq') IS NOT NULL", &[])
        .await
        .map_err(|e| pg_err(Stage::Sink, "look for ferry_dlq", e))?
        .get(0);
    if !exists {
        return Ok(HashSet::new());
    }
    let rows = tc
        .query(
            "SELECT DISTINCT row_key FROM public.ferry_dlq
              WHERE pipeline = $1 AND superseded_at IS NULL
                AND ((table_schema = $2 AND table_name = $3)
                  OR (table_schema = $4 AND table_name = $5))",
            &[
                &pipeline,
                &source.schema,
                &source.name,
                &target.schema,
                &target.name,
            ],
        )
        .await
        .map_err(|e| pg_err(Stage::Sink, "read ferry_dlq", e))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Records each table's result in the target's `ferry_verify_runs`, read
/// by `ferry cutover check`.
async fn record(config: &Config, reports: &[TableReport]) -> Result<(), PipelineError> {
    let SinkConfig::Postgres(dst) = &config.sink else {
        return Ok(());
    };
    let info = ferry_postgres_sink::config::conn_info(dst)
        .map_err(|e| PipelineError::fatal(Stage::Sink, e))?;
    let c = info.connect(Stage::Sink, "target").await?;
    c.batch_execute(CREATE_RUNS)
        .await
        .map_err(|e| pg_err(Stage::Sink, "create ferry_verify_runs", e))?;
    // One start time for the whole run: `ferry cutover check` reads a
    // table's last run as the rows with its latest `started_at` (a mapped
    // table has one row per target table).
    let started = reports
        .iter()
        .filter_map(|r| r.started)
        .min()
        .unwrap_or_else(std::time::SystemTime::now);
    for r in reports {
        let table = TableId::parse(&r.table);
        let (schema, name) = table
            .map(|t| (t.schema, t.name))
            .unwrap_or_else(|| (String::new(), r.table.clone()));
        c.execute(
            "INSERT INTO public.ferry_verify_runs
                 (pipeline, table_schema, table_name, started_at, finished_at,
                  source_rows, target_rows, drift_rows, dead_lettered, ok, error)
             VALUES ($1, $2, $3, $4, now(), $5, $6, $7, $8, $9, $10)",
            &[
                &config.pipeline.name,
                &schema,
                &name,
                &started,
                &(r.source_rows as i64),
                &(r.target_rows as i64),
                &(r.differing_rows as i64),
                &(r.dead_lettered as i64),
                &r.ok(),
                &r.error,
            ],
        )
        .await
        .map_err(|e| pg_err(Stage::Sink, "record in ferry_verify_runs", e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------
// Staged tables: mapped tables and non-PostgreSQL sources.
//
// Where the source cannot compute the target's form next to its data (a
// mapping renames, nests, translates ids, normalizes decimals, splits
// child tables; MongoDB documents are not rows), the source is read in
// order, a bounded batch at a time, through the pipeline's own code (the
// source's decoder, then the `Transformer`), and each batch is written
// into a *shadow* of each target table: `ferry_verify.<…>`, an UNLOGGED
// table `LIKE` the target (same types, same keys). Values go in through
// the sink's own text input (`literal::to_pg_text`) and id-mapped columns
// through the sink's own translation SQL (`id_map::value_sql`), which only
// looks up: a legacy id the id map does not know stays NULL, and differs.
// The shadow is then compared with the target by the same chunk hashes as
// a mirrored table, inside the target. Ferry's memory holds one batch;
// the shadows are dropped at the end.
//
// While replication runs, a staged table with differences is staged and
// compared again (`settle_staged`); only keys that differ in every round
// are reported.
//
// Only the target columns the mapping writes are compared for a mapped
// table (the others are filled by the target's defaults); every column
// for a mirrored one. A record the mapping rejects is counted as
// dead-lettered (the pipeline parks it): never green.
// ---------------------------------------------------------------------

/// Rows per INSERT into a shadow.
const STAGE_ROWS: usize = 500;

/// One target table being rebuilt from the source.
struct Shadow {
    target: TableId,
    shadow: TableId,
    /// Target column types, by name.
    types: HashMap<String, String>,
    /// Only these columns are compared (`None`: all).
    only: Option<Vec<String>>,
    /// `(column list, VALUES tuples)` waiting to be written.
    pending: Vec<(String, String)>,
    /// Source columns with a value that the target has no column for.
    missing: std::collections::BTreeSet<String>,
    /// The target's key columns.
    key: Vec<String>,
}

/// The shadow's extra column: each row's source key, as the dead-letter
/// queue spells it (`--show` prints it beside the target's key). Never
/// compared.
const SOURCE_KEY_COLUMN: &str = "ferry_verify_source_key";

struct Stager<'a> {
    client: &'a Client,
    transformer: Option<&'a Transformer>,
    shadows: Vec<Shadow>,
    rejected: u64,
    source_rows: u64,
}

impl crate::source_rows::RowSink for Stager<'_> {
    async fn push(&mut self, ev: ChangeEvent) -> Result<(), PipelineError> {
        Stager::push(self, ev).await
    }
}

impl Stager<'_> {
    async fn push(&mut self, ev: ChangeEvent) -> Result<(), PipelineError> {
        self.source_rows += 1;
        let source_key = quote_literal(&ferry_pipeline::transform::source_key(&ev));
        let changes: Vec<ChangeEvent> = match self.transformer.and_then(|t| t.apply(&ev)) {
            None => vec![ev],
            Some(Err(_)) => {
                self.rejected += 1;
                return Ok(());
            }
            Some(Ok(outs)) => outs
                .into_iter()
                .filter_map(|o| match o {
                    Output::Change(c) => Some(c),
                    // A fresh shadow has no stale children to prune.
                    Output::Prune { .. } => None,
                })
                .collect(),
        };
        for c in changes {
            let Some(row) = &c.after else { continue };
            // A mirrored event names its source table; a mapped one its
            // target. With one shadow (mirrored), it is that one.
            let i = if self.shadows.len() == 1 {
                0
            } else {
                self.shadows
                    .iter()
                    .position(|s| s.target == c.table.id)
                    .ok_or_else(|| {
                        PipelineError::fatal(
                            Stage::Sink,
                            format!(
                                "the mapping wrote to {}, which verify did not expect",
                                c.table.id
                            ),
                        )
                    })?
            };
            let sh = &mut self.shadows[i];
            let mut cols = Vec::with_capacity(row.len());
            let mut vals = Vec::with_capacity(row.len());
            for (col, d) in c.table.columns.iter().zip(row) {
                let Some(ty) = sh.types.get(&col.name) else {
                    // A column the target lacks: the shadow cannot hold
                    // it; with a value, it is reported (mirrored tables).
                    if !matches!(d, Datum::Value(Value::Null)) {
                        sh.missing.insert(col.name.clone());
                    }
                    continue;
                };
                let Datum::Value(v) = d else {
                    return Err(PipelineError::fatal(
                        Stage::Source,
                        format!("{}: an unchanged TOAST value in a full read", c.table.id),
                    ));
                };
                cols.push(quote_ident(&col.name));
                vals.push(match to_pg_text(v) {
                    None => "NULL".to_owned(),
                    Some(t) => id_map::value_sql(col, ty, &quote_literal(&t)),
                });
            }
            cols.push(SOURCE_KEY_COLUMN.to_owned());
            vals.push(source_key.clone());
            sh.pending
                .push((cols.join(", "), format!("({})", vals.join(", "))));
            if sh.pending.len() >= STAGE_ROWS {
                flush(self.client, sh).await?;
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), PipelineError> {
        for sh in &mut self.shadows {
            flush(self.client, sh).await?;
        }
        Ok(())
    }
}

/// Writes a shadow's pending rows (grouped by column list: documents of
/// a collection may have grown its shape).
async fn flush(client: &Client, sh: &mut Shadow) -> Result<(), PipelineError> {
    let pending = std::mem::take(&mut sh.pending);
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (cols, tuple) in pending {
        match groups.iter_mut().find(|(c, _)| *c == cols) {
            Some((_, v)) => v.push(tuple),
            None => groups.push((cols, vec![tuple])),
        }
    }
    for (cols, tuples) in groups {
        let q = format!(
            "INSERT INTO {} ({cols}) VALUES {}",
            sh.shadow.quoted(),
            tuples.join(", ")
        );
        client.batch_execute(&q).await.map_err(|e| {
            pg_err(
                Stage::Sink,
                &format!("stage the source's rows of {} for comparison", sh.target),
                e,
            )
        })?;
    }
    Ok(())
}

/// Compares one staged source table with its target table(s); one report
/// per target table.
async fn verify_staged(
    args: &VerifyArgs,
    config: &Config,
    transformer: Option<&Transformer>,
    pool: &Pool,
    source: &TableId,
) -> Vec<TableReport> {
    let SinkConfig::Postgres(dst) = &config.sink else {
        return Vec::new();
    };
    let targets: Vec<(TableId, Option<Vec<String>>)> =
        match transformer.and_then(|t| t.target_schemas(source)) {
            Some(schemas) => schemas
                .iter()
                .map(|s| {
                    let cols = s.columns.iter().map(|c| c.name.clone()).collect();
                    (s.id.clone(), Some(cols))
                })
                .collect(),
            None => vec![(ferry_postgres_sink::config::target_id(dst, source), None)],
        };
    let started = Instant::now();
    let mut reports: Vec<TableReport> =
        targets.iter().map(|(t, _)| new_report(source, t)).collect();
    let staged = {
        let pair = take(pool).await;
        let out = stage(config, transformer, &pair.1, source, &targets).await;
        pool.lock().await.push(pair);
        out
    };
    match staged {
        Err(e) => {
            for r in &mut reports {
                r.error = Some(e.to_string());
            }
        }
        Ok((shadows, rejected, source_rows)) => {
            for (r, sh) in reports.iter_mut().zip(&shadows) {
                if let Err(e) = compare_staged(args, pool, sh, r).await {
                    r.error = Some(e.to_string());
                }
            }
            // Source rows and rejections belong to the source table: on
            // its first (parent) report.
            if let Some(first) = reports.first_mut() {
                first.dead_lettered += rejected;
                first.source_rows = source_rows;
            }
        }
    }
    // Always drop the shadows, whatever happened.
    let drop_sql: Vec<String> = targets
        .iter()
        .map(|(t, _)| format!("DROP TABLE IF EXISTS {}", shadow_id(t).quoted()))
        .collect();
    let dropped = with_pair(pool, move |_, tc| {
        Box::pin(async move {
            tc.batch_execute(&drop_sql.join("; "))
                .await
                .map_err(|e| pg_err(Stage::Sink, "drop verify's shadow tables", e))
        })
    })
    .await;
    if let Err(e) = dropped {
        for r in &mut reports {
            r.error.get_or_insert_with(|| e.to_string());
        }
    }
    for r in &mut reports {
        r.seconds = started.elapsed().as_secs_f64();
    }
    reports
}

/// [`verify_staged`], again while differences remain, with growing delays
/// up to `--settle`: a staged table is read whole at one moment, so a row
/// still in flight differs in one round and not the next. Only keys that
/// differ in every round are reported (the last round's examples among
/// them).
async fn settle_staged(
    args: &VerifyArgs,
    config: &Config,
    transformer: Option<&Transformer>,
    pool: &Pool,
    source: &TableId,
) -> Vec<TableReport> {
    let mut reports = verify_staged(args, config, transformer, pool, source).await;
    let settle = Duration::from_secs_f64(args.settle.max(0.0));
    let mut delay = Duration::from_millis(500);
    let mut waited = Duration::ZERO;
    let differs = |rs: &[TableReport]| {
        rs.iter().all(|r| r.error.is_none()) && rs.iter().any(|r| !r.differing_keys.is_empty())
    };
    let mut rounds = 0;
    while differs(&reports) && waited < settle && rounds < 6 {
        rounds += 1;
        // Wait until what the source had committed when this round began
        // is in the target (PostgreSQL sources: the checkpoint passes the
        // source's WAL position), at most the round's growing delay.
        let began = Instant::now();
        let lsn = source_lsn(config).await;
        // (On the Kafka bus the checkpoint does not tell: the delay does.)
        let round = delay.min(settle - waited);
        while began.elapsed() < round {
            if let Some(lsn) = &lsn {
                let passed = with_pair(pool, {
                    let (pipeline, lsn) = (config.pipeline.name.clone(), lsn.clone());
                    move |_, tc| {
                        Box::pin(async move { checkpoint_passed(tc, &pipeline, &lsn).await })
                    }
                })
                .await;
                if passed.unwrap_or(false) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        waited += round;
        delay *= 2;
        let mut again = verify_staged(args, config, transformer, pool, source).await;
        if again.iter().any(|r| r.error.is_some()) || again.len() != reports.len() {
            return again;
        }
        for (new, old) in again.iter_mut().zip(&reports) {
            let before: HashSet<&Vec<String>> = old.differing_keys.iter().collect();
            new.differing_keys.retain(|k| before.contains(k));
            new.differing_rows = new.differing_keys.len() as u64;
            let kept: HashSet<&Vec<String>> = new.differing_keys.iter().collect();
            new.examples.retain(|e| kept.contains(&e.target_key));
        }
        reports = again;
    }
    reports
}

/// The source's current WAL position (PostgreSQL sources), `None` when it
/// cannot be read (then a round waits its whole delay).
async fn source_lsn(config: &Config) -> Option<String> {
    let SourceConfig::Postgres(src) = &config.source else {
        return None;
    };
    let c = ferry_postgres_source::conn_info(src)
        .ok()?
        .connect(Stage::Source, "source")
        .await
        .ok()?;
    c.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

fn new_report(source: &TableId, target: &TableId) -> TableReport {
    TableReport {
        table: source.to_string(),
        target: target.to_string(),
        source_rows: 0,
        target_rows: 0,
        chunks: 0,
        differing_rows: 0,
        dead_lettered: 0,
        columns_only_in_source: Vec::new(),
        columns_only_in_target: Vec::new(),
        seconds: 0.0,
        error: None,
        examples: Vec::new(),
        differing_keys: Vec::new(),
        started: Some(std::time::SystemTime::now()),
    }
}

/// The shadow of `target` for this process.
fn shadow_id(target: &TableId) -> TableId {
    let mut name = format!("{}_{}_{}", std::process::id(), target.schema, target.name);
    // PostgreSQL identifiers: 63 bytes.
    while name.len() > 63 {
        name.pop();
    }
    TableId::new("ferry_verify", name)
}

/// Creates the shadows and fills them from the source; returns them, the
/// rows the mapping rejected and the source rows read.
async fn stage(
    config: &Config,
    transformer: Option<&Transformer>,
    tc: &Client,
    source: &TableId,
    targets: &[(TableId, Option<Vec<String>>)],
) -> Result<(Vec<Shadow>, u64, u64), PipelineError> {
    let mut shadows = Vec::new();
    tc.batch_execute("CREATE SCHEMA IF NOT EXISTS ferry_verify")
        .await
        .map_err(|e| pg_err(Stage::Sink, "create schema ferry_verify", e))?;
    for (target, only) in targets {
        let Some((cols, key)) = columns(tc, target, Stage::Sink).await? else {
            return Err(PipelineError::fatal(
                Stage::Sink,
                format!("target table {target} does not exist: table skipped"),
            ));
        };
        if key.is_empty() {
            return Err(PipelineError::fatal(
                Stage::Sink,
                format!("target table {target} has no primary key: table skipped"),
            ));
        }
        let shadow = shadow_id(target);
        // No constraints: a legacy id the id map does not know yet (a row
        // still in flight, or never mapped) leaves its key NULL, and that
        // row is counted, not refused (see `compare_staged`).
        let not_null: Vec<String> = cols
            .iter()
            .map(|c| {
                format!(
                    "ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL",
                    shadow.quoted(),
                    quote_ident(&c.name)
                )
            })
            .collect();
        let key_list: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
        tc.batch_execute(&format!(
            "DROP TABLE IF EXISTS {s}; CREATE UNLOGGED TABLE {s} (LIKE {t});
             ALTER TABLE {s} ADD COLUMN {SOURCE_KEY_COLUMN} text; {nn};
             CREATE INDEX ON {s} ({keys})",
            s = shadow.quoted(),
            t = target.quoted(),
            nn = not_null.join("; "),
            keys = key_list.join(", ")
        ))
        .await
        .map_err(|e| pg_err(Stage::Sink, &format!("create the shadow of {target}"), e))?;
        shadows.push(Shadow {
            target: target.clone(),
            shadow,
            types: cols.into_iter().map(|c| (c.name, c.ty)).collect(),
            only: only.clone(),
            pending: Vec::new(),
            missing: Default::default(),
            key,
        });
    }
    let mut stager = Stager {
        client: tc,
        transformer,
        shadows,
        rejected: 0,
        source_rows: 0,
    };
    match &config.source {
        SourceConfig::Postgres(src) => {
            let info = ferry_postgres_source::conn_info(src)
                .map_err(|e| PipelineError::fatal(Stage::Source, e))?;
            let sc = info.connect(Stage::Source, "source").await?;
            crate::source_rows::read_postgres(&sc, source, None, &mut stager).await?;
        }
        SourceConfig::Mongodb(src) => {
            crate::source_rows::read_mongo(src, source, None, &mut stager).await?
        }
        SourceConfig::Sqlite(_) => {
            return Err(PipelineError::fatal(
                Stage::Source,
                "ferry verify does not read SQLite sources yet: table skipped",
            ))
        }
        SourceConfig::Convex(_) => {
            return Err(PipelineError::fatal(
                Stage::Source,
                "ferry verify does not read Convex sources yet: table skipped",
            ))
        }
    }
    stager.finish().await?;
    Ok((stager.shadows, stager.rejected, stager.source_rows))
}

/// Compares a filled shadow with its target (both in the target).
async fn compare_staged(
    args: &VerifyArgs,
    pool: &Pool,
    sh: &Shadow,
    report: &mut TableReport,
) -> Result<(), PipelineError> {
    let chunk_rows = args.chunk_rows.max(1);
    // Never the shadow's own source-key column.
    let only = sh
        .only
        .clone()
        .unwrap_or_else(|| sh.types.keys().cloned().collect());
    let (s, t, only) = (sh.shadow.clone(), sh.target.clone(), Some(only));
    let (plan, only_src, only_dst) = with_pair(pool, move |sc, tc| {
        Box::pin(async move { plan(sc, tc, &s, &t, chunk_rows, only.as_deref()).await })
    })
    .await?;
    report.columns_only_in_source = only_src;
    report
        .columns_only_in_source
        .extend(sh.missing.iter().cloned());
    report.columns_only_in_target = only_dst;
    let plan = Arc::new(plan);
    let differing = compare_chunks(pool, &plan, args.jobs, report).await?;
    // Rows whose key the id map could not translate fall in no chunk:
    // each is a difference (the target cannot hold that row yet).
    let null_key: Vec<String> = sh
        .key
        .iter()
        .map(|k| format!("{} IS NULL", quote_ident(k)))
        .collect();
    let q = format!(
        "SELECT {SOURCE_KEY_COLUMN} FROM {} WHERE {}",
        sh.shadow.quoted(),
        null_key.join(" OR ")
    );
    let unmapped = with_pair(pool, move |sc, _| {
        Box::pin(async move {
            sc.query(&q, &[])
                .await
                .map_err(|e| pg_err(Stage::Sink, "read rows without a new id", e))
        })
    })
    .await?;
    let unmapped: Vec<Vec<String>> = unmapped
        .into_iter()
        .map(|r| {
            let k: Option<String> = r.get(0);
            vec![format!(
                "no new id in ferry_id_map for source key {}",
                k.unwrap_or_default()
            )]
        })
        .collect();
    report.source_rows += unmapped.len() as u64;
    report.differing_rows = (differing.len() + unmapped.len()) as u64;
    report.differing_keys = differing.iter().chain(&unmapped).cloned().collect();
    if args.show > 0 && !differing.is_empty() {
        let shown: Vec<Vec<String>> = differing.into_iter().take(args.show).collect();
        report.examples = examples(pool, &plan, shown.clone()).await?;
        // The source's own key (legacy id) beside the target's.
        let plan = Arc::clone(&plan);
        let legacy = with_pair(pool, move |sc, _| {
            Box::pin(async move {
                let q = format!(
                    "SELECT {}, {SOURCE_KEY_COLUMN} FROM {} WHERE {}",
                    plan.key_texts(),
                    plan.source.quoted(),
                    plan.key_in(&shown)
                );
                let rows = sc
                    .query(&q, &[])
                    .await
                    .map_err(|e| pg_err(Stage::Sink, "read source keys", e))?;
                Ok(hashes(rows))
            })
        })
        .await?;
        for ex in &mut report.examples {
            ex.source_key = match legacy.get(&ex.target_key) {
                Some(k) => {
                    serde_json::from_str::<Vec<String>>(k).unwrap_or_else(|_| vec![k.clone()])
                }
                // Only in the target: no source row has this key.
                None => Vec::new(),
            };
        }
    }
    Ok(())
}

/// `ferry_verify_runs`: one row per table and run of `ferry verify`.
pub(crate) const CREATE_RUNS: &str = "CREATE TABLE IF NOT EXISTS public.ferry_verify_runs (
         id            bigserial PRIMARY KEY,
         pipeline      text NOT NULL,
         table_schema  text NOT NULL,
         table_name    text NOT NULL,
         started_at    timestamptz NOT NULL,
         finished_at   timestamptz NOT NULL,
         source_rows   bigint NOT NULL,
         target_rows   bigint NOT NULL,
         drift_rows    bigint NOT NULL,
         dead_lettered bigint NOT NULL,
         ok            boolean NOT NULL,
         error         text
     );
     CREATE INDEX IF NOT EXISTS ferry_verify_runs_table
         ON public.ferry_verify_runs (pipeline, table_schema, table_name, finished_at);";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_keys_finds_changed_missing_and_extra() {
        let k = |s: &str| vec![s.to_owned()];
        let s: HashMap<_, _> = [
            (k("1"), "a".into()),
            (k("2"), "b".into()),
            (k("3"), "c".into()),
        ]
        .into_iter()
        .collect();
        let t: HashMap<_, _> = [
            (k("1"), "a".into()),
            (k("2"), "X".into()),
            (k("4"), "d".into()),
        ]
        .into_iter()
        .collect();
        assert_eq!(diff_keys(s, t), vec![k("2"), k("3"), k("4")]);
    }

    #[test]
    fn key_json_matches_the_dead_letter_spelling() {
        assert_eq!(key_json(&["42".into()]), r#"["42"]"#);
        assert_eq!(key_json(&["a\"b".into(), "1".into()]), r#"["a\"b","1"]"#);
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("o'hara"), "'o''hara'");
    }
}
