//! [`DynamoStore`]: the [`LeaseStore`] on one DynamoDB table.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_smithy_http_client::tls;
use futures_util::future::{BoxFuture, FutureExt as _, Shared, join_all};
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, ExpiryClock, Fencing, FencingToken, Grant,
    LeaseId, LeaseInfo, LeaseStore, LocalWakers, LockMode, Queued, ReleaseOutcome, RenewEntry,
    RenewOutcome, StoreError, StoreErrorKind, WaitOutcome,
};
use tokio::sync::Semaphore;

use crate::clock::{WallClock, millis_up};
use crate::config::DynamoConfig;
use crate::error::{Context, store_error};
use crate::item::{
    COUNT, EntryInfo, FENCE, IDLE_EXPIRY, KEY, KeyState, TOLD_PREFIX, View, entry_attribute,
    expiry_attribute, number, seq_attribute,
};
use crate::table;

mod client;
mod decide;
mod read;
mod release;
mod update;

use client::build_client;
use decide::{Decision, Written, applied_waiter_ms, queued};
use update::Update;

/// An item as the SDK gives it.
type Item = HashMap<String, AttributeValue>;

/// The shortest ttl the store accepts.
const MIN_TTL: Duration = Duration::from_millis(100);
/// The most entries one renewal call takes (its entries are sent
/// [`DynamoConfig::renew_concurrency`] at a time).
const MAX_BATCH: usize = 1000;
/// How many times an acquisition re-reads and rewrites the key item when
/// other clients change it between its read and its write, before it gives
/// up with a retryable error.
const MAX_ATTEMPTS: usize = 16;
/// The shortest idle expiry: DynamoDB's TTL deletes within hours anyway.
const MIN_IDLE_EXPIRY: Duration = Duration::from_secs(3600);

/// A [`LeaseStore`] on a DynamoDB table, with expiry by the clients' wall
/// clocks ([`ExpiryClock::Client`]). Clones share the client.
///
/// See the [crate documentation](crate) for the guarantees, the clock
/// assumption, the key schema and the costs.
///
/// `Debug` shows the table and where it is (an endpoint URL redacted),
/// never credentials.
///
/// # Examples
///
/// ```no_run
/// use lock_core::{LeaseLocker, Locker, LockerOptions};
/// use lock_dynamodb::DynamoStore;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let store = DynamoStore::connect("dynamodb://locks?region=eu-west-1&create_table=true").await?;
/// let locker = LeaseLocker::new(store, LockerOptions::default())?;
/// let guard = locker.try_lock("nightly-report").await?;
/// // ... pass guard.fencing_token() with every write to the resource ...
/// guard.unlock().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DynamoStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    context: Context,
    skew_override_ms: Option<u64>,
    idle_expiry_ms: Option<u64>,
    renewals: Semaphore,
    min_ttl: Duration,
    clock: Arc<dyn WallClock>,
    /// Reads of key items in flight, by key, for waiting entries' renewals
    /// to share (see [`DynamoStore::read_shared`]), each with its serial.
    reads: Mutex<HashMap<String, (u64, SharedRead)>>,
    /// The serial of the next shared read.
    read_serials: AtomicU64,
    /// This process's waiters, woken by its releases that promote them.
    wakers: LocalWakers,
    /// The config as `Debug` shows it (already redacted).
    description: String,
}

/// A read of a key item that several callers can await.
type SharedRead = Shared<BoxFuture<'static, Result<Option<Item>, StoreError>>>;

impl fmt::Debug for DynamoStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("DynamoStore")
            .field("table", &self.inner.context.table)
            .field("place", &self.inner.context.place)
            .field("config", &format_args!("{}", self.inner.description))
            .finish()
    }
}

impl DynamoStore {
    /// Connects with the settings of a `dynamodb://TABLE?region=R` URL
    /// (see [`DynamoConfig::from_url`]).
    ///
    /// # Errors
    ///
    /// As [`DynamoConfig::from_url`] and [`connect_with`](Self::connect_with).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future drops the client it was building. A
    /// table creation asked for (`create_table=true`) goes on in DynamoDB;
    /// connecting again waits for it.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(DynamoConfig::from_url(url)?).await
    }

    /// Connects with `config`: loads the AWS configuration (unless given),
    /// checks that the table exists with the expected key schema (creating
    /// it when [`DynamoConfig::create_table`] is set), and returns the
    /// store.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] for a bad table name, a missing table
    /// (naming the fix), a table with another key schema, or an idle expiry
    /// under an hour; [`StoreErrorKind::Auth`] when the credentials are
    /// refused; a retryable kind when DynamoDB cannot be reached.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future drops the client it was building. A
    /// table creation asked for goes on in DynamoDB; connecting again waits for
    /// it.
    pub async fn connect_with(config: DynamoConfig) -> Result<Self, StoreError> {
        table::check_name(&config.table)?;
        if let Some(idle) = config.idle_expiry
            && idle < MIN_IDLE_EXPIRY
        {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "idle_expiry {idle:?} is under an hour: DynamoDB's TTL deletes items hours after they expire anyway, and a short idle expiry only risks deleting a live key; use 1h or more"
                ),
            ));
        }
        let description = format!("{config:?}");
        let context = Context {
            table: config.table.clone(),
            place: config.place(),
        };
        let client = build_client(&config).await?;
        table::ensure(
            &client,
            &context,
            config.create_table,
            config.idle_expiry.is_some(),
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                context,
                skew_override_ms: config.max_clock_skew.map(millis_up),
                idle_expiry_ms: config.idle_expiry.map(millis_up),
                renewals: Semaphore::new(config.renew_concurrency),
                min_ttl: config.min_ttl.unwrap_or(MIN_TTL).max(MIN_TTL),
                clock: config.clock,
                reads: Mutex::new(HashMap::new()),
                read_serials: AtomicU64::new(0),
                wakers: LocalWakers::default(),
                description,
            }),
        })
    }

    /// The DynamoDB client the store sends its requests with (for
    /// measurements and for writing fenced resources in the same table
    /// region).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.inner.context.table
    }

    fn now(&self) -> u64 {
        self.inner.clock.now_millis()
    }

    /// The skew this store allows for a request asking for `requested`.
    fn skew_ms(&self, requested: Duration) -> u64 {
        self.inner
            .skew_override_ms
            .unwrap_or_else(|| millis_up(requested))
    }

    /// The `idle_expiry` value for a write at `now`, in epoch seconds.
    fn idle_expiry_at(&self, now: u64) -> Option<u64> {
        self.inner
            .idle_expiry_ms
            .map(|idle| now.saturating_add(idle) / 1000 + 1)
    }

    fn key_value(key: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([(KEY.to_owned(), AttributeValue::S(key.to_owned()))])
    }

    /// Sends `update` to the item of `key`: `Ok(Applied(attributes))`, or
    /// `Ok(Refused(item))` when its condition failed (with the item as it
    /// was, when asked for).
    async fn update(
        &self,
        operation: &str,
        key: &str,
        update: Update,
        return_values: ReturnValue,
        item_on_failure: bool,
    ) -> Result<Written, StoreError> {
        let (expression, condition, names, values) = update.finish();
        let mut request = self
            .inner
            .client
            .update_item()
            .table_name(&self.inner.context.table)
            .set_key(Some(Self::key_value(key)))
            .update_expression(expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(return_values);
        if let Some(condition) = condition {
            request = request.condition_expression(condition);
        }
        if item_on_failure {
            request = request.return_values_on_condition_check_failure(
                ReturnValuesOnConditionCheckFailure::AllOld,
            );
        }
        match request.send().await {
            Ok(output) => Ok(Written::Applied(output.attributes.unwrap_or_default())),
            Err(SdkError::ServiceError(service))
                if matches!(
                    service.err(),
                    UpdateItemError::ConditionalCheckFailedException(_)
                ) =>
            {
                let item = match service.into_err() {
                    UpdateItemError::ConditionalCheckFailedException(failed) => failed.item,
                    _ => None,
                };
                Ok(Written::Refused(item))
            }
            Err(error) => Err(store_error(operation, &self.inner.context, error).with_key(key)),
        }
    }

    async fn renew_one(
        &self,
        renewal: &RenewEntry<'_>,
        ttl: Duration,
    ) -> Result<RenewOutcome, StoreError> {
        let ttl_ms = millis_up(ttl);
        let now = self.now();
        let Some(waiter_ttl) = renewal.wait_ttl else {
            // A held entry: extended only while live and told it holds.
            // Its recorded ttl stays the grant's (a locker renews with the
            // ttl it was granted with).
            let mut update = self.extend(renewal.lease_id, now, ttl_ms, None);
            let entry = update.name(&entry_attribute(renewal.lease_id));
            let told = update.value(AttributeValue::S(TOLD_PREFIX.to_owned()));
            update.and_condition(format!("begins_with({entry}, {told})"));
            return Ok(
                match self
                    .update("renew", renewal.key, update, ReturnValue::None, false)
                    .await?
                {
                    Written::Applied(_) => RenewOutcome::Renewed {
                        ttl: Duration::from_millis(ttl_ms),
                    },
                    Written::Refused(_) => RenewOutcome::Lost,
                },
            );
        };
        // A waiting entry: read where it stands; write only to grant it, or
        // when less than its waiter ttl is left (each write applies more,
        // so most polls are reads).
        let requested_ms = millis_up(waiter_ttl);
        let (mut state, shared) = self.read_shared(renewal.key).await?;
        let live = |state: &Option<KeyState>| {
            state.as_ref().is_some_and(|state| {
                state
                    .find(renewal.lease_id)
                    .is_some_and(|entry| entry.expires_at > now)
            })
        };
        if shared && !live(&state) {
            // A read started before this call may predate the entry itself.
            state = self.read(renewal.key).await?;
        }
        let Some(state) = state else {
            return Ok(RenewOutcome::Lost);
        };
        let Some(entry) = state
            .find(renewal.lease_id)
            .filter(|entry| entry.expires_at > now)
        else {
            return Ok(RenewOutcome::Lost);
        };
        let skew_ms = self.inner.skew_override_ms.unwrap_or(entry.skew_ms);
        let view = state.view(now, skew_ms);
        let retry_after = view
            .retry_after(entry.seq, now, skew_ms)
            .map(Duration::from_millis);
        let left_ms = entry.expires_at - now;
        if view.holds(renewal.lease_id) == Some(true) {
            let seq = entry.seq;
            let info = entry.info(true, ttl_ms);
            let mut update = self.extend(renewal.lease_id, now, ttl_ms, Some(info));
            // It holds because these ended: unless one was renewed since.
            for ahead in view.expired_before(seq) {
                update.unchanged_expiry(ahead.lease_id, ahead.expires_at);
            }
            match self
                .update("renew", renewal.key, update, ReturnValue::None, false)
                .await?
            {
                Written::Applied(_) => {
                    return Ok(RenewOutcome::Granted(
                        Grant::new(Duration::from_millis(ttl_ms))
                            .with_token(FencingToken::from(seq)),
                    ));
                }
                // Its own entry ended, or an entry ahead was renewed after
                // the read: renewing it as waiting tells which.
                Written::Refused(_) => {}
            }
        } else if left_ms >= requested_ms {
            return Ok(RenewOutcome::Waiting {
                ttl: Duration::from_millis(left_ms),
                retry_after,
            });
        }
        let applied_ms = applied_waiter_ms(requested_ms);
        let update = self.extend(renewal.lease_id, now, applied_ms, None);
        Ok(
            match self
                .update("renew", renewal.key, update, ReturnValue::None, false)
                .await?
            {
                Written::Applied(_) => RenewOutcome::Waiting {
                    ttl: Duration::from_millis(applied_ms),
                    retry_after,
                },
                Written::Refused(_) => RenewOutcome::Lost,
            },
        )
    }
}

impl DynamoStore {
    async fn add_entry(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        let skew_ms = self.skew_ms(request.max_clock_skew);
        self.check_request(&request, skew_ms)?;
        let mut known: Option<KeyState> = None;
        for _ in 0..MAX_ATTEMPTS {
            let now = self.now();
            let Some(state) = known.take() else {
                let update = self.fast_grant(&request, now, skew_ms);
                match self
                    .update(
                        "acquire",
                        request.key,
                        update,
                        ReturnValue::UpdatedNew,
                        true,
                    )
                    .await?
                {
                    Written::Applied(attributes) => {
                        let fence = KeyState::parse(request.key, &attributes)?.fence;
                        let mut grant = Grant::new(Duration::from_millis(millis_up(request.ttl)));
                        if request.fencing.is_enabled() {
                            grant = grant.with_token(FencingToken::from(fence));
                        }
                        return Ok(AcquireOutcome::Acquired(grant));
                    }
                    Written::Refused(item) => {
                        known = KeyState::parse_refused(request.key, item)?;
                        continue;
                    }
                }
            };
            match self.decide(&request, &state, now, skew_ms)? {
                Decision::Answer(outcome) => return Ok(outcome),
                Decision::Refresh {
                    seq,
                    info,
                    expired_ahead,
                } => {
                    let ttl_ms = millis_up(request.ttl);
                    let mut update = self.extend(request.lease_id, now, ttl_ms, Some(info));
                    for (lease_id, expires_at) in expired_ahead {
                        update.unchanged_expiry(lease_id, expires_at);
                    }
                    match self
                        .update("acquire", request.key, update, ReturnValue::None, false)
                        .await?
                    {
                        Written::Applied(_) => {
                            let mut grant = Grant::new(Duration::from_millis(ttl_ms));
                            if request.fencing.is_enabled() {
                                grant = grant.with_token(FencingToken::from(seq));
                            }
                            return Ok(AcquireOutcome::Acquired(grant));
                        }
                        // It ended meanwhile: read the key again.
                        Written::Refused(_) => known = self.read(request.key).await?,
                    }
                }
                Decision::Enqueue(update) => {
                    match self
                        .update("acquire", request.key, update, ReturnValue::AllNew, true)
                        .await?
                    {
                        Written::Applied(item) => {
                            let state = KeyState::parse(request.key, &item)?;
                            let view = state.view(now, skew_ms);
                            let entry = state.find(request.lease_id).ok_or_else(|| {
                                StoreError::corrupt(request.key, "an entry just added is missing")
                            })?;
                            if view.holds(request.lease_id) == Some(true) {
                                // The entries ahead left meanwhile: it holds,
                                // and is told so by the next attempt's write.
                                known = Some(state);
                                continue;
                            }
                            let ttl_ms = entry.expires_at.saturating_sub(now);
                            return Ok(queued(&request, &view, entry.seq, ttl_ms, now, skew_ms));
                        }
                        Written::Refused(item) => {
                            known = KeyState::parse_refused(request.key, item)?;
                        }
                    }
                }
                Decision::Write { update, outcome } => {
                    match self
                        .update("acquire", request.key, update, ReturnValue::None, true)
                        .await?
                    {
                        Written::Applied(_) => return Ok(outcome),
                        Written::Refused(item) => {
                            known = KeyState::parse_refused(request.key, item)?;
                        }
                    }
                }
            }
        }
        Err(StoreError::new(
            StoreErrorKind::Busy,
            format!(
                "the key item changed under {MAX_ATTEMPTS} attempts in a row (heavy contention); try again"
            ),
        )
        .with_key(request.key))
    }
}

#[async_trait]
impl LeaseStore for DynamoStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        let (key, lease_id) = (request.key, request.lease_id);
        let outcome = self.add_entry(request).await?;
        // A release by this process from now on wakes it, even before its
        // owner waits.
        self.inner.wakers.expect_if_queued(key, lease_id, &outcome);
        Ok(outcome)
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        let renewals = leases.iter().map(|renewal| async move {
            let _permit = self.inner.renewals.acquire().await.map_err(|_| {
                StoreError::new(
                    StoreErrorKind::Other,
                    "the store's renewal limiter is closed",
                )
            })?;
            self.renew_one(renewal, ttl).await
        });
        let outcomes: Vec<RenewOutcome> = join_all(renewals)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        self.inner.wakers.expect_if_waiting(leases, &outcomes);
        Ok(outcomes)
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        self.release_entry(key, lease_id, fencing).await
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        let Some(state) = self.read(key).await? else {
            return Ok(None);
        };
        let now = self.now();
        let view = state.view(now, self.inner.skew_override_ms.unwrap_or(0));
        let holders = view.holders(now).collect();
        let last_token = (state.fence > 0).then(|| FencingToken::from(state.fence));
        let info = LeaseInfo::new(holders, last_token).with_waiting(view.waiting());
        Ok(Some(match view.limit() {
            Some(limit) => info.with_limit(limit),
            None => info,
        }))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_min_ttl(self.inner.min_ttl)
            .with_ttl_granularity(Duration::from_millis(1))
            .with_max_key_len(lock_core::MAX_KEY_LEN)
            .with_max_batch(MAX_BATCH)
            .with_native_wait(false)
            // Every poll is a request (and, now and then, a write): a
            // waiter polls at most once a second once it has waited a
            // while.
            .with_poll_interval(Duration::from_secs(1))
            .with_fencing(self.inner.idle_expiry_ms.is_none())
            .with_clock(ExpiryClock::Client)
    }

    /// Nothing tells a waiter that it holds: it renews its entry to learn
    /// it. A release by this process that promotes it wakes it to do that
    /// at once (the release reads the item it left to know whom); waiters
    /// elsewhere poll.
    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        self.inner.wakers.wait_for(key, lease_id, max).await
    }
}
