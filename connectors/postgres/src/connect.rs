//! Connections to the source database, and the one place a driver error
//! becomes a [`PipelineError`] with its SQLSTATE class.

use ferry_pipeline::error::{PipelineError, Stage};
use tokio_postgres::{Client, NoTls};

/// Wraps a driver error with its SQLSTATE class.
pub fn pg_err(stage: Stage, context: &str, e: tokio_postgres::Error) -> PipelineError {
    let code = e.code().map(|c| c.code().to_string());
    let msg = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    };
    PipelineError::from_postgres(stage, context, code.as_deref(), anyhow::anyhow!(msg))
}

/// A normal (non-replication) connection with the session settings that
/// make value text exact.
pub async fn connect(url: &str) -> Result<Client, PipelineError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| pg_err(Stage::Source, "connect to source", e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "source connection closed");
        }
    });
    Ok(client)
}
