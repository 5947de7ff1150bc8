//! PostgreSQL connections for every part of Ferry that talks to PostgreSQL
//! (the source, the sink, the CLI): libpq's connection strings and `sslmode`
//! rules over rustls (no OpenSSL), for query, COPY and replication sessions.
//!
//! Not a connector: the PostgreSQL source and sink both need it, and
//! connectors and sinks never depend on each other, so it sits beside them.

pub mod connect;
pub mod conninfo;
pub mod tls;

pub use connect::{pg_error, PgConnInfo};
pub use conninfo::{ConnInfoError, Defaults, SslKeys, SslMode, TlsOptions, Verification};
