//! Where a store connects: the single-server and Cluster URL forms, read
//! through [`lock_core::url::ConnectionUrl`] (which also redacts them).

use lock_core::url::{ConnectionUrl, redact};
use lock_core::{StoreError, StoreErrorKind};

/// Where a store connects, parsed from its URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// One server (or a server behind a proxy): `redis://`, `rediss://`,
    /// `redis+unix://`, `unix://`. The URL goes to the `redis` crate as
    /// given.
    Single { url: ConnectionUrl, tls: bool },
    /// A Redis Cluster, from its seed nodes, each as a single-node URL
    /// (secrets included: for the `redis` crate only).
    Cluster {
        url: ConnectionUrl,
        nodes: Vec<String>,
        tls: bool,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single { url, tls } => f
                .debug_struct("Single")
                .field("url", &url.redacted())
                .field("tls", tls)
                .finish(),
            Self::Cluster { nodes, tls, .. } => f
                .debug_struct("Cluster")
                .field(
                    "nodes",
                    &nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
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
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] for a string that is not a
    /// `scheme://...` URL, a host that is not `host[:port]`, bad
    /// percent-encoding, or a Cluster URL without nodes. The message shows
    /// the URL redacted.
    pub(crate) fn parse(url: &str) -> Result<Self, StoreError> {
        // Without `//`, whatever follows the scheme may be a secret (as in
        // `redis:u:pw@h`): never shown.
        let not_a_url =
            || invalid("not a URL (expected redis://, rediss:// or redis+cluster://)".to_owned());
        let parsed = match ConnectionUrl::parse(url) {
            Ok(parsed) if parsed.is_hierarchical() => parsed,
            Ok(_) => return Err(not_a_url()),
            // A scheme but a bad host or encoding: say what is wrong.
            Err(error) if url.contains("://") => {
                return Err(invalid(format!("{}: {}", redact_url(url), error.message())));
            }
            Err(_) => return Err(not_a_url()),
        };
        let (node_scheme, cluster) = match parsed.scheme() {
            "redis+cluster" => ("redis", true),
            "rediss+cluster" => ("rediss", true),
            "rediss" => ("rediss", false),
            _ => ("redis", false),
        };
        let tls = node_scheme == "rediss";
        if !cluster {
            return Ok(Self::Single { url: parsed, tls });
        }
        let nodes: Vec<String> = parsed
            .hosts()
            .iter()
            .map(|host| {
                // The URL with this one host, under the single-node scheme.
                let node = parsed.with_hosts(&[host]);
                format!("{node_scheme}{}", &node[parsed.scheme().len()..])
            })
            .collect();
        if nodes.is_empty() {
            return Err(invalid(format!(
                "{} names no cluster node (expected redis+cluster://host:port,host:port)",
                parsed.redacted()
            )));
        }
        Ok(Self::Cluster {
            url: parsed,
            nodes,
            tls,
        })
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

    /// The URL with its secrets hidden: for errors, logs and `Debug`.
    pub(crate) fn redacted(&self) -> String {
        match self {
            Self::Single { url, .. } | Self::Cluster { url, .. } => url.redacted(),
        }
    }
}

/// [`redact`], except that a string without `//` after its scheme shows
/// as `<not a URL>`: `redact` shows the part after `scheme:` of such a
/// string, which holds the password when the `//` was forgotten
/// (`redis:user:password@host`).
pub(crate) fn redact_url(url: &str) -> String {
    let hierarchical = url
        .split_once(':')
        .is_some_and(|(_, rest)| rest.starts_with("//"));
    if hierarchical {
        redact(url)
    } else {
        "<not a URL>".to_owned()
    }
}

fn invalid(message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Invalid, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_urls_pass_through() {
        let target = Target::parse("redis://127.0.0.1:6379/2").unwrap();
        assert!(!target.is_cluster() && !target.is_tls());
        match &target {
            Target::Single { url, .. } => assert_eq!(url.expose(), "redis://127.0.0.1:6379/2"),
            Target::Cluster { .. } => panic!("not one server"),
        }
        assert!(Target::parse("rediss://h:1").unwrap().is_tls());
        for url in [
            "redis+unix:///run/redis.sock",
            "unix:///run/redis.sock?db=1",
            "redis://localhost",
        ] {
            assert!(!Target::parse(url).unwrap().is_cluster(), "{url}");
        }
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
        let target = Target::parse("REDIS+CLUSTER://a:1").unwrap();
        match target {
            Target::Cluster { nodes, .. } => assert_eq!(nodes, ["redis://a:1"]),
            Target::Single { .. } => panic!("not a cluster"),
        }
        assert!(Target::parse("redis+cluster:///").is_err());
        assert!(Target::parse("no-scheme").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        let cases = [
            ("redis://u:hunter2@h:1/0", "redis://u:***@h:1/0"),
            ("redis://:hunter2@h:1", "redis://:***@h:1"),
            ("redis://hunter2@h:1", "redis://***@h:1"),
            (
                "redis+cluster://u:hunter2@a:1,b:2/?password=hunter2&protocol=3",
                "redis+cluster://u:***@a:1,b:2/?password=***&protocol=3",
            ),
            ("redis://h:1", "redis://h:1"),
        ];
        for (url, redacted) in cases {
            let target = Target::parse(url).unwrap();
            assert_eq!(target.redacted(), redacted);
            assert!(!format!("{target:?}").contains("hunter2"), "{target:?}");
        }
        for bad in ["hunter2@nowhere", "redis://:hunter2@[::1", "unix:hunter2"] {
            let error = Target::parse(bad).unwrap_err();
            assert_eq!(error.kind(), StoreErrorKind::Invalid);
            assert!(!format!("{error} {error:?}").contains("hunter2"), "{error}");
            assert!(!redact_url(bad).contains("hunter2"), "{}", redact_url(bad));
        }
    }
}
