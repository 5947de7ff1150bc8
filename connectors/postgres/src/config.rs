//! What the `[source]` section becomes for this connector: the replication
//! connection's settings, the database the URL names, and the pure URL check.
//!
//! The TOML schema itself stays in `ferry_pipeline::config` (one
//! `deny_unknown_fields` tree, so a bad key is refused with its full name);
//! this module only derives from the validated section, with no I/O.

use std::time::Duration;

use ferry_pipeline::config::PostgresSourceConfig;
use ferry_pipeline::error::{PipelineError, Stage};
use pgwire_replication::{Lsn, ReplicationConfig};

use crate::stream;

/// The replication connection's settings from the source URL.
pub fn replication_config(
    cfg: &PostgresSourceConfig,
    start: u64,
) -> Result<ReplicationConfig, PipelineError> {
    let pg: tokio_postgres::Config = cfg
        .url
        .expose()
        .parse()
        .map_err(|e| PipelineError::fatal(Stage::Source, format!("source.url: {e}")))?;
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().unwrap_or("postgres").to_string();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let db = pg.get_dbname().unwrap_or(&user).to_string();
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        db,
        cfg.slot.clone(),
        cfg.publication.clone(),
    )
    .with_port(port)
    .with_start_lsn(Lsn(start))
    .with_status_interval(stream::status_interval(cfg.status_interval_ms))
    .with_wakeup_interval(Duration::from_secs(1))
    .with_options(stream::REPLICATION_OPTIONS)
    .with_application_name("ferry"))
}

/// Whether a PostgreSQL URL parses (host, port, options); no connection is
/// made. The error says what is wrong, never the URL (it holds secrets).
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<tokio_postgres::Config>()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The database the source URL names.
pub fn database_of(url: &str) -> Option<String> {
    let pg: tokio_postgres::Config = url.parse().ok()?;
    pg.get_dbname().or(pg.get_user()).map(str::to_string)
}
