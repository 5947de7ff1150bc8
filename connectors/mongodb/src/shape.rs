//! The target shape of a collection: `_id` (key, jsonb), the whole
//! document as jsonb, and, when asked, one column per top-level scalar field.
//!
//! Scalar columns are a convenience projection; the document column stays
//! the exact, complete record. A field's column type comes from the first
//! non-null value seen; a later value of another type is written as NULL in
//! that column (the document keeps it) and logged once per field. New fields
//! add columns: the table's shape grows, and the sink adds them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ferry_pipeline::event::{Column, Datum, Row, TableId, TableSchema};
use ferry_pipeline::value::{TemporalKind, Value};

/// The growing shape of one collection.
struct Shape {
    schema: Arc<TableSchema>,
    /// Column index by field name (scalar columns only).
    index: HashMap<String, usize>,
    /// Fields whose type mismatch was already logged.
    warned: HashSet<String>,
}

/// Shapes of every mirrored collection.
pub struct Shapes {
    database: String,
    scalar_columns: bool,
    per: HashMap<String, Shape>,
}

fn column(name: &str, type_sql: &str, key: bool) -> Column {
    Column {
        name: name.into(),
        type_oid: 0,
        type_sql: type_sql.into(),
        nullable: !key && name != "document",
        is_key: key,
        enum_labels: None,
        id_map: None,
    }
}

/// The column type of a scalar value; `None` for non-scalars and nulls.
fn scalar_type(v: &Value) -> Option<&'static str> {
    Some(match v {
        Value::Bool(_) => "boolean",
        Value::Int(_) => "bigint",
        Value::Float(_) => "double precision",
        Value::Numeric(_) => "numeric",
        Value::Text(_) => "text",
        Value::ObjectId(_) => "text",
        Value::Uuid(_) => "uuid",
        Value::Temporal(TemporalKind::Timestamptz, _) => "timestamptz",
        _ => return None,
    })
}

impl Shapes {
    pub fn new(database: &str, scalar_columns: bool) -> Self {
        Self {
            database: database.into(),
            scalar_columns,
            per: HashMap::new(),
        }
    }

    fn shape(&mut self, collection: &str) -> &mut Shape {
        let database = self.database.clone();
        self.per
            .entry(collection.to_string())
            .or_insert_with(|| Shape {
                schema: Arc::new(TableSchema {
                    id: TableId::new(database, collection),
                    columns: vec![
                        column("_id", "jsonb", true),
                        column("document", "jsonb", false),
                    ],
                    primary_key: vec![0],
                    child: None,
                }),
                index: HashMap::new(),
                warned: HashSet::new(),
            })
    }

    /// The collection's current shape.
    pub fn schema(&mut self, collection: &str) -> Arc<TableSchema> {
        Arc::clone(&self.shape(collection).schema)
    }

    /// The row of a document (its fields already converted), and the shape
    /// it was built against (grown if the document brought new fields).
    pub fn row(
        &mut self,
        collection: &str,
        id: Value,
        fields: Vec<(String, Value)>,
    ) -> (Arc<TableSchema>, Row) {
        let scalar = self.scalar_columns;
        let shape = self.shape(collection);
        if scalar {
            let mut added = Vec::new();
            for (name, v) in &fields {
                if name == "_id" || name == "document" || shape.index.contains_key(name) {
                    continue;
                }
                if let Some(t) = scalar_type(v) {
                    added.push(column(name, t, false));
                }
            }
            if !added.is_empty() {
                let mut schema = (*shape.schema).clone();
                for c in added {
                    shape.index.insert(c.name.clone(), schema.columns.len());
                    schema.columns.push(c);
                }
                shape.schema = Arc::new(schema);
            }
        }
        let width = shape.schema.columns.len();
        let mut row: Row = Vec::with_capacity(width);
        row.push(Datum::Value(id));
        let mut projected: Vec<Datum> = vec![Datum::Value(Value::Null); width - 2];
        if scalar {
            for (name, v) in &fields {
                let Some(&i) = shape.index.get(name) else {
                    continue;
                };
                let want = shape.schema.columns[i].type_sql.as_str();
                if scalar_type(v) == Some(want) {
                    projected[i - 2] = Datum::Value(v.clone());
                } else if !v.is_null() && shape.warned.insert(name.clone()) {
                    tracing::warn!(
                        collection, field = %name, column_type = want,
                        "a value does not fit its scalar column; the column reads NULL there (the document keeps it)"
                    );
                }
            }
        }
        row.push(Datum::Value(Value::Document(fields)));
        row.extend(projected);
        (Arc::clone(&shape.schema), row)
    }

    /// The row of a deleted document: its key, the rest NULL.
    pub fn key_row(&mut self, collection: &str, id: Value) -> (Arc<TableSchema>, Row) {
        let schema = self.schema(collection);
        let mut row = vec![Datum::Value(Value::Null); schema.columns.len()];
        row[0] = Datum::Value(id);
        (schema, row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_columns_grow_and_mismatches_read_null() {
        let mut s = Shapes::new("app", true);
        let (schema, row) = s.row(
            "p",
            Value::Int(1),
            vec![
                ("_id".into(), Value::Int(1)),
                ("amount".into(), Value::Int(5)),
                ("tags".into(), Value::Array(vec![])),
            ],
        );
        assert_eq!(schema.columns.len(), 3);
        assert_eq!(schema.columns[2].name, "amount");
        assert_eq!(row[2], Datum::Value(Value::Int(5)));
        let (schema2, row) = s.row(
            "p",
            Value::Int(2),
            vec![
                ("amount".into(), Value::Text("five".into())),
                ("who".into(), Value::Text("z".into())),
            ],
        );
        assert!(!Arc::ptr_eq(&schema, &schema2));
        assert_eq!(row[2], Datum::Value(Value::Null));
        assert_eq!(row[3], Datum::Value(Value::Text("z".into())));
        // Without scalar columns the shape never grows.
        let mut plain = Shapes::new("app", false);
        let (schema, row) = plain.row("p", Value::Int(1), vec![("a".into(), Value::Int(1))]);
        assert_eq!(schema.columns.len(), 2);
        assert_eq!(row.len(), 2);
    }
}
