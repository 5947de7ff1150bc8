//! What the `[source]` section means for this connector, with no I/O: the
//! URL check of `ferry check`, and which collections a pipeline mirrors.
//!
//! The TOML schema itself stays in `ferry_pipeline::config` (one
//! `deny_unknown_fields` tree, so a bad key is refused with its full name).
//! The driver reads its own connection options from the URL (TLS among
//! them: `tls=true`, `tlsCAFile`, `tlsCertificateKeyFile`); [`connect`] is
//! the one place a client is made from it.
//!
//! `mongodb+srv://` URLs are resolved by the driver (SRV records give the
//! hosts, a TXT record `authSource`/`replicaSet`; TLS is on unless the URL
//! says `tls=false`) through the system's resolver (`/etc/resolv.conf`):
//! the driver's resolver can only be pointed at fixed public resolvers,
//! never at a server of the operator's choosing, so Ferry offers no key
//! for it.

use std::collections::HashSet;

use ferry_pipeline::error::PipelineError;
use mongodb::options::{ClientOptions, ConnectionString};

/// Whether a MongoDB URL parses as the driver reads it (hosts, ports,
/// options); no connection and no DNS lookup is made (a `mongodb+srv://`
/// host is resolved at [`connect`]). The error never repeats the URL (it
/// holds secrets).
// Still async (it resolved SRV hosts before): the binary's `load`, which
// other connectors' checks share, awaits it.
#[allow(clippy::unused_async)]
pub async fn check_url(url: &str) -> Result<(), String> {
    ConnectionString::parse(url)
        .map(|_| ())
        .map_err(|e| match *e.kind {
            mongodb::error::ErrorKind::InvalidArgument { ref message, .. } => message.clone(),
            _ => "not a valid MongoDB connection string".to_string(),
        })
}

/// The driver's options for `url` (a `mongodb+srv://` host is resolved
/// here).
pub async fn client_options(url: &str) -> mongodb::error::Result<ClientOptions> {
    ClientOptions::parse(url).await
}

/// The hosts a URL names, `host:port` joined by commas (never the
/// credentials): what connection errors name.
pub fn hosts(url: &str) -> String {
    match ConnectionString::parse(url) {
        Ok(cs) => match &cs.host_info {
            mongodb::options::HostInfo::HostIdentifiers(hosts) => hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            mongodb::options::HostInfo::DnsRecord(name) => format!("{name} (DNS SRV)"),
            _ => "the configured hosts".to_string(),
        },
        Err(_) => "the configured hosts".to_string(),
    }
}

/// A client for `url`. Errors say `what`, name the hosts and the driver's
/// cause, and never the URL (it holds the password).
pub async fn connect(url: &str, what: &str) -> Result<mongodb::Client, PipelineError> {
    let context = format!("{what} at {}", hosts(url));
    let options = client_options(url)
        .await
        .map_err(|e| crate::source::mongo_err(&context, e))?;
    mongodb::Client::with_options(options).map_err(|e| crate::source::mongo_err(&context, e))
}

/// Whether changes of `collection` are mirrored: one of `wanted` (the
/// configured collections, or those found at the start), or, when none are
/// configured (`configured` is empty), any but MongoDB's own `system.*` and
/// Ferry's sink's [`FERRY_SINK_COLLECTIONS`] (a
/// collection created after the start streams from its creation, so it
/// needs no copy).
pub fn mirrors(configured: &[String], wanted: &HashSet<String>, collection: &str) -> bool {
    wanted.contains(collection)
        || (configured.is_empty()
            && !collection.starts_with("system.")
            && !FERRY_SINK_COLLECTIONS.contains(&collection))
}

/// What Ferry's MongoDB sink keeps in its database (sinks/mongodb): not
/// application data, never mirrored unless listed.
pub const FERRY_SINK_COLLECTIONS: &[&str] = &["ferry_checkpoints", "ferry_dead_letters"];

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::options::Tls;

    #[tokio::test]
    async fn tls_options_reach_the_driver() {
        let url = "mongodb://ferry:pw@db1:27017,db2:27018/?replicaSet=rs0&tls=true\
                   &tlsCAFile=/etc/ferry/ca.pem&tlsCertificateKeyFile=/etc/ferry/client.pem";
        let o = client_options(url).await.unwrap();
        let Some(Tls::Enabled(tls)) = &o.tls else {
            panic!("TLS is on: {:?}", o.tls)
        };
        assert_eq!(
            tls.ca_file_path.as_deref(),
            Some("/etc/ferry/ca.pem".as_ref())
        );
        assert_eq!(
            tls.cert_key_file_path.as_deref(),
            Some("/etc/ferry/client.pem".as_ref())
        );
        assert_eq!(hosts(url), "db1:27017,db2:27018");
        let o = client_options("mongodb://db1/?tls=false").await.unwrap();
        assert!(matches!(o.tls, Some(Tls::Disabled)));
    }

    #[tokio::test]
    async fn srv_urls_parse_without_a_lookup() {
        // `.invalid` never resolves: only a check that makes no lookup passes.
        let url = "mongodb+srv://ferry:pw@cluster0.example.invalid/?authSource=admin";
        check_url(url).await.unwrap();
        assert_eq!(hosts(url), "cluster0.example.invalid (DNS SRV)");
        assert!(!hosts(url).contains("pw"));
        // The driver refuses a port or a second host on an SRV URL.
        assert!(check_url("mongodb+srv://a.example.invalid:27017/")
            .await
            .is_err());
        // Resolving is the driver's (its DNS resolver is built in): an
        // unknown name is an error that names it.
        let e = connect(url, "connect to MongoDB")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster0.example.invalid"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
    }
}
