//! Ferry's MongoDB sink: each source row becomes one document, written with
//! `$set` upserts and deletes by `_id` in one MongoDB transaction per batch
//! together with the pipeline's checkpoint (`ferry_checkpoints`), so that
//! a replay after a crash has no effect. See docs/mongodb-sink.md.

mod apply;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod dlq;
mod error;
mod inverse;
pub mod sink;
pub mod value;

pub use sink::MongoSink;
