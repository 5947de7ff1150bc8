//! Inverse id maps (a reverse pipeline, `ferry rollback init`): columns
//! that hold *new* ids are written to the old database as the legacy ids
//! the forward pipeline's `ferry_id_map` gives them.
//!
//! That map lives in the new database (the forward target, the reverse
//! pipeline's source), the rows go to the old one: two databases, so not
//! one transaction. The order makes a crash harmless: a new id without a
//! legacy id gets one first (the old table's own sequence, a fresh
//! ObjectId or UUID) and the pair is committed in the map; then the rows
//! are written, reading the pairs from a temporary table filled in their
//! transaction (the statements' [`crate::id_map::value_sql`] lookup). A
//! crash between the two leaves a pair whose row is not written yet; the
//! replayed change finds the pair and writes the same legacy id. At worst
//! a sequence value is skipped, as the old application skips one on a
//! rollback.

use std::collections::BTreeMap;

use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use ferry_pipeline::id_map::LegacyId;
use tokio_postgres::{Client, Transaction};

use crate::error::pg_err;

/// The session's table of the batch's pairs (emptied at each commit).
pub const STAGE_TABLE: &str = "pg_temp.ferry_inverse_ids";

pub use ferry_pipeline::batch::{has_inverse, wanted, Wanted};

/// One resolved id: (namespace, new id, legacy id).
pub type Pair = (String, String, String);

/// The legacy id of every wanted new id that has one, allocating (and
/// committing in `map`) those that upserts need. `target` is the old
/// database, whose sequences legacy bigints come from.
pub async fn resolve(
    map: &Client,
    target: &Client,
    wanted: &BTreeMap<String, Wanted>,
) -> Result<Vec<Pair>, PipelineError> {
    let mut out = Vec::new();
    for (ns, w) in wanted {
        let all: Vec<&str> = w
            .allocate
            .iter()
            .chain(&w.lookup)
            .map(String::as_str)
            .collect();
        let mut found = read_pairs(map, ns, &all).await?;
        let missing: Vec<&String> = w
            .allocate
            .iter()
            .filter(|id| !found.contains_key(id.as_str()))
            .collect();
        if !missing.is_empty() {
            let legacy = fresh_ids(target, ns, w, missing.len()).await?;
            let new: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            // Either unique key may hold already: another process (the
            // forward pipeline, a replay) mapped the id first and wins.
            map.execute(
                "INSERT INTO public.ferry_id_map (namespace, legacy_id, new_id)
                 SELECT $1, u.l, u.n FROM unnest($2::text[], $3::text[]) AS u(l, n)
                 ON CONFLICT DO NOTHING",
                &[ns, &legacy, &new],
            )
            .await
            .map_err(|e| pg_err(&format!("record legacy ids of namespace {ns}"), e))?;
            found.extend(read_pairs(map, ns, &new).await?);
            if let Some(lost) = new.iter().find(|n| !found.contains_key(**n)) {
                return Err(PipelineError::transient(
                    Stage::Sink,
                    format!("namespace {ns}: new id {lost:?} got no legacy id (a legacy id taken by another mapping); retrying"),
                ));
            }
        }
        out.extend(
            found
                .into_iter()
                .map(|(new, legacy)| (ns.clone(), new, legacy)),
        );
    }
    Ok(out)
}

async fn read_pairs(
    map: &Client,
    ns: &str,
    new: &[&str],
) -> Result<BTreeMap<String, String>, PipelineError> {
    Ok(map
        .query(
            "SELECT new_id, legacy_id FROM public.ferry_id_map WHERE namespace = $1 AND new_id = ANY($2)",
            &[&ns, &new],
        )
        .await
        .map_err(|e| pg_err(&format!("read ferry_id_map namespace {ns}"), e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// `n` fresh legacy ids of `w`'s kind.
async fn fresh_ids(
    target: &Client,
    ns: &str,
    w: &Wanted,
    n: usize,
) -> Result<Vec<String>, PipelineError> {
    if w.legacy != LegacyId::Bigint {
        return Ok((0..n).filter_map(|_| w.legacy.fresh()).collect());
    }
    let Some(seq) = &w.sequence else {
        let mut e = PipelineError::new(
            ErrorClass::Permanent,
            Stage::Sink,
            format!(
                "namespace {ns}: a row created after cutover needs a legacy bigint id, and the id map names no \
                 sequence to draw it from (id_maps.{ns}.sequence; rule no_legacy_sequence)"
            ),
        );
        e.code = Some("no_legacy_sequence".into());
        return Err(e);
    };
    Ok(target
        .query(
            "SELECT nextval($1::text::regclass)::text FROM generate_series(1, $2::int)",
            &[seq, &(n as i32)],
        )
        .await
        .map_err(|e| pg_err(&format!("draw legacy ids from {seq}"), e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Fills the session's pair table in the rows' transaction.
pub async fn stage(tx: &Transaction<'_>, pairs: &[Pair]) -> Result<(), PipelineError> {
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS ferry_inverse_ids (
             namespace text NOT NULL, new_id text NOT NULL, legacy_id text NOT NULL,
             PRIMARY KEY (namespace, new_id)) ON COMMIT DELETE ROWS;
         DELETE FROM {STAGE_TABLE}"
    ))
    .await
    .map_err(|e| pg_err("create the inverse-id table", e))?;
    let ns: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
    let new: Vec<&str> = pairs.iter().map(|p| p.1.as_str()).collect();
    let legacy: Vec<&str> = pairs.iter().map(|p| p.2.as_str()).collect();
    tx.execute(
        &format!(
            "INSERT INTO {STAGE_TABLE} (namespace, new_id, legacy_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING"
        ),
        &[&ns, &new, &legacy],
    )
    .await
    .map_err(|e| pg_err("fill the inverse-id table", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use ferry_pipeline::batch::Batch;
    use ferry_pipeline::event::{ChangeEvent, Column, Datum, Op, TableId, TableSchema};
    use ferry_pipeline::id_map::{IdKind, IdRef, OnMissing};
    use ferry_pipeline::value::Value;

    use super::*;

    fn schema() -> Arc<TableSchema> {
        let col = |name: &str, id: bool| Column {
            name: name.into(),
            type_oid: 0,
            type_sql: "bigint".into(),
            nullable: !id,
            is_key: name == "id",
            enum_labels: None,
            id_map: id.then(|| IdRef {
                namespace: "accounts".into(),
                kind: IdKind::Inverse {
                    legacy: LegacyId::Bigint,
                },
                on_missing: OnMissing::Allocate,
                field: name.into(),
                sequence: Some("legacy.accounts_id_seq".into()),
            }),
        };
        Arc::new(TableSchema {
            id: TableId::new("legacy", "accounts"),
            columns: vec![col("id", true), col("name", false)],
            primary_key: vec![0],
            child: None,
        })
    }

    fn ev(op: Op, id: &str) -> ChangeEvent {
        let row = vec![
            Datum::Value(Value::Text(id.into())),
            Datum::Value(Value::Text("x".into())),
        ];
        let mut e = ChangeEvent::snapshot_read(schema(), row.clone());
        e.op = op;
        match op {
            Op::Delete => {
                e.before = Some(row);
                e.after = None;
            }
            _ => e.after = Some(row),
        }
        e
    }

    #[test]
    fn upserts_allocate_and_deletes_only_look_up() {
        let mut b = Batch::default();
        b.push(ev(Op::Insert, "u1"));
        b.push(ev(Op::Update, "u2"));
        b.push(ev(Op::Delete, "u3"));
        let w = wanted([&b]);
        let w = &w["accounts"];
        assert_eq!(w.legacy, LegacyId::Bigint);
        assert_eq!(w.sequence.as_deref(), Some("legacy.accounts_id_seq"));
        assert_eq!(w.allocate, BTreeSet::from(["u1".into(), "u2".into()]));
        assert_eq!(w.lookup, BTreeSet::from(["u3".into()]));
        assert!(has_inverse(&schema()));
    }
}
