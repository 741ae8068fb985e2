//! Connection URLs: the single-node and Cluster forms, and their redacted
//! display.

use lock_core::{StoreError, StoreErrorKind};

/// Where a store connects, parsed from its URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// One server (or a server behind a proxy): `redis://`, `rediss://`,
    /// `redis+unix://`, `unix://`.
    Single { url: String, tls: bool },
    /// A Redis Cluster, from its seed nodes, each as a single-node URL.
    Cluster { nodes: Vec<String>, tls: bool },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single { url, tls } => f
                .debug_struct("Single")
                .field("url", &redact(url))
                .field("tls", tls)
                .finish(),
            Self::Cluster { nodes, tls } => f
                .debug_struct("Cluster")
                .field(
                    "nodes",
                    &nodes.iter().map(|n| redact(n)).collect::<Vec<_>>(),
                )
                .field("tls", tls)
                .finish(),
        }
    }
}

impl Target {
    /// Parses `url`.
    ///
    /// `redis+cluster://[user:password@]host:port[,host:port...][/?query]`
    /// (and `rediss+cluster://` for TLS) names a Cluster by some of its
    /// nodes; the credentials and the query apply to every node. Every
    /// other URL goes to the `redis` crate as a single server.
    pub(crate) fn parse(url: &str) -> Result<Self, StoreError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            invalid(format!(
                "{} is not a URL (expected redis://, rediss:// or redis+cluster://)",
                redact(url)
            ))
        })?;
        let (node_scheme, cluster) = match scheme.to_ascii_lowercase().as_str() {
            "redis+cluster" => ("redis", true),
            "rediss+cluster" => ("rediss", true),
            "rediss" => ("rediss", false),
            _ => ("redis", false),
        };
        let tls = node_scheme == "rediss";
        if !cluster {
            return Ok(Self::Single {
                url: url.to_owned(),
                tls,
            });
        }
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(|host| format!("{node_scheme}://{userinfo}{host}{tail}"))
            .collect();
        if nodes.is_empty() {
            return Err(invalid(format!(
                "{} names no cluster node (expected redis+cluster://host:port,host:port)",
                redact(url)
            )));
        }
        Ok(Self::Cluster { nodes, tls })
    }

    #[cfg(test)]
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    pub(crate) fn is_tls(&self) -> bool {
        match self {
            Self::Single { tls, .. } | Self::Cluster { tls, .. } => *tls,
        }
    }
}

fn invalid(message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Invalid, message)
}

/// `url` with the password (or a lone user-info part, which Redis treats as
/// a password) replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL: it may be anything, including a secret.
        return "<not a URL>".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let tail = redact_query(tail);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let hosts = &authority[at + 1..];
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{scheme}://{user}@{hosts}{tail}")
        }
        None => format!("{scheme}://{authority}{tail}"),
    }
}

/// Hides the values of query parameters that may carry secrets.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _))
                if ["pass", "password", "token", "secret"]
                    .iter()
                    .any(|secret| name.eq_ignore_ascii_case(secret)) =>
            {
                format!("{name}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_urls_pass_through() {
        let target = Target::parse("redis://127.0.0.1:6379/2").unwrap();
        assert!(!target.is_cluster() && !target.is_tls());
        assert!(Target::parse("rediss://h:1").unwrap().is_tls());
    }

    #[test]
    fn cluster_urls_name_every_node_with_the_credentials() {
        let target = Target::parse("rediss+cluster://u:p%40ss@a:1, b:2,c:3/?protocol=3").unwrap();
        assert!(target.is_tls());
        match target {
            Target::Cluster { nodes, .. } => assert_eq!(
                nodes,
                [
                    "rediss://u:p%40ss@a:1/?protocol=3",
                    "rediss://u:p%40ss@b:2/?protocol=3",
                    "rediss://u:p%40ss@c:3/?protocol=3"
                ]
            ),
            Target::Single { .. } => panic!("not a cluster"),
        }
        assert!(Target::parse("redis+cluster:///").is_err());
        assert!(Target::parse("no-scheme").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://u:hunter2@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:hunter2@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://hunter2@h:1"), "redis://***@h:1");
        assert_eq!(
            redact("redis+cluster://u:p@a:1,b:2/?password=x&protocol=3"),
            "redis+cluster://u:***@a:1,b:2/?password=***&protocol=3"
        );
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert!(!redact("hunter2").contains("hunter2"));
        let error = Target::parse("hunter2@nowhere").unwrap_err();
        assert!(!error.to_string().contains("hunter2"));
    }
}
