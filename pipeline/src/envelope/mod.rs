//! The envelope codec: a change event as key and value bytes, and back,
//! losslessly; the Kafka bus's wire format and the dead-letter record's.
//!
//! Owns Ferry's wire format (described for users in `schemas/README.md`),
//! on Kafka and in the dead-letter queue ([`crate::dlq`], JSON form):
//! - the key: a JSON object of the key columns' exact text;
//! - the Avro value: a Debezium-shaped envelope (`before`, `after`, `op`,
//!   `source`, `ts_ms`) whose writer schema is generated from the event's
//!   [`TableSchema`](crate::event::TableSchema) and carries it whole in
//!   the `ferry.table` attribute,
//!   framed as Avro single-object encoding or, once a schema registry gave
//!   the schema an id, as the Confluent wire format;
//! - the JSON value: `{"schema", "payload"}` with tagged values, for
//!   debugging.
//!
//! Pure and I/O-free so that it can be fuzzed (the one outside input is
//! the clock, for `ts_ms`): publishing schemas and talking to a registry
//! belong to the Kafka bus's producer and worker. It depends on events and
//! values alone (and the clock), never on config or the runtime.
//!
//! Files, by job: [`Encoder`] and [`Decoder`] (`encoder.rs`, `decoder.rs`)
//! drive the rest; `schema.rs` generates a table's Avro schema and the plan
//! (each column's natural Avro type) both directions use; `canonical.rs`
//! computes the Parsing Canonical Form and its fingerprint; `decimal.rs`
//! converts decimals to Avro decimal bytes and back; `avro_write.rs` and
//! `avro_read.rs` write and read the Avro datum; `json.rs` is the JSON
//! form; `tests.rs` checks them all, with apache-avro as the oracle.
//!
//! The Avro datum is written and read by hand rather than through
//! `apache_avro::types::Value`, because:
//! - decimals go from the digit string to two's-complement bytes (and
//!   back) exactly, at any size, with no bignum and no `f64`;
//! - the reader bounds nesting depth, lengths and counts, so a corrupt or
//!   hostile message is an error, never a panic, a stack overflow or a huge
//!   allocation (apache-avro 0.21 recurses without limit through the
//!   recursive `ferry.Value` type, and reads a truncated boolean or string
//!   as null);
//! - no value tree is built per message.
//!
//! apache-avro checks every schema the encoder generates, and the tests use
//! it as the oracle for the binary format.
//!
//! The fingerprint follows the Avro specification's Parsing Canonical Form
//! and is computed here: apache-avro 0.21's `canonical_form()` keeps
//! logical-type attributes (decimal precision and scale, `{"type":"string"}`
//! for a uuid), so its fingerprints differ from the Java and Python
//! libraries' for exactly the schemas Ferry writes.

use std::fmt;

use crate::event::TableId;

/// The custom attribute of the envelope record that holds the table's
/// [`TableSchema`](crate::event::TableSchema) as JSON, so that a reader
/// needs nothing but the schema.
pub const TABLE_ATTRIBUTE: &str = "ferry.table";

/// Deepest nesting of arrays and documents inside one value in the Avro
/// encoding: MongoDB's own limit for BSON documents, so every document a
/// source can read fits.
pub const MAX_DEPTH: usize = 100;

/// Deepest nesting of arrays and documents in the JSON encoding: each
/// level costs two JSON levels and the payload three, and serde_json stops
/// reading at 128.
pub const MAX_JSON_DEPTH: usize = 60;

/// Avro single-object encoding: marker, then the 8-byte little-endian
/// fingerprint.
const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
/// Confluent wire format: magic byte, then the 4-byte big-endian schema id.
const CONFLUENT_MAGIC: u8 = 0;

/// Prefix of the envelope's null field whose name carries a hash of the
/// `ferry.table` JSON. The Parsing Canonical Form drops custom attributes,
/// so without it two table schemas with the same Avro shape (`varchar(10)`
/// and `varchar(20)`, a column that became NOT NULL, a renamed column
/// whose sanitized name is unchanged) would share a fingerprint, and a
/// reader could rebuild the wrong
/// [`TableSchema`](crate::event::TableSchema). A `null` field with a
/// `null` default costs no byte per message and keeps consecutive schema
/// versions compatible for a registry in every direction.
const MARKER_PREFIX: &str = "ferry_table_";

/// Branches of the `ferry.Value` union.
const GENERIC_BRANCHES: i64 = 13;

/// Which value encoding the bus uses (`[kafka] encoding` in the config,
/// which names these variants in lowercase).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Avro binary: Confluent wire format with a schema registry when
    /// `schema_registry_url` is set, else Avro single-object encoding whose
    /// schemas live in the compacted `<prefix>._schemas` topic.
    #[default]
    Avro,
    /// Self-describing JSON (schema + payload), for debugging.
    Json,
}

/// How a value names its writer schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchemaRef {
    /// CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical
    /// Form (Avro single-object encoding).
    Fingerprint(u64),
    /// Schema id in a Confluent Schema Registry (Confluent wire format).
    Registry(u32),
}

impl fmt::Display for SchemaRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaRef::Fingerprint(fp) => write!(f, "fingerprint {fp:016x}"),
            SchemaRef::Registry(id) => write!(f, "registry id {id}"),
        }
    }
}

/// A schema the encoder started using: publish it before the first
/// message that uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSchema {
    /// What single-object-encoded values carry ([`SchemaRef::Fingerprint`]).
    pub fingerprint: u64,
    /// The table whose envelope this is (registry subject, topic).
    pub subject_table: TableId,
    /// The Avro schema, JSON text.
    pub avro_json: String,
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The value's writer schema was not added to the decoder yet: fetch
    /// it (schema topic or registry), [`Decoder::add_schema`], retry.
    #[error("unknown writer schema ({0})")]
    UnknownSchema(SchemaRef),
    /// The bytes or the schema text are not a Ferry envelope.
    #[error("invalid envelope: {0}")]
    Invalid(String),
    /// The event cannot be represented (a row that does not match its
    /// table, an unchanged TOAST datum in `before`, nesting deeper than
    /// [`MAX_DEPTH`]).
    #[error("cannot encode the event: {0}")]
    Unencodable(String),
}

fn invalid(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Invalid(msg.into())
}

fn unencodable(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Unencodable(msg.into())
}

// Each file's helpers are `pub(super)`: visible to its siblings, which
// import them by name; outside this folder only the re-exports below and
// the items above are seen.
mod avro_read;
mod avro_write;
mod canonical;
mod decimal;
mod decoder;
mod encoder;
mod json;
mod schema;
#[cfg(test)]
mod tests;

pub use decoder::Decoder;
pub use encoder::Encoder;
