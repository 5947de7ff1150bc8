//! Ferry's MongoDB source.
//!
//! For now only its pure, I/O-free half: [`bson_value`], which turns BSON
//! documents (as a change stream or a collection scan delivers them) into
//! Ferry rows of exact [`ferry_pipeline::value::Value`]s. The change-stream
//! reader, which needs the `mongodb` driver, comes later and builds on it.

pub mod bson_value;

pub use bson_value::{bson_to_value, document_to_row, field, BsonError, BsonErrorKind};
