//! `ferry sqlite prepare|unprepare|report`: installs and removes the change
//! log of a SQLite source, and compares per-table counts and key checksums
//! of the source and its mirror.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ferry_pipeline::config::{Config, SinkConfig, SourceConfig, SqliteSourceConfig};
use ferry_pipeline::value::Value;
use ferry_postgres_sink::PostgresSink;
use ferry_sqlite_source::catalog::SqliteTable;
use ferry_sqlite_source::report::TableSum;
use ferry_sqlite_source::source::{chosen_tables, open_read_only, open_read_write};
use ferry_sqlite_source::{change_log, snapshot};

use crate::exit;

#[derive(Args)]
pub(crate) struct SqliteArgs {
    #[command(subcommand)]
    command: SqliteCommand,
}

#[derive(Subcommand)]
enum SqliteCommand {
    /// Switches the database to WAL and installs Ferry's change log: the
    /// `_ferry_changes` table and AFTER INSERT/UPDATE/DELETE triggers on
    /// the configured tables (all tables when none are listed), in one
    /// transaction. Idempotent.
    Prepare {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Removes every Ferry trigger and the change-log table, in one
    /// transaction. The application's tables are not touched.
    Unprepare {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Per table: rows and key checksum in the SQLite file and in the
    /// mirrored PostgreSQL table. Exit 0: equal; 1: a table differs; 4: a
    /// side could not be read (never a pass).
    Report {
        #[arg(long, short)]
        config: PathBuf,
    },
}

pub(crate) async fn run(args: SqliteArgs) -> u8 {
    let (SqliteCommand::Prepare { config }
    | SqliteCommand::Unprepare { config }
    | SqliteCommand::Report { config }) = &args.command;
    let (config, cfg) = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match args.command {
        SqliteCommand::Prepare { .. } => blocking(move || prepare(&cfg)).await,
        SqliteCommand::Unprepare { .. } => blocking(move || unprepare(&cfg)).await,
        SqliteCommand::Report { .. } => report(&config, cfg).await,
    }
}

async fn blocking(f: impl FnOnce() -> u8 + Send + 'static) -> u8 {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(exit::PIPELINE)
}

fn load(path: &Path) -> Result<(Config, SqliteSourceConfig), u8> {
    let config = Config::load(path).map_err(|e| {
        eprintln!("invalid configuration {}: {e}", path.display());
        exit::CONFIG
    })?;
    let SourceConfig::Sqlite(cfg) = &config.source else {
        eprintln!(
            "invalid configuration {}: source.kind: `ferry sqlite` needs kind = \"sqlite\"",
            path.display()
        );
        return Err(exit::CONFIG);
    };
    if let Err(why) = ferry_sqlite_source::config::check_path(cfg) {
        eprintln!(
            "invalid configuration {}: source.path: {why}",
            path.display()
        );
        return Err(exit::CONFIG);
    }
    let cfg = cfg.clone();
    Ok((config, cfg))
}

fn prepare(cfg: &SqliteSourceConfig) -> u8 {
    let result = (|| {
        let mut conn = open_read_write(cfg)?;
        let tables = chosen_tables(&conn, cfg)?;
        change_log::prepare(&mut conn, &tables).map_err(|e| {
            ferry_sqlite_source::source::sqlite_err(
                ferry_pipeline::error::Stage::Source,
                "install the change log",
                e,
            )
        })?;
        Ok::<_, ferry_pipeline::error::PipelineError>(tables)
    })();
    match result {
        Ok(tables) => {
            for t in &tables {
                println!("[ ok ] triggers on {}", t.name);
            }
            println!(
                "prepared {}: journal_mode wal, change log {}, {} tables",
                cfg.path.display(),
                change_log::LOG_TABLE,
                tables.len()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("ferry sqlite prepare: {e}");
            exit::PIPELINE
        }
    }
}

fn unprepare(cfg: &SqliteSourceConfig) -> u8 {
    let result = open_read_write(cfg).and_then(|mut conn| {
        change_log::unprepare(&mut conn).map_err(|e| {
            ferry_sqlite_source::source::sqlite_err(
                ferry_pipeline::error::Stage::Source,
                "remove the change log",
                e,
            )
        })
    });
    match result {
        Ok(dropped) => {
            println!(
                "unprepared {}: {} triggers and the change log removed",
                cfg.path.display(),
                dropped.len()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("ferry sqlite unprepare: {e}");
            exit::PIPELINE
        }
    }
}

/// The source side of the report: every chosen table's keys, read in one
/// read transaction.
fn source_sums(
    cfg: &SqliteSourceConfig,
) -> Result<Vec<(SqliteTable, TableSum)>, ferry_pipeline::error::PipelineError> {
    let mut conn = open_read_only(cfg)?;
    let tables = chosen_tables(&conn, cfg)?;
    // The snapshot's own read, rows handed to nobody: the sums it reports
    // are those printed when a pipeline's snapshot completes.
    let (_, copied) = snapshot::copy_tables(&mut conn, &tables, &mut |_| Ok(()))?;
    let sums = copied.into_iter().map(|c| c.sum);
    Ok(tables.into_iter().zip(sums).collect())
}

async fn report(config: &Config, cfg: SqliteSourceConfig) -> u8 {
    if config.mappings.is_some() {
        eprintln!("ferry sqlite report: NOT VERIFIED: mapped tables are not compared (pipeline.mappings is set)");
        return exit::UNVERIFIED;
    }
    let source = match tokio::task::spawn_blocking(move || source_sums(&cfg)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            eprintln!("ferry sqlite report: NOT VERIFIED: source: {e}");
            return exit::UNVERIFIED;
        }
        Err(e) => {
            eprintln!("ferry sqlite report: NOT VERIFIED: {e}");
            return exit::UNVERIFIED;
        }
    };
    let SinkConfig::Postgres(dst) = &config.sink else {
        // Never a green result for what was not compared.
        eprintln!("ferry sqlite report: NOT VERIFIED: implemented for a PostgreSQL target only");
        return exit::UNVERIFIED;
    };
    let sink = PostgresSink::new(dst.clone(), config.pipeline.name.clone());
    let conn = match ferry_postgres_sink::config::conn_info(dst) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry sqlite report: NOT VERIFIED: {e}");
            return exit::UNVERIFIED;
        }
    };
    let client = match conn
        .connect(ferry_pipeline::error::Stage::Sink, "target")
        .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry sqlite report: NOT VERIFIED: target: {e}");
            return exit::UNVERIFIED;
        }
    };
    let mut all_equal = true;
    println!(
        "{:<32} {:>10} {:>10}  {:<16} {:<16}",
        "table", "source", "target", "source keys", "target keys"
    );
    for (t, s) in &source {
        let target = sink.target_id(&t.schema.id);
        let cols: Vec<String> = t
            .schema
            .key_columns()
            .map(|c| format!("{}::text", ferry_pipeline::event::quote_ident(&c.name)))
            .collect();
        let sql = format!("SELECT {} FROM {}", cols.join(", "), target.quoted());
        let rows = match client.query(&sql, &[]).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("ferry sqlite report: NOT VERIFIED: target {target}: {e}");
                return exit::UNVERIFIED;
            }
        };
        let mut d = TableSum::default();
        for r in &rows {
            let key: Vec<Value> = (0..cols.len())
                .map(|i| match r.get::<_, Option<String>>(i) {
                    Some(v) => Value::Text(v),
                    None => Value::Null,
                })
                .collect();
            d.add(&key);
        }
        let mark = if *s == d { "equal" } else { "DIFF " };
        all_equal &= *s == d;
        println!(
            "{:<32} {:>10} {:>10}  {:016x} {:016x} [{mark}]",
            t.name, s.rows, d.rows, s.key_checksum, d.key_checksum
        );
    }
    if all_equal {
        exit::OK
    } else {
        exit::MISMATCH
    }
}
