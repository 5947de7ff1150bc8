//! Snapshot progress bars on an interactive `ferry run` (stderr is a
//! terminal and logs are human-readable): one bar per table being copied,
//! from the same per-table status the status page shows. Log lines are
//! written through [`Bars::writer`], which clears the bars around each line
//! so that neither garbles the other. Elsewhere (a log file, a container,
//! `--log-format json`) there are no bars: the sources' `snapshot progress`
//! log lines (every 2 s) say the same.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use ferry_pipeline::metrics::status::{status, TableReport, TableState};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars of one process.
#[derive(Clone)]
pub(crate) struct Bars {
    multi: MultiProgress,
}

impl Bars {
    pub(crate) fn new() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)),
        }
    }

    /// A log writer that suspends the bars while it writes.
    pub(crate) fn writer(&self) -> LogWriter {
        LogWriter {
            multi: self.multi.clone(),
        }
    }

    /// Follows the status until the process ends: a bar appears when a
    /// table's snapshot starts and finishes when it is committed.
    pub(crate) async fn follow(self) {
        let style = ProgressStyle::with_template(
            "{prefix:<28} [{bar:30}] {pos}/{len} rows  {per_sec}  ETA {eta}  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        let mut bars: HashMap<String, ProgressBar> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let report = status().report("", Duration::from_secs(10), None);
            for t in &report.tables {
                let Some((pos, len, done)) = progress(t) else {
                    continue;
                };
                let bar = bars.entry(t.table.clone()).or_insert_with(|| {
                    let b = self.multi.add(ProgressBar::new(len));
                    b.set_style(style.clone());
                    b.set_prefix(t.table.clone());
                    b
                });
                if bar.is_finished() {
                    if !done {
                        // Copied again (`--recopy`): a new bar.
                        bars.remove(&t.table);
                    }
                    continue;
                }
                bar.set_length(len);
                bar.set_position(pos);
                if done {
                    bar.finish_with_message("copied");
                }
            }
        }
    }
}

/// (rows copied, rows expected, done) of a table copied by this process.
fn progress(t: &TableReport) -> Option<(u64, u64, bool)> {
    let s = t.snapshot.as_ref()?;
    let done = s.done || t.state != TableState::Snapshotting;
    // A stale estimate must not read as done before the copy is.
    let len = if done {
        s.rows
    } else {
        s.estimate.max(s.rows + 1)
    };
    Some((s.rows, len, done))
}

/// Writes log lines with the bars cleared (see [`Bars::writer`]).
#[derive(Clone)]
pub(crate) struct LogWriter {
    multi: MultiProgress,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter writes each event in one call.
        self.multi
            .suspend(|| std::io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_pipeline::metrics::status::SnapshotProgress;

    fn table(state: TableState, rows: u64, estimate: u64, done: bool) -> TableReport {
        TableReport {
            table: "public.t".into(),
            state,
            lag_seconds: 0.0,
            behind_since: None,
            rate: 0.0,
            applied: 0,
            dead_lettered: 0,
            last_error: None,
            snapshot: Some(SnapshotProgress {
                rows,
                estimate,
                done,
                eta_seconds: None,
            }),
            history: Vec::new(),
        }
    }

    #[test]
    fn a_bar_follows_the_copy_and_ends_at_the_rows_copied() {
        let copying = table(TableState::Snapshotting, 400, 1000, false);
        assert_eq!(progress(&copying), Some((400, 1000, false)));
        // The estimate was low: the bar never reads full before the end.
        let stale = table(TableState::Snapshotting, 1500, 1000, false);
        assert_eq!(progress(&stale), Some((1500, 1501, false)));
        let done = table(TableState::Streaming, 1503, 1000, true);
        assert_eq!(progress(&done), Some((1503, 1503, true)));
        let mut streamed = table(TableState::Streaming, 0, 0, false);
        streamed.snapshot = None;
        assert_eq!(progress(&streamed), None);
    }
}
