//! Connections to the source database (through ferry-pgconn: libpq's
//! `sslmode` rules over rustls), and the one place a driver error becomes a
//! [`PipelineError`] with its SQLSTATE class.

use ferry_pgconn::PgConnInfo;
use ferry_pipeline::error::{PipelineError, Stage};
use tokio_postgres::Client;

/// Wraps a driver error with its SQLSTATE class (TLS failures: fatal, with
/// the reason).
pub fn pg_err(stage: Stage, context: &str, e: tokio_postgres::Error) -> PipelineError {
    ferry_pgconn::pg_error(stage, context, e)
}

/// A normal (non-replication) session to the source.
pub async fn connect_to(info: &PgConnInfo) -> Result<Client, PipelineError> {
    info.connect(Stage::Source, "source").await
}

/// [`connect_to`] for a bare URL (its own `ssl*` parameters apply): the
/// demo, `ferry parity` and the tests.
pub async fn connect(url: &str) -> Result<Client, PipelineError> {
    let info = PgConnInfo::parse(url).map_err(|e| PipelineError::fatal(Stage::Source, e.0))?;
    connect_to(&info).await
}
