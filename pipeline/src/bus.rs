//! The embedded bus: a bounded in-process channel between the source and the
//! apply loop, with the same ordering and acknowledgement guarantees as the
//! Kafka bus: messages arrive in source order, a full channel makes the
//! source wait (memory stays bounded under any backlog), and positions flow
//! back only after the sink committed.

use tokio::sync::mpsc;

use crate::error::{PipelineError, Stage};
use crate::event::BusMessage;

/// The sending half, held by the source.
#[derive(Clone)]
pub struct BusSender {
    tx: mpsc::Sender<BusMessage>,
}

/// The receiving half, held by the apply loop.
pub struct BusReceiver {
    rx: mpsc::Receiver<BusMessage>,
}

/// A bus that holds at most `capacity` messages.
pub fn embedded(capacity: usize) -> (BusSender, BusReceiver) {
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
