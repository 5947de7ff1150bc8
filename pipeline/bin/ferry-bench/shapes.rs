//! `ferry-bench --shapes`: which statement shape applies a batch of upserts
//! faster in PostgreSQL — the sink's `INSERT … SELECT FROM unnest($n::text[])
//! ON CONFLICT DO UPDATE`, or `COPY` into a typed staging table followed by
//! `INSERT … SELECT FROM staging ON CONFLICT DO UPDATE` (the merge). Both
//! write the same rows of the workload's `accounts` table (7 columns:
//! bigint, text, numeric, text[], jsonb, enum, timestamptz) in one
//! transaction; the table shows the median time per batch.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use ferry_postgres_sink::params::TextArrayBuilder;
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use ferry_testkit::workload;
use futures_util::SinkExt;
use tokio_postgres::types::{ToSql, Type};

const COLUMNS: &str = "id, owner, balance, tags, meta, mood, updated_at";

pub(crate) async fn run(rows: i64, rounds: usize) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(ClusterOptions::default()).await?;
    cluster.create_database("shapes").await?;
    let mut c = cluster.connect("shapes").await?;
    workload::seed(&c, rows * 4).await?;
    c.batch_execute(
        "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 1;
         CREATE TEMP TABLE ferry_stage (LIKE accounts)",
    )
    .await?;
    let mut unnest_ms = Vec::new();
    let mut copy_ms = Vec::new();
    for round in 0..rounds {
        let lo = (round as i64 % 4) * rows + 1;
        // The rows as text, changed so that every upsert really writes.
        let text_rows = c
            .query(
                "SELECT id::text, owner || '*', (balance + 1)::text, tags::text, meta::text, mood::text, now()::text
                   FROM accounts WHERE id BETWEEN $1 AND $2 ORDER BY id",
                &[&lo, &(lo + rows - 1)],
            )
            .await?;
        let cols: Vec<Vec<String>> = (0..7)
            .map(|j| text_rows.iter().map(|r| r.get::<_, String>(j)).collect())
            .collect();

        // Shape 1: unnest of text arrays (what the sink does).
        let started = Instant::now();
        let tx = c.transaction().await?;
        let arrays: Vec<_> = cols
            .iter()
            .map(|col| {
                let mut b = TextArrayBuilder::with_capacity(col.len());
                for v in col {
                    b.push(Some(v));
                }
                b.finish()
            })
            .collect();
        let stmt = tx
            .prepare_typed(
                &format!(
                    "INSERT INTO accounts ({COLUMNS})
                     SELECT u.c0::bigint, u.c1::text, u.c2::numeric(38,10), u.c3::text[], u.c4::jsonb, u.c5::mood, u.c6::timestamptz
                       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
                         AS u(c0, c1, c2, c3, c4, c5, c6)
                     ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, balance = EXCLUDED.balance,
                        tags = EXCLUDED.tags, meta = EXCLUDED.meta, mood = EXCLUDED.mood, updated_at = EXCLUDED.updated_at"
                ),
                &[Type::TEXT_ARRAY; 7],
            )
            .await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        tx.execute(&stmt, &params).await?;
        tx.commit().await?;
        unnest_ms.push(started.elapsed().as_secs_f64() * 1000.0);

        // Shape 2: COPY into a typed staging table, then merge.
        let started = Instant::now();
        let tx = c.transaction().await?;
        let mut data = String::new();
        for i in 0..text_rows.len() {
            for (j, col) in cols.iter().enumerate() {
                if j > 0 {
                    data.push('\t');
                }
                for ch in col[i].chars() {
                    match ch {
                        '\\' => data.push_str("\\\\"),
                        '\t' => data.push_str("\\t"),
                        '\n' => data.push_str("\\n"),
                        '\r' => data.push_str("\\r"),
                        c => data.push(c),
                    }
                }
            }
            data.push('\n');
        }
        let sink = tx
            .copy_in::<_, Bytes>(&format!("COPY ferry_stage ({COLUMNS}) FROM STDIN"))
            .await?;
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from(data)).await?;
        sink.close().await?;
        tx.execute(
            &format!(
                "INSERT INTO accounts ({COLUMNS}) SELECT {COLUMNS} FROM ferry_stage
                 ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, balance = EXCLUDED.balance,
                    tags = EXCLUDED.tags, meta = EXCLUDED.meta, mood = EXCLUDED.mood, updated_at = EXCLUDED.updated_at"
            ),
            &[],
        )
        .await
        .context("merge from staging")?;
        tx.batch_execute("TRUNCATE ferry_stage").await?;
        tx.commit().await?;
        copy_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let med = |v: &[f64]| crate::percentile(v, 0.5);
    println!("\n| shape | rows per batch | median ms | rows/s |");
    println!("|---|---:|---:|---:|");
    for (name, v) in [
        ("unnest(text[]) upsert", &unnest_ms),
        ("COPY to staging + merge", &copy_ms),
    ] {
        println!(
            "| {name} | {rows} | {:.1} | {:.0} |",
            med(v),
            rows as f64 / (med(v) / 1000.0)
        );
    }
    Ok(())
}
