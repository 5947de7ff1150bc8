//! The one place a driver error of the target becomes a [`PipelineError`]:
//! classified by its SQLSTATE class (TLS failures as fatal), with the
//! server's own message (see [`ferry_pgconn::pg_error`]).

use ferry_pipeline::error::{PipelineError, Stage};

/// Wraps a driver error of the target.
pub(crate) fn pg_err(context: &str, e: tokio_postgres::Error) -> PipelineError {
    ferry_pgconn::pg_error(Stage::Sink, context, e)
}
