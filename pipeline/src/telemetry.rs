//! Logging: human-readable by default, JSON lines with `--log-format json`.
//! The level comes from `RUST_LOG`; without it, from the caller's default
//! (`info` for a running pipeline; `warn` for one-shot commands, whose
//! output is what they print, unless `-v`).

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Installs the global subscriber with `default_level` (an `EnvFilter`
/// directive such as `info`) unless `RUST_LOG` is set; later calls are
/// ignored.
pub fn init(format: LogFormat, default_level: &str) {
    init_with_writer(format, default_level, std::io::stderr);
}

/// [`init`] writing through `writer` instead of straight to stderr (the
/// `ferry run` progress bars draw on the same terminal, and clear
/// themselves around each line). Colours only when stderr is a terminal.
pub fn init_with_writer<W>(format: LogFormat, default_level: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a terminal: log files and collectors get plain
        // text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
