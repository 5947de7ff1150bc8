//! What the process knows about each table, for the status views: the
//! current lag that keeps rising while a table's changes wait, snapshot
//! progress, parked records, the last hour of lag samples. The metrics
//! endpoint serves it as `/status.json` (read by the page at `/` and by
//! `ferry status`) and decides `/ready` from it.
//!
//! The runtime reports what happens (`arrived`, `applied`, snapshot start
//! and end, parked records); everything else (rates, ETA, the JSON) is
//! derived when asked. Memory is bounded: at most [`MAX_TABLES`] tables,
//! [`HISTORY`] samples each.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Tables tracked at most; more (a misconfiguration) are left out of the
/// status views, never out of the pipeline.
pub const MAX_TABLES: usize = 2000;
/// Seconds between two lag samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept per table: one hour.
pub const HISTORY: usize = 1800;

/// One table's state as the status views show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableState {
    /// Its initial snapshot is being copied.
    Snapshotting,
    /// Copied; changes flow.
    Streaming,
    /// No process is running (read from the target by `ferry status`).
    Stopped,
}

impl TableState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snapshotting => "snapshotting",
            Self::Streaming => "streaming",
            Self::Stopped => "stopped",
        }
    }
}

/// Snapshot progress of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// Rows copied by this process.
    pub rows: u64,
    /// The catalog's estimate (never below `rows`); 0 when unknown.
    pub estimate: u64,
    pub done: bool,
    /// Seconds left at the recent copy rate, when it can be told.
    pub eta_seconds: Option<f64>,
}

/// One table in `/status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableReport {
    pub table: String,
    pub state: TableState,
    /// Seconds behind: now minus the source commit time of the oldest
    /// change of this table received and not yet committed to the target;
    /// 0 when nothing of it waits. Rises while changes wait.
    pub lag_seconds: f64,
    /// Unix time (seconds) of that oldest waiting change's source commit.
    pub behind_since: Option<f64>,
    /// Changes applied per second over the last half minute.
    pub rate: f64,
    /// Changes applied to the target by this process.
    pub applied: u64,
    /// Records of this table in the dead-letter queue.
    pub dead_lettered: u64,
    /// The last reason a record of this table was parked.
    pub last_error: Option<String>,
    pub snapshot: Option<SnapshotProgress>,
    /// `[unix seconds, lag seconds]` samples, oldest first (only when asked
    /// for with `?since=`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<(f64, f64)>,
}

/// Whether the process is caught up (`/ready`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, in a few words.
    pub reason: Option<String>,
}

/// The whole of `/status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pipeline: String,
    /// `running` from a live process, `stopped` when read from the target.
    pub process: String,
    /// Unix time of the report.
    pub at: f64,
    /// Whether the source finished its snapshot phase and streams.
    pub streaming: bool,
    pub readiness: Readiness,
    /// Records in the dead-letter queue, all tables.
    pub dlq_depth: i64,
    /// The last error the pipeline retried or stopped on.
    pub last_error: Option<String>,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub tables: Vec<TableReport>,
}

#[derive(Debug, Default)]
struct Entry {
    /// Jobs (batches) holding changes of this table not yet committed, with
    /// the source commit time (µs) of the table's first change in each.
    waiting: BTreeMap<u64, i64>,
    /// `None`: not copied by this process (done earlier, or no snapshot).
    snapshot_done: Option<bool>,
    last_error: Option<String>,
    /// (unix seconds, lag seconds, applied total, snapshot rows).
    samples: VecDeque<(f64, f64, u64, u64)>,
}

impl Entry {
    fn lag(&self, now_us: i64) -> (f64, Option<f64>) {
        match self.waiting.values().min() {
            Some(&ts) => (((now_us - ts).max(0)) as f64 / 1e6, Some(ts as f64 / 1e6)),
            None => (0.0, None),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    tables: BTreeMap<String, Entry>,
    last_error: Option<String>,
}

/// Per-table status of this process. One per process ([`status`]); the
/// runtime feeds it, the endpoint reads it.
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<Inner>,
    streaming: AtomicBool,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Status {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    fn entry<'a>(inner: &'a mut Inner, table: &str) -> Option<&'a mut Entry> {
        if !inner.tables.contains_key(table) && inner.tables.len() >= MAX_TABLES {
            return None;
        }
        Some(inner.tables.entry(table.to_string()).or_default())
    }

    /// The first change of `table` in batch `job` (source commit time in
    /// µs since the epoch) reached the apply loop.
    pub fn arrived(&self, table: &str, job: u64, commit_ts_us: i64) {
        self.with(|i| {
            if let Some(e) = Self::entry(i, table) {
                e.waiting.entry(job).or_insert(commit_ts_us);
            }
        })
    }

    /// Batch `job` is committed; its last change of `table` was committed
    /// at the source at `commit_ts_us`. Records that change's end-to-end
    /// lag in [`super::TABLE_APPLY_LAG_SECONDS`].
    pub fn applied(&self, table: &str, job: u64, commit_ts_us: i64) {
        let lag = (now_us() - commit_ts_us).max(0) as f64 / 1e6;
        super::metrics()
            .apply_lag
            .with_label_values(&[table])
            .observe(lag);
        self.with(|i| {
            if let Some(e) = i.tables.get_mut(table) {
                e.waiting.retain(|j, _| *j > job);
            }
        })
    }

    /// A table's snapshot starts in this process.
    pub fn snapshot_started(&self, table: &str) {
        super::metrics()
            .snapshot_done
            .with_label_values(&[table])
            .set(0);
        self.with(|i| {
            if let Some(e) = Self::entry(i, table) {
                e.snapshot_done = Some(false);
            }
        })
    }

    /// A table's snapshot is committed to the target.
    pub fn snapshot_finished(&self, table: &str) {
        super::metrics()
            .snapshot_done
            .with_label_values(&[table])
            .set(1);
        self.with(|i| {
            if let Some(e) = Self::entry(i, table) {
                e.snapshot_done = Some(true);
            }
        })
    }

    /// A table copied by an earlier run (from the checkpoint).
    pub fn known(&self, table: &str) {
        super::metrics()
            .snapshot_done
            .with_label_values(&[table])
            .set(1);
        self.with(|i| {
            Self::entry(i, table);
        })
    }

    /// A record of `table` was parked, for `reason`.
    pub fn parked(&self, table: &str, reason: &str) {
        self.with(|i| {
            if let Some(e) = Self::entry(i, table) {
                e.last_error = Some(reason.chars().take(300).collect());
            }
        })
    }

    /// The pipeline retried or stopped on `error`.
    pub fn error(&self, error: &str) {
        self.with(|i| i.last_error = Some(error.chars().take(300).collect()))
    }

    /// The source streams (its snapshot phase is over).
    pub fn set_streaming(&self) {
        if !self.streaming.load(Ordering::Relaxed) {
            self.streaming.store(true, Ordering::Relaxed);
        }
    }

    pub fn streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }

    /// Current lag per table (for the gauge), in seconds.
    pub fn lags(&self) -> Vec<(String, f64)> {
        let now = now_us();
        self.with(|i| {
            i.tables
                .iter()
                .map(|(t, e)| (t.clone(), e.lag(now).0))
                .collect()
        })
    }

    /// Takes one lag sample of every table (every [`SAMPLE_EVERY`]).
    pub fn sample(&self) {
        let m = super::metrics();
        let now = now_us();
        let t = now as f64 / 1e6;
        self.with(|i| {
            for (name, e) in i.tables.iter_mut() {
                let lag = e.lag(now).0;
                let applied = m.applied(name);
                let rows = m.snapshot_rows_of(name);
                if e.samples.len() >= HISTORY {
                    e.samples.pop_front();
                }
                e.samples.push_back((t, lag, applied, rows));
            }
        })
    }

    /// Whether the process is caught up: streaming, every snapshot done,
    /// every table's lag at most `max_lag`.
    pub fn readiness(&self, max_lag: Duration) -> Readiness {
        let now = now_us();
        let not = |reason: String| Readiness {
            ready: false,
            reason: Some(reason),
        };
        let verdict = self.with(|i| {
            for (t, e) in &i.tables {
                if e.snapshot_done == Some(false) {
                    return Some(format!("snapshot of {t} in progress"));
                }
            }
            for (t, e) in &i.tables {
                let lag = e.lag(now).0;
                if lag > max_lag.as_secs_f64() {
                    return Some(format!(
                        "{t} is {lag:.1} s behind (ready under {} s)",
                        max_lag.as_secs_f64()
                    ));
                }
            }
            None
        });
        if let Some(reason) = verdict {
            return not(reason);
        }
        if !self.streaming() {
            return not("the source has not started streaming".into());
        }
        Readiness {
            ready: true,
            reason: None,
        }
    }

    /// The report `/status.json` serves; `since` (unix seconds) adds the
    /// lag samples taken after it.
    pub fn report(&self, pipeline: &str, max_lag: Duration, since: Option<f64>) -> StatusReport {
        let m = super::metrics();
        let now = now_us();
        let readiness = self.readiness(max_lag);
        let dlq = m.dlq_by_table();
        let (process_rss, process_cpu) = super::process_usage();
        let (tables, last_error) = self.with(|i| {
            let tables = i
                .tables
                .iter()
                .map(|(name, e)| {
                    let (lag, behind_since) = e.lag(now);
                    let applied = m.applied(name);
                    // Rates over the samples of the last ~30 s.
                    let recent = e
                        .samples
                        .iter()
                        .rev()
                        .take_while(|s| s.0 >= now as f64 / 1e6 - 31.0)
                        .last();
                    let rows = m.snapshot_rows_of(name);
                    let elapsed = recent.map_or(0.0, |s| now as f64 / 1e6 - s.0);
                    let rate_of = |then: u64, cur: u64| {
                        if elapsed >= 1.0 {
                            cur.saturating_sub(then) as f64 / elapsed
                        } else {
                            0.0
                        }
                    };
                    let rate = recent.map_or(0.0, |s| rate_of(s.2, applied));
                    let snapshot = e.snapshot_done.map(|done| {
                        let estimate = m.snapshot_estimate_of(name).max(rows);
                        let row_rate = recent.map_or(0.0, |s| rate_of(s.3, rows));
                        let eta_seconds = (!done && row_rate > 0.0 && estimate > 0)
                            .then(|| estimate.saturating_sub(rows) as f64 / row_rate);
                        SnapshotProgress {
                            rows,
                            estimate,
                            done,
                            eta_seconds,
                        }
                    });
                    let history = match since {
                        Some(since) => e
                            .samples
                            .iter()
                            .filter(|s| s.0 > since)
                            .map(|s| (s.0, s.1))
                            .collect(),
                        None => Vec::new(),
                    };
                    TableReport {
                        table: name.clone(),
                        state: if e.snapshot_done == Some(false) {
                            TableState::Snapshotting
                        } else {
                            TableState::Streaming
                        },
                        lag_seconds: lag,
                        behind_since,
                        rate,
                        applied,
                        dead_lettered: dlq.get(name).copied().unwrap_or(0),
                        last_error: e.last_error.clone(),
                        snapshot,
                        history,
                    }
                })
                .collect();
            (tables, i.last_error.clone())
        });
        StatusReport {
            pipeline: pipeline.to_string(),
            process: "running".into(),
            at: now as f64 / 1e6,
            streaming: self.streaming(),
            readiness,
            dlq_depth: m.dlq_depth.get(),
            last_error,
            rss_bytes: process_rss,
            cpu_seconds: process_cpu,
            tables,
        }
    }
}

/// The process-wide status.
pub fn status() -> &'static Status {
    static S: std::sync::OnceLock<Status> = std::sync::OnceLock::new();
    S.get_or_init(Status::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private tracker: tests in this crate run in parallel and share
    /// the global one.
    fn fresh() -> Status {
        Status::default()
    }

    #[test]
    fn lag_rises_while_changes_wait_and_is_zero_once_committed() {
        let s = fresh();
        let t0 = now_us() - 5_000_000;
        s.arrived("public.lagtest_a", 7, t0);
        s.arrived("public.lagtest_a", 7, t0 + 1_000_000); // same batch: first kept
        s.arrived("public.lagtest_a", 8, t0 + 2_000_000);
        let lag = |s: &Status| {
            s.lags()
                .into_iter()
                .find(|(t, _)| t == "public.lagtest_a")
                .unwrap()
                .1
        };
        let first = lag(&s);
        assert!((4.9..6.0).contains(&first), "{first}");
        std::thread::sleep(Duration::from_millis(20));
        assert!(lag(&s) > first, "the gauge rises while changes wait");
        // Batch 7 committed: batch 8's first change is the oldest waiting.
        s.applied("public.lagtest_a", 7, t0 + 1_000_000);
        let after = lag(&s);
        assert!((2.9..4.0).contains(&after), "{after}");
        s.applied("public.lagtest_a", 8, t0 + 2_000_000);
        assert_eq!(lag(&s), 0.0);
        // The histogram saw both batches' lags.
        let h = crate::metrics::metrics()
            .apply_lag
            .with_label_values(&["public.lagtest_a"]);
        assert_eq!(h.get_sample_count(), 2);
        assert!(h.get_sample_sum() > 5.0);
    }

    #[test]
    fn ready_only_when_streaming_snapshots_done_and_lag_under_the_bound() {
        let s = fresh();
        let max = Duration::from_secs(10);
        assert!(!s.readiness(max).ready);
        s.snapshot_started("public.readytest");
        s.set_streaming();
        let r = s.readiness(max);
        assert!(!r.ready);
        assert!(r.reason.unwrap().contains("snapshot of public.readytest"));
        s.snapshot_finished("public.readytest");
        assert!(s.readiness(max).ready);
        s.arrived("public.readytest", 1, now_us() - 30_000_000);
        let r = s.readiness(max);
        assert!(!r.ready);
        assert!(r.reason.unwrap().contains("public.readytest is 30"), "");
        s.applied("public.readytest", 1, now_us());
        assert!(s.readiness(max).ready);
    }

    #[test]
    fn the_report_carries_snapshot_progress_parked_reasons_and_history() {
        let s = fresh();
        let m = crate::metrics::metrics();
        s.snapshot_started("public.reporttest");
        m.snapshot_rows
            .with_label_values(&["public.reporttest"])
            .inc_by(40);
        m.snapshot_estimate
            .with_label_values(&["public.reporttest"])
            .set(100);
        s.parked("public.reporttest", "numeric field overflow");
        s.sample();
        let r = s.report("p", Duration::from_secs(10), Some(0.0));
        let t = r
            .tables
            .iter()
            .find(|t| t.table == "public.reporttest")
            .unwrap();
        assert_eq!(t.state, TableState::Snapshotting);
        let snap = t.snapshot.as_ref().unwrap();
        assert_eq!((snap.rows, snap.estimate, snap.done), (40, 100, false));
        assert_eq!(t.last_error.as_deref(), Some("numeric field overflow"));
        assert_eq!(t.history.len(), 1);
        assert!(!r.readiness.ready);
        // Round trip: `ferry status` reads what the endpoint writes.
        let json = serde_json::to_string(&r).unwrap();
        let back: StatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn tables_are_bounded() {
        let s = fresh();
        for n in 0..MAX_TABLES + 10 {
            s.arrived(&format!("public.t{n}"), 0, 0);
        }
        assert_eq!(s.lags().len(), MAX_TABLES);
    }
}
