//! The SQL text of the apply path's statements, built from the target table
//! and the batch's schema alone: pure functions, so that the exact SQL of
//! every kind of change is unit-tested without a database.
//!
//! Multi-row statements read their rows from `unnest` of text arrays, one
//! `$n::text[]` parameter per column; each value is cast to the target
//! column's bare type (see [`crate::target::TargetColumn::cast_sql`]), or
//! read through the id map for id-mapped columns ([`id_map::value_sql`]).

use ferry_pipeline::event::{quote_ident, ChildLink, Datum, TableId, TableSchema};

use crate::id_map;
use crate::target::TargetTable;

/// The type a value of `column` is cast to: the target's, or `text` for a
/// column the target does not know (the statement then fails on the
/// column, not on the cast).
fn cast<'a>(target: &'a TargetTable, column: &str) -> &'a str {
    target.type_of(column).unwrap_or("text")
}

/// `$1::text[], …, $n::text[]`: one text array per unnested column.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}::text[]"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `TRUNCATE` of tables emptied together: one statement, as PostgreSQL
/// refuses to empty a table another one references unless both go in it.
pub(crate) fn truncate(tables: &[&TableId]) -> String {
    let names: Vec<String> = tables.iter().map(|t| t.quoted()).collect();
    format!("TRUNCATE {}", names.join(", "))
}

/// Whether a table has any row (a TRUNCATE of an empty table is skipped).
pub(crate) fn has_rows(table: &TableId) -> String {
    format!("SELECT EXISTS (SELECT 1 FROM {})", table.quoted())
}

/// Deletes by key: one text array per key column, in key order.
pub(crate) fn delete(target: &TargetTable, schema: &TableSchema) -> String {
    let keys = schema.primary_key.len();
    let aliases: Vec<String> = (0..keys).map(|i| format!("k{i}")).collect();
    let cond: Vec<String> = schema
        .key_columns()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "t.{} = {}",
                quote_ident(&c.name),
                id_map::value_sql(c, cast(target, &c.name), &format!("u.k{i}"))
            )
        })
        .collect();
    format!(
        "DELETE FROM {} AS t USING unnest({}) AS u({}) WHERE {}",
        target.id.quoted(),
        placeholders(keys),
        aliases.join(", "),
        cond.join(" AND ")
    )
}

/// Upserts whole rows: one text array per column, in schema order; a row
/// whose key exists gets every non-key column (a table of key columns only
/// has nothing to update).
pub(crate) fn upsert(target: &TargetTable, schema: &TableSchema) -> String {
    let width = schema.columns.len();
    let key_names: Vec<&str> = schema.key_columns().map(|c| c.name.as_str()).collect();
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let aliases: Vec<String> = (0..width).map(|i| format!("c{i}")).collect();
    let select: Vec<String> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| id_map::value_sql(c, cast(target, &c.name), &format!("u.c{i}")))
        .collect();
    let non_key: Vec<String> = names
        .iter()
        .filter(|n| !key_names.contains(n))
        .map(|n| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
        .collect();
    let conflict = if non_key.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", non_key.join(", "))
    };
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT ({}) {}",
        target.id.quoted(),
        names
            .iter()
            .map(|n| quote_ident(n))
            .collect::<Vec<_>>()
            .join(", "),
        select.join(", "),
        placeholders(width),
        aliases.join(", "),
        key_names
            .iter()
            .map(|n| quote_ident(n))
            .collect::<Vec<_>>()
            .join(", "),
        conflict
    )
}

/// Updates of rows that left some (TOAST) values untouched: only the
/// columns `mask` marks present are set, the key columns find the row; one
/// text array per present column, in schema order. `None` when no non-key
/// column is present (nothing to set).
pub(crate) fn patch(target: &TargetTable, schema: &TableSchema, mask: &[bool]) -> Option<String> {
    let key_names: Vec<&str> = schema.key_columns().map(|c| c.name.as_str()).collect();
    let present: Vec<usize> = (0..schema.columns.len()).filter(|&i| mask[i]).collect();
    let aliases: Vec<String> = (0..present.len()).map(|i| format!("c{i}")).collect();
    let mut sets = Vec::new();
    let mut conds = Vec::new();
    for (j, &i) in present.iter().enumerate() {
        let name = &schema.columns[i].name;
        let expr = id_map::value_sql(&schema.columns[i], cast(target, name), &format!("u.c{j}"));
        if key_names.contains(&name.as_str()) {
            conds.push(format!("t.{} = {expr}", quote_ident(name)));
        } else {
            sets.push(format!("{} = {expr}", quote_ident(name)));
        }
    }
    if sets.is_empty() {
        return None;
    }
    Some(format!(
        "UPDATE {} AS t SET {} FROM unnest({}) AS u({}) WHERE {}",
        target.id.quoted(),
        sets.join(", "),
        placeholders(present.len()),
        aliases.join(", "),
        conds.join(" AND ")
    ))
}

/// Moves one row to a new key: sets every column `row` carries a value for
/// (a one-element text array each, in schema order), then finds the row by
/// its old key (one more array per key column). The caller binds the
/// arrays in that order ([`crate::apply`]'s `rekey`).
pub(crate) fn rekey(target: &TargetTable, schema: &TableSchema, row: &[Datum]) -> String {
    let mut sets = Vec::new();
    let mut n = 0;
    for (i, c) in schema.columns.iter().enumerate() {
        if let Some(Datum::Value(_)) = row.get(i) {
            n += 1;
            sets.push(format!(
                "{} = ($%{}::text[])[1]::{}",
                quote_ident(&c.name),
                n,
                cast(target, &c.name)
            ));
        }
    }
    let mut conds = Vec::new();
    for c in schema.key_columns() {
        n += 1;
        conds.push(format!(
            "{} = (${}::text[])[1]::{}",
            quote_ident(&c.name),
            n,
            cast(target, &c.name)
        ));
    }
    // The SET list's placeholders are written `$%n` and turned into `$n`
    // over the joined list, exactly as this statement was built before it
    // moved here. The replacement also reaches into quoted column names (a
    // column named `a$%b` would be written `"a$b"`); left as it was, as
    // this module only moved the building out of the apply path.
    format!(
        "UPDATE {} SET {} WHERE {}",
        target.id.quoted(),
        sets.join(", ").replace("$%", "$"),
        conds.join(" AND ")
    )
}

/// Deletes a child table's rows past each parent's array end: one text
/// array per parent-key column, then the first position to delete
/// (`keep`).
pub(crate) fn prune(target: &TargetTable, schema: &TableSchema, link: &ChildLink) -> String {
    let k = link.parent_key.len();
    let mut conds: Vec<String> = link
        .parent_key
        .iter()
        .enumerate()
        .map(|(j, &ci)| {
            let c = &schema.columns[ci];
            format!(
                "t.{} = {}",
                quote_ident(&c.name),
                id_map::value_sql(c, cast(target, &c.name), &format!("u.p{j}"))
            )
        })
        .collect();
    conds.push(format!(
        "t.{} >= u.keep::bigint",
        quote_ident(&schema.columns[link.position].name)
    ));
    let aliases: Vec<String> = (0..k)
        .map(|j| format!("p{j}"))
        .chain(["keep".into()])
        .collect();
    format!(
        "DELETE FROM {} AS t USING unnest({}) AS u({}) WHERE {}",
        target.id.quoted(),
        placeholders(k + 1),
        aliases.join(", "),
        conds.join(" AND ")
    )
}

#[cfg(test)]
mod tests;
