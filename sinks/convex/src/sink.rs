//! The Convex sink: [`ConvexSink`] and its [`Sink`], [`CheckpointStore`]
//! and [`BusOffsets`] implementations.
//!
//! A batch is one call of the module's internal mutation `ferry:apply`
//! (more when it would not fit one Convex transaction, see
//! [`crate::apply`]); the call writes the rows and the checkpoint together.
//! Every call carries this sink's writer id and a call id that stays the
//! same when the call is re-sent, so that a call whose outcome was unknown
//! (timeout, 5xx, dropped connection) changes nothing the second time.

use std::collections::{HashMap, HashSet};

use ferry_pipeline::batch::Batch;
use ferry_pipeline::checkpoint::{BusOffsets, Checkpoint, CheckpointStore, PartitionProgress};
use ferry_pipeline::config::ConvexSinkConfig;
use ferry_pipeline::dlq::Parked;
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use ferry_pipeline::sink::Sink;
use serde_json::{json, Value as Json};
use tracing::warn;

use crate::apply::{self, Context, Plan};
use crate::checkpoint::{self, Stored};
use crate::client::{Client, Kind};
use crate::config;
use crate::id_map::IdPair;

/// A batch with the id its calls are named after.
pub struct Prepared {
    id: uuid::Uuid,
    pub batch: Batch,
}

/// The Convex sink.
pub struct ConvexSink {
    cfg: ConvexSinkConfig,
    pipeline: String,
    client: Option<Client>,
    /// This instance's writer id (see the module's `ferry_calls`).
    writer: String,
    /// Tables (Convex names) with parked records.
    dlq_tables: HashSet<String>,
    dlq_loaded: bool,
    /// Calls of the batch `.0` already committed (a retry resumes there).
    progress: Option<(uuid::Uuid, bool, usize)>,
}

impl ConvexSink {
    pub fn new(cfg: ConvexSinkConfig, pipeline: impl Into<String>) -> Self {
        Self {
            cfg,
            pipeline: pipeline.into(),
            client: None,
            writer: uuid::Uuid::now_v7().to_string(),
            dlq_tables: HashSet::new(),
            dlq_loaded: false,
            progress: None,
        }
    }

    fn client(&mut self) -> Result<&Client, PipelineError> {
        if self.client.is_none() {
            self.client = Some(Client::new(&self.cfg.url, self.cfg.deploy_key.clone())?);
        }
        Ok(self.client.as_ref().expect("just made"))
    }

    async fn stored(&mut self) -> Result<Stored, PipelineError> {
        let pipeline = self.pipeline.clone();
        let v = self
            .client()?
            .call(
                Kind::Query,
                "ferry:checkpointOf",
                &json!({ "pipeline": pipeline }),
            )
            .await?;
        let stored = checkpoint::parse(&v)?;
        self.dlq_tables.clone_from(&stored.dlq_tables);
        self.dlq_loaded = true;
        Ok(stored)
    }

    fn plan(&self, batch: &Batch) -> Result<Plan, PipelineError> {
        apply::plan(
            batch,
            &Context {
                pipeline: &self.pipeline,
                opts: config::value_options(&self.cfg),
                table_order: &self.cfg.table_order,
            },
        )
    }

    /// One `ferry:apply` call.
    #[allow(clippy::too_many_arguments)]
    async fn apply_call(
        &mut self,
        call: String,
        truncate: &[String],
        rows: Vec<&Json>,
        bus_first: &[Json],
        parked: &[Json],
        checkpoint: Option<&Json>,
    ) -> Result<(), PipelineError> {
        let args = json!({
            "pipeline": self.pipeline,
            "writer": self.writer,
            "call": call,
            "truncate": truncate,
            "rows": rows,
            "busFirst": bus_first,
            "dlqTables": self.dlq_tables.iter().collect::<Vec<_>>(),
            "parked": parked,
            "checkpoint": checkpoint,
        });
        self.client()?
            .call(Kind::Mutation, "ferry:apply", &args)
            .await
            .map(|_| ())
    }

    fn parked_json(batch: &Batch, parked: &[Parked], from_codec: &[(usize, usize)]) -> Vec<Json> {
        let transform = parked.len() - from_codec.len();
        parked
            .iter()
            .enumerate()
            .map(|(n, p)| {
                let op = match n.checked_sub(transform) {
                    Some(k) => apply::op_of(batch, from_codec[k].0, from_codec[k].1),
                    None => "change",
                };
                apply::parked_json(p, op)
            })
            .collect()
    }

    async fn write(&mut self, prepared: &Prepared) -> Result<(), PipelineError> {
        if !self.dlq_loaded {
            self.stored().await?;
        }
        let batch = &prepared.batch;
        let plan = self.plan(batch)?;
        let parked = apply::parked_of(&plan);
        let parked_json = Self::parked_json(batch, &plan.parked, &parked);
        let chunks = apply::chunks(&plan.rows, self.cfg.rows_per_call);
        let start = match self.progress {
            Some((id, false, done)) if id == prepared.id => done,
            _ => 0,
        };
        let last = chunks.len() - 1;
        for (ci, range) in chunks.iter().enumerate().skip(start) {
            let rows: Vec<&Json> = plan.rows[range.clone()].iter().map(|r| &r.json).collect();
            let result = self
                .apply_call(
                    format!("{}-{ci}", prepared.id),
                    if ci == 0 { &plan.truncate } else { &[] },
                    rows,
                    &plan.bus_first,
                    if ci == last { &parked_json } else { &[] },
                    (ci == last).then_some(&plan.checkpoint),
                )
                .await;
            result?;
            self.progress = Some((prepared.id, false, ci + 1));
        }
        self.progress = None;
        self.dlq_tables
            .extend(plan.parked.iter().map(|p| p.table.name.clone()));
        Ok(())
    }

    /// The batch one row per call: a row the module refuses is parked, and
    /// the last call records the parked records and the checkpoint.
    async fn write_isolating_rows(
        &mut self,
        prepared: &Prepared,
    ) -> Result<Vec<Parked>, PipelineError> {
        if !self.dlq_loaded {
            self.stored().await?;
        }
        let batch = &prepared.batch;
        let mut plan = self.plan(batch)?;
        let mut from_codec = apply::parked_of(&plan);
        // Rows of one source row (a rekey is a delete and an upsert) go
        // together.
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        for (n, r) in plan.rows.iter().enumerate() {
            match groups.last_mut() {
                Some(g)
                    if plan.rows[g.start].table == r.table
                        && plan.rows[g.start].index == r.index =>
                {
                    g.end = n + 1
                }
                _ => groups.push(n..n + 1),
            }
        }
        let start = match self.progress {
            Some((id, true, done)) if id == prepared.id => done,
            _ => 0,
        };
        if start == 0 && !plan.truncate.is_empty() {
            let truncate = plan.truncate.clone();
            self.apply_call(
                format!("{}-iso-t", prepared.id),
                &truncate,
                Vec::new(),
                &plan.bus_first,
                &[],
                None,
            )
            .await?;
        }
        for (gi, g) in groups.iter().enumerate().skip(start) {
            let rows: Vec<&Json> = plan.rows[g.clone()].iter().map(|r| &r.json).collect();
            let result = self
                .apply_call(
                    format!("{}-iso-{gi}", prepared.id),
                    &[],
                    rows,
                    &plan.bus_first,
                    &[],
                    None,
                )
                .await;
            match result {
                Ok(()) => {}
                Err(e) if e.class == ErrorClass::Permanent => {
                    let (ti, i) = (plan.rows[g.start].table, plan.rows[g.start].index);
                    warn!(table = %batch.tables[ti].schema.id, error = %e, "record parked in the dead-letter queue");
                    plan.parked
                        .push(apply::park(batch, ti, i, &self.pipeline, &e)?);
                    from_codec.push((ti, i));
                }
                Err(e) => return Err(e),
            }
            self.progress = Some((prepared.id, true, gi + 1));
        }
        let parked_json = Self::parked_json(batch, &plan.parked, &from_codec);
        self.apply_call(
            format!("{}-iso-end", prepared.id),
            &[],
            Vec::new(),
            &plan.bus_first,
            &parked_json,
            Some(&plan.checkpoint),
        )
        .await?;
        self.progress = None;
        self.dlq_tables
            .extend(plan.parked.iter().map(|p| p.table.name.clone()));
        Ok(plan.parked)
    }

    /// `ferry dlq replay`: applies one parked change as it is now encoded,
    /// without touching the pipeline's checkpoint (a replay must never
    /// move it back) and without a version (the record's position is not
    /// comparable with the versions a Kafka-bus pipeline writes; a record
    /// a later change of its row superseded is not replayed, see
    /// [`ConvexSink::dlq_replay`]). `Ok(Some(e))`: refused again, for the
    /// reason `e`; `Ok(None)`: applied.
    pub(crate) async fn replay_change(
        &mut self,
        ev: ferry_pipeline::event::ChangeEvent,
        call: String,
    ) -> Result<Option<PipelineError>, PipelineError> {
        let mut batch = Batch::default();
        batch.push(ev);
        let mut plan = self.plan(&batch)?;
        if let Some(p) = plan.parked.first() {
            return Ok(Some(refusal(p)));
        }
        for r in &mut plan.rows {
            r.json["version"] = Json::Null;
        }
        let rows: Vec<&Json> = plan.rows.iter().map(|r| &r.json).collect();
        match self.apply_call(call, &[], rows, &[], &[], None).await {
            Ok(()) => Ok(None),
            Err(e) if e.class == ErrorClass::Permanent => Ok(Some(e)),
            Err(e) => Err(e),
        }
    }

    /// `ferry dlq replay --dry-run`: whether the codec would refuse the
    /// change again (`Some(reason)`); nothing is written.
    pub(crate) fn replay_check(
        &self,
        ev: ferry_pipeline::event::ChangeEvent,
    ) -> Result<Option<PipelineError>, PipelineError> {
        let mut batch = Batch::default();
        batch.push(ev);
        let plan = self.plan(&batch)?;
        Ok(plan.parked.first().map(refusal))
    }

    /// `ferry idmap lookup`: the pairs of `namespace` where either side is
    /// `id`.
    pub async fn id_map_lookup(
        &mut self,
        namespace: &str,
        id: &str,
    ) -> Result<Vec<IdPair>, PipelineError> {
        let v = self
            .client()?
            .call(
                Kind::Query,
                "ferry:idLookup",
                &json!({"namespace": namespace, "id": id}),
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(IdPair {
                    legacy: p.get("legacy")?.as_str()?.to_string(),
                    new: p.get("new")?.as_str()?.to_string(),
                })
            })
            .collect())
    }

    /// Calls a function of the deployment (for the `ferry dlq` commands).
    pub async fn call(
        &mut self,
        kind: Kind,
        path: &str,
        args: &Json,
    ) -> Result<Json, PipelineError> {
        self.client()?.call(kind, path, args).await
    }

    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }
}

impl CheckpointStore for ConvexSink {
    async fn load(&mut self) -> Result<Checkpoint, PipelineError> {
        Ok(self.stored().await?.checkpoint)
    }
}

impl BusOffsets for ConvexSink {
    async fn load_bus_offsets(
        &mut self,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), PartitionProgress>, PipelineError> {
        let stored = self.stored().await?;
        Ok(partitions
            .iter()
            .filter_map(|(t, p)| {
                stored
                    .bus
                    .get(&format!("{t}:{p}"))
                    .map(|progress| ((t.clone(), *p), *progress))
            })
            .collect())
    }
}

impl Sink for ConvexSink {
    const KIND: &'static str = "convex";

    type Prepared = Prepared;

    fn prepare(batch: Batch) -> Prepared {
        Prepared {
            id: uuid::Uuid::now_v7(),
            batch,
        }
    }

    async fn write_batch(&mut self, batch: &Prepared) -> Result<(), PipelineError> {
        self.write(batch).await
    }

    async fn write_isolating(
        &mut self,
        batch: &Prepared,
        _cause: &PipelineError,
    ) -> Result<Vec<Parked>, PipelineError> {
        self.write_isolating_rows(batch).await
    }
}

/// The error a record parked by the codec was refused with.
fn refusal(p: &Parked) -> PipelineError {
    let mut e = PipelineError::new(
        ErrorClass::Permanent,
        Stage::Sink,
        p.record.error.message.clone(),
    );
    e.code = p.record.error.code.clone();
    e
}
