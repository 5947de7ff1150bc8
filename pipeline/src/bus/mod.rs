//! The buses that carry a source's changes to the sink, side by side:
//! `embedded` (in-process, the default) and `kafka` (cargo feature `kafka`).
//!
//! A bus is the stretch between a [`crate::source::Source`] and a
//! [`crate::sink::Sink`]. Both buses start from the same bounded
//! [`crate::channel`] the source writes into, and hand their changes to
//! the same apply loop ([`crate::runtime::spawn_apply`]); what differs is
//! what lies in between (nothing, or Kafka topics and a consumer group) and
//! therefore where progress is kept. Both keep the same guarantees:
//!
//! - **Per-row order.** A row's changes reach the sink in source order:
//!   one ordered stream in process; on Kafka, one key always lands on one
//!   partition of its table's topic.
//! - **Bounded memory.** A full channel, or too many bytes produced but
//!   not yet acknowledged by Kafka, makes the source wait.
//! - **Nothing lost.** A source confirms a position upstream (slot
//!   `confirmed_flush_lsn`, stored resume token) only after everything
//!   before it is durable downstream: committed by the sink (embedded) or
//!   acknowledged by Kafka (Kafka bus).
//! - **Nothing applied twice in effect.** The sink stores progress in the
//!   same transaction as the rows (the source position on the embedded
//!   bus, each partition's next offset on Kafka), and replays at or below
//!   it are skipped.
//!
//! The buses sit above the runtime, which knows neither: the `ferry`
//! binary picks one from `[pipeline] bus`.

pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
