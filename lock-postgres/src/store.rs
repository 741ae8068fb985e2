//! The store and its operations, one statement each.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, Grant, Holder, LeaseId,
    LeaseInfo, LeaseStore, LockMode, Queued, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError,
    StoreErrorKind, WaitOutcome,
};
use sqlx::postgres::PgPool;

use crate::builder::{PostgresStoreBuilder, TableNames};
use crate::busy::BusyKeys;
use crate::error::map_error;
use crate::listen::Listener;

/// The most entries one renewal statement carries.
const MAX_BATCH: usize = 5000;

/// How many times an acquisition or a release is sent again when its
/// snapshot was overtaken by a concurrent change to the key.
const ATTEMPTS: usize = 8;

/// A [`LeaseStore`] on two PostgreSQL tables (see the crate docs). Clones
/// share the pool and the LISTEN connection.
#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) table: String,
    pub(crate) names: TableNames,
    pub(crate) channel: String,
    pub(crate) sql: Statements,
    pub(crate) listener: Arc<Listener>,
    /// Keys found contended a moment ago.
    pub(crate) busy: BusyKeys,
}

/// The statements, with the quoted table names filled in.
pub(crate) struct Statements {
    pub(crate) schema: String,
    pub(crate) layout: String,
    pub(crate) upgrade: String,
    grant_free: String,
    acquire: String,
    renew: String,
    release_alone: String,
    release: String,
    lock_key: String,
    inspect: String,
    position: String,
}

impl Statements {
    pub(crate) fn new(names: &TableNames) -> Self {
        let fill = |template: &str| {
            template
                .replace("{table}", &names.keys)
                .replace("{entries}", &names.entries)
        };
        Self {
            schema: fill(include_str!("sql/schema.sql")),
            layout: fill(include_str!("sql/layout.sql")),
            upgrade: fill(include_str!("sql/upgrade.sql")),
            grant_free: fill(include_str!("sql/grant_free.sql")),
            acquire: fill(include_str!("sql/acquire.sql")),
            renew: fill(include_str!("sql/renew.sql")),
            release_alone: fill(include_str!("sql/release_alone.sql")),
            release: fill(include_str!("sql/release.sql")),
            lock_key: fill(include_str!("sql/lock_key.sql")),
            inspect: fill(include_str!("sql/inspect.sql")),
            position: fill(include_str!("sql/position.sql")),
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool's options hold the password: never print them.
        f.debug_struct("PostgresStore")
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

/// The row `acquire.sql` answers.
type AcquireRow = (
    String,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<bool>,
    Option<i32>,
    Option<i64>,
);

impl PostgresStore {
    /// A builder with the defaults.
    pub fn builder() -> PostgresStoreBuilder {
        PostgresStoreBuilder::default()
    }

    /// Connects to `url` with the default table, creating the tables if
    /// missing.
    ///
    /// # Errors
    ///
    /// As [`PostgresStoreBuilder::connect`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future closes the pool; schema changes run in
    /// a transaction, which the server rolls back when its connection goes.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder().connect(url).await
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The key table's name, as configured (the entries table is this name
    /// with `_entries` appended).
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The NOTIFY channel grants are announced on.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// The uncontended grant: the key has no entry at all.
    async fn grant_free(&self, request: &AcquireRequest<'_>) -> Result<Option<Grant>, StoreError> {
        let key = request.key;
        let seq: Option<i64> = sqlx::query_scalar(&self.inner.sql.grant_free)
            .bind(key)
            .bind(request.owner)
            .bind(&request.lease_id.to_bytes()[..])
            .bind(micros(request.ttl))
            .bind(request.mode == LockMode::Shared)
            .bind(i32::try_from(request.limit).unwrap_or(i32::MAX))
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, Some(key)))?;
        let Some(seq) = seq else {
            return Ok(None);
        };
        let grant = Grant::new(request.ttl);
        Ok(Some(if request.fencing.is_enabled() {
            grant.with_token(decode_token(key, seq)?)
        } else {
            grant
        }))
    }

    /// One attempt; `None` when the snapshot was overtaken.
    async fn try_acquire(
        &self,
        request: &AcquireRequest<'_>,
    ) -> Result<Option<AcquireOutcome>, StoreError> {
        let key = request.key;
        let row: AcquireRow = sqlx::query_as(&self.inner.sql.acquire)
            .bind(key)
            .bind(request.owner)
            .bind(&request.lease_id.to_bytes()[..])
            .bind(micros(request.ttl))
            .bind(request.mode == LockMode::Shared)
            .bind(i32::try_from(request.limit).unwrap_or(i32::MAX))
            .bind(request.queue.map(micros))
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, Some(key)))?;
        let (outcome, seq, owner, remaining_us, shared, limit, retry_after_us) = row;
        let token = |seq: Option<i64>| -> Result<FencingToken, StoreError> {
            decode_token(
                key,
                seq.ok_or_else(|| StoreError::corrupt(key, "an entry without sequence number"))?,
            )
        };
        let holder = |owner: Option<String>| {
            owner.map(|owner| {
                let mut holder = Holder::new(owner).with_mode(mode(shared.unwrap_or(false)));
                if let Some(remaining) = remaining_us.and_then(duration_from_micros) {
                    holder = holder.with_remaining(remaining);
                }
                holder
            })
        };
        Ok(Some(match outcome.as_str() {
            "again" => return Ok(None),
            "acquired" => {
                let token = token(seq)?;
                let mut grant = Grant::new(request.ttl);
                if request.fencing.is_enabled() {
                    grant = grant.with_token(token);
                }
                if let Some(previous) = owner {
                    grant = grant.with_previous_owner(previous);
                }
                AcquireOutcome::Acquired(grant)
            }
            "queued" => {
                let token = token(seq)?;
                let mut queued = Queued::new(request.queue.unwrap_or(request.ttl));
                if request.fencing.is_enabled() {
                    queued = queued.with_token(token);
                }
                if let Some(holder) = holder(owner) {
                    queued = queued.with_holder(holder);
                }
                if let Some(after) = retry_after_us.and_then(duration_from_micros) {
                    queued = queued.with_retry_after(after);
                }
                AcquireOutcome::Queued(queued)
            }
            "held" => AcquireOutcome::Held(
                holder(owner).ok_or_else(|| StoreError::corrupt(key, "a queue without holder"))?,
            ),
            "mismatch" => AcquireOutcome::LimitMismatch {
                limit: decode_limit(key, limit)?,
            },
            other => {
                return Err(StoreError::corrupt(
                    key,
                    format!("the acquire statement answered {other:?}"),
                ));
            }
        }))
    }

    /// Where the entry stands now: its token when it holds, `None` when it
    /// waits, `Err(Changed)` when it is gone.
    async fn position(&self, key: &str, lease_id: LeaseId) -> Result<Option<u64>, PositionError> {
        let row: Option<(i64, bool)> = sqlx::query_as(&self.inner.sql.position)
            .bind(key)
            .bind(&lease_id.to_bytes()[..])
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|error| PositionError::Failed(map_error(error, Some(key))))?;
        match row {
            None => Err(PositionError::Gone),
            Some((seq, true)) => Ok(Some(u64::try_from(seq).map_err(|_| {
                PositionError::Failed(StoreError::corrupt(key, "negative sequence number"))
            })?)),
            Some((_, false)) => Ok(None),
        }
    }
}

impl PostgresStore {
    /// One release; `None` when its snapshot was overtaken. Within
    /// `transaction`, the key row is locked first.
    async fn try_release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
        transaction: Option<&mut sqlx::Transaction<'static, sqlx::Postgres>>,
    ) -> Result<Option<ReleaseOutcome>, StoreError> {
        let sql = &self.inner.sql;
        let lease_bytes = lease_id.to_bytes();
        let query = sqlx::query_as(&sql.release)
            .bind(key)
            .bind(&lease_bytes[..])
            .bind(&self.inner.channel)
            .bind(fencing.is_enabled());
        let row: Result<(i64, i64, i64), sqlx::Error> = match transaction {
            None => query.fetch_one(&self.inner.pool).await,
            Some(transaction) => {
                sqlx::query(&sql.lock_key)
                    .bind(key)
                    .execute(&mut **transaction)
                    .await
                    .map_err(|e| map_error(e, Some(key)))?;
                query.fetch_one(&mut **transaction).await
            }
        };
        let (found, removed, _notified) = row.map_err(|e| map_error(e, Some(key)))?;
        Ok(if found == 0 {
            Some(ReleaseOutcome::NotHeld)
        } else if removed > 0 {
            Some(ReleaseOutcome::Released)
        } else {
            None
        })
    }
}

enum PositionError {
    Gone,
    Failed(StoreError),
}

/// A duration in whole microseconds, saturating.
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// A non-negative number of microseconds.
fn duration_from_micros(us: i64) -> Option<Duration> {
    u64::try_from(us).ok().map(Duration::from_micros)
}

fn mode(shared: bool) -> LockMode {
    if shared {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    }
}

fn decode_token(key: &str, token: i64) -> Result<FencingToken, StoreError> {
    u64::try_from(token)
        .map(FencingToken::from)
        .map_err(|_| StoreError::corrupt(key, format!("negative fencing counter {token}")))
}

fn decode_limit(key: &str, limit: Option<i32>) -> Result<u32, StoreError> {
    limit
        .and_then(|limit| u32::try_from(limit).ok())
        .filter(|limit| *limit > 0)
        .ok_or_else(|| StoreError::corrupt(key, format!("the key's limit is {limit:?}")))
}

fn overtaken(key: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Busy,
        "the key changed during every attempt to read its queue",
    )
    .with_key(key)
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        // The epoch in place before the request is sent covers every grant
        // of an entry it queues.
        let covered = if request.queue.is_some() {
            let inner = &self.inner;
            inner.listener.start(&inner.pool, &inner.channel);
            inner.listener.epoch()
        } else {
            None
        };
        let busy = &self.inner.busy;
        if !busy.is_busy(request.key)
            && let Some(grant) = self.grant_free(&request).await?
        {
            return Ok(AcquireOutcome::Acquired(grant));
        }
        for _ in 0..ATTEMPTS {
            if let Some(outcome) = self.try_acquire(&request).await? {
                match outcome {
                    AcquireOutcome::Queued(_) => {
                        busy.mark(request.key);
                        self.inner
                            .listener
                            .queued(request.key, request.lease_id, covered);
                    }
                    AcquireOutcome::Held(_) => busy.mark(request.key),
                    _ => {}
                }
                return Ok(outcome);
            }
        }
        Err(overtaken(request.key))
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = leases.iter().map(|entry| entry.key).collect();
        let ids: Vec<Vec<u8>> = leases
            .iter()
            .map(|entry| entry.lease_id.to_bytes().to_vec())
            .collect();
        let waits: Vec<Option<i64>> = leases
            .iter()
            .map(|entry| entry.wait_ttl.map(micros))
            .collect();
        let rows: Vec<(String, Vec<u8>, bool, i64, Option<i64>)> =
            sqlx::query_as(&self.inner.sql.renew)
                .bind(&keys)
                .bind(&ids)
                .bind(&waits)
                .bind(micros(ttl))
                .fetch_all(&self.inner.pool)
                .await
                .map_err(|e| map_error(e, None))?;
        let renewed: HashMap<(String, Vec<u8>), (bool, i64, Option<i64>)> = rows
            .into_iter()
            .map(|(key, lease_id, holds, seq, retry_after)| {
                ((key, lease_id), (holds, seq, retry_after))
            })
            .collect();
        let mut outcomes = Vec::with_capacity(leases.len());
        for entry in leases {
            let pair = (entry.key.to_owned(), entry.lease_id.to_bytes().to_vec());
            let outcome = match (renewed.get(&pair), entry.wait_ttl) {
                (None, _) => RenewOutcome::Lost,
                (Some(_), None) => RenewOutcome::Renewed { ttl },
                (Some((true, seq, _)), Some(_)) => RenewOutcome::Granted(
                    Grant::new(ttl).with_token(decode_token(entry.key, *seq)?),
                ),
                (Some((false, _, retry_after)), Some(wait_ttl)) => RenewOutcome::Waiting {
                    ttl: wait_ttl,
                    retry_after: retry_after.and_then(duration_from_micros),
                },
            };
            if entry.wait_ttl.is_some() && !matches!(outcome, RenewOutcome::Waiting { .. }) {
                self.inner.listener.forget(entry.lease_id);
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        self.inner.listener.forget(lease_id);
        if fencing.is_enabled() && !self.inner.busy.is_busy(key) {
            let (found, removed): (bool, bool) = sqlx::query_as(&self.inner.sql.release_alone)
                .bind(key)
                .bind(&lease_id.to_bytes()[..])
                .fetch_one(&self.inner.pool)
                .await
                .map_err(|e| map_error(e, Some(key)))?;
            match (found, removed) {
                (false, _) => return Ok(ReleaseOutcome::NotHeld),
                (true, true) => return Ok(ReleaseOutcome::Released),
                // Not alone in the key: the statement that tells the
                // entries it promotes.
                (true, false) => self.inner.busy.mark(key),
            }
        }
        if let Some(outcome) = self.try_release(key, lease_id, fencing, None).await? {
            return Ok(outcome);
        }
        // Overtaken by another writer of the key: again behind its lock.
        for _ in 0..ATTEMPTS {
            let mut transaction = self
                .inner
                .pool
                .begin()
                .await
                .map_err(|e| map_error(e, Some(key)))?;
            let outcome = self
                .try_release(key, lease_id, fencing, Some(&mut transaction))
                .await?;
            transaction
                .commit()
                .await
                .map_err(|e| map_error(e, Some(key)))?;
            if let Some(outcome) = outcome {
                return Ok(outcome);
            }
        }
        Err(overtaken(key))
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        type Row = (
            i64,
            i32,
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
        let Some((token, limit, ..)) = rows.first() else {
            return Ok(None);
        };
        let token = decode_token(key, *token)?;
        let limit = decode_limit(key, Some(*limit))?;
        let mut holders = Vec::new();
        let mut waiting = 0;
        for (_, _, seq, owner, shared, holds, remaining_us) in &rows {
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
            let mut holder = Holder::new(owner).with_mode(mode(shared.unwrap_or(false)));
            if let Some(remaining) = remaining_us.and_then(duration_from_micros) {
                holder = holder.with_remaining(remaining);
            }
            holders.push(holder);
        }
        // Only shared entries agree on a limit; exclusive ones ignore it.
        let shared = rows.iter().any(|row| row.4 == Some(true));
        let last_token = (token.to_u64() != Some(0)).then_some(token);
        let info = LeaseInfo::new(holders, last_token).with_waiting(waiting);
        Ok(Some(if shared { info.with_limit(limit) } else { info }))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_min_ttl(Duration::from_millis(1))
            .with_ttl_granularity(Duration::from_millis(1))
            .with_max_key_len(lock_core::MAX_KEY_LEN)
            .with_max_batch(MAX_BATCH)
            .with_native_wait(true)
            .with_fencing(true)
    }

    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        let deadline = tokio::time::Instant::now() + max;
        let inner = &self.inner;
        let listener = &inner.listener;
        listener.start(&inner.pool, &inner.channel);
        // Registered first: whatever is heard from here on reaches it.
        let registration = listener.register(key, lease_id);
        if let Some(seq) = listener.granted(key, lease_id) {
            listener.forget(lease_id);
            return WaitOutcome::Granted {
                token: Some(FencingToken::from(seq)),
            };
        }
        let Some(epoch) = listener.listening(deadline).await else {
            return registration
                .heard(deadline)
                .await
                .unwrap_or(WaitOutcome::TimedOut);
        };
        if !listener.covers(key, lease_id, epoch) {
            // A grant sent before this LISTEN was in place went unheard:
            // look once, now that any later one will be heard.
            match self.position(key, lease_id).await {
                Ok(Some(seq)) => {
                    listener.forget(lease_id);
                    return WaitOutcome::Granted {
                        token: Some(FencingToken::from(seq)),
                    };
                }
                Ok(None) => listener.looked_at(key, lease_id, epoch),
                Err(PositionError::Gone) => return WaitOutcome::Changed,
                // The caller renews after the wait; do not spin on a
                // failing server meanwhile.
                Err(PositionError::Failed(error)) => {
                    tracing::debug!(key, %error, "looking at a waiting entry failed");
                }
            }
        }
        match registration.heard(deadline).await {
            Some(WaitOutcome::Granted { token }) => {
                listener.forget(lease_id);
                WaitOutcome::Granted { token }
            }
            Some(outcome) => outcome,
            None => WaitOutcome::TimedOut,
        }
    }
}
