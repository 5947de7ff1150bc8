//! Prerequisite checks for `ferry check` with a SQLite source.

use ferry_pipeline::config::{SqliteMode, SqliteSourceConfig};
use ferry_pipeline::prerequisite::Finding;

use crate::change_log;
use crate::source::{chosen_tables, open_read_only};

/// Checks the source: the file opens as a database, the chosen tables
/// exist (with a key), and in `follow` mode that the database is in WAL
/// mode and every table has Ferry's triggers.
pub async fn source_findings(cfg: &SqliteSourceConfig) -> Vec<Finding> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || findings(&cfg))
        .await
        .unwrap_or_else(|e| vec![Finding::fail("source", e.to_string())])
}

fn findings(cfg: &SqliteSourceConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Err(why) = crate::config::check_path(cfg) {
        out.push(Finding::fail("source.path", why));
        return out;
    }
    let conn = match open_read_only(cfg) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::fail("source.path", e.message));
            return out;
        }
    };
    let tables = match chosen_tables(&conn, cfg) {
        Ok(t) => t,
        Err(e) => {
            out.push(Finding::fail("tables", e.message));
            return out;
        }
    };
    out.push(Finding::pass(
        "tables",
        format!(
            "{} in foreign-key order: {}",
            tables.len(),
            tables
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap_or_default();
    let wal = mode.eq_ignore_ascii_case("wal");
    match (cfg.mode, wal) {
        (_, true) => out.push(Finding::pass("journal_mode", "wal")),
        (SqliteMode::Snapshot, false) => out.push(Finding::pass(
            "journal_mode",
            format!("{mode}: the application's writes wait while the snapshot reads"),
        )),
        (SqliteMode::Follow, false) => out.push(Finding::fail(
            "journal_mode",
            format!("{mode}: follow mode needs WAL; `ferry sqlite prepare` sets it"),
        )),
    }
    if cfg.mode == SqliteMode::Follow {
        for t in &tables {
            let subject = format!("triggers on {}", t.name);
            match change_log::installed(&conn, &t.name) {
                Ok(true) => out.push(Finding::pass(subject, "installed")),
                Ok(false) => out.push(Finding::fail(
                    subject,
                    "missing: run `ferry sqlite prepare --config <file>`",
                )),
                Err(e) => out.push(Finding::fail(subject, e.to_string())),
            }
        }
    }
    out
}
