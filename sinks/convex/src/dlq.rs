//! The dead-letter queue in the deployment (`ferry_dlq`, written by
//! `ferry:apply` in the same transaction as the batch's rows) and its
//! administration for `ferry dlq list|show|purge`.

use ferry_pipeline::error::PipelineError;
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
}
