//! Connection URLs: the parts every backend's URL shares, and the one place
//! that knows where secrets hide in them.
//!
//! Backends, the `dlock` facade and program, and the test harness all read
//! URLs through [`ConnectionUrl`] and print them through
//! [`ConnectionUrl::redacted`] or [`redact`], so a password reaches no
//! error, log line or `Debug` output, wherever the scheme puts it:
//!
//! - the user-info part: `postgres://app:S3CRET@db/x`,
//!   `etcd://root:S3CRET@h:2379`, and for Redis also a lone
//!   `redis://S3CRET@h` (Redis reads a lone user-info as the password);
//! - query parameters that carry secrets: `password=`, `sslpassword=`,
//!   `pass=`, `secret=`, `token=`, and any other whose name contains
//!   `password`, `secret`, `token` or `key`.
//!
//! # Examples
//!
//! ```
//! use lock_core::url::{ConnectionUrl, redact};
//!
//! let url = ConnectionUrl::parse("etcd://root:S3CRET@10.0.0.1:2379,10.0.0.2:2379/app/?x=1")?;
//! assert_eq!(url.scheme(), "etcd");
//! assert_eq!(url.hosts(), ["10.0.0.1:2379", "10.0.0.2:2379"]);
//! assert_eq!(url.password(), Some("S3CRET"));
//! assert_eq!(url.to_string(), "etcd://root:***@10.0.0.1:2379,10.0.0.2:2379/app/?x=1");
//!
//! assert_eq!(
//!     redact("postgres://app@db/x?password=S3CRET&sslmode=bogus"),
//!     "postgres://app@db/x?password=***&sslmode=bogus"
//! );
//! # Ok::<(), lock_core::StoreError>(())
//! ```

use std::fmt;

use crate::{StoreError, StoreErrorKind};

/// What replaces a secret.
const HIDDEN: &str = "***";

/// A parsed connection URL: `scheme://[user[:password]@]host[:port][,host[:port]...][/path][?query]`,
/// or `scheme:opaque[?query]` (`sqlite:/var/lib/locks.db`, `memory:`).
///
/// Several comma-separated hosts are allowed (etcd, Redis Cluster). User,
/// password, path and query are percent-decoded; hosts are kept as written.
/// `Display` and `Debug` show the [redacted](ConnectionUrl::redacted) form.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionUrl {
    original: String,
    scheme: String,
    /// `user[:password]` as written, without the `@`.
    userinfo: Option<String>,
    username: String,
    password: Option<String>,
    hosts: Vec<String>,
    /// Everything after the authority (or after `scheme:` when opaque), as
    /// written.
    tail: String,
    path: String,
    query: Vec<(String, String)>,
    hierarchical: bool,
}

impl ConnectionUrl {
    /// Parses `url`.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] when `url` has no scheme, a host is not
    /// `host[:port]`, or the user, password or path is not valid
    /// percent-encoded UTF-8. The message never repeats a secret.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let (scheme, rest) = split_scheme(url).ok_or_else(|| {
            invalid("not a URL: no scheme (expected e.g. sqlite:PATH or postgres://host/db)")
        })?;
        let scheme = scheme.to_ascii_lowercase();
        let Some(after_slashes) = rest.strip_prefix("//") else {
            let (path, query) = split_query(rest);
            return Ok(Self {
                original: url.to_owned(),
                path: decode(path, "path")?,
                query: decode_query(query),
                scheme,
                userinfo: None,
                username: String::new(),
                password: None,
                hosts: Vec::new(),
                tail: rest.to_owned(),
                hierarchical: false,
            });
        };
        let authority_end = after_slashes
            .find(['/', '?', '#'])
            .unwrap_or(after_slashes.len());
        let (authority, tail) = after_slashes.split_at(authority_end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let hosts: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(str::to_owned)
            .collect();
        for (index, host) in hosts.iter().enumerate() {
            check_host(&scheme, host)
                .map_err(|reason| invalid(format!("host {} of the URL {reason}", index + 1)))?;
        }
        let (username, password) = match userinfo {
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, password)) => (
                    decode(user, "user name")?,
                    Some(decode(password, "password")?),
                ),
                None => (decode(userinfo, "user name")?, None),
            },
            None => (String::new(), None),
        };
        let (path, query) = split_query(tail);
        Ok(Self {
            original: url.to_owned(),
            userinfo: userinfo.map(str::to_owned),
            username,
            password,
            hosts,
            path: decode(path, "path")?,
            query: decode_query(query),
            tail: tail.to_owned(),
            scheme,
            hierarchical: true,
        })
    }

    /// The scheme, in lower case.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The user name, when one is given.
    pub fn username(&self) -> Option<&str> {
        (!self.username.is_empty()).then_some(self.username.as_str())
    }

    /// The password, when one is given. Keep it out of messages.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The hosts (`host` or `host:port`, IPv6 in brackets), as written.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The path, percent-decoded: `/db` of `postgres://h/db`, `/var/x.db` of
    /// `sqlite:/var/x.db`; empty when there is none.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query parameters, percent-decoded, in order.
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }

    /// The value of the first query parameter called `name`.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Whether the URL has the `scheme://authority` form (rather than
    /// `scheme:opaque`).
    pub fn is_hierarchical(&self) -> bool {
        self.hierarchical
    }

    /// The URL as given, secrets included: for handing to a driver, never
    /// for printing.
    pub fn expose(&self) -> &str {
        &self.original
    }

    /// Whether the URL has a user-info part (`...@host`), even an empty one.
    pub fn has_userinfo(&self) -> bool {
        self.userinfo.is_some()
    }

    /// The URL as given (secrets included) with its hosts replaced by
    /// `hosts`: how a test points a client at a proxy in front of its
    /// server.
    pub fn with_hosts<S: AsRef<str>>(&self, hosts: &[S]) -> String {
        self.with_scheme_and_hosts(&self.scheme, hosts)
    }

    /// The URL as given (secrets included) with its scheme and hosts
    /// replaced: how a cluster URL becomes one URL per node
    /// (`redis+cluster://a,b` to `redis://a` and `redis://b`).
    pub fn with_scheme_and_hosts<S: AsRef<str>>(&self, scheme: &str, hosts: &[S]) -> String {
        let hosts: Vec<&str> = hosts.iter().map(AsRef::as_ref).collect();
        let userinfo = self
            .userinfo
            .as_deref()
            .map(|userinfo| format!("{userinfo}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}{}{}", hosts.join(","), self.tail)
    }

    /// The URL as given (secrets included) with its path replaced by `path`
    /// (which should start with `/`), keeping the query.
    pub fn with_path(&self, path: &str) -> String {
        let rest_start = self.tail.find(['?', '#']).unwrap_or(self.tail.len());
        let rest = &self.tail[rest_start..];
        if !self.hierarchical {
            return format!("{}:{path}{rest}", self.scheme);
        }
        let userinfo = self
            .userinfo
            .as_deref()
            .map(|userinfo| format!("{userinfo}@"))
            .unwrap_or_default();
        format!(
            "{}://{userinfo}{}{path}{rest}",
            self.scheme,
            self.hosts.join(",")
        )
    }

    /// The URL with every secret replaced by `***`: fit for errors, logs
    /// and `Debug` output.
    pub fn redacted(&self) -> String {
        if !self.hierarchical {
            return format!("{}:{}", self.scheme, redact_opaque(&self.tail));
        }
        let userinfo = match &self.userinfo {
            None => String::new(),
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{HIDDEN}@"),
                None if lone_userinfo_is_password(&self.scheme) => format!("{HIDDEN}@"),
                None => format!("{userinfo}@"),
            },
        };
        format!(
            "{}://{userinfo}{}{}",
            self.scheme,
            self.hosts.join(","),
            redact_tail(&self.tail)
        )
    }
}

impl fmt::Display for ConnectionUrl {
    /// The [redacted](ConnectionUrl::redacted) URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnectionUrl")
            .field(&self.redacted())
            .finish()
    }
}

/// `url` with every secret replaced by `***`, whether or not it parses: a
/// string without a scheme (it may be anything, a password included) gives
/// `<not a URL>`.
pub fn redact(url: &str) -> String {
    if let Ok(parsed) = ConnectionUrl::parse(url) {
        return parsed.redacted();
    }
    let Some((scheme, rest)) = split_scheme(url) else {
        return "<not a URL>".to_owned();
    };
    let Some(after_slashes) = rest.strip_prefix("//") else {
        return format!("{scheme}:{}", redact_opaque(rest));
    };
    // Unparsable hosts or encodings: hide the whole user-info part.
    let authority_end = after_slashes
        .find(['/', '?', '#'])
        .unwrap_or(after_slashes.len());
    let (authority, tail) = after_slashes.split_at(authority_end);
    let hosts = match authority.rfind('@') {
        Some(at) => format!("{HIDDEN}@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    format!("{scheme}://{hosts}{}", redact_tail(tail))
}

/// Whether a query parameter called `name` may carry a secret.
pub fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "passwd", "pwd", "auth"].contains(&name.as_str())
        || ["password", "secret", "token", "key"]
            .iter()
            .any(|part| name.contains(part))
}

fn lone_userinfo_is_password(scheme: &str) -> bool {
    scheme.starts_with("redis") || scheme == "unix"
}

/// `scheme` and the rest, when `url` starts with a valid scheme and `:`.
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

/// The path and the query (without `?` and without a fragment).
fn split_query(tail: &str) -> (&str, &str) {
    let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
    tail.split_once('?').unwrap_or((tail, ""))
}

/// The part after `scheme:` of a URL without `//`: a `user:secret@`
/// written there (`redis:u:pw@h`) is hidden along with secret query
/// parameters.
fn redact_opaque(rest: &str) -> String {
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    match rest[..path_end].rfind('@') {
        Some(at) => format!("{HIDDEN}{}", redact_tail(&rest[at..])),
        None => redact_tail(rest),
    }
}

/// `tail` (path, query, fragment) with the values of secret query
/// parameters hidden.
fn redact_tail(tail: &str) -> String {
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (tail, None),
    };
    let mut out = match before_fragment.split_once('?') {
        None => before_fragment.to_owned(),
        Some((path, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| {
                    let name = pair.split_once('=').map_or(pair, |(name, _)| name);
                    let decoded = decode(name, "").unwrap_or_else(|_| name.to_owned());
                    if pair.contains('=') && is_secret_parameter(&decoded) {
                        format!("{name}={HIDDEN}")
                    } else {
                        pair.to_owned()
                    }
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
    };
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn check_host(scheme: &str, host: &str) -> Result<(), &'static str> {
    if host.contains(['@', '/', '?', '#', ' ']) {
        return Err("is not host[:port]");
    }
    let parsed = ::url::Url::parse(&format!("{scheme}://{host}/"))
        .map_err(|_| "is not host[:port] (IPv6 addresses go in brackets)")?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host name");
    }
    Ok(())
}

fn decode(text: &str, what: &str) -> Result<String, StoreError> {
    percent_decode(text).ok_or_else(|| {
        invalid(format!(
            "the URL's {what} is not valid percent-encoded UTF-8"
        ))
    })
}

/// Percent-decodes `text` (not `+`: that is only a space in forms).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The query's `name=value` pairs, percent-decoded like the rest of the
/// URL (`+` stays `+`: file paths in options keep it); a part that does
/// not decode is kept as written.
fn decode_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = |text: &str| percent_decode(text).unwrap_or_else(|| text.to_owned());
            (decoded(name), decoded(value))
        })
        .collect()
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Invalid, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "S3CRET";

    #[test]
    fn parses_every_backend_form() {
        let url =
            ConnectionUrl::parse("postgres://app:pa%40ss@db.internal:5432/app?sslmode=require")
                .unwrap();
        assert_eq!(url.scheme(), "postgres");
        assert_eq!(url.username(), Some("app"));
        assert_eq!(url.password(), Some("pa@ss"));
        assert_eq!(url.hosts(), ["db.internal:5432"]);
        assert_eq!(url.path(), "/app");
        assert_eq!(url.query_value("sslmode"), Some("require"));

        let url = ConnectionUrl::parse("redis+cluster://a:1, b:2,[::1]:3/?protocol=3").unwrap();
        assert_eq!(url.hosts(), ["a:1", "b:2", "[::1]:3"]);
        assert_eq!(url.username(), None);

        let url = ConnectionUrl::parse("sqlite:/var/lib/a%20b.db?mode=rw").unwrap();
        assert!(!url.is_hierarchical());
        assert_eq!(url.path(), "/var/lib/a b.db");
        assert_eq!(url.query_value("mode"), Some("rw"));

        let url = ConnectionUrl::parse("redis+unix:///run/redis.sock").unwrap();
        assert!(url.hosts().is_empty());
        assert_eq!(url.path(), "/run/redis.sock");

        assert_eq!(ConnectionUrl::parse("MEMORY:").unwrap().scheme(), "memory");
    }

    #[test]
    fn bad_urls_are_refused_without_their_secrets() {
        for url in [
            "S3CRET",
            "postgres://u:S3CRET@h st:1/x",
            "etcd://u:S3CRET@a:1,b:notaport",
            "postgres://u:S3CRET%zz@h/x",
        ] {
            let error = ConnectionUrl::parse(url).unwrap_err();
            assert_eq!(error.kind(), StoreErrorKind::Invalid);
            assert!(!error.to_string().contains(SECRET), "{error}");
            assert!(!format!("{error:?}").contains(SECRET), "{error:?}");
            assert!(!redact(url).contains(SECRET), "{}", redact(url));
        }
    }

    #[test]
    fn every_place_of_a_secret_is_hidden() {
        let cases = [
            (
                "postgres://app:S3CRET@db:5432/x",
                "postgres://app:***@db:5432/x",
            ),
            (
                "postgres://app@db:5432/x?password=S3CRET&sslmode=bogus",
                "postgres://app@db:5432/x?password=***&sslmode=bogus",
            ),
            (
                "postgresql://app@db/x?sslpassword=S3CRET",
                "postgresql://app@db/x?sslpassword=***",
            ),
            ("redis://:S3CRET@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://S3CRET@h:6379", "redis://***@h:6379"),
            ("rediss://user:S3CRET@h", "rediss://user:***@h"),
            (
                "redis+cluster://u:S3CRET@a:1,b:2/?password=S3CRET&protocol=3",
                "redis+cluster://u:***@a:1,b:2/?password=***&protocol=3",
            ),
            (
                "etcd://root:S3CRET@a:2379,b:2379/ns/",
                "etcd://root:***@a:2379,b:2379/ns/",
            ),
            (
                "etcds://root:S3CRET@a/ns?token=S3CRET#f",
                "etcds://root:***@a/ns?token=***#f",
            ),
            ("sqlite:/x.db?key=S3CRET", "sqlite:/x.db?key=***"),
            (
                "dynamodb://locks?region=r&aws_secret_access_key=S3CRET",
                "dynamodb://locks?region=r&aws_secret_access_key=***",
            ),
            ("postgres://app@db/x", "postgres://app@db/x"),
        ];
        for (url, redacted) in cases {
            assert_eq!(redact(url), redacted, "{url}");
            if let Ok(parsed) = ConnectionUrl::parse(url) {
                assert_eq!(parsed.to_string(), redacted);
                assert!(!format!("{parsed:?}").contains(SECRET));
            }
        }
        assert_eq!(redact("redis:u:S3CRET@h"), "redis:***@h");
        assert_eq!(redact("sqlite:/a@b/x.db"), "sqlite:***@b/x.db");
        // Unparsable, but still redacted.
        assert_eq!(
            redact("postgres://u:S3CRET@h st/x?password=S3CRET"),
            "postgres://***@h st/x?password=***"
        );
    }

    #[test]
    fn hosts_can_be_replaced_keeping_the_rest() {
        let url = ConnectionUrl::parse("etcd://u:p%40@a:1,b:2/ns?x=1").unwrap();
        assert_eq!(
            url.with_hosts(&["127.0.0.1:9"]),
            "etcd://u:p%40@127.0.0.1:9/ns?x=1"
        );
    }
}
