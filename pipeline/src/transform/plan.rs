//! Compiling one table mapping against the target's catalog into a
//! [`Plan`]: which column takes its value from where, coerced how, and
//! every [`Finding`] of the mapping against the target along the way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::child::{self, ChildPlan};
use super::coerce::{base_type, coerce, coercion_for, id_fits, takes_id_array, Coercion};
use super::{Finding, TargetColumn, TargetTable};
use crate::event::{ChildLink, Column, TableId, TableSchema};
use crate::id_map::{IdRef, OnMissing};
use crate::mapping::{split_path, ColumnRule, ColumnSpec, Mappings, TableMapping, Unmapped};
use crate::value::Value;

/// Where a column's value comes from.
#[derive(Debug, Clone)]
pub(super) enum ValueSource {
    /// An explicit path.
    Path(Vec<String>),
    /// A constant (the rule has only a default).
    Constant,
    /// The top-level field of this name (automatic mapping by name).
    Field(String),
    /// The parent's key value (child tables).
    ParentKey(usize),
    /// The element's index (child tables).
    Position,
    /// Every field nothing else took.
    Rest,
}

#[derive(Debug, Clone)]
pub(super) struct ColumnPlan {
    pub(super) source: ValueSource,
    pub(super) default: Option<Value>,
    pub(super) coercion: Coercion,
}

/// A compiled table mapping (a target table's rules).
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) schema: Arc<TableSchema>,
    /// Parallel to `schema.columns`.
    pub(super) columns: Vec<ColumnPlan>,
    /// Paths that explicit rules (and child tables) take.
    pub(super) taken: Vec<Vec<String>>,
    /// Paths `drop` removes.
    pub(super) drop: Vec<Vec<String>>,
    /// Top-level fields that paths enter: a jsonb value there (PostgreSQL
    /// sources) is parsed once per record rather than once per path.
    pub(super) entered: Vec<String>,
    /// Automatic mapping: a top-level field's name (as written in the
    /// source) → column index; built from the target's columns.
    pub(super) auto: HashMap<String, usize>,
    pub(super) snake_case: bool,
    pub(super) unmapped: Unmapped,
    pub(super) children: Vec<ChildPlan>,
}

/// What one table mapping (parent or child) says, before compiling.
struct Rules<'a> {
    key: String,
    target: &'a str,
    snake_case: bool,
    rest: Option<&'a str>,
    drop: &'a [String],
    unmapped: Unmapped,
    columns: &'a BTreeMap<String, ColumnSpec>,
}

/// A child table's link to its parent, as its mapping names it: the
/// columns receiving the parent's key, the position column, and the
/// parent's compiled schema.
pub(super) type ParentLink<'a> = (&'a [String], &'a str, &'a Arc<TableSchema>);

pub(super) fn finding(key: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding {
        key: key.into(),
        message: message.into(),
    }
}

/// The `i`-th table mapping (`t`) and its children, compiled; `None` when
/// it cannot be (its findings are in `findings`).
pub(super) fn compile_table(
    mappings: &Mappings,
    catalog: &HashMap<TableId, TargetTable>,
    i: usize,
    t: &TableMapping,
    findings: &mut Vec<Finding>,
) -> Option<(TableId, Plan)> {
    let key = format!("mappings.tables[{i}]");
    let source = TableId::parse(&t.source)?;
    let rules = Rules {
        key: key.clone(),
        target: &t.target,
        snake_case: t.snake_case,
        rest: t.rest.as_deref(),
        drop: &t.drop,
        unmapped: t.unmapped,
        columns: &t.columns,
    };
    // The child arrays are the parent's: no parent column takes them.
    let mut extra_taken: Vec<Vec<String>> =
        t.children.iter().map(|c| split_path(&c.from)).collect();
    let mut plan = compile_plan(mappings, catalog, &rules, None, &mut extra_taken, findings)?;
    for (j, c) in t.children.iter().enumerate() {
        let rules = Rules {
            key: format!("{key}.children[{j}]"),
            target: &c.target,
            snake_case: c.snake_case,
            rest: c.rest.as_deref(),
            drop: &c.drop,
            unmapped: c.unmapped,
            columns: &c.columns,
        };
        let link = (&c.parent_key[..], c.position.as_str(), &plan.schema);
        if let (Some(v), Some(target)) = (
            &c.value,
            TableId::parse(&c.target).and_then(|id| catalog.get(&id)),
        ) {
            if target.column(v).is_none() {
                findings.push(finding(
                    format!("{key}.children[{j}].value"),
                    format!("{} has no column {v:?}", c.target),
                ));
            }
        }
        if let Some(child) = compile_plan(
            mappings,
            catalog,
            &rules,
            Some(link),
            &mut Vec::new(),
            findings,
        ) {
            plan.children.push(ChildPlan {
                from: split_path(&c.from),
                plan: child,
                value: c.value.clone(),
            });
        }
    }
    Some((source, plan))
}

/// The target's columns and their plans as compiling adds them: two
/// parallel vectors, the schema's columns and how each is filled.
pub(super) struct PlannedColumns<'t> {
    target: &'t TargetTable,
    pub(super) columns: Vec<Column>,
    plans: Vec<ColumnPlan>,
}

impl<'t> PlannedColumns<'t> {
    fn new(target: &'t TargetTable) -> Self {
        PlannedColumns {
            target,
            columns: Vec::new(),
            plans: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, tc: &TargetColumn, plan: ColumnPlan, id_map: Option<IdRef>) {
        self.columns.push(Column {
            name: tc.name.clone(),
            type_oid: 0,
            type_sql: tc.type_sql.clone(),
            nullable: tc.nullable,
            is_key: self.target.primary_key.contains(&tc.name),
            enum_labels: None,
            id_map,
        });
        self.plans.push(plan);
    }
}

/// One table mapping compiled against `catalog`, in steps: the child's
/// link columns, the explicit rules, `rest`, the automatic mapping by
/// name, then the checks of the whole table. `parent` is set for a child
/// table; `extra_taken` holds paths taken elsewhere (the child arrays).
fn compile_plan(
    mappings: &Mappings,
    catalog: &HashMap<TableId, TargetTable>,
    rules: &Rules<'_>,
    parent: Option<ParentLink<'_>>,
    extra_taken: &mut Vec<Vec<String>>,
    findings: &mut Vec<Finding>,
) -> Option<Plan> {
    let key = &rules.key;
    let target_id = TableId::parse(rules.target)?;
    let Some(target) = catalog.get(&target_id) else {
        findings.push(finding(
            format!("{key}.target"),
            format!("table {target_id} does not exist in the target"),
        ));
        return None;
    };
    let before = findings.len();
    let mut columns = PlannedColumns::new(target);
    let drop: Vec<Vec<String>> = rules.drop.iter().map(|d| split_path(d)).collect();
    let mut taken: Vec<Vec<String>> = Vec::new();
    taken.append(extra_taken);
    let mut named: HashSet<&str> = HashSet::new();
    // Child tables: the parent's key and the element's position.
    let link_cols = match parent {
        Some(link) => child::compile_link(key, &target_id, target, link, &mut columns, findings),
        None => Vec::new(),
    };
    compile_rules(
        mappings,
        rules,
        &target_id,
        target,
        &mut columns,
        &mut taken,
        &mut named,
        findings,
    )?;
    compile_rest(
        rules,
        &target_id,
        target,
        &mut columns,
        &mut named,
        findings,
    );
    let auto = compile_auto(target, &named, &link_cols, &mut columns);
    check_table(
        key, &target_id, target, &columns, &named, &link_cols, findings,
    );

    // A parent with findings still compiles (so that its children are
    // checked too: every problem is reported); the whole mapping is
    // refused anyway. A child with findings may lack its link columns.
    if findings.len() > before && parent.is_some() {
        return None;
    }
    let PlannedColumns { columns, plans, .. } = columns;
    let primary_key: Vec<usize> = target
        .primary_key
        .iter()
        .filter_map(|k| columns.iter().position(|c| &c.name == k))
        .collect();
    let child = parent.map(|_| ChildLink {
        parent_key: (0..link_cols.len() - 1).collect(),
        position: link_cols.len() - 1,
    });
    let schema = Arc::new(TableSchema {
        id: target_id,
        columns,
        primary_key,
        child,
    });
    // Automatic mapping keys by source spelling: the column's own name,
    // and with snake_case any field whose snake_case is the name (looked
    // up per field at apply time).
    Some(Plan {
        schema,
        entered: entered_fields(&taken, &drop),
        columns: plans,
        taken,
        drop,
        auto,
        snake_case: rules.snake_case,
        unmapped: rules.unmapped,
        children: Vec::new(),
    })
}

/// The explicit rules (`columns.<name>`), in the mapping's order. `None`
/// when a rule names an id map the mapping does not declare (validation
/// refuses that before compiling).
#[allow(clippy::too_many_arguments)] // one step of compile_plan: its state, passed explicitly
fn compile_rules<'r>(
    mappings: &Mappings,
    rules: &Rules<'r>,
    target_id: &TableId,
    target: &TargetTable,
    columns: &mut PlannedColumns<'_>,
    taken: &mut Vec<Vec<String>>,
    named: &mut HashSet<&'r str>,
    findings: &mut Vec<Finding>,
) -> Option<()> {
    let key = &rules.key;
    for (name, spec) in rules.columns {
        let ckey = format!("{key}.columns.{name}");
        let rule = spec.rule();
        let Some(tc) = target.column(name) else {
            findings.push(finding(ckey, format!("{target_id} has no column {name:?}")));
            continue;
        };
        named.insert(name.as_str());
        let is_key = target.primary_key.contains(name);
        let id_map = match &rule.id_map {
            None => None,
            Some(ns) => Some(id_ref(
                mappings, &rule, ns, &ckey, target_id, tc, is_key, findings,
            )?),
        };
        let coercion = if id_map.is_some() {
            if takes_id_array(&tc.type_sql) {
                Coercion::IdArray
            } else {
                Coercion::Id
            }
        } else {
            match coercion_for(tc, rule.round) {
                Ok(c) => c,
                Err(e) => {
                    findings.push(finding(ckey.clone(), e));
                    continue;
                }
            }
        };
        if rule.round.is_some() && !matches!(coercion, Coercion::Decimal(_)) {
            findings.push(finding(
                format!("{ckey}.round"),
                format!("{target_id}.{name} is {}, not numeric", tc.type_sql),
            ));
        }
        let default = rule.default.as_ref().map(default_value);
        if let Some(d) = &default {
            if let Err(r) = coerce(d.clone(), &coercion) {
                findings.push(finding(
                    format!("{ckey}.default"),
                    format!(
                        "{target_id}.{name} ({}) cannot take it: {}",
                        tc.type_sql,
                        r.reason()
                    ),
                ));
            }
        }
        let source = match &rule.from {
            Some(p) => {
                let path = split_path(p);
                taken.push(path.clone());
                ValueSource::Path(path)
            }
            None => ValueSource::Constant,
        };
        columns.push(
            tc,
            ColumnPlan {
                source,
                default,
                coercion,
            },
            id_map,
        );
    }
    Some(())
}

/// The id map reference of a rule naming id map `ns`; `None` when the
/// mapping declares no such id map.
#[allow(clippy::too_many_arguments)] // one step of compile_rules: its state, passed explicitly
fn id_ref(
    mappings: &Mappings,
    rule: &ColumnRule,
    ns: &str,
    ckey: &str,
    target_id: &TableId,
    tc: &TargetColumn,
    is_key: bool,
    findings: &mut Vec<Finding>,
) -> Option<IdRef> {
    let name = &tc.name;
    let kind = mappings.id_kind(ns)?;
    if !id_fits(kind, &tc.type_sql) {
        findings.push(finding(
            format!("{ckey}.id_map"),
            format!(
                "id map {ns:?} makes {} ids; {target_id}.{name} is {}",
                if kind.is_uuid() { "uuid" } else { "bigint" },
                tc.type_sql
            ),
        ));
    }
    if is_key && rule.on_missing.is_some() {
        findings.push(finding(
            format!("{ckey}.on_missing"),
            "the row's own key is always allocated; on_missing is for references",
        ));
    }
    Some(IdRef {
        namespace: ns.to_string(),
        kind,
        on_missing: if is_key {
            OnMissing::Allocate
        } else {
            rule.on_missing.unwrap_or_default()
        },
        field: rule.from.clone().unwrap_or_default(),
        sequence: mappings.id_maps.get(ns).and_then(|s| s.sequence.clone()),
    })
}

/// The `rest` column (a jsonb column for every field nothing else took).
fn compile_rest<'r>(
    rules: &Rules<'r>,
    target_id: &TableId,
    target: &TargetTable,
    columns: &mut PlannedColumns<'_>,
    named: &mut HashSet<&'r str>,
    findings: &mut Vec<Finding>,
) {
    let key = &rules.key;
    let Some(r) = rules.rest else {
        return;
    };
    match target.column(r) {
        None => findings.push(finding(
            format!("{key}.rest"),
            format!("{target_id} has no column {r:?}"),
        )),
        Some(tc) if !matches!(base_type(&tc.type_sql).as_str(), "jsonb" | "json") => {
            findings.push(finding(
                format!("{key}.rest"),
                format!("{target_id}.{r} is {}, not jsonb", tc.type_sql),
            ))
        }
        Some(tc) => {
            named.insert(r);
            columns.push(
                tc,
                ColumnPlan {
                    source: ValueSource::Rest,
                    default: None,
                    coercion: Coercion::Json,
                },
                None,
            );
        }
    }
}

/// Automatic mapping by name: every other column without a default.
/// Returns the column's name → its index.
fn compile_auto(
    target: &TargetTable,
    named: &HashSet<&str>,
    link_cols: &[String],
    columns: &mut PlannedColumns<'_>,
) -> HashMap<String, usize> {
    let mut auto = HashMap::new();
    for tc in &target.columns {
        if named.contains(tc.name.as_str()) || link_cols.contains(&tc.name) || tc.has_default {
            continue;
        }
        let Ok(coercion) = coercion_for(tc, None) else {
            continue;
        };
        auto.insert(tc.name.clone(), columns.columns.len());
        columns.push(
            tc,
            ColumnPlan {
                source: ValueSource::Field(tc.name.clone()),
                default: None,
                coercion,
            },
            None,
        );
    }
    auto
}

/// The checks of the whole table once every column is planned: the key
/// is filled, and so is every NOT NULL column without a default.
fn check_table(
    key: &str,
    target_id: &TableId,
    target: &TargetTable,
    columns: &PlannedColumns<'_>,
    named: &HashSet<&str>,
    link_cols: &[String],
    findings: &mut Vec<Finding>,
) {
    for k in &target.primary_key {
        if !columns.columns.iter().any(|c| &c.name == k) {
            findings.push(finding(
                format!("{key}.columns"),
                format!("key column {target_id}.{k} has no rule (and has a default)"),
            ));
        }
    }
    if target.primary_key.is_empty() {
        findings.push(finding(
            format!("{key}.target"),
            format!("{target_id} has no primary key; Ferry writes mapped rows by key"),
        ));
    }
    // A NOT NULL column must have a rule: matching by name depends on
    // fields that only the data shows, so it cannot prove the column a
    // source before anything runs.
    for tc in &target.columns {
        if !tc.nullable
            && !tc.has_default
            && !named.contains(tc.name.as_str())
            && !link_cols.contains(&tc.name)
        {
            findings.push(finding(
                format!("{key}.columns"),
                format!(
                    "{target_id}.{} is NOT NULL, has no default and no rule fills it (name it under columns: matching by name cannot be checked before data arrives)",
                    tc.name
                ),
            ));
        }
    }
}

/// Top-level fields that taken or dropped paths enter, sorted, once each.
fn entered_fields(taken: &[Vec<String>], drop: &[Vec<String>]) -> Vec<String> {
    let mut e: Vec<String> = taken
        .iter()
        .chain(drop)
        .filter(|p| p.len() > 1)
        .map(|p| p[0].clone())
        .collect();
    e.sort();
    e.dedup();
    e
}

/// A TOML default as a value; coerced like any other value later.
fn default_value(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::Text(s.clone()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::Text(d.to_string()),
        // Refused by `Mappings::validate`.
        other => Value::Text(other.to_string()),
    }
}
