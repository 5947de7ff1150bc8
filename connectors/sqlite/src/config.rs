//! What the `[source]` section means for this connector, beyond its pure
//! validation (in `ferry_pipeline::config`, one `deny_unknown_fields` tree,
//! so that a bad key is refused with its full name): the file check of
//! `ferry check` and of the start.

use ferry_pipeline::config::SqliteSourceConfig;

/// Whether `source.path` names a file that exists (no SQLite is opened).
/// A missing file is refused rather than created: SQLite would create an
/// empty database, and the pipeline would mirror nothing.
pub fn check_path(cfg: &SqliteSourceConfig) -> Result<(), String> {
    match std::fs::metadata(&cfg.path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a file", cfg.path.display())),
        Err(e) => Err(format!("{}: {e}", cfg.path.display())),
    }
}

#[cfg(test)]
mod tests {
    use ferry_pipeline::config::{Config, SourceConfig, SqliteMode};

    fn parse(source: &str) -> Result<Config, ferry_pipeline::error::ConfigError> {
        let text = format!(
            "[source]\nkind = \"sqlite\"\n{source}\n\n[sink]\nkind = \"postgres\"\nurl = \"postgres://u@h/db\"\n"
        );
        Config::from_toml(&text, &|_| None)
    }

    #[test]
    fn defaults_and_every_key() {
        let c = parse("path = \"/data/app.db\"").unwrap();
        let SourceConfig::Sqlite(s) = &c.source else {
            panic!("a sqlite source")
        };
        assert_eq!(s.mode, SqliteMode::Follow);
        assert!(s.tables.is_empty());
        assert_eq!(
            (s.busy_timeout_ms, s.poll_interval_ms, s.log_batch_size),
            (5000, 200, 1000)
        );
        let c = parse(
            "path = \"a.db\"\ntables = [\"tasks\"]\nmode = \"snapshot\"\nbusy_timeout_ms = 1\npoll_interval_ms = 2\nlog_batch_size = 3",
        )
        .unwrap();
        assert_eq!(c.source.tables()[0].to_string(), "main.tasks");
    }

    #[test]
    fn bad_values_are_refused_by_their_key() {
        for (source, key) in [
            ("path = \"\"", "source.path"),
            (
                "path = \"a.db\"\ntables = [\"main.tasks\"]",
                "source.tables[0]",
            ),
            (
                "path = \"a.db\"\ntables = [\"t\", \"_ferry_changes\"]",
                "source.tables[1]",
            ),
            (
                "path = \"a.db\"\ntables = [\"t\", \"t\"]",
                "source.tables[1]",
            ),
            (
                "path = \"a.db\"\npoll_interval_ms = 0",
                "source.poll_interval_ms",
            ),
            (
                "path = \"a.db\"\nlog_batch_size = 0",
                "source.log_batch_size",
            ),
        ] {
            let e = parse(source)
                .err()
                .unwrap_or_else(|| panic!("{source} accepted"));
            assert_eq!(e.key, key, "{source}: {e:?}");
        }
        // Unknown keys and modes are refused (deny_unknown_fields).
        assert!(parse("path = \"a.db\"\nurl = \"x\"").is_err());
        assert!(parse("path = \"a.db\"\nmode = \"stream\"").is_err());
    }
}
