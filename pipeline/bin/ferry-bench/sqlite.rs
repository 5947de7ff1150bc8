//! `ferry-bench --sqlite`: the SQLite source against SQLite's own export,
//! and the cost of Ferry's triggers on the application's writes.
//!
//! - Snapshot: a file of `--sqlite-rows` rows (`items`: integer key, text,
//!   real, text, integer) is imported into PostgreSQL by `ferry run` in
//!   `mode = "snapshot"` (the clock stops when the process exits: every row
//!   committed), and by `sqlite3 FILE .dump | psql` (Debian's `sqlite3` CLI;
//!   `PRAGMA` lines dropped, PostgreSQL reads the rest as it is) into
//!   another database of the same cluster.
//! - Trigger overhead: the application's insert rate, one row per
//!   transaction (WAL, `synchronous = NORMAL`, what applications run), on a
//!   file without and with Ferry's triggers (`ferry sqlite prepare`).
//!
//! Runs alternate and the table shows medians.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use rusqlite::Connection;

const TABLE_SQL: &str = "CREATE TABLE items (id INTEGER PRIMARY KEY, account TEXT NOT NULL, \
    amount REAL NOT NULL, note TEXT, created_unix INTEGER NOT NULL)";

fn make_file(path: &Path, rows: i64) -> anyhow::Result<()> {
    let mut c = Connection::open(path)?;
    c.execute_batch(TABLE_SQL)?;
    let tx = c.transaction()?;
    {
        let mut stmt = tx.prepare("INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for i in 1..=rows {
            stmt.execute((
                i,
                format!("acct-{:06}", i % 100_003),
                (i % 1_000_000) as f64 / 100.0,
                "bench row, some text to carry",
                1_700_000_000 + i,
            ))?;
        }
    }
    tx.commit()?;
    Ok(())
}

async fn count(pg: &tokio_postgres::Client) -> i64 {
    pg.query_one("SELECT count(*) FROM public.items", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// Seconds for `ferry run` (snapshot mode) to import the file.
async fn ferry_import(
    ferry: &Path,
    file: &Path,
    target: &LocalCluster,
    db: &str,
    dir: &Path,
) -> anyhow::Result<f64> {
    target.create_database(db).await?;
    let config = dir.join(format!("{db}.toml"));
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"lbench\"\nbatch_size = 10000\n\n[source]\nkind = \"sqlite\"\npath = {:?}\nmode = \"snapshot\"\n\n[sink]\nkind = \"postgres\"\nurl = \"{}\"\nschema = \"public\"\n",
            file.display().to_string(),
            target.url(db)
        ),
    )?;
    let log = std::fs::File::create(dir.join(format!("{db}.log")))?;
    let started = Instant::now();
    let status = Command::new(ferry)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("ferry run exited with {status}; see {db}.log");
    }
    Ok(secs)
}

/// Seconds for `sqlite3 FILE .dump | psql` to import the file.
async fn dump_import(file: &Path, target: &LocalCluster, db: &str) -> anyhow::Result<f64> {
    target.create_database(db).await?;
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"sqlite3 "$1" .dump | grep -v '^PRAGMA' | psql -X -q -o /dev/null "$2""#)
        .arg("sh")
        .arg(file)
        .arg(target.url(db))
        .stdin(Stdio::null())
        .status()
        .context("run sqlite3 .dump | psql (Debian packages sqlite3, postgresql-client)")?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("sqlite3 .dump | psql exited with {status}");
    }
    Ok(secs)
}

/// The application's inserts per second, one row per transaction.
fn insert_rate(path: &Path, triggers: bool, inserts: i64) -> anyhow::Result<f64> {
    let mut c = Connection::open(path)?;
    c.execute_batch(TABLE_SQL)?;
    c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    c.execute_batch("PRAGMA synchronous = NORMAL")?;
    if triggers {
        let t = ferry_sqlite_source::catalog::describe(&c, "items")?.context("items")?;
        ferry_sqlite_source::change_log::prepare(&mut c, &[t])?;
    }
    let mut stmt = c.prepare("INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5)")?;
    let started = Instant::now();
    for i in 1..=inserts {
        stmt.execute((i, "acct", 1.5, "note", 1_700_000_000 + i))?;
    }
    Ok(inserts as f64 / started.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) async fn run(
    rows: i64,
    inserts: i64,
    repeat: usize,
    out: &Path,
    ferry: &Path,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bench.db");
    make_file(&file, rows)?;
    let target = LocalCluster::start(ClusterOptions::default()).await?;
    let (mut ferry_s, mut dump_s, mut plain, mut with) = (vec![], vec![], vec![], vec![]);
    for run in 0..repeat.max(1) {
        eprintln!("run {} of {}", run + 1, repeat.max(1));
        let f = ferry_import(ferry, &file, &target, &format!("ferry_{run}"), dir.path()).await?;
        let pg = target.connect(&format!("ferry_{run}")).await?;
        if count(&pg).await != rows {
            bail!("ferry imported {} rows, not {rows}", count(&pg).await);
        }
        ferry_s.push(f);
        let d = dump_import(&file, &target, &format!("dump_{run}")).await?;
        let pg = target.connect(&format!("dump_{run}")).await?;
        if count(&pg).await != rows {
            bail!("the dump imported {} rows, not {rows}", count(&pg).await);
        }
        dump_s.push(d);
        let p = dir.path().join(format!("plain_{run}.db"));
        plain.push(tokio::task::block_in_place(|| {
            insert_rate(&p, false, inserts)
        })?);
        let w = dir.path().join(format!("with_{run}.db"));
        with.push(tokio::task::block_in_place(|| {
            insert_rate(&w, true, inserts)
        })?);
    }
    let (f, d) = (median(&mut ferry_s), median(&mut dump_s));
    let (p, w) = (median(&mut plain), median(&mut with));
    println!("\n| snapshot of {rows} rows into PostgreSQL | seconds | rows/s |");
    println!("|---|---:|---:|");
    println!(
        "| ferry (mode = \"snapshot\") | {f:.2} | {:.0} |",
        rows as f64 / f
    );
    println!(
        "| sqlite3 .dump \\| psql | {d:.2} | {:.0} |",
        rows as f64 / d
    );
    println!(
        "\n| application inserts (1 row per transaction, WAL, synchronous = NORMAL) | inserts/s |"
    );
    println!("|---|---:|");
    println!("| without triggers | {p:.0} |");
    println!(
        "| with Ferry's triggers | {w:.0} ({:+.1}%) |",
        (w / p - 1.0) * 100.0
    );
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let report = serde_json::json!({
        "machine": super::machine(),
        "date": super::utc_date_today(),
        "rows": rows, "inserts": inserts, "runs": repeat.max(1),
        "median": { "ferry_snapshot_s": f, "dump_psql_s": d, "inserts_per_s_plain": p, "inserts_per_s_triggers": w },
        "all": { "ferry_snapshot_s": ferry_s, "dump_psql_s": dump_s, "inserts_per_s_plain": plain, "inserts_per_s_triggers": with },
    });
    std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    println!("report written to {}", out.display());
    Ok(())
}
