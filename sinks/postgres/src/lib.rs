//! PostgreSQL sink for Ferry.
//!
//! Applies each [`Batch`] in one transaction with multi-row statements built
//! on `unnest` of text arrays: `INSERT … ON CONFLICT (pk) DO UPDATE` for
//! upserts, `DELETE … USING unnest(…)` for deletes, `UPDATE … FROM
//! unnest(…)` for updates that left TOAST values untouched. Every value
//! travels as PostgreSQL text and is cast to the target column's own type,
//! which is exact for every type (the same path pg_dump relies on). The
//! pipeline's checkpoint is written in the same transaction
//! ([`checkpoint`]), so the effect of a replay is exactly-once.

pub mod checkpoint;
pub mod literal;
pub mod params;
pub mod target;

use std::collections::HashMap;

use ferry_pipeline::batch::{Batch, RowChange, TableBatch};
use ferry_pipeline::checkpoint::{BusOffsets, Checkpoint, CheckpointStore, PartitionProgress};
use ferry_pipeline::config::PostgresSinkConfig;
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{quote_ident, Datum, TableId};
use ferry_pipeline::sink::Sink;
use ferry_pipeline::value::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement, Transaction};
use tracing::{info, warn};

use crate::params::{PreparedBatch, PreparedTable};
use crate::target::TargetTable;

/// Wraps a driver error with its SQLSTATE class.
pub(crate) fn pg_err(context: &str, e: tokio_postgres::Error) -> PipelineError {
    let code = e.code().map(|c| c.code().to_string());
    let msg = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    };
    PipelineError::from_postgres(Stage::Sink, context, code.as_deref(), anyhow::anyhow!(msg))
}

/// The PostgreSQL sink.
pub struct PostgresSink {
    cfg: PostgresSinkConfig,
    pipeline: String,
    client: Option<Client>,
    tables: HashMap<TableId, TargetTable>,
    statements: HashMap<String, Statement>,
    /// The last write failed in a way that may have hidden a successful
    /// commit (the connection broke around COMMIT): check the checkpoint
    /// before writing the batch again.
    maybe_committed: bool,
}

impl PostgresSink {
    pub fn new(cfg: PostgresSinkConfig, pipeline: impl Into<String>) -> Self {
        Self {
            cfg,
            pipeline: pipeline.into(),
            client: None,
            tables: HashMap::new(),
            statements: HashMap::new(),
            maybe_committed: false,
        }
    }

    /// The target table a source table is written to.
    pub fn target_id(&self, source: &TableId) -> TableId {
        match &self.cfg.schema {
            Some(s) => TableId::new(s.clone(), source.name.clone()),
            None => source.clone(),
        }
    }

    async fn client(&mut self) -> Result<&mut Client, PipelineError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let (client, conn) = tokio_postgres::connect(self.cfg.url.expose(), NoTls)
                .await
                .map_err(|e| pg_err("connect to target", e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    warn!(error = %e, "target connection closed");
                }
            });
            checkpoint::install(&client).await?;
            self.statements.clear();
            self.tables.clear();
            info!("connected to target");
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    async fn write(&mut self, prepared: &PreparedBatch) -> Result<(), PipelineError> {
        let batch = &prepared.batch;
        // (Re)connect first: a reconnect clears the caches, which must
        // happen before they are taken below (statements prepared on the old
        // connection do not exist on the new one: after a target restart
        // every retry failed with 26000).
        self.client().await?;
        // Make sure every table exists before the data transaction: DDL
        // errors are then fatal and never half-apply a batch.
        for tb in &batch.tables {
            let target = self.target_id(&tb.schema.id);
            let known = self
                .tables
                .get(&target)
                .is_some_and(|t| tb.schema.columns.iter().all(|c| t.accepts(c)));
            if !known {
                let create = self.cfg.create_tables;
                let client = self.client().await?;
                let t = target::ensure(client, &target, &tb.schema, create).await?;
                self.tables.insert(target, t);
            }
        }
        let pipeline = self.pipeline.clone();
        let schema_override = self.cfg.schema.clone();
        let mut statements = std::mem::take(&mut self.statements);
        let tables = std::mem::take(&mut self.tables);
        let recheck = self.maybe_committed;
        let mut one_by_one = false;
        let result = loop {
            let attempt = async {
            let client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| pg_err("begin", e))?;
            if !batch.bus.is_empty() {
                // Kafka worker: progress per partition, fenced (first, so
                // that its row locks are taken before any data is written).
                checkpoint::save_bus_offsets(&tx, &pipeline, &batch.bus).await?;
            } else if let (true, Some(p)) = (recheck, batch.last_position) {
                // A retry after an error around COMMIT: if the batch did
                // land, writing it again would be harmless for upserts but
                // not for a rekey (its old key is gone).
                let stored = checkpoint::load(&tx, &pipeline).await?.position;
                if stored >= Some(p) {
                    tracing::info!(position = %p, "batch was already committed before the error");
                    return Ok(());
                }
            }
            for (tb, pt) in batch.tables.iter().zip(&prepared.tables) {
                let id = match &schema_override {
                    Some(s) => TableId::new(s.clone(), tb.schema.id.name.clone()),
                    None => tb.schema.id.clone(),
                };
                // Ensured above, unless a reconnect in between cleared the
                // cache: then retry the whole batch.
                let target = tables.get(&id).ok_or_else(|| {
                    PipelineError::transient(
                        Stage::Sink,
                        format!("target table {id} needs to be checked again"),
                    )
                })?;
                apply_table(&tx, &mut statements, target, tb, pt, &pipeline, one_by_one).await?;
            }
            // A worker's positions come from several partitions and do not
            // form one order: its progress is in ferry_bus_offsets only.
            if batch.bus.is_empty()
                && (batch.last_position.is_some() || batch.last_resume_token.is_some())
            {
                checkpoint::save_position(
                    &tx,
                    &pipeline,
                    batch.last_position.unwrap_or_default(),
                    batch.last_resume_token.as_deref(),
                )
                .await?;
            }
            tx.commit().await.map_err(|e| pg_err("commit", e))
        }
        .await;
            // A unique value that changes hands inside one batch can make
            // the multi-row upsert (one row per key, final states) collide
            // with a row whose own change comes later in it: redo the batch
            // row by row, each row once the value it needs is free.
            match attempt {
                Err(e) if !one_by_one && e.code.as_deref() == Some("23505") => {
                    tracing::info!(error = %e, "unique value changed hands within the batch; applying it row by row");
                    one_by_one = true;
                }
                other => break other,
            }
        };
        self.statements = statements;
        self.tables = tables;
        match &result {
            Ok(()) => self.maybe_committed = false,
            Err(e) if e.disposition() == ferry_pipeline::error::Disposition::Retry => {
                // The connection may be broken; start afresh next time,
                // without the statements prepared on it.
                self.client = None;
                self.statements.clear();
                self.maybe_committed = true;
            }
            Err(_) => {}
        }
        result
    }
}

impl CheckpointStore for PostgresSink {
    async fn load(&mut self) -> Result<Checkpoint, PipelineError> {
        let pipeline = self.pipeline.clone();
        let client = self.client().await?;
        checkpoint::load(client, &pipeline).await
    }
}

impl BusOffsets for PostgresSink {
    async fn load_bus_offsets(
        &mut self,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), PartitionProgress>, PipelineError> {
        let pipeline = self.pipeline.clone();
        let client = self.client().await?;
        checkpoint::load_bus_offsets(client, &pipeline, partitions).await
    }
}

impl Sink for PostgresSink {
    type Prepared = PreparedBatch;

    fn prepare(batch: Batch) -> PreparedBatch {
        params::prepare(batch)
    }

    async fn write_batch(&mut self, batch: &PreparedBatch) -> Result<(), PipelineError> {
        self.write(batch).await
    }
}

/// Applies everything a batch does to one table.
async fn apply_table(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    target: &TargetTable,
    tb: &TableBatch,
    prepared: &PreparedTable,
    pipeline: &str,
    one_by_one: bool,
) -> Result<(), PipelineError> {
    let schema = &tb.schema;
    let table_sql = target.id.quoted();
    if tb.snapshot_start {
        checkpoint::clear_snapshot(tx, pipeline, &schema.id).await?;
    }
    if tb.truncate || tb.snapshot_start {
        tx.batch_execute(&format!("TRUNCATE {table_sql}"))
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
    let cast = |name: &str| -> String { target.type_of(name).unwrap_or("text").to_string() };
    let key_names: Vec<&str> = schema.key_columns().map(|c| c.name.as_str()).collect();
    let placeholders = |n: usize| -> String {
        (1..=n)
            .map(|i| format!("${i}::text[]"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    // Rekeys first: the batch starts with them (see `Batch::needs_own_batch`).
    for r in &tb.rows {
        if let RowChange::Rekey { old_key, row } = r {
            rekey(tx, statements, target, tb, old_key, row).await?;
        }
    }

    if let Some(rows) = &prepared.deletes {
        let aliases: Vec<String> = (0..key_names.len()).map(|i| format!("k{i}")).collect();
        let cond: Vec<String> = key_names
            .iter()
            .enumerate()
            .map(|(i, k)| format!("t.{} = u.k{i}::{}", quote_ident(k), cast(k)))
            .collect();
        let sql = format!(
            "DELETE FROM {table_sql} AS t USING unnest({}) AS u({}) WHERE {}",
            placeholders(key_names.len()),
            aliases.join(", "),
            cond.join(" AND ")
        );
        execute(tx, statements, &sql, &rows.columns, &target.id).await?;
    }

    let width = schema.columns.len();
    if let Some(rows) = &prepared.upserts {
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        let aliases: Vec<String> = (0..width).map(|i| format!("c{i}")).collect();
        let select: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("u.c{i}::{}", cast(n)))
            .collect();
        let non_key: Vec<String> = names
            .iter()
            .filter(|n| !key_names.contains(n))
            .map(|n| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
            .collect();
        let conflict = if non_key.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", non_key.join(", "))
        };
        let sql =
            format!(
            "INSERT INTO {table_sql} ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT ({}) {}",
            names.iter().map(|n| quote_ident(n)).collect::<Vec<_>>().join(", "),
            select.join(", "),
            placeholders(width),
            aliases.join(", "),
            key_names.iter().map(|n| quote_ident(n)).collect::<Vec<_>>().join(", "),
            conflict
        );
        if one_by_one {
            upsert_one_by_one(tx, statements, &sql, tb, &target.id).await?;
        } else {
            execute(tx, statements, &sql, &rows.columns, &target.id).await?;
        }
    }
    for (mask, rows) in &prepared.patches {
        let present: Vec<usize> = (0..width).filter(|&i| mask[i]).collect();
        let aliases: Vec<String> = (0..present.len()).map(|i| format!("c{i}")).collect();
        let mut sets = Vec::new();
        let mut conds = Vec::new();
        for (j, &i) in present.iter().enumerate() {
            let name = &schema.columns[i].name;
            let expr = format!("u.c{j}::{}", cast(name));
            if key_names.contains(&name.as_str()) {
                conds.push(format!("t.{} = {expr}", quote_ident(name)));
            } else {
                sets.push(format!("{} = {expr}", quote_ident(name)));
            }
        }
        if sets.is_empty() {
            continue;
        }
        let sql = format!(
            "UPDATE {table_sql} AS t SET {} FROM unnest({}) AS u({}) WHERE {}",
            sets.join(", "),
            placeholders(present.len()),
            aliases.join(", "),
            conds.join(" AND ")
        );
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
    let cast = |name: &str| target.type_of(name).unwrap_or("text").to_string();
    let mut sets = Vec::new();
    let mut cols: Vec<Vec<Option<String>>> = Vec::new();
    for (i, c) in schema.columns.iter().enumerate() {
        if let Some(Datum::Value(v)) = row.get(i) {
            cols.push(vec![literal::to_pg_text(v)]);
            sets.push(format!(
                "{} = ($%{}::text[])[1]::{}",
                quote_ident(&c.name),
                cols.len(),
                cast(&c.name)
            ));
        }
    }
    let mut conds = Vec::new();
    for (k, c) in schema.key_columns().enumerate() {
        cols.push(vec![old_key.get(k).and_then(literal::to_pg_text)]);
        conds.push(format!(
            "{} = (${}::text[])[1]::{}",
            quote_ident(&c.name),
            cols.len(),
            cast(&c.name)
        ));
    }
    let sql = format!(
        "UPDATE {} SET {} WHERE {}",
        target.id.quoted(),
        sets.join(", ").replace("$%", "$"),
        conds.join(" AND ")
    );
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

async fn execute<P: ToSql + Sync>(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    cols: &[P],
    table: &TableId,
) -> Result<u64, PipelineError> {
    let stmt = match statements.get(sql) {
        Some(s) => s.clone(),
        None => {
            let types = vec![Type::TEXT_ARRAY; cols.len()];
            let s = tx
                .prepare_typed(sql, &types)
                .await
                .map_err(|e| pg_err(&format!("prepare statement for {table}"), e))?;
            statements.insert(sql.to_string(), s.clone());
            s
        }
    };
    let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    tx.execute(&stmt, &params)
        .await
        .map_err(|e| pg_err(&format!("apply batch to {table}"), e))
}

/// Checks the target for `ferry check`: reachable, and every table present
/// (or creatable).
pub async fn target_findings(
    cfg: &PostgresSinkConfig,
    tables: &[TableId],
) -> Vec<ferry_pipeline::prerequisite::Finding> {
    use ferry_pipeline::prerequisite::Finding;
    let sink = PostgresSink::new(cfg.clone(), "check");
    let client = match tokio_postgres::connect(cfg.url.expose(), NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => {
            return vec![Finding::fail(
                "target reachable",
                pg_err("connect to target", e).to_string(),
            )]
        }
    };
    let mut out = vec![Finding::pass("target reachable", "connected")];
    for id in tables {
        let target = sink.target_id(id);
        let subject = format!("target table {target}");
        match target::describe(&client, &target).await {
            Ok(Some(_)) => out.push(Finding::pass(subject, "exists")),
            Ok(None) if cfg.create_tables => out.push(Finding::pass(subject, "will be created")),
            Ok(None) => out.push(Finding::fail(
                subject,
                "does not exist; create it or set sink.create_tables = true",
            )),
            Err(e) => out.push(Finding::fail(subject, e.to_string())),
        }
    }
    out
}
