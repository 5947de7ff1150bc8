//! Secured throwaway clusters: a test CA, server and client certificates
//! (rcgen, no `openssl` binary needed), `ssl = on`, and a pg_hba.conf with
//! one password method — what production servers look like to Ferry.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// How TCP clients authenticate (pg_hba.conf's method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `scram-sha-256` (passwords stored as SCRAM).
    ScramSha256,
    /// `md5` (passwords stored as MD5).
    Md5,
    /// `password`: cleartext, only ever over TLS here.
    Password,
    /// `cert`: a client certificate whose CN is the user.
    Cert,
}

impl AuthMethod {
    fn hba(self) -> &'static str {
        match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Password => "password",
            AuthMethod::Cert => "cert",
        }
    }
}

/// A cluster's security settings.
#[derive(Debug, Clone)]
pub struct Security {
    pub auth: AuthMethod,
    /// Only `hostssl` lines: plaintext TCP is refused.
    pub tls_only: bool,
}

impl Security {
    pub fn new(auth: AuthMethod) -> Self {
        Self {
            auth,
            tls_only: false,
        }
    }

    pub fn tls_only(mut self) -> Self {
        self.tls_only = true;
        self
    }
}

/// The password every secured cluster gives user `postgres`.
pub const PASSWORD: &str = "s3cret-Pa55";

/// The certificates of a secured cluster, as PEM files in its directory.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA that signed the server's and the client's certificates.
    pub ca_cert: PathBuf,
    /// A CA that signed nothing here (for "unknown CA" tests).
    pub other_ca_cert: PathBuf,
    /// A client certificate for user `postgres`, and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The client certificate and key in one PEM (MongoDB's
    /// `tlsCertificateKeyFile`).
    pub client_pem: PathBuf,
    /// The server's certificate (for `localhost` and `127.0.0.1`) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn ca(name: &str) -> anyhow::Result<(rcgen::Certificate, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok((cert, Issuer::new(params, key)))
}

fn leaf(
    cn: &str,
    sans: Vec<SanType>,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        // PostgreSQL refuses a key others can read.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

impl TestPki {
    /// A CA, a server certificate for `localhost` and `127.0.0.1` (a client
    /// that names another host sees a name mismatch), a client certificate
    /// for `postgres`, and an unrelated CA, in `dir`. X.509 v3 throughout:
    /// webpki (rustls) refuses v1 certificates, a client's own included.
    pub fn generate(dir: &Path) -> anyhow::Result<TestPki> {
        let (ca_cert, issuer) = ca("ferry-test-ca")?;
        let (other, _) = ca("ferry-other-ca")?;
        let (server, server_key) = leaf(
            "localhost",
            vec![
                SanType::DnsName("localhost".try_into()?),
                SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            ],
            &issuer,
        )?;
        let (client, client_key) = leaf("postgres", Vec::new(), &issuer)?;
        let pki = TestPki {
            ca_cert: dir.join("ca.crt"),
            other_ca_cert: dir.join("other-ca.crt"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            client_pem: dir.join("client.pem"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        };
        write(&pki.ca_cert, &ca_cert.pem(), false)?;
        write(&pki.other_ca_cert, &other.pem(), false)?;
        write(&pki.client_cert, &client.pem(), false)?;
        write(&pki.client_key, &client_key.serialize_pem(), true)?;
        write(
            &pki.client_pem,
            &(client.pem() + &client_key.serialize_pem()),
            true,
        )?;
        write(&pki.server_cert, &server.pem(), false)?;
        write(&pki.server_key, &server_key.serialize_pem(), true)?;
        Ok(pki)
    }
}

/// pg_hba.conf for `security`: the harness's own unix-socket sessions are
/// trusted; TCP clients use the method. (Logical replication sessions match
/// the `all` database lines: the `replication` keyword is for physical
/// replication only.)
pub(crate) fn hba(security: &Security) -> String {
    let method = security.auth.hba();
    let mut lines = vec!["local all all trust".to_string()];
    let mut kinds = vec!["hostssl"];
    if !security.tls_only && security.auth != AuthMethod::Cert {
        kinds.push("host");
    }
    for kind in kinds {
        lines.push(format!("{kind} all all 127.0.0.1/32 {method}"));
        lines.push(format!("{kind} all all ::1/128 {method}"));
    }
    lines.join("\n") + "\n"
}
