//! The dead-letter queue on the embedded bus: `ferry_dlq` in the target,
//! written in the same transaction as the records of the batch that landed,
//! and its administration (list, show, purge, replay).
//!
//! A record leaves the queue when a replay applies it (or finds it
//! superseded by a later change of the same row); a replay that fails again
//! keeps it, with one more attempt and the new error.

use std::collections::HashSet;

use ferry_pipeline::batch::Batch;
use ferry_pipeline::dlq::DeadLetter;
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use ferry_pipeline::event::TableId;
use ferry_pipeline::metrics::metrics;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Transaction};

use crate::apply::apply_tables;
use crate::error::pg_err;
use crate::sink::PostgresSink;
use crate::{id_map, params};

/// Creates `ferry_dlq` if it is missing.
pub async fn install(client: &impl GenericClient) -> Result<(), PipelineError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS public.ferry_dlq (
                 id              bigserial PRIMARY KEY,
                 pipeline        text NOT NULL,
                 table_schema    text NOT NULL,
                 table_name      text NOT NULL,
                 row_key         text NOT NULL,
                 op              text NOT NULL,
                 event           text NOT NULL,
                 error_class     text NOT NULL,
                 error_code      text,
                 error_message   text NOT NULL,
                 stage           text NOT NULL,
                 attempts        integer NOT NULL DEFAULT 1,
                 first_failed_at timestamptz NOT NULL DEFAULT now(),
                 last_failed_at  timestamptz NOT NULL DEFAULT now(),
                 commit_lsn      pg_lsn,
                 ordinal         bigint,
                 superseded_at   timestamptz
             );
             ALTER TABLE public.ferry_dlq ADD COLUMN IF NOT EXISTS bus_topic text;
             ALTER TABLE public.ferry_dlq ADD COLUMN IF NOT EXISTS bus_partition integer;
             ALTER TABLE public.ferry_dlq ADD COLUMN IF NOT EXISTS bus_offset bigint;
             CREATE INDEX IF NOT EXISTS ferry_dlq_row
                 ON public.ferry_dlq (pipeline, table_schema, table_name, row_key);",
        )
        .await
        .map_err(|e| pg_err("create ferry_dlq", e))
}

/// Parks `records` of `table` (inside the batch's transaction).
pub async fn park(
    tx: &Transaction<'_>,
    pipeline: &str,
    table: &TableId,
    op: &str,
    record: &DeadLetter,
) -> Result<(), PipelineError> {
    let event = String::from_utf8_lossy(&record.event).into_owned();
    let lsn = record.position.map(|p| p.commit_lsn.to_string());
    let ordinal = record.position.map(|p| p.ordinal as i64);
    let bus_topic = record.origin.as_ref().map(|o| o.topic.to_string());
    let bus_partition = record.origin.as_ref().map(|o| o.partition);
    let bus_offset = record.origin.as_ref().map(|o| o.offset);
    tx.execute(
        "INSERT INTO public.ferry_dlq
             (pipeline, table_schema, table_name, row_key, op, event,
              error_class, error_code, error_message, stage, commit_lsn, ordinal,
              bus_topic, bus_partition, bus_offset)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                 CASE WHEN $11::text IS NULL THEN NULL ELSE '0/0'::pg_lsn + $11::text::numeric END, $12,
                 $13, $14, $15)",
        &[
            &pipeline,
            &table.schema,
            &table.name,
            &record.key,
            &op,
            &event,
            &record.error.class,
            &record.error.code,
            &record.error.message,
            &record.error.stage,
            &lsn,
            &ordinal,
            &bus_topic,
            &bus_partition,
            &bus_offset,
        ],
    )
    .await
    .map_err(|e| pg_err("write ferry_dlq", e))?;
    Ok(())
}

/// Marks the parked records of these rows superseded: a later change of
/// the row landed, and replaying the older one would move the row back.
pub async fn supersede(
    tx: &Transaction<'_>,
    pipeline: &str,
    table: &TableId,
    keys: &[String],
) -> Result<u64, PipelineError> {
    if keys.is_empty() {
        return Ok(0);
    }
    tx.execute(
        "UPDATE public.ferry_dlq SET superseded_at = now()
          WHERE pipeline = $1 AND table_schema = $2 AND table_name = $3
            AND row_key = ANY($4) AND superseded_at IS NULL",
        &[&pipeline, &table.schema, &table.name, &keys],
    )
    .await
    .map_err(|e| pg_err("supersede ferry_dlq", e))
}

/// Every parked record of a table is superseded: the table was emptied
/// (a truncate, a snapshot starting over), and replaying any of them would
/// bring back a row the source no longer has.
pub async fn supersede_table(
    tx: &Transaction<'_>,
    pipeline: &str,
    table: &TableId,
) -> Result<u64, PipelineError> {
    tx.execute(
        "UPDATE public.ferry_dlq SET superseded_at = now()
          WHERE pipeline = $1 AND table_schema = $2 AND table_name = $3
            AND superseded_at IS NULL",
        &[&pipeline, &table.schema, &table.name],
    )
    .await
    .map_err(|e| pg_err("supersede ferry_dlq", e))
}

/// Tables with parked records that are not superseded.
pub async fn tables_with_records(
    client: &impl GenericClient,
    pipeline: &str,
) -> Result<HashSet<TableId>, PipelineError> {
    let rows = client
        .query(
            "SELECT DISTINCT table_schema, table_name FROM public.ferry_dlq
              WHERE pipeline = $1 AND superseded_at IS NULL",
            &[&pipeline],
        )
        .await
        .map_err(|e| pg_err("read ferry_dlq", e))?;
    Ok(rows
        .iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// Records in the queue by table and rule (the error code, or the error
/// class when the record has none), for `ferry_dlq_table_records` and
/// `ferry_dlq_depth_records`.
pub async fn depth(
    client: &impl GenericClient,
    pipeline: &str,
) -> Result<Vec<(String, String, i64)>, PipelineError> {
    client
        .query(
            "SELECT table_schema || '.' || table_name, coalesce(error_code, error_class), count(*)
               FROM public.ferry_dlq WHERE pipeline = $1 GROUP BY 1, 2",
            &[&pipeline],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect()
        })
        .map_err(|e| pg_err("count ferry_dlq", e))
}

/// A table as an operator names it: `schema.table` is exact, a bare
/// `table` matches that name in any schema (the queue holds source names
/// for records the mapping refused and target names for the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => write!(f, "{} (any schema)", self.name),
        }
    }
}

/// Which records a command acts on. Every field narrows the selection;
/// `tables` and `ids` match any of their entries.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tables: Vec<TableName>,
    pub error_class: Option<String>,
    /// The rule or error code (`error_code`: a mapping rule such as
    /// `decimal_overflow`, or a SQLSTATE such as `23514`).
    pub rule: Option<String>,
    /// RFC 3339 / PostgreSQL timestamps, on the last failure.
    pub since: Option<String>,
    pub until: Option<String>,
    /// Record numbers.
    pub ids: Vec<i64>,
}

impl Filter {
    /// `WHERE …` over `ferry_dlq` with its parameters after `$1` (the
    /// pipeline).
    pub fn sql(&self) -> (String, Vec<Option<String>>) {
        let mut conds = vec!["pipeline = $1".to_string()];
        let mut params: Vec<Option<String>> = Vec::new();
        let mut next = |v: String| {
            params.push(Some(v));
            format!("${}", params.len() + 1)
        };
        if !self.tables.is_empty() {
            let any: Vec<String> = self
                .tables
                .iter()
                .map(|t| match &t.schema {
                    Some(schema) => format!(
                        "(table_schema = {} AND table_name = {})",
                        next(schema.clone()),
                        next(t.name.clone())
                    ),
                    None => format!("table_name = {}", next(t.name.clone())),
                })
                .collect();
            conds.push(format!("({})", any.join(" OR ")));
        }
        if let Some(c) = &self.error_class {
            conds.push(format!("error_class = {}", next(c.clone())));
        }
        if let Some(r) = &self.rule {
            conds.push(format!("error_code = {}", next(r.clone())));
        }
        if let Some(s) = &self.since {
            conds.push(format!(
                "last_failed_at >= ({}::text)::timestamptz",
                next(s.clone())
            ));
        }
        if let Some(u) = &self.until {
            conds.push(format!(
                "last_failed_at < ({}::text)::timestamptz",
                next(u.clone())
            ));
        }
        if !self.ids.is_empty() {
            let list: Vec<String> = self.ids.iter().map(i64::to_string).collect();
            conds.push(format!(
                "id = ANY(string_to_array({}::text, ',')::bigint[])",
                next(list.join(","))
            ));
        }
        (conds.join(" AND "), params)
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
            && self.error_class.is_none()
            && self.rule.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.ids.is_empty()
    }
}

/// Parked records of one table, error class and rule.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DlqGroup {
    #[serde(serialize_with = "display")]
    pub table: TableId,
    pub error_class: String,
    /// The rule or error code; `None` when the failure had none.
    pub rule: Option<String>,
    pub records: i64,
    pub superseded: i64,
    pub oldest: String,
    pub newest: String,
    /// The first few record numbers, for `ferry dlq show`.
    pub examples: Vec<i64>,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// What replay did (or, dry, would do) with one record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplayedRecord {
    pub id: i64,
    pub table: String,
    pub key: String,
    /// `applied`, `superseded` or `failed`.
    pub outcome: &'static str,
    /// Why it failed again.
    pub error: Option<String>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    /// Applied and removed from the queue (with `--dry-run`: would be).
    pub applied: u64,
    /// Removed without applying: a later change of the row landed since.
    pub superseded: u64,
    /// Failed again: kept, with one more attempt and the new error.
    pub failed: u64,
    /// Each record's outcome, in the order replayed.
    pub records: Vec<ReplayedRecord>,
}

/// The administration of the queue (`ferry dlq list|show|purge|replay`).
impl PostgresSink {
    /// Records by table, error class and rule.
    pub async fn dlq_list(&mut self, filter: &Filter) -> Result<Vec<DlqGroup>, PipelineError> {
        let pipeline = self.pipeline.clone();
        let (cond, params) = filter.sql();
        let sql = format!(
            "SELECT table_schema, table_name, error_class, error_code, count(*),
                    count(superseded_at), min(first_failed_at)::text, max(last_failed_at)::text,
                    (array_agg(id ORDER BY id))[1:3]
               FROM public.ferry_dlq WHERE {cond}
              GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        );
        let client = self.client().await?;
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&pipeline];
        args.extend(params.iter().map(|p| p as &(dyn ToSql + Sync)));
        let rows = client
            .query(&sql, &args)
            .await
            .map_err(|e| pg_err("read ferry_dlq", e))?;
        Ok(rows
            .iter()
            .map(|r| DlqGroup {
                table: TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                error_class: r.get(2),
                rule: r.get(3),
                records: r.get(4),
                superseded: r.get(5),
                oldest: r.get(6),
                newest: r.get(7),
                examples: r.get(8),
            })
            .collect())
    }

    /// The tables the queue holds records for, with their counts: what an
    /// empty selection is told it could have named.
    pub async fn dlq_tables(&mut self) -> Result<Vec<(TableId, i64)>, PipelineError> {
        let pipeline = self.pipeline.clone();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT table_schema, table_name, count(*) FROM public.ferry_dlq
                  WHERE pipeline = $1 GROUP BY 1, 2 ORDER BY 1, 2",
                &[&pipeline],
            )
            .await
            .map_err(|e| pg_err("read ferry_dlq", e))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                    r.get(2),
                )
            })
            .collect())
    }

    /// The record numbers `filter` selects, oldest first, at most `limit`.
    pub async fn dlq_ids(
        &mut self,
        filter: &Filter,
        limit: i64,
    ) -> Result<Vec<i64>, PipelineError> {
        let pipeline = self.pipeline.clone();
        let (cond, params) = filter.sql();
        let client = self.client().await?;
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&pipeline];
        args.extend(params.iter().map(|p| p as &(dyn ToSql + Sync)));
        args.push(&limit);
        let sql = format!(
            "SELECT id FROM public.ferry_dlq WHERE {cond} ORDER BY id LIMIT ${}",
            args.len()
        );
        Ok(client
            .query(&sql, &args)
            .await
            .map_err(|e| pg_err("read ferry_dlq", e))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// One record as JSON: its fields and the parked change.
    pub async fn dlq_show(&mut self, id: i64) -> Result<Option<serde_json::Value>, PipelineError> {
        let pipeline = self.pipeline.clone();
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, table_schema, table_name, row_key, op, event, error_class, error_code,
                        error_message, stage, attempts, first_failed_at::text, last_failed_at::text,
                        commit_lsn::text, ordinal, superseded_at::text,
                        bus_topic, bus_partition, bus_offset
                   FROM public.ferry_dlq WHERE pipeline = $1 AND id = $2",
                &[&pipeline, &id],
            )
            .await
            .map_err(|e| pg_err("read ferry_dlq", e))?;
        Ok(row.map(|r| {
            let event: String = r.get(5);
            serde_json::json!({
                "id": r.get::<_, i64>(0),
                "table": format!("{}.{}", r.get::<_, String>(1), r.get::<_, String>(2)),
                "key": r.get::<_, String>(3),
                "op": r.get::<_, String>(4),
                "error_class": r.get::<_, String>(6),
                "error_code": r.get::<_, Option<String>>(7),
                "error_message": r.get::<_, String>(8),
                "stage": r.get::<_, String>(9),
                "attempts": r.get::<_, i32>(10),
                "first_failed_at": r.get::<_, String>(11),
                "last_failed_at": r.get::<_, String>(12),
                "source_position": r.get::<_, Option<String>>(13).map(|l| format!("{l}#{}", r.get::<_, Option<i64>>(14).unwrap_or(0))),
                "superseded_at": r.get::<_, Option<String>>(15),
                "bus_topic": r.get::<_, Option<String>>(16),
                "bus_partition": r.get::<_, Option<i32>>(17),
                "bus_offset": r.get::<_, Option<i64>>(18),
                "event": serde_json::from_str::<serde_json::Value>(&event).unwrap_or(serde_json::Value::String(event)),
            })
        }))
    }

    /// Removes the records `filter` selects; returns how many.
    pub async fn dlq_purge(&mut self, filter: &Filter) -> Result<u64, PipelineError> {
        let pipeline = self.pipeline.clone();
        let (cond, params) = filter.sql();
        let client = self.client().await?;
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&pipeline];
        args.extend(params.iter().map(|p| p as &(dyn ToSql + Sync)));
        let n = client
            .execute(&format!("DELETE FROM public.ferry_dlq WHERE {cond}"), &args)
            .await
            .map_err(|e| pg_err("purge ferry_dlq", e))?;
        let depth = depth(client, &pipeline).await?;
        metrics().set_dlq_depth(&depth);
        Ok(n)
    }

    /// Re-applies the records `filter` selects, oldest first, each in its
    /// own transaction (so an interrupted replay loses nothing and repeats
    /// nothing): an applied record leaves the queue in the same transaction;
    /// a superseded one leaves without being applied; one that fails again
    /// stays with one more attempt and the new error. With `dry_run`, every
    /// record is applied and rolled back. `rate` caps records per second.
    pub async fn dlq_replay(
        &mut self,
        filter: &Filter,
        dry_run: bool,
        rate: Option<f64>,
        transformer: Option<&ferry_pipeline::transform::Transformer>,
    ) -> Result<ReplayReport, PipelineError> {
        let pipeline = self.pipeline.clone();
        let (cond, params) = filter.sql();
        let ids: Vec<i64> = {
            let client = self.client().await?;
            let mut args: Vec<&(dyn ToSql + Sync)> = vec![&pipeline];
            args.extend(params.iter().map(|p| p as &(dyn ToSql + Sync)));
            client
                .query(
                    &format!("SELECT id FROM public.ferry_dlq WHERE {cond} ORDER BY id"),
                    &args,
                )
                .await
                .map_err(|e| pg_err("read ferry_dlq", e))?
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        let pause = rate
            .filter(|r| *r > 0.0)
            .map(|r| std::time::Duration::from_secs_f64(1.0 / r));
        let mut report = ReplayReport::default();
        for id in ids {
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
            let row = self
                .client()
                .await?
                .query_opt(
                    "SELECT event, superseded_at IS NOT NULL, stage, coalesce(error_code, ''),
                            table_schema || '.' || table_name, row_key
                       FROM public.ferry_dlq WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(|e| pg_err("read ferry_dlq", e))?;
            // Gone meanwhile (another replay or a purge).
            let Some(row) = row else { continue };
            let superseded: bool = row.get(1);
            let outcome = |outcome: &'static str, error: Option<String>| ReplayedRecord {
                id,
                table: row.get(4),
                key: row.get(5),
                outcome,
                error,
            };
            if superseded {
                if !dry_run {
                    self.client()
                        .await?
                        .execute("DELETE FROM public.ferry_dlq WHERE id = $1", &[&id])
                        .await
                        .map_err(|e| pg_err("remove from ferry_dlq", e))?;
                }
                report.superseded += 1;
                report.records.push(outcome("superseded", None));
                continue;
            }
            let event: String = row.get(0);
            let ev = ferry_pipeline::dlq::decode_event(event.as_bytes())?;
            // A mapped table's change goes through the current mapping
            // again: the fix may have been to the mapping.
            let mut batch = Batch::default();
            let mut refused = None;
            // Refused by the mapping: the record is the source change. Any
            // other record (a target constraint, a missing reference) is
            // the mapped row itself.
            let stage: String = row.get(2);
            let code: String = row.get(3);
            let is_source_change =
                stage == Stage::Transform.as_str() && code != "missing_reference";
            let mapped = transformer.filter(|_| is_source_change);
            match mapped.and_then(|t| t.apply(&ev)) {
                None => batch.push(ev),
                Some(Ok(outputs)) => {
                    for o in outputs {
                        match o {
                            ferry_pipeline::transform::Output::Change(c) => batch.push(c),
                            ferry_pipeline::transform::Output::Prune {
                                table,
                                parent_key,
                                keep_below,
                            } => batch.prune(&table, parent_key, keep_below),
                        }
                    }
                }
                Some(Err(r)) => {
                    let mut e =
                        PipelineError::new(ErrorClass::Permanent, Stage::Transform, r.message);
                    e.code = Some(r.rule);
                    refused = Some(e);
                }
            }
            let prepared = params::prepare(batch);
            if refused.is_none() {
                self.ensure_tables(&prepared.batch).await?;
            }
            // A reverse pipeline's record: its new ids' legacy ids, as the
            // running sink resolves them (crate::inverse).
            let mut pairs = Vec::new();
            if refused.is_none() {
                match self.inverse_pairs(&prepared).await {
                    Ok(p) => pairs = p,
                    Err(e) if e.class == ErrorClass::Permanent => refused = Some(e),
                    Err(e) => return Err(e),
                }
            }
            let target_ids = self.target_ids(&prepared.batch);
            let mut statements = std::mem::take(&mut self.statements);
            let tables = std::mem::take(&mut self.tables);
            let attempt = async {
                if let Some(e) = refused {
                    return Err(e);
                }
                let client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| pg_err("begin", e))?;
                // Checked again under a lock: a newer change of the row may
                // have landed (and superseded the record) since it was read;
                // applying it now would move the row back.
                let current = tx
                    .query_opt(
                        "SELECT superseded_at IS NULL FROM public.ferry_dlq WHERE id = $1 FOR UPDATE",
                        &[&id],
                    )
                    .await
                    .map_err(|e| pg_err("read ferry_dlq", e))?;
                if current.map(|r| r.get::<_, bool>(0)) != Some(true) {
                    return Ok(false);
                }
                if !pairs.is_empty() {
                    crate::inverse::stage(&tx, &pairs).await?;
                }
                apply_tables(
                    &tx,
                    &mut statements,
                    &tables,
                    &prepared,
                    &target_ids,
                    &pipeline,
                    false,
                    &Default::default(),
                    &id_map::requests(&prepared.batch, &Default::default()),
                )
                .await?;
                if dry_run {
                    tx.rollback().await.map_err(|e| pg_err("rollback", e))?;
                } else {
                    tx.execute("DELETE FROM public.ferry_dlq WHERE id = $1", &[&id])
                        .await
                        .map_err(|e| pg_err("remove from ferry_dlq", e))?;
                    tx.commit().await.map_err(|e| pg_err("commit", e))?;
                }
                Ok::<bool, PipelineError>(true)
            }
            .await;
            self.statements = statements;
            self.tables = tables;
            match attempt {
                Ok(true) => {
                    report.applied += 1;
                    report.records.push(outcome("applied", None));
                }
                // Superseded meanwhile: left to the next replay (which drops
                // it) rather than applied over the newer change.
                Ok(false) => {
                    report.superseded += 1;
                    report.records.push(outcome("superseded", None));
                }
                Err(e) if e.class == ErrorClass::Permanent => {
                    report.failed += 1;
                    report.records.push(outcome("failed", Some(e.to_string())));
                    if !dry_run {
                        let err = ferry_pipeline::dlq::RecordError::of(&e);
                        self.client()
                            .await?
                            .execute(
                                "UPDATE public.ferry_dlq
                                    SET attempts = attempts + 1, last_failed_at = now(),
                                        error_class = $2, error_code = $3, error_message = $4, stage = $5
                                  WHERE id = $1",
                                &[&id, &err.class, &err.code, &err.message, &err.stage],
                            )
                            .await
                            .map_err(|e| pg_err("update ferry_dlq", e))?;
                    }
                }
                Err(e) => {
                    if e.disposition() == ferry_pipeline::error::Disposition::Retry {
                        self.client = None;
                        self.statements.clear();
                    }
                    return Err(e);
                }
            }
        }
        let depth = depth(self.client().await?, &pipeline).await?;
        metrics().set_dlq_depth(&depth);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_numbers_its_parameters() {
        let f = Filter {
            tables: vec![
                TableName {
                    schema: Some("public".into()),
                    name: "t".into(),
                },
                TableName {
                    schema: None,
                    name: "u".into(),
                },
            ],
            error_class: Some("permanent".into()),
            rule: Some("decimal_overflow".into()),
            since: Some("2026-01-01".into()),
            ids: vec![3, 4],
            ..Filter::default()
        };
        let (sql, params) = f.sql();
        assert_eq!(
            sql,
            "pipeline = $1 AND ((table_schema = $2 AND table_name = $3) OR table_name = $4) \
             AND error_class = $5 AND error_code = $6 AND last_failed_at >= ($7::text)::timestamptz \
             AND id = ANY(string_to_array($8::text, ',')::bigint[])"
        );
        assert_eq!(params.len(), 7);
        assert_eq!(params[6].as_deref(), Some("3,4"));
        assert!(Filter::default().is_empty());
    }
}
