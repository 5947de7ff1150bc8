//! What the `[sink]` section becomes for this sink, with no I/O: the
//! connection (URL plus `sink.ssl*` keys, read with libpq's rules by
//! ferry-pgconn) and which target table a source table is written to.
//!
//! The TOML schema itself stays in `ferry_pipeline::config` (one
//! `deny_unknown_fields` tree, so a bad key is refused with its full name);
//! this module only derives from the validated section.

use ferry_pgconn::{PgConnInfo, SslKeys};
use ferry_pipeline::config::PostgresSinkConfig;
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::TableId;

/// The target connection: `sink.url` with the `sink.ssl*` keys over the
/// URL's own. The error names the key and never the URL.
pub fn conn_info(cfg: &PostgresSinkConfig) -> Result<PgConnInfo, String> {
    let keys = SslKeys::new(
        cfg.sslmode.as_deref(),
        cfg.sslrootcert.as_deref(),
        cfg.sslcert.as_deref(),
        cfg.sslkey.as_deref(),
    );
    PgConnInfo::parse_with(cfg.url.expose(), &keys, &ferry_pgconn::Defaults::from_env())
        .map_err(|e| format!("sink.url: {e}"))
}

/// [`conn_info`] for the sink's own use: a bad string stops the pipeline.
pub(crate) fn target_conn(cfg: &PostgresSinkConfig) -> Result<PgConnInfo, PipelineError> {
    conn_info(cfg).map_err(|e| PipelineError::fatal(Stage::Sink, e))
}

/// Where `ferry_id_map` is read for inverse id maps: `sink.id_map_url`
/// (its TLS settings in the URL), else the target itself.
pub(crate) fn id_map_conn(cfg: &PostgresSinkConfig) -> Result<Option<PgConnInfo>, PipelineError> {
    cfg.id_map_url
        .as_ref()
        .map(|u| {
            PgConnInfo::parse(u.expose())
                .map_err(|e| PipelineError::fatal(Stage::Sink, format!("sink.id_map_url: {e}")))
        })
        .transpose()
}

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
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            id_map_url: None,
        };
        let src = TableId::new("app", "orders");
        assert_eq!(target_id(&cfg, &src), src);
        cfg.schema = Some("mirror".into());
        assert_eq!(target_id(&cfg, &src), TableId::new("mirror", "orders"));
    }
}
