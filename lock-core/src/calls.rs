//! The one path every store call takes: bounded by `store_timeout`, timed
//! and counted for metrics, traced, and with its errors named after the
//! operation and key.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::observe;
use crate::{
    AcquireOutcome, AcquireRequest, Fencing, LeaseId, LeaseInfo, LeaseStore, ReleaseOutcome,
    RenewEntry, RenewOutcome, StoreError,
};

/// A store operation, as named in metrics, logs and timeout errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Acquire,
    Renew,
    Release,
    Inspect,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Acquire => "acquire",
            Self::Renew => "renew",
            Self::Release => "release",
            Self::Inspect => "inspect",
        }
    }
}

/// A store with the locker's timeout: what the locker, its guards and its
/// background task call. Cheap to clone.
pub(crate) struct Calls<S: ?Sized> {
    store: Arc<S>,
    timeout: Duration,
}

impl<S: ?Sized> Clone for Calls<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            timeout: self.timeout,
        }
    }
}

impl<S: LeaseStore + ?Sized> Calls<S> {
    pub(crate) fn new(store: Arc<S>, timeout: Duration) -> Self {
        Self { store, timeout }
    }

    pub(crate) fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Runs one store call: at most `timeout`, timed, counted by
    /// `outcome`, and a failure logged.
    async fn call<T>(
        &self,
        op: Op,
        key: Option<&str>,
        call: impl Future<Output = Result<T, StoreError>>,
        outcome: impl FnOnce(&Result<T, StoreError>) -> &'static str,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => {
                let error = StoreError::timeout(format!(
                    "{} timed out after {:?}",
                    op.name(),
                    self.timeout
                ));
                Err(match key {
                    Some(key) => error.with_key(key),
                    None => error,
                })
            }
        };
        observe::store_call(op, start.elapsed(), outcome(&result));
        if let Err(error) = &result {
            tracing::debug!(op = op.name(), key, %error, "store call failed");
        }
        result
    }

    pub(crate) async fn acquire(
        &self,
        request: AcquireRequest<'_>,
    ) -> Result<AcquireOutcome, StoreError> {
        self.call(
            Op::Acquire,
            Some(request.key),
            self.store.acquire(request),
            |result| match result {
                Ok(AcquireOutcome::Acquired(_)) => "acquired",
                Ok(AcquireOutcome::Held(_)) => "taken",
                Ok(AcquireOutcome::Queued(_)) => "queued",
                Ok(AcquireOutcome::LimitMismatch { .. }) => "limit_mismatch",
                Err(_) => "error",
            },
        )
        .await
    }

    pub(crate) async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        self.call(
            Op::Renew,
            None,
            self.store.renew(leases, ttl),
            |result| match result {
                Ok(_) => "ok",
                Err(_) => "error",
            },
        )
        .await
    }

    pub(crate) async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        self.call(
            Op::Release,
            Some(key),
            self.store.release(key, lease_id, fencing),
            |result| match result {
                Ok(ReleaseOutcome::Released) => "released",
                Ok(ReleaseOutcome::NotHeld) => "not_held",
                Err(_) => "error",
            },
        )
        .await
    }

    pub(crate) async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        self.call(
            Op::Inspect,
            Some(key),
            self.store.inspect(key),
            |result| match result {
                Ok(_) => "ok",
                Err(_) => "error",
            },
        )
        .await
    }
}
