//! Creating the tables, and converting a table of the previous layout.

use lock_core::{StoreError, StoreErrorKind};
use sqlx::Executor as _;

use crate::error::map_error;
use crate::store::PostgresStore;

/// What a database holds under the store's table names.
#[derive(Debug)]
struct Layout {
    has_table: bool,
    has_entries: bool,
    /// One row per key with the lease in it (the previous version).
    legacy: bool,
    /// Key rows with a version (this version).
    current: bool,
}

impl PostgresStore {
    /// Creates the tables if they do not exist, and converts a table of the
    /// previous layout (one row per key holding its lease) in place. Safe
    /// to run concurrently from many processes (serialized by an advisory
    /// lock) and repeatedly.
    ///
    /// The conversion keeps every live lease (as a holding entry with its
    /// fencing token) and every key's token counter, so tokens keep
    /// increasing; it drops the lease columns, so that processes of the
    /// previous version still running fail their statements from then on
    /// rather than grant beside this one. Stop them first: their locks are
    /// kept until they expire, but they can no longer renew them.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] when the table exists with columns of
    /// neither layout; a store error when the database refuses
    /// (permissions, connection).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the changes run in a transaction, which the server rolls
    /// back when its connection goes; calling again starts over.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut transaction = inner.pool.begin().await.map_err(|e| map_error(e, None))?;
        // Concurrent CREATE TABLE IF NOT EXISTS can still collide in the
        // catalog; one migration at a time per table.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("dlock migrate {}", inner.table))
            .execute(&mut *transaction)
            .await
            .map_err(|e| map_error(e, None))?;
        let layout = self.layout(&mut *transaction).await?;
        if layout.has_table && !layout.legacy && !layout.current {
            return Err(self.not_ours());
        }
        if layout.has_table && layout.current && layout.has_entries {
            return transaction.commit().await.map_err(|e| map_error(e, None));
        }
        // Through the executor: RawSql's own `execute` is not `Send` for
        // every lifetime, which the store's futures must be.
        (&mut *transaction)
            .execute(sqlx::raw_sql(&inner.sql.schema))
            .await
            .map_err(|e| map_error(e, None))?;
        if layout.legacy {
            tracing::info!(table = %inner.table, "converting the table of the previous layout");
            (&mut *transaction)
                .execute(sqlx::raw_sql(&inner.sql.upgrade))
                .await
                .map_err(|e| map_error(e, None))?;
        }
        transaction.commit().await.map_err(|e| map_error(e, None))
    }

    /// With migration off: a table of the previous layout is refused
    /// rather than misread.
    pub(crate) async fn refuse_previous_layout(&self) -> Result<(), StoreError> {
        let mut connection = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(|e| map_error(e, None))?;
        let layout = self.layout(&mut *connection).await?;
        if layout.legacy {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "table {:?} has the layout of an earlier dlock (one row per lock): convert it with PostgresStore::migrate (or migrate_on_connect(true)) once no process of the earlier version uses it",
                    self.inner.table
                ),
            ));
        }
        if layout.has_table && !layout.current {
            return Err(self.not_ours());
        }
        Ok(())
    }

    async fn layout<'c, E>(&self, executor: E) -> Result<Layout, StoreError>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        let names = &self.inner.names;
        let (has_table, has_entries, legacy, current): (bool, bool, bool, bool) =
            sqlx::query_as(&self.inner.sql.layout)
                .bind(&names.keys)
                .bind(&names.entries)
                .fetch_one(executor)
                .await
                .map_err(|e| map_error(e, None))?;
        Ok(Layout {
            has_table,
            has_entries,
            legacy,
            current,
        })
    }

    fn not_ours(&self) -> StoreError {
        StoreError::new(
            StoreErrorKind::Invalid,
            format!(
                "table {:?} exists but is not a dlock table: choose another table name",
                self.inner.table
            ),
        )
    }
}
