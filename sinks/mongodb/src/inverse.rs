//! Inverse id maps into MongoDB (a reverse pipeline after a MongoDB →
//! PostgreSQL migration, `ferry rollback init`): columns holding the new
//! database's ids are written as the legacy ids (ObjectIds) the forward
//! pipeline's `ferry_id_map` gives them, in the PostgreSQL database named
//! by `sink.id_map_url`.
//!
//! The map and the documents are in two databases, so not one
//! transaction; the order makes a crash harmless, as in the PostgreSQL
//! sink's `inverse` module: a new id without a legacy id gets a fresh one
//! (an ObjectId, a UUID) committed in the map first, then the documents
//! are written; a replayed change finds the pair and writes the same id.
//! Legacy bigints drawn from a sequence exist only for PostgreSQL targets.

use std::collections::{BTreeMap, HashMap};

use bson::Bson;
use ferry_pipeline::batch::Wanted;
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use ferry_pipeline::id_map::LegacyId;
use tokio_postgres::Client;

/// Legacy id text by (namespace, new id).
pub(crate) type Pairs = HashMap<(String, String), String>;

fn pg_err(what: &str, e: tokio_postgres::Error) -> PipelineError {
    let class = match e.code() {
        Some(_) => ErrorClass::Fatal,
        None => ErrorClass::Transient,
    };
    PipelineError::new(class, Stage::Sink, format!("{what}: {e}"))
}

/// The legacy id of every wanted new id that has one, allocating (and
/// committing in the map) fresh ones for the ids upserts write.
pub(crate) async fn resolve(
    map: &Client,
    wanted: &BTreeMap<String, Wanted>,
) -> Result<Pairs, PipelineError> {
    let mut out = Pairs::new();
    for (ns, w) in wanted {
        let all: Vec<&str> = w
            .allocate
            .iter()
            .chain(&w.lookup)
            .map(String::as_str)
            .collect();
        let read = |rows: Vec<tokio_postgres::Row>| {
            rows.iter()
                .map(|r| ((ns.clone(), r.get::<_, String>(0)), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
        };
        const READ: &str = "SELECT new_id, legacy_id FROM public.ferry_id_map
                             WHERE namespace = $1 AND new_id = ANY($2)";
        out.extend(read(map.query(READ, &[ns, &all]).await.map_err(|e| {
            pg_err(&format!("read ferry_id_map namespace {ns}"), e)
        })?));
        let missing: Vec<&str> = w
            .allocate
            .iter()
            .filter(|id| !out.contains_key(&(ns.clone(), (*id).clone())))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            continue;
        }
        if w.legacy == LegacyId::Bigint {
            let mut e = PipelineError::new(
                ErrorClass::Permanent,
                Stage::Sink,
                format!("namespace {ns}: a MongoDB target takes ObjectId or UUID legacy ids, not bigints (rule no_legacy_sequence)"),
            );
            e.code = Some("no_legacy_sequence".into());
            return Err(e);
        }
        let legacy: Vec<String> = missing.iter().filter_map(|_| w.legacy.fresh()).collect();
        map.execute(
            "INSERT INTO public.ferry_id_map (namespace, legacy_id, new_id)
             SELECT $1, u.l, u.n FROM unnest($2::text[], $3::text[]) AS u(l, n)
             ON CONFLICT DO NOTHING",
            &[ns, &legacy, &missing],
        )
        .await
        .map_err(|e| pg_err(&format!("record legacy ids of namespace {ns}"), e))?;
        out.extend(read(map.query(READ, &[ns, &missing]).await.map_err(
            |e| pg_err(&format!("read ferry_id_map namespace {ns}"), e),
        )?));
    }
    Ok(out)
}

/// A legacy id's text as the value MongoDB held: an ObjectId for 24 hex
/// digits of an ObjectId namespace, a UUID as BSON binary subtype 4.
pub(crate) fn legacy_bson(legacy: LegacyId, text: &str) -> Bson {
    match legacy {
        LegacyId::ObjectId => bson::oid::ObjectId::parse_str(text)
            .map(Bson::ObjectId)
            .unwrap_or_else(|_| Bson::String(text.to_string())),
        LegacyId::Uuid => uuid::Uuid::parse_str(text)
            .map(|u| {
                Bson::Binary(bson::Binary::from_uuid(bson::Uuid::from_bytes(
                    *u.as_bytes(),
                )))
            })
            .unwrap_or_else(|_| Bson::String(text.to_string())),
        LegacyId::Bigint => text
            .parse::<i64>()
            .map(Bson::Int64)
            .unwrap_or_else(|_| Bson::String(text.to_string())),
    }
}
