//! `ferry mapping check --sample N`: the mapping against what the source
//! really holds. Up to N documents (rows) of each mapped source table are
//! read the way the pipeline reads them ([`crate::source_rows`]) and run
//! through the same compiled [`Transformer`] `ferry run` uses, so that what
//! check reports is what the run would do:
//!
//! - records the run would dead-letter, by rule, with an example;
//! - mapping rules whose `from` field no sampled record has (a typo, or a
//!   field the application stopped writing);
//! - fields records have that no rule maps (they go to `rest`, or are
//!   dropped by `unmapped = "drop"`; with `unmapped = "reject"` they are
//!   dead-lettered and counted above);
//! - source tables no mapping names, which are mirrored as they are.
//!
//! A sample is evidence, not proof: a rule found nowhere in 1,000 records
//! may hold in the 1,001st, so these are warnings and notes; only the
//! schema findings of the compile step fail the check.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use ferry_pipeline::config::{Config, SinkConfig, SourceConfig};
use ferry_pipeline::error::PipelineError;
use ferry_pipeline::event::{ChangeEvent, TableId};
use ferry_pipeline::mapping::{ColumnSpec, Mappings, Unmapped};
use ferry_pipeline::transform::{has_field, Transformer};

/// One line of the sample report.
pub(crate) enum Note {
    /// Something the run would do that the operator should look at.
    Warn(String),
    /// Context: how unmapped fields and tables are handled.
    Info(String),
}

/// How one rule's refusals were met in the sample.
struct Refusals {
    count: usize,
    example: String,
}

/// Samples every mapped source table and reports what the run would do
/// with those records. `Err` when the source cannot be read (never a pass).
pub(crate) async fn sample(
    config: &Config,
    mappings: &Mappings,
    transformer: &Transformer,
    n: u32,
) -> Result<Vec<Note>, PipelineError> {
    let mut notes = Vec::new();
    // The same mapping with every table strict and without `rest`: its
    // `unmapped_field` refusals name the fields no rule takes. `None` when
    // it does not compile (a NOT NULL `rest` column): then unmapped fields
    // are not listed.
    let strict = strict_transformer(config, mappings).await;
    let mut pg_source = None;
    for (i, t) in mappings.tables.iter().enumerate() {
        let Some(source) = TableId::parse(&t.source) else {
            continue;
        };
        let mut rows: Vec<ChangeEvent> = Vec::new();
        match &config.source {
            SourceConfig::Mongodb(src) => {
                crate::source_rows::read_mongo(src, &source, Some(n), &mut rows).await?
            }
            SourceConfig::Postgres(src) => {
                if pg_source.is_none() {
                    let info = ferry_postgres_source::conn_info(src).map_err(|e| {
                        PipelineError::fatal(ferry_pipeline::error::Stage::Source, e)
                    })?;
                    pg_source = Some(
                        info.connect(ferry_pipeline::error::Stage::Source, "source")
                            .await?,
                    );
                }
                let sc = pg_source.as_ref().expect("connected above");
                crate::source_rows::read_postgres(sc, &source, Some(u64::from(n)), &mut rows)
                    .await?
            }
            SourceConfig::Sqlite(_) | SourceConfig::Convex(_) => {
                notes.push(Note::Info(format!(
                    "mappings.tables[{i}] ({source}): sampling reads PostgreSQL and MongoDB sources only; not sampled"
                )));
                continue;
            }
        }
        let label = format!("mappings.tables[{i}] ({source})");
        if rows.is_empty() {
            notes.push(Note::Info(format!("{label}: no records to sample")));
            continue;
        }
        let sampled = rows.len();
        let what = if matches!(config.source, SourceConfig::Mongodb(_)) {
            "documents"
        } else {
            "rows"
        };

        // What the run would dead-letter.
        let mut refused: BTreeMap<String, Refusals> = BTreeMap::new();
        for ev in &rows {
            if let Some(Err(r)) = transformer.apply(ev) {
                let e = refused.entry(r.rule.clone()).or_insert(Refusals {
                    count: 0,
                    example: r.message.clone(),
                });
                e.count += 1;
            }
        }
        if !refused.is_empty() {
            let total: usize = refused.values().map(|r| r.count).sum();
            let mut line =
                format!("{label}: {total} of {sampled} sampled {what} would be dead-lettered:");
            for (rule, r) in &refused {
                line.push_str(&format!(
                    "\n         {rule} × {}, e.g. {}",
                    r.count, r.example
                ));
            }
            notes.push(Note::Warn(line));
        }

        // Rules whose field no sampled record has.
        for (col, spec) in &t.columns {
            let from = match spec {
                ColumnSpec::Path(p) => Some(p.as_str()),
                ColumnSpec::Rule(r) => r.from.as_deref(),
            };
            let Some(from) = from else { continue };
            if !rows.iter().any(|ev| has_field(ev, from)) {
                notes.push(Note::Warn(format!(
                    "mappings.tables[{i}].columns.{col}: none of {sampled} sampled {what} of {source} has a field {from:?}"
                )));
            }
        }
        for (j, c) in t.children.iter().enumerate() {
            if !rows.iter().any(|ev| has_field(ev, &c.from)) {
                notes.push(Note::Warn(format!(
                    "mappings.tables[{i}].children[{j}]: none of {sampled} sampled {what} of {source} has a field {:?}",
                    c.from
                )));
            }
        }

        // Fields no rule maps, when the run keeps the record.
        if let Some(strict) = &strict {
            let mut unmapped: BTreeMap<String, usize> = BTreeMap::new();
            for ev in &rows {
                if !matches!(transformer.apply(ev), Some(Ok(_))) {
                    continue;
                }
                if let Some(Err(r)) = strict.apply(ev) {
                    if r.rule == "unmapped_field" {
                        let unique: HashSet<&String> = r.fields.iter().collect();
                        for f in unique {
                            *unmapped.entry(f.clone()).or_default() += 1;
                        }
                    }
                }
            }
            if !unmapped.is_empty() {
                let fate = match (&t.rest, t.unmapped) {
                    (Some(rest), _) => format!("go to the rest column {rest:?}"),
                    (None, Unmapped::Drop) => "are dropped (unmapped = \"drop\")".to_string(),
                    (None, Unmapped::Reject) => "are refused".to_string(),
                };
                let list: Vec<String> = unmapped
                    .iter()
                    .map(|(f, c)| format!("{f} ({c} of {sampled})"))
                    .collect();
                notes.push(Note::Info(format!(
                    "{label}: fields of sampled {what} that no rule maps {fate}: {}",
                    list.join(", ")
                )));
            }
        }
    }
    unmapped_tables(config, mappings, &mut notes).await?;
    Ok(notes)
}

/// The configured mapping with every table (and child) refusing unmapped
/// fields and without `rest`, compiled against the same target.
async fn strict_transformer(config: &Config, mappings: &Mappings) -> Option<Arc<Transformer>> {
    let mut strict = mappings.clone();
    for t in &mut strict.tables {
        t.rest = None;
        t.unmapped = Unmapped::Reject;
        for c in &mut t.children {
            c.rest = None;
            c.unmapped = Unmapped::Reject;
        }
    }
    let mut strict_config = config.clone();
    strict_config.mappings = Some(strict);
    crate::mapping::transformer(&strict_config)
        .await
        .ok()
        .flatten()
}

/// Source tables the pipeline mirrors that no mapping names: said, with
/// where they land (a MongoDB collection as `_id` + `document`).
async fn unmapped_tables(
    config: &Config,
    mappings: &Mappings,
    notes: &mut Vec<Note>,
) -> Result<(), PipelineError> {
    let mapped: HashSet<TableId> = mappings
        .tables
        .iter()
        .filter_map(|t| TableId::parse(&t.source))
        .collect();
    let target_schema = match &config.sink {
        SinkConfig::Postgres(p) => p.schema.clone(),
        _ => None,
    };
    let (tables, shape) = match &config.source {
        SourceConfig::Mongodb(src) => {
            let mut names = src.collections.clone();
            if names.is_empty() {
                let client =
                    ferry_mongodb_source::config::connect(src.url.expose(), "source").await?;
                names = client
                    .database(&src.database)
                    .list_collection_names()
                    .await
                    .map_err(|e| {
                        PipelineError::fatal(
                            ferry_pipeline::error::Stage::Source,
                            format!("list the collections of {}: {e}", src.database),
                        )
                    })?
                    .into_iter()
                    .filter(|n| !n.starts_with("system."))
                    .collect();
                names.sort();
            }
            let tables: Vec<TableId> = names
                .into_iter()
                .map(|n| TableId::new(src.database.clone(), n))
                .collect();
            (tables, "as _id + document (jsonb)")
        }
        other => (other.tables(), "as it is"),
    };
    for t in tables.iter().filter(|t| !mapped.contains(t)) {
        let schema = target_schema.clone().unwrap_or_else(|| t.schema.clone());
        let target = TableId::new(schema, t.name.clone());
        notes.push(Note::Info(format!(
            "{t}: no mapping names it; it is mirrored {shape} into {target} (created if missing)"
        )));
    }
    Ok(())
}
