//! PostgreSQL sink for Ferry.
//!
//! Applies each [`Batch`] in one transaction with multi-row statements built
//! on `unnest` of text arrays: `INSERT … ON CONFLICT (pk) DO UPDATE` for
//! upserts, `DELETE … USING unnest(…)` for deletes, `UPDATE … FROM
//! unnest(…)` for updates that left TOAST values untouched. Every value
//! travels as PostgreSQL text and is cast to the target column's own type,
//! which is exact for every type (the same path pg_dump relies on). The
//! pipeline's checkpoint is written in the same transaction
//! ([`checkpoint`]), so the effect of a replay is exactly-once.

pub mod checkpoint;
pub mod dlq;
pub mod id_map;
pub mod literal;
pub mod params;
pub mod target;

use std::collections::HashMap;

use ferry_pipeline::batch::{Batch, RowChange, TableBatch};
use ferry_pipeline::checkpoint::{BusOffsets, Checkpoint, CheckpointStore, PartitionProgress};
use ferry_pipeline::config::PostgresSinkConfig;
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use ferry_pipeline::event::{quote_ident, Datum, TableId};
use ferry_pipeline::metrics::metrics;
use ferry_pipeline::sink::Sink;
use ferry_pipeline::value::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement, Transaction};
use tracing::{info, warn};

use crate::params::{PreparedBatch, PreparedTable};
use crate::target::TargetTable;

/// Wraps a driver error with its SQLSTATE class.
pub(crate) fn pg_err(context: &str, e: tokio_postgres::Error) -> PipelineError {
    let code = e.code().map(|c| c.code().to_string());
    let msg = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    };
    PipelineError::from_postgres(Stage::Sink, context, code.as_deref(), anyhow::anyhow!(msg))
}

/// The advisory lock key under which Ferry changes the target's schema.
const DDL_LOCK: i64 = 0x6665_7272_7964_646c; // "ferryddl"

/// Takes the DDL lock (session level: held until [`ddl_unlock`]).
async fn ddl_lock(client: &Client) -> Result<(), PipelineError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&DDL_LOCK])
        .await
        .map(|_| ())
        .map_err(|e| pg_err("take the DDL lock", e))
}

async fn ddl_unlock(client: &Client) -> Result<(), PipelineError> {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&DDL_LOCK])
        .await
        .map(|_| ())
        .map_err(|e| pg_err("release the DDL lock", e))
}

/// The PostgreSQL sink.
pub struct PostgresSink {
    cfg: PostgresSinkConfig,
    pipeline: String,
    client: Option<Client>,
    tables: HashMap<TableId, TargetTable>,
    statements: HashMap<String, Statement>,
    /// The last write failed in a way that may have hidden a successful
    /// commit (the connection broke around COMMIT): check the checkpoint
    /// before writing the batch again.
    maybe_committed: bool,
    /// Tables with parked records: a batch touching them marks the parked
    /// records of its rows superseded.
    dlq_tables: std::collections::HashSet<TableId>,
    /// Id-map sequences known to exist (bigint namespaces).
    sequences: std::collections::HashSet<String>,
    /// Legacy ids known to be mapped.
    known_ids: id_map::Known,
}

impl PostgresSink {
    pub fn new(cfg: PostgresSinkConfig, pipeline: impl Into<String>) -> Self {
        Self {
            cfg,
            pipeline: pipeline.into(),
            client: None,
            tables: HashMap::new(),
            statements: HashMap::new(),
            maybe_committed: false,
            dlq_tables: Default::default(),
            sequences: Default::default(),
            known_ids: Default::default(),
        }
    }

    /// The target table a source table is written to.
    pub fn target_id(&self, source: &TableId) -> TableId {
        match &self.cfg.schema {
            Some(s) => TableId::new(s.clone(), source.name.clone()),
            None => source.clone(),
        }
    }

    /// The target table of each of the batch's tables, in batch order.
    fn target_ids(&self, batch: &Batch) -> Vec<TableId> {
        batch
            .tables
            .iter()
            .map(|tb| self.target_id(&tb.schema.id))
            .collect()
    }

    async fn client(&mut self) -> Result<&mut Client, PipelineError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let (client, conn) = tokio_postgres::connect(self.cfg.url.expose(), NoTls)
                .await
                .map_err(|e| pg_err("connect to target", e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    warn!(error = %e, "target connection closed");
                }
            });
            // Several workers may start at once on an empty target, and
            // concurrent CREATE … IF NOT EXISTS race in the catalogs (23505
            // on pg_type): Ferry's DDL runs under one advisory lock.
            ddl_lock(&client).await?;
            let installed = async {
                checkpoint::install(&client).await?;
                id_map::install(&client).await?;
                dlq::install(&client).await
            }
            .await;
            ddl_unlock(&client).await?;
            installed?;
            self.dlq_tables = dlq::tables_with_records(&client, &self.pipeline).await?;
            metrics()
                .dlq_depth
                .set(dlq::depth(&client, &self.pipeline).await?);
            self.statements.clear();
            self.tables.clear();
            self.known_ids = Default::default();
            info!("connected to target");
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Makes sure every table of `batch` exists (and accepts its columns)
    /// before the data transaction: DDL errors are then fatal and never
    /// half-apply a batch.
    async fn ensure_tables(&mut self, batch: &Batch) -> Result<(), PipelineError> {
        for tb in batch.tables.iter().filter(|tb| id_map::has_ids(&tb.schema)) {
            for r in tb.schema.columns.iter().filter_map(|c| c.id_map.as_ref()) {
                let ferry_pipeline::id_map::IdKind::Bigint { start } = r.kind else {
                    continue;
                };
                if self.sequences.contains(&r.namespace) {
                    continue;
                }
                let client = self.client().await?;
                ddl_lock(client).await?;
                let made = id_map::ensure_sequence(client, &r.namespace, start).await;
                ddl_unlock(client).await?;
                made?;
                self.sequences.insert(r.namespace.clone());
            }
        }
        for tb in &batch.tables {
            let target = self.target_id(&tb.schema.id);
            let known = self
                .tables
                .get(&target)
                .is_some_and(|t| tb.schema.columns.iter().all(|c| t.accepts(c)));
            if !known {
                let create = self.cfg.create_tables;
                let client = self.client().await?;
                ddl_lock(client).await?;
                let ensured = target::ensure(client, &target, &tb.schema, create).await;
                ddl_unlock(client).await?;
                self.tables.insert(target, ensured?);
            }
        }
        Ok(())
    }

    /// The batch record by record, each in a savepoint; the records that
    /// fail permanently are rolled back alone and parked in `ferry_dlq`,
    /// in the same transaction as the rest and the checkpoint.
    async fn write_record_by_record(
        &mut self,
        prepared: &PreparedBatch,
    ) -> Result<Vec<ferry_pipeline::dlq::Parked>, PipelineError> {
        let batch = &prepared.batch;
        self.client().await?;
        self.ensure_tables(batch).await?;
        let pipeline = self.pipeline.clone();
        let mut statements = std::mem::take(&mut self.statements);
        let tables = std::mem::take(&mut self.tables);
        let mut parked_tables = Vec::new();
        let recheck = self.maybe_committed;
        let target_ids = self.target_ids(batch);
        let self_dlq_tables = self.dlq_tables.clone();
        let known = std::mem::take(&mut self.known_ids);
        let result = async {
            let client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| pg_err("begin", e))?;
            if already_committed(&tx, &mut statements, &pipeline, batch, recheck).await? {
                return Ok(Vec::new());
            }
            let mut parked = Vec::new();
            let req = id_map::requests(batch, &known);
            if !req.is_empty() {
                id_map::allocate(&tx, &req).await?;
            }
            apply_prunes_all(&tx, &mut statements, &tables, batch, &target_ids).await?;
            for (tb, id) in batch.tables.iter().zip(&target_ids) {
                let target = tables.get(id).ok_or_else(|| {
                    PipelineError::transient(
                        Stage::Sink,
                        format!("target table {id} needs to be checked again"),
                    )
                })?;
                // What the batch does to the table as a whole comes first.
                if tb.truncate || tb.snapshot_start {
                    let mut head = Batch::default();
                    if tb.snapshot_start {
                        head.snapshot_start(&tb.schema);
                    } else {
                        let mut ev = ferry_pipeline::event::ChangeEvent::snapshot_read(
                            std::sync::Arc::clone(&tb.schema),
                            Vec::new(),
                        );
                        ev.op = ferry_pipeline::event::Op::Truncate;
                        ev.after = None;
                        head.push(ev);
                    }
                    let head = params::prepare(head);
                    apply_table(&tx, &mut statements, target, &head.batch.tables[0], &head.tables[0], &pipeline, false).await?;
                }
                let mut landed = Vec::new();
                for i in tb.rows_by_last_touch() {
                    let change = &tb.rows[i];
                    let Some(ev) = ferry_pipeline::batch::event_for(&tb.schema, change) else {
                        continue;
                    };
                    let key = ferry_pipeline::batch::key_text(&tb.schema, change).unwrap_or_default();
                    let mut one = Batch::default();
                    one.push(ev.clone());
                    let one = params::prepare(one);
                    tx.batch_execute("SAVEPOINT ferry_record")
                        .await
                        .map_err(|e| pg_err("savepoint", e))?;
                    let applied = async {
                        id_map::require(&tx, &id_map::requests(&one.batch, &known)).await?;
                        apply_table(&tx, &mut statements, target, &one.batch.tables[0], &one.tables[0], &pipeline, false).await
                    }
                    .await;
                    match applied {
                        Ok(()) => {
                            tx.batch_execute("RELEASE SAVEPOINT ferry_record")
                                .await
                                .map_err(|e| pg_err("release savepoint", e))?;
                            landed.push(key);
                        }
                        Err(e) if e.class == ErrorClass::Permanent => {
                            tx.batch_execute("ROLLBACK TO SAVEPOINT ferry_record")
                                .await
                                .map_err(|e| pg_err("rollback to savepoint", e))?;
                            warn!(table = %tb.schema.id, key = %key, error = %e, "record parked in the dead-letter queue");
                            let record = ferry_pipeline::dlq::DeadLetter {
                                event: ferry_pipeline::dlq::encode_event(&ev, &pipeline)?,
                                key,
                                error: ferry_pipeline::dlq::RecordError::of(&e),
                                position: batch.last_position,
                                origin: tb.origins.get(i).cloned().flatten(),
                            };
                            let op = match change {
                                RowChange::Delete(_) => "delete",
                                RowChange::Patch(_) | RowChange::Rekey { .. } => "update",
                                _ => "upsert",
                            };
                            // This record is the row's newest state: older
                            // records of the row must not be replayed after it.
                            dlq::supersede(&tx, &pipeline, &tb.schema.id, std::slice::from_ref(&record.key)).await?;
                            dlq::park(&tx, &pipeline, &tb.schema.id, op, &record).await?;
                            parked.push(ferry_pipeline::dlq::Parked {
                                table: tb.schema.id.clone(),
                                record,
                                superseded: false,
                            });
                            metrics()
                                .dlq_events
                                .with_label_values(&[&tb.schema.id.to_string(), e.class.as_str()])
                                .inc();
                            parked_tables.push(tb.schema.id.clone());
                        }
                        Err(e) => return Err(e),
                    }
                }
                dlq::supersede(&tx, &pipeline, &tb.schema.id, &landed).await?;
                if let Some((rows, state)) = &tb.snapshot_done {
                    checkpoint::save_snapshot(&tx, &pipeline, &tb.schema.id, *rows, state).await?;
                }
            }
            let dlq_now: std::collections::HashSet<TableId> = self_dlq_tables
                .iter()
                .cloned()
                .chain(parked_tables.iter().cloned())
                .collect();
            settle_dlq(&tx, &pipeline, batch, &dlq_now).await?;
            parked.extend(batch.parked.iter().cloned());
            save_position(&tx, &mut statements, &pipeline, batch).await?;
            let depth = dlq::depth(&tx, &pipeline).await?;
            tx.commit().await.map_err(|e| pg_err("commit", e))?;
            metrics().dlq_depth.set(depth);
            Ok(parked)
        }
        .await;
        self.statements = statements;
        self.tables = tables;
        self.settle(result.as_ref().err());
        self.known_ids = known;
        if let Ok(parked) = &result {
            self.dlq_tables.extend(parked_tables);
            self.dlq_tables
                .extend(parked.iter().map(|p| p.table.clone()));
        }
        result
    }

    async fn write(&mut self, prepared: &PreparedBatch) -> Result<(), PipelineError> {
        let batch = &prepared.batch;
        // (Re)connect first: a reconnect clears the caches, which must
        // happen before they are taken below (statements prepared on the old
        // connection do not exist on the new one: after a target restart
        // every retry failed with 26000).
        self.client().await?;
        self.ensure_tables(batch).await?;
        let pipeline = self.pipeline.clone();
        let mut statements = std::mem::take(&mut self.statements);
        let tables = std::mem::take(&mut self.tables);
        let recheck = self.maybe_committed;
        let dlq_tables = self.dlq_tables.clone();
        let target_ids = self.target_ids(batch);
        let req = id_map::requests(batch, &self.known_ids);
        let mut one_by_one = false;
        let result = loop {
            let attempt = async {
                let client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| pg_err("begin", e))?;
                if already_committed(&tx, &mut statements, &pipeline, batch, recheck).await? {
                    return Ok(());
                }
                apply_tables(
                    &tx,
                    &mut statements,
                    &tables,
                    prepared,
                    &target_ids,
                    &pipeline,
                    one_by_one,
                    &dlq_tables,
                    &req,
                )
                .await?;
                settle_dlq(&tx, &pipeline, batch, &dlq_tables).await?;
                save_position(&tx, &mut statements, &pipeline, batch).await?;
                let depth = match batch.parked.is_empty() {
                    true => None,
                    false => Some(dlq::depth(&tx, &pipeline).await?),
                };
                tx.commit().await.map_err(|e| pg_err("commit", e))?;
                if let Some(d) = depth {
                    metrics().dlq_depth.set(d);
                }
                Ok::<(), PipelineError>(())
            }
            .await;
            // A unique value that changes hands inside one batch can make
            // the multi-row upsert (one row per key, final states) collide
            // with a row whose own change comes later in it: redo the batch
            // row by row, each row once the value it needs is free.
            match attempt {
                Err(e) if !one_by_one && e.code.as_deref() == Some("23505") => {
                    tracing::info!(error = %e, "unique value changed hands within the batch; applying it row by row");
                    one_by_one = true;
                }
                other => break other,
            }
        };
        self.statements = statements;
        self.tables = tables;
        self.settle(result.as_ref().err());
        if result.is_ok() {
            self.dlq_tables
                .extend(batch.parked.iter().map(|p| p.table.clone()));
            self.known_ids.remember(&req);
        }
        result
    }

    /// After a write: a transient error may have broken the connection
    /// (start afresh next time, without the statements prepared on it) and
    /// may have hidden a successful COMMIT (check before writing again).
    fn settle(&mut self, error: Option<&PipelineError>) {
        match error {
            None => self.maybe_committed = false,
            Some(e) if e.disposition() == ferry_pipeline::error::Disposition::Retry => {
                self.client = None;
                self.statements.clear();
                self.maybe_committed = true;
            }
            Some(_) => {}
        }
    }
}

/// The first step of a batch's transaction. On the Kafka bus: the worker's
/// progress per partition, fenced (first, so that its row locks are taken
/// before any data is written). On the embedded bus, after an error around
/// COMMIT (`recheck`): whether the batch landed already; writing it again
/// would be harmless for upserts but not for a rekey (its old key is gone)
/// nor for parked records (parked twice). `true` means: nothing to do.
async fn already_committed(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    pipeline: &str,
    batch: &Batch,
    recheck: bool,
) -> Result<bool, PipelineError> {
    if !batch.bus.is_empty() {
        checkpoint::save_bus_offsets(tx, statements, pipeline, &batch.bus).await?;
    } else if let (true, Some(p)) = (recheck, batch.last_position) {
        if checkpoint::load(tx, pipeline).await?.position >= Some(p) {
            tracing::info!(position = %p, "batch was already committed before the error");
            return Ok(true);
        }
    }
    Ok(false)
}

/// The batch's position and resume token (embedded bus). A worker's
/// positions come from several partitions and do not form one order: its
/// progress is in `ferry_bus_offsets` only.
async fn save_position(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    pipeline: &str,
    batch: &Batch,
) -> Result<(), PipelineError> {
    if batch.bus.is_empty() && (batch.last_position.is_some() || batch.last_resume_token.is_some())
    {
        checkpoint::save_position(
            tx,
            statements,
            pipeline,
            batch.last_position.unwrap_or_default(),
            batch.last_resume_token.as_deref(),
        )
        .await?;
    }
    Ok(())
}

impl CheckpointStore for PostgresSink {
    async fn load(&mut self) -> Result<Checkpoint, PipelineError> {
        let pipeline = self.pipeline.clone();
        let client = self.client().await?;
        checkpoint::load(client, &pipeline).await
    }
}

impl BusOffsets for PostgresSink {
    async fn load_bus_offsets(
        &mut self,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), PartitionProgress>, PipelineError> {
        let pipeline = self.pipeline.clone();
        let client = self.client().await?;
        checkpoint::load_bus_offsets(client, &pipeline, partitions).await
    }
}

impl Sink for PostgresSink {
    type Prepared = PreparedBatch;

    fn prepare(batch: Batch) -> PreparedBatch {
        params::prepare(batch)
    }

    async fn write_batch(&mut self, batch: &PreparedBatch) -> Result<(), PipelineError> {
        self.write(batch).await
    }

    async fn write_isolating(
        &mut self,
        batch: &PreparedBatch,
        _cause: &PipelineError,
    ) -> Result<Vec<ferry_pipeline::dlq::Parked>, PipelineError> {
        self.write_record_by_record(batch).await
    }
}

/// Applies everything a batch does to one table.
/// Everything a batch does to its tables, inside the caller's
/// transaction: the id map first (the rows read their new ids from it),
/// then child tables' prunes (children before parents, so that a parent's
/// delete never meets its children), then each table's rows.
#[allow(clippy::too_many_arguments)]
async fn apply_tables(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    tables: &HashMap<TableId, TargetTable>,
    prepared: &PreparedBatch,
    target_ids: &[TableId],
    pipeline: &str,
    one_by_one: bool,
    dlq_tables: &std::collections::HashSet<TableId>,
    req: &id_map::Requests,
) -> Result<(), PipelineError> {
    let batch = &prepared.batch;
    if !req.is_empty() {
        id_map::allocate(tx, req).await?;
        id_map::require(tx, req).await?;
    }
    // Tables emptied together (a mapped table and its child tables): one
    // TRUNCATE, as PostgreSQL refuses to empty a table that another one
    // references unless both go in the same statement. Empty tables are
    // left alone (a first snapshot into tables with foreign keys).
    let mut emptied = Vec::new();
    let mut any_rows = false;
    for (tb, id) in batch.tables.iter().zip(target_ids) {
        if tb.truncate || tb.snapshot_start {
            any_rows |= has_rows(tx, id).await?;
            emptied.push(ensured(tables, id)?.id.quoted());
            // Records parked for rows that are gone now must not come back.
            dlq::supersede_table(tx, pipeline, &tb.schema.id).await?;
        }
    }
    if emptied.len() > 1 && any_rows {
        tx.batch_execute(&format!("TRUNCATE {}", emptied.join(", ")))
            .await
            .map_err(|e| pg_err("truncate tables", e))?;
    }
    apply_prunes_all(tx, statements, tables, batch, target_ids).await?;
    for ((tb, pt), id) in batch.tables.iter().zip(&prepared.tables).zip(target_ids) {
        let target = ensured(tables, id)?;
        apply_table(tx, statements, target, tb, pt, pipeline, one_by_one).await?;
        if dlq_tables.contains(&tb.schema.id) {
            let keys: Vec<String> = tb
                .rows
                .iter()
                .filter_map(|r| ferry_pipeline::batch::key_text(&tb.schema, r))
                .collect();
            dlq::supersede(tx, pipeline, &tb.schema.id, &keys).await?;
        }
    }
    Ok(())
}

/// Whether a table has any row (TRUNCATE of an empty table is skipped).
async fn has_rows(tx: &Transaction<'_>, id: &TableId) -> Result<bool, PipelineError> {
    tx.query_one(
        &format!("SELECT EXISTS (SELECT 1 FROM {})", id.quoted()),
        &[],
    )
    .await
    .map(|r| r.get(0))
    .map_err(|e| pg_err(&format!("read {id}"), e))
}

/// A target table checked by `ensure_tables`, unless a reconnect since
/// cleared the cache: then the whole batch is retried.
fn ensured<'a>(
    tables: &'a HashMap<TableId, TargetTable>,
    id: &TableId,
) -> Result<&'a TargetTable, PipelineError> {
    tables.get(id).ok_or_else(|| {
        PipelineError::transient(
            Stage::Sink,
            format!("target table {id} needs to be checked again"),
        )
    })
}

/// The prunes of every child table in the batch, children last-touched
/// first.
async fn apply_prunes_all(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    tables: &HashMap<TableId, TargetTable>,
    batch: &Batch,
    target_ids: &[TableId],
) -> Result<(), PipelineError> {
    for (tb, id) in batch.tables.iter().zip(target_ids).rev() {
        if tb.prunes.is_empty() {
            continue;
        }
        apply_prunes(tx, statements, ensured(tables, id)?, tb).await?;
    }
    Ok(())
}

/// Deletes a child table's rows past each parent's array end.
async fn apply_prunes(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    target: &TargetTable,
    tb: &TableBatch,
) -> Result<(), PipelineError> {
    let Some(link) = &tb.schema.child else {
        return Ok(());
    };
    let schema = &tb.schema;
    let k = link.parent_key.len();
    let mut cols: Vec<params::TextArrayBuilder> = (0..=k)
        .map(|_| params::TextArrayBuilder::with_capacity(tb.prunes.len()))
        .collect();
    for (parent, keep) in &tb.prunes {
        for (j, col) in cols.iter_mut().take(k).enumerate() {
            col.push_value(parent.get(j).unwrap_or(&Value::Null));
        }
        cols[k].push(Some(&keep.to_string()));
    }
    target.check_exact(tb)?;
    let cast = |name: &str| -> String { target.type_of(name).unwrap_or("text").to_string() };
    let mut conds: Vec<String> = link
        .parent_key
        .iter()
        .enumerate()
        .map(|(j, &ci)| {
            let c = &schema.columns[ci];
            format!(
                "t.{} = {}",
                quote_ident(&c.name),
                id_map::value_sql(c, &cast(&c.name), &format!("u.p{j}"))
            )
        })
        .collect();
    conds.push(format!(
        "t.{} >= u.keep::bigint",
        quote_ident(&schema.columns[link.position].name)
    ));
    let aliases: Vec<String> = (0..k)
        .map(|j| format!("p{j}"))
        .chain(["keep".into()])
        .collect();
    let placeholders: Vec<String> = (1..=k + 1).map(|i| format!("${i}::text[]")).collect();
    let sql = format!(
        "DELETE FROM {} AS t USING unnest({}) AS u({}) WHERE {}",
        target.id.quoted(),
        placeholders.join(", "),
        aliases.join(", "),
        conds.join(" AND ")
    );
    let arrays: Vec<params::TextArray> = cols
        .into_iter()
        .map(params::TextArrayBuilder::finish)
        .collect();
    execute(tx, statements, &sql, &arrays, &target.id).await?;
    Ok(())
}

/// The batch's dead-letter bookkeeping for the transform stage, inside its
/// transaction: source rows changed by the batch supersede their parked
/// records, the records the mapping refused are parked (in order, each
/// superseded if a later change of its row in the batch landed), and
/// mapped source tables' finished snapshots are recorded.
async fn settle_dlq(
    tx: &Transaction<'_>,
    pipeline: &str,
    batch: &Batch,
    dlq_tables: &std::collections::HashSet<TableId>,
) -> Result<(), PipelineError> {
    let mut by_table: HashMap<&TableId, Vec<String>> = HashMap::new();
    for (table, key) in &batch.source_keys {
        if dlq_tables.contains(table) {
            by_table.entry(table).or_default().push(key.clone());
        }
    }
    for (table, keys) in by_table {
        dlq::supersede(tx, pipeline, table, &keys).await?;
    }
    for table in &batch.emptied_sources {
        dlq::supersede_table(tx, pipeline, table).await?;
    }
    for p in &batch.parked {
        let op = ferry_pipeline::dlq::decode_event(&p.record.event)
            .map(|ev| match ev.op {
                ferry_pipeline::event::Op::Delete => "delete",
                ferry_pipeline::event::Op::Update => "update",
                _ => "upsert",
            })
            .unwrap_or("upsert");
        // The newest state of the row: older records must not be replayed
        // after it.
        dlq::supersede(tx, pipeline, &p.table, std::slice::from_ref(&p.record.key)).await?;
        dlq::park(tx, pipeline, &p.table, op, &p.record).await?;
        if p.superseded {
            dlq::supersede(tx, pipeline, &p.table, std::slice::from_ref(&p.record.key)).await?;
        }
        metrics()
            .dlq_events
            .with_label_values(&[&p.table.to_string(), &p.record.error.class])
            .inc();
    }
    for (table, rows, state) in &batch.snapshot_marks {
        checkpoint::save_snapshot(tx, pipeline, table, *rows, state).await?;
    }
    Ok(())
}

async fn apply_table(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    target: &TargetTable,
    tb: &TableBatch,
    prepared: &PreparedTable,
    pipeline: &str,
    one_by_one: bool,
) -> Result<(), PipelineError> {
    let schema = &tb.schema;
    let table_sql = target.id.quoted();
    if tb.snapshot_start {
        checkpoint::clear_snapshot(tx, pipeline, &schema.id).await?;
    }
    if (tb.truncate || tb.snapshot_start) && has_rows(tx, &target.id).await? {
        tx.batch_execute(&format!("TRUNCATE {table_sql}"))
            .await
            .map_err(|e| pg_err(&format!("truncate {}", target.id), e))?;
    }
    if schema.primary_key.is_empty() {
        if tb.rows.is_empty() {
            return Ok(());
        }
        return Err(PipelineError::fatal(
            Stage::Sink,
            format!(
                "table {} has no primary key; Ferry cannot apply its rows by key",
                schema.id
            ),
        ));
    }
    let cast = |name: &str| -> String { target.type_of(name).unwrap_or("text").to_string() };
    let key_names: Vec<&str> = schema.key_columns().map(|c| c.name.as_str()).collect();
    let placeholders = |n: usize| -> String {
        (1..=n)
            .map(|i| format!("${i}::text[]"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    // Rekeys first: the batch starts with them (see `Batch::needs_own_batch`).
    for r in &tb.rows {
        if let RowChange::Rekey { old_key, row } = r {
            rekey(tx, statements, target, tb, old_key, row).await?;
        }
    }

    if let Some(rows) = &prepared.deletes {
        let aliases: Vec<String> = (0..key_names.len()).map(|i| format!("k{i}")).collect();
        let cond: Vec<String> = schema
            .key_columns()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    "t.{} = {}",
                    quote_ident(&c.name),
                    id_map::value_sql(c, &cast(&c.name), &format!("u.k{i}"))
                )
            })
            .collect();
        let sql = format!(
            "DELETE FROM {table_sql} AS t USING unnest({}) AS u({}) WHERE {}",
            placeholders(key_names.len()),
            aliases.join(", "),
            cond.join(" AND ")
        );
        execute(tx, statements, &sql, &rows.columns, &target.id).await?;
    }

    let width = schema.columns.len();
    if let Some(rows) = &prepared.upserts {
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        let aliases: Vec<String> = (0..width).map(|i| format!("c{i}")).collect();
        let select: Vec<String> = schema
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| id_map::value_sql(c, &cast(&c.name), &format!("u.c{i}")))
            .collect();
        let non_key: Vec<String> = names
            .iter()
            .filter(|n| !key_names.contains(n))
            .map(|n| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
            .collect();
        let conflict = if non_key.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", non_key.join(", "))
        };
        let sql =
            format!(
            "INSERT INTO {table_sql} ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT ({}) {}",
            names.iter().map(|n| quote_ident(n)).collect::<Vec<_>>().join(", "),
            select.join(", "),
            placeholders(width),
            aliases.join(", "),
            key_names.iter().map(|n| quote_ident(n)).collect::<Vec<_>>().join(", "),
            conflict
        );
        if one_by_one {
            upsert_one_by_one(tx, statements, &sql, tb, &target.id).await?;
        } else {
            execute(tx, statements, &sql, &rows.columns, &target.id).await?;
        }
    }
    for (mask, rows) in &prepared.patches {
        let present: Vec<usize> = (0..width).filter(|&i| mask[i]).collect();
        let aliases: Vec<String> = (0..present.len()).map(|i| format!("c{i}")).collect();
        let mut sets = Vec::new();
        let mut conds = Vec::new();
        for (j, &i) in present.iter().enumerate() {
            let name = &schema.columns[i].name;
            let expr = id_map::value_sql(&schema.columns[i], &cast(name), &format!("u.c{j}"));
            if key_names.contains(&name.as_str()) {
                conds.push(format!("t.{} = {expr}", quote_ident(name)));
            } else {
                sets.push(format!("{} = {expr}", quote_ident(name)));
            }
        }
        if sets.is_empty() {
            continue;
        }
        let sql = format!(
            "UPDATE {table_sql} AS t SET {} FROM unnest({}) AS u({}) WHERE {}",
            sets.join(", "),
            placeholders(present.len()),
            aliases.join(", "),
            conds.join(" AND ")
        );
        let n = execute(tx, statements, &sql, &rows.columns, &target.id).await?;
        if n < rows.count as u64 {
            // An update whose row is not in the target: the target was
            // changed behind Ferry's back (or the snapshot is incomplete).
            return Err(PipelineError::new(
                ferry_pipeline::error::ErrorClass::Permanent,
                Stage::Sink,
                format!(
                    "{} update(s) to {} left TOAST values unchanged but their rows are missing from the target",
                    rows.count as u64 - n,
                    target.id
                ),
            ));
        }
    }
    if let Some((rows, state)) = &tb.snapshot_done {
        checkpoint::save_snapshot(tx, pipeline, &schema.id, *rows, state).await?;
    }
    Ok(())
}

/// Upserts the batch's rows one at a time, each in a savepoint, passing
/// over a row whose unique value is still held by another row and coming
/// back to it once that row moved on. Fails only when a pass makes no
/// progress (a cycle that the batch's intermediate states resolved at the
/// source).
async fn upsert_one_by_one(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    tb: &TableBatch,
    table: &TableId,
) -> Result<(), PipelineError> {
    let all: Vec<usize> = (0..tb.schema.columns.len()).collect();
    let mut pending: Vec<&Vec<Datum>> = tb
        .rows_by_last_touch()
        .into_iter()
        .filter_map(|i| match &tb.rows[i] {
            RowChange::Upsert(row) => Some(row),
            _ => None,
        })
        .collect();
    while !pending.is_empty() {
        let mut blocked = Vec::new();
        let mut last_error = None;
        for row in &pending {
            let cols = params::column_arrays(&[*row], &all).columns;
            tx.batch_execute("SAVEPOINT ferry_row")
                .await
                .map_err(|e| pg_err("savepoint", e))?;
            match execute(tx, statements, sql, &cols, table).await {
                Ok(_) => tx
                    .batch_execute("RELEASE SAVEPOINT ferry_row")
                    .await
                    .map_err(|e| pg_err("release savepoint", e))?,
                Err(e) if e.code.as_deref() == Some("23505") => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT ferry_row")
                        .await
                        .map_err(|e| pg_err("rollback to savepoint", e))?;
                    blocked.push(*row);
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if blocked.len() == pending.len() {
            return Err(last_error.expect("a blocked row has its error"));
        }
        pending = blocked;
    }
    Ok(())
}

/// Moves one row to a new key, setting every column the change carries and
/// keeping the target's value of the others.
async fn rekey(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    target: &TargetTable,
    tb: &TableBatch,
    old_key: &[Value],
    row: &[Datum],
) -> Result<(), PipelineError> {
    let schema = &tb.schema;
    let cast = |name: &str| target.type_of(name).unwrap_or("text").to_string();
    let mut sets = Vec::new();
    let mut cols: Vec<Vec<Option<String>>> = Vec::new();
    for (i, c) in schema.columns.iter().enumerate() {
        if let Some(Datum::Value(v)) = row.get(i) {
            cols.push(vec![literal::to_pg_text(v)]);
            sets.push(format!(
                "{} = ($%{}::text[])[1]::{}",
                quote_ident(&c.name),
                cols.len(),
                cast(&c.name)
            ));
        }
    }
    let mut conds = Vec::new();
    for (k, c) in schema.key_columns().enumerate() {
        cols.push(vec![old_key.get(k).and_then(literal::to_pg_text)]);
        conds.push(format!(
            "{} = (${}::text[])[1]::{}",
            quote_ident(&c.name),
            cols.len(),
            cast(&c.name)
        ));
    }
    let sql = format!(
        "UPDATE {} SET {} WHERE {}",
        target.id.quoted(),
        sets.join(", ").replace("$%", "$"),
        conds.join(" AND ")
    );
    let n = execute(tx, statements, &sql, &cols, &target.id).await?;
    tracing::debug!(table = %target.id, rows = n, "moved a row to a new key");
    if n != 1 {
        return Err(PipelineError::new(
            ferry_pipeline::error::ErrorClass::Permanent,
            Stage::Sink,
            format!("a key change in {} left large values untouched but the row is missing from the target", target.id),
        ));
    }
    Ok(())
}

/// `sql` prepared on this connection, once: `statements` is the sink's
/// cache, emptied when the connection is replaced. `types` pins the
/// parameters' types (empty: the server infers them).
pub(crate) async fn prepared(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    types: &[Type],
    context: &str,
) -> Result<Statement, PipelineError> {
    if let Some(s) = statements.get(sql) {
        return Ok(s.clone());
    }
    let s = tx
        .prepare_typed(sql, types)
        .await
        .map_err(|e| pg_err(&format!("prepare to {context}"), e))?;
    statements.insert(sql.to_string(), s.clone());
    Ok(s)
}

async fn execute<P: ToSql + Sync>(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    cols: &[P],
    table: &TableId,
) -> Result<u64, PipelineError> {
    let types = vec![Type::TEXT_ARRAY; cols.len()];
    let stmt = prepared(
        tx,
        statements,
        sql,
        &types,
        &format!("apply batch to {table}"),
    )
    .await?;
    let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    tx.execute(&stmt, &params)
        .await
        .map_err(|e| pg_err(&format!("apply batch to {table}"), e))
}

/// Checks the target for `ferry check`: reachable, and every table present
/// (or creatable).
pub async fn target_findings(
    cfg: &PostgresSinkConfig,
    tables: &[TableId],
) -> Vec<ferry_pipeline::prerequisite::Finding> {
    use ferry_pipeline::prerequisite::Finding;
    let sink = PostgresSink::new(cfg.clone(), "check");
    let client = match tokio_postgres::connect(cfg.url.expose(), NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => {
            return vec![Finding::fail(
                "target reachable",
                pg_err("connect to target", e).to_string(),
            )]
        }
    };
    let mut out = vec![Finding::pass("target reachable", "connected")];
    for id in tables {
        let target = sink.target_id(id);
        let subject = format!("target table {target}");
        match target::describe(&client, &target).await {
            Ok(Some(_)) => out.push(Finding::pass(subject, "exists")),
            Ok(None) if cfg.create_tables => out.push(Finding::pass(subject, "will be created")),
            Ok(None) => out.push(Finding::fail(
                subject,
                "does not exist; create it or set sink.create_tables = true",
            )),
            Err(e) => out.push(Finding::fail(subject, e.to_string())),
        }
    }
    out
}

/// Parked records of one table and error class.
#[derive(Debug, Clone)]
pub struct DlqGroup {
    pub table: TableId,
    pub error_class: String,
    pub records: i64,
    pub superseded: i64,
    pub oldest: String,
    pub newest: String,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Applied and removed from the queue (with `--dry-run`: would be).
    pub applied: u64,
    /// Removed without applying: a later change of the row landed since.
    pub superseded: u64,
    /// Failed again: kept, with one more attempt and the new error.
    pub failed: u64,
}

impl PostgresSink {
    /// Records by table and error class.
    /// The mapped target tables as the catalog declares them, for
    /// compiling a mapping (see [`target::mapping_catalog`]).
    pub async fn mapping_catalog(
        &mut self,
        ids: &[TableId],
    ) -> Result<HashMap<TableId, ferry_pipeline::transform::TargetTable>, PipelineError> {
        let client = self.client().await?;
        target::mapping_catalog(client, ids).await
    }

    /// `ferry idmap lookup`: (legacy, new) pairs of `namespace` where
    /// either side is `id`.
    pub async fn id_map_lookup(
        &mut self,
        namespace: &str,
        id: &str,
    ) -> Result<Vec<(String, String)>, PipelineError> {
        let client = self.client().await?;
        id_map::lookup(client, namespace, id).await
    }

    pub async fn dlq_list(&mut self, filter: &dlq::Filter) -> Result<Vec<DlqGroup>, PipelineError> {
        let pipeline = self.pipeline.clone();
        let (cond, params) = filter.sql();
        let sql = format!(
            "SELECT table_schema, table_name, error_class, count(*),
                    count(superseded_at), min(first_failed_at)::text, max(last_failed_at)::text
               FROM public.ferry_dlq WHERE {cond}
              GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        );
        let client = self.client().await?;
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&pipeline];
        args.extend(params.iter().map(|p| p as &(dyn ToSql + Sync)));
        let rows = client
            .query(&sql, &args)
            .await
            .map_err(|e| pg_err("read ferry_dlq", e))?;
        Ok(rows
            .iter()
            .map(|r| DlqGroup {
                table: TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                error_class: r.get(2),
                records: r.get(3),
                superseded: r.get(4),
                oldest: r.get(5),
                newest: r.get(6),
            })
            .collect())
    }

    /// One record as JSON: its fields and the parked change.
    pub async fn dlq_show(&mut self, id: i64) -> Result<Option<serde_json::Value>, PipelineError> {
        let pipeline = self.pipeline.clone();
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, table_schema, table_name, row_key, op, event, error_class, error_code,
                        error_message, stage, attempts, first_failed_at::text, last_failed_at::text,
                        commit_lsn::text, ordinal, superseded_at::text,
                        bus_topic, bus_partition, bus_offset
                   FROM public.ferry_dlq WHERE pipeline = $1 AND id = $2",
                &[&pipeline, &id],
            )
            .await
            .map_err(|e| pg_err("read ferry_dlq", e))?;
        Ok(row.map(|r| {
            let event: String = r.get(5);
            serde_json::json!({
                "id": r.get::<_, i64>(0),
                "table": format!("{}.{}", r.get::<_, String>(1), r.get::<_, String>(2)),
                "key": r.get::<_, String>(3),
                "op": r.get::<_, String>(4),
                "error_class": r.get::<_, String>(6),
                "error_code": r.get::<_, Option<String>>(7),
                "error_message": r.get::<_, String>(8),
                "stage": r.get::<_, String>(9),
                "attempts": r.get::<_, i32>(10),
                "first_failed_at": r.get::<_, String>(11),
                "last_failed_at": r.get::<_, String>(12),
                "source_position": r.get::<_, Option<String>>(13).map(|l| format!("{l}#{}", r.get::<_, Option<i64>>(14).unwrap_or(0))),
                "superseded_at": r.get::<_, Option<String>>(15),
                "bus_topic": r.get::<_, Option<String>>(16),
                "bus_partition": r.get::<_, Option<i32>>(17),
                "bus_offset": r.get::<_, Option<i64>>(18),
                "event": serde_json::from_str::<serde_json::Value>(&event).unwrap_or(serde_json::Value::String(event)),
            })
        }))
    }

    /// Removes the records `filter` selects; returns how many.
    pub async fn dlq_purge(&mut self, filter: &dlq::Filter) -> Result<u64, PipelineError> {
        let pipeline = self.pipeline.clone();
        let (cond, params) = filter.sql();
        let client = self.client().await?;
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&pipeline];
        args.extend(params.iter().map(|p| p as &(dyn ToSql + Sync)));
        let n = client
            .execute(&format!("DELETE FROM public.ferry_dlq WHERE {cond}"), &args)
            .await
            .map_err(|e| pg_err("purge ferry_dlq", e))?;
        let depth = dlq::depth(client, &pipeline).await?;
        metrics().dlq_depth.set(depth);
        Ok(n)
    }

    /// Re-applies the records `filter` selects, oldest first, each in its
    /// own transaction (so an interrupted replay loses nothing and repeats
    /// nothing): an applied record leaves the queue in the same transaction;
    /// a superseded one leaves without being applied; one that fails again
    /// stays with one more attempt and the new error. With `dry_run`, every
    /// record is applied and rolled back. `rate` caps records per second.
    pub async fn dlq_replay(
        &mut self,
        filter: &dlq::Filter,
        dry_run: bool,
        rate: Option<f64>,
        transformer: Option<&ferry_pipeline::transform::Transformer>,
    ) -> Result<ReplayReport, PipelineError> {
        let pipeline = self.pipeline.clone();
        let (cond, params) = filter.sql();
        let ids: Vec<i64> = {
            let client = self.client().await?;
            let mut args: Vec<&(dyn ToSql + Sync)> = vec![&pipeline];
            args.extend(params.iter().map(|p| p as &(dyn ToSql + Sync)));
            client
                .query(
                    &format!("SELECT id FROM public.ferry_dlq WHERE {cond} ORDER BY id"),
                    &args,
                )
                .await
                .map_err(|e| pg_err("read ferry_dlq", e))?
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        let pause = rate
            .filter(|r| *r > 0.0)
            .map(|r| std::time::Duration::from_secs_f64(1.0 / r));
        let mut report = ReplayReport::default();
        for id in ids {
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
            let row = self
                .client()
                .await?
                .query_opt(
                    "SELECT event, superseded_at IS NOT NULL, stage, coalesce(error_code, '')
                       FROM public.ferry_dlq WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(|e| pg_err("read ferry_dlq", e))?;
            // Gone meanwhile (another replay or a purge).
            let Some(row) = row else { continue };
            let superseded: bool = row.get(1);
            if superseded {
                if !dry_run {
                    self.client()
                        .await?
                        .execute("DELETE FROM public.ferry_dlq WHERE id = $1", &[&id])
                        .await
                        .map_err(|e| pg_err("remove from ferry_dlq", e))?;
                }
                report.superseded += 1;
                continue;
            }
            let event: String = row.get(0);
            let ev = ferry_pipeline::dlq::decode_event(event.as_bytes())?;
            // A mapped table's change goes through the current mapping
            // again: the fix may have been to the mapping.
            let mut batch = Batch::default();
            let mut refused = None;
            // Refused by the mapping: the record is the source change. Any
            // other record (a target constraint, a missing reference) is
            // the mapped row itself.
            let stage: String = row.get(2);
            let code: String = row.get(3);
            let is_source_change =
                stage == Stage::Transform.as_str() && code != "missing_reference";
            let mapped = transformer.filter(|_| is_source_change);
            match mapped.and_then(|t| t.apply(&ev)) {
                None => batch.push(ev),
                Some(Ok(outputs)) => {
                    for o in outputs {
                        match o {
                            ferry_pipeline::transform::Output::Change(c) => batch.push(c),
                            ferry_pipeline::transform::Output::Prune {
                                table,
                                parent_key,
                                keep_below,
                            } => batch.prune(&table, parent_key, keep_below),
                        }
                    }
                }
                Some(Err(r)) => {
                    let mut e =
                        PipelineError::new(ErrorClass::Permanent, Stage::Transform, r.message);
                    e.code = Some(r.rule);
                    refused = Some(e);
                }
            }
            let prepared = params::prepare(batch);
            if refused.is_none() {
                self.ensure_tables(&prepared.batch).await?;
            }
            let target_ids = self.target_ids(&prepared.batch);
            let mut statements = std::mem::take(&mut self.statements);
            let tables = std::mem::take(&mut self.tables);
            let attempt = async {
                if let Some(e) = refused {
                    return Err(e);
                }
                let client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| pg_err("begin", e))?;
                // Checked again under a lock: a newer change of the row may
                // have landed (and superseded the record) since it was read;
                // applying it now would move the row back.
                let current = tx
                    .query_opt(
                        "SELECT superseded_at IS NULL FROM public.ferry_dlq WHERE id = $1 FOR UPDATE",
                        &[&id],
                    )
                    .await
                    .map_err(|e| pg_err("read ferry_dlq", e))?;
                if current.map(|r| r.get::<_, bool>(0)) != Some(true) {
                    return Ok(false);
                }
                apply_tables(
                    &tx,
                    &mut statements,
                    &tables,
                    &prepared,
                    &target_ids,
                    &pipeline,
                    false,
                    &Default::default(),
                    &id_map::requests(&prepared.batch, &Default::default()),
                )
                .await?;
                if dry_run {
                    tx.rollback().await.map_err(|e| pg_err("rollback", e))?;
                } else {
                    tx.execute("DELETE FROM public.ferry_dlq WHERE id = $1", &[&id])
                        .await
                        .map_err(|e| pg_err("remove from ferry_dlq", e))?;
                    tx.commit().await.map_err(|e| pg_err("commit", e))?;
                }
                Ok::<bool, PipelineError>(true)
            }
            .await;
            self.statements = statements;
            self.tables = tables;
            match attempt {
                Ok(true) => report.applied += 1,
                // Superseded meanwhile: left to the next replay (which drops
                // it) rather than applied over the newer change.
                Ok(false) => report.superseded += 1,
                Err(e) if e.class == ErrorClass::Permanent => {
                    report.failed += 1;
                    if !dry_run {
                        let err = ferry_pipeline::dlq::RecordError::of(&e);
                        self.client()
                            .await?
                            .execute(
                                "UPDATE public.ferry_dlq
                                    SET attempts = attempts + 1, last_failed_at = now(),
                                        error_class = $2, error_code = $3, error_message = $4, stage = $5
                                  WHERE id = $1",
                                &[&id, &err.class, &err.code, &err.message, &err.stage],
                            )
                            .await
                            .map_err(|e| pg_err("update ferry_dlq", e))?;
                    }
                }
                Err(e) => {
                    if e.disposition() == ferry_pipeline::error::Disposition::Retry {
                        self.client = None;
                        self.statements.clear();
                    }
                    return Err(e);
                }
            }
        }
        let depth = dlq::depth(self.client().await?, &pipeline).await?;
        metrics().dlq_depth.set(depth);
        Ok(report)
    }
}
