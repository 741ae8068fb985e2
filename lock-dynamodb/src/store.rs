//! [`DynamoStore`]: the [`LeaseStore`] on one DynamoDB table.

use std::collections::HashMap;
use std::fmt;
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
    LeaseId, LeaseInfo, LeaseStore, LockMode, Queued, ReleaseOutcome, RenewEntry, RenewOutcome,
    StoreError, StoreErrorKind,
};
use tokio::sync::Semaphore;

use crate::clock::{WallClock, millis_up};
use crate::config::DynamoConfig;
use crate::error::{Context, store_error};
use crate::item::{
    COUNT, EntryInfo, FENCE, IDLE_EXPIRY, KEY, KeyState, TOLD_PREFIX, entry_attribute,
    expiry_attribute, number, seq_attribute,
};
use crate::table;

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
    /// to share (see [`DynamoStore::read_shared`]).
    reads: Mutex<HashMap<String, SharedRead>>,
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

    /// The first attempt of every acquisition: grant on a key with no
    /// entries, bumping the counter, in one conditional write.
    fn fast_grant(&self, request: &AcquireRequest<'_>, now: u64, skew_ms: u64) -> Update {
        let ttl_ms = millis_up(request.ttl);
        let mut update = Update::default();
        let fence = update.name(FENCE);
        let zero = update.value(number(0));
        let one = update.value(number(1));
        let next = format!("if_not_exists({fence}, {zero}) + {one}");
        update.set(fence.clone(), next.clone());
        let count = update.name(COUNT);
        update.set(count.clone(), one.clone());
        update.set_value(
            &entry_attribute(request.lease_id),
            new_info(request, true, ttl_ms, skew_ms).value(),
        );
        let seq = update.name(&seq_attribute(request.lease_id));
        update.set(seq, next);
        update.set_value(
            &expiry_attribute(request.lease_id),
            number(now.saturating_add(ttl_ms)),
        );
        if let Some(at) = self.idle_expiry_at(now) {
            update.set_value(IDLE_EXPIRY, number(at));
        }
        update.condition(format!("attribute_not_exists({count}) OR {count} = {zero}"));
        update
    }

    /// Checks what idle expiry allows.
    fn check_request(&self, request: &AcquireRequest<'_>, skew_ms: u64) -> Result<(), StoreError> {
        let Some(idle_ms) = self.inner.idle_expiry_ms else {
            return Ok(());
        };
        if request.fencing.is_enabled() {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                "this store expires idle keys (idle_expiry), which forgets their fencing counters: it mints no fencing tokens; turn fencing off (LockerOptions fencing(false)) or idle expiry off",
            )
            .with_key(request.key));
        }
        let longest = millis_up(request.ttl.max(request.queue.unwrap_or_default()));
        if longest.saturating_add(skew_ms.saturating_mul(2)) > idle_ms {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "a ttl of {longest} ms plus twice the clock skew ({skew_ms} ms) does not fit in the idle expiry ({idle_ms} ms): the key item could expire under a live lease; lengthen idle_expiry"
                ),
            )
            .with_key(request.key));
        }
        Ok(())
    }

    /// What an acquisition does given the key item: answer without a write,
    /// or write `plan`.
    fn decide(
        &self,
        request: &AcquireRequest<'_>,
        state: &KeyState,
        now: u64,
        skew_ms: u64,
    ) -> Result<Decision, StoreError> {
        let ttl_ms = millis_up(request.ttl);
        // An earlier attempt with this lease id may have been applied (its
        // reply lost): answer that entry.
        let own = state.find(request.lease_id);
        if let Some(entry) = own.filter(|entry| entry.expires_at > now) {
            let view = state.view(now, skew_ms);
            return Ok(if view.holds(request.lease_id) == Some(true) {
                Decision::Refresh {
                    seq: entry.seq,
                    info: entry.info(true, ttl_ms),
                    expired_ahead: view
                        .expired_before(entry.seq)
                        .map(|ahead| (ahead.lease_id, ahead.expires_at))
                        .collect(),
                }
            } else {
                // It waits: it lives this long yet.
                let left = Duration::from_millis(entry.expires_at - now);
                Decision::Answer(AcquireOutcome::Queued(Queued::new(left)))
            });
        }
        // An own entry that is over by this client's clock is dead: it is
        // replaced below.
        let mut others = state.clone();
        others
            .entries
            .retain(|entry| entry.lease_id != request.lease_id);
        let view = others.view(now, skew_ms);
        if request.mode == LockMode::Shared
            && let Some(limit) = view.limit()
            && limit != request.limit
        {
            return Ok(Decision::Answer(AcquireOutcome::LimitMismatch { limit }));
        }
        let holds = view.would_hold(request.mode, request.limit);
        let (expires_at, entry_ttl_ms) = match (holds, request.queue) {
            (true, _) => (now.saturating_add(ttl_ms), ttl_ms),
            (false, Some(waiter_ttl)) => {
                let waiter_ms = applied_waiter_ms(millis_up(waiter_ttl));
                (now.saturating_add(waiter_ms), waiter_ms)
            }
            (false, None) => {
                let holder = view.first_holder(now).ok_or_else(|| {
                    StoreError::corrupt(request.key, "live entries without a holder")
                })?;
                return Ok(Decision::Answer(AcquireOutcome::Held(holder)));
            }
        };
        let seq = state.fence.saturating_add(1);
        // Every entry counted as expired is removed, and the write checks it
        // was not renewed since the read.
        let purge: Vec<(LeaseId, u64)> = view
            .expired
            .iter()
            .map(|entry| (entry.lease_id, entry.expires_at))
            .collect();
        let own_stored = usize::from(own.is_some());
        let count = state.entries.len() - purge.len() - own_stored + 1;
        let outcome = if holds {
            let mut grant = Grant::new(Duration::from_millis(ttl_ms));
            if request.fencing.is_enabled() {
                grant = grant.with_token(FencingToken::from(seq));
            }
            if let Some(previous) = view.expired_holder() {
                tracing::debug!(key = request.key, previous, "taking over an expired lease");
                grant = grant.with_previous_owner(previous);
            }
            AcquireOutcome::Acquired(grant)
        } else {
            let mut queued = Queued::new(Duration::from_millis(entry_ttl_ms));
            if request.fencing.is_enabled() {
                queued = queued.with_token(FencingToken::from(seq));
            }
            if let Some(holder) = view.first_holder(now) {
                queued = queued.with_holder(holder);
            }
            if let Some(after) = view.retry_after(seq, now, skew_ms) {
                queued = queued.with_retry_after(Duration::from_millis(after));
            }
            AcquireOutcome::Queued(queued)
        };
        let mut update = Update::default();
        let fence = update.name(FENCE);
        let old_fence = update.value(number(state.fence));
        let stored = update.name(COUNT);
        let old_count = update.value(number(state.count));
        update.condition(format!("{fence} = {old_fence} AND {stored} = {old_count}"));
        let new_fence = update.value(number(seq));
        update.set(fence, new_fence.clone());
        let new_count = update.value(number(count));
        update.set(stored, new_count);
        update.set_value(
            &entry_attribute(request.lease_id),
            new_info(request, holds, entry_ttl_ms, skew_ms).value(),
        );
        let seq_name = update.name(&seq_attribute(request.lease_id));
        update.set(seq_name, new_fence);
        update.set_value(&expiry_attribute(request.lease_id), number(expires_at));
        if let Some(at) = self.idle_expiry_at(now) {
            update.set_value(IDLE_EXPIRY, number(at));
        }
        for (lease_id, expires_at) in purge {
            update.remove(&entry_attribute(lease_id));
            update.remove(&seq_attribute(lease_id));
            update.unchanged_expiry(lease_id, expires_at);
            update.remove(&expiry_attribute(lease_id));
        }
        Ok(Decision::Write { update, outcome })
    }

    /// Extends the live entry `lease_id` to `ttl_ms` from `now`, rewriting
    /// its settings to `info` when given, if it is still live by this
    /// client's clock.
    fn extend(&self, lease_id: LeaseId, now: u64, ttl_ms: u64, info: Option<EntryInfo>) -> Update {
        let mut update = Update::default();
        let expiry = update.name(&expiry_attribute(lease_id));
        let new_expiry = update.value(number(now.saturating_add(ttl_ms)));
        let now_value = update.value(number(now));
        update.set(expiry.clone(), new_expiry);
        if let Some(info) = info {
            update.set_value(&entry_attribute(lease_id), info.value());
        }
        if let Some(at) = self.idle_expiry_at(now) {
            update.set_value(IDLE_EXPIRY, number(at));
        }
        update.condition(format!("{expiry} > {now_value}"));
        update
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

    /// With fencing off: deletes the whole item when the entry is its only
    /// one. `Ok(None)` when the entry has company (release it by update).
    async fn release_by_delete(
        &self,
        key: &str,
        lease_id: LeaseId,
        now: u64,
    ) -> Result<Option<ReleaseOutcome>, StoreError> {
        let mut update = Update::default();
        let expiry = update.name(&expiry_attribute(lease_id));
        let count = update.name(COUNT);
        let one = update.value(number(1));
        let now_value = update.value(number(now));
        update.condition(format!("{count} = {one} AND {expiry} > {now_value}"));
        let (_, condition, names, values) = update.finish();
        let result = self
            .inner
            .client
            .delete_item()
            .table_name(&self.inner.context.table)
            .set_key(Some(Self::key_value(key)))
            .set_condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Some(ReleaseOutcome::Released)),
            Err(SdkError::ServiceError(service))
                if matches!(
                    service.err(),
                    DeleteItemError::ConditionalCheckFailedException(_)
                ) =>
            {
                let item = match service.into_err() {
                    DeleteItemError::ConditionalCheckFailedException(failed) => failed.item,
                    _ => None,
                };
                let live = match item {
                    Some(item) => KeyState::parse(key, &item)?
                        .find(lease_id)
                        .is_some_and(|entry| entry.expires_at > now),
                    None => false,
                };
                Ok((!live).then_some(ReleaseOutcome::NotHeld))
            }
            Err(error) => Err(store_error("release", &self.inner.context, error).with_key(key)),
        }
    }
}

/// The settings of a new entry for `request`.
fn new_info(request: &AcquireRequest<'_>, told: bool, ttl_ms: u64, skew_ms: u64) -> EntryInfo {
    EntryInfo {
        told,
        mode: request.mode,
        limit: request.limit,
        ttl_ms,
        skew_ms,
        owner: request.owner.to_owned(),
    }
}

/// The waiter ttl the store applies for a requested one: longer by half,
/// at most by a second, so that the renewals (and polls) of a waiting entry
/// within that extra time only read the key item: a renewal writes only
/// when less than the requested ttl is left. A dead waiter holds up the
/// queue for at most this applied ttl (plus the clock skew): a second more
/// than it asked for.
fn applied_waiter_ms(requested_ms: u64) -> u64 {
    requested_ms.saturating_add((requested_ms / 2).min(WAITER_READ_SPAN_MS))
}

/// The longest the store stretches a waiting entry's ttl to spare writes.
const WAITER_READ_SPAN_MS: u64 = 1000;

/// What [`DynamoStore::decide`] concluded.
enum Decision {
    /// Answer without writing.
    Answer(AcquireOutcome),
    /// The request's own entry holds already (a retried request): extend it
    /// and answer the grant.
    Refresh {
        seq: u64,
        info: EntryInfo,
        /// Entries ahead counted as expired, with the expiry read.
        expired_ahead: Vec<(LeaseId, u64)>,
    },
    /// Write `update` (conditional on the item being unchanged), then
    /// answer `outcome`.
    Write {
        update: Update,
        outcome: AcquireOutcome,
    },
}

/// What a conditional write did.
enum Written {
    /// Applied; the attributes asked for.
    Applied(Item),
    /// The condition failed; the item as it was, when asked for.
    Refused(Option<Item>),
}

async fn build_client(config: &DynamoConfig) -> Result<Client, StoreError> {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let sdk_config: SdkConfig = match &config.sdk_config {
        Some(sdk_config) => sdk_config.clone(),
        None => {
            let mut loader =
                aws_config::defaults(BehaviorVersion::latest()).http_client(http_client.clone());
            if let Some(region) = &config.region {
                loader = loader.region(Region::new(region.clone()));
            }
            if config.credentials.is_some() {
                // Skip the chain's lookups: the key is given.
                loader = loader.credentials_provider(static_credentials(config));
            }
            loader.load().await
        }
    };
    let mut builder = aws_sdk_dynamodb::config::Builder::from(&sdk_config)
        .http_client(http_client)
        // One request per call: the locker owns retries and their timing.
        .retry_config(RetryConfig::disabled());
    if let Some(region) = &config.region {
        builder = builder.region(Region::new(region.clone()));
    } else if sdk_config.region().is_none() {
        if config.endpoint.is_some() {
            // A local endpoint ignores the region, but signing needs one.
            builder = builder.region(Region::from_static("us-east-1"));
        } else {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "no AWS region for table {}: add region=R to the URL, or set AWS_REGION (or a region in ~/.aws/config)",
                    config.table
                ),
            ));
        }
    }
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint.clone());
    }
    if config.credentials.is_some() {
        builder = builder.credentials_provider(static_credentials(config));
    }
    Ok(Client::from_conf(builder.build()))
}

fn static_credentials(config: &DynamoConfig) -> Credentials {
    let credentials = config.credentials.as_ref();
    Credentials::new(
        credentials.map_or("", |c| c.access_key_id.as_str()),
        credentials.map_or("", |c| c.secret_access_key.as_str()),
        credentials.and_then(|c| c.session_token.clone()),
        None,
        "dlock-url",
    )
}

#[async_trait]
impl LeaseStore for DynamoStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
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
                        known = item
                            .map(|item| KeyState::parse(request.key, &item))
                            .transpose()?;
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
                Decision::Write { update, outcome } => {
                    match self
                        .update("acquire", request.key, update, ReturnValue::None, true)
                        .await?
                    {
                        Written::Applied(_) => return Ok(outcome),
                        Written::Refused(item) => {
                            known = item
                                .map(|item| KeyState::parse(request.key, &item))
                                .transpose()?;
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
        join_all(renewals).await.into_iter().collect()
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        let now = self.now();
        if !fencing.is_enabled()
            && let Some(outcome) = self.release_by_delete(key, lease_id, now).await?
        {
            return Ok(outcome);
        }
        let mut update = Update::default();
        let expiry = update.name(&expiry_attribute(lease_id));
        let now_value = update.value(number(now));
        let count = update.name(COUNT);
        let one = update.value(number(1));
        update.remove(&entry_attribute(lease_id));
        update.remove(&seq_attribute(lease_id));
        update.remove_name(expiry.clone());
        update.set(count.clone(), format!("{count} - {one}"));
        if let Some(at) = self.idle_expiry_at(now) {
            update.set_value(IDLE_EXPIRY, number(at));
        }
        update.condition(format!("{expiry} > {now_value}"));
        Ok(
            match self
                .update("release", key, update, ReturnValue::None, false)
                .await?
            {
                Written::Applied(_) => ReleaseOutcome::Released,
                Written::Refused(_) => ReleaseOutcome::NotHeld,
            },
        )
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
}

impl DynamoStore {
    /// The key item, read strongly consistently.
    async fn read(&self, key: &str) -> Result<Option<KeyState>, StoreError> {
        let item = get_item(
            self.inner.client.clone(),
            self.inner.context.clone(),
            key.to_owned(),
        )
        .await?;
        item.map(|item| KeyState::parse(key, &item)).transpose()
    }

    /// The key item, from a strongly consistent read that this call may
    /// share with others of this store already in flight for the same key
    /// (then `true`). The waiters of one process poll their keys often; a
    /// shared read is one request for all of them.
    ///
    /// A shared read may have been served before this call began: it may
    /// show an older state (harmless for a waiting entry: holding only ever
    /// starts, its own expiry only grows), or not yet show an entry added
    /// just before; callers read again before concluding an entry is gone.
    async fn read_shared(&self, key: &str) -> Result<(Option<KeyState>, bool), StoreError> {
        let (read, shared) = {
            let mut reads = self
                .inner
                .reads
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match reads.get(key) {
                Some(read) => (read.clone(), true),
                None => {
                    let read = shared_read(&self.inner, key);
                    reads.insert(key.to_owned(), read.clone());
                    (read, false)
                }
            }
        };
        let item = read.await?;
        Ok((
            item.map(|item| KeyState::parse(key, &item)).transpose()?,
            shared,
        ))
    }
}

/// A read of `key`'s item that removes itself from the store's reads in
/// flight when done. It holds the store weakly: an abandoned read does not
/// keep a dropped store alive.
fn shared_read(inner: &Arc<Inner>, key: &str) -> SharedRead {
    let (client, context, key) = (inner.client.clone(), inner.context.clone(), key.to_owned());
    let store: Weak<Inner> = Arc::downgrade(inner);
    async move {
        let item = get_item(client, context, key.clone()).await;
        if let Some(store) = store.upgrade() {
            store
                .reads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
        item
    }
    .boxed()
    .shared()
}

/// One strongly consistent `GetItem` of `key`'s item (`None` when absent).
async fn get_item(
    client: Client,
    context: Context,
    key: String,
) -> Result<Option<Item>, StoreError> {
    let output = client
        .get_item()
        .table_name(&context.table)
        .set_key(Some(DynamoStore::key_value(&key)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|error| store_error("read", &context, error).with_key(&key))?;
    Ok(output.item.filter(|item| item.len() > 1))
}

/// An update expression under construction: every attribute name and value
/// goes through a placeholder, so keys, owner names and reserved words need
/// no quoting.
#[derive(Default)]
struct Update {
    sets: Vec<String>,
    removes: Vec<String>,
    condition: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Update {
    /// The placeholder of attribute name `name`.
    fn name(&mut self, name: &str) -> String {
        if let Some((placeholder, _)) = self.names.iter().find(|(_, known)| *known == name) {
            return placeholder.clone();
        }
        let placeholder = format!("#n{}", self.names.len());
        self.names.insert(placeholder.clone(), name.to_owned());
        placeholder
    }

    /// A placeholder for `value`.
    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    fn set(&mut self, path: String, operand: String) {
        self.sets.push(format!("{path} = {operand}"));
    }

    fn set_value(&mut self, name: &str, value: AttributeValue) {
        let path = self.name(name);
        let operand = self.value(value);
        self.set(path, operand);
    }

    fn remove(&mut self, name: &str) {
        let path = self.name(name);
        self.removes.push(path);
    }

    fn remove_name(&mut self, path: String) {
        self.removes.push(path);
    }

    fn condition(&mut self, condition: String) {
        self.condition = Some(condition);
    }

    /// Adds to the condition that `lease_id`'s expiry is still
    /// `expires_at`: an entry counted as expired was not renewed (or
    /// replaced) since it was read.
    fn unchanged_expiry(&mut self, lease_id: LeaseId, expires_at: u64) {
        let expiry = self.name(&expiry_attribute(lease_id));
        let seen = self.value(number(expires_at));
        self.and_condition(format!("{expiry} = {seen}"));
    }

    fn and_condition(&mut self, condition: String) {
        self.condition = Some(match self.condition.take() {
            Some(first) => format!("({first}) AND ({condition})"),
            None => condition,
        });
    }

    /// The update expression, the condition, and the placeholders.
    fn finish(
        self,
    ) -> (
        String,
        Option<String>,
        HashMap<String, String>,
        HashMap<String, AttributeValue>,
    ) {
        let mut expression = String::new();
        if !self.sets.is_empty() {
            expression.push_str("SET ");
            expression.push_str(&self.sets.join(", "));
        }
        if !self.removes.is_empty() {
            if !expression.is_empty() {
                expression.push(' ');
            }
            expression.push_str("REMOVE ");
            expression.push_str(&self.removes.join(", "));
        }
        (expression, self.condition, self.names, self.values)
    }
}
