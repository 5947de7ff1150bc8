//! A source row read as a record of named fields (a MongoDB document, or
//! a table row's columns), and the path lookups rules make into it.

use std::collections::HashSet;

use crate::event::{Datum, Row, TableSchema};
use crate::id_map;
use crate::value::Value;

/// A record's fields: a MongoDB-shaped row's document (or, for a delete,
/// its `_id`), or a table row's columns by name. Unchanged TOAST values
/// are listed apart: anything derived from them is unchanged too.
pub(super) struct Record {
    pub(super) fields: Vec<(String, Value)>,
    pub(super) unchanged: HashSet<String>,
}

pub(super) fn record_of(schema: &TableSchema, row: &Row) -> Record {
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
pub(super) fn lookup<'a>(
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

pub(super) fn json_to_value(j: &serde_json::Value) -> Value {
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
pub(super) fn remove_path(fields: &mut Vec<(String, Value)>, path: &[String]) {
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
