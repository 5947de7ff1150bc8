//! How a timed run of `--kafka` and `--mapping` knows it is complete and
//! valid: the target matches a fingerprint of the source (a cheap gate
//! polled first), the ferry processes stay alive meanwhile, and a
//! restarted ferry resumed rather than copied its tables again.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_postgres::Client;

use super::kafka::log_events;

/// How often the full fingerprint is compared once the gate is open.
const FINGERPRINT_EVERY: Duration = Duration::from_millis(200);

/// How often the cheap gate is polled.
const GATE_EVERY: Duration = Duration::from_millis(50);

/// The processes a run waits on.
pub(super) trait Watched {
    /// An error, with the logs' tails, when a process has exited.
    fn check(&mut self) -> anyhow::Result<()>;
    /// The last lines of the logs, for an error's context.
    fn tails(&self) -> String;
}

/// Awaits `fut` while checking every 250 ms that the watched processes
/// are alive; an error carries the tails of their logs.
pub(super) async fn guarded<T>(
    watched: &mut impl Watched,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r.map_err(|e| e.context(watched.tails())),
            _ = tokio::time::sleep(Duration::from_millis(250)) => watched.check()?,
        }
    }
}

/// The one-row, one-column text a fingerprint query returns.
pub(super) async fn fingerprint(c: &Client, sql: &str) -> anyhow::Result<String> {
    Ok(c.query_one(sql, &[]).await?.get(0))
}

/// Waits until the target's fingerprint (`fingerprint_sql`) equals
/// `expected`, comparing only while `gate` holds; returns when it was seen
/// and how many full comparisons it took.
pub(super) async fn wait_fingerprint<G, Fut>(
    dst: &Client,
    fingerprint_sql: &str,
    expected: &str,
    mut gate: G,
    timeout: Duration,
) -> anyhow::Result<(Instant, usize)>
where
    G: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut checks = 0;
    let mut last_check: Option<Instant> = None;
    let mut seen = String::new();
    loop {
        if gate().await && last_check.is_none_or(|t| t.elapsed() >= FINGERPRINT_EVERY) {
            last_check = Some(Instant::now());
            checks += 1;
            if let Ok(f) = fingerprint(dst, fingerprint_sql).await {
                if f == expected {
                    return Ok((Instant::now(), checks));
                }
                seen = f;
            }
        }
        if Instant::now() > deadline {
            bail!("the target did not match the source in {timeout:?}:\n  source {expected}\n  target {seen}");
        }
        tokio::time::sleep(GATE_EVERY).await;
    }
}

/// The restarted `who` (its JSON log at `log`) must resume, not copy the
/// `tables` again (that would be timed too).
pub(super) fn check_no_resnapshot(log: &Path, who: &str, tables: usize) -> anyhow::Result<()> {
    let loaded = log_events(log).into_iter().find(|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("loaded") && m.contains("checkpoint"))
    });
    match loaded.as_ref().and_then(|e| e["snapshots_done"].as_u64()) {
        Some(n) if n as usize >= tables => Ok(()),
        other => bail!(
            "the restarted {who} found {other:?} completed snapshots (expected {tables}): it copied tables again inside the timed window"
        ),
    }
}
