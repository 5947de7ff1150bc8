//! `ferry-bench --verify`: `ferry verify` against the naive peer on one
//! large PostgreSQL → PostgreSQL table, in the same run.
//!
//! Both clusters hold the same `--verify-rows` rows (written directly on
//! each side: the benchmark is the comparison, not the copy). The peers:
//!
//! - `ferry verify --config … --json` (defaults: 10,000-row chunks, 2
//!   jobs), timed as a child process; its peak RSS is its `VmHWM`, sampled
//!   while it runs.
//! - the naive peer a migration script uses: on each side
//!   `psql -c "COPY (SELECT * FROM big ORDER BY id) TO STDOUT" | md5sum`,
//!   both sides at once, timed until both digests are printed.
//!
//! Runs alternate between the peers; the table shows medians.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};

#[derive(Debug, Clone, serde::Serialize)]
struct VerifyOutcome {
    peer: String,
    rows: u64,
    seconds: f64,
    peak_rss_mb: Option<f64>,
    /// Whether the peer found both sides equal (they are).
    equal: bool,
}

const FILL: &str = "CREATE TABLE big (id bigint PRIMARY KEY, name text, amount numeric(12,2),
                                     doc jsonb, at timestamptz);
    INSERT INTO big SELECT g, 'customer ' || g, (g % 100000) * 0.01,
                           jsonb_build_object('k', g, 'tag', 'x', 'n', g % 7),
                           timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second'
      FROM generate_series(1, $ROWS) g;";

pub(crate) async fn run(rows: u64, repeat: usize, out: &Path, ferry: &Path) -> anyhow::Result<()> {
    let (source, target) = tokio::join!(
        LocalCluster::start(ClusterOptions::default()),
        LocalCluster::start(ClusterOptions::default())
    );
    let (source, target) = (source?, target?);
    for c in [&source, &target] {
        c.create_database("bench").await?;
    }
    eprintln!("filling {rows} rows on each side");
    let fill = FILL.replace("$ROWS", &rows.to_string());
    let (s, t) = (
        source.connect("bench").await?,
        target.connect("bench").await?,
    );
    let (a, b) = tokio::join!(s.batch_execute(&fill), t.batch_execute(&fill));
    a.context("fill the source")?;
    b.context("fill the target")?;
    // Its own statement: VACUUM cannot run in the multi-statement
    // transaction above.
    let (a, b) = tokio::join!(
        s.batch_execute("VACUUM ANALYZE big"),
        t.batch_execute("VACUUM ANALYZE big")
    );
    a?;
    b?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("verify.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"bench\"\n\n[source]\nkind = \"postgres\"\nurl = \"{}\"\ntables = [\"public.big\"]\n\n[sink]\nkind = \"postgres\"\nurl = \"{}\"\n",
            source.url("bench"),
            target.url("bench")
        ),
    )?;
    let mut ferry_runs = Vec::new();
    let mut naive_runs = Vec::new();
    for run in 0..repeat.max(1) {
        eprintln!("run {} of {}", run + 1, repeat.max(1));
        naive_runs.push(naive(&source.url("bench"), &target.url("bench"), rows)?);
        ferry_runs.push(ferry_verify(ferry, &config, rows)?);
    }
    let results = [median(&naive_runs), median(&ferry_runs)];
    println!();
    println!("| peer | rows | seconds | peak RSS (MB) | equal |");
    println!("|---|---:|---:|---:|---|");
    for o in &results {
        println!(
            "| {} | {} | {:.2} | {} | {} |",
            o.peer,
            o.rows,
            o.seconds,
            o.peak_rss_mb.map_or("-".into(), |m| format!("{m:.1}")),
            o.equal
        );
    }
    let speedup = results[0].seconds / results[1].seconds;
    println!("\nferry verify is {speedup:.2}x the naive peer's speed");
    let report = serde_json::json!({
        "date": crate::utc_date_today(),
        "machine": crate::machine(),
        // As it was run (a debug build measures the same: the work is in
        // PostgreSQL, ferry only sends the queries).
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "rows": rows,
        "median": results,
        "speedup": speedup,
        "runs": {"naive": naive_runs, "ferry_verify": ferry_runs},
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn median(runs: &[VerifyOutcome]) -> VerifyOutcome {
    let mut s: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
    s.sort_by(f64::total_cmp);
    let mut out = runs[0].clone();
    out.seconds = s[s.len() / 2];
    out.peak_rss_mb = runs
        .iter()
        .filter_map(|r| r.peak_rss_mb)
        .max_by(f64::total_cmp);
    out.equal = runs.iter().all(|r| r.equal);
    out
}

fn ferry_verify(ferry: &Path, config: &Path, rows: u64) -> anyhow::Result<VerifyOutcome> {
    let started = Instant::now();
    let mut child = Command::new(ferry)
        .args(["verify", "--json", "--no-record", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut peak: Option<f64> = None;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(child.id()) {
            peak = Some(peak.map_or(kb, |p: f64| p.max(kb)));
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut text)?;
    }
    let code = status.code();
    if code != Some(0) && code != Some(1) {
        bail!("ferry verify failed ({status}): {text}");
    }
    Ok(VerifyOutcome {
        peer: "ferry verify (chunk hashes in each database, 2 jobs)".into(),
        rows,
        seconds,
        peak_rss_mb: peak.map(|kb| kb / 1024.0),
        equal: code == Some(0),
    })
}

fn vm_hwm_kb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn naive(source: &str, target: &str, rows: u64) -> anyhow::Result<VerifyOutcome> {
    let script = |url: &str| {
        format!("psql '{url}' -Atq -c 'COPY (SELECT * FROM big ORDER BY id) TO STDOUT' | md5sum")
    };
    let started = Instant::now();
    let spawn = |url: &str| {
        Command::new("sh")
            .args(["-c", &script(url)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
    };
    let a = spawn(source)?;
    let b = spawn(target)?;
    let (a, b) = (a.wait_with_output()?, b.wait_with_output()?);
    let seconds = started.elapsed().as_secs_f64();
    if !a.status.success() || !b.status.success() {
        bail!("the naive peer failed: {} / {}", a.status, b.status);
    }
    Ok(VerifyOutcome {
        peer: "COPY … ORDER BY id piped to md5sum, both sides at once".into(),
        rows,
        seconds,
        peak_rss_mb: None,
        equal: a.stdout == b.stdout && !a.stdout.is_empty(),
    })
}
