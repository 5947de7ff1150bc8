//! A throwaway certificate authority for TLS test servers, made with the
//! `openssl` command (tests/run.sh installs it): a CA, a server certificate
//! for `localhost` and `127.0.0.1`, and a client certificate for mutual TLS.
//!
//! Keys are unencrypted PKCS#8 PEM, as every TLS stack in the tests reads
//! them (rustls, OpenSSL, Python's ssl).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of a test CA, in its directory.
pub struct TestCa {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The client certificate and key in one PEM (MongoDB's
    /// `tlsCertificateKeyFile`).
    pub client_pem: PathBuf,
}

fn openssl(dir: &Path, args: &[String]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run openssl (tests/run.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// Makes a CA and its certificates in `dir` (about a second: three
    /// RSA keys).
    pub fn new(dir: &Path) -> TestCa {
        let args = |line: &str| line.split(' ').map(str::to_string).collect::<Vec<_>>();
        openssl(
            dir,
            &args("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ferry-test-ca -keyout ca.key -out ca.crt"),
        );
        // Both X.509 v3 (extensions make them so): webpki, which rustls
        // uses, refuses a v1 certificate, the client's own included.
        for (name, cn, ext) in [
            (
                "server",
                "localhost",
                "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
            ),
            (
                "client",
                "ferry",
                "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
            ),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write the extensions");
            openssl(
                dir,
                &args(&format!(
                    "req -newkey rsa:2048 -nodes -subj /CN={cn} -keyout {name}.key -out {name}.csr"
                )),
            );
            openssl(
                dir,
                &args(&format!(
                    "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                     -extfile {name}.ext -out {name}.crt"
                )),
            );
        }
        let client_pem = dir.join("client.pem");
        let mut pem = std::fs::read(dir.join("client.crt")).expect("client.crt");
        pem.extend(std::fs::read(dir.join("client.key")).expect("client.key"));
        std::fs::write(&client_pem, pem).expect("write client.pem");
        TestCa {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            client_pem,
        }
    }
}
