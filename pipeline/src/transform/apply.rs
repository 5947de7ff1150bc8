//! Applying a compiled [`Plan`] to a source change: the target rows it
//! becomes, or the [`Rejected`] that says which rule refused it and why.

use std::sync::Arc;

use super::child;
use super::coerce::{coerce, raw};
use super::plan::{Plan, ValueSource};
use super::record::{json_to_value, lookup, record_of, remove_path, Record};
use super::{snake_case, source_key, Output, Rejected};
use crate::event::{ChangeEvent, Datum, Op, Row, TableSchema};
use crate::mapping::Unmapped;
use crate::value::Value;

/// A rejection naming the table, the key, the field and the value.
pub(super) fn reject(ev: &ChangeEvent, path: &str, rule: String, detail: String) -> Rejected {
    Rejected {
        message: format!(
            "{} key {}: field {path:?}: {detail} (rule {rule})",
            ev.table.id,
            source_key(ev)
        ),
        rule,
        fields: vec![path.to_string()],
    }
}

/// The leaf paths of fields no rule took (`meta.flag` for what is left of
/// a subdocument).
fn leaf_paths(prefix: &str, fields: &[(String, Value)], out: &mut Vec<String>) {
    for (name, v) in fields {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match v {
            Value::Document(inner) if !inner.is_empty() => leaf_paths(&path, inner, out),
            _ => out.push(path),
        }
    }
}

/// The field a column reads, as the rejection names it.
fn path_text(source: &ValueSource, column: &str) -> String {
    match source {
        ValueSource::Path(p) => p.join("."),
        ValueSource::Field(f) => f.clone(),
        _ => column.to_string(),
    }
}

/// One target row of `plan` from `rec`; `parent_key` and `position` for
/// child rows. With `keys_only` (a delete), only the key columns.
pub(super) fn build_row(
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
    let set =
        // `missing`: the field is absent (not null): a different finding
        // for whoever fixes the data.
        |row: &mut Row, i: usize, value: Value, source: &ValueSource, missing: bool| -> Result<(), Rejected> {
            let col = &schema.columns[i];
            let path = || path_text(source, &col.name);
            match coerce(value, &plan.columns[i].coercion) {
                // (A key column without a value is `missing_key`, below.)
                Ok(Value::Null) if !col.nullable && !col.is_key && !keys_only => Err(reject(
                    ev,
                    &path(),
                    "null_in_not_null".into(),
                    if missing {
                        format!(
                            "column {} is NOT NULL and the field {} is missing",
                            col.name,
                            path()
                        )
                    } else {
                        format!(
                            "column {} is NOT NULL and the field {} is null",
                            col.name,
                            path()
                        )
                    },
                )),
                Ok(v) => {
                    row[i] = Datum::Value(v);
                    Ok(())
                }
                Err(r) => Err(reject(ev, &path(), r.rule().into(), r.into_reason())),
            }
        };

    // Columns with a rule, the parent's key and the position.
    for (i, (col, c)) in schema.columns.iter().zip(&plan.columns).enumerate() {
        if keys_only && !col.is_key {
            continue;
        }
        let mut missing = false;
        let value = match &c.source {
            ValueSource::Path(p) => {
                if rec.unchanged.contains(&p[0]) {
                    row[i] = Datum::UnchangedToast;
                    continue;
                }
                match lookup(fields, p) {
                    Some(v) => v.into_owned(),
                    // A delete's key comes from what the delete carries,
                    // never from a default (it would name another row).
                    None if keys_only => Value::Null,
                    None => c.default.clone().unwrap_or_else(|| {
                        missing = true;
                        Value::Null
                    }),
                }
            }
            ValueSource::Constant => c.default.clone().unwrap_or(Value::Null),
            ValueSource::ParentKey(k) => parent_key.get(*k).cloned().unwrap_or(Value::Null),
            ValueSource::Position => Value::Int(position),
            // A delete: a key column matched by name.
            ValueSource::Field(name) if keys_only => match fields
                .iter()
                .find(|(n, _)| n == name || (plan.snake_case && snake_case(n) == *name))
            {
                Some((_, v)) => v.clone(),
                None => Value::Null,
            },
            ValueSource::Field(_) | ValueSource::Rest => continue,
        };
        set(&mut row, i, value, &c.source, missing)?;
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
                    set(&mut row, i, v, &ValueSource::Field(name), false)?;
                }
                _ => still_left.push((name, v)),
            }
        }
        let left = still_left;
        let rest = plan
            .columns
            .iter()
            .position(|c| matches!(c.source, ValueSource::Rest));
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
                    set(
                        &mut row,
                        i,
                        Value::Document(left),
                        &ValueSource::Rest,
                        false,
                    )?;
                }
            }
            None if !left.is_empty() && plan.unmapped == Unmapped::Reject => {
                let fields: Vec<String> = left
                    .iter()
                    .map(|(n, v)| format!("{n} = {}", raw(v)))
                    .collect();
                let mut rejected = reject(
                    ev,
                    &left[0].0,
                    "unmapped_field".into(),
                    format!(
                        "no column for {}; map it, add it to `drop`, set `rest`, or set unmapped = \"drop\"",
                        fields.join(", ")
                    ),
                );
                rejected.fields.clear();
                leaf_paths("", &left, &mut rejected.fields);
                return Err(rejected);
            }
            None => {}
        }
    }
    for &k in &schema.primary_key {
        if matches!(row[k], Datum::Value(Value::Null)) {
            let c = &plan.columns[k];
            return Err(reject(
                ev,
                &path_text(&c.source, &schema.columns[k].name),
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

pub(super) fn change(
    template: &ChangeEvent,
    schema: &Arc<TableSchema>,
    op: Op,
    row: Row,
) -> ChangeEvent {
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

pub(super) fn apply_plan(plan: &Plan, ev: &ChangeEvent) -> Result<Vec<Output>, Rejected> {
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
            // Read before the parent's row takes the record.
            let arrays = child::read_arrays(plan, ev, &rec)?;
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
                child::push_rows(c, ev, op, &key, items, &mut out)?;
            }
        }
    }
    Ok(out)
}
