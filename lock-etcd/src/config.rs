//! Connection settings: endpoints, namespace, credentials, TLS, timeouts.

use std::fmt;
use std::time::Duration;

use lock_core::url::{ConnectionUrl, redact};
use lock_core::{StoreError, StoreErrorKind};

/// The namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "dlock/";

/// The default [`EtcdConfig::lease_slack`].
const DEFAULT_LEASE_SLACK: Duration = Duration::ZERO;
const DEFAULT_PORT: u16 = 2379;

/// How an [`EtcdStore`](crate::EtcdStore) reaches etcd: endpoints, the key
/// namespace, optional user and password, optional TLS, timeouts.
///
/// Build one with [`EtcdConfig::new`] or parse a URL with
/// [`EtcdConfig::from_url`]. `Debug` never shows the password (nor any
/// other secret of the URL, which it shows redacted through
/// [`lock_core::url`]).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lock_etcd::EtcdConfig;
///
/// let config = EtcdConfig::new(["10.0.0.1:2379", "10.0.0.2:2379"])
///     .namespace("billing/locks/")
///     .user("locker", "s3cret")
///     .request_timeout(Duration::from_secs(2));
/// assert_eq!(config.endpoints().len(), 2);
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// let parsed = EtcdConfig::from_url("etcd://locker:s3cret@10.0.0.1:2379,10.0.0.2:2379/billing/locks/")?;
/// assert_eq!(parsed.namespace_str(), "billing/locks/");
/// # Ok::<(), lock_core::StoreError>(())
/// ```
#[derive(Clone)]
pub struct EtcdConfig {
    pub(crate) endpoints: Vec<String>,
    pub(crate) namespace: String,
    pub(crate) user: Option<(String, Secret)>,
    pub(crate) tls: Option<EtcdTls>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) min_ttl: Option<Duration>,
    pub(crate) lease_slack: Duration,
    /// The URL the settings were read from, if any: shown redacted.
    pub(crate) url: Option<ConnectionUrl>,
}

impl EtcdConfig {
    /// Settings for the given endpoints (`host:port`, or `http://host:port`;
    /// the port defaults to 2379), with namespace [`DEFAULT_NAMESPACE`], no
    /// credentials, no TLS, a 5 s connect timeout and a 5 s request timeout.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            endpoints: endpoints
                .into_iter()
                .map(|endpoint| normalize_endpoint(endpoint.as_ref()))
                .filter(|endpoint| !endpoint.is_empty())
                .collect(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            user: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            min_ttl: None,
            lease_slack: DEFAULT_LEASE_SLACK,
            url: None,
        }
    }

    /// Parses a URL of the form
    ///
    /// ```text
    /// etcd://[user[:password]@]host[:port][,host[:port]...][/namespace][?option=value&...]
    /// etcds://...   (the same, over TLS)
    /// ```
    ///
    /// The URL is read by [`ConnectionUrl`]: user, password and namespace
    /// are percent-decoded, option values as in forms (`+` is a space).
    /// The namespace is the path without its leading `/` (default
    /// [`DEFAULT_NAMESPACE`]).
    /// Options: `tls=true|false`, `ca=PATH` (CA certificate, PEM),
    /// `cert=PATH` and `key=PATH` (client identity, PEM), `domain=NAME`
    /// (server name to verify), `connect_timeout_ms=N`,
    /// `request_timeout_ms=N`, `min_ttl_s=N` (skip probing the server's
    /// minimum lease ttl), `lease_slack_s=N` (see
    /// [`lease_slack`](Self::lease_slack)).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] of kind [`Invalid`](StoreErrorKind::Invalid) naming
    /// what is wrong (never repeating the password: a URL in the message is
    /// redacted), or when a certificate file cannot be read.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let parsed = match ConnectionUrl::parse(url) {
            Ok(parsed) => parsed,
            // An etcd URL with a bad host or encoding: say what is wrong.
            Err(error) if has_etcd_scheme(url) => {
                return Err(invalid(format!(
                    "invalid etcd URL {}: {}",
                    redact(url),
                    error.message()
                )));
            }
            Err(_) => return Err(not_etcd()),
        };
        let tls_scheme = match parsed.scheme() {
            "etcd" => false,
            "etcds" => true,
            _ => return Err(not_etcd()),
        };
        if !parsed.is_hierarchical() {
            return Err(not_etcd());
        }
        let endpoints: Vec<String> = parsed
            .hosts()
            .iter()
            .map(|host| normalize_endpoint(host))
            .collect();
        if endpoints.is_empty() {
            return Err(invalid("the etcd URL names no host"));
        }
        let mut config = Self::new(endpoints);
        match (parsed.username(), parsed.password()) {
            (Some(user), password) => config = config.user(user, password.unwrap_or("")),
            (None, Some(_)) => {
                return Err(invalid("the etcd URL has credentials without a user name"));
            }
            (None, None) => {}
        }
        let namespace = parsed.path().strip_prefix('/').unwrap_or(parsed.path());
        if !namespace.is_empty() {
            config = config.namespace(namespace);
        }
        let mut tls = tls_scheme;
        let mut tls_settings = EtcdTls::new();
        for (name, value) in parsed.query() {
            let name = name.as_str();
            match name {
                "tls" => tls = parse_bool(name, value)?,
                "ca" => {
                    tls_settings = tls_settings.ca_certificate_pem(read_file(name, value)?);
                    tls = true;
                }
                "cert" | "key" => {
                    // Read both once both are known, below.
                    tls = true;
                }
                "domain" => {
                    tls_settings = tls_settings.domain_name(value.clone());
                    tls = true;
                }
                "connect_timeout_ms" => {
                    config =
                        config.connect_timeout(Duration::from_millis(parse_number(name, value)?));
                }
                "request_timeout_ms" => {
                    config =
                        config.request_timeout(Duration::from_millis(parse_number(name, value)?));
                }
                "min_ttl_s" => {
                    config = config.min_ttl(Duration::from_secs(parse_number(name, value)?));
                }
                "lease_slack_s" => {
                    config = config.lease_slack(Duration::from_secs(parse_number(name, value)?));
                }
                other => {
                    return Err(invalid(format!(
                        "unknown etcd URL option {other:?}; known: tls, ca, cert, key, domain, connect_timeout_ms, request_timeout_ms, min_ttl_s, lease_slack_s"
                    )));
                }
            }
        }
        match (parsed.query_value("cert"), parsed.query_value("key")) {
            (Some(cert), Some(key)) => {
                tls_settings = tls_settings
                    .client_identity_pem(read_file("cert", cert)?, read_file("key", key)?);
            }
            (None, None) => {}
            _ => return Err(invalid("a client identity needs both cert= and key=")),
        }
        if tls {
            config = config.tls(tls_settings);
        }
        config.url = Some(parsed);
        Ok(config)
    }

    /// The key namespace: every etcd key the store writes starts with it.
    /// Default [`DEFAULT_NAMESPACE`]; an empty namespace is allowed.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Authenticates as `user` with `password`. The password is kept out of
    /// `Debug`, `Display`, errors and logs.
    #[must_use]
    pub fn user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), Secret(password.into())));
        self
    }

    /// Connects over TLS with these settings (needs the crate's `tls`
    /// feature).
    #[must_use]
    pub fn tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The bound on establishing a connection. Default 5 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The bound on each request the store makes on its own (keep-alives,
    /// lease grants, clean-ups, watch set-up). The locker bounds every store
    /// call with its own `store_timeout` as well. Default 5 s.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Declares the server's minimum lease ttl instead of probing it when
    /// connecting (the probe grants a 1 s lease and reads what the server
    /// made of it).
    #[must_use]
    pub fn min_ttl(mut self, min_ttl: Duration) -> Self {
        self.min_ttl = Some(min_ttl);
        self
    }

    /// How much longer than the locks' ttl the store's etcd leases are
    /// granted, in whole seconds (rounded up). Default 0: a lock whose
    /// holder died is free within its ttl (plus etcd's expiry lag of up to
    /// about half a second), and every acquisition sends a keep-alive of
    /// its lease alongside its transaction (no extra round trip of wait,
    /// one more request; concurrent acquisitions share one). With a slack
    /// of 1 s, an acquisition within a second of the lease's last keep-alive
    /// sends none, and a dead holder's lock stays taken up to a second
    /// longer. See the crate docs, *Time to live*.
    #[must_use]
    pub fn lease_slack(mut self, slack: Duration) -> Self {
        self.lease_slack =
            Duration::from_secs(slack.as_secs() + u64::from(slack.subsec_nanos() > 0));
        self
    }

    /// The endpoints, as `http://host:port` (or `https://` with TLS).
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.endpoints
            .iter()
            .map(|endpoint| format!("{scheme}://{endpoint}"))
            .collect()
    }

    /// The key namespace.
    pub fn namespace_str(&self) -> &str {
        &self.namespace
    }

    /// The user name, when credentials are set.
    pub fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|(user, _)| user.as_str())
    }

    /// The URL these settings were read from, secrets hidden (`None` for
    /// settings built in code).
    pub(crate) fn redacted_url(&self) -> Option<String> {
        self.url.as_ref().map(ConnectionUrl::redacted)
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("url", &self.redacted_url())
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("user", &self.user_name())
            .field("password", &self.user.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("min_ttl", &self.min_ttl)
            .field("lease_slack", &self.lease_slack)
            .finish()
    }
}

/// TLS settings: the CA to trust, an optional client identity, and the
/// server name to verify. Connecting with them needs the crate's `tls`
/// feature.
#[derive(Clone, Default)]
pub struct EtcdTls {
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) identity_pem: Option<(Vec<u8>, Secret<Vec<u8>>)>,
    pub(crate) domain: Option<String>,
}

impl EtcdTls {
    /// No CA, no identity, the endpoint's host as server name.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificate(s) in `pem`.
    #[must_use]
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents the client certificate `cert_pem` with its private key
    /// `key_pem` (kept out of `Debug`).
    #[must_use]
    pub fn client_identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity_pem = Some((cert_pem.into(), Secret(key_pem.into())));
        self
    }

    /// Verifies the server's certificate against this name instead of the
    /// endpoint's host.
    #[must_use]
    pub fn domain_name(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity_pem.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

/// A value that never appears in `Debug` output.
#[derive(Clone, Default)]
pub(crate) struct Secret<T = String>(pub(crate) T);

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Invalid, message)
}

fn not_etcd() -> StoreError {
    invalid("an etcd URL starts with etcd:// or etcds:// (for TLS)")
}

/// Whether `url` starts with `etcd://` or `etcds://`, in any case.
fn has_etcd_scheme(url: &str) -> bool {
    ["etcd://", "etcds://"].iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
    })
}

/// `host:port` from `host`, `host:port`, `http://host:port` or
/// `https://host:port/`.
fn normalize_endpoint(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    let endpoint = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    if endpoint.is_empty() {
        return String::new();
    }
    let has_port = match endpoint.rfind(']') {
        // [v6]:port
        Some(close) => endpoint[close..].contains(':'),
        None => endpoint.contains(':'),
    };
    if has_port {
        endpoint.to_owned()
    } else {
        format!("{endpoint}:{DEFAULT_PORT}")
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool, StoreError> {
    match value {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(format!("option {name} takes true or false"))),
    }
}

fn parse_number(name: &str, value: &str) -> Result<u64, StoreError> {
    value
        .parse()
        .map_err(|_| invalid(format!("option {name} takes a whole number")))
}

fn read_file(name: &str, path: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|error| {
        invalid(format!(
            "cannot read the file of option {name} ({path:?}): {error}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_credentials_namespace_and_options() {
        let config = EtcdConfig::from_url(
            "etcd://us%40er:p%3Ass@127.0.0.1:1,[::1]:2,example:3/app%2Flocks/?request_timeout_ms=250&min_ttl_s=2&lease_slack_s=1",
        )
        .unwrap();
        assert_eq!(config.endpoints, ["127.0.0.1:1", "[::1]:2", "example:3"]);
        assert_eq!(config.namespace, "app/locks/");
        assert_eq!(config.user_name(), Some("us@er"));
        assert_eq!(
            config.user.as_ref().map(|(_, p)| p.0.as_str()),
            Some("p:ss")
        );
        assert_eq!(config.request_timeout, Duration::from_millis(250));
        assert_eq!(config.min_ttl, Some(Duration::from_secs(2)));
        assert_eq!(config.lease_slack, Duration::from_secs(1));
        assert!(config.tls.is_none());
        assert_eq!(config.endpoints()[1], "http://[::1]:2");
    }

    #[test]
    fn defaults_port_and_namespace() {
        let config = EtcdConfig::from_url("etcd://host").unwrap();
        assert_eq!(config.endpoints, ["host:2379"]);
        assert_eq!(config.namespace, DEFAULT_NAMESPACE);
        let config = EtcdConfig::from_url("etcds://host:1/").unwrap();
        assert!(config.tls.is_some());
        assert_eq!(config.endpoints(), ["https://host:1"]);
        assert_eq!(EtcdConfig::new(["http://a:1/"]).endpoints, ["a:1"]);
    }

    #[test]
    fn keeps_the_other_url_forms() {
        let config = EtcdConfig::from_url("etcd://u@h/a+b%20c/").unwrap();
        assert_eq!(config.user_name(), Some("u"));
        assert_eq!(config.user.as_ref().map(|(_, p)| p.0.as_str()), Some(""));
        assert_eq!(config.namespace, "a+b c/");
        let config = EtcdConfig::from_url("etcds://h?tls=false&connect_timeout_ms=7").unwrap();
        assert!(config.tls.is_none());
        assert_eq!(config.connect_timeout, Duration::from_millis(7));
        let config = EtcdConfig::from_url("etcd://h?domain=example.org").unwrap();
        assert!(config.tls.is_some());
        let error = EtcdConfig::from_url("etcd://h?cert=/a.pem").unwrap_err();
        assert!(error.message().contains("both cert= and key="), "{error}");
        let error = EtcdConfig::from_url("etcd:h:1").unwrap_err();
        assert!(error.message().contains("starts with etcd://"), "{error}");
    }

    #[test]
    fn errors_never_repeat_the_password() {
        for url in [
            "redis://u:hunter2@h:1",
            "etcd://u:hunter2@h:1?bogus=1",
            "etcd://u:hunter2@h:1?tls=maybe",
            "etcd://:hunter2@h:1",
            "etcd://u:hunter2@",
        ] {
            let error = EtcdConfig::from_url(url).unwrap_err();
            assert_eq!(error.kind(), StoreErrorKind::Invalid);
            assert!(!format!("{error} {error:?}").contains("hunter2"), "{error}");
        }
        let config = EtcdConfig::from_url("etcd://u:hunter2@h:1").unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
