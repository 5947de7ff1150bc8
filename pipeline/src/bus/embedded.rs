//! The embedded bus: the source and the apply loop in one process, joined
//! by the bounded [`crate::channel`] alone.
//!
//! The sink's checkpoint (the position of the last applied change) is the
//! only progress kept: on start the source resumes from it and the apply
//! loop skips the changes at or before it that the source replays; the
//! source's acknowledgement is released only after the sink committed.

use tokio::sync::watch;
use tracing::info;

use crate::channel;
use crate::error::PipelineError;
use crate::event::SourceAck;
use crate::runtime::{drive_source, load_checkpoint, spawn_apply, ApplyMode, RuntimeOptions};
use crate::sink::Sink;
use crate::source::Source;

/// Runs `source` into `sink` on the embedded bus until `shutdown` turns
/// true (returns `Ok`) or an error that cannot be retried (returns it).
pub async fn run<S: Source, K: Sink>(
    source: S,
    mut sink: K,
    opts: RuntimeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let checkpoint = load_checkpoint(&mut sink, &opts, shutdown.clone()).await?;
    info!(
        resume_from = %checkpoint.resume_point(),
        snapshots_done = checkpoint.snapshots.len(),
        "loaded checkpoint"
    );
    let (bus_tx, bus_rx) = channel::bounded(opts.bus_capacity);
    let (ack_tx, ack_rx) = watch::channel(SourceAck(0));
    let apply = spawn_apply(
        bus_rx,
        sink,
        ack_tx,
        ApplyMode::Embedded {
            seen_up_to: checkpoint.position,
        },
        &opts,
        shutdown.clone(),
    );
    drive_source(source, bus_tx, ack_rx, checkpoint, apply, &opts, shutdown).await
}
