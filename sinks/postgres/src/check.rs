//! Prerequisites of `ferry check` on the target: reachable, and every table
//! present or creatable.

use ferry_pipeline::config::PostgresSinkConfig;
use ferry_pipeline::error::Stage;
use ferry_pipeline::event::TableId;
use ferry_pipeline::prerequisite::Finding;

use crate::config;
use crate::target;

/// Checks the target for `ferry check`: reachable, and every table present
/// (or creatable).
pub async fn target_findings(
    cfg: &PostgresSinkConfig,
    tables: &[TableId],
) -> Vec<ferry_pipeline::prerequisite::Finding> {
    let connected = match config::target_conn(cfg) {
        Ok(info) => info.connect(Stage::Sink, "target").await,
        Err(e) => Err(e),
    };
    let client = match connected {
        Ok(client) => client,
        Err(e) => return vec![Finding::fail("target reachable", e.to_string())],
    };
    let mut out = vec![Finding::pass("target reachable", "connected")];
    out.push(match crate::origin::may_use_origins(&client).await {
        Ok(true) => Finding::pass(
            "replication origin",
            "the target user may mark Ferry's writes (a reverse pipeline skips them)",
        ),
        Ok(false) => Finding::fail(
            "replication origin",
            "the target user may not use replication origins, so Ferry's writes cannot be told from the \
             application's by a pipeline reading this database back (docs/rollback.md); connect as a \
             superuser or GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), \
             pg_replication_origin_session_setup(text) TO <user>",
        ),
        Err(e) => Finding::fail("replication origin", e.to_string()),
    });
    for id in tables {
        let target = config::target_id(cfg, id);
        let subject = format!("target table {target}");
        match target::describe(&client, &target).await {
            Ok(Some(_)) => out.push(Finding::pass(subject, "exists")),
            Ok(None) if cfg.create_tables => out.push(Finding::pass(subject, "will be created")),
            Ok(None) => out.push(Finding::fail(
                subject,
                "does not exist; create it or set sink.create_tables = true",
            )),
            Err(e) => out.push(Finding::fail(subject, e.to_string())),
        }
    }
    out
}

/// A table whose snapshot the target's checkpoint records but which the
/// target no longer has: streaming on would re-create it empty and leave it
/// short of every row copied before. (An empty table is not a sign: the
/// stream itself empties one on a TRUNCATE, and rows inserted after it may
/// still be on their way.)
#[derive(Debug, Clone)]
pub struct LostTable {
    pub source: TableId,
    pub target: TableId,
    /// Rows the recorded snapshot copied.
    pub copied_rows: u64,
}

/// The recorded snapshots of `pipeline` whose target tables were dropped
/// (`tables`: the source tables, mirrored one to one).
pub async fn lost_tables(
    cfg: &PostgresSinkConfig,
    pipeline: &str,
    tables: &[TableId],
) -> Result<Vec<LostTable>, ferry_pipeline::error::PipelineError> {
    let client = config::target_conn(cfg)?
        .connect(Stage::Sink, "target")
        .await?;
    // A target that never ran this pipeline has no checkpoint tables.
    let has_checkpoint: bool = client
        .query_one(
            "SELECT to_regclass('public.ferry_snapshot') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| crate::error::pg_err("look for ferry_snapshot", e))?
        .get(0);
    if !has_checkpoint {
        return Ok(Vec::new());
    }
    let snapshots = crate::checkpoint::load(&client, pipeline).await?.snapshots;
    let mut lost = Vec::new();
    for source in tables {
        let Some(record) = snapshots.get(source) else {
            continue;
        };
        let target = config::target_id(cfg, source);
        if target::describe(&client, &target).await?.is_none() {
            lost.push(LostTable {
                source: source.clone(),
                target,
                copied_rows: record.rows,
            });
        }
    }
    Ok(lost)
}

/// `ferry run --recopy TABLE`: empties the target table (when it exists)
/// and forgets its snapshot record in one transaction, so that the source
/// copies it again on start (while the stream goes on for the others).
pub async fn forget_snapshot(
    cfg: &PostgresSinkConfig,
    pipeline: &str,
    source: &TableId,
) -> Result<(), ferry_pipeline::error::PipelineError> {
    let mut client = config::target_conn(cfg)?
        .connect(Stage::Sink, "target")
        .await?;
    let target = config::target_id(cfg, source);
    let exists = target::describe(&client, &target).await?.is_some();
    let tx = client
        .transaction()
        .await
        .map_err(|e| crate::error::pg_err("begin", e))?;
    if exists {
        tx.batch_execute(&format!("TRUNCATE {}", target.quoted()))
            .await
            .map_err(|e| crate::error::pg_err("empty the table to copy again", e))?;
    }
    crate::checkpoint::clear_snapshot(&tx, pipeline, source).await?;
    tx.commit()
        .await
        .map_err(|e| crate::error::pg_err("commit", e))
}

/// The source tables whose target table does not exist and would be
/// created by the sink (`sink.create_tables`).
pub async fn tables_to_create(
    cfg: &PostgresSinkConfig,
    tables: &[TableId],
) -> Result<Vec<TableId>, ferry_pipeline::error::PipelineError> {
    if !cfg.create_tables {
        return Ok(Vec::new());
    }
    let client = config::target_conn(cfg)?
        .connect(Stage::Sink, "target")
        .await?;
    let mut out = Vec::new();
    for id in tables {
        if target::describe(&client, &config::target_id(cfg, id))
            .await?
            .is_none()
        {
            out.push(id.clone());
        }
    }
    Ok(out)
}
