//! `ferry-bench --convex-source`: the Convex source against a bare HTTP
//! client paging the same export routes, same run, on the Convex test
//! server (tests/convex-server, `npm ci` there first) and a local
//! PostgreSQL target.
//!
//! - Snapshot: `--convex-docs` documents exist; the bare client pages
//!   `list_snapshot` to its end (parsing each page), then Ferry copies them
//!   into PostgreSQL; the clock stops when the target holds them all.
//! - Catch-up: with Ferry stopped, as many patches are written; the bare
//!   client pages `document_deltas` from the cursor before them, then Ferry
//!   resumes from its checkpoint; the clock stops when the last patch is
//!   visible in the target.
//! - Lag: with Ferry following, one patch at a time; the time from the
//!   write's reply to the row in the target (p50/p99).
//!
//! The test server is a Node process running Convex's `convex-test`: both
//! peers share its speed, so the ratio is what the figures are for.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use serde_json::{json, Value as Json};

const KEY: &str = "ferry-bench|0123456789abcdef";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> anyhow::Result<(Server, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/convex-server");
    if !dir.join("node_modules/tsx").exists() {
        bail!("run `npm ci` in {} first", dir.display());
    }
    let mut child = Command::new("node")
        .current_dir(&dir)
        .args(["--import", "tsx", "server.ts"])
        .env("FERRY_TEST_DEPLOY_KEY", KEY)
        .env("PORT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the Convex test server (node)")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let server = Server(child);
    let Some(port) = line.strip_prefix("listening ").map(str::trim) else {
        bail!("the Convex test server did not start: {line:?}");
    };
    Ok((server, format!("http://127.0.0.1:{port}")))
}

/// A bare HTTP client (ureq, blocking) of the test server.
#[derive(Clone)]
struct Http {
    agent: ureq::Agent,
    url: String,
}

impl Http {
    fn get(&self, route: &str, query: &[(&str, String)]) -> anyhow::Result<Json> {
        let mut req = self
            .agent
            .get(format!("{}/api/{route}", self.url))
            .header("authorization", format!("Convex {KEY}"));
        for (k, v) in query {
            req = req.query(*k, v);
        }
        let text = req.call()?.body_mut().read_to_string()?;
        Ok(serde_json::from_str(&text)?)
    }

    fn write(&self, ops: Vec<Json>) -> anyhow::Result<Vec<String>> {
        let body =
            json!({"path": "testing:write", "args": {"ops": ops}, "format": "convex_encoded_json"});
        let text = self
            .agent
            .post(format!("{}/api/mutation", self.url))
            .header("content-type", "application/json")
            .header("authorization", format!("Convex {KEY}"))
            .send(body.to_string())?
            .body_mut()
            .read_to_string()?;
        let reply: Json = serde_json::from_str(&text)?;
        if reply["status"] != "success" {
            bail!("testing:write: {reply}");
        }
        Ok(reply["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Pages `list_snapshot` of `docs` to its end: (documents, snapshot).
    fn page_snapshot(&self) -> anyhow::Result<(u64, i64)> {
        let (mut n, mut snapshot, mut cursor) = (0u64, None::<i64>, None::<String>);
        loop {
            let mut q = vec![
                ("format", "convex_encoded_json".to_string()),
                ("tableName", "docs".to_string()),
            ];
            if let Some(s) = snapshot {
                q.push(("snapshot", s.to_string()));
            }
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page = self.get("list_snapshot", &q)?;
            n += page["values"].as_array().map_or(0, Vec::len) as u64;
            snapshot = page["snapshot"].as_i64();
            if page["hasMore"] != true {
                return Ok((n, snapshot.unwrap_or_default()));
            }
            cursor = page["cursor"].as_str().map(String::from);
        }
    }

    /// Pages `document_deltas` from `cursor` until `want` values arrived.
    fn page_deltas(&self, mut cursor: i64, want: u64) -> anyhow::Result<u64> {
        let mut n = 0u64;
        while n < want {
            let page = self.get(
                "document_deltas",
                &[
                    ("format", "convex_encoded_json".to_string()),
                    ("cursor", cursor.to_string()),
                ],
            )?;
            n += page["values"].as_array().map_or(0, Vec::len) as u64;
            cursor = page["cursor"].as_i64().context("cursor")?;
        }
        Ok(n)
    }
}

fn doc(i: u64, version: f64) -> Json {
    json!({
        "who": format!("user-{}", i % 997),
        "n": {"$integer": "KgAAAAAAAAA="},
        "version": version,
        "tags": ["a", "b"],
        "nested": {"i": i as f64, "note": "bench"},
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

pub(crate) async fn run(docs: u64, out: &Path, ferry: &Path) -> anyhow::Result<()> {
    let (_server, url) = start_server()?;
    let http = Http {
        agent: ureq::Agent::new_with_defaults(),
        url: url.clone(),
    };
    let target = LocalCluster::start(ClusterOptions::default()).await?;
    target.create_database("bench").await?;
    let pg = target.connect("bench").await?;
    let h = http.clone();
    let ids: Vec<String> = blocking(move || {
        let mut ids = Vec::new();
        for start in (0..docs).step_by(500) {
            let ops = (start..(start + 500).min(docs))
                .map(|i| json!({"op": "insert", "table": "docs", "doc": doc(i, 0.0)}))
                .collect();
            ids.extend(h.write(ops)?);
        }
        Ok(ids)
    })
    .await?;

    // Snapshot: the bare client, then Ferry.
    let h = http.clone();
    let started = Instant::now();
    let (paged, _) = blocking(move || h.page_snapshot()).await?;
    let bare_snapshot = started.elapsed().as_secs_f64();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"cbench\"\nbatch_size = 10000\n\n[source]\nkind = \"convex\"\nurl = \"{url}\"\ndeploy_key = \"{KEY}\"\ntables = [\"docs\"]\n\n[sink]\nkind = \"postgres\"\nurl = \"{}\"\nschema = \"public\"\n",
            target.url("bench")
        ),
    )?;
    let log = dir.path().join("ferry.log");
    let spawn = || -> anyhow::Result<Child> {
        let out = std::fs::File::create(&log)?;
        Ok(Command::new(ferry)
            .current_dir(dir.path())
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?)
    };
    let started = Instant::now();
    let mut child = spawn()?;
    let copied = super::mongo::wait_target(&pg, "", docs as i64)
        .await?
        .duration_since(started)
        .as_secs_f64();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();

    // Catch-up: patches written while Ferry is stopped.
    let h = http.clone();
    let (_, before) = blocking(move || h.page_snapshot()).await?;
    let h = http.clone();
    let patch_ids = ids.clone();
    blocking(move || {
        for chunk in patch_ids.chunks(500) {
            let ops = chunk
                .iter()
                .map(|id| json!({"op": "patch", "id": id, "doc": {"version": 1.0}}))
                .collect();
            h.write(ops)?;
        }
        Ok(())
    })
    .await?;
    let h = http.clone();
    let started = Instant::now();
    let read = blocking(move || h.page_deltas(before, docs)).await?;
    let bare_deltas = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut child = spawn()?;
    let applied =
        super::mongo::wait_target(&pg, "WHERE (document->>'version')::float8 = 1", docs as i64)
            .await?
            .duration_since(started)
            .as_secs_f64();

    // Lag: one patch at a time while Ferry follows.
    let mut lags = Vec::new();
    for (k, id) in ids.iter().take(100).enumerate() {
        let version = 2.0 + k as f64;
        let h = http.clone();
        let op = json!({"op": "patch", "id": id, "doc": {"version": version}});
        blocking(move || h.write(vec![op])).await?;
        let written = Instant::now();
        let filter = format!("WHERE _id = '{id}' AND (document->>'version')::float8 = {version}");
        let seen = super::mongo::wait_target(&pg, &filter, 1).await?;
        lags.push(seen.duration_since(written).as_secs_f64() * 1000.0);
    }
    let _ = child.kill();
    let _ = child.wait();
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize];

    let rows = [
        ("snapshot (page vs copy)", paged, bare_snapshot, copied),
        ("deltas (page vs apply)", read, bare_deltas, applied),
    ];
    println!("\n| phase | documents / changes | bare client (s) | ferry to PostgreSQL (s) | bare /s | ferry /s | ferry / bare |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (phase, n, b, f) in rows {
        println!(
            "| {phase} | {n} | {b:.2} | {f:.2} | {:.0} | {:.0} | {:.2} |",
            n as f64 / b,
            n as f64 / f,
            b / f
        );
    }
    println!(
        "\nlag, one patch at a time ({} probes): p50 {:.1} ms, p99 {:.1} ms",
        lags.len(),
        pct(0.5),
        pct(0.99)
    );
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    let report = json!({
        "machine": crate::machine(),
        "date": crate::utc_date_today(),
        "docs": docs,
        "phases": rows.iter().map(|(phase, n, b, f)| json!({
            "phase": phase, "count": n, "bare_seconds": b, "ferry_seconds": f,
            "bare_per_sec": *n as f64 / b, "ferry_per_sec": *n as f64 / f, "ratio": b / f,
        })).collect::<Vec<_>>(),
        "lag_ms": {"p50": pct(0.5), "p99": pct(0.99), "probes": lags.len()},
    });
    std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("report written to {}", out.display());
    Ok(())
}
