//! `ferry-bench --snapshot`: Ferry's initial PostgreSQL → PostgreSQL
//! snapshot against `pg_dump -t T | psql`, in the same run.
//!
//! One source cluster holds `--snapshot-rows` rows of a 6-column table
//! (`bigint` key, `numeric(12,2)`, `text`, `jsonb`, `timestamptz`, `int`);
//! each run copies it into a fresh database of one target cluster:
//!
//! - Ferry: `ferry run` with the table's snapshot and its defaults
//!   (2 parallel chunks, 5,000-row batches); the clock runs from the spawn
//!   until the target's `ferry_snapshot` row for the table exists. That row
//!   is written in the transaction of the snapshot's last batch, so it is
//!   the moment the target holds every row; the row count is checked after.
//! - `pg_dump -t public.snap | psql` into another fresh database, timed
//!   until psql exits (table, rows, primary key: everything committed).
//! - binary `COPY … TO STDOUT (FORMAT binary) | COPY … FROM STDIN (FORMAT
//!   binary)`, two pipes over the two halves of the table's pages, into a
//!   table created first: rows are never decoded. Not a migration tool (the
//!   pipes share no snapshot); it measures how far copying chunks without
//!   decoding them could take a snapshot on this machine.
//!
//! CPU seconds per process role are read from `/proc`: ferry itself; the
//! source's client backends (the COPY connections), its walsender, the
//! target's client backends, and each cluster's background processes
//! (checkpointer, WAL writer, autovacuum); for the peer, pg_dump and psql
//! (bash's `times`). Backends are sampled every 100 ms while a run lasts
//! (each keeps its last reading after it exits). Runs alternate between
//! the peers; the table shows medians.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use tokio_postgres::Client;

use super::{cpu_seconds_of, FerryProcess};

const TABLE_SQL: &str = "CREATE TABLE snap (id bigint PRIMARY KEY, amount numeric(12,2), \
    note text, doc jsonb, at timestamptz, qty int)";

const FILL: &str =
    "INSERT INTO snap SELECT g, (g % 10000000) * 0.01, 'customer ' || g || ' of the bench',
                            jsonb_build_object('k', g, 'tag', 'x', 'n', g % 7),
                            timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
                            (g % 1000)::int
      FROM generate_series(1, $ROWS) g;";

/// One run of one peer.
#[derive(Debug, Clone, serde::Serialize)]
struct SnapshotOutcome {
    peer: String,
    rows: u64,
    seconds: f64,
    rows_per_sec: f64,
    /// CPU seconds by role (`ferry`, `pg_dump + psql`, `source backends`,
    /// `source walsender`, `target backends`, …).
    cpu: Vec<(String, f64)>,
    peak_rss_mb: Option<f64>,
}

/// pid → (role, CPU seconds at first sight, last CPU seconds).
type Readings = Arc<Mutex<HashMap<i32, (String, f64, f64)>>>;

/// Where the CPU of one cluster's processes went while a run lasted.
struct BackendCpu {
    seen: Readings,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl BackendCpu {
    /// Samples `side`'s backends every 100 ms, except `exclude` (the
    /// bench's own connections). Processes alive at the start count from
    /// their reading then.
    async fn start(
        cluster: &LocalCluster,
        side: &'static str,
        exclude: Vec<i32>,
    ) -> anyhow::Result<Self> {
        let client = cluster.connect("postgres").await?;
        let seen: Readings = Arc::default();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let map = Arc::clone(&seen);
        let mut first = true;
        let task = tokio::spawn(async move {
            loop {
                if let Ok(rows) = client
                    .query(
                        "SELECT pid, backend_type FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                {
                    let mut m = map.lock().expect("not poisoned");
                    for r in rows {
                        let pid: i32 = r.get(0);
                        if exclude.contains(&pid) {
                            continue;
                        }
                        let kind: Option<String> = r.get(1);
                        let Some(cpu) = cpu_seconds_of(pid as u32) else {
                            continue;
                        };
                        let role = match kind.as_deref() {
                            Some("client backend") => format!("{side} backends"),
                            Some("walsender") => format!("{side} walsender"),
                            _ => format!("{side} background"),
                        };
                        let e = m
                            .entry(pid)
                            .or_insert((role, if first { cpu } else { 0.0 }, cpu));
                        e.2 = cpu;
                    }
                    first = false;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopped.changed() => break,
                }
            }
        });
        Ok(Self { seen, stop, task })
    }

    /// CPU seconds per role since the start.
    async fn finish(self) -> Vec<(String, f64)> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let mut by_role: HashMap<String, f64> = HashMap::new();
        for (role, first, last) in self.seen.lock().expect("not poisoned").values() {
            *by_role.entry(role.clone()).or_default() += last - first;
        }
        let mut v: Vec<_> = by_role.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

async fn backend_pid(c: &Client) -> anyhow::Result<i32> {
    Ok(c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0))
}

async fn count(c: &Client) -> anyhow::Result<u64> {
    let n: i64 = c
        .query_one("SELECT count(*) FROM public.snap", &[])
        .await?
        .get(0);
    Ok(n as u64)
}

pub(crate) async fn run(
    rows: u64,
    repeat: usize,
    out: &Path,
    perf_data: Option<&Path>,
) -> anyhow::Result<()> {
    let (source, target) = tokio::join!(
        LocalCluster::start(ClusterOptions::default()),
        LocalCluster::start(ClusterOptions::default())
    );
    let (source, target) = (source?, target?);
    source.create_database("bench").await?;
    let src = source.connect("bench").await?;
    eprintln!("filling {rows} rows on the source");
    src.batch_execute(TABLE_SQL).await?;
    src.batch_execute(&FILL.replace("$ROWS", &rows.to_string()))
        .await
        .context("fill the source")?;
    // Its own statement: VACUUM cannot run in the transaction above. Hint
    // bits set and statistics known, as on a live database.
    src.batch_execute("VACUUM ANALYZE snap").await?;
    let dir = tempfile::tempdir()?;
    let (mut ferry_runs, mut dump_runs, mut raw_runs) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..repeat.max(1) {
        eprintln!("run {} of {}", run + 1, repeat.max(1));
        let perf = perf_data.filter(|_| run == 0);
        ferry_runs.push(ferry_snapshot(&source, &src, &target, run, rows, dir.path(), perf).await?);
        dump_runs.push(shell_snapshot(&source, &target, run, rows, Shell::Dump).await?);
        raw_runs.push(shell_snapshot(&source, &target, run, rows, Shell::BinaryCopy).await?);
    }
    let results = [median(&dump_runs), median(&ferry_runs), median(&raw_runs)];
    println!();
    println!("| peer | rows | seconds | rows/s | CPU seconds by process | peak RSS (MB) |");
    println!("|---|---:|---:|---:|---|---:|");
    for o in &results {
        let cpu: Vec<String> = o
            .cpu
            .iter()
            .filter(|(_, s)| *s >= 0.05)
            .map(|(r, s)| format!("{r} {s:.1}"))
            .collect();
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} |",
            o.peer.replace('|', "\\|"),
            o.rows,
            o.seconds,
            o.rows_per_sec,
            cpu.join(", "),
            o.peak_rss_mb.map_or("-".into(), |m| format!("{m:.1}"))
        );
    }
    let ratio = results[1].rows_per_sec / results[0].rows_per_sec;
    println!("\nferry / pg_dump | psql: {ratio:.2}x");
    println!(
        "binary COPY, 2 streams / pg_dump | psql: {:.2}x (the ceiling of copying chunks without decoding them)",
        results[2].rows_per_sec / results[0].rows_per_sec
    );
    let report = serde_json::json!({
        "date": crate::utc_date_today(),
        "machine": crate::machine(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "rows": rows,
        "median": results,
        "ratio": ratio,
        "ratio_binary_copy": results[2].rows_per_sec / results[0].rows_per_sec,
        "runs": {"pg_dump_psql": dump_runs, "ferry": ferry_runs, "binary_copy_2_streams": raw_runs},
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The median run by seconds (its other figures with it), peak RSS the
/// highest of all runs.
fn median(runs: &[SnapshotOutcome]) -> SnapshotOutcome {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let mut out = sorted[sorted.len() / 2].clone();
    out.peer = format!("{} (median of {})", out.peer, runs.len());
    out.peak_rss_mb = runs
        .iter()
        .filter_map(|r| r.peak_rss_mb)
        .max_by(f64::total_cmp);
    out
}

async fn ferry_snapshot(
    source: &LocalCluster,
    src: &Client,
    target: &LocalCluster,
    run: usize,
    rows: u64,
    dir: &Path,
    perf_data: Option<&Path>,
) -> anyhow::Result<SnapshotOutcome> {
    let db = format!("ferry_{run}");
    target.create_database(&db).await?;
    let dst = target.connect(&db).await?;
    let slot = format!("snap_{run}");
    let config = dir.join(format!("{db}.toml"));
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"snap\"\n\n[source]\nkind = \"postgres\"\nurl = \"{}\"\ntables = [\"public.snap\"]\nslot = \"{slot}\"\n\n[sink]\nkind = \"postgres\"\nurl = \"{}\"\n",
            source.url("bench"),
            target.url(&db)
        ),
    )?;
    let log = dir.join(format!("{db}.log"));
    let exclude_src = vec![backend_pid(src).await?];
    let exclude_dst = vec![backend_pid(&dst).await?];
    let src_cpu = BackendCpu::start(source, "source", exclude_src).await?;
    let dst_cpu = BackendCpu::start(target, "target", exclude_dst).await?;
    let started = Instant::now();
    let mut ferry = FerryProcess::spawn(&config, &log)?;
    let perf = perf_data
        .map(|p| perf_record(ferry.0.id(), p))
        .transpose()?;
    let done = wait_snapshot_row(&dst, Duration::from_secs(3600)).await;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(perf) = perf {
        perf_stop(perf)?;
    }
    if done.is_err() {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    done?;
    let ferry_cpu = ferry.cpu_seconds().unwrap_or(f64::NAN);
    let rss = ferry.peak_rss_mb();
    ferry.stop();
    let mut cpu = vec![("ferry".to_string(), ferry_cpu)];
    cpu.extend(src_cpu.finish().await);
    cpu.extend(dst_cpu.finish().await);
    let copied = count(&dst).await?;
    if copied != rows {
        bail!("ferry copied {copied} rows, not {rows}");
    }
    super::wait_slot_inactive(src, &slot).await?;
    src.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await?;
    drop(dst);
    target
        .connect("postgres")
        .await?
        .batch_execute(&format!("DROP DATABASE {db}"))
        .await?;
    eprintln!("  ferry: {seconds:.2}s, {ferry_cpu:.1} CPU seconds");
    Ok(SnapshotOutcome {
        peer: "ferry (initial snapshot)".into(),
        rows,
        seconds,
        rows_per_sec: rows as f64 / seconds,
        cpu,
        peak_rss_mb: rss,
    })
}

/// Waits until the target records the snapshot of `public.snap` complete.
async fn wait_snapshot_row(dst: &Client, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        // The bookkeeping table does not exist until ferry starts.
        if let Ok(Some(_)) = dst
            .query_opt(
                "SELECT 1 FROM public.ferry_snapshot WHERE table_schema = 'public' AND table_name = 'snap'",
                &[],
            )
            .await
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the snapshot did not complete in {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The peers that are shell pipelines.
#[derive(Clone, Copy)]
enum Shell {
    /// `pg_dump -t public.snap | psql`.
    Dump,
    /// The table created as the source has it, then two
    /// `COPY (… WHERE ctid in half) TO STDOUT (FORMAT binary) | COPY … FROM
    /// STDIN (FORMAT binary)` pipes at once: rows never decoded, in two
    /// streams like Ferry's two chunk connections. Not a migration tool (no
    /// common snapshot): the ceiling of the raw-copy lever.
    BinaryCopy,
}

async fn shell_snapshot(
    source: &LocalCluster,
    target: &LocalCluster,
    run: usize,
    rows: u64,
    peer: Shell,
) -> anyhow::Result<SnapshotOutcome> {
    let (db, name) = match peer {
        Shell::Dump => (format!("dump_{run}"), "pg_dump -t | psql"),
        Shell::BinaryCopy => (format!("raw_{run}"), "binary COPY | COPY, 2 streams"),
    };
    target.create_database(&db).await?;
    let pages: i32 = source
        .connect("bench")
        .await?
        .query_one("SELECT relpages FROM pg_class WHERE relname = 'snap'", &[])
        .await?
        .get(0);
    let half = (pages / 2).max(1);
    // bash's `times` prints the CPU of the pipeline's processes (its
    // waited-for children) on its second line.
    let script = match peer {
        Shell::Dump => r#"set -o pipefail; pg_dump -t public.snap "$1" | psql -X -q -v ON_ERROR_STOP=1 -o /dev/null "$2" && times"#.to_string(),
        Shell::BinaryCopy => format!(
            r#"set -o pipefail
            psql -X -q -v ON_ERROR_STOP=1 "$2" -c '{TABLE_SQL}' || exit 1
            pipe() {{ psql -X -q -v ON_ERROR_STOP=1 "$1" -c "COPY (SELECT * FROM snap WHERE $3) TO STDOUT (FORMAT binary)"                 | psql -X -q -v ON_ERROR_STOP=1 -o /dev/null "$2" -c 'COPY snap FROM STDIN (FORMAT binary)'; }}
            pipe "$1" "$2" "ctid < '({half},0)'::tid" & a=$!
            pipe "$1" "$2" "ctid >= '({half},0)'::tid" & b=$!
            wait $a && wait $b && times"#
        ),
    };
    let src_cpu = BackendCpu::start(source, "source", vec![]).await?;
    let dst_cpu = BackendCpu::start(target, "target", vec![]).await?;
    let started = Instant::now();
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .arg("bash")
        .arg(source.url("bench"))
        .arg(target.url(&db))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("run pg_dump / psql (Debian package postgresql-client)")?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("{name} exited with {}", output.status);
    }
    let tools =
        children_cpu(&String::from_utf8_lossy(&output.stdout)).context("bash's `times` output")?;
    let mut cpu = vec![("pg_dump/psql".to_string(), tools)];
    cpu.extend(src_cpu.finish().await);
    cpu.extend(dst_cpu.finish().await);
    let dst = target.connect(&db).await?;
    let copied = count(&dst).await?;
    if copied != rows {
        bail!("{name} copied {copied} rows, not {rows}");
    }
    drop(dst);
    target
        .connect("postgres")
        .await?
        .batch_execute(&format!("DROP DATABASE {db}"))
        .await?;
    eprintln!("  {name}: {seconds:.2}s");
    Ok(SnapshotOutcome {
        peer: name.into(),
        rows,
        seconds,
        rows_per_sec: rows as f64 / seconds,
        cpu,
        peak_rss_mb: None,
    })
}

/// User + system seconds of the children line of bash's `times`
/// (`0m1.234s 0m0.567s`).
fn children_cpu(times: &str) -> Option<f64> {
    let line = times.lines().nth(1)?;
    line.split_whitespace()
        .map(|t| {
            let (m, s) = t.strip_suffix('s')?.split_once('m')?;
            Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
        })
        .sum()
}

/// `perf record` (call graphs through DWARF unwinding: the release build
/// has symbols, no frame pointers) attached to `pid`, writing `out`.
fn perf_record(pid: u32, out: &Path) -> anyhow::Result<std::process::Child> {
    Command::new("perf")
        .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
        .arg(out)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run perf (Debian package linux-perf)")
}

/// Stops `perf record` with SIGINT, so that it writes its file.
fn perf_stop(mut perf: std::process::Child) -> anyhow::Result<()> {
    Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status()?;
    perf.wait()?;
    Ok(())
}
