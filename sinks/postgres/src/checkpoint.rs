//! The pipeline's bookkeeping in the target: the applied position and the
//! completed snapshots, written in the same transaction as the data.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ferry_pipeline::batch::ConsumedRange;
use ferry_pipeline::checkpoint::{PartitionProgress, STALE_OFFSETS};
use ferry_pipeline::error::Stage;

use ferry_pipeline::checkpoint::{Checkpoint, SnapshotRecord};
use ferry_pipeline::error::PipelineError;
use ferry_pipeline::event::{Position, TableId};
use futures_util::future::join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Statement, Transaction};

use crate::error::pg_err;

/// Creates the bookkeeping tables if they are missing.
pub async fn install(client: &Client) -> Result<(), PipelineError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS public.ferry_checkpoint (
                 pipeline    text PRIMARY KEY,
                 commit_lsn  pg_lsn NOT NULL,
                 ordinal     bigint NOT NULL,
                 updated_at  timestamptz NOT NULL DEFAULT now()
             );
             ALTER TABLE public.ferry_checkpoint ADD COLUMN IF NOT EXISTS resume_token text;
             CREATE TABLE IF NOT EXISTS public.ferry_snapshot (
                 pipeline     text NOT NULL,
                 table_schema text NOT NULL,
                 table_name   text NOT NULL,
                 rows         bigint NOT NULL,
                 state        jsonb NOT NULL,
                 completed_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, table_schema, table_name)
             );
             CREATE TABLE IF NOT EXISTS public.ferry_bus_offsets (
                 pipeline    text NOT NULL,
                 topic       text NOT NULL,
                 partition   integer NOT NULL,
                 next_offset bigint NOT NULL,
                 commit_lsn  pg_lsn,
                 ordinal     bigint,
                 updated_at  timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, topic, partition)
             );
             ALTER TABLE public.ferry_bus_offsets ADD COLUMN IF NOT EXISTS last_record_ts bigint;",
        )
        .await
        .map_err(|e| pg_err("create ferry_checkpoint/ferry_snapshot", e))?;
    client
        .batch_execute(crate::barrier::INSTALL)
        .await
        .map_err(|e| pg_err("create ferry_barriers", e))
}

/// Reads the checkpoint of `pipeline` (on a client or inside a
/// transaction).
pub async fn load(
    client: &impl GenericClient,
    pipeline: &str,
) -> Result<Checkpoint, PipelineError> {
    let pos = client
        .query_opt(
            "SELECT (commit_lsn - '0/0'::pg_lsn)::text, ordinal, resume_token FROM public.ferry_checkpoint WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .map_err(|e| pg_err("read ferry_checkpoint", e))?;
    let resume_token: Option<String> = pos.as_ref().and_then(|r| r.get(2));
    let position = match pos {
        // A token-resumed source stores no position (0/0).
        Some(row) if row.get::<_, String>(0) != "0" => {
            let lsn: String = row.get(0);
            let ordinal: i64 = row.get(1);
            Some(Position {
                commit_lsn: lsn.parse().map_err(|_| {
                    PipelineError::fatal(
                        ferry_pipeline::error::Stage::Sink,
                        format!("ferry_checkpoint holds an unreadable LSN {lsn:?}"),
                    )
                })?,
                ordinal: ordinal as u64,
            })
        }
        _ => None,
    };
    let rows = client
        .query(
            "SELECT table_schema, table_name, rows, state::text FROM public.ferry_snapshot WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .map_err(|e| pg_err("read ferry_snapshot", e))?;
    let mut snapshots = HashMap::new();
    for r in rows {
        let state: String = r.get(3);
        snapshots.insert(
            TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            SnapshotRecord {
                rows: r.get::<_, i64>(2) as u64,
                state: serde_json::from_str(&state).unwrap_or(serde_json::Value::Null),
            },
        );
    }
    Ok(Checkpoint {
        position,
        snapshots,
        resume_token,
    })
}

const SAVE_POSITION: &str =
    "INSERT INTO public.ferry_checkpoint (pipeline, commit_lsn, ordinal, resume_token)
     VALUES ($1, ('0/0'::pg_lsn + $2::text::numeric), $3, $4)
     ON CONFLICT (pipeline) DO UPDATE
        SET commit_lsn = EXCLUDED.commit_lsn, ordinal = EXCLUDED.ordinal,
            resume_token = coalesce(EXCLUDED.resume_token, ferry_checkpoint.resume_token),
            updated_at = now()";

/// Records the applied position and resume token (inside the batch's
/// transaction). A batch without a token keeps the stored one.
pub async fn save_position(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    pipeline: &str,
    p: Position,
    resume_token: Option<&str>,
) -> Result<(), PipelineError> {
    let stmt = crate::statement_cache::prepared(
        tx,
        statements,
        SAVE_POSITION,
        &[],
        "write ferry_checkpoint",
    )
    .await?;
    tx.execute(
        &stmt,
        &[
            &pipeline,
            &p.commit_lsn.to_string(),
            &(p.ordinal as i64),
            &resume_token,
        ],
    )
    .await
    .map_err(|e| pg_err("write ferry_checkpoint", e))?;
    Ok(())
}

const SAVE_BUS_OFFSET: &str = "INSERT INTO public.ferry_bus_offsets AS o
                     (pipeline, topic, partition, next_offset, commit_lsn, ordinal, last_record_ts)
                 VALUES ($1, $2, $3, $4, ('0/0'::pg_lsn + $5::text::numeric), $6, $8)
                 ON CONFLICT (pipeline, topic, partition) DO UPDATE
                    SET next_offset = EXCLUDED.next_offset,
                        last_record_ts = EXCLUDED.last_record_ts,
                        commit_lsn = coalesce(EXCLUDED.commit_lsn, o.commit_lsn),
                        ordinal = CASE WHEN EXCLUDED.commit_lsn IS NULL THEN o.ordinal ELSE EXCLUDED.ordinal END,
                        updated_at = now()
                  WHERE o.next_offset <= $7
                 RETURNING 1";

/// One partition's progress, as [`save_bus_offsets`] writes it.
struct OffsetRow<'a> {
    topic: &'a str,
    partition: i32,
    next: i64,
    commit_lsn: Option<String>,
    ordinal: Option<i64>,
    first: i64,
    last_ts: Option<i64>,
}

/// Records a Kafka worker's progress (inside the batch's transaction),
/// first thing in it: the row lock this takes serializes two workers that
/// both believe they own a partition, and a batch whose first offset is
/// below the stored next offset was already applied, by this worker before
/// a crash or by another since a rebalance: it is refused with
/// [`STALE_OFFSETS`] and nothing of it is written.
pub async fn save_bus_offsets(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    pipeline: &str,
    bus: &BTreeMap<(Arc<str>, i32), ConsumedRange>,
) -> Result<(), PipelineError> {
    let stmt = crate::statement_cache::prepared(
        tx,
        statements,
        SAVE_BUS_OFFSET,
        &[],
        "write ferry_bus_offsets",
    )
    .await?;
    let rows: Vec<OffsetRow> = bus
        .iter()
        .map(|((topic, partition), r)| OffsetRow {
            topic: topic.as_ref(),
            partition: *partition,
            next: r.next,
            commit_lsn: r.position.map(|p| p.commit_lsn.to_string()),
            ordinal: r.position.map(|p| p.ordinal as i64),
            first: r.first,
            last_ts: r.last_timestamp,
        })
        .collect();
    let params: Vec<[&(dyn ToSql + Sync); 8]> = rows
        .iter()
        .map(|r| {
            [
                &pipeline as &(dyn ToSql + Sync),
                &r.topic,
                &r.partition,
                &r.next,
                &r.commit_lsn,
                &r.ordinal,
                &r.first,
                &r.last_ts,
            ]
        })
        .collect();
    // One statement per partition, in the map's (sorted) order, so that
    // two workers take the row locks in the same order; sent together
    // (tokio-postgres pipelines futures polled together) rather than one
    // round trip each: a worker of 3 tables with 2 partitions each made 6
    // round trips (and 6 parses) before every batch. Should one fail, the
    // later ones fail with it and the transaction is rolled back.
    let results = join_all(params.iter().map(|p| tx.query_opt(&stmt, p))).await;
    for (r, result) in rows.iter().zip(results) {
        let applied = result.map_err(|e| pg_err("write ferry_bus_offsets", e))?;
        if applied.is_none() {
            return Err(PipelineError::fatal(
                Stage::Sink,
                format!(
                    "offsets {}..{} of {}[{}] were already applied (another worker, or an earlier attempt)",
                    r.first, r.next, r.topic, r.partition
                ),
            )
            .with_code(STALE_OFFSETS));
        }
    }
    Ok(())
}

/// A Kafka worker's stored progress for `partitions`.
pub async fn load_bus_offsets(
    client: &impl GenericClient,
    pipeline: &str,
    partitions: &[(String, i32)],
) -> Result<HashMap<(String, i32), PartitionProgress>, PipelineError> {
    let topics: Vec<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
    let parts: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
    let rows = client
        .query(
            "SELECT o.topic, o.partition, o.next_offset, (o.commit_lsn - '0/0'::pg_lsn)::text, o.ordinal,
                    o.last_record_ts
               FROM public.ferry_bus_offsets o
               JOIN unnest($2::text[], $3::int[]) AS w(topic, partition)
                 ON w.topic = o.topic AND w.partition = o.partition
              WHERE o.pipeline = $1",
            &[&pipeline, &topics, &parts],
        )
        .await
        .map_err(|e| pg_err("read ferry_bus_offsets", e))?;
    let mut out = HashMap::new();
    for r in rows {
        let lsn: Option<String> = r.get(3);
        let ordinal: Option<i64> = r.get(4);
        let position = match (lsn.and_then(|l| l.parse::<u64>().ok()), ordinal) {
            (Some(commit_lsn), Some(o)) if commit_lsn != 0 => Some(Position {
                commit_lsn,
                ordinal: o as u64,
            }),
            _ => None,
        };
        out.insert(
            (r.get::<_, String>(0), r.get::<_, i32>(1)),
            PartitionProgress {
                next_offset: r.get(2),
                position,
                last_timestamp: r.get(5),
            },
        );
    }
    Ok(out)
}

/// Forgets a table's snapshot (it is being copied again).
pub async fn clear_snapshot(
    tx: &Transaction<'_>,
    pipeline: &str,
    table: &TableId,
) -> Result<(), PipelineError> {
    tx.execute(
        "DELETE FROM public.ferry_snapshot WHERE pipeline = $1 AND table_schema = $2 AND table_name = $3",
        &[&pipeline, &table.schema, &table.name],
    )
    .await
    .map_err(|e| pg_err("clear ferry_snapshot", e))?;
    Ok(())
}

/// Records a completed snapshot (inside the batch's transaction).
pub async fn save_snapshot(
    tx: &Transaction<'_>,
    pipeline: &str,
    table: &TableId,
    rows: u64,
    state: &serde_json::Value,
) -> Result<(), PipelineError> {
    tx.execute(
        "INSERT INTO public.ferry_snapshot (pipeline, table_schema, table_name, rows, state)
         VALUES ($1, $2, $3, $4, $5::text::jsonb)
         ON CONFLICT (pipeline, table_schema, table_name) DO UPDATE
            SET rows = EXCLUDED.rows, state = EXCLUDED.state, completed_at = now()",
        &[
            &pipeline,
            &table.schema,
            &table.name,
            &(rows as i64),
            &state.to_string(),
        ],
    )
    .await
    .map_err(|e| pg_err("write ferry_snapshot", e))?;
    Ok(())
}

/// What [`reset_bus`] removed.
#[derive(Debug, Clone, Copy, Default)]
pub struct BusReset {
    pub offsets: u64,
    pub barriers: u64,
    pub snapshots: u64,
}

/// Forgets a pipeline's Kafka-bus progress in the target, in one
/// transaction: its partitions' offsets, its barriers and its recorded
/// snapshots (`ferry kafka reset`). Refused while a worker wrote progress
/// in the last 30 s (it is still running, and would write again), unless
/// `force`.
pub async fn reset_bus(
    client: &mut Client,
    pipeline: &str,
    force: bool,
) -> Result<BusReset, PipelineError> {
    let tx = client.transaction().await.map_err(|e| pg_err("begin", e))?;
    let recent: i64 = tx
        .query_one(
            "SELECT count(*) FROM public.ferry_bus_offsets
              WHERE pipeline = $1 AND updated_at > now() - interval '30 seconds'",
            &[&pipeline],
        )
        .await
        .map_err(|e| pg_err("read ferry_bus_offsets", e))?
        .get(0);
    if recent > 0 && !force {
        return Err(PipelineError::fatal(
            Stage::Sink,
            format!("{recent} partition(s) of pipeline {pipeline} had progress written in the last 30 s: stop its workers first (or --force)"),
        ));
    }
    let mut out = BusReset::default();
    for (table, n) in [
        ("ferry_bus_offsets", &mut out.offsets),
        ("ferry_barriers", &mut out.barriers),
        ("ferry_snapshot", &mut out.snapshots),
    ] {
        *n = tx
            .execute(
                &format!("DELETE FROM public.{table} WHERE pipeline = $1"),
                &[&pipeline],
            )
            .await
            .map_err(|e| pg_err(&format!("clear {table}"), e))?;
    }
    tx.commit().await.map_err(|e| pg_err("commit", e))?;
    Ok(out)
}
