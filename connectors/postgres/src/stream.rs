//! Streaming from the slot: pgoutput messages become change events in commit
//! order; acknowledgements from the runtime become the slot's confirmed
//! position; keepalives of an idle stream advance it too, so the slot never
//! pins WAL.
//!
//! Replication runs on `pgwire-replication` (a maintained pgwire client for
//! `START_REPLICATION … LOGICAL` that answers keepalives itself, keeps
//! sending status updates while the consumer is slow, and reports the
//! acknowledged LSN we hand it); decoding pgoutput into rows is ours
//! ([`crate::pgoutput`]), as that crate deliberately stops at the transport.
//! tokio-postgres 0.7 has no replication mode.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_pipeline::channel::BusSender;
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use ferry_pipeline::event::{
    BusMessage, ChangeEvent, Datum, Op, Position, Row, SourceAck, TableId, TableSchema,
};
use ferry_pipeline::metrics::metrics;
use ferry_pipeline::value::Value;
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent,
};
use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::catalog::{self, SourceTable};
use crate::pgoutput::{self, LogicalMessage, TupleColumn};
use crate::snapshot::Horizon;
use crate::text::{decode_value, PgType};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Session options pinned on the replication connection so that every
/// value's text is exact and stable.
pub const REPLICATION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres \
     -c extra_float_digits=1 -c bytea_output=hex";

/// Classifies a replication-protocol error.
pub fn wire_err(context: &str, e: PgWireError) -> PipelineError {
    let text = e.to_string();
    let (class, code) = match &e {
        PgWireError::Auth(_) => (ErrorClass::Fatal, None),
        PgWireError::Server(s) => {
            let code = s
                .rsplit_once("(SQLSTATE ")
                .and_then(|(_, c)| c.strip_suffix(')'))
                .map(str::to_string);
            let class = code.as_deref().map_or(
                ErrorClass::Transient,
                ferry_pipeline::error::classify_sqlstate,
            );
            (class, code)
        }
        PgWireError::MessageTooLarge { .. } => (ErrorClass::Fatal, None),
        // A certificate, a CA or a server without TLS: waiting fixes none.
        PgWireError::Tls(_) => (ErrorClass::Fatal, None),
        _ => (ErrorClass::Transient, None),
    };
    let mut err = PipelineError::new(class, Stage::Source, format!("{context}: {text}"));
    err.code = code;
    err
}

/// A relation as the stream announced it, with how to decode its columns.
struct StreamRelation {
    schema: Arc<TableSchema>,
    types: Vec<PgType>,
}

/// The transaction being received.
struct OpenTx {
    commit_lsn: u64,
    xid: u32,
    commit_ts_micros: i64,
    ordinal: u64,
    /// The transaction came from a replication origin the source skips
    /// (a Ferry sink's write): its changes are left out, its commit still
    /// advances the position.
    skipped: bool,
}

/// Everything one streaming session needs.
pub struct StreamSession<'a> {
    pub repl: ReplicationConfig,
    /// A normal connection to the source, for catalog lookups.
    pub catalog: &'a Client,
    pub tables: &'a HashMap<TableId, SourceTable>,
    /// Per table, the transactions its snapshot already holds.
    pub horizons: &'a HashMap<TableId, Horizon>,
    pub bus: &'a BusSender,
    pub acks: &'a mut watch::Receiver<SourceAck>,
    pub shutdown: &'a mut watch::Receiver<bool>,
    /// Replication origins whose transactions are skipped (`[source]
    /// skip_origins`).
    pub skip_origins: &'a [String],
}

/// Opens a replication session exactly as the stream does (same server,
/// credentials and TLS), authenticates, runs IDENTIFY_SYSTEM and closes it.
/// `ferry check` runs it, and the source runs it before it creates a slot,
/// so a replication connection that cannot open (MD5 not offered, a
/// `hostssl` rule, a `replication` line missing in pg_hba.conf) is found
/// before anything is left behind on the server.
pub async fn probe(repl: ReplicationConfig) -> Result<(), PipelineError> {
    let context = format!(
        "open a replication connection to {}:{}",
        repl.host, repl.port
    );
    let mut client = ReplicationClient::connect_gated(repl)
        .await
        .map_err(|e| wire_err(&context, e))?;
    let identified = client.identify_system().await;
    client.stop();
    identified.map(|_| ()).map_err(|e| wire_err(&context, e))
}

impl StreamSession<'_> {
    /// Streams until shutdown (`Ok`) or an error.
    pub async fn run(self) -> Result<(), PipelineError> {
        let StreamSession {
            repl,
            catalog,
            tables,
            horizons,
            bus,
            acks,
            shutdown,
            skip_origins,
        } = self;
        let context = format!("connect for replication to {}:{}", repl.host, repl.port);
        let mut client = ReplicationClient::connect(repl)
            .await
            .map_err(|e| wire_err(&context, e))?;
        client
            .wait_started()
            .await
            .map_err(|e| wire_err("start replication", e))?;
        info!("streaming from slot");
        let mut relations: HashMap<u32, StreamRelation> = HashMap::new();
        let mut tx: Option<OpenTx> = None;
        // An ack released while a previous session was failing may not have
        // reached the server: confirm it now.
        let mut last_ack = acks.borrow().0;
        if last_ack > 0 {
            client.update_applied_lsn(Lsn(last_ack));
        }
        loop {
            let ev = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => {
                    client.stop();
                    return Ok(());
                }
                changed = acks.changed() => {
                    if changed.is_ok() {
                        let ack = acks.borrow_and_update().0;
                        if ack > last_ack {
                            last_ack = ack;
                            client.update_applied_lsn(Lsn(ack));
                            metrics().confirmed_lsn.set(ack as i64);
                        }
                    }
                    continue;
                }
                ev = client.recv() => ev.map_err(|e| wire_err("replication stream", e))?,
            };
            let Some(ev) = ev else {
                return Err(PipelineError::transient(
                    Stage::Source,
                    "replication stream ended",
                ));
            };
            match ev {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    tx = Some(OpenTx {
                        commit_lsn: final_lsn.0,
                        xid,
                        commit_ts_micros: commit_time_micros + PG_EPOCH_OFFSET_MICROS,
                        ordinal: 0,
                        skipped: false,
                    });
                }
                ReplicationEvent::Commit {
                    lsn,
                    end_lsn,
                    commit_time_micros,
                } => {
                    let open = tx.take();
                    bus.send(BusMessage::Commit {
                        position: Position {
                            commit_lsn: lsn.0,
                            ordinal: open.map_or(0, |t| t.ordinal),
                        },
                        ack: SourceAck(end_lsn.0),
                        commit_ts_micros: commit_time_micros + PG_EPOCH_OFFSET_MICROS,
                    })
                    .await?;
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    // ferry_replication_lag_bytes comes from the slot itself
                    // (source.rs `slot_lag`), which also moves while this
                    // loop is held up.
                    if tx.is_none() {
                        bus.send(BusMessage::Idle {
                            ack: SourceAck(wal_end.0),
                        })
                        .await?;
                    }
                }
                ReplicationEvent::Message {
                    transactional, lsn, ..
                } => {
                    // Heartbeats (non-transactional) mark a point the slot
                    // may advance to once everything before is durable.
                    if !transactional && tx.is_none() {
                        bus.send(BusMessage::Idle {
                            ack: SourceAck(lsn.0),
                        })
                        .await?;
                    }
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let msg = pgoutput::decode(&data).map_err(|e| {
                        PipelineError::fatal(Stage::Decode, format!("pgoutput message: {e}"))
                    })?;
                    if let LogicalMessage::Origin { name, .. } = &msg {
                        // Sent after Begin, before the transaction's first
                        // change (pgoutput, PostgreSQL 10+).
                        if let Some(open) = tx.as_mut() {
                            open.skipped =
                                ferry_pipeline::config::origin_matches(skip_origins, name);
                            if open.skipped {
                                debug!(origin = %name, xid = open.xid, "transaction from a skipped replication origin");
                            }
                        }
                    }
                    handle_message(msg, catalog, tables, horizons, &mut relations, &mut tx, bus)
                        .await?;
                }
                ReplicationEvent::StoppedAt { .. } => return Ok(()),
            }
        }
    }
}

async fn handle_message(
    msg: LogicalMessage,
    catalog: &Client,
    tables: &HashMap<TableId, SourceTable>,
    horizons: &HashMap<TableId, Horizon>,
    relations: &mut HashMap<u32, StreamRelation>,
    tx: &mut Option<OpenTx>,
    bus: &BusSender,
) -> Result<(), PipelineError> {
    match msg {
        LogicalMessage::Relation(rel) => {
            let id = TableId::new(rel.namespace.clone(), rel.name.clone());
            let xid = tx.as_ref().map(|t| t.xid);
            let stream_rel = relation_schema(catalog, tables, &id, &rel, xid).await?;
            relations.insert(rel.id, stream_rel);
            Ok(())
        }
        LogicalMessage::Insert { relation_id, new } => {
            let Some((rel, open)) = lookup(relations, tx, relation_id)? else {
                return Ok(());
            };
            let after = decode_tuple(rel, &new)?;
            emit(bus, rel, open, horizons, Op::Insert, None, Some(after)).await
        }
        LogicalMessage::Update {
            relation_id,
            old,
            old_is_full_row,
            new,
        } => {
            let Some((rel, open)) = lookup(relations, tx, relation_id)? else {
                return Ok(());
            };
            let before = old.as_deref().map(|o| decode_tuple(rel, o)).transpose()?;
            let mut after = decode_tuple(rel, &new)?;
            // Under REPLICA IDENTITY FULL the old image is the whole row:
            // it holds the values the update left untouched. (A key-only
            // old image has NULL there, which must not be copied.)
            if let (true, Some(before)) = (old_is_full_row, &before) {
                for (a, b) in after.iter_mut().zip(before) {
                    if matches!(a, Datum::UnchangedToast) && matches!(b, Datum::Value(_)) {
                        *a = b.clone();
                    }
                }
            }
            emit(bus, rel, open, horizons, Op::Update, before, Some(after)).await
        }
        LogicalMessage::Delete {
            relation_id, old, ..
        } => {
            let Some((rel, open)) = lookup(relations, tx, relation_id)? else {
                return Ok(());
            };
            let before = decode_tuple(rel, &old)?;
            emit(bus, rel, open, horizons, Op::Delete, Some(before), None).await
        }
        LogicalMessage::Truncate { relation_ids, .. } => {
            for relation_id in relation_ids {
                if let Some((rel, open)) = lookup(relations, tx, relation_id)? {
                    emit(bus, rel, open, horizons, Op::Truncate, None, None).await?;
                }
            }
            Ok(())
        }
        // Begin/Commit arrive as their own events; origins, types and
        // in-transaction messages carry nothing to mirror.
        _ => Ok(()),
    }
}

/// The relation and open transaction for a row message; `None` for a table
/// Ferry does not mirror (a publication shared with other consumers).
fn lookup<'a>(
    relations: &'a HashMap<u32, StreamRelation>,
    tx: &'a mut Option<OpenTx>,
    relation_id: u32,
) -> Result<Option<(&'a StreamRelation, &'a mut OpenTx)>, PipelineError> {
    let open = tx
        .as_mut()
        .ok_or_else(|| PipelineError::fatal(Stage::Decode, "row change outside a transaction"))?;
    // Every row message counts, mirrored or not, so that a change's ordinal
    // inside its transaction does not depend on the configured tables (a
    // checkpoint taken mid-transaction must match after a restart).
    open.ordinal += 1;
    if open.skipped {
        // Checked after counting: ordinals stay those of the transaction.
        return match relations.contains_key(&relation_id) {
            true => Ok(None),
            false => Err(PipelineError::fatal(
                Stage::Decode,
                format!("row change for relation {relation_id} before its Relation message"),
            )),
        };
    }
    match relations.get(&relation_id) {
        // Not a configured table (a publication shared with others).
        Some(r) if r.schema.primary_key.is_empty() => Ok(None),
        Some(r) => Ok(Some((r, open))),
        None => Err(PipelineError::fatal(
            Stage::Decode,
            format!("row change for relation {relation_id} before its Relation message"),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn emit(
    bus: &BusSender,
    rel: &StreamRelation,
    open: &mut OpenTx,
    horizons: &HashMap<TableId, Horizon>,
    op: Op,
    before: Option<Row>,
    after: Option<Row>,
) -> Result<(), PipelineError> {
    if horizons
        .get(&rel.schema.id)
        .is_some_and(|h| h.saw(open.xid, open.commit_lsn))
    {
        // The snapshot already holds this transaction's effect.
        debug!(table = %rel.schema.id, xid = open.xid, "skipping change already in the snapshot");
        return Ok(());
    }
    bus.send(BusMessage::Change(ChangeEvent {
        table: Arc::clone(&rel.schema),
        op,
        before,
        after,
        position: Position {
            commit_lsn: open.commit_lsn,
            ordinal: open.ordinal,
        },
        xid: Some(open.xid),
        commit_ts_micros: open.commit_ts_micros,
        resume_token: None,
    }))
    .await
}

/// Builds the schema of a relation as the stream describes it (column
/// order and types are the stream's, which may be older than the catalog),
/// enriched with the catalog's SQL types, nullability and key.
async fn relation_schema(
    catalog: &Client,
    tables: &HashMap<TableId, SourceTable>,
    id: &TableId,
    rel: &pgoutput::Relation,
    xid: Option<u32>,
) -> Result<StreamRelation, PipelineError> {
    let Some(configured) = tables.get(id) else {
        // Not ours: remember it with an empty key so that its rows are
        // ignored.
        return Ok(StreamRelation {
            schema: Arc::new(TableSchema {
                id: id.clone(),
                columns: Vec::new(),
                primary_key: Vec::new(),
                child: None,
            }),
            types: Vec::new(),
        });
    };
    let same_shape = configured.schema.columns.len() == rel.columns.len()
        && configured
            .schema
            .columns
            .iter()
            .zip(&rel.columns)
            .zip(&configured.typmods)
            .all(|((c, r), m)| {
                c.name == r.name && c.type_oid == r.type_oid && *m == r.type_modifier
            });
    if same_shape {
        return Ok(StreamRelation {
            schema: Arc::clone(&configured.schema),
            types: configured.types.clone(),
        });
    }
    // The table changed since start (a column added, dropped or retyped):
    // describe it again and take each column the stream names.
    let fresh = describe_as_streamed(catalog, id, xid).await?;
    let mut columns = Vec::with_capacity(rel.columns.len());
    let mut types = Vec::with_capacity(rel.columns.len());
    for (rc, known) in rel.columns.iter().zip(catalog_columns(&fresh, rel)) {
        match known {
            Some(i) => {
                columns.push(fresh.schema.columns[i].clone());
                types.push(fresh.types[i]);
            }
            None => {
                // The catalog no longer (or not yet) shows the column as
                // the stream does: its type as of this transaction, from
                // the stream's own type OID and modifier.
                let type_sql: String = catalog
                    .query_one(
                        "SELECT format_type($1, $2)",
                        &[&rc.type_oid, &rc.type_modifier],
                    )
                    .await
                    .map_err(|e| crate::connect::pg_err(Stage::Source, "format_type", e))?
                    .get(0);
                columns.push(ferry_pipeline::event::Column {
                    name: rc.name.clone(),
                    type_oid: rc.type_oid,
                    type_sql,
                    nullable: true,
                    is_key: rc.is_key,
                    enum_labels: None,
                    id_map: None,
                });
                types.push(PgType {
                    oid: rc.type_oid,
                    elem_oid: None,
                });
            }
        }
    }
    if let Some(why) = catalog::refusal(&fresh) {
        // Never drop a configured table's changes because its key went
        // away: stop and say so.
        return Err(PipelineError::fatal(Stage::Source, why));
    }
    let key_names: Vec<&str> = fresh
        .schema
        .key_columns()
        .map(|c| c.name.as_str())
        .collect();
    let primary_key: Vec<usize> = key_names
        .iter()
        .filter_map(|k| columns.iter().position(|c| c.name == *k))
        .collect();
    if primary_key.len() != key_names.len() {
        return Err(PipelineError::fatal(
            Stage::Source,
            format!("the stream's description of {id} lacks key columns {key_names:?}"),
        ));
    }
    info!(table = %id, columns = columns.len(), "table shape changed in the stream");
    Ok(StreamRelation {
        schema: Arc::new(TableSchema {
            id: id.clone(),
            columns,
            primary_key,
            child: None,
        }),
        types,
    })
}

/// How long a changed relation waits for its transaction to become
/// visible to the catalog connection (normally well under a millisecond).
const CATALOG_CATCH_UP: Duration = Duration::from_secs(30);

/// Describes `id` once the transaction `xid` that the stream is decoding
/// is visible to the catalog connection.
///
/// The walsender may send a transaction before its commit is visible to
/// other sessions (the commit record is flushed before the committing
/// backend leaves the proc array), so a catalog read made on receipt can
/// still show the table as it was before an `ALTER TABLE`. Taking types
/// from that read mirrored a widened `numeric(12,4)` as the old
/// `numeric(6,2)`, and the target rounded the new values. The catalog can
/// also be ahead of the stream (a later `ALTER`, or a later statement of
/// the same transaction): [`catalog_columns`] then takes from it only the
/// columns that match the stream's description.
async fn describe_as_streamed(
    catalog: &Client,
    id: &TableId,
    xid: Option<u32>,
) -> Result<SourceTable, PipelineError> {
    if let Some(xid) = xid {
        let deadline = tokio::time::Instant::now() + CATALOG_CATCH_UP;
        let mut reads = 0u32;
        while !committed_visibly(catalog, xid).await? {
            reads += 1;
            if tokio::time::Instant::now() >= deadline {
                warn!(table = %id, xid, "the stream's transaction is still not visible to the catalog; typing changed columns from the stream");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if reads > 0 {
            debug!(table = %id, xid, reads, "waited for the stream's transaction to become visible");
        }
    }
    catalog::describe(catalog, id).await?.ok_or_else(|| {
        PipelineError::fatal(Stage::Source, format!("source table {id} disappeared"))
    })
}

/// Whether transaction `xid` (32 bits, as pgoutput sends it) is visible to
/// a snapshot taken now. The epoch comes from the snapshot's `xmax`: one
/// less when `xid` is above xmax's low 32 bits (it was assigned before the
/// counter wrapped).
async fn committed_visibly(catalog: &Client, xid: u32) -> Result<bool, PipelineError> {
    catalog
        .query_one(
            "SELECT pg_visible_in_snapshot(
                    ((((pg_snapshot_xmax(s)::text::bigint >> 32)
                       - CASE WHEN $1::bigint > (pg_snapshot_xmax(s)::text::bigint & 4294967295)
                              THEN 1 ELSE 0 END) << 32) | $1::bigint)::text::xid8,
                    s)
               FROM pg_current_snapshot() s",
            &[&i64::from(xid)],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| {
            crate::connect::pg_err(
                Stage::Source,
                "check the stream's transaction is visible",
                e,
            )
        })
}

/// For each column of the stream's Relation message, the index of the
/// catalog column with the same name, type OID and type modifier, if any.
fn catalog_columns(fresh: &SourceTable, rel: &pgoutput::Relation) -> Vec<Option<usize>> {
    rel.columns
        .iter()
        .map(|rc| {
            fresh
                .schema
                .columns
                .iter()
                .zip(&fresh.typmods)
                .position(|(c, m)| {
                    c.name == rc.name && c.type_oid == rc.type_oid && *m == rc.type_modifier
                })
        })
        .collect()
}

fn decode_tuple(rel: &StreamRelation, cols: &[TupleColumn]) -> Result<Row, PipelineError> {
    if cols.len() != rel.types.len() {
        return Err(PipelineError::fatal(
            Stage::Decode,
            format!(
                "tuple of {} has {} columns, its relation {}",
                rel.schema.id,
                cols.len(),
                rel.types.len()
            ),
        ));
    }
    cols.iter()
        .zip(&rel.types)
        .map(|(c, ty)| match c {
            TupleColumn::Null => Ok(Datum::Value(Value::Null)),
            TupleColumn::UnchangedToast => Ok(Datum::UnchangedToast),
            TupleColumn::Text(bytes) | TupleColumn::Binary(bytes) => {
                let s = std::str::from_utf8(bytes).map_err(|_| {
                    PipelineError::new(
                        ErrorClass::Permanent,
                        Stage::Decode,
                        format!("non-UTF-8 value in {}", rel.schema.id),
                    )
                })?;
                decode_value(ty, s).map(Datum::Value).map_err(|e| {
                    PipelineError::new(
                        ErrorClass::Permanent,
                        Stage::Decode,
                        format!("value in {}: {e}", rel.schema.id),
                    )
                })
            }
        })
        .collect()
}

/// How often the stream reports its confirmed position.
pub fn status_interval(ms: u64) -> Duration {
    Duration::from_millis(ms.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_pipeline::event::Column;

    const NUMERIC: u32 = 1700;
    const TEXT: u32 = 25;

    /// `numeric(p,s)`'s type modifier.
    fn numeric_typmod(p: i32, s: i32) -> i32 {
        ((p << 16) | s) + 4
    }

    fn catalog_table(cols: &[(&str, u32, i32, &str)]) -> SourceTable {
        SourceTable {
            oid: 1,
            schema: Arc::new(TableSchema {
                id: TableId::new("public", "items"),
                columns: cols
                    .iter()
                    .map(|(name, oid, _, ty)| Column {
                        name: name.to_string(),
                        type_oid: *oid,
                        type_sql: ty.to_string(),
                        nullable: true,
                        is_key: false,
                        enum_labels: None,
                        id_map: None,
                    })
                    .collect(),
                primary_key: vec![0],
                child: None,
            }),
            types: cols
                .iter()
                .map(|(_, oid, _, _)| PgType {
                    oid: *oid,
                    elem_oid: None,
                })
                .collect(),
            typmods: cols.iter().map(|c| c.2).collect(),
            replica_identity: 'd',
            estimated_rows: 0,
            pages: 0,
            partitioned: false,
            identity_differs_from_key: false,
        }
    }

    fn relation(cols: &[(&str, u32, i32)]) -> pgoutput::Relation {
        pgoutput::Relation {
            id: 1,
            namespace: "public".into(),
            name: "items".into(),
            replica_identity: b'd',
            columns: cols
                .iter()
                .map(|(name, oid, m)| pgoutput::RelationColumn {
                    is_key: false,
                    name: name.to_string(),
                    type_oid: *oid,
                    type_modifier: *m,
                })
                .collect(),
        }
    }

    #[test]
    fn a_catalog_behind_the_stream_does_not_type_a_retyped_column() {
        // The stream says price became numeric(12,4); the catalog, read
        // before the ALTER's commit was visible, still says numeric(6,2).
        let fresh = catalog_table(&[
            ("id", 23, -1, "integer"),
            ("price", NUMERIC, numeric_typmod(6, 2), "numeric(6,2)"),
            ("note", TEXT, -1, "text"),
        ]);
        let rel = relation(&[
            ("id", 23, -1),
            ("price", NUMERIC, numeric_typmod(12, 4)),
            ("note", TEXT, -1),
        ]);
        assert_eq!(catalog_columns(&fresh, &rel), vec![Some(0), None, Some(2)]);
    }

    #[test]
    fn a_catalog_that_agrees_gives_every_column_by_name() {
        // A column added after a dropped one: matched by name, not place.
        let fresh = catalog_table(&[
            ("id", 23, -1, "integer"),
            ("tag", TEXT, -1, "text"),
            ("price", NUMERIC, numeric_typmod(12, 4), "numeric(12,4)"),
        ]);
        let rel = relation(&[
            ("id", 23, -1),
            ("price", NUMERIC, numeric_typmod(12, 4)),
            ("tag", TEXT, -1),
        ]);
        assert_eq!(
            catalog_columns(&fresh, &rel),
            vec![Some(0), Some(2), Some(1)]
        );
    }
}
