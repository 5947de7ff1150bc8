//! The `ferry` command line: configuration errors (exit 2), `ferry check`
//! (exit 0 / 1), and `ferry parity` (0 equal, 1 different, 4 not verified:
//! a parity check never passes on an error).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ferry_testkit::cluster::{ClusterOptions, LocalCluster};

use crate::support::mongo::mongo_config_text;
use crate::support::{ferry_cmd, ferry_command, unique_db, ConfigBuilder, Ferry, Pair};

/// Runs `ferry <args>` with `set` added to and `unset` removed from the
/// environment; returns (exit code, stdout+stderr).
fn ferry_env(args: &[&str], set: &[(&str, &str)], unset: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir for ferry");
    let mut cmd = ferry_command(dir.path());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in set {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let out = cmd.output().expect("run ferry");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Runs a blocking `ferry` command without stalling the test's runtime.
fn cmd(args: &[&str]) -> (i32, String) {
    tokio::task::block_in_place(|| ferry_cmd(args))
}

/// A syntactically valid config pointing at `src` / `dst`, with `extra`
/// spliced in per section.
fn config_text(src: &str, dst: &str, pipeline_extra: &str, source_extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "cli"
{pipeline_extra}

[source]
kind = "postgres"
url = "{src}"
tables = ["public.items"]
{source_extra}

[sink]
kind = "postgres"
url = "{dst}"
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn config_errors_exit_2_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let src = format!("postgres://postgres@127.0.0.1:{port}/a");
    let dst = format!("postgres://postgres@127.0.0.1:{port}/b");
    let cases = [
        ("pipeline", config_text(&src, &dst, "batch_sise = 10", "")),
        ("source", config_text(&src, &dst, "", "slot_nmae = \"x\"")),
        (
            "top",
            format!(
                "{}\n[metrix]\nlisten = \"127.0.0.1:1\"\n",
                config_text(&src, &dst, "", "")
            ),
        ),
    ];
    let keys = ["batch_sise", "slot_nmae", "metrix"];
    for ((name, text), key) in cases.iter().zip(keys) {
        let path = write(dir.path(), &format!("{name}.toml"), text);
        let path = path.to_str().unwrap();
        for sub in ["run", "check", "parity"] {
            let (code, out) = ferry_cmd(&[sub, "--config", path]);
            assert_eq!(code, 2, "ferry {sub} with unknown key {key}:\n{out}");
            assert!(out.contains(key), "ferry {sub} does not name {key}:\n{out}");
        }
    }
    // An invalid value names its key too.
    let path = write(
        dir.path(),
        "bad-value.toml",
        &config_text(&src, &dst, "", "snapshot_chunk_pages = 0"),
    );
    let (code, out) = ferry_cmd(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("source.snapshot_chunk_pages"), "{out}");
    // A missing file is a configuration error as well.
    let missing = dir.path().join("nope.toml");
    let (code, out) = ferry_cmd(&["check", "--config", missing.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn missing_environment_variable_exits_2_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let var = "FERRY_TEST_UNSET_PASSWORD";
    let text = config_text(
        &format!("postgres://ferry:${{{var}}}@127.0.0.1:{port}/a"),
        &format!("postgres://postgres@127.0.0.1:{port}/b"),
        "",
        "",
    );
    let path = write(dir.path(), "env.toml", &text);
    let path = path.to_str().unwrap();
    for sub in ["run", "check", "parity"] {
        let (code, out) = ferry_env(&[sub, "--config", path], &[], &[var]);
        assert_eq!(code, 2, "ferry {sub}:\n{out}");
        assert!(out.contains(var), "ferry {sub} does not name {var}:\n{out}");
        assert!(
            out.contains("source.url"),
            "ferry {sub} does not name the key:\n{out}"
        );
    }
}

#[test]
fn secrets_never_reach_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let var = "FERRY_TEST_SECRET_PASSWORD";
    let secret = "s3cr3t-Hunter2-value";
    let src = format!("postgres://ferry:${{{var}}}@127.0.0.1:{port}/a");
    let dst = format!("postgres://ferry:${{{var}}}@127.0.0.1:{port}/b");
    // Unreachable databases: check fails (1), parity is not verified (4).
    let path = write(dir.path(), "ok.toml", &config_text(&src, &dst, "", ""));
    let path = path.to_str().unwrap();
    let (code, out) = ferry_env(&["check", "--config", path], &[(var, secret)], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("[FAIL] source reachable"), "{out}");
    assert!(!out.contains(secret), "secret printed:\n{out}");
    let (code, out) = ferry_env(&["parity", "--config", path], &[(var, secret)], &[]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("NOT VERIFIED"), "{out}");
    assert!(!out.contains(secret), "secret printed:\n{out}");
    // A configuration error elsewhere does not print it either.
    let bad = write(
        dir.path(),
        "bad.toml",
        &config_text(&src, &dst, "", "snapshot_parallelism = 0"),
    );
    let (code, out) = ferry_env(
        &["run", "--config", bad.to_str().unwrap()],
        &[(var, secret)],
        &[],
    );
    assert_eq!(code, 2, "{out}");
    assert!(!out.contains(secret), "secret printed:\n{out}");
}

/// Runs `ferry <args>` with `set` added to the environment, like
/// [`ferry_env`], but kills it after `timeout`: a configuration error is
/// reported at once, never retried. Returns (exit code, or -1 when it had
/// to be killed; stdout+stderr).
fn ferry_env_within(args: &[&str], set: &[(&str, &str)], timeout: Duration) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("out.log");
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut cmd = ferry_command(dir.path());
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in set {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run ferry");
    let deadline = std::time::Instant::now() + timeout;
    let code = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    if code == -1 {
        text.push_str(&format!("\n(still running after {timeout:?}: killed)"));
    }
    (code, text)
}

/// Every subcommand on a MongoDB config whose `source.url` is `url`:
/// exit 2, naming `source.url`, without printing the password in it.
fn assert_mongo_url_rejected(dir: &Path, name: &str, url: &str, var: &str, secret: &str) {
    let dst = format!("postgres://postgres@127.0.0.1:{}/b", closed_port());
    let text = mongo_config_text(url, "app", &["payments"], &dst, "", "");
    let path = write(dir, name, &text);
    let path = path.to_str().unwrap();
    for sub in ["run", "check", "parity"] {
        let (code, out) = ferry_env_within(
            &[sub, "--config", path],
            &[(var, secret)],
            Duration::from_secs(20),
        );
        assert_eq!(code, 2, "ferry {sub} with source.url {url:?}:\n{out}");
        assert!(
            out.contains("source.url"),
            "ferry {sub} does not name source.url for {url:?}:\n{out}"
        );
        assert!(!out.contains(secret), "secret printed:\n{out}");
    }
}

/// A TOML syntax error on a line that holds a password: exit 2 with the
/// line and column, never the line itself; a `${file:…}` secret that cannot
/// be read names the key and the file.
#[test]
fn a_syntax_error_never_prints_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let src = format!("postgres://postgres@127.0.0.1:{port}/a");
    // A stray word after the string: the line is not TOML.
    let dst = format!("postgres://ferry:Hunter2-literal@127.0.0.1:{port}/b\" stray \"");
    let path = write(dir.path(), "syntax.toml", &config_text(&src, &dst, "", ""));
    let (code, out) = ferry_cmd(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("TOML syntax error at line"), "{out}");
    assert!(!out.contains("Hunter2"), "{out}");
    let text = config_text(
        &src,
        "postgres://ferry:${file:/nonexistent/ferry-secret}@h/b",
        "",
        "",
    );
    let path = write(dir.path(), "file-secret.toml", &text);
    let (code, out) = ferry_cmd(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("sink.url: cannot read secret file /nonexistent/ferry-secret"),
        "{out}"
    );
}

/// A MongoDB source whose URL is not a MongoDB URL: exit 2 naming
/// `source.url`.
#[test]
fn mongodb_bad_url_exits_2_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let var = "FERRY_TEST_MONGO_PASSWORD";
    let secret = "m0ng0-Hunter2-value";
    let port = closed_port();
    let urls = [
        format!("postgres://ferry:${{{var}}}@127.0.0.1:{port}/app"),
        format!("mongodb//ferry:${{{var}}}@127.0.0.1:{port}/"),
        String::new(),
    ];
    for (i, url) in urls.iter().enumerate() {
        assert_mongo_url_rejected(dir.path(), &format!("mongo-{i}.toml"), url, var, secret);
    }
}

/// A `mongodb://` URL the driver cannot parse (a port that is not a
/// number, an unknown option value) is a configuration error too: exit 2
/// naming `source.url`, not a connection failure retried or reported later.
#[test]
fn mongodb_malformed_url_exits_2_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let var = "FERRY_TEST_MONGO_PASSWORD";
    let secret = "m0ng0-Hunter2-value";
    let port = closed_port();
    let urls = [
        format!("mongodb://ferry:${{{var}}}@127.0.0.1:notaport/?directConnection=true"),
        format!("mongodb://ferry:${{{var}}}@127.0.0.1:{port}/?directConnection=maybe"),
    ];
    for (i, url) in urls.iter().enumerate() {
        assert_mongo_url_rejected(dir.path(), &format!("malformed-{i}.toml"), url, var, secret);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_good_setup() {
    let pair = Pair::start("check").await;
    pair.src()
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.items"]).build();
    let (code, out) = cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "[ ok ] source reachable",
        "[ ok ] wal_level: logical",
        "[ ok ] replication privilege",
        "[ ok ] table public.items: key (id)",
        "[ ok ] target reachable",
        "[ ok ] target table public.items: will be created",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "missing {line:?}:\n{out}"
        );
    }
    assert!(!out.contains("[FAIL]"), "{out}");
    assert!(out.contains("checks passed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_when_wal_level_is_not_logical() {
    let (source, target) = tokio::join!(
        LocalCluster::start(ClusterOptions {
            extra_settings: vec![("wal_level".into(), "replica".into())],
            ..Default::default()
        }),
        LocalCluster::start(ClusterOptions::default())
    );
    let source = source.expect("start source PostgreSQL with wal_level=replica");
    let target = target.expect("start target PostgreSQL");
    let db = unique_db("wal");
    source.create_database(&db).await.expect("create source db");
    target.create_database(&db).await.expect("create target db");
    let pair = Pair {
        source,
        target,
        db,
        dir: tempfile::tempdir().unwrap(),
        kafka: None,
    };
    let src = pair.src().await;
    let level: String = src.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(level, "replica", "the cluster did not take the setting");
    src.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.items"]).build();
    let (code, out) = cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("[FAIL] wal_level: is replica") && l.contains("logical")),
        "no FAIL line for wal_level:\n{out}"
    );
    assert!(out.contains("checks failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_exit_codes() {
    let mut pair = Pair::start("parity").await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(12,2));
         INSERT INTO items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, 500) g;
         CREATE TABLE unmirrored (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let config = ConfigBuilder::new(&pair).tables(&["public.items"]).build();
    let config = config.to_str().unwrap();
    let mut ferry = Ferry::spawn(Path::new(config));
    pair.wait_equal(&["public.items"], Duration::from_secs(40))
        .await;
    ferry.kill9();

    let (code, out) = cmd(&["parity", "--config", config]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[equal] public.items: 500 rows"), "{out}");

    // Changed behind ferry's back.
    let dst = pair.dst().await;
    dst.batch_execute("UPDATE items SET price = price + 0.01 WHERE id = 42")
        .await
        .unwrap();
    let (code, out) = cmd(&["parity", "--config", config]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("[DIFF ] public.items"), "{out}");
    dst.batch_execute("UPDATE items SET price = price - 0.01 WHERE id = 42")
        .await
        .unwrap();
    let (code, out) = cmd(&["parity", "--config", config]);
    assert_eq!(code, 0, "{out}");
    // A missing row and an extra row.
    dst.batch_execute("DELETE FROM items WHERE id = 7; INSERT INTO items VALUES (9999, 'x', 1)")
        .await
        .unwrap();
    let (code, out) = cmd(&["parity", "--config", config]);
    assert_eq!(code, 1, "{out}");
    dst.batch_execute(
        "INSERT INTO items VALUES (7, 'item 7', 8.75); DELETE FROM items WHERE id = 9999",
    )
    .await
    .unwrap();
    let (code, out) = cmd(&["parity", "--config", config]);
    assert_eq!(code, 0, "{out}");

    // A table the target lacks cannot be verified.
    let both = ConfigBuilder::new(&pair)
        .tables(&["public.items", "public.unmirrored"])
        .build();
    let (code, out) = cmd(&["parity", "--config", both.to_str().unwrap()]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("NOT VERIFIED"), "{out}");

    // The target is down: not verified, never equal.
    drop(dst);
    pair.target.stop().await.expect("stop target");
    let (code, out) = cmd(&["parity", "--config", config]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("NOT VERIFIED"), "{out}");
    assert!(!out.contains("[equal]"), "{out}");
}
