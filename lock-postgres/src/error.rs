//! The one place sqlx errors become `StoreError`s.

use std::fmt;

use lock_core::{StoreError, StoreErrorKind};
use sqlx::postgres::PgConnectOptions;

/// Maps a driver error to a [`StoreError`], naming `key` when known.
///
/// Connection trouble, pool exhaustion, server shutdown and read-only
/// standbys (a failover in progress) are `Unavailable`; serialization
/// failures, deadlocks and resource shortages are `Busy`; both are
/// retryable. Undefined tables (schema not migrated), bad configuration,
/// credentials and values that do not decode are not.
pub(crate) fn map_error(error: sqlx::Error, key: Option<&str>) -> StoreError {
    let mapped = StoreError::new(kind_of(&error), format!("postgres: {}", describe(&error)))
        .with_source(error);
    match key {
        Some(key) => mapped.with_key(key),
        None => mapped,
    }
}

/// Maps an error of opening a connection to `target`: the message names
/// the server and the cause (`Connection refused`, a failed name lookup,
/// the server's refusal of the credentials) rather than the driver's
/// wrapping of it.
pub(crate) fn connect_error(error: sqlx::Error, target: &Target) -> StoreError {
    let cause = match &error {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(tls) => format!("TLS: {tls}"),
        other => describe(other),
    };
    StoreError::new(
        kind_of(&error),
        format!("postgres: cannot connect to {target}: {cause}"),
    )
    .with_source(error)
}

/// The server a connection goes to, for messages: `host:port as user`, or
/// the Unix socket directory.
pub(crate) struct Target {
    place: String,
    user: String,
}

impl Target {
    pub(crate) fn of(options: &PgConnectOptions) -> Self {
        let place = match options.get_socket() {
            Some(socket) => format!("the socket in {}", socket.display()),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        Self {
            place,
            user: options.get_username().to_owned(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as {:?}", self.place, self.user)
    }
}

fn kind_of(error: &sqlx::Error) -> StoreErrorKind {
    use sqlx::Error as E;
    match error {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            StoreErrorKind::Unavailable
        }
        E::Protocol(_) => StoreErrorKind::Unavailable,
        E::Configuration(_) => StoreErrorKind::Invalid,
        E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) | E::TypeNotFound { .. } => {
            StoreErrorKind::Corrupt
        }
        E::Database(database) => database
            .code()
            .map_or(StoreErrorKind::Other, |code| kind_of_sqlstate(&code)),
        _ => StoreErrorKind::Other,
    }
}

/// The driver's account of `error`, with the SQLSTATE of a server error.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(database) => format!(
            "{} (SQLSTATE {})",
            database.message(),
            database.code().as_deref().unwrap_or("?")
        ),
        other => other.to_string(),
    }
}

fn kind_of_sqlstate(code: &str) -> StoreErrorKind {
    match code {
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => StoreErrorKind::Busy,
        // read_only_sql_transaction: a standby, or a failover under way
        "25006" => StoreErrorKind::Unavailable,
        // undefined_table: migrate() was not run
        "42P01" => StoreErrorKind::Invalid,
        _ => match &code[..code.len().min(2)] {
            // connection_exception, operator_intervention (shutdown)
            "08" | "57" => StoreErrorKind::Unavailable,
            // insufficient_resources
            "53" => StoreErrorKind::Busy,
            // invalid_authorization_specification, insufficient_privilege
            "28" => StoreErrorKind::Auth,
            "42" if code == "42501" => StoreErrorKind::Auth,
            _ => StoreErrorKind::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_kinds() {
        assert_eq!(kind_of_sqlstate("40001"), StoreErrorKind::Busy);
        assert_eq!(kind_of_sqlstate("40P01"), StoreErrorKind::Busy);
        assert_eq!(kind_of_sqlstate("57P01"), StoreErrorKind::Unavailable);
        assert_eq!(kind_of_sqlstate("08006"), StoreErrorKind::Unavailable);
        assert_eq!(kind_of_sqlstate("25006"), StoreErrorKind::Unavailable);
        assert_eq!(kind_of_sqlstate("53300"), StoreErrorKind::Busy);
        assert_eq!(kind_of_sqlstate("28P01"), StoreErrorKind::Auth);
        assert_eq!(kind_of_sqlstate("42501"), StoreErrorKind::Auth);
        assert_eq!(kind_of_sqlstate("42P01"), StoreErrorKind::Invalid);
        assert_eq!(kind_of_sqlstate("23505"), StoreErrorKind::Other);
    }

    #[test]
    fn pool_trouble_is_retryable() {
        assert!(map_error(sqlx::Error::PoolTimedOut, None).is_retryable());
        let error = map_error(sqlx::Error::PoolClosed, Some("k"));
        assert_eq!(error.key(), Some("k"));
    }
}
