//! PostgreSQL as production servers present it: TLS-only clusters with a
//! test CA, every password method, client certificates, and the failures an
//! operator must be told about plainly (a wrong CA, a wrong host name, a
//! replication line missing in pg_hba.conf). The clusters are started by
//! the test kit with `ssl = on` and a pg_hba.conf of the method.

use std::time::Duration;

use ferry_testkit::{AuthMethod, ClusterOptions, Security};

use crate::support::{ferry_cmd, wait_for, ConfigBuilder, Ferry, Pair};

fn secured(security: Security) -> ClusterOptions {
    ClusterOptions {
        security: Some(security),
        ..ClusterOptions::default()
    }
}

async fn items(pair: &Pair, rows: i32) {
    pair.src()
        .await
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(12,2));
             INSERT INTO items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, {rows}) g;"
        ))
        .await
        .unwrap();
}

async fn change(pair: &Pair, round: i32) {
    pair.src()
        .await
        .batch_execute(&format!(
            "UPDATE items SET price = price + {round} WHERE id % 3 = 0;
             DELETE FROM items WHERE id % 11 = {round};
             INSERT INTO items VALUES (10000 + {round}, 'new {round}', {round}.5);"
        ))
        .await
        .unwrap();
}

fn alive(ferry: &mut Ferry) {
    assert!(
        ferry.exited().is_none(),
        "ferry exited: {}",
        ferry.log_text()
    );
}

/// Both clusters accept TLS only (`hostssl` lines, SCRAM): the pipeline
/// runs under `verify-full`, is killed, resumes under `verify-ca`, then
/// `require`, then libpq's default `prefer` (which must negotiate TLS, as
/// plaintext is refused), snapshot and changes compared row by row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_streams_through_kill9() {
    let tls = || secured(Security::new(AuthMethod::ScramSha256).tls_only());
    let pair = Pair::start_with("tls_modes", tls(), tls()).await;
    items(&pair, 500).await;
    let modes = ["verify-full", "verify-ca", "require", "prefer"];
    for (round, mode) in modes.iter().enumerate() {
        let round = round as i32 + 1;
        let line = format!("sslmode = {mode:?}");
        let config = ConfigBuilder::new(&pair)
            .tables(&["public.items"])
            .extra_source(&line)
            .extra_sink(&line)
            .build();
        let mut ferry = Ferry::spawn(&config);
        change(&pair, round).await;
        pair.wait_equal(&["public.items"], Duration::from_secs(90))
            .await;
        alive(&mut ferry);
        // What the source sees of Ferry (the harness's own sessions use the
        // unix socket): its replication session among them, all encrypted.
        let row = pair
            .src()
            .await
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT ssl), \
                        count(*) FILTER (WHERE backend_type = 'walsender') \
                 FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                 WHERE client_addr IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        let (plaintext, walsenders): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(plaintext, 0, "sslmode={mode}: a plaintext session");
        assert_eq!(walsenders, 1, "sslmode={mode}: no replication session");
        ferry.kill9();
    }
}

/// A CA that did not sign the server's certificate, a host name the
/// certificate does not name, and plaintext against a TLS-only server:
/// `ferry check` fails saying which, and `ferry run` stops (it does not
/// retry a certificate for ever) without leaving a slot behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_named_and_final() {
    let tls = || secured(Security::new(AuthMethod::ScramSha256).tls_only());
    let pair = Pair::start_with("tls_fail", tls(), tls()).await;
    items(&pair, 10).await;
    let pki = pair.source.pki().expect("secured cluster").clone();
    let port = pair.source.port();

    let wrong_ca = ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .extra_source(&format!("sslrootcert = {:?}", pki.other_ca_cert))
        .build();
    let (code, out) = ferry_cmd(&["check", "--config", wrong_ca.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown CA"), "{out}");
    assert!(out.contains(&format!("localhost:{port}")), "{out}");
    assert!(!out.contains(ferry_testkit::security::PASSWORD), "{out}");

    // A name the certificate does not carry, dialled at the server's
    // address (libpq's `hostaddr`).
    let url = pair
        .source
        .url(&pair.db)
        .replace("@localhost:", "@db.example.invalid:")
        .replacen('?', "?hostaddr=127.0.0.1&", 1);
    let wrong_host = ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .source_url(&url)
        .build();
    let (code, out) = ferry_cmd(&["check", "--config", wrong_host.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("certificate name mismatch"), "{out}");

    let plaintext = ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .extra_source("sslmode = \"disable\"")
        .build();
    let (code, out) = ferry_cmd(&["check", "--config", plaintext.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no encryption"), "{out}");

    // `run` stops on the first attempt: a certificate does not heal.
    let mut ferry = Ferry::spawn(&wrong_ca);
    ferry.expect_exit(
        3,
        Duration::from_secs(60),
        "ferry kept retrying a TLS failure",
    );
    assert!(
        ferry.log_text().contains("unknown CA"),
        "{}",
        ferry.log_text()
    );
    let slots: i64 = pair
        .src()
        .await
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a slot was left behind");
}

/// `cert` authentication: the client certificate and key come from the
/// `source.sslcert` / `source.sslkey` keys (the URL has none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_authentication() {
    let pair = Pair::start_with(
        "tls_cert",
        secured(Security::new(AuthMethod::Cert).tls_only()),
        ClusterOptions::default(),
    )
    .await;
    items(&pair, 200).await;
    let pki = pair.source.pki().expect("secured cluster").clone();
    let url = format!(
        "postgres://postgres@localhost:{}/{}?sslmode=verify-full",
        pair.source.port(),
        pair.db
    );
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .source_url(&url)
        .extra_source(&format!("sslrootcert = {:?}", pki.ca_cert))
        .extra_source(&format!("sslcert = {:?}", pki.client_cert))
        .extra_source(&format!("sslkey = {:?}", pki.client_key))
        .build();
    let (code, out) = ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let mut ferry = Ferry::spawn(&config);
    change(&pair, 1).await;
    pair.wait_equal(&["public.items"], Duration::from_secs(90))
        .await;
    alive(&mut ferry);
}

/// Snapshot and stream with the source under `method` (MD5 also on the
/// replication connection, which once passed `check` and stopped `run`).
async fn password_method(prefix: &str, security: Security, sslmode: &str) {
    let pair = Pair::start_with(prefix, secured(security), ClusterOptions::default()).await;
    items(&pair, 300).await;
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .extra_source(&format!("sslmode = {sslmode:?}"))
        .build();
    let (code, out) = ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&["public.items"], Duration::from_secs(90))
        .await;
    change(&pair, 2).await;
    pair.wait_equal(&["public.items"], Duration::from_secs(90))
        .await;
    alive(&mut ferry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_over_plaintext() {
    password_method("auth_md5", Security::new(AuthMethod::Md5), "disable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_with_channel_binding_over_tls() {
    password_method(
        "auth_scram",
        Security::new(AuthMethod::ScramSha256).tls_only(),
        "verify-full",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_password_over_tls() {
    password_method(
        "auth_password",
        Security::new(AuthMethod::Password).tls_only(),
        "require",
    )
    .await;
}

/// Normal sessions work but replication sessions cannot open
/// (`max_wal_senders = 0`: slots can still be created with SQL). `ferry
/// check` opens a replication session as `run` would and fails on it; `run`
/// proves the stream can open before it creates anything, so no slot is
/// left holding WAL while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_refused_is_caught_before_any_slot() {
    let source = ClusterOptions {
        extra_settings: vec![("max_wal_senders".into(), "0".into())],
        security: Some(Security::new(AuthMethod::Md5)),
        ..ClusterOptions::default()
    };
    let pair = Pair::start_with("auth_repl", source, ClusterOptions::default()).await;
    items(&pair, 10).await;
    let config = ConfigBuilder::new(&pair)
        .tables(&["public.items"])
        .extra_source("sslmode = \"disable\"")
        .build();
    let (code, out) = ferry_cmd(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("replication connection") && l.contains("max_wal_senders")),
        "{out}"
    );
    let ferry = Ferry::spawn(&config);
    wait_for(
        "the replication connection refused",
        &ferry,
        Duration::from_secs(60),
        || async { ferry.log_text().contains("max_wal_senders") },
    )
    .await;
    let slots: i64 = pair
        .src()
        .await
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a slot was created before the stream could open");
}
