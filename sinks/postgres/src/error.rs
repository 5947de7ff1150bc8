//! The one place a driver error of the target becomes a [`PipelineError`]:
//! classified by its SQLSTATE class, with the server's own message.

use ferry_pipeline::error::{PipelineError, Stage};

/// Wraps a driver error with its SQLSTATE class.
pub(crate) fn pg_err(context: &str, e: tokio_postgres::Error) -> PipelineError {
    let code = e.code().map(|c| c.code().to_string());
    let msg = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    };
    PipelineError::from_postgres(Stage::Sink, context, code.as_deref(), anyhow::anyhow!(msg))
}
