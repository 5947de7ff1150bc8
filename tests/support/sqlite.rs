//! The SQLite source's fixture: a database file shaped like a local
//! workspace-management application's store (projects, repos, tasks, task
//! attempts, execution processes, executor sessions, images, approvals,
//! queued messages, merges, settings), the application's own writer, and
//! the comparison of every table with its PostgreSQL mirror.
//!
//! The store is what such applications really hold: UUIDs as text and
//! integer keys, a composite key in a `WITHOUT ROWID` table, a table with
//! no declared key (rowid), JSON in TEXT columns, timestamps three ways
//! (ISO text, unix seconds, Julian days), a BOOLEAN, a BLOB, and a few
//! wrongly typed values (text and a fraction in INTEGER columns), which the
//! mirror dead-letters.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::types::Value as Sql;
use rusqlite::Connection;

use super::kafka::{with_kafka_bus, KafkaBroker};
use super::{start_kafka_for_bus, unique_db, NEXT};

/// The target schema of the mirrored tables.
pub const SCHEMA: &str = "app";

/// The application's tables, roots first.
pub const TABLES: [&str; 11] = [
    "projects",
    "images",
    "settings",
    "repos",
    "tasks",
    "task_attempts",
    "task_images",
    "execution_processes",
    "merges",
    "queued_messages",
    "approvals",
];

const SCHEMA_SQL: &str = "
PRAGMA foreign_keys = ON;
CREATE TABLE projects (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, git_repo_path TEXT NOT NULL,
    setup_script TEXT, archived BOOLEAN NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (datetime('now', 'subsec')));
CREATE TABLE repos (
    id TEXT PRIMARY KEY, project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    path TEXT NOT NULL, created_unix INTEGER NOT NULL);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    title TEXT NOT NULL, description TEXT, status TEXT NOT NULL DEFAULT 'todo',
    created_at TEXT NOT NULL, updated_julian REAL NOT NULL);
CREATE TABLE task_attempts (
    id TEXT PRIMARY KEY, task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    branch TEXT NOT NULL, executor TEXT, created_at TEXT NOT NULL);
CREATE TABLE execution_processes (
    id TEXT PRIMARY KEY, task_attempt_id TEXT NOT NULL REFERENCES task_attempts(id) ON DELETE CASCADE,
    run_reason TEXT NOT NULL, status TEXT NOT NULL, exit_code INTEGER,
    started_unix INTEGER NOT NULL, completed_julian REAL, meta TEXT);
CREATE TABLE images (
    id TEXT PRIMARY KEY, file_path TEXT NOT NULL, mime_type TEXT, size_bytes INTEGER,
    hash BLOB, created_at TEXT NOT NULL);
CREATE TABLE task_images (
    id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    image_id TEXT NOT NULL REFERENCES images(id), UNIQUE (task_id, image_id));
CREATE TABLE approvals (
    id INTEGER PRIMARY KEY, execution_process_id TEXT NOT NULL REFERENCES execution_processes(id) ON DELETE CASCADE,
    tool_name TEXT NOT NULL, status TEXT NOT NULL, payload TEXT, requested_unix INTEGER, responded_unix INTEGER);
CREATE TABLE queued_messages (
    id INTEGER PRIMARY KEY, task_attempt_id TEXT NOT NULL REFERENCES task_attempts(id) ON DELETE CASCADE,
    body TEXT NOT NULL, position INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE merges (
    task_attempt_id TEXT NOT NULL REFERENCES task_attempts(id) ON DELETE CASCADE, merge_type TEXT NOT NULL,
    pr_number INTEGER, pr_url TEXT, PRIMARY KEY (task_attempt_id, merge_type)) WITHOUT ROWID;
CREATE TABLE settings (key TEXT NOT NULL, value TEXT);
";

/// A target PostgreSQL cluster, a SQLite file, and on the Kafka bus a
/// broker.
pub struct SqliteToPg {
    pub target: LocalCluster,
    pub pg_db: String,
    pub dir: tempfile::TempDir,
    pub kafka: Option<KafkaBroker>,
    pub path: PathBuf,
}

impl SqliteToPg {
    pub async fn start(prefix: &str) -> SqliteToPg {
        let (target, kafka) = tokio::join!(
            LocalCluster::start(ClusterOptions::default()),
            start_kafka_for_bus()
        );
        let target = target.expect("start target PostgreSQL");
        let pg_db = unique_db(prefix);
        target
            .create_database(&pg_db)
            .await
            .expect("create target db");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        SqliteToPg {
            target,
            pg_db,
            dir,
            kafka,
            path,
        }
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        self.target
            .connect(&self.pg_db)
            .await
            .expect("connect target")
    }

    /// A config mirroring every table of the file into schema `app`;
    /// `source_extra` is appended to `[source]`. On the Kafka bus the
    /// config gets `bus = "kafka"` and a `[kafka]` section of its own.
    pub fn config(&self, source_extra: &str) -> PathBuf {
        let text = format!(
            r#"
[pipeline]
name = "lite"
batch_linger_ms = 10
max_retry_delay_secs = 2

[source]
kind = "sqlite"
path = {path:?}
poll_interval_ms = 50
{source_extra}

[sink]
kind = "postgres"
url = "{dst}"
schema = "{SCHEMA}"
"#,
            path = self.path.display().to_string(),
            dst = self.target.url(&self.pg_db),
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let text = match &self.kafka {
            Some(k) => {
                let prefix = format!("{}_s{n}", self.pg_db);
                with_kafka_bus(&text, k.port, &prefix, 1)
            }
            None => text,
        };
        let path = self.dir.path().join(format!("ferry-sqlite-{n}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// The application's connection: foreign keys on, a busy timeout.
    pub fn app(&self) -> Connection {
        let c = Connection::open(&self.path).expect("open app db");
        c.busy_timeout(Duration::from_secs(5))
            .expect("busy_timeout");
        c.execute_batch("PRAGMA foreign_keys = ON")
            .expect("foreign keys");
        c
    }
}

fn uuid(rng: &mut StdRng) -> String {
    let v: u128 = rng.random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The application's store and the ids it knows, for its writes.
pub struct App {
    rng: StdRng,
    projects: Vec<String>,
    tasks: Vec<String>,
    attempts: Vec<String>,
    processes: Vec<String>,
    images: Vec<String>,
    next_int: i64,
}

impl App {
    /// Creates the schema and `n` tasks' worth of rows (with their
    /// projects, attempts, processes, …), including the wrongly typed
    /// values.
    pub fn create(conn: &mut Connection, seed: u64, n: usize) -> App {
        conn.execute_batch(SCHEMA_SQL).expect("schema");
        let mut app = App {
            rng: StdRng::seed_from_u64(seed),
            projects: Vec::new(),
            tasks: Vec::new(),
            attempts: Vec::new(),
            processes: Vec::new(),
            images: Vec::new(),
            next_int: 1,
        };
        let tx = conn.transaction().expect("tx");
        for i in 0..4 {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)",
                (format!("setting_{i}"), format!("{{\"v\":{i}}}")),
            )
            .expect("settings");
        }
        for _ in 0..n {
            app.write_one(&tx, Some(0));
        }
        // Wrongly typed values, as a real store accumulates them: text and
        // a fraction in INTEGER columns (kept as they are by SQLite).
        let p = app.processes[0].clone();
        tx.execute(
            "UPDATE execution_processes SET exit_code = 'killed' WHERE id = ?1",
            [&p],
        )
        .expect("bad exit code");
        tx.execute(
            "INSERT INTO approvals (id, execution_process_id, tool_name, status, requested_unix) \
             VALUES (900000, ?1, 'bash', 'pending', 1.5)",
            [&p],
        )
        .expect("bad approval");
        tx.commit().expect("commit seed");
        app
    }

    /// One of the application's writes. `kind` picks it (`None`: at
    /// random); inserts create the parents they need.
    pub fn write_one(&mut self, c: &Connection, kind: Option<u32>) {
        let rng = &mut self.rng;
        let kind = kind.unwrap_or_else(|| rng.random_range(0..10));
        let now_unix = 1_700_000_000 + rng.random_range(0..10_000_000i64);
        let julian = 2_460_000.0 + f64::from(rng.random_range(0..100_000u32)) / 97.0;
        match kind {
            // A task with its attempt, process, approval, message, merge.
            0..=2 => {
                if self.projects.is_empty() || rng.random_range(0..8) == 0 {
                    let id = uuid(rng);
                    c.execute(
                        "INSERT INTO projects (id, name, git_repo_path, setup_script, archived) VALUES (?1, ?2, ?3, ?4, ?5)",
                        (&id, format!("project {}", self.projects.len()), format!("/src/p{}", self.projects.len()), Option::<String>::None, rng.random_range(0..2)),
                    ).expect("project");
                    c.execute(
                        "INSERT INTO repos (id, project_id, path, created_unix) VALUES (?1, ?2, ?3, ?4)",
                        (uuid(rng), &id, "/src/repo", now_unix),
                    )
                    .expect("repo");
                    self.projects.push(id);
                }
                let project = self.projects[rng.random_range(0..self.projects.len())].clone();
                let task = uuid(rng);
                c.execute(
                    "INSERT INTO tasks (id, project_id, title, description, created_at, updated_julian) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    (&task, &project, format!("task {}", self.tasks.len()), "Fix the ‘quoted’ bug, 'again'", "2025-03-01T10:00:00.123Z", julian),
                ).expect("task");
                let attempt = uuid(rng);
                c.execute(
                    "INSERT INTO task_attempts (id, task_id, branch, executor, created_at) VALUES (?1, ?2, ?3, ?4, datetime('now'))",
                    (&attempt, &task, format!("ferry/{}", &attempt[..8]), "claude"),
                ).expect("attempt");
                let process = uuid(rng);
                c.execute(
                    "INSERT INTO execution_processes (id, task_attempt_id, run_reason, status, exit_code, started_unix, completed_julian, meta) VALUES (?1, ?2, 'codingagent', 'completed', 0, ?3, ?4, ?5)",
                    (&process, &attempt, now_unix, julian, r#"{"tokens": 1234, "tools": ["bash", "edit"], "ok": true}"#),
                ).expect("process");
                self.next_int += 1;
                c.execute(
                    "INSERT INTO approvals (id, execution_process_id, tool_name, status, payload, requested_unix) VALUES (?1, ?2, 'edit', 'pending', '{\"file\":\"a.rs\"}', ?3)",
                    (self.next_int, &process, now_unix),
                ).expect("approval");
                c.execute(
                    "INSERT INTO queued_messages (id, task_attempt_id, body, position, created_at) VALUES (?1, ?2, 'continue', 1, datetime('now'))",
                    (self.next_int, &attempt),
                ).expect("message");
                c.execute(
                    "INSERT INTO merges (task_attempt_id, merge_type, pr_number, pr_url) VALUES (?1, 'pr', ?2, NULL)",
                    (&attempt, self.next_int),
                ).expect("merge");
                if rng.random_range(0..3) == 0 {
                    let image = uuid(rng);
                    let hash: Vec<u8> = (0..16).map(|_| rng.random()).collect();
                    c.execute(
                        "INSERT INTO images (id, file_path, mime_type, size_bytes, hash, created_at) VALUES (?1, ?2, 'image/png', ?3, ?4, datetime('now'))",
                        (&image, format!("/img/{image}.png"), rng.random_range(1..1_000_000i64), hash),
                    ).expect("image");
                    c.execute(
                        "INSERT INTO task_images (task_id, image_id) VALUES (?1, ?2)",
                        (&task, &image),
                    )
                    .expect("task image");
                    self.images.push(image);
                }
                self.tasks.push(task);
                self.attempts.push(attempt);
                self.processes.push(process);
            }
            // Status changes and edits.
            3..=5 if !self.tasks.is_empty() => {
                let task = &self.tasks[rng.random_range(0..self.tasks.len())];
                c.execute(
                    "UPDATE tasks SET status = ?2, updated_julian = ?3, description = description || '.' WHERE id = ?1",
                    (task, ["todo", "inprogress", "inreview", "done"][rng.random_range(0..4)], julian),
                ).expect("task update");
                c.execute(
                    "UPDATE approvals SET status = 'approved', responded_unix = ?1 WHERE id = (SELECT max(id) FROM approvals WHERE id < 900000)",
                    [now_unix],
                )
                .expect("approval update");
            }
            // The queue moves: a message consumed, one re-keyed.
            6 | 7 => {
                c.execute(
                    "DELETE FROM queued_messages WHERE id = (SELECT min(id) FROM queued_messages)",
                    [],
                )
                .expect("consume message");
                c.execute(
                    "UPDATE queued_messages SET id = id + 1000000 WHERE id = (SELECT max(id) FROM queued_messages WHERE id < 1000000)",
                    [],
                )
                .expect("re-key message");
            }
            // Settings change, a merge is updated in place.
            8 => {
                c.execute(
                    "UPDATE settings SET value = ?1 WHERE rowid = 1",
                    [format!("{{\"v\":{now_unix}}}")],
                )
                .expect("setting");
                c.execute(
                    "UPDATE merges SET pr_url = 'https://example.invalid/pr/' || pr_number \
                     WHERE task_attempt_id = (SELECT task_attempt_id FROM merges WHERE pr_url IS NULL LIMIT 1)",
                    [],
                )
                .expect("merge");
            }
            // A task deleted with everything under it (ON DELETE CASCADE).
            // (Never the first task: its process holds the wrongly typed
            // values the tests look for.)
            _ if self.tasks.len() > 5 => {
                let i = rng.random_range(1..self.tasks.len());
                let task = self.tasks.swap_remove(i);
                c.execute("DELETE FROM tasks WHERE id = ?1", [&task])
                    .expect("delete task");
            }
            _ => {}
        }
    }
}

/// The application writing on its own thread, one transaction per write,
/// until stopped; it returns the longest transaction (including its wait
/// for the write lock) and how many it committed.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(Duration, u64)>,
}

impl Writer {
    pub fn start(conn: Connection, app: App) -> Writer {
        Self::start_paced(conn, app, Duration::ZERO)
    }

    /// [`Writer::start`] with `pause` between transactions (a target that
    /// applies slowly, such as the Convex test server, would otherwise
    /// never catch up with a writer at full speed).
    pub fn start_paced(mut conn: Connection, mut app: App, pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut max = Duration::ZERO;
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .expect("begin: the application's write was refused (busy)");
                app.write_one(&tx, None);
                tx.commit().expect("commit");
                max = max.max(t.elapsed());
                n += 1;
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            (max, n)
        });
        Writer { stop, handle }
    }

    pub fn stop(self) -> (Duration, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread")
    }
}

/// A value as the mirror's PostgreSQL `::text` spells it, or `None` where
/// the mirror refuses it (the sink dead-letters the row).
fn expected_text(v: &Sql, pg_type: &str) -> Result<Option<String>, ()> {
    Ok(match (v, pg_type) {
        (Sql::Null, _) => None,
        (Sql::Integer(i), "bigint") => Some(i.to_string()),
        (Sql::Integer(i), "double precision") => Some(format!("{:?}", *i as f64)),
        (Sql::Real(f), "double precision") => Some(format!("{f:?}")),
        (Sql::Integer(0), "boolean") => Some("false".into()),
        (Sql::Integer(1), "boolean") => Some("true".into()),
        (Sql::Text(s), "text") => Some(s.clone()),
        (Sql::Blob(b), "bytea") => Some(format!(
            "\\x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )),
        _ => return Err(()),
    })
}

/// PostgreSQL's text of a value, respelled where the comparison needs it
/// (floats as Rust's shortest round trip).
fn target_text(v: Option<String>, pg_type: &str) -> Option<String> {
    match (v, pg_type) {
        (Some(s), "double precision") => {
            Some(format!("{:?}", s.parse::<f64>().expect("a float8's text")))
        }
        (v, _) => v,
    }
}

/// What the comparison found wrong, and the keys of rows the mirror
/// refuses (per table), which must be in the dead-letter queue instead.
pub struct Comparison {
    pub differences: Vec<String>,
    pub refused: BTreeMap<String, BTreeSet<String>>,
}

/// Compares every table of the file with its mirror: same keys, same
/// values, except the rows the mirror refuses (absent from the target).
pub async fn compare(path: &std::path::Path, pg: &tokio_postgres::Client) -> Comparison {
    let path = path.to_path_buf();
    // (table, pg types, key indexes, rows as key → texts)
    type Side = Vec<(
        String,
        Vec<String>,
        Vec<String>,
        BTreeMap<String, Vec<Option<String>>>,
    )>;
    let (source, refused): (Side, BTreeMap<String, BTreeSet<String>>) =
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open(&path).expect("open");
            let mut out = Vec::new();
            let mut refused = BTreeMap::new();
            for name in TABLES {
                let t = ferry_sqlite_source::catalog::describe(&conn, name)
                    .expect("describe")
                    .expect("table exists");
                let types: Vec<String> = t
                    .schema
                    .columns
                    .iter()
                    .map(|c| c.type_sql.clone())
                    .collect();
                let names: Vec<String> = t.schema.columns.iter().map(|c| c.name.clone()).collect();
                let mut stmt = conn
                    .prepare(&format!("SELECT {} FROM \"{name}\"", t.select_list))
                    .expect("select");
                let mut rows = stmt.query([]).expect("query");
                let mut map = BTreeMap::new();
                while let Some(r) = rows.next().expect("row") {
                    let vals: Vec<Sql> =
                        (0..types.len()).map(|i| r.get(i).expect("value")).collect();
                    let key = t
                        .key_indexes()
                        .iter()
                        .map(|&i| format!("{:?}", vals[i]))
                        .collect::<Vec<_>>()
                        .join(",");
                    let texts: Result<Vec<Option<String>>, ()> = vals
                        .iter()
                        .zip(&types)
                        .map(|(v, ty)| expected_text(v, ty))
                        .collect();
                    match texts {
                        Ok(t) => {
                            map.insert(key, t);
                        }
                        Err(()) => {
                            refused
                                .entry(name.to_string())
                                .or_insert_with(BTreeSet::new)
                                .insert(key);
                        }
                    }
                }
                out.push((name.to_string(), types, names, map));
            }
            (out, refused)
        })
        .await
        .expect("read source");
    let mut differences = Vec::new();
    for (name, types, names, rows) in source {
        let cols: Vec<String> = names.iter().map(|n| format!("\"{n}\"::text")).collect();
        let target = match pg
            .query(
                &format!("SELECT {} FROM {SCHEMA}.\"{name}\"", cols.join(", ")),
                &[],
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                differences.push(format!("{name}: {e}"));
                continue;
            }
        };
        let conn_rows: BTreeMap<Vec<Option<String>>, ()> = target
            .iter()
            .map(|r| {
                (
                    (0..types.len())
                        .map(|i| target_text(r.get(i), &types[i]))
                        .collect(),
                    (),
                )
            })
            .collect();
        let want: BTreeMap<Vec<Option<String>>, ()> =
            rows.values().map(|v| (v.clone(), ())).collect();
        let skipped = refused.get(&name).map_or(0, BTreeSet::len);
        let extra: Vec<_> = conn_rows
            .keys()
            .filter(|r| !want.contains_key(*r))
            .collect();
        let missing: Vec<_> = want
            .keys()
            .filter(|r| !conn_rows.contains_key(*r))
            .collect();
        // A refused row that was never good is absent from the target; any
        // row of the target not in the source is a difference.
        if !missing.is_empty() || !extra.is_empty() {
            differences.push(format!(
                "{name}: source {} rows ({skipped} refused), target {}; missing {:?}; extra {:?}",
                rows.len(),
                target.len(),
                missing.iter().take(2).collect::<Vec<_>>(),
                extra.iter().take(2).collect::<Vec<_>>()
            ));
        }
    }
    Comparison {
        differences,
        refused,
    }
}

/// Compares every table of the file with its Convex mirror (the test
/// server's documents, `_id` and `_creationTime` aside): the same rows
/// with the same values of the same kinds — an integer stays an int64
/// (`{"$integer"}`), a real a float64, text a string, a blob bytes, even
/// where the column's declared type says otherwise (Convex tables here are
/// schemaless, so nothing is refused). Returns the differences.
pub async fn compare_convex(
    path: &std::path::Path,
    server: &super::convex::ConvexServer,
) -> Vec<String> {
    let path = path.to_path_buf();
    let source: Vec<(String, Vec<String>)> = tokio::task::spawn_blocking(move || {
        let conn = Connection::open(&path).expect("open");
        TABLES
            .iter()
            .map(|name| {
                let t = ferry_sqlite_source::catalog::describe(&conn, name)
                    .expect("describe")
                    .expect("table exists");
                let names: Vec<String> = t.schema.columns.iter().map(|c| c.name.clone()).collect();
                let mut stmt = conn
                    .prepare(&format!("SELECT {} FROM \"{name}\"", t.select_list))
                    .expect("select");
                let mut rows = stmt.query([]).expect("query");
                let mut docs = Vec::new();
                while let Some(r) = rows.next().expect("row") {
                    let doc: BTreeMap<String, String> = names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (n.clone(), stored_kind(&r.get::<_, Sql>(i).expect("value"))))
                        .collect();
                    docs.push(format!("{doc:?}"));
                }
                docs.sort();
                (name.to_string(), docs)
            })
            .collect()
    })
    .await
    .expect("read source");
    let mut differences = Vec::new();
    for (name, want) in source {
        let (rows, _) = server.dump(&name).await;
        let mut got: Vec<String> = rows
            .iter()
            .map(|(_, d)| {
                let doc: BTreeMap<String, String> = d
                    .as_object()
                    .expect("a document")
                    .iter()
                    .filter(|(k, _)| !k.starts_with('_'))
                    .map(|(k, v)| (k.clone(), convex_kind(v)))
                    .collect();
                format!("{doc:?}")
            })
            .collect();
        got.sort();
        if got != want {
            let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).take(2).collect();
            let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).take(2).collect();
            differences.push(format!(
                "{name}: source {} rows, Convex {}; missing {missing:?}; extra {extra:?}",
                want.len(),
                got.len()
            ));
        }
    }
    differences
}

/// A SQLite value as its storage class and exact value.
fn stored_kind(v: &Sql) -> String {
    match v {
        Sql::Null => "null".into(),
        Sql::Integer(i) => format!("int {i}"),
        Sql::Real(f) => format!("real {f:?}"),
        Sql::Text(s) => format!("text {s:?}"),
        Sql::Blob(b) => format!("bytes {b:?}"),
    }
}

/// A Convex-encoded JSON value in the form of [`stored_kind`].
fn convex_kind(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match v {
        J::Null => "null".into(),
        J::Object(o) if o.contains_key("$integer") => format!("int {}", super::convex::int64(v)),
        J::Object(o) if o.contains_key("$bytes") => format!(
            "bytes {:?}",
            super::convex::base64(o["$bytes"].as_str().expect("base64"))
        ),
        J::Number(n) => format!("real {:?}", n.as_f64().expect("a float64")),
        J::String(s) => format!("text {s:?}"),
        other => format!("unexpected {other}"),
    }
}
