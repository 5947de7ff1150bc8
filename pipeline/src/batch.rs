//! A batch of changes ready for a sink, collapsed per row.
//!
//! A sink applies a batch in one transaction, so only each row's last state
//! in the batch matters: the batch keeps, per table and per key, the last
//! change (last writer wins), merges unchanged-TOAST values from an earlier
//! image of the same row, and turns a truncate into "empty the table, then
//! apply what came after". This is what makes multi-row statements possible
//! without reordering any row's history.

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::{ChangeEvent, Datum, Op, Position, Row, TableId, TableSchema};
use crate::value::Value;

/// The collapsed fate of one row in a batch.
#[derive(Debug, Clone)]
pub enum RowChange {
    /// Insert or replace the whole row.
    Upsert(Row),
    /// Update the row, keeping the target's value of every
    /// [`Datum::UnchangedToast`] column; the row already exists downstream.
    Patch(Row),
    /// Delete the row with this key (values in primary-key order).
    Delete(Vec<Value>),
}

/// Everything a batch does to one table.
#[derive(Debug, Clone)]
pub struct TableBatch {
    pub schema: Arc<TableSchema>,
    /// Empty the table before applying `rows`.
    pub truncate: bool,
    /// Snapshot start: (re)create the target table if configured and empty it.
    pub snapshot_start: bool,
    /// Snapshot done: record this state (see `BusMessage::SnapshotDone`).
    pub snapshot_done: Option<(u64, serde_json::Value)>,
    /// Per key, in first-seen order.
    pub rows: Vec<RowChange>,
    index: HashMap<String, usize>,
}

impl TableBatch {
    fn new(schema: Arc<TableSchema>) -> Self {
        Self {
            schema,
            truncate: false,
            snapshot_start: false,
            snapshot_done: None,
            rows: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn put(&mut self, key: String, change: RowChange) {
        match self.index.get(&key) {
            Some(&i) => {
                let merged = merge(&self.rows[i], change);
                self.rows[i] = merged;
            }
            None => {
                self.index.insert(key, self.rows.len());
                self.rows.push(change);
            }
        }
    }
}

/// Applies `later` on top of `earlier` for the same key.
fn merge(earlier: &RowChange, later: RowChange) -> RowChange {
    match (earlier, later) {
        // Fill unchanged-TOAST columns from the earlier full image: the
        // target never saw that image, so it cannot keep it for us.
        (RowChange::Upsert(old) | RowChange::Patch(old), RowChange::Patch(mut new)) => {
            for (n, o) in new.iter_mut().zip(old) {
                if matches!(n, Datum::UnchangedToast) {
                    *n = o.clone();
                }
            }
            if matches!(earlier, RowChange::Upsert(_)) {
                RowChange::Upsert(new)
            } else if new.iter().any(|d| matches!(d, Datum::UnchangedToast)) {
                RowChange::Patch(new)
            } else {
                RowChange::Upsert(new)
            }
        }
        // Patch after delete cannot happen in a consistent stream (an update
        // of a deleted row); keep the patch, the sink reports it.
        (_, later) => later,
    }
}

/// A batch under construction, and then applied as a whole.
#[derive(Debug, Default)]
pub struct Batch {
    /// Tables in first-touched order.
    pub tables: Vec<TableBatch>,
    table_index: HashMap<TableId, usize>,
    /// Highest position of any change in the batch.
    pub last_position: Option<Position>,
    /// Number of source events folded into the batch.
    pub events: usize,
    /// Per (table, op) counts, for metrics.
    pub counts: HashMap<(TableId, Op), u64>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events == 0 && self.tables.is_empty()
    }

    fn table(&mut self, schema: &Arc<TableSchema>) -> &mut TableBatch {
        let i = match self.table_index.get(&schema.id) {
            Some(&i) => {
                // A newer schema (column added) replaces the older one; rows
                // already collected keep their own width and are padded by the
                // sink.
                if self.tables[i].schema != *schema {
                    self.tables[i].schema = Arc::clone(schema);
                }
                i
            }
            None => {
                self.table_index
                    .insert(schema.id.clone(), self.tables.len());
                self.tables.push(TableBatch::new(Arc::clone(schema)));
                self.tables.len() - 1
            }
        };
        &mut self.tables[i]
    }

    /// Folds one change into the batch.
    pub fn push(&mut self, ev: ChangeEvent) {
        self.events += 1;
        *self.counts.entry((ev.table.id.clone(), ev.op)).or_default() += 1;
        if ev.position.commit_lsn != 0 {
            self.last_position = Some(ev.position);
        }
        let tb = self.table(&ev.table);
        match ev.op {
            Op::Truncate => {
                tb.rows.clear();
                tb.index.clear();
                tb.truncate = true;
            }
            Op::Insert | Op::Read => {
                if let Some(after) = ev.after {
                    let key = key_string(&tb.schema, &after);
                    tb.put(key, RowChange::Upsert(after));
                }
            }
            Op::Update => {
                let Some(after) = ev.after else { return };
                let new_key = key_string(&tb.schema, &after);
                if let Some(before) = &ev.before {
                    let old_key = key_string(&tb.schema, before);
                    if old_key != new_key {
                        let key_vals = key_values(&tb.schema, before);
                        tb.put(old_key, RowChange::Delete(key_vals));
                    }
                }
                let after = fill_from_before(after, ev.before.as_ref());
                if after.iter().any(|d| matches!(d, Datum::UnchangedToast)) {
                    tb.put(new_key, RowChange::Patch(after));
                } else {
                    tb.put(new_key, RowChange::Upsert(after));
                }
            }
            Op::Delete => {
                if let Some(before) = &ev.before {
                    let key = key_string(&tb.schema, before);
                    let key_vals = key_values(&tb.schema, before);
                    tb.put(key, RowChange::Delete(key_vals));
                }
            }
        }
    }

    pub fn snapshot_start(&mut self, schema: &Arc<TableSchema>) {
        let tb = self.table(schema);
        tb.rows.clear();
        tb.index.clear();
        tb.snapshot_start = true;
    }

    pub fn snapshot_done(
        &mut self,
        schema: &Arc<TableSchema>,
        rows: u64,
        state: serde_json::Value,
    ) {
        self.table(schema).snapshot_done = Some((rows, state));
    }
}

/// Replaces unchanged-TOAST datums with the old image's values where the
/// source sent a full old row (REPLICA IDENTITY FULL).
fn fill_from_before(mut after: Row, before: Option<&Row>) -> Row {
    if let Some(before) = before {
        for (a, b) in after.iter_mut().zip(before) {
            if matches!(a, Datum::UnchangedToast) {
                if let Datum::Value(_) = b {
                    *a = b.clone();
                }
            }
        }
    }
    after
}

/// The key's values, in primary-key order.
pub fn key_values(schema: &TableSchema, row: &Row) -> Vec<Value> {
    schema
        .primary_key
        .iter()
        .map(|&i| match row.get(i) {
            Some(Datum::Value(v)) => v.clone(),
            _ => Value::Null,
        })
        .collect()
}

/// A map key for a row's primary key. Debug formatting of values is exact
/// and unambiguous (strings are quoted and escaped).
fn key_string(schema: &TableSchema, row: &Row) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for &i in &schema.primary_key {
        match row.get(i) {
            Some(Datum::Value(v)) => {
                let _ = write!(s, "{v:?}\u{1f}");
            }
            _ => s.push_str("?\u{1f}"),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Column;

    fn schema() -> Arc<TableSchema> {
        let col = |n: &str, key| Column {
            name: n.into(),
            type_oid: 0,
            type_sql: "text".into(),
            nullable: true,
            is_key: key,
            enum_labels: None,
        };
        Arc::new(TableSchema {
            id: TableId::new("public", "t"),
            columns: vec![col("id", true), col("a", false), col("big", false)],
            primary_key: vec![0],
        })
    }

    fn v(s: &str) -> Datum {
        Datum::Value(Value::Text(s.into()))
    }

    fn ev(op: Op, before: Option<Row>, after: Option<Row>, ord: u64) -> ChangeEvent {
        ChangeEvent {
            table: schema(),
            op,
            before,
            after,
            position: Position {
                commit_lsn: 10,
                ordinal: ord,
            },
            xid: Some(1),
            commit_ts_micros: 0,
        }
    }

    #[test]
    fn last_writer_wins_and_toast_is_merged() {
        let mut b = Batch::default();
        b.push(ev(
            Op::Insert,
            None,
            Some(vec![v("1"), v("x"), v("BIG")]),
            1,
        ));
        b.push(ev(
            Op::Update,
            None,
            Some(vec![v("1"), v("y"), Datum::UnchangedToast]),
            2,
        ));
        let t = &b.tables[0];
        assert_eq!(t.rows.len(), 1);
        match &t.rows[0] {
            RowChange::Upsert(r) => assert_eq!(r, &vec![v("1"), v("y"), v("BIG")]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn patch_alone_stays_patch_and_delete_then_insert_is_upsert() {
        let mut b = Batch::default();
        b.push(ev(
            Op::Update,
            None,
            Some(vec![v("1"), v("y"), Datum::UnchangedToast]),
            1,
        ));
        b.push(ev(
            Op::Delete,
            Some(vec![
                v("2"),
                Datum::Value(Value::Null),
                Datum::Value(Value::Null),
            ]),
            None,
            2,
        ));
        b.push(ev(Op::Insert, None, Some(vec![v("2"), v("z"), v("q")]), 3));
        let t = &b.tables[0];
        assert!(matches!(t.rows[0], RowChange::Patch(_)));
        assert!(matches!(t.rows[1], RowChange::Upsert(_)));
    }

    #[test]
    fn key_change_deletes_old_key_and_truncate_resets() {
        let mut b = Batch::default();
        b.push(ev(
            Op::Update,
            Some(vec![
                v("1"),
                Datum::Value(Value::Null),
                Datum::Value(Value::Null),
            ]),
            Some(vec![v("2"), v("a"), v("b")]),
            1,
        ));
        let t = &b.tables[0];
        assert!(matches!(&t.rows[0], RowChange::Delete(k) if k == &vec![Value::Text("1".into())]));
        assert!(matches!(t.rows[1], RowChange::Upsert(_)));
        b.push(ev(Op::Truncate, None, None, 2));
        b.push(ev(Op::Insert, None, Some(vec![v("3"), v("a"), v("b")]), 3));
        let t = &b.tables[0];
        assert!(t.truncate);
        assert_eq!(t.rows.len(), 1);
        assert_eq!(b.last_position.unwrap().ordinal, 3);
    }
}
