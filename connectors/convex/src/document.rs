//! One exported Convex document (a `list_snapshot` or `document_deltas`
//! value) as a change to a row of its table's shape. Pure: no I/O.
//!
//! A table mirrors as `_id` (text, the key), `_creation_time`
//! (timestamptz), `_ts` (bigint: the commit timestamp in nanoseconds of
//! the version, for mappings and for proving order) and `document` (jsonb:
//! the whole document, `_id` and `_creationTime` included, as a
//! `Document` of typed values: the shape mappings read fields from, as
//! the MongoDB source's). Export metadata (`_table`, `_component`, `_ts`,
//! `_deleted`, and any `_` key Convex adds later) is never part of the
//! document.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_pipeline::event::{Column, Datum, Row, TableId, TableSchema};
use ferry_pipeline::value::Value;
use serde_json::Value as Json;

use crate::value::{creation_time, decode, DecodeError};

/// One exported document version (or delete).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub component: String,
    pub table: String,
    pub id: String,
    /// Commit timestamp of this version, nanoseconds since the epoch.
    pub ts: i64,
    pub deleted: bool,
    /// The row (absent for a delete).
    pub row: Option<Row>,
    /// 1-based place of this value among the page's values of its
    /// timestamp (0 until the caller sets it). Convex never splits a
    /// timestamp across pages and orders it by `_id`, so the place is the
    /// same however the page is cut: with `ts`, a position that only grows.
    pub ordinal: u64,
}

fn column(name: &str, type_sql: &str, key: bool) -> Column {
    Column {
        name: name.into(),
        type_oid: 0,
        type_sql: type_sql.into(),
        nullable: !key,
        is_key: key,
        enum_labels: None,
        id_map: None,
    }
}

/// The shape every mirrored table has.
pub fn table_schema(schema: &str, table: &str) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId::new(schema, table),
        columns: vec![
            column("_id", "text", true),
            column("_creation_time", "timestamptz", false),
            column("_ts", "bigint", false),
            column("document", "jsonb", false),
        ],
        primary_key: vec![0],
        child: None,
    })
}

/// The key row of a deleted document.
pub fn key_row(id: &str) -> Row {
    vec![
        Datum::Value(Value::Text(id.to_string())),
        Datum::Value(Value::Null),
        Datum::Value(Value::Null),
        Datum::Value(Value::Null),
    ]
}

fn str_field<'a>(map: &'a serde_json::Map<String, Json>, k: &str) -> Result<&'a str, DecodeError> {
    map.get(k)
        .and_then(Json::as_str)
        .ok_or_else(|| DecodeError(format!("exported value without {k}")))
}

/// Reads one exported value (Convex encoded JSON).
pub fn parse(v: &Json) -> Result<Change, DecodeError> {
    let map = v
        .as_object()
        .ok_or_else(|| DecodeError("exported value is not an object".into()))?;
    let table = str_field(map, "_table")?.to_string();
    let id = str_field(map, "_id")?.to_string();
    let component = map
        .get("_component")
        .and_then(Json::as_str)
        .unwrap_or("")
        .to_string();
    let ts = map
        .get("_ts")
        .and_then(Json::as_i64)
        .ok_or_else(|| DecodeError(format!("{table} {id}: no integer _ts")))?;
    let deleted = map.get("_deleted").and_then(Json::as_bool).unwrap_or(false);
    let row = if deleted {
        None
    } else {
        let mut fields = Vec::with_capacity(map.len());
        let mut created = Value::Null;
        for (k, val) in map {
            if k.starts_with('_') && k != "_id" && k != "_creationTime" {
                continue;
            }
            let value =
                decode(val).map_err(|e| DecodeError(format!("{table} {id} field {k}: {e}")))?;
            if k == "_creationTime" {
                let Value::Float(ms) = value else {
                    return Err(DecodeError(format!(
                        "{table} {id}: _creationTime is not a number"
                    )));
                };
                created = creation_time(ms)?;
            }
            fields.push((k.clone(), value));
        }
        Some(vec![
            Datum::Value(Value::Text(id.clone())),
            Datum::Value(created),
            Datum::Value(Value::Int(ts)),
            Datum::Value(Value::Document(fields)),
        ])
    };
    Ok(Change {
        component,
        table,
        id,
        ts,
        deleted,
        row,
        ordinal: 0,
    })
}

/// Keeps, per document, only its version with the highest `_ts` (a later
/// one on ties), in the order of the versions kept, so that no document
/// moves back to an older version within a page.
pub fn dedupe(changes: Vec<Change>) -> Vec<Change> {
    let mut best: HashMap<(String, String), usize> = HashMap::with_capacity(changes.len());
    for (i, c) in changes.iter().enumerate() {
        let k = (c.table.clone(), c.id.clone());
        match best.get(&k) {
            Some(&j) if changes[j].ts > c.ts => {}
            _ => {
                best.insert(k, i);
            }
        }
    }
    let mut keep: Vec<usize> = best.into_values().collect();
    keep.sort_unstable();
    let mut changes: Vec<Option<Change>> = changes.into_iter().map(Some).collect();
    keep.into_iter()
        .map(|i| changes[i].take().expect("kept once"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_become_rows_and_metadata_stays_out() {
        let v = json!({"_component":"","_table":"users","_ts":1_755_800_002_000_000_001_i64,"_deleted":false,
            "_id":"jd7","_creationTime":1_755_800_000_123.45_f64,"name":"a","n":{"$integer":"KgAAAAAAAAA="},"_new_meta":1});
        let c = parse(&v).unwrap();
        assert_eq!(
            (c.table.as_str(), c.id.as_str(), c.ts),
            ("users", "jd7", 1_755_800_002_000_000_001)
        );
        let row = c.row.unwrap();
        assert_eq!(row[2], Datum::Value(Value::Int(1_755_800_002_000_000_001)));
        let Datum::Value(doc) = &row[3] else { panic!() };
        // Compared as JSON values: the field order follows serde_json's
        // map, which the workspace may build with `preserve_order`.
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&ferry_pipeline::json::json_text(doc))
                .unwrap(),
            json!({"_creationTime": 1_755_800_000_123.45_f64, "_id": "jd7", "n": 42, "name": "a"})
        );
        let Datum::Value(Value::Temporal(_, t)) = &row[1] else {
            panic!()
        };
        assert_eq!(t, "2025-08-21 18:13:20.123450+00");
        let d = parse(&json!({"_table":"users","_ts":5,"_deleted":true,"_id":"jd7"})).unwrap();
        assert!(d.deleted && d.row.is_none());
    }

    #[test]
    fn dedupe_keeps_the_newest_version() {
        let c = |id: &str, ts| Change {
            component: String::new(),
            table: "t".into(),
            id: id.into(),
            ts,
            deleted: false,
            row: None,
            ordinal: 0,
        };
        let out = dedupe(vec![c("a", 1), c("b", 1), c("a", 3), c("a", 2), c("b", 2)]);
        let got: Vec<(&str, i64)> = out.iter().map(|c| (c.id.as_str(), c.ts)).collect();
        assert_eq!(got, vec![("a", 3), ("b", 2)]);
    }
}
