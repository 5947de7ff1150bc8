//! The contract every sink fulfils.

use std::future::Future;

use crate::batch::Batch;
use crate::checkpoint::CheckpointStore;
use crate::error::PipelineError;

/// A destination that applies batches of changes.
///
/// Contract:
/// - [`Sink::write_batch`] returns `Ok` only when the whole batch and its
///   checkpoint (`batch.last_position`, snapshot records) are durable, in one
///   atomic unit: either all of it is visible after a crash or none of it.
/// - Applying a change again (restart, replay) never duplicates a row and
///   never moves a row back to an older state: rows are keyed by primary key
///   and written as upserts/deletes of their latest image, and the runtime
///   skips changes at or before the durable checkpoint.
/// - An `Err` leaves nothing applied; the runtime retries the same batch when
///   the error is transient.
pub trait Sink: CheckpointStore + Send + 'static {
    /// What kind of database this sink writes (`postgres`, `convex`, …):
    /// the `sink` label of the batch metrics.
    const KIND: &'static str;

    /// A batch made ready for writing.
    type Prepared: Send + Sync + 'static;

    /// The work on a batch that needs no connection (encoding values into
    /// parameters). The runtime runs it while the previous batch is still
    /// being written, so it must not depend on the sink's state.
    fn prepare(batch: Batch) -> Self::Prepared;

    /// Writes a prepared batch; see the trait's contract. Called again with
    /// the same batch after a transient error.
    fn write_batch(
        &mut self,
        batch: &Self::Prepared,
    ) -> impl Future<Output = Result<(), PipelineError>> + Send;

    /// Writes a batch whose [`Sink::write_batch`] failed with a permanent
    /// error, one record at a time: a record that fails permanently is
    /// rolled back alone and parked in the dead-letter queue, in the same
    /// atomic unit as the records that land and the batch's checkpoint.
    /// Returns the records parked. An `Err` leaves nothing applied (the
    /// runtime retries a transient one, stops on the rest).
    ///
    /// Sinks without a dead-letter queue keep the default: the batch's
    /// error stops the pipeline.
    fn write_isolating(
        &mut self,
        batch: &Self::Prepared,
        cause: &PipelineError,
    ) -> impl Future<Output = Result<Vec<crate::dlq::Parked>, PipelineError>> + Send {
        let _ = batch;
        let e = PipelineError::new(cause.class, cause.stage, cause.message.clone());
        let e = match &cause.code {
            Some(c) => e.with_code(c.clone()),
            None => e,
        };
        std::future::ready(Err(e))
    }
}
