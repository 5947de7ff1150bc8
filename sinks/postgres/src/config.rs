//! What the `[sink]` section becomes for this sink, with no I/O: which
//! target table a source table is written to.
//!
//! The TOML schema itself stays in `ferry_pipeline::config` (one
//! `deny_unknown_fields` tree, so a bad key is refused with its full name);
//! the connection is made from `sink.url` as it stands (tokio-postgres reads
//! its own options from it), so there is no connection config to derive.

use ferry_pipeline::config::PostgresSinkConfig;
use ferry_pipeline::event::TableId;

/// The target table a source table is written to: the same name, in
/// `sink.schema` when one is set, else in the source's own schema.
pub fn target_id(cfg: &PostgresSinkConfig, source: &TableId) -> TableId {
    match &cfg.schema {
        Some(s) => TableId::new(s.clone(), source.name.clone()),
        None => source.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_schema_replaces_the_source_schema_when_set() {
        let mut cfg = PostgresSinkConfig {
            url: ferry_pipeline::config::Secret::new("postgres://x@h/db"),
            create_tables: true,
            schema: None,
        };
        let src = TableId::new("app", "orders");
        assert_eq!(target_id(&cfg, &src), src);
        cfg.schema = Some("mirror".into());
        assert_eq!(target_id(&cfg, &src), TableId::new("mirror", "orders"));
    }
}
