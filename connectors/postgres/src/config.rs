//! What the `[source]` section becomes for this connector: the replication
//! connection's settings, the database the URL names, and the pure URL check.
//!
//! The TOML schema itself stays in `ferry_pipeline::config` (one
//! `deny_unknown_fields` tree, so a bad key is refused with its full name);
//! this module only derives from the validated section, with no I/O.

use std::time::Duration;

use ferry_pgconn::{PgConnInfo, SslKeys};
use ferry_pipeline::config::PostgresSourceConfig;
use ferry_pipeline::error::{PipelineError, Stage};
use pgwire_replication::{Lsn, ReplicationConfig};

use crate::stream;

/// The source connection: `source.url` with the `source.ssl*` keys over
/// the URL's own (libpq's rules, ferry-pgconn). The error names the key,
/// never the URL (it holds secrets).
pub fn conn_info(cfg: &PostgresSourceConfig) -> Result<PgConnInfo, String> {
    let keys = SslKeys::new(
        cfg.sslmode.as_deref(),
        cfg.sslrootcert.as_deref(),
        cfg.sslcert.as_deref(),
        cfg.sslkey.as_deref(),
    );
    PgConnInfo::parse_with(cfg.url.expose(), &keys, &ferry_pgconn::Defaults::from_env())
        .map_err(|e| format!("source.url: {e}"))
}

/// [`conn_info`] for the source's own use: a bad string stops the pipeline.
pub fn source_conn(cfg: &PostgresSourceConfig) -> Result<PgConnInfo, PipelineError> {
    conn_info(cfg).map_err(|e| PipelineError::fatal(Stage::Source, e))
}

/// The replication connection's settings: the same server, credentials and
/// TLS rules as the query sessions.
pub fn replication_config(
    cfg: &PostgresSourceConfig,
    start: u64,
) -> Result<ReplicationConfig, PipelineError> {
    let repl = source_conn(cfg)?
        .replication(&cfg.slot, &cfg.publication)
        .map_err(|e| PipelineError::fatal(Stage::Source, format!("source.url: {e}")))?;
    Ok(repl
        .with_start_lsn(Lsn(start))
        .with_status_interval(stream::status_interval(cfg.status_interval_ms))
        .with_wakeup_interval(Duration::from_secs(1))
        .with_options(stream::REPLICATION_OPTIONS)
        .with_application_name("ferry"))
}
