//! The bounded in-process channel a source writes into; both buses read it
//! (the embedded bus's apply loop, the Kafka bus's producer and worker).
//!
//! Messages arrive in the order they were sent, and a full channel makes
//! the sender wait, so memory stays bounded under any backlog. It sits
//! below [`crate::source`], whose context hands the source a
//! [`BusSender`]; the buses themselves ([`crate::bus`]) sit above the
//! runtime.

use tokio::sync::mpsc;

use crate::error::{PipelineError, Stage};
use crate::event::BusMessage;

/// The sending half, held by the source.
#[derive(Clone)]
pub struct BusSender {
    tx: mpsc::Sender<BusMessage>,
}

/// The receiving half, held by the apply loop (or the Kafka producer).
pub struct BusReceiver {
    rx: mpsc::Receiver<BusMessage>,
}

/// A channel that holds at most `capacity` messages (at least one).
pub fn bounded(capacity: usize) -> (BusSender, BusReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (BusSender { tx }, BusReceiver { rx })
}

impl BusSender {
    /// Sends one message, waiting while the bus is full. Fails only when the
    /// apply loop has stopped.
    pub async fn send(&self, msg: BusMessage) -> Result<(), PipelineError> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| PipelineError::fatal(Stage::Source, "the apply loop has stopped"))
    }

    /// Messages waiting in the bus.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether the receiving side has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl BusReceiver {
    /// The next message; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<BusMessage> {
        self.rx.recv().await
    }

    /// A message if one is ready now.
    pub fn try_recv(&mut self) -> Option<BusMessage> {
        self.rx.try_recv().ok()
    }

    pub fn depth(&self) -> usize {
        self.rx.len()
    }
}
