//! The Convex source: the deployment's streaming export, with a gap-free
//! snapshot handoff and a durable cursor.
//!
//! Handoff: every table is copied with `list_snapshot` at one snapshot
//! timestamp `S` (the first page's, kept for the others and stored with
//! each completed table), then `document_deltas` is followed from `S`
//! (exclusive): every commit after the copy, none before it. A page of
//! deltas holds whole timestamps; per document only its newest version in
//! the page is sent (the highest `_ts`), so no document moves back.
//!
//! Resume: the changes of a page carry no position; after the page the
//! page's cursor travels as a `Resume` message, which the sink stores with
//! the data before it (target checkpoint, or the Kafka checkpoint topic).
//! A crash inside a page therefore replays the whole page (the sink's
//! upserts absorb the overlap) and never skips its other half. Each
//! change also carries its position (commit timestamp, place in it), so
//! the runtime skips the part of a replayed page already applied, on both
//! buses: no document moves back to an older version. A cursor
//! older than the deployment's retention stops the pipeline with a
//! message, or copies everything again when
//! `source.on_expired_cursor = "resnapshot"`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_pipeline::channel::BusSender;
use ferry_pipeline::config::{ConvexSourceConfig, HistoryLost, SnapshotMode};
use ferry_pipeline::error::{retry_backoff, Disposition, ErrorClass, PipelineError, Stage};
use ferry_pipeline::event::{BusMessage, ChangeEvent, Op, Position, TableSchema};
use ferry_pipeline::metrics::metrics;
use ferry_pipeline::runtime::wait_retry;
use ferry_pipeline::source::{Source, SourceContext};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::client::{Client, DeltasPage, EXPIRED};
use crate::document::{dedupe, key_row, parse, table_schema, Change};
use crate::value::DecodeError;

/// The first wait of an idle poll; it doubles up to `poll_max_ms`.
const POLL_MIN: Duration = Duration::from_millis(20);
/// How often an advancing cursor is stored while no mirrored table changes
/// (keeps it inside the retention window).
const IDLE_RESUME: Duration = Duration::from_secs(1);

/// What a completed table copy records: the snapshot it was read at.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotState {
    snapshot: i64,
}

/// The Convex source.
pub struct ConvexSource {
    cfg: ConvexSourceConfig,
    max_retry_delay: Duration,
}

/// What survives a reconnect.
#[derive(Default)]
struct Progress {
    /// Where `document_deltas` continues: the last cursor received (not
    /// only applied), so that a retry does not send a page twice.
    cursor: Option<i64>,
    /// The snapshot timestamp of the copy (in progress or complete).
    snapshot: Option<i64>,
    /// Tables whose copy is complete.
    copied: HashSet<String>,
    /// Copy everything again (the cursor expired).
    force_snapshot: bool,
    schemas: HashMap<String, Arc<TableSchema>>,
}

impl ConvexSource {
    /// `cfg` must have passed `Config::validate`.
    pub fn new(cfg: ConvexSourceConfig, max_retry_delay: Duration) -> Self {
        Self {
            cfg,
            max_retry_delay,
        }
    }

    fn schema(&self, progress: &mut Progress, table: &str) -> Arc<TableSchema> {
        let name = self.cfg.schema_name();
        Arc::clone(
            progress
                .schemas
                .entry(table.to_string())
                .or_insert_with(|| table_schema(&name, table)),
        )
    }

    fn mirrors(&self, c: &Change) -> bool {
        c.component == self.cfg.component
            && !c.table.starts_with('_')
            && (self.cfg.tables.is_empty() || self.cfg.tables.contains(&c.table))
    }

    async fn session(
        &self,
        ctx: &mut SourceContext,
        progress: &mut Progress,
    ) -> Result<(), PipelineError> {
        let client = Client::new(&self.cfg.url, self.cfg.deploy_key.clone())?;
        if progress.force_snapshot {
            progress.copied.clear();
            progress.cursor = None;
            progress.snapshot = None;
        }
        if progress.cursor.is_none() {
            if self.cfg.snapshot == SnapshotMode::Initial {
                let tables = if self.cfg.tables.is_empty() {
                    client.tables(&self.cfg.component).await?
                } else {
                    self.cfg.tables.clone()
                };
                let to_copy: Vec<String> = tables
                    .into_iter()
                    .filter(|t| !progress.copied.contains(t))
                    .collect();
                if !to_copy.is_empty() {
                    info!(tables = to_copy.len(), "initial snapshot starting");
                }
                for t in to_copy {
                    self.copy_table(&client, &t, progress, &ctx.bus).await?;
                    progress.copied.insert(t);
                }
            }
            let start = match progress.snapshot {
                Some(s) => s,
                // Nothing to copy: the changes from now on.
                None => {
                    client
                        .list_snapshot(&self.cfg.component, None, None, None)
                        .await?
                        .snapshot
                }
            };
            progress.snapshot = Some(start);
            progress.cursor = Some(start);
            progress.force_snapshot = false;
            ctx.bus
                .send(BusMessage::Resume {
                    resume_token: Arc::from(start.to_string()),
                })
                .await?;
        }
        self.follow(ctx, &client, progress).await
    }

    /// Copies one table at the copy's snapshot timestamp.
    async fn copy_table(
        &self,
        client: &Client,
        table: &str,
        progress: &mut Progress,
        bus: &BusSender,
    ) -> Result<(), PipelineError> {
        let schema = self.schema(progress, table);
        let label = schema.id.to_string();
        let counter = metrics().snapshot_rows.with_label_values(&[&label]);
        bus.send(BusMessage::SnapshotStart {
            table: Arc::clone(&schema),
        })
        .await?;
        let mut rows = 0u64;
        let mut last_report = Instant::now();
        let component = self.cfg.component.clone();
        let fetch = |snapshot: Option<i64>, cursor: Option<String>| {
            let (client, component, table) = (client.clone(), component.clone(), table.to_string());
            tokio::spawn(async move {
                client
                    .list_snapshot(&component, Some(&table), snapshot, cursor.as_deref())
                    .await
            })
        };
        let mut next = fetch(progress.snapshot, None);
        loop {
            let page = next.await.map_err(join_err)??;
            // The next page is read while this one is decoded and sent.
            next = fetch(Some(page.snapshot), page.cursor.clone());
            if !page.has_more {
                next.abort();
            }
            let snapshot = *progress.snapshot.get_or_insert(page.snapshot);
            for v in &page.values {
                let c = parse(v).map_err(|e| decode_err(table, &e))?;
                if c.table != table {
                    continue;
                }
                let Some(row) = c.row else { continue };
                let mut ev = ChangeEvent::snapshot_read(Arc::clone(&schema), row);
                ev.commit_ts_micros = c.ts / 1000;
                bus.send(BusMessage::Change(ev)).await?;
                rows += 1;
                counter.inc();
            }
            if last_report.elapsed() > Duration::from_secs(2) {
                info!(table = %table, rows, snapshot, "snapshot progress");
                last_report = Instant::now();
            }
            if !page.has_more {
                break;
            }
        }
        info!(table = %table, rows, "snapshot of table copied");
        bus.send(BusMessage::SnapshotDone {
            table: schema.id.clone(),
            rows,
            state: serde_json::to_value(SnapshotState {
                snapshot: progress.snapshot.unwrap_or_default(),
            })
            .expect("serializable"),
        })
        .await?;
        Ok(())
    }

    /// Follows `document_deltas` from the progress cursor until asked to
    /// stop; polls back off while the log is idle.
    async fn follow(
        &self,
        ctx: &mut SourceContext,
        client: &Client,
        progress: &mut Progress,
    ) -> Result<(), PipelineError> {
        let mut cursor = progress.cursor.expect("set before following");
        info!(cursor, "following the change log");
        let mut delay = POLL_MIN;
        let max_delay = Duration::from_millis(self.cfg.poll_max_ms).max(POLL_MIN);
        let mut stored = cursor;
        let mut stored_at = Instant::now();
        let fetch = |cursor: i64| {
            let (client, component) = (client.clone(), self.cfg.component.clone());
            tokio::spawn(async move {
                client
                    .document_deltas(&component, cursor)
                    .await
                    .map_err(|e| expired_context(e, cursor))
            })
        };
        let mut prefetched: Option<tokio::task::JoinHandle<Result<DeltasPage, PipelineError>>> =
            None;
        loop {
            if *ctx.shutdown.borrow() {
                return Ok(());
            }
            let page = match prefetched.take() {
                Some(h) => h.await.map_err(join_err)??,
                None => fetch(cursor).await.map_err(join_err)??,
            };
            if page.has_more {
                // The next page is read while this one is sent.
                prefetched = Some(fetch(page.cursor.max(cursor)));
            }
            let mut changes = Vec::with_capacity(page.values.len());
            let (mut group_ts, mut place) = (i64::MIN, 0u64);
            for v in &page.values {
                let mut c = parse(v).map_err(|e| decode_err("document_deltas", &e))?;
                // Counted before filtering and deduplicating: the place of
                // a value must not depend on what else the page held.
                if c.ts != group_ts {
                    (group_ts, place) = (c.ts, 0);
                }
                place += 1;
                c.ordinal = place;
                if self.mirrors(&c) {
                    changes.push(c);
                }
            }
            let emitted = !changes.is_empty();
            for c in dedupe(changes) {
                let schema = self.schema(progress, &c.table);
                let position = position(&c);
                let (op, before, after) = if c.deleted {
                    (Op::Delete, Some(key_row(&c.id)), None)
                } else {
                    // Convex does not say insert or update; the sinks
                    // upsert either way.
                    (Op::Update, None, c.row)
                };
                ctx.bus
                    .send(BusMessage::Change(ChangeEvent {
                        table: schema,
                        op,
                        before,
                        after,
                        position,
                        xid: None,
                        commit_ts_micros: c.ts / 1000,
                        resume_token: None,
                    }))
                    .await?;
            }
            cursor = page.cursor.max(cursor);
            progress.cursor = Some(cursor);
            if cursor != stored && (emitted || stored_at.elapsed() >= IDLE_RESUME) {
                ctx.bus
                    .send(BusMessage::Resume {
                        resume_token: Arc::from(cursor.to_string()),
                    })
                    .await?;
                stored = cursor;
                stored_at = Instant::now();
            }
            if page.has_more {
                delay = POLL_MIN;
                continue;
            }
            delay = if emitted {
                POLL_MIN
            } else {
                (delay * 2).min(max_delay)
            };
            tokio::select! {
                _ = ctx.shutdown.wait_for(|s| *s) => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

impl Source for ConvexSource {
    async fn run(self, mut ctx: SourceContext) -> Result<(), PipelineError> {
        let mut progress = Progress {
            cursor: ctx
                .checkpoint
                .resume_token
                .as_deref()
                .and_then(|t| t.parse().ok()),
            ..Progress::default()
        };
        let schema = self.cfg.schema_name();
        for (id, rec) in &ctx.checkpoint.snapshots {
            if id.schema == schema {
                progress.copied.insert(id.name.clone());
                if let Ok(s) = serde_json::from_value::<SnapshotState>(rec.state.clone()) {
                    progress.snapshot = Some(s.snapshot);
                }
            }
        }
        let mut backoff = retry_backoff(self.max_retry_delay);
        loop {
            if *ctx.shutdown.borrow() {
                return Ok(());
            }
            let before = progress.cursor;
            let outcome = self.session(&mut ctx, &mut progress).await;
            if progress.cursor != before {
                // It got somewhere: the next failure starts the backoff
                // over rather than waiting the longest delay.
                backoff = retry_backoff(self.max_retry_delay);
            }
            match outcome {
                Ok(()) => return Ok(()),
                Err(e) if e.code.as_deref() == Some(EXPIRED) => match self.cfg.on_expired_cursor {
                    HistoryLost::Fail => {
                        return Err(PipelineError::fatal(
                            Stage::Source,
                            format!(
                                "{}. The changes since the last checkpoint are gone from the \
                                 deployment's change log, so the mirror cannot be kept exact \
                                 from here. Set source.on_expired_cursor = \"resnapshot\" to copy \
                                 every table again, or keep Ferry from stopping longer than the \
                                 deployment's retention (DOCUMENT_RETENTION_DELAY, 14 days by default)",
                                e.message
                            ),
                        ))
                    }
                    HistoryLost::Resnapshot => {
                        warn!(error = %e, "cursor past the deployment's retention; copying every table again");
                        progress.force_snapshot = true;
                    }
                },
                Err(e) if e.disposition() == Disposition::Retry => {
                    warn!(error = %e, "Convex export failed; retrying");
                    if wait_retry(&e, &mut backoff, ctx.shutdown.clone())
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A change's place in the change log: its commit timestamp (ns), then
/// its place in that timestamp. The runtime skips what is at or below the
/// last position applied (the sink's checkpoint, a Kafka partition's
/// progress), so a page sent again after a restart never brings a
/// document back to an older version.
fn position(c: &Change) -> Position {
    Position {
        commit_lsn: u64::try_from(c.ts).unwrap_or_default(),
        ordinal: c.ordinal,
    }
}

/// An expired cursor's error says which cursor.
fn expired_context(e: PipelineError, cursor: i64) -> PipelineError {
    if e.code.as_deref() == Some(EXPIRED) {
        PipelineError::fatal(
            Stage::Source,
            format!(
                "the stored Convex cursor {cursor} is older than the deployment keeps its change log ({})",
                e.message
            ),
        )
        .with_code(EXPIRED)
    } else {
        e
    }
}

/// A request task that did not finish (panicked or cancelled): retried.
fn join_err(e: tokio::task::JoinError) -> PipelineError {
    PipelineError::transient(Stage::Source, format!("export request task: {e}"))
}

fn decode_err(what: &str, e: &DecodeError) -> PipelineError {
    PipelineError::new(
        ErrorClass::Permanent,
        Stage::Decode,
        format!("document in {what}: {e}"),
    )
}
