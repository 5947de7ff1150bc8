//! Target tables: what the target database has, and creating or extending a
//! table from the source's columns when the sink is allowed to.

use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{quote_ident, Column, TableId, TableSchema};
use tokio_postgres::Client;

use crate::pg_err;

/// One target column.
#[derive(Debug, Clone)]
pub struct TargetColumn {
    pub name: String,
    /// The declared type, with its modifier (`numeric(12,2)`).
    pub type_sql: String,
    /// The type without modifier (`numeric`): what values are cast to. An
    /// explicit cast to `varchar(5)` or `numeric(4,1)` truncates or rounds
    /// silently; casting to the bare type and letting the column's
    /// assignment check the modifier makes a value that does not fit an
    /// error instead.
    pub cast_sql: String,
}

/// A target table's columns as the target declares them.
#[derive(Debug, Clone)]
pub struct TargetTable {
    pub id: TableId,
    /// In target order.
    pub columns: Vec<TargetColumn>,
}

impl TargetTable {
    fn column(&self, name: &str) -> Option<&TargetColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The type a value of this column is cast to (see
    /// [`TargetColumn::cast_sql`]).
    pub fn type_of(&self, column: &str) -> Option<&str> {
        self.column(column).map(|c| c.cast_sql.as_str())
    }

    /// Whether the target column holds every value of the source column
    /// exactly: the same type, or the same type without a modifier
    /// (`numeric` for `numeric(12,2)`, `text` for `varchar(n)`).
    pub fn accepts(&self, source: &Column) -> bool {
        let Some(t) = self.column(&source.name) else {
            return false;
        };
        if t.type_sql == source.type_sql {
            return true;
        }
        let source_base = without_modifiers(&source.type_sql);
        let unconstrained = t.type_sql == t.cast_sql;
        (unconstrained && t.cast_sql == source_base)
            || (t.type_sql == "text" && source_base == "character varying")
    }
}

/// `character varying(10)[]` → `character varying[]`,
/// `timestamp(3) with time zone` → `timestamp with time zone`.
fn without_modifiers(type_sql: &str) -> String {
    let mut out = String::with_capacity(type_sql.len());
    let mut depth = 0;
    for ch in type_sql.chars() {
        match ch {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out
}

/// Reads a table's columns from the target; `None` when it does not exist.
pub async fn describe(client: &Client, id: &TableId) -> Result<Option<TargetTable>, PipelineError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    -- Without a modifier `character` and `bit` mean length
                    -- 1 in a cast: use their unbounded forms.
                    CASE format_type(a.atttypid, NULL)
                        WHEN 'character' THEN 'bpchar'
                        WHEN 'character[]' THEN 'bpchar[]'
                        WHEN 'bit' THEN 'varbit'
                        WHEN 'bit[]' THEN 'varbit[]'
                        ELSE format_type(a.atttypid, NULL)
                    END
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
        columns: rows
            .iter()
            .map(|r| TargetColumn {
                name: r.get(0),
                type_sql: r.get(1),
                cast_sql: r.get(2),
            })
            .collect(),
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
        // Columns whose target type could not hold the source's values
        // exactly (a narrower length, precision or scale, or another type):
        // writing would truncate or round, so mirror the source's type or
        // stop.
        let narrower: Vec<_> = schema
            .columns
            .iter()
            .filter(|c| t.type_of(&c.name).is_some() && !t.accepts(c))
            .collect();
        if !narrower.is_empty() {
            if !create {
                let what: Vec<String> = narrower
                    .iter()
                    .map(|c| {
                        format!(
                            "{} is {} in the target, {} in the source",
                            c.name,
                            t.column(&c.name).map_or("?", |x| x.type_sql.as_str()),
                            c.type_sql
                        )
                    })
                    .collect();
                return Err(PipelineError::fatal(
                    Stage::Sink,
                    format!(
                        "target table {target} cannot hold the source's values exactly ({}); \
                         change the target columns or set sink.create_tables = true",
                        what.join("; ")
                    ),
                ));
            }
            for c in &narrower {
                create_enum_type(client, c).await?;
                let sql = format!(
                    "ALTER TABLE {} ALTER COLUMN {col} TYPE {ty} USING {col}::{ty}",
                    target.quoted(),
                    col = quote_ident(&c.name),
                    ty = c.type_sql
                );
                client.batch_execute(&sql).await.map_err(|e| {
                    pg_err(
                        &format!("change type of {}.{} to {}", target, c.name, c.type_sql),
                        e,
                    )
                })?;
                tracing::info!(table = %target, column = %c.name, r#type = %c.type_sql, "target column type follows the source");
            }
        }
        if missing.is_empty() {
            return describe(client, target).await?.ok_or_else(|| {
                PipelineError::fatal(Stage::Sink, format!("target table {target} vanished"))
            });
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
async fn create_enum_type(client: &Client, c: &Column) -> Result<(), PipelineError> {
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

/// The mapped target tables as the catalog declares them (columns with
/// nullability and defaults, primary key in key order), for compiling a
/// mapping; tables that do not exist are absent.
pub async fn mapping_catalog(
    client: &Client,
    ids: &[TableId],
) -> Result<std::collections::HashMap<TableId, ferry_pipeline::transform::TargetTable>, PipelineError>
{
    use ferry_pipeline::transform::{TargetColumn as MappedColumn, TargetTable as Mapped};
    let mut out = std::collections::HashMap::new();
    for id in ids {
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
                        a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                        array_position(pk.indkey::int2[], a.attnum)
                   FROM pg_attribute a
                   JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
                    AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&id.schema, &id.name],
            )
            .await
            .map_err(|e| pg_err("describe mapped target table", e))?;
        if rows.is_empty() {
            continue;
        }
        let mut key: Vec<(i32, String)> = Vec::new();
        let columns = rows
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                if let Some(pos) = r.get::<_, Option<i32>>(4) {
                    key.push((pos, name.clone()));
                }
                MappedColumn {
                    name,
                    type_sql: r.get(1),
                    nullable: r.get(2),
                    has_default: r.get(3),
                }
            })
            .collect();
        key.sort();
        out.insert(
            id.clone(),
            Mapped {
                id: id.clone(),
                columns,
                primary_key: key.into_iter().map(|(_, n)| n).collect(),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(cols: &[(&str, &str, &str)]) -> TargetTable {
        TargetTable {
            id: TableId::new("public", "t"),
            columns: cols
                .iter()
                .map(|(n, t, c)| TargetColumn {
                    name: n.to_string(),
                    type_sql: t.to_string(),
                    cast_sql: c.to_string(),
                })
                .collect(),
        }
    }

    fn col(name: &str, type_sql: &str) -> Column {
        Column {
            name: name.into(),
            type_oid: 0,
            type_sql: type_sql.into(),
            nullable: true,
            is_key: false,
            enum_labels: None,
            id_map: None,
        }
    }

    #[test]
    fn narrower_targets_are_not_accepted() {
        let t = table(&[
            ("a", "numeric(10,2)", "numeric"),
            ("b", "numeric", "numeric"),
            ("c", "character varying(5)", "character varying"),
            ("d", "text", "text"),
            (
                "e",
                "timestamp(3) with time zone",
                "timestamp with time zone",
            ),
        ]);
        assert!(t.accepts(&col("a", "numeric(10,2)")));
        assert!(!t.accepts(&col("a", "numeric(12,4)")));
        assert!(t.accepts(&col("b", "numeric(38,10)")));
        assert!(!t.accepts(&col("c", "character varying(50)")));
        assert!(t.accepts(&col("d", "character varying(50)")));
        assert!(!t.accepts(&col("d", "character(3)")));
        assert!(!t.accepts(&col("e", "timestamp with time zone")));
        assert!(!t.accepts(&col("zz", "text")));
        assert_eq!(
            without_modifiers("character varying(10)[]"),
            "character varying[]"
        );
    }
}
