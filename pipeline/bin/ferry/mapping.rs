//! `ferry mapping check` and `ferry idmap lookup`, and compiling the
//! configured mapping against the live target for `ferry run`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use ferry_convex_sink::ConvexSink;
use ferry_pipeline::config::{Config, SinkConfig};
use ferry_pipeline::transform::{Finding, Transformer};
use ferry_postgres_sink::id_map::IdPair;
use ferry_postgres_sink::PostgresSink;

use crate::exit;

#[derive(Args)]
pub(crate) struct MappingArgs {
    #[command(subcommand)]
    command: MappingCommand,
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Checks the mapping file against the live target schema: missing
    /// tables and columns, types that cannot take what the mapping puts
    /// in them, key and NOT NULL columns that nothing fills. Exit 0: fine;
    /// 1: findings; 2: invalid mapping file; 4: target unreachable.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Args)]
pub(crate) struct IdmapArgs {
    #[command(subcommand)]
    command: IdmapCommand,
}

#[derive(Subcommand)]
enum IdmapCommand {
    /// Translates an id both ways: a legacy id to its new id, or a new id
    /// back to its legacy id (for rollback). Exit 1 when unknown.
    Lookup {
        #[arg(long, short)]
        config: PathBuf,
        /// The id-map namespace (`[id_maps.<namespace>]`).
        namespace: String,
        /// A legacy id (ObjectId hex, string, number) or a new id.
        id: String,
    },
}

/// Why the mapping cannot be used.
pub(crate) enum Unusable {
    /// The target could not be read (never a pass).
    Unreachable(String),
    /// The mapping does not fit the target.
    Findings(Vec<Finding>),
}

/// The configured mapping compiled against the live target; `None`
/// without `pipeline.mappings`.
pub(crate) async fn transformer(config: &Config) -> Result<Option<Arc<Transformer>>, Unusable> {
    let Some(mappings) = &config.mappings else {
        return Ok(None);
    };
    let SinkConfig::Postgres(dst) = &config.sink else {
        return Err(Unusable::Unreachable(
            "pipeline.mappings is not supported with the Convex sink yet".into(),
        ));
    };
    let mut sink = PostgresSink::new(dst.clone(), config.pipeline.name.clone());
    let catalog = sink
        .mapping_catalog(&Transformer::targets(mappings))
        .await
        .map_err(|e| Unusable::Unreachable(e.to_string()))?;
    Transformer::compile(mappings, &catalog)
        .map(|t| Some(Arc::new(t)))
        .map_err(Unusable::Findings)
}

fn load(path: &Path, command: &str) -> Result<Config, u8> {
    Config::load(path).map_err(|e| {
        eprintln!(
            "ferry {command}: invalid configuration {}: {e}",
            path.display()
        );
        exit::CONFIG
    })
}

pub(crate) async fn run_mapping(args: MappingArgs) -> u8 {
    let MappingCommand::Check { config } = args.command;
    let config = match load(&config, "mapping check") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(m) = &config.mappings else {
        eprintln!("ferry mapping check: pipeline.mappings: no mapping file is configured");
        return exit::CONFIG;
    };
    match transformer(&config).await {
        Ok(_) => {
            for t in &m.tables {
                println!("[ ok ] {} → {}", t.source, t.target);
                for c in &t.children {
                    println!("[ ok ]   {}[] → {}", c.from, c.target);
                }
            }
            exit::OK
        }
        Err(Unusable::Findings(findings)) => {
            for f in &findings {
                println!("[FAIL] {f}");
            }
            println!("{} problem(s) in the mapping", findings.len());
            exit::MISMATCH
        }
        Err(Unusable::Unreachable(e)) => {
            eprintln!("ferry mapping check: cannot read the target schema: {e}");
            exit::UNVERIFIED
        }
    }
}

pub(crate) async fn run_idmap(args: IdmapArgs) -> u8 {
    let IdmapCommand::Lookup {
        config,
        namespace,
        id,
    } = args.command;
    let config = match load(&config, "idmap lookup") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let found = match &config.sink {
        SinkConfig::Postgres(dst) => {
            let mut sink = PostgresSink::new(dst.clone(), config.pipeline.name.clone());
            sink.id_map_lookup(&namespace, &id).await
        }
        SinkConfig::Convex(dst) => {
            let mut sink = ConvexSink::new(dst.clone(), config.pipeline.name.clone());
            sink.id_map_lookup(&namespace, &id).await.map(|pairs| {
                pairs
                    .into_iter()
                    .map(|p| IdPair {
                        legacy: p.legacy,
                        new: p.new,
                    })
                    .collect()
            })
        }
    };
    match found {
        Ok(pairs) if pairs.is_empty() => {
            eprintln!("ferry idmap lookup: {namespace} has no id {id:?} (neither legacy nor new)");
            exit::MISMATCH
        }
        Ok(pairs) => {
            for IdPair { legacy, new } in pairs {
                if legacy == id {
                    println!("{namespace} legacy {legacy} → new {new}");
                } else {
                    println!("{namespace} new {new} → legacy {legacy}");
                }
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("ferry idmap lookup: {e}");
            exit::UNVERIFIED
        }
    }
}
