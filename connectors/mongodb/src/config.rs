//! What the `[source]` section means for this connector, with no I/O: the
//! URL check of `ferry check`, and which collections a pipeline mirrors.
//!
//! The TOML schema itself stays in `ferry_pipeline::config` (one
//! `deny_unknown_fields` tree, so a bad key is refused with its full name).
//! The driver reads its own connection options from the URL, so there is no
//! connection config to build here.

use std::collections::HashSet;

/// Whether a MongoDB URL parses as the driver reads it (hosts, ports,
/// options); no connection is made for `mongodb://` URLs. The error never
/// repeats the URL (it holds secrets).
pub async fn check_url(url: &str) -> Result<(), String> {
    mongodb::options::ClientOptions::parse(url)
        .await
        .map(|_| ())
        .map_err(|e| match *e.kind {
            mongodb::error::ErrorKind::InvalidArgument { ref message, .. } => message.clone(),
            _ => "not a valid MongoDB connection string".to_string(),
        })
}

/// Whether changes of `collection` are mirrored: one of `wanted` (the
/// configured collections, or those found at the start), or, when none are
/// configured (`configured` is empty), any but MongoDB's own `system.*` (a
/// collection created after the start streams from its creation, so it
/// needs no copy).
pub fn mirrors(configured: &[String], wanted: &HashSet<String>, collection: &str) -> bool {
    wanted.contains(collection) || (configured.is_empty() && !collection.starts_with("system."))
}
