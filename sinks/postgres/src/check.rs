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
