//! The PostgreSQL sink: [`PostgresSink`] and its [`Sink`], [`CheckpointStore`]
//! and [`BusOffsets`] implementations.
//!
//! Applies each [`Batch`] in one transaction with multi-row statements built
//! on `unnest` of text arrays ([`crate::statement`]): `INSERT … ON CONFLICT
//! (pk) DO UPDATE` for upserts, `DELETE … USING unnest(…)` for deletes,
//! `UPDATE … FROM unnest(…)` for updates that left TOAST values untouched.
//! Every value travels as PostgreSQL text and is cast to the target column's
//! own type, which is exact for every type (the same path pg_dump relies
//! on). The pipeline's checkpoint is written in the same transaction
//! ([`crate::checkpoint`]), so the effect of a replay is exactly-once.

use std::collections::HashMap;

use ferry_pipeline::batch::{Batch, RowChange};
use ferry_pipeline::checkpoint::{BusOffsets, Checkpoint, CheckpointStore, PartitionProgress};
use ferry_pipeline::config::PostgresSinkConfig;
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use ferry_pipeline::event::TableId;
use ferry_pipeline::metrics::metrics;
use ferry_pipeline::sink::Sink;
use tokio_postgres::{Client, Statement};
use tracing::{info, warn};

use crate::apply::{
    already_committed, apply_prunes_all, apply_table, apply_tables, save_position, settle_dlq,
};
use crate::error::pg_err;
use crate::id_map::IdPair;
use crate::params::PreparedBatch;
use crate::target::TargetTable;
use crate::{checkpoint, config, dlq, id_map, params, target};

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
    pub(crate) cfg: PostgresSinkConfig,
    pub(crate) pipeline: String,
    pub(crate) client: Option<Client>,
    pub(crate) tables: HashMap<TableId, TargetTable>,
    pub(crate) statements: HashMap<String, Statement>,
    /// The last write failed in a way that may have hidden a successful
    /// commit (the connection broke around COMMIT): check the checkpoint
    /// before writing the batch again.
    pub(crate) maybe_committed: bool,
    /// Tables with parked records: a batch touching them marks the parked
    /// records of its rows superseded.
    pub(crate) dlq_tables: std::collections::HashSet<TableId>,
    /// Id-map sequences known to exist (bigint namespaces).
    pub(crate) sequences: std::collections::HashSet<String>,
    /// Legacy ids known to be mapped.
    pub(crate) known_ids: id_map::Known,
    /// When the dead-letter depth was last read from `ferry_dlq`.
    pub(crate) dlq_depth_read: Option<std::time::Instant>,
    /// The database holding the forward pipeline's `ferry_id_map`
    /// (`sink.id_map_url`), for inverse id maps.
    pub(crate) map_client: Option<Client>,
}

/// How often a running sink re-reads the dead-letter depth: replays and
/// purges made by another `ferry dlq` process change it behind our back.
const DLQ_DEPTH_REREAD: std::time::Duration = std::time::Duration::from_secs(15);

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
            dlq_depth_read: None,
            map_client: None,
        }
    }

    /// The legacy ids of the new ids the batch writes through inverse id
    /// maps, allocated where missing (see [`crate::inverse`]).
    pub(crate) async fn inverse_pairs(
        &mut self,
        prepared: &PreparedBatch,
    ) -> Result<Vec<crate::inverse::Pair>, PipelineError> {
        let wanted = crate::inverse::wanted(
            std::iter::once(&prepared.batch).chain(prepared.actions.iter().map(|a| &a.batch)),
        );
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        if self.map_client.as_ref().is_some_and(|c| c.is_closed()) {
            self.map_client = None;
        }
        if self.map_client.is_none() {
            if let Some(info) = config::id_map_conn(&self.cfg)? {
                self.map_client = Some(info.connect(Stage::Sink, "id map").await?);
            }
        }
        self.client().await?;
        let target = self.client.as_ref().expect("connected above");
        let map = self.map_client.as_ref().unwrap_or(target);
        crate::inverse::resolve(map, target, &wanted).await
    }

    /// The target table a source table is written to.
    pub fn target_id(&self, source: &TableId) -> TableId {
        config::target_id(&self.cfg, source)
    }

    /// The target table of each of the batch's tables, in batch order.
    pub(crate) fn target_ids(&self, batch: &Batch) -> Vec<TableId> {
        batch
            .tables
            .iter()
            .map(|tb| self.target_id(&tb.schema.id))
            .collect()
    }

    pub(crate) async fn client(&mut self) -> Result<&mut Client, PipelineError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let client = config::target_conn(&self.cfg)?
                .connect(Stage::Sink, "target")
                .await?;
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
            // Before any write of the session: every commit carries it.
            crate::origin::attach(&client, &self.pipeline).await?;
            self.dlq_tables = dlq::tables_with_records(&client, &self.pipeline).await?;
            metrics().set_dlq_depth(&dlq::depth(&client, &self.pipeline).await?);
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
    pub(crate) async fn ensure_tables(&mut self, batch: &Batch) -> Result<(), PipelineError> {
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
        // A legacy id that cannot be made (no sequence named) leaves its
        // rows without one: they are parked below, the others land.
        let pairs = match self.inverse_pairs(prepared).await {
            Err(e) if e.class == ErrorClass::Permanent => {
                warn!(error = %e, "legacy ids could not be allocated");
                Vec::new()
            }
            other => other?,
        };
        // The batch was refused: the target's DDL may have changed since
        // its tables were described (a column widened, a NOT NULL dropped).
        // Describe them again, so that what is parked is refused by the
        // target as it is now, with today's reasons.
        self.tables.clear();
        self.statements.clear();
        self.ensure_tables(batch).await?;
        for a in &prepared.actions {
            self.ensure_tables(&a.batch).await?;
        }
        let pipeline = self.pipeline.clone();
        let mut statements = std::mem::take(&mut self.statements);
        let tables = std::mem::take(&mut self.tables);
        let mut parked_tables = Vec::new();
        let recheck = self.maybe_committed;
        let target_ids = self.target_ids(batch);
        let self_dlq_tables = self.dlq_tables.clone();
        let actions = self.actions(prepared);
        let known = std::mem::take(&mut self.known_ids);
        let result = async {
            let client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| pg_err("begin", e))?;
            if already_committed(&tx, &mut statements, &pipeline, batch, recheck).await? {
                return Ok(Vec::new());
            }
            if !pairs.is_empty() {
                crate::inverse::stage(&tx, &pairs).await?;
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
            arrive_all(&tx, &mut statements, &tables, prepared, &actions, &pipeline, false, &self_dlq_tables).await?;
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
            metrics().set_dlq_depth(&depth);
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
        let pairs = self.inverse_pairs(prepared).await?;
        self.ensure_tables(batch).await?;
        for a in &prepared.actions {
            self.ensure_tables(&a.batch).await?;
        }
        let actions = self.actions(prepared);
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
                if !pairs.is_empty() {
                    crate::inverse::stage(&tx, &pairs).await?;
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
                arrive_all(
                    &tx,
                    &mut statements,
                    &tables,
                    prepared,
                    &actions,
                    &pipeline,
                    one_by_one,
                    &dlq_tables,
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
                    metrics().set_dlq_depth(&d);
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

/// A barrier action's target tables and id-map requests.
pub(crate) struct ActionPlan {
    target_ids: Vec<TableId>,
    req: id_map::Requests,
}

impl PostgresSink {
    fn actions(&self, prepared: &PreparedBatch) -> Vec<ActionPlan> {
        prepared
            .actions
            .iter()
            .map(|a| ActionPlan {
                target_ids: self.target_ids(&a.batch),
                req: id_map::requests(&a.batch, &self.known_ids),
            })
            .collect()
    }
}

/// The batch's barrier arrivals, after its rows: each completing one
/// applies its action here, in the same transaction (see [`barrier`]).
#[allow(clippy::too_many_arguments)]
async fn arrive_all(
    tx: &tokio_postgres::Transaction<'_>,
    statements: &mut HashMap<String, tokio_postgres::Statement>,
    tables: &HashMap<TableId, crate::target::TargetTable>,
    prepared: &PreparedBatch,
    plans: &[ActionPlan],
    pipeline: &str,
    one_by_one: bool,
    dlq_tables: &std::collections::HashSet<TableId>,
) -> Result<(), PipelineError> {
    for ((a, action), plan) in prepared
        .batch
        .arrivals
        .iter()
        .zip(&prepared.actions)
        .zip(plans)
    {
        if crate::barrier::arrive(tx, pipeline, a).await? {
            apply_tables(
                tx,
                statements,
                tables,
                action,
                &plan.target_ids,
                pipeline,
                one_by_one,
                dlq_tables,
                &plan.req,
            )
            .await?;
        }
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

    async fn barriers_done(
        &mut self,
        barriers: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>, PipelineError> {
        let pipeline = self.pipeline.clone();
        let client = self.client().await?;
        crate::barrier::done(client, &pipeline, barriers).await
    }
}

impl Sink for PostgresSink {
    const KIND: &'static str = "postgres";

    type Prepared = PreparedBatch;

    fn prepare(batch: Batch) -> PreparedBatch {
        params::prepare(batch)
    }

    async fn write_batch(&mut self, batch: &PreparedBatch) -> Result<(), PipelineError> {
        self.write(batch).await?;
        if self
            .dlq_depth_read
            .is_none_or(|t| t.elapsed() >= DLQ_DEPTH_REREAD)
        {
            // Only a gauge: a failed read must not fail a committed batch.
            let pipeline = self.pipeline.clone();
            if let Ok(client) = self.client().await {
                if let Ok(depth) = dlq::depth(client, &pipeline).await {
                    metrics().set_dlq_depth(&depth);
                }
            }
            self.dlq_depth_read = Some(std::time::Instant::now());
        }
        Ok(())
    }

    async fn write_isolating(
        &mut self,
        batch: &PreparedBatch,
        _cause: &PipelineError,
    ) -> Result<Vec<ferry_pipeline::dlq::Parked>, PipelineError> {
        self.write_record_by_record(batch).await
    }
}

impl PostgresSink {
    /// The mapped target tables as the catalog declares them, for
    /// compiling a mapping (see [`target::mapping_catalog`]).
    pub async fn mapping_catalog(
        &mut self,
        ids: &[TableId],
    ) -> Result<HashMap<TableId, ferry_pipeline::transform::TargetTable>, PipelineError> {
        let client = self.client().await?;
        target::mapping_catalog(client, ids).await
    }

    /// `ferry kafka reset`: forgets the pipeline's Kafka-bus progress in
    /// the target (see [`checkpoint::reset_bus`]).
    pub async fn reset_bus(&mut self, force: bool) -> Result<checkpoint::BusReset, PipelineError> {
        let pipeline = self.pipeline.clone();
        let client = self.client().await?;
        checkpoint::reset_bus(client, &pipeline, force).await
    }

    /// `ferry idmap lookup`: the mappings of `namespace` where either side
    /// is `id`.
    pub async fn id_map_lookup(
        &mut self,
        namespace: &str,
        id: &str,
    ) -> Result<Vec<IdPair>, PipelineError> {
        let client = self.client().await?;
        id_map::lookup(client, namespace, id).await
    }

    /// The id-map namespaces that hold ids.
    pub async fn id_map_namespaces(&mut self) -> Result<Vec<String>, PipelineError> {
        let client = self.client().await?;
        id_map::namespaces(client).await
    }

    /// `ferry idmap export`: `namespace`'s map as CSV into `out`.
    pub async fn id_map_export(
        &mut self,
        namespace: &str,
        out: &mut (impl std::io::Write + ?Sized),
    ) -> Result<u64, PipelineError> {
        let client = self.client().await?;
        id_map::export(client, namespace, out).await
    }
}
