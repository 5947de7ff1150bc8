//! What the source's catalog says about a table: columns, types, key,
//! replica identity, size. Ferry refuses a table it could not mirror
//! idempotently (no primary key and no replica identity index) with a
//! message that says how to fix it.

use std::sync::Arc;

use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{quote_ident, Column, TableId, TableSchema};
use tokio_postgres::Client;

use crate::connect::pg_err;
use crate::text::PgType;

/// A table as the source describes it, with what decoding needs.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub oid: u32,
    pub schema: Arc<TableSchema>,
    /// Per column, how to decode its text.
    pub types: Vec<PgType>,
    /// Per column, the type modifier (length, precision and scale).
    pub typmods: Vec<i32>,
    /// `d` default, `f` full, `i` index, `n` nothing.
    pub replica_identity: char,
    pub estimated_rows: i64,
    pub pages: i64,
    /// A partitioned table (its changes are published under its own name
    /// only with `publish_via_partition_root`).
    pub partitioned: bool,
    /// The replica identity index names other columns than the primary
    /// key: old rows would carry the wrong key.
    pub identity_differs_from_key: bool,
}

/// Reads a table's description; `Ok(None)` when it does not exist.
pub async fn describe(client: &Client, id: &TableId) -> Result<Option<SourceTable>, PipelineError> {
    let rel = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text, c.reltuples::bigint, c.relpages::bigint,
                    c.relkind = 'p'
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&id.schema, &id.name],
        )
        .await
        .map_err(|e| pg_err(Stage::Source, "read table from catalog", e))?;
    let Some(rel) = rel else { return Ok(None) };
    let oid: u32 = rel.get(0);
    let replica_identity = rel.get::<_, String>(1).chars().next().unwrap_or('d');
    let rows = client
        .query(
            "SELECT a.attname::text,
                    a.atttypid,
                    format_type(a.atttypid, a.atttypmod),
                    NOT a.attnotnull,
                    coalesce(array_position(pk.indkey::int2[], a.attnum) + 1, 0)::int4,
                    coalesce(array_position(ri.indkey::int2[], a.attnum) + 1, 0)::int4,
                    CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE 0::oid END,
                    CASE WHEN t.typtype = 'e' THEN
                        array(SELECT e.enumlabel::text FROM pg_enum e
                               WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
                    END,
                    a.atttypmod
               FROM pg_attribute a
               JOIN pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary
               LEFT JOIN pg_index ri ON ri.indrelid = a.attrelid AND ri.indisreplident
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                -- pgoutput never sends generated columns: the target
                -- computes its own (or lacks them).
                AND a.attgenerated = ''
              ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| pg_err(Stage::Source, "read columns from catalog", e))?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut types = Vec::with_capacity(rows.len());
    let mut typmods = Vec::with_capacity(rows.len());
    let mut pk: Vec<(i32, usize)> = Vec::new();
    let mut ri: Vec<(i32, usize)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let pk_pos: i32 = r.get(4);
        let ri_pos: i32 = r.get(5);
        if pk_pos > 0 {
            pk.push((pk_pos, i));
        }
        if ri_pos > 0 {
            ri.push((ri_pos, i));
        }
        let elem: u32 = r.get(6);
        typmods.push(r.get::<_, i32>(8));
        types.push(PgType {
            oid: r.get(1),
            elem_oid: (elem != 0).then_some(elem),
        });
        columns.push(Column {
            name: r.get(0),
            type_oid: r.get(1),
            type_sql: r.get(2),
            nullable: r.get(3),
            is_key: false,
            enum_labels: r.get(7),
            id_map: None,
        });
    }
    // The key: the primary key, else the replica identity index (unique and
    // NOT NULL by PostgreSQL's rules).
    pk.sort();
    ri.sort();
    let identity_differs_from_key = replica_identity == 'i'
        && !pk.is_empty()
        && pk.iter().map(|(_, i)| i).ne(ri.iter().map(|(_, i)| i));
    let key = if pk.is_empty() { ri } else { pk };
    let primary_key: Vec<usize> = key.into_iter().map(|(_, i)| i).collect();
    for &i in &primary_key {
        columns[i].is_key = true;
    }
    Ok(Some(SourceTable {
        oid,
        schema: Arc::new(TableSchema {
            id: id.clone(),
            columns,
            primary_key,
            child: None,
        }),
        types,
        typmods,
        replica_identity,
        estimated_rows: rel.get(2),
        pages: rel.get(3),
        partitioned: rel.get(4),
        identity_differs_from_key,
    }))
}

/// Why a table cannot be mirrored, if it cannot; the text says how to fix it.
pub fn refusal(t: &SourceTable) -> Option<String> {
    let id = &t.schema.id;
    if t.replica_identity == 'n' {
        return Some(format!(
            "table {id} has REPLICA IDENTITY NOTHING: its updates and deletes cannot be replicated; \
             run ALTER TABLE {} REPLICA IDENTITY DEFAULT (with a primary key)",
            id.quoted()
        ));
    }
    if t.identity_differs_from_key {
        return Some(format!(
            "table {id} has REPLICA IDENTITY USING INDEX on other columns than its primary key: \
             deletes would carry the wrong key; run ALTER TABLE {} REPLICA IDENTITY DEFAULT",
            id.quoted()
        ));
    }
    if t.schema.primary_key.is_empty() {
        return Some(format!(
            "table {id} has no primary key (nor a replica identity index): Ferry needs a key to \
             apply changes idempotently; add one with ALTER TABLE {} ADD PRIMARY KEY (...)",
            id.quoted()
        ));
    }
    None
}

/// Which part of a table name that does not resolve is missing: the schema,
/// or the table in an existing schema (with a near miss by case, since an
/// unquoted name in `source.tables` is taken as written).
pub async fn missing(client: &Client, id: &TableId) -> Result<String, PipelineError> {
    let schema_exists = client
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&id.schema],
        )
        .await
        .map_err(|e| pg_err(Stage::Source, "read pg_namespace", e))?
        .is_some();
    if !schema_exists {
        return Ok(format!(
            "source table {}: schema {} does not exist",
            id.quoted(),
            quote_ident(&id.schema)
        ));
    }
    let near: Option<String> = client
        .query_opt(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND lower(c.relname) = lower($2) AND c.relkind IN ('r', 'p')
              LIMIT 1",
            &[&id.schema, &id.name],
        )
        .await
        .map_err(|e| pg_err(Stage::Source, "read pg_class", e))?
        .map(|r| r.get(0));
    let hint = near.map_or(String::new(), |n| {
        format!(" (there is {}: names are case sensitive)", quote_ident(&n))
    });
    Ok(format!(
        "source table {}: no table {} in schema {}{hint}",
        id.quoted(),
        quote_ident(&id.name),
        quote_ident(&id.schema)
    ))
}

/// Describes every configured table, refusing missing or keyless ones.
pub async fn describe_all(
    client: &Client,
    ids: &[TableId],
) -> Result<Vec<SourceTable>, PipelineError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let t = match describe(client, id).await? {
            Some(t) => t,
            None => {
                return Err(PipelineError::fatal(
                    Stage::Source,
                    missing(client, id).await?,
                ))
            }
        };
        if let Some(why) = refusal(&t) {
            return Err(PipelineError::fatal(Stage::Source, why));
        }
        out.push(t);
    }
    Ok(out)
}

/// What keeps the sink from creating `id`'s target table from the stream's
/// columns (`sink.create_tables`): columns of a domain or composite type
/// (the target has no such type, and the stream sends only their text) and
/// generated columns (pgoutput never sends them, so a created table would
/// silently lack them). One line per column; empty when nothing does.
pub async fn creation_blockers(
    client: &Client,
    id: &TableId,
) -> Result<Vec<String>, PipelineError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), b.typtype::text,
                    a.attgenerated::text, pg_get_expr(d.adbin, d.adrelid)
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_type t ON t.oid = a.atttypid
               -- the element type of an array column
               JOIN pg_type b ON b.oid = CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE t.oid END
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
                AND (b.typtype IN ('d', 'c') OR a.attgenerated <> '')
              ORDER BY a.attnum",
            &[&id.schema, &id.name],
        )
        .await
        .map_err(|e| pg_err(Stage::Source, "read column types from catalog", e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let (col, ty, kind, generated): (String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            if !generated.is_empty() {
                let expr: Option<String> = r.get(4);
                format!(
                    "column {} is generated (GENERATED ALWAYS AS ({}) STORED), which the stream never carries",
                    quote_ident(&col),
                    expr.unwrap_or_default()
                )
            } else if kind == "d" {
                format!("column {} has the domain type {ty}", quote_ident(&col))
            } else {
                format!("column {} has the composite type {ty}", quote_ident(&col))
            }
        })
        .collect())
}
