//! `ferry-bench --mongo`: the MongoDB source against the bare driver, on a
//! MongoDB-protocol server (SecantusDB, from `target/secantus-venv`, which
//! `tests/run.sh` installs) and a local PostgreSQL target.
//!
//! - Snapshot: `--mongo-docs` documents exist; the bare driver scans them
//!   in `_id` order (the limit), then Ferry copies them into PostgreSQL; the
//!   clock stops when the target holds them all.
//! - Stream: with Ferry stopped, the same number of changes is written
//!   (inserts and updates); the bare driver reads them back from a change
//!   stream (the limit), then Ferry resumes from its checkpoint and the
//!   clock stops when the last change is visible in the target.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bson::{doc, Document};
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use futures_util::StreamExt;
use mongodb::options::FullDocumentType;

pub(super) struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn secantusd() -> PathBuf {
    std::env::var_os("FERRY_SECANTUSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/secantus-venv/bin/secantusd-py"))
}

pub(super) async fn start_server() -> anyhow::Result<(Server, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = secantusd();
    if !exe.exists() {
        bail!(
            "{} not found: run tests/run.sh once (it installs SecantusDB)",
            exe.display()
        );
    }
    let child = Command::new(&exe)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--storage-path",
            ":memory:",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", exe.display()))?;
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("SecantusDB did not listen on {port}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((
        server,
        format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
    ))
}

/// Rows of `public.docs` (the table the document-source benchmarks mirror
/// into) matching `filter` (`""` or a `WHERE …`).
pub(super) async fn target_count(c: &tokio_postgres::Client, filter: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM public.docs {filter}"), &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

/// When `public.docs` first holds `n` rows matching `filter`, polled every
/// 5 ms (fine enough for the one-change lag figures).
pub(super) async fn wait_target(
    c: &tokio_postgres::Client,
    filter: &str,
    n: i64,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(1200);
    while target_count(c, filter).await < n {
        if Instant::now() > deadline {
            bail!("the target never reached {n} rows ({filter})");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Instant::now())
}

fn document(i: i64, version: i64) -> Document {
    doc! {
        "_id": i,
        "amount": bson::Decimal128::from_bytes(decimal_bytes(i)),
        "who": format!("user-{}", i % 997),
        "version": version,
        "tags": ["a", "b"],
        "nested": { "n": i, "note": "bench" },
    }
}

/// A Decimal128 whose value is i/100, built from its bit layout: exponent
/// -2 (biased 6174), coefficient i.
fn decimal_bytes(i: i64) -> [u8; 16] {
    let coefficient = i.unsigned_abs() as u128;
    let exponent = (6176u128 - 2) << 113;
    let sign = if i < 0 { 1u128 << 127 } else { 0 };
    (sign | exponent | coefficient).to_le_bytes()
}

pub(crate) async fn run(docs: i64, ferry: &std::path::Path) -> anyhow::Result<()> {
    let (_server, url) = start_server().await?;
    let target = LocalCluster::start(ClusterOptions::default()).await?;
    target.create_database("bench").await?;
    let pg = target.connect("bench").await?;
    let client = mongodb::Client::with_uri_str(&url).await?;
    let coll = client.database("bench").collection::<Document>("docs");
    for chunk in (1..=docs).collect::<Vec<_>>().chunks(1000) {
        coll.insert_many(chunk.iter().map(|&i| document(i, 0)))
            .await?;
    }

    // Snapshot: the driver's scan, then Ferry's copy.
    let started = Instant::now();
    let mut cursor = coll
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .batch_size(1000)
        .await?;
    let mut scanned = 0i64;
    while let Some(d) = cursor.next().await {
        d?;
        scanned += 1;
    }
    let driver_scan = started.elapsed().as_secs_f64();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"mbench\"\nbatch_size = 10000\n\n[source]\nkind = \"mongodb\"\nurl = \"{url}\"\ndatabase = \"bench\"\ncollections = [\"docs\"]\n\n[sink]\nkind = \"postgres\"\nurl = \"{}\"\nschema = \"public\"\n",
            target.url("bench")
        ),
    )?;
    let log = dir.path().join("ferry.log");
    let spawn = || -> anyhow::Result<Child> {
        let out = std::fs::File::create(&log)?;
        Ok(Command::new(ferry)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?)
    };
    let started = Instant::now();
    let mut child = spawn()?;
    let copied = wait_target(&pg, "", docs)
        .await?
        .duration_since(started)
        .as_secs_f64();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();

    // Stream: `docs` changes written while Ferry is stopped (half inserts,
    // half updates), read by the driver from a change stream opened before
    // them, then by Ferry from its checkpoint.
    let db = client.database("bench");
    // The same stream options as the source (see connectors/mongodb).
    let mut stream = db
        .watch()
        .pipeline([doc! { "$project": { "updateDescription": 0 } }])
        .full_document(FullDocumentType::UpdateLookup)
        .full_document_before_change(mongodb::options::FullDocumentBeforeChangeType::WhenAvailable)
        .await?;
    let half = docs / 2;
    for chunk in (docs + 1..=docs + half).collect::<Vec<_>>().chunks(1000) {
        coll.insert_many(chunk.iter().map(|&i| document(i, 0)))
            .await?;
    }
    for i in 1..=(docs - half) {
        coll.update_one(doc! { "_id": i }, doc! { "$set": { "version": 1 } })
            .await?;
    }
    let changes = half + (docs - half);
    let started = Instant::now();
    let mut read = 0i64;
    while read < changes {
        match stream.next().await {
            Some(ev) => {
                ev?;
                read += 1;
            }
            None => bail!("the change stream ended"),
        }
    }
    let driver_stream = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut child = spawn()?;
    let done = wait_target(&pg, "WHERE (document->>'version')::int = 1", docs - half).await;
    let applied = done?.duration_since(started).as_secs_f64();
    let total = target_count(&pg, "").await;
    let _ = child.kill();
    let _ = child.wait();
    if total != docs + half {
        bail!("the target holds {total} rows, expected {}", docs + half);
    }

    println!("\n| phase | documents / changes | bare driver (s) | ferry to PostgreSQL (s) | driver /s | ferry /s | ferry / driver |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (phase, n, d, f) in [
        ("snapshot (scan vs copy)", scanned, driver_scan, copied),
        (
            "change stream (read vs apply)",
            changes,
            driver_stream,
            applied,
        ),
    ] {
        println!(
            "| {phase} | {n} | {d:.2} | {f:.2} | {:.0} | {:.0} | {:.2} |",
            n as f64 / d,
            n as f64 / f,
            d / f
        );
    }
    Ok(())
}
