//! Cross-partition barriers of the Kafka bus, kept in the target
//! (`ferry_barriers`): which partitions reached each barrier, and whether
//! its action is applied.
//!
//! An arrival is written in the same transaction as the rows the partition
//! had before its copy (and the offsets of the batch, whose row locks come
//! first). The arrival that completes the set applies the barrier's action
//! in that transaction and marks the barrier done: the action runs once,
//! whatever crashes or rebalances happen around it (a transaction that does
//! not commit leaves no arrival, and the partition reaches its copy again).
//! Two last arrivals at once are serialised by the barrier's row lock
//! (`INSERT … ON CONFLICT DO UPDATE` re-reads the committed row under READ
//! COMMITTED), so exactly one of them sees the set complete.

use std::collections::HashSet;

use ferry_pipeline::batch::Arrival;
use ferry_pipeline::error::PipelineError;
use ferry_pipeline::event::BarrierKind;
use tokio_postgres::{GenericClient, Transaction};

use crate::error::pg_err;

/// The table, created with the other bookkeeping tables.
pub(crate) const INSTALL: &str = "CREATE TABLE IF NOT EXISTS public.ferry_barriers (
         pipeline   text      NOT NULL,
         topic      text      NOT NULL,
         barrier    text      NOT NULL,
         kind       text      NOT NULL,
         seq        bigint    NOT NULL,
         expected   integer[] NOT NULL,
         arrived    integer[] NOT NULL DEFAULT '{}',
         created_at timestamptz NOT NULL DEFAULT now(),
         done_at    timestamptz,
         PRIMARY KEY (pipeline, topic, barrier)
     );";

/// Records `a`'s arrival; `true` when the caller must now apply its
/// action (this arrival completed the barrier, or, for a snapshot start,
/// an earlier attempt that will never reach every partition: see below).
///
/// Snapshot attempts: a source killed while sending a snapshot start's
/// copies leaves some partitions without one, and its next attempt sends a
/// new barrier. A partition that reaches a later attempt has nothing of
/// the earlier one after it (its log is a prefix of what was sent), so it
/// counts as arrived at every earlier attempt of the topic still pending.
/// Their action is the same (empty the table), applied once here.
pub(crate) async fn arrive(
    tx: &Transaction<'_>,
    pipeline: &str,
    a: &Arrival,
) -> Result<bool, PipelineError> {
    let mut apply = false;
    let topic: &str = &a.topic;
    if a.local {
        return complete_local(tx, pipeline, a).await.map(|()| false);
    }
    if a.kind == BarrierKind::SnapshotStart {
        let done = tx
            .query(
                "WITH joined AS (
                     UPDATE public.ferry_barriers
                        SET arrived = array_append(arrived, $3)
                      WHERE pipeline = $1 AND topic = $2 AND kind = 's' AND seq < $4
                        AND done_at IS NULL AND NOT ($3 = ANY(arrived))
                  RETURNING barrier, arrived, expected)
                 UPDATE public.ferry_barriers b SET done_at = now()
                   FROM joined j
                  WHERE b.pipeline = $1 AND b.topic = $2 AND b.barrier = j.barrier
                    AND j.arrived @> j.expected
              RETURNING b.barrier",
                &[&pipeline, &topic, &a.partition, &a.seq],
            )
            .await
            .map_err(|e| pg_err("arrive at earlier snapshot barriers", e))?;
        if !done.is_empty() {
            tracing::info!(%topic, superseded = done.len(), "earlier snapshot attempts completed by a later one");
            apply = true;
        }
    }
    let kind = a.kind.tag().to_string();
    let row = tx
        .query_one(
            "INSERT INTO public.ferry_barriers AS b
                    (pipeline, topic, barrier, kind, seq, expected, arrived)
             VALUES ($1, $2, $3, $4, $5, $6, ARRAY[$7::int])
             ON CONFLICT (pipeline, topic, barrier) DO UPDATE
                SET arrived = CASE WHEN $7 = ANY(b.arrived) THEN b.arrived
                                   ELSE array_append(b.arrived, $7) END
             RETURNING b.done_at IS NULL AND b.arrived @> b.expected",
            &[
                &pipeline,
                &topic,
                &a.id,
                &kind,
                &a.seq,
                &a.partitions,
                &a.partition,
            ],
        )
        .await
        .map_err(|e| pg_err("write ferry_barriers", e))?;
    if row.get::<_, bool>(0) {
        tx.execute(
            "UPDATE public.ferry_barriers SET done_at = now()
              WHERE pipeline = $1 AND topic = $2 AND barrier = $3",
            &[&pipeline, &topic, &a.id],
        )
        .await
        .map_err(|e| pg_err("complete a barrier", e))?;
        // Done barriers answer copies read again by a new owner; a week
        // covers any rebalance or restart.
        tx.execute(
            "DELETE FROM public.ferry_barriers
              WHERE pipeline = $1 AND done_at < now() - interval '7 days'",
            &[&pipeline],
        )
        .await
        .map_err(|e| pg_err("forget old barriers", e))?;
        tracing::debug!(%topic, barrier = %a.id, "barrier complete; applying its action");
        apply = true;
    }
    Ok(apply)
}

/// A barrier whose every copy this batch consumes, its event folded into
/// the batch by the one worker that read them all: recorded done (a copy
/// read again later passes). Done already means another worker applied it:
/// this batch is stale (the worker rejoins and nothing of it is written).
async fn complete_local(
    tx: &Transaction<'_>,
    pipeline: &str,
    a: &Arrival,
) -> Result<(), PipelineError> {
    let topic: &str = &a.topic;
    let kind = a.kind.tag().to_string();
    let fresh = tx
        .query_opt(
            "INSERT INTO public.ferry_barriers AS b
                    (pipeline, topic, barrier, kind, seq, expected, arrived, done_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6, now())
             ON CONFLICT (pipeline, topic, barrier) DO UPDATE
                SET arrived = b.expected, done_at = now()
              WHERE b.done_at IS NULL
             RETURNING 1",
            &[&pipeline, &topic, &a.id, &kind, &a.seq, &a.partitions],
        )
        .await
        .map_err(|e| pg_err("write ferry_barriers", e))?;
    if fresh.is_none() {
        return Err(PipelineError::fatal(
            ferry_pipeline::error::Stage::Sink,
            format!(
                "barrier {} of {topic} was applied by another worker meanwhile",
                a.id
            ),
        )
        .with_code(ferry_pipeline::checkpoint::STALE_OFFSETS));
    }
    Ok(())
}

/// Which of `barriers` (`(topic, id)`) are done.
pub(crate) async fn done(
    client: &impl GenericClient,
    pipeline: &str,
    barriers: &[(String, String)],
) -> Result<HashSet<(String, String)>, PipelineError> {
    let topics: Vec<&str> = barriers.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<&str> = barriers.iter().map(|(_, b)| b.as_str()).collect();
    let rows = client
        .query(
            "SELECT b.topic, b.barrier
               FROM public.ferry_barriers b
               JOIN unnest($2::text[], $3::text[]) AS w(topic, barrier)
                 ON w.topic = b.topic AND w.barrier = b.barrier
              WHERE b.pipeline = $1 AND b.done_at IS NOT NULL",
            &[&pipeline, &topics, &ids],
        )
        .await
        .map_err(|e| pg_err("read ferry_barriers", e))?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}
