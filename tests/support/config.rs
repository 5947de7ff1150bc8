//! The Ferry configs of a [`Pair`]'s tests, written by a builder: each
//! option is named at the call site (no positional strings whose meaning
//! depends on their place), and the TOML is assembled in one spot.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::{kafka, Pair, NEXT};

/// A config of a PostgreSQL → PostgreSQL pipeline for a [`Pair`]:
/// `ConfigBuilder::new(&pair).tables(&["public.items"]).build()`.
///
/// On the Kafka bus (the pair has a broker) the config also has
/// `bus = "kafka"` (unless an extra `[pipeline]` key names a bus) and a
/// `[kafka]` section for the pair's broker whose topic prefix is the
/// database and the pipeline's name: every config of one pipeline finds its
/// topics.
#[must_use = "a config is written by build()"]
pub struct ConfigBuilder<'a> {
    pair: &'a Pair,
    tables: Vec<String>,
    mappings: Option<String>,
    pipeline: Vec<String>,
    source: Vec<String>,
    sink: Vec<String>,
    source_url: Option<String>,
    partitions: Option<i32>,
}

impl<'a> ConfigBuilder<'a> {
    pub fn new(pair: &'a Pair) -> Self {
        ConfigBuilder {
            pair,
            tables: Vec::new(),
            mappings: None,
            pipeline: Vec::new(),
            source: Vec::new(),
            sink: Vec::new(),
            source_url: None,
            partitions: None,
        }
    }

    /// The source tables to mirror (`schema.table`).
    pub fn tables(mut self, tables: &[&str]) -> Self {
        self.tables = tables.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    /// `mappings = <path>` (relative to the config's folder), the first key
    /// of `[pipeline]`.
    pub fn mappings(mut self, path: &str) -> Self {
        self.mappings = Some(path.to_owned());
        self
    }

    /// `batch_size = <n>` in `[pipeline]`.
    pub fn batch_size(self, n: usize) -> Self {
        self.extra_pipeline(&format!("batch_size = {n}"))
    }

    /// `snapshot_chunk_pages = <n>` in `[source]`.
    pub fn snapshot_chunk_pages(self, n: u32) -> Self {
        self.extra_source(&format!("snapshot_chunk_pages = {n}"))
    }

    /// A line of TOML appended verbatim to `[pipeline]`.
    pub fn extra_pipeline(mut self, line: &str) -> Self {
        self.pipeline.push(line.to_owned());
        self
    }

    /// A line of TOML appended verbatim to `[source]`.
    pub fn extra_source(mut self, line: &str) -> Self {
        self.source.push(line.to_owned());
        self
    }

    /// A line of TOML appended verbatim to `[sink]`.
    pub fn extra_sink(mut self, line: &str) -> Self {
        self.sink.push(line.to_owned());
        self
    }

    /// `source.url` instead of the source cluster's own URL for the pair's
    /// database.
    pub fn source_url(mut self, url: &str) -> Self {
        self.source_url = Some(url.to_owned());
        self
    }

    /// Partitions per data topic on the Kafka bus (1 unless set). Panics in
    /// [`Self::build`] when the pair has no broker: the option would
    /// silently mean nothing.
    pub fn partitions(mut self, n: i32) -> Self {
        self.partitions = Some(n);
        self
    }

    /// Writes the config into the pair's temp dir and returns its path.
    pub fn build(self) -> PathBuf {
        let tables: Vec<String> = self.tables.iter().map(|t| format!("{t:?}")).collect();
        let mappings = match &self.mappings {
            Some(path) => format!("mappings = {path:?}\n"),
            None => String::new(),
        };
        let text = format!(
            r#"
[pipeline]
{mappings}name = "test"
batch_linger_ms = 10
max_retry_delay_secs = 2
{pipeline_extra}

[source]
kind = "postgres"
url = "{src}"
tables = [{tables}]
status_interval_ms = 200
heartbeat_secs = 1
{source_extra}

[sink]
kind = "postgres"
url = "{dst}"
{sink_extra}
"#,
            src = self
                .source_url
                .clone()
                .unwrap_or_else(|| self.pair.source.url(&self.pair.db)),
            sink_extra = self.sink.join("\n"),
            dst = self.pair.target.url(&self.pair.db),
            tables = tables.join(", "),
            pipeline_extra = self.pipeline.join("\n"),
            source_extra = self.source.join("\n"),
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let text = match (&self.pair.kafka, self.partitions) {
            (Some(k), partitions) => {
                let prefix = format!("{}_{}", self.pair.db, kafka::pipeline_name(&text));
                kafka::with_kafka_bus(&text, k.port, &prefix, partitions.unwrap_or(1))
            }
            (None, None) => text,
            (None, Some(p)) => panic!("partitions({p}) for a pair without a Kafka broker"),
        };
        let path = self.pair.dir.path().join(format!("ferry-{n}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }
}
