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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::decimal::{self, DecimalTarget};
use crate::event::{ChangeEvent, ChildLink, Column, Datum, Op, Row, TableId, TableSchema};
use crate::id_map::{self, IdRef, OnMissing};
use crate::json::json_text;
use crate::mapping::{split_path, ColumnSpec, Mappings, Unmapped};
use crate::value::{Numeric, TemporalKind, Value};

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

/// How a value becomes the column's type.
#[derive(Debug, Clone)]
enum Coercion {
    Decimal(DecimalTarget),
    Int {
        min: i64,
        max: i64,
    },
    Text,
    Bool,
    Uuid,
    Temporal(TemporalKind),
    Json,
    /// The legacy id's text; the sink translates it.
    Id,
    /// Any other type: the value as is, read by the target.
    AsIs,
}

/// Where a column's value comes from.
#[derive(Debug, Clone)]
enum From {
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
struct ColumnPlan {
    from: From,
    default: Option<Value>,
    coercion: Coercion,
}

/// A compiled table mapping (a target table's rules).
#[derive(Debug)]
struct Plan {
    schema: Arc<TableSchema>,
    /// Parallel to `schema.columns`.
    columns: Vec<ColumnPlan>,
    /// Paths that explicit rules (and child tables) take.
    taken: Vec<Vec<String>>,
    /// Paths `drop` removes.
    drop: Vec<Vec<String>>,
    /// Top-level fields that paths enter: a jsonb value there (PostgreSQL
    /// sources) is parsed once per record rather than once per path.
    entered: Vec<String>,
    /// Automatic mapping: a top-level field's name (as written in the
    /// source) → column index; built from the target's columns.
    auto: HashMap<String, usize>,
    snake_case: bool,
    unmapped: Unmapped,
    children: Vec<ChildPlan>,
}

#[derive(Debug)]
struct ChildPlan {
    from: Vec<String>,
    plan: Plan,
}

/// Mapped source tables, compiled against the target.
#[derive(Debug, Default)]
pub struct Transformer {
    tables: HashMap<TableId, Plan>,
}

fn finding(key: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding {
        key: key.into(),
        message: message.into(),
    }
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

/// The type without modifiers, lowercased: `numeric(12,2)` → `numeric`.
fn base_type(type_sql: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for ch in type_sql.chars() {
        match ch {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out.trim().to_lowercase()
}

/// Whether a column of `type_sql` can hold the new ids of `kind`.
fn id_fits(kind: crate::id_map::IdKind, type_sql: &str) -> bool {
    let base = base_type(type_sql);
    match kind.is_uuid() {
        true => matches!(base.as_str(), "uuid" | "text" | "character varying"),
        false => matches!(
            base.as_str(),
            "bigint" | "numeric" | "text" | "character varying"
        ),
    }
}

fn coercion_for(
    col: &TargetColumn,
    round: Option<decimal::RoundingMode>,
) -> Result<Coercion, String> {
    let base = base_type(&col.type_sql);
    if base.ends_with("[]") {
        return Ok(Coercion::AsIs);
    }
    Ok(match base.as_str() {
        "numeric" => {
            let mut t = DecimalTarget::from_type_sql(&col.type_sql, col.nullable)
                .map_err(|e| e.to_string())?;
            t.rounding = round;
            Coercion::Decimal(t)
        }
        "smallint" => Coercion::Int {
            min: i16::MIN.into(),
            max: i16::MAX.into(),
        },
        "integer" => Coercion::Int {
            min: i32::MIN.into(),
            max: i32::MAX.into(),
        },
        "bigint" => Coercion::Int {
            min: i64::MIN,
            max: i64::MAX,
        },
        "text" | "character varying" | "character" | "bpchar" | "name" | "citext" => Coercion::Text,
        "boolean" => Coercion::Bool,
        "uuid" => Coercion::Uuid,
        "timestamp with time zone" => Coercion::Temporal(TemporalKind::Timestamptz),
        "timestamp without time zone" => Coercion::Temporal(TemporalKind::Timestamp),
        "date" => Coercion::Temporal(TemporalKind::Date),
        "json" | "jsonb" => Coercion::Json,
        _ => Coercion::AsIs,
    })
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

/// What one table mapping (parent or child) says, before compiling.
struct Rules<'a> {
    key: String,
    target: &'a str,
    snake_case: bool,
    rest: Option<&'a str>,
    drop: &'a [String],
    unmapped: Unmapped,
    columns: &'a std::collections::BTreeMap<String, ColumnSpec>,
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

    /// Compiles `mappings` (already validated) against the target's
    /// catalog (`None` for a table that does not exist). Every problem is
    /// reported, not only the first.
    pub fn compile(
        mappings: &Mappings,
        catalog: &HashMap<TableId, TargetTable>,
    ) -> Result<Transformer, Vec<Finding>> {
        let mut findings = Vec::new();
        let mut tables = HashMap::new();
        for (i, t) in mappings.tables.iter().enumerate() {
            let key = format!("mappings.tables[{i}]");
            let Some(source) = TableId::parse(&t.source) else {
                continue;
            };
            let rules = Rules {
                key: key.clone(),
                target: &t.target,
                snake_case: t.snake_case,
                rest: t.rest.as_deref(),
                drop: &t.drop,
                unmapped: t.unmapped,
                columns: &t.columns,
            };
            let mut extra_taken: Vec<Vec<String>> =
                t.children.iter().map(|c| split_path(&c.from)).collect();
            let Some(mut plan) = compile_plan(
                mappings,
                catalog,
                &rules,
                None,
                &mut extra_taken,
                &mut findings,
            ) else {
                continue;
            };
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
                if let Some(child) = compile_plan(
                    mappings,
                    catalog,
                    &rules,
                    Some(link),
                    &mut Vec::new(),
                    &mut findings,
                ) {
                    plan.children.push(ChildPlan {
                        from: split_path(&c.from),
                        plan: child,
                    });
                }
            }
            tables.insert(source, plan);
        }
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
        Some(apply_plan(plan, ev))
    }
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

fn compile_plan(
    mappings: &Mappings,
    catalog: &HashMap<TableId, TargetTable>,
    rules: &Rules<'_>,
    parent: Option<(&[String], &str, &Arc<TableSchema>)>,
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
    let mut columns: Vec<Column> = Vec::new();
    let mut plans: Vec<ColumnPlan> = Vec::new();
    let drop: Vec<Vec<String>> = rules.drop.iter().map(|d| split_path(d)).collect();
    let mut taken: Vec<Vec<String>> = Vec::new();
    taken.append(extra_taken);
    let mut named: HashSet<&str> = HashSet::new();
    // Child tables: the parent's key and the element's position.
    let mut link_cols: Vec<String> = Vec::new();
    if let Some((parent_key, position, parent_schema)) = parent {
        let parent_keys: Vec<&Column> = parent_schema.key_columns().collect();
        if parent_key.len() != parent_keys.len() {
            findings.push(finding(
                format!("{key}.parent_key"),
                format!(
                    "names {} column(s); the parent {} has {} key column(s)",
                    parent_key.len(),
                    parent_schema.id,
                    parent_keys.len()
                ),
            ));
        }
        for (i, (name, pk)) in parent_key.iter().zip(&parent_keys).enumerate() {
            match target.column(name) {
                None => findings.push(finding(
                    format!("{key}.parent_key"),
                    format!("{target_id} has no column {name:?}"),
                )),
                Some(tc) => {
                    // The parent's key value as the parent wrote it: a
                    // legacy id stays one (the sink translates it in the
                    // same namespace).
                    let id_map = pk.id_map.clone().map(|r| IdRef {
                        on_missing: OnMissing::Allocate,
                        ..r
                    });
                    if let Some(r) = &id_map {
                        if !id_fits(r.kind, &tc.type_sql) {
                            findings.push(finding(
                                format!("{key}.parent_key"),
                                format!(
                                    "the parent's key gets {} ids from id map {:?}; {target_id}.{name} is {}",
                                    if r.kind.is_uuid() { "uuid" } else { "bigint" },
                                    r.namespace,
                                    tc.type_sql
                                ),
                            ));
                        }
                    } else if base_type(&tc.type_sql) != base_type(&pk.type_sql) {
                        findings.push(finding(
                            format!("{key}.parent_key"),
                            format!(
                                "{target_id}.{name} is {}, the parent's key {} is {}",
                                tc.type_sql, pk.name, pk.type_sql
                            ),
                        ));
                    }
                    let coercion = if id_map.is_some() {
                        Coercion::Id
                    } else {
                        Coercion::AsIs
                    };
                    push_col(
                        &mut columns,
                        &mut plans,
                        target,
                        tc,
                        ColumnPlan {
                            from: From::ParentKey(i),
                            default: None,
                            coercion,
                        },
                        id_map,
                    );
                    link_cols.push(name.clone());
                }
            }
        }
        match target.column(position) {
            None => findings.push(finding(
                format!("{key}.position"),
                format!("{target_id} has no column {position:?}"),
            )),
            Some(tc) => match coercion_for(tc, None) {
                Ok(c @ Coercion::Int { .. }) => {
                    push_col(
                        &mut columns,
                        &mut plans,
                        target,
                        tc,
                        ColumnPlan {
                            from: From::Position,
                            default: None,
                            coercion: c,
                        },
                        None,
                    );
                    link_cols.push(position.to_string());
                }
                _ => findings.push(finding(
                    format!("{key}.position"),
                    format!(
                        "{target_id}.{position} is {}, not an integer type",
                        tc.type_sql
                    ),
                )),
            },
        }
        let mut want: Vec<&str> = link_cols.iter().map(String::as_str).collect();
        let mut have: Vec<&str> = target.primary_key.iter().map(String::as_str).collect();
        want.sort_unstable();
        have.sort_unstable();
        if want != have {
            findings.push(finding(
                format!("{key}.target"),
                format!(
                    "the primary key of {target_id} is ({}); a child table's must be parent_key + position ({})",
                    target.primary_key.join(", "),
                    link_cols.join(", ")
                ),
            ));
        }
    }

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
            Some(ns) => {
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
                    namespace: ns.clone(),
                    kind,
                    on_missing: if is_key {
                        OnMissing::Allocate
                    } else {
                        rule.on_missing.unwrap_or_default()
                    },
                    field: rule.from.clone().unwrap_or_default(),
                })
            }
        };
        let coercion = if id_map.is_some() {
            Coercion::Id
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
                        tc.type_sql, r.1
                    ),
                ));
            }
        }
        let from = match &rule.from {
            Some(p) => {
                let path = split_path(p);
                taken.push(path.clone());
                From::Path(path)
            }
            None => From::Constant,
        };
        push_col(
            &mut columns,
            &mut plans,
            target,
            tc,
            ColumnPlan {
                from,
                default,
                coercion,
            },
            id_map,
        );
    }

    if let Some(r) = rules.rest {
        match target.column(r) {
            None => findings.push(finding(
                format!("{key}.rest"),
                format!("{target_id} has no column {r:?}"),
            )),
            Some(tc) if !matches!(base_type(&tc.type_sql).as_str(), "jsonb" | "json") => findings
                .push(finding(
                    format!("{key}.rest"),
                    format!("{target_id}.{r} is {}, not jsonb", tc.type_sql),
                )),
            Some(tc) => {
                named.insert(r);
                push_col(
                    &mut columns,
                    &mut plans,
                    target,
                    tc,
                    ColumnPlan {
                        from: From::Rest,
                        default: None,
                        coercion: Coercion::Json,
                    },
                    None,
                );
            }
        }
    }

    // Automatic mapping by name: every other column without a default.
    let mut auto = HashMap::new();
    for tc in &target.columns {
        if named.contains(tc.name.as_str()) || link_cols.contains(&tc.name) || tc.has_default {
            continue;
        }
        let Ok(coercion) = coercion_for(tc, None) else {
            continue;
        };
        auto.insert(tc.name.clone(), columns.len());
        push_col(
            &mut columns,
            &mut plans,
            target,
            tc,
            ColumnPlan {
                from: From::Field(tc.name.clone()),
                default: None,
                coercion,
            },
            None,
        );
    }

    let primary_key: Vec<usize> = target
        .primary_key
        .iter()
        .filter_map(|k| columns.iter().position(|c| &c.name == k))
        .collect();
    for k in &target.primary_key {
        if !columns.iter().any(|c| &c.name == k) {
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
    // A parent with findings still compiles (so that its children are
    // checked too: every problem is reported); the whole mapping is
    // refused anyway. A child with findings may lack its link columns.
    if findings.len() > before && parent.is_some() {
        return None;
    }
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
        entered: {
            let mut e: Vec<String> = taken
                .iter()
                .chain(&drop)
                .filter(|p| p.len() > 1)
                .map(|p| p[0].clone())
                .collect();
            e.sort();
            e.dedup();
            e
        },
        columns: plans,
        taken,
        drop,
        auto,
        snake_case: rules.snake_case,
        unmapped: rules.unmapped,
        children: Vec::new(),
    })
}

fn push_col(
    columns: &mut Vec<Column>,
    plans: &mut Vec<ColumnPlan>,
    target: &TargetTable,
    tc: &TargetColumn,
    plan: ColumnPlan,
    id_map: Option<IdRef>,
) {
    columns.push(Column {
        name: tc.name.clone(),
        type_oid: 0,
        type_sql: tc.type_sql.clone(),
        nullable: tc.nullable,
        is_key: target.primary_key.contains(&tc.name),
        enum_labels: None,
        id_map,
    });
    plans.push(plan);
}

/// A record's fields: a MongoDB-shaped row's document (or, for a delete,
/// its `_id`), or a table row's columns by name. Unchanged TOAST values
/// are listed apart: anything derived from them is unchanged too.
struct Record {
    fields: Vec<(String, Value)>,
    unchanged: HashSet<String>,
}

fn record_of(schema: &TableSchema, row: &Row) -> Record {
    let doc_col = schema
        .columns
        .iter()
        .position(|c| c.name == "document" && c.type_sql == "jsonb");
    let id_col = schema.columns.iter().position(|c| c.name == "_id");
    if let (Some(d), Some(i)) = (doc_col, id_col) {
        // The MongoDB source's shape: `_id` + the whole document.
        match row.get(d) {
            Some(Datum::Value(Value::Document(fields))) => {
                return Record {
                    fields: fields.clone(),
                    unchanged: HashSet::new(),
                }
            }
            _ => {
                let id = match row.get(i) {
                    Some(Datum::Value(Value::Json(j))) => serde_json::from_str(j)
                        .map(|j| id_map::from_extended_json(&j))
                        .unwrap_or_else(|_| Value::Json(j.clone())),
                    Some(Datum::Value(v)) => v.clone(),
                    _ => Value::Null,
                };
                return Record {
                    fields: vec![("_id".into(), id)],
                    unchanged: HashSet::new(),
                };
            }
        }
    }
    let mut unchanged = HashSet::new();
    let fields = schema
        .columns
        .iter()
        .zip(row)
        .map(|(c, d)| match d {
            Datum::Value(v) => (c.name.clone(), v.clone()),
            Datum::UnchangedToast => {
                unchanged.insert(c.name.clone());
                (c.name.clone(), Value::Null)
            }
        })
        .collect();
    Record { fields, unchanged }
}

/// The value at `path`; `None` when absent. A jsonb value (PostgreSQL
/// sources) is entered like a document.
fn lookup<'a>(
    fields: &'a [(String, Value)],
    path: &[String],
) -> Option<std::borrow::Cow<'a, Value>> {
    use std::borrow::Cow;
    let (first, rest) = path.split_first()?;
    let v = fields.iter().find(|(n, _)| n == first).map(|(_, v)| v)?;
    if rest.is_empty() {
        return Some(Cow::Borrowed(v));
    }
    match v {
        Value::Document(inner) => lookup(inner, rest),
        Value::Json(text) => {
            let root: serde_json::Value = serde_json::from_str(text).ok()?;
            let mut j = &root;
            for p in rest {
                j = j.get(p)?;
            }
            Some(Cow::Owned(json_to_value(j)))
        }
        _ => None,
    }
}

fn json_to_value(j: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match j {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => n
                .to_string()
                .parse()
                .map(Value::Numeric)
                .unwrap_or_else(|_| Value::Json(n.to_string())),
        },
        J::String(s) => Value::Text(s.clone()),
        J::Array(items) => Value::Array(items.iter().map(json_to_value).collect()),
        J::Object(o) => Value::Document(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        ),
    }
}

/// Removes `path` from `fields`; a subdocument emptied by the removal goes
/// too.
fn remove_path(fields: &mut Vec<(String, Value)>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(i) = fields.iter().position(|(n, _)| n == first) else {
        return;
    };
    if rest.is_empty() {
        fields.remove(i);
        return;
    }
    // A jsonb value (PostgreSQL sources) is entered like a document.
    if let Value::Json(text) = &fields[i].1 {
        if let Ok(j) = serde_json::from_str::<serde_json::Value>(text) {
            if j.is_object() {
                fields[i].1 = json_to_value(&j);
            }
        }
    }
    if let Value::Document(inner) = &mut fields[i].1 {
        remove_path(inner, rest);
        if inner.is_empty() {
            fields.remove(i);
        }
    }
}

/// A short, exact rendering of a value for messages.
fn raw(v: &Value) -> String {
    let t = match v {
        Value::Null => "null".to_string(),
        Value::Text(s) => format!("{s:?}"),
        other => json_text(other),
    };
    if t.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|&i| t.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}…", &t[..cut])
    } else {
        t
    }
}

fn not_coercible(v: &Value, what: &str) -> (String, String) {
    ("not_coercible".into(), format!("{} is not {what}", raw(v)))
}

/// Coerces a value to a column's type, or says which rule refuses it.
fn coerce(v: Value, c: &Coercion) -> Result<Value, (String, String)> {
    if v.is_null() {
        return match c {
            Coercion::Decimal(t) => {
                decimal::normalize(&v, t).map_err(|r| (r.rule.as_str().to_string(), r.message))
            }
            _ => Ok(Value::Null),
        };
    }
    match c {
        Coercion::Decimal(t) => {
            decimal::normalize(&v, t).map_err(|r| (r.rule.as_str().to_string(), r.message))
        }
        Coercion::Int { min, max } => {
            let n: Option<i64> = match &v {
                Value::Int(i) => Some(*i),
                Value::Numeric(Numeric::Finite(_)) | Value::Text(_) | Value::Float(_) => {
                    let text = match &v {
                        Value::Text(s) => s.trim().to_string(),
                        Value::Float(f) if f.is_finite() => format!("{f}"),
                        Value::Float(_) => String::new(),
                        other => crate::json::json_text(other),
                    };
                    integral(&text)
                }
                _ => None,
            };
            match n {
                Some(i) if i >= *min && i <= *max => Ok(Value::Int(i)),
                Some(_) => Err((
                    "not_coercible".into(),
                    format!("{} is out of the column's integer range", raw(&v)),
                )),
                None => Err(not_coercible(&v, "an integer")),
            }
        }
        Coercion::Text => match v {
            Value::Text(_) => Ok(v),
            Value::Int(i) => Ok(Value::Text(i.to_string())),
            Value::Numeric(n) => Ok(Value::Text(n.to_string())),
            Value::Bool(b) => Ok(Value::Text(b.to_string())),
            Value::Uuid(u) => Ok(Value::Text(u.to_string())),
            Value::ObjectId(id) => Ok(Value::Text(crate::value::object_id_hex(&id))),
            Value::Temporal(_, s) => Ok(Value::Text(s)),
            Value::Float(f) => Ok(Value::Text(crate::json::float_text(f))),
            other => Err(not_coercible(&other, "text")),
        },
        Coercion::Bool => match &v {
            Value::Bool(_) => Ok(v),
            Value::Text(s) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Value::Text(s) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            _ => Err(not_coercible(&v, "a boolean")),
        },
        Coercion::Uuid => match &v {
            Value::Uuid(_) => Ok(v),
            Value::Text(s) => uuid::Uuid::parse_str(s.trim())
                .map(Value::Uuid)
                .map_err(|_| not_coercible(&v, "a UUID")),
            _ => Err(not_coercible(&v, "a UUID")),
        },
        Coercion::Temporal(kind) => match v {
            Value::Temporal(_, s) | Value::Text(s) => Ok(Value::Temporal(*kind, s)),
            Value::Int(_) | Value::Numeric(Numeric::Finite(_)) | Value::Float(_) => {
                let text = match &v {
                    Value::Float(f) => format!("{f}"),
                    other => crate::json::json_text(other),
                };
                epoch_millis_text(&text)
                    .map(|s| Value::Temporal(*kind, s))
                    .ok_or_else(|| not_coercible(&v, "milliseconds since 1970 in range"))
            }
            other => Err(not_coercible(&other, "a date or time")),
        },
        Coercion::Json => Ok(match v {
            Value::Json(_) => v,
            other => Value::Json(json_text(&other)),
        }),
        Coercion::Id => match id_map::legacy_text(&v) {
            Ok(Some(t)) => Ok(Value::Text(t)),
            Ok(None) => Ok(Value::Null),
            Err(e) => Err((
                "bad_id".into(),
                format!(
                    "{} is not an id (a string, a number, an ObjectId or a UUID)",
                    e.0
                ),
            )),
        },
        Coercion::AsIs => Ok(v),
    }
}

/// The integer a decimal text stands for, if it has no fractional part.
fn integral(text: &str) -> Option<i64> {
    let d: crate::value::Decimal = text.parse().ok()?;
    let digits = d.digits();
    let scale = d.scale() as usize;
    let (int, frac) = if scale >= digits.len() {
        ("0", digits)
    } else {
        digits.split_at(digits.len() - scale)
    };
    if frac.bytes().any(|b| b != b'0') && scale > 0 {
        return None;
    }
    // Signed before parsing: i64::MIN has no positive counterpart.
    if d.is_negative() {
        format!("-{int}").parse().ok()
    } else {
        int.parse().ok()
    }
}

/// Milliseconds since the Unix epoch (exact decimal text, fractions down
/// to microseconds) as timestamptz text in UTC.
fn epoch_millis_text(text: &str) -> Option<String> {
    let d: crate::value::Decimal = text.parse().ok()?;
    // Work in microseconds: ms * 1000, exactly.
    let digits = d.digits();
    let scale = d.scale() as usize;
    let (int, frac) = if scale >= digits.len() {
        (String::from("0"), format!("{:0>scale$}", digits))
    } else {
        let (a, b) = digits.split_at(digits.len() - scale);
        (a.to_string(), b.to_string())
    };
    if frac.len() > 3 && frac[3..].bytes().any(|b| b != b'0') {
        return None; // finer than a microsecond
    }
    let ms: i64 = int.parse().ok()?;
    let sub: i64 = format!("{:0<3}", frac.get(..3.min(frac.len())).unwrap_or(""))
        .parse()
        .ok()?;
    let micros = ms.checked_mul(1000)?.checked_add(sub)?;
    let micros = if d.is_negative() { -micros } else { micros };
    let secs = micros.div_euclid(1_000_000);
    let us = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, dd) = civil_from_days(days);
    if !(1..=294_276).contains(&y) {
        return None;
    }
    Some(format!(
        "{y:04}-{m:02}-{dd:02} {:02}:{:02}:{:02}.{us:06}+00",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    ))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A rejection naming the table, the key, the field and the value.
fn reject(ev: &ChangeEvent, path: &str, rule: String, detail: String) -> Rejected {
    Rejected {
        message: format!(
            "{} key {}: field {path:?}: {detail} (rule {rule})",
            ev.table.id,
            source_key(ev)
        ),
        rule,
    }
}

fn path_text(from: &From, column: &str) -> String {
    match from {
        From::Path(p) => p.join("."),
        From::Field(f) => f.clone(),
        _ => column.to_string(),
    }
}

/// One target row of `plan` from `rec`; `parent_key` and `position` for
/// child rows. With `keys_only` (a delete), only the key columns.
fn build_row(
    plan: &Plan,
    ev: &ChangeEvent,
    rec: Record,
    parent_key: &[Value],
    position: i64,
    keys_only: bool,
) -> Result<Row, Rejected> {
    let schema = &plan.schema;
    let mut rec = rec;
    for (name, v) in rec.fields.iter_mut() {
        if let Value::Json(text) = v {
            if plan.entered.contains(name) {
                if let Ok(j @ serde_json::Value::Object(_)) = serde_json::from_str(text) {
                    *v = json_to_value(&j);
                }
            }
        }
    }
    let mut row: Row = vec![Datum::Value(Value::Null); schema.columns.len()];
    // Dropped paths are never written anywhere, not even inside a
    // subdocument that a rule takes whole.
    let dropped = (!keys_only && !plan.drop.is_empty()).then(|| {
        let mut f = rec.fields.clone();
        for d in &plan.drop {
            remove_path(&mut f, d);
        }
        f
    });
    let fields: &[(String, Value)] = dropped.as_deref().unwrap_or(&rec.fields);
    let set = |row: &mut Row, i: usize, value: Value, from: &From| -> Result<(), Rejected> {
        let col = &schema.columns[i];
        let path = || path_text(from, &col.name);
        match coerce(value, &plan.columns[i].coercion) {
            // (A key column without a value is `missing_key`, below.)
            Ok(Value::Null) if !col.nullable && !col.is_key && !keys_only => Err(reject(
                ev,
                &path(),
                "null_in_not_null".into(),
                format!(
                    "column {} is NOT NULL and the field is missing or null",
                    col.name
                ),
            )),
            Ok(v) => {
                row[i] = Datum::Value(v);
                Ok(())
            }
            Err((rule, detail)) => Err(reject(ev, &path(), rule, detail)),
        }
    };

    // Columns with a rule, the parent's key and the position.
    for (i, (col, c)) in schema.columns.iter().zip(&plan.columns).enumerate() {
        if keys_only && !col.is_key {
            continue;
        }
        let value = match &c.from {
            From::Path(p) => {
                if rec.unchanged.contains(&p[0]) {
                    row[i] = Datum::UnchangedToast;
                    continue;
                }
                match lookup(fields, p) {
                    Some(v) => v.into_owned(),
                    // A delete's key comes from what the delete carries,
                    // never from a default (it would name another row).
                    None if keys_only => Value::Null,
                    None => c.default.clone().unwrap_or(Value::Null),
                }
            }
            From::Constant => c.default.clone().unwrap_or(Value::Null),
            From::ParentKey(k) => parent_key.get(*k).cloned().unwrap_or(Value::Null),
            From::Position => Value::Int(position),
            // A delete: a key column matched by name.
            From::Field(name) if keys_only => match fields
                .iter()
                .find(|(n, _)| n == name || (plan.snake_case && snake_case(n) == *name))
            {
                Some((_, v)) => v.clone(),
                None => Value::Null,
            },
            From::Field(_) | From::Rest => continue,
        };
        set(&mut row, i, value, &c.from)?;
    }

    if !keys_only {
        // What no rule took: matched by name, then `rest`, then refused
        // (or dropped).
        let mut left = match dropped {
            Some(f) => f,
            None => rec.fields,
        };
        for p in &plan.taken {
            remove_path(&mut left, p);
        }
        let mut still_left = Vec::with_capacity(left.len());
        for (name, v) in left {
            let col = plan.auto.get(&name).copied().or_else(|| {
                plan.snake_case
                    .then(|| plan.auto.get(&snake_case(&name)).copied())
                    .flatten()
            });
            match col {
                Some(i) if matches!(row[i], Datum::Value(Value::Null)) => {
                    if rec.unchanged.contains(&name) {
                        row[i] = Datum::UnchangedToast;
                        continue;
                    }
                    set(&mut row, i, v, &From::Field(name))?;
                }
                _ => still_left.push((name, v)),
            }
        }
        let left = still_left;
        let rest = plan
            .columns
            .iter()
            .position(|c| matches!(c.from, From::Rest));
        match rest {
            Some(i) => {
                if left.iter().any(|(n, _)| rec.unchanged.contains(n)) {
                    return Err(reject(
                        ev,
                        "(rest)",
                        "unchanged_toast".into(),
                        "an unchanged large value would go to the rest column; use REPLICA IDENTITY FULL on the source table".into(),
                    ));
                }
                if !left.is_empty() {
                    set(&mut row, i, Value::Document(left), &From::Rest)?;
                }
            }
            None if !left.is_empty() && plan.unmapped == Unmapped::Reject => {
                let fields: Vec<String> = left
                    .iter()
                    .map(|(n, v)| format!("{n} = {}", raw(v)))
                    .collect();
                return Err(reject(
                    ev,
                    &left[0].0,
                    "unmapped_field".into(),
                    format!(
                        "no column for {}; map it, add it to `drop`, set `rest`, or set unmapped = \"drop\"",
                        fields.join(", ")
                    ),
                ));
            }
            None => {}
        }
    }
    for &k in &schema.primary_key {
        if matches!(row[k], Datum::Value(Value::Null)) {
            let c = &plan.columns[k];
            return Err(reject(
                ev,
                &path_text(&c.from, &schema.columns[k].name),
                "missing_key".into(),
                format!("no value for key column {}", schema.columns[k].name),
            ));
        }
    }
    Ok(row)
}

fn key_of(schema: &TableSchema, row: &Row) -> Vec<Value> {
    crate::batch::key_values(schema, row)
}

fn change(template: &ChangeEvent, schema: &Arc<TableSchema>, op: Op, row: Row) -> ChangeEvent {
    // Built field by field: cloning the template would copy the whole
    // source document for every output.
    let (before, after) = match op {
        Op::Delete => (Some(row), None),
        Op::Truncate => (None, None),
        _ => (None, Some(row)),
    };
    ChangeEvent {
        table: Arc::clone(schema),
        op,
        before,
        after,
        position: template.position,
        xid: template.xid,
        commit_ts_micros: template.commit_ts_micros,
        resume_token: template.resume_token.clone(),
    }
}

/// The delete of a parent row (`key_row` holds its key) and of all its
/// children.
fn delete_with_children(plan: &Plan, ev: &ChangeEvent, key_row: Row, out: &mut Vec<Output>) {
    let key = key_of(&plan.schema, &key_row);
    for c in &plan.children {
        out.push(Output::Prune {
            table: Arc::clone(&c.plan.schema),
            parent_key: key.clone(),
            keep_below: 0,
        });
    }
    out.push(Output::Change(change(
        ev,
        &plan.schema,
        Op::Delete,
        key_row,
    )));
}

fn apply_plan(plan: &Plan, ev: &ChangeEvent) -> Result<Vec<Output>, Rejected> {
    let mut out = Vec::new();
    match ev.op {
        Op::Truncate => {
            // Children first: they may reference the parent.
            for c in &plan.children {
                out.push(Output::Change(change(
                    ev,
                    &c.plan.schema,
                    Op::Truncate,
                    Vec::new(),
                )));
            }
            out.push(Output::Change(change(
                ev,
                &plan.schema,
                Op::Truncate,
                Vec::new(),
            )));
        }
        Op::Delete => {
            let Some(before) = &ev.before else {
                return Ok(out);
            };
            let row = build_row(plan, ev, record_of(&ev.table, before), &[], 0, true)?;
            delete_with_children(plan, ev, row, &mut out);
        }
        Op::Insert | Op::Read | Op::Update => {
            let Some(after) = &ev.after else {
                return Ok(out);
            };
            let rec = record_of(&ev.table, after);
            // The child arrays, read before the parent's row takes the
            // record; `None`: the array is an unchanged large value.
            let mut arrays = Vec::with_capacity(plan.children.len());
            for c in &plan.children {
                if rec.unchanged.contains(&c.from[0]) {
                    arrays.push(None);
                    continue;
                }
                let path = c.from.join(".");
                let items = match lookup(&rec.fields, &c.from).map(|v| v.into_owned()) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(items)) => items,
                    Some(other) => {
                        return Err(reject(
                            ev,
                            &path,
                            "not_an_array".into(),
                            format!("{} is not an array of subdocuments", raw(&other)),
                        ))
                    }
                };
                arrays.push(Some(items));
            }
            let row = build_row(plan, ev, rec, &[], 0, false)?;
            let key = key_of(&plan.schema, &row);
            // A key-changing update (PostgreSQL sources): the old row goes.
            if let (Op::Update, Some(before)) = (ev.op, &ev.before) {
                let old = build_row(plan, ev, record_of(&ev.table, before), &[], 0, true)?;
                let old_key = key_of(&plan.schema, &old);
                if old_key != key {
                    // The row moves: what the source left unchanged (a
                    // large value, a child array) is only in the old row,
                    // which is deleted here.
                    if row.iter().any(|d| matches!(d, Datum::UnchangedToast))
                        || arrays.iter().any(Option::is_none)
                    {
                        return Err(reject(
                            ev,
                            "(key)",
                            "unchanged_toast".into(),
                            "the key changed and a large value the source left unchanged cannot be moved with it; use REPLICA IDENTITY FULL on the source table".into(),
                        ));
                    }
                    delete_with_children(plan, ev, old, &mut out);
                }
            }
            let op = ev.op;
            out.push(Output::Change(change(ev, &plan.schema, op, row)));
            for (c, items) in plan.children.iter().zip(arrays) {
                let Some(items) = items else { continue };
                let path = c.from.join(".");
                let n = items.len() as i64;
                for (pos, item) in items.into_iter().enumerate() {
                    let Value::Document(fields) = item else {
                        return Err(reject(
                            ev,
                            &format!("{path}[{pos}]"),
                            "not_a_document".into(),
                            format!("{} is not a subdocument", raw(&item)),
                        ));
                    };
                    let erec = Record {
                        fields,
                        unchanged: HashSet::new(),
                    };
                    let crow = build_row(&c.plan, ev, erec, &key, pos as i64, false).map_err(
                        |mut r| {
                            r.message = format!("{} (in {path}[{pos}])", r.message);
                            r
                        },
                    )?;
                    out.push(Output::Change(change(ev, &c.plan.schema, op, crow)));
                }
                out.push(Output::Prune {
                    table: Arc::clone(&c.plan.schema),
                    parent_key: key.clone(),
                    keep_below: n,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
