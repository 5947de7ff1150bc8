//! Streaming from the slot: pgoutput messages become change events in commit
//! order; acknowledgements from the runtime become the slot's confirmed
//! position; keepalives of an idle stream advance it too, so the slot never
//! pins WAL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_pipeline::bus::BusSender;
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
use tracing::{debug, info};

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
        } = self;
        let mut client = ReplicationClient::connect(repl)
            .await
            .map_err(|e| wire_err("connect for replication", e))?;
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
                    metrics()
                        .lag_bytes
                        .set(wal_end.0.saturating_sub(last_ack) as i64);
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
            let stream_rel = relation_schema(catalog, tables, &id, &rel).await?;
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
    // The table changed since start (a column added or dropped): describe
    // it again and take each column the stream names.
    let fresh = catalog::describe(catalog, id).await?.ok_or_else(|| {
        PipelineError::fatal(Stage::Source, format!("source table {id} disappeared"))
    })?;
    let mut columns = Vec::with_capacity(rel.columns.len());
    let mut types = Vec::with_capacity(rel.columns.len());
    for rc in &rel.columns {
        let pos = fresh.schema.columns.iter().position(|c| c.name == rc.name);
        match pos {
            Some(i) if fresh.schema.columns[i].type_oid == rc.type_oid => {
                columns.push(fresh.schema.columns[i].clone());
                types.push(fresh.types[i]);
            }
            _ => {
                let type_sql: String = catalog
                    .query_one(
                        "SELECT format_type($1, $2)",
                        &[&rc.type_oid, &rc.type_modifier],
                    )
                    .await
                    .map_err(|e| crate::pg_err(Stage::Source, "format_type", e))?
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
