//! The transform stage: a source change → changes of the target's tables,
//! following the mapping (docs/mappings.md).
//!
//! A [`Transformer`] is compiled once from the mapping file and the live
//! target catalog; compiling is where the mapping is checked against the
//! target (`ferry mapping check` prints the same findings). Applying it is
//! pure CPU: it never allocates ids (the sink does, in the batch's
//! transaction, see [`crate::id_map`]) and never does I/O. A record that a
//! rule rejects comes back as a [`Rejected`] that the runtime parks in the
//! dead-letter queue with the source change, so that a replay runs it
//! through the mapping again.
//!
//! Where things live: `plan` compiles one table mapping into a plan of
//! columns, `child` adds what child tables need (link columns, array
//! elements as rows), `coerce` turns a value into a target column's type,
//! `record` reads a source row's fields and `apply` runs a plan over a
//! source change.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::event::{ChangeEvent, TableId, TableSchema};
use crate::id_map;
use crate::mapping::Mappings;
use crate::value::Value;

mod apply;
mod child;
mod coerce;
pub mod inverse;
mod plan;
mod record;

use plan::Plan;

/// One column of a target table, as the target's catalog declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetColumn {
    pub name: String,
    /// `format_type` text, with modifiers: `numeric(12,2)`.
    pub type_sql: String,
    pub nullable: bool,
    /// A column default (or identity / generated): left alone unless a
    /// rule names the column.
    pub has_default: bool,
}

/// A target table as its catalog declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTable {
    pub id: TableId,
    pub columns: Vec<TargetColumn>,
    /// Primary-key column names, in key order.
    pub primary_key: Vec<String>,
}

impl TargetTable {
    fn column(&self, name: &str) -> Option<&TargetColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// One problem of a mapping against the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The mapping key (`mappings.tables[0].columns.amount`).
    pub key: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A record that a rule refused; it goes to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The rule's stable name (`needs_rounding`, `unmapped_field`, …),
    /// the dead-letter record's error code.
    pub rule: String,
    /// Names the table, the key, the field path and the raw value.
    pub message: String,
    /// The source field paths the refusal is about (for `unmapped_field`,
    /// every leaf path no rule took: `meta.flag`), for tools that count
    /// them over many records (`ferry mapping check --sample`).
    pub fields: Vec<String>,
}

/// What a mapped change becomes.
#[derive(Debug, Clone)]
pub enum Output {
    /// A change of a target table, ready for the batch.
    Change(ChangeEvent),
    /// Delete the rows of a child table whose parent key is `parent_key`
    /// and whose position is `keep_below` or more.
    Prune {
        table: Arc<TableSchema>,
        parent_key: Vec<Value>,
        keep_below: i64,
    },
}

/// Mapped source tables, compiled against the target.
#[derive(Debug, Default)]
pub struct Transformer {
    tables: HashMap<TableId, Plan>,
}

/// `buyerId` → `buyer_id`, `HTTPStatus` → `http_status`.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1);
            let boundary = match prev {
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else if c == '-' || c == ' ' {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}

impl Transformer {
    /// The target tables the mappings write to (parents and children).
    pub fn targets(mappings: &Mappings) -> Vec<TableId> {
        let mut out = Vec::new();
        for t in &mappings.tables {
            out.extend(TableId::parse(&t.target));
            for c in &t.children {
                out.extend(TableId::parse(&c.target));
            }
        }
        out
    }

    /// The catalog of a target without a schema (the MongoDB sink: a
    /// document takes any field): each mapped table has the columns its
    /// rules name, the key `_id` when a rule names it; id-mapped columns
    /// hold id text, every other column takes values as they come (the
    /// sink's codec types them: a decimal becomes a Decimal128).
    pub fn schemaless_catalog(mappings: &Mappings) -> HashMap<TableId, TargetTable> {
        let mut out = HashMap::new();
        for t in &mappings.tables {
            let Some(id) = TableId::parse(&t.target) else {
                continue;
            };
            let columns: Vec<TargetColumn> = t
                .columns
                .iter()
                .map(|(name, spec)| TargetColumn {
                    name: name.clone(),
                    type_sql: if spec.rule().id_map.is_some() {
                        "text".into()
                    } else {
                        "any".into()
                    },
                    nullable: name != "_id",
                    has_default: false,
                })
                .collect();
            let primary_key = if t.columns.contains_key("_id") {
                vec!["_id".to_string()]
            } else {
                Vec::new()
            };
            out.insert(
                id.clone(),
                TargetTable {
                    id,
                    columns,
                    primary_key,
                },
            );
        }
        out
    }

    /// Compiles `mappings` (already validated) against the target's
    /// catalog (`None` for a table that does not exist). Every problem is
    /// reported, not only the first.
    pub fn compile(
        mappings: &Mappings,
        catalog: &HashMap<TableId, TargetTable>,
    ) -> Result<Transformer, Vec<Finding>> {
        let mut findings = Vec::new();
        let tables = mappings
            .tables
            .iter()
            .enumerate()
            .filter_map(|(i, t)| plan::compile_table(mappings, catalog, i, t, &mut findings))
            .collect();
        if findings.is_empty() {
            Ok(Transformer { tables })
        } else {
            Err(findings)
        }
    }

    /// Whether changes of `table` are mapped.
    pub fn maps(&self, table: &TableId) -> bool {
        self.tables.contains_key(table)
    }

    /// The target tables (parent first, then children) a mapped source
    /// table writes to; `None` when the table is not mapped.
    pub fn target_schemas(&self, source: &TableId) -> Option<Vec<Arc<TableSchema>>> {
        let plan = self.tables.get(source)?;
        let mut out = vec![Arc::clone(&plan.schema)];
        out.extend(plan.children.iter().map(|c| Arc::clone(&c.plan.schema)));
        Some(out)
    }

    /// Whether `table` is one of the mapping's target tables.
    pub fn is_target(&self, table: &TableId) -> bool {
        self.tables
            .values()
            .any(|p| p.schema.id == *table || p.children.iter().any(|c| c.plan.schema.id == *table))
    }

    /// The target changes of `ev`, or why the record is refused. `None`
    /// when `ev`'s table is not mapped (it is mirrored as is).
    pub fn apply(&self, ev: &ChangeEvent) -> Option<Result<Vec<Output>, Rejected>> {
        let plan = self.tables.get(&ev.table.id)?;
        Some(apply::apply_plan(plan, ev))
    }
}

/// Whether the source record of `ev` (a MongoDB document, a row's
/// columns, into jsonb values) has a field at the dotted `path`, present
/// even if null: what a mapping rule's `from` would find.
pub fn has_field(ev: &ChangeEvent, path: &str) -> bool {
    let Some(row) = ev.after.as_ref() else {
        return false;
    };
    let rec = record::record_of(&ev.table, row);
    let path: Vec<String> = path.split('.').map(str::to_string).collect();
    record::lookup(&rec.fields, &path).is_some()
}

/// The key of a source change's row, as JSON text (for messages and the
/// dead-letter queue).
pub fn source_key(ev: &ChangeEvent) -> String {
    let Some(row) = ev.after.as_ref().or(ev.before.as_ref()) else {
        return "[]".into();
    };
    // Ids as their plain text (a MongoDB `_id` is Extended JSON in its
    // column: `["64b7…"]` reads better than `["{\"$oid\":\"64b7…\"}"]`).
    let values: Vec<Value> = crate::batch::key_values(&ev.table, row)
        .into_iter()
        .map(|v| match id_map::legacy_text(&v) {
            Ok(Some(t)) => Value::Text(t),
            _ => v,
        })
        .collect();
    crate::batch::key_json(&values)
}

#[cfg(test)]
mod tests;
