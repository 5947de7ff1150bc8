//! The replication origin of the sink's sessions: every transaction the
//! sink commits carries origin `ferry_<pipeline>`, so that a PostgreSQL
//! source reading this database (a reverse pipeline during a rollback
//! window) skips what Ferry wrote instead of sending it back
//! (`[source] skip_origins`, docs/rollback.md).
//!
//! PostgreSQL lets one session at a time use an origin, and a pipeline can
//! have several sessions on the target (Kafka workers, a restart while the
//! killed process's backend is still exiting): a session whose origin is
//! busy takes the next free one of `ferry_<pipeline>`, `ferry_<pipeline>_1`,
//! … Every one of them matches the default `ferry_*`.

use ferry_pipeline::config::FERRY_ORIGIN_PREFIX;
use ferry_pipeline::error::PipelineError;
use tokio_postgres::{Client, GenericClient};
use tracing::{info, warn};

use crate::error::pg_err;

/// Origin names a pipeline's sessions try, in order.
const ORIGIN_SLOTS: usize = 16;

/// The origin names of `pipeline`'s sessions, in the order they are tried.
pub fn origin_names(pipeline: &str) -> Vec<String> {
    (0..ORIGIN_SLOTS)
        .map(|n| match n {
            0 => format!("{FERRY_ORIGIN_PREFIX}{pipeline}"),
            n => format!("{FERRY_ORIGIN_PREFIX}{pipeline}_{n}"),
        })
        .collect()
}

/// The privilege check of `ferry check` and of a session's start: the
/// functions that create and use an origin are superuser-only unless
/// granted (`GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text),
/// pg_replication_origin_create(text) TO <user>`).
pub async fn may_use_origins(client: &impl GenericClient) -> Result<bool, PipelineError> {
    let row = client
        .query_one(
            "SELECT has_function_privilege('pg_catalog.pg_replication_origin_create(text)', 'EXECUTE')
                AND has_function_privilege('pg_catalog.pg_replication_origin_session_setup(text)', 'EXECUTE')",
            &[],
        )
        .await
        .map_err(|e| pg_err("check the replication-origin privileges", e))?;
    Ok(row.get(0))
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// The session's commits carry this origin.
    Origin(String),
    /// The user may not use origins: the session's commits carry none (a
    /// source reading this database will see them).
    NoPrivilege,
}

/// Sets up the session's replication origin (creating it once if missing).
pub async fn attach(client: &Client, pipeline: &str) -> Result<Attached, PipelineError> {
    if !may_use_origins(client).await? {
        warn!(
            "the target user may not use replication origins: Ferry's writes are not marked, and a \
             PostgreSQL source reading this database (a reverse pipeline) would send them back; \
             grant EXECUTE on pg_replication_origin_create(text) and \
             pg_replication_origin_session_setup(text), or connect as a superuser"
        );
        return Ok(Attached::NoPrivilege);
    }
    for name in origin_names(pipeline) {
        let exists = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)",
                &[&name],
            )
            .await
            .map_err(|e| pg_err("read pg_replication_origin", e))?
            .get::<_, bool>(0);
        if !exists {
            match client
                .execute(
                    "SELECT pg_catalog.pg_replication_origin_create($1)",
                    &[&name],
                )
                .await
            {
                Ok(_) => {}
                // Another session created it first.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return Err(pg_err("create the replication origin", e)),
            }
        }
        match client
            .execute(
                "SELECT pg_catalog.pg_replication_origin_session_setup($1)",
                &[&name],
            )
            .await
        {
            Ok(_) => {
                info!(origin = %name, "target session marked with its replication origin");
                return Ok(Attached::Origin(name));
            }
            // Held by another session of this pipeline: try the next name.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => continue,
            Err(e) => return Err(pg_err("set up the session's replication origin", e)),
        }
    }
    Err(PipelineError::transient(
        ferry_pipeline::error::Stage::Sink,
        format!(
            "every replication origin of pipeline {pipeline:?} ({ORIGIN_SLOTS}) is held by another session"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_origin_of_a_pipeline_is_skipped_by_default() {
        let names = origin_names("shop");
        assert_eq!(names[0], "ferry_shop");
        assert_eq!(names[1], "ferry_shop_1");
        assert_eq!(names.len(), ORIGIN_SLOTS);
        let default = vec!["ferry_*".to_string()];
        assert!(names
            .iter()
            .all(|n| ferry_pipeline::config::origin_matches(&default, n)));
        assert!(!ferry_pipeline::config::origin_matches(
            &default, "pg_16384"
        ));
        assert!(ferry_pipeline::config::origin_matches(
            &["pg_16384".to_string()],
            "pg_16384"
        ));
        assert!(!ferry_pipeline::config::origin_matches(&[], "ferry_shop"));
    }
}
