//! `mongodb+srv://` URLs: the driver finds the hosts in SRV records and the
//! options in a TXT record, here served by a test DNS server for the domain
//! `ferry.test` (tests/support/dns.rs) that `ferry` sees as its system
//! resolver.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::Ordering;

use crate::support::dns::{TestDns, Zone};
use crate::support::ferry_bin;
use crate::support::mongo::{MongoOptions, MongoServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_the_hosts_through_dns_srv() {
    let server = MongoServer::start(MongoOptions::default()).await;
    let zone = Zone {
        srv: HashMap::from([(
            "_mongodb._tcp.cluster.ferry.test".to_string(),
            vec![(0, 0, server.port(), "node1.ferry.test".to_string())],
        )]),
        txt: HashMap::from([(
            "cluster.ferry.test".to_string(),
            vec!["authSource=admin".to_string()],
        )]),
        a: HashMap::from([("node1.ferry.test".to_string(), vec![Ipv4Addr::LOCALHOST])]),
    };
    let dns = TestDns::start(zone);
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str, url: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
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
            ),
        )
        .unwrap();
        path
    };
    let check = |path: &std::path::Path| {
        let out = dns
            .command(ferry_bin())
            .arg("check")
            .arg("--config")
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .expect("run ferry in its own mount namespace (unshare)");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    };
    // SRV implies TLS; the test server speaks plaintext.
    let good = config(
        "srv.toml",
        "mongodb+srv://cluster.ferry.test/?tls=false&serverSelectionTimeoutMS=5000",
    );
    let out = check(&good);
    assert!(
        out.lines()
            .any(|l| l
                .starts_with("[ ok ] source reachable: connected to cluster.ferry.test (DNS SRV)")),
        "{out}"
    );
    assert!(out.contains("[ ok ] change stream"), "{out}");
    assert!(
        dns.srv_queries.load(Ordering::Relaxed) > 0,
        "no SRV query seen"
    );

    // A name without SRV records: the finding names it, not the password.
    let missing = config(
        "missing.toml",
        "mongodb+srv://ferry:hunter2@nothing.ferry.test/?tls=false",
    );
    let out = check(&missing);
    let line = out
        .lines()
        .find(|l| l.starts_with("[FAIL] source reachable"))
        .unwrap_or_else(|| panic!("no failed source finding:\n{out}"));
    assert!(line.contains("nothing.ferry.test"), "{line}");
    assert!(!out.contains("hunter2"), "{out}");
}
