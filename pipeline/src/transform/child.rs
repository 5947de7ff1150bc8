//! Child tables: an array of subdocuments in the parent record becomes
//! rows keyed by the parent's key and the element's position.
//!
//! Compiling checks the link columns (parent key + position, which must be
//! the child's primary key); applying reads the arrays and writes one row
//! per element, then prunes the rows of elements that are gone.

use std::collections::HashSet;
use std::sync::Arc;

use super::apply::{build_row, change, reject};
use super::coerce::{base_type, coercion_for, id_fits, raw, Coercion};
use super::plan::{finding, ColumnPlan, ParentLink, Plan, PlannedColumns, ValueSource};
use super::record::{lookup, Record};
use super::{Finding, Output, Rejected, TargetTable};
use crate::event::{ChangeEvent, Column, Op, TableId};
use crate::id_map::{IdRef, OnMissing};
use crate::value::Value;

/// A child table's plan and the path of its array in the parent record.
#[derive(Debug)]
pub(super) struct ChildPlan {
    pub(super) from: Vec<String>,
    pub(super) plan: Plan,
    /// An array of scalars: each element is the field of this name (the
    /// mapping's `value`). `None`: an array of subdocuments.
    pub(super) value: Option<String>,
}

/// Plans the child's link columns (the parent's key, then the position)
/// and checks that they are the child's primary key. Returns their names,
/// in that order.
pub(super) fn compile_link(
    key: &str,
    target_id: &TableId,
    target: &TargetTable,
    (parent_key, position, parent_schema): ParentLink<'_>,
    columns: &mut PlannedColumns<'_>,
    findings: &mut Vec<Finding>,
) -> Vec<String> {
    let mut link_cols: Vec<String> = Vec::new();
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
                columns.push(
                    tc,
                    ColumnPlan {
                        source: ValueSource::ParentKey(i),
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
                columns.push(
                    tc,
                    ColumnPlan {
                        source: ValueSource::Position,
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
    link_cols
}

/// The child arrays of `rec`, one per child plan, read before the
/// parent's row takes the record; `None`: the array is an unchanged large
/// value.
pub(super) fn read_arrays(
    plan: &Plan,
    ev: &ChangeEvent,
    rec: &Record,
) -> Result<Vec<Option<Vec<Value>>>, Rejected> {
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
    Ok(arrays)
}

/// One row of child table `c` per element of `items` (under the parent
/// row keyed `key`), then the prune of the rows past the last element.
pub(super) fn push_rows(
    c: &ChildPlan,
    ev: &ChangeEvent,
    op: Op,
    key: &[Value],
    items: Vec<Value>,
    out: &mut Vec<Output>,
) -> Result<(), Rejected> {
    let path = c.from.join(".");
    let n = items.len() as i64;
    for (pos, item) in items.into_iter().enumerate() {
        let fields = match (item, &c.value) {
            (Value::Document(fields), None) => fields,
            (item @ Value::Document(_), Some(column)) => {
                return Err(reject(
                    ev,
                    &format!("{path}[{pos}]"),
                    "not_a_scalar".into(),
                    format!(
                        "{} is a subdocument; this child table takes the array's elements as scalars into {column} (`value`)",
                        raw(&item)
                    ),
                ))
            }
            (item, Some(column)) => vec![(column.clone(), item)],
            (item, None) => {
                return Err(reject(
                    ev,
                    &format!("{path}[{pos}]"),
                    "not_a_document".into(),
                    format!(
                        "{} is not a subdocument (for an array of scalars, set the child mapping's `value` to the column that receives each element)",
                        raw(&item)
                    ),
                ))
            }
        };
        let erec = Record {
            fields,
            unchanged: HashSet::new(),
        };
        let crow = build_row(&c.plan, ev, erec, key, pos as i64, false).map_err(|mut r| {
            r.message = format!("{} (in {path}[{pos}])", r.message);
            r
        })?;
        out.push(Output::Change(change(ev, &c.plan.schema, op, crow)));
    }
    out.push(Output::Prune {
        table: Arc::clone(&c.plan.schema),
        parent_key: key.to_vec(),
        keep_below: n,
    });
    Ok(())
}
