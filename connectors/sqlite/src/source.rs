//! The SQLite source: copies what needs copying in one read transaction,
//! then follows the change log from the snapshot's horizon, trimming the
//! log only up to what the runtime acknowledged.
//!
//! Position: a log entry's sequence is its position (`commit_lsn`; the
//! ordinal is always 1) and its ack. In embedded mode the runtime skips
//! entries at or below the checkpoint's position; on every bus a restart
//! reads the log from the oldest horizon still needed, and the log keeps
//! every entry after the last acknowledged one. A replayed entry never
//! moves a row back to an older state: entries carry keys, and rows are
//! read as they are now.
//!
//! SQLite is synchronous: each session runs on a blocking thread, and
//! hands messages to the bus by blocking on it (the bus's backpressure).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_pipeline::channel::BusSender;
use ferry_pipeline::checkpoint::Checkpoint;
use ferry_pipeline::config::{SqliteMode, SqliteSourceConfig};
use ferry_pipeline::error::{retry_backoff, Disposition, ErrorClass, PipelineError, Stage};
use ferry_pipeline::event::{BusMessage, ChangeEvent, Datum, Op, Position, SourceAck};
use ferry_pipeline::runtime::wait_retry;
use ferry_pipeline::source::{Source, SourceContext};
use ferry_pipeline::value::Value;
use rusqlite::{Connection, OpenFlags};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::catalog::{self, SqliteTable};
use crate::change_log::{self, Entry, LogOp};
use crate::snapshot::{self, read_row, Copied, SnapshotState};
use crate::value::to_value;

/// The SQLite source.
pub struct SqliteSource {
    cfg: SqliteSourceConfig,
    max_retry_delay: Duration,
}

impl SqliteSource {
    /// `cfg` must have passed `Config::validate`.
    pub fn new(cfg: SqliteSourceConfig, max_retry_delay: Duration) -> Self {
        Self {
            cfg,
            max_retry_delay,
        }
    }
}

/// Opens the database read-only (the snapshot and the log reads), with the
/// configured busy timeout.
pub fn open_read_only(cfg: &SqliteSourceConfig) -> Result<Connection, PipelineError> {
    let conn = Connection::open_with_flags(
        &cfg.path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite_err(Stage::Source, &format!("open {}", cfg.path.display()), e))?;
    conn.busy_timeout(Duration::from_millis(cfg.busy_timeout_ms))
        .map_err(|e| sqlite_err(Stage::Source, "set busy_timeout", e))?;
    Ok(conn)
}

/// Opens the database read-write (`prepare`, `unprepare`, trimming).
pub fn open_read_write(cfg: &SqliteSourceConfig) -> Result<Connection, PipelineError> {
    let conn = Connection::open_with_flags(
        &cfg.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite_err(Stage::Source, &format!("open {}", cfg.path.display()), e))?;
    conn.busy_timeout(Duration::from_millis(cfg.busy_timeout_ms))
        .map_err(|e| sqlite_err(Stage::Source, "set busy_timeout", e))?;
    Ok(conn)
}

/// The chosen tables, described, in foreign-key order (roots first). A
/// configured table that does not exist is refused by its key.
pub fn chosen_tables(
    conn: &Connection,
    cfg: &SqliteSourceConfig,
) -> Result<Vec<SqliteTable>, PipelineError> {
    let err = |e| sqlite_err(Stage::Source, "read the schema", e);
    let names = if cfg.tables.is_empty() {
        catalog::table_names(conn).map_err(err)?
    } else {
        cfg.tables.clone()
    };
    let mut tables = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match catalog::describe(conn, name).map_err(err)? {
            Some(t) => tables.push(t),
            None => {
                return Err(PipelineError::fatal(
                    Stage::Source,
                    format!(
                        "source.tables[{i}]: no table {name:?} in {}",
                        cfg.path.display()
                    ),
                ))
            }
        }
    }
    let (ordered, cyclic) = catalog::foreign_key_order(tables);
    if !cyclic.is_empty() {
        warn!(tables = ?cyclic, "foreign keys form a cycle: these tables are copied last, by name");
    }
    Ok(ordered)
}

/// What survives a reconnect.
#[derive(Default)]
struct Progress {
    /// Per copied table: changes up to this sequence are in its copy.
    horizons: HashMap<String, u64>,
    /// The last log sequence handed to the bus.
    sent_upto: Option<u64>,
}

impl Source for SqliteSource {
    async fn run(self, ctx: SourceContext) -> Result<(), PipelineError> {
        let mut progress = Progress::default();
        for (id, rec) in &ctx.checkpoint.snapshots {
            if id.schema != ferry_pipeline::config::SQLITE_SCHEMA {
                continue;
            }
            // Without its horizon the stream could skip or replay changes
            // of the copy: refuse rather than guess.
            let s = serde_json::from_value::<SnapshotState>(rec.state.clone()).map_err(|e| {
                PipelineError::fatal(
                    Stage::Source,
                    format!("the checkpoint holds an unreadable snapshot state for {id}: {e}"),
                )
            })?;
            progress.horizons.insert(id.name.clone(), s.horizon);
        }
        let mut backoff = retry_backoff(self.max_retry_delay);
        let cfg = Arc::new(self.cfg);
        let mut progress = Some(progress);
        loop {
            if *ctx.shutdown.borrow() {
                return Ok(());
            }
            let session = Session {
                cfg: Arc::clone(&cfg),
                bus: ctx.bus.clone(),
                acks: ctx.acks.clone(),
                checkpoint: ctx.checkpoint.clone(),
                shutdown: ctx.shutdown.clone(),
                handle: Handle::current(),
            };
            let mut p = progress.take().expect("returned by the last session");
            let (p, result) = tokio::task::spawn_blocking(move || {
                let r = session.run(&mut p);
                (p, r)
            })
            .await
            .map_err(|e| PipelineError::fatal(Stage::Source, format!("source thread: {e}")))?;
            progress = Some(p);
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.disposition() == Disposition::Retry => {
                    if wait_retry(&e, &mut backoff, ctx.shutdown.clone())
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// One connection's worth of work, on a blocking thread.
struct Session {
    cfg: Arc<SqliteSourceConfig>,
    bus: BusSender,
    acks: watch::Receiver<SourceAck>,
    checkpoint: Checkpoint,
    shutdown: watch::Receiver<bool>,
    handle: Handle,
}

impl Session {
    fn send(&self, msg: BusMessage) -> Result<(), PipelineError> {
        self.handle.block_on(self.bus.send(msg))
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn run(&self, progress: &mut Progress) -> Result<(), PipelineError> {
        let mut conn = open_read_only(&self.cfg)?;
        let tables = chosen_tables(&conn, &self.cfg)?;
        let follow = self.cfg.mode == SqliteMode::Follow;
        if follow {
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .map_err(|e| sqlite_err(Stage::Source, "read journal_mode", e))?;
            let mut missing = Vec::new();
            for t in &tables {
                if !change_log::installed(&conn, &t.name)
                    .map_err(|e| sqlite_err(Stage::Source, "read the triggers", e))?
                {
                    missing.push(t.name.clone());
                }
            }
            if !missing.is_empty() || !mode.eq_ignore_ascii_case("wal") {
                return Err(PipelineError::fatal(
                    Stage::Source,
                    format!(
                        "source.mode = \"follow\" needs Ferry's change log in {} (journal_mode {mode}, \
                         tables without triggers: {missing:?}): run `ferry sqlite prepare --config <file>` \
                         first, or set source.mode = \"snapshot\" to import once",
                        self.cfg.path.display()
                    ),
                ));
            }
        }
        if !follow {
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .map_err(|e| sqlite_err(Stage::Source, "read journal_mode", e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                warn!(journal_mode = %mode, "the database is not in WAL mode: the application's writes wait while the snapshot reads (`ferry sqlite prepare` switches it to WAL)");
            }
        }
        let todo: Vec<SqliteTable> = tables
            .iter()
            .filter(|t| !progress.horizons.contains_key(&t.name))
            .cloned()
            .collect();
        if !todo.is_empty() {
            info!(tables = todo.len(), order = ?todo.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), "snapshot starting");
            let started = Instant::now();
            let mut emit = |m: BusMessage| -> Result<(), PipelineError> {
                if self.stopping() {
                    return Err(PipelineError::transient(Stage::Snapshot, "stopping"));
                }
                self.send(m)
            };
            let (horizon, copied) = match snapshot::copy_tables(&mut conn, &todo, &mut emit) {
                Err(_) if self.stopping() => return Ok(()),
                other => other?,
            };
            for c in &copied {
                progress.horizons.insert(c.table.name.clone(), horizon);
            }
            print_report(&copied, started.elapsed());
        }
        if !follow {
            info!("snapshot mode: every table is copied; stopping");
            return Ok(());
        }
        self.follow(&conn, &tables, progress)
    }

    /// Reads the change log from the oldest horizon, in short read
    /// transactions, and trims what the runtime acknowledged.
    fn follow(
        &self,
        conn: &Connection,
        tables: &[SqliteTable],
        progress: &mut Progress,
    ) -> Result<(), PipelineError> {
        let by_name: HashMap<&str, &SqliteTable> =
            tables.iter().map(|t| (t.name.as_str(), t)).collect();
        let oldest = tables
            .iter()
            .filter_map(|t| progress.horizons.get(&t.name))
            .min()
            .copied()
            .unwrap_or(0);
        let applied = self.checkpoint.position.map_or(0, |p| p.commit_lsn);
        // Entries up to the checkpoint's position are durable: start after
        // the oldest horizon, or the checkpoint, whichever is later (after
        // a reconnect: after what this process already sent).
        let mut after = progress.sent_upto.unwrap_or(oldest.max(applied));
        let writer = open_read_write(&self.cfg)?;
        // The tables' shapes are read once per session: a schema change
        // (a column added or dropped, a table altered) ends the session, and
        // the next one describes the tables again.
        let described_at = schema_version(conn)?;
        let mut trimmed = 0u64;
        let mut last_trim = Instant::now();
        let mut idle_sent: Option<u64> = None;
        let mut warned: HashMap<String, Vec<bool>> = HashMap::new();
        info!(after, "following the change log");
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        loop {
            if self.stopping() {
                return Ok(());
            }
            let ack = self.acks.borrow().0;
            if ack > trimmed && (last_trim.elapsed() >= Duration::from_secs(1) || ack >= after) {
                // Only what the runtime acknowledged: everything up to `ack`
                // is durable downstream.
                change_log::trim(&writer, ack)
                    .map_err(|e| sqlite_err(Stage::Source, "trim the change log", e))?;
                trimmed = ack;
                last_trim = Instant::now();
            }
            if schema_version(conn)? != described_at {
                return Err(PipelineError::transient(
                    Stage::Source,
                    "the database's schema changed; describing the tables again",
                ));
            }
            let (entries, events) =
                self.read_batch(conn, after, &by_name, &progress.horizons, &mut warned)?;
            let Some(last) = entries.last() else {
                if idle_sent != Some(after) {
                    self.send(BusMessage::Idle {
                        ack: SourceAck(after),
                    })?;
                    idle_sent = Some(after);
                }
                let mut shutdown = self.shutdown.clone();
                let mut acks = self.acks.clone();
                self.handle.block_on(async {
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = shutdown.wait_for(|s| *s) => {}
                        // An ack lets the log be trimmed without waiting.
                        _ = acks.changed(), if trimmed < after => {}
                    }
                });
                continue;
            };
            let (seq, at) = (last.seq, last.at_micros);
            for ev in events {
                self.send(BusMessage::Change(ev))?;
            }
            self.send(BusMessage::Commit {
                position: position(seq),
                ack: SourceAck(seq),
                commit_ts_micros: at,
            })?;
            after = seq;
            progress.sent_upto = Some(seq);
        }
    }

    /// One short read transaction: the entries after `after` and the rows
    /// they name, as they are now.
    fn read_batch(
        &self,
        conn: &Connection,
        after: u64,
        tables: &HashMap<&str, &SqliteTable>,
        horizons: &HashMap<String, u64>,
        warned: &mut HashMap<String, Vec<bool>>,
    ) -> Result<(Vec<Entry>, Vec<ChangeEvent>), PipelineError> {
        let err = |e| sqlite_err(Stage::Source, "read the change log", e);
        conn.execute_batch("BEGIN").map_err(err)?;
        let result = (|| {
            let entries = change_log::read(conn, after, self.cfg.log_batch_size).map_err(err)?;
            let mut events = Vec::with_capacity(entries.len());
            for e in &entries {
                let Some(t) = tables.get(e.table.as_str()) else {
                    continue;
                };
                // Already in the table's copy.
                if e.seq <= horizons.get(&e.table).copied().unwrap_or(0) {
                    continue;
                }
                let w = warned
                    .entry(e.table.clone())
                    .or_insert_with(|| vec![false; t.schema.columns.len()]);
                events.extend(change_events(conn, t, e, w)?);
            }
            Ok((entries, events))
        })();
        conn.execute_batch("COMMIT").map_err(err)?;
        result
    }
}

/// SQLite's counter of schema changes.
fn schema_version(conn: &Connection) -> Result<i64, PipelineError> {
    conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
        .map_err(|e| sqlite_err(Stage::Source, "read schema_version", e))
}

fn position(seq: u64) -> Position {
    Position {
        commit_lsn: seq,
        ordinal: 1,
    }
}

/// A key's values, and the row that carries only them.
type KeyRow = (Vec<Value>, Vec<Datum>);

/// The bus events of one log entry: the row as it is now (an entry whose
/// row is gone since yields nothing; its delete follows), a delete by key,
/// or, for an update that moved the key, the update with the old key.
fn change_events(
    conn: &Connection,
    t: &SqliteTable,
    e: &Entry,
    warned: &mut [bool],
) -> Result<Vec<ChangeEvent>, PipelineError> {
    let key_row = |text: &Option<String>| -> Result<Option<KeyRow>, PipelineError> {
        let Some(text) = text else { return Ok(None) };
        let values = change_log::parse_key(text)
            .map_err(|k| PipelineError::fatal(Stage::Decode, format!("{}: {k}", t.name)))?;
        if values.len() != t.key.len() {
            return Err(PipelineError::fatal(
                Stage::Decode,
                format!(
                    "{}: the change log's key {text:?} does not match the table's key; \
                     the table's key changed since `ferry sqlite prepare`: run it again",
                    t.name
                ),
            ));
        }
        let values: Vec<Value> = values.into_iter().map(to_value).collect();
        let mut row = vec![Datum::Value(Value::Null); t.schema.columns.len()];
        for (v, &i) in values.iter().zip(t.key_indexes()) {
            row[i] = Datum::Value(v.clone());
        }
        Ok(Some((values, row)))
    };
    let old = key_row(&e.old_key)?;
    let new = key_row(&e.new_key)?;
    let event = |op, before, after| ChangeEvent {
        table: Arc::clone(&t.schema),
        op,
        before,
        after,
        position: position(e.seq),
        xid: None,
        commit_ts_micros: e.at_micros,
        resume_token: None,
    };
    let current = match &new {
        Some((key, _)) => lookup(conn, t, key, warned)?,
        None => None,
    };
    let moved = match (&old, &new) {
        (Some((o, _)), Some((n, _))) => o != n,
        _ => false,
    };
    Ok(match (e.op, current) {
        (LogOp::Delete, _) => old
            .map(|(_, before)| event(Op::Delete, Some(before), None))
            .into_iter()
            .collect(),
        (LogOp::Insert, Some(row)) => vec![event(Op::Insert, None, Some(row))],
        (LogOp::Update, Some(row)) => {
            let before = if moved { old.map(|(_, r)| r) } else { None };
            vec![event(Op::Update, before, Some(row))]
        }
        // Moved, then deleted: the old key's row must go; the new key's
        // delete follows in the log.
        (LogOp::Update, None) if moved => old
            .map(|(_, before)| event(Op::Delete, Some(before), None))
            .into_iter()
            .collect(),
        (_, None) => Vec::new(),
    })
}

/// The row of `t` whose key is `key`, as it is in the caller's transaction.
fn lookup(
    conn: &Connection,
    t: &SqliteTable,
    key: &[Value],
    warned: &mut [bool],
) -> Result<Option<Vec<Datum>>, PipelineError> {
    let err = |e| sqlite_err(Stage::Source, &format!("read {}", t.name), e);
    let filter: Vec<String> = t
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} IS ?{}", i + 1))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        t.select_list,
        ferry_pipeline::event::quote_ident(&t.name),
        filter.join(" AND ")
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
    let params: Vec<rusqlite::types::Value> = key.iter().map(sql_value).collect();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(err)?;
    match rows.next().map_err(err)? {
        Some(r) => Ok(Some(read_row(r, t, warned).map_err(err)?)),
        None => Ok(None),
    }
}

fn sql_value(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Int(i) => V::Integer(*i),
        Value::Float(f) => V::Real(*f),
        Value::Text(s) => V::Text(s.clone()),
        Value::Bytes(b) => V::Blob(b.clone()),
        _ => V::Null,
    }
}

/// The end-of-import report, on standard output (one line per table).
fn print_report(copied: &[Copied], took: Duration) {
    let rows: u64 = copied.iter().map(|c| c.sum.rows).sum();
    println!(
        "ferry: snapshot complete: {} tables, {rows} rows in {:.1}s",
        copied.len(),
        took.as_secs_f64()
    );
    for c in copied {
        println!(
            "  {:<32} rows {:>10}  key checksum {:016x}",
            c.table.name, c.sum.rows, c.sum.key_checksum
        );
    }
}

/// Classifies a SQLite error: a busy or locked database, an interrupted or
/// I/O-failing read are retried; a file that cannot be opened, is not a
/// database, is corrupt, or refuses access stops the pipeline; anything
/// else (a bug in Ferry's SQL, a schema changed under it) is retried with
/// backoff, per the one rule for unknown errors.
pub fn sqlite_err(stage: Stage, context: &str, e: rusqlite::Error) -> PipelineError {
    use rusqlite::ErrorCode as C;
    let class = match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::CannotOpen
            | C::NotADatabase
            | C::DatabaseCorrupt
            | C::PermissionDenied
            | C::AuthorizationForStatementDenied
            | C::ReadOnly => ErrorClass::Fatal,
            _ => ErrorClass::Transient,
        },
        _ => ErrorClass::Transient,
    };
    PipelineError::new(class, stage, format!("{context}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::describe;

    fn entry(seq: u64, op: LogOp, old: Option<&str>, new: Option<&str>) -> Entry {
        Entry {
            seq,
            table: "t".into(),
            op,
            old_key: old.map(str::to_string),
            new_key: new.map(str::to_string),
            at_micros: 1,
        }
    }

    fn values(row: &Option<Vec<Datum>>) -> Vec<Value> {
        row.iter()
            .flatten()
            .map(|d| match d {
                Datum::Value(v) => v.clone(),
                Datum::UnchangedToast => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn entries_become_the_rows_as_they_are_now() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (2, 'now');",
        )
        .unwrap();
        let t = describe(&c, "t").unwrap().unwrap();
        let mut w = vec![false; 2];
        // An insert reads the row as it is now, at the entry's position.
        let ev = change_events(&c, &t, &entry(5, LogOp::Insert, None, Some("2")), &mut w).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].op, ev[0].position), (Op::Insert, position(5)));
        assert_eq!(
            values(&ev[0].after),
            [Value::Int(2), Value::Text("now".into())]
        );
        // A row gone since: nothing (its delete follows in the log).
        assert!(
            change_events(&c, &t, &entry(6, LogOp::Insert, None, Some("9")), &mut w)
                .unwrap()
                .is_empty()
        );
        // A moved key: the update carries the old key.
        let ev = change_events(
            &c,
            &t,
            &entry(7, LogOp::Update, Some("1"), Some("2")),
            &mut w,
        )
        .unwrap();
        assert_eq!(ev[0].op, Op::Update);
        assert_eq!(values(&ev[0].before), [Value::Int(1), Value::Null]);
        // Moved, then deleted: the old key's row is deleted.
        let ev = change_events(
            &c,
            &t,
            &entry(8, LogOp::Update, Some("1"), Some("9")),
            &mut w,
        )
        .unwrap();
        assert_eq!(ev[0].op, Op::Delete);
        assert_eq!(values(&ev[0].before), [Value::Int(1), Value::Null]);
        // A delete carries its key only.
        let ev = change_events(&c, &t, &entry(9, LogOp::Delete, Some("3"), None), &mut w).unwrap();
        assert_eq!((ev[0].op, ev[0].after.is_none()), (Op::Delete, true));
        // A key of another shape than the table's: refused, never guessed.
        assert!(
            change_events(&c, &t, &entry(10, LogOp::Delete, Some("1,2"), None), &mut w).is_err()
        );
    }
}
