//! The MongoDB sink: [`MongoSink`] and its [`Sink`], [`CheckpointStore`]
//! and [`BusOffsets`] implementations.
//!
//! A batch is one MongoDB transaction (a replica set is required, as for
//! any MongoDB transaction): the collections a truncate or snapshot start
//! empties, the rows' `update`/`delete` commands (ordered, one command per
//! run of statements of one kind and collection, see [`crate::apply`]),
//! the dead letters, and last the checkpoint and the loop marker in
//! `ferry_checkpoints`. A crash before the commit leaves nothing; a replay
//! after it is skipped by its position, and would write the same last
//! states anyway (`$set` of the row's values, delete by `_id`).

use std::collections::{HashMap, HashSet};

use bson::{doc, Bson, Document};
use ferry_pipeline::batch::Batch;
use ferry_pipeline::checkpoint::{
    BusOffsets, Checkpoint, CheckpointStore, PartitionProgress, STALE_OFFSETS,
};
use ferry_pipeline::config::MongoSinkConfig;
use ferry_pipeline::dlq::Parked;
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use ferry_pipeline::sink::Sink;
use mongodb::options::WriteConcern;
use mongodb::{Client, ClientSession, Database};
use tracing::warn;

use crate::apply::{self, Plan};
use crate::checkpoint::{self, CHECKPOINTS};
use crate::config;
use crate::dlq::{self, DEAD_LETTERS};
use crate::error::{mongo_err, write_error_class};

/// A batch with its plan, made while the previous batch is written.
pub struct Prepared {
    pub batch: Batch,
    plan: Result<Plan, PipelineError>,
}

/// Why an attempt failed: one row the server refused, or anything else.
pub(crate) enum Failure {
    Row((usize, usize), PipelineError),
    Other(PipelineError),
}

impl From<PipelineError> for Failure {
    fn from(e: PipelineError) -> Self {
        Failure::Other(e)
    }
}

/// The MongoDB sink.
pub struct MongoSink {
    cfg: MongoSinkConfig,
    pipeline: String,
    client: Option<Client>,
    /// Tables (`schema.table`) with parked records, whose records a later
    /// change of the same row supersedes.
    dlq_tables: HashSet<String>,
    dlq_loaded: bool,
    /// `sink.id_map_url`'s connection (a reverse pipeline's id map).
    map: Option<tokio_postgres::Client>,
}

impl MongoSink {
    pub fn new(cfg: MongoSinkConfig, pipeline: impl Into<String>) -> Self {
        Self {
            cfg,
            pipeline: pipeline.into(),
            client: None,
            dlq_tables: HashSet::new(),
            dlq_loaded: false,
            map: None,
        }
    }

    /// A reverse pipeline's batch: the legacy id of every new id its
    /// inverse id columns carry (see [`crate::inverse`]); `None` for a
    /// batch without such columns.
    async fn inverse_pairs(
        &mut self,
        batch: &Batch,
    ) -> Result<Option<std::sync::Arc<crate::inverse::Pairs>>, PipelineError> {
        if !batch
            .tables
            .iter()
            .any(|t| ferry_pipeline::batch::has_inverse(&t.schema))
        {
            return Ok(None);
        }
        let Some(url) = &self.cfg.id_map_url else {
            return Err(PipelineError::fatal(
                Stage::Sink,
                "sink.id_map_url: the mapping translates ids back through ferry_id_map; name the PostgreSQL database that holds it (ferry rollback init writes it)",
            ));
        };
        if self.map.as_ref().is_some_and(|c| c.is_closed()) {
            self.map = None;
        }
        if self.map.is_none() {
            let info = ferry_pgconn::PgConnInfo::parse(url.expose())
                .map_err(|e| PipelineError::fatal(Stage::Sink, format!("sink.id_map_url: {e}")))?;
            self.map = Some(info.connect(Stage::Sink, "id map").await?);
        }
        let map = self.map.as_ref().expect("connected above");
        let wanted = ferry_pipeline::batch::wanted([batch]);
        Ok(Some(std::sync::Arc::new(
            crate::inverse::resolve(map, &wanted).await?,
        )))
    }

    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    pub fn config(&self) -> &MongoSinkConfig {
        &self.cfg
    }

    /// The client (made on first use; the driver reconnects by itself).
    pub async fn client(&mut self) -> Result<Client, PipelineError> {
        if self.client.is_none() {
            self.client = Some(config::connect(&self.cfg).await?);
        }
        Ok(self.client.clone().expect("just made"))
    }

    /// The sink's database.
    pub async fn database(&mut self) -> Result<Database, PipelineError> {
        let db = self.cfg.database.clone();
        Ok(self.client().await?.database(&db))
    }

    async fn stored(&mut self) -> Result<checkpoint::Stored, PipelineError> {
        let db = self.database().await?;
        let docs = find_all(&db, CHECKPOINTS, doc! {"pipeline": &self.pipeline}, None)
            .await
            .map_err(|e| mongo_err("read ferry_checkpoints", e))?;
        checkpoint::parse(&self.pipeline, &docs)
    }

    async fn load_dlq_tables(&mut self) -> Result<(), PipelineError> {
        if self.dlq_loaded {
            return Ok(());
        }
        let db = self.database().await?;
        let r = db
            .run_command(doc! {"distinct": DEAD_LETTERS, "key": "table", "query": {"pipeline": &self.pipeline}})
            .await
            .map_err(|e| mongo_err("read ferry_dead_letters", e))?;
        if let Ok(values) = r.get_array("values") {
            self.dlq_tables
                .extend(values.iter().filter_map(|v| v.as_str().map(str::to_string)));
        }
        self.dlq_loaded = true;
        Ok(())
    }

    /// One transaction: the plan's writes, its dead letters, the
    /// checkpoint. Nothing of it stays on an error.
    async fn attempt(&mut self, batch: &Batch, plan: &Plan) -> Result<(), Failure> {
        self.load_dlq_tables().await?;
        let client = self.client().await?;
        let db = client.database(&self.cfg.database);
        let mut session = client
            .start_session()
            .await
            .map_err(|e| mongo_err("start a MongoDB session", e))?;
        session
            .start_transaction()
            // `Ok` means durable: acknowledged by a majority, so that a
            // failover cannot roll the batch (and its checkpoint) back.
            .write_concern(WriteConcern::majority())
            .await
            .map_err(|e| mongo_err("start a MongoDB transaction", e))?;
        let result = self.body(&db, &mut session, batch, plan).await;
        match result {
            Ok(()) => session
                .commit_transaction()
                .await
                .map_err(|e| Failure::Other(mongo_err("commit the batch's transaction", e))),
            Err(f) => {
                // The server may have aborted it already (a write error
                // inside a transaction does): nothing to add then.
                let _ = session.abort_transaction().await;
                Err(f)
            }
        }
    }

    async fn body(
        &self,
        db: &Database,
        session: &mut ClientSession,
        batch: &Batch,
        plan: &Plan,
    ) -> Result<(), Failure> {
        if !batch.bus.is_empty() {
            self.refuse_stale(db, session, batch).await?;
        }
        for collection in &plan.truncate {
            command(
                db,
                session,
                doc! {"delete": collection, "deletes": [{"q": {}, "limit": 0}]},
                "empty a collection",
            )
            .await?;
        }
        for c in &plan.commands {
            let reply = command(db, session, c.document(), "write a batch").await?;
            if let Ok(errors) = reply.get_array("writeErrors") {
                if let Some(Bson::Document(first)) = errors.first() {
                    let index = first.get_i32("index").unwrap_or(0).max(0) as usize;
                    let code = first.get_i32("code").unwrap_or(0);
                    let message = first.get_str("errmsg").unwrap_or("write error");
                    let op = c.ops.get(index).unwrap_or(&c.ops[0]);
                    let e = PipelineError::new(
                        write_error_class(code),
                        Stage::Sink,
                        format!("{}: {message}", c.collection),
                    )
                    .with_code(code.to_string());
                    return Err(Failure::Row(op.row, e));
                }
            }
            if reply.get("writeConcernError").is_some() {
                return Err(Failure::Other(PipelineError::transient(
                    Stage::Sink,
                    format!("write concern error writing {}", c.collection),
                )));
            }
        }
        // Dead letters, and the records later changes supersede.
        let mut dlq_statements: Vec<Bson> = plan
            .parked
            .iter()
            .map(|p| Bson::Document(dlq::record_statement(&self.pipeline, p)))
            .collect();
        for (table, keys) in &plan.written_keys {
            if self.dlq_tables.contains(&table.to_string()) {
                dlq_statements.push(Bson::Document(dlq::supersede_statement(
                    &self.pipeline,
                    &table.to_string(),
                    keys,
                )));
            }
        }
        if !dlq_statements.is_empty() {
            command(
                db,
                session,
                doc! {"update": DEAD_LETTERS, "updates": dlq_statements, "ordered": true},
                "write ferry_dead_letters",
            )
            .await?;
        }
        let lsid = match session.id().get("id") {
            Some(Bson::Binary(b)) => Some(b.bytes.clone()),
            _ => None,
        };
        let statements: Vec<Bson> = checkpoint::statements(&self.pipeline, batch, lsid.as_deref())
            .into_iter()
            .map(Bson::Document)
            .collect();
        command(
            db,
            session,
            doc! {"update": CHECKPOINTS, "updates": statements, "ordered": true},
            "write ferry_checkpoints",
        )
        .await?;
        Ok(())
    }

    /// A Kafka batch whose first offset of a partition is below the stored
    /// next offset was applied already: refused with [`STALE_OFFSETS`].
    async fn refuse_stale(
        &self,
        db: &Database,
        session: &mut ClientSession,
        batch: &Batch,
    ) -> Result<(), Failure> {
        let ids: Vec<String> = batch
            .bus
            .keys()
            .map(|(t, p)| checkpoint::bus_id(&self.pipeline, t, *p))
            .collect();
        let docs = find_all(db, CHECKPOINTS, doc! {"_id": {"$in": ids}}, Some(session))
            .await
            .map_err(|e| mongo_err("read ferry_checkpoints", e))?;
        let stored = checkpoint::parse(&self.pipeline, &docs)?;
        for ((topic, partition), r) in &batch.bus {
            if let Some(p) = stored.bus.get(&(topic.to_string(), *partition)) {
                if r.first < p.next_offset {
                    return Err(Failure::Other(
                        PipelineError::fatal(
                            Stage::Sink,
                            format!(
                                "offsets {}..{} of {topic}[{partition}] were already applied (another worker, or an earlier attempt)",
                                r.first, r.next
                            ),
                        )
                        .with_code(STALE_OFFSETS),
                    ));
                }
            }
        }
        Ok(())
    }

    fn note_parked(&mut self, parked: &[Parked]) {
        self.dlq_tables
            .extend(parked.iter().map(|p| p.table.to_string()));
    }

    async fn isolate(&mut self, batch: &Batch) -> Result<Vec<Parked>, PipelineError> {
        let pairs = self.inverse_pairs(batch).await?;
        let mut excluded = HashSet::new();
        let mut extra: Vec<Parked> = Vec::new();
        loop {
            let mut plan = apply::plan(batch, &self.pipeline, &excluded, pairs.as_ref())?;
            plan.parked.extend(extra.iter().cloned());
            match self.attempt(batch, &plan).await {
                Ok(()) => {
                    self.note_parked(&plan.parked);
                    return Ok(plan.parked);
                }
                Err(Failure::Row((ti, i), e)) if e.class == ErrorClass::Permanent => {
                    warn!(table = %batch.tables[ti].schema.id, error = %e, "record parked in the dead-letter queue");
                    extra.push(apply::park(batch, ti, i, &self.pipeline, &e)?);
                    excluded.insert((ti, i));
                }
                Err(Failure::Row(_, e) | Failure::Other(e)) => return Err(e),
            }
        }
    }

    /// Applies `batch` without a checkpoint, deleting the dead letters
    /// `done` in the same transaction (`ferry dlq replay`).
    pub(crate) async fn apply_replay(
        &mut self,
        batch: &Batch,
        done: &[String],
    ) -> Result<(), PipelineError> {
        let pairs = self.inverse_pairs(batch).await?;
        let plan = apply::plan(batch, &self.pipeline, &HashSet::new(), pairs.as_ref())?;
        if let Some(p) = plan.parked.first() {
            return Err(PipelineError::new(
                ErrorClass::Permanent,
                Stage::Sink,
                p.record.error.message.clone(),
            ));
        }
        let client = self.client().await?;
        let db = client.database(&self.cfg.database);
        let mut session = client
            .start_session()
            .await
            .map_err(|e| mongo_err("start a MongoDB session", e))?;
        session
            .start_transaction()
            // `Ok` means durable: acknowledged by a majority, so that a
            // failover cannot roll the batch (and its checkpoint) back.
            .write_concern(WriteConcern::majority())
            .await
            .map_err(|e| mongo_err("start a MongoDB transaction", e))?;
        let result: Result<(), Failure> = async {
            for c in &plan.commands {
                let reply = command(&db, &mut session, c.document(), "replay a record").await?;
                if let Ok(errors) = reply.get_array("writeErrors") {
                    if let Some(Bson::Document(first)) = errors.first() {
                        let code = first.get_i32("code").unwrap_or(0);
                        return Err(Failure::Other(
                            PipelineError::new(
                                write_error_class(code),
                                Stage::Sink,
                                first.get_str("errmsg").unwrap_or("write error").to_string(),
                            )
                            .with_code(code.to_string()),
                        ));
                    }
                }
            }
            command(
                &db,
                &mut session,
                doc! {"delete": DEAD_LETTERS, "deletes": [{"q": {"_id": {"$in": done}}, "limit": 0}]},
                "remove replayed dead letters",
            )
            .await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => session
                .commit_transaction()
                .await
                .map_err(|e| mongo_err("commit the replay", e)),
            Err(Failure::Row(_, e) | Failure::Other(e)) => {
                let _ = session.abort_transaction().await;
                Err(e)
            }
        }
    }
}

/// Runs one command in the session's transaction.
async fn command(
    db: &Database,
    session: &mut ClientSession,
    cmd: Document,
    what: &str,
) -> Result<Document, PipelineError> {
    db.run_command(cmd)
        .session(&mut *session)
        .await
        .map_err(|e| mongo_err(what, e))
}

/// Every document of `collection` matching `filter`, in one reply (the
/// collections read this way hold a handful of documents per pipeline).
pub(crate) async fn find_all(
    db: &Database,
    collection: &str,
    filter: Document,
    session: Option<&mut ClientSession>,
) -> mongodb::error::Result<Vec<Document>> {
    let cmd =
        doc! {"find": collection, "filter": filter, "batchSize": 100_000, "singleBatch": true};
    let reply = match session {
        Some(s) => db.run_command(cmd).session(s).await?,
        None => db.run_command(cmd).await?,
    };
    Ok(reply
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get_array("firstBatch").ok())
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_document().cloned())
        .collect())
}

impl CheckpointStore for MongoSink {
    async fn load(&mut self) -> Result<Checkpoint, PipelineError> {
        Ok(self.stored().await?.checkpoint)
    }
}

impl BusOffsets for MongoSink {
    async fn load_bus_offsets(
        &mut self,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), PartitionProgress>, PipelineError> {
        let stored = self.stored().await?;
        Ok(partitions
            .iter()
            .filter_map(|k| stored.bus.get(k).map(|p| (k.clone(), *p)))
            .collect())
    }
}

impl Sink for MongoSink {
    const KIND: &'static str = "mongodb";

    type Prepared = Prepared;

    fn prepare(batch: Batch) -> Prepared {
        // The pipeline name only labels parked records' envelopes; the
        // write re-plans with the real one when a record is parked.
        let plan = apply::plan(&batch, "", &HashSet::new(), None);
        Prepared { batch, plan }
    }

    async fn write_batch(&mut self, prepared: &Prepared) -> Result<(), PipelineError> {
        let replanned;
        let pairs = self.inverse_pairs(&prepared.batch).await?;
        let plan = match &prepared.plan {
            // Ids translated back: planned again with the legacy ids.
            _ if pairs.is_some() => {
                replanned = apply::plan(
                    &prepared.batch,
                    &self.pipeline,
                    &HashSet::new(),
                    pairs.as_ref(),
                )?;
                &replanned
            }
            Ok(p) if p.parked.len() == prepared.batch.parked.len() => p,
            // Records to park: plan again, naming the pipeline in them.
            Ok(_) => {
                replanned = apply::plan(&prepared.batch, &self.pipeline, &HashSet::new(), None)?;
                &replanned
            }
            Err(e) => {
                let again = PipelineError::new(e.class, e.stage, e.message.clone());
                return Err(match &e.code {
                    Some(c) => again.with_code(c.clone()),
                    None => again,
                });
            }
        };
        match self.attempt(&prepared.batch, plan).await {
            Ok(()) => {
                self.note_parked(&plan.parked);
                Ok(())
            }
            Err(Failure::Row(_, e) | Failure::Other(e)) => Err(e),
        }
    }

    async fn write_isolating(
        &mut self,
        prepared: &Prepared,
        _cause: &PipelineError,
    ) -> Result<Vec<Parked>, PipelineError> {
        self.isolate(&prepared.batch).await
    }
}
