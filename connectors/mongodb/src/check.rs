//! Prerequisite checks for `ferry check` with a MongoDB source.

use bson::{doc, Document};
use ferry_pipeline::config::MongoSourceConfig;
use ferry_pipeline::prerequisite::Finding;

/// Checks the source: reachable, a replica set (change streams need one),
/// a change stream can be opened, and the configured collections exist.
pub async fn source_findings(cfg: &MongoSourceConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let url = cfg.url.expose();
    let client = match crate::config::connect(url, "connect").await {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::fail("source reachable", e.to_string()));
            return out;
        }
    };
    let hosts = crate::config::hosts(url);
    let db = client.database(&cfg.database);
    match db.run_command(doc! { "hello": 1 }).await {
        Ok(hello) => {
            out.push(Finding::pass(
                "source reachable",
                format!("connected to {hosts}"),
            ));
            let set = hello.get_str("setName").ok().map(str::to_string);
            match set {
                Some(name) => out.push(Finding::pass("replica set", name)),
                None => out.push(Finding::fail(
                    "replica set",
                    "the server is not a replica-set member: change streams need one \
                     (a single-node replica set is enough: mongod --replSet rs0, then rs.initiate())",
                )),
            }
        }
        Err(e) => {
            out.push(Finding::fail("source reachable", format!("{hosts}: {e}")));
            return out;
        }
    }
    match db.watch().await {
        Ok(_) => out.push(Finding::pass("change stream", "opened on the database")),
        Err(e) => out.push(Finding::fail("change stream", e.to_string())),
    }
    match db.list_collection_names().await {
        Ok(names) => {
            for c in &cfg.collections {
                let subject = format!("collection {}.{c}", cfg.database);
                if names.contains(c) {
                    let n = db
                        .collection::<Document>(c)
                        .estimated_document_count()
                        .await
                        .unwrap_or(0);
                    out.push(Finding::pass(subject, format!("~{n} documents")));
                } else {
                    out.push(Finding::fail(subject, "does not exist (yet)"));
                }
            }
            if cfg.collections.is_empty() {
                out.push(Finding::pass(
                    "collections",
                    format!("all {} collections of {}", names.len(), cfg.database),
                ));
            }
        }
        Err(e) => out.push(Finding::fail("collections", e.to_string())),
    }
    out
}
