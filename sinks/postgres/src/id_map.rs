//! `ferry_id_map`: legacy ids and the new ids they were given, allocated in
//! the same transaction as the rows that use them.
//!
//! The transform stage writes a legacy id's text into a column marked with
//! an [`IdRef`]; here, before the batch's rows, every legacy id the batch
//! writes gets its mapping (allocated once, found again on a replay), and
//! the statements read the new id through a lookup in place of the column's
//! value (see [`value_sql`]). A kill -9 rolls back mappings and rows
//! together.

use std::collections::{BTreeMap, BTreeSet};

use ferry_pipeline::batch::{Batch, RowChange};
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use ferry_pipeline::event::{quote_ident, quote_literal, Column, Datum, TableSchema};
use ferry_pipeline::id_map::{IdKind, IdRef, OnMissing};
use ferry_pipeline::value::Value;
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::error::pg_err;

pub async fn install(client: &impl GenericClient) -> Result<(), PipelineError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS public.ferry_id_map (
                 namespace    text NOT NULL,
                 legacy_id    text NOT NULL,
                 new_id       text NOT NULL,
                 allocated_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (namespace, legacy_id),
                 UNIQUE (namespace, new_id)
             );",
        )
        .await
        .map_err(|e| pg_err("create ferry_id_map", e))
}

/// The sequence of a bigint namespace.
pub fn sequence_name(namespace: &str) -> String {
    format!(
        "public.{}",
        quote_ident(&format!("ferry_id_seq_{namespace}"))
    )
}

/// Creates the sequence of a bigint namespace (DDL: outside the data
/// transaction, under the sink's DDL lock).
pub async fn ensure_sequence(
    client: &Client,
    namespace: &str,
    start: i64,
) -> Result<(), PipelineError> {
    client
        .batch_execute(&format!(
            "CREATE SEQUENCE IF NOT EXISTS {} AS bigint START {start}",
            sequence_name(namespace)
        ))
        .await
        .map_err(|e| pg_err("create id-map sequence", e))
}

/// The SQL that reads a column's value from `input` (text): the new id of
/// a legacy id for id-mapped columns, the value itself otherwise, cast to
/// `cast`.
///
/// An id-mapped array column (`uuid[]`, `bigint[]`, `text[]`) or jsonb
/// column receives an array of legacy ids (an array literal): each element
/// is translated in place, order and NULL elements kept, an empty array
/// stays empty. Into jsonb the new ids are strings (UUIDs) or numbers
/// (bigints).
pub fn value_sql(col: &Column, cast: &str, input: &str) -> String {
    let Some(r) = &col.id_map else {
        return format!("{input}::{cast}");
    };
    if r.kind.is_inverse() {
        // A reverse pipeline's new id → its legacy id, resolved before the
        // transaction (see `crate::inverse`).
        return format!(
            "(SELECT i.legacy_id FROM {} i WHERE i.namespace = {} AND i.new_id = {input})::{cast}",
            crate::inverse::STAGE_TABLE,
            quote_literal(&r.namespace)
        );
    }
    let ns = quote_literal(&r.namespace);
    let is_array = cast.trim().ends_with("[]");
    let is_json = matches!(cast.trim(), "json" | "jsonb");
    if !is_array && !is_json {
        return format!(
            "(SELECT m.new_id FROM public.ferry_id_map m WHERE m.namespace = {ns} AND m.legacy_id = {input})::{cast}"
        );
    }
    let element = match (is_json, r.kind) {
        (true, IdKind::Bigint { .. }) => "bigint",
        (true, _) => "text",
        (false, _) => cast.trim().trim_end_matches("[]"),
    };
    let translated = format!(
        "coalesce((SELECT array_agg(m.new_id::{element} ORDER BY u.o)
                     FROM unnest({input}::text[]) WITH ORDINALITY AS u(l, o)
                     LEFT JOIN public.ferry_id_map m ON m.namespace = {ns} AND m.legacy_id = u.l),
                  '{{}}'::{element}[])"
    );
    if is_json {
        format!("CASE WHEN {input} IS NULL THEN NULL ELSE to_jsonb({translated}) END::{cast}")
    } else {
        format!("CASE WHEN {input} IS NULL THEN NULL ELSE {translated} END::{cast}")
    }
}

/// The legacy ids a batch writes, per namespace.
#[derive(Debug, Default)]
pub struct Requests {
    /// Ids to allocate when missing (a row's own id, allocate-ahead
    /// references), with the namespace's kind.
    pub allocate: BTreeMap<String, (IdKind, BTreeSet<String>)>,
    /// References that must already be mapped (`on_missing = dead_letter`),
    /// each with the first row that needs it (for the message).
    pub require: BTreeMap<String, BTreeMap<String, String>>,
}

impl Requests {
    pub fn is_empty(&self) -> bool {
        self.allocate.is_empty() && self.require.is_empty()
    }

    /// Bigint namespaces and their first values.
    pub fn sequences(&self) -> impl Iterator<Item = (&str, i64)> {
        self.allocate
            .iter()
            .filter_map(|(ns, (kind, _))| match kind {
                IdKind::Bigint { start } => Some((ns.as_str(), *start)),
                _ => None,
            })
    }
}

/// Legacy ids known to be mapped (committed), so that a batch allocates
/// and checks only the others: mappings never change once committed, and
/// most changes touch ids mapped long ago (an update, a reference to an
/// existing row). Bounded: when full it starts over.
#[derive(Debug, Default)]
pub struct Known {
    ids: std::collections::HashMap<String, std::collections::HashSet<String>>,
    len: usize,
}

/// Most ids [`Known`] holds (about 80 bytes each).
const KNOWN_MAX: usize = 500_000;

impl Known {
    /// Whether `legacy` of `namespace` is known to be mapped.
    pub fn contains(&self, namespace: &str, legacy: &str) -> bool {
        self.len > 0 && self.ids.get(namespace).is_some_and(|s| s.contains(legacy))
    }

    /// After the commit of a batch that allocated (or found) `req`'s ids.
    pub fn remember(&mut self, req: &Requests) {
        let all = req
            .allocate
            .iter()
            .map(|(ns, (_, ids))| (ns, ids.iter().collect::<Vec<_>>()))
            .chain(
                req.require
                    .iter()
                    .map(|(ns, ids)| (ns, ids.keys().collect())),
            );
        for (ns, ids) in all {
            if self.len + ids.len() > KNOWN_MAX {
                self.ids.clear();
                self.len = 0;
            }
            let set = self.ids.entry(ns.clone()).or_default();
            for l in ids {
                if set.insert(l.clone()) {
                    self.len += 1;
                }
            }
        }
    }
}

/// Whether a table has id-mapped columns.
pub fn has_ids(schema: &TableSchema) -> bool {
    schema.columns.iter().any(|c| c.id_map.is_some())
}

/// Every legacy id that the batch's upserts write and `known` does not
/// hold. Deletes and prunes only look ids up: deleting a row never mapped
/// allocates nothing.
pub fn requests(batch: &Batch, known: &Known) -> Requests {
    let mut out = Requests::default();
    for tb in &batch.tables {
        if !has_ids(&tb.schema) {
            continue;
        }
        let cols: Vec<(usize, &IdRef)> = tb
            .schema
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.id_map.as_ref().map(|r| (i, r)))
            .collect();
        for change in &tb.rows {
            let row = match change {
                RowChange::Upsert(r) | RowChange::Patch(r) | RowChange::Rekey { row: r, .. } => r,
                RowChange::Delete(_) | RowChange::Vanished => continue,
            };
            for &(i, r) in &cols {
                // Resolved against the forward map instead (crate::inverse).
                if r.kind.is_inverse() {
                    continue;
                }
                // One id, or an array of them (an array or jsonb column).
                let legacy_ids: Vec<&String> = match row.get(i) {
                    Some(Datum::Value(Value::Text(legacy))) => vec![legacy],
                    Some(Datum::Value(Value::Array(items))) => items
                        .iter()
                        .filter_map(|v| match v {
                            Value::Text(t) => Some(t),
                            _ => None,
                        })
                        .collect(),
                    _ => continue,
                };
                for legacy in legacy_ids {
                    if known.contains(&r.namespace, legacy) {
                        continue;
                    }
                    match r.on_missing {
                        OnMissing::Allocate => {
                            out.allocate
                                .entry(r.namespace.clone())
                                .or_insert_with(|| (r.kind, BTreeSet::new()))
                                .1
                                .insert(legacy.clone());
                        }
                        OnMissing::DeadLetter => {
                            out.require
                                .entry(r.namespace.clone())
                                .or_default()
                                .entry(legacy.clone())
                                .or_insert_with(|| {
                                    let key = ferry_pipeline::batch::key_json(
                                        &ferry_pipeline::batch::key_values(&tb.schema, row),
                                    );
                                    format!(
                                        "{} key {key}: field {:?} (column {})",
                                        tb.schema.id, r.field, tb.schema.columns[i].name
                                    )
                                });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Allocates the missing mappings of `req.allocate`, in namespace and id
/// order (two workers allocating overlapping ids wait for each other
/// instead of deadlocking); an id another transaction mapped first keeps
/// that mapping.
pub async fn allocate(tx: &Transaction<'_>, req: &Requests) -> Result<(), PipelineError> {
    for (ns, (kind, ids)) in &req.allocate {
        let legacy: Vec<&str> = ids.iter().map(String::as_str).collect();
        let candidates: Vec<Option<String>> = ids.iter().map(|l| kind.candidate(l)).collect();
        let new_id = match kind {
            IdKind::Bigint { .. } => {
                format!("nextval('{}')::text", sequence_name(ns).replace('\'', "''"))
            }
            _ => "u.n".to_string(),
        };
        let sql = format!(
            "INSERT INTO public.ferry_id_map (namespace, legacy_id, new_id)
             SELECT $1, u.l, {new_id}
               FROM unnest($2::text[], $3::text[]) AS u(l, n)
              WHERE NOT EXISTS (SELECT 1 FROM public.ferry_id_map m
                                 WHERE m.namespace = $1 AND m.legacy_id = u.l)
              ORDER BY u.l
             ON CONFLICT (namespace, legacy_id) DO NOTHING"
        );
        let n = tx
            .execute(&sql, &[ns, &legacy, &candidates])
            .await
            .map_err(|e| pg_err(&format!("allocate ids in namespace {ns}"), e))?;
        // Counted when inserted: a batch whose transaction then fails and
        // is retried counts its allocations again (the ids themselves are
        // allocated once).
        ferry_pipeline::metrics::metrics()
            .id_map_allocations
            .with_label_values(&[ns])
            .inc_by(n);
    }
    Ok(())
}

/// Refuses the batch (a permanent error: the runtime then writes it record
/// by record, parking the records whose references are missing) when a
/// reference that must not be allocated ahead has no mapping yet.
pub async fn require(tx: &Transaction<'_>, req: &Requests) -> Result<(), PipelineError> {
    for (ns, ids) in &req.require {
        let legacy: Vec<&str> = ids.keys().map(String::as_str).collect();
        let missing: Vec<String> = tx
            .query(
                "SELECT u.l FROM unnest($2::text[]) AS u(l)
                  WHERE NOT EXISTS (SELECT 1 FROM public.ferry_id_map m
                                     WHERE m.namespace = $1 AND m.legacy_id = u.l)",
                &[ns, &legacy],
            )
            .await
            .map_err(|e| pg_err(&format!("look up ids in namespace {ns}"), e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(first) = missing.first() {
            let context = ids.get(first).map(String::as_str).unwrap_or("");
            let more = match missing.len() {
                1 => String::new(),
                n => format!(" ({} more missing)", n - 1),
            };
            // Translating ids is the transform's work; the sink only does
            // it late, in the rows' transaction.
            let mut e = PipelineError::new(
                ErrorClass::Permanent,
                Stage::Transform,
                format!(
                    "{context}: reference to {ns} {first:?} has not arrived yet (on_missing = \"dead_letter\"; rule missing_reference){more}"
                ),
            );
            e.code = Some("missing_reference".into());
            return Err(e);
        }
    }
    Ok(())
}

/// One mapping of a namespace: a legacy id and the new id it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPair {
    pub legacy: String,
    pub new: String,
}

/// Both ways: the new id of a legacy id, and the legacy id of a new id.
pub async fn lookup(
    client: &impl GenericClient,
    namespace: &str,
    id: &str,
) -> Result<Vec<IdPair>, PipelineError> {
    Ok(client
        .query(
            "SELECT legacy_id, new_id FROM public.ferry_id_map
              WHERE namespace = $1 AND (legacy_id = ANY($2) OR new_id = ANY($2))",
            &[&namespace, &ferry_pipeline::id_map::lookup_forms(id)],
        )
        .await
        .map_err(|e| pg_err("read ferry_id_map", e))?
        .iter()
        .map(|r| IdPair {
            legacy: r.get(0),
            new: r.get(1),
        })
        .collect())
}

/// The namespaces the map holds ids for.
pub async fn namespaces(client: &impl GenericClient) -> Result<Vec<String>, PipelineError> {
    Ok(client
        .query(
            "SELECT DISTINCT namespace FROM public.ferry_id_map ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| pg_err("read ferry_id_map", e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Writes `namespace`'s map as CSV (`legacy_id,new_id,allocated_at`, a
/// header line, in legacy-id order) to `out`; returns the bytes written.
/// PostgreSQL's own CSV writer (`COPY … TO STDOUT`) does the quoting, and
/// the rows stream through in chunks, whatever the map's size.
pub async fn export(
    client: &Client,
    namespace: &str,
    out: &mut (impl std::io::Write + ?Sized),
) -> Result<u64, PipelineError> {
    use futures_util::TryStreamExt;
    let sql = format!(
        "COPY (SELECT legacy_id, new_id, allocated_at FROM public.ferry_id_map
                WHERE namespace = {} ORDER BY legacy_id)
         TO STDOUT WITH (FORMAT csv, HEADER)",
        quote_literal(namespace)
    );
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(|e| pg_err("export ferry_id_map", e))?;
    futures_util::pin_mut!(stream);
    let mut written = 0u64;
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| pg_err("export ferry_id_map", e))?
    {
        out.write_all(&chunk).map_err(|e| {
            PipelineError::new(
                ErrorClass::Fatal,
                Stage::Sink,
                format!("write the id-map export: {e}"),
            )
        })?;
        written += chunk.len() as u64;
    }
    Ok(written)
}
