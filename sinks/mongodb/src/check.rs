//! `ferry check` for the MongoDB sink: the server answers, its version,
//! whether it runs transactions (a replica set or sharded cluster: the
//! sink writes every batch in one), and whether the database is writable
//! (a probe document written and removed in `ferry_checkpoints`).

use bson::doc;
use ferry_pipeline::config::MongoSinkConfig;
use ferry_pipeline::prerequisite::Finding;

use crate::checkpoint::CHECKPOINTS;
use crate::config::hosts;
use crate::MongoSink;

/// The findings, one per fact.
pub async fn sink_findings(cfg: &MongoSinkConfig, pipeline: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let at = hosts(cfg.url.expose());
    let mut sink = MongoSink::new(cfg.clone(), pipeline);
    let db = match sink.database().await {
        Ok(db) => db,
        Err(e) => {
            out.push(Finding::fail("sink connection", e.to_string()));
            return out;
        }
    };
    let admin = db.client().database("admin");
    match admin.run_command(doc! {"buildInfo": 1}).await {
        Ok(info) => out.push(Finding::pass(
            "sink server",
            format!(
                "MongoDB {} answers at {at}",
                info.get_str("version").unwrap_or("(unknown version)")
            ),
        )),
        Err(e) => {
            out.push(Finding::fail(
                "sink server",
                format!("MongoDB at {at} does not answer: {e}"),
            ));
            return out;
        }
    }
    match admin.run_command(doc! {"hello": 1}).await {
        Ok(hello) if hello.get_str("setName").is_ok() || hello.get_str("msg") == Ok("isdbgrid") => {
            out.push(Finding::pass(
                "sink transactions",
                "available (replica set)",
            ))
        }
        Ok(_) => out.push(Finding::fail(
            "sink transactions",
            "the server is a standalone mongod: the MongoDB sink writes each batch and its \
             checkpoint in one transaction, which needs a replica set (a single-node one will do)",
        )),
        Err(e) => out.push(Finding::fail(
            "sink transactions",
            format!("hello failed: {e}"),
        )),
    }
    let probe = format!("ferry-check/{pipeline}");
    let coll = db.collection::<bson::Document>(CHECKPOINTS);
    let written = async {
        coll.insert_one(doc! {"_id": &probe}).await?;
        coll.delete_one(doc! {"_id": &probe}).await?;
        Ok::<_, mongodb::error::Error>(())
    }
    .await;
    match written {
        Ok(()) => out.push(Finding::pass(
            "sink database",
            format!("{:?} is writable", cfg.database),
        )),
        Err(e) => out.push(Finding::fail(
            "sink database",
            format!("cannot write to {:?}: {e}", cfg.database),
        )),
    }
    out
}
