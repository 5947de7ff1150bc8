//! The apply path: what one batch does to the target, inside the caller's
//! transaction (truncates, prunes, rekeys, deletes, upserts, patches, and
//! the dead-letter bookkeeping that goes with them).

use std::collections::HashMap;

use ferry_pipeline::batch::{Batch, RowChange, TableBatch};
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{Datum, TableId};
use ferry_pipeline::metrics::metrics;
use ferry_pipeline::value::Value;
use tokio_postgres::{Statement, Transaction};

use crate::error::pg_err;
use crate::params::{PreparedBatch, PreparedTable};
use crate::statement_cache::execute;
use crate::target::TargetTable;
use crate::{checkpoint, dlq, id_map, literal, params, statement};

/// The first step of a batch's transaction. On the Kafka bus: the worker's
/// progress per partition, fenced (first, so that its row locks are taken
/// before any data is written). On the embedded bus, after an error around
/// COMMIT (`recheck`): whether the batch landed already; writing it again
/// would be harmless for upserts but not for a rekey (its old key is gone)
/// nor for parked records (parked twice). `true` means: nothing to do.
pub(crate) async fn already_committed(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    pipeline: &str,
    batch: &Batch,
    recheck: bool,
) -> Result<bool, PipelineError> {
    if !batch.bus.is_empty() {
        checkpoint::save_bus_offsets(tx, statements, pipeline, &batch.bus).await?;
    } else if let (true, Some(p)) = (recheck, batch.last_position) {
        if checkpoint::load(tx, pipeline).await?.position >= Some(p) {
            tracing::info!(position = %p, "batch was already committed before the error");
            return Ok(true);
        }
    }
    Ok(false)
}

/// The batch's position and resume token (embedded bus). A worker's
/// positions come from several partitions and do not form one order: its
/// progress is in `ferry_bus_offsets` only.
pub(crate) async fn save_position(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    pipeline: &str,
    batch: &Batch,
) -> Result<(), PipelineError> {
    if batch.bus.is_empty() && (batch.last_position.is_some() || batch.last_resume_token.is_some())
    {
        checkpoint::save_position(
            tx,
            statements,
            pipeline,
            batch.last_position.unwrap_or_default(),
            batch.last_resume_token.as_deref(),
        )
        .await?;
    }
    Ok(())
}

/// Everything a batch does to its tables, inside the caller's
/// transaction: the id map first (the rows read their new ids from it),
/// then child tables' prunes (children before parents, so that a parent's
/// delete never meets its children), then each table's rows.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_tables(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    tables: &HashMap<TableId, TargetTable>,
    prepared: &PreparedBatch,
    target_ids: &[TableId],
    pipeline: &str,
    one_by_one: bool,
    dlq_tables: &std::collections::HashSet<TableId>,
    req: &id_map::Requests,
) -> Result<(), PipelineError> {
    let batch = &prepared.batch;
    if !req.is_empty() {
        id_map::allocate(tx, req).await?;
        id_map::require(tx, req).await?;
    }
    // Tables emptied together (a mapped table and its child tables): one
    // TRUNCATE, as PostgreSQL refuses to empty a table that another one
    // references unless both go in the same statement. Empty tables are
    // left alone (a first snapshot into tables with foreign keys).
    let mut emptied = Vec::new();
    let mut any_rows = false;
    for (tb, id) in batch.tables.iter().zip(target_ids) {
        if tb.truncate || tb.snapshot_start {
            any_rows |= has_rows(tx, id).await?;
            emptied.push(&ensured(tables, id)?.id);
            // Records parked for rows that are gone now must not come back.
            dlq::supersede_table(tx, pipeline, &tb.schema.id).await?;
        }
    }
    if emptied.len() > 1 && any_rows {
        tx.batch_execute(&statement::truncate(&emptied))
            .await
            .map_err(|e| pg_err("truncate tables", e))?;
    }
    apply_prunes_all(tx, statements, tables, batch, target_ids).await?;
    for ((tb, pt), id) in batch.tables.iter().zip(&prepared.tables).zip(target_ids) {
        let target = ensured(tables, id)?;
        apply_table(tx, statements, target, tb, pt, pipeline, one_by_one).await?;
        if dlq_tables.contains(&tb.schema.id) {
            let keys: Vec<String> = tb
                .rows
                .iter()
                .filter_map(|r| ferry_pipeline::batch::key_text(&tb.schema, r))
                .collect();
            dlq::supersede(tx, pipeline, &tb.schema.id, &keys).await?;
        }
    }
    Ok(())
}

/// Whether a table has any row (TRUNCATE of an empty table is skipped).
async fn has_rows(tx: &Transaction<'_>, id: &TableId) -> Result<bool, PipelineError> {
    tx.query_one(&statement::has_rows(id), &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| pg_err(&format!("read {id}"), e))
}

/// A target table checked by `ensure_tables`, unless a reconnect since
/// cleared the cache: then the whole batch is retried.
fn ensured<'a>(
    tables: &'a HashMap<TableId, TargetTable>,
    id: &TableId,
) -> Result<&'a TargetTable, PipelineError> {
    tables.get(id).ok_or_else(|| {
        PipelineError::transient(
            Stage::Sink,
            format!("target table {id} needs to be checked again"),
        )
    })
}

/// The prunes of every child table in the batch, children last-touched
/// first.
pub(crate) async fn apply_prunes_all(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    tables: &HashMap<TableId, TargetTable>,
    batch: &Batch,
    target_ids: &[TableId],
) -> Result<(), PipelineError> {
    for (tb, id) in batch.tables.iter().zip(target_ids).rev() {
        if tb.prunes.is_empty() {
            continue;
        }
        apply_prunes(tx, statements, ensured(tables, id)?, tb).await?;
    }
    Ok(())
}

/// Deletes a child table's rows past each parent's array end.
async fn apply_prunes(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    target: &TargetTable,
    tb: &TableBatch,
) -> Result<(), PipelineError> {
    let Some(link) = &tb.schema.child else {
        return Ok(());
    };
    let schema = &tb.schema;
    let k = link.parent_key.len();
    let mut cols: Vec<params::TextArrayBuilder> = (0..=k)
        .map(|_| params::TextArrayBuilder::with_capacity(tb.prunes.len()))
        .collect();
    for (parent, keep) in &tb.prunes {
        for (j, col) in cols.iter_mut().take(k).enumerate() {
            col.push_value(parent.get(j).unwrap_or(&Value::Null));
        }
        cols[k].push(Some(&keep.to_string()));
    }
    target.check_exact(tb)?;
    let sql = statement::prune(target, schema, link);
    let arrays: Vec<params::TextArray> = cols
        .into_iter()
        .map(params::TextArrayBuilder::finish)
        .collect();
    execute(tx, statements, &sql, &arrays, &target.id).await?;
    Ok(())
}

/// The batch's dead-letter bookkeeping for the transform stage, inside its
/// transaction: source rows changed by the batch supersede their parked
/// records, the records the mapping refused are parked (in order, each
/// superseded if a later change of its row in the batch landed), and
/// mapped source tables' finished snapshots are recorded.
pub(crate) async fn settle_dlq(
    tx: &Transaction<'_>,
    pipeline: &str,
    batch: &Batch,
    dlq_tables: &std::collections::HashSet<TableId>,
) -> Result<(), PipelineError> {
    let mut by_table: HashMap<&TableId, Vec<String>> = HashMap::new();
    for (table, key) in &batch.source_keys {
        if dlq_tables.contains(table) {
            by_table.entry(table).or_default().push(key.clone());
        }
    }
    for (table, keys) in by_table {
        dlq::supersede(tx, pipeline, table, &keys).await?;
    }
    for table in &batch.emptied_sources {
        dlq::supersede_table(tx, pipeline, table).await?;
    }
    for p in &batch.parked {
        let op = ferry_pipeline::dlq::decode_event(&p.record.event)
            .map(|ev| match ev.op {
                ferry_pipeline::event::Op::Delete => "delete",
                ferry_pipeline::event::Op::Update => "update",
                _ => "upsert",
            })
            .unwrap_or("upsert");
        // The newest state of the row: older records must not be replayed
        // after it.
        dlq::supersede(tx, pipeline, &p.table, std::slice::from_ref(&p.record.key)).await?;
        dlq::park(tx, pipeline, &p.table, op, &p.record).await?;
        if p.superseded {
            dlq::supersede(tx, pipeline, &p.table, std::slice::from_ref(&p.record.key)).await?;
        }
        metrics()
            .dlq_events
            .with_label_values(&[&p.table.to_string(), &p.record.error.class])
            .inc();
    }
    for (table, rows, state) in &batch.snapshot_marks {
        checkpoint::save_snapshot(tx, pipeline, table, *rows, state).await?;
    }
    Ok(())
}

/// Applies everything a batch does to one table.
pub(crate) async fn apply_table(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    target: &TargetTable,
    tb: &TableBatch,
    prepared: &PreparedTable,
    pipeline: &str,
    one_by_one: bool,
) -> Result<(), PipelineError> {
    let schema = &tb.schema;
    if tb.snapshot_start {
        checkpoint::clear_snapshot(tx, pipeline, &schema.id).await?;
    }
    if (tb.truncate || tb.snapshot_start) && has_rows(tx, &target.id).await? {
        tx.batch_execute(&statement::truncate(&[&target.id]))
            .await
            .map_err(|e| pg_err(&format!("truncate {}", target.id), e))?;
    }
    if schema.primary_key.is_empty() {
        if tb.rows.is_empty() {
            return Ok(());
        }
        return Err(PipelineError::fatal(
            Stage::Sink,
            format!(
                "table {} has no primary key; Ferry cannot apply its rows by key",
                schema.id
            ),
        ));
    }
    // Rekeys first: the batch starts with them (see `Batch::needs_own_batch`).
    for r in &tb.rows {
        if let RowChange::Rekey { old_key, row } = r {
            rekey(tx, statements, target, tb, old_key, row).await?;
        }
    }

    if let Some(rows) = &prepared.deletes {
        let sql = statement::delete(target, schema);
        execute(tx, statements, &sql, &rows.columns, &target.id).await?;
    }

    if let Some(rows) = &prepared.upserts {
        let sql = statement::upsert(target, schema);
        if one_by_one {
            upsert_one_by_one(tx, statements, &sql, tb, &target.id).await?;
        } else {
            execute(tx, statements, &sql, &rows.columns, &target.id).await?;
        }
    }
    for (mask, rows) in &prepared.patches {
        let Some(sql) = statement::patch(target, schema, mask) else {
            continue;
        };
        let n = execute(tx, statements, &sql, &rows.columns, &target.id).await?;
        if n < rows.count as u64 {
            // An update whose row is not in the target: the target was
            // changed behind Ferry's back (or the snapshot is incomplete).
            return Err(PipelineError::new(
                ferry_pipeline::error::ErrorClass::Permanent,
                Stage::Sink,
                format!(
                    "{} update(s) to {} left TOAST values unchanged but their rows are missing from the target",
                    rows.count as u64 - n,
                    target.id
                ),
            ));
        }
    }
    if let Some((rows, state)) = &tb.snapshot_done {
        checkpoint::save_snapshot(tx, pipeline, &schema.id, *rows, state).await?;
    }
    Ok(())
}

/// Upserts the batch's rows one at a time, each in a savepoint, passing
/// over a row whose unique value is still held by another row and coming
/// back to it once that row moved on. Fails only when a pass makes no
/// progress (a cycle that the batch's intermediate states resolved at the
/// source).
async fn upsert_one_by_one(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    tb: &TableBatch,
    table: &TableId,
) -> Result<(), PipelineError> {
    let all: Vec<usize> = (0..tb.schema.columns.len()).collect();
    let mut pending: Vec<&Vec<Datum>> = tb
        .rows_by_last_touch()
        .into_iter()
        .filter_map(|i| match &tb.rows[i] {
            RowChange::Upsert(row) => Some(row),
            _ => None,
        })
        .collect();
    while !pending.is_empty() {
        let mut blocked = Vec::new();
        let mut last_error = None;
        for row in &pending {
            let cols = params::column_arrays(&[*row], &all).columns;
            tx.batch_execute("SAVEPOINT ferry_row")
                .await
                .map_err(|e| pg_err("savepoint", e))?;
            match execute(tx, statements, sql, &cols, table).await {
                Ok(_) => tx
                    .batch_execute("RELEASE SAVEPOINT ferry_row")
                    .await
                    .map_err(|e| pg_err("release savepoint", e))?,
                Err(e) if e.code.as_deref() == Some("23505") => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT ferry_row")
                        .await
                        .map_err(|e| pg_err("rollback to savepoint", e))?;
                    blocked.push(*row);
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if blocked.len() == pending.len() {
            return Err(last_error.expect("a blocked row has its error"));
        }
        pending = blocked;
    }
    Ok(())
}

/// Moves one row to a new key, setting every column the change carries and
/// keeping the target's value of the others.
async fn rekey(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    target: &TargetTable,
    tb: &TableBatch,
    old_key: &[Value],
    row: &[Datum],
) -> Result<(), PipelineError> {
    let schema = &tb.schema;
    // The arrays in the order the statement numbers them: the values the
    // change carries, then the old key.
    let mut cols: Vec<Vec<Option<String>>> = Vec::new();
    for i in 0..schema.columns.len() {
        if let Some(Datum::Value(v)) = row.get(i) {
            cols.push(vec![literal::to_pg_text(v)]);
        }
    }
    for k in 0..schema.primary_key.len() {
        cols.push(vec![old_key.get(k).and_then(literal::to_pg_text)]);
    }
    let sql = statement::rekey(target, schema, row);
    let n = execute(tx, statements, &sql, &cols, &target.id).await?;
    tracing::debug!(table = %target.id, rows = n, "moved a row to a new key");
    if n != 1 {
        return Err(PipelineError::new(
            ferry_pipeline::error::ErrorClass::Permanent,
            Stage::Sink,
            format!("a key change in {} left large values untouched but the row is missing from the target", target.id),
        ));
    }
    Ok(())
}
