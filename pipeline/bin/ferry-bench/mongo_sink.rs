//! `ferry-bench --mongo-sink`: the MongoDB sink against the bare driver's
//! bulk upserts of the same documents, on a MongoDB-protocol server
//! (SecantusDB, from `target/secantus-venv`, which `tests/run.sh`
//! installs), in the same run.
//!
//! Per run (fresh PostgreSQL database and MongoDB databases each time):
//! - the bare driver: the `N` documents, built in memory beforehand, are
//!   written as `update` commands of 1000 ordered `$set` upserts by `_id`
//!   (what an application's bulk loader does), no transaction;
//! - Ferry: `N` rows exist in PostgreSQL; `ferry run` (PostgreSQL source,
//!   MongoDB sink) starts, and the clock stops when the collection holds
//!   `N` documents. Ferry's figure includes its start, the slot's creation
//!   and the snapshot read: the sink is measured as a user sees it.
//!
//! Medians of `--repeat` runs; the table is printed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use bson::{doc, Bson, Document};
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};

use crate::mongo::start_server;
use crate::percentile;

fn document(i: i64) -> Document {
    doc! {
        "id": i,
        "amount": Bson::Decimal128(format!("{}.{:02}", i / 100, i % 100).parse().expect("decimal")),
        "who": format!("user-{}", i % 997),
        "version": 0i32,
        "note": "bench",
    }
}

async fn count(db: &mongodb::Database) -> u64 {
    db.collection::<Document>("docs")
        .estimated_document_count()
        .await
        .unwrap_or(0)
}

/// The bare driver's bulk upserts; seconds.
async fn driver_run(client: &mongodb::Client, db: &str, docs: i64) -> anyhow::Result<f64> {
    let db = client.database(db);
    let prepared: Vec<Vec<Bson>> = (1..=docs)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|c| {
            c.iter()
                .map(|&i| {
                    Bson::Document(
                        doc! {"q": {"_id": i}, "u": {"$set": document(i)}, "upsert": true},
                    )
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    for updates in prepared {
        let r = db
            .run_command(doc! {"update": "docs", "updates": updates, "ordered": true})
            .await?;
        if r.get("writeErrors").is_some() {
            bail!("the bare driver's upserts failed: {r}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if count(&db).await != docs as u64 {
        bail!(
            "the bare driver wrote {} documents, not {docs}",
            count(&db).await
        );
    }
    Ok(secs)
}

/// Ferry from PostgreSQL into MongoDB; seconds.
async fn ferry_run(
    ferry: &std::path::Path,
    source: &LocalCluster,
    url: &str,
    client: &mongodb::Client,
    run: usize,
    docs: i64,
) -> anyhow::Result<f64> {
    let pg_db = format!("msink{run}");
    source.create_database(&pg_db).await?;
    let pg = source.connect(&pg_db).await?;
    pg.batch_execute(&format!(
        "CREATE TABLE docs (id bigint PRIMARY KEY, amount numeric(12,2), who text, version integer, note text);
         INSERT INTO docs SELECT g, g / 100.0, 'user-' || (g % 997), 0, 'bench' FROM generate_series(1, {docs}) g;"
    ))
    .await?;
    let target = format!("ferry{run}");
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"msink{run}\"\n\n[source]\nkind = \"postgres\"\nurl = \"{}\"\ntables = [\"public.docs\"]\nslot = \"ferry_msink{run}\"\n\n[sink]\nkind = \"mongodb\"\nurl = \"{url}\"\ndatabase = \"{target}\"\n",
            source.url(&pg_db)
        ),
    )?;
    let log = std::fs::File::create(dir.path().join("ferry.log"))?;
    let db = client.database(&target);
    let started = Instant::now();
    let mut child: Child = Command::new(ferry)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(1200);
    while count(&db).await < docs as u64 {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "ferry never wrote {docs} documents; its log:\n{}",
                std::fs::read_to_string(dir.path().join("ferry.log")).unwrap_or_default()
            );
        }
        // Not tighter: the test server is single-threaded Python, and a
        // count every few milliseconds takes its time from Ferry's writes.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    Ok(secs)
}

pub(crate) async fn run(docs: i64, repeat: usize, ferry: &std::path::Path) -> anyhow::Result<()> {
    let (_server, url) = start_server().await?;
    let source = LocalCluster::start(ClusterOptions::default()).await?;
    let client = mongodb::Client::with_uri_str(&url).await?;
    let (mut driver, mut ferry_secs) = (Vec::new(), Vec::new());
    // Peers alternate, each on fresh databases.
    for run in 0..repeat.max(1) {
        driver.push(driver_run(&client, &format!("driver{run}"), docs).await?);
        ferry_secs.push(ferry_run(ferry, &source, &url, &client, run, docs).await?);
    }
    let d = percentile(&driver, 0.5);
    let f = percentile(&ferry_secs, 0.5);
    println!(
        "\n| peer (median of {}) | documents | seconds | documents/s |",
        driver.len()
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| bare driver, ordered $set upserts of 1000 | {docs} | {d:.2} | {:.0} |",
        docs as f64 / d
    );
    println!(
        "| ferry: PostgreSQL → MongoDB sink (start, snapshot, transactions) | {docs} | {f:.2} | {:.0} |",
        docs as f64 / f
    );
    println!("\nferry / driver: {:.2}", d / f);
    println!("runs (s): driver {driver:?}, ferry {ferry_secs:?}");
    Ok(())
}
