//! What the `[sink] kind = "convex"` section becomes for this sink, with no
//! I/O. The TOML schema itself is `ferry_pipeline::config::ConvexSinkConfig`.

use ferry_pipeline::config::ConvexSinkConfig;

use crate::value::Options;

/// How values are written.
pub fn value_options(cfg: &ConvexSinkConfig) -> Options {
    Options {
        numeric: cfg.numeric,
    }
}
