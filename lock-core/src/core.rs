//! What every handle on one locker shares: its store calls, options,
//! clock, registry and background task; taking a lock at once; turning a
//! grant into a guard.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::calls::Calls;
use crate::clock::{Clock, Stamp};
use crate::guard::Link;
use crate::observe;
use crate::registry::{Registry, Tracked};
use crate::scheduler::{self, Command, SchedulerHandle};
use crate::state::{LockIdentity, LockState, SharedState};
use crate::{
    AcquireOutcome, AcquireRequest, Capabilities, FencingToken, LeaseId, LeaseStore, LockError,
    LockGuard, LockKind, LockMode, LockerOptions, ReleaseOutcome, StoreError, StoreErrorKind,
};

/// What kind of entry a request adds to its key's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kind {
    pub(crate) mode: LockMode,
    pub(crate) limit: u32,
}

impl Kind {
    /// The entry a request of `kind` adds.
    pub(crate) fn of(kind: LockKind) -> Result<Self, LockError> {
        let (mode, limit) = kind.mode_and_limit()?;
        Ok(Self { mode, limit })
    }
}

pub(crate) struct Core<S: LeaseStore> {
    /// Every store call goes through here.
    pub(crate) calls: Calls<S>,
    pub(crate) options: Arc<LockerOptions>,
    pub(crate) capabilities: Capabilities,
    pub(crate) clock: Clock,
    pub(crate) closed: AtomicBool,
    serials: AtomicU64,
    pub(crate) registry: Arc<Registry>,
    pub(crate) scheduler: OnceLock<SchedulerHandle>,
}

impl<S: LeaseStore> Core<S> {
    pub(crate) fn new(store: Arc<S>, options: LockerOptions, capabilities: Capabilities) -> Self {
        let clock = Clock::new(options.boot_clock.clone());
        Self {
            calls: Calls::new(store, options.store_timeout()),
            options: Arc::new(options),
            capabilities,
            clock,
            closed: AtomicBool::new(false),
            serials: AtomicU64::new(0),
            registry: Arc::new(Registry::new()),
            scheduler: OnceLock::new(),
        }
    }

    pub(crate) fn next_serial(&self) -> u64 {
        self.serials.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The background task, started on the current runtime by the first
    /// acquisition.
    pub(crate) fn scheduler(&self) -> Result<&SchedulerHandle, LockError> {
        if let Some(handle) = self.scheduler.get() {
            return Ok(handle);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            LockError::InvalidConfig("locks must be taken inside a Tokio runtime".into())
        })?;
        Ok(self.scheduler.get_or_init(|| {
            scheduler::spawn(
                &runtime,
                self.calls.clone(),
                self.options.clone(),
                self.clock.clone(),
                self.capabilities.max_batch,
                self.registry.clone(),
            )
        }))
    }

    /// Releases an entry by lease id without waiting: through the
    /// background task, or a spawned task once that has stopped.
    pub(crate) fn release_detached(&self, key: String, lease_id: LeaseId) {
        let command = Command::ReleaseLease { key, lease_id };
        let command = match self.scheduler.get() {
            Some(handle) => match handle.commands.send(command) {
                Ok(()) => return,
                Err(rejected) => rejected.0,
            },
            None => command,
        };
        let Command::ReleaseLease { key, lease_id } = command else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %key, "no runtime to release a lease on; it ends with its ttl");
            return;
        };
        let calls = self.calls.clone();
        let fencing = self.options.fencing();
        runtime.spawn(async move {
            if let Err(error) = calls.release(&key, lease_id, fencing).await {
                tracing::warn!(key = %key, %error, "background release failed; the lease ends with its ttl");
            }
        });
    }

    /// The request for one entry of `kind` on `key`.
    pub(crate) fn request<'a>(
        &'a self,
        key: &'a str,
        lease_id: LeaseId,
        kind: Kind,
    ) -> AcquireRequest<'a> {
        AcquireRequest::new(key, self.options.owner(), lease_id, self.options.lease())
            .with_fencing(self.options.fencing())
            .with_mode(kind.mode, kind.limit)
            .with_max_clock_skew(self.options.max_clock_skew())
    }

    /// One attempt that never queues, for an already validated key.
    pub(crate) async fn try_acquire(
        self: &Arc<Self>,
        id: &str,
        key: &str,
        kind: Kind,
    ) -> Result<LockGuard, LockError> {
        if self.is_closed() {
            return Err(LockError::Closed);
        }
        // Starts the background task on this runtime before the first grant.
        self.scheduler()?;
        let lease_id = LeaseId::random();
        // Until the grant is registered, a lost or abandoned reply means
        // "maybe held": release by lease id.
        let mut in_doubt = InDoubt::new(self, key, lease_id);
        let sent = self.clock.now();
        let outcome = match self.calls.acquire(self.request(key, lease_id, kind)).await {
            Ok(outcome) => outcome,
            Err(error) => {
                in_doubt.armed = error.is_ambiguous();
                return Err(LockError::Store(error));
            }
        };
        let grant = match outcome {
            AcquireOutcome::Acquired(grant) => grant,
            AcquireOutcome::Held(holder) => {
                in_doubt.armed = false;
                return Err(LockError::Taken {
                    id: id.to_owned(),
                    holder: Some(holder.owner),
                    retry_after: holder.remaining,
                });
            }
            AcquireOutcome::LimitMismatch { limit } => {
                in_doubt.armed = false;
                return Err(limit_mismatch(id, kind, limit));
            }
            // Not asked to queue: the store misbehaves. The entry is
            // released by the armed guard.
            other => {
                return Err(LockError::Store(
                    StoreError::new(
                        StoreErrorKind::Invalid,
                        format!("the store answered {other:?} to a request that does not queue"),
                    )
                    .with_key(key),
                ));
            }
        };
        if let Some(previous) = &grant.previous_owner {
            observe::count("dlock_takeover_total", "", "");
            tracing::info!(id, previous_owner = %previous, "took over an expired lease");
        }
        let serial = self.next_serial();
        let state = self.held_state(id, key, serial, lease_id, sent, grant.ttl, grant.token)?;
        if self.is_closed() || !self.registry.insert(Tracked::Held(state.clone())) {
            return Err(LockError::Closed);
        }
        in_doubt.armed = false;
        Ok(self.guard(state))
    }

    /// The state of a lock granted for `ttl` by a request (or renewal) sent
    /// at `sent`, checked for its token and its deadline.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn held_state(
        &self,
        id: &str,
        key: &str,
        serial: u64,
        lease_id: LeaseId,
        sent: Stamp,
        ttl: Duration,
        token: Option<FencingToken>,
    ) -> Result<SharedState, LockError> {
        let fencing = self.options.fencing().is_enabled();
        if fencing && token.is_none() {
            return Err(LockError::Store(
                StoreError::new(
                    StoreErrorKind::Invalid,
                    "the store granted a lease without the fencing token it was asked for",
                )
                .with_key(key),
            ));
        }
        let identity = LockIdentity {
            serial,
            id: id.to_owned(),
            key: key.to_owned(),
            lease_id,
            token: if fencing { token } else { None },
        };
        let state: SharedState = Arc::new(LockState::new(identity, sent, ttl, &self.options));
        if state.check_expired(self.clock.now()) {
            return Err(LockError::Store(
                StoreError::timeout("the grant arrived after its lease had run out").with_key(key),
            ));
        }
        Ok(state)
    }

    pub(crate) fn guard(self: &Arc<Self>, state: SharedState) -> LockGuard {
        tracing::debug!(id = %state.id, lease_id = %state.lease_id, token = ?state.token, "lock acquired");
        LockGuard::new(state, self.clone() as Arc<dyn Link>)
    }
}

pub(crate) fn limit_mismatch(id: &str, kind: Kind, existing: u32) -> LockError {
    LockError::LimitMismatch {
        id: id.to_owned(),
        requested: kind.limit,
        existing,
    }
}

/// Releases an entry whose outcome is unknown, when dropped armed.
pub(crate) struct InDoubt<'a, S: LeaseStore> {
    core: &'a Core<S>,
    key: &'a str,
    lease_id: LeaseId,
    pub(crate) armed: bool,
}

impl<'a, S: LeaseStore> InDoubt<'a, S> {
    pub(crate) fn new(core: &'a Core<S>, key: &'a str, lease_id: LeaseId) -> Self {
        Self {
            core,
            key,
            lease_id,
            armed: true,
        }
    }
}

impl<S: LeaseStore> Drop for InDoubt<'_, S> {
    fn drop(&mut self) {
        if self.armed {
            tracing::debug!(key = %self.key, "acquire abandoned; releasing in the background");
            self.core
                .release_detached(self.key.to_owned(), self.lease_id);
        }
    }
}

impl<S: LeaseStore> Link for Core<S> {
    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn owner(&self) -> &str {
        self.options.owner()
    }

    fn warnings_enabled(&self) -> bool {
        self.options.warnings_enabled()
    }

    fn forget(&self, state: &SharedState) {
        self.registry.remove(state.serial);
    }

    fn release_in_background(&self, state: &SharedState) {
        self.registry.remove(state.serial);
        self.release_detached(state.key.clone(), state.lease_id);
    }

    fn release_now<'a>(
        &'a self,
        state: &'a LockState,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, StoreError>> {
        Box::pin(
            self.calls
                .release(&state.key, state.lease_id, self.options.fencing()),
        )
    }
}
