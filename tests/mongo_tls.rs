//! The MongoDB source over TLS: the URL's TLS options (`tls=true`,
//! `tlsCAFile`, `tlsCertificateKeyFile`) reach the driver, against a
//! TLS-only SecantusDB that requires client certificates; connection errors
//! name the host and port, never the password.

use crate::support::ferry_cmd;
use crate::support::mongo::{MongoOptions, MongoServer, MongoTls};
use ferry_testkit::TestPki;

/// `ferry check` with a MongoDB source at `url` (the sink is unreachable:
/// only the source's findings matter here); returns the output.
fn check(dir: &std::path::Path, name: &str, url: &str) -> String {
    let text = format!(
        r#"
[source]
kind = "mongodb"
url = "{url}"
database = "app"

[sink]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:1/app"
schema = "public"
"#
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let (code, out) = ferry_cmd(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "the sink is unreachable: check fails\n{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_options_on_the_url_reach_a_tls_only_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestPki::generate(dir.path()).expect("test certificates");
    let server = MongoServer::start(MongoOptions {
        tls: Some(MongoTls {
            cert: ca.server_cert.clone(),
            key: ca.server_key.clone(),
            ca: ca.ca_cert.clone(),
            client_pem: ca.client_pem.clone(),
        }),
        ..Default::default()
    })
    .await;
    let url = server.url();
    let hostport = format!("127.0.0.1:{}", server.port());
    let out = check(dir.path(), "good.toml", &url);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("[ ok ] source reachable: connected to {hostport}"))),
        "{out}"
    );
    assert!(out.contains("[ ok ] change stream"), "{out}");

    // Without the client certificate, the server refuses the handshake;
    // without the CA, the client refuses the server's certificate.
    let fast = "&serverSelectionTimeoutMS=2000&connectTimeoutMS=2000";
    let no_client_cert = format!(
        "mongodb://ferry:hunter2@{hostport}/?directConnection=true&tls=true&tlsCAFile={}{fast}",
        ca.ca_cert.display()
    );
    let no_ca = format!(
        "mongodb://ferry:hunter2@{hostport}/?directConnection=true&tls=true&tlsCertificateKeyFile={}{fast}",
        ca.client_pem.display()
    );
    let plaintext = format!("mongodb://ferry:hunter2@{hostport}/?directConnection=true{fast}");
    for (name, url) in [
        ("no-client-cert.toml", no_client_cert),
        ("no-ca.toml", no_ca),
        ("plaintext.toml", plaintext),
    ] {
        let out = check(dir.path(), name, &url);
        let line = out
            .lines()
            .find(|l| l.starts_with("[FAIL] source reachable"))
            .unwrap_or_else(|| panic!("{name}: no failed source finding:\n{out}"));
        assert!(line.contains(&hostport), "{name}: {line}");
        assert!(!out.contains("hunter2"), "{name}: {out}");
    }
}
