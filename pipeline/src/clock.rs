//! The wall clock, read in one place: events stamp snapshot rows with it,
//! the envelope its `ts_ms`, the runtime the lag it reports.
//!
//! It sits at the bottom of the module graph so that the event model and
//! the codecs need not reach up into the runtime for the time.

/// Microseconds since the Unix epoch (0 for a clock set before 1970).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
