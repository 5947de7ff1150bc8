//! Ferry's MongoDB source: change streams with a gap-free snapshot handoff and
//! a durable resume token ([`source`]), and the pure BSON → value codec ([`bson_value`]).

pub mod bson_value;
pub mod check;
pub mod config;
pub mod loop_marker;
pub mod shape;
pub mod source;

pub use bson_value::{bson_to_value, document_to_row, field, BsonError, BsonErrorKind};
pub use source::MongoSource;
