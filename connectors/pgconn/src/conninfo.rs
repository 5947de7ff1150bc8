//! libpq connection strings, read as libpq reads them.
//!
//! tokio-postgres parses URLs and `key=value` strings but knows only
//! `sslmode` = `disable` / `prefer` / `require`: it refuses `verify-ca` and
//! `verify-full` as an invalid string and has no `sslrootcert`, `sslcert` or
//! `sslkey`. So Ferry takes the `ssl*` keys out of the string itself (this
//! module, pure, no I/O), hands the rest to tokio-postgres, and applies
//! libpq's rules to what it took out:
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow` | only when the server refuses plaintext | not checked |
//! | `prefer` (libpq's default) | when the server offers it | not checked |
//! | `require` | always | not checked — unless a root certificate is set (or `~/.postgresql/root.crt` exists): then as `verify-ca` |
//! | `verify-ca` | always | signed by a trusted CA |
//! | `verify-full` | always | signed by a trusted CA and issued for the host name |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` (the
//! operating system's CA bundle; as in libpq 16, it makes `verify-full` the
//! default and refuses weaker modes). Without it, libpq's default file
//! `~/.postgresql/root.crt` is used when it exists. `sslcert` / `sslkey`
//! name a client certificate and its key (PEM); libpq's defaults
//! `~/.postgresql/postgresql.crt` / `.key` are used when both exist.
//!
//! Errors never contain the connection string (it may hold a password).

use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;

/// How TLS is negotiated and what is verified (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The operating system's CA bundle (`sslrootcert=system`).
    System,
}

/// What the server's certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Encryption only: any certificate is accepted.
    None,
    /// The chain must lead to a trusted CA; the host name is not checked.
    Chain(RootCert),
    /// Chain and host name.
    Full(RootCert),
}

/// The TLS half of a connection string, after libpq's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub verification: Verification,
    /// Client certificate and key (PEM files).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The `ssl*` keys as written, before defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslKeys {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

impl SslKeys {
    /// The keys as a configuration section names them (`sslmode`,
    /// `sslrootcert`, `sslcert`, `sslkey`).
    pub fn new(
        sslmode: Option<&str>,
        sslrootcert: Option<&str>,
        sslcert: Option<&str>,
        sslkey: Option<&str>,
    ) -> Self {
        Self {
            sslmode: sslmode.map(str::to_string),
            sslrootcert: sslrootcert.map(str::to_string),
            sslcert: sslcert.map(str::to_string),
            sslkey: sslkey.map(str::to_string),
        }
    }

    /// Keys given outside the string (configuration keys) win over the
    /// string's own.
    pub fn overridden_by(mut self, other: &SslKeys) -> SslKeys {
        for (mine, theirs) in [
            (&mut self.sslmode, &other.sslmode),
            (&mut self.sslrootcert, &other.sslrootcert),
            (&mut self.sslcert, &other.sslcert),
            (&mut self.sslkey, &other.sslkey),
        ] {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
        self
    }
}

/// A connection string that could not be read. Says what is wrong, never
/// the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfoError(pub String);

impl std::fmt::Display for ConnInfoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnInfoError {}

/// Where libpq looks for default files (`~/.postgresql/`), passed in so
/// the rules stay pure and testable.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub dir: Option<PathBuf>,
}

impl Defaults {
    /// `$HOME/.postgresql`, as libpq.
    pub fn from_env() -> Self {
        Self {
            dir: std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql")),
        }
    }

    fn existing(&self, name: &str) -> Option<PathBuf> {
        let p = self.dir.as_ref()?.join(name);
        p.is_file().then_some(p)
    }
}

/// Splits a connection string into the `ssl*` keys Ferry handles and the
/// rest, which tokio-postgres parses.
pub fn split_ssl_keys(conn: &str) -> Result<(String, SslKeys), ConnInfoError> {
    let trimmed = conn.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        split_url(trimmed)
    } else {
        split_key_values(trimmed)
    }
}

fn take(keys: &mut SslKeys, key: &str, value: String) -> bool {
    let slot = match key {
        "sslmode" => &mut keys.sslmode,
        "sslrootcert" => &mut keys.sslrootcert,
        "sslcert" => &mut keys.sslcert,
        "sslkey" => &mut keys.sslkey,
        _ => return false,
    };
    *slot = Some(value);
    true
}

fn split_url(url: &str) -> Result<(String, SslKeys), ConnInfoError> {
    let mut keys = SslKeys::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), keys));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        if !take(&mut keys, &key, decode(v)?) {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, keys))
}

fn decode(s: &str) -> Result<String, ConnInfoError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ConnInfoError("a URL parameter is not valid UTF-8".into()))
}

/// `key = value` pairs, values bare or single-quoted with `\'` and `\\`
/// escapes (libpq's keyword/value format).
fn split_key_values(s: &str) -> Result<(String, SslKeys), ConnInfoError> {
    let mut keys = SslKeys::default();
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError(format!(
                "missing \"=\" after \"{key}\" in the connection string"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => break,
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConnInfoError(format!(
                            "unterminated quoted value of \"{key}\" in the connection string"
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        if !take(&mut keys, &key, value.clone()) {
            kept.push((key, value));
        }
    }
    let rest = kept
        .iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(" ");
    Ok((rest, keys))
}

/// libpq's rules: the keys as written → what the connection does.
pub fn resolve(keys: &SslKeys, defaults: &Defaults) -> Result<TlsOptions, ConnInfoError> {
    let explicit = match keys.sslmode.as_deref() {
        Some(m) => Some(SslMode::parse(m).ok_or_else(|| {
            ConnInfoError(format!(
                "invalid sslmode \"{m}\" (disable, allow, prefer, require, verify-ca or verify-full)"
            ))
        })?),
        None => None,
    };
    let root = match keys.sslrootcert.as_deref() {
        Some("system") => Some(RootCert::System),
        Some(path) => Some(RootCert::File(PathBuf::from(path))),
        None => None,
    };
    let mode = match (&root, explicit) {
        // libpq 16: system roots make verify-full the default and refuse
        // weaker modes (the public CAs vouch for names, not for servers).
        (Some(RootCert::System), None) => SslMode::VerifyFull,
        (Some(RootCert::System), Some(m)) if m != SslMode::VerifyFull => {
            return Err(ConnInfoError(format!(
                "sslmode \"{}\" may not be used with sslrootcert=system (use verify-full)",
                m.as_str()
            )))
        }
        (_, Some(m)) => m,
        (_, None) => SslMode::Prefer,
    };
    let root_or_default = || {
        root.clone()
            .or_else(|| defaults.existing("root.crt").map(RootCert::File))
    };
    let verification = match mode {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer => Verification::None,
        // libpq: "if a root CA file exists, sslmode=require behaves like
        // verify-ca".
        SslMode::Require => root_or_default().map_or(Verification::None, Verification::Chain),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let root = root_or_default().ok_or_else(|| {
                ConnInfoError(format!(
                    "sslmode={} needs trusted CA certificates: set sslrootcert to a PEM file \
                     (or to \"system\"), or put them in ~/.postgresql/root.crt",
                    mode.as_str()
                ))
            })?;
            if mode == SslMode::VerifyCa {
                Verification::Chain(root)
            } else {
                Verification::Full(root)
            }
        }
    };
    let client_cert = match (&keys.sslcert, &keys.sslkey) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (Some(c), None) => Some((
            PathBuf::from(c),
            defaults.existing("postgresql.key").ok_or_else(|| {
                ConnInfoError(
                    "sslcert is set but sslkey is not (the client certificate's private key)"
                        .into(),
                )
            })?,
        )),
        (None, Some(_)) => {
            return Err(ConnInfoError(
                "sslkey is set but sslcert is not (the client certificate)".into(),
            ))
        }
        (None, None) => defaults
            .existing("postgresql.crt")
            .zip(defaults.existing("postgresql.key")),
    };
    Ok(TlsOptions {
        mode,
        verification,
        client_cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_defaults() -> Defaults {
        Defaults { dir: None }
    }

    #[test]
    fn url_ssl_keys_are_taken_out_and_the_rest_kept() {
        let (rest, keys) = split_ssl_keys(
            "postgres://u:p%40ss@db.example:5433/app?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.crt",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.example:5433/app?application_name=x"
        );
        assert_eq!(keys.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(keys.sslrootcert.as_deref(), Some("/tmp/ca.crt"));
        let (rest, _) = split_ssl_keys("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://h/db");
    }

    #[test]
    fn key_value_strings_keep_quotes_and_escapes() {
        let (rest, keys) = split_ssl_keys(
            "host=localhost password='it\\'s a secret' sslmode = verify-ca sslcert='/a b/c.crt' dbname=app",
        )
        .unwrap();
        assert_eq!(keys.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(keys.sslcert.as_deref(), Some("/a b/c.crt"));
        assert_eq!(
            rest,
            "host='localhost' password='it\\'s a secret' dbname='app'"
        );
        let parsed: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"it's a secret"[..]));
    }

    #[test]
    fn errors_never_echo_the_string() {
        let e = split_ssl_keys("host=h password='unterminated").unwrap_err();
        assert!(!e.0.contains("unterminated'"), "{e}");
        assert!(e.0.contains("password"));
        let keys = SslKeys {
            sslmode: Some("verify".into()),
            ..Default::default()
        };
        let e = resolve(&keys, &no_defaults()).unwrap_err();
        assert!(e.0.contains("invalid sslmode \"verify\""), "{e}");
    }

    fn with(mode: Option<&str>, root: Option<&str>) -> SslKeys {
        SslKeys {
            sslmode: mode.map(str::to_string),
            sslrootcert: root.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn libpq_rules() {
        let d = no_defaults();
        let r = |m, root| resolve(&with(m, root), &d);
        assert_eq!(r(None, None).unwrap().mode, SslMode::Prefer);
        assert_eq!(r(None, None).unwrap().verification, Verification::None);
        assert_eq!(
            r(Some("require"), None).unwrap().verification,
            Verification::None
        );
        // require with a root certificate is verify-ca.
        assert_eq!(
            r(Some("require"), Some("/ca.crt")).unwrap().verification,
            Verification::Chain(RootCert::File("/ca.crt".into()))
        );
        assert_eq!(
            r(Some("verify-full"), Some("/ca.crt"))
                .unwrap()
                .verification,
            Verification::Full(RootCert::File("/ca.crt".into()))
        );
        assert!(r(Some("verify-ca"), None)
            .unwrap_err()
            .0
            .contains("sslrootcert"));
        // system roots: verify-full by default, weaker modes refused.
        let sys = r(None, Some("system")).unwrap();
        assert_eq!(sys.mode, SslMode::VerifyFull);
        assert_eq!(sys.verification, Verification::Full(RootCert::System));
        assert!(r(Some("require"), Some("system")).is_err());
    }

    #[test]
    fn default_files_in_the_home_directory() {
        let dir = std::env::temp_dir().join(format!("ferry-pgconn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["root.crt", "postgresql.crt", "postgresql.key"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let d = Defaults {
            dir: Some(dir.clone()),
        };
        let t = resolve(&with(Some("require"), None), &d).unwrap();
        assert_eq!(
            t.verification,
            Verification::Chain(RootCert::File(dir.join("root.crt")))
        );
        assert_eq!(
            t.client_cert,
            Some((dir.join("postgresql.crt"), dir.join("postgresql.key")))
        );
        // prefer never verifies, even with a root file present.
        let t = resolve(&with(None, None), &d).unwrap();
        assert_eq!(t.verification, Verification::None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_keys_override_the_string() {
        let from_url = with(Some("prefer"), Some("/a.crt"));
        let from_config = with(Some("verify-full"), None);
        let merged = from_url.overridden_by(&from_config);
        assert_eq!(merged.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(merged.sslrootcert.as_deref(), Some("/a.crt"));
    }
}
