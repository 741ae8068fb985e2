//! The one place sqlx's SQLite errors become `StoreError`s.

use lock_core::{StoreError, StoreErrorKind};

/// Maps a driver error to a [`StoreError`], naming `key` when known.
///
/// A busy or locked database (another process holds the write lock past
/// the busy timeout) is `Busy`, retryable; I/O trouble and a read-only or
/// unopenable file are `Unavailable`; a corrupt database file and values
/// that do not decode are `Corrupt`.
pub(crate) fn map_error(error: sqlx::Error, key: Option<&str>) -> StoreError {
    use sqlx::Error as E;
    let kind = match &error {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            StoreErrorKind::Unavailable
        }
        E::Configuration(_) => StoreErrorKind::Invalid,
        E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) => StoreErrorKind::Corrupt,
        E::Database(database) => database
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .map_or(StoreErrorKind::Other, kind_of_result_code),
        _ => StoreErrorKind::Other,
    };
    let message = match &error {
        E::Database(database) => format!("sqlite: {}", database.message()),
        other => format!("sqlite: {other}"),
    };
    let mapped = StoreError::new(kind, message).with_source(error);
    match key {
        Some(key) => mapped.with_key(key),
        None => mapped,
    }
}

/// By SQLite's primary result code (the low byte of an extended code).
fn kind_of_result_code(code: i32) -> StoreErrorKind {
    match code & 0xff {
        // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_PROTOCOL
        5 | 6 | 15 => StoreErrorKind::Busy,
        // SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_FULL
        8 | 10 | 13 | 14 => StoreErrorKind::Unavailable,
        // SQLITE_CORRUPT, SQLITE_NOTADB
        11 | 26 => StoreErrorKind::Corrupt,
        // SQLITE_AUTH, SQLITE_PERM
        23 | 3 => StoreErrorKind::Auth,
        // SQLITE_ERROR: no such table and other statement errors
        1 => StoreErrorKind::Invalid,
        _ => StoreErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_map_to_kinds() {
        assert_eq!(kind_of_result_code(5), StoreErrorKind::Busy);
        assert_eq!(kind_of_result_code(517), StoreErrorKind::Busy);
        assert_eq!(kind_of_result_code(6), StoreErrorKind::Busy);
        assert_eq!(kind_of_result_code(10), StoreErrorKind::Unavailable);
        assert_eq!(kind_of_result_code(11), StoreErrorKind::Corrupt);
        assert_eq!(kind_of_result_code(26), StoreErrorKind::Corrupt);
        assert_eq!(kind_of_result_code(1), StoreErrorKind::Invalid);
    }
}
