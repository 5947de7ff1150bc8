//! The Kafka envelope: a [`ChangeEvent`] as Kafka key and value bytes, and
//! back, losslessly.
//!
//! Owns Ferry's wire format on Kafka (described for users in
//! `schemas/README.md`):
//! - the key: a JSON object of the key columns' exact text;
//! - the Avro value: a Debezium-shaped envelope (`before`, `after`, `op`,
//!   `source`, `ts_ms`) whose writer schema is generated from the event's
//!   [`TableSchema`] and carries it whole in the `ferry.table` attribute,
//!   framed as Avro single-object encoding or, once a schema registry gave
//!   the schema an id, as the Confluent wire format;
//! - the JSON value: `{"schema", "payload"}` with tagged values, for
//!   debugging.
//!
//! Pure and I/O-free so that it can be fuzzed: publishing schemas and
//! talking to a registry belong to the producer and the worker.
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

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::sync::Arc;

use serde_json::Value as Json;

use crate::config::KafkaEncoding;
use crate::decimal::MAX_PRECISION;
use crate::event::{ChangeEvent, Datum, Op, Position, Row, TableId, TableSchema};
use crate::value::{object_id_hex, Decimal, Numeric, TemporalKind, Value};
use crate::FastHashMap;

/// The custom attribute of the envelope record that holds the table's
/// [`TableSchema`] as JSON, so that a reader needs nothing but the schema.
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
/// reader could rebuild the wrong [`TableSchema`]. A `null` field with a
/// `null` default costs no byte per message and keeps consecutive schema
/// versions compatible for a registry in every direction.
const MARKER_PREFIX: &str = "ferry_table_";

/// Branches of the `ferry.Value` union.
const GENERIC_BRANCHES: i64 = 13;

/// Which value encoding the bus uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Avro binary, in single-object encoding or the Confluent wire format.
    Avro,
    /// Self-describing JSON (schema + payload), for debugging.
    Json,
}

impl From<KafkaEncoding> for Encoding {
    fn from(e: KafkaEncoding) -> Self {
        match e {
            KafkaEncoding::Avro => Encoding::Avro,
            KafkaEncoding::Json => Encoding::Json,
        }
    }
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

// ---------------------------------------------------------------------------
// Encoder

/// Turns change events into Kafka keys and values.
#[derive(Debug)]
pub struct Encoder {
    encoding: Encoding,
    pipeline: String,
    /// Every schema version seen per table, newest last.
    plans: FastHashMap<TableId, Vec<Arc<SchemaPlan>>>,
    /// Fingerprints already handed out as [`NewSchema`]; marked only once
    /// a message was encoded, so that a failed first encode does not lose
    /// the announcement.
    announced: HashSet<u64>,
    registry_ids: HashMap<u64, u32>,
    /// The plan of the last event encoded.
    last: Option<Arc<SchemaPlan>>,
}

impl Encoder {
    /// An encoder for `pipeline` (written to `source.name`).
    pub fn new(encoding: Encoding, pipeline: &str) -> Self {
        Self {
            encoding,
            pipeline: pipeline.to_owned(),
            plans: FastHashMap::default(),
            announced: HashSet::new(),
            registry_ids: HashMap::new(),
            last: None,
        }
    }

    /// The Kafka key: a JSON object of the key columns, in key order, each
    /// as its exact text (`{"id":"42"}`; arrays and documents as JSON
    /// arrays and objects of text, NULL as `null`).
    ///
    /// Same row key → same bytes, whatever the other columns or the schema
    /// version, so that Kafka keeps one row's changes on one partition and
    /// compaction keeps its latest. The row is `after` when there is one
    /// (the new key of a key-changing update), else `before`; a table
    /// without key, and a TRUNCATE, give `{}`.
    pub fn key(&self, ev: &ChangeEvent) -> Vec<u8> {
        let mut out = String::new();
        self.key_into(ev, &mut out);
        out.into_bytes()
    }

    /// [`Encoder::key`] into `out` (cleared first): a producer reuses one
    /// buffer, as librdkafka copies the key.
    pub fn key_into(&self, ev: &ChangeEvent, out: &mut String) {
        out.clear();
        let Some(row) = ev.after.as_ref().or(ev.before.as_ref()) else {
            out.push_str("{}");
            return;
        };
        out.push('{');
        let mut first = true;
        for &i in &ev.table.primary_key {
            let Some(col) = ev.table.columns.get(i) else {
                continue;
            };
            if !first {
                out.push(',');
            }
            first = false;
            json_string(out, &col.name);
            out.push(':');
            let value = match row.get(i) {
                Some(Datum::Value(v)) => Some(v),
                // A key column is never an unchanged TOAST value in
                // practice; fall back to the old row's value if it is.
                Some(Datum::UnchangedToast) => match ev.before.as_ref().and_then(|r| r.get(i)) {
                    Some(Datum::Value(v)) => Some(v),
                    _ => None,
                },
                None => None,
            };
            key_value(out, value, 0);
        }
        out.push('}');
    }

    /// Encodes the value.
    ///
    /// Avro: single-object encoding (`C3 01`, the 8-byte little-endian
    /// fingerprint, the datum) unless [`Encoder::set_registry_id`] gave the
    /// schema an id, then the Confluent wire format (`00`, the 4-byte
    /// big-endian id, the datum). Returns `Some(NewSchema)` with the first
    /// message of each distinct table schema; publish it before producing
    /// the message. JSON: self-describing, never a [`NewSchema`].
    pub fn encode(
        &mut self,
        ev: &ChangeEvent,
    ) -> Result<(Vec<u8>, Option<NewSchema>), EnvelopeError> {
        let mut buf = Vec::new();
        let new = self.encode_into(ev, &mut buf)?;
        Ok((buf, new))
    }

    /// [`Encoder::encode`] into `out` (cleared first): a producer reuses
    /// one buffer, as librdkafka copies the value.
    pub fn encode_into(
        &mut self,
        ev: &ChangeEvent,
        out: &mut Vec<u8>,
    ) -> Result<Option<NewSchema>, EnvelopeError> {
        let plan = self.plan_for(&ev.table)?;
        let now_ms = crate::runtime::now_micros().div_euclid(1000);
        match self.encoding {
            Encoding::Json => {
                *out = encode_json(&plan, ev, &self.pipeline, now_ms)?;
                Ok(None)
            }
            Encoding::Avro => {
                let mut w = AvroWriter {
                    buf: std::mem::take(out),
                };
                w.buf.clear();
                w.buf.reserve(96 + 24 * plan.columns.len());
                match self.registry_ids.get(&plan.fingerprint) {
                    Some(id) => {
                        w.buf.push(CONFLUENT_MAGIC);
                        w.buf.extend_from_slice(&id.to_be_bytes());
                    }
                    None => {
                        w.buf.extend_from_slice(&SINGLE_OBJECT_MARKER);
                        w.buf.extend_from_slice(&plan.fingerprint.to_le_bytes());
                    }
                }
                write_envelope(&mut w, &plan, ev, &self.pipeline, now_ms)?;
                let new = self.announced.insert(plan.fingerprint).then(|| NewSchema {
                    fingerprint: plan.fingerprint,
                    subject_table: plan.table.id.clone(),
                    avro_json: plan.avro_json.clone(),
                });
                *out = w.buf;
                Ok(new)
            }
        }
    }

    /// After the caller registered `fingerprint` with a Confluent registry:
    /// later values of that schema use the Confluent wire format with `id`.
    pub fn set_registry_id(&mut self, fingerprint: u64, id: u32) {
        self.registry_ids.insert(fingerprint, id);
    }

    fn plan_for(&mut self, table: &Arc<TableSchema>) -> Result<Arc<SchemaPlan>, EnvelopeError> {
        // Sources share one `Arc` between a table's events, and changes of
        // one table come in runs: the last plan usually fits without
        // hashing the table's name.
        if let Some(p) = &self.last {
            if Arc::ptr_eq(&p.table, table) {
                return Ok(Arc::clone(p));
            }
        }
        let plan = self.find_or_build_plan(table)?;
        self.last = Some(Arc::clone(&plan));
        Ok(plan)
    }

    fn find_or_build_plan(
        &mut self,
        table: &Arc<TableSchema>,
    ) -> Result<Arc<SchemaPlan>, EnvelopeError> {
        if let Some(versions) = self.plans.get(&table.id) {
            // Newest first: a schema change makes the old version rare.
            if let Some(p) = versions
                .iter()
                .rev()
                .find(|p| Arc::ptr_eq(&p.table, table) || *p.table == **table)
            {
                return Ok(Arc::clone(p));
            }
        }
        let (plan, _) = SchemaPlan::build(Arc::clone(table), None)?;
        if self.encoding == Encoding::Avro {
            // A generator bug must stop the pipeline here, not produce
            // messages nobody can read.
            apache_avro::Schema::parse_str(&plan.avro_json).map_err(|e| {
                unencodable(format!(
                    "the generated Avro schema of {} is rejected by apache-avro: {e}",
                    table.id
                ))
            })?;
        }
        let plan = Arc::new(plan);
        self.plans
            .entry(table.id.clone())
            .or_default()
            .push(Arc::clone(&plan));
        Ok(plan)
    }
}

// ---------------------------------------------------------------------------
// Decoder

/// Turns Kafka values back into change events.
#[derive(Debug, Default)]
pub struct Decoder {
    by_fingerprint: FastHashMap<u64, Arc<SchemaPlan>>,
    by_registry_id: HashMap<u32, u64>,
    /// JSON values carry their table schema; one plan per distinct schema
    /// text, so that events share one `Arc<TableSchema>`.
    json_plans: HashMap<String, Arc<SchemaPlan>>,
}

/// Bounds the JSON plan cache against a topic full of distinct schemas.
const MAX_JSON_PLANS: usize = 1024;

impl Decoder {
    /// A decoder that knows no writer schema yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes a writer schema known (from the schema topic or a registry).
    /// Returns its fingerprint.
    ///
    /// The [`TableSchema`] comes from the `ferry.table` attribute; the
    /// schema must then be, in canonical form, exactly the envelope this
    /// module generates for that table, which proves that this decoder
    /// reads its binary layout right (a schema written by an incompatible
    /// Ferry version is refused here rather than misread later).
    pub fn add_schema(
        &mut self,
        avro_json: &str,
        registry_id: Option<u32>,
    ) -> Result<u64, EnvelopeError> {
        let json: Json = serde_json::from_str(avro_json)
            .map_err(|e| invalid(format!("the schema is not JSON: {e}")))?;
        let record = json
            .as_object()
            .ok_or_else(|| invalid("the schema is not a record"))?;
        let table = record
            .get(TABLE_ATTRIBUTE)
            .ok_or_else(|| invalid(format!("the schema has no {TABLE_ATTRIBUTE} attribute")))?;
        let table: TableSchema = serde_json::from_value(table.clone())
            .map_err(|e| invalid(format!("{TABLE_ATTRIBUTE}: {e}")))?;
        let marker = record
            .get("fields")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| f.get("name").and_then(Json::as_str))
            .find(|n| n.starts_with(MARKER_PREFIX))
            .ok_or_else(|| invalid("the schema has no ferry_table_* field"))?;
        let (plan, canonical) = SchemaPlan::build(Arc::new(table), Some(marker))?;
        if canonical_form(&json)? != canonical {
            return Err(invalid(format!(
                "the schema of {} is not the envelope this Ferry version writes for its {TABLE_ATTRIBUTE}",
                plan.table.id
            )));
        }
        let fingerprint = plan.fingerprint;
        self.by_fingerprint
            .entry(fingerprint)
            .or_insert_with(|| Arc::new(plan));
        if let Some(id) = registry_id {
            self.by_registry_id.insert(id, fingerprint);
        }
        Ok(fingerprint)
    }

    /// Which writer schema a value needs (`None` for JSON values).
    pub fn schema_ref(value: &[u8]) -> Result<Option<SchemaRef>, EnvelopeError> {
        match value {
            [b'{', ..] => Ok(None),
            [0xC3, 0x01, rest @ ..] => {
                let fp = rest
                    .get(..8)
                    .ok_or_else(|| invalid("truncated single-object header"))?;
                let mut b = [0u8; 8];
                b.copy_from_slice(fp);
                Ok(Some(SchemaRef::Fingerprint(u64::from_le_bytes(b))))
            }
            [CONFLUENT_MAGIC, rest @ ..] => {
                let id = rest
                    .get(..4)
                    .ok_or_else(|| invalid("truncated Confluent header"))?;
                let mut b = [0u8; 4];
                b.copy_from_slice(id);
                Ok(Some(SchemaRef::Registry(u32::from_be_bytes(b))))
            }
            [] => Err(invalid("empty value")),
            [b, ..] => Err(invalid(format!("unknown framing (first byte {b:#04x})"))),
        }
    }

    /// Decodes a value. [`EnvelopeError::UnknownSchema`] when its writer
    /// schema was not added yet: the caller fetches it and retries.
    pub fn decode(&mut self, value: &[u8]) -> Result<ChangeEvent, EnvelopeError> {
        let (plan, datum) = match Self::schema_ref(value)? {
            None => return self.decode_json(value),
            Some(r @ SchemaRef::Fingerprint(fp)) => (
                self.by_fingerprint
                    .get(&fp)
                    .ok_or(EnvelopeError::UnknownSchema(r))?,
                &value[10..],
            ),
            Some(r @ SchemaRef::Registry(id)) => (
                self.by_registry_id
                    .get(&id)
                    .and_then(|fp| self.by_fingerprint.get(fp))
                    .ok_or(EnvelopeError::UnknownSchema(r))?,
                &value[5..],
            ),
        };
        read_envelope(plan, datum)
    }

    fn decode_json(&mut self, value: &[u8]) -> Result<ChangeEvent, EnvelopeError> {
        let doc: Json = serde_json::from_slice(value).map_err(|e| invalid(format!("JSON: {e}")))?;
        let schema = doc
            .get("schema")
            .ok_or_else(|| invalid("JSON value without schema"))?;
        let key = schema.to_string();
        let plan = match self.json_plans.get(&key) {
            Some(p) => Arc::clone(p),
            None => {
                let table: TableSchema = serde_json::from_value(schema.clone())
                    .map_err(|e| invalid(format!("schema: {e}")))?;
                let (plan, _) = SchemaPlan::build(Arc::new(table), None)?;
                let plan = Arc::new(plan);
                if self.json_plans.len() >= MAX_JSON_PLANS {
                    self.json_plans.clear();
                }
                self.json_plans.insert(key, Arc::clone(&plan));
                plan
            }
        };
        let payload = doc
            .get("payload")
            .and_then(Json::as_object)
            .ok_or_else(|| invalid("JSON value without payload"))?;
        read_json_payload(&plan, payload)
    }
}

// ---------------------------------------------------------------------------
// Schema generation

/// Everything needed to write and read one table schema's envelope.
#[derive(Debug)]
struct SchemaPlan {
    table: Arc<TableSchema>,
    /// `serde_json` text of the table schema (the `ferry.table` attribute
    /// and the JSON encoding's `schema`).
    table_json: String,
    columns: Vec<ColumnPlan>,
    /// Avro field name → column index.
    field_index: HashMap<String, usize>,
    avro_json: String,
    fingerprint: u64,
}

#[derive(Debug)]
struct ColumnPlan {
    /// The Avro field name: the column name made a valid, unique Avro name.
    field: String,
    clean: Clean,
}

/// A column's natural Avro type, used when the value has the variant the
/// column's type implies; every other value goes to `ferry.Value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clean {
    /// Arrays: `["null", "ferry.Value"]`, no clean branch.
    Generic,
    Boolean,
    Int,
    Long,
    Double,
    /// `numeric(p,s)` with 1 ≤ p ≤ 1000 and 0 ≤ s ≤ p (what Avro's decimal
    /// allows).
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// Unconstrained numeric, and numeric typmods Avro's decimal cannot
    /// express (negative scale, scale above precision): the digit text.
    NumericText,
    Text,
    Uuid,
    Bytes,
    Temporal(TemporalKind),
    Json,
}

impl Clean {
    /// Union index of the `ferry.Value` branch.
    fn generic_branch(self) -> i64 {
        if self == Clean::Generic {
            1
        } else {
            2
        }
    }

    fn avro_type(self) -> Option<String> {
        Some(match self {
            Clean::Generic => return None,
            Clean::Boolean => "\"boolean\"".into(),
            Clean::Int => "\"int\"".into(),
            Clean::Long => "\"long\"".into(),
            Clean::Double => "\"double\"".into(),
            Clean::Decimal { precision, scale } => format!(
                r#"{{"type":"bytes","logicalType":"decimal","precision":{precision},"scale":{scale}}}"#
            ),
            Clean::NumericText | Clean::Text => "\"string\"".into(),
            Clean::Uuid => {
                r#"{"type":"string","logicalType":"uuid","connect.name":"io.debezium.data.Uuid"}"#
                    .into()
            }
            Clean::Bytes => "\"bytes\"".into(),
            Clean::Temporal(k) => format!(
                r#"{{"type":"string","connect.name":"{}"}}"#,
                temporal_connect_name(k)
            ),
            Clean::Json => r#"{"type":"string","connect.name":"io.debezium.data.Json"}"#.into(),
        })
    }
}

/// Debezium's names for its ISO-string temporal types. Ferry's text is
/// PostgreSQL's ISO output (`2024-01-02 03:04:05.5+00`, `infinity`, BC
/// dates, `1 day 02:00:00`), close to but not always ISO 8601.
fn temporal_connect_name(k: TemporalKind) -> &'static str {
    match k {
        TemporalKind::Date => "io.debezium.time.IsoDate",
        TemporalKind::Time => "io.debezium.time.IsoTime",
        TemporalKind::TimeTz => "io.debezium.time.ZonedTime",
        TemporalKind::Timestamp => "io.debezium.time.IsoTimestamp",
        TemporalKind::Timestamptz => "io.debezium.time.ZonedTimestamp",
        TemporalKind::Interval => "io.debezium.time.Interval",
    }
}

/// Symbols of `ferry.TemporalKind`, in enum order; also the JSON tags.
const TEMPORAL_KINDS: [(TemporalKind, &str); 6] = [
    (TemporalKind::Date, "date"),
    (TemporalKind::Time, "time"),
    (TemporalKind::TimeTz, "timetz"),
    (TemporalKind::Timestamp, "timestamp"),
    (TemporalKind::Timestamptz, "timestamptz"),
    (TemporalKind::Interval, "interval"),
];

fn temporal_index(k: TemporalKind) -> usize {
    match k {
        TemporalKind::Date => 0,
        TemporalKind::Time => 1,
        TemporalKind::TimeTz => 2,
        TemporalKind::Timestamp => 3,
        TemporalKind::Timestamptz => 4,
        TemporalKind::Interval => 5,
    }
}

/// The clean type of a column from its `type_sql` (PostgreSQL's
/// `format_type` text, or the names the MongoDB source uses).
fn classify(type_sql: &str, is_enum: bool) -> Clean {
    if is_enum {
        return Clean::Text;
    }
    let lower = type_sql.trim().to_ascii_lowercase();
    if lower.ends_with("[]") {
        return Clean::Generic;
    }
    let t = lower.strip_prefix("pg_catalog.").unwrap_or(&lower);
    if let Some(c) = classify_numeric(t) {
        return c;
    }
    // Drop modifiers anywhere ("timestamp(3) with time zone",
    // "character varying(10)") and normalize spaces.
    let mut base = String::with_capacity(t.len());
    let mut depth = 0u32;
    for ch in t.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if depth == 0 => base.push(c),
            _ => {}
        }
    }
    let base = base.split_whitespace().collect::<Vec<_>>().join(" ");
    match base.as_str() {
        "boolean" | "bool" => Clean::Boolean,
        "smallint" | "int2" | "integer" | "int" | "int4" => Clean::Int,
        "bigint" | "int8" | "oid" => Clean::Long,
        "real" | "float4" | "double precision" | "float8" | "float" => Clean::Double,
        "uuid" => Clean::Uuid,
        "bytea" => Clean::Bytes,
        "date" => Clean::Temporal(TemporalKind::Date),
        "time" | "time without time zone" => Clean::Temporal(TemporalKind::Time),
        "timetz" | "time with time zone" => Clean::Temporal(TemporalKind::TimeTz),
        "timestamp" | "timestamp without time zone" => Clean::Temporal(TemporalKind::Timestamp),
        "timestamptz" | "timestamp with time zone" => Clean::Temporal(TemporalKind::Timestamptz),
        "json" | "jsonb" => Clean::Json,
        b if b == "interval" || b.starts_with("interval ") => {
            Clean::Temporal(TemporalKind::Interval)
        }
        _ => Clean::Text,
    }
}

/// `numeric`, `numeric(p)`, `numeric(p,s)` (and `decimal…`); `None` when
/// the type is not numeric at all.
fn classify_numeric(t: &str) -> Option<Clean> {
    let rest = t
        .strip_prefix("numeric")
        .or_else(|| t.strip_prefix("decimal"))?
        .trim();
    if rest.is_empty() {
        return Some(Clean::NumericText);
    }
    let inner = rest.strip_prefix('(')?;
    let parsed = inner.strip_suffix(')').and_then(|inner| {
        let mut parts = inner.split(',').map(str::trim);
        let p: i64 = parts.next()?.parse().ok()?;
        let s: i64 = match parts.next() {
            None => 0,
            Some(s) => s.parse().ok()?,
        };
        parts.next().is_none().then_some((p, s))
    });
    Some(match parsed {
        Some((p, s)) if (1..=i64::from(MAX_PRECISION)).contains(&p) && (0..=p).contains(&s) => {
            Clean::Decimal {
                precision: p as u32,
                scale: s as u32,
            }
        }
        _ => Clean::NumericText,
    })
}

/// A valid Avro name: characters outside `[A-Za-z0-9_]` become `_`, and a
/// leading digit (or nothing) gets a `_` in front.
fn avro_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// `ferry.<schema>.<table>`, each part a valid Avro name.
fn namespace(id: &TableId) -> String {
    format!("ferry.{}.{}", avro_name(&id.schema), avro_name(&id.name))
}

/// The recursive generic value type; defined at its first use in a schema.
const FERRY_VALUE_SCHEMA: &str = concat!(
    r#"{"type":"record","name":"Value","namespace":"ferry","fields":[{"name":"v","type":["#,
    r#""null","boolean","long","double","#,
    r#"{"type":"record","name":"Numeric","fields":[{"name":"text","type":"string"}]},"#,
    r#""string","#,
    r#"{"type":"record","name":"Json","fields":[{"name":"text","type":"string"}]},"#,
    r#"{"type":"fixed","name":"Uuid","size":16},"#,
    r#""bytes","#,
    r#"{"type":"record","name":"Temporal","fields":[{"name":"kind","type":{"type":"enum","name":"TemporalKind","symbols":["date","time","timetz","timestamp","timestamptz","interval"]}},{"name":"text","type":"string"}]},"#,
    r#"{"type":"record","name":"Array","fields":[{"name":"items","type":{"type":"array","items":"ferry.Value"}}]},"#,
    r#"{"type":"fixed","name":"ObjectId","size":12},"#,
    r#"{"type":"record","name":"Document","fields":[{"name":"fields","type":{"type":"array","items":{"type":"record","name":"Field","fields":[{"name":"name","type":"string"},{"name":"value","type":"ferry.Value"}]}}}]}"#,
    r#"]}]}"#
);

const SOURCE_SCHEMA: &str = concat!(
    r#"{"type":"record","name":"Source","namespace":"ferry","fields":["#,
    r#"{"name":"connector","type":"string"},"#,
    r#"{"name":"name","type":"string"},"#,
    r#"{"name":"schema","type":"string"},"#,
    r#"{"name":"table","type":"string"},"#,
    r#"{"name":"commit_lsn","type":"long"},"#,
    r#"{"name":"ordinal","type":"long"},"#,
    r#"{"name":"xid","type":["null","long"],"default":null},"#,
    r#"{"name":"resume_token","type":["null","string"],"default":null},"#,
    r#"{"name":"ts_ms","type":"long"},"#,
    r#"{"name":"ts_us","type":"long"},"#,
    r#"{"name":"snapshot","type":"boolean","default":false}"#,
    r#"]}"#
);

impl SchemaPlan {
    /// The plan of `table`, and the Parsing Canonical Form of its schema.
    /// `marker` overrides the marker field's name (a decoder keeps the
    /// writer's, so that a change in how `TableSchema` serializes does not
    /// orphan old schemas).
    fn build(
        table: Arc<TableSchema>,
        marker: Option<&str>,
    ) -> Result<(SchemaPlan, String), EnvelopeError> {
        if let Some(&i) = table
            .primary_key
            .iter()
            .find(|&&i| i >= table.columns.len())
        {
            return Err(invalid(format!(
                "table {}: key column {i} out of range",
                table.id
            )));
        }
        let table_json = serde_json::to_string(&*table)
            .map_err(|e| invalid(format!("table {}: {e}", table.id)))?;
        let mut used = HashSet::new();
        let mut columns = Vec::with_capacity(table.columns.len());
        let mut field_index = HashMap::with_capacity(table.columns.len());
        for (i, c) in table.columns.iter().enumerate() {
            let base = avro_name(&c.name);
            let mut field = base.clone();
            let mut n = 2;
            while used.contains(&field) {
                field = format!("{base}_{n}");
                n += 1;
            }
            used.insert(field.clone());
            field_index.insert(field.clone(), i);
            columns.push(ColumnPlan {
                field,
                clean: classify(&c.type_sql, c.enum_labels.is_some()),
            });
        }
        let marker = match marker {
            Some(m) => m.to_owned(),
            None => format!(
                "{MARKER_PREFIX}{:016x}",
                rabin_fingerprint(table_json.as_bytes())
            ),
        };
        let avro_json = avro_schema(&table.id, &table_json, &columns, &marker);
        let parsed: Json = serde_json::from_str(&avro_json)
            .map_err(|e| invalid(format!("generated schema of {}: {e}", table.id)))?;
        let canonical = canonical_form(&parsed)?;
        let plan = SchemaPlan {
            fingerprint: rabin_fingerprint(canonical.as_bytes()),
            table,
            table_json,
            columns,
            field_index,
            avro_json,
        };
        Ok((plan, canonical))
    }
}

fn avro_schema(id: &TableId, table_json: &str, columns: &[ColumnPlan], marker: &str) -> String {
    let ns = namespace(id);
    let mut s = String::with_capacity(
        FERRY_VALUE_SCHEMA.len()
            + SOURCE_SCHEMA.len()
            + table_json.len()
            + 96 * columns.len()
            + 512,
    );
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        r#"{{"type":"record","name":"Envelope","namespace":"{ns}","{TABLE_ATTRIBUTE}":{table_json},"fields":["#
    );
    s.push_str(r#"{"name":"before","type":["null",{"type":"record","name":"Value","fields":["#);
    let mut generic_defined = false;
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, r#"{{"name":"{}","type":["null","#, c.field);
        if let Some(t) = c.clean.avro_type() {
            s.push_str(&t);
            s.push(',');
        }
        if generic_defined {
            s.push_str("\"ferry.Value\"");
        } else {
            s.push_str(FERRY_VALUE_SCHEMA);
            generic_defined = true;
        }
        // Defaults keep adding and dropping columns compatible for a
        // registry.
        s.push_str(r#"],"default":null}"#);
    }
    s.push_str(r#"]}],"default":null},"#);
    let _ = write!(
        s,
        r#"{{"name":"after","type":["null","{ns}.Value"],"default":null}},"#
    );
    s.push_str(r#"{"name":"unchanged","type":{"type":"array","items":"string"},"default":[]},"#);
    s.push_str(r#"{"name":"op","type":"string"},"#);
    let _ = write!(s, r#"{{"name":"source","type":{SOURCE_SCHEMA}}},"#);
    s.push_str(r#"{"name":"ts_ms","type":"long"},"#);
    let _ = write!(s, r#"{{"name":"{marker}","type":"null","default":null}}"#);
    s.push_str("]}");
    s
}

// ---------------------------------------------------------------------------
// Canonical form and fingerprint

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The Avro specification's Parsing Canonical Form: primitives as bare
/// names, full names everywhere, only `name`, `type`, `fields`, `symbols`,
/// `items`, `values`, `size` kept, in that order, no whitespace. Errors
/// (never panics) on JSON that is not a schema.
fn canonical_form(schema: &Json) -> Result<String, EnvelopeError> {
    let mut out = String::new();
    write_canonical_form(schema, "", &mut HashSet::new(), &mut out, 0)?;
    Ok(out)
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

/// Appends the Parsing Canonical Form of `schema` (names resolved in
/// namespace `ns`; `defined` holds the named types already written) to
/// `out`.
fn write_canonical_form(
    schema: &Json,
    ns: &str,
    defined: &mut HashSet<String>,
    out: &mut String,
    depth: usize,
) -> Result<(), EnvelopeError> {
    if depth > 64 {
        return Err(invalid("schema nested too deeply"));
    }
    let bad = || invalid("not an Avro schema");
    match schema {
        Json::String(name) => {
            out.push('"');
            if PRIMITIVES.contains(&name.as_str()) {
                out.push_str(name);
            } else {
                out.push_str(&full_name(name, ns));
            }
            out.push('"');
        }
        Json::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical_form(b, ns, defined, out, depth + 1)?;
            }
            out.push(']');
        }
        Json::Object(m) => match m.get("type").ok_or_else(bad)? {
            Json::String(t) => match t.as_str() {
                "record" | "error" | "enum" | "fixed" => {
                    let name = m.get("name").and_then(Json::as_str).ok_or_else(bad)?;
                    let own_ns = m.get("namespace").and_then(Json::as_str).unwrap_or(ns);
                    let full = full_name(name, own_ns);
                    if !defined.insert(full.clone()) {
                        let _ = write!(out, "\"{full}\"");
                        return Ok(());
                    }
                    let inner_ns = full.rsplit_once('.').map_or("", |(n, _)| n);
                    let _ = write!(out, r#"{{"name":"{full}","type":"{t}""#);
                    match t.as_str() {
                        "enum" => {
                            out.push_str(r#","symbols":["#);
                            let symbols =
                                m.get("symbols").and_then(Json::as_array).ok_or_else(bad)?;
                            for (i, s) in symbols.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let _ = write!(out, "\"{}\"", s.as_str().ok_or_else(bad)?);
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            let size = m.get("size").ok_or_else(bad)?;
                            let size = size
                                .as_u64()
                                .or_else(|| size.as_str().and_then(|s| s.parse().ok()))
                                .ok_or_else(bad)?;
                            let _ = write!(out, r#","size":{size}"#);
                        }
                        _ => {
                            out.push_str(r#","fields":["#);
                            let fields =
                                m.get("fields").and_then(Json::as_array).ok_or_else(bad)?;
                            for (i, f) in fields.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let fname = f.get("name").and_then(Json::as_str).ok_or_else(bad)?;
                                let _ = write!(out, r#"{{"name":"{fname}","type":"#);
                                write_canonical_form(
                                    f.get("type").ok_or_else(bad)?,
                                    inner_ns,
                                    defined,
                                    out,
                                    depth + 1,
                                )?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                }
                "array" => {
                    out.push_str(r#"{"type":"array","items":"#);
                    write_canonical_form(
                        m.get("items").ok_or_else(bad)?,
                        ns,
                        defined,
                        out,
                        depth + 1,
                    )?;
                    out.push('}');
                }
                "map" => {
                    out.push_str(r#"{"type":"map","values":"#);
                    write_canonical_form(
                        m.get("values").ok_or_else(bad)?,
                        ns,
                        defined,
                        out,
                        depth + 1,
                    )?;
                    out.push('}');
                }
                // A primitive with attributes (logical types, connect.name)
                // or a reference written as an object.
                _ => write_canonical_form(&Json::String(t.clone()), ns, defined, out, depth + 1)?,
            },
            nested @ (Json::Object(_) | Json::Array(_)) => {
                write_canonical_form(nested, ns, defined, out, depth + 1)?
            }
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    }
    Ok(())
}

const RABIN_EMPTY: u64 = 0xc15d_213a_a4d7_a795;
const RABIN_TABLE: [u64; 256] = rabin_table();

const fn rabin_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (RABIN_EMPTY & (fp & 1).wrapping_neg());
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
}

/// CRC-64-AVRO (the Avro specification's Rabin fingerprint).
fn rabin_fingerprint(bytes: &[u8]) -> u64 {
    let mut fp = RABIN_EMPTY;
    for &b in bytes {
        fp = (fp >> 8) ^ RABIN_TABLE[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}

// ---------------------------------------------------------------------------
// Decimal ↔ two's complement, by hand on the digit string

/// Decimal digits (ASCII, no sign) → minimal big-endian magnitude (empty
/// for zero). Works on base-2^32 limbs fed nine digits at a time.
fn digits_to_magnitude(digits: &[u8]) -> Vec<u8> {
    let mut limbs: Vec<u32> = Vec::with_capacity(digits.len() / 9 + 1);
    let first = match digits.len() % 9 {
        0 => 9,
        r => r,
    };
    let mut start = 0;
    let mut end = first.min(digits.len());
    while start < digits.len() {
        let chunk = &digits[start..end];
        let value = chunk
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        let mul = 10u32.pow(chunk.len() as u32);
        let mut carry = u64::from(value);
        for l in limbs.iter_mut() {
            let v = u64::from(*l) * u64::from(mul) + carry;
            *l = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
        start = end;
        end = (end + 9).min(digits.len());
    }
    let mut out: Vec<u8> = limbs.iter().rev().flat_map(|l| l.to_be_bytes()).collect();
    let zeros = out.iter().take_while(|&&b| b == 0).count();
    out.drain(..zeros);
    out
}

/// Big-endian magnitude → decimal digits (`"0"` for zero).
fn magnitude_to_digits(mag: &[u8]) -> String {
    let mut limbs: Vec<u32> = mag
        .rchunks(4)
        .map(|c| c.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
        .collect();
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
    if limbs.is_empty() {
        return "0".to_owned();
    }
    const CHUNK: u64 = 1_000_000_000;
    let mut chunks: Vec<u32> = Vec::with_capacity(limbs.len() * 32 / 29 + 1);
    while !limbs.is_empty() {
        let mut rem = 0u64;
        for l in limbs.iter_mut().rev() {
            let cur = (rem << 32) | u64::from(*l);
            *l = (cur / CHUNK) as u32;
            rem = cur % CHUNK;
        }
        chunks.push(rem as u32);
        while limbs.last() == Some(&0) {
            limbs.pop();
        }
    }
    let mut s = String::with_capacity(chunks.len() * 9);
    let mut it = chunks.iter().rev();
    if let Some(top) = it.next() {
        let _ = write!(s, "{top}");
    }
    for c in it {
        let _ = write!(s, "{c:09}");
    }
    s
}

/// Minimal two's-complement big-endian bytes of ±`mag` (as Java's
/// `BigInteger.toByteArray`, which Avro's decimal specifies).
fn to_twos_complement(negative: bool, mut mag: Vec<u8>) -> Vec<u8> {
    if mag.is_empty() {
        return vec![0];
    }
    if !negative {
        if mag[0] & 0x80 != 0 {
            mag.insert(0, 0);
        }
        return mag;
    }
    for b in mag.iter_mut() {
        *b = !*b;
    }
    // +1; the magnitude is not zero, so the carry stops inside.
    for b in mag.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    if mag[0] & 0x80 == 0 {
        mag.insert(0, 0xFF);
    }
    mag
}

/// Two's-complement big-endian bytes → (negative, minimal magnitude).
fn from_twos_complement(bytes: &[u8]) -> (bool, Vec<u8>) {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut mag = bytes.to_vec();
    if negative {
        for b in mag.iter_mut() {
            *b = !*b;
        }
        for b in mag.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    let zeros = mag.iter().take_while(|&&b| b == 0).count();
    mag.drain(..zeros);
    (negative, mag)
}

/// The Avro decimal bytes of `d` in a `numeric(precision, scale)` column:
/// rescaled exactly by appending zeros; `None` when `d` has more
/// fractional digits than `scale` or then more digits than `precision`.
fn decimal_to_avro(d: &Decimal, precision: u32, scale: u32) -> Option<Vec<u8>> {
    if d.scale() > scale {
        return None;
    }
    if d.is_zero() {
        return Some(vec![0]);
    }
    let pad = (scale - d.scale()) as usize;
    if d.digits().len() + pad > precision as usize {
        return None;
    }
    let mut unscaled = Vec::with_capacity(d.digits().len() + pad);
    unscaled.extend_from_slice(d.digits().as_bytes());
    unscaled.resize(d.digits().len() + pad, b'0');
    Some(to_twos_complement(
        d.is_negative(),
        digits_to_magnitude(&unscaled),
    ))
}

/// Bytes an Avro decimal of `precision` digits may take: p·log₂10/8 + a
/// sign bit, rounded up generously. Bounds the quadratic base conversion
/// of a corrupt value.
fn max_decimal_bytes(precision: u32) -> usize {
    precision as usize / 2 + 2
}

fn decimal_from_avro(bytes: &[u8], precision: u32, scale: u32) -> Result<Decimal, EnvelopeError> {
    if bytes.is_empty() || bytes.len() > max_decimal_bytes(precision) {
        return Err(invalid(format!(
            "a numeric({precision},{scale}) value of {} bytes",
            bytes.len()
        )));
    }
    let (negative, mag) = from_twos_complement(bytes);
    let digits = magnitude_to_digits(&mag);
    if digits.len() > precision as usize {
        return Err(invalid(format!(
            "a numeric({precision},{scale}) value of {} digits",
            digits.len()
        )));
    }
    let scale = scale as usize;
    let mut text = String::with_capacity(digits.len() + scale + 3);
    if negative {
        text.push('-');
    }
    if scale == 0 {
        text.push_str(&digits);
    } else if digits.len() > scale {
        let (i, f) = digits.split_at(digits.len() - scale);
        let _ = write!(text, "{i}.{f}");
    } else {
        text.push_str("0.");
        text.extend(std::iter::repeat_n('0', scale - digits.len()));
        text.push_str(&digits);
    }
    text.parse()
        .map_err(|e| invalid(format!("numeric value: {e}")))
}

// ---------------------------------------------------------------------------
// Avro datum writing

fn op_code(op: Op) -> &'static str {
    match op {
        Op::Insert => "c",
        Op::Update => "u",
        Op::Delete => "d",
        Op::Read => "r",
        Op::Truncate => "t",
    }
}

fn op_from_code(s: &str) -> Result<Op, EnvelopeError> {
    Ok(match s {
        "c" => Op::Insert,
        "u" => Op::Update,
        "d" => Op::Delete,
        "r" => Op::Read,
        "t" => Op::Truncate,
        other => return Err(invalid(format!("unknown op {other:?}"))),
    })
}

struct AvroWriter {
    buf: Vec<u8>,
}

impl AvroWriter {
    /// Zig-zag varint (Avro `int`, `long`, lengths, union indexes).
    fn long(&mut self, v: i64) {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        while n >= 0x80 {
            self.buf.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.buf.push(n as u8);
    }

    fn bool(&mut self, b: bool) {
        self.buf.push(u8::from(b));
    }

    fn double(&mut self, f: f64) {
        self.buf.extend_from_slice(&f.to_le_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.long(b.len() as i64);
        self.buf.extend_from_slice(b);
    }

    fn string(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
}

fn write_envelope(
    w: &mut AvroWriter,
    plan: &SchemaPlan,
    ev: &ChangeEvent,
    pipeline: &str,
    now_ms: i64,
) -> Result<(), EnvelopeError> {
    write_row_opt(w, plan, ev.before.as_ref(), None)?;
    let mut unchanged = Vec::new();
    write_row_opt(w, plan, ev.after.as_ref(), Some(&mut unchanged))?;
    if !unchanged.is_empty() {
        w.long(unchanged.len() as i64);
        for &i in &unchanged {
            w.string(&plan.columns[i].field);
        }
    }
    w.long(0);
    w.string(op_code(ev.op));
    // ferry.Source
    w.string("ferry");
    w.string(pipeline);
    w.string(&ev.table.id.schema);
    w.string(&ev.table.id.name);
    // Avro has no unsigned long: the bits travel as is.
    w.long(ev.position.commit_lsn as i64);
    w.long(ev.position.ordinal as i64);
    match ev.xid {
        None => w.long(0),
        Some(x) => {
            w.long(1);
            w.long(i64::from(x));
        }
    }
    match &ev.resume_token {
        None => w.long(0),
        Some(t) => {
            w.long(1);
            w.string(t);
        }
    }
    w.long(ev.commit_ts_micros.div_euclid(1000));
    w.long(ev.commit_ts_micros);
    w.bool(ev.op == Op::Read);
    // Envelope ts_ms; the marker field is null and takes no byte.
    w.long(now_ms);
    Ok(())
}

fn check_row_len(plan: &SchemaPlan, row: &Row) -> Result<(), EnvelopeError> {
    if row.len() != plan.columns.len() {
        return Err(unencodable(format!(
            "a row of {} datums for the {} columns of {}",
            row.len(),
            plan.columns.len(),
            plan.table.id
        )));
    }
    Ok(())
}

fn write_row_opt(
    w: &mut AvroWriter,
    plan: &SchemaPlan,
    row: Option<&Row>,
    mut unchanged: Option<&mut Vec<usize>>,
) -> Result<(), EnvelopeError> {
    let Some(row) = row else {
        w.long(0);
        return Ok(());
    };
    check_row_len(plan, row)?;
    w.long(1);
    for (i, (col, datum)) in plan.columns.iter().zip(row).enumerate() {
        match datum {
            Datum::UnchangedToast => match unchanged.as_deref_mut() {
                Some(u) => {
                    u.push(i);
                    w.long(0);
                }
                None => return Err(unencodable("an unchanged TOAST datum in `before`")),
            },
            Datum::Value(Value::Null) => w.long(0),
            Datum::Value(v) => {
                if !write_clean(w, col.clean, v) {
                    w.long(col.clean.generic_branch());
                    write_generic(w, v, 0)?;
                }
            }
        }
    }
    Ok(())
}

/// Writes the clean branch when `v` is the column type's natural variant;
/// writes nothing and returns false otherwise.
fn write_clean(w: &mut AvroWriter, clean: Clean, v: &Value) -> bool {
    match (clean, v) {
        (Clean::Boolean, Value::Bool(b)) => {
            w.long(1);
            w.bool(*b);
        }
        (Clean::Int, Value::Int(i)) if i32::try_from(*i).is_ok() => {
            w.long(1);
            w.long(*i);
        }
        (Clean::Long, Value::Int(i)) => {
            w.long(1);
            w.long(*i);
        }
        (Clean::Double, Value::Float(f)) => {
            w.long(1);
            w.double(*f);
        }
        (Clean::Decimal { precision, scale }, Value::Numeric(Numeric::Finite(d))) => {
            match decimal_to_avro(d, precision, scale) {
                Some(b) => {
                    w.long(1);
                    w.bytes(&b);
                }
                None => return false,
            }
        }
        (Clean::NumericText, Value::Numeric(Numeric::Finite(d))) => {
            w.long(1);
            w.string(&d.to_string());
        }
        (Clean::Text, Value::Text(s)) | (Clean::Json, Value::Json(s)) => {
            w.long(1);
            w.string(s);
        }
        // The clean branch does not carry the kind: only the column's own.
        (Clean::Temporal(k), Value::Temporal(vk, s)) if k == *vk => {
            w.long(1);
            w.string(s);
        }
        (Clean::Uuid, Value::Uuid(u)) => {
            w.long(1);
            let mut buf = uuid::Uuid::encode_buffer();
            w.string(u.hyphenated().encode_lower(&mut buf));
        }
        (Clean::Bytes, Value::Bytes(b)) => {
            w.long(1);
            w.bytes(b);
        }
        _ => return false,
    }
    true
}

/// A `ferry.Value` record.
fn write_generic(w: &mut AvroWriter, v: &Value, depth: usize) -> Result<(), EnvelopeError> {
    let too_deep = || unencodable(format!("a value nested deeper than {MAX_DEPTH} levels"));
    match v {
        Value::Null => w.long(0),
        Value::Bool(b) => {
            w.long(1);
            w.bool(*b);
        }
        Value::Int(i) => {
            w.long(2);
            w.long(*i);
        }
        Value::Float(f) => {
            w.long(3);
            w.double(*f);
        }
        Value::Numeric(n) => {
            w.long(4);
            w.string(&n.to_string());
        }
        Value::Text(s) => {
            w.long(5);
            w.string(s);
        }
        Value::Json(s) => {
            w.long(6);
            w.string(s);
        }
        Value::Uuid(u) => {
            w.long(7);
            w.buf.extend_from_slice(u.as_bytes());
        }
        Value::Bytes(b) => {
            w.long(8);
            w.bytes(b);
        }
        Value::Temporal(k, s) => {
            w.long(9);
            w.long(temporal_index(*k) as i64);
            w.string(s);
        }
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep());
            }
            w.long(10);
            if !items.is_empty() {
                w.long(items.len() as i64);
                for item in items {
                    write_generic(w, item, depth + 1)?;
                }
            }
            w.long(0);
        }
        Value::ObjectId(id) => {
            w.long(11);
            w.buf.extend_from_slice(id);
        }
        Value::Document(fields) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep());
            }
            w.long(12);
            if !fields.is_empty() {
                w.long(fields.len() as i64);
                for (name, item) in fields {
                    w.string(name);
                    write_generic(w, item, depth + 1)?;
                }
            }
            w.long(0);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Avro datum reading

/// Reads Avro binary from a slice. Every length and count is checked
/// against the bytes left before anything is allocated.
struct AvroReader<'a> {
    buf: &'a [u8],
}

impl<'a> AvroReader<'a> {
    fn long(&mut self) -> Result<i64, EnvelopeError> {
        let mut n = 0u64;
        let mut shift = 0u32;
        loop {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| invalid("truncated value"))?;
            self.buf = rest;
            if shift == 63 && b > 1 {
                return Err(invalid("varint longer than 64 bits"));
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    fn int(&mut self) -> Result<i32, EnvelopeError> {
        i32::try_from(self.long()?).map_err(|_| invalid("int out of range"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        if n > self.buf.len() {
            return Err(invalid("truncated value"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8], EnvelopeError> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| invalid("negative length"))?;
        self.take(n)
    }

    fn string(&mut self) -> Result<&'a str, EnvelopeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| invalid("a string that is not UTF-8"))
    }

    fn bool(&mut self) -> Result<bool, EnvelopeError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(invalid(format!("boolean byte {b}"))),
        }
    }

    fn double(&mut self) -> Result<f64, EnvelopeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(f64::from_le_bytes(b))
    }

    fn union(&mut self, branches: i64) -> Result<i64, EnvelopeError> {
        let i = self.long()?;
        if (0..branches).contains(&i) {
            Ok(i)
        } else {
            Err(invalid(format!("union branch {i} of {branches}")))
        }
    }

    /// The item count of the next array block, 0 at the end. Every item
    /// Ferry writes takes at least one byte, which bounds the count.
    fn block(&mut self) -> Result<usize, EnvelopeError> {
        let n = self.long()?;
        let count = if n < 0 {
            // A negative count is followed by the block's size in bytes.
            let _size = self.long()?;
            n.checked_neg()
                .ok_or_else(|| invalid("array block count"))?
        } else {
            n
        };
        usize::try_from(count)
            .ok()
            .filter(|&c| c <= self.buf.len())
            .ok_or_else(|| invalid("array block count beyond the value"))
    }
}

fn read_envelope(plan: &SchemaPlan, datum: &[u8]) -> Result<ChangeEvent, EnvelopeError> {
    let mut r = AvroReader { buf: datum };
    let before = read_row_opt(&mut r, plan)?;
    let mut after = read_row_opt(&mut r, plan)?;
    loop {
        let n = r.block()?;
        if n == 0 {
            break;
        }
        for _ in 0..n {
            let name = r.string()?;
            mark_unchanged(plan, after.as_mut(), name)?;
        }
    }
    let op = op_from_code(r.string()?)?;
    let _connector = r.string()?;
    let _pipeline = r.string()?;
    let schema = r.string()?;
    let table = r.string()?;
    if schema != plan.table.id.schema || table != plan.table.id.name {
        return Err(invalid(format!(
            "source {schema}.{table} in an envelope of {}",
            plan.table.id
        )));
    }
    let commit_lsn = r.long()? as u64;
    let ordinal = r.long()? as u64;
    let xid = match r.union(2)? {
        0 => None,
        _ => Some(u32::try_from(r.long()?).map_err(|_| invalid("xid out of range"))?),
    };
    let resume_token = match r.union(2)? {
        0 => None,
        _ => Some(Arc::<str>::from(r.string()?)),
    };
    let _ts_ms = r.long()?;
    let commit_ts_micros = r.long()?;
    let _snapshot = r.bool()?;
    let _encoded_ms = r.long()?;
    if !r.buf.is_empty() {
        return Err(invalid(format!("{} bytes after the envelope", r.buf.len())));
    }
    Ok(ChangeEvent {
        table: Arc::clone(&plan.table),
        op,
        before,
        after,
        position: Position {
            commit_lsn,
            ordinal,
        },
        xid,
        commit_ts_micros,
        resume_token,
    })
}

fn mark_unchanged(
    plan: &SchemaPlan,
    after: Option<&mut Row>,
    name: &str,
) -> Result<(), EnvelopeError> {
    let i = *plan
        .field_index
        .get(name)
        .ok_or_else(|| invalid(format!("unchanged column {name:?} is not in the table")))?;
    let row = after.ok_or_else(|| invalid("unchanged columns without an `after` row"))?;
    match &mut row[i] {
        d @ Datum::Value(Value::Null) => *d = Datum::UnchangedToast,
        _ => return Err(invalid(format!("unchanged column {name:?} holds a value"))),
    }
    Ok(())
}

fn read_row_opt(r: &mut AvroReader<'_>, plan: &SchemaPlan) -> Result<Option<Row>, EnvelopeError> {
    if r.union(2)? == 0 {
        return Ok(None);
    }
    let mut row = Vec::with_capacity(plan.columns.len());
    for col in &plan.columns {
        let generic = col.clean.generic_branch();
        let v = match r.union(generic + 1)? {
            0 => Value::Null,
            b if b == generic => read_generic(r, 0)?,
            _ => read_clean(r, col.clean)?,
        };
        row.push(Datum::Value(v));
    }
    Ok(Some(row))
}

fn read_clean(r: &mut AvroReader<'_>, clean: Clean) -> Result<Value, EnvelopeError> {
    Ok(match clean {
        Clean::Boolean => Value::Bool(r.bool()?),
        Clean::Int => Value::Int(i64::from(r.int()?)),
        Clean::Long => Value::Int(r.long()?),
        Clean::Double => Value::Float(r.double()?),
        Clean::Decimal { precision, scale } => Value::Numeric(Numeric::Finite(decimal_from_avro(
            r.bytes()?,
            precision,
            scale,
        )?)),
        Clean::NumericText => Value::Numeric(Numeric::Finite(
            r.string()?
                .parse()
                .map_err(|e| invalid(format!("numeric value: {e}")))?,
        )),
        Clean::Text => Value::Text(r.string()?.to_owned()),
        Clean::Json => Value::Json(r.string()?.to_owned()),
        Clean::Temporal(k) => Value::Temporal(k, r.string()?.to_owned()),
        Clean::Uuid => Value::Uuid(
            uuid::Uuid::parse_str(r.string()?).map_err(|e| invalid(format!("uuid: {e}")))?,
        ),
        Clean::Bytes => Value::Bytes(r.bytes()?.to_vec()),
        Clean::Generic => return Err(invalid("no clean branch for this column")),
    })
}

fn read_generic(r: &mut AvroReader<'_>, depth: usize) -> Result<Value, EnvelopeError> {
    let too_deep = || invalid(format!("a value nested deeper than {MAX_DEPTH} levels"));
    Ok(match r.union(GENERIC_BRANCHES)? {
        0 => Value::Null,
        1 => Value::Bool(r.bool()?),
        2 => Value::Int(r.long()?),
        3 => Value::Float(r.double()?),
        4 => Value::Numeric(
            r.string()?
                .parse()
                .map_err(|e| invalid(format!("numeric value: {e}")))?,
        ),
        5 => Value::Text(r.string()?.to_owned()),
        6 => Value::Json(r.string()?.to_owned()),
        7 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(r.take(16)?);
            Value::Uuid(uuid::Uuid::from_bytes(b))
        }
        8 => Value::Bytes(r.bytes()?.to_vec()),
        9 => {
            let k = usize::try_from(r.int()?)
                .ok()
                .and_then(|i| TEMPORAL_KINDS.get(i))
                .ok_or_else(|| invalid("temporal kind out of range"))?
                .0;
            Value::Temporal(k, r.string()?.to_owned())
        }
        10 => {
            if depth >= MAX_DEPTH {
                return Err(too_deep());
            }
            let mut items = Vec::new();
            loop {
                let n = r.block()?;
                if n == 0 {
                    break;
                }
                items.reserve(n.min(4096));
                for _ in 0..n {
                    items.push(read_generic(r, depth + 1)?);
                }
            }
            Value::Array(items)
        }
        11 => {
            let mut b = [0u8; 12];
            b.copy_from_slice(r.take(12)?);
            Value::ObjectId(b)
        }
        12 => {
            if depth >= MAX_DEPTH {
                return Err(too_deep());
            }
            let mut fields = Vec::new();
            loop {
                let n = r.block()?;
                if n == 0 {
                    break;
                }
                fields.reserve(n.min(4096));
                for _ in 0..n {
                    let name = r.string()?.to_owned();
                    fields.push((name, read_generic(r, depth + 1)?));
                }
            }
            Value::Document(fields)
        }
        b => return Err(invalid(format!("ferry.Value branch {b}"))),
    })
}

// ---------------------------------------------------------------------------
// JSON

/// A JSON string literal (the same writer as jsonb values').
fn json_string(out: &mut String, s: &str) {
    crate::json::write_json_string(out, s);
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Shortest text that reads back to the same f64, in Rust's `{:?}`
/// notation: always a `.` or an exponent (`1.0`, `1e300`, `5e-324`), so
/// the text reads as a float; PostgreSQL's spellings for the specials.
/// Unlike [`crate::json::float_text`] (`1`, plain up to 1e17) this is wire
/// format: it is in encoded keys and tagged values, so it never changes.
fn float_envelope_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        format!("{f:?}")
    }
}

fn parse_float_text(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok().filter(|f| f.is_finite()),
    }
}

/// A key column's value: exact text, JSON arrays/objects for nested ones.
fn key_value(out: &mut String, v: Option<&Value>, depth: usize) {
    let text: String = match v {
        None | Some(Value::Null) => {
            out.push_str("null");
            return;
        }
        // Such an event cannot be encoded anyway (MAX_DEPTH).
        Some(Value::Array(_) | Value::Document(_)) if depth >= MAX_DEPTH => {
            out.push_str("null");
            return;
        }
        Some(Value::Array(items)) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                key_value(out, Some(item), depth + 1);
            }
            out.push(']');
            return;
        }
        Some(Value::Document(fields)) => {
            out.push('{');
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(out, name);
                out.push(':');
                key_value(out, Some(item), depth + 1);
            }
            out.push('}');
            return;
        }
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Int(i)) => i.to_string(),
        Some(Value::Float(f)) => float_envelope_text(*f),
        Some(Value::Numeric(n)) => n.to_string(),
        Some(Value::Text(s) | Value::Json(s) | Value::Temporal(_, s)) => {
            json_string(out, s);
            return;
        }
        Some(Value::Uuid(u)) => u.to_string(),
        Some(Value::Bytes(b)) => format!("\\x{}", hex(b)),
        Some(Value::ObjectId(id)) => object_id_hex(id),
    };
    json_string(out, &text);
}

fn encode_json(
    plan: &SchemaPlan,
    ev: &ChangeEvent,
    pipeline: &str,
    now_ms: i64,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = String::with_capacity(plan.table_json.len() + 320 + 32 * plan.columns.len());
    out.push_str(r#"{"schema":"#);
    out.push_str(&plan.table_json);
    out.push_str(r#","payload":{"before":"#);
    json_row(&mut out, plan, ev.before.as_ref(), None)?;
    out.push_str(r#","after":"#);
    let mut unchanged = Vec::new();
    json_row(&mut out, plan, ev.after.as_ref(), Some(&mut unchanged))?;
    out.push_str(r#","unchanged":["#);
    for (n, &i) in unchanged.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        json_string(&mut out, &plan.columns[i].field);
    }
    let _ = write!(
        out,
        r#"],"op":"{}","source":{{"connector":"ferry","name":"#,
        op_code(ev.op)
    );
    json_string(&mut out, pipeline);
    out.push_str(r#","schema":"#);
    json_string(&mut out, &ev.table.id.schema);
    out.push_str(r#","table":"#);
    json_string(&mut out, &ev.table.id.name);
    let _ = write!(
        out,
        r#","commit_lsn":{},"ordinal":{},"xid":"#,
        ev.position.commit_lsn, ev.position.ordinal
    );
    match ev.xid {
        Some(x) => {
            let _ = write!(out, "{x}");
        }
        None => out.push_str("null"),
    }
    out.push_str(r#","resume_token":"#);
    match &ev.resume_token {
        Some(t) => json_string(&mut out, t),
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        r#","ts_ms":{},"ts_us":{},"snapshot":{}}},"ts_ms":{now_ms}}}}}"#,
        ev.commit_ts_micros.div_euclid(1000),
        ev.commit_ts_micros,
        ev.op == Op::Read
    );
    Ok(out.into_bytes())
}

fn json_row(
    out: &mut String,
    plan: &SchemaPlan,
    row: Option<&Row>,
    mut unchanged: Option<&mut Vec<usize>>,
) -> Result<(), EnvelopeError> {
    let Some(row) = row else {
        out.push_str("null");
        return Ok(());
    };
    check_row_len(plan, row)?;
    out.push('{');
    for (i, (col, datum)) in plan.columns.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(out, &col.field);
        out.push(':');
        match datum {
            Datum::UnchangedToast => match unchanged.as_deref_mut() {
                Some(u) => {
                    u.push(i);
                    out.push_str("null");
                }
                None => return Err(unencodable("an unchanged TOAST datum in `before`")),
            },
            Datum::Value(v) => json_value(out, v, 0)?,
        }
    }
    out.push('}');
    Ok(())
}

/// The tagged JSON form of a value: `null`, `true`/`false`, integers and
/// text as plain JSON; every other variant as a one-key object naming it.
fn json_value(out: &mut String, v: &Value, depth: usize) -> Result<(), EnvelopeError> {
    let too_deep = || {
        unencodable(format!(
            "a value nested deeper than {MAX_JSON_DEPTH} levels (JSON encoding)"
        ))
    };
    let tagged = |out: &mut String, tag: &str, text: &str| {
        let _ = write!(out, r#"{{"{tag}":"#);
        json_string(out, text);
        out.push('}');
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Text(s) => json_string(out, s),
        // Every NaN reads back as the canonical one; keep any other bits.
        Value::Float(f) if f.is_nan() && f.to_bits() != f64::NAN.to_bits() => {
            tagged(out, "float_bits", &format!("{:016x}", f.to_bits()));
        }
        Value::Float(f) => tagged(out, "float", &float_envelope_text(*f)),
        Value::Numeric(n) => tagged(out, "numeric", &n.to_string()),
        Value::Json(s) => tagged(out, "json", s),
        Value::Uuid(u) => tagged(out, "uuid", &u.to_string()),
        Value::Bytes(b) => tagged(out, "bytes", &hex(b)),
        Value::Temporal(k, s) => tagged(out, TEMPORAL_KINDS[temporal_index(*k)].1, s),
        Value::ObjectId(id) => tagged(out, "oid", &object_id_hex(id)),
        Value::Array(items) => {
            if depth >= MAX_JSON_DEPTH {
                return Err(too_deep());
            }
            out.push_str(r#"{"array":["#);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_value(out, item, depth + 1)?;
            }
            out.push_str("]}");
        }
        Value::Document(fields) => {
            if depth >= MAX_JSON_DEPTH {
                return Err(too_deep());
            }
            // Alternating names and values: an array keeps order and
            // repeated names, and costs one nesting level less than pairs.
            out.push_str(r#"{"doc":["#);
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(out, name);
                out.push(',');
                json_value(out, item, depth + 1)?;
            }
            out.push_str("]}");
        }
    }
    Ok(())
}

fn read_json_payload(
    plan: &SchemaPlan,
    payload: &serde_json::Map<String, Json>,
) -> Result<ChangeEvent, EnvelopeError> {
    let field = |name: &str| {
        payload
            .get(name)
            .ok_or_else(|| invalid(format!("payload without {name}")))
    };
    let before = read_json_row(plan, field("before")?)?;
    let mut after = read_json_row(plan, field("after")?)?;
    for name in field("unchanged")?
        .as_array()
        .ok_or_else(|| invalid("unchanged is not an array"))?
    {
        let name = name
            .as_str()
            .ok_or_else(|| invalid("unchanged holds a non-string"))?;
        mark_unchanged(plan, after.as_mut(), name)?;
    }
    let op = op_from_code(
        field("op")?
            .as_str()
            .ok_or_else(|| invalid("op is not a string"))?,
    )?;
    let source = field("source")?
        .as_object()
        .ok_or_else(|| invalid("source is not an object"))?;
    let get = |name: &str| {
        source
            .get(name)
            .ok_or_else(|| invalid(format!("source without {name}")))
    };
    let bad = |name: &str| invalid(format!("source.{name} has the wrong type"));
    let schema = get("schema")?.as_str().ok_or_else(|| bad("schema"))?;
    let table = get("table")?.as_str().ok_or_else(|| bad("table"))?;
    if schema != plan.table.id.schema || table != plan.table.id.name {
        return Err(invalid(format!(
            "source {schema}.{table} in a value of {}",
            plan.table.id
        )));
    }
    let commit_lsn = get("commit_lsn")?
        .as_u64()
        .ok_or_else(|| bad("commit_lsn"))?;
    let ordinal = get("ordinal")?.as_u64().ok_or_else(|| bad("ordinal"))?;
    let xid = match get("xid")? {
        Json::Null => None,
        x => Some(
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad("xid"))?,
        ),
    };
    let resume_token = match get("resume_token")? {
        Json::Null => None,
        t => Some(Arc::<str>::from(
            t.as_str().ok_or_else(|| bad("resume_token"))?,
        )),
    };
    let commit_ts_micros = get("ts_us")?.as_i64().ok_or_else(|| bad("ts_us"))?;
    Ok(ChangeEvent {
        table: Arc::clone(&plan.table),
        op,
        before,
        after,
        position: Position {
            commit_lsn,
            ordinal,
        },
        xid,
        commit_ts_micros,
        resume_token,
    })
}

fn read_json_row(plan: &SchemaPlan, v: &Json) -> Result<Option<Row>, EnvelopeError> {
    let obj = match v {
        Json::Null => return Ok(None),
        Json::Object(obj) => obj,
        _ => return Err(invalid("a row that is not an object")),
    };
    if obj.len() != plan.columns.len() {
        return Err(invalid(format!(
            "a row of {} fields for {} columns",
            obj.len(),
            plan.columns.len()
        )));
    }
    plan.columns
        .iter()
        .map(|c| {
            let v = obj
                .get(&c.field)
                .ok_or_else(|| invalid(format!("a row without {:?}", c.field)))?;
            Ok(Datum::Value(read_json_value(v, 0)?))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn read_json_value(v: &Json, depth: usize) -> Result<Value, EnvelopeError> {
    let bad = |what: &str| invalid(format!("bad JSON value: {what}"));
    let obj = match v {
        Json::Null => return Ok(Value::Null),
        Json::Bool(b) => return Ok(Value::Bool(*b)),
        Json::Number(n) => return n.as_i64().map(Value::Int).ok_or_else(|| bad("not an i64")),
        Json::String(s) => return Ok(Value::Text(s.clone())),
        Json::Array(_) => return Err(bad("a bare array")),
        Json::Object(obj) => obj,
    };
    let mut entries = obj.iter();
    let (Some((tag, payload)), None) = (entries.next(), entries.next()) else {
        return Err(bad("an object with other than one tag"));
    };
    if let Some(&(kind, _)) = TEMPORAL_KINDS.iter().find(|(_, t)| t == tag) {
        let s = payload.as_str().ok_or_else(|| bad(tag))?;
        return Ok(Value::Temporal(kind, s.to_owned()));
    }
    let text = || payload.as_str().ok_or_else(|| bad(tag));
    Ok(match tag.as_str() {
        "float" => Value::Float(parse_float_text(text()?).ok_or_else(|| bad("float"))?),
        "float_bits" => Value::Float(f64::from_bits(
            u64::from_str_radix(text()?, 16).map_err(|_| bad("float_bits"))?,
        )),
        "numeric" => Value::Numeric(text()?.parse().map_err(|_| bad("numeric"))?),
        "json" => Value::Json(text()?.to_owned()),
        "uuid" => Value::Uuid(uuid::Uuid::parse_str(text()?).map_err(|_| bad("uuid"))?),
        "bytes" => Value::Bytes(unhex(text()?).ok_or_else(|| bad("bytes"))?),
        "oid" => Value::ObjectId(
            unhex(text()?)
                .and_then(|b| <[u8; 12]>::try_from(b).ok())
                .ok_or_else(|| bad("oid"))?,
        ),
        "array" | "doc" if depth >= MAX_JSON_DEPTH => return Err(bad("nested too deeply")),
        "array" => Value::Array(
            payload
                .as_array()
                .ok_or_else(|| bad("array"))?
                .iter()
                .map(|item| read_json_value(item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        "doc" => {
            let items = payload.as_array().ok_or_else(|| bad("doc"))?;
            if items.len() % 2 != 0 {
                return Err(bad("doc"));
            }
            Value::Document(
                items
                    .chunks(2)
                    .map(|pair| {
                        let name = pair[0].as_str().ok_or_else(|| bad("doc field name"))?;
                        Ok((name.to_owned(), read_json_value(&pair[1], depth + 1)?))
                    })
                    .collect::<Result<_, EnvelopeError>>()?,
            )
        }
        other => return Err(bad(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Column;
    use proptest::collection::vec;
    use proptest::prelude::*;

    // -- helpers ------------------------------------------------------------

    fn col(name: &str, type_sql: &str, key: bool) -> Column {
        Column {
            name: name.into(),
            type_oid: 0,
            type_sql: type_sql.into(),
            nullable: !key,
            is_key: key,
            enum_labels: None,
            id_map: None,
        }
    }

    fn table_of(schema: &str, name: &str, columns: Vec<Column>) -> Arc<TableSchema> {
        let primary_key = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key)
            .map(|(i, _)| i)
            .collect();
        Arc::new(TableSchema {
            id: TableId::new(schema, name),
            columns,
            primary_key,
            child: None,
        })
    }

    fn event(
        table: &Arc<TableSchema>,
        op: Op,
        before: Option<Row>,
        after: Option<Row>,
    ) -> ChangeEvent {
        ChangeEvent {
            table: Arc::clone(table),
            op,
            before,
            after,
            position: Position {
                commit_lsn: 0x16B_3748,
                ordinal: 3,
            },
            xid: Some(750),
            commit_ts_micros: 1_717_000_000_123_456,
            resume_token: None,
        }
    }

    fn v(v: Value) -> Datum {
        Datum::Value(v)
    }

    fn num(s: &str) -> Value {
        Value::Numeric(s.parse().unwrap())
    }

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn payments() -> Arc<TableSchema> {
        let mut columns = vec![
            col("id", "bigint", true),
            col("amount", "numeric(12,2)", false),
            col("note", "text", false),
        ];
        for (c, oid) in columns.iter_mut().zip([20, 1700, 25]) {
            c.type_oid = oid;
        }
        table_of("public", "payments", columns)
    }

    fn payment_row(id: i64, amount: &str, note: &str) -> Row {
        vec![
            v(Value::Int(id)),
            v(num(amount)),
            v(Value::Text(note.into())),
        ]
    }

    /// Values equal, floats compared by bits (NaN payloads included).
    fn same_value(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
            }
            (Value::Document(x), Value::Document(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((ka, a), (kb, b))| ka == kb && same_value(a, b))
            }
            _ => a == b,
        }
    }

    fn same_row(a: &Option<Row>, b: &Option<Row>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| match (x, y) {
                        (Datum::UnchangedToast, Datum::UnchangedToast) => true,
                        (Datum::Value(x), Datum::Value(y)) => same_value(x, y),
                        _ => false,
                    })
            }
            _ => false,
        }
    }

    fn same_event(a: &ChangeEvent, b: &ChangeEvent) -> bool {
        *a.table == *b.table
            && a.op == b.op
            && same_row(&a.before, &b.before)
            && same_row(&a.after, &b.after)
            && a.position == b.position
            && a.xid == b.xid
            && a.commit_ts_micros == b.commit_ts_micros
            && a.resume_token == b.resume_token
    }

    /// What the Avro path gives back: a finite value in a `numeric(p,s)`
    /// column that fits comes back at the column's scale (1.5 → 1.50).
    fn expected_avro(ev: &ChangeEvent) -> ChangeEvent {
        let mut e = ev.clone();
        for row in [e.before.as_mut(), e.after.as_mut()].into_iter().flatten() {
            for (d, c) in row.iter_mut().zip(&ev.table.columns) {
                let Clean::Decimal { precision, scale } = classify(&c.type_sql, false) else {
                    continue;
                };
                let Datum::Value(Value::Numeric(Numeric::Finite(x))) = &*d else {
                    continue;
                };
                let pad = scale.saturating_sub(x.scale()) as usize;
                let fits = x.scale() <= scale
                    && (x.is_zero() || x.digits().len() + pad <= precision as usize);
                if fits {
                    let mut t = x.to_string();
                    if x.scale() == 0 && scale > 0 {
                        t.push('.');
                    }
                    t.extend(std::iter::repeat_n('0', pad));
                    *d = v(num(&t));
                }
            }
        }
        e
    }

    fn round_trip(ev: &ChangeEvent, encoding: Encoding) -> ChangeEvent {
        let mut enc = Encoder::new(encoding, "main");
        let (bytes, new) = enc.encode(ev).unwrap();
        let mut dec = Decoder::new();
        if let Some(new) = new {
            assert_eq!(
                dec.add_schema(&new.avro_json, None).unwrap(),
                new.fingerprint
            );
        }
        dec.decode(&bytes).unwrap()
    }

    fn assert_round_trips(ev: &ChangeEvent) {
        let back = round_trip(ev, Encoding::Json);
        assert!(same_event(&back, ev), "JSON:\n{back:?}\n!=\n{ev:?}");
        let want = expected_avro(ev);
        let back = round_trip(ev, Encoding::Avro);
        assert!(same_event(&back, &want), "Avro:\n{back:?}\n!=\n{want:?}");
    }

    /// The Avro union branch each `after` field was written with, read
    /// back by apache-avro (the oracle), after checking that apache-avro
    /// writes the same bytes again.
    fn apache_branches(ev: &ChangeEvent) -> Vec<u32> {
        use apache_avro::types::Value as A;
        let mut enc = Encoder::new(Encoding::Avro, "main");
        let (bytes, new) = enc.encode(ev).unwrap();
        let schema = apache_avro::Schema::parse_str(&new.unwrap().avro_json).unwrap();
        let mut datum: &[u8] = &bytes[10..];
        let value = apache_avro::from_avro_datum(&schema, &mut datum, None).unwrap();
        assert!(datum.is_empty(), "apache-avro left {} bytes", datum.len());
        let again = apache_avro::to_avro_datum(&schema, value.clone()).unwrap();
        assert_eq!(again, &bytes[10..], "apache-avro writes other bytes");
        let A::Record(fields) = value else {
            panic!("not a record")
        };
        let after = &fields.iter().find(|(n, _)| n == "after").unwrap().1;
        match after {
            A::Union(1, row) => match &**row {
                A::Record(cols) => cols
                    .iter()
                    .map(|(_, c)| match c {
                        A::Union(i, _) => *i,
                        other => panic!("not a union: {other:?}"),
                    })
                    .collect(),
                other => panic!("not a record: {other:?}"),
            },
            other => panic!("no after: {other:?}"),
        }
    }

    fn nested_array(depth: usize) -> Value {
        (0..depth).fold(Value::Int(1), |v, _| Value::Array(vec![v]))
    }

    fn nested_doc(depth: usize) -> Value {
        (0..depth).fold(Value::Text("leaf".into()), |v, i| {
            Value::Document(vec![(format!("k{i}"), v), ("x".into(), Value::Null)])
        })
    }

    // -- schema generation --------------------------------------------------

    #[test]
    fn classifies_column_types() {
        let cases: &[(&str, Clean)] = &[
            ("boolean", Clean::Boolean),
            ("smallint", Clean::Int),
            ("integer", Clean::Int),
            ("int4", Clean::Int),
            ("bigint", Clean::Long),
            ("oid", Clean::Long),
            ("real", Clean::Double),
            ("double precision", Clean::Double),
            ("numeric", Clean::NumericText),
            (
                "numeric(12,2)",
                Clean::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            (
                " NUMERIC(12, 2) ",
                Clean::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            (
                "numeric(5)",
                Clean::Decimal {
                    precision: 5,
                    scale: 0,
                },
            ),
            ("numeric(2,-3)", Clean::NumericText),
            ("numeric(3,5)", Clean::NumericText),
            ("numeric(1001,0)", Clean::NumericText),
            ("numeric(12,2)[]", Clean::Generic),
            ("numericx", Clean::Text),
            ("text", Clean::Text),
            ("character varying(10)", Clean::Text),
            ("\"char\"", Clean::Text),
            ("citext", Clean::Text),
            ("\"mood\"", Clean::Text),
            ("uuid", Clean::Uuid),
            ("bytea", Clean::Bytes),
            ("date", Clean::Temporal(TemporalKind::Date)),
            (
                "time without time zone",
                Clean::Temporal(TemporalKind::Time),
            ),
            (
                "time(3) with time zone",
                Clean::Temporal(TemporalKind::TimeTz),
            ),
            (
                "timestamp without time zone",
                Clean::Temporal(TemporalKind::Timestamp),
            ),
            (
                "timestamp(6) with time zone",
                Clean::Temporal(TemporalKind::Timestamptz),
            ),
            ("timestamptz", Clean::Temporal(TemporalKind::Timestamptz)),
            ("interval", Clean::Temporal(TemporalKind::Interval)),
            (
                "interval day to second(3)",
                Clean::Temporal(TemporalKind::Interval),
            ),
            ("json", Clean::Json),
            ("jsonb", Clean::Json),
            ("text[]", Clean::Generic),
            ("integer[]", Clean::Generic),
            ("myschema.date", Clean::Text),
        ];
        for (t, want) in cases {
            assert_eq!(classify(t, false), *want, "{t}");
        }
        assert_eq!(classify("date", true), Clean::Text, "an enum is text");
    }

    #[test]
    fn column_names_are_sanitized_and_unique() {
        let t = table_of(
            "my-schema",
            "2024 orders",
            vec![
                col("id", "bigint", true),
                col("a b", "text", false),
                col("a_b", "text", false),
                col("1st", "text", false),
                col("", "text", false),
                col("prix€", "text", false),
                col("a_b_2", "text", false),
            ],
        );
        let (plan, _) = SchemaPlan::build(Arc::clone(&t), None).unwrap();
        let names: Vec<&str> = plan.columns.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            names,
            ["id", "a_b", "a_b_2", "_1st", "_", "prix_", "a_b_2_2"]
        );
        assert!(plan
            .avro_json
            .contains(r#""namespace":"ferry.my_schema._2024_orders""#));
        apache_avro::Schema::parse_str(&plan.avro_json).unwrap();
        let row: Row = (0..7).map(|i| v(Value::Text(format!("v{i}")))).collect();
        let mut row = row;
        row[0] = v(Value::Int(1));
        assert_round_trips(&event(&t, Op::Insert, None, Some(row)));
    }

    #[test]
    fn rabin_and_canonical_form_match_apache_avro_without_logical_types() {
        // apache-avro's documented test vector.
        assert_eq!(
            rabin_fingerprint(b"hello world").to_le_bytes(),
            [0x60, 0x33, 0x5b, 0xa6, 0xd0, 0x41, 0x55, 0x28]
        );
        let t = table_of(
            "public",
            "t",
            vec![
                col("id", "bigint", true),
                col("note", "text", false),
                col("doc", "jsonb", false),
                col("tags", "text[]", false),
            ],
        );
        let (plan, canonical) = SchemaPlan::build(t, None).unwrap();
        let schema = apache_avro::Schema::parse_str(&plan.avro_json).unwrap();
        assert_eq!(schema.canonical_form(), canonical);
        let theirs = schema.fingerprint::<apache_avro::rabin::Rabin>();
        assert_eq!(theirs.bytes, plan.fingerprint.to_le_bytes());
    }

    #[test]
    fn canonical_form_follows_the_specification() {
        let canonical = |s: &str| canonical_form(&serde_json::from_str(s).unwrap()).unwrap();
        assert_eq!(canonical(r#"{"type":"int"}"#), r#""int""#);
        // Logical types and their attributes are stripped (apache-avro 0.21
        // keeps precision and scale here).
        assert_eq!(
            canonical(r#"{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}"#),
            r#""bytes""#
        );
        assert_eq!(
            canonical(r#"{"type":"string","logicalType":"uuid"}"#),
            r#""string""#
        );
        assert_eq!(
            canonical(
                r#"{"namespace":"a.b","name":"R","type":"record","doc":"x","fields":[
                {"name":"f","type":{"type":"fixed","name":"F","size":"016"},"default":"x"},
                {"name":"g","type":"F"},
                {"name":"h","type":{"type":"enum","name":"c.E","symbols":["X","Y"]}},
                {"name":"i","type":{"type":"map","values":{"type":"array","items":"long"}}}]}"#
            ),
            concat!(
                r#"{"name":"a.b.R","type":"record","fields":["#,
                r#"{"name":"f","type":{"name":"a.b.F","type":"fixed","size":16}},"#,
                r#"{"name":"g","type":"a.b.F"},"#,
                r#"{"name":"h","type":{"name":"c.E","type":"enum","symbols":["X","Y"]}},"#,
                r#"{"name":"i","type":{"type":"map","values":{"type":"array","items":"long"}}}]}"#
            )
        );
        for bad in ["1", "{}", r#"{"type":"record"}"#, r#"{"type":7}"#, "null"] {
            assert!(
                canonical_form(&serde_json::from_str(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_schema_carries_the_table_schema() {
        let t = payments();
        let (plan, _) = SchemaPlan::build(Arc::clone(&t), None).unwrap();
        let json: Json = serde_json::from_str(&plan.avro_json).unwrap();
        let back: TableSchema = serde_json::from_value(json[TABLE_ATTRIBUTE].clone()).unwrap();
        assert_eq!(back, *t);
        assert_eq!(json["name"], "Envelope");
        assert_eq!(json["namespace"], "ferry.public.payments");
        let names: Vec<&str> = json["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names[..6],
            ["before", "after", "unchanged", "op", "source", "ts_ms"]
        );
        assert!(names[6].starts_with(MARKER_PREFIX));
    }

    // -- types ----------------------------------------------------------------

    fn all_types() -> Arc<TableSchema> {
        table_of(
            "public",
            "all_types",
            vec![
                col("id", "bigint", true),
                col("b", "boolean", false),
                col("i2", "smallint", false),
                col("i4", "integer", false),
                col("f4", "real", false),
                col("f8", "double precision", false),
                col("n", "numeric", false),
                col("n12", "numeric(12,2)", false),
                col("t", "text", false),
                col("vc", "character varying(10)", false),
                col("u", "uuid", false),
                col("by", "bytea", false),
                col("d", "date", false),
                col("tm", "time without time zone", false),
                col("ttz", "time with time zone", false),
                col("ts", "timestamp without time zone", false),
                col("tstz", "timestamp with time zone", false),
                col("iv", "interval", false),
                col("j", "json", false),
                col("jb", "jsonb", false),
                col("arr", "integer[]", false),
                col("mood", "\"mood\"", false),
            ],
        )
    }

    fn natural_row() -> Row {
        let u = uuid::Uuid::parse_str("0f5f1b8c-8d7e-4b21-9c1e-2a3b4c5d6e7f").unwrap();
        vec![
            v(Value::Int(i64::MAX)),
            v(Value::Bool(true)),
            v(Value::Int(-32768)),
            v(Value::Int(i64::from(i32::MIN))),
            v(Value::Float(1.5)),
            v(Value::Float(-0.0)),
            v(num("-123456789012345678901234567890.000000000012")),
            v(num("-1234567890.12")),
            v(Value::Text("héllo\n\"wörld\"\u{0}".into())),
            v(Value::Text("short".into())),
            v(Value::Uuid(u)),
            v(Value::Bytes(vec![0, 1, 0xff, b'\\'])),
            v(Value::Temporal(TemporalKind::Date, "0044-03-15 BC".into())),
            v(Value::Temporal(TemporalKind::Time, "24:00:00".into())),
            v(Value::Temporal(
                TemporalKind::TimeTz,
                "12:00:00.123456+05:30".into(),
            )),
            v(Value::Temporal(TemporalKind::Timestamp, "infinity".into())),
            v(Value::Temporal(
                TemporalKind::Timestamptz,
                "2024-02-29 23:59:59.999999+00".into(),
            )),
            v(Value::Temporal(
                TemporalKind::Interval,
                "1 year 2 mons -3 days 04:05:06.7".into(),
            )),
            v(Value::Json(r#"{"a": [1, 2.50, "x"]}"#.into())),
            v(Value::Json(r#"{"a": 1}"#.into())),
            v(Value::Array(vec![
                Value::Int(1),
                Value::Null,
                Value::Array(vec![]),
            ])),
            v(Value::Text("happy".into())),
        ]
    }

    #[test]
    fn every_type_round_trips_in_its_clean_branch() {
        let t = all_types();
        let ev = event(&t, Op::Insert, None, Some(natural_row()));
        assert_round_trips(&ev);
        let branches = apache_branches(&ev);
        // Every column in its clean branch (1), the array column in
        // ferry.Value (its only non-null branch, 1).
        assert_eq!(branches, vec![1; t.columns.len()]);
        // Nulls everywhere.
        let nulls = vec![v(Value::Null); t.columns.len()];
        let ev = event(&t, Op::Update, Some(nulls.clone()), Some(nulls));
        assert_round_trips(&ev);
        assert_eq!(apache_branches(&ev), vec![0; t.columns.len()]);
    }

    #[test]
    fn mismatched_values_use_the_generic_branch() {
        let t = all_types();
        let mut row = vec![v(Value::Null); t.columns.len()];
        let oid = [0x65, 0x0a, 0xff, 0, 1, 2, 3, 4, 5, 6, 0xab, 0xcd];
        row[1] = v(Value::Text("t".into())); // text in boolean
        row[3] = v(Value::Int(i64::from(i32::MAX) + 1)); // beyond int4
        row[6] = v(Value::Numeric(Numeric::NaN)); // NaN in numeric
        row[7] = v(Value::Numeric(Numeric::PosInfinity)); // Infinity in numeric(12,2)
        row[8] = v(Value::ObjectId(oid)); // ObjectId in text
        row[10] = v(Value::Text("not-a-uuid".into()));
        row[14] = v(Value::Temporal(TemporalKind::Time, "12:00".into())); // kind mismatch
        row[19] = v(Value::Document(vec![("a".into(), Value::Int(1))])); // document in jsonb
        row[20] = v(Value::Text("{1,2}".into())); // text in an array column
        let ev = event(&t, Op::Insert, None, Some(row));
        assert_round_trips(&ev);
        let branches = apache_branches(&ev);
        for i in [1, 3, 6, 7, 8, 10, 14, 19] {
            assert_eq!(branches[i], 2, "column {i}");
        }
        assert_eq!(branches[20], 1);
        assert_eq!(branches[0], 0);
    }

    #[test]
    fn numeric_specials_and_large_values() {
        let t = table_of(
            "public",
            "n",
            vec![
                col("id", "integer", true),
                col("free", "numeric", false),
                col("fixed", "numeric(45,5)", false),
                col("money", "numeric(12,2)", false),
            ],
        );
        let forty = "1234567890123456789012345678901234567890";
        let cases = [
            ("NaN", "NaN", "NaN"),
            ("Infinity", "-Infinity", "Infinity"),
            ("-Infinity", "Infinity", "-Infinity"),
            (forty, &format!("-{forty}") as &str, "-0.01"),
            (
                &format!("{forty}.{forty}") as &str,
                &format!("{forty}.12345"),
                "9999999999.99",
            ),
            (
                "-0.000000000000000000000000000000000000001",
                "0.00000",
                "-9999999999.99",
            ),
            ("0", "-1", "0.00"),
        ];
        for (free, fixed, money) in cases {
            let row = vec![v(Value::Int(1)), v(num(free)), v(num(fixed)), v(num(money))];
            assert_round_trips(&event(&t, Op::Insert, None, Some(row)));
        }
        // Too many digits for numeric(45,5) after rescaling: exact through
        // the generic branch.
        let row = vec![
            v(Value::Int(1)),
            v(Value::Null),
            v(num(&format!("{forty}1"))),
            v(num("12345678901.5")),
        ];
        let ev = event(&t, Op::Insert, None, Some(row));
        assert_round_trips(&ev);
        assert_eq!(apache_branches(&ev), [1, 0, 2, 2]);
    }

    #[test]
    fn a_shorter_scale_is_padded_in_numeric_p_s() {
        let t = payments();
        let ev = event(&t, Op::Insert, None, Some(payment_row(1, "1.5", "x")));
        let back = round_trip(&ev, Encoding::Avro);
        assert_eq!(back.after.unwrap()[1], v(num("1.50")));
        let back = round_trip(&ev, Encoding::Json);
        assert_eq!(back.after.unwrap()[1], v(num("1.5")));
        // More fractional digits than the scale: kept exactly (generic).
        let ev = event(&t, Op::Insert, None, Some(payment_row(1, "1.555", "x")));
        let back = round_trip(&ev, Encoding::Avro);
        assert_eq!(back.after.unwrap()[1], v(num("1.555")));
    }

    #[test]
    fn twos_complement_edge_cases() {
        let cases: &[(&str, &[u8])] = &[
            ("0", &[0x00]),
            ("1", &[0x01]),
            ("-1", &[0xFF]),
            ("127", &[0x7F]),
            ("-128", &[0x80]),
            ("128", &[0x00, 0x80]),
            ("-129", &[0xFF, 0x7F]),
            ("255", &[0x00, 0xFF]),
            ("-255", &[0xFF, 0x01]),
            ("256", &[0x01, 0x00]),
            ("-256", &[0xFF, 0x00]),
            ("-32768", &[0x80, 0x00]),
            ("32768", &[0x00, 0x80, 0x00]),
            (
                "100000000000000000000000000000000000000",
                &[
                    0x4B, 0x3B, 0x4C, 0xA8, 0x5A, 0x86, 0xC4, 0x7A, 0x09, 0x8A, 0x22, 0x40, 0x00,
                    0x00, 0x00, 0x00,
                ],
            ),
            (
                "-100000000000000000000000000000000000000",
                &[
                    0xB4, 0xC4, 0xB3, 0x57, 0xA5, 0x79, 0x3B, 0x85, 0xF6, 0x75, 0xDD, 0xC0, 0x00,
                    0x00, 0x00, 0x00,
                ],
            ),
        ];
        for (text, want) in cases {
            let d = dec(text);
            let got = decimal_to_avro(&d, 39, 0).unwrap();
            assert_eq!(got, *want, "{text}");
            assert_eq!(got, oracle_bytes(text), "{text} (oracle)");
            assert_eq!(decimal_from_avro(&got, 39, 0).unwrap(), d, "{text} back");
        }
        // With a scale: -1.28 in numeric(5,2) is the unscaled -128.
        assert_eq!(decimal_to_avro(&dec("-1.28"), 5, 2).unwrap(), [0x80]);
        assert_eq!(decimal_from_avro(&[0x80], 5, 2).unwrap(), dec("-1.28"));
        assert_eq!(decimal_from_avro(&[0x01], 5, 3).unwrap(), dec("0.001"));
        // Wider than the precision allows: refused, whatever the bytes.
        assert!(decimal_from_avro(&[0x00, 0xFF, 0xFF], 2, 0).is_err());
        assert!(decimal_from_avro(&[0x27, 0x10], 4, 0).is_err()); // 10000
        assert!(decimal_from_avro(&[], 4, 0).is_err());
        assert!(decimal_from_avro(&[1; 600], 1000, 0).is_err());
    }

    /// Minimal two's complement from apache-avro's own bignum, as the
    /// oracle (the codec itself uses none).
    fn oracle_bytes(integer: &str) -> Vec<u8> {
        let bd: apache_avro::BigDecimal = integer.parse().unwrap();
        let (unscaled, exponent) = bd.as_bigint_and_exponent();
        assert_eq!(exponent, 0);
        unscaled.to_signed_bytes_be()
    }

    // -- TOAST, nesting, events ------------------------------------------------

    #[test]
    fn unchanged_toast_is_restored() {
        let t = table_of(
            "public",
            "docs",
            vec![
                col("id", "bigint", true),
                col("body", "text", false),
                col("meta", "jsonb", false),
                col("n", "integer", false),
            ],
        );
        let after = vec![
            v(Value::Int(7)),
            Datum::UnchangedToast,
            Datum::UnchangedToast,
            v(Value::Int(1)),
        ];
        let ev = event(&t, Op::Update, None, Some(after));
        assert_round_trips(&ev);
        let mut enc = Encoder::new(Encoding::Json, "main");
        let json = String::from_utf8(enc.encode(&ev).unwrap().0).unwrap();
        assert!(
            json.contains(r#""after":{"id":7,"body":null,"meta":null,"n":1}"#),
            "{json}"
        );
        assert!(json.contains(r#""unchanged":["body","meta"]"#), "{json}");
        // Not representable in `before`.
        let before = vec![
            v(Value::Int(7)),
            Datum::UnchangedToast,
            v(Value::Null),
            v(Value::Null),
        ];
        let ev = event(&t, Op::Update, Some(before), None);
        for e in [Encoding::Avro, Encoding::Json] {
            let err = Encoder::new(e, "main").encode(&ev).unwrap_err();
            assert!(matches!(err, EnvelopeError::Unencodable(_)), "{err}");
        }
    }

    #[test]
    fn nested_documents_arrays_and_object_ids() {
        let t = table_of(
            "app",
            "users",
            vec![col("_id", "text", true), col("document", "jsonb", false)],
        );
        let oid = [0x65, 0x0a, 0xff, 0, 1, 2, 3, 4, 5, 6, 0xab, 0xcd];
        let doc = Value::Document(vec![
            ("name".into(), Value::Text("Ada".into())),
            ("dup".into(), Value::Int(1)),
            ("dup".into(), Value::Int(2)),
            (
                "tags".into(),
                Value::Array(vec![
                    Value::ObjectId(oid),
                    Value::Null,
                    Value::Float(f64::NAN),
                ]),
            ),
            (
                "inner".into(),
                Value::Document(vec![
                    (
                        "at".into(),
                        Value::Temporal(TemporalKind::Timestamptz, "2024-01-01 00:00:00+00".into()),
                    ),
                    ("price".into(), num("19.990")),
                    ("id".into(), Value::Uuid(uuid::Uuid::from_bytes([7; 16]))),
                    ("bin".into(), Value::Bytes(vec![1, 2, 3])),
                    ("empty".into(), Value::Document(vec![])),
                    ("raw".into(), Value::Json("[1]".into())),
                    (
                        "odd nan".into(),
                        Value::Float(f64::from_bits(0xfff8_0000_0000_0001)),
                    ),
                ]),
            ),
        ]);
        let ev = event(
            &t,
            Op::Insert,
            None,
            Some(vec![v(Value::ObjectId(oid)), v(doc)]),
        );
        assert_round_trips(&ev);
        assert_eq!(apache_branches(&ev), [2, 2]);
    }

    #[test]
    fn nesting_limits() {
        let t = table_of(
            "public",
            "deep",
            vec![col("id", "integer", true), col("j", "jsonb", false)],
        );
        let row = |value: Value| Some(vec![v(Value::Int(1)), v(value)]);
        for deep in [nested_array(MAX_JSON_DEPTH), nested_doc(MAX_JSON_DEPTH)] {
            assert_round_trips(&event(&t, Op::Insert, None, row(deep)));
        }
        for deep in [nested_array(MAX_DEPTH), nested_doc(MAX_DEPTH)] {
            let ev = event(&t, Op::Insert, None, row(deep.clone()));
            assert!(same_event(&round_trip(&ev, Encoding::Avro), &ev));
            let err = Encoder::new(Encoding::Json, "m").encode(&ev).unwrap_err();
            assert!(matches!(err, EnvelopeError::Unencodable(_)));
            let ev = event(&t, Op::Insert, None, row(Value::Array(vec![deep])));
            let err = Encoder::new(Encoding::Avro, "m").encode(&ev).unwrap_err();
            assert!(matches!(err, EnvelopeError::Unencodable(_)));
        }
    }

    #[test]
    fn ops_positions_and_source_fields_round_trip() {
        let t = payments();
        let row = payment_row(42, "12.50", "coffee");
        for op in Op::ALL {
            let (before, after) = match op {
                Op::Insert | Op::Read => (None, Some(row.clone())),
                Op::Update => (Some(row.clone()), Some(payment_row(42, "13.00", "tea"))),
                Op::Delete => (Some(row.clone()), None),
                Op::Truncate => (None, None),
            };
            let mut ev = event(&t, op, before, after);
            ev.position = Position {
                commit_lsn: u64::MAX,
                ordinal: u64::MAX - 1,
            };
            ev.xid = if op == Op::Read { None } else { Some(u32::MAX) };
            ev.commit_ts_micros = -1_234_567;
            ev.resume_token = Some(Arc::from(r#"{"_data":"8265A1"}"#));
            assert_round_trips(&ev);
        }
    }

    #[test]
    fn a_row_that_does_not_match_its_table_is_refused() {
        let t = payments();
        let ev = event(&t, Op::Insert, None, Some(vec![v(Value::Int(1))]));
        for e in [Encoding::Avro, Encoding::Json] {
            let err = Encoder::new(e, "main").encode(&ev).unwrap_err();
            assert!(matches!(err, EnvelopeError::Unencodable(_)), "{err}");
        }
    }

    // -- schemas, framing ---------------------------------------------------

    #[test]
    fn a_schema_change_brings_a_new_fingerprint_and_new_schema() {
        let t1 = payments();
        let mut enc = Encoder::new(Encoding::Avro, "main");
        let ev = event(&t1, Op::Insert, None, Some(payment_row(1, "1.00", "a")));
        let (_, new1) = enc.encode(&ev).unwrap();
        let new1 = new1.expect("first use announces the schema");
        assert_eq!(new1.subject_table, t1.id);
        assert!(enc.encode(&ev).unwrap().1.is_none());
        // An equal schema in another Arc is the same schema.
        let copy = Arc::new((*t1).clone());
        let ev_copy = event(&copy, Op::Insert, None, Some(payment_row(1, "1.00", "a")));
        assert!(enc.encode(&ev_copy).unwrap().1.is_none());

        // A new column.
        let mut t2 = (*t1).clone();
        t2.columns.push(col("fee", "numeric(12,2)", false));
        let t2 = Arc::new(t2);
        let mut row = payment_row(1, "1.00", "a");
        row.push(v(num("0.10")));
        let (bytes2, new2) = enc
            .encode(&event(&t2, Op::Insert, None, Some(row)))
            .unwrap();
        let new2 = new2.unwrap();
        assert_ne!(new2.fingerprint, new1.fingerprint);
        assert_eq!(
            Decoder::schema_ref(&bytes2).unwrap(),
            Some(SchemaRef::Fingerprint(new2.fingerprint))
        );

        // Same Avro shape, other table schema: varchar(10) → varchar(20),
        // and NOT NULL.
        let mut t3 = (*t1).clone();
        t3.columns[2].type_sql = "character varying(20)".into();
        let mut t4 = t3.clone();
        t4.columns[2].nullable = false;
        let mut seen = vec![new1.fingerprint, new2.fingerprint];
        for t in [t3, t4] {
            let t = Arc::new(t);
            let ev = event(&t, Op::Insert, None, Some(payment_row(1, "1.00", "a")));
            let (bytes, new) = enc.encode(&ev).unwrap();
            let new = new.unwrap();
            assert!(!seen.contains(&new.fingerprint));
            seen.push(new.fingerprint);
            // The decoder rebuilds exactly that table schema.
            let mut dec = Decoder::new();
            dec.add_schema(&new.avro_json, None).unwrap();
            assert_eq!(*dec.decode(&bytes).unwrap().table, *t);
        }
        // The old schema is still known to the encoder.
        assert!(enc.encode(&ev).unwrap().1.is_none());
    }

    #[test]
    fn a_failed_first_encode_does_not_lose_the_announcement() {
        let t = payments();
        let mut enc = Encoder::new(Encoding::Avro, "main");
        let bad = event(&t, Op::Insert, None, Some(vec![]));
        assert!(enc.encode(&bad).is_err());
        let ok = event(&t, Op::Insert, None, Some(payment_row(1, "1.00", "a")));
        assert!(enc.encode(&ok).unwrap().1.is_some());
    }

    #[test]
    fn single_object_then_confluent_wire_format() {
        let t = payments();
        let ev = event(&t, Op::Insert, None, Some(payment_row(1, "2.50", "x")));
        let mut enc = Encoder::new(Encoding::Avro, "main");
        let (first, new) = enc.encode(&ev).unwrap();
        let new = new.unwrap();
        assert_eq!(first[..2], [0xC3, 0x01]);
        assert_eq!(first[2..10], new.fingerprint.to_le_bytes());

        enc.set_registry_id(new.fingerprint, 0x0102_0304);
        let (framed, again) = enc.encode(&ev).unwrap();
        assert!(again.is_none());
        assert_eq!(framed[..5], [0x00, 0x01, 0x02, 0x03, 0x04]);
        assert_eq!(framed[5..].len(), first[10..].len());
        assert_eq!(
            Decoder::schema_ref(&framed).unwrap(),
            Some(SchemaRef::Registry(0x0102_0304))
        );

        // A decoder that only knows the schema by fingerprint asks for the
        // registry id; once added with the id it decodes both framings.
        let mut dec = Decoder::new();
        dec.add_schema(&new.avro_json, None).unwrap();
        assert!(matches!(
            dec.decode(&framed),
            Err(EnvelopeError::UnknownSchema(SchemaRef::Registry(
                0x0102_0304
            )))
        ));
        dec.add_schema(&new.avro_json, Some(0x0102_0304)).unwrap();
        assert!(same_event(&dec.decode(&framed).unwrap(), &ev));
        assert!(same_event(&dec.decode(&first).unwrap(), &ev));
    }

    #[test]
    fn unknown_schemas_and_foreign_schemas() {
        let t = payments();
        let ev = event(&t, Op::Insert, None, Some(payment_row(1, "2.50", "x")));
        let mut enc = Encoder::new(Encoding::Avro, "main");
        let (bytes, new) = enc.encode(&ev).unwrap();
        let new = new.unwrap();
        let mut dec = Decoder::new();
        match dec.decode(&bytes) {
            Err(EnvelopeError::UnknownSchema(SchemaRef::Fingerprint(fp))) => {
                assert_eq!(fp, new.fingerprint)
            }
            other => panic!("{other:?}"),
        }
        // Reformatted (as a registry may return it): still accepted.
        let pretty = pretty_json(&new.avro_json);
        assert_eq!(dec.add_schema(&pretty, None).unwrap(), new.fingerprint);
        assert!(same_event(
            &dec.decode(&bytes).unwrap(),
            &expected_avro(&ev)
        ));

        let tampered = new.avro_json.replace(
            r#""name":"id","type":["null","long""#,
            r#""name":"id","type":["null","int""#,
        );
        assert_ne!(tampered, new.avro_json);
        let foreign = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
        for bad in [tampered.as_str(), foreign, "not json", "[]", "{}"] {
            let err = Decoder::new().add_schema(bad, None).unwrap_err();
            assert!(matches!(err, EnvelopeError::Invalid(_)), "{err}");
        }
        for bad in [
            &[][..],
            &[0xC3, 0x01, 1, 2][..],
            &[0x00, 1][..],
            &[0x7F, 1, 2][..],
            b"{oops",
        ] {
            assert!(Decoder::new().decode(bad).is_err());
        }
    }

    // -- keys -----------------------------------------------------------------

    #[test]
    fn keys_are_json_objects_of_exact_text() {
        let enc = Encoder::new(Encoding::Avro, "main");
        let key = |ev: &ChangeEvent| String::from_utf8(enc.key(ev)).unwrap();
        let t = payments();
        let ins = event(&t, Op::Insert, None, Some(payment_row(42, "1.00", "a")));
        assert_eq!(key(&ins), r#"{"id":"42"}"#);
        let del = event(&t, Op::Delete, Some(payment_row(42, "9.00", "b")), None);
        assert_eq!(key(&del), r#"{"id":"42"}"#);
        assert_eq!(key(&event(&t, Op::Truncate, None, None)), "{}");

        // Stable across a schema change that leaves the key alone.
        let mut t2 = (*t).clone();
        t2.columns.push(col("fee", "numeric(12,2)", false));
        let t2 = Arc::new(t2);
        let mut row = payment_row(42, "1.00", "a");
        row.push(v(Value::Null));
        assert_eq!(
            key(&event(&t2, Op::Insert, None, Some(row))),
            r#"{"id":"42"}"#
        );

        // Composite keys in key order, exact forms.
        let mut t3 = (*table_of(
            "public",
            "k",
            vec![
                col("a", "numeric", true),
                col("b", "text", true),
                col("c", "uuid", true),
                col("d", "bytea", true),
                col("e", "boolean", true),
            ],
        ))
        .clone();
        t3.primary_key = vec![1, 0, 2, 3, 4];
        let t3 = Arc::new(t3);
        let row = vec![
            v(num("1.50")),
            v(Value::Text("x\"y".into())),
            v(Value::Uuid(uuid::Uuid::from_bytes([0xab; 16]))),
            v(Value::Bytes(vec![0, 0xff])),
            v(Value::Null),
        ];
        assert_eq!(
            key(&event(&t3, Op::Insert, None, Some(row))),
            r#"{"b":"x\"y","a":"1.50","c":"abababab-abab-abab-abab-abababababab","d":"\\x00ff","e":null}"#
        );

        // MongoDB: an ObjectId or a document _id.
        let tm = table_of("db", "users", vec![col("_id", "text", true)]);
        let oid = [0x65, 0x0a, 0xff, 0, 1, 2, 3, 4, 5, 6, 0xab, 0xcd];
        let ev = event(&tm, Op::Insert, None, Some(vec![v(Value::ObjectId(oid))]));
        assert_eq!(key(&ev), r#"{"_id":"650aff00010203040506abcd"}"#);
        let doc = Value::Document(vec![
            ("a".into(), Value::Int(1)),
            ("b".into(), Value::Array(vec![Value::Text("x".into())])),
        ]);
        let ev = event(&tm, Op::Insert, None, Some(vec![v(doc)]));
        assert_eq!(key(&ev), r#"{"_id":{"a":"1","b":["x"]}}"#);
    }

    // -- JSON form, sizes, example file -----------------------------------------

    #[test]
    fn json_form_is_readable() {
        let t = payments();
        let mut ev = event(
            &t,
            Op::Insert,
            None,
            Some(payment_row(42, "12.50", "coffee")),
        );
        ev.resume_token = Some(Arc::from("tok"));
        let mut enc = Encoder::new(Encoding::Json, "main");
        let (bytes, new) = enc.encode(&ev).unwrap();
        assert!(new.is_none());
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"schema":{"id":{"schema":"public","name":"payments"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""payload":{"before":null,"after":{"id":42,"amount":{"numeric":"12.50"},"note":"coffee"},"unchanged":[],"op":"c","source":{"connector":"ferry","name":"main","schema":"public","table":"payments","commit_lsn":23803720,"ordinal":3,"xid":750,"resume_token":"tok","ts_ms":1717000000123,"ts_us":1717000000123456,"snapshot":false},"ts_ms":"#),
            "{text}"
        );
        assert_eq!(Decoder::schema_ref(text.as_bytes()).unwrap(), None);
    }

    #[test]
    fn typical_row_sizes() {
        let t = payments();
        let ev = event(
            &t,
            Op::Insert,
            None,
            Some(payment_row(1_048_576, "1234.50", "coffee beans")),
        );
        let avro = Encoder::new(Encoding::Avro, "main")
            .encode(&ev)
            .unwrap()
            .0
            .len();
        let json = Encoder::new(Encoding::Json, "main")
            .encode(&ev)
            .unwrap()
            .0
            .len();
        let key = Encoder::new(Encoding::Avro, "main").key(&ev).len();
        eprintln!("payments row: key {key} B, Avro value {avro} B, JSON value {json} B");
        assert!(avro < 120, "{avro}");
        assert!(json < 900, "{json}");
    }

    /// Re-indents compact JSON, keeping key order; short containers stay on
    /// one line.
    fn pretty_json(compact: &str) -> String {
        enum Node {
            Atom(String),
            List(char, Vec<(Option<String>, Node)>),
        }
        fn atom_end(s: &[u8], mut i: usize) -> usize {
            if s[i] == b'"' {
                i += 1;
                while s[i] != b'"' {
                    i += if s[i] == b'\\' { 2 } else { 1 };
                }
                return i + 1;
            }
            while !matches!(s[i], b',' | b']' | b'}') {
                i += 1;
            }
            i
        }
        fn parse(s: &[u8], i: usize) -> (Node, usize) {
            let open = s[i];
            if open != b'{' && open != b'[' {
                let end = atom_end(s, i);
                return (
                    Node::Atom(String::from_utf8(s[i..end].to_vec()).unwrap()),
                    end,
                );
            }
            let close = if open == b'{' { b'}' } else { b']' };
            let mut items = Vec::new();
            let mut i = i + 1;
            while s[i] != close {
                let mut key = None;
                if open == b'{' {
                    let end = atom_end(s, i);
                    key = Some(String::from_utf8(s[i..end].to_vec()).unwrap());
                    i = end + 1; // ':'
                }
                let (node, end) = parse(s, i);
                items.push((key, node));
                i = if s[end] == b',' { end + 1 } else { end };
            }
            (Node::List(open as char, items), i + 1)
        }
        fn flat(n: &Node) -> String {
            match n {
                Node::Atom(a) => a.clone(),
                Node::List(open, items) => {
                    let inner: Vec<String> = items
                        .iter()
                        .map(|(k, v)| match k {
                            Some(k) => format!("{k}: {}", flat(v)),
                            None => flat(v),
                        })
                        .collect();
                    let close = if *open == '{' { '}' } else { ']' };
                    format!("{open}{}{close}", inner.join(", "))
                }
            }
        }
        fn render(n: &Node, indent: usize, out: &mut String) {
            let one_line = flat(n);
            let Node::List(open, items) = n else {
                out.push_str(&one_line);
                return;
            };
            if one_line.len() + indent <= 76 {
                out.push_str(&one_line);
                return;
            }
            out.push(*open);
            for (i, (k, v)) in items.iter().enumerate() {
                out.push_str(if i > 0 { ",\n" } else { "\n" });
                out.push_str(&" ".repeat(indent + 2));
                if let Some(k) = k {
                    out.push_str(k);
                    out.push_str(": ");
                }
                render(v, indent + 2, out);
            }
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            out.push(if *open == '{' { '}' } else { ']' });
        }
        let (node, _) = parse(compact.as_bytes(), 0);
        let mut out = String::new();
        render(&node, 0, &mut out);
        out.push('\n');
        out
    }

    #[test]
    fn example_schema_file_is_current() {
        let (plan, _) = SchemaPlan::build(payments(), None).unwrap();
        let pretty = pretty_json(&plan.avro_json);
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/envelope.avsc");
        if std::env::var_os("FERRY_BLESS").is_some() {
            std::fs::write(path, &pretty).unwrap();
        }
        let on_disk = std::fs::read_to_string(path).unwrap();
        assert!(
            on_disk == pretty,
            "schemas/envelope.avsc is stale: rerun this test with FERRY_BLESS=1"
        );
        assert_eq!(
            Decoder::new().add_schema(&on_disk, None).unwrap(),
            plan.fingerprint
        );
    }

    // -- properties -----------------------------------------------------------

    const TYPES: &[&str] = &[
        "boolean",
        "smallint",
        "integer",
        "bigint",
        "oid",
        "real",
        "double precision",
        "numeric",
        "numeric(12,2)",
        "numeric(5)",
        "numeric(45,10)",
        "numeric(3,5)",
        "numeric(2,-3)",
        "text",
        "character varying(10)",
        "\"mood\"",
        "uuid",
        "bytea",
        "date",
        "time without time zone",
        "time with time zone",
        "timestamp without time zone",
        "timestamp(3) with time zone",
        "interval",
        "json",
        "jsonb",
        "text[]",
        "integer[]",
    ];

    fn arb_kind() -> impl Strategy<Value = TemporalKind> {
        prop::sample::select(TEMPORAL_KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>())
    }

    fn arb_decimal(max_digits: u32, max_scale: u32) -> BoxedStrategy<Decimal> {
        (
            any::<bool>(),
            proptest::string::string_regex(&format!("[0-9]{{1,{max_digits}}}")).unwrap(),
            0..=max_scale,
        )
            .prop_map(|(neg, digits, scale)| {
                format!("{}{digits}E-{scale}", if neg { "-" } else { "" })
                    .parse()
                    .unwrap()
            })
            .boxed()
    }

    fn arb_scalar() -> BoxedStrategy<Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(|b| Value::Float(f64::from_bits(b))),
            prop_oneof![
                4 => arb_decimal(45, 20).prop_map(Numeric::Finite),
                1 => Just(Numeric::NaN),
                1 => Just(Numeric::PosInfinity),
                1 => Just(Numeric::NegInfinity),
            ]
            .prop_map(Value::Numeric),
            any::<String>().prop_map(Value::Text),
            any::<String>().prop_map(Value::Json),
            any::<[u8; 16]>().prop_map(|b| Value::Uuid(uuid::Uuid::from_bytes(b))),
            vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
            (arb_kind(), any::<String>()).prop_map(|(k, s)| Value::Temporal(k, s)),
            any::<[u8; 12]>().prop_map(Value::ObjectId),
        ]
        .boxed()
    }

    fn arb_value() -> BoxedStrategy<Value> {
        arb_scalar()
            .prop_recursive(4, 24, 4, |inner| {
                prop_oneof![
                    vec(inner.clone(), 0..4).prop_map(Value::Array),
                    vec((any::<String>(), inner), 0..4).prop_map(Value::Document),
                ]
            })
            .boxed()
    }

    /// Values of the column type's own variant (the clean branch), with
    /// some that do not fit it.
    fn natural(type_sql: &str) -> BoxedStrategy<Value> {
        match classify(type_sql, false) {
            Clean::Boolean => any::<bool>().prop_map(Value::Bool).boxed(),
            Clean::Int => any::<i32>().prop_map(|i| Value::Int(i.into())).boxed(),
            Clean::Long => any::<i64>().prop_map(Value::Int).boxed(),
            Clean::Double => any::<u64>()
                .prop_map(|b| Value::Float(f64::from_bits(b)))
                .boxed(),
            Clean::Decimal { precision, scale } => arb_decimal(precision, scale)
                .prop_map(|d| Value::Numeric(Numeric::Finite(d)))
                .boxed(),
            Clean::NumericText => arb_decimal(60, 30)
                .prop_map(|d| Value::Numeric(Numeric::Finite(d)))
                .boxed(),
            Clean::Text => any::<String>().prop_map(Value::Text).boxed(),
            Clean::Json => any::<String>().prop_map(Value::Json).boxed(),
            Clean::Uuid => any::<[u8; 16]>()
                .prop_map(|b| Value::Uuid(uuid::Uuid::from_bytes(b)))
                .boxed(),
            Clean::Bytes => vec(any::<u8>(), 0..12).prop_map(Value::Bytes).boxed(),
            Clean::Temporal(k) => any::<String>()
                .prop_map(move |s| Value::Temporal(k, s))
                .boxed(),
            Clean::Generic => vec(arb_scalar(), 0..4).prop_map(Value::Array).boxed(),
        }
    }

    fn arb_table() -> impl Strategy<Value = Arc<TableSchema>> {
        (
            vec(
                (0..TYPES.len(), "[a-zA-Z_0-9 é-]{0,5}", any::<bool>()),
                0..7,
            ),
            "[a-z_]{1,6}",
            "[a-zA-Z0-9 -]{1,8}",
        )
            .prop_map(|(cols, schema, name)| {
                let columns = cols
                    .into_iter()
                    .map(|(t, n, key)| col(&n, TYPES[t], key))
                    .collect();
                table_of(&schema, &name, columns)
            })
    }

    fn arb_row(table: &TableSchema, toast: bool) -> BoxedStrategy<Row> {
        let datums: Vec<BoxedStrategy<Datum>> = table
            .columns
            .iter()
            .map(|c| {
                let value = prop_oneof![
                    5 => natural(&c.type_sql),
                    1 => Just(Value::Null),
                    2 => arb_value(),
                ]
                .prop_map(Datum::Value);
                if toast {
                    prop_oneof![6 => value, 1 => Just(Datum::UnchangedToast)].boxed()
                } else {
                    value.boxed()
                }
            })
            .collect();
        datums.boxed()
    }

    fn arb_event() -> impl Strategy<Value = ChangeEvent> {
        arb_table()
            .prop_flat_map(|t| {
                (
                    Just(Arc::clone(&t)),
                    prop::sample::select(Op::ALL.to_vec()),
                    prop::option::of(arb_row(&t, false)),
                    prop::option::of(arb_row(&t, true)),
                    (any::<u64>(), any::<u64>()),
                    prop::option::of(any::<u32>()),
                    any::<i64>(),
                    prop::option::of(any::<String>()),
                )
            })
            .prop_map(
                |(table, op, before, after, (lsn, ordinal), xid, ts, token)| ChangeEvent {
                    table,
                    op,
                    before,
                    after,
                    position: Position {
                        commit_lsn: lsn,
                        ordinal,
                    },
                    xid,
                    commit_ts_micros: ts,
                    resume_token: token.map(Arc::from),
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn events_round_trip_through_both_encodings(ev in arb_event()) {
            for encoding in [Encoding::Avro, Encoding::Json] {
                let mut enc = Encoder::new(encoding, "main");
                let (bytes, new) = enc.encode(&ev).unwrap();
                let mut dec = Decoder::new();
                if let Some(new) = &new {
                    dec.add_schema(&new.avro_json, None).unwrap();
                }
                let back = dec.decode(&bytes).unwrap();
                let want = if encoding == Encoding::Avro { expected_avro(&ev) } else { ev.clone() };
                prop_assert!(same_event(&back, &want), "{:?}:\n{:?}\n!=\n{:?}", encoding, back, want);
                // The decoder shares one Arc per schema.
                let again = dec.decode(&bytes).unwrap();
                prop_assert!(Arc::ptr_eq(&back.table, &again.table));
            }
        }

        #[test]
        fn apache_avro_agrees_on_the_bytes(ev in arb_event()) {
            let mut enc = Encoder::new(Encoding::Avro, "main");
            let (bytes, new) = enc.encode(&ev).unwrap();
            let schema = apache_avro::Schema::parse_str(&new.unwrap().avro_json).unwrap();
            let mut datum: &[u8] = &bytes[10..];
            let value = apache_avro::from_avro_datum(&schema, &mut datum, None).unwrap();
            prop_assert!(datum.is_empty());
            prop_assert_eq!(apache_avro::to_avro_datum(&schema, value).unwrap(), &bytes[10..]);
        }

        #[test]
        fn decimal_bytes_match_the_oracle(neg in any::<bool>(), digits in "[1-9][0-9]{0,70}|0") {
            let negative = neg && digits != "0";
            let ours = to_twos_complement(negative, digits_to_magnitude(digits.as_bytes()));
            let text = format!("{}{digits}", if negative { "-" } else { "" });
            prop_assert_eq!(&ours, &oracle_bytes(&text));
            let (back_neg, mag) = from_twos_complement(&ours);
            prop_assert_eq!(back_neg, negative);
            prop_assert_eq!(magnitude_to_digits(&mag), digits);
        }

        #[test]
        fn garbage_is_an_error_never_a_panic(
            bytes in vec(any::<u8>(), 0..300),
            framing in 0..4u8,
        ) {
            let t = all_types();
            let (plan, _) = SchemaPlan::build(t, None).unwrap();
            let mut dec = Decoder::new();
            dec.add_schema(&plan.avro_json, Some(7)).unwrap();
            let mut value = match framing {
                0 => vec![],
                1 => [&[0xC3, 0x01][..], &plan.fingerprint.to_le_bytes()].concat(),
                2 => vec![0, 0, 0, 0, 7],
                _ => b"{".to_vec(),
            };
            value.extend(bytes);
            let _ = Decoder::schema_ref(&value);
            let _ = dec.decode(&value);
        }

        #[test]
        fn corrupted_messages_never_panic(
            ev in arb_event(),
            json in any::<bool>(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let encoding = if json { Encoding::Json } else { Encoding::Avro };
            let (mut bytes, new) = Encoder::new(encoding, "main").encode(&ev).unwrap();
            let mut dec = Decoder::new();
            if let Some(new) = &new {
                dec.add_schema(&new.avro_json, None).unwrap();
                // A corrupted schema text is refused or accepted, never a panic.
                let mut text = new.avro_json.clone().into_bytes();
                for (i, b) in &edits {
                    let at = i.index(text.len());
                    text[at] = *b;
                }
                let _ = Decoder::new().add_schema(&String::from_utf8_lossy(&text), None);
            }
            for (i, b) in &edits {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            let _ = dec.decode(&bytes);
        }
    }
}
