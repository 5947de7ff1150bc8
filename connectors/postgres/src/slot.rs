//! The publication and the logical replication slot: created idempotently,
//! and checked when they already exist (a slot of another plugin or
//! database is refused rather than misused).

use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{parse_lsn, TableId};
use std::time::Duration;

use ferry_pgconn::PgConnInfo;
use tokio_postgres::Client;

use crate::connect::pg_err;

/// A slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub slot_type: String,
    pub database: Option<String>,
    pub active: bool,
    pub confirmed_flush_lsn: Option<u64>,
    pub wal_status: Option<String>,
}

/// Reads a slot; `None` when it does not exist.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, PipelineError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, slot_type, database::text, active,
                    confirmed_flush_lsn::text, wal_status
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| pg_err(Stage::Source, "read pg_replication_slots", e))?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        slot_type: r.get(1),
        database: r.get(2),
        active: r.get(3),
        confirmed_flush_lsn: r.get::<_, Option<String>>(4).and_then(|s| parse_lsn(&s)),
        wal_status: r.get(5),
    }))
}

/// Why an existing slot cannot be used by this pipeline, if it cannot.
pub fn slot_refusal(slot: &str, info: &SlotInfo, database: &str) -> Option<String> {
    if info.slot_type != "logical" {
        return Some(format!(
            "replication slot {slot} is a {} slot; Ferry needs a logical slot",
            info.slot_type
        ));
    }
    if info.plugin.as_deref() != Some("pgoutput") {
        return Some(format!(
            "replication slot {slot} uses plugin {:?}; Ferry needs pgoutput (drop it or pick another source.slot)",
            info.plugin
        ));
    }
    if info.database.as_deref() != Some(database) {
        return Some(format!(
            "replication slot {slot} belongs to database {:?}, not {database:?}",
            info.database
        ));
    }
    if info.wal_status.as_deref() == Some("lost") {
        return Some(format!(
            "replication slot {slot} has lost required WAL (wal_status = lost): changes were lost; \
             drop the slot and the pipeline's rows in ferry_checkpoint/ferry_snapshot to copy again"
        ));
    }
    None
}

/// Creates the slot; returns its consistent point.
pub async fn create_slot(client: &Client, slot: &str) -> Result<u64, PipelineError> {
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(|e| pg_err(Stage::Source, &format!("create replication slot {slot}"), e))?;
    let lsn: String = row.get(0);
    parse_lsn(&lsn)
        .ok_or_else(|| PipelineError::fatal(Stage::Source, format!("unreadable LSN {lsn}")))
}

/// Drops the slot (which must not be in use).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), PipelineError> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(|e| pg_err(Stage::Source, &format!("drop replication slot {slot}"), e))?;
    Ok(())
}

/// Tables of a publication; `None` when it does not exist, and `Some(None)`
/// for `FOR ALL TABLES`.
pub async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<Option<Option<Vec<TableId>>>, PipelineError> {
    let row = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| pg_err(Stage::Source, "read pg_publication", e))?;
    let Some(row) = row else { return Ok(None) };
    if row.get::<_, bool>(0) {
        return Ok(Some(None));
    }
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| pg_err(Stage::Source, "read pg_publication_tables", e))?;
    Ok(Some(Some(
        rows.iter()
            .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect(),
    )))
}

/// Creates the publication (publishing partitioned tables under their own
/// name), or adds the tables it lacks.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[TableId],
    partitioned: &[TableId],
    create: bool,
) -> Result<(), PipelineError> {
    if !partitioned.is_empty() {
        let via_root: Option<bool> = client
            .query_opt(
                "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(|e| pg_err(Stage::Source, "read pg_publication", e))?
            .map(|r| r.get(0));
        if via_root == Some(false) {
            // Otherwise changes arrive under the partitions' names and
            // would not be recognised as the configured table's.
            return Err(PipelineError::fatal(
                Stage::Source,
                format!(
                    "publication {publication} must publish partitioned tables ({}) via their root: \
                     run ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                    partitioned.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
                    ferry_pipeline::event::quote_ident(publication)
                ),
            ));
        }
    }
    let list = |ts: &[&TableId]| ts.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    let pubname = ferry_pipeline::event::quote_ident(publication);
    match publication_tables(client, publication).await? {
        None if create => {
            let all: Vec<&TableId> = tables.iter().collect();
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {pubname} FOR TABLE {} WITH (publish_via_partition_root = true)",
                    list(&all)
                ))
                .await
                .map_err(|e| pg_err(Stage::Source, &format!("create publication {publication}"), e))
        }
        None => Err(PipelineError::fatal(
            Stage::Source,
            format!("publication {publication} does not exist; create it or set source.create_publication = true"),
        )),
        Some(None) => Ok(()),
        Some(Some(have)) => {
            let missing: Vec<&TableId> = tables.iter().filter(|t| !have.contains(t)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if !create {
                return Err(PipelineError::fatal(
                    Stage::Source,
                    format!("publication {publication} lacks {}; add them or set source.create_publication = true", list(&missing)),
                ));
            }
            client
                .batch_execute(&format!("ALTER PUBLICATION {pubname} ADD TABLE {}", list(&missing)))
                .await
                .map_err(|e| pg_err(Stage::Source, &format!("add tables to publication {publication}"), e))
        }
    }
}

/// How long the source waits for a slot that another session holds: the
/// server's `wal_sender_timeout` (after which it ends a session whose
/// client is gone) plus a margin; 60 s plus the margin when it cannot be
/// read.
pub async fn in_use_grace(conn: &PgConnInfo) -> Duration {
    const MARGIN: Duration = Duration::from_secs(10);
    let timeout = async {
        let client = crate::connect::connect_to(conn).await.ok()?;
        let ms: String = client
            .query_one(
                "SELECT setting FROM pg_settings WHERE name = 'wal_sender_timeout'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        ms.parse::<u64>().ok().map(Duration::from_millis)
    }
    .await;
    timeout.unwrap_or(Duration::from_secs(60)) + MARGIN
}

/// The error for a slot held by another session for longer than
/// [`in_use_grace`]: who holds it, and what to do.
pub async fn in_use_error(conn: &PgConnInfo, slot: &str) -> PipelineError {
    let holder = async {
        let client = crate::connect::connect_to(conn).await.ok()?;
        let row = client
            .query_opt(
                "SELECT s.active_pid, a.client_addr::text, a.application_name, \
                        a.backend_start::text \
                 FROM pg_replication_slots s \
                 LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid \
                 WHERE s.slot_name = $1",
                &[&slot],
            )
            .await
            .ok()??;
        let pid: Option<i32> = row.get(0);
        let addr: Option<String> = row.get(1);
        let app: Option<String> = row.get(2);
        let since: Option<String> = row.get(3);
        Some(format!(
            "pid {}, client {}, application {:?}, since {}",
            pid.map_or("?".into(), |p| p.to_string()),
            addr.unwrap_or_else(|| "local".into()),
            app.unwrap_or_default(),
            since.unwrap_or_else(|| "?".into())
        ))
    }
    .await;
    PipelineError::fatal(
        Stage::Source,
        format!(
            "replication slot {slot:?} is in use by another session ({}): another Ferry \
             (or another consumer) is streaming this slot. Stop it, or give this pipeline its \
             own source.slot",
            holder.unwrap_or_else(|| "holder unknown".into())
        ),
    )
    .with_code(SLOT_IN_USE_CODE)
}

const SLOT_IN_USE_CODE: &str = "55006";
