//! Ferry's core: the event model, the contracts between sources, bus and
//! sinks, the runtime that drives them, configuration and metrics.
//!
//! Nothing here knows a concrete database: connectors and sinks depend on
//! this crate, never the other way round, and the `ferry` binary wires them.

pub mod batch;
pub mod bus;
pub mod calendar;
pub mod checkpoint;
pub mod config;
pub mod decimal;
pub mod dlq;
pub mod error;
pub mod event;
pub mod id_map;
pub mod json;
pub mod kafka;
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
