//! The metrics endpoint over HTTPS with a bearer token, as `[metrics]
//! tls_cert`, `tls_key` and `bearer_token` configure it: a rustls client
//! that trusts the test CA gets the metrics with the token and 401 without;
//! plain HTTP to the TLS port gets no HTTP answer.

use std::sync::Arc;
use std::time::Duration;

use ferry_pipeline::metrics::endpoint::{serve, EndpointOptions, Token};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use ferry_testkit::TestPki;

/// Sends one request and returns everything the server sent back.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, auth: Option<&str>) -> String {
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req =
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    let io = async {
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(Duration::from_secs(15), io).await {
        Ok(Ok(buf)) => String::from_utf8_lossy(&buf).into_owned(),
        Ok(Err(e)) => format!("io error: {e}"),
        Err(_) => "no answer".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestPki::generate(dir.path()).expect("test certificates");
    let mut opts = EndpointOptions::new("127.0.0.1:0".parse().unwrap());
    opts.tls = Some((ca.server_cert.clone(), ca.server_key.clone()));
    opts.bearer_token = Some(Token::new("scrape-token"));
    opts.header_read_timeout = Duration::from_secs(2);
    let addr = serve(opts).await.expect("serve /metrics over TLS");

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca.ca_cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let https = |auth: Option<&'static str>| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await.expect("TLS handshake");
            exchange(tls, auth).await
        }
    };

    let ok = https(Some("scrape-token")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
    let refused = https(None).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{refused}"
    );
    let wrong = https(Some("scrape-tokem")).await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");

    let plain = exchange(
        TcpStream::connect(addr).await.unwrap(),
        Some("scrape-token"),
    )
    .await;
    assert!(
        !plain.contains("HTTP/1.1 200"),
        "plain HTTP was answered: {plain}"
    );
    // The endpoint is still up after that.
    assert!(https(Some("scrape-token"))
        .await
        .starts_with("HTTP/1.1 200"));
}
