//! A real MongoDB-wire-protocol server for the MongoDB source's end-to-end
//! tests, and the exact comparison of a MongoDB collection with its mirror
//! in PostgreSQL.
//!
//! No `mongod` can be installed on the project's machines; the server is
//! SecantusDB (`secantusd-py`, from PyPI), which speaks the wire protocol,
//! reports itself as a replica-set primary and serves change streams.
//! tests/run.sh installs it into `target/secantus-venv`; `FERRY_SECANTUSD`
//! may name another `secantusd-py`. A test that cannot start it fails with
//! a message that says so: it never returns early and passes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_mongodb_source::bson_value::document_to_row;
use ferry_pipeline::value::Value;
use ferry_postgres_sink::literal::to_pg_text;
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

use super::kafka::{with_kafka_bus, KafkaBroker};
use super::{start_kafka_for_bus, unique_db};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct MongoOptions {
    /// `--oplog-max-entries`: the oplog keeps at most this many entries.
    /// SecantusDB prunes every 1000 oplog writes, so a resume point falls
    /// out of the oplog only after 1000 more writes (not after `N`).
    pub oplog_max_entries: Option<u64>,
    /// `--oplog-retention-seconds` (pruned on the same 1000-write cadence).
    pub oplog_retention_seconds: Option<u64>,
    /// TLS only (`--tls-cert-file`, `--tls-key-file`), and with a CA, client
    /// certificates required (`--tls-ca-file`, `--tls-require-client-cert`).
    pub tls: Option<MongoTls>,
}

/// A TLS-only server's files.
#[derive(Debug, Clone)]
pub struct MongoTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA of the server's certificate; client certificates must be
    /// signed by it.
    pub ca: PathBuf,
    /// The client certificate and key in one PEM, for [`MongoServer::url`].
    pub client_pem: PathBuf,
}

/// A `secantusd-py` child on a free port of 127.0.0.1, with its storage in
/// a temp dir (so that [`MongoServer::restart`] keeps the data). Killed on
/// drop.
pub struct MongoServer {
    child: Option<Child>,
    port: u16,
    opts: MongoOptions,
    /// Holds `data/` (the WiredTiger home) and `server.log`.
    dir: tempfile::TempDir,
}

/// The `secantusd-py` to run: `FERRY_SECANTUSD`, or the venv that
/// tests/run.sh creates. Panics (the test fails) when it is missing.
pub fn secantusd_path() -> PathBuf {
    let path = match std::env::var_os("FERRY_SECANTUSD") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/secantus-venv/bin/secantusd-py"),
    };
    assert!(
        path.is_file(),
        "the MongoDB-protocol test server is missing: {} does not exist. Run tests/run.sh \
         (it installs SecantusDB into target/secantus-venv), or set FERRY_SECANTUSD to a \
         secantusd-py.",
        path.display()
    );
    path
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl MongoServer {
    /// Starts a server and waits until it answers `ping`. Panics with the
    /// server's log (and the hint to run tests/run.sh) when it cannot.
    pub async fn start(opts: MongoOptions) -> MongoServer {
        let dir = tempfile::tempdir().expect("temp dir for the MongoDB server");
        let mut server = MongoServer {
            child: None,
            port: 0,
            opts,
            dir,
        };
        // The free port can be taken between our probe and the server's
        // bind: then try another one.
        for attempt in 0..5 {
            server.port = free_port();
            match server.launch().await {
                Ok(()) => return server,
                Err(e) if attempt < 4 && e.contains("Address already in use") => continue,
                Err(e) => panic!(
                    "could not start the MongoDB-protocol test server (SecantusDB): {e}\n\
                     Run tests/run.sh to install it into target/secantus-venv."
                ),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Spawns the server on `self.port` and waits for `ping`; `Err` has the
    /// reason and the log tail.
    async fn launch(&mut self) -> Result<(), String> {
        let bin = secantusd_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("server log: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("server log: {e}"))?;
        // Where this launch's lines start in the (appended) log.
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let mut cmd = Command::new(&bin);
        cmd.arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--storage-path")
            .arg(self.dir.path().join("data"))
            .arg("--log-level")
            .arg("INFO");
        if let Some(n) = self.opts.oplog_max_entries {
            cmd.arg("--oplog-max-entries").arg(n.to_string());
        }
        if let Some(s) = self.opts.oplog_retention_seconds {
            cmd.arg("--oplog-retention-seconds").arg(s.to_string());
        }
        if let Some(tls) = &self.opts.tls {
            cmd.arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-file")
                .arg(&tls.ca)
                .arg("--tls-require-client-cert");
        }
        // No auto-discovered secantusd.toml from the working directory.
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "{} exited with {status} before answering:\n{}",
                    bin.display(),
                    self.log_tail(30)
                ));
            }
            // Our own log saying that *this* process bound the port: a
            // port taken meanwhile by another server would answer a ping
            // too.
            if self.listening_since(log_start) && self.ping().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "{} did not answer ping within 30 s:\n{}",
                    bin.display(),
                    self.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the log, from byte `start` on, has the server's
    /// "listening on 127.0.0.1:<port>" line.
    fn listening_since(&self, start: usize) -> bool {
        let text = std::fs::read(self.log_path()).unwrap_or_default();
        let line = format!("listening on 127.0.0.1:{}", self.port);
        text.get(start..)
            .is_some_and(|new| String::from_utf8_lossy(new).contains(&line))
    }

    async fn ping(&self) -> bool {
        let url = format!(
            "{}&serverSelectionTimeoutMS=1000&connectTimeoutMS=1000",
            self.url()
        );
        let Ok(client) = mongodb::Client::with_uri_str(&url).await else {
            return false;
        };
        client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .is_ok()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL Ferry and the tests connect with (with the TLS options of
    /// a TLS-only server).
    pub fn url(&self) -> String {
        let mut url = format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port);
        if let Some(tls) = &self.opts.tls {
            let _ = write!(
                url,
                "&tls=true&tlsCAFile={}&tlsCertificateKeyFile={}",
                tls.ca.display(),
                tls.client_pem.display()
            );
        }
        url
    }

    /// A driver client for the test's own reads and writes.
    pub async fn client(&self) -> mongodb::Client {
        mongodb::Client::with_uri_str(self.url())
            .await
            .expect("MongoDB client")
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server: SIGTERM (a clean WiredTiger shutdown), SIGKILL
    /// after 15 s.
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// Stops the server and starts it again on the same port and storage:
    /// the data and the oplog survive, connections do not.
    pub async fn restart(&mut self) {
        tokio::task::block_in_place(|| self.stop());
        if let Err(e) = self.launch().await {
            panic!("could not restart the MongoDB-protocol test server: {e}");
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A MongoDB server, a PostgreSQL target cluster with a fresh database, a
/// temp dir for configs and logs, and on the Kafka bus
/// (`FERRY_TEST_BUS=kafka`) a broker: what every MongoDB → PostgreSQL test
/// starts.
pub struct MongoToPg {
    pub mongo: MongoServer,
    pub target: LocalCluster,
    /// The target database.
    pub pg_db: String,
    /// The MongoDB database Ferry mirrors.
    pub mongo_db: String,
    pub dir: tempfile::TempDir,
    /// `Some` on the Kafka bus: every config of this fixture uses it.
    pub kafka: Option<KafkaBroker>,
}

impl MongoToPg {
    /// Starts both servers (concurrently). The MongoDB database is `app`;
    /// without `schema` in the sink config the target schema is `app` too.
    pub async fn start(prefix: &str, opts: MongoOptions) -> MongoToPg {
        let (mongo, target, kafka) = tokio::join!(
            MongoServer::start(opts),
            LocalCluster::start(ClusterOptions::default()),
            start_kafka_for_bus()
        );
        let target = target.expect("start target PostgreSQL");
        let pg_db = unique_db(prefix);
        target
            .create_database(&pg_db)
            .await
            .expect("create target db");
        MongoToPg {
            mongo,
            target,
            pg_db,
            mongo_db: "app".to_owned(),
            dir: tempfile::tempdir().expect("temp dir"),
            kafka,
        }
    }

    /// The mirrored MongoDB database, through a fresh client.
    pub async fn db(&self) -> mongodb::Database {
        self.mongo.client().await.database(&self.mongo_db)
    }

    /// A client of the target database.
    pub async fn pg(&self) -> tokio_postgres::Client {
        self.target
            .connect(&self.pg_db)
            .await
            .expect("connect target")
    }

    /// Writes a config for a MongoDB source mirroring `collections` (empty:
    /// every collection) of [`Self::mongo_db`] into the target database and
    /// returns its path. `source_extra` and `sink_extra` are appended
    /// verbatim to their sections.
    pub fn config(&self, collections: &[&str], source_extra: &str, sink_extra: &str) -> PathBuf {
        self.config_into(&self.pg_db, collections, source_extra, sink_extra)
    }

    /// [`Self::config`] with another target database of the cluster (its
    /// own checkpoint: a pipeline that starts from scratch). On the Kafka
    /// bus every config gets `bus = "kafka"` and a `[kafka]` section with a
    /// topic prefix of its own.
    pub fn config_into(
        &self,
        pg_db: &str,
        collections: &[&str],
        source_extra: &str,
        sink_extra: &str,
    ) -> PathBuf {
        let text = mongo_config_text(
            &self.mongo.url(),
            &self.mongo_db,
            collections,
            &self.target.url(pg_db),
            source_extra,
            sink_extra,
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let text = match &self.kafka {
            Some(k) => {
                let prefix = format!("{pg_db}_m_{}", super::kafka::pipeline_name(&text));
                with_kafka_bus(&text, k.port, &prefix, 1)
            }
            None => text,
        };
        let path = self.dir.path().join(format!("ferry-mongo-{n}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }
}

/// A Ferry config with a MongoDB source and a PostgreSQL sink.
pub fn mongo_config_text(
    mongo_url: &str,
    database: &str,
    collections: &[&str],
    pg_url: &str,
    source_extra: &str,
    sink_extra: &str,
) -> String {
    let collections: Vec<String> = collections.iter().map(|c| format!("{c:?}")).collect();
    format!(
        r#"
[pipeline]
name = "test"
batch_linger_ms = 10
max_retry_delay_secs = 2

[source]
kind = "mongodb"
url = "{mongo_url}"
database = "{database}"
collections = [{collections}]
{source_extra}

[sink]
kind = "postgres"
url = "{pg_url}"
{sink_extra}
"#,
        collections = collections.join(", "),
    )
}

/// The target `_id` (jsonb) of a document's `_id`, as text: its relaxed
/// Extended JSON (`{"$oid": …}`, `7`, `"u1"`), written independently of the
/// source's code path.
pub fn expected_id(id: &Bson) -> String {
    id.clone().into_relaxed_extjson().to_string()
}

/// The exact jsonb text the target's `document` column must hold for `doc`.
pub fn expected_document(doc: &Document) -> String {
    let row = document_to_row(doc).expect("document the codec accepts");
    to_pg_text(&Value::Document(row)).expect("a document is never NULL")
}

/// A PostgreSQL error with the server's message (`Display` only says
/// "db error").
fn pg_msg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// `"name"` with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Compares one collection with its target table exactly: the same number
/// of rows, and for every document a row with its `_id` whose `document`
/// is equal (jsonb equality: numbers compare numerically and exactly) to
/// the expected jsonb. `Err` describes the first difference.
pub async fn compare_collection(
    db: &mongodb::Database,
    pg: &tokio_postgres::Client,
    schema: &str,
    collection: &str,
) -> Result<(), String> {
    let docs: Vec<Document> = db
        .collection::<Document>(collection)
        .find(doc! {})
        .await
        .map_err(|e| format!("MongoDB find on {collection}: {e}"))?
        .try_collect()
        .await
        .map_err(|e| format!("MongoDB cursor on {collection}: {e}"))?;
    let mut ids = Vec::with_capacity(docs.len());
    let mut texts = Vec::with_capacity(docs.len());
    for d in &docs {
        let id = d
            .get("_id")
            .ok_or_else(|| format!("a document of {collection} has no _id"))?;
        ids.push(expected_id(id));
        texts.push(expected_document(d));
    }
    let table = format!("{}.{}", quote_ident(schema), quote_ident(collection));
    let count: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map_err(|e| format!("count {table}: {}", pg_msg(&e)))?
        .get(0);
    // Every expected row, with whether the target has it and whether its
    // document is equal: all in one round trip.
    let rows = pg
        .query(
            &format!(
                "SELECT e.ord, t._id IS NOT NULL, t.document::text
                   FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS e(id, doc, ord)
                   LEFT JOIN {table} t ON t._id = e.id::jsonb
                  WHERE t._id IS NULL OR t.document IS DISTINCT FROM e.doc::jsonb
                  ORDER BY e.ord LIMIT 3"
            ),
            &[&ids, &texts],
        )
        .await
        .map_err(|e| format!("compare {table}: {}", pg_msg(&e)))?;
    if let Some(row) = rows.first() {
        let ord: i64 = row.get(0);
        let present: bool = row.get(1);
        let actual: Option<String> = row.get(2);
        let i = usize::try_from(ord - 1).expect("ordinal");
        let mut msg = format!(
            "{table}: {} documents in MongoDB, {count} rows in PostgreSQL, {} of the first \
             differing; first: _id {:?} ",
            docs.len(),
            rows.len(),
            ids[i]
        );
        if present {
            let _ = write!(
                msg,
                "differs:\n  expected {}\n  actual   {}",
                clip(&texts[i], 600),
                clip(actual.as_deref().unwrap_or("NULL"), 600)
            );
        } else {
            let _ = write!(msg, "is missing (expected {})", clip(&texts[i], 600));
        }
        return Err(msg);
    }
    if usize::try_from(count).ok() != Some(docs.len()) {
        // Every document has its row, so the target has extra rows.
        let extra = pg
            .query(
                &format!(
                    "SELECT _id::text FROM {table} WHERE NOT (_id = ANY($1::text[]::jsonb[])) ORDER BY _id LIMIT 5"
                ),
                &[&ids],
            )
            .await
            .map_err(|e| format!("extra rows of {table}: {}", pg_msg(&e)))?;
        let extra: Vec<String> = extra.iter().map(|r| r.get(0)).collect();
        return Err(format!(
            "{table}: {} documents in MongoDB, {count} rows in PostgreSQL; rows with no \
             document: {extra:?}",
            docs.len()
        ));
    }
    Ok(())
}

/// Waits until `collection` is mirrored exactly in `schema` (see
/// [`compare_collection`]); panics with the last difference after
/// `timeout`. `ferry`, when given, is checked on every round: a pipeline
/// that died fails the wait at once, with its log.
pub async fn wait_mirrored(
    db: &mongodb::Database,
    pg: &tokio_postgres::Client,
    schema: &str,
    collection: &str,
    timeout: Duration,
) {
    wait_mirrored_while(db, pg, schema, collection, timeout, None).await
}

/// [`wait_mirrored`] that also fails at once, with its log, if `ferry`
/// exits meanwhile.
pub async fn wait_mirrored_while(
    db: &mongodb::Database,
    pg: &tokio_postgres::Client,
    schema: &str,
    collection: &str,
    timeout: Duration,
    mut ferry: Option<&mut super::Ferry>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = compare_collection(db, pg, schema, collection).await;
        let Err(e) = last else { return };
        if let Some(f) = ferry.as_deref_mut() {
            if let Some(status) = f.exited() {
                panic!(
                    "ferry exited ({status}) before {schema}.{collection} was mirrored; last \
                     difference: {e}\nferry log:\n{}",
                    log_tail(&f.log_text(), 60)
                );
            }
        }
        if Instant::now() > deadline {
            let log = ferry
                .as_deref()
                .map(|f| format!("\nferry log:\n{}", log_tail(&f.log_text(), 60)))
                .unwrap_or_default();
            panic!("{schema}.{collection} never matched MongoDB within {timeout:?}: {e}{log}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The last `lines` lines of `text`.
pub fn log_tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
