//! The `/metrics` endpoint: an HTTP/1 server (hyper) that no client can
//! knock over, and that keeps listening whatever happens.
//!
//! What bounds it:
//! - at most `max_connections` connections are served at once (a
//!   semaphore); one more is accepted and closed at once, so that the
//!   listen backlog keeps draining and a scraper gets in as soon as a slot
//!   frees;
//! - a request head must arrive within `header_read_timeout` of the
//!   connection's start or of the previous answer (hyper applies it to
//!   every head, so it is also the keep-alive idle timeout), and a TLS
//!   handshake within the same time;
//! - a connection lives at most `connection_max_age` (a client that never
//!   reads its answer frees its slot then; Prometheus reconnects);
//! - an accept error (out of file descriptors, for one) is logged and the
//!   listener tries again after a pause: it never ends.
//!
//! Optional: HTTPS with a PEM certificate and key (rustls), and a bearer
//! token that every request must carry (401 otherwise).
//!
//! Routes: `/metrics` (Prometheus text), `/health` (200 while the process
//! serves), `/ready` (200 once caught up, 503 with the reason otherwise),
//! `/status.json` (the per-table status, [`super::status::StatusReport`];
//! `?since=<unix seconds>` adds the lag samples taken after it) and `/`
//! (the status page, `status.html`: one self-contained file, no external
//! assets).

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A bearer token; Debug never shows it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    pub fn new(token: &str) -> Self {
        Self(Arc::from(token))
    }

    /// Whether an `Authorization` header value carries this token. The
    /// comparison takes the same time wherever the first difference is.
    fn admits(&self, header: Option<&[u8]>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let want = self.0.as_bytes();
        given.len() == want.len()
            && given
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// How the endpoint listens and what bounds it.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    pub listen: SocketAddr,
    pub bearer_token: Option<Token>,
    /// PEM certificate chain and private key: HTTPS when set.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub connection_max_age: Duration,
    /// `/ready` answers 200 only while every table's lag is at most this.
    pub ready_max_lag: Duration,
    /// The pipeline's name, in `/status.json`.
    pub pipeline: String,
}

impl EndpointOptions {
    /// Plain HTTP on `listen`, no token, 64 connections, 10 s for a
    /// request head, 5 minutes for a connection.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            bearer_token: None,
            tls: None,
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            connection_max_age: Duration::from_secs(300),
            ready_max_lag: Duration::from_secs(10),
            pipeline: String::new(),
        }
    }
}

/// Starts the endpoint on the current tokio runtime. Returns the bound
/// address (useful with port 0) once the socket listens; errors (address
/// in use, unreadable certificate) name the address or the file.
pub async fn serve(opts: EndpointOptions) -> anyhow::Result<SocketAddr> {
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {}: {e}", opts.listen))?;
    let bound = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, tls, Arc::new(opts)));
    tokio::spawn(async {
        // The lag history of the status page; one sampler per process even
        // if several endpoints are served (tests).
        static SAMPLING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if SAMPLING.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut tick = tokio::time::interval(super::status::SAMPLE_EVERY);
        loop {
            tick.tick().await;
            super::status::status().sample();
        }
    });
    Ok(bound)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    opts: Arc<EndpointOptions>,
) {
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let mut refused = 0u64;
    let mut last_report: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ECONNABORTED: all pass. Pause so
                // that a lasting one does not spin (hyper's and tokio's
                // examples do the same).
                tracing::warn!(error = %e, "metrics endpoint: accept failed (retrying)");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            refused += 1;
            // One line per 10 s at most during a flood.
            if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    refused,
                    max_connections = opts.max_connections,
                    "metrics endpoint: connections refused (all slots busy)"
                );
                last_report = Some(Instant::now());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let opts = Arc::clone(&opts);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(stream, &opts).await,
                Some(acceptor) => {
                    match tokio::time::timeout(opts.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => serve_connection(stream, &opts).await,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "metrics endpoint: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!("metrics endpoint: TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<I>(io: I, opts: &EndpointOptions)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let token = opts.bearer_token.clone();
    let ready_max_lag = opts.ready_max_lag;
    let pipeline: Arc<str> = Arc::from(opts.pipeline.as_str());
    let service = hyper::service::service_fn(move |req| {
        let answer = respond(&req, token.as_ref(), ready_max_lag, &pipeline);
        async move { Ok::<_, Infallible>(answer) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service);
    // Errors here are the client's (reset, timeout, bad request): nothing
    // to report above debug.
    match tokio::time::timeout(opts.connection_max_age, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics endpoint: connection ended"),
        Err(_) => tracing::debug!("metrics endpoint: connection closed at its maximum age"),
    }
}

/// The status page: one file, its script and styles inline.
const PAGE: &str = include_str!("status.html");

fn respond<B>(
    req: &Request<B>,
    token: Option<&Token>,
    ready_max_lag: Duration,
    pipeline: &str,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    let with_type = |status: StatusCode, body: Bytes, content_type: &'static str| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        // A status view is stale as soon as it is served.
        r.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-store"),
        );
        r
    };
    if let Some(token) = token {
        let header = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !token.admits(header) {
            let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let status = super::status::status();
    match req.uri().path() {
        "/metrics" => {}
        "/health" => return text(StatusCode::OK, "ok\n"),
        "/ready" => {
            let r = status.readiness(ready_max_lag);
            return match r.reason {
                None => text(StatusCode::OK, "ready\n"),
                Some(reason) => with_type(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Bytes::from(format!("not ready: {reason}\n")),
                    "text/plain; charset=utf-8",
                ),
            };
        }
        "/status.json" => {
            let since = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("since="))
                    .and_then(|v| v.parse::<f64>().ok())
            });
            let report = status.report(pipeline, ready_max_lag, since);
            let body = serde_json::to_vec(&report).expect("the report serializes");
            return with_type(StatusCode::OK, Bytes::from(body), "application/json");
        }
        "/" | "/index.html" => {
            return with_type(
                StatusCode::OK,
                Bytes::from_static(PAGE.as_bytes()),
                "text/html; charset=utf-8",
            )
        }
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "see / (status page), /status.json, /metrics, /health, /ready\n",
            )
        }
    }
    let mut r = Response::new(Full::new(Bytes::from(super::metrics().render())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// A rustls acceptor for a PEM certificate chain and private key.
fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("metrics.tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("metrics.tls_cert {}: no certificate in it", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("metrics.tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("metrics TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("metrics.tls_cert / metrics.tls_key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// The status code of one `GET path` (with `auth` as the Authorization
    /// header), or None when the server closed or did not answer in time.
    async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Option<u16> {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await.ok()?;
            let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.ok()?;
            let head = String::from_utf8_lossy(&buf);
            head.get(9..12)?.parse().ok()
        };
        tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .ok()
            .flatten()
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[tokio::test]
    async fn a_token_is_required_when_configured() {
        let mut opts = EndpointOptions::new(loopback());
        opts.bearer_token = Some(Token::new("s3cret"));
        let addr = serve(opts).await.unwrap();
        assert_eq!(get(addr, "/metrics", None).await, Some(401));
        assert_eq!(get(addr, "/metrics", Some("Bearer wrong")).await, Some(401));
        assert_eq!(get(addr, "/metrics", Some("Bearer s3cre")).await, Some(401));
        assert_eq!(get(addr, "/metrics", Some("Basic s3cret")).await, Some(401));
        assert_eq!(
            get(addr, "/metrics", Some("Bearer s3cret")).await,
            Some(200)
        );
        assert_eq!(get(addr, "/other", Some("Bearer s3cret")).await, Some(404));
        for path in ["/", "/status.json", "/health", "/ready"] {
            assert_eq!(get(addr, path, None).await, Some(401), "{path}");
        }
        assert_eq!(get(addr, "/health", Some("Bearer s3cret")).await, Some(200));
        assert_eq!(get(addr, "/", Some("Bearer s3cret")).await, Some(200));
        assert_eq!(
            get(addr, "/status.json?since=0", Some("Bearer s3cret")).await,
            Some(200)
        );
        assert!(!format!("{:?}", Token::new("s3cret")).contains("s3cret"));
    }

    #[tokio::test]
    async fn an_unreadable_certificate_names_the_file() {
        let mut opts = EndpointOptions::new(loopback());
        opts.tls = Some((
            "/nonexistent/cert.pem".into(),
            "/nonexistent/key.pem".into(),
        ));
        let e = serve(opts).await.unwrap_err().to_string();
        assert!(e.contains("metrics.tls_cert /nonexistent/cert.pem"), "{e}");
    }

    /// Resident memory of this process, in KiB.
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The soft limit of open files of this process.
    fn fd_limit() -> usize {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    }

    /// 10,000 idle connections (or as many as the fd limit allows; tests/run.sh
    /// raises it): the endpoint keeps answering, holds at most
    /// `max_connections` of them, closes those that send nothing once the
    /// head timeout passes, and memory stays bounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_cannot_knock_it_over() {
        let mut opts = EndpointOptions::new(loopback());
        opts.max_connections = 32;
        opts.header_read_timeout = Duration::from_secs(1);
        let addr = serve(opts).await.unwrap();
        assert_eq!(get(addr, "/metrics", None).await, Some(200));
        // Room for the server's own sockets (at most 32 held, one being
        // refused) and the test harness.
        // tests/run.sh raises the limit to 20,000; under a default limit
        // (1,024) the flood is smaller, still 20 times the slots.
        let n = 10_000.min(fd_limit().saturating_sub(256));
        assert!(
            n >= 640,
            "fd limit {} too low for this test: run it through tests/run.sh (ulimit -n)",
            fd_limit()
        );
        let before = rss_kib();
        let mut idle = Vec::with_capacity(n);
        for _ in 0..n {
            idle.push(TcpStream::connect(addr).await.expect("loopback connect"));
        }
        let grown_mib = rss_kib().saturating_sub(before) / 1024;
        // The client side's 10,000 tokio sockets are part of it; the server
        // holds 32 connections.
        assert!(grown_mib < 64, "resident memory grew by {grown_mib} MiB");
        // While they are all still open, the endpoint answers (within a few
        // head timeouts: the slots free as idle connections are closed).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if get(addr, "/metrics", None).await == Some(200) {
                break;
            }
            assert!(Instant::now() < deadline, "/metrics did not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Every idle connection was closed by the server: refused at once,
        // or after the head timeout.
        let mut buf = [0u8; 1];
        for s in idle.iter_mut().step_by(97) {
            let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "an idle connection stayed open: {read:?}"
            );
        }
        drop(idle);
        assert_eq!(get(addr, "/metrics", None).await, Some(200));
    }
}
