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
        /// Also read up to this many records of each mapped source table
        /// (MongoDB `$sample`; PostgreSQL: the first rows) and run them
        /// through the mapping: records the run would dead-letter, rules
        /// whose field no record has, fields no rule maps, and source
        /// tables no mapping names. Warnings, not failures. 0: skip.
        #[arg(long, default_value_t = 1000)]
        sample: u32,
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
        /// A legacy id (ObjectId hex, string, number) or a new id; ObjectId
        /// hex and UUIDs in any case.
        id: String,
    },
    /// Writes a namespace's whole map as CSV (`legacy_id,new_id,allocated_at`,
    /// with a header), for the application team: URLs, caches and external
    /// references to rewrite. PostgreSQL targets.
    Export {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        namespace: String,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
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
    let dst = match &config.sink {
        SinkConfig::Postgres(dst) => dst,
        // No schema to read: the mapping's own columns.
        SinkConfig::Mongodb(_) => {
            return Transformer::compile(mappings, &Transformer::schemaless_catalog(mappings))
                .map(|t| Some(Arc::new(t)))
                .map_err(Unusable::Findings)
        }
        SinkConfig::Convex(_) => {
            return Err(Unusable::Unreachable(
                "pipeline.mappings is not supported with the Convex sink yet".into(),
            ))
        }
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
    let MappingCommand::Check { config, sample } = args.command;
    let config = match load(&config, "mapping check") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(m) = &config.mappings else {
        eprintln!("ferry mapping check: pipeline.mappings: no mapping file is configured");
        return exit::CONFIG;
    };
    match transformer(&config).await {
        Ok(t) => {
            let mut ok = 0;
            for t in &m.tables {
                println!("[ ok ] {} → {}", t.source, t.target);
                ok += 1;
                for c in &t.children {
                    println!("[ ok ]   {}[] → {}", c.from, c.target);
                    ok += 1;
                }
            }
            let (mut warnings, mut notes) = (0, 0);
            if let (Some(t), true) = (t, sample > 0) {
                match crate::sample::sample(&config, m, &t, sample).await {
                    Ok(found) => {
                        for n in found {
                            match n {
                                crate::sample::Note::Warn(w) => {
                                    warnings += 1;
                                    println!("[warn] {w}");
                                }
                                crate::sample::Note::Info(i) => {
                                    notes += 1;
                                    println!("[info] {i}");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("ferry mapping check: cannot sample the source: {e}");
                        return exit::UNVERIFIED;
                    }
                }
            }
            println!("{ok} ok, {warnings} warning(s), {notes} note(s), 0 problem(s)");
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
    match args.command {
        IdmapCommand::Lookup {
            config,
            namespace,
            id,
        } => lookup(&config, &namespace, &id).await,
        IdmapCommand::Export {
            config,
            namespace,
            output,
        } => export(&config, &namespace, output.as_deref()).await,
    }
}

/// "no such namespace (known: …)": the namespaces declared in the mapping
/// and those the map holds ids for.
fn unknown_namespace(command: &str, config: &Config, namespace: &str, held: &[String]) -> u8 {
    let mut known: Vec<String> = config
        .mappings
        .iter()
        .flat_map(|m| m.id_maps.keys().cloned())
        .chain(held.iter().cloned())
        .collect();
    known.sort();
    known.dedup();
    let known = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    eprintln!("ferry idmap {command}: no such namespace {namespace:?} (known: {known})");
    exit::MISMATCH
}

async fn lookup(config: &Path, namespace: &str, id: &str) -> u8 {
    let config = match load(config, "idmap lookup") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut held = None;
    let found = match &config.sink {
        SinkConfig::Postgres(dst) => {
            let mut sink = PostgresSink::new(dst.clone(), config.pipeline.name.clone());
            let found = sink.id_map_lookup(namespace, id).await;
            if matches!(&found, Ok(p) if p.is_empty()) {
                held = sink.id_map_namespaces().await.ok();
            }
            found
        }
        SinkConfig::Convex(dst) => {
            let mut sink = ConvexSink::new(dst.clone(), config.pipeline.name.clone());
            let mut pairs = Vec::new();
            let mut result = Ok(());
            for form in ferry_pipeline::id_map::lookup_forms(id) {
                match sink.id_map_lookup(namespace, &form).await {
                    Ok(p) => pairs.extend(p.into_iter().map(|p| IdPair {
                        legacy: p.legacy,
                        new: p.new,
                    })),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            result.map(|()| pairs)
        }
        SinkConfig::Mongodb(_) => Err(ferry_pipeline::error::PipelineError::fatal(
            ferry_pipeline::error::Stage::Sink,
            "the MongoDB sink keeps no id map",
        )),
    };
    match found {
        Ok(pairs) if pairs.is_empty() => {
            let declared = config
                .mappings
                .as_ref()
                .is_some_and(|m| m.id_maps.contains_key(namespace));
            match held {
                Some(held) if !declared && !held.iter().any(|n| n == namespace) => {
                    unknown_namespace("lookup", &config, namespace, &held)
                }
                _ => {
                    eprintln!(
                        "ferry idmap lookup: {namespace} has no id {id:?} (neither legacy nor new)"
                    );
                    exit::MISMATCH
                }
            }
        }
        Ok(pairs) => {
            let forms = ferry_pipeline::id_map::lookup_forms(id);
            for IdPair { legacy, new } in pairs {
                if forms.contains(&legacy) {
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

async fn export(config: &Path, namespace: &str, output: Option<&Path>) -> u8 {
    let config = match load(config, "idmap export") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let SinkConfig::Postgres(dst) = &config.sink else {
        eprintln!("ferry idmap export: only a PostgreSQL target's map can be exported yet");
        return exit::CONFIG;
    };
    let mut sink = PostgresSink::new(dst.clone(), config.pipeline.name.clone());
    let held = match sink.id_map_namespaces().await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ferry idmap export: {e}");
            return exit::UNVERIFIED;
        }
    };
    if !held.iter().any(|n| n == namespace) {
        return unknown_namespace("export", &config, namespace, &held);
    }
    let mut out: Box<dyn std::io::Write> = match output {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("ferry idmap export: cannot write {}: {e}", path.display());
                return exit::CONFIG;
            }
        },
        None => Box::new(std::io::stdout().lock()),
    };
    let written = sink.id_map_export(namespace, &mut out).await;
    match written.and_then(|n| {
        out.flush().map(|()| n).map_err(|e| {
            ferry_pipeline::error::PipelineError::new(
                ferry_pipeline::error::ErrorClass::Fatal,
                ferry_pipeline::error::Stage::Sink,
                format!("write the id-map export: {e}"),
            )
        })
    }) {
        Ok(_) => exit::OK,
        Err(e) => {
            eprintln!("ferry idmap export: {e}");
            exit::UNVERIFIED
        }
    }
}
