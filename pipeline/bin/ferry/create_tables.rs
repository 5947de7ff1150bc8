//! `sink.create_tables` against what the sink can create: a table with a
//! domain, composite or generated column cannot be created from the stream
//! faithfully. Refused by `ferry check` and before `ferry run` starts, never
//! found after a snapshot (nor silently created without the column).

use ferry_pipeline::config::{Config, SinkConfig, SourceConfig};
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::prerequisite::Finding;

/// One failed finding per table the sink would have to create but cannot;
/// empty when there is none (or the source is not PostgreSQL, or a mapping
/// names the targets).
pub(crate) async fn findings(config: &Config) -> Result<Vec<Finding>, PipelineError> {
    let (SourceConfig::Postgres(src), SinkConfig::Postgres(dst)) = (&config.source, &config.sink)
    else {
        return Ok(Vec::new());
    };
    if config.mappings.is_some() {
        return Ok(Vec::new());
    }
    let to_create =
        ferry_postgres_sink::check::tables_to_create(dst, &config.source.tables()).await?;
    if to_create.is_empty() {
        return Ok(Vec::new());
    }
    let conn = ferry_postgres_source::conn_info(src)
        .map_err(|e| PipelineError::fatal(Stage::Source, e))?;
    let client = conn.connect(Stage::Source, "source").await?;
    let mut out = Vec::new();
    for id in &to_create {
        let blockers = ferry_postgres_source::catalog::creation_blockers(&client, id).await?;
        if !blockers.is_empty() {
            out.push(Finding::fail(
                format!("target table {id}"),
                format!(
                    "cannot be created from the stream: {}; create it in the target yourself \
                     (Ferry writes into existing tables), then run",
                    blockers.join("; ")
                ),
            ));
        }
    }
    Ok(out)
}
