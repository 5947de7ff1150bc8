//! The MongoDB source: a change stream on the database, with a gap-free
//! snapshot handoff and a durable resume token.
//!
//! Handoff: the change stream is opened *before* the collections are
//! scanned (its initial resume token is the start point), the scan copies
//! each collection in `_id` order, and then the same stream is consumed.
//! Changes made during the scan are therefore both in the copy and in the
//! stream; the overlap is absorbed by the idempotent sink (updates carry the
//! current full document, deletes of absent rows do nothing).
//!
//! Resume: every change carries its resume token; the sink stores the last
//! one in the same transaction as the data, so a restart resumes exactly
//! after the last applied change. MongoDB needs no upstream
//! acknowledgement. When the token has left the oplog the source stops with
//! a clear message, or copies everything again if configured to.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};
use ferry_pipeline::config::{CollectionGone, HistoryLost, MongoSourceConfig, SnapshotMode};
use ferry_pipeline::error::{retry_backoff, Disposition, ErrorClass, PipelineError, Stage};
use ferry_pipeline::event::{BusMessage, ChangeEvent, Datum, Op, Position, TableSchema};
use ferry_pipeline::metrics::metrics;
use ferry_pipeline::runtime::wait_retry;
use ferry_pipeline::source::{Source, SourceContext};
use ferry_pipeline::value::Value;
use futures_util::StreamExt;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::error::ErrorKind;
use mongodb::options::{FullDocumentBeforeChangeType, FullDocumentType};
use mongodb::Database;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::bson_value::{document_to_row, BsonError};
use crate::shape::Shapes;

/// Server error codes that mean the resume point is gone from the oplog.
const HISTORY_LOST_CODES: [i32; 3] = [
    286, // ChangeStreamHistoryLost
    280, // ChangeStreamFatalError
    136, // CappedPositionLost
];

/// What a completed collection snapshot records: the stream's start point
/// of that snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotState {
    start_token: String,
}

/// The MongoDB source.
pub struct MongoSource {
    cfg: MongoSourceConfig,
    max_retry_delay: Duration,
}

/// What became of one change-stream event.
#[derive(Debug, PartialEq, Eq)]
enum Handled {
    /// Sent to the bus with its resume token.
    Emitted,
    /// Not mirrored (another collection, an index change, …).
    Skipped,
    /// The stream was invalidated.
    Invalidated,
}

/// What survives a reconnect.
#[derive(Default)]
struct Progress {
    /// Where the stream continues: the last token received (not only
    /// applied), so that a reconnect does not re-deliver changes already on
    /// the bus.
    token: Option<String>,
    /// Collections whose snapshot is complete (in this process or before).
    copied: HashSet<String>,
    /// Copy everything again (the resume point was lost).
    force_snapshot: bool,
    /// Collection shapes (scalar columns seen so far).
    shapes: Option<Shapes>,
    /// `token` is an invalidate event's.
    after_invalidate: bool,
}

impl MongoSource {
    /// `cfg` must have passed `Config::validate`.
    pub fn new(cfg: MongoSourceConfig, max_retry_delay: Duration) -> Self {
        Self {
            cfg,
            max_retry_delay,
        }
    }

    async fn collections(&self, db: &Database) -> Result<Vec<String>, PipelineError> {
        if !self.cfg.collections.is_empty() {
            return Ok(self.cfg.collections.clone());
        }
        let mut names: Vec<String> = db
            .list_collection_names()
            .await
            .map_err(|e| mongo_err("list collections", e))?
            .into_iter()
            .filter(|n| {
                !n.starts_with("system.")
                    && !crate::config::FERRY_SINK_COLLECTIONS.contains(&n.as_str())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    async fn open_stream(
        &self,
        db: &Database,
        token: Option<&str>,
        after_invalidate: bool,
    ) -> Result<ChangeStream<ChangeStreamEvent<Document>>, PipelineError> {
        let mut watch = db
            .watch()
            // The update's delta is not used (the full document is): leaving
            // it out keeps an event of a large document well under MongoDB's
            // 16 MB event limit.
            .pipeline([doc! { "$project": { "updateDescription": 0 } }])
            .full_document(FullDocumentType::UpdateLookup)
            .full_document_before_change(FullDocumentBeforeChangeType::WhenAvailable);
        match token {
            // An invalidate event's token can only be started after, not
            // resumed after.
            Some(t) if after_invalidate => watch = watch.start_after(parse_token(t)?),
            Some(t) => watch = watch.resume_after(parse_token(t)?),
            None => {}
        }
        watch.await.map_err(|e| mongo_err("open change stream", e))
    }

    /// One connection's worth of work: snapshot what needs it, then stream.
    async fn session(
        &self,
        ctx: &mut SourceContext,
        progress: &mut Progress,
    ) -> Result<(), PipelineError> {
        let client = crate::config::connect(self.cfg.url.expose(), "connect to MongoDB").await?;
        let db = client.database(&self.cfg.database);
        let collections = self.collections(&db).await?;
        let wanted: HashSet<String> = collections.iter().cloned().collect();
        let shapes = progress
            .shapes
            .get_or_insert_with(|| Shapes::new(&self.cfg.database, self.cfg.scalar_columns));

        if progress.force_snapshot {
            progress.copied.clear();
            progress.token = None;
        }
        let to_copy: Vec<&String> = match self.cfg.snapshot {
            SnapshotMode::Never => Vec::new(),
            SnapshotMode::Initial => collections
                .iter()
                .filter(|c| !progress.copied.contains(*c))
                .collect(),
        };
        // The stream opens before any scan: its start point precedes every
        // document the scan reads. An older token (changes already flowing)
        // is kept: starting earlier is always safe, the sink absorbs the
        // overlap.
        let mut stream = self
            .open_stream(&db, progress.token.as_deref(), progress.after_invalidate)
            .await?;
        progress.after_invalidate = false;
        let start_token = match (&progress.token, stream.resume_token()) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => token_text(&t)?,
            (None, None) => {
                return Err(PipelineError::fatal(
                    Stage::Source,
                    "the server gave the new change stream no resume token; Ferry needs MongoDB 4.0.7 or later",
                ))
            }
        };
        if !to_copy.is_empty() {
            info!(collections = to_copy.len(), "initial snapshot starting");
            for name in to_copy {
                let rows = self.copy_collection(&db, name, shapes, &ctx.bus).await?;
                let schema = shapes.schema(name);
                ctx.bus
                    .send(BusMessage::SnapshotDone {
                        table: schema.id.clone(),
                        rows,
                        state: serde_json::to_value(SnapshotState {
                            start_token: start_token.clone(),
                        })
                        .expect("serializable"),
                    })
                    .await?;
                progress.copied.insert(name.clone());
            }
        }
        progress.force_snapshot = false;
        if progress.token.is_none() {
            progress.token = Some(start_token);
        }
        info!(database = %self.cfg.database, "streaming changes");
        // About once a second the stream's own resume point (past changes
        // of collections we do not mirror, and past idle time) is handed to
        // the sink, so that the stored token never falls behind the oplog
        // while the mirrored collections are quiet. `next_if_any` makes one
        // request at a time, so the resume point is only read between
        // requests (reading it while a request is in flight is an error in
        // the driver).
        let mut checked = std::time::Instant::now();
        // The last resume token the bus carries (with a change or alone).
        let mut bus_token: Option<String> = None;
        let mut markers = crate::loop_marker::LoopMarkers::default();
        loop {
            let next = tokio::select! {
                _ = ctx.shutdown.wait_for(|s| *s) => return Ok(()),
                ev = stream.next_if_any() => ev.map_err(|e| mongo_err("read change stream", e))?,
            };
            if let Some(ev) = next {
                let token = token_text(&ev.id)?;
                // Written by Ferry's MongoDB sink (a reverse pipeline):
                // not sent back (see `loop_marker`).
                let handled = if markers
                    .written_by_ferry(&db, ev.lsid.as_ref(), ev.txn_number)
                    .await?
                {
                    Handled::Skipped
                } else {
                    self.handle(ev, &wanted, shapes, &token, ctx).await?
                };
                if handled == Handled::Emitted {
                    bus_token = Some(token.clone());
                }
                progress.token = Some(token);
                if handled == Handled::Invalidated {
                    progress.after_invalidate = true;
                    // An invalidated stream cannot be read further: reopen
                    // after its last token.
                    return Err(PipelineError::transient(
                        Stage::Source,
                        "change stream invalidated; reopening",
                    ));
                }
            }
            if checked.elapsed() >= Duration::from_secs(1) {
                checked = std::time::Instant::now();
                if let Some(t) = stream.resume_token() {
                    let t = token_text(&t)?;
                    if bus_token.as_deref() != Some(t.as_str()) {
                        ctx.bus
                            .send(BusMessage::Resume {
                                resume_token: Arc::from(t.as_str()),
                            })
                            .await?;
                        progress.token = Some(t.clone());
                        bus_token = Some(t);
                    }
                }
            }
            if !stream.is_alive() {
                return Err(PipelineError::transient(
                    Stage::Source,
                    "change stream ended",
                ));
            }
        }
    }

    /// Copies one collection in `_id` order.
    async fn copy_collection(
        &self,
        db: &Database,
        name: &str,
        shapes: &mut Shapes,
        bus: &ferry_pipeline::channel::BusSender,
    ) -> Result<u64, PipelineError> {
        let schema = &shapes.schema(name);
        let coll = db.collection::<Document>(name);
        let estimate = coll.estimated_document_count().await.unwrap_or(0);
        let label = schema.id.to_string();
        metrics()
            .snapshot_estimate
            .with_label_values(&[&label])
            .set(estimate as i64);
        let counter = metrics().snapshot_rows.with_label_values(&[&label]);
        bus.send(BusMessage::SnapshotStart {
            table: Arc::clone(schema),
        })
        .await?;
        let mut cursor = coll
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .batch_size(self.cfg.snapshot_batch_size)
            .await
            .map_err(|e| mongo_err(&format!("scan {name}"), e))?;
        let mut rows = 0u64;
        let mut last_report = std::time::Instant::now();
        while let Some(doc) = cursor.next().await {
            let doc = doc.map_err(|e| mongo_err(&format!("scan {name}"), e))?;
            let (table, row) = document_row(shapes, name, &doc).map_err(|e| bson_err(name, &e))?;
            bus.send(BusMessage::Change(ChangeEvent::snapshot_read(table, row)))
                .await?;
            rows += 1;
            counter.inc();
            if last_report.elapsed() > Duration::from_secs(2) {
                let percent = (rows * 100).checked_div(estimate).unwrap_or(0).min(100);
                info!(collection = %name, rows, estimate, percent, "snapshot progress");
                last_report = std::time::Instant::now();
            }
        }
        info!(collection = %name, rows, "snapshot of collection copied");
        Ok(rows)
    }

    /// Turns one change-stream event into bus messages. Returns whether the
    /// stream was invalidated.
    async fn handle(
        &self,
        ev: ChangeStreamEvent<Document>,
        wanted: &HashSet<String>,
        shapes: &mut Shapes,
        token: &str,
        ctx: &SourceContext,
    ) -> Result<Handled, PipelineError> {
        let coll = ev.ns.as_ref().and_then(|ns| ns.coll.clone());
        let commit_ts_micros = ev
            .wall_time
            .map(|t| t.timestamp_millis() * 1000)
            .or(ev.cluster_time.map(|t| i64::from(t.time) * 1_000_000))
            .unwrap_or_else(ferry_pipeline::clock::now_micros);
        let op = match &ev.operation_type {
            OperationType::Insert => Op::Insert,
            OperationType::Update | OperationType::Replace => Op::Update,
            OperationType::Delete => Op::Delete,
            OperationType::Drop | OperationType::Rename | OperationType::DropDatabase => {
                let name = coll.clone().unwrap_or_else(|| self.cfg.database.clone());
                let ours = coll.as_ref().is_none_or(|c| self.mirrors(wanted, c));
                if ours {
                    self.collection_gone(&format!("{:?} of {name}", ev.operation_type))?;
                }
                return Ok(Handled::Skipped);
            }
            OperationType::Invalidate => {
                self.collection_gone("invalidate (the watched database was dropped or renamed)")?;
                return Ok(Handled::Invalidated);
            }
            OperationType::Other(kind) => {
                // createIndexes, modify, …: nothing to mirror.
                tracing::debug!(kind = %kind, "change stream event ignored");
                return Ok(Handled::Skipped);
            }
            _ => return Ok(Handled::Skipped),
        };
        let Some(coll) = coll.filter(|c| self.mirrors(wanted, c)) else {
            return Ok(Handled::Skipped);
        };
        let (schema, before, after) = match op {
            Op::Delete => {
                let id = ev
                    .document_key
                    .as_ref()
                    .and_then(|k| k.get("_id"))
                    .ok_or_else(|| {
                        PipelineError::fatal(
                            Stage::Decode,
                            format!("delete in {coll} without a document key"),
                        )
                    })?;
                let id = id_value(id);
                let (schema, key_row) = shapes.key_row(&coll, id);
                (schema, Some(key_row), None)
            }
            _ => match &ev.full_document {
                Some(doc) => {
                    let (schema, row) =
                        document_row(shapes, &coll, doc).map_err(|e| bson_err(&coll, &e))?;
                    (schema, None, Some(row))
                }
                // An update whose document was deleted since: the delete
                // follows in the stream.
                None => return Ok(Handled::Skipped),
            },
        };
        ctx.bus
            .send(BusMessage::Change(ChangeEvent {
                table: schema,
                op,
                before,
                after,
                position: Position::default(),
                xid: None,
                commit_ts_micros,
                resume_token: Some(Arc::from(token)),
            }))
            .await?;
        Ok(Handled::Emitted)
    }

    /// Whether changes of `collection` are mirrored: a configured one, or,
    /// when none are configured, any (a collection created after the start
    /// streams from its creation, so it needs no copy).
    fn mirrors(&self, wanted: &HashSet<String>, collection: &str) -> bool {
        crate::config::mirrors(&self.cfg.collections, wanted, collection)
    }

    fn collection_gone(&self, what: &str) -> Result<(), PipelineError> {
        match self.cfg.on_collection_gone {
            CollectionGone::Fail => Err(PipelineError::fatal(
                Stage::Source,
                format!(
                    "change stream reported {what} in database {}; the target keeps its rows. \
                     Set source.on_collection_gone = \"ignore\" to go on",
                    self.cfg.database
                ),
            )),
            CollectionGone::Ignore => {
                warn!(event = %what, "collection gone; going on (on_collection_gone = ignore)");
                Ok(())
            }
        }
    }
}

impl Source for MongoSource {
    async fn run(self, mut ctx: SourceContext) -> Result<(), PipelineError> {
        let mut progress = Progress {
            token: ctx.checkpoint.resume_token.clone(),
            ..Progress::default()
        };
        for (id, rec) in &ctx.checkpoint.snapshots {
            if id.schema == self.cfg.database {
                progress.copied.insert(id.name.clone());
                // Finished copies but no change applied yet: stream from the
                // copies' start point.
                if progress.token.is_none() {
                    progress.token = serde_json::from_value::<SnapshotState>(rec.state.clone())
                        .ok()
                        .map(|s| s.start_token);
                }
            }
        }
        let mut backoff = retry_backoff(self.max_retry_delay);
        loop {
            if *ctx.shutdown.borrow() {
                return Ok(());
            }
            match self.session(&mut ctx, &mut progress).await {
                Ok(()) => return Ok(()),
                Err(e) if is_history_lost(&e) => match self.cfg.on_history_lost {
                    HistoryLost::Fail => {
                        return Err(PipelineError::fatal(
                            Stage::Source,
                            format!(
                                "the stored resume point is no longer in the oplog ({}): changes since \
                                 the last checkpoint cannot be read. Set source.on_history_lost = \
                                 \"resnapshot\" to copy every collection again, or raise the oplog size",
                                e.message
                            ),
                        ))
                    }
                    HistoryLost::Resnapshot => {
                        warn!(error = %e, "resume point lost; copying every collection again");
                        progress.force_snapshot = true;
                    }
                },
                Err(e) if e.disposition() == Disposition::Retry => {
                    if wait_retry(&e, &mut backoff, ctx.shutdown.clone()).await.is_err() {
                        // Asked to stop while waiting.
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The `_id` column's value: the id as relaxed Extended JSON (jsonb in the
/// target). Text would be friendlier but ambiguous: `7`, `"7"`, `true`,
/// `"t"`, an ObjectId and the string of its hex would share rows. As
/// jsonb, ids compare the way MongoDB compares them (numbers by value,
/// strings and ObjectIds apart).
fn id_value(id: &Bson) -> Value {
    Value::Json(id.clone().into_relaxed_extjson().to_string())
}

/// The row of a document in its collection's shape (also `ferry verify`'s
/// reader, so both read documents the same way).
pub fn document_row(
    shapes: &mut Shapes,
    collection: &str,
    doc: &Document,
) -> Result<(Arc<TableSchema>, Vec<Datum>), BsonError> {
    let id = match doc.get("_id") {
        Some(id) => id_value(id),
        None => Value::Null,
    };
    let fields = document_to_row(doc)?;
    Ok(shapes.row(collection, id, fields))
}

fn bson_err(collection: &str, e: &BsonError) -> PipelineError {
    PipelineError::new(
        ErrorClass::Permanent,
        Stage::Decode,
        format!("document in {collection}: {e}"),
    )
}

/// A resume token as text (relaxed extended JSON of the token document).
fn token_text(t: &ResumeToken) -> Result<String, PipelineError> {
    let b = bson::to_bson(t).map_err(|e| {
        PipelineError::fatal(Stage::Source, format!("unreadable resume token: {e}"))
    })?;
    Ok(b.into_relaxed_extjson().to_string())
}

fn parse_token(s: &str) -> Result<ResumeToken, PipelineError> {
    let bad =
        |e: String| PipelineError::fatal(Stage::Source, format!("stored resume token {s:?}: {e}"));
    let json: serde_json::Value = serde_json::from_str(s).map_err(|e| bad(e.to_string()))?;
    let b = Bson::try_from(json).map_err(|e| bad(e.to_string()))?;
    bson::from_bson(b).map_err(|e| bad(e.to_string()))
}

fn is_history_lost(e: &PipelineError) -> bool {
    e.code
        .as_deref()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| HISTORY_LOST_CODES.contains(&c))
        || e.message.contains("ChangeStreamHistoryLost")
}

/// Classifies a driver error: authentication and bad requests stop the
/// pipeline, a lost resume point is reported by its code, and everything
/// else (network, server selection, elections) is retried.
pub(crate) fn mongo_err(context: &str, e: mongodb::error::Error) -> PipelineError {
    let (class, code) = match e.kind.as_ref() {
        ErrorKind::Authentication { .. } => (ErrorClass::Fatal, None),
        ErrorKind::InvalidArgument { .. } => (ErrorClass::Fatal, None),
        ErrorKind::Command(c) => {
            let class = match c.code {
                // Unauthorized, AuthenticationFailed, Atlas auth errors, and
                // BSONObjectTooLarge (a change event over 16 MB: retrying
                // reads the same event again).
                13 | 18 | 8000 | 10334 => ErrorClass::Fatal,
                _ => ErrorClass::Transient,
            };
            (class, Some(c.code.to_string()))
        }
        _ => (ErrorClass::Transient, None),
    };
    let mut err = PipelineError::new(class, Stage::Source, format!("{context}: {e}"));
    err.code = code;
    err
}
