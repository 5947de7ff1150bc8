//! The PostgreSQL source: prepares publication and slot, copies what needs
//! copying (the gap-free snapshot), then streams the slot, reconnecting with
//! backoff after transient errors; a heartbeat keeps an idle slot moving.

use std::collections::HashMap;
use std::time::Duration;

use ferry_pipeline::config::{PostgresSourceConfig, SnapshotMode};
use ferry_pipeline::error::{retry_backoff, Disposition, PipelineError, Stage};
use ferry_pipeline::event::TableId;
use ferry_pipeline::runtime::{wait_retry, AbortOnDrop};
use ferry_pipeline::source::{Source, SourceContext};
use tokio_postgres::Client;
use tracing::{info, warn};

use ferry_pgconn::PgConnInfo;

use crate::config::{replication_config, source_conn};
use crate::connect::{connect_to, pg_err};
use crate::snapshot::{self, Horizon};
use crate::{catalog, slot, stream};

/// SQLSTATE object_in_use: "replication slot … is active for PID …".
const SLOT_IN_USE: &str = "55006";

/// The PostgreSQL source.
pub struct PostgresSource {
    cfg: PostgresSourceConfig,
    tables: Vec<TableId>,
    max_retry_delay: Duration,
}

impl PostgresSource {
    /// `cfg` must have passed `Config::validate`.
    pub fn new(cfg: PostgresSourceConfig, max_retry_delay: Duration) -> Self {
        let tables = cfg
            .tables
            .iter()
            .filter_map(|t| TableId::parse(t))
            .collect();
        Self {
            cfg,
            tables,
            max_retry_delay,
        }
    }

    /// Prepares publication and slot, copies what needs copying, and returns
    /// the per-table horizons for the stream.
    async fn prepare(
        &self,
        ctx: &SourceContext,
        client: &Client,
        conn: &PgConnInfo,
    ) -> Result<
        (
            HashMap<TableId, catalog::SourceTable>,
            HashMap<TableId, Horizon>,
        ),
        PipelineError,
    > {
        let level: String = client
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(|e| pg_err(Stage::Source, "read wal_level", e))?
            .get(0);
        if level != "logical" {
            // Before creating anything: the publication and slot would be
            // of no use.
            return Err(PipelineError::fatal(
                Stage::Source,
                format!(
                    "the source has wal_level = {level}; set wal_level = logical and restart it"
                ),
            ));
        }
        // Proven before a publication or slot exists: a replication session
        // that cannot open (its own pg_hba.conf line, MD5, TLS rules) must
        // not leave a slot behind that holds WAL on the source.
        stream::probe(replication_config(&self.cfg, 0)?).await?;
        let described = catalog::describe_all(client, &self.tables).await?;
        let publication_is_new = slot::publication_tables(client, &self.cfg.publication)
            .await?
            .is_none();
        let partitioned: Vec<TableId> = described
            .iter()
            .filter(|t| t.partitioned)
            .map(|t| t.schema.id.clone())
            .collect();
        slot::ensure_publication(
            client,
            &self.cfg.publication,
            &self.tables,
            &partitioned,
            self.cfg.create_publication,
        )
        .await?;
        let database = conn.database().unwrap_or_default();
        let has_progress =
            ctx.checkpoint.position.is_some() || !ctx.checkpoint.snapshots.is_empty();
        match slot::slot_info(client, &self.cfg.slot).await? {
            Some(info) => {
                if let Some(why) = slot::slot_refusal(&self.cfg.slot, &info, &database) {
                    return Err(PipelineError::fatal(Stage::Source, why));
                }
                // A slot made before its publication cannot be streamed:
                // pgoutput looks the publication up as of each decoded
                // transaction and fails with "publication does not exist"
                // on every change made in between (found by the e2e test
                // tests/snapshot.rs, pre-existing slot). Nothing is copied
                // yet and the initial snapshot copies every table, so
                // recreating the slot after the publication, as on a first
                // start, loses nothing; creating it waits for transactions
                // still open from before the publication.
                if publication_is_new && !has_progress && self.cfg.snapshot == SnapshotMode::Initial
                {
                    warn!(slot = %self.cfg.slot, publication = %self.cfg.publication,
                        "replication slot predates the publication; recreating it before the initial snapshot");
                    slot::drop_slot(client, &self.cfg.slot).await?;
                    let lsn = slot::create_slot(client, &self.cfg.slot).await?;
                    info!(slot = %self.cfg.slot, consistent_point = %ferry_pipeline::event::format_lsn(lsn), "created replication slot");
                }
            }
            None => {
                if has_progress {
                    return Err(PipelineError::fatal(
                        Stage::Source,
                        format!(
                            "replication slot {} is gone but the target holds this pipeline's checkpoint: \
                             changes since then are lost. To copy everything again, delete the pipeline's \
                             rows from ferry_checkpoint and ferry_snapshot in the target",
                            self.cfg.slot
                        ),
                    ));
                }
                let lsn = slot::create_slot(client, &self.cfg.slot).await?;
                info!(slot = %self.cfg.slot, consistent_point = %ferry_pipeline::event::format_lsn(lsn), "created replication slot");
            }
        }
        let mut horizons: HashMap<TableId, Horizon> = HashMap::new();
        for (id, rec) in &ctx.checkpoint.snapshots {
            // Without its horizon the stream could apply transactions the
            // copy already holds: refuse rather than guess.
            let h = serde_json::from_value::<Horizon>(rec.state.clone()).map_err(|e| {
                PipelineError::fatal(
                    Stage::Source,
                    format!("ferry_snapshot holds an unreadable state for {id}: {e}"),
                )
            })?;
            horizons.insert(id.clone(), h);
        }
        if self.cfg.snapshot == SnapshotMode::Initial {
            let todo: Vec<catalog::SourceTable> = described
                .iter()
                .filter(|t| !ctx.checkpoint.snapshots.contains_key(&t.schema.id))
                .cloned()
                .collect();
            if !todo.is_empty() {
                info!(tables = todo.len(), "initial snapshot starting");
                let done = snapshot::copy_tables(
                    conn,
                    &todo,
                    &ctx.bus,
                    self.cfg.snapshot_parallelism,
                    self.cfg.snapshot_chunk_pages,
                )
                .await?;
                for (t, (_, h)) in todo.iter().zip(done) {
                    horizons.insert(t.schema.id.clone(), h);
                }
            }
        }
        let tables = described
            .into_iter()
            .map(|t| (t.schema.id.clone(), t))
            .collect();
        Ok((tables, horizons))
    }
}

impl Source for PostgresSource {
    async fn run(self, mut ctx: SourceContext) -> Result<(), PipelineError> {
        let conn = source_conn(&self.cfg)?;
        let mut backoff = retry_backoff(self.max_retry_delay);
        let mut slot_busy_since: Option<std::time::Instant> = None;
        let mut prepared: Option<(
            HashMap<TableId, catalog::SourceTable>,
            HashMap<TableId, Horizon>,
        )> = None;
        // Stopped with the source, even when the source is aborted.
        let _slot_lag = AbortOnDrop(vec![tokio::spawn(slot_lag(
            conn.clone(),
            self.cfg.slot.clone(),
            ctx.shutdown.clone(),
        ))
        .abort_handle()]);
        let _heartbeat = (self.cfg.heartbeat_secs > 0).then(|| {
            AbortOnDrop(vec![tokio::spawn(heartbeat(
                conn.clone(),
                Duration::from_secs(self.cfg.heartbeat_secs),
                ctx.shutdown.clone(),
            ))
            .abort_handle()])
        });
        loop {
            if *ctx.shutdown.borrow() {
                return Ok(());
            }
            let attempt = async {
                let client = connect_to(&conn).await?;
                if prepared.is_none() {
                    prepared = Some(self.prepare(&ctx, &client, &conn).await?);
                }
                let (tables, horizons) = prepared.as_ref().expect("prepared above");
                let start = slot::slot_info(&client, &self.cfg.slot)
                    .await?
                    .and_then(|s| s.confirmed_flush_lsn)
                    .unwrap_or(0);
                let repl = replication_config(&self.cfg, start)?;
                stream::StreamSession {
                    repl,
                    catalog: &client,
                    tables,
                    horizons,
                    bus: &ctx.bus,
                    acks: &mut ctx.acks,
                    shutdown: &mut ctx.shutdown,
                    skip_origins: &self.cfg.skip_origins,
                }
                .run()
                .await
            }
            .await;
            match attempt {
                Ok(()) => return Ok(()),
                // 55006: the slot is active for another walsender. Briefly
                // normal after a crash (the old session has not noticed its
                // client is gone); for longer than the server's own
                // wal_sender_timeout it is a second Ferry on this slot.
                Err(e) if e.code.as_deref() == Some(SLOT_IN_USE) => {
                    let since = *slot_busy_since.get_or_insert_with(std::time::Instant::now);
                    let grace = slot::in_use_grace(&conn).await;
                    if since.elapsed() > grace {
                        return Err(slot::in_use_error(&conn, &self.cfg.slot).await);
                    }
                    if wait_retry(&e, &mut backoff, ctx.shutdown.clone())
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Err(e) if e.disposition() == Disposition::Retry => {
                    slot_busy_since = None;
                    if wait_retry(&e, &mut backoff, ctx.shutdown.clone())
                        .await
                        .is_err()
                    {
                        // Asked to stop while waiting.
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How often the slot's retained WAL is measured.
const SLOT_LAG_EVERY: Duration = Duration::from_secs(2);

/// Measures the WAL the slot retains (the server's end minus the slot's
/// confirmed position) on its own session, so that the lag keeps rising
/// while the stream is held up (a target that is down fills the bus and
/// the stream stops reading, keepalives included).
async fn slot_lag(
    conn: PgConnInfo,
    slot: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut client: Option<Client> = None;
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect_to(&conn).await.ok();
        }
        if let Some(c) = &client {
            match c
                .query_opt(
                    "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
            {
                Ok(Some(row)) => {
                    if let Some(bytes) = row.get::<_, Option<i64>>(0) {
                        ferry_pipeline::metrics::metrics()
                            .lag_bytes
                            .set(bytes.max(0));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "slot lag query failed");
                    client = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SLOT_LAG_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Emits a non-transactional logical message now and then, so that a slot
/// whose tables are idle still sees WAL of its own database and its
/// confirmed position advances (Debezium's heartbeat.action.query).
async fn heartbeat(
    conn: PgConnInfo,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut client: Option<Client> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect_to(&conn).await.ok();
        }
        if let Some(c) = &client {
            if let Err(e) = c
                .execute(
                    "SELECT pg_logical_emit_message(false, 'ferry_heartbeat', '')",
                    &[],
                )
                .await
            {
                tracing::debug!(error = %e, "heartbeat failed");
                client = None;
            }
        }
    }
}
