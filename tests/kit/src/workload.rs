//! A payments-like workload for the demo, the end-to-end tests and the
//! benchmark: accounts with exact balances and transfers between them, with
//! inserts, updates and deletes in a fixed mix.

use anyhow::Context;
use tokio_postgres::Client;

/// The workload's tables. `accounts` carries a wide spread of types;
/// `transfers` is the high-volume table.
pub const SCHEMA_SQL: &str = "
CREATE TYPE mood AS ENUM ('ok', 'late', 'disputed');
CREATE TABLE accounts (
    id          bigint PRIMARY KEY,
    owner       text NOT NULL,
    balance     numeric(38, 10) NOT NULL,
    tags        text[],
    meta        jsonb,
    mood        mood,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE transfers (
    id          bigint PRIMARY KEY,
    from_id     bigint NOT NULL,
    to_id       bigint NOT NULL,
    amount      numeric(38, 10) NOT NULL,
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);";

/// The workload's tables, as `schema.table`.
pub const TABLES: [&str; 2] = ["public.accounts", "public.transfers"];

/// Creates the tables and `accounts` rows.
pub async fn seed(client: &Client, accounts: i64) -> anyhow::Result<()> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .context("create workload schema")?;
    client
        .execute(
            "INSERT INTO accounts (id, owner, balance, tags, meta, mood)
             SELECT g, 'owner-' || g, (g * 1000)::numeric / 7, ARRAY['t' || (g % 5), 'x'],
                    jsonb_build_object('tier', g % 3, 'note', 'seed'),
                    (ARRAY['ok','late','disputed'])[1 + g % 3]::mood
               FROM generate_series(1, $1::bigint) g",
            &[&accounts],
        )
        .await
        .context("seed accounts")?;
    Ok(())
}

/// One step of the bulk mixed workload: `rows` inserted transfers, `rows`
/// updated accounts (balance moves) and `rows / 2` deleted transfers, each
/// in its own transaction. `step` numbers the call (0, 1, …) so that keys
/// never collide. Returns the number of row changes made.
pub async fn mixed_step(
    client: &Client,
    step: i64,
    rows: i64,
    accounts: i64,
) -> anyhow::Result<u64> {
    let first = step * rows + 1;
    let last = first + rows - 1;
    let inserted = client
        .execute(
            "INSERT INTO transfers (id, from_id, to_id, amount, note)
             SELECT g, 1 + g % $3, 1 + (g * 7) % $3, (g % 100000)::numeric / 100, 'bulk'
               FROM generate_series($1::bigint, $2::bigint) g",
            &[&first, &last, &accounts],
        )
        .await
        .context("insert transfers")?;
    let lo = (step * rows) % accounts.max(1) + 1;
    let hi = lo + rows - 1;
    let updated = client
        .execute(
            "UPDATE accounts SET balance = balance + 0.0000000001 * id, updated_at = now()
              WHERE id BETWEEN $1 AND $2",
            &[&lo, &hi],
        )
        .await
        .context("update accounts")?;
    let deleted = client
        .execute(
            "DELETE FROM transfers WHERE id BETWEEN $1 AND $2",
            &[&first, &(first + rows / 2 - 1)],
        )
        .await
        .context("delete transfers")?;
    Ok(inserted + updated + deleted)
}

/// One small payment: a transfer row and two balance updates, in one
/// transaction (what the demo and the lag benchmark send at a steady rate).
/// Returns the number of row changes (3).
pub async fn payment(client: &mut Client, id: i64, accounts: i64) -> anyhow::Result<u64> {
    let from = 1 + id.rem_euclid(accounts);
    let to = 1 + (id * 7 + 3).rem_euclid(accounts);
    let amount = format!("{}.{:02}", id % 500, id % 100);
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO transfers (id, from_id, to_id, amount, note) VALUES ($1, $2, $3, $4::text::numeric, 'payment')",
        &[&id, &from, &to, &amount],
    )
    .await?;
    tx.execute(
        "UPDATE accounts SET balance = balance - $2::text::numeric, updated_at = now() WHERE id = $1",
        &[&from, &amount],
    )
    .await?;
    tx.execute(
        "UPDATE accounts SET balance = balance + $2::text::numeric, updated_at = now() WHERE id = $1",
        &[&to, &amount],
    )
    .await?;
    tx.commit().await?;
    Ok(3)
}
