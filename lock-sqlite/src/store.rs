//! The store and its operations.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, Grant, LeaseId, LeaseInfo,
    LeaseStore, LockMode, Queued, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError,
    StoreErrorKind, WaitOutcome,
};
use sqlx::sqlite::SqlitePool;

use crate::builder::{SqliteStoreBuilder, TableNames};
use crate::error::map_error;
use crate::queue::{Entry, Queue, lease_id, mode};
use lock_core::LocalWakers;

/// The database's clock in milliseconds.
const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// The most entries one renewal statement carries.
const MAX_BATCH: usize = 1000;

/// A [`LeaseStore`] on an SQLite database file (see the crate docs).
/// Clones share the pool.
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: SqlitePool,
    pub(crate) path: PathBuf,
    pub(crate) sql: Statements,
    /// Wakes the waits of this process when it releases an entry.
    pub(crate) wakers: LocalWakers,
}

/// The statements, with the quoted table names and the clock filled in.
pub(crate) struct Statements {
    pub(crate) schema: String,
    pub(crate) upgrade: String,
    pub(crate) layout: String,
    add: String,
    state: String,
    extend: String,
    release: String,
    drop_key: String,
    renew: String,
    inspect: String,
}

impl Statements {
    pub(crate) fn new(names: &TableNames) -> Self {
        let fill = |template: &str| {
            template
                .replace("{table}", &names.quoted_keys)
                .replace("{entries}", &names.quoted_entries)
                .replace("{trigger}", &names.quoted_trigger)
                .replace("{now}", NOW_MS)
        };
        Self {
            schema: fill(include_str!("sql/schema.sql")),
            upgrade: fill(include_str!("sql/upgrade.sql")),
            layout: fill(include_str!("sql/layout.sql")),
            add: fill(include_str!("sql/add.sql")),
            state: fill(include_str!("sql/state.sql")),
            extend: fill(include_str!("sql/extend.sql")),
            release: fill(include_str!("sql/release.sql")),
            drop_key: fill(include_str!("sql/drop_key.sql")),
            renew: fill(include_str!("sql/renew.sql")),
            inspect: fill(include_str!("sql/inspect.sql")),
        }
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// A row of `state.sql`.
type StateRow = (i64, i64, Vec<u8>, String, bool, i64, i64);

/// How many times an acquisition that added nothing looks again, when the
/// queue changed between its statements.
const ATTEMPTS: usize = 8;

impl SqliteStore {
    /// A builder with the defaults.
    pub fn builder() -> SqliteStoreBuilder {
        SqliteStoreBuilder::default()
    }

    /// Opens (creating if missing) the database at `path` with the default
    /// table.
    ///
    /// # Errors
    ///
    /// As [`SqliteStoreBuilder::open`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: schema changes run in a transaction, which SQLite rolls
    /// back when its connection goes; the database file may be left created,
    /// empty.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::builder().open(path).await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// The key's entries, read without a lock.
    async fn queue(&self, key: &str) -> Result<Queue, StoreError> {
        let rows: Vec<StateRow> = sqlx::query_as(&self.inner.sql.state)
            .bind(key)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, Some(key)))?;
        let mut queue = Queue {
            now_ms: 0,
            entries: Vec::with_capacity(rows.len()),
        };
        for (now_ms, seq, lease, owner, shared, lim, expires_ms) in rows {
            queue.now_ms = now_ms;
            queue.entries.push(Entry {
                seq,
                lease_id: lease_id(key, &lease)?,
                owner,
                shared,
                lim: decode_limit(key, Some(lim))?,
                expires_ms,
            });
        }
        if queue.entries.is_empty() {
            // The clock, for an empty key.
            queue.now_ms = now_ms(&self.inner.pool).await?;
        }
        Ok(queue)
    }

    /// Wakes this process's waits on `key` whose entries hold now, and
    /// only those: each woken waiter renews its entry to learn it holds,
    /// and with all of them woken at each release, those renewals took
    /// more of the database than the handoffs. Wakes every wait on the key
    /// when the queue cannot be read.
    async fn wake_promoted(&self, key: &str) {
        let wakers = &self.inner.wakers;
        if wakers.waits(key) == 0 {
            return;
        }
        match self.queue(key).await {
            Ok(queue) => {
                let holding: Vec<LeaseId> = queue
                    .positions()
                    .into_iter()
                    .filter(|(_, holds)| *holds)
                    .map(|(entry, _)| entry.lease_id)
                    .collect();
                wakers.wake_where(key, |lease_id| holding.contains(&lease_id));
            }
            Err(error) => {
                tracing::debug!(key, %error, "reading the queue after a release failed");
                wakers.wake(key);
            }
        }
    }

    /// One attempt to add the request's entry; `None` when it added nothing.
    async fn add(
        &self,
        request: &AcquireRequest<'_>,
    ) -> Result<Option<AcquireOutcome>, StoreError> {
        let key = request.key;
        let added: Option<(i64, bool, Option<String>)> = sqlx::query_as(&self.inner.sql.add)
            .bind(key)
            .bind(request.owner)
            .bind(&request.lease_id.to_bytes()[..])
            .bind(millis(request.ttl))
            .bind(request.mode == LockMode::Shared)
            .bind(i64::from(request.limit))
            .bind(request.queue.map(millis))
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, Some(key)))?;
        let Some((seq, holds, previous)) = added else {
            return Ok(None);
        };
        if holds {
            return Ok(Some(self.answer(request, None, seq, true, previous)?));
        }
        // Queued: the holder and how soon an entry ahead may expire.
        let queue = self.queue(key).await?;
        Ok(Some(self.answer(
            request,
            Some(&queue),
            seq,
            false,
            None,
        )?))
    }

    /// Why an acquisition added nothing, from the queue as it is now;
    /// `None` when the queue changed and adding may work now.
    async fn explain(
        &self,
        request: &AcquireRequest<'_>,
    ) -> Result<Option<AcquireOutcome>, StoreError> {
        let key = request.key;
        let queue = self.queue(key).await?;
        let positions = queue.positions();
        if let Some((entry, holds)) = positions
            .iter()
            .find(|(entry, _)| entry.lease_id == request.lease_id)
        {
            // Sent again after a lost reply: its entry, extended.
            let ttl = if *holds {
                request.ttl
            } else {
                request.queue.unwrap_or(request.ttl)
            };
            let extended = sqlx::query(&self.inner.sql.extend)
                .bind(key)
                .bind(entry.seq)
                .bind(millis(ttl))
                .bind(*holds)
                .execute(&self.inner.pool)
                .await
                .map_err(|e| map_error(e, Some(key)))?;
            if extended.rows_affected() == 0 {
                return Ok(None);
            }
            return Ok(Some(self.answer(
                request,
                Some(&queue),
                entry.seq,
                *holds,
                None,
            )?));
        }
        if request.mode == LockMode::Shared
            && let Some(limit) = queue.limit()
            && limit != request.limit
        {
            return Ok(Some(AcquireOutcome::LimitMismatch { limit }));
        }
        if request.queue.is_none()
            && !queue.would_hold(request.mode == LockMode::Shared, request.limit)
        {
            let holder = queue
                .first_holder()
                .ok_or_else(|| StoreError::corrupt(key, "a queue without holder"))?;
            return Ok(Some(AcquireOutcome::Held(holder)));
        }
        Ok(None)
    }

    /// The answer for the entry `seq` of the request.
    fn answer(
        &self,
        request: &AcquireRequest<'_>,
        queue: Option<&Queue>,
        seq: i64,
        holds: bool,
        previous: Option<String>,
    ) -> Result<AcquireOutcome, StoreError> {
        let token = decode_token(request.key, seq)?;
        if holds {
            let mut grant = Grant::new(applied(request.ttl));
            if request.fencing.is_enabled() {
                grant = grant.with_token(token);
            }
            if let Some(previous) = previous {
                grant = grant.with_previous_owner(previous);
            }
            return Ok(AcquireOutcome::Acquired(grant));
        }
        let mut queued = Queued::new(applied(request.queue.unwrap_or(request.ttl)));
        if request.fencing.is_enabled() {
            queued = queued.with_token(token);
        }
        if let Some(queue) = queue {
            if let Some(holder) = queue.first_holder() {
                queued = queued.with_holder(holder);
            }
            if let Some(after) = queue.retry_after(Some(seq)) {
                queued = queued.with_retry_after(after);
            }
        }
        Ok(AcquireOutcome::Queued(queued))
    }
}

/// The database's clock in milliseconds.
async fn now_ms(pool: &SqlitePool) -> Result<i64, StoreError> {
    sqlx::query_scalar(&format!("SELECT {NOW_MS}"))
        .fetch_one(pool)
        .await
        .map_err(|e| map_error(e, None))
}

/// Whole milliseconds, rounded up: an entry never ends earlier than asked.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
}

/// The ttl as the store applies it (whole milliseconds).
fn applied(ttl: Duration) -> Duration {
    Duration::from_millis(u64::try_from(millis(ttl)).unwrap_or(u64::MAX))
}

fn decode_token(key: &str, token: i64) -> Result<FencingToken, StoreError> {
    u64::try_from(token)
        .map(FencingToken::from)
        .map_err(|_| StoreError::corrupt(key, format!("negative fencing counter {token}")))
}

fn decode_limit(key: &str, limit: Option<i64>) -> Result<u32, StoreError> {
    limit
        .and_then(|limit| u32::try_from(limit).ok())
        .filter(|limit| *limit > 0)
        .ok_or_else(|| StoreError::corrupt(key, format!("the key's limit is {limit:?}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        for _ in 0..ATTEMPTS {
            let outcome = match self.add(&request).await? {
                Some(outcome) => Some(outcome),
                None => self.explain(&request).await?,
            };
            if let Some(outcome) = outcome {
                // A release by this process from now on wakes it, even
                // before its owner waits.
                self.inner
                    .wakers
                    .expect_if_queued(request.key, request.lease_id, &outcome);
                return Ok(outcome);
            }
        }
        Err(StoreError::new(
            StoreErrorKind::Busy,
            "the key changed during every attempt to read its queue",
        )
        .with_key(request.key))
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let batch: Vec<(&str, String, Option<i64>)> = leases
            .iter()
            .map(|entry| {
                (
                    entry.key,
                    hex(&entry.lease_id.to_bytes()),
                    entry.wait_ttl.map(millis),
                )
            })
            .collect();
        let batch = serde_json::to_string(&batch).map_err(|e| {
            StoreError::new(StoreErrorKind::Other, "encoding a batch").with_source(e)
        })?;
        let rows: Vec<(String, Vec<u8>, bool, i64)> = sqlx::query_as(&self.inner.sql.renew)
            .bind(batch)
            .bind(millis(ttl))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, None))?;
        let renewed: HashMap<(String, Vec<u8>), (bool, i64)> = rows
            .into_iter()
            .map(|(key, lease, holding, seq)| ((key, lease), (holding, seq)))
            .collect();
        let ttl = applied(ttl);
        let outcomes = leases
            .iter()
            .map(|entry| {
                let pair = (entry.key.to_owned(), entry.lease_id.to_bytes().to_vec());
                Ok(match (renewed.get(&pair), entry.wait_ttl) {
                    (None, _) => RenewOutcome::Lost,
                    (Some(_), None) => RenewOutcome::Renewed { ttl },
                    (Some((true, seq)), Some(_)) => RenewOutcome::Granted(
                        Grant::new(ttl).with_token(decode_token(entry.key, *seq)?),
                    ),
                    (Some((false, _)), Some(wait_ttl)) => RenewOutcome::Waiting {
                        ttl: applied(wait_ttl),
                        retry_after: None,
                    },
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // A release by this process from now on wakes the waiting ones,
        // even before their owners wait.
        self.inner.wakers.expect_if_waiting(leases, &outcomes);
        Ok(outcomes)
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        let sql = &self.inner.sql;
        let removed: Option<(i64,)> = sqlx::query_as(&sql.release)
            .bind(key)
            .bind(&lease_id.to_bytes()[..])
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, Some(key)))?;
        if removed.is_none() {
            return Ok(ReleaseOutcome::NotHeld);
        }
        self.wake_promoted(key).await;
        if !fencing.is_enabled() {
            // The entry is gone either way; a key left empty may go too.
            if let Err(error) = sqlx::query(&sql.drop_key)
                .bind(key)
                .execute(&self.inner.pool)
                .await
            {
                tracing::debug!(key, %error, "deleting an empty key failed");
            }
        }
        Ok(ReleaseOutcome::Released)
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        type Row = (
            i64,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<bool>,
            Option<bool>,
            Option<i64>,
        );
        let rows: Vec<Row> = sqlx::query_as(&self.inner.sql.inspect)
            .bind(key)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, Some(key)))?;
        let Some((token, ..)) = rows.first() else {
            return Ok(None);
        };
        let token = decode_token(key, *token)?;
        // The shared entries' limit; exclusive entries report none.
        let limit = rows
            .iter()
            .find_map(|row| row.1)
            .map(|limit| decode_limit(key, Some(limit)))
            .transpose()?;
        let mut holders = Vec::new();
        let mut waiting = 0;
        for (_, _, seq, owner, shared, holds, remaining_ms) in &rows {
            if seq.is_none() {
                continue;
            }
            if *holds != Some(true) {
                waiting += 1;
                continue;
            }
            let owner = owner
                .clone()
                .ok_or_else(|| StoreError::corrupt(key, "an entry without owner"))?;
            let remaining = remaining_ms
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or(0);
            holders.push(
                lock_core::Holder::new(owner)
                    .with_remaining(Duration::from_millis(remaining))
                    .with_mode(mode(shared.unwrap_or(false))),
            );
        }
        let last_token = (token.to_u64() != Some(0)).then_some(token);
        let info = LeaseInfo::new(holders, last_token).with_waiting(waiting);
        Ok(Some(match limit {
            Some(limit) => info.with_limit(limit),
            None => info,
        }))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_min_ttl(Duration::from_millis(10))
            .with_ttl_granularity(Duration::from_millis(1))
            .with_max_key_len(lock_core::MAX_KEY_LEN)
            .with_max_batch(MAX_BATCH)
            .with_native_wait(false)
            .with_fencing(true)
    }

    /// Nothing tells a waiter that it holds: it renews its entry to learn
    /// it. A release by this process that promotes it wakes it to do that
    /// at once; waiters in other processes poll.
    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        self.inner.wakers.wait_for(key, lease_id, max).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_milliseconds() {
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_millis(3)), 3);
    }
}
