//! Ferry's core: the event model, the contracts between sources, bus and
//! sinks, the runtime that drives them, configuration and metrics.
//!
//! Nothing here knows a concrete database: connectors and sinks depend on
//! this crate, never the other way round, and the `ferry` binary wires them.
//!
//! Modules depend one way, from the bottom up (`tests/module_graph.rs`
//! fails on a cycle):
//! - leaves: `value`, `calendar`, `clock`, `error`, `metrics`, `telemetry`, then
//!   `decimal`, `id_map`, `json` on values;
//! - the event model: `event`, then on it `envelope` (the codec),
//!   `channel` (the bounded channel a source writes into), `checkpoint`,
//!   `mapping`; then `config` (on envelope and mapping) and `dlq` (a parked
//!   record and its codec, on the envelope);
//! - `batch` (carries parked records), then the contracts `source`,
//!   `sink`, and `transform`;
//! - `runtime` (the apply loop both buses share), and on top `bus` (the
//!   embedded bus, and the Kafka bus behind the `kafka` feature).

pub mod batch;
pub mod bus;
pub mod calendar;
pub mod channel;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod decimal;
pub mod dlq;
pub mod envelope;
pub mod error;
pub mod event;
pub mod id_map;
pub mod json;
pub mod mapping;
pub mod metrics;
pub mod prerequisite;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod transform;
pub mod value;

/// For maps looked up once or more per change (batch keys, tables, topics,
/// schemas): foldhash instead of SipHash, seeded per process. Their keys
/// are table names, topic names and a batch's primary keys, whose number a
/// batch bounds.
pub(crate) type FastHashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
