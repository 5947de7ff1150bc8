//! A batch of changes ready for a sink, collapsed per row.
//!
//! A sink applies a batch in one transaction, so only each row's last state
//! in the batch matters: the batch keeps, per table and per key, the last
//! change (last writer wins), merges unchanged-TOAST values from an earlier
//! image of the same row, and turns a truncate into "empty the table, then
//! apply what came after". This is what makes multi-row statements possible
//! without reordering any row's history.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::dlq::Parked;
use crate::event::{ChangeEvent, Datum, Op, Origin, Position, Row, TableId, TableSchema};
use crate::id_map::{IdKind, LegacyId};
use crate::value::Value;
use crate::FastHashMap as HashMap;

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
    /// Move the row at `old_key` to the key in `row`, keeping the target's
    /// value of every [`Datum::UnchangedToast`] column: a key-changing
    /// update whose untouched large values only the target still has.
    /// Sinks apply rekeys before anything else in the table's batch.
    Rekey { old_key: Vec<Value>, row: Row },
    /// Inserted and deleted again within the batch: nothing to apply.
    Vanished,
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
    /// Keys whose first change in this batch was an insert: the row did not
    /// exist before the batch, so deleting it again leaves nothing to do.
    born: Vec<bool>,
    /// Per row, when it was last changed (a sequence number): sinks write
    /// rows in this order, which is the source's order of each row's final
    /// write, so that a value moved from one row to another (a unique
    /// email changing hands) is freed before it is taken.
    last_touch: Vec<u64>,
    touches: u64,
    /// Per row, the Kafka message its last change came from (Kafka bus).
    pub origins: Vec<Option<Origin>>,
    /// The row the last change touched.
    last_index: Option<usize>,
    /// Child tables of a mapping: per parent key, delete the rows at this
    /// position and beyond (the parent's array got shorter, or the parent
    /// went). The last prune of a parent wins; sinks apply prunes before
    /// the table's other changes.
    pub prunes: Vec<(Vec<Value>, i64)>,
    prune_index: HashMap<String, usize>,
    /// Child tables: per parent key, the highest position in the batch.
    child_max: HashMap<String, i64>,
}

impl TableBatch {
    fn new(schema: Arc<TableSchema>) -> Self {
        Self {
            schema,
            truncate: false,
            snapshot_start: false,
            snapshot_done: None,
            rows: Vec::new(),
            index: HashMap::default(),
            born: Vec::new(),
            last_touch: Vec::new(),
            touches: 0,
            origins: Vec::new(),
            last_index: None,
            prunes: Vec::new(),
            prune_index: HashMap::default(),
            child_max: HashMap::default(),
        }
    }

    /// Indexes into `rows`, in the order of each row's last change.
    pub fn rows_by_last_touch(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.sort_by_key(|&i| self.last_touch[i]);
        order
    }

    fn put(&mut self, key: String, change: RowChange) {
        self.put_op(key, change, false);
    }

    fn put_op(&mut self, key: String, change: RowChange, is_insert: bool) {
        self.touches += 1;
        match self.index.get(&key) {
            Some(&i) => {
                self.last_touch[i] = self.touches;
                let merged = match (&change, self.born[i]) {
                    (RowChange::Delete(_), true) => RowChange::Vanished,
                    // Re-inserted after vanishing: still new to the target.
                    _ => merge(&self.rows[i], change),
                };
                self.rows[i] = merged;
                self.origins[i] = None;
                self.last_index = Some(i);
            }
            None => {
                self.last_index = Some(self.rows.len());
                self.index.insert(key, self.rows.len());
                self.rows.push(change);
                self.born.push(is_insert);
                self.last_touch.push(self.touches);
                self.origins.push(None);
            }
        }
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.index.clear();
        self.born.clear();
        self.last_touch.clear();
        self.origins.clear();
        self.last_index = None;
        self.prunes.clear();
        self.prune_index.clear();
        self.child_max.clear();
    }

    /// Child tables: notes the highest position of each parent's rows.
    fn note_child(&mut self, row: &Row) {
        let Some(link) = &self.schema.child else {
            return;
        };
        let parent = parent_string(row, &link.parent_key);
        let pos = match row.get(link.position) {
            Some(Datum::Value(Value::Int(p))) => *p,
            _ => return,
        };
        let max = self.child_max.entry(parent).or_insert(pos);
        *max = (*max).max(pos);
    }
}

fn parent_string(row: &Row, parent_key: &[usize]) -> String {
    let values: Vec<Value> = parent_key
        .iter()
        .map(|&i| match row.get(i) {
            Some(Datum::Value(v)) => v.clone(),
            _ => Value::Null,
        })
        .collect();
    key_json(&values)
}

/// Fills `new`'s unchanged-TOAST columns from `old`'s values.
fn fill_toast(new: &mut Row, old: &Row) {
    for (n, o) in new.iter_mut().zip(old) {
        if matches!(n, Datum::UnchangedToast) {
            *n = o.clone();
        }
    }
}

fn has_toast(row: &Row) -> bool {
    row.iter().any(|d| matches!(d, Datum::UnchangedToast))
}

/// Applies `later` on top of `earlier` for the same key.
fn merge(earlier: &RowChange, later: RowChange) -> RowChange {
    match (earlier, later) {
        // The row still has to move first; later values win.
        (RowChange::Rekey { old_key, row: old }, RowChange::Patch(mut new)) => {
            fill_toast(&mut new, old);
            RowChange::Rekey {
                old_key: old_key.clone(),
                row: new,
            }
        }
        // Fill unchanged-TOAST columns from the earlier full image: the
        // target never saw that image, so it cannot keep it for us.
        (RowChange::Upsert(old) | RowChange::Patch(old), RowChange::Patch(mut new)) => {
            fill_toast(&mut new, old);
            if matches!(earlier, RowChange::Upsert(_)) || !has_toast(&new) {
                RowChange::Upsert(new)
            } else {
                RowChange::Patch(new)
            }
        }
        // Patch after delete cannot happen in a consistent stream (an update
        // of a deleted row); keep the patch, the sink reports it.
        (_, later) => later,
    }
}

/// A partition's arrival at a cross-partition barrier (see
/// [`crate::event::Barrier`]).
#[derive(Debug)]
pub struct Arrival {
    pub topic: Arc<str>,
    pub partition: i32,
    pub id: String,
    pub kind: crate::event::BarrierKind,
    pub seq: i64,
    pub partitions: Vec<i32>,
    /// Applied by the arrival that completes the barrier, and only by it.
    /// A sink may take it (leaving an empty batch) to prepare it.
    pub action: Batch,
    /// Every partition arrived in this batch, through one worker, and the
    /// event is folded into the batch itself (`action` is empty): the sink
    /// records the barrier done, and refuses the batch as stale if it was
    /// done already (see [`crate::event::Barrier::copies`]).
    pub local: bool,
}

/// The offsets of one partition a batch consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumedRange {
    /// Offset of the first message in the batch.
    pub first: i64,
    /// Offset after the last message in the batch: where the partition's
    /// next owner starts.
    pub next: i64,
    /// Source position of the last change applied from the partition (the
    /// worker skips re-produced changes at or below it).
    pub position: Option<Position>,
    /// Timestamp of the record at `next - 1` (see
    /// [`crate::checkpoint::PartitionProgress::last_timestamp`]).
    pub last_timestamp: Option<i64>,
}

/// A batch under construction, and then applied as a whole.
#[derive(Debug, Default)]
pub struct Batch {
    /// Tables in first-touched order.
    pub tables: Vec<TableBatch>,
    table_index: HashMap<TableId, usize>,
    /// Highest position of any change in the batch.
    pub last_position: Option<Position>,
    /// The resume token of the batch's last change that carried one.
    pub last_resume_token: Option<Arc<str>>,
    /// When the source wrote what `last_resume_token` points at
    /// (microseconds since the Unix epoch): the change's source commit
    /// time, or, for a resume point reached while idle, when the apply loop
    /// received it. Feeds `ferry_source_resume_token_timestamp_seconds`.
    pub last_resume_token_micros: Option<i64>,
    /// Number of source events folded into the batch.
    pub events: usize,
    /// Kafka bus only: the messages this batch consumed, per partition. The
    /// sink records the progress in the same transaction as the rows.
    pub bus: BTreeMap<(Arc<str>, i32), ConsumedRange>,
    /// The table (index into `tables`) of the last change pushed, whose
    /// row the next consumed offset belongs to.
    last_table: Option<usize>,
    /// Records refused before the sink (the transform stage), parked in
    /// the dead-letter queue in the batch's transaction.
    pub parked: Vec<Parked>,
    /// Mapped source tables whose snapshot finished: (table, rows, state),
    /// recorded in the batch's transaction like `TableBatch::snapshot_done`.
    pub snapshot_marks: Vec<(TableId, u64, serde_json::Value)>,
    /// Mapped source rows changed by the batch (table, key as JSON): their
    /// records parked by the transform stage are superseded.
    pub source_keys: Vec<(TableId, String)>,
    /// Mapped source tables emptied in the batch (a truncate, a snapshot
    /// starting over): their records parked by the transform stage are
    /// superseded.
    pub emptied_sources: Vec<TableId>,
    /// Kafka bus only: partitions that reached a cross-partition barrier
    /// in this batch, in arrival order. The sink records each arrival in
    /// the batch's transaction, after the batch's rows, and applies the
    /// barrier's action there if the arrival completes it.
    pub arrivals: Vec<Arrival>,
    /// The parked record of the last change pushed (its Kafka origin is
    /// attached when the message's offset arrives).
    last_parked: Option<usize>,
    /// Source events per table (index into `tables`) and op, for metrics.
    /// Counted by position rather than by cloning the table's name into a
    /// map for every event: this runs once per change.
    counts: Vec<[u64; Op::ALL.len()]>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events == 0
            && self.tables.is_empty()
            && self.last_resume_token.is_none()
            && self.bus.is_empty()
            && self.parked.is_empty()
            && self.snapshot_marks.is_empty()
            && self.arrivals.is_empty()
    }

    /// Records a partition's arrival at a barrier; `action` is what the
    /// barrier does once complete, folded as a batch of its own (through
    /// the mapping, if any).
    pub fn arrive(&mut self, barrier: &crate::event::Barrier, action: Batch) {
        self.arrivals.push(Arrival {
            topic: Arc::clone(&barrier.topic),
            partition: barrier.partition,
            id: barrier.id.clone(),
            kind: barrier.kind,
            seq: barrier.seq,
            partitions: barrier.partitions.clone(),
            action,
            local: false,
        });
    }

    /// Records a barrier whose every copy this batch consumes, its event
    /// folded into the batch (see [`Arrival::local`]).
    pub fn arrive_local(&mut self, barrier: &crate::event::Barrier) {
        self.arrive(barrier, Batch::default());
        if let Some(a) = self.arrivals.last_mut() {
            a.local = true;
        }
    }

    /// Parks a record refused before the sink; it counts as an event of
    /// the batch (its position and resume token advance with it).
    pub fn park(&mut self, ev: &ChangeEvent, parked: Parked) {
        self.events += 1;
        if ev.position.commit_lsn != 0 {
            self.last_position = Some(ev.position);
        }
        if ev.resume_token.is_some() {
            self.last_resume_token = ev.resume_token.clone();
            self.last_resume_token_micros = Some(ev.commit_ts_micros);
        }
        self.last_table = None;
        self.last_parked = Some(self.parked.len());
        self.parked.push(parked);
    }

    /// Child table `schema`: deletes the rows of `parent_key` at position
    /// `keep_below` and beyond, including those the batch holds.
    pub fn prune(&mut self, schema: &Arc<TableSchema>, parent_key: Vec<Value>, keep_below: i64) {
        let ti = self.table_slot(schema);
        let tb = &mut self.tables[ti];
        let Some(link) = tb.schema.child.clone() else {
            return;
        };
        let mut row: Row = vec![Datum::Value(Value::Null); tb.schema.columns.len()];
        for (v, &i) in parent_key.iter().zip(&link.parent_key) {
            row[i] = Datum::Value(v.clone());
        }
        let parent = parent_string(&row, &link.parent_key);
        if let Some(&max) = tb.child_max.get(&parent) {
            for pos in keep_below..=max {
                row[link.position] = Datum::Value(Value::Int(pos));
                let key = key_string(&tb.schema, &row);
                if tb.index.contains_key(&key) {
                    tb.put(key, RowChange::Delete(key_values(&tb.schema, &row)));
                }
            }
            if keep_below <= max {
                tb.child_max.insert(parent.clone(), keep_below - 1);
            }
        }
        match tb.prune_index.get(&parent) {
            Some(&i) => tb.prunes[i].1 = keep_below,
            None => {
                tb.prune_index.insert(parent, tb.prunes.len());
                tb.prunes.push((parent_key, keep_below));
            }
        }
        tb.last_index = None;
    }

    /// Records a consumed bus message (after its change, if any, was
    /// pushed). Offsets of a partition arrive in increasing order.
    pub fn consumed(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        offset: i64,
        position: Option<Position>,
        timestamp: Option<i64>,
    ) {
        let r = self
            .bus
            .entry((Arc::clone(topic), partition))
            .or_insert(ConsumedRange {
                first: offset,
                next: offset,
                position: None,
                last_timestamp: None,
            });
        r.next = offset + 1;
        r.last_timestamp = timestamp;
        if position.is_some() {
            r.position = position;
        }
        if let Some(pi) = self.last_parked.take() {
            self.parked[pi].record.origin = Some(Origin {
                topic: Arc::clone(topic),
                partition,
                offset,
            });
        }
        if let Some(ti) = self.last_table.take() {
            let tb = &mut self.tables[ti];
            if let Some(ri) = tb.last_index.take() {
                tb.origins[ri] = Some(Origin {
                    topic: Arc::clone(topic),
                    partition,
                    offset,
                });
            }
        }
    }

    /// Makes sure the sink knows `schema`'s table (creates it if asked to)
    /// even when no row of it is in the batch.
    pub fn touch(&mut self, schema: &Arc<TableSchema>) {
        self.table_slot(schema);
    }

    /// Records a resume point reached without a change to mirror.
    pub fn resume_at(&mut self, token: Arc<str>) {
        self.last_resume_token = Some(token);
        self.last_resume_token_micros = Some(crate::clock::now_micros());
    }

    /// Source events folded in, per table and op.
    pub fn counts(&self) -> impl Iterator<Item = (&TableId, Op, u64)> {
        self.tables.iter().zip(&self.counts).flat_map(|(t, c)| {
            Op::ALL
                .iter()
                .filter(|op| c[**op as usize] > 0)
                .map(move |op| (&t.schema.id, *op, c[*op as usize]))
        })
    }

    fn table(&mut self, schema: &Arc<TableSchema>) -> &mut TableBatch {
        let i = self.table_slot(schema);
        &mut self.tables[i]
    }

    fn table_slot(&mut self, schema: &Arc<TableSchema>) -> usize {
        match self.table_index.get(&schema.id) {
            Some(&i) => {
                // A newer schema (column added) replaces the older one; rows
                // already collected keep their own width and are padded by the
                // sink.
                // Usually the very same schema: the pointer check spares a
                // comparison of every column per change.
                if !Arc::ptr_eq(&self.tables[i].schema, schema) && self.tables[i].schema != *schema
                {
                    self.tables[i].schema = Arc::clone(schema);
                }
                i
            }
            None => {
                self.table_index
                    .insert(schema.id.clone(), self.tables.len());
                self.tables.push(TableBatch::new(Arc::clone(schema)));
                self.counts.push([0; Op::ALL.len()]);
                self.tables.len() - 1
            }
        }
    }

    /// Folds one change into the batch.
    pub fn push(&mut self, ev: ChangeEvent) {
        self.events += 1;
        if ev.position.commit_lsn != 0 {
            self.last_position = Some(ev.position);
        }
        if ev.resume_token.is_some() {
            self.last_resume_token = ev.resume_token.clone();
            self.last_resume_token_micros = Some(ev.commit_ts_micros);
        }
        self.last_parked = None;
        let ti = self.table_slot(&ev.table);
        self.counts[ti][ev.op as usize] += 1;
        self.last_table = Some(ti);
        let tb = &mut self.tables[ti];
        tb.last_index = None;
        match ev.op {
            Op::Truncate => {
                tb.clear();
                tb.truncate = true;
            }
            Op::Insert | Op::Read => {
                if let Some(after) = ev.after {
                    let key = key_string(&tb.schema, &after);
                    // An insert proves the row new to the target only when
                    // it cannot be a replay: a change with a source position
                    // (replays of those are skipped before they get here).
                    // A MongoDB change has none and is replayed after a
                    // restart: its insert may meet a row the target already
                    // has, and an insert + delete in one batch must then
                    // still delete. (Found by tests/mongo.rs on the Kafka
                    // bus: a replayed insert and its delete cancelled out
                    // and the row stayed.)
                    let proven_new = ev.op == Op::Insert && ev.position.commit_lsn != 0;
                    tb.note_child(&after);
                    tb.put_op(key, RowChange::Upsert(after), proven_new);
                }
            }
            Op::Update => {
                let Some(after) = ev.after else { return };
                let new_key = key_string(&tb.schema, &after);
                if let Some(before) = &ev.before {
                    let old_key = key_string(&tb.schema, before);
                    if old_key != new_key {
                        let key_vals = key_values(&tb.schema, before);
                        if has_toast(&after) {
                            // The runtime starts a new batch for this
                            // change (see `needs_own_batch`), so the rekey
                            // is the first thing the sink applies. The
                            // delete of the old key is then a no-op, or
                            // removes the moved row's old key if a later
                            // change replaces the rekey.
                            tb.put(old_key, RowChange::Delete(key_vals.clone()));
                            tb.put(
                                new_key,
                                RowChange::Rekey {
                                    old_key: key_vals,
                                    row: after,
                                },
                            );
                            return;
                        }
                        tb.put(old_key, RowChange::Delete(key_vals));
                    }
                }
                tb.note_child(&after);
                if has_toast(&after) {
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

    /// Whether `ev` must start a new batch: a key-changing update that left
    /// large values untouched moves the row in the target, and that move
    /// must come before anything else the batch does to the table; and a
    /// change in a table's shape must not mix rows of both layouts.
    pub fn needs_own_batch(&self, ev: &ChangeEvent) -> bool {
        if self.is_empty() {
            return false;
        }
        // The table's shape changed (a column added, dropped or retyped):
        // rows already folded in have the old layout, and columns are
        // matched by position, so they must be written first.
        if self.table_index.get(&ev.table.id).is_some_and(|&i| {
            !Arc::ptr_eq(&self.tables[i].schema, &ev.table) && self.tables[i].schema != ev.table
        }) {
            return true;
        }
        if ev.op != Op::Update {
            return false;
        }
        let (Some(before), Some(after)) = (&ev.before, &ev.after) else {
            return false;
        };
        has_toast(after) && key_string(&ev.table, before) != key_string(&ev.table, after)
    }

    pub fn snapshot_start(&mut self, schema: &Arc<TableSchema>) {
        let tb = self.table(schema);
        tb.clear();
        tb.snapshot_start = true;
    }

    pub fn snapshot_done(
        &mut self,
        schema: &Arc<TableSchema>,
        rows: u64,
        state: serde_json::Value,
    ) {
        // By name: the batch may hold a newer shape of the table than the
        // one its snapshot started with, and must keep it.
        let i = match self.table_index.get(&schema.id) {
            Some(&i) => i,
            None => self.table_slot(schema),
        };
        self.tables[i].snapshot_done = Some((rows, state));
    }
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

/// The change a batch's row change stands for: the event that, applied
/// alone, has the same effect.
pub fn event_for(schema: &Arc<TableSchema>, change: &RowChange) -> Option<ChangeEvent> {
    let key_row = |key: &[Value]| -> Vec<Datum> {
        let mut row = vec![Datum::Value(Value::Null); schema.columns.len()];
        for (v, &i) in key.iter().zip(&schema.primary_key) {
            row[i] = Datum::Value(v.clone());
        }
        row
    };
    let (op, before, after) = match change {
        RowChange::Upsert(row) => (Op::Insert, None, Some(row.clone())),
        RowChange::Patch(row) => (Op::Update, None, Some(row.clone())),
        RowChange::Delete(key) => (Op::Delete, Some(key_row(key)), None),
        RowChange::Rekey { old_key, row } => {
            (Op::Update, Some(key_row(old_key)), Some(row.clone()))
        }
        RowChange::Vanished => return None,
    };
    let mut ev = ChangeEvent::snapshot_read(Arc::clone(schema), Vec::new());
    ev.op = op;
    ev.before = before;
    ev.after = after;
    Some(ev)
}

/// The key of `change` as JSON text.
pub fn key_text(schema: &TableSchema, change: &RowChange) -> Option<String> {
    let values: Vec<Value> = match change {
        RowChange::Upsert(row) | RowChange::Patch(row) | RowChange::Rekey { row, .. } => {
            key_values(schema, row)
        }
        RowChange::Delete(key) => key.clone(),
        RowChange::Vanished => return None,
    };
    Some(key_json(&values))
}

/// Key values as JSON text: exact (numbers and decimals as their digits),
/// one spelling per key.
pub fn key_json(values: &[Value]) -> String {
    let parts: Vec<serde_json::Value> = values
        .iter()
        .map(|v| serde_json::Value::String(value_text(v)))
        .collect();
    serde_json::Value::Array(parts).to_string()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Numeric(n) => n.to_string(),
        Value::Text(s) | Value::Json(s) => s.clone(),
        Value::Uuid(u) => u.to_string(),
        Value::Temporal(_, s) => s.clone(),
        Value::ObjectId(id) => crate::value::object_id_hex(id),
        other => format!("{other:?}"),
    }
}

/// A map key for a row's primary key, unambiguous across values: each
/// value is tagged by its kind and, for text, length-prefixed. Integer and
/// text keys (the common ones) avoid the Debug formatter, as this runs for
/// every change.
fn key_string(schema: &TableSchema, row: &Row) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for &i in &schema.primary_key {
        match row.get(i) {
            Some(Datum::Value(Value::Int(n))) => {
                let _ = write!(s, "i{n};");
            }
            Some(Datum::Value(Value::Text(t))) => {
                let _ = write!(s, "t{}:", t.len());
                s.push_str(t);
            }
            // MongoDB's usual `_id`; fixed width, so no length prefix.
            Some(Datum::Value(Value::ObjectId(id))) => {
                s.push('o');
                s.push_str(&crate::value::object_id_hex(id));
                s.push(';');
            }
            Some(Datum::Value(v)) => {
                let _ = write!(s, "{v:?};");
            }
            _ => s.push_str("?;"),
        }
    }
    s
}

// Inverse id maps (a reverse pipeline): the new ids a batch writes through
// them, which a sink translates back to legacy ids before writing.

/// The new ids a batch writes through one inverse namespace.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub legacy: LegacyId,
    pub sequence: Option<String>,
    /// New ids written by upserts: given a legacy id when they have none.
    pub allocate: BTreeSet<String>,
    /// New ids only looked up (deletes, old keys): a row never written
    /// back has nothing to delete.
    pub lookup: BTreeSet<String>,
}

/// Whether a table has inverse id columns.
pub fn has_inverse(schema: &TableSchema) -> bool {
    schema
        .columns
        .iter()
        .any(|c| c.id_map.as_ref().is_some_and(|r| r.kind.is_inverse()))
}

/// The new ids of every inverse column of `batches`, per namespace.
pub fn wanted<'a>(batches: impl IntoIterator<Item = &'a Batch>) -> BTreeMap<String, Wanted> {
    let mut out: BTreeMap<String, Wanted> = BTreeMap::new();
    for batch in batches {
        for tb in batch.tables.iter().filter(|tb| has_inverse(&tb.schema)) {
            let schema = &tb.schema;
            for (i, c) in schema.columns.iter().enumerate() {
                let Some(r) = c.id_map.as_ref() else { continue };
                let IdKind::Inverse { legacy } = r.kind else {
                    continue;
                };
                let w = out.entry(r.namespace.clone()).or_insert_with(|| Wanted {
                    legacy,
                    sequence: r.sequence.clone(),
                    ..Wanted::default()
                });
                if w.sequence.is_none() {
                    w.sequence = r.sequence.clone();
                }
                let key_pos = schema.primary_key.iter().position(|&k| k == i);
                for change in &tb.rows {
                    let (row, old_key) = match change {
                        RowChange::Upsert(r) | RowChange::Patch(r) => (Some(r), None),
                        RowChange::Rekey { old_key, row } => (Some(row), Some(old_key)),
                        RowChange::Delete(k) => (None, Some(k)),
                        RowChange::Vanished => (None, None),
                    };
                    if let Some(Datum::Value(Value::Text(id))) = row.and_then(|r| r.get(i)) {
                        w.allocate.insert(id.clone());
                    }
                    if let (Some(k), Some(p)) = (old_key, key_pos) {
                        if let Some(Value::Text(id)) = k.get(p) {
                            w.lookup.insert(id.clone());
                        }
                    }
                }
            }
        }
    }
    for w in out.values_mut() {
        let allocate = w.allocate.clone();
        w.lookup.retain(|id| !allocate.contains(id));
    }
    out
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
            id_map: None,
        };
        Arc::new(TableSchema {
            id: TableId::new("public", "t"),
            columns: vec![col("id", true), col("a", false), col("big", false)],
            primary_key: vec![0],
            child: None,
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
            resume_token: None,
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
    fn key_change_with_untouched_toast_becomes_a_rekey() {
        let mut b = Batch::default();
        let null = || Datum::Value(Value::Null);
        b.push(ev(
            Op::Update,
            Some(vec![v("1"), null(), null()]),
            Some(vec![v("2"), v("a"), Datum::UnchangedToast]),
            1,
        ));
        let t = &b.tables[0];
        assert!(matches!(&t.rows[0], RowChange::Delete(_)));
        assert!(
            matches!(&t.rows[1], RowChange::Rekey { old_key, .. } if old_key == &vec![Value::Text("1".into())])
        );
        // A later patch of the new key stays a rekey from the original key.
        b.push(ev(
            Op::Update,
            None,
            Some(vec![v("2"), v("b"), Datum::UnchangedToast]),
            2,
        ));
        let t = &b.tables[0];
        assert!(matches!(&t.rows[1], RowChange::Rekey { row, .. } if row[1] == v("b")));
        assert!(!b.needs_own_batch(&ev(Op::Insert, None, Some(vec![v("3"), v("a"), v("b")]), 3)));
        assert!(b.needs_own_batch(&ev(
            Op::Update,
            Some(vec![v("2"), null(), null()]),
            Some(vec![v("3"), v("a"), Datum::UnchangedToast]),
            3
        )));
    }

    #[test]
    fn rows_come_in_the_order_of_their_last_change() {
        let mut b = Batch::default();
        b.push(ev(Op::Insert, None, Some(vec![v("b"), v("1"), v("z")]), 1));
        b.push(ev(Op::Insert, None, Some(vec![v("a"), v("1"), v("x")]), 2));
        b.push(ev(Op::Update, None, Some(vec![v("a"), v("1"), v("y")]), 3));
        b.push(ev(Op::Update, None, Some(vec![v("b"), v("1"), v("x")]), 4));
        let t = &b.tables[0];
        let order: Vec<usize> = t.rows_by_last_touch();
        // b was seen first, but its last change (taking x) comes after a's
        // (giving x up).
        assert_eq!(order, vec![1, 0]);
    }

    #[test]
    fn insert_then_delete_in_one_batch_vanishes() {
        let null = || Datum::Value(Value::Null);
        let mut b = Batch::default();
        b.push(ev(Op::Insert, None, Some(vec![v("1"), v("x"), v("y")]), 1));
        b.push(ev(Op::Update, None, Some(vec![v("1"), v("z"), v("y")]), 2));
        b.push(ev(Op::Delete, Some(vec![v("1"), null(), null()]), None, 3));
        assert!(matches!(b.tables[0].rows[0], RowChange::Vanished));
        // Inserted again: an upsert, still new to the target.
        b.push(ev(Op::Insert, None, Some(vec![v("1"), v("w"), v("y")]), 4));
        assert!(matches!(b.tables[0].rows[0], RowChange::Upsert(_)));
        // A row that existed before the batch is really deleted.
        b.push(ev(Op::Update, None, Some(vec![v("2"), v("z"), v("y")]), 5));
        b.push(ev(Op::Delete, Some(vec![v("2"), null(), null()]), None, 6));
        assert!(matches!(b.tables[0].rows[1], RowChange::Delete(_)));
    }

    #[test]
    fn replayable_insert_then_delete_still_deletes() {
        // A change without a source position (MongoDB) may be a replay of
        // an insert the target already applied: the delete must stand.
        let null = || Datum::Value(Value::Null);
        let unpositioned = |mut e: ChangeEvent| {
            e.position = Position::default();
            e
        };
        let mut b = Batch::default();
        b.push(unpositioned(ev(
            Op::Insert,
            None,
            Some(vec![v("1"), v("x"), v("y")]),
            1,
        )));
        b.push(unpositioned(ev(
            Op::Delete,
            Some(vec![v("1"), null(), null()]),
            None,
            2,
        )));
        assert!(matches!(b.tables[0].rows[0], RowChange::Delete(_)));
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

    #[test]
    fn object_id_keys_are_distinct_from_each_other_and_from_text() {
        let s = schema();
        let key = |v: Value| key_string(&s, &vec![Datum::Value(v)]);
        let a = [0x65, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut b = a;
        b[11] = 2;
        assert_eq!(key(Value::ObjectId(a)), "o650000000000000000000001;");
        assert_eq!(key(Value::ObjectId(a)), key(Value::ObjectId(a)));
        assert_ne!(key(Value::ObjectId(a)), key(Value::ObjectId(b)));
        assert_ne!(
            key(Value::ObjectId(a)),
            key(Value::Text("650000000000000000000001".into()))
        );
    }

    /// A child table of a mapping: (parent_id, position) key, one value.
    fn child_schema() -> Arc<TableSchema> {
        let col = |n: &str, ty: &str, key: bool| Column {
            name: n.into(),
            type_oid: 0,
            type_sql: ty.into(),
            nullable: !key,
            is_key: key,
            enum_labels: None,
            id_map: None,
        };
        Arc::new(TableSchema {
            id: TableId::new("public", "items"),
            columns: vec![
                col("parent_id", "text", true),
                col("position", "integer", true),
                col("sku", "text", false),
            ],
            primary_key: vec![0, 1],
            child: Some(crate::event::ChildLink {
                parent_key: vec![0],
                position: 1,
            }),
        })
    }

    /// A child row change as the transform stage emits it; `lsn` 0 is an
    /// unpositioned change (snapshot read, MongoDB).
    fn child(op: Op, parent: &str, pos: i64, sku: &str, lsn: u64) -> ChangeEvent {
        ChangeEvent {
            table: child_schema(),
            op,
            before: None,
            after: Some(vec![v(parent), Datum::Value(Value::Int(pos)), v(sku)]),
            position: Position {
                commit_lsn: lsn,
                ordinal: pos as u64 + 1,
            },
            xid: None,
            commit_ts_micros: 0,
            resume_token: None,
        }
    }

    fn parent_key(p: &str) -> Vec<Value> {
        vec![Value::Text(p.into())]
    }

    /// (parent, position) → what the batch does to that child row.
    fn child_rows(b: &Batch) -> Vec<(String, i64, &'static str)> {
        let tb = &b.tables[0];
        tb.rows
            .iter()
            .map(|r| {
                let (kind, p, pos) = match r {
                    RowChange::Upsert(row) => ("upsert", row[0].clone(), row[1].clone()),
                    RowChange::Delete(k) => (
                        "delete",
                        Datum::Value(k[0].clone()),
                        Datum::Value(k[1].clone()),
                    ),
                    RowChange::Vanished => (
                        "vanished",
                        Datum::Value(Value::Null),
                        Datum::Value(Value::Null),
                    ),
                    other => panic!("unexpected {other:?}"),
                };
                let p = match p {
                    Datum::Value(Value::Text(t)) => t,
                    _ => String::new(),
                };
                let pos = match pos {
                    Datum::Value(Value::Int(i)) => i,
                    _ => -1,
                };
                (p, pos, kind)
            })
            .collect()
    }

    #[test]
    fn prune_deletes_child_rows_past_the_end() {
        let s = child_schema();
        let mut b = Batch::default();
        for pos in 0..3 {
            b.push(child(Op::Read, "p1", pos, "a", 0));
        }
        // Another parent's children are not touched.
        for pos in 0..3 {
            b.push(child(Op::Update, "p2", pos, "b", 10));
        }
        b.prune(&s, parent_key("p1"), 1);
        let rows = child_rows(&b);
        assert_eq!(
            rows,
            vec![
                ("p1".into(), 0, "upsert"),
                ("p1".into(), 1, "delete"),
                ("p1".into(), 2, "delete"),
                ("p2".into(), 0, "upsert"),
                ("p2".into(), 1, "upsert"),
                ("p2".into(), 2, "upsert"),
            ]
        );
        match &b.tables[0].rows[1] {
            RowChange::Delete(k) => assert_eq!(k, &vec![Value::Text("p1".into()), Value::Int(1)]),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.tables[0].prunes, vec![(parent_key("p1"), 1)]);
        // A later prune of the same parent replaces the recorded one; a
        // prune of a parent with no rows in the batch is recorded too.
        b.prune(&s, parent_key("p1"), 0);
        b.prune(&s, parent_key("p3"), 0);
        assert_eq!(child_rows(&b)[0], ("p1".into(), 0, "delete"));
        assert_eq!(
            b.tables[0].prunes,
            vec![(parent_key("p1"), 0), (parent_key("p3"), 0)]
        );
        // Pruning does not count as a source event.
        assert_eq!(b.events, 6);
    }

    #[test]
    fn prune_of_rows_proven_new_in_the_batch_vanishes_them() {
        // Children of a positioned insert did not exist before the batch.
        let s = child_schema();
        let mut b = Batch::default();
        for pos in 0..3 {
            b.push(child(Op::Insert, "p1", pos, "a", 10));
        }
        b.prune(&s, parent_key("p1"), 1);
        let kinds: Vec<&str> = child_rows(&b).iter().map(|r| r.2).collect();
        assert_eq!(kinds, vec!["upsert", "vanished", "vanished"]);
        assert_eq!(b.tables[0].prunes, vec![(parent_key("p1"), 1)]);
    }

    #[test]
    fn prune_then_regrow_keeps_the_upserts_and_the_last_prune() {
        let s = child_schema();
        let mut b = Batch::default();
        // Three items, then an update down to one item...
        for pos in 0..3 {
            b.push(child(Op::Update, "p1", pos, "a", 10));
        }
        b.prune(&s, parent_key("p1"), 3);
        b.push(child(Op::Update, "p1", 0, "b", 11));
        b.prune(&s, parent_key("p1"), 1);
        // ...then up to four items.
        for pos in 0..4 {
            b.push(child(Op::Update, "p1", pos, "c", 12));
        }
        let rows = child_rows(&b);
        assert_eq!(
            rows,
            vec![
                ("p1".into(), 0, "upsert"),
                ("p1".into(), 1, "upsert"),
                ("p1".into(), 2, "upsert"),
                ("p1".into(), 3, "upsert"),
            ]
        );
        for r in &b.tables[0].rows {
            let RowChange::Upsert(row) = r else { panic!() };
            assert_eq!(row[2], v("c"));
        }
        // Sinks apply prunes before the rows: the earlier prune still holds
        // until the transform stage sends the new array's length.
        assert_eq!(b.tables[0].prunes, vec![(parent_key("p1"), 1)]);
        b.prune(&s, parent_key("p1"), 4);
        assert_eq!(b.tables[0].prunes, vec![(parent_key("p1"), 4)]);
        let kinds: Vec<&str> = child_rows(&b).iter().map(|r| r.2).collect();
        assert_eq!(kinds, vec!["upsert"; 4]);
        // Shrinking again deletes what the batch holds past the new end.
        b.prune(&s, parent_key("p1"), 2);
        let kinds: Vec<&str> = child_rows(&b).iter().map(|r| r.2).collect();
        assert_eq!(kinds, vec!["upsert", "upsert", "delete", "delete"]);
    }

    #[test]
    fn prune_of_a_table_that_is_not_a_child_does_nothing() {
        let mut b = Batch::default();
        b.push(ev(Op::Insert, None, Some(vec![v("1"), v("x"), v("y")]), 1));
        b.prune(&schema(), vec![Value::Text("1".into())], 0);
        assert!(b.tables[0].prunes.is_empty());
        assert!(matches!(b.tables[0].rows[0], RowChange::Upsert(_)));
    }
}
