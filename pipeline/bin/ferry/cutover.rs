//! `ferry cutover check`: per table, what still blocks a cutover.
//!
//! A table may be cut over when nothing below blocks it ([`Blocker`]); the
//! thresholds are `[cutover]` in the config. Each condition is read from
//! the databases at the moment of the check, and a condition that cannot
//! be read is an error (exit 4), never a pass:
//!
//! - **lag**: WAL bytes the pipeline's slot has not confirmed (PostgreSQL
//!   sources), above `max_lag_bytes`; a missing or lost slot blocks too.
//!   For other sources, and on the Kafka bus (where the slot is confirmed
//!   once Kafka has a change), the lag to the target is not measured here
//!   yet: it blocks.
//! - **dead letters**: unresolved records of the table in `ferry_dlq`.
//! - **last verify**: the table's last `ferry verify` (`ferry_verify_runs`)
//!   is missing, not green, or older than `verify_max_age_secs`.
//! - **soak**: a `ferry verify` found drift in the table within
//!   `soak_secs`.

use std::path::PathBuf;

use ferry_pipeline::config::{Config, SinkConfig, SourceConfig};
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::TableId;
use ferry_postgres_source::pg_err;
use serde::Serialize;
use tokio_postgres::Client;

use crate::exit;

#[derive(clap::Args)]
pub(crate) struct CutoverArgs {
    #[command(subcommand)]
    command: CutoverCommand,
}

#[derive(clap::Subcommand)]
enum CutoverCommand {
    /// Per table, what still blocks a cutover. Exit 0: nothing blocks;
    /// 1: something does; 4: a condition could not be read.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this source table (`schema.table`; repeatable), for tables
        /// cut over one at a time.
        #[arg(long, value_name = "TABLE")]
        table: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// One table's verdict.
#[derive(Debug, Serialize)]
struct TableVerdict {
    table: String,
    /// What blocks the cutover, one sentence each; empty: ready.
    blockers: Vec<String>,
}

pub(crate) async fn run(args: CutoverArgs) -> u8 {
    let CutoverCommand::Check {
        config,
        table,
        json,
    } = args.command;
    let config = match crate::load(&config).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match check(&config, &table).await {
        Ok(verdicts) => {
            let ready = verdicts.iter().all(|v| v.blockers.is_empty());
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ready": ready, "tables": verdicts})
                );
            } else {
                for v in &verdicts {
                    if v.blockers.is_empty() {
                        println!("[ready  ] {}", v.table);
                    } else {
                        println!("[BLOCKED] {}", v.table);
                        for b in &v.blockers {
                            println!("          - {b}");
                        }
                    }
                }
            }
            if ready {
                exit::OK
            } else {
                exit::MISMATCH
            }
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ready": false, "error": e, "tables": []})
                );
            } else {
                eprintln!("ferry cutover check: NOT CHECKED: {e}");
            }
            exit::UNVERIFIED
        }
    }
}

async fn check(config: &Config, only: &[String]) -> Result<Vec<TableVerdict>, String> {
    let SinkConfig::Postgres(dst) = &config.sink else {
        return Err(
            "ferry cutover check reads PostgreSQL targets only (sink.kind = convex: not yet)"
                .into(),
        );
    };
    let mut tables = config.source.tables();
    for w in only {
        if TableId::parse(w).is_none_or(|t| !tables.contains(&t)) {
            return Err(format!("--table {w}: not a table of this pipeline"));
        }
    }
    if !only.is_empty() {
        let wanted: Vec<TableId> = only.iter().filter_map(|t| TableId::parse(t)).collect();
        tables.retain(|t| wanted.contains(t));
    }
    let target = ferry_postgres_sink::config::conn_info(dst)?
        .connect(Stage::Sink, "target")
        .await
        .map_err(|e| e.to_string())?;
    let lag = lag_blocker(config).await.map_err(|e| e.to_string())?;
    let cut = &config.cutover;
    let pipeline = &config.pipeline.name;
    let mut out = Vec::new();
    for t in tables {
        let mut blockers: Vec<String> = lag.iter().cloned().collect();
        let target_id = ferry_postgres_sink::config::target_id(dst, &t);
        let dead = dead_letters(&target, pipeline, &t, &target_id)
            .await
            .map_err(|e| e.to_string())?;
        if dead > 0 {
            blockers.push(format!(
                "{dead} dead-letter record(s) not resolved (ferry dlq list; replay or purge them)"
            ));
        }
        blockers.extend(
            verify_blockers(
                &target,
                pipeline,
                &t,
                cut.verify_max_age_secs,
                cut.soak_secs,
            )
            .await
            .map_err(|e| e.to_string())?,
        );
        out.push(TableVerdict {
            table: t.to_string(),
            blockers,
        });
    }
    Ok(out)
}

/// The pipeline-wide lag blocker, if any.
async fn lag_blocker(config: &Config) -> Result<Option<String>, PipelineError> {
    let SourceConfig::Postgres(src) = &config.source else {
        return Ok(Some(
            "lag: not measured for this source kind yet (only PostgreSQL sources)".into(),
        ));
    };
    if config.pipeline.bus == ferry_pipeline::config::BusKind::Kafka {
        // The slot is confirmed once Kafka has a change, not the target:
        // its lag says nothing about what the target still lacks.
        return Ok(Some(
            "lag: not measured to the target on the Kafka bus yet (the slot is confirmed once Kafka has the changes)".into(),
        ));
    }
    let info = ferry_postgres_source::conn_info(src)
        .map_err(|e| PipelineError::fatal(Stage::Source, e))?;
    let c = info.connect(Stage::Source, "source").await?;
    let row = c
        .query_opt(
            "SELECT wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&src.slot],
        )
        .await
        .map_err(|e| pg_err(Stage::Source, "read the replication slot", e))?;
    let max = config.cutover.max_lag_bytes;
    Ok(match row {
        None => Some(format!(
            "slot: source.slot {:?} does not exist (the pipeline is not replicating)",
            src.slot
        )),
        Some(r) => {
            let status: Option<String> = r.get(0);
            let lag: Option<i64> = r.get(1);
            match (status.as_deref(), lag) {
                (Some("lost"), _) => Some(format!(
                    "slot: {:?} has lost WAL it needed (wal_status = lost)",
                    src.slot
                )),
                (_, None) => Some(format!("slot: {:?} has confirmed nothing yet", src.slot)),
                (_, Some(l)) if l.max(0) as u64 > max => Some(format!(
                    "lag: {l} bytes of WAL not yet applied (cutover.max_lag_bytes = {max})"
                )),
                _ => None,
            }
        }
    })
}

async fn exists(c: &Client, table: &str) -> Result<bool, PipelineError> {
    Ok(c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(|e| pg_err(Stage::Sink, &format!("look for {table}"), e))?
        .get(0))
}

async fn dead_letters(
    c: &Client,
    pipeline: &str,
    source: &TableId,
    target: &TableId,
) -> Result<i64, PipelineError> {
    if !exists(c, "public.ferry_dlq").await? {
        return Ok(0);
    }
    Ok(c.query_one(
        "SELECT count(*) FROM public.ferry_dlq
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
    .map_err(|e| pg_err(Stage::Sink, "read ferry_dlq", e))?
    .get(0))
}

async fn verify_blockers(
    c: &Client,
    pipeline: &str,
    table: &TableId,
    max_age: u64,
    soak: u64,
) -> Result<Vec<String>, PipelineError> {
    if !exists(c, "public.ferry_verify_runs").await? {
        return Ok(vec![
            "verify: never run (ferry verify records its result in the target)".into(),
        ]);
    }
    let last = c
        .query_opt(
            "SELECT bool_and(ok), max(finished_at)::text,
                    extract(epoch FROM now() - max(finished_at))::float8,
                    sum(drift_rows)::int8, sum(dead_lettered)::int8,
                    string_agg(error, '; ')
               FROM public.ferry_verify_runs
              WHERE pipeline = $1 AND table_schema = $2 AND table_name = $3
                AND started_at = (SELECT max(started_at) FROM public.ferry_verify_runs
                                   WHERE pipeline = $1 AND table_schema = $2 AND table_name = $3)
             HAVING count(*) > 0",
            &[&pipeline, &table.schema, &table.name],
        )
        .await
        .map_err(|e| pg_err(Stage::Sink, "read ferry_verify_runs", e))?;
    let mut out = Vec::new();
    let Some(last) = last else {
        out.push("verify: never run for this table".into());
        return Ok(out);
    };
    let ok: bool = last.get(0);
    let when: String = last.get(1);
    let age: f64 = last.get(2);
    if !ok {
        let drift: i64 = last.get(3);
        let dead: i64 = last.get(4);
        let error: Option<String> = last.get(5);
        out.push(match error {
            Some(e) => format!("verify: the last run ({when}) could not verify the table: {e}"),
            None => format!(
                "verify: the last run ({when}) was not green: {drift} differing row(s), {dead} dead-lettered"
            ),
        });
    } else if age > max_age as f64 {
        out.push(format!(
            "verify: the last green run ({when}) is older than cutover.verify_max_age_secs = {max_age}"
        ));
    }
    let drift: Option<String> = c
        .query_one(
            "SELECT max(finished_at)::text FROM public.ferry_verify_runs
              WHERE pipeline = $1 AND table_schema = $2 AND table_name = $3
                AND drift_rows > 0 AND finished_at > now() - make_interval(secs => $4)",
            &[&pipeline, &table.schema, &table.name, &(soak as f64)],
        )
        .await
        .map_err(|e| pg_err(Stage::Sink, "read ferry_verify_runs", e))?
        .get(0);
    if let Some(at) = drift {
        out.push(format!(
            "soak: drift found at {at}, within cutover.soak_secs = {soak}"
        ));
    }
    Ok(out)
}
