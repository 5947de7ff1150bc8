//! `ferry rollback init`: the reverse pipeline of a configured one
//! (docs/rollback.md) — its config (the new database as source, the old
//! one as sink), its inverse mapping (derived by
//! `ferry_pipeline::transform::inverse`), what cannot be carried back said
//! field by field before anything is written, and the reverse slot and
//! publication created now, so that the reverse pipeline starts at a
//! position before the application's first write to the new database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ferry_pipeline::config::{Config, SinkConfig, SourceConfig};
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::TableId;
use ferry_pipeline::transform::inverse::{self, InverseInput, LegacyTable, OldSide};
use ferry_pipeline::transform::Transformer;
use ferry_postgres_sink::PostgresSink;
use toml::{Table, Value};

use crate::exit;

#[derive(Args)]
pub(crate) struct RollbackArgs {
    #[command(subcommand)]
    command: RollbackCommand,
}

#[derive(Subcommand)]
enum RollbackCommand {
    /// Writes the reverse pipeline's config and inverse mapping next to
    /// the forward config (or in --output), after saying field by field
    /// what cannot be carried back; creates the reverse slot and
    /// publication in the new database. Exit 0: written; 1: the mapping
    /// cannot be reversed without loss (see --accept-lossy); 2: invalid
    /// configuration; 3: a database could not be read or changed.
    Init {
        /// The forward pipeline's configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Directory for the files (default: the forward config's).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Write the reverse pipeline even though some fields cannot be
        /// carried back (they are listed).
        #[arg(long)]
        accept_lossy: bool,
        /// Do not create the reverse slot and publication now (the reverse
        /// `ferry run` creates them at its start instead).
        #[arg(long)]
        no_slot: bool,
    },
}

pub(crate) async fn run(args: RollbackArgs) -> u8 {
    let RollbackCommand::Init {
        config,
        output,
        accept_lossy,
        no_slot,
    } = args.command;
    match init(&config, output, accept_lossy, no_slot).await {
        Ok(()) => exit::OK,
        Err(Refused(code, why)) => {
            eprintln!("ferry rollback init: {why}");
            code
        }
    }
}

/// Why `init` stopped, with its exit code.
#[derive(Debug)]
struct Refused(u8, String);

fn pipeline_err(e: PipelineError) -> Refused {
    Refused(exit::PIPELINE, e.to_string())
}

/// Names of the reverse pipeline, its slot and publication.
pub(crate) fn reverse_name(forward: &str) -> String {
    let clean: String = forward
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    format!("{clean}_rollback")
}

async fn init(
    path: &Path,
    output: Option<PathBuf>,
    accept_lossy: bool,
    no_slot: bool,
) -> Result<(), Refused> {
    let config = Config::load(path).map_err(|e| {
        Refused(
            exit::CONFIG,
            format!("invalid configuration {}: {e}", path.display()),
        )
    })?;
    // The file as written: URLs keep their `${ENV}` references, so that no
    // secret is expanded into the new file.
    let raw: Table = std::fs::read_to_string(path)
        .map_err(|e| Refused(exit::CONFIG, format!("{}: {e}", path.display())))?
        .parse()
        .map_err(|e| Refused(exit::CONFIG, format!("{}: {e}", path.display())))?;
    let SinkConfig::Postgres(new_db) = &config.sink else {
        return Err(Refused(
            exit::CONFIG,
            "sink.kind: a reverse pipeline reads the new database with the PostgreSQL source; this pipeline's sink is not PostgreSQL".into(),
        ));
    };
    let old_side =
        match &config.source {
            SourceConfig::Postgres(_) => OldSide::Postgres,
            SourceConfig::Mongodb(_) => OldSide::Mongodb,
            _ => return Err(Refused(
                exit::CONFIG,
                "source.kind: reverse pipelines write back to PostgreSQL or MongoDB sources only"
                    .into(),
            )),
        };
    let forward = config.mappings.clone().unwrap_or_default();
    let name = reverse_name(&config.pipeline.name);

    // The tables: mapped ones through the inverse mapping, the others
    // mirrored back under their own names.
    let mapped_sources: Vec<TableId> = forward
        .tables
        .iter()
        .filter_map(|t| TableId::parse(&t.source))
        .collect();
    let mirrored: Vec<TableId> = config
        .source
        .tables()
        .into_iter()
        .filter(|t| !mapped_sources.contains(t))
        .collect();
    if old_side == OldSide::Mongodb && (!mirrored.is_empty() || forward.tables.is_empty()) {
        return Err(Refused(
            exit::MISMATCH,
            format!(
                "collections mirrored without a mapping ({}) are `_id` + `document` rows in the new database: writing them back as documents is not supported; map them (docs/mappings.md)",
                if mirrored.is_empty() { "every collection".to_string() } else { mirrored.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ") }
            ),
        ));
    }
    let new_ids = |t: &TableId| ferry_postgres_sink::config::target_id(new_db, t);

    // Catalogs: the new tables, and the old ones (PostgreSQL).
    let mut sink = PostgresSink::new(new_db.clone(), config.pipeline.name.clone());
    let new_catalog = sink
        .mapping_catalog(&Transformer::targets(&forward))
        .await
        .map_err(pipeline_err)?;
    let old_client = match &config.source {
        SourceConfig::Postgres(s) => Some(
            ferry_postgres_source::config::source_conn(s)
                .map_err(pipeline_err)?
                .connect(Stage::Source, "source")
                .await
                .map_err(pipeline_err)?,
        ),
        _ => None,
    };
    let mut old_catalog = HashMap::new();
    if let Some(c) = &old_client {
        for (id, table) in ferry_postgres_sink::target::mapping_catalog(c, &mapped_sources)
            .await
            .map_err(pipeline_err)?
        {
            let key_sequence = match &table.primary_key[..] {
                [k] => c
                    .query_one("SELECT pg_get_serial_sequence($1, $2)", &[&id.quoted(), k])
                    .await
                    .map_err(|e| {
                        Refused(exit::PIPELINE, format!("read the sequence of {id}: {e}"))
                    })?
                    .get::<_, Option<String>>(0),
                _ => None,
            };
            old_catalog.insert(
                id,
                LegacyTable {
                    table,
                    key_sequence,
                },
            );
        }
    }
    let inverse = inverse::invert(InverseInput {
        forward: &forward,
        old_side,
        new_catalog: &new_catalog,
        old_catalog: &old_catalog,
    });

    // What cannot be carried back, before anything is written.
    if inverse.losses.is_empty() {
        println!("every mapped field goes back to the old database");
    } else {
        println!("what the reverse pipeline carries back differently, field by field:");
        for l in &inverse.losses {
            println!("  {l}");
        }
    }
    if inverse.is_lossy() && !accept_lossy {
        return Err(Refused(
            exit::MISMATCH,
            format!(
                "{} field(s) marked LOSSY would not reach the old database as the application writes them; nothing was written. Change the mapping, or pass --accept-lossy to write the reverse pipeline anyway",
                inverse.losses.iter().filter(|l| l.lossy).count()
            ),
        ));
    }

    // The reverse source's tables in the new database.
    let mut tables: Vec<String> = inverse
        .mappings
        .tables
        .iter()
        .map(|t| t.source.clone())
        .collect();
    tables.extend(mirrored.iter().map(|t| new_ids(t).to_string()));

    let dir = output.unwrap_or_else(|| {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    });
    std::fs::create_dir_all(&dir)
        .map_err(|e| Refused(exit::PIPELINE, format!("{}: {e}", dir.display())))?;
    let config_file = dir.join(format!("{name}.toml"));
    let mapping_file = format!("{name}.mappings.toml");
    let text = reverse_config(&raw, &config, &name, &tables, &mapping_file, &mirrored)?;
    if !inverse.mappings.tables.is_empty() {
        write(&dir.join(&mapping_file), &inverse.to_toml())?;
    }
    write(&config_file, &text)?;

    // The slot: made now, it starts before the application's first write;
    // the forward pipeline's own writes from here on carry its origin and
    // are skipped, so any moment before cutover is a correct start.
    let (publication, slot) = (name.clone(), name.clone());
    if no_slot {
        println!("slot {slot} and publication {publication} will be created by the reverse pipeline's first `ferry run`: start it before the application writes to the new database");
    } else {
        let client = ferry_postgres_sink::config::conn_info(new_db)
            .map_err(|e| Refused(exit::CONFIG, e))?
            .connect(Stage::Source, "new database")
            .await
            .map_err(pipeline_err)?;
        let ids: Vec<TableId> = tables.iter().filter_map(|t| TableId::parse(t)).collect();
        ferry_postgres_source::slot::ensure_publication(&client, &publication, &ids, &[], true)
            .await
            .map_err(pipeline_err)?;
        match ferry_postgres_source::slot::slot_info(&client, &slot)
            .await
            .map_err(pipeline_err)?
        {
            Some(_) => println!(
                "slot {slot} exists already: kept (it holds the changes since it was made)"
            ),
            None => {
                let lsn = ferry_postgres_source::slot::create_slot(&client, &slot)
                    .await
                    .map_err(pipeline_err)?;
                println!(
                    "created slot {slot} at {} and publication {publication} in the new database",
                    ferry_pipeline::event::format_lsn(lsn)
                );
            }
        }
    }
    println!("wrote {}", config_file.display());
    if !inverse.mappings.tables.is_empty() {
        println!("wrote {}", dir.join(&mapping_file).display());
    }
    println!("run it with: ferry run --config {}", config_file.display());
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), Refused> {
    std::fs::write(path, text)
        .map_err(|e| Refused(exit::PIPELINE, format!("write {}: {e}", path.display())))
}

/// Keys of a PostgreSQL connection section carried over as written.
const PG_CONNECTION_KEYS: [&str; 5] = ["url", "sslmode", "sslrootcert", "sslcert", "sslkey"];

/// One section of the written file, its keys in this order.
type Section = Vec<(String, Value)>;

fn put(section: &mut Section, key: &str, value: impl Into<Value>) {
    section.retain(|(k, _)| k != key);
    section.push((key.to_string(), value.into()));
}

/// `[name]` and its keys, in order (values in TOML's inline syntax).
fn emit(name: &str, section: &Section) -> String {
    let mut out = format!("[{name}]\n");
    for (k, v) in section {
        let key = match k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            true => k.clone(),
            false => Value::from(k.as_str()).to_string(),
        };
        out.push_str(&format!("{key} = {v}\n"));
    }
    out
}

/// The reverse pipeline's config text, from the forward file as written.
fn reverse_config(
    raw: &Table,
    config: &Config,
    name: &str,
    tables: &[String],
    mapping_file: &str,
    mirrored: &[TableId],
) -> Result<String, Refused> {
    let section = |k: &str| {
        raw.get(k)
            .and_then(Value::as_table)
            .cloned()
            .unwrap_or_default()
    };
    let (fwd_pipeline, fwd_source, fwd_sink) =
        (section("pipeline"), section("source"), section("sink"));

    let mut pipeline: Section = vec![("name".into(), name.into())];
    for (k, v) in fwd_pipeline {
        if k.as_str() != "name" && k.as_str() != "mappings" {
            put(&mut pipeline, &k, v);
        }
    }
    if !config.mappings.as_ref().is_none_or(|m| m.tables.is_empty()) {
        put(&mut pipeline, "mappings", mapping_file);
    }

    let mut source: Section = vec![("kind".into(), "postgres".into())];
    for k in PG_CONNECTION_KEYS {
        if let Some(v) = fwd_sink.get(k) {
            put(&mut source, k, v.clone());
        }
    }
    put(
        &mut source,
        "tables",
        Value::Array(tables.iter().map(|t| Value::from(t.as_str())).collect()),
    );
    put(&mut source, "slot", name);
    put(&mut source, "publication", name);
    // The old database has every row already.
    put(&mut source, "snapshot", "never");
    put(
        &mut source,
        "skip_origins",
        Value::Array(vec![format!(
            "{}*",
            ferry_pipeline::config::FERRY_ORIGIN_PREFIX
        )
        .into()]),
    );

    let mut sink: Section = Vec::new();
    match &config.source {
        SourceConfig::Mongodb(_) => {
            // The MongoDB sink's section: the forward source's deployment
            // and database, and the forward target, whose ferry_id_map
            // translates new ids back to ObjectIds.
            put(&mut sink, "kind", "mongodb");
            for k in ["url", "database"] {
                if let Some(v) = fwd_source.get(k) {
                    put(&mut sink, k, v.clone());
                }
            }
            if let Some(u) = fwd_sink.get("url") {
                put(&mut sink, "id_map_url", u.clone());
            }
        }
        _ => {
            put(&mut sink, "kind", "postgres");
            for k in PG_CONNECTION_KEYS {
                if let Some(v) = fwd_source.get(k) {
                    put(&mut sink, k, v.clone());
                }
            }
            // The old tables exist; a missing one is an error, not a copy.
            put(&mut sink, "create_tables", false);
            if let Some(u) = fwd_sink.get("url") {
                put(&mut sink, "id_map_url", u.clone());
            }
            // A forward `sink.schema` moved every table into one schema:
            // back into the sources' schema, when they share one.
            if fwd_sink.contains_key("schema") && !mirrored.is_empty() {
                let schemas: std::collections::BTreeSet<&str> =
                    mirrored.iter().map(|t| t.schema.as_str()).collect();
                match schemas.into_iter().collect::<Vec<_>>()[..] {
                    [one] => put(&mut sink, "schema", one),
                    _ => {
                        return Err(Refused(
                            exit::CONFIG,
                            "sink.schema: the forward pipeline merged several source schemas into one; the reverse cannot tell them apart".into(),
                        ))
                    }
                }
            }
        }
    }

    let mut out = format!(
        "# The reverse pipeline of {:?}, written by `ferry rollback init`\n# (docs/rollback.md). Run it with `ferry run --config <this file>`.\n\n",
        config.pipeline.name
    );
    out.push_str(&emit("pipeline", &pipeline));
    out.push('\n');
    out.push_str(&emit("source", &source));
    out.push('\n');
    out.push_str(&emit("sink", &sink));
    if let Some(fwd_kafka) = raw.get("kafka").and_then(Value::as_table) {
        // Topics and consumer group of its own.
        let mut kafka: Section = fwd_kafka.clone().into_iter().collect();
        let prefix = config
            .kafka
            .as_ref()
            .map(|k| k.topic_prefix.clone())
            .unwrap_or_else(|| "ferry".into());
        put(&mut kafka, "topic_prefix", format!("{prefix}_rollback"));
        if let Some(g) = fwd_kafka.get("group_id").and_then(Value::as_str) {
            put(&mut kafka, "group_id", format!("{g}_rollback"));
        }
        out.push('\n');
        out.push_str(&emit("kafka", &kafka));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_slot_safe() {
        assert_eq!(reverse_name("shop"), "shop_rollback");
        assert_eq!(reverse_name("Shop-EU.1"), "shop_eu_1_rollback");
    }

    #[test]
    fn a_mongodb_forward_source_gets_the_mongodb_sink_section() {
        let text = r#"
[pipeline]
name = "escrow"
[source]
kind = "mongodb"
url = "mongodb://${MONGO_USER}@127.0.0.1:27017/?replicaSet=rs0"
database = "shop"
collections = ["escrows"]
[sink]
kind = "postgres"
url = "postgres://postgres:${PGPASSWORD}@127.0.0.1:5432/app"
"#;
        let raw: Table = text.parse().unwrap();
        let config = Config::from_toml(text, &|_| Some("x".into())).unwrap();
        let out = reverse_config(
            &raw,
            &config,
            "escrow_rollback",
            &["public.escrows".into()],
            "escrow_rollback.mappings.toml",
            &[],
        )
        .unwrap();
        let parsed: Table = out.parse().unwrap();
        let sink = parsed["sink"].as_table().unwrap();
        assert_eq!(sink.len(), 4, "{out}");
        assert_eq!(sink["kind"].as_str(), Some("mongodb"));
        assert_eq!(
            sink["url"].as_str(),
            Some("mongodb://${MONGO_USER}@127.0.0.1:27017/?replicaSet=rs0")
        );
        assert_eq!(sink["database"].as_str(), Some("shop"));
        assert!(out.contains(
            "[sink]\nkind = \"mongodb\"\nurl = \"mongodb://${MONGO_USER}@127.0.0.1:27017/?replicaSet=rs0\"\ndatabase = \"shop\"\nid_map_url = \"postgres://postgres:${PGPASSWORD}@127.0.0.1:5432/app\"\n"
        ), "{out}");
        let source = parsed["source"].as_table().unwrap();
        // The new database, secrets as references.
        assert_eq!(
            source["url"].as_str(),
            Some("postgres://postgres:${PGPASSWORD}@127.0.0.1:5432/app")
        );
        assert_eq!(source["slot"].as_str(), Some("escrow_rollback"));
        assert_eq!(source["snapshot"].as_str(), Some("never"));
    }
}
