//! Throwaway local PostgreSQL clusters for `ferry demo`, the end-to-end tests
//! and the benchmark.
//!
//! This module owns everything about running a private server: finding the
//! server binaries (`initdb`, `pg_ctl`, `postgres`) on `PATH` or under
//! `/usr/lib/postgresql/*/bin`, running them as the `postgres` OS user when
//! the current process is root (the server refuses to run as root), creating
//! a fresh data directory inside a [`tempfile::TempDir`], configuring it for
//! logical replication, picking a free TCP port, starting, stopping and
//! restarting the server, and tearing everything down on drop.
//!
//! Each [`LocalCluster`] lives in its own temporary directory (data
//! directory, Unix socket directory and server log), so any number of
//! clusters can be started concurrently from parallel tests. Every process
//! started here runs from that directory with its core-file limit at 0
//! (`ulimit -c 0` before `exec`), so a crashing server or tool leaves no
//! core dump in the caller's working directory (the checkout, for tests).
//!
//! The settings favour speed over durability (`fsync=off`,
//! `full_page_writes=off`): that is fine because tests only ever kill the
//! Ferry process, never the server, and [`LocalCluster::restart`] uses a
//! clean fast shutdown.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use ferry_pipeline::event::quote_ident;
use tempfile::TempDir;
use tokio_postgres::NoTls;

use crate::security::{self, AuthMethod, Security, TestPki};

/// How many times [`LocalCluster::start`] tries a fresh port when the server
/// cannot bind the one it picked (only when no fixed port was requested).
const PORT_ATTEMPTS: usize = 3;
/// How long [`LocalCluster::start`] keeps retrying to connect after `pg_ctl`
/// reports the server as started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// `pg_ctl -t` for starting the server (slow under many parallel tests).
const PG_CTL_START_TIMEOUT_SECS: &str = "60";
/// `pg_ctl -t` for a fast shutdown. A walsender may hold the shutdown until
/// its client confirms the last WAL or `wal_sender_timeout` (60 s) expires.
const PG_CTL_STOP_TIMEOUT_SECS: &str = "120";
/// Lines of server log quoted in error messages.
const ERROR_LOG_LINES: usize = 40;

/// The server settings every cluster gets. [`ClusterOptions::extra_settings`]
/// are written after these, so they override them.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("wal_level", "logical"),
    ("listen_addresses", "127.0.0.1"),
    ("max_wal_senders", "20"),
    ("max_replication_slots", "20"),
    ("fsync", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "200"),
    ("shared_buffers", "128MB"),
    ("wal_sender_timeout", "60s"),
];

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// TCP port to listen on (on 127.0.0.1). `None` picks a free port, and
    /// retries with another one if the server loses the race for it.
    pub port: Option<u16>,
    /// Extra `postgresql.conf` settings as `(name, value)` pairs, e.g.
    /// `("max_wal_size", "1GB")`. Values are given unquoted; they are quoted
    /// when written. They override the built-in settings (except the port,
    /// which always comes from [`ClusterOptions::port`]).
    pub extra_settings: Vec<(String, String)>,
    /// TLS and password authentication for TCP clients (test certificates
    /// are generated); `None`: plaintext, `trust`.
    pub security: Option<Security>,
}

/// A running (or stopped) private PostgreSQL server in a temporary
/// directory.
///
/// Dropping it shuts the server down immediately (`pg_ctl stop -m
/// immediate`) and deletes the directory.
#[derive(Debug)]
pub struct LocalCluster {
    port: u16,
    data_dir: PathBuf,
    sock_dir: PathBuf,
    log_file: PathBuf,
    bins: &'static Binaries,
    run_as: &'static RunAs,
    security: Option<Security>,
    pki: Option<TestPki>,
    /// Owns the whole directory; removed after [`Drop`] stopped the server.
    dir: TempDir,
}

impl LocalCluster {
    /// Checks that a cluster can be started on this machine: that `initdb`
    /// and `pg_ctl` (with `postgres` next to it) can be found, and, when
    /// running as root, that `runuser` and the `postgres` OS user exist.
    ///
    /// The error is a human-readable message saying what to install or fix.
    pub fn binaries_available() -> Result<(), String> {
        binaries()?;
        run_as()?;
        Ok(())
    }

    /// Creates a fresh cluster (`initdb`) in a new temporary directory,
    /// starts it and waits until it accepts connections.
    ///
    /// The cluster is configured for logical replication
    /// (`wal_level=logical`, 20 walsenders and slots), trusts every local
    /// connection and has the superuser `postgres`. Errors include the tail
    /// of the server log.
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<LocalCluster> {
        let bins = binaries().map_err(anyhow::Error::msg)?;
        let run_as = run_as().map_err(anyhow::Error::msg)?;
        let config = render_settings(&opts.extra_settings)?;

        let dir = tempfile::Builder::new()
            .prefix("ferry-pg-")
            .tempdir_in(temp_root())
            .context("creating the cluster's temporary directory")?;
        let sock_dir = dir.path().join("sock");
        std::fs::create_dir(&sock_dir)
            .with_context(|| format!("creating {}", sock_dir.display()))?;
        if matches!(run_as, RunAs::Postgres { .. }) {
            let mut args = vec!["-R".into(), "postgres:postgres".into()];
            args.push(dir.path().into());
            let (program, args) = without_core_dumps("chown", args);
            let mut chown = tokio::process::Command::new(program);
            chown.args(args).current_dir(dir.path());
            run(chown, "chown -R postgres:postgres").await?;
        }

        let mut cluster = LocalCluster {
            port: 0,
            data_dir: dir.path().join("data"),
            sock_dir,
            log_file: dir.path().join("server.log"),
            bins,
            run_as,
            security: opts.security.clone(),
            pki: None,
            dir,
        };

        let initdb = cluster.command(
            &bins.initdb,
            [
                "-D".into(),
                cluster.data_dir.clone().into(),
                "-A".into(),
                "trust".into(),
                "-U".into(),
                "postgres".into(),
                "-E".into(),
                "UTF8".into(),
                "--no-locale".into(),
                "--no-sync".into(),
            ],
        );
        run(initdb, "initdb").await?;
        cluster.append_config(&config)?;
        if let Some(security) = &opts.security {
            cluster.secure(security).await?;
        }

        let mut attempt = 1;
        loop {
            cluster.port = match opts.port {
                Some(port) => port,
                None => free_port()?,
            };
            match cluster.start_server().await {
                Ok(()) => break,
                Err(StartError::PortInUse(err))
                    if opts.port.is_none() && attempt < PORT_ATTEMPTS =>
                {
                    tracing::debug!(
                        port = cluster.port,
                        error = %err,
                        "local cluster lost the race for its port; retrying"
                    );
                    attempt += 1;
                }
                Err(StartError::PortInUse(err) | StartError::Other(err)) => return Err(err),
            }
        }
        if cluster.security.is_some() {
            let client = cluster.connect("postgres").await?;
            client
                .batch_execute(&format!(
                    "ALTER ROLE postgres PASSWORD '{}'",
                    security::PASSWORD
                ))
                .await
                .context("setting the postgres password")?;
        }
        tracing::debug!(
            port = cluster.port,
            dir = %cluster.dir.path().display(),
            "local PostgreSQL cluster started"
        );
        Ok(cluster)
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db`:
    /// `postgres://postgres@127.0.0.1:PORT/db`. On a secured cluster it
    /// carries the password, and with TLS dials `localhost` (the name in
    /// the server's certificate) with `sslmode=verify-full` against the
    /// test CA (and the client certificate for `cert` authentication).
    pub fn url(&self, db: &str) -> String {
        let (Some(security), Some(pki)) = (&self.security, &self.pki) else {
            return format!("postgres://postgres@127.0.0.1:{}/{db}", self.port);
        };
        let mut url = format!(
            "postgres://postgres:{}@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}",
            security::PASSWORD,
            self.port,
            pki.ca_cert.display()
        );
        if security.auth == AuthMethod::Cert {
            url.push_str(&format!(
                "&sslcert={}&sslkey={}",
                pki.client_cert.display(),
                pki.client_key.display()
            ));
        }
        url
    }

    /// The test certificates of a secured cluster.
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// Connects to database `db` as `postgres` (over TCP; through the
    /// trusted unix socket on a secured cluster) and spawns the connection
    /// task on the current Tokio runtime.
    pub async fn connect(&self, db: &str) -> anyhow::Result<tokio_postgres::Client> {
        let mut config = tokio_postgres::Config::new();
        if self.security.is_some() {
            config.host_path(&self.sock_dir);
        } else {
            config.host("127.0.0.1");
        }
        let (client, connection) = config
            .port(self.port)
            .user("postgres")
            .dbname(db)
            .connect_timeout(Duration::from_secs(5))
            .connect(NoTls)
            .await
            .with_context(|| format!("connecting to {}", self.url(db)))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "local cluster connection ended");
            }
        });
        Ok(client)
    }

    /// Creates database `name` (quoted as an identifier).
    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let client = self.connect("postgres").await?;
        client
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
            .with_context(|| format!("creating database {name:?}"))?;
        Ok(())
    }

    /// Stops the server with a fast shutdown (`pg_ctl stop -m fast -w`).
    /// Does nothing if it is not running.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if !self.pid_file().exists() {
            return Ok(());
        }
        let cmd = self.command(
            &self.bins.pg_ctl,
            [
                "stop".into(),
                "-D".into(),
                self.data_dir.clone().into(),
                "-m".into(),
                "fast".into(),
                "-w".into(),
                "-t".into(),
                PG_CTL_STOP_TIMEOUT_SECS.into(),
            ],
        );
        run(cmd, "pg_ctl stop")
            .await
            .map_err(|err| self.with_log(err))
    }

    /// Starts the server again on the same data directory and port, and
    /// waits until it accepts connections. Does nothing (but wait) if it is
    /// already running.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.pid_file().exists() && self.wait_ready(Duration::ZERO).await.is_ok() {
            return Ok(());
        }
        self.start_server().await.map_err(StartError::into_inner)
    }

    /// Stops the server cleanly ([`LocalCluster::stop`]) and starts it again
    /// ([`LocalCluster::start_again`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start_again().await
    }

    /// The last `lines` lines of the server log (empty if there is none).
    pub fn log_tail(&self, lines: usize) -> String {
        let Ok(bytes) = std::fs::read(&self.log_file) else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The cluster's data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs `pg_ctl start` on the current port and waits for connections.
    /// On failure the server is left stopped.
    async fn start_server(&mut self) -> Result<(), StartError> {
        let log_offset = std::fs::metadata(&self.log_file).map_or(0, |m| m.len());
        let cmd = self.command(
            &self.bins.pg_ctl,
            [
                "start".into(),
                "-D".into(),
                self.data_dir.clone().into(),
                "-l".into(),
                self.log_file.clone().into(),
                "-w".into(),
                "-t".into(),
                PG_CTL_START_TIMEOUT_SECS.into(),
                "-o".into(),
                format!("-p {}", self.port).into(),
            ],
        );
        let result = match run(cmd, "pg_ctl start").await {
            Ok(()) => self.wait_ready(READY_TIMEOUT).await,
            Err(err) => Err(err),
        };
        let Err(err) = result else {
            return Ok(());
        };
        // Leave nothing half-started behind (e.g. after a pg_ctl timeout).
        self.stop_immediately();
        let new_log = self.log_since(log_offset);
        let err = self.with_log(err.context(format!("starting PostgreSQL on port {}", self.port)));
        if new_log.contains("Address already in use") || new_log.contains("could not bind") {
            Err(StartError::PortInUse(err))
        } else {
            Err(StartError::Other(err))
        }
    }

    /// Retries connecting to the `postgres` database until it works or
    /// `timeout` has passed (at least one attempt is made).
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match self.connect("postgres").await {
                Ok(client) => match client.simple_query("SELECT 1").await {
                    Ok(_) => return Ok(()),
                    Err(err) => anyhow::Error::from(err),
                },
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                return Err(err.context(format!(
                    "PostgreSQL did not accept connections within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `pg_ctl stop -m immediate`, synchronously, ignoring failures. Used by
    /// [`Drop`] and to clean up after a failed start.
    fn stop_immediately(&self) {
        if !self.pid_file().exists() {
            return;
        }
        let (program, args) = self.argv(
            &self.bins.pg_ctl,
            [
                "stop".into(),
                "-D".into(),
                self.data_dir.clone().into(),
                "-m".into(),
                "immediate".into(),
                "-w".into(),
                "-t".into(),
                "30".into(),
            ],
        );
        let status = std::process::Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!(
                dir = %self.dir.path().display(),
                ?status,
                "could not stop local PostgreSQL cluster"
            );
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.data_dir.join("postmaster.pid")
    }

    /// Test certificates, `ssl = on`, the password method and pg_hba.conf
    /// for `security`, written before the first start.
    async fn secure(&mut self, security: &Security) -> anyhow::Result<()> {
        let pki_dir = self.dir.path().join("pki");
        std::fs::create_dir(&pki_dir).context("creating the pki directory")?;
        let pki = TestPki::generate(&pki_dir)?;
        let encryption = match security.auth {
            AuthMethod::Md5 => "md5",
            _ => "scram-sha-256",
        };
        let path = |p: &Path| p.to_str().map(str::to_owned).context("non-UTF-8 path");
        let settings = render_settings(&[
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), path(&pki.server_cert)?),
            ("ssl_key_file".into(), path(&pki.server_key)?),
            ("ssl_ca_file".into(), path(&pki.ca_cert)?),
            ("password_encryption".into(), encryption.into()),
        ])?;
        // Only the extra lines: the base settings are in the file already.
        let extra: String = settings
            .lines()
            .skip(BASE_SETTINGS.len())
            .map(|l| format!("{l}\n"))
            .collect();
        self.append_config(&extra)?;
        let hba = self.data_dir.join("pg_hba.conf");
        std::fs::write(&hba, security::hba(security))
            .with_context(|| format!("writing {}", hba.display()))?;
        if matches!(self.run_as, RunAs::Postgres { .. }) {
            let args = vec![
                "-R".into(),
                "postgres:postgres".into(),
                pki_dir.clone().into_os_string(),
                hba.into_os_string(),
            ];
            let (program, args) = without_core_dumps("chown", args);
            let mut chown = tokio::process::Command::new(program);
            chown.args(args).current_dir(self.dir.path());
            run(chown, "chown the cluster's certificates").await?;
        }
        self.pki = Some(pki);
        Ok(())
    }

    /// Appends the rendered settings to `postgresql.conf`.
    fn append_config(&self, config: &str) -> anyhow::Result<()> {
        let path = self.data_dir.join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let sock_dir = self.sock_dir.to_str().context("non-UTF-8 socket path")?;
        write!(
            file,
            "\n# Added by ferry's local cluster\n\
             unix_socket_directories = {}\n{config}",
            quote_conf(sock_dir)
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Server log written after byte `offset`.
    fn log_since(&self, offset: u64) -> String {
        let bytes = std::fs::read(&self.log_file).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Appends the tail of the server log to `err` (flattening its chain so
    /// that the log comes last however the error is printed).
    fn with_log(&self, err: anyhow::Error) -> anyhow::Error {
        let tail = self.log_tail(ERROR_LOG_LINES);
        if tail.is_empty() {
            return err;
        }
        anyhow!(
            "{err:#}\n\nserver log {} (last {ERROR_LOG_LINES} lines):\n{tail}",
            self.log_file.display()
        )
    }

    /// The program and arguments to run `program args` as the user that
    /// owns the cluster.
    /// The program runs with no core-file limit (see [`without_core_dumps`]):
    /// the wrapper sits inside `runuser`, right above the server tool, so
    /// that no PAM session in between can raise the limit again.
    fn argv(
        &self,
        program: &Path,
        args: impl IntoIterator<Item = OsString>,
    ) -> (PathBuf, Vec<OsString>) {
        let (program, args) = without_core_dumps(program, args);
        match self.run_as {
            RunAs::CurrentUser => (program, args),
            RunAs::Postgres { runuser } => {
                let mut all: Vec<OsString> =
                    vec!["-u".into(), "postgres".into(), "--".into(), program.into()];
                all.extend(args);
                (runuser.clone(), all)
            }
        }
    }

    /// An async command for `program args`, run as the cluster's owner from
    /// the cluster directory (which that user can always enter).
    fn command(
        &self,
        program: &Path,
        args: impl IntoIterator<Item = OsString>,
    ) -> tokio::process::Command {
        let (program, args) = self.argv(program, args);
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).current_dir(self.dir.path());
        cmd
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_immediately();
        // `self.dir` (the TempDir) is dropped next and removes the files.
    }
}

/// Why [`LocalCluster::start_server`] failed.
enum StartError {
    /// The server could not bind its port; another one may work.
    PortInUse(anyhow::Error),
    Other(anyhow::Error),
}

impl StartError {
    fn into_inner(self) -> anyhow::Error {
        match self {
            StartError::PortInUse(err) | StartError::Other(err) => err,
        }
    }
}

/// Absolute paths of the server binaries.
#[derive(Debug)]
struct Binaries {
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

/// Who runs `initdb` and `pg_ctl`.
#[derive(Debug)]
enum RunAs {
    /// We are not root: run them directly.
    CurrentUser,
    /// We are root: run them as `postgres` through `runuser`.
    Postgres { runuser: PathBuf },
}

fn binaries() -> Result<&'static Binaries, String> {
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BINARIES
        .get_or_init(find_binaries)
        .as_ref()
        .map_err(Clone::clone)
}

fn run_as() -> Result<&'static RunAs, String> {
    static RUN_AS: OnceLock<Result<RunAs, String>> = OnceLock::new();
    RUN_AS
        .get_or_init(find_run_as)
        .as_ref()
        .map_err(Clone::clone)
}

/// Looks for a directory holding `initdb` and `pg_ctl` (with `postgres`
/// next to the real `pg_ctl`): first on `PATH`, then in
/// `/usr/lib/postgresql/<version>/bin`, highest version first.
fn find_binaries() -> Result<Binaries, String> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by(|a, b| b.0.cmp(&a.0));

    for dir in path_dirs
        .into_iter()
        .chain(versioned.into_iter().map(|(_, dir)| dir))
    {
        let (Some(initdb), Some(pg_ctl)) = (
            executable(&dir.join("initdb")),
            executable(&dir.join("pg_ctl")),
        ) else {
            continue;
        };
        // pg_ctl runs the `postgres` next to its resolved location.
        if pg_ctl
            .parent()
            .and_then(|d| executable(&d.join("postgres")))
            .is_some()
        {
            return Ok(Binaries { initdb, pg_ctl });
        }
    }
    Err(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH \
         or in /usr/lib/postgresql/*/bin. Install them with \
         `apt-get install postgresql-15`, or, if they are installed, add their \
         directory (e.g. /usr/lib/postgresql/15/bin) to PATH."
            .to_string(),
    )
}

/// The canonical path of `path` if it is an executable file.
fn executable(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let real = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&real).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(real)
}

/// Decides how to run the server tools: directly, or (when root) as the
/// `postgres` user through `runuser`.
fn find_run_as() -> Result<RunAs, String> {
    if !is_root() {
        return Ok(RunAs::CurrentUser);
    }
    let postgres_user = helper_command("id", &["-u", "postgres"], &temp_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !postgres_user {
        return Err(
            "running as root, and PostgreSQL refuses to run as root, but there is \
                    no `postgres` OS user to run it as. Install the server with \
                    `apt-get install postgresql-15` (which creates the user), or run as \
                    a non-root user."
                .to_string(),
        );
    }
    let runuser = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("runuser"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .find_map(|p| executable(&p));
    match runuser {
        Some(runuser) => Ok(RunAs::Postgres { runuser }),
        None => Err(
            "running as root, and PostgreSQL refuses to run as root, but \
                     `runuser` (util-linux) was not found to run it as `postgres`. \
                     Install util-linux, or run as a non-root user."
                .to_string(),
        ),
    }
}

/// Whether the effective user is root, from `id -u` (falling back to
/// `$USER` if `id` cannot be run).
fn is_root() -> bool {
    match helper_command("id", &["-u"], &temp_root())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim() == "0",
        _ => std::env::var("USER").is_ok_and(|u| u == "root"),
    }
}

/// Where the temporary directories go: `/tmp`, which the `postgres` user
/// can traverse and which keeps the socket path short (`$TMPDIR` may be
/// neither).
fn temp_root() -> PathBuf {
    let tmp = Path::new("/tmp");
    if tmp.is_dir() {
        tmp.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .context("binding 127.0.0.1:0 to pick a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Renders the built-in settings followed by `extra` as `postgresql.conf`
/// lines, rejecting names or values that could break the file.
fn render_settings(extra: &[(String, String)]) -> anyhow::Result<String> {
    let mut out = String::new();
    let base = BASE_SETTINGS.iter().map(|&(k, v)| (k, v));
    let extra = extra.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    for (name, value) in base.chain(extra) {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            bail!("invalid PostgreSQL setting name {name:?}");
        }
        if value.contains(['\n', '\r', '\0']) {
            bail!("invalid value for PostgreSQL setting {name}: {value:?}");
        }
        out.push_str(&format!("{name} = {}\n", quote_conf(value)));
    }
    Ok(out)
}

/// Quotes a `postgresql.conf` value.
fn quote_conf(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// `program args` through `sh`, with the core-file size limit set to 0
/// first, so that neither the tool nor anything it starts (`pg_ctl` starts
/// `postgres`, which inherits the limit) can leave a core dump behind. The
/// workspace forbids `unsafe`, which rules out `Command::pre_exec` with
/// `setrlimit`; `ulimit -c` in a shell that then `exec`s the program does
/// the same without it.
fn without_core_dumps(
    program: impl Into<OsString>,
    args: impl IntoIterator<Item = OsString>,
) -> (PathBuf, Vec<OsString>) {
    let mut all: Vec<OsString> = vec![
        "-c".into(),
        "ulimit -c 0; exec \"$@\"".into(),
        "sh".into(),
        program.into(),
    ];
    all.extend(args);
    (PathBuf::from("/bin/sh"), all)
}

/// A command for `program args` with no core dumps
/// ([`without_core_dumps`]), run from `dir`: a crash of a helper then
/// leaves nothing in the caller's working directory (the checkout, for the
/// tests).
fn helper_command(program: &str, args: &[&str], dir: &Path) -> std::process::Command {
    let (sh, argv) = without_core_dumps(program, args.iter().map(OsString::from));
    let mut cmd = std::process::Command::new(sh);
    cmd.args(argv).current_dir(dir);
    cmd
}

/// Runs `cmd` to completion with no stdin and captured output, failing with
/// its output if it exits unsuccessfully.
async fn run(mut cmd: tokio::process::Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(anyhow!(
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs a real server: fails (does not skip) when none can be started.
    #[tokio::test]
    async fn start_create_restart() {
        if let Err(msg) = LocalCluster::binaries_available() {
            panic!("cannot run the local cluster test: {msg}");
        }
        let started = Instant::now();
        let mut cluster = LocalCluster::start(ClusterOptions {
            port: None,
            extra_settings: vec![("max_locks_per_transaction".into(), "128".into())],
            security: None,
        })
        .await
        .expect("start a local cluster");
        eprintln!("LocalCluster::start took {:?}", started.elapsed());
        let port = cluster.port();
        assert_eq!(
            cluster.url("ferry_test"),
            format!("postgres://postgres@127.0.0.1:{port}/ferry_test")
        );
        assert!(cluster.data_dir().join("PG_VERSION").exists());

        cluster.create_database("ferry_test").await.unwrap();
        let client = cluster.connect("ferry_test").await.unwrap();
        let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "logical");
        let row = client
            .query_one("SHOW max_locks_per_transaction", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "128");
        drop(client);

        let restarted = Instant::now();
        cluster.restart().await.expect("restart the local cluster");
        eprintln!("LocalCluster::restart took {:?}", restarted.elapsed());
        assert_eq!(cluster.port(), port);
        let client = cluster.connect("ferry_test").await.unwrap();
        let row = client
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "ferry_test");
        assert!(cluster.log_tail(5).lines().count() <= 5);
        drop(client);

        let dir = cluster.dir.path().to_path_buf();
        drop(cluster);
        assert!(!dir.exists(), "the cluster directory is removed on drop");
    }
}
