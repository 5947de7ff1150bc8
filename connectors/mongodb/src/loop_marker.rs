//! Loop prevention for reverse pipelines (issue #22 item 3, MongoDB half):
//! changes written by Ferry's own MongoDB sink are not replicated back.
//!
//! Ferry's MongoDB sink writes every batch in a transaction whose last
//! statement upserts `ferry_checkpoints` `{_id: "ferry-session/<lsid>"}`
//! for the session it writes with (sinks/mongodb; the id is `ferry_pipeline::checkpoint::mongo_loop_marker_id`).
//! Change events of a transaction carry that session's `lsid` and a
//! `txnNumber`; an event whose `lsid.id` has a marker document in the
//! watched database came from Ferry and is skipped (its resume token still
//! advances). No field is added to application documents.
//!
//! The marker is committed with the transaction's data, so it exists by
//! the time the stream shows any of its events; the answer per session is
//! cached (a session id is Ferry's or not for good). Events without a
//! `txnNumber` (plain writes) are never Ferry's: the sink writes only in
//! transactions.

use std::collections::HashMap;

use bson::{doc, Bson, Document};
use ferry_pipeline::checkpoint::mongo_loop_marker_id as marker_id;
use ferry_pipeline::error::PipelineError;
use mongodb::Database;

/// The collection the sink keeps its checkpoint and markers in.
pub const MARKERS: &str = "ferry_checkpoints";

/// Sessions cached at most (application sessions come and go).
const CACHE_LIMIT: usize = 10_000;

/// Which sessions are Ferry's sink's.
#[derive(Default)]
pub(crate) struct LoopMarkers {
    known: HashMap<Vec<u8>, bool>,
}

impl LoopMarkers {
    /// Whether an event with this `lsid` and `txnNumber` was written by
    /// Ferry's MongoDB sink.
    pub(crate) async fn written_by_ferry(
        &mut self,
        db: &Database,
        lsid: Option<&Document>,
        txn_number: Option<i64>,
    ) -> Result<bool, PipelineError> {
        let (Some(lsid), Some(_)) = (lsid, txn_number) else {
            return Ok(false);
        };
        let Some(Bson::Binary(id)) = lsid.get("id") else {
            return Ok(false);
        };
        if let Some(&ours) = self.known.get(&id.bytes) {
            return Ok(ours);
        }
        let found = db
            .collection::<Document>(MARKERS)
            .find_one(doc! {"_id": marker_id(&id.bytes)})
            .await
            .map_err(|e| crate::source::mongo_err("read Ferry's session markers", e))?
            .is_some();
        if self.known.len() >= CACHE_LIMIT {
            self.known.clear();
        }
        self.known.insert(id.bytes.clone(), found);
        Ok(found)
    }
}
