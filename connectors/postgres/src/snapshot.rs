//! The gap-free initial snapshot.
//!
//! The slot is created first, so the stream holds every transaction that
//! commits after its consistent point. The copy then runs in one exported
//! REPEATABLE READ snapshot, shared by parallel chunk workers (`SET
//! TRANSACTION SNAPSHOT`, chunks by `ctid` page ranges). Together with the
//! rows, the snapshot's visibility [`Horizon`] is stored in the target; the
//! stream skips, per table, exactly the transactions the copy already saw.
//! Nothing is missed (the slot predates the copy) and nothing is applied
//! twice (visible transactions are skipped), so no row ever moves back to an
//! older state. This also makes a pre-existing slot safe to adopt, and a
//! crash mid-snapshot safe to redo with a fresh snapshot: each table records
//! its own horizon.

use std::sync::Arc;

use ferry_pipeline::channel::BusSender;
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{quote_ident, BusMessage, ChangeEvent, Datum};
use ferry_pipeline::metrics::metrics;
use ferry_pipeline::value::Value;
use futures_util::{pin_mut, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tracing::info;

use crate::catalog::SourceTable;
use ferry_pgconn::PgConnInfo;

use crate::connect::{connect_to, pg_err};
use crate::text::{decode_value, split_copy_text_row};

/// Which transactions a snapshot saw: PostgreSQL's `pg_current_snapshot()`
/// plus the WAL position read right after it was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Horizon {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
    /// `pg_current_wal_insert_lsn()` read after the snapshot was taken (the
    /// insert position, not the write position: with `synchronous_commit =
    /// off` a visible commit may not be written yet): a
    /// transaction the snapshot saw committed before it, so one whose commit
    /// is later is never visible. This also bounds the check in time (no
    /// xid wraparound concern over a weeks-long soak).
    pub lsn: u64,
}

impl Horizon {
    /// Parses `xmin:xmax:xip,xip` (the text of `pg_snapshot`).
    pub fn parse(snapshot: &str, lsn: u64) -> Option<Self> {
        let mut parts = snapshot.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            s => s
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        Some(Self {
            xmin,
            xmax,
            xip,
            lsn,
        })
    }

    /// Whether the transaction `xid` (32-bit, as pgoutput sends it) that
    /// committed at `commit_lsn` is already in the copy.
    pub fn saw(&self, xid: u32, commit_lsn: u64) -> bool {
        if commit_lsn > self.lsn {
            return false;
        }
        let full = widen(xid, self.xmax);
        full < self.xmin || (full < self.xmax && !self.xip.contains(&full))
    }
}

/// The 64-bit xid nearest to `reference` whose low 32 bits are `xid`.
fn widen(xid: u32, reference: u64) -> u64 {
    let epoch = reference >> 32;
    let candidate = (epoch << 32) | u64::from(xid);
    if candidate > reference.saturating_add(1 << 31) && epoch > 0 {
        candidate - (1 << 32)
    } else if candidate.saturating_add(1 << 31) < reference {
        candidate + (1 << 32)
    } else {
        candidate
    }
}

/// Percent of a table copied, from rows copied and an estimate of its rows:
/// at most 99 while the copy runs (the estimate is `reltuples`, which can
/// be stale or absent), 100 only once the copy is done.
fn progress_percent(rows: u64, estimate: u64) -> u64 {
    (rows.saturating_mul(100))
        .checked_div(estimate)
        .unwrap_or(0)
        .min(99)
}

/// Settings that make every value's text exact and stable.
pub const SESSION_SETTINGS: &str = "SET DateStyle = ISO; SET TimeZone = 'UTC'; \
     SET IntervalStyle = postgres; SET extra_float_digits = 1; SET bytea_output = hex";

/// Copies `tables` into the bus, one exported snapshot for all of them.
/// Returns each table's row count and the horizon to store.
pub async fn copy_tables(
    conn: &PgConnInfo,
    tables: &[SourceTable],
    bus: &BusSender,
    parallelism: usize,
    chunk_pages: u32,
) -> Result<Vec<(u64, Horizon)>, PipelineError> {
    let coordinator = connect_to(conn).await?;
    coordinator
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| pg_err(Stage::Snapshot, "begin snapshot", e))?;
    let row = coordinator
        .query_one(
            "SELECT pg_export_snapshot(), pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await
        .map_err(|e| pg_err(Stage::Snapshot, "export snapshot", e))?;
    let snapshot_id: String = row.get(0);
    let lsn = ferry_pipeline::event::parse_lsn(&row.get::<_, String>(2)).unwrap_or(u64::MAX);
    let horizon = Horizon::parse(&row.get::<_, String>(1), lsn)
        .ok_or_else(|| PipelineError::fatal(Stage::Snapshot, "unreadable pg_current_snapshot()"))?;
    info!(snapshot = %snapshot_id, tables = tables.len(), "snapshot exported");

    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let name = t.schema.id.to_string();
        metrics()
            .snapshot_estimate
            .with_label_values(&[&name])
            .set(t.estimated_rows.max(0));
        bus.send(BusMessage::SnapshotStart {
            table: Arc::clone(&t.schema),
        })
        .await?;
        // Page ranges; the last one is open-ended because relpages is only
        // an estimate.
        let pages = t.pages.max(0) as u64;
        let chunk = u64::from(chunk_pages);
        let mut ranges: Vec<(u64, Option<u64>)> = Vec::new();
        let mut start = 0;
        while start + chunk < pages {
            ranges.push((start, Some(start + chunk)));
            start += chunk;
        }
        ranges.push((start, None));
        let copied = std::sync::atomic::AtomicU64::new(0);
        let chunks: Vec<_> = ranges
            .into_iter()
            .map(|(from, to)| copy_chunk(conn, &snapshot_id, t, from, to, bus, &copied))
            .collect();
        let work = futures_util::stream::iter(chunks)
            .buffer_unordered(parallelism.max(1))
            .collect::<Vec<_>>();
        tokio::pin!(work);
        // Progress on the terminal (the same figures are in metrics).
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        tick.tick().await;
        let estimate = t.estimated_rows.max(0) as u64;
        let results = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = tick.tick() => {
                    let rows = copied.load(std::sync::atomic::Ordering::Relaxed);
                    let estimate = estimate.max(rows);
                    // A stale reltuples must not read as done: the gauge
                    // follows what was copied, never below it.
                    metrics()
                        .snapshot_estimate
                        .with_label_values(&[&name])
                        .set(i64::try_from(estimate).unwrap_or(i64::MAX));
                    let percent = progress_percent(rows, estimate);
                    info!(table = %name, rows, estimate, percent, "snapshot progress");
                }
            }
        };
        for r in results {
            r?;
        }
        let rows = copied.load(std::sync::atomic::Ordering::Relaxed);
        info!(table = %name, rows, "snapshot of table copied");
        bus.send(BusMessage::SnapshotDone {
            table: t.schema.id.clone(),
            rows,
            state: serde_json::to_value(&horizon).expect("serializable"),
        })
        .await?;
        out.push((rows, horizon.clone()));
    }
    coordinator
        .batch_execute("COMMIT")
        .await
        .map_err(|e| pg_err(Stage::Snapshot, "end snapshot", e))?;
    Ok(out)
}

async fn copy_chunk(
    conn: &PgConnInfo,
    snapshot_id: &str,
    t: &SourceTable,
    from_page: u64,
    to_page: Option<u64>,
    bus: &BusSender,
    copied: &std::sync::atomic::AtomicU64,
) -> Result<(), PipelineError> {
    let client: Client = connect_to(conn).await?;
    client
        .batch_execute(&format!(
            "{SESSION_SETTINGS}; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET TRANSACTION SNAPSHOT '{}'",
            snapshot_id.replace('\'', "''")
        ))
        .await
        .map_err(|e| pg_err(Stage::Snapshot, "join exported snapshot", e))?;
    let cols: Vec<String> = t
        .schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let mut filter = format!("ctid >= '({from_page},0)'::tid");
    if let Some(to) = to_page {
        filter.push_str(&format!(" AND ctid < '({to},0)'::tid"));
    }
    let sql = format!(
        "COPY (SELECT {} FROM {} WHERE {filter}) TO STDOUT",
        cols.join(", "),
        t.schema.id.quoted()
    );
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(|e| pg_err(Stage::Snapshot, &format!("copy {}", t.schema.id), e))?;
    pin_mut!(stream);
    let name = t.schema.id.to_string();
    let counter = metrics().snapshot_rows.with_label_values(&[&name]);
    // COPY data arrives in arbitrary-sized chunks: reassemble lines.
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| pg_err(Stage::Snapshot, &format!("copy {}", t.schema.id), e))?;
        pending.extend_from_slice(&chunk);
        let mut consumed = 0;
        while let Some(nl) = pending[consumed..].iter().position(|&b| b == b'\n') {
            let line = &pending[consumed..consumed + nl];
            let row = decode_row(t, line)?;
            bus.send(BusMessage::Change(ChangeEvent::snapshot_read(
                Arc::clone(&t.schema),
                row,
            )))
            .await?;
            copied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            counter.inc();
            consumed += nl + 1;
        }
        pending.drain(..consumed);
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| pg_err(Stage::Snapshot, "end chunk", e))?;
    Ok(())
}

/// One `COPY … TO STDOUT` text line of `t` as a row (also `ferry verify`'s
/// reader of mapped tables, so both read the source the same way).
pub fn decode_row(t: &SourceTable, line: &[u8]) -> Result<Vec<Datum>, PipelineError> {
    let fields = split_copy_text_row(line).map_err(|e| {
        PipelineError::new(
            ferry_pipeline::error::ErrorClass::Permanent,
            Stage::Decode,
            format!("COPY row of {}: {e}", t.schema.id),
        )
    })?;
    if fields.len() != t.types.len() {
        return Err(PipelineError::fatal(
            Stage::Decode,
            format!(
                "COPY row of {} has {} fields, expected {}",
                t.schema.id,
                fields.len(),
                t.types.len()
            ),
        ));
    }
    fields
        .into_iter()
        .zip(&t.types)
        .map(|(f, ty)| match f {
            None => Ok(Datum::Value(Value::Null)),
            Some(s) => decode_value(ty, &s).map(Datum::Value).map_err(|e| {
                PipelineError::new(
                    ferry_pipeline::error::ErrorClass::Permanent,
                    Stage::Decode,
                    format!("value of {}: {e}", t.schema.id),
                )
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn progress_never_claims_done_while_copying() {
        use super::progress_percent;
        assert_eq!(progress_percent(0, 0), 0);
        assert_eq!(progress_percent(50, 100), 50);
        // reltuples stale (or -1 → 0): more rows than the estimate.
        assert_eq!(progress_percent(500, 100), 99);
        assert_eq!(progress_percent(100, 100), 99);
        assert_eq!(progress_percent(u64::MAX, 1), 99);
    }

    use super::*;

    #[test]
    fn horizon_visibility() {
        let h = Horizon::parse("100:110:102,105", 5000).unwrap();
        assert!(h.saw(99, 10));
        assert!(h.saw(101, 10));
        assert!(!h.saw(102, 10));
        assert!(!h.saw(105, 10));
        assert!(h.saw(109, 10));
        assert!(!h.saw(110, 10));
        assert!(!h.saw(200, 10));
        // committed after the snapshot's WAL position: never seen
        assert!(!h.saw(101, 5001));
        assert_eq!(Horizon::parse("7:7:", 1).unwrap().xip, Vec::<u64>::new());
    }

    #[test]
    fn widen_across_epochs() {
        let reference = (3u64 << 32) | 10;
        assert_eq!(widen(5, reference), (3 << 32) | 5);
        assert_eq!(
            widen(u32::MAX - 5, reference),
            (2 << 32) | u64::from(u32::MAX - 5)
        );
        assert_eq!(widen(5, 20), 5);
    }
}
