//! Pipeline errors and the one place that decides what to do about them.
//!
//! Every driver error is classified where it happens (PostgreSQL by
//! SQLSTATE class, I/O by kind) into an [`ErrorClass`]; [`disposition`] maps
//! the class to what the runtime does. Unknown errors are transient: they
//! are retried with backoff, never dropped.
//!
//! [`ConfigError`] is here too, below the config and mapping modules that
//! both report it.

use std::fmt;
use std::time::Duration;

/// How bad an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Connection loss, timeouts, serialization failures, overload, server
    /// shutting down, and anything unknown: retry with backoff.
    Transient,
    /// This record cannot be mirrored (bad value, constraint violation).
    Permanent,
    /// The pipeline cannot go on (bad config, auth failure, slot dropped,
    /// missing target table with auto-create off).
    Fatal,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
        }
    }
}

/// Where in the pipeline an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Source,
    Snapshot,
    Decode,
    Transform,
    Sink,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Snapshot => "snapshot",
            Stage::Decode => "decode",
            Stage::Transform => "transform",
            Stage::Sink => "sink",
        }
    }
}

/// What the runtime does with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Retry the same work after a backoff.
    Retry,
    /// Park the record in the dead-letter queue and go on. Only the sink
    /// stage can park records (the writer isolates them, see
    /// [`crate::sink::Sink::write_isolating`]); a permanent error anywhere
    /// else stops the pipeline like [`Disposition::Halt`]: nothing is ever
    /// skipped silently.
    DeadLetter,
    /// Stop the pipeline with a clear message and a non-zero exit.
    Halt,
}

/// The single decision point: class → disposition.
pub fn disposition(class: ErrorClass) -> Disposition {
    match class {
        ErrorClass::Transient => Disposition::Retry,
        ErrorClass::Permanent => Disposition::DeadLetter,
        ErrorClass::Fatal => Disposition::Halt,
    }
}

/// Classifies a PostgreSQL SQLSTATE, by class (its first two characters),
/// as Materialize does for definite/indefinite errors: connection
/// exceptions, serialization failures and deadlocks, insufficient resources,
/// operator intervention and system errors are transient; data exceptions
/// and integrity violations belong to the record; authorization, missing
/// database and syntax/undefined-object errors stop the pipeline. Unknown
/// classes are transient.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    // 55000 object_not_in_prerequisite_state: e.g. logical decoding with
    // wal_level below logical. Waiting does not fix it; the rest of class
    // 55 (lock not available, object in use) passes.
    if code == "55000" {
        return ErrorClass::Fatal;
    }
    match code.get(..2).unwrap_or("") {
        "08" | "40" | "53" | "55" | "57" | "58" | "XX" => ErrorClass::Transient,
        // 21: cardinality violation (one statement touching a row twice);
        // 54: program limit exceeded (a value too large for an index row,
        // too many columns): this record will never fit.
        "21" | "22" | "23" | "54" => ErrorClass::Permanent,
        "28" | "3D" | "3F" | "42" | "0A" | "2B" => ErrorClass::Fatal,
        _ => ErrorClass::Transient,
    }
}

/// Why a transient failure was retried, in a few words with a bounded set
/// of values (the `reason` label of `ferry_retries_total`): operators alert
/// on "serialization failures grow" differently from "the target keeps
/// dropping connections". Read from the error's code (SQLSTATE, HTTP status,
/// Kafka error name); an error without a code is a lost or refused
/// connection as far as Ferry can tell.
pub fn retry_reason(code: Option<&str>) -> &'static str {
    let Some(code) = code else {
        return "connection";
    };
    match code {
        "40001" => return "serialization",
        "40P01" => return "deadlock",
        "429" => return "rate_limited",
        _ => {}
    }
    if code.len() == 3 && code.starts_with('5') && code.bytes().all(|b| b.is_ascii_digit()) {
        return "server_error";
    }
    if code.len() == 5 {
        return match code.get(..2).unwrap_or("") {
            "08" => "connection",
            "53" => "resources",
            "55" => "lock",
            "57" => "shutdown",
            "58" | "XX" => "server_error",
            _ => "other",
        };
    }
    "other"
}

/// An error with its class, stage and an operator hint.
/// The code of [`PipelineError::stopped`].
pub const STOPPED: &str = "ferry-stopped";

#[derive(Debug, thiserror::Error)]
pub struct PipelineError {
    pub class: ErrorClass,
    pub stage: Stage,
    pub message: String,
    /// SQLSTATE, HTTP status or similar, when the driver gave one.
    pub code: Option<String>,
    #[source]
    pub source: Option<anyhow::Error>,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} error", self.message, self.class.as_str())?;
        if let Some(code) = &self.code {
            write!(f, ", code {code}")?;
        }
        write!(f, " in {})", self.stage.as_str())
    }
}

impl PipelineError {
    pub fn new(class: ErrorClass, stage: Stage, message: impl Into<String>) -> Self {
        Self {
            class,
            stage,
            message: message.into(),
            code: None,
            source: None,
        }
    }
    pub fn fatal(stage: Stage, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Fatal, stage, message)
    }
    /// The pipeline was asked to stop while this stage waited to retry: a
    /// clean stop (nothing half-applied: the retried work never committed),
    /// which the caller reports as success, not as the error it retried.
    pub fn stopped(stage: Stage) -> Self {
        Self::new(ErrorClass::Transient, stage, "stopped while retrying").with_code(STOPPED)
    }

    /// Whether this is [`PipelineError::stopped`].
    pub fn is_stop(&self) -> bool {
        self.code.as_deref() == Some(STOPPED)
    }

    pub fn transient(stage: Stage, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, stage, message)
    }
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
    pub fn with_source(mut self, source: impl Into<anyhow::Error>) -> Self {
        self.source = Some(source.into());
        self
    }
    /// An error from a PostgreSQL driver: classified by its SQLSTATE when
    /// the server sent one, otherwise (I/O, closed connection) transient.
    pub fn from_postgres(
        stage: Stage,
        context: &str,
        sqlstate: Option<&str>,
        source: impl Into<anyhow::Error>,
    ) -> Self {
        let source = source.into();
        let class = sqlstate.map_or(ErrorClass::Transient, classify_sqlstate);
        let mut e = Self::new(class, stage, format!("{context}: {source:#}"));
        e.code = sqlstate.map(str::to_string);
        e.source = Some(source);
        e
    }

    pub fn disposition(&self) -> Disposition {
        disposition(self.class)
    }
}

/// Exponential backoff with jitter for transient errors: 200 ms, doubling,
/// never more than the cap (`pipeline.max_retry_delay_secs`), jitter
/// included. `backon` replaces the unmaintained `backoff` crate
/// (RUSTSEC-2025-0012); its jitter is added after its own cap, so the cap
/// is applied again here.
pub fn retry_backoff(max_delay: Duration) -> RetryBackoff {
    use backon::BackoffBuilder;
    let inner = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200).min(max_delay))
        .with_max_delay(max_delay)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    RetryBackoff {
        inner,
        cap: max_delay,
    }
}

/// The delays of [`retry_backoff`]: endless, each at most the cap.
#[derive(Debug)]
pub struct RetryBackoff {
    inner: backon::ExponentialBackoff,
    cap: Duration,
}

impl Iterator for RetryBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.inner.next().map(|d| d.min(self.cap))
    }
}

/// A configuration problem, naming the key: of the config file
/// ([`crate::config`]) or the mapping file ([`crate::mapping`]), both
/// validated before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Parses TOML text into a value. A syntax error names its line and column
/// but never quotes the text: toml's own message shows the offending line,
/// which may hold a literal password or a URL with credentials.
pub(crate) fn parse_toml(text: &str, what: &str) -> Result<toml::Value, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        ConfigError {
            key: what.to_string(),
            message: format!(
                "TOML syntax error{at}: {} (the line is not shown: it may hold a secret)",
                e.message().trim_end()
            ),
        }
    })
}

/// Deserializes a parsed file; an error names the full key of the value
/// serde refused (`pipeline.batch_size`, `tables[0].columns.amount.round`),
/// after `root` when given. Inside an internally tagged section
/// (`[source]`, `[sink]`) serde buffers the fields, so the key stops at
/// the section; the message names the field.
pub(crate) fn deserialize_toml<T: serde::de::DeserializeOwned>(
    value: toml::Value,
    root: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = match (root, path.as_str()) {
            (r, ".") => r.to_string(),
            ("", p) => p.to_string(),
            (r, p) => format!("{r}.{p}"),
        };
        ConfigError {
            key,
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::retry_reason;

    #[test]
    fn retry_reasons_are_few_and_named() {
        assert_eq!(retry_reason(None), "connection");
        assert_eq!(retry_reason(Some("08006")), "connection");
        assert_eq!(retry_reason(Some("40001")), "serialization");
        assert_eq!(retry_reason(Some("40P01")), "deadlock");
        assert_eq!(retry_reason(Some("53300")), "resources");
        assert_eq!(retry_reason(Some("55P03")), "lock");
        assert_eq!(retry_reason(Some("57P01")), "shutdown");
        assert_eq!(retry_reason(Some("XX000")), "server_error");
        assert_eq!(retry_reason(Some("429")), "rate_limited");
        assert_eq!(retry_reason(Some("503")), "server_error");
        assert_eq!(retry_reason(Some("OffsetOutOfRange")), "other");
    }

    use super::*;

    #[test]
    fn unknown_is_retried_record_errors_dead_lettered_fatal_halts() {
        assert_eq!(disposition(ErrorClass::Transient), Disposition::Retry);
        assert_eq!(disposition(ErrorClass::Permanent), Disposition::DeadLetter);
        assert_eq!(disposition(ErrorClass::Fatal), Disposition::Halt);
    }

    #[test]
    fn sqlstate_classes() {
        for (code, class) in [
            ("40001", ErrorClass::Transient),
            ("40P01", ErrorClass::Transient),
            ("53300", ErrorClass::Transient),
            ("57P01", ErrorClass::Transient),
            ("55006", ErrorClass::Transient),
            ("55000", ErrorClass::Fatal),
            ("08006", ErrorClass::Transient),
            ("22003", ErrorClass::Permanent),
            ("23502", ErrorClass::Permanent),
            ("23503", ErrorClass::Permanent),
            ("54000", ErrorClass::Permanent),
            ("28P01", ErrorClass::Fatal),
            ("42P01", ErrorClass::Fatal),
            ("3D000", ErrorClass::Fatal),
            ("ZZ999", ErrorClass::Transient),
        ] {
            assert_eq!(classify_sqlstate(code), class, "{code}");
        }
    }

    #[test]
    fn backoff_never_exceeds_the_cap_jitter_included() {
        for cap in [1, 2, 30] {
            let cap = Duration::from_secs(cap);
            let mut b = retry_backoff(cap);
            let mut reached = false;
            for _ in 0..200 {
                let d = b.next().expect("retries forever");
                assert!(d <= cap, "{d:?} > {cap:?}");
                reached |= d >= cap / 2;
            }
            assert!(reached, "the backoff grows towards {cap:?}");
        }
    }

    #[test]
    fn a_syntax_error_never_quotes_the_line() {
        let text = "[source]\nurl = \"postgres://u:hunter2@h/db\nkind = 1\n";
        let e = parse_toml(text, "config").unwrap_err();
        let shown = e.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
        let text = "[sink]\npassword = hunter2\n";
        let shown = parse_toml(text, "config").unwrap_err().to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
