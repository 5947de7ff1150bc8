//! The dead-letter queue on the embedded bus: `ferry_dlq` in the target,
//! written in the same transaction as the records of the batch that landed.
//!
//! A record leaves the queue when a replay applies it (or finds it
//! superseded by a later change of the same row); a replay that fails again
//! keeps it, with one more attempt and the new error.

use std::collections::HashSet;

use ferry_pipeline::dlq::DeadLetter;
use ferry_pipeline::error::PipelineError;
use ferry_pipeline::event::TableId;
use tokio_postgres::{GenericClient, Transaction};

use crate::pg_err;

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

/// Records waiting (not superseded).
pub async fn depth(client: &impl GenericClient, pipeline: &str) -> Result<i64, PipelineError> {
    client
        .query_one(
            "SELECT count(*) FROM public.ferry_dlq WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| pg_err("count ferry_dlq", e))
}

/// Which records a command acts on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `schema.table` or `table`.
    pub table: Option<TableId>,
    pub error_class: Option<String>,
    /// RFC 3339 / PostgreSQL timestamps, on the last failure.
    pub since: Option<String>,
    pub until: Option<String>,
    /// A single record.
    pub id: Option<i64>,
}

impl Filter {
    /// `WHERE …` over `ferry_dlq` with its parameters after `$1` (the
    /// pipeline).
    pub fn sql(&self) -> (String, Vec<Option<String>>) {
        let mut conds = vec!["pipeline = $1".to_string()];
        let mut params: Vec<Option<String>> = Vec::new();
        let mut add = |cond: &str, v: Option<String>| {
            params.push(v);
            conds.push(cond.replace('?', &format!("${}", params.len() + 1)));
        };
        if let Some(t) = &self.table {
            add("table_schema = ?", Some(t.schema.clone()));
            add("table_name = ?", Some(t.name.clone()));
        }
        if let Some(c) = &self.error_class {
            add("error_class = ?", Some(c.clone()));
        }
        if let Some(s) = &self.since {
            add("last_failed_at >= ?::timestamptz", Some(s.clone()));
        }
        if let Some(u) = &self.until {
            add("last_failed_at < ?::timestamptz", Some(u.clone()));
        }
        if let Some(id) = self.id {
            add("id = ?::bigint", Some(id.to_string()));
        }
        (conds.join(" AND "), params)
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_none()
            && self.error_class.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.id.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_numbers_its_parameters() {
        let f = Filter {
            table: Some(TableId::new("public", "t")),
            error_class: Some("permanent".into()),
            since: Some("2026-01-01".into()),
            ..Filter::default()
        };
        let (sql, params) = f.sql();
        assert_eq!(
            sql,
            "pipeline = $1 AND table_schema = $2 AND table_name = $3 AND error_class = $4 AND last_failed_at >= $5::timestamptz"
        );
        assert_eq!(params.len(), 4);
        assert!(Filter::default().is_empty());
    }
}
