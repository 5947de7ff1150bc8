//! Target tables: what the target database has, and creating or extending a
//! table from the source's columns when the sink is allowed to.

use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{quote_ident, TableId, TableSchema};
use tokio_postgres::Client;

use crate::pg_err;

/// A target table's columns as the target declares them.
#[derive(Debug, Clone)]
pub struct TargetTable {
    pub id: TableId,
    /// (name, type as SQL) in target order.
    pub columns: Vec<(String, String)>,
}

impl TargetTable {
    /// The target's SQL type of a column.
    pub fn type_of(&self, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(n, _)| n == column)
            .map(|(_, t)| t.as_str())
    }
}

/// Reads a table's columns from the target; `None` when it does not exist.
pub async fn describe(client: &Client, id: &TableId) -> Result<Option<TargetTable>, PipelineError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2
                AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&id.schema, &id.name],
        )
        .await
        .map_err(|e| pg_err("describe target table", e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(TargetTable {
        id: id.clone(),
        columns: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
    }))
}

/// Makes sure the target table exists and has every source column; creates
/// or extends it when `create` is set, otherwise a missing table or column
/// is fatal with a message that says what to do.
pub async fn ensure(
    client: &Client,
    target: &TableId,
    schema: &TableSchema,
    create: bool,
) -> Result<TargetTable, PipelineError> {
    if let Some(t) = describe(client, target).await? {
        let missing: Vec<_> = schema
            .columns
            .iter()
            .filter(|c| t.type_of(&c.name).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(t);
        }
        if !create {
            let names: Vec<_> = missing.iter().map(|c| c.name.as_str()).collect();
            return Err(PipelineError::fatal(
                Stage::Sink,
                format!(
                    "target table {target} lacks column(s) {names:?}; add them or set sink.create_tables = true"
                ),
            ));
        }
        for c in missing {
            create_enum_type(client, c).await?;
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                target.quoted(),
                quote_ident(&c.name),
                c.type_sql
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| pg_err(&format!("add column {} to {target}", c.name), e))?;
        }
    } else {
        if !create {
            return Err(PipelineError::fatal(
                Stage::Sink,
                format!(
                    "target table {target} does not exist; create it or set sink.create_tables = true"
                ),
            ));
        }
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(&target.schema)
            ))
            .await
            .map_err(|e| pg_err("create target schema", e))?;
        for c in &schema.columns {
            create_enum_type(client, c).await?;
        }
        client
            .batch_execute(&create_table_sql(target, schema))
            .await
            .map_err(|e| pg_err(&format!("create target table {target}"), e))?;
    }
    describe(client, target).await?.ok_or_else(|| {
        PipelineError::fatal(
            Stage::Sink,
            format!("target table {target} vanished after creation"),
        )
    })
}

/// `CREATE TABLE IF NOT EXISTS` with the source's types, nullability and
/// primary key.
pub fn create_table_sql(target: &TableId, schema: &TableSchema) -> String {
    let mut cols: Vec<String> = schema
        .columns
        .iter()
        .map(|c| {
            format!(
                "{} {}{}",
                quote_ident(&c.name),
                c.type_sql,
                if c.nullable { "" } else { " NOT NULL" }
            )
        })
        .collect();
    if !schema.primary_key.is_empty() {
        let keys: Vec<_> = schema.key_columns().map(|c| quote_ident(&c.name)).collect();
        cols.push(format!("PRIMARY KEY ({})", keys.join(", ")));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        target.quoted(),
        cols.join(", ")
    )
}

/// Creates the enum type a column uses when the target lacks it.
async fn create_enum_type(
    client: &Client,
    c: &ferry_pipeline::event::Column,
) -> Result<(), PipelineError> {
    let Some(labels) = &c.enum_labels else {
        return Ok(());
    };
    let labels: Vec<String> = labels
        .iter()
        .map(|l| format!("'{}'", l.replace('\'', "''")))
        .collect();
    // The source's type_sql is already a valid (quoted when needed) name.
    let sql = format!(
        "DO $ferry$ BEGIN CREATE TYPE {} AS ENUM ({}); \
         EXCEPTION WHEN duplicate_object THEN NULL; END $ferry$",
        c.type_sql,
        labels.join(", ")
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| pg_err(&format!("create enum type {}", c.type_sql), e))
}
