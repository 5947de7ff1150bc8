//! Ferry's Convex sink: each batch is one call of Ferry's Convex module
//! (`convex/ferry.ts`), which writes the rows and the checkpoint in one
//! Convex transaction, so that the effect of a replay is exactly once.

mod apply;
pub mod checkpoint;
pub mod client;
pub mod config;
pub mod dlq;
mod error;
pub mod id_map;
pub mod sink;
pub mod value;

pub use sink::ConvexSink;
