//! The consistent snapshot: every chosen table read in one read transaction
//! (in WAL mode the application keeps writing meanwhile), tables in foreign
//! key order (roots first), rows in key order.
//!
//! Handoff: the triggers are installed before (`ferry sqlite prepare`), and
//! the transaction reads the log's last sequence first. Every change up to
//! it is in the rows read, every change after it is in the log: the stream
//! starts after that sequence (the table's *horizon*) and skips nothing
//! else, so nothing falls in between.

use std::sync::Arc;

use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{BusMessage, ChangeEvent, Datum, TableId};
use ferry_pipeline::value::Value;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::catalog::SqliteTable;
use crate::change_log;
use crate::report::TableSum;
use crate::source::sqlite_err;
use crate::value::{misfit, to_value, Stored};

/// What a completed table snapshot records (the checkpoint's state).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotState {
    /// The log's last sequence when the snapshot's transaction began.
    pub horizon: u64,
}

/// One table copied.
#[derive(Debug, Clone)]
pub struct Copied {
    pub table: TableId,
    pub sum: TableSum,
}

/// Reads `tables` (already in foreign-key order) in one read transaction
/// and hands each message to `emit`, which may block (the bus's
/// backpressure). Returns the horizon and what each table held.
pub fn copy_tables(
    conn: &mut Connection,
    tables: &[SqliteTable],
    emit: &mut dyn FnMut(BusMessage) -> Result<(), PipelineError>,
) -> Result<(u64, Vec<Copied>), PipelineError> {
    let err = |what: &str, e| sqlite_err(Stage::Snapshot, what, e);
    let tx = conn
        .transaction()
        .map_err(|e| err("begin the snapshot", e))?;
    // The first read fixes the transaction's view of the database.
    tx.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| err("begin the snapshot", e))?;
    let horizon = change_log::last_seq(&tx).map_err(|e| err("read the change log", e))?;
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        emit(BusMessage::SnapshotStart {
            table: Arc::clone(&t.schema),
        })?;
        let sum = copy_table(&tx, t, emit)?;
        tracing::info!(table = %t.name, rows = sum.rows, key_checksum = format!("{:016x}", sum.key_checksum), "snapshot of table copied");
        emit(BusMessage::SnapshotDone {
            table: t.schema.id.clone(),
            rows: sum.rows,
            state: serde_json::to_value(SnapshotState { horizon }).expect("serializable"),
        })?;
        out.push(Copied {
            table: t.schema.id.clone(),
            sum,
        });
    }
    tx.commit().map_err(|e| err("end the snapshot", e))?;
    Ok((horizon, out))
}

fn copy_table(
    conn: &Connection,
    t: &SqliteTable,
    emit: &mut dyn FnMut(BusMessage) -> Result<(), PipelineError>,
) -> Result<TableSum, PipelineError> {
    let err = |e| sqlite_err(Stage::Snapshot, &format!("read {}", t.name), e);
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        t.select_list,
        ferry_pipeline::event::quote_ident(&t.name),
        t.key.join(", ")
    );
    // Progress for dashboards (`ferry_snapshot_rows_total` against
    // `ferry_snapshot_rows_estimate`): in this transaction the count is
    // exact, and a scan of the key is cheap next to the copy.
    let label = t.schema.id.to_string();
    let estimate: i64 = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM {}",
                ferry_pipeline::event::quote_ident(&t.name)
            ),
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    let m = ferry_pipeline::metrics::metrics();
    m.snapshot_estimate
        .with_label_values(&[&label])
        .set(estimate);
    let counter = m.snapshot_rows.with_label_values(&[&label]);
    let mut stmt = conn.prepare(&sql).map_err(err)?;
    let n = t.schema.columns.len();
    let mut rows = stmt.query([]).map_err(err)?;
    let mut sum = TableSum::default();
    let mut warned = vec![false; n];
    let mut key = Vec::with_capacity(t.key.len());
    while let Some(r) = rows.next().map_err(err)? {
        let row = read_row(r, t, &mut warned).map_err(err)?;
        key.clear();
        key.extend(t.key_indexes().iter().map(|&i| match &row[i] {
            Datum::Value(v) => v.clone(),
            Datum::UnchangedToast => Value::Null,
        }));
        sum.add(&key);
        counter.inc();
        emit(BusMessage::Change(ChangeEvent::snapshot_read(
            Arc::clone(&t.schema),
            row,
        )))?;
    }
    Ok(sum)
}

/// One row of `t` (its select list) as Ferry values. A value its mirrored
/// column would silently reinterpret is reported once per column.
pub fn read_row(
    r: &rusqlite::Row<'_>,
    t: &SqliteTable,
    warned: &mut [bool],
) -> rusqlite::Result<Vec<Datum>> {
    let mut row = Vec::with_capacity(t.schema.columns.len());
    for (i, c) in t.schema.columns.iter().enumerate() {
        let v = to_value(Stored::from(r.get::<_, rusqlite::types::Value>(i)?));
        if let Some(why) = misfit(&v, &c.type_sql) {
            if !warned[i] {
                warned[i] = true;
                tracing::warn!(table = %t.name, column = %c.name, mirror_type = %c.type_sql, "{why}: map this column with a mapping (docs/sqlite.md)");
            }
        }
        row.push(Datum::Value(v));
    }
    Ok(row)
}
