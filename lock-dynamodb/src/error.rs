//! The one place SDK errors become [`StoreError`]s.

use std::error::Error as StdError;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use lock_core::{StoreError, StoreErrorKind};

/// What a request was about, for messages.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) table: String,
    /// `at ENDPOINT` or `in region R`, secrets redacted.
    pub(crate) place: String,
}

/// Service error codes that mean "try again later": the request did not
/// apply.
const BUSY_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionConflictException",
    "LimitExceededException",
];

/// Codes of refused credentials or permissions.
const AUTH_CODES: &[&str] = &[
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
];

/// Maps a failed `operation` on the table to a [`StoreError`].
///
/// Conditional check failures never get here: callers treat them as
/// outcomes. Throttling, 5xx and transport failures are retryable; refused
/// credentials are [`Auth`](StoreErrorKind::Auth); a missing table is
/// [`Invalid`](StoreErrorKind::Invalid) with the fix. Messages carry the
/// SDK's error chain, which names neither secret keys nor session tokens.
pub(crate) fn store_error<E>(
    operation: &str,
    context: &Context,
    error: SdkError<E, HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let table = &context.table;
    let place = &context.place;
    let detail = DisplayErrorContext(&error).to_string();
    let (kind, message) = match &error {
        SdkError::TimeoutError(_) => (
            StoreErrorKind::Timeout,
            format!("{operation} on table {table} {place} timed out: {detail}"),
        ),
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_timeout() {
                StoreErrorKind::Timeout
            } else if failure.is_user() {
                // Bad settings (an endpoint that is not a URL) or no
                // credentials found.
                StoreErrorKind::Invalid
            } else {
                StoreErrorKind::Unavailable
            };
            (
                kind,
                format!("{operation} on table {table} {place} could not be sent: {detail}"),
            )
        }
        SdkError::ConstructionFailure(_) => (
            StoreErrorKind::Invalid,
            format!("{operation} on table {table} {place} could not be built: {detail}"),
        ),
        SdkError::ResponseError(_) => (
            StoreErrorKind::Unavailable,
            format!("{operation} on table {table} {place}: unreadable response: {detail}"),
        ),
        SdkError::ServiceError(service) => {
            let code = error.code().unwrap_or_default();
            let status = service.raw().status().as_u16();
            let service_message = error.message().unwrap_or_default();
            if code == "ResourceNotFoundException" {
                (
                    StoreErrorKind::Invalid,
                    format!(
                        "table {table} does not exist {place} ({service_message}): create it with partition key lock_key of type S (string) and no sort key, or add create_table=true to the URL (DynamoConfig::create_table)"
                    ),
                )
            } else if AUTH_CODES.contains(&code) || status == 401 || status == 403 {
                (
                    StoreErrorKind::Auth,
                    format!(
                        "{operation} on table {table} {place} was refused ({code}: {service_message}); the store needs dynamodb:GetItem, UpdateItem and DeleteItem on the table (DescribeTable, CreateTable and UpdateTimeToLive with create_table)"
                    ),
                )
            } else if BUSY_CODES.contains(&code) {
                (
                    StoreErrorKind::Busy,
                    format!(
                        "{operation} on table {table} {place} was throttled ({code}: {service_message})"
                    ),
                )
            } else if status >= 500 || code == "InternalServerError" || code == "ServiceUnavailable"
            {
                (
                    StoreErrorKind::Unavailable,
                    format!(
                        "{operation} on table {table} {place} failed on the server ({status} {code}: {service_message})"
                    ),
                )
            } else if code == "ValidationException" && service_message.contains("size") {
                (
                    StoreErrorKind::Busy,
                    format!(
                        "{operation} on table {table} {place}: the key's item is full ({service_message}); DynamoDB items are at most 400 KB, which bounds a key's queue to about a thousand entries"
                    ),
                )
            } else if code == "ValidationException" {
                (
                    StoreErrorKind::Invalid,
                    format!(
                        "{operation} on table {table} {place} was rejected ({service_message}); if the table's key schema is not a partition key lock_key of type S alone, use another table"
                    ),
                )
            } else {
                (
                    StoreErrorKind::Other,
                    format!(
                        "{operation} on table {table} {place} failed ({status} {code}: {service_message})"
                    ),
                )
            }
        }
        _ => (
            StoreErrorKind::Other,
            format!("{operation} on table {table} {place} failed: {detail}"),
        ),
    };
    StoreError::new(kind, message).with_source(error)
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn context() -> Context {
        Context {
            table: "locks".into(),
            place: "in region eu-west-1".into(),
        }
    }

    fn service(status: u16, code: &str, message: &str) -> StoreError {
        let error =
            UpdateItemError::generic(ErrorMetadata::builder().code(code).message(message).build());
        let raw = HttpResponse::new(status.try_into().expect("a status"), SdkBody::empty());
        store_error("acquire", &context(), SdkError::service_error(error, raw))
    }

    #[test]
    fn throttling_and_server_errors_are_retryable() {
        for (status, code) in [
            (400, "ThrottlingException"),
            (400, "ProvisionedThroughputExceededException"),
            (400, "RequestLimitExceeded"),
            (500, "InternalServerError"),
            (503, "ServiceUnavailable"),
        ] {
            let error = service(status, code, "slow down");
            assert!(error.is_retryable(), "{code}: {error:?}");
        }
        assert_eq!(
            service(400, "ThrottlingException", "x").kind(),
            StoreErrorKind::Busy
        );
    }

    #[test]
    fn refused_credentials_are_auth() {
        for code in [
            "AccessDeniedException",
            "UnrecognizedClientException",
            "ExpiredTokenException",
        ] {
            let error = service(400, code, "no");
            assert_eq!(error.kind(), StoreErrorKind::Auth, "{code}: {error}");
            assert!(!error.is_retryable());
        }
    }

    #[test]
    fn a_missing_table_names_the_fix() {
        let error = service(
            400,
            "ResourceNotFoundException",
            "Requested resource not found",
        );
        assert_eq!(error.kind(), StoreErrorKind::Invalid);
        let message = error.to_string();
        assert!(message.contains("locks"), "{message}");
        assert!(message.contains("create_table=true"), "{message}");
    }

    #[test]
    fn a_full_item_is_busy_and_other_validation_errors_invalid() {
        let full = service(
            400,
            "ValidationException",
            "Item size has exceeded the maximum allowed size",
        );
        assert_eq!(full.kind(), StoreErrorKind::Busy, "{full}");
        let bad = service(
            400,
            "ValidationException",
            "One of the required keys was not given a value",
        );
        assert_eq!(bad.kind(), StoreErrorKind::Invalid, "{bad}");
    }

    #[test]
    fn transport_failures_are_unavailable_or_timeouts() {
        let io = SdkError::<UpdateItemError, HttpResponse>::dispatch_failure(ConnectorError::io(
            "connection refused".into(),
        ));
        assert_eq!(
            store_error("renew", &context(), io).kind(),
            StoreErrorKind::Unavailable
        );
        let timeout = SdkError::<UpdateItemError, HttpResponse>::timeout_error("too slow");
        assert_eq!(
            store_error("renew", &context(), timeout).kind(),
            StoreErrorKind::Timeout
        );
    }
}
