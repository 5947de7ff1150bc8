//! Prerequisite checks for `ferry check` with a Convex source.

use ferry_pipeline::config::ConvexSourceConfig;
use ferry_pipeline::prerequisite::Finding;

use crate::client::Client;

/// Checks the source: the deployment answers the export routes with this
/// deploy key (a 403 `StreamingExportNotEnabled` is reported as such), and
/// the configured tables exist in `json_schemas`.
pub async fn source_findings(cfg: &ConvexSourceConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let client = match Client::new(&cfg.url, cfg.deploy_key.clone()) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::fail("source reachable", e.to_string()));
            return out;
        }
    };
    let tables = match client.tables(&cfg.component).await {
        Ok(t) => {
            out.push(Finding::pass(
                "streaming export",
                format!("{} answers json_schemas with this deploy key", cfg.url),
            ));
            t
        }
        Err(e) => {
            out.push(Finding::fail("streaming export", e.message));
            return out;
        }
    };
    for t in &cfg.tables {
        let subject = format!("table {t}");
        if tables.contains(t) {
            out.push(Finding::pass(subject, "listed by json_schemas"));
        } else {
            out.push(Finding::fail(
                subject,
                "not in json_schemas (no such table yet)",
            ));
        }
    }
    if cfg.tables.is_empty() {
        out.push(Finding::pass(
            "tables",
            format!("all {} user tables of the component", tables.len()),
        ));
    }
    match client
        .list_snapshot(
            &cfg.component,
            tables.first().map(String::as_str),
            None,
            None,
        )
        .await
    {
        Ok(_) => out.push(Finding::pass(
            "list_snapshot",
            "a snapshot page can be read",
        )),
        Err(e) => out.push(Finding::fail("list_snapshot", e.message)),
    }
    out
}
