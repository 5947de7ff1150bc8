//! The encoder: change events into keys and values, in either encoding.
//! It keeps one schema plan per table shape and reports a new Avro schema
//! once, for the producer to publish before the first message using it.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;

use super::avro_write::{write_envelope, AvroWriter};
use super::json::{encode_json, json_string, key_value};
use super::schema::SchemaPlan;
use super::{
    unencodable, Encoding, EnvelopeError, NewSchema, CONFLUENT_MAGIC, SINGLE_OBJECT_MARKER,
};
use crate::event::{ChangeEvent, Datum, TableId, TableSchema};
use crate::FastHashMap;

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
        Self::key_of(ev, ev.after.as_ref().or(ev.before.as_ref()), out);
    }

    /// The key of the row before the change (`before`, else the same as
    /// [`Encoder::key_into`]): a key-changing update's old key.
    pub fn old_key_into(&self, ev: &ChangeEvent, out: &mut String) {
        Self::key_of(ev, ev.before.as_ref().or(ev.after.as_ref()), out);
    }

    fn key_of(ev: &ChangeEvent, row: Option<&crate::event::Row>, out: &mut String) {
        out.clear();
        let Some(row) = row else {
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
        let now_ms = crate::clock::now_micros().div_euclid(1000);
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

    pub(super) fn plan_for(
        &mut self,
        table: &Arc<TableSchema>,
    ) -> Result<Arc<SchemaPlan>, EnvelopeError> {
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

    pub(super) fn find_or_build_plan(
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
