//! The dead-letter queue in `ferry_dead_letters` (in the sink's
//! database), written in the batch's transaction, and its administration
//! for `ferry dlq list|show|replay|purge`.
//!
//! A record keeps what the PostgreSQL sink's `ferry_dlq` keeps: the
//! table, the row's key (`row_key`, JSON text), the op, the replayable
//! change (`event`, the envelope's JSON), the error's class, code, message
//! and stage, attempts, first and last failure, the batch's position, the
//! Kafka origin, and whether a later change of the row superseded it. Its
//! `_id` is made of the pipeline, table, key and position, so that a batch
//! written twice (a commit whose outcome was unknown) parks it once.

use bson::{doc, Bson, DateTime, Document};
use ferry_pipeline::batch::Batch;
use ferry_pipeline::dlq::{decode_event, Parked};
use ferry_pipeline::error::PipelineError;
use ferry_pipeline::event::Op;
use serde_json::{json, Value as Json};

use crate::checkpoint::position_text;
use crate::error::mongo_err;
use crate::sink::{find_all, MongoSink};

/// The collection.
pub const DEAD_LETTERS: &str = "ferry_dead_letters";

fn op_of(p: &Parked) -> &'static str {
    match decode_event(&p.record.event).map(|e| e.op) {
        Ok(Op::Delete) => "delete",
        Ok(Op::Update) => "update",
        Ok(Op::Truncate) => "truncate",
        Ok(Op::Insert | Op::Read) => "upsert",
        Err(_) => "change",
    }
}

/// The `update` statement that parks `p` (an upsert keyed by its `_id`).
pub(crate) fn record_statement(pipeline: &str, p: &Parked) -> Document {
    let r = &p.record;
    let place = match (&r.origin, &r.position) {
        (Some(o), _) => format!("{}:{}:{}", o.topic, o.partition, o.offset),
        (None, Some(pos)) => position_text(pos),
        (None, None) => String::new(),
    };
    let id = format!("{pipeline}|{}|{}|{place}", p.table, r.key);
    let now = DateTime::now();
    let mut record = doc! {
        "pipeline": pipeline,
        "table": p.table.to_string(),
        "table_schema": &p.table.schema,
        "table_name": &p.table.name,
        "row_key": &r.key,
        "op": op_of(p),
        "event": String::from_utf8_lossy(&r.event).into_owned(),
        "error_class": &r.error.class,
        "error_code": r.error.code.clone().map_or(Bson::Null, Bson::String),
        "error_message": &r.error.message,
        "stage": &r.error.stage,
        "attempts": 1,
        "first_failed_at": now,
        "last_failed_at": now,
        "position": r.position.map_or(Bson::Null, |p| Bson::String(position_text(&p))),
        "superseded": p.superseded,
        "superseded_at": if p.superseded { Bson::DateTime(now) } else { Bson::Null },
    };
    if let Some(o) = &r.origin {
        record.insert("bus_topic", &*o.topic);
        record.insert("bus_partition", o.partition);
        record.insert("bus_offset", o.offset);
    }
    doc! {"q": {"_id": id}, "u": {"$setOnInsert": record}, "upsert": true}
}

/// Marks the table's records of `keys` superseded (a later change of the
/// row landed).
pub(crate) fn supersede_statement(pipeline: &str, table: &str, keys: &[String]) -> Document {
    doc! {
        "q": {"pipeline": pipeline, "table": table, "row_key": {"$in": keys}, "superseded": false},
        "u": {"$set": {"superseded": true, "superseded_at": DateTime::now()}},
        "multi": true,
    }
}

/// A record as `ferry dlq` prints and selects it (the keys the Convex
/// sink's records use, so both share the command's code).
fn record_json(d: &Document) -> Json {
    let s = |k: &str| d.get_str(k).ok().map(str::to_string);
    json!({
        "_id": s("_id"),
        "table": s("table_name"),
        "schemaTable": s("table"),
        "key": s("row_key"),
        "op": s("op"),
        "errorClass": s("error_class"),
        "errorCode": s("error_code"),
        "errorMessage": s("error_message"),
        "stage": s("stage"),
        "position": s("position"),
        "superseded": d.get_bool("superseded").unwrap_or(false),
        "lastFailedAt": d.get_datetime("last_failed_at").ok().map(|t| t.try_to_rfc3339_string().unwrap_or_default()),
        "event": s("event"),
    })
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayOutcome {
    pub applied: u64,
    pub superseded: u64,
    pub failed: u64,
    /// (record id, why) of the records that failed again.
    pub failures: Vec<(String, String)>,
}

impl MongoSink {
    /// Every parked record of the pipeline, oldest first.
    pub async fn dlq_records(&mut self) -> Result<Vec<Json>, PipelineError> {
        let db = self.database().await?;
        let mut docs = find_all(&db, DEAD_LETTERS, doc! {"pipeline": self.pipeline()}, None)
            .await
            .map_err(|e| mongo_err("read ferry_dead_letters", e))?;
        docs.sort_by_key(|d| d.get_datetime("first_failed_at").ok().copied());
        Ok(docs.iter().map(record_json).collect())
    }

    /// Removes records by `_id`; returns how many went.
    pub async fn dlq_remove(&mut self, ids: &[String]) -> Result<u64, PipelineError> {
        let db = self.database().await?;
        let r = db
            .run_command(doc! {"delete": DEAD_LETTERS, "deletes": [{"q": {"pipeline": self.pipeline(), "_id": {"$in": ids}}, "limit": 0}]})
            .await
            .map_err(|e| mongo_err("delete from ferry_dead_letters", e))?;
        Ok(r.get_i32("n").unwrap_or(0).max(0) as u64)
    }

    /// Replays `records` (as [`MongoSink::dlq_records`] lists them), one
    /// at a time: a superseded record is removed without being applied (it
    /// would move its row back to an older state); any other is applied
    /// and removed in one transaction, or stays with its attempt counted.
    /// With `dry_run` nothing is written.
    pub async fn dlq_replay(
        &mut self,
        records: &[Json],
        dry_run: bool,
    ) -> Result<ReplayOutcome, PipelineError> {
        let mut out = ReplayOutcome::default();
        for r in records {
            let Some(id) = r["_id"].as_str() else {
                continue;
            };
            if r["superseded"].as_bool().unwrap_or(false) {
                out.superseded += 1;
                if !dry_run {
                    self.dlq_remove(&[id.to_string()]).await?;
                }
                continue;
            }
            let ev = decode_event(r["event"].as_str().unwrap_or("").as_bytes())?;
            let mut batch = Batch::default();
            batch.push(ev);
            if dry_run {
                out.applied += 1;
                continue;
            }
            match self.apply_replay(&batch, &[id.to_string()]).await {
                Ok(()) => out.applied += 1,
                Err(e) => {
                    out.failed += 1;
                    out.failures.push((id.to_string(), e.to_string()));
                    let db = self.database().await?;
                    db.run_command(doc! {"update": DEAD_LETTERS, "updates": [{
                        "q": {"_id": id},
                        "u": {"$inc": {"attempts": 1}, "$set": {"last_failed_at": DateTime::now(), "error_message": e.to_string()}},
                    }]})
                    .await
                    .map_err(|e| mongo_err("update ferry_dead_letters", e))?;
                }
            }
        }
        Ok(out)
    }
}
