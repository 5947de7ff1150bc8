//! Opening connections: a parsed connection string ([`PgConnInfo`]) →
//! a tokio-postgres client or the replication stream's settings, with
//! failures classified once (TLS and authentication are permanent
//! configuration errors that name the server, never the password).

use std::time::Duration;

use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use pgwire_replication::{ReplicationConfig, TlsConfig};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::conninfo::{self, ConnInfoError, Defaults, SslKeys, SslMode, TlsOptions, Verification};
use crate::tls;

/// A connection string, read with libpq's rules.
#[derive(Clone)]
pub struct PgConnInfo {
    pg: tokio_postgres::Config,
    tls: TlsOptions,
}

impl std::fmt::Debug for PgConnInfo {
    // The tokio-postgres config holds the password: show only where to.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnInfo")
            .field("endpoint", &self.endpoint())
            .field("tls", &self.tls)
            .finish()
    }
}

impl PgConnInfo {
    /// Reads a URL or `key=value` string (no I/O but for the existence of
    /// libpq's default files under `~/.postgresql`).
    pub fn parse(conn: &str) -> Result<Self, ConnInfoError> {
        Self::parse_with(conn, &SslKeys::default(), &Defaults::from_env())
    }

    /// As [`PgConnInfo::parse`], with `ssl*` keys from the configuration
    /// overriding the string's.
    pub fn parse_with(
        conn: &str,
        overrides: &SslKeys,
        defaults: &Defaults,
    ) -> Result<Self, ConnInfoError> {
        let (rest, keys) = conninfo::split_ssl_keys(conn)?;
        let tls = conninfo::resolve(&keys.overridden_by(overrides), defaults)?;
        let mut pg: tokio_postgres::Config = rest
            .parse()
            // tokio-postgres' messages name the bad option, not its value.
            .map_err(|e: tokio_postgres::Error| ConnInfoError(e.to_string()))?;
        pg.ssl_mode(match tls.mode {
            SslMode::Disable | SslMode::Allow => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        if pg.get_connect_timeout().is_none() {
            // libpq waits for ever by default; a dead address should fail
            // and be retried, not hang a start.
            pg.connect_timeout(Duration::from_secs(30));
        }
        Ok(Self { pg, tls })
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    pub fn tls(&self) -> &TlsOptions {
        &self.tls
    }

    /// `host:port` of the first host, for messages.
    pub fn endpoint(&self) -> String {
        let host = self.host();
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    fn host(&self) -> String {
        match self.pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        }
    }

    /// The database the string names (libpq: the user's name by default).
    pub fn database(&self) -> Option<String> {
        self.pg
            .get_dbname()
            .or(self.pg.get_user())
            .map(str::to_string)
    }

    /// Opens a session; `what` says which one in errors ("source",
    /// "target"). TLS and authentication failures are fatal (retrying does
    /// not fix a certificate or a password); an unreachable server is
    /// transient.
    pub async fn connect(&self, stage: Stage, what: &str) -> Result<Client, PipelineError> {
        let context = format!("connect to {what} at {}", self.endpoint());
        let connector = tls::client_config(&self.tls)
            .map(MakeRustlsConnect::new)
            .map_err(|e| PipelineError::fatal(stage, format!("{context}: {e}")))?;
        let first = self.pg.connect(connector.clone()).await;
        let (client, conn) = match first {
            // libpq's `allow`: plaintext first, TLS when the server refuses
            // plaintext (pg_hba.conf `hostssl` only: SQLSTATE 28000).
            Err(e)
                if self.tls.mode == SslMode::Allow
                    && e.code().map(|c| c.code()) == Some("28000") =>
            {
                let mut pg = self.pg.clone();
                pg.ssl_mode(PgSslMode::Require);
                pg.connect(connector).await
            }
            other => other,
        }
        .map_err(|e| pg_error(stage, &context, e))?;
        let label = what.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, connection = %label, "connection closed");
            }
        });
        Ok(client)
    }

    /// The replication stream's settings (pgwire-replication) for this
    /// string: the same server, credentials and TLS rules as
    /// [`PgConnInfo::connect`].
    pub fn replication(
        &self,
        slot: &str,
        publication: &str,
    ) -> Result<ReplicationConfig, ConnInfoError> {
        let user = self.pg.get_user().unwrap_or("postgres").to_string();
        let password = self
            .pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let db = self.database().unwrap_or_else(|| user.clone());
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        // libpq's `hostaddr`: dial the address, verify the host's name.
        let (dial, tls) = match self.pg.get_hostaddrs().first() {
            Some(addr) => (
                addr.to_string(),
                self.replication_tls()?.with_sni_hostname(self.host()),
            ),
            None => (self.host(), self.replication_tls()?),
        };
        Ok(ReplicationConfig::new(
            dial,
            user,
            password,
            db,
            slot.to_string(),
            publication.to_string(),
        )
        .with_port(port)
        .with_tls(tls))
    }

    fn replication_tls(&self) -> Result<TlsConfig, ConnInfoError> {
        let mut t = match &self.tls.verification {
            Verification::None => match self.tls.mode {
                SslMode::Disable => TlsConfig::disabled(),
                // pgwire-replication has no `allow`; `prefer` reaches the
                // same servers (TLS when offered, plaintext otherwise).
                SslMode::Allow | SslMode::Prefer => TlsConfig {
                    mode: pgwire_replication::SslMode::Prefer,
                    ..TlsConfig::default()
                },
                _ => TlsConfig::require(),
            },
            Verification::Chain(root) => TlsConfig::verify_ca(Some(tls::root_file(root)?)),
            Verification::Full(root) => TlsConfig::verify_full(Some(tls::root_file(root)?)),
        };
        if let Some((cert, key)) = &self.tls.client_cert {
            t = t.with_client_cert(cert.clone(), key.clone());
        }
        Ok(t)
    }
}

/// A tokio-postgres error as a [`PipelineError`]: by SQLSTATE class when
/// the server answered, fatal with the reason for TLS failures, transient
/// otherwise (a lost connection, a server restarting).
pub fn pg_error(stage: Stage, context: &str, e: tokio_postgres::Error) -> PipelineError {
    if e.as_db_error().is_none() {
        if let Some(reason) = tls::failure_reason(&e) {
            return PipelineError::new(
                ErrorClass::Fatal,
                stage,
                format!("{context}: TLS failed: {reason}"),
            );
        }
    }
    let code = e.code().map(|c| c.code().to_string());
    let msg = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    };
    PipelineError::from_postgres(stage, context, code.as_deref(), anyhow::anyhow!(msg))
}
