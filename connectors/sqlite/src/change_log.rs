//! The change log Ferry installs in the application's database: one table
//! (`_ferry_changes`) and AFTER INSERT/UPDATE/DELETE triggers per chosen
//! table, which record the changed row's old and new key under a monotonic
//! sequence.
//!
//! Why keys only: the triggers run inside the application's own writes, so
//! they do the least work there (a key as SQL literals, never the row), and
//! they can never fail on a value (a blob would not go into JSON). The source
//! reads the row's current state by its key when it reads the entry, as
//! MongoDB's `updateLookup` does; an entry whose row is gone is skipped, its
//! delete follows in the log.
//!
//! Order: SQLite has one writer at a time, and `AUTOINCREMENT` never reuses
//! a sequence, so sequences are assigned in commit order and a reader sees a
//! gap-free prefix of the log. The log is trimmed only up to what the
//! runtime acknowledged.

use ferry_pipeline::event::quote_ident;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::catalog::SqliteTable;
use crate::value::Stored;

/// Names Ferry gives its objects in the database start with this.
pub const LOG_PREFIX: &str = "_ferry_";
/// The change-log table.
pub const LOG_TABLE: &str = "_ferry_changes";

const CREATE_LOG: &str = "CREATE TABLE IF NOT EXISTS \"_ferry_changes\" (\
    seq INTEGER PRIMARY KEY AUTOINCREMENT, \
    tbl TEXT NOT NULL, \
    op TEXT NOT NULL CHECK (op IN ('I', 'U', 'D')), \
    old_key TEXT, \
    new_key TEXT, \
    at REAL NOT NULL DEFAULT (julianday('now')))";

/// What happened to the row an entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOp {
    Insert,
    Update,
    Delete,
}

/// One change-log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub table: String,
    pub op: LogOp,
    /// The key before an update or delete, as `quote()` literals.
    pub old_key: Option<String>,
    /// The key after an insert or update.
    pub new_key: Option<String>,
    /// When the application's statement ran, microseconds since the epoch.
    pub at_micros: i64,
}

/// The three trigger names of `table`.
pub fn trigger_names(table: &str) -> [String; 3] {
    ["insert", "update", "delete"].map(|op| format!("{LOG_PREFIX}{table}_{op}"))
}

/// The key of `NEW` or `OLD` as one text of `quote()` literals.
fn key_expr(t: &SqliteTable, row: &str) -> String {
    t.key
        .iter()
        .map(|k| format!("quote({row}.{k})"))
        .collect::<Vec<_>>()
        .join(" || ',' || ")
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The statements that install the triggers of `t`.
pub fn trigger_sql(t: &SqliteTable) -> [String; 3] {
    let [ins, upd, del] = trigger_names(&t.name).map(|n| quote_ident(&n));
    let on = quote_ident(&t.name);
    let name = literal(&t.name);
    let (new, old) = (key_expr(t, "NEW"), key_expr(t, "OLD"));
    [
        format!(
            "CREATE TRIGGER IF NOT EXISTS {ins} AFTER INSERT ON {on} BEGIN \
             INSERT INTO \"{LOG_TABLE}\" (tbl, op, new_key) VALUES ({name}, 'I', {new}); END"
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {upd} AFTER UPDATE ON {on} BEGIN \
             INSERT INTO \"{LOG_TABLE}\" (tbl, op, old_key, new_key) VALUES ({name}, 'U', {old}, {new}); END"
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {del} AFTER DELETE ON {on} BEGIN \
             INSERT INTO \"{LOG_TABLE}\" (tbl, op, old_key) VALUES ({name}, 'D', {old}); END"
        ),
    ]
}

/// Installs the log table and the triggers of `tables` in one write
/// transaction, after switching the database to WAL (so that the source's
/// reads never block the application's writes). Idempotent.
pub fn prepare(conn: &mut Connection, tables: &[SqliteTable]) -> rusqlite::Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the database stays in journal_mode {mode}: WAL is needed"
        )));
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(CREATE_LOG)?;
    for t in tables {
        for sql in trigger_sql(t) {
            tx.execute_batch(&sql)?;
        }
    }
    tx.commit()
}

/// Removes every Ferry trigger and the log table, in one write transaction.
/// Returns the triggers dropped.
pub fn unprepare(conn: &mut Connection) -> rusqlite::Result<Vec<String>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let names = ferry_triggers(&tx)?;
    for n in &names {
        tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote_ident(n)))?;
    }
    tx.execute_batch(&format!("DROP TABLE IF EXISTS \"{LOG_TABLE}\""))?;
    tx.commit()?;
    Ok(names)
}

/// Every trigger Ferry installed, by name.
fn ferry_triggers(tx: &Transaction<'_>) -> rusqlite::Result<Vec<String>> {
    let like = format!("{}%", LOG_PREFIX.replace('_', "\\_"));
    let mut stmt = tx.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE ?1 ESCAPE '\\' ORDER BY name",
    )?;
    let names = stmt
        .query_map([like], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(names)
}

/// Whether the log table exists and `table` has its three triggers.
pub fn installed(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    let log: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [LOG_TABLE],
        |r| r.get(0),
    )?;
    let mut n = 0;
    for name in trigger_names(table) {
        n += conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name = ?1 AND tbl_name = ?2",
            params![name, table],
            |r| r.get::<_, i64>(0),
        )?;
    }
    Ok(log == 1 && n == 3)
}

/// The last sequence ever assigned (0 when none): entries up to it are
/// visible to the caller's transaction, even those trimmed since.
pub fn last_seq(conn: &Connection) -> rusqlite::Result<u64> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [LOG_TABLE],
            |r| r.get(0),
        )
        .optional()
        .or_else(|e| match e {
            // No AUTOINCREMENT table yet: no sqlite_sequence either.
            rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.contains("no such table") => {
                Ok(None)
            }
            e => Err(e),
        })?;
    Ok(seq.unwrap_or(0).max(0) as u64)
}

/// Entries after `after`, in sequence order, at most `limit`.
pub fn read(conn: &Connection, after: u64, limit: u32) -> rusqlite::Result<Vec<Entry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, tbl, op, old_key, new_key, at FROM \"_ferry_changes\" WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after as i64, limit], |r| {
        let op: String = r.get(2)?;
        let at: f64 = r.get(5)?;
        Ok(Entry {
            seq: r.get::<_, i64>(0)? as u64,
            table: r.get(1)?,
            op: match op.as_str() {
                "I" => LogOp::Insert,
                "U" => LogOp::Update,
                _ => LogOp::Delete,
            },
            old_key: r.get(3)?,
            new_key: r.get(4)?,
            at_micros: julian_to_micros(at),
        })
    })?;
    rows.collect()
}

/// Deletes the entries up to `upto` (acknowledged downstream); one short
/// write transaction. Returns how many were deleted.
pub fn trim(conn: &Connection, upto: u64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM \"_ferry_changes\" WHERE seq <= ?1",
        [upto as i64],
    )
}

/// Microseconds since the Unix epoch of a Julian day number.
pub fn julian_to_micros(jd: f64) -> i64 {
    ((jd - 2_440_587.5) * 86_400_000_000.0).round() as i64
}

/// Why a key text could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unreadable key in the change log: {}", self.0)
    }
}

/// Reads a key text the triggers wrote: `quote()` literals (`NULL`, an
/// integer, a real, `'text'` with `''` for a quote, `X'hex'`) joined by
/// commas.
pub fn parse_key(text: &str) -> Result<Vec<Stored>, KeyError> {
    let bad = || KeyError(text.to_string());
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let (v, next) = match b.get(i) {
            Some(b'\'') => {
                let mut s = Vec::new();
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        Some(b'\'') if b.get(j + 1) == Some(&b'\'') => {
                            s.push(b'\'');
                            j += 2;
                        }
                        Some(b'\'') => break,
                        Some(&c) => {
                            s.push(c);
                            j += 1;
                        }
                        None => return Err(bad()),
                    }
                }
                let s = String::from_utf8(s).map_err(|_| bad())?;
                (Stored::Text(s), j + 1)
            }
            Some(b'X') if b.get(i + 1) == Some(&b'\'') => {
                let end = text[i + 2..].find('\'').ok_or_else(bad)? + i + 2;
                let hex = &text[i + 2..end];
                if hex.len() % 2 != 0 {
                    return Err(bad());
                }
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|k| u8::from_str_radix(&hex[k..k + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| bad())?;
                (Stored::Blob(bytes), end + 1)
            }
            Some(_) => {
                let end = text[i..].find(',').map_or(text.len(), |k| k + i);
                let tok = &text[i..end];
                let v = if tok == "NULL" {
                    Stored::Null
                } else if let Ok(n) = tok.parse::<i64>() {
                    Stored::Integer(n)
                } else {
                    Stored::Real(tok.parse::<f64>().map_err(|_| bad())?)
                };
                (v, end)
            }
            None => return Err(bad()),
        };
        out.push(v);
        match b.get(next) {
            None => return Ok(out),
            Some(b',') => i = next + 1,
            Some(_) => return Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::describe;
    use proptest::prelude::*;

    #[test]
    fn keys_parse_every_literal() {
        assert_eq!(parse_key("7").unwrap(), vec![Stored::Integer(7)]);
        assert_eq!(
            parse_key("'a,''b',-3,NULL,X'00FF',1.5").unwrap(),
            vec![
                Stored::Text("a,'b".into()),
                Stored::Integer(-3),
                Stored::Null,
                Stored::Blob(vec![0, 255]),
                Stored::Real(1.5)
            ]
        );
        assert!(parse_key("'open").is_err());
        assert!(parse_key("").is_err());
        assert!(parse_key("'a'x").is_err());
    }

    /// What SQLite's own `quote()` writes, this parser reads back.
    fn round_trip(values: Vec<Stored>) {
        let c = Connection::open_in_memory().unwrap();
        let mut parts = Vec::new();
        for v in &values {
            let q: String = match v {
                Stored::Null => c.query_row("SELECT quote(NULL)", [], |r| r.get(0)),
                Stored::Integer(i) => c.query_row("SELECT quote(?1)", [i], |r| r.get(0)),
                Stored::Real(f) => c.query_row("SELECT quote(?1)", [f], |r| r.get(0)),
                Stored::Text(s) => c.query_row("SELECT quote(?1)", [s], |r| r.get(0)),
                Stored::Blob(b) => c.query_row("SELECT quote(?1)", [b], |r| r.get(0)),
            }
            .unwrap();
            parts.push(q);
        }
        assert_eq!(parse_key(&parts.join(",")).unwrap(), values);
    }

    proptest! {
        #[test]
        fn quote_round_trips(
            i in any::<i64>(),
            s in "[^\u{0}]*",
            b in proptest::collection::vec(any::<u8>(), 0..8),
            f in -1e12f64..1e12,
        ) {
            round_trip(vec![Stored::Integer(i), Stored::Text(s), Stored::Blob(b), Stored::Real(f), Stored::Null]);
        }
    }

    #[test]
    fn triggers_log_keys_in_order_and_unprepare_removes_all() {
        // WAL needs a file (an in-memory database stays in `memory` mode).
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("app.db")).unwrap();
        c.execute_batch(
            "CREATE TABLE t (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b));
             CREATE TABLE r (v TEXT);",
        )
        .unwrap();
        let t = describe(&c, "t").unwrap().unwrap();
        let r = describe(&c, "r").unwrap().unwrap();
        prepare(&mut c, &[t, r]).unwrap();
        assert!(installed(&c, "t").unwrap() && installed(&c, "r").unwrap());
        c.execute_batch(
            "INSERT INTO t VALUES ('x''y', 1, 'a');
             UPDATE t SET b = 2 WHERE b = 1;
             DELETE FROM t;
             INSERT INTO r VALUES ('z');",
        )
        .unwrap();
        let log = read(&c, 0, 100).unwrap();
        let ops: Vec<(LogOp, Option<&str>, Option<&str>)> = log
            .iter()
            .map(|e| (e.op, e.old_key.as_deref(), e.new_key.as_deref()))
            .collect();
        assert_eq!(
            ops,
            [
                (LogOp::Insert, None, Some("'x''y',1")),
                (LogOp::Update, Some("'x''y',1"), Some("'x''y',2")),
                (LogOp::Delete, Some("'x''y',2"), None),
                (LogOp::Insert, None, Some("1")),
            ]
        );
        assert_eq!(last_seq(&c).unwrap(), 4);
        assert_eq!(trim(&c, 2).unwrap(), 2);
        assert_eq!(read(&c, 0, 100).unwrap()[0].seq, 3);
        let dropped = unprepare(&mut c).unwrap();
        assert_eq!(dropped.len(), 6);
        let left: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_ferry\\_%' ESCAPE '\\'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
    }
}
