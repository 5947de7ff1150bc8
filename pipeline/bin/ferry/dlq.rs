//! `ferry dlq`: the dead-letter queue for an on-call operator (see
//! docs/operations.md). The work is in the sink (`PostgresSink::dlq_*`);
//! this file parses arguments and prints.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferry_convex_sink::ConvexSink;
use ferry_pipeline::config::SinkConfig;
use ferry_pipeline::event::TableId;
use ferry_postgres_sink::dlq::Filter;
use ferry_postgres_sink::PostgresSink;

use crate::exit;

#[derive(Args)]
pub(crate) struct DlqArgs {
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: DlqCommand,
}

/// Which records.
#[derive(Args, Clone, Default)]
struct Selection {
    /// `schema.table` or `table`.
    #[arg(long)]
    table: Option<String>,
    /// `permanent`, `transient` or `fatal`.
    #[arg(long)]
    error_class: Option<String>,
    /// Records whose last failure is at or after this time
    /// (e.g. `2026-11-21T10:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// Records whose last failure is before this time.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Records by table and error class, with the oldest and newest failure.
    List(Selection),
    /// One record: its error, attempts, source position and the change
    /// (a number on a PostgreSQL target, a document id on Convex).
    Show { id: String },
    /// Re-apply records through the current target (oldest first, one
    /// transaction each): successes leave the queue, failures stay with
    /// one more attempt. Safe to interrupt and run again.
    Replay {
        #[command(flatten)]
        selection: Selection,
        /// Apply and roll back: report what would happen.
        #[arg(long)]
        dry_run: bool,
        /// Records per second at most.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Remove records for good. Needs at least one filter and --yes.
    Purge {
        #[command(flatten)]
        selection: Selection,
        #[arg(long)]
        yes: bool,
    },
}

fn filter(s: &Selection) -> Result<Filter, String> {
    let table = match &s.table {
        Some(t) => Some(
            TableId::parse(t)
                .ok_or_else(|| format!("--table {t:?} is not `schema.table` or `table`"))?,
        ),
        None => None,
    };
    if let Some(c) = &s.error_class {
        if !["permanent", "transient", "fatal"].contains(&c.as_str()) {
            return Err(format!(
                "--error-class {c:?}: expected permanent, transient or fatal"
            ));
        }
    }
    Ok(Filter {
        table,
        error_class: s.error_class.clone(),
        since: s.since.clone(),
        until: s.until.clone(),
        id: None,
    })
}

pub(crate) async fn run(args: DlqArgs) -> u8 {
    let Some(path) = args.config.as_deref() else {
        eprintln!("ferry dlq: --config is required");
        return exit::CONFIG;
    };
    let config = match crate::load(path).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dst = match &config.sink {
        SinkConfig::Postgres(dst) => dst,
        SinkConfig::Convex(dst) => {
            let sink = ConvexSink::new(dst.clone(), config.pipeline.name.clone());
            return convex(sink, args.command).await;
        }
    };
    let mut sink = PostgresSink::new(dst.clone(), config.pipeline.name.clone());
    let result = match args.command {
        DlqCommand::List(sel) => {
            let f = match filter(&sel) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("ferry dlq list: {e}");
                    return exit::CONFIG;
                }
            };
            sink.dlq_list(&f).await.map(|groups| {
                println!("| table | error class | records | superseded | oldest failure | newest failure |");
                println!("|---|---|---:|---:|---|---|");
                let mut total = 0;
                for g in &groups {
                    total += g.records;
                    println!(
                        "| {} | {} | {} | {} | {} | {} |",
                        g.table, g.error_class, g.records, g.superseded, g.oldest, g.newest
                    );
                }
                println!("{total} record(s)");
                exit::OK
            })
        }
        DlqCommand::Show { id } => {
            let Ok(id) = id.parse::<i64>() else {
                eprintln!("ferry dlq show: {id:?} is not a record number");
                return exit::CONFIG;
            };
            sink.dlq_show(id).await.map(|r| match r {
                Some(v) => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    exit::OK
                }
                None => {
                    eprintln!(
                        "ferry dlq show: no record {id} for pipeline {}",
                        config.pipeline.name
                    );
                    exit::MISMATCH
                }
            })
        }
        DlqCommand::Replay {
            selection,
            dry_run,
            rate,
        } => {
            let f = match filter(&selection) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("ferry dlq replay: {e}");
                    return exit::CONFIG;
                }
            };
            let transformer = match crate::mapping::transformer(&config).await {
                Ok(t) => t,
                Err(crate::mapping::Unusable::Findings(findings)) => {
                    for f in &findings {
                        eprintln!("invalid mapping: {f}");
                    }
                    return exit::CONFIG;
                }
                Err(crate::mapping::Unusable::Unreachable(e)) => {
                    eprintln!("ferry dlq replay: cannot read the target schema: {e}");
                    return exit::PIPELINE;
                }
            };
            sink.dlq_replay(&f, dry_run, rate, transformer.as_deref())
                .await
                .map(|r| {
                    let verb = if dry_run { "would apply" } else { "applied" };
                    println!(
                        "{verb} {}, superseded {}, failed again {}",
                        r.applied, r.superseded, r.failed
                    );
                    if r.failed > 0 {
                        exit::MISMATCH
                    } else {
                        exit::OK
                    }
                })
        }
        DlqCommand::Purge { selection, yes } => {
            let f = match filter(&selection) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("ferry dlq purge: {e}");
                    return exit::CONFIG;
                }
            };
            if f.is_empty() {
                eprintln!("ferry dlq purge: name what to purge (--table, --error-class, --since, --until)");
                return exit::CONFIG;
            }
            if !yes {
                eprintln!("ferry dlq purge: records are removed for good; add --yes to confirm");
                return exit::CONFIG;
            }
            sink.dlq_purge(&f).await.map(|n| {
                println!("purged {n} record(s)");
                exit::OK
            })
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry dlq: {e}");
            exit::PIPELINE
        }
    }
}

/// `ferry dlq` on a Convex target: the records live in the deployment's
/// `ferry_dlq` table (written by Ferry's module with the batch).
async fn convex(mut sink: ConvexSink, command: DlqCommand) -> u8 {
    let records = match sink.dlq_records().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry dlq: {e}");
            return exit::PIPELINE;
        }
    };
    let selected = |s: &Selection, r: &serde_json::Value| {
        let table = s
            .table
            .as_deref()
            .map(|t| t.rsplit('.').next().unwrap_or(t));
        table.is_none_or(|t| r["table"] == t)
            && s.error_class
                .as_deref()
                .is_none_or(|c| r["errorClass"] == c)
    };
    match command {
        DlqCommand::List(sel) => {
            let mut groups: std::collections::BTreeMap<(String, String), (u64, u64)> =
                Default::default();
            for r in records.iter().filter(|r| selected(&sel, r)) {
                let g = groups
                    .entry((
                        r["table"].as_str().unwrap_or("").to_string(),
                        r["errorClass"].as_str().unwrap_or("").to_string(),
                    ))
                    .or_default();
                g.0 += 1;
                g.1 += u64::from(r["superseded"].as_bool().unwrap_or(false));
            }
            println!("| table | error class | records | superseded |");
            println!("|---|---|---:|---:|");
            let mut total = 0;
            for ((t, c), (n, s)) in &groups {
                total += n;
                println!("| {t} | {c} | {n} | {s} |");
            }
            println!("{total} record(s)");
            exit::OK
        }
        DlqCommand::Show { id } => match records.iter().find(|r| r["_id"] == id.as_str()) {
            Some(r) => {
                println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
                exit::OK
            }
            None => {
                eprintln!(
                    "ferry dlq show: no record {id} for pipeline {}",
                    sink.pipeline()
                );
                exit::MISMATCH
            }
        },
        DlqCommand::Purge { selection, yes } => {
            if selection.table.is_none() && selection.error_class.is_none() {
                eprintln!("ferry dlq purge: name what to purge (--table, --error-class)");
                return exit::CONFIG;
            }
            if !yes {
                eprintln!("ferry dlq purge: records are removed for good; add --yes to confirm");
                return exit::CONFIG;
            }
            let ids: Vec<String> = records
                .iter()
                .filter(|r| selected(&selection, r))
                .filter_map(|r| r["_id"].as_str().map(str::to_string))
                .collect();
            match sink.dlq_remove(&ids).await {
                Ok(n) => {
                    println!("purged {n} record(s)");
                    exit::OK
                }
                Err(e) => {
                    eprintln!("ferry dlq purge: {e}");
                    exit::PIPELINE
                }
            }
        }
        DlqCommand::Replay { .. } => {
            // Not yet: a replay must apply the record without moving the
            // pipeline's checkpoint, which `ferry:apply` needs a mode for.
            eprintln!("ferry dlq replay: not implemented for a Convex target yet (list, show and purge are)");
            exit::PIPELINE
        }
    }
}
