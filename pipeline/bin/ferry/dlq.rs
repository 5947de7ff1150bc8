//! `ferry dlq`: the dead-letter queue for an on-call operator (see
//! docs/operations.md). The work is in the sink (`PostgresSink::dlq_*`);
//! this file parses arguments and prints.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferry_convex_sink::ConvexSink;
use ferry_mongodb_sink::MongoSink;
use ferry_pipeline::config::{Config, SinkConfig};
use ferry_pipeline::error::PipelineError;
use ferry_pipeline::event::TableId;
use ferry_postgres_sink::dlq::{DlqGroup, Filter, ReplayReport, TableName};
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
    /// `schema.table` or `table` (any schema), as the source or the target
    /// names it: a mapped table's records are found under either name.
    #[arg(long)]
    table: Option<String>,
    /// `permanent`, `transient` or `fatal`.
    #[arg(long)]
    error_class: Option<String>,
    /// The rule or error code (`ferry dlq list` shows them): a mapping
    /// rule such as `decimal_overflow`, or a SQLSTATE such as `23514`.
    #[arg(long)]
    rule: Option<String>,
    /// One record (repeatable).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<i64>,
    /// Records whose last failure is at or after this time
    /// (e.g. `2026-11-21T10:00:00Z`).
    #[arg(long, visible_alias = "after")]
    since: Option<String>,
    /// Records whose last failure is before this time.
    #[arg(long, visible_alias = "before")]
    until: Option<String>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Records by table, error class and rule, with counts, the oldest and
    /// newest failure and a few record numbers.
    List {
        #[command(flatten)]
        selection: Selection,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Records in full: one by number (a document id on Convex), or the
    /// first `--limit` of a selection (`--table`, `--rule`, …): its error,
    /// attempts, source position and the change.
    Show {
        id: Option<String>,
        #[command(flatten)]
        selection: Selection,
        /// At most this many records of a selection.
        #[arg(long, default_value_t = 10)]
        limit: i64,
    },
    /// Re-apply records through the current target (oldest first, one
    /// transaction each): successes leave the queue, failures stay with
    /// one more attempt. Safe to interrupt and run again.
    Replay {
        #[command(flatten)]
        selection: Selection,
        /// Apply and roll back: report what would happen to each record.
        #[arg(long)]
        dry_run: bool,
        /// Records per second at most.
        #[arg(long)]
        rate: Option<f64>,
        /// The report as JSON (with every record's outcome).
        #[arg(long)]
        json: bool,
    },
    /// Remove records for good. Needs at least one filter and --yes.
    Purge {
        #[command(flatten)]
        selection: Selection,
        #[arg(long)]
        yes: bool,
    },
}

/// The names a table's records can be under: the name given, and through
/// the mapping, the target of a source table or the source of a target
/// table (records the mapping refused keep the source name, the others
/// the target's).
fn table_names(config: &Config, given: &str) -> Result<Vec<TableName>, String> {
    let (schema, name) = TableId::parse_parts(given)
        .ok_or_else(|| format!("--table {given:?} is not `schema.table` or `table`"))?;
    let mut names = vec![TableName { schema, name }];
    let matches = |n: &TableName, other: &str| {
        TableId::parse_parts(other).is_some_and(|(s, o)| {
            o == n.name && (n.schema.is_none() || s.is_none() || s == n.schema)
        })
    };
    if let Some(m) = &config.mappings {
        for t in &m.tables {
            let targets = std::iter::once(&t.target).chain(t.children.iter().map(|c| &c.target));
            let related: Vec<&String> = if matches(&names[0], &t.source) {
                targets.collect()
            } else if targets.clone().any(|target| matches(&names[0], target)) {
                vec![&t.source]
            } else {
                continue;
            };
            for other in related {
                if let Some((schema, name)) = TableId::parse_parts(other) {
                    let n = TableName { schema, name };
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
    }
    Ok(names)
}

fn filter(config: &Config, s: &Selection) -> Result<Filter, String> {
    let tables = match &s.table {
        Some(t) => table_names(config, t)?,
        None => Vec::new(),
    };
    if let Some(c) = &s.error_class {
        if !["permanent", "transient", "fatal"].contains(&c.as_str()) {
            return Err(format!(
                "--error-class {c:?}: expected permanent, transient or fatal"
            ));
        }
    }
    Ok(Filter {
        tables,
        error_class: s.error_class.clone(),
        rule: s.rule.clone(),
        since: s.since.clone(),
        until: s.until.clone(),
        ids: s.ids.clone(),
    })
}

/// When a selection by table found nothing: which names were looked for,
/// and which the queue holds.
async fn explain_empty(sink: &mut PostgresSink, f: &Filter, command: &str) {
    if f.tables.is_empty() {
        return;
    }
    let looked: Vec<String> = f.tables.iter().map(ToString::to_string).collect();
    let held = match sink.dlq_tables().await {
        Ok(t) if t.is_empty() => "the queue is empty".to_string(),
        Ok(t) => format!(
            "the queue holds records for: {}",
            t.iter()
                .map(|(t, n)| format!("{t} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => format!("(could not list its tables: {e})"),
    };
    eprintln!(
        "ferry dlq {command}: no records for {}; {held}",
        looked.join(" or ")
    );
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
            return records_dlq(sink, args.command).await;
        }
        SinkConfig::Mongodb(dst) => {
            let sink = MongoSink::new(dst.clone(), config.pipeline.name.clone());
            return records_dlq(sink, args.command).await;
        }
    };
    let mut sink = PostgresSink::new(dst.clone(), config.pipeline.name.clone());
    let (name, selection) = match &args.command {
        DlqCommand::List { selection, .. } => ("list", selection),
        DlqCommand::Show { selection, .. } => ("show", selection),
        DlqCommand::Replay { selection, .. } => ("replay", selection),
        DlqCommand::Purge { selection, .. } => ("purge", selection),
    };
    let f = match filter(&config, selection) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ferry dlq {name}: {e}");
            return exit::CONFIG;
        }
    };
    let result = match args.command {
        DlqCommand::List { json, .. } => match sink.dlq_list(&f).await {
            Ok(groups) => {
                if groups.is_empty() {
                    explain_empty(&mut sink, &f, name).await;
                }
                print_groups(&groups, json);
                Ok(exit::OK)
            }
            Err(e) => Err(e),
        },
        DlqCommand::Show { id, limit, .. } => {
            let ids = match id {
                Some(id) => match id.parse::<i64>() {
                    Ok(id) => vec![id],
                    Err(_) => {
                        eprintln!("ferry dlq show: {id:?} is not a record number");
                        return exit::CONFIG;
                    }
                },
                None if f.is_empty() => {
                    eprintln!(
                        "ferry dlq show: name a record number or a selection (--table, --rule, --id, …)"
                    );
                    return exit::CONFIG;
                }
                None => match sink.dlq_ids(&f, limit).await {
                    Ok(ids) => ids,
                    Err(e) => {
                        eprintln!("ferry dlq: {e}");
                        return exit::PIPELINE;
                    }
                },
            };
            show(&mut sink, &f, &ids, &config.pipeline.name).await
        }
        DlqCommand::Replay {
            dry_run,
            rate,
            json,
            ..
        } => {
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
            match sink
                .dlq_replay(&f, dry_run, rate, transformer.as_deref())
                .await
            {
                Ok(r) => {
                    if r.records.is_empty() {
                        explain_empty(&mut sink, &f, name).await;
                    }
                    print_replay(&r, dry_run, json);
                    Ok(if r.failed > 0 {
                        exit::MISMATCH
                    } else {
                        exit::OK
                    })
                }
                Err(e) => Err(e),
            }
        }
        DlqCommand::Purge { yes, .. } => {
            if f.is_empty() {
                eprintln!("ferry dlq purge: name what to purge (--table, --rule, --id, --error-class, --since, --until)");
                return exit::CONFIG;
            }
            if !yes {
                eprintln!("ferry dlq purge: records are removed for good; add --yes to confirm");
                return exit::CONFIG;
            }
            match sink.dlq_purge(&f).await {
                Ok(n) => {
                    if n == 0 {
                        explain_empty(&mut sink, &f, name).await;
                    }
                    println!("purged {n} record(s)");
                    Ok(exit::OK)
                }
                Err(e) => Err(e),
            }
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

fn print_groups(groups: &[DlqGroup], json: bool) {
    if json {
        let total: i64 = groups.iter().map(|g| g.records).sum();
        let doc = serde_json::json!({ "groups": groups, "records": total });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    println!("| table | error class | rule | records | superseded | oldest failure | newest failure | e.g. records |");
    println!("|---|---|---|---:|---:|---|---|---|");
    let mut total = 0;
    for g in groups {
        total += g.records;
        let examples: Vec<String> = g.examples.iter().map(i64::to_string).collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            g.table,
            g.error_class,
            g.rule.as_deref().unwrap_or("-"),
            g.records,
            g.superseded,
            g.oldest,
            g.newest,
            examples.join(", ")
        );
    }
    println!("{total} record(s)");
}

async fn show(
    sink: &mut PostgresSink,
    f: &Filter,
    ids: &[i64],
    pipeline: &str,
) -> Result<u8, PipelineError> {
    if ids.is_empty() {
        explain_empty(sink, f, "show").await;
        eprintln!("ferry dlq show: no record matches for pipeline {pipeline}");
        return Ok(exit::MISMATCH);
    }
    for &id in ids {
        match sink.dlq_show(id).await? {
            Some(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            None => {
                eprintln!("ferry dlq show: no record {id} for pipeline {pipeline}");
                return Ok(exit::MISMATCH);
            }
        }
    }
    Ok(exit::OK)
}

/// A parked row's key (stored as a JSON array of its parts' text) as an
/// operator writes it: `1002`, or `7,2` for a composite key.
fn key_words(stored: &str) -> String {
    match serde_json::from_str::<Vec<serde_json::Value>>(stored) {
        Ok(parts) => parts
            .iter()
            .map(|p| match p {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Err(_) => stored.to_string(),
    }
}

fn print_replay(r: &ReplayReport, dry_run: bool, json: bool) {
    if json {
        let doc = serde_json::json!({ "dry_run": dry_run, "report": r });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    if dry_run {
        // Per record: what an operator checks before replaying for real.
        for rec in &r.records {
            let outcome = match rec.outcome {
                "applied" => "would apply",
                "failed" => "would fail again",
                other => other,
            };
            let key = key_words(&rec.key);
            match &rec.error {
                Some(e) => println!("record {} {} {key}: {outcome}: {e}", rec.id, rec.table),
                None => println!("record {} {} {key}: {outcome}", rec.id, rec.table),
            }
        }
    }
    let verb = if dry_run { "would apply" } else { "applied" };
    println!(
        "{verb} {}, superseded {}, failed again {}",
        r.applied, r.superseded, r.failed
    );
}

/// A sink whose dead letters `ferry dlq` reads as JSON records (`_id`,
/// `table` (the bare name), `errorClass`, `errorCode`, `superseded`).
trait RecordsDlq {
    fn pipeline(&self) -> &str;
    async fn dlq_records(&mut self) -> Result<Vec<serde_json::Value>, PipelineError>;
    async fn dlq_remove(&mut self, ids: &[String]) -> Result<u64, PipelineError>;
    /// Replays one record (see each sink's `dlq_replay`): what became of it.
    async fn replay_one(
        &mut self,
        record: &serde_json::Value,
        dry_run: bool,
    ) -> Result<Replayed, PipelineError>;
}

/// One record of a `ferry dlq replay` on a Convex or MongoDB target.
struct Replayed {
    id: String,
    table: String,
    key: String,
    /// `applied`, `superseded` or `failed` (with `--dry-run`: would be).
    outcome: &'static str,
    error: Option<String>,
}

impl RecordsDlq for ConvexSink {
    fn pipeline(&self) -> &str {
        ConvexSink::pipeline(self)
    }
    async fn dlq_records(&mut self) -> Result<Vec<serde_json::Value>, PipelineError> {
        ConvexSink::dlq_records(self).await
    }
    async fn dlq_remove(&mut self, ids: &[String]) -> Result<u64, PipelineError> {
        ConvexSink::dlq_remove(self, ids).await
    }
    async fn replay_one(
        &mut self,
        record: &serde_json::Value,
        dry_run: bool,
    ) -> Result<Replayed, PipelineError> {
        let mut done = self
            .dlq_replay(std::slice::from_ref(record), dry_run)
            .await?
            .into_iter()
            .map(|r| Replayed {
                id: r.id,
                table: r.table,
                key: r.key,
                outcome: r.outcome,
                error: r.error,
            });
        // A record purged or replayed by another process meanwhile is
        // gone: nothing left to apply.
        Ok(done.next().unwrap_or_else(|| gone(record)))
    }
}

impl RecordsDlq for MongoSink {
    fn pipeline(&self) -> &str {
        MongoSink::pipeline(self)
    }
    async fn dlq_records(&mut self) -> Result<Vec<serde_json::Value>, PipelineError> {
        MongoSink::dlq_records(self).await
    }
    async fn dlq_remove(&mut self, ids: &[String]) -> Result<u64, PipelineError> {
        MongoSink::dlq_remove(self, ids).await
    }
    async fn replay_one(
        &mut self,
        record: &serde_json::Value,
        dry_run: bool,
    ) -> Result<Replayed, PipelineError> {
        let r = self
            .dlq_replay(std::slice::from_ref(record), dry_run)
            .await?;
        let mut done = gone(record);
        (done.outcome, done.error) = if r.applied > 0 {
            ("applied", None)
        } else if r.superseded > 0 {
            ("superseded", None)
        } else if r.failed > 0 {
            ("failed", r.failures.first().map(|(_, why)| why.clone()))
        } else {
            ("gone", None)
        };
        Ok(done)
    }
}

/// A record's identity, before its outcome is known.
fn gone(record: &serde_json::Value) -> Replayed {
    let text = |k: &str| match &record[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    Replayed {
        id: text("_id"),
        table: text("table"),
        key: text("key"),
        outcome: "gone",
        error: None,
    }
}

/// `ferry dlq` on a Convex or MongoDB target: the records live in the
/// target (Convex: the deployment's `ferry_dlq` table; MongoDB:
/// `ferry_dead_letters`), written with the batch.
async fn records_dlq(mut sink: impl RecordsDlq, command: DlqCommand) -> u8 {
    let records = match sink.dlq_records().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry dlq: {e}");
            return exit::PIPELINE;
        }
    };
    // Convex records carry the bare table name and no record number.
    let selected = |s: &Selection, r: &serde_json::Value| {
        let table = s
            .table
            .as_deref()
            .and_then(TableId::parse_parts)
            .map(|(_, name)| name);
        table.is_none_or(|t| r["table"] == t.as_str())
            && s.error_class
                .as_deref()
                .is_none_or(|c| r["errorClass"] == c)
            && s.rule.as_deref().is_none_or(|c| r["errorCode"] == c)
    };
    match command {
        DlqCommand::List { selection, json } => {
            type Group = (u64, u64);
            let mut groups: std::collections::BTreeMap<(String, String, String), Group> =
                Default::default();
            for r in records.iter().filter(|r| selected(&selection, r)) {
                let g = groups
                    .entry((
                        r["table"].as_str().unwrap_or("").to_string(),
                        r["errorClass"].as_str().unwrap_or("").to_string(),
                        r["errorCode"].as_str().unwrap_or("-").to_string(),
                    ))
                    .or_default();
                g.0 += 1;
                g.1 += u64::from(r["superseded"].as_bool().unwrap_or(false));
            }
            let total: u64 = groups.values().map(|g| g.0).sum();
            if json {
                let groups: Vec<_> = groups
                    .iter()
                    .map(|((t, c, rule), (n, s))| {
                        serde_json::json!({"table": t, "error_class": c, "rule": rule, "records": n, "superseded": s})
                    })
                    .collect();
                let doc = serde_json::json!({ "groups": groups, "records": total });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                return exit::OK;
            }
            println!("| table | error class | rule | records | superseded |");
            println!("|---|---|---|---:|---:|");
            for ((t, c, rule), (n, s)) in &groups {
                println!("| {t} | {c} | {rule} | {n} | {s} |");
            }
            println!("{total} record(s)");
            exit::OK
        }
        DlqCommand::Show {
            id,
            selection,
            limit,
        } => {
            let shown: Vec<&serde_json::Value> = match &id {
                Some(id) => records.iter().filter(|r| r["_id"] == id.as_str()).collect(),
                None => records
                    .iter()
                    .filter(|r| selected(&selection, r))
                    .take(usize::try_from(limit).unwrap_or(0))
                    .collect(),
            };
            if shown.is_empty() {
                eprintln!(
                    "ferry dlq show: no record {} for pipeline {}",
                    id.as_deref().unwrap_or("matches"),
                    sink.pipeline()
                );
                return exit::MISMATCH;
            }
            for r in shown {
                println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
            }
            exit::OK
        }
        DlqCommand::Purge { selection, yes } => {
            if selection.table.is_none()
                && selection.error_class.is_none()
                && selection.rule.is_none()
            {
                eprintln!("ferry dlq purge: name what to purge (--table, --rule, --error-class)");
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
        DlqCommand::Replay {
            selection,
            dry_run,
            rate,
            json,
        } => {
            let chosen: Vec<&serde_json::Value> =
                records.iter().filter(|r| selected(&selection, r)).collect();
            let pause = rate
                .filter(|r| *r > 0.0)
                .map(|r| std::time::Duration::from_secs_f64(1.0 / r));
            let mut replayed = Vec::with_capacity(chosen.len());
            for r in &chosen {
                match sink.replay_one(r, dry_run).await {
                    Ok(one) => replayed.push(one),
                    Err(e) => {
                        eprintln!("ferry dlq replay: {e}");
                        return exit::PIPELINE;
                    }
                }
                if let Some(p) = pause {
                    tokio::time::sleep(p).await;
                }
            }
            let count = |o: &str| replayed.iter().filter(|r| r.outcome == o).count();
            let (applied, superseded, failed) =
                (count("applied"), count("superseded"), count("failed"));
            if json {
                let records: Vec<_> = replayed
                    .iter()
                    .map(|r| {
                        serde_json::json!({"id": r.id, "table": r.table, "key": r.key, "outcome": r.outcome, "error": r.error})
                    })
                    .collect();
                let doc = serde_json::json!({
                    "dry_run": dry_run,
                    "report": {"applied": applied, "superseded": superseded, "failed": failed, "records": records},
                });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                for r in &replayed {
                    let outcome = match (dry_run, r.outcome) {
                        (true, "applied") => "would apply",
                        (true, "failed") => "would fail again",
                        (false, "failed") => "failed again",
                        (_, other) => other,
                    };
                    // Dry runs list every record; real runs the failures.
                    if !dry_run && r.error.is_none() {
                        continue;
                    }
                    match &r.error {
                        Some(e) => println!(
                            "record {} {} {}: {outcome}: {e}",
                            r.id,
                            r.table,
                            key_words(&r.key)
                        ),
                        None => println!(
                            "record {} {} {}: {outcome}",
                            r.id,
                            r.table,
                            key_words(&r.key)
                        ),
                    }
                }
                if chosen.is_empty() {
                    println!("no record matches");
                }
                let verb = if dry_run { "would apply" } else { "applied" };
                println!("{verb} {applied}, superseded {superseded}, failed again {failed}");
            }
            if failed > 0 {
                exit::MISMATCH
            } else {
                exit::OK
            }
        }
    }
}
