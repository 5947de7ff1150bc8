//! Statements prepared once per connection: the sink's cache of prepared
//! statements, keyed by their SQL text and emptied with the connection.

use std::collections::HashMap;

use ferry_pipeline::error::PipelineError;
use ferry_pipeline::event::TableId;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Statement, Transaction};

use crate::error::pg_err;

/// `sql` prepared on this connection, once: `statements` is the sink's
/// cache, emptied when the connection is replaced. `types` pins the
/// parameters' types (empty: the server infers them).
pub(crate) async fn prepared(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    types: &[Type],
    context: &str,
) -> Result<Statement, PipelineError> {
    if let Some(s) = statements.get(sql) {
        return Ok(s.clone());
    }
    let s = tx
        .prepare_typed(sql, types)
        .await
        .map_err(|e| pg_err(&format!("prepare to {context}"), e))?;
    statements.insert(sql.to_string(), s.clone());
    Ok(s)
}

/// Runs `sql` (prepared once per connection, see [`prepared`]) with one
/// text array per parameter; returns the rows it affected.
pub(crate) async fn execute<P: ToSql + Sync>(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    cols: &[P],
    table: &TableId,
) -> Result<u64, PipelineError> {
    let types = vec![Type::TEXT_ARRAY; cols.len()];
    let stmt = prepared(
        tx,
        statements,
        sql,
        &types,
        &format!("apply batch to {table}"),
    )
    .await?;
    let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    tx.execute(&stmt, &params)
        .await
        .map_err(|e| pg_err(&format!("apply batch to {table}"), e))
}
