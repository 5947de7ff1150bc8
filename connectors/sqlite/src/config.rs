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
