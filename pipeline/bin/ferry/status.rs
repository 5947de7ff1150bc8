//! `ferry status`: every table's state, lag, rate and parked records, from
//! the running pipeline's `/status.json` (several endpoints with the Kafka
//! bus: one per process), or, when none answers, from what the target
//! holds (the checkpoint and the dead-letter queue): the pipeline is then
//! reported stopped. A live view refreshing like `top`; `--once` prints
//! one frame, `--json` the report itself.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ferry_pipeline::config::{Config, SinkConfig, SourceConfig};
use ferry_pipeline::event::TableId;
use ferry_pipeline::metrics::status::{
    Readiness, SnapshotProgress, StatusReport, TableReport, TableState,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::exit;

#[derive(Args)]
pub(crate) struct StatusArgs {
    #[arg(long, short)]
    config: PathBuf,
    /// A process's metrics endpoint (`host:port`; repeatable: every
    /// process of a Kafka deployment). Default: `[metrics] listen`.
    #[arg(long = "endpoint", value_name = "HOST:PORT")]
    endpoints: Vec<String>,
    /// Print one frame and exit (0 when a process answered, 1 when the
    /// pipeline is stopped).
    #[arg(long)]
    once: bool,
    /// Print the report as JSON (the `/status.json` format) and exit.
    #[arg(long)]
    json: bool,
    /// Seconds between two frames of the live view.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
}

pub(crate) async fn run(args: StatusArgs) -> u8 {
    let config = match crate::load(&args.config).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.metrics.tls_cert.is_some() && args.endpoints.is_empty() {
        eprintln!(
            "ferry status: the metrics endpoint serves HTTPS ([metrics] tls_cert), which ferry status does not read yet; pass --endpoint of a plain-HTTP endpoint, or it reads the target"
        );
    }
    let endpoints: Vec<String> = if !args.endpoints.is_empty() {
        args.endpoints.clone()
    } else if config.metrics.tls_cert.is_none() {
        config
            .metrics
            .listen
            .map(|a| {
                // A wildcard listen address is reached on loopback.
                let ip = if a.ip().is_unspecified() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    a.ip()
                };
                vec![std::net::SocketAddr::new(ip, a.port()).to_string()]
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let token = config
        .metrics
        .bearer_token
        .as_ref()
        .map(|t| t.expose().to_string());
    loop {
        let report = match live(&endpoints, token.as_deref()).await {
            Some(r) => r,
            None => match stopped(&config).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!(
                        "ferry status: no process answered ({}) and the target cannot be read: {e}",
                        if endpoints.is_empty() {
                            "no endpoint: set [metrics] listen or pass --endpoint".to_string()
                        } else {
                            endpoints.join(", ")
                        }
                    );
                    return exit::PIPELINE;
                }
            },
        };
        let code = if report.process == "running" {
            exit::OK
        } else {
            exit::MISMATCH
        };
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("the report serializes")
            );
            return code;
        }
        let frame = frame(&report, &endpoints);
        if args.once {
            print!("{frame}");
            return code;
        }
        // Clear the screen and draw from the top, like `top`.
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\x1b[2J\x1b[H{frame}");
        let _ = out.flush();
        drop(out);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(args.interval.max(0.2))) => {}
            _ = tokio::signal::ctrl_c() => return exit::OK,
        }
    }
}

/// The reports of every endpoint that answers, merged; `None` when none
/// does.
async fn live(endpoints: &[String], token: Option<&str>) -> Option<StatusReport> {
    let mut reports = Vec::new();
    for e in endpoints {
        match fetch(e, token).await {
            Ok(r) => reports.push(r),
            Err(why) => tracing::debug!(endpoint = %e, %why, "no status from this endpoint"),
        }
    }
    merge(reports)
}

/// `GET /status.json` over plain HTTP.
async fn fetch(addr: &str, token: Option<&str>) -> Result<StatusReport, String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        s.write_all(format!("GET /status.json HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(3), io)
        .await
        .map_err(|_| "no answer within 3 s".to_string())??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not HTTP")?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200") {
        return Err(status.to_string());
    }
    serde_json::from_str(body).map_err(|e| format!("unreadable /status.json: {e}"))
}

/// Several processes' reports as one: a table is as far behind as its
/// furthest process, its rate and applied counts add up, and the pipeline
/// is ready only when every process is.
fn merge(reports: Vec<StatusReport>) -> Option<StatusReport> {
    let mut it = reports.into_iter();
    let mut out = it.next()?;
    for r in it {
        out.streaming &= r.streaming;
        if !r.readiness.ready && out.readiness.ready {
            out.readiness = r.readiness.clone();
        }
        out.dlq_depth = out.dlq_depth.max(r.dlq_depth);
        out.last_error = out.last_error.or(r.last_error);
        out.rss_bytes += r.rss_bytes;
        out.cpu_seconds += r.cpu_seconds;
        for t in r.tables {
            match out.tables.iter_mut().find(|o| o.table == t.table) {
                None => out.tables.push(t),
                Some(o) => {
                    // The process that copies it (the source's) knows
                    // its snapshot state; the others report none.
                    if t.snapshot.is_some() && o.snapshot.is_none() {
                        o.state = t.state;
                        o.snapshot = t.snapshot.clone();
                    } else if t.state == TableState::Snapshotting {
                        o.state = TableState::Snapshotting;
                        o.snapshot = t.snapshot.clone();
                    }
                    if t.lag_seconds > o.lag_seconds {
                        o.lag_seconds = t.lag_seconds;
                        o.behind_since = t.behind_since;
                    }
                    o.rate += t.rate;
                    o.applied += t.applied;
                    o.dead_lettered = o.dead_lettered.max(t.dead_lettered);
                    o.last_error = o.last_error.take().or(t.last_error);
                }
            }
        }
    }
    out.tables.sort_by(|a, b| a.table.cmp(&b.table));
    Some(out)
}

/// What the target says when no process answers: the tables copied (from
/// the checkpoint), the configured ones, and the dead-letter queue.
async fn stopped(config: &Config) -> Result<StatusReport, String> {
    use ferry_pipeline::checkpoint::CheckpointStore;
    let mut tables: BTreeMap<String, TableReport> = BTreeMap::new();
    let blank = |name: &str| TableReport {
        table: name.to_string(),
        state: TableState::Stopped,
        lag_seconds: 0.0,
        behind_since: None,
        rate: 0.0,
        applied: 0,
        dead_lettered: 0,
        last_error: None,
        snapshot: None,
        history: Vec::new(),
    };
    if let SourceConfig::Postgres(s) = &config.source {
        for t in &s.tables {
            let name = TableId::parse(t).map_or(t.clone(), |id| id.to_string());
            tables.insert(name.clone(), blank(&name));
        }
    }
    let pipeline = config.pipeline.name.clone();
    let (checkpoint, dlq) = match &config.sink {
        SinkConfig::Postgres(dst) => {
            let mut sink = ferry_postgres_sink::PostgresSink::new(dst.clone(), pipeline.clone());
            let checkpoint = sink.load().await.map_err(|e| e.to_string())?;
            let groups = sink
                .dlq_list(&ferry_postgres_sink::dlq::Filter::default())
                .await
                .map_err(|e| e.to_string())?;
            let dlq: Vec<(String, u64)> = groups
                .into_iter()
                .map(|g| (g.table.to_string(), g.records.max(0) as u64))
                .collect();
            (checkpoint, dlq)
        }
        SinkConfig::Mongodb(dst) => {
            let mut sink = ferry_mongodb_sink::MongoSink::new(dst.clone(), pipeline.clone());
            let checkpoint = sink.load().await.map_err(|e| e.to_string())?;
            let records = sink.dlq_records().await.map_err(|e| e.to_string())?;
            let dlq = records
                .iter()
                .map(|r| (r["schemaTable"].as_str().unwrap_or("").to_string(), 1))
                .collect();
            (checkpoint, dlq)
        }
        SinkConfig::Convex(dst) => {
            let mut sink = ferry_convex_sink::ConvexSink::new(dst.clone(), pipeline.clone());
            let checkpoint = sink.load().await.map_err(|e| e.to_string())?;
            let records = sink.dlq_records().await.map_err(|e| e.to_string())?;
            let dlq = records
                .iter()
                .map(|r| (r["table"].as_str().unwrap_or("").to_string(), 1))
                .collect();
            (checkpoint, dlq)
        }
    };
    for (id, record) in &checkpoint.snapshots {
        let name = id.to_string();
        tables
            .entry(name.clone())
            .or_insert_with(|| blank(&name))
            .snapshot = Some(SnapshotProgress {
            rows: record.rows,
            estimate: record.rows,
            done: true,
            eta_seconds: None,
        });
    }
    let mut depth = 0i64;
    for (table, n) in dlq {
        depth += n as i64;
        tables
            .entry(table.clone())
            .or_insert_with(|| blank(&table))
            .dead_lettered += n;
    }
    Ok(StatusReport {
        pipeline,
        process: "stopped".into(),
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        streaming: false,
        readiness: Readiness {
            ready: false,
            reason: Some("no ferry process is running".into()),
        },
        dlq_depth: depth,
        last_error: None,
        rss_bytes: 0,
        cpu_seconds: 0.0,
        tables: tables.into_values().collect(),
    })
}

fn secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// One screen: a header line, then a line per table.
pub(crate) fn frame(r: &StatusReport, endpoints: &[String]) -> String {
    let mut out = String::new();
    let whence = if r.process == "running" {
        format!("running ({})", endpoints.join(", "))
    } else {
        "STOPPED: no ferry process answered; read from the target".to_string()
    };
    let ready = match &r.readiness.reason {
        None => "ready".to_string(),
        Some(why) => format!("not ready: {why}"),
    };
    out.push_str(&format!(
        "ferry status: pipeline {} | {whence} | {ready} | dead-letter queue {}\n",
        r.pipeline, r.dlq_depth
    ));
    if let Some(e) = &r.last_error {
        out.push_str(&format!("last error: {e}\n"));
    }
    let width = r
        .tables
        .iter()
        .map(|t| t.table.len())
        .max()
        .unwrap_or(5)
        .max(5);
    out.push_str(&format!(
        "{:<width$}  {:<36}  {:>10}  {:>9}  {:>10}  {:>6}  LAST ERROR\n",
        "TABLE", "STATE", "LAG", "RATE/s", "APPLIED", "DLQ"
    ));
    for t in &r.tables {
        let state = match (&t.state, &t.snapshot) {
            (TableState::Snapshotting, Some(s)) => {
                let pct = if s.estimate > 0 {
                    (s.rows as f64 / s.estimate as f64).min(1.0)
                } else {
                    0.0
                };
                let filled = (pct * 10.0).round() as usize;
                let eta = s
                    .eta_seconds
                    .map_or(String::new(), |e| format!(" ETA {}", secs(e)));
                format!(
                    "snapshotting [{}{}] {:>3.0}%{eta}",
                    "#".repeat(filled),
                    ".".repeat(10 - filled),
                    pct * 100.0
                )
            }
            (state, _) => state.as_str().to_string(),
        };
        out.push_str(&format!(
            "{:<width$}  {:<36}  {:>10}  {:>9.1}  {:>10}  {:>6}  {}\n",
            t.table,
            state,
            secs(t.lag_seconds),
            t.rate,
            t.applied,
            t.dead_lettered,
            t.last_error.as_deref().unwrap_or("")
        ));
    }
    if r.tables.is_empty() {
        out.push_str("(no table yet)\n");
    }
    out
}
