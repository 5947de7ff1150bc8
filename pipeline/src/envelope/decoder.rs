//! The decoder: values back into change events, in either encoding, from
//! the writer schemas added to it (schema topic or registry).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value as Json;

use super::avro_read::read_envelope;
use super::canonical::canonical_form;
use super::json::read_json_payload;
use super::schema::SchemaPlan;
use super::{invalid, EnvelopeError, SchemaRef, CONFLUENT_MAGIC, MARKER_PREFIX, TABLE_ATTRIBUTE};
use crate::event::{ChangeEvent, TableSchema};
use crate::FastHashMap;

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
pub(super) const MAX_JSON_PLANS: usize = 1024;

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

    pub(super) fn decode_json(&mut self, value: &[u8]) -> Result<ChangeEvent, EnvelopeError> {
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
