//! Configuration: TOML with unknown keys refused, `${ENV}` and
//! `${file:/path}` interpolation for secrets, and a pure
//! [`Config::validate`] whose errors name the key.
//!
//! Loading is layered as in Vector: parse → interpolate → deserialize
//! (`deny_unknown_fields`) → validate (no I/O). Connections are made later,
//! by `ferry check` and `ferry run`. No error of these steps quotes the
//! file: a syntax error gives the line and column, never the line itself
//! (it may hold a literal password).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::envelope::Encoding;
use crate::event::TableId;

// Defined with the other errors, below both this module and the mapping
// this module loads; re-exported where configuration is read.
pub use crate::error::ConfigError;

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the driver that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub pipeline: PipelineConfig,
    pub source: SourceConfig,
    pub sink: SinkConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Required when `pipeline.bus = "kafka"`.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// What `ferry cutover check` requires before a table is cut over.
    #[serde(default)]
    pub cutover: CutoverConfig,
    /// `pipeline.mappings`, loaded and validated by [`Config::load`].
    #[serde(skip)]
    pub mappings: Option<crate::mapping::Mappings>,
}

/// `[pipeline]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Names this pipeline's checkpoint in the target; two pipelines writing
    /// to one target need two names.
    #[serde(default = "default_pipeline_name")]
    pub name: String,
    #[serde(default)]
    pub bus: BusKind,
    /// Most source events folded into one sink transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long the apply loop waits for more events before committing a
    /// partial batch.
    #[serde(default = "default_batch_linger_ms")]
    pub batch_linger_ms: u64,
    /// Messages the embedded bus holds before the source waits.
    #[serde(default = "default_bus_capacity")]
    pub bus_capacity: usize,
    /// Longest pause between retries of a transient failure.
    #[serde(default = "default_max_retry_delay_secs")]
    pub max_retry_delay_secs: u64,
    /// The mapping file (docs/mappings.md), relative to this file.
    #[serde(default)]
    pub mappings: Option<std::path::PathBuf>,
}

fn default_pipeline_name() -> String {
    "ferry".into()
}
fn default_batch_size() -> usize {
    5000
}
fn default_batch_linger_ms() -> u64 {
    20
}
fn default_bus_capacity() -> usize {
    20_000
}
fn default_max_retry_delay_secs() -> u64 {
    30
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            name: default_pipeline_name(),
            bus: BusKind::default(),
            batch_size: default_batch_size(),
            batch_linger_ms: default_batch_linger_ms(),
            bus_capacity: default_bus_capacity(),
            max_retry_delay_secs: default_max_retry_delay_secs(),
            mappings: None,
        }
    }
}

/// Which bus connects sources and sinks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    #[default]
    Embedded,
    /// Sources produce to Kafka topics; workers consume them (`[kafka]`).
    Kafka,
}

/// librdkafka properties (`"linger.ms" = "5"`). Debug shows the values of
/// keys that hold secrets (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, …) as `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Properties(pub std::collections::BTreeMap<String, String>);

impl Properties {
    /// Whether librdkafka property `key` holds a secret.
    pub fn is_secret(key: &str) -> bool {
        key.contains("password")
            || key.contains("secret")
            || key.ends_with(".key.pem")
            || key == "ssl_key"
            || key == "sasl.oauthbearer.config"
    }
}

impl std::ops::Deref for Properties {
    type Target = std::collections::BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if Self::is_secret(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

/// `[kafka]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Data topics are `<prefix>.<schema>.<table>`; Ferry's own topics
    /// (`<prefix>._schemas`, `<prefix>._checkpoints`) share the prefix.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Partitions of topics Ferry creates. A TRUNCATE can only be ordered
    /// with the rows around it on a single partition: with more, the source
    /// stops on a TRUNCATE rather than reorder it.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// How events are encoded on Kafka (the envelope's encodings).
    #[serde(default)]
    pub encoding: Encoding,
    /// Confluent Schema Registry (`http://host:8081`); Avro only.
    #[serde(default)]
    pub schema_registry_url: Option<String>,
    /// Consumer group of the workers; `ferry-<pipeline.name>` by default.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Most bytes of produced-but-unacknowledged messages before the source
    /// waits (backpressure while the broker is slow or away).
    #[serde(default = "default_max_in_flight_mb")]
    pub max_in_flight_mb: u64,
    /// librdkafka properties of every client Ferry makes (admin, producer,
    /// consumers): connection security goes here (`security.protocol`,
    /// `sasl.*`, `ssl.*`), so that no client talks to the brokers in
    /// another way than the others.
    #[serde(default)]
    pub client: Properties,
    /// More librdkafka properties for the producer (`"linger.ms" = "5"`).
    #[serde(default)]
    pub producer: Properties,
    /// More librdkafka properties for the consumer.
    #[serde(default)]
    pub consumer: Properties,
}

fn default_topic_prefix() -> String {
    "ferry".into()
}
fn default_partitions() -> i32 {
    1
}
fn default_replication_factor() -> i32 {
    1
}
fn default_max_in_flight_mb() -> u64 {
    64
}

impl KafkaConfig {
    /// The consumer group of `pipeline`'s workers.
    pub fn group(&self, pipeline: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("ferry-{pipeline}"))
    }
}

/// `[source]`
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    Postgres(PostgresSourceConfig),
    Mongodb(MongoSourceConfig),
    Sqlite(SqliteSourceConfig),
    Convex(ConvexSourceConfig),
}

impl SourceConfig {
    /// The source tables (collections) to mirror, as `schema.table`; empty
    /// for a MongoDB source that mirrors every collection.
    pub fn tables(&self) -> Vec<TableId> {
        match self {
            SourceConfig::Postgres(s) => {
                s.tables.iter().filter_map(|t| TableId::parse(t)).collect()
            }
            SourceConfig::Mongodb(m) => m
                .collections
                .iter()
                .map(|c| TableId::new(m.database.clone(), c.clone()))
                .collect(),
            SourceConfig::Sqlite(s) => s
                .tables
                .iter()
                .map(|t| TableId::new(SQLITE_SCHEMA, t.clone()))
                .collect(),
            SourceConfig::Convex(c) => c
                .tables
                .iter()
                .map(|t| TableId::new(c.schema_name(), t.clone()))
                .collect(),
        }
    }
}

/// `[source] kind = "convex"`: a Convex deployment read through its
/// streaming export (`list_snapshot`, then `document_deltas`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvexSourceConfig {
    /// The deployment's URL, e.g. `https://happy-otter-123.convex.cloud`.
    pub url: String,
    /// A deploy key with `deployment:data:view` (`${CONVEX_DEPLOY_KEY}`);
    /// sent only in the `Authorization` header, never logged.
    pub deploy_key: Secret,
    /// Tables to mirror; empty or absent mirrors every user table of the
    /// component (a table created later streams from its first write).
    #[serde(default)]
    pub tables: Vec<String>,
    /// The component whose tables are read; `""` (the default) is the
    /// app's root component.
    #[serde(default)]
    pub component: String,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// What to do when the stored cursor is older than the deployment's
    /// change-log retention (`InvalidWindowToReadDocuments`): stop with a
    /// message (`"fail"`, the default), or copy every table again
    /// (`"resnapshot"`).
    #[serde(default)]
    pub on_expired_cursor: HistoryLost,
    /// Longest wait between two polls of an idle change log; polling
    /// starts again at once after a page with changes.
    #[serde(default = "default_convex_poll_max_ms")]
    pub poll_max_ms: u64,
}

fn default_convex_poll_max_ms() -> u64 {
    1000
}

impl ConvexSourceConfig {
    /// The source schema of its tables: `convex` for the root component,
    /// the component's path otherwise.
    pub fn schema_name(&self) -> String {
        if self.component.is_empty() {
            "convex".into()
        } else {
            self.component.clone()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
            return Err(cfg_err(
                "source.url",
                "must be the deployment's http(s):// URL",
            ));
        }
        if self.deploy_key.expose().is_empty() {
            return Err(cfg_err("source.deploy_key", "must not be empty"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let ok = !t.is_empty()
                && t.len() <= 64
                && !t.starts_with('_')
                && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !t.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(cfg_err(
                    format!("source.tables[{i}]"),
                    format!("{t:?} is not a Convex table name (letters, digits and _, not starting with _ or a digit)"),
                ));
            }
            if !seen.insert(t) {
                return Err(cfg_err(
                    format!("source.tables[{i}]"),
                    format!("{t:?} is listed twice"),
                ));
            }
        }
        if self.poll_max_ms == 0 {
            return Err(cfg_err("source.poll_max_ms", "must be at least 1"));
        }
        Ok(())
    }
}

/// `[source] kind = "mongodb"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSourceConfig {
    /// `mongodb://user:${MONGO_PASSWORD}@host:27017/?replicaSet=rs0`, or
    /// `mongodb+srv://user:…@cluster.example.com/` (hosts and options from
    /// DNS SRV/TXT records). TLS options ride on the URL as the driver
    /// reads them: `tls=true`, `tlsCAFile`, `tlsCertificateKeyFile`,
    /// `tlsAllowInvalidCertificates` (tests only).
    pub url: Secret,
    pub database: String,
    /// Collections to mirror; empty or absent mirrors every collection.
    #[serde(default)]
    pub collections: Vec<String>,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Documents read per round trip by the snapshot.
    #[serde(default = "default_mongo_snapshot_batch")]
    pub snapshot_batch_size: u32,
    /// What to do when the stored resume token is no longer in the oplog.
    #[serde(default)]
    pub on_history_lost: HistoryLost,
    /// What to do when a mirrored collection is dropped or renamed, or the
    /// stream is invalidated.
    #[serde(default)]
    pub on_collection_gone: CollectionGone,
    /// Besides `_id` and the document (jsonb), give each top-level scalar
    /// field a column of its own, typed by the first value seen.
    #[serde(default)]
    pub scalar_columns: bool,
}

fn default_mongo_snapshot_batch() -> u32 {
    1000
}

/// `on_history_lost`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryLost {
    /// Stop with a message that explains the choice.
    #[default]
    Fail,
    /// Copy every collection again, then stream from the new start point.
    Resnapshot,
}

/// `on_collection_gone`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectionGone {
    /// Stop with a message naming the collection and the event.
    #[default]
    Fail,
    /// Log it and go on (the target keeps the rows it has).
    Ignore,
}

/// `[source] kind = "sqlite"`: a local SQLite database file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSourceConfig {
    /// The database file (the application's own; opened read-only for the
    /// snapshot).
    pub path: std::path::PathBuf,
    /// Tables to mirror; empty or absent mirrors every table but SQLite's
    /// own (`sqlite_*`) and Ferry's change log (`_ferry_*`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// `follow` (default): snapshot, then follow the change log that
    /// `ferry sqlite prepare` installed. `snapshot`: import once and stop
    /// (needs no triggers).
    #[serde(default)]
    pub mode: SqliteMode,
    /// How long the source waits for the application's write lock (trimming
    /// the change log) before it retries: SQLite's `busy_timeout`.
    #[serde(default = "default_sqlite_busy_timeout_ms")]
    pub busy_timeout_ms: u64,
    /// How often the change log is read when the last read found nothing.
    #[serde(default = "default_sqlite_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Change-log entries read per (short) read transaction.
    #[serde(default = "default_sqlite_log_batch")]
    pub log_batch_size: u32,
}

/// The schema a SQLite source's tables are named under (SQLite's own name
/// for the main database).
pub const SQLITE_SCHEMA: &str = "main";

/// `[source] mode` of a SQLite source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteMode {
    /// Snapshot what is not copied yet, then follow the change log.
    #[default]
    Follow,
    /// Copy every table once and stop.
    Snapshot,
}

fn default_sqlite_busy_timeout_ms() -> u64 {
    5000
}
fn default_sqlite_poll_interval_ms() -> u64 {
    200
}
fn default_sqlite_log_batch() -> u32 {
    1000
}

impl SqliteSourceConfig {
    /// Pure checks of the `[source]` keys of a SQLite source.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(cfg_err("source.path", "the SQLite database file"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            if t.is_empty()
                || t.contains('.')
                || t.starts_with("sqlite_")
                || t.starts_with("_ferry_")
            {
                return Err(cfg_err(
                    format!("source.tables[{i}]"),
                    format!("{t:?} is not a table of the database (a bare name, not sqlite_* or _ferry_*)"),
                ));
            }
            if !seen.insert(t) {
                return Err(cfg_err(
                    format!("source.tables[{i}]"),
                    format!("{t:?} is listed twice"),
                ));
            }
        }
        if self.poll_interval_ms == 0 {
            return Err(cfg_err("source.poll_interval_ms", "must be at least 1"));
        }
        if self.log_batch_size == 0 {
            return Err(cfg_err("source.log_batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

/// `[source] kind = "postgres"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// `postgres://user:${PGPASSWORD}@host:5432/db`.
    pub url: Secret,
    /// `schema.table` or `table` (schema `public`).
    pub tables: Vec<String>,
    #[serde(default = "default_publication")]
    pub publication: String,
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Create the publication (or add missing tables to it) at start.
    #[serde(default = "default_true")]
    pub create_publication: bool,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Tables larger than this many pages are copied in parallel chunks.
    #[serde(default = "default_snapshot_chunk_pages")]
    pub snapshot_chunk_pages: u32,
    /// Connections copying chunks at the same time.
    #[serde(default = "default_snapshot_parallelism")]
    pub snapshot_parallelism: usize,
    /// Emit a logical message this often so that an idle slot's confirmed
    /// position keeps advancing (0 turns it off).
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// How often the confirmed position is reported to the server.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// libpq's `sslmode` (`disable`, `allow`, `prefer`, `require`,
    /// `verify-ca`, `verify-full`); overrides the URL's. Default: the URL's,
    /// else `prefer` (TLS when the server offers it), as libpq.
    #[serde(default)]
    pub sslmode: Option<String>,
    /// PEM file of trusted CA certificates, or `system`.
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// Client certificate (PEM), for `cert` authentication.
    #[serde(default)]
    pub sslcert: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub sslkey: Option<String>,
    /// Replication origins whose transactions are not streamed: a name, or
    /// a prefix ending in `*`. Default `["ferry_*"]`: what Ferry's own
    /// PostgreSQL sinks wrote (they tag their sessions `ferry_<pipeline>`)
    /// never comes back through a reverse pipeline (docs/rollback.md).
    /// `[]` streams every transaction.
    #[serde(default = "default_skip_origins")]
    pub skip_origins: Vec<String>,
}

/// The origin prefix of Ferry's PostgreSQL sink sessions.
pub const FERRY_ORIGIN_PREFIX: &str = "ferry_";

fn default_skip_origins() -> Vec<String> {
    vec![format!("{FERRY_ORIGIN_PREFIX}*")]
}

impl PostgresSourceConfig {
    /// Whether a transaction replayed from replication origin `origin` is
    /// left out of the stream (see [`PostgresSourceConfig::skip_origins`]).
    pub fn skips_origin(&self, origin: &str) -> bool {
        origin_matches(&self.skip_origins, origin)
    }
}

/// Whether `origin` matches one of `patterns` (a name, or a prefix ending
/// in `*`).
pub fn origin_matches(patterns: &[String], origin: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => origin.starts_with(prefix),
        None => origin == p,
    })
}

fn default_publication() -> String {
    "ferry".into()
}
fn default_slot() -> String {
    "ferry".into()
}
fn default_true() -> bool {
    true
}
fn default_snapshot_chunk_pages() -> u32 {
    2048
}
fn default_snapshot_parallelism() -> usize {
    2
}
fn default_heartbeat_secs() -> u64 {
    10
}
fn default_status_interval_ms() -> u64 {
    1000
}

/// Whether existing rows are copied before streaming.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Copy every table whose snapshot is not complete, then stream.
    #[default]
    Initial,
    /// Stream only.
    Never,
}

/// `[sink]`
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    Postgres(PostgresSinkConfig),
    Convex(ConvexSinkConfig),
    Mongodb(MongoSinkConfig),
}

/// `[sink] kind = "mongodb"`: a MongoDB replica set (sinks/mongodb). Each
/// source table `schema.table` is written to the collection `table` of
/// `database`; the checkpoint lives in `database.ferry_checkpoints`,
/// written in each batch's transaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSinkConfig {
    /// `mongodb://user:${MONGO_PASSWORD}@host:27017/?replicaSet=rs0`; TLS
    /// options ride on the URL as the driver reads them.
    pub url: Secret,
    /// Where collections (and Ferry's own `ferry_*` collections) are
    /// written.
    pub database: String,
    /// A reverse pipeline (`ferry rollback init`): the PostgreSQL database
    /// holding `ferry_id_map` (the forward pipeline's target), where new
    /// ids are translated back to the legacy ids (ObjectIds) and new rows
    /// get fresh ones recorded.
    #[serde(default)]
    pub id_map_url: Option<Secret>,
}

/// `[sink] kind = "convex"`: Ferry's Convex module (sinks/convex/convex/)
/// called through the deployment's HTTP function API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvexSinkConfig {
    /// The deployment's URL, e.g. `https://happy-otter-123.convex.cloud`.
    pub url: String,
    /// A deploy key (`${CONVEX_DEPLOY_KEY}`); sent only in the
    /// `Authorization` header, never logged.
    pub deploy_key: Secret,
    /// How numerics (which Convex has no type for) are written: `"string"`
    /// (exact digits, the default) or `"float64"` (only values a float64
    /// holds exactly; any other is dead-lettered).
    #[serde(default)]
    pub numeric: ConvexNumeric,
    /// Source tables in the order a batch writes them (referenced tables
    /// first); tables not listed follow in the batch's order.
    #[serde(default)]
    pub table_order: Vec<String>,
    /// Most rows in one mutation call; a batch with more is split.
    #[serde(default = "default_convex_rows_per_call")]
    pub rows_per_call: usize,
}

/// How a numeric is written to Convex.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvexNumeric {
    #[default]
    String,
    Float64,
}

fn default_convex_rows_per_call() -> usize {
    1000
}

/// `[sink] kind = "postgres"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    pub url: Secret,
    /// Create missing target tables (and enum types) from the source's
    /// columns.
    #[serde(default = "default_true")]
    pub create_tables: bool,
    /// Write every source schema into this target schema instead of the
    /// schema of the same name.
    #[serde(default)]
    pub schema: Option<String>,
    /// libpq's `sslmode` (`disable`, `allow`, `prefer`, `require`,
    /// `verify-ca`, `verify-full`); overrides the URL's. Default: the URL's,
    /// else `prefer` (TLS when the server offers it), as libpq.
    #[serde(default)]
    pub sslmode: Option<String>,
    /// PEM file of trusted CA certificates, or `system`.
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// Client certificate (PEM), for `cert` authentication.
    #[serde(default)]
    pub sslcert: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub sslkey: Option<String>,
    /// Where `ferry_id_map` lives when it is not in the target: a reverse
    /// pipeline (`ferry rollback init`) translates new ids back through the
    /// forward pipeline's map, which is in the new database, its source.
    /// Needed only by mappings with `kind = "inverse"` id maps.
    #[serde(default)]
    pub id_map_url: Option<Secret>,
}

/// `[cutover]`: the thresholds `ferry cutover check` applies per table
/// (docs/verify.md). A table passes only when every one holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    /// Most WAL bytes the pipeline's slot may not have confirmed yet
    /// (PostgreSQL sources): 1 MiB by default.
    #[serde(default = "default_cutover_max_lag_bytes")]
    pub max_lag_bytes: u64,
    /// The last `ferry verify` of the table must be green and at most this
    /// old: one day by default.
    #[serde(default = "default_cutover_verify_max_age_secs")]
    pub verify_max_age_secs: u64,
    /// No `ferry verify` may have found drift in the table within this
    /// many seconds: seven days by default.
    #[serde(default = "default_cutover_soak_secs")]
    pub soak_secs: u64,
}

fn default_cutover_max_lag_bytes() -> u64 {
    1 << 20
}
fn default_cutover_verify_max_age_secs() -> u64 {
    24 * 3600
}
fn default_cutover_soak_secs() -> u64 {
    7 * 24 * 3600
}

impl Default for CutoverConfig {
    fn default() -> Self {
        Self {
            max_lag_bytes: default_cutover_max_lag_bytes(),
            verify_max_age_secs: default_cutover_verify_max_age_secs(),
            soak_secs: default_cutover_soak_secs(),
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `127.0.0.1:9187`; no endpoint when absent. Listen on a public
    /// address only where the scraper needs it (inside a container).
    pub listen: Option<SocketAddr>,
    /// When set, `/metrics` answers 401 unless the request carries
    /// `Authorization: Bearer <token>` (Prometheus: `authorization` with
    /// `credentials_file`).
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// Serve HTTPS with this PEM certificate chain (with `tls_key`).
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
    /// Connections served at once; more are closed as soon as accepted.
    #[serde(default = "default_metrics_max_connections")]
    pub max_connections: usize,
    /// `/ready` answers 200 only while every table is at most this many
    /// seconds behind (and every snapshot is done).
    #[serde(default = "default_ready_max_lag_secs")]
    pub ready_max_lag_secs: f64,
}

fn default_ready_max_lag_secs() -> f64 {
    10.0
}

fn default_metrics_max_connections() -> usize {
    64
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            bearer_token: None,
            tls_cert: None,
            tls_key: None,
            max_connections: default_metrics_max_connections(),
            ready_max_lag_secs: default_ready_max_lag_secs(),
        }
    }
}

impl MetricsConfig {
    /// The endpoint's options, when `listen` is set.
    pub fn endpoint(&self) -> Option<crate::metrics::endpoint::EndpointOptions> {
        let listen = self.listen?;
        let mut o = crate::metrics::endpoint::EndpointOptions::new(listen);
        o.bearer_token = self
            .bearer_token
            .as_ref()
            .map(|t| crate::metrics::endpoint::Token::new(t.expose()));
        o.tls = self.tls_cert.clone().zip(self.tls_key.clone());
        o.max_connections = self.max_connections;
        o.ready_max_lag = std::time::Duration::from_secs_f64(self.ready_max_lag_secs);
        Some(o)
    }
}

fn validate_metrics(m: &MetricsConfig) -> Result<(), ConfigError> {
    if !(m.ready_max_lag_secs.is_finite() && m.ready_max_lag_secs >= 0.0) {
        return Err(cfg_err(
            "metrics.ready_max_lag_secs",
            "must be a number of seconds, 0 or more",
        ));
    }
    match (&m.tls_cert, &m.tls_key) {
        (Some(_), None) => return Err(cfg_err("metrics.tls_key", "tls_cert needs tls_key")),
        (None, Some(_)) => return Err(cfg_err("metrics.tls_cert", "tls_key needs tls_cert")),
        _ => {}
    }
    if m.bearer_token
        .as_ref()
        .is_some_and(|t| t.expose().trim().is_empty())
    {
        return Err(cfg_err("metrics.bearer_token", "must not be empty"));
    }
    if m.max_connections == 0 {
        return Err(cfg_err("metrics.max_connections", "must be at least 1"));
    }
    Ok(())
}

fn validate_kafka(k: &KafkaConfig) -> Result<(), ConfigError> {
    if k.brokers.trim().is_empty() {
        return Err(cfg_err("kafka.brokers", "name at least one host:port"));
    }
    // Kafka topic names: [a-zA-Z0-9._-], at most 249; leave room for the
    // table part.
    if k.topic_prefix.is_empty()
        || k.topic_prefix.len() > 100
        || !k
            .topic_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(cfg_err(
            "kafka.topic_prefix",
            "1 to 100 characters of a-z, A-Z, 0-9, '.', '_' and '-'",
        ));
    }
    if k.partitions < 1 {
        return Err(cfg_err("kafka.partitions", "must be at least 1"));
    }
    if k.replication_factor < 1 {
        return Err(cfg_err("kafka.replication_factor", "must be at least 1"));
    }
    if k.max_in_flight_mb == 0 {
        return Err(cfg_err("kafka.max_in_flight_mb", "must be at least 1"));
    }
    if let Some(url) = &k.schema_registry_url {
        if !url.starts_with("http://") {
            return Err(cfg_err(
                "kafka.schema_registry_url",
                "expected http://host:port (https is not supported yet)",
            ));
        }
        if k.encoding != Encoding::Avro {
            return Err(cfg_err(
                "kafka.schema_registry_url",
                "a schema registry holds Avro schemas; set kafka.encoding = \"avro\"",
            ));
        }
    }
    // Ferry owns the settings its guarantees rest on.
    const OWNED: [&str; 6] = [
        "enable.idempotence",
        "acks",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "group.id",
    ];
    for (section, map) in [
        ("kafka.client", &k.client),
        ("kafka.producer", &k.producer),
        ("kafka.consumer", &k.consumer),
    ] {
        for key in map.keys() {
            if OWNED.contains(&key.as_str()) || key == "bootstrap.servers" {
                return Err(cfg_err(
                    format!("{section}.\"{key}\""),
                    "set by Ferry (its delivery guarantees depend on it)",
                ));
            }
            // One client with other security than the rest talks to the
            // brokers in plaintext (the admin client did, before
            // [kafka.client]).
            if section != "kafka.client" && is_connection_security(key) {
                return Err(cfg_err(
                    format!("{section}.\"{key}\""),
                    "connection security applies to every client (admin, producer, consumer): \
                     set it in [kafka.client]",
                ));
            }
        }
    }
    Ok(())
}

/// librdkafka properties that decide how a client reaches the brokers.
fn is_connection_security(key: &str) -> bool {
    key == "security.protocol"
        || key.starts_with("sasl.")
        || key.starts_with("ssl.")
        || key.starts_with("ssl_")
        || key == "enable.ssl.certificate.verification"
}

fn cfg_err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Reads, interpolates, deserializes and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| cfg_err(path.display().to_string(), e.to_string()))?;
        let mut config = Self::from_toml(&text, &|k| std::env::var(k).ok())?;
        // A SQLite file named relative to the config is the config's
        // neighbour, wherever ferry is started from (like the mapping file).
        if let SourceConfig::Sqlite(s) = &mut config.source {
            if s.path.is_relative() {
                s.path = path.parent().unwrap_or(Path::new(".")).join(&s.path);
            }
        }
        if let Some(m) = &config.pipeline.mappings {
            let file = path.parent().unwrap_or(Path::new(".")).join(m);
            config.pipeline.mappings = Some(file.clone());
            config.mappings = Some(crate::mapping::Mappings::load(&file)?);
            if let SinkConfig::Postgres(PostgresSinkConfig {
                schema: Some(_), ..
            }) = &config.sink
            {
                return Err(cfg_err(
                    "sink.schema",
                    "does not apply with pipeline.mappings: mapped tables name their target schema",
                ));
            }
        }
        Ok(config)
    }

    /// Parses TOML text; `env` resolves `${NAME}`, and `${file:/path}`
    /// reads a file.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value = crate::error::parse_toml(text, "config")?;
        interpolate(&mut value, "", env)?;
        let config: Config = crate::error::deserialize_toml(value, "")?;
        config.validate()?;
        Ok(config)
    }

    /// Pure checks: no I/O, every error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.pipeline;
        if !is_identifier(&p.name) {
            return Err(cfg_err(
                "pipeline.name",
                "use lowercase letters, digits and _ (at most 63)",
            ));
        }
        if p.batch_size == 0 {
            return Err(cfg_err("pipeline.batch_size", "must be at least 1"));
        }
        if p.bus_capacity == 0 {
            return Err(cfg_err("pipeline.bus_capacity", "must be at least 1"));
        }
        match &self.source {
            SourceConfig::Postgres(s) => {
                check_pg_url("source.url", s.url.expose())?;
                check_sslmode("source.sslmode", s.sslmode.as_deref())?;
                if s.tables.is_empty() {
                    return Err(cfg_err("source.tables", "name at least one table"));
                }
                let mut seen = std::collections::HashSet::new();
                for (i, t) in s.tables.iter().enumerate() {
                    let id = TableId::parse(t).ok_or_else(|| {
                        cfg_err(
                            format!("source.tables[{i}]"),
                            format!("{t:?} is not `schema.table` or `table`"),
                        )
                    })?;
                    if !seen.insert(id) {
                        return Err(cfg_err(
                            format!("source.tables[{i}]"),
                            format!("{t:?} is listed twice"),
                        ));
                    }
                }
                if !is_identifier(&s.slot) {
                    return Err(cfg_err(
                        "source.slot",
                        "slot names use lowercase letters, digits and _ (at most 63)",
                    ));
                }
                if s.publication.is_empty() || s.publication.len() > 63 {
                    return Err(cfg_err("source.publication", "1 to 63 characters"));
                }
                if s.snapshot_parallelism == 0 {
                    return Err(cfg_err("source.snapshot_parallelism", "must be at least 1"));
                }
                if s.snapshot_chunk_pages == 0 {
                    return Err(cfg_err("source.snapshot_chunk_pages", "must be at least 1"));
                }
                if s.status_interval_ms == 0 {
                    return Err(cfg_err("source.status_interval_ms", "must be at least 1"));
                }
            }
            SourceConfig::Mongodb(m) => {
                let url = m.url.expose();
                if !url.starts_with("mongodb://") && !url.starts_with("mongodb+srv://") {
                    return Err(cfg_err(
                        "source.url",
                        "expected mongodb://host[:port]/?replicaSet=... or mongodb+srv://host/",
                    ));
                }
                if m.database.is_empty() || m.database.contains(['/', '.', ' ', '"', '$']) {
                    return Err(cfg_err("source.database", "a MongoDB database name"));
                }
                let mut seen = std::collections::HashSet::new();
                for (i, c) in m.collections.iter().enumerate() {
                    if c.is_empty() || c.starts_with("system.") || c.contains('$') {
                        return Err(cfg_err(
                            format!("source.collections[{i}]"),
                            format!("{c:?} is not a collection name"),
                        ));
                    }
                    if !seen.insert(c) {
                        return Err(cfg_err(
                            format!("source.collections[{i}]"),
                            format!("{c:?} is listed twice"),
                        ));
                    }
                }
                if m.snapshot_batch_size == 0 {
                    return Err(cfg_err("source.snapshot_batch_size", "must be at least 1"));
                }
            }
            SourceConfig::Sqlite(s) => s.validate()?,
            SourceConfig::Convex(c) => c.validate()?,
        }
        match (&p.bus, &self.kafka) {
            (BusKind::Kafka, None) => {
                return Err(cfg_err(
                    "kafka",
                    "pipeline.bus = \"kafka\" needs a [kafka] section with `brokers`",
                ))
            }
            (_, Some(k)) => validate_kafka(k)?,
            (BusKind::Embedded, None) => {}
        }
        validate_metrics(&self.metrics)?;
        match &self.sink {
            SinkConfig::Postgres(s) => {
                check_pg_url("sink.url", s.url.expose())?;
                check_sslmode("sink.sslmode", s.sslmode.as_deref())?;
                if let Some(schema) = &s.schema {
                    if schema.is_empty() {
                        return Err(cfg_err("sink.schema", "must not be empty"));
                    }
                    // One target schema for all: two source tables of the
                    // same name would write into one table.
                    let mut names = std::collections::HashSet::new();
                    for t in self.source.tables() {
                        if !names.insert(t.name.clone()) {
                            return Err(cfg_err(
                                "sink.schema",
                                format!("two source tables are named {:?}: they would share one target table", t.name),
                            ));
                        }
                    }
                }
            }
            SinkConfig::Convex(c) => {
                if !(c.url.starts_with("https://") || c.url.starts_with("http://")) {
                    return Err(cfg_err(
                        "sink.url",
                        "must be the deployment's http(s):// URL",
                    ));
                }
                if c.deploy_key.expose().is_empty() {
                    return Err(cfg_err("sink.deploy_key", "must not be empty"));
                }
                if !(1..=4000).contains(&c.rows_per_call) {
                    return Err(cfg_err("sink.rows_per_call", "must be between 1 and 4000 (Convex reads at most 4096 index ranges per transaction)"));
                }
            }
            SinkConfig::Mongodb(m) => {
                let u = m.url.expose();
                if !(u.starts_with("mongodb://") || u.starts_with("mongodb+srv://")) {
                    return Err(cfg_err(
                        "sink.url",
                        "must be a mongodb:// or mongodb+srv:// connection string",
                    ));
                }
                // MongoDB's own rules for database names.
                if m.database.is_empty()
                    || m.database.len() > 63
                    || m.database.contains(['/', '\\', '.', ' ', '"', '$', '\0'])
                {
                    return Err(cfg_err(
                        "sink.database",
                        format!("{:?} is not a MongoDB database name", m.database),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// libpq's `sslmode` values (the URL's own are checked where the URL is
/// read, by the PostgreSQL connectors).
fn check_sslmode(key: &str, mode: Option<&str>) -> Result<(), ConfigError> {
    match mode {
        None | Some("disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full") => {
            Ok(())
        }
        Some(other) => Err(cfg_err(
            key,
            format!(
                "{other:?} is not an sslmode (disable, allow, prefer, require, verify-ca, verify-full)"
            ),
        )),
    }
}

fn check_pg_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(cfg_err(
            key,
            "expected postgres://user[:password]@host[:port]/database",
        ))
    }
}

/// Replaces `${NAME}` in every string with the environment variable, and
/// `${file:/path}` with the file's content (Docker and Kubernetes secrets);
/// a missing variable or unreadable file is an error naming the key (never
/// the value). One trailing newline (`\n` or `\r\n`) of a file is dropped:
/// secret files usually end with one (`echo … > file`, `kubectl create
/// secret --from-file`), and a password never does. `$${` stands for a
/// literal `${`.
fn interpolate(
    v: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match v {
        toml::Value::String(s) if s.contains("${") => {
            *s = interpolate_str(s, path, env)?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{path}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                interpolate(item, &p, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn interpolate_str(
    s: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
        } else if let Some(t) = tail.strip_prefix("${") {
            let end = t
                .find('}')
                .ok_or_else(|| cfg_err(key, "unterminated ${...}"))?;
            let name = &t[..end];
            let value = match name.strip_prefix("file:") {
                Some(file) => read_secret_file(key, file)?,
                None => env(name).ok_or_else(|| {
                    cfg_err(key, format!("environment variable {name} is not set"))
                })?,
            };
            out.push_str(&value);
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The content of a secret file, less one trailing newline.
fn read_secret_file(key: &str, file: &str) -> Result<String, ConfigError> {
    if !Path::new(file).is_absolute() {
        return Err(cfg_err(
            key,
            format!("${{file:{file}}}: give an absolute path"),
        ));
    }
    let mut text = std::fs::read_to_string(file)
        .map_err(|e| cfg_err(key, format!("cannot read secret file {file}: {e}")))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[pipeline]
name = "orders"

[source]
kind = "postgres"
url = "postgres://ferry:${PGPASS}@127.0.0.1:5432/app"
tables = ["public.orders", "users"]

[sink]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:5433/app"
"#;

    fn env(k: &str) -> Option<String> {
        (k == "PGPASS").then(|| "s3cr$t".to_string())
    }

    #[test]
    fn a_relative_sqlite_path_is_the_configs_neighbour() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        let text = |path: &str| {
            format!(
                "[source]\nkind = \"sqlite\"\npath = \"{path}\"\n\n[sink]\nkind = \"postgres\"\nurl = \"postgres://u@h/db\"\n"
            )
        };
        std::fs::write(&file, text("data/app.db")).unwrap();
        let SourceConfig::Sqlite(s) = Config::load(&file).unwrap().source else {
            panic!("not a sqlite source");
        };
        assert_eq!(s.path, dir.path().join("data/app.db"));
        std::fs::write(&file, text("/srv/app.db")).unwrap();
        let SourceConfig::Sqlite(s) = Config::load(&file).unwrap().source else {
            panic!("not a sqlite source");
        };
        assert_eq!(s.path, std::path::PathBuf::from("/srv/app.db"));
    }

    #[test]
    fn loads_and_interpolates_without_printing_secrets() {
        let c = Config::from_toml(GOOD, &env).unwrap();
        let SourceConfig::Postgres(s) = &c.source else {
            panic!("postgres source")
        };
        assert_eq!(s.url.expose(), "postgres://ferry:s3cr$t@127.0.0.1:5432/app");
        assert!(!format!("{c:?}").contains("s3cr"));
        assert_eq!(s.slot, "ferry");
        assert_eq!(c.pipeline.batch_size, 5000);
    }

    #[test]
    fn mongodb_sink_keys_are_checked_by_name() {
        let text = |sink: &str| {
            format!("[source]\nkind = \"postgres\"\nurl = \"postgres://u@h/db\"\ntables = [\"public.t\"]\n\n[sink]\nkind = \"mongodb\"\n{sink}")
        };
        let c = Config::from_toml(
            &text("url = \"mongodb://u:pw@127.0.0.1:27017\"\ndatabase = \"app\"\n"),
            &env,
        )
        .unwrap();
        let SinkConfig::Mongodb(m) = &c.sink else {
            panic!("mongodb sink")
        };
        assert_eq!(m.database, "app");
        assert!(!format!("{c:?}").contains("pw@"));
        let e =
            Config::from_toml(&text("url = \"http://x\"\ndatabase = \"app\"\n"), &env).unwrap_err();
        assert_eq!(e.key, "sink.url");
        let e = Config::from_toml(&text("url = \"mongodb://h\"\ndatabase = \"a.b\"\n"), &env)
            .unwrap_err();
        assert_eq!(e.key, "sink.database");
        let e = Config::from_toml(
            &text("url = \"mongodb://h\"\ndatabase = \"a\"\ncollection = \"x\"\n"),
            &env,
        )
        .unwrap_err();
        assert!(e.to_string().contains("collection"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let bad = GOOD.replace("tables =", "tabels = [\"x\"]\ntables =");
        let e = Config::from_toml(&bad, &env).unwrap_err();
        assert!(e.to_string().contains("tabels"), "{e}");
        let bad = GOOD.replace("[pipeline]", "[pipeline]\nbatchsize = 3");
        let e = Config::from_toml(&bad, &env).unwrap_err();
        assert!(e.to_string().contains("batchsize"), "{e}");
    }

    #[test]
    fn missing_env_names_key_and_variable() {
        let e = Config::from_toml(GOOD, &|_| None).unwrap_err();
        assert_eq!(e.key, "source.url");
        assert!(e.message.contains("PGPASS"));
    }

    #[test]
    fn mongodb_source_config() {
        let text = r#"
[source]
kind = "mongodb"
url = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
database = "escrow"
collections = ["payments", "users"]
on_history_lost = "resnapshot"

[sink]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:5433/app"
schema = "public"
"#;
        let c = Config::from_toml(text, &env).unwrap();
        let SourceConfig::Mongodb(m) = &c.source else {
            panic!("mongodb source")
        };
        assert_eq!(m.on_history_lost, HistoryLost::Resnapshot);
        assert_eq!(m.on_collection_gone, CollectionGone::Fail);
        assert_eq!(c.source.tables()[1], TableId::new("escrow", "users"));
        let bad = text.replace("collections = [", "colections = [");
        assert!(Config::from_toml(&bad, &env)
            .unwrap_err()
            .to_string()
            .contains("colections"));
        let srv = text.replace(
            "mongodb://127.0.0.1:27017",
            "mongodb+srv://cluster.example.com",
        );
        assert!(Config::from_toml(&srv, &env).is_ok());
        let bad = text.replace("mongodb://127", "mysql://127");
        assert_eq!(Config::from_toml(&bad, &env).unwrap_err().key, "source.url");
        let bad = text.replace("\"users\"", "\"payments\"");
        assert_eq!(
            Config::from_toml(&bad, &env).unwrap_err().key,
            "source.collections[1]"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let bad = GOOD.replace("\"users\"", "\"a.b.c\"");
        let e = Config::from_toml(&bad, &env).unwrap_err();
        assert_eq!(e.key, "source.tables[1]");
        let bad = GOOD.replace("name = \"orders\"", "name = \"Orders!\"");
        assert_eq!(
            Config::from_toml(&bad, &env).unwrap_err().key,
            "pipeline.name"
        );
        let bad = GOOD
            .replace("127.0.0.1:5433", "x")
            .replace("postgres://postgres@x", "mysql://x");
        assert_eq!(Config::from_toml(&bad, &env).unwrap_err().key, "sink.url");
    }

    #[test]
    fn secrets_come_from_files_less_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let text = GOOD.replace("${PGPASS}", &format!("${{file:{}}}", file.display()));
        let c = Config::from_toml(&text, &env).unwrap();
        let SourceConfig::Postgres(s) = &c.source else {
            panic!("postgres source")
        };
        assert_eq!(
            s.url.expose(),
            "postgres://ferry:from-a-file@127.0.0.1:5432/app"
        );
        // Only one newline goes: the rest is the secret's.
        std::fs::write(&file, "two\n\n").unwrap();
        let c = Config::from_toml(&text, &env).unwrap();
        let SourceConfig::Postgres(s) = &c.source else {
            panic!("postgres source")
        };
        assert_eq!(s.url.expose(), "postgres://ferry:two\n@127.0.0.1:5432/app");
        let missing = GOOD.replace("${PGPASS}", "${file:/nonexistent/secret}");
        let e = Config::from_toml(&missing, &env).unwrap_err();
        assert_eq!(e.key, "source.url");
        assert!(e.message.contains("/nonexistent/secret"), "{e}");
        let relative = GOOD.replace("${PGPASS}", "${file:secret}");
        assert!(Config::from_toml(&relative, &env)
            .unwrap_err()
            .message
            .contains("absolute"));
    }

    #[test]
    fn a_syntax_error_does_not_print_the_password() {
        let bad = GOOD.replace(
            "url = \"postgres://postgres@127.0.0.1:5433/app\"",
            "url = \"postgres://postgres:hunter2@127.0.0.1:5433/app",
        );
        let e = Config::from_toml(&bad, &env).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 12"), "{e}");
    }

    #[test]
    fn serde_errors_name_the_full_key() {
        let bad = GOOD.replace(
            "name = \"orders\"",
            "name = \"orders\"\nbatch_size = \"many\"",
        );
        let e = Config::from_toml(&bad, &env).unwrap_err();
        assert_eq!(e.key, "pipeline.batch_size", "{e}");
        let bad = format!("{GOOD}\n[metrics]\nlisten = \"nowhere\"\n");
        assert_eq!(
            Config::from_toml(&bad, &env).unwrap_err().key,
            "metrics.listen"
        );
        let bad = GOOD.replace("tables = [", "snapshot_parallelism = 0\ntables = [");
        let e = Config::from_toml(&bad, &env).unwrap_err();
        assert_eq!(e.key, "source.snapshot_parallelism", "{e}");
        let bad = format!("{GOOD}\n[kafka]\nbrokers = \"b:9092\"\npartitions = \"two\"\n");
        assert_eq!(
            Config::from_toml(&bad, &env).unwrap_err().key,
            "kafka.partitions"
        );
    }

    #[test]
    fn kafka_security_is_set_once_for_every_client() {
        let kafka = |extra: &str| {
            format!("{GOOD}\n[kafka]\nbrokers = \"b:9092\"\n{extra}\n")
                .replace("[pipeline]", "[pipeline]\nbus = \"kafka\"")
        };
        let ok = kafka(
            "client = { \"security.protocol\" = \"SASL_SSL\", \"sasl.mechanism\" = \"SCRAM-SHA-512\", \"sasl.username\" = \"ferry\", \"sasl.password\" = \"${PGPASS}\" }",
        );
        let c = Config::from_toml(&ok, &env).unwrap();
        let k = c.kafka.as_ref().unwrap();
        assert_eq!(k.client["sasl.password"], "s3cr$t");
        assert!(!format!("{c:?}").contains("s3cr"), "{c:?}");
        for (section, key) in [
            ("producer", "security.protocol"),
            ("consumer", "sasl.password"),
            ("producer", "ssl.ca.location"),
        ] {
            let bad = kafka(&format!("{section} = {{ \"{key}\" = \"x\" }}"));
            let e = Config::from_toml(&bad, &env).unwrap_err();
            assert_eq!(e.key, format!("kafka.{section}.\"{key}\""));
            assert!(e.message.contains("[kafka.client]"), "{e}");
        }
    }

    #[test]
    fn metrics_options_are_checked() {
        let m = |extra: &str| format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:9187\"\n{extra}\n");
        let c = Config::from_toml(&m("bearer_token = \"${PGPASS}\""), &env).unwrap();
        let e = c.metrics.endpoint().unwrap();
        assert!(e.bearer_token.is_some());
        assert!(!format!("{c:?} {e:?}").contains("s3cr"));
        let e = Config::from_toml(&m("tls_cert = \"/c.pem\""), &env).unwrap_err();
        assert_eq!(e.key, "metrics.tls_key");
        let e = Config::from_toml(&m("max_connections = 0"), &env).unwrap_err();
        assert_eq!(e.key, "metrics.max_connections");
        let e = Config::from_toml(&m("ready_max_lag_secs = -1"), &env).unwrap_err();
        assert_eq!(e.key, "metrics.ready_max_lag_secs");
        let c = Config::from_toml(&m("ready_max_lag_secs = 2.5"), &env).unwrap();
        assert_eq!(
            c.metrics.endpoint().unwrap().ready_max_lag,
            std::time::Duration::from_millis(2500)
        );
        let c = Config::from_toml(&m(""), &env).unwrap();
        assert_eq!(
            c.metrics.endpoint().unwrap().ready_max_lag,
            std::time::Duration::from_secs(10)
        );
    }
}
