//! The contract every source fulfils.

use std::future::Future;

use tokio::sync::watch;

use crate::channel::BusSender;
use crate::checkpoint::Checkpoint;
use crate::error::PipelineError;
use crate::event::SourceAck;

/// What the runtime hands a source when it starts.
pub struct SourceContext {
    /// Where changes go, in source order. `send` waits while the bus is full:
    /// that is the backpressure that keeps memory bounded.
    pub bus: BusSender,
    /// The highest [`SourceAck`] whose messages, and everything before them,
    /// are durable downstream. The source confirms upstream (slot
    /// `confirmed_flush_lsn`, stored resume token) only what it reads here.
    pub acks: watch::Receiver<SourceAck>,
    /// What is already durable downstream: the source resumes from it (and
    /// skips snapshots already complete).
    pub checkpoint: Checkpoint,
    /// Becomes `true` when the pipeline is asked to stop.
    pub shutdown: watch::Receiver<bool>,
}

/// A database whose changes Ferry mirrors.
///
/// Contract: [`Source::run`] sends every change after the checkpoint at least
/// once, in source order (per row, the order of the source's commits),
/// retries transient failures itself (reconnecting with backoff), and returns
/// `Err` only for errors it cannot recover from. It never confirms a position
/// upstream before the runtime acknowledged it on `ctx.acks`, so a crash at
/// any point loses nothing: the source replays from its confirmed position
/// and the sink skips what it already has.
pub trait Source: Send + 'static {
    fn run(self, ctx: SourceContext) -> impl Future<Output = Result<(), PipelineError>> + Send;
}
