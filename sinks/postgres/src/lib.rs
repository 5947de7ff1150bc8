//! Ferry's PostgreSQL sink: idempotent batched apply with multi-row `unnest`
//! statements, the pipeline's checkpoint in the same transaction, and the DLQ.

mod apply;
mod barrier;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod dlq;
mod error;
pub mod id_map;
pub mod inverse;
pub mod literal;
pub mod origin;
pub mod params;
pub mod sink;
mod statement;
mod statement_cache;
pub mod target;

pub use check::target_findings;
pub use dlq::{DlqGroup, ReplayReport};
pub use sink::PostgresSink;
