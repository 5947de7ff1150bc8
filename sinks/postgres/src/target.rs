//! Target tables: what the target database has, and creating or extending a
//! table from the source's columns when the sink is allowed to.

use ferry_pipeline::batch::{RowChange, TableBatch};
use ferry_pipeline::decimal::{self, DecimalTarget};
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use ferry_pipeline::event::{quote_ident, Column, Datum, TableId, TableSchema};
use ferry_pipeline::value::{Numeric, Value};
use tokio_postgres::Client;

use crate::error::pg_err;

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
    /// error instead, except for extra fractional digits of a `numeric`,
    /// which the assignment rounds too: [`TargetTable::check_exact`]
    /// refuses those before writing.
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

impl TargetTable {
    /// Refuses a value that a `numeric(p,s)` target column would round.
    ///
    /// Values are cast to the bare type and the column's assignment checks
    /// the modifier (see [`TargetColumn::cast_sql`]), but for `numeric`
    /// that check rounds extra fractional digits away instead of failing.
    /// A target column is widened to the source's type before a batch is
    /// written, so a value can only have more digits than the target's
    /// scale when the event misdescribes its column (a source read its
    /// catalog before a type change was visible): then the change must be
    /// parked, not written rounded. An amount that silently loses digits
    /// is the one thing this pipeline must never do.
    pub fn check_exact(&self, tb: &TableBatch) -> Result<(), PipelineError> {
        let guarded: Vec<(usize, &TargetColumn, DecimalTarget)> = tb
            .schema
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let t = self.column(&c.name)?;
                if t.cast_sql != "numeric" || t.type_sql == t.cast_sql {
                    return None;
                }
                let target = DecimalTarget::from_type_sql(&t.type_sql, true).ok()?;
                Some((i, t, target))
            })
            .collect();
        if guarded.is_empty() {
            return Ok(());
        }
        for change in &tb.rows {
            let row = match change {
                RowChange::Upsert(row) | RowChange::Patch(row) | RowChange::Rekey { row, .. } => {
                    row
                }
                RowChange::Delete(_) | RowChange::Vanished => continue,
            };
            for (i, column, target) in &guarded {
                let Some(Datum::Value(v @ Value::Numeric(Numeric::Finite(d)))) = row.get(*i) else {
                    continue;
                };
                // Only a value with more fractional digits than the scale
                // can be rounded; the others fit or fail loudly (22003).
                let scale = target.typmod.map_or(i32::MAX, |t| t.scale());
                if i64::from(d.scale()) <= i64::from(scale) {
                    continue;
                }
                if let Err(rejection) = decimal::normalize(v, target) {
                    return Err(PipelineError::new(
                        ErrorClass::Permanent,
                        Stage::Sink,
                        format!(
                            "target column {}.{} is {}: {rejection}; PostgreSQL would round it, \
                             so the change is not written",
                            self.id, column.name, column.type_sql
                        ),
                    ));
                }
            }
        }
        Ok(())
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

    /// A batch with one inserted row per price, in a table whose source
    /// schema claims `numeric(6,2)`.
    fn batch_of_prices(prices: &[&str]) -> ferry_pipeline::batch::Batch {
        use std::sync::Arc;
        let mut id = col("id", "integer");
        id.is_key = true;
        let schema = Arc::new(TableSchema {
            id: TableId::new("public", "t"),
            columns: vec![id, col("price", "numeric(6,2)")],
            primary_key: vec![0],
            child: None,
        });
        let mut batch = ferry_pipeline::batch::Batch::default();
        for (i, p) in prices.iter().enumerate() {
            let price = Value::Numeric(Numeric::Finite(p.parse().expect("decimal")));
            let row = vec![Datum::Value(Value::Int(i as i64)), Datum::Value(price)];
            batch.push(ferry_pipeline::event::ChangeEvent::snapshot_read(
                Arc::clone(&schema),
                row,
            ));
        }
        batch
    }

    #[test]
    fn a_value_the_target_would_round_is_refused() {
        let t = table(&[
            ("id", "integer", "integer"),
            ("price", "numeric(6,2)", "numeric"),
        ]);
        // Trailing zeros beyond the scale lose nothing.
        let fits = batch_of_prices(&["1.25", "1.2500", "-7", "0.10"]);
        assert!(t.check_exact(&fits.tables[0]).is_ok());
        // PostgreSQL would store 1.00: parked instead, naming the column.
        let rounds = batch_of_prices(&["1.25", "1.0001"]);
        let e = t.check_exact(&rounds.tables[0]).unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(e.message.contains("public.t.price is numeric(6,2)"), "{e}");
        assert!(e.message.contains("1.0001"), "{e}");
        // An unconstrained target column holds every value.
        let wide = table(&[
            ("id", "integer", "integer"),
            ("price", "numeric", "numeric"),
        ]);
        assert!(wide.check_exact(&rounds.tables[0]).is_ok());
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
