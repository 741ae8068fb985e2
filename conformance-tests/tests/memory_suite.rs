//! The whole suite against the reference store, and the suite's own check:
//! stores with known bugs must fail the cases that target those bugs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, LeaseId, LeaseInfo, LeaseStore,
    MemoryStore, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError, WaitOutcome,
};

conformance_tests::conformance_suite!(memory_store, conformance_tests::shared(MemoryStore::new()));

/// The bugs lease-lock libraries have shipped, one switch each.
#[derive(Clone, Copy, Debug)]
enum Bug {
    /// Release deletes by key, whoever holds it.
    ReleaseByKeyAlone,
    /// Renew extends any lease on the key, even another holder's or an
    /// expired one (it recreates).
    RenewByKeyAlone,
    /// Tokens restart at 1 after a release.
    TokensResetOnRelease,
    /// Never queues: a waiter must ask again and again, and may be
    /// overtaken.
    NoQueue,
    /// Waiting entries live a hundred times their waiter ttl: a dead
    /// waiter stalls the queue.
    WaitersOutliveTheirTtl,
    /// Release checks the lease id but not the expiry: the key's last
    /// grantee is answered Released however late it comes.
    ReleaseIgnoresExpiry,
}

/// MemoryStore with one bug switched on. Clones share everything, like
/// clients of one server.
#[derive(Clone)]
struct BuggyStore {
    inner: MemoryStore,
    bug: Bug,
    /// The lease each key was last granted to (what a buggy store "knows"
    /// when it acts by key).
    latest: Arc<Mutex<HashMap<String, LeaseId>>>,
}

impl BuggyStore {
    fn new(bug: Bug) -> Self {
        Self {
            inner: MemoryStore::new(),
            bug,
            latest: Arc::default(),
        }
    }

    fn latest(&self, key: &str) -> Option<LeaseId> {
        self.latest.lock().unwrap().get(key).copied()
    }
}

#[async_trait]
impl LeaseStore for BuggyStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        let mut request = request;
        match (self.bug, request.queue) {
            (Bug::NoQueue, Some(_)) => request.queue = None,
            (Bug::WaitersOutliveTheirTtl, Some(waiter_ttl)) => {
                request = request.queued(waiter_ttl * 100);
            }
            _ => {}
        }
        let outcome = self.inner.acquire(request).await?;
        if let AcquireOutcome::Acquired(_) = outcome {
            let mut latest = self.latest.lock().unwrap();
            latest.insert(request.key.to_owned(), request.lease_id);
        }
        Ok(outcome)
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        if let Bug::WaitersOutliveTheirTtl = self.bug {
            let longer: Vec<RenewEntry<'_>> = leases
                .iter()
                .map(|entry| RenewEntry {
                    wait_ttl: entry.wait_ttl.map(|waiter_ttl| waiter_ttl * 100),
                    ..*entry
                })
                .collect();
            return self.inner.renew(&longer, ttl).await;
        }
        let Bug::RenewByKeyAlone = self.bug else {
            let outcomes = self.inner.renew(leases, ttl).await?;
            // A promoted waiter is the key's latest holder.
            for (entry, outcome) in leases.iter().zip(&outcomes) {
                if let RenewOutcome::Granted(_) = outcome {
                    let mut latest = self.latest.lock().unwrap();
                    latest.insert(entry.key.to_owned(), entry.lease_id);
                }
            }
            return Ok(outcomes);
        };
        let mut outcomes = Vec::new();
        for entry in leases {
            // Extend whatever lease the key has, or recreate it.
            let lease_id = self.latest(entry.key).unwrap_or(entry.lease_id);
            let current = [RenewEntry::held(entry.key, lease_id)];
            if self.inner.renew(&current, ttl).await? == [RenewOutcome::Lost] {
                let request = AcquireRequest::new(entry.key, "renewer", entry.lease_id, ttl);
                self.acquire(request).await?;
            }
            outcomes.push(RenewOutcome::Renewed { ttl });
        }
        Ok(outcomes)
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        match self.bug {
            Bug::ReleaseByKeyAlone => {
                let current = self.latest(key).unwrap_or(lease_id);
                self.inner.release(key, current, fencing).await
            }
            Bug::TokensResetOnRelease => self.inner.release(key, lease_id, Fencing::Disabled).await,
            Bug::ReleaseIgnoresExpiry => {
                let outcome = self.inner.release(key, lease_id, fencing).await?;
                if outcome == ReleaseOutcome::NotHeld && self.latest(key) == Some(lease_id) {
                    self.latest.lock().unwrap().remove(key);
                    return Ok(ReleaseOutcome::Released);
                }
                Ok(outcome)
            }
            _ => self.inner.release(key, lease_id, fencing).await,
        }
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        self.inner.inspect(key).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        let outcome = self.inner.wait_for_grant(key, lease_id, max).await;
        if let WaitOutcome::Granted { .. } = outcome {
            let mut latest = self.latest.lock().unwrap();
            latest.insert(key.to_owned(), lease_id);
        }
        outcome
    }
}

/// Runs the whole suite on a store with `bug` and asserts that every case in
/// `must_fail` failed.
async fn suite_catches(bug: Bug, must_fail: &[&str]) {
    let shared = BuggyStore::new(bug);
    let summary = conformance_tests::run_all(conformance_tests::shared(shared)).await;
    let failed: Vec<&str> = summary.failed.iter().map(|(name, _)| *name).collect();
    for case in must_fail {
        assert!(
            failed.contains(case),
            "{bug:?} was not caught by {case}; failed: {failed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_catches_release_by_key_alone() {
    suite_catches(
        Bug::ReleaseByKeyAlone,
        &[
            "release_by_a_superseded_lease_changes_nothing",
            "release_with_a_foreign_lease_id_keeps_the_holder",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_catches_a_release_that_ignores_expiry() {
    suite_catches(
        Bug::ReleaseIgnoresExpiry,
        &["release_by_an_expired_lease_changes_nothing"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_catches_renew_by_key_alone() {
    suite_catches(
        Bug::RenewByKeyAlone,
        &[
            "renew_of_a_superseded_lease_is_lost",
            "renew_of_an_expired_lease_is_lost",
            "renew_of_a_released_lease_is_lost",
            "renew_never_creates_a_lease",
            "renew_answers_a_mixed_batch_in_order",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_catches_tokens_that_restart_after_release() {
    suite_catches(
        Bug::TokensResetOnRelease,
        &[
            "fencing_tokens_increase_across_release",
            "fencing_tokens_increase_per_key_when_keys_interleave",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_catches_a_store_without_a_queue() {
    suite_catches(
        Bug::NoQueue,
        &[
            "queue_grants_waiters_in_arrival_order",
            "queue_release_and_ask_again_goes_behind_the_waiters",
            "locker_promoted_waiter_makes_no_acquire_call",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_catches_waiters_that_outlive_their_ttl() {
    suite_catches(
        Bug::WaitersOutliveTheirTtl,
        &[
            "queue_dead_waiter_delays_by_at_most_its_waiter_ttl",
            "locker_dead_waiter_delays_the_queue_by_at_most_its_waiter_ttl",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_on_the_reference_store() {
    let summary = conformance_tests::run_all(conformance_tests::shared(MemoryStore::new())).await;
    summary.assert_passed();
    assert_eq!(summary.skipped.len(), 1, "{:?}", summary.skipped);
    assert!(
        summary.passed.len() >= 59,
        "{} cases passed",
        summary.passed.len()
    );
}
