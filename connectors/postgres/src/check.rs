//! Prerequisite checks for `ferry check`: what the source must provide
//! before a pipeline can run, each with the fix when it is missing.

use ferry_pipeline::config::PostgresSourceConfig;
use ferry_pipeline::event::TableId;
use ferry_pipeline::prerequisite::Finding;

use crate::config::conn_info;
use crate::connect::connect_to;
use crate::{catalog, slot};

/// Checks the source: reachable, `wal_level = logical`, replication
/// privilege, free slots, every table present with a key, publication and
/// slot usable. Never returns early on a failed item unless the database
/// cannot be reached at all.
pub async fn source_findings(cfg: &PostgresSourceConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let conn = match conn_info(cfg) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::fail("source reachable", e));
            return out;
        }
    };
    let client = match connect_to(&conn).await {
        Ok(c) => {
            out.push(Finding::pass("source reachable", "connected"));
            c
        }
        Err(e) => {
            out.push(Finding::fail("source reachable", e.to_string()));
            return out;
        }
    };
    // The replication session is opened exactly as `ferry run` opens it:
    // pg_hba.conf has separate `replication` lines, and a password method
    // or TLS rule that only they carry would otherwise pass here and stop
    // the run after its snapshot.
    let probed = match crate::config::replication_config(cfg, 0) {
        Ok(repl) => crate::stream::probe(repl).await,
        Err(e) => Err(e),
    };
    out.push(match probed {
        Ok(()) => Finding::pass("replication connection", "authenticated (IDENTIFY_SYSTEM)"),
        Err(e) => Finding::fail("replication connection", e.to_string()),
    });
    match client.query_one("SHOW wal_level", &[]).await {
        Ok(r) => {
            let level: String = r.get(0);
            out.push(if level == "logical" {
                Finding::pass("wal_level", "logical")
            } else {
                Finding::fail(
                    "wal_level",
                    format!("is {level}; set wal_level = logical in postgresql.conf and restart the server"),
                )
            });
        }
        Err(e) => out.push(Finding::fail("wal_level", e.to_string())),
    }
    match client
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
    {
        Ok(r) if r.get::<_, bool>(0) => out.push(Finding::pass("replication privilege", "granted")),
        Ok(_) => out.push(Finding::fail(
            "replication privilege",
            "missing; run ALTER ROLE <user> WITH REPLICATION",
        )),
        Err(e) => out.push(Finding::fail("replication privilege", e.to_string())),
    }
    match client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int",
            &[],
        )
        .await
    {
        Ok(r) => {
            let free: i32 = r.get(0);
            out.push(if free > 0 {
                Finding::pass("free replication slots", free.to_string())
            } else {
                Finding::fail("free replication slots", "none; raise max_replication_slots or drop unused slots")
            });
        }
        Err(e) => out.push(Finding::fail("free replication slots", e.to_string())),
    }
    let ids: Vec<TableId> = cfg
        .tables
        .iter()
        .filter_map(|t| TableId::parse(t))
        .collect();
    for id in &ids {
        let subject = format!("table {id}");
        match catalog::describe(&client, id).await {
            Ok(None) => out.push(Finding::fail(
                subject,
                catalog::missing(&client, id)
                    .await
                    .unwrap_or_else(|e| format!("does not exist ({e})")),
            )),
            Ok(Some(t)) => match catalog::refusal(&t) {
                Some(why) => out.push(Finding::fail(subject, why)),
                None => {
                    let keys: Vec<_> = t.schema.key_columns().map(|c| c.name.clone()).collect();
                    let ri = match t.replica_identity {
                        'f' => "full",
                        'i' => "index",
                        _ => "default",
                    };
                    out.push(Finding::pass(
                        subject,
                        format!(
                            "key ({}), replica identity {ri}, ~{} rows",
                            keys.join(", "),
                            t.estimated_rows.max(0)
                        ),
                    ));
                }
            },
            Err(e) => out.push(Finding::fail(subject, e.to_string())),
        }
    }
    let subject = format!("publication {}", cfg.publication);
    match slot::publication_tables(&client, &cfg.publication).await {
        Ok(None) if cfg.create_publication => out.push(Finding::pass(subject, "will be created")),
        Ok(None) => out.push(Finding::fail(
            subject,
            "does not exist; create it or set source.create_publication = true",
        )),
        Ok(Some(None)) => out.push(Finding::pass(subject, "FOR ALL TABLES")),
        Ok(Some(Some(have))) => {
            let missing: Vec<String> = ids
                .iter()
                .filter(|t| !have.contains(t))
                .map(|t| t.to_string())
                .collect();
            if missing.is_empty() {
                out.push(Finding::pass(subject, "holds every table"));
            } else if cfg.create_publication {
                out.push(Finding::pass(
                    subject,
                    format!("will add {}", missing.join(", ")),
                ));
            } else {
                out.push(Finding::fail(
                    subject,
                    format!("lacks {}", missing.join(", ")),
                ));
            }
        }
        Err(e) => out.push(Finding::fail(subject, e.to_string())),
    }
    let subject = format!("slot {}", cfg.slot);
    let database = conn.database().unwrap_or_default();
    match slot::slot_info(&client, &cfg.slot).await {
        Ok(None) => out.push(Finding::pass(subject, "will be created (pgoutput)")),
        Ok(Some(info)) => match slot::slot_refusal(&cfg.slot, &info, &database) {
            Some(why) => out.push(Finding::fail(subject, why)),
            None if info.active => out.push(Finding::fail(
                subject,
                "is in use by another consumer; stop it or pick another source.slot",
            )),
            None => out.push(Finding::pass(
                subject,
                format!(
                    "exists, confirmed at {}",
                    info.confirmed_flush_lsn
                        .map(ferry_pipeline::event::format_lsn)
                        .unwrap_or_default()
                ),
            )),
        },
        Err(e) => out.push(Finding::fail(subject, e.to_string())),
    }
    out
}
