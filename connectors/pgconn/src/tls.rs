//! rustls client configurations for each verification level of
//! [`crate::conninfo`], for tokio-postgres (queries, COPY) and for
//! pgwire-replication (the replication stream).
//!
//! Written here rather than taken from tokio-postgres-rustls alone: that
//! crate only connects (it expects a finished `ClientConfig`); libpq's
//! `require` (encrypt, trust any certificate) and `verify-ca` (trust the
//! chain, not the name) need verifiers of their own, which rustls leaves to
//! its users on purpose.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::conninfo::{ConnInfoError, RootCert, TlsOptions, Verification};

/// Where the operating system keeps its CA bundle (`sslrootcert=system`):
/// `SSL_CERT_FILE` first, as OpenSSL (and so libpq) honours it, then the
/// usual places of Debian/Ubuntu, RHEL/Fedora, Alpine and macOS.
pub fn system_bundle() -> Result<PathBuf, ConnInfoError> {
    if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
        return Ok(PathBuf::from(f));
    }
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or_else(|| {
        ConnInfoError(
            "sslrootcert=system: no CA bundle found (set SSL_CERT_FILE or install ca-certificates)"
                .into(),
        )
    })
}

/// The PEM file a [`RootCert`] stands for.
pub fn root_file(root: &RootCert) -> Result<PathBuf, ConnInfoError> {
    match root {
        RootCert::File(p) => Ok(p.clone()),
        RootCert::System => system_bundle(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_roots(path: &Path) -> Result<RootCertStore, ConnInfoError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConnInfoError(format!("sslrootcert {}: {e}", path.display())))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ConnInfoError(format!(
            "sslrootcert {}: no CA certificate in the file",
            path.display()
        )));
    }
    Ok(roots)
}

fn read_client_cert(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConnInfoError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConnInfoError(format!("sslcert {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(ConnInfoError(format!(
            "sslcert {}: no certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ConnInfoError(format!("sslkey {}: {e}", key.display())))?;
    Ok((chain, key))
}

/// The rustls configuration for `tls` (reads the certificate files).
pub fn client_config(tls: &TlsOptions) -> Result<ClientConfig, ConnInfoError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnInfoError(format!("TLS setup: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match &tls.verification {
        Verification::None => Arc::new(AnyCertificate(Arc::clone(&provider))),
        Verification::Chain(root) | Verification::Full(root) => {
            let roots = read_roots(&root_file(root)?)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| ConnInfoError(format!("TLS setup: {e}")))?;
            if matches!(tls.verification, Verification::Full(_)) {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &tls.client_cert {
        Some((cert, key)) => {
            let (chain, key) = read_client_cert(cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ConnInfoError(format!("sslcert/sslkey: {e}")))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// `sslmode=prefer`/`require` without a root certificate: the connection
/// is encrypted, the certificate is not checked (libpq's behaviour). The
/// handshake signatures still are, so the session key belongs to whoever
/// holds the certificate's key (what SCRAM channel binding relies on).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted CA; the name in
/// the certificate is not compared with the host (libpq's behaviour).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            // webpki checks the name after the chain: a name error means
            // the chain verified.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A TLS failure in words an operator can act on, when `e`'s causes hold
/// one (rustls' own error, or tokio-postgres' "server does not support
/// TLS").
pub fn failure_reason(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(describe(r));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(describe(r));
            }
        }
        let text = err.to_string();
        if text.contains("server does not support TLS") {
            return Some("the server does not offer TLS, and sslmode requires it".to_string());
        }
        cur = err.source();
    }
    None
}

fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName => {
                "the server's certificate is not issued for this host name (certificate name mismatch)".into()
            }
            CertificateError::NotValidForNameContext { expected, presented } => format!(
                "the server's certificate is not issued for {expected:?} (certificate name mismatch; it names {})",
                presented.join(", ")
            ),
            CertificateError::UnknownIssuer => {
                "the server's certificate is not signed by a trusted CA (unknown CA; check sslrootcert)".into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".into()
            }
            other => format!("the server's certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(a) => {
            format!("the server ended the TLS handshake ({a:?}; a client certificate it refused?)")
        }
        other => format!("TLS error: {other}"),
    }
}
