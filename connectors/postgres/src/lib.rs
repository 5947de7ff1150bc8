//! Ferry's PostgreSQL source: publication and pgoutput slot, gap-free snapshot,
//! streaming, and the pure pgoutput and text-format codecs.

pub mod catalog;
pub mod check;
pub mod config;
pub mod connect;
pub mod pgoutput;
pub mod slot;
pub mod snapshot;
pub mod source;
pub mod stream;
pub mod text;

pub use config::{conn_info, replication_config};
pub use connect::{connect, connect_to, pg_err};
pub use source::PostgresSource;
