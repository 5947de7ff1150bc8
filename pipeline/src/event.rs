//! Change events: what a source emits and a sink applies.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::value::Value;

/// A table's identity at the source: schema and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableId {
    pub schema: String,
    pub name: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `schema.table` or `table` (schema `public`). A part may be
    /// double-quoted as in SQL (`"Sales Ops"."Order Items"`: a dot inside
    /// quotes is part of the name, `""` is a quote). Unquoted parts are
    /// taken as written — PostgreSQL would fold them to lower case, but
    /// MongoDB collection names (which share this syntax) are case
    /// sensitive; for PostgreSQL the everyday lower-case names read the
    /// same either way.
    pub fn parse(s: &str) -> Option<Self> {
        let (schema, name) = Self::parse_parts(s)?;
        Some(Self::new(schema.as_deref().unwrap_or("public"), name))
    }

    /// `schema.table` or a bare `table` (schema `None`), SQL-quoted parts
    /// allowed; `None` when it is neither.
    pub fn parse_parts(s: &str) -> Option<(Option<String>, String)> {
        let mut parts = split_qualified(s)?;
        match parts.len() {
            1 => Some((None, parts.pop()?)),
            2 => {
                let name = parts.pop()?;
                Some((parts.pop(), name))
            }
            _ => None,
        }
    }

    /// `"schema"."name"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// `a.b` split at dots outside double quotes, quotes removed (`""` inside
/// quotes is one `"`); `None` for an empty part or an unclosed quote.
fn split_qualified(s: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut quoted_part = false;
    let mut chars = s.chars().peekable();
    loop {
        match chars.next() {
            Some('"') if part.is_empty() && !quoted_part => {
                quoted_part = true;
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        '"' => break,
                        c => part.push(c),
                    }
                }
                // A quoted part ends at a dot or the end.
                if !matches!(chars.peek(), None | Some('.')) {
                    return None;
                }
            }
            end @ (Some('.') | None) => {
                if part.is_empty() {
                    return None;
                }
                parts.push(std::mem::take(&mut part));
                quoted_part = false;
                if end.is_none() {
                    return Some(parts);
                }
            }
            // A quote inside an unquoted part is not an identifier.
            Some('"') => return None,
            Some(c) => part.push(c),
        }
    }
}

/// Quotes an SQL identifier (`"a""b"`).
/// A SQL string literal: `'it''s'`. For statements that take no
/// parameters (`COPY … TO STDOUT`, DDL).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// One column of a source table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The source's type OID (PostgreSQL) or 0 where the source has none.
    pub type_oid: u32,
    /// The type as SQL, with its modifier (`numeric(30,10)`, `"mood"`,
    /// `text[]`): what a PostgreSQL sink creates and casts to.
    pub type_sql: String,
    pub nullable: bool,
    /// Part of the key that identifies a row (primary key, or every column
    /// under REPLICA IDENTITY FULL).
    pub is_key: bool,
    /// Labels when the type is an enum, so that a sink can create it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enum_labels: Option<Vec<String>>,
    /// Mapped tables: the column holds legacy ids of this id-map namespace,
    /// which the sink writes as their new ids (see [`crate::id_map`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_map: Option<crate::id_map::IdRef>,
}

/// A source table's shape as of the events that reference it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    pub id: TableId,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order. Empty only
    /// when the source refused to stream the table.
    pub primary_key: Vec<usize>,
    /// Child tables of a mapping: which columns hold the parent's key and
    /// the element's position (the sink deletes rows past an array's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<ChildLink>,
}

/// How a child table's rows hang off their parent row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildLink {
    /// Indexes into `columns` of the parent's key, in the parent's key order.
    pub parent_key: Vec<usize>,
    /// Index into `columns` of the element's position.
    pub position: usize,
}

impl TableSchema {
    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.primary_key.iter().map(|&i| &self.columns[i])
    }
}

/// A column's value in a change, or "unchanged" for an out-of-line (TOAST)
/// value an update did not touch: the sink keeps what the target holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Value(Value),
    UnchangedToast,
}

/// A row, one datum per column of the event's [`TableSchema`].
pub type Row = Vec<Datum>;

/// Where an event sits in the source's history, totally ordered.
///
/// For PostgreSQL: the commit LSN of the event's transaction, then the
/// event's ordinal inside it (1-based; 0 marks a snapshot row, which sorts
/// before the first change of the transaction at the same LSN).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Position {
    pub commit_lsn: u64,
    pub ordinal: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No intermediate String: this runs for every change produced to
        // Kafka (the position header).
        write!(f, "{}#{}", LsnText(self.commit_lsn), self.ordinal)
    }
}

/// Displays a PostgreSQL LSN in `X/Y` notation.
pub struct LsnText(pub u64);

impl fmt::Display for LsnText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// `X/Y` notation of a PostgreSQL LSN.
pub fn format_lsn(lsn: u64) -> String {
    LsnText(lsn).to_string()
}

/// Parses `X/Y` notation.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A row read by the initial snapshot.
    Read,
}

impl Op {
    /// Every op, in declaration order (`op as usize` indexes it).
    pub const ALL: [Op; 5] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Read => "read",
        }
    }
}

/// One change to one row (or, for `Truncate`, to a whole table).
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub table: Arc<TableSchema>,
    pub op: Op,
    /// The row before the change, where the source sends it (deletes and
    /// key-changing updates always carry at least the key columns, the rest
    /// `Null`; REPLICA IDENTITY FULL sends the whole row).
    pub before: Option<Row>,
    /// The row after the change (insert, update, read).
    pub after: Option<Row>,
    pub position: Position,
    /// The source transaction (PostgreSQL xid), when there is one.
    pub xid: Option<u32>,
    /// Commit time at the source, microseconds since the Unix epoch.
    pub commit_ts_micros: i64,
    /// Where the source resumes right after this change, for sources that
    /// resume from an opaque token rather than by acknowledging a position
    /// upstream (MongoDB's change-stream resume token). The sink stores the
    /// last one with the data it covers.
    pub resume_token: Option<Arc<str>>,
}

impl ChangeEvent {
    /// A row read by an initial snapshot: no source position (snapshot rows
    /// sort before the stream and are never skipped as replays), no
    /// transaction, read now.
    pub fn snapshot_read(table: Arc<TableSchema>, row: Row) -> Self {
        Self {
            table,
            op: Op::Read,
            before: None,
            after: Some(row),
            position: Position::default(),
            xid: None,
            commit_ts_micros: crate::clock::now_micros(),
            resume_token: None,
        }
    }
}

/// An upstream position the source may confirm once everything sent before
/// it is durable downstream (PostgreSQL: the commit's end LSN, written to the
/// slot's `confirmed_flush_lsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct SourceAck(pub u64);

/// Where a row's change came from on the Kafka bus: the message's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// A partition's *next* offset on the Kafka bus: the first message not yet
/// applied, which is what a consumer group commits (one past the last
/// [`Origin`] of the partition a batch applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffset {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// What travels on the bus, in source order.
#[derive(Debug, Clone)]
pub enum BusMessage {
    Change(ChangeEvent),
    /// End of a source transaction. Sinks may commit mid-transaction when a
    /// transaction is larger than a batch; the ack is only released here.
    Commit {
        position: Position,
        ack: SourceAck,
        commit_ts_micros: i64,
    },
    /// The snapshot of a table starts: the sink (re)creates the target table
    /// if asked to and empties it, in the same transaction as the first rows.
    SnapshotStart {
        table: Arc<TableSchema>,
    },
    /// The snapshot of a table is complete. `state` is the source's opaque
    /// record of which snapshot it was (PostgreSQL: the visibility horizon
    /// used to skip transactions already in the copy); the sink stores it in
    /// the same transaction as the last rows, and the source reads it back
    /// through [`crate::checkpoint::CheckpointStore`].
    SnapshotDone {
        table: TableId,
        rows: u64,
        state: serde_json::Value,
    },
    /// Nothing pending upstream: once everything before is durable the
    /// source may confirm `ack` (keeps an idle slot from pinning WAL).
    Idle {
        ack: SourceAck,
    },
    /// A token-resumed source moved past changes it does not mirror: the
    /// sink stores `resume_token` (after everything before it) so that a
    /// restart does not start from an old point that may have left the
    /// source's log.
    Resume {
        resume_token: Arc<str>,
    },
    /// Kafka bus, worker side: the message at `offset` of a partition was
    /// consumed (its change, if any, came just before). The sink records
    /// the partition's progress with the batch.
    Consumed {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        /// The change's source position, when it had one.
        position: Option<Position>,
        /// The Kafka record's timestamp (ms), when it has one: with the
        /// offset, what tells this record from another log's record at
        /// the same offset.
        timestamp: Option<i64>,
    },
    /// Kafka bus, worker side: a table's snapshot started on a multi-
    /// partition topic. The sink makes sure the table exists but does not
    /// empty it (other partitions' rows may already be applied).
    EnsureTable {
        table: Arc<TableSchema>,
    },
    /// Kafka bus, worker side: a partition reached its copy of a
    /// cross-partition barrier (see [`Barrier`]). Its offset is *not*
    /// consumed: the worker applies nothing more from the partition until
    /// the barrier is done, then reads the copy again and passes it.
    Barrier(Box<Barrier>),
}

/// What a cross-partition barrier does once every partition it covers has
/// reached it (Kafka bus with several partitions per topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierKind {
    /// A key-changing update whose old and new keys live on different
    /// partitions: delete the old key, write the new one.
    KeyChange,
    /// A TRUNCATE: empty the table.
    Truncate,
    /// A snapshot starts: create the table if configured, then empty it.
    SnapshotStart,
}

impl BarrierKind {
    /// The one-letter tag that starts a barrier id (`k:`, `t:`, `s:`).
    pub fn tag(self) -> char {
        match self {
            BarrierKind::KeyChange => 'k',
            BarrierKind::Truncate => 't',
            BarrierKind::SnapshotStart => 's',
        }
    }

    /// The kind a barrier id names.
    pub fn of_id(id: &str) -> Option<Self> {
        match id.split_once(':')?.0 {
            "k" => Some(BarrierKind::KeyChange),
            "t" => Some(BarrierKind::Truncate),
            "s" => Some(BarrierKind::SnapshotStart),
            _ => None,
        }
    }
}

/// One partition's arrival at a barrier: one source event copied to a set
/// of partitions of its table's topic, every copy with the same `id`.
#[derive(Debug, Clone)]
pub struct Barrier {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The copy's offset (not consumed by the arrival).
    pub offset: i64,
    /// `k:<position>`, `t:<position>` (the same after a source restart
    /// re-produces the event) or `s:<micros>` (a new id per attempt).
    pub id: String,
    pub kind: BarrierKind,
    /// Orders snapshot attempts of one table (their start time, µs); 0 for
    /// the others.
    pub seq: i64,
    /// The partitions that must all arrive.
    pub partitions: Vec<i32>,
    /// The source event the barrier applies once complete.
    pub event: ChangeEvent,
    /// Empty, or every copy of the barrier when one worker read them all
    /// (it owns every partition and held each at its copy, nothing past it
    /// sent on): the event is then folded into the batch in the source's
    /// order like any change, as on one partition, and these copies are
    /// consumed with it, in the same batch (no hand-off, no hold, no
    /// second read).
    pub copies: Vec<BarrierCopy>,
}

/// One copy of a barrier, read by the worker that completes it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarrierCopy {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (ms), as [`BusMessage::Consumed`] carries.
    pub timestamp: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::TableId;

    #[test]
    fn table_names_read_as_sql_reads_quoted_parts() {
        assert_eq!(
            TableId::parse("orders"),
            Some(TableId::new("public", "orders"))
        );
        assert_eq!(
            TableId::parse("app.orders"),
            Some(TableId::new("app", "orders"))
        );
        assert_eq!(
            TableId::parse(r#""Sales Ops"."Order Items""#),
            Some(TableId::new("Sales Ops", "Order Items"))
        );
        assert_eq!(
            TableId::parse(r#"app."a.b""#),
            Some(TableId::new("app", "a.b"))
        );
        assert_eq!(
            TableId::parse(r#""say ""hi""""#),
            Some(TableId::new("public", r#"say "hi""#))
        );
        // Unquoted parts as written (MongoDB collections are case sensitive).
        assert_eq!(
            TableId::parse("shop.purchaseRequests"),
            Some(TableId::new("shop", "purchaseRequests"))
        );
        for bad in [
            "", ".", "a.", ".b", "a.b.c", r#""open"#, r#""a"b"#, r#"a"b""#, r#""""#,
        ] {
            assert_eq!(TableId::parse(bad), None, "{bad:?}");
        }
    }
}
