//! A batch as MongoDB write commands: per collection, ordered runs of
//! `update` (upserts by `_id`) and `delete` statements. Pure: no I/O.
//!
//! The contract with the reverse pipelines' inverse mapping (and any other
//! producer of rows for this sink):
//! - each row is one document; its `_id` is the row's `_id` column when
//!   it has one, else its primary key (one key column: its value; several:
//!   a sub-document of them, in key order);
//! - an insert or update is `updateOne({_id}, {$set: {column: value, …}},
//!   upsert)`, every column but `_id`; a column name with dots is a field
//!   path (MongoDB's `$set` creates the nested fields), so fields the row
//!   does not carry are kept;
//! - a delete is `deleteOne({_id})`;
//! - Ferry's MongoDB mirror shape (exactly the columns `_id` and
//!   `document`) is written back as `replaceOne({_id}, document)`, the
//!   document decoded by the JSON conventions of the forward path
//!   ([`crate::value::json_to_bson`] in mirror mode).

use std::collections::HashSet;

use bson::{doc, Bson, Document};
use ferry_pipeline::batch::{event_for, key_text, Batch, RowChange};
use ferry_pipeline::dlq::{encode_event, DeadLetter, Parked, RecordError};
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use ferry_pipeline::event::{Datum, TableSchema};
use ferry_pipeline::value::Value;

use crate::config::collection_of;
use crate::value::{document_bytes, json_to_bson, to_bson, Rejection, MAX_DOCUMENT_BYTES};

/// Statements per command (MongoDB accepts 100 000; smaller commands keep
/// each round trip's memory bounded).
pub(crate) const OPS_PER_COMMAND: usize = 1000;
/// Bytes of statements per command (MongoDB's message limit is 48 MB).
pub(crate) const BYTES_PER_COMMAND: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Update,
    Delete,
}

/// One statement and the batch row it comes from.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    pub kind: Kind,
    pub statement: Document,
    pub bytes: usize,
    /// (table, row) in the batch.
    pub row: (usize, usize),
}

/// One command: `{update|delete: collection, …: statements, ordered: true}`.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub collection: String,
    pub kind: Kind,
    pub ops: Vec<Op>,
}

impl Command {
    pub(crate) fn document(&self) -> Document {
        let statements: Vec<Bson> = self
            .ops
            .iter()
            .map(|o| Bson::Document(o.statement.clone()))
            .collect();
        match self.kind {
            Kind::Update => {
                doc! {"update": &self.collection, "updates": statements, "ordered": true}
            }
            Kind::Delete => {
                doc! {"delete": &self.collection, "deletes": statements, "ordered": true}
            }
        }
    }
}

/// A batch, planned.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    /// Collections emptied first (a truncate, a snapshot starting).
    pub truncate: Vec<String>,
    pub commands: Vec<Command>,
    /// Records refused by the codec (and, in the batch, by the transform
    /// stage), parked with the batch.
    pub parked: Vec<Parked>,
    /// Per table with rows written: (table, keys as `key_text`) whose
    /// earlier parked records are superseded.
    pub written_keys: Vec<(ferry_pipeline::event::TableId, Vec<String>)>,
}

/// Plans `batch`, leaving out the rows in `excluded` (parked by an
/// earlier attempt of the same batch).
pub(crate) fn plan(
    batch: &Batch,
    pipeline: &str,
    excluded: &HashSet<(usize, usize)>,
    pairs: Option<&std::sync::Arc<crate::inverse::Pairs>>,
) -> Result<Plan, PipelineError> {
    let mut plan = Plan {
        parked: batch.parked.clone(),
        ..Plan::default()
    };
    for (ti, tb) in batch.tables.iter().enumerate() {
        if !tb.prunes.is_empty() {
            return Err(PipelineError::fatal(
                Stage::Sink,
                "child tables of a mapping are not supported by the MongoDB sink",
            ));
        }
        let collection = collection_of(&tb.schema.id);
        if tb.truncate || tb.snapshot_start {
            plan.truncate.push(collection.clone());
        }
        let shape = Shape::of(&tb.schema, pairs);
        let order = tb.rows_by_last_touch();
        // Rekeys first: a key-changing update frees its old `_id` before
        // anything else of the table's batch can take it.
        let rekeys = order
            .iter()
            .filter(|&&i| matches!(tb.rows[i], RowChange::Rekey { .. }));
        let others = order
            .iter()
            .filter(|&&i| !matches!(tb.rows[i], RowChange::Rekey { .. }));
        let mut ops = Vec::new();
        let mut keys = Vec::new();
        for &i in rekeys.chain(others) {
            if excluded.contains(&(ti, i)) {
                continue;
            }
            let change = &tb.rows[i];
            match row_ops(&tb.schema, &shape, change, (ti, i)) {
                Ok(o) => {
                    ops.extend(o);
                    if let Some(k) = key_text(&tb.schema, change) {
                        keys.push(k);
                    }
                }
                Err(rejection) => {
                    let e =
                        PipelineError::new(ErrorClass::Permanent, Stage::Sink, rejection.message)
                            .with_code(rejection.rule);
                    plan.parked.push(park(batch, ti, i, pipeline, &e)?);
                }
            }
        }
        if !keys.is_empty() {
            plan.written_keys.push((tb.schema.id.clone(), keys));
        }
        // Consecutive statements of one kind share a command; the order of
        // the table's statements is kept.
        for op in ops {
            match plan.commands.last_mut() {
                Some(c)
                    if c.collection == collection
                        && c.kind == op.kind
                        && c.ops.len() < OPS_PER_COMMAND
                        && c.ops.iter().map(|o| o.bytes).sum::<usize>() + op.bytes
                            <= BYTES_PER_COMMAND =>
                {
                    c.ops.push(op)
                }
                _ => plan.commands.push(Command {
                    collection: collection.clone(),
                    kind: op.kind,
                    ops: vec![op],
                }),
            }
        }
    }
    Ok(plan)
}

/// The parked record of row `i` of table `ti`.
pub(crate) fn park(
    batch: &Batch,
    ti: usize,
    i: usize,
    pipeline: &str,
    e: &PipelineError,
) -> Result<Parked, PipelineError> {
    let tb = &batch.tables[ti];
    let change = &tb.rows[i];
    let ev = event_for(&tb.schema, change)
        .ok_or_else(|| PipelineError::fatal(Stage::Sink, "a vanished row cannot be parked"))?;
    Ok(Parked {
        table: tb.schema.id.clone(),
        record: DeadLetter {
            event: encode_event(&ev, pipeline)?,
            key: key_text(&tb.schema, change).unwrap_or_default(),
            error: RecordError::of(e),
            position: batch.last_position,
            origin: tb.origins.get(i).cloned().flatten(),
        },
        superseded: false,
    })
}

/// How a table's rows become documents.
pub(crate) struct Shape {
    /// Index of the `_id` column, if any.
    id_column: Option<usize>,
    /// Ferry's MongoDB mirror shape: `_id` and `document` only.
    mirror: Option<usize>,
    /// A reverse pipeline's legacy ids, for the inverse id columns.
    pairs: Option<std::sync::Arc<crate::inverse::Pairs>>,
}

impl Shape {
    pub(crate) fn of(
        schema: &TableSchema,
        pairs: Option<&std::sync::Arc<crate::inverse::Pairs>>,
    ) -> Shape {
        let id_column = schema.columns.iter().position(|c| c.name == "_id");
        let document = schema.columns.iter().position(|c| c.name == "document");
        let mirror = match (id_column, document) {
            (Some(_), Some(d))
                if schema.columns.len() == 2
                    && matches!(schema.columns[d].type_sql.as_str(), "jsonb" | "json") =>
            {
                Some(d)
            }
            _ => None,
        };
        Shape {
            id_column,
            mirror,
            pairs: pairs.cloned(),
        }
    }
}

fn column_bson(
    schema: &TableSchema,
    shape: &Shape,
    i: usize,
    v: &Value,
) -> Result<Bson, Rejection> {
    if let (Some(r), Some(pairs), Value::Text(new)) =
        (schema.columns[i].id_map.as_ref(), &shape.pairs, v)
    {
        if let ferry_pipeline::id_map::IdKind::Inverse { legacy } = r.kind {
            // A new id never written back (a delete of it) has no legacy
            // id: null matches no document.
            return Ok(pairs
                .get(&(r.namespace.clone(), new.clone()))
                .map_or(Bson::Null, |l| crate::inverse::legacy_bson(legacy, l)));
        }
    }
    match v {
        // The mirror shape's `_id` is jsonb holding the forward path's JSON
        // of the id (`{"$oid": …}`, a string, a number).
        Value::Json(text) if shape.mirror.is_some() => json_to_bson(text, true),
        _ => to_bson(v, &schema.columns[i].type_sql),
    }
}

/// The `_id` of a full row.
fn row_id(schema: &TableSchema, shape: &Shape, row: &[Datum]) -> Result<Bson, Rejection> {
    let value = |i: usize| match row.get(i) {
        Some(Datum::Value(v)) => Ok(v),
        _ => Err(Rejection {
            rule: "mongodb-id",
            message: format!(
                "the row has no value for key column {:?}",
                schema.columns[i].name
            ),
        }),
    };
    if let Some(i) = shape.id_column {
        return column_bson(schema, shape, i, value(i)?);
    }
    key_id(
        schema,
        shape,
        &schema
            .primary_key
            .iter()
            .map(|&i| value(i).cloned())
            .collect::<Result<Vec<_>, _>>()?,
    )
}

/// The `_id` from key values in primary-key order.
fn key_id(schema: &TableSchema, shape: &Shape, key: &[Value]) -> Result<Bson, Rejection> {
    match schema.primary_key.as_slice() {
        [] => Err(Rejection {
            rule: "mongodb-id",
            message: format!("table {} has no `_id` column and no primary key", schema.id),
        }),
        [only] => column_bson(schema, shape, *only, key.first().unwrap_or(&Value::Null)),
        many => {
            let mut d = Document::new();
            for (&i, v) in many.iter().zip(key) {
                d.insert(
                    schema.columns[i].name.clone(),
                    column_bson(schema, shape, i, v)?,
                );
            }
            Ok(Bson::Document(d))
        }
    }
}

/// The filter of a delete by key values (primary-key order).
fn delete_filter(
    schema: &TableSchema,
    shape: &Shape,
    key: &[Value],
) -> Result<Document, Rejection> {
    match shape.id_column {
        // `_id` is a column but not the key: find the document by the key
        // columns' fields, which every written document carries.
        Some(id) if schema.primary_key != [id] => {
            let mut d = Document::new();
            for (&i, v) in schema.primary_key.iter().zip(key) {
                d.insert(
                    schema.columns[i].name.clone(),
                    column_bson(schema, shape, i, v)?,
                );
            }
            Ok(d)
        }
        _ => Ok(doc! {"_id": key_id(schema, shape, key)?}),
    }
}

fn upsert_op(
    schema: &TableSchema,
    shape: &Shape,
    row: &[Datum],
    at: (usize, usize),
) -> Result<Op, Rejection> {
    let id = row_id(schema, shape, row)?;
    let update = if let Some(d) = shape.mirror {
        let Some(Datum::Value(v)) = row.get(d) else {
            return Err(Rejection {
                rule: "mongodb-mirror-toast",
                message: "the document column is unchanged-TOAST: the whole document is needed (REPLICA IDENTITY FULL)".into(),
            });
        };
        let mut replacement = match column_bson(schema, shape, d, v)? {
            Bson::Document(doc) => doc,
            other => {
                return Err(Rejection {
                    rule: "mongodb-mirror-document",
                    message: format!("the document column holds {other}, not a document"),
                })
            }
        };
        replacement.insert("_id", id.clone());
        replacement
    } else {
        let mut set = Document::new();
        for (i, (c, d)) in schema.columns.iter().zip(row).enumerate() {
            if Some(i) == shape.id_column {
                continue;
            }
            if let Datum::Value(v) = d {
                set.insert(c.name.clone(), column_bson(schema, shape, i, v)?);
            }
        }
        if set.is_empty() {
            // `$set` may not be empty; setting `_id` to itself is a no-op.
            set.insert("_id", id.clone());
        }
        doc! {"$set": set}
    };
    let statement = doc! {"q": {"_id": id}, "u": update, "upsert": true};
    let bytes = document_bytes(&statement);
    if bytes > MAX_DOCUMENT_BYTES {
        return Err(Rejection {
            rule: "mongodb-document-too-large",
            message: format!(
                "the document would be {bytes} bytes, over MongoDB's {MAX_DOCUMENT_BYTES}-byte limit"
            ),
        });
    }
    Ok(Op {
        kind: Kind::Update,
        statement,
        bytes,
        row: at,
    })
}

fn delete_op(
    schema: &TableSchema,
    shape: &Shape,
    key: &[Value],
    at: (usize, usize),
) -> Result<Op, Rejection> {
    let statement = doc! {"q": delete_filter(schema, shape, key)?, "limit": 1};
    let bytes = document_bytes(&statement);
    Ok(Op {
        kind: Kind::Delete,
        statement,
        bytes,
        row: at,
    })
}

fn row_ops(
    schema: &TableSchema,
    shape: &Shape,
    change: &RowChange,
    at: (usize, usize),
) -> Result<Vec<Op>, Rejection> {
    Ok(match change {
        RowChange::Upsert(row) | RowChange::Patch(row) => vec![upsert_op(schema, shape, row, at)?],
        RowChange::Delete(key) => vec![delete_op(schema, shape, key, at)?],
        RowChange::Rekey { old_key, row } => {
            // The new document is built from the row alone: values only
            // the old document still has cannot move with it.
            if row.iter().any(|d| matches!(d, Datum::UnchangedToast)) {
                return Err(Rejection {
                    rule: "mongodb-rekey-toast",
                    message: "a key-changing update that kept unchanged large values: the MongoDB sink needs the whole row (REPLICA IDENTITY FULL)".into(),
                });
            }
            vec![
                delete_op(schema, shape, old_key, at)?,
                upsert_op(schema, shape, row, at)?,
            ]
        }
        RowChange::Vanished => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_pipeline::event::{Column, TableId};

    fn col(name: &str, ty: &str, key: bool) -> Column {
        Column {
            name: name.into(),
            type_oid: 0,
            type_sql: ty.into(),
            nullable: !key,
            is_key: key,
            enum_labels: None,
            id_map: None,
        }
    }

    fn v(x: Value) -> Datum {
        Datum::Value(x)
    }

    #[test]
    fn rows_become_set_upserts_by_key() {
        let schema = TableSchema {
            id: TableId::new("public", "payments"),
            columns: vec![
                col("id", "bigint", true),
                col("amount", "numeric(12,2)", false),
                col("meta.note", "text", false),
            ],
            primary_key: vec![0],
            child: None,
        };
        let shape = Shape::of(&schema, None);
        let row = vec![
            v(Value::Int(7)),
            v(Value::Numeric("1.50".parse().unwrap())),
            Datum::UnchangedToast,
        ];
        let ops = row_ops(&schema, &shape, &RowChange::Patch(row), (0, 0)).unwrap();
        let s = &ops[0].statement;
        assert_eq!(s.get_document("q").unwrap(), &doc! {"_id": 7i64});
        let set = s.get_document("u").unwrap().get_document("$set").unwrap();
        assert_eq!(set.get("id"), Some(&Bson::Int64(7)));
        assert!(set.get("meta.note").is_none(), "unchanged values are kept");
        let del = row_ops(
            &schema,
            &shape,
            &RowChange::Delete(vec![Value::Int(7)]),
            (0, 1),
        )
        .unwrap();
        assert_eq!(del[0].statement, doc! {"q": {"_id": 7i64}, "limit": 1});
    }

    #[test]
    fn composite_keys_are_sub_documents() {
        let schema = TableSchema {
            id: TableId::new("public", "lines"),
            columns: vec![col("order_id", "integer", true), col("n", "integer", true)],
            primary_key: vec![0, 1],
            child: None,
        };
        let shape = Shape::of(&schema, None);
        let del = row_ops(
            &schema,
            &shape,
            &RowChange::Delete(vec![Value::Int(1), Value::Int(2)]),
            (0, 0),
        )
        .unwrap();
        assert_eq!(
            del[0].statement.get_document("q").unwrap(),
            &doc! {"_id": {"order_id": 1, "n": 2}}
        );
    }

    #[test]
    fn the_mirror_shape_is_replaced_whole() {
        let schema = TableSchema {
            id: TableId::new("app", "orders"),
            columns: vec![col("_id", "jsonb", true), col("document", "jsonb", false)],
            primary_key: vec![0],
            child: None,
        };
        let shape = Shape::of(&schema, None);
        let row = vec![
            v(Value::Json(r#"{"$oid":"650aff00010203040506abcd"}"#.into())),
            v(Value::Json(
                r#"{"_id":{"$oid":"650aff00010203040506abcd"},"total":12.50}"#.into(),
            )),
        ];
        let ops = row_ops(&schema, &shape, &RowChange::Upsert(row), (0, 0)).unwrap();
        let u = ops[0].statement.get_document("u").unwrap();
        assert!(u.get("$set").is_none());
        assert!(matches!(u.get("_id"), Some(Bson::ObjectId(_))));
        assert!(matches!(u.get("total"), Some(Bson::Decimal128(_))));
    }
}
