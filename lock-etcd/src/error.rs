//! The one place where etcd-client and gRPC errors become [`StoreError`]s.

use etcd_client::Error;
use lock_core::{StoreError, StoreErrorKind};
use tonic::Code;

/// Maps an etcd-client error from operation `op` (on lock `key`, when there
/// is one) to a [`StoreError`]:
///
/// - unreachable or broken connections, `Unavailable`, `Aborted`,
///   `Cancelled`, leader changes and lost leaders: `Unavailable` (retryable,
///   may have applied);
/// - `DeadlineExceeded` and etcd's "request timed out": `Timeout`
///   (retryable, may have applied);
/// - `ResourceExhausted` ("too many requests"): `Busy` (retryable, not
///   applied);
/// - `Unauthenticated`, `PermissionDenied`, and etcd's "authentication
///   failed" (an `InvalidArgument`): `Auth`;
/// - `InvalidArgument`, `FailedPrecondition`, `OutOfRange`, `NotFound`,
///   `AlreadyExists`, `Unimplemented`, bad endpoints: `Invalid`;
/// - anything else: `Other`.
///
/// The message is the driver's, which never contains credentials (etcd
/// answers authentication failures without echoing them).
pub(crate) fn store_error(error: Error, op: &str, key: Option<&str>) -> StoreError {
    let kind = match &error {
        Error::GRpcStatus(status) => kind_of_status(status.code(), status.message()),
        Error::TransportError(_)
        | Error::IoError(_)
        | Error::LeaseKeepAliveError(_)
        | Error::WatchError(_)
        | Error::ElectError(_) => StoreErrorKind::Unavailable,
        Error::InvalidArgs(_)
        | Error::InvalidUri(_)
        | Error::InvalidMetadataValue(_)
        | Error::EndpointError(_)
        | Error::EndpointsNotManaged
        | Error::Utf8Error(_) => StoreErrorKind::Invalid,
        _ => StoreErrorKind::Other,
    };
    let message = match &error {
        Error::GRpcStatus(status) => format!(
            "etcd {op} failed: {} ({:?})",
            status.message(),
            status.code()
        ),
        other => format!("etcd {op} failed: {other}"),
    };
    let mut mapped = StoreError::new(kind, message).with_source(error);
    if let Some(key) = key {
        mapped = mapped.with_key(key);
    }
    mapped
}

fn kind_of_status(code: Code, message: &str) -> StoreErrorKind {
    match code {
        Code::Unavailable | Code::Aborted | Code::Cancelled => {
            if message.contains("timed out") {
                StoreErrorKind::Timeout
            } else {
                StoreErrorKind::Unavailable
            }
        }
        Code::DeadlineExceeded => StoreErrorKind::Timeout,
        Code::ResourceExhausted => StoreErrorKind::Busy,
        Code::Unauthenticated | Code::PermissionDenied => StoreErrorKind::Auth,
        // etcd refuses a wrong user or password as an invalid argument.
        Code::InvalidArgument if message.contains("authentication failed") => StoreErrorKind::Auth,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Unimplemented => StoreErrorKind::Invalid,
        // etcd reports "no leader" and "leader changed" as Unknown on some
        // paths; both pass.
        Code::Unknown if message.contains("leader") => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Other,
    }
}

/// Whether `error` says the etcd lease named in the request does not exist
/// (expired or revoked).
pub(crate) fn is_lease_not_found(error: &Error) -> bool {
    match error {
        Error::GRpcStatus(status) => {
            status.code() == Code::NotFound && status.message().contains("lease not found")
        }
        Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::is_unsent;

    fn status(code: Code, message: &str) -> Error {
        Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn kinds_follow_the_grpc_code() {
        let cases = [
            (
                status(Code::Unavailable, "etcdserver: leader changed"),
                StoreErrorKind::Unavailable,
            ),
            (
                status(Code::Unavailable, "etcdserver: request timed out"),
                StoreErrorKind::Timeout,
            ),
            (
                status(Code::DeadlineExceeded, "deadline"),
                StoreErrorKind::Timeout,
            ),
            (
                status(Code::ResourceExhausted, "etcdserver: too many requests"),
                StoreErrorKind::Busy,
            ),
            (
                status(Code::Unauthenticated, "etcdserver: invalid auth token"),
                StoreErrorKind::Auth,
            ),
            (
                status(Code::PermissionDenied, "etcdserver: permission denied"),
                StoreErrorKind::Auth,
            ),
            (
                status(
                    Code::InvalidArgument,
                    "etcdserver: authentication failed, invalid user ID or password",
                ),
                StoreErrorKind::Auth,
            ),
            (
                status(Code::InvalidArgument, "etcdserver: key is not provided"),
                StoreErrorKind::Invalid,
            ),
            (
                status(Code::Unknown, "etcdserver: no leader"),
                StoreErrorKind::Unavailable,
            ),
            (status(Code::Internal, "boom"), StoreErrorKind::Other),
            (Error::InvalidArgs("bad".into()), StoreErrorKind::Invalid),
            (
                Error::LeaseKeepAliveError("closed".into()),
                StoreErrorKind::Unavailable,
            ),
        ];
        for (error, kind) in cases {
            let shown = error.to_string();
            let mapped = store_error(error, "acquire", Some("k"));
            assert_eq!(mapped.kind(), kind, "{shown}");
            assert_eq!(mapped.key(), Some("k"));
            assert!(
                mapped.message().starts_with("etcd acquire failed"),
                "{mapped}"
            );
        }
    }

    #[test]
    fn recognizes_missing_leases_and_unsent_requests() {
        assert!(is_lease_not_found(&status(
            Code::NotFound,
            "etcdserver: requested lease not found"
        )));
        assert!(is_lease_not_found(&Error::LeaseKeepAliveError(
            "lease not found".into()
        )));
        assert!(!is_lease_not_found(&status(Code::NotFound, "other")));
        assert!(is_unsent(&status(Code::Unavailable, "tcp connect error")));
        assert!(!is_unsent(&status(Code::Unavailable, "transport error")));
    }
}
