//! The dead-letter queue in the deployment (`ferry_dlq`, written by
//! `ferry:apply` in the same transaction as the batch's rows) and its
//! administration for `ferry dlq list|show|purge|replay`.

use ferry_pipeline::error::{PipelineError, Stage};
use serde_json::{json, Value as Json};

use crate::client::Kind;
use crate::sink::ConvexSink;

impl ConvexSink {
    /// Every parked record of the pipeline, oldest first.
    pub async fn dlq_records(&mut self) -> Result<Vec<Json>, PipelineError> {
        let pipeline = self.pipeline().to_string();
        let mut out = Vec::new();
        let mut cursor = Json::Null;
        loop {
            let page = self
                .call(
                    Kind::Query,
                    "ferry:dlqRecords",
                    &json!({"pipeline": pipeline, "cursor": cursor, "limit": 500}),
                )
                .await?;
            out.extend(page["page"].as_array().cloned().unwrap_or_default());
            if page["isDone"].as_bool().unwrap_or(true) {
                return Ok(out);
            }
            cursor = page["continueCursor"].clone();
        }
    }

    /// Removes records by their Convex id; returns how many went.
    pub async fn dlq_remove(&mut self, ids: &[String]) -> Result<u64, PipelineError> {
        let pipeline = self.pipeline().to_string();
        let v = self
            .call(
                Kind::Mutation,
                "ferry:dlqRemove",
                &json!({"pipeline": pipeline, "ids": ids}),
            )
            .await?;
        Ok(v.as_f64().unwrap_or(0.0) as u64)
    }

    /// Re-applies parked records (oldest first, one `ferry:apply` call
    /// each, the pipeline's checkpoint untouched): a record a later change
    /// of its row superseded leaves the queue without being applied; one
    /// that lands leaves it; one refused again stays with one more attempt
    /// and the new error. `dry_run` applies nothing: it reports superseded
    /// records, and records the codec would refuse again (what the module
    /// itself would refuse is only known by applying).
    pub async fn dlq_replay(
        &mut self,
        records: &[Json],
        dry_run: bool,
    ) -> Result<Vec<ConvexReplayed>, PipelineError> {
        let pipeline = self.pipeline().to_string();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let id = r["_id"].as_str().unwrap_or_default().to_string();
            let mut done = ConvexReplayed {
                id: id.clone(),
                table: r["table"].as_str().unwrap_or_default().to_string(),
                key: r["key"].as_str().unwrap_or_default().to_string(),
                outcome: "applied",
                error: None,
            };
            if r["superseded"].as_bool().unwrap_or(false) {
                done.outcome = "superseded";
                if !dry_run {
                    self.dlq_remove(std::slice::from_ref(&id)).await?;
                }
                out.push(done);
                continue;
            }
            let event = self
                .call(
                    Kind::Query,
                    "ferry:dlqEvent",
                    &json!({"pipeline": pipeline, "id": id}),
                )
                .await?;
            let Some(event) = event.as_str() else {
                // Purged or replayed by another process meanwhile.
                continue;
            };
            let ev = ferry_pipeline::dlq::decode_event(event.as_bytes())?;
            let refused = if dry_run {
                self.replay_check(ev)?
            } else {
                self.replay_change(ev, format!("replay-{id}")).await?
            };
            match refused {
                None => {
                    if !dry_run {
                        self.dlq_remove(std::slice::from_ref(&id)).await?;
                    }
                }
                Some(e) => {
                    done.outcome = "failed";
                    done.error = Some(e.message.clone());
                    if !dry_run {
                        self.call(
                            Kind::Mutation,
                            "ferry:dlqFailed",
                            &json!({
                                "pipeline": pipeline,
                                "id": id,
                                "errorClass": e.class.as_str(),
                                "errorCode": e.code,
                                "errorMessage": e.message,
                            }),
                        )
                        .await
                        .map_err(|e| {
                            PipelineError::new(
                                e.class,
                                Stage::Sink,
                                format!("record the failed replay: {e}"),
                            )
                        })?;
                    }
                }
            }
            out.push(done);
        }
        Ok(out)
    }
}

/// One record of a Convex `ferry dlq replay`.
#[derive(Debug, Clone)]
pub struct ConvexReplayed {
    /// The record's document id in `ferry_dlq`.
    pub id: String,
    pub table: String,
    pub key: String,
    /// `applied`, `superseded` or `failed` (with `--dry-run`: would be).
    pub outcome: &'static str,
    pub error: Option<String>,
}
