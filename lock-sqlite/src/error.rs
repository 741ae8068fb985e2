//! The one place sqlx's SQLite errors become `StoreError`s.

use std::fs::OpenOptions;
use std::path::Path;

use lock_core::{StoreError, StoreErrorKind};

/// Maps a driver error to a [`StoreError`], naming `key` when known.
///
/// A busy or locked database (another process holds the write lock past
/// the busy timeout) is `Busy`, retryable; I/O trouble and a read-only or
/// unopenable file are `Unavailable`; a corrupt database file and values
/// that do not decode are `Corrupt`.
pub(crate) fn map_error(error: sqlx::Error, key: Option<&str>) -> StoreError {
    let mapped = StoreError::new(kind_of(&error), format!("sqlite: {}", describe(&error)))
        .with_source(error);
    match key {
        Some(key) => mapped.with_key(key),
        None => mapped,
    }
}

/// Maps an error of opening the database at `path`. SQLite says only
/// "unable to open database file": the message names the file and, when
/// the file or its directory cannot be written, the operating system's
/// reason.
pub(crate) fn open_error(error: sqlx::Error, path: &Path) -> StoreError {
    let kind = kind_of(&error);
    let reason = match kind {
        StoreErrorKind::Unavailable => why_unwritable(path).map(|io| io.to_string()),
        _ => None,
    };
    let reason = reason.unwrap_or_else(|| describe(&error));
    StoreError::new(
        kind,
        format!(
            "sqlite: cannot open the database {}: {reason}",
            path.display()
        ),
    )
    .with_source(error)
}

/// Why the database file at `path`, or its directory (where SQLite keeps
/// its write-ahead log), cannot be written; `None` when both can.
fn why_unwritable(path: &Path) -> Option<std::io::Error> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Some(error),
    }
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut probe_name = std::ffi::OsString::from(".");
    probe_name.push(path.file_name().unwrap_or_default());
    probe_name.push(format!(".probe-{}", std::process::id()));
    let probe = directory.join(probe_name);
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(error) => Some(error),
    }
}

fn kind_of(error: &sqlx::Error) -> StoreErrorKind {
    use sqlx::Error as E;
    match error {
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
    }
}

fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(database) => database.message().to_owned(),
        other => other.to_string(),
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
    fn an_unwritable_place_gives_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let fine = dir.path().join("locks.db");
        assert!(why_unwritable(&fine).is_none());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "the probe is removed: {left:?}");
        std::fs::create_dir(&fine).unwrap();
        let error = why_unwritable(&fine).expect("a directory is no database file");
        assert_eq!(error.kind(), std::io::ErrorKind::IsADirectory);
        let missing = dir.path().join("missing").join("locks.db");
        let error = why_unwritable(&missing).expect("no directory to write in");
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }

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
