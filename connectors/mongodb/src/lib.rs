//! Ferry's MongoDB source.
//!
//! [`bson_value`] turns BSON documents (as a change stream or a collection
//! scan delivers them) into rows of exact [`ferry_pipeline::value::Value`]s,
//! with no I/O. [`source`] tails a database's change stream with a gap-free
//! snapshot handoff and a durable resume token. [`check`] holds the
//! prerequisite checks of `ferry check`.

pub mod bson_value;
pub mod check;
pub mod shape;
pub mod source;

pub use bson_value::{bson_to_value, document_to_row, field, BsonError, BsonErrorKind};
pub use source::MongoSource;
