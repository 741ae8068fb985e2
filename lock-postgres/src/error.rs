//! The one place sqlx errors become `StoreError`s.

use lock_core::{StoreError, StoreErrorKind};

/// Maps a driver error to a [`StoreError`], naming `key` when known.
///
/// Connection trouble, pool exhaustion, server shutdown and read-only
/// standbys (a failover in progress) are `Unavailable`; serialization
/// failures, deadlocks and resource shortages are `Busy`; both are
/// retryable. Undefined tables (schema not migrated), bad configuration,
/// credentials and values that do not decode are not.
pub(crate) fn map_error(error: sqlx::Error, key: Option<&str>) -> StoreError {
    use sqlx::Error as E;
    let kind = match &error {
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
    };
    let message = match &error {
        E::Database(database) => format!(
            "postgres: {} (SQLSTATE {})",
            database.message(),
            database.code().as_deref().unwrap_or("?")
        ),
        other => format!("postgres: {other}"),
    };
    let mapped = StoreError::new(kind, message).with_source(error);
    match key {
        Some(key) => mapped.with_key(key),
        None => mapped,
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
