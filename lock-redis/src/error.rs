//! The one place where `redis` errors become [`StoreError`]s.

use lock_core::{StoreError, StoreErrorKind};
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Maps a `redis` error from operation `op` on lock key `key` (if any) to a
/// [`StoreError`]:
///
/// - I/O failures, refused or dropped connections, `READONLY` (a failover
///   in progress), a cluster node that cannot be found: `Unavailable`
///   (retryable; the operation may have taken effect);
/// - response timeouts: `Timeout` (retryable);
/// - `BUSY`, `LOADING`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, and a
///   `NOSCRIPT` the script runner could not resolve: `Busy` (retryable);
/// - refused credentials or permissions (`NOAUTH`, `WRONGPASS`, `NOPERM`,
///   also when the Cluster client reports them as a failure to connect):
///   `Auth`;
/// - a bad URL or client set-up, `CROSSSLOT`: `Invalid`;
/// - anything else (a script error, an unexpected reply): `Other`.
///
/// `MOVED` and `ASK` are followed by the cluster client and `NOSCRIPT` by
/// `redis::Script` before an error gets here. The message is the driver's
/// text, which never contains the password of the URL.
pub(crate) fn map_redis_error(op: &str, key: Option<&str>, error: RedisError) -> StoreError {
    let kind = classify(&error);
    let mut mapped = StoreError::new(kind, format!("redis {op} failed: {error}"));
    if let Some(key) = key {
        mapped = mapped.with_key(key);
    }
    mapped.with_source(error)
}

fn classify(error: &RedisError) -> StoreErrorKind {
    if error.is_timeout() {
        return StoreErrorKind::Timeout;
    }
    match error.kind() {
        // The Cluster client reports refused credentials of every seed node
        // as an I/O failure to connect.
        ErrorKind::Io
            if error.detail().is_some_and(|detail| {
                detail.contains("WRONGPASS") || detail.contains("NOAUTH")
            }) =>
        {
            StoreErrorKind::Auth
        }
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => StoreErrorKind::Unavailable,
        ErrorKind::AuthenticationFailed => StoreErrorKind::Auth,
        ErrorKind::InvalidClientConfig
        | ErrorKind::RESP3NotSupported
        | ErrorKind::EmptySentinelList
        | ErrorKind::MasterNameNotFoundBySentinel => StoreErrorKind::Invalid,
        ErrorKind::Server(server) => match server {
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::NoScript => StoreErrorKind::Busy,
            ServerErrorKind::ReadOnly | ServerErrorKind::Moved | ServerErrorKind::Ask => {
                StoreErrorKind::Unavailable
            }
            ServerErrorKind::NoPerm => StoreErrorKind::Auth,
            ServerErrorKind::CrossSlot => StoreErrorKind::Invalid,
            _ => StoreErrorKind::Other,
        },
        ErrorKind::Extension => match error.code() {
            Some("BUSY") => StoreErrorKind::Busy,
            Some("NOAUTH" | "WRONGPASS") => StoreErrorKind::Auth,
            _ => StoreErrorKind::Other,
        },
        _ => StoreErrorKind::Other,
    }
}

/// A reply whose shape no script of ours gives.
pub(crate) fn unexpected_reply(op: &str, key: &str, what: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Other,
        format!("redis {op}: unexpected reply from the script ({what})"),
    )
    .with_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(error: RedisError) -> StoreErrorKind {
        map_redis_error("test", Some("k"), error).kind()
    }

    #[test]
    fn io_and_timeouts_are_retryable() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(kind_of(refused.into()), StoreErrorKind::Unavailable);
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(kind_of(timeout.into()), StoreErrorKind::Timeout);
        let error = map_redis_error(
            "acquire",
            Some("k"),
            std::io::Error::from(std::io::ErrorKind::BrokenPipe).into(),
        );
        assert!(error.is_retryable());
        assert_eq!(error.key(), Some("k"));
    }

    #[test]
    fn client_set_up_errors_are_not_retryable() {
        let error: RedisError = (ErrorKind::InvalidClientConfig, "bad url").into();
        let mapped = map_redis_error("connect", None, error);
        assert_eq!(mapped.kind(), StoreErrorKind::Invalid);
        assert!(!mapped.is_retryable());
        let auth: RedisError = (ErrorKind::AuthenticationFailed, "no").into();
        assert_eq!(kind_of(auth), StoreErrorKind::Auth);
        let cluster_auth: RedisError = (
            ErrorKind::Io,
            "Failed to create initial connections",
            "\"WRONGPASS\": invalid username-password pair or user is disabled.".to_owned(),
        )
            .into();
        assert_eq!(kind_of(cluster_auth), StoreErrorKind::Auth);
        let cluster_down: RedisError = (
            ErrorKind::Io,
            "Failed to create initial connections",
            "Connection refused (os error 111)".to_owned(),
        )
            .into();
        assert_eq!(kind_of(cluster_down), StoreErrorKind::Unavailable);
    }
}
