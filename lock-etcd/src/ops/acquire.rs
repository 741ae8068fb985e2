//! acquire: one transaction that adds the entry when the model lets it
//! (holding on the holder's etcd lease, or, for a queueing request, waiting
//! on the waiter's) and reads the queue otherwise, alongside keep-alives of
//! those etcd leases.

use std::sync::Arc;

use etcd_client::{
    Compare, CompareOp, GetResponse, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use lock_core::{
    AcquireOutcome, AcquireRequest, FencingToken, Grant, Holder, LockMode, Queued, StoreError,
};
use tokio::time::Instant;

use super::{Move, move_entries, read_queue, revision_of};
use crate::error::{is_lease_not_found, store_error};
use crate::layout::{encode_entry, limit_band};
use crate::lease::{EtcdLease, KeepAlive};
use crate::queue::Queue;
use crate::registry::{Pending, Phase, Tracked};
use crate::store::EtcdStore;

/// How many transactions one acquisition sends at most before it gives up
/// on a queue that keeps changing (or etcd leases that keep ending).
const MAX_TRIES: usize = 8;

/// Which transaction to send.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Add the entry holding if the key has no entry at all; else, for a
    /// queueing request, add it waiting if every entry agrees on the
    /// limit; read the queue in any case.
    Fast,
    /// The queue read at `revision` lets the entry be added (holding, or
    /// waiting behind an old lock key): add it if no entry was created
    /// since, else read again.
    Unchanged { revision: i64, waiting: bool },
}

/// The transactions of one acquisition.
struct Shape<'a> {
    start: Vec<u8>,
    end: Vec<u8>,
    entry_key: &'a [u8],
    value: &'a [u8],
    fence_key: Option<Vec<u8>>,
    limit: u32,
    read: TxnOp,
}

impl Shape<'_> {
    /// The entry put on `lease`, and the fence key touched (so its mod
    /// revision is the entry's create revision).
    fn put(&self, lease: i64) -> Vec<TxnOp> {
        let mut ops = vec![TxnOp::put(
            self.entry_key,
            self.value,
            Some(PutOptions::new().with_lease(lease)),
        )];
        if let Some(fence_key) = &self.fence_key {
            ops.push(TxnOp::put(fence_key.clone(), Vec::new(), None));
        }
        ops
    }

    /// If the range has no key (no entry, no old lock), put the entry on
    /// the holder's lease. Else, without `waiter`, read the queue; with it,
    /// put the entry on the waiter's lease and read the queue if every key
    /// of the range has a value of this limit (which an old lock has not),
    /// else only read.
    fn fast(&self, holder: i64, waiter: Option<i64>) -> Txn {
        let empty = Compare::create_revision(self.start.clone(), CompareOp::Equal, 0)
            .with_range(self.end.clone());
        let otherwise = match waiter {
            None => vec![self.read.clone()],
            Some(waiter) => {
                let (low, high) = limit_band(self.limit);
                let agree = [
                    Compare::value(self.start.clone(), CompareOp::Greater, low)
                        .with_range(self.end.clone()),
                    Compare::value(self.start.clone(), CompareOp::Less, high)
                        .with_range(self.end.clone()),
                ];
                let mut queue = self.put(waiter);
                queue.push(self.read.clone());
                vec![TxnOp::txn(
                    Txn::new()
                        .when(agree)
                        .and_then(queue)
                        .or_else([self.read.clone()]),
                )]
            }
        };
        Txn::new()
            .when([empty])
            .and_then(self.put(holder))
            .or_else(otherwise)
    }

    /// If no key of the range was created after `revision`, put the entry
    /// on `lease` (and read the queue when `waiting`); else read it.
    fn unchanged(&self, revision: i64, lease: i64, waiting: bool) -> Txn {
        let unchanged = Compare::create_revision(self.start.clone(), CompareOp::Less, revision + 1)
            .with_range(self.end.clone());
        let mut ops = self.put(lease);
        if waiting {
            ops.push(self.read.clone());
        }
        Txn::new()
            .when([unchanged])
            .and_then(ops)
            .or_else([self.read.clone()])
    }
}

/// The range read of a reply, wherever the transaction's shape put it:
/// always its last operation, in a nested transaction or not.
fn last_read(reply: &TxnResponse) -> Option<GetResponse> {
    match reply.op_responses().pop()? {
        TxnOpResponse::Get(get) => Some(get),
        TxnOpResponse::Txn(nested) => last_read(&nested),
        _ => None,
    }
}

/// One transaction (see [`Shape::fast`]) with keep-alives of the etcd
/// leases the entry may go on, sent concurrently (shared with other
/// callers), so applied ttls are counted from no earlier than the request.
///
/// When the key has no entry, that is the whole acquisition. Otherwise the
/// reply's read of the queue decides: the entry holds (a shared entry
/// behind shared holders; it is moved to the holder's etcd lease if it was
/// put on the waiter's), waits, or was not added (`Held`, or
/// `LimitMismatch`). A request whose entry would hold at the end of the
/// queue read (shared, behind fewer shared holders than the limit), or
/// that queues behind an old lock key, adds it with a second transaction
/// that checks no entry was created since the read. Entries of this store
/// whose ttl ran out without a renewal (kept alive by a shared etcd lease)
/// are deleted (by exact value) and the transaction sent again; so is one
/// whose etcd lease turned out gone.
pub(super) async fn acquire(
    store: &EtcdStore,
    request: AcquireRequest<'_>,
) -> Result<AcquireOutcome, StoreError> {
    let inner = &store.inner;
    let layout = &inner.layout;
    let started = Instant::now();
    let key = request.key;
    let ttl_secs = store.ttl_secs(request.ttl);
    let wait_secs = request.queue.map(|waiter_ttl| store.ttl_secs(waiter_ttl));
    let entry_key = layout.entry_key(key, request.lease_id);
    let value = encode_entry(request.limit, request.mode, request.lease_id, request.owner);
    let fencing = request.fencing.is_enabled();
    let (start, end) = layout.range(key);
    let shape = Shape {
        start,
        end,
        entry_key: &entry_key,
        value: &value,
        fence_key: fencing.then(|| layout.fence_key(key)),
        limit: request.limit,
        read: read_queue(layout, key),
    };
    let mut pending = Pending::new(&inner.registry, key, request.lease_id, &value);
    let mut step = Step::Fast;
    let mut last_holder: Option<Holder> = None;
    let token = |revision: i64| {
        u64::try_from(revision)
            .ok()
            .filter(|_| fencing)
            .map(FencingToken::from)
    };
    for _ in 0..MAX_TRIES {
        let lease_for = |secs| {
            inner.registry.lease_for(
                &inner.conn,
                inner.config.lease_slack,
                secs,
                started,
                entry_key.len(),
            )
        };
        let holder = lease_for(ttl_secs).await?;
        let waiter = match wait_secs {
            Some(secs) => Some(lease_for(secs).await?),
            None => None,
        };
        let waiter_apart = waiter
            .as_ref()
            .filter(|waiter| !Arc::ptr_eq(waiter, &holder));
        // Keep alive the lease the entry will most likely go on: the
        // waiter's when this store already waits on (or holds) the key, else
        // the holder's; the other one only if the guess was wrong.
        let busy = waiter_apart.is_some()
            && (inner.watches.is_watched(key) || inner.registry.lock().has_entries(key));
        let txn = match step {
            Step::Fast => shape.fast(holder.id, waiter.as_ref().map(|waiter| waiter.id)),
            Step::Unchanged { revision, waiting } => {
                let lease = match (&waiter, waiting) {
                    (Some(waiter), true) => waiter.id,
                    _ => holder.id,
                };
                shape.unchanged(revision, lease, waiting)
            }
        };
        let (reply, mut kept_holder, mut kept_waiter) = tokio::join!(
            inner.conn.txn(&txn),
            async {
                match busy {
                    false => Some(holder.keep_alive(&inner.conn, started).await),
                    true => None,
                }
            },
            async {
                match (busy, waiter_apart) {
                    (true, Some(waiter)) => Some(waiter.keep_alive(&inner.conn, started).await),
                    _ => None,
                }
            }
        );
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) if is_lease_not_found(&error) => {
                forget_gone_leases(store, [Some(&holder), waiter.as_ref()]).await;
                step = Step::Fast;
                continue;
            }
            Err(error) => return Err(store_error(error, "acquire", Some(key))),
        };
        store.sweep(started);
        let added_holding = reply.succeeded()
            && matches!(step, Step::Fast | Step::Unchanged { waiting: false, .. });
        if added_holding {
            let Some(ttl) = applied(store, &holder, kept_holder.take(), started, key).await? else {
                // The lease ended after the put: the entry went with it.
                step = Step::Fast;
                continue;
            };
            let revision = revision_of(&reply);
            track(
                store,
                key,
                &request,
                &holder,
                &value,
                revision,
                started,
                Phase::Held,
            );
            pending.settle();
            let mut grant = Grant::new(ttl);
            if let Some(token) = token(revision) {
                grant = grant.with_token(token);
            }
            return Ok(AcquireOutcome::Acquired(grant));
        }
        let read = last_read(&reply).ok_or_else(|| {
            StoreError::unavailable("etcd answered an acquisition without reading the queue")
                .with_key(key)
        })?;
        let queue = Queue::parse(layout, key, read.kvs(), revision_of(&reply))?;
        last_holder = queue.first_holder().or(last_holder);

        // Entries of this store whose ttl ran out stand in the way: delete
        // them and look again.
        let unclaimed: Vec<_> = {
            let state = inner.registry.lock();
            let now = Instant::now();
            queue
                .entries
                .iter()
                .filter(|seen| seen.lease_id != request.lease_id)
                .filter_map(|seen| {
                    state
                        .own_unclaimed(key, seen, now)
                        .map(|value| (key, seen.lease_id, value, Some(seen.etcd_lease)))
                })
                .collect()
        };
        if !unclaimed.is_empty() {
            store.delete_entries(&unclaimed).await?;
            step = Step::Fast;
            continue;
        }

        let Some(index) = queue.position(request.lease_id) else {
            // Nothing was added.
            if request.mode == LockMode::Shared
                && let Some(limit) = queue.limit()
                && limit != request.limit
            {
                pending.settle();
                return Ok(AcquireOutcome::LimitMismatch { limit });
            }
            if queue.would_hold_at_end(request.mode, request.limit) {
                step = Step::Unchanged {
                    revision: queue.revision,
                    waiting: false,
                };
                continue;
            }
            if request.queue.is_some() {
                step = Step::Unchanged {
                    revision: queue.revision,
                    waiting: true,
                };
                continue;
            }
            pending.settle();
            let holder = queue.first_holder().ok_or_else(|| {
                StoreError::unavailable("etcd refused the acquisition without naming a holder")
                    .with_key(key)
            })?;
            return Ok(AcquireOutcome::Held(holder));
        };
        let seen = &queue.entries[index];
        if index < queue.holding() {
            // Holds (a shared entry behind shared holders, or an entry
            // sent again after a lost reply): on the holder's lease.
            if seen.etcd_lease != holder.id {
                let moves = [Move {
                    key,
                    lease_id: request.lease_id,
                    value: seen.value.clone(),
                    create_revision: seen.create_revision,
                }];
                if !move_entries(store, &moves, &holder).await?[0] {
                    step = Step::Fast;
                    continue;
                }
            }
            let Some(ttl) = applied(store, &holder, kept_holder.take(), started, key).await? else {
                step = Step::Fast;
                continue;
            };
            track(
                store,
                key,
                &request,
                &holder,
                &value,
                seen.create_revision,
                started,
                Phase::Held,
            );
            pending.settle();
            let mut grant = Grant::new(ttl);
            if let Some(token) = token(seen.create_revision) {
                grant = grant.with_token(token);
            }
            return Ok(AcquireOutcome::Acquired(grant));
        }
        // Waits.
        let (lease, kept) = match &waiter {
            _ if seen.etcd_lease == holder.id => (&holder, kept_holder.take()),
            Some(waiter) if seen.etcd_lease == waiter.id => (waiter, kept_waiter.take()),
            // An entry sent again without queueing, left waiting by an
            // earlier request on another etcd lease: it stands as it is.
            _ => {
                pending.settle();
                return Ok(AcquireOutcome::Queued(Queued::new(
                    request.queue.unwrap_or_default(),
                )));
            }
        };
        let Some(ttl) = applied(store, lease, kept, started, key).await? else {
            step = Step::Fast;
            continue;
        };
        track(
            store,
            key,
            &request,
            lease,
            &value,
            seen.create_revision,
            started,
            Phase::Waiting(Some(queue.ahead_of(index))),
        );
        pending.settle();
        let mut queued = Queued::new(ttl);
        if let Some(token) = token(seen.create_revision) {
            queued = queued.with_token(token);
        }
        if let Some(holder) = queue.first_holder() {
            queued = queued.with_holder(holder);
        }
        return Ok(AcquireOutcome::Queued(queued));
    }
    if let Some(holder) = last_holder {
        // The queue kept changing: it was held each time. A queueing
        // request may have left its entry on the way: unsettled, it is
        // remembered for the sweeper to delete.
        if request.queue.is_none() {
            pending.settle();
        }
        return Ok(AcquireOutcome::Held(holder));
    }
    Err(StoreError::unavailable("etcd leases kept ending during the acquisition").with_key(key))
}

/// The ttl a keep-alive of `lease` (sent alongside the transaction, or now
/// when none was) applied; `None` when the lease is gone (it is forgotten,
/// and every key on it went with it).
async fn applied(
    store: &EtcdStore,
    lease: &Arc<EtcdLease>,
    kept: Option<Result<KeepAlive, StoreError>>,
    started: Instant,
    key: &str,
) -> Result<Option<std::time::Duration>, StoreError> {
    let kept = match kept {
        Some(kept) => kept,
        None => lease.keep_alive(&store.inner.conn, started).await,
    };
    match kept {
        Ok(KeepAlive::Alive { ttl }) => Ok(Some(ttl)),
        Ok(KeepAlive::Gone) => {
            store.inner.registry.lease_gone(lease);
            Ok(None)
        }
        // Added, but for how long is unknown: report the failure; the
        // locker releases the maybe-added entry by id.
        Err(error) => Err(error.with_key(key)),
    }
}

/// Records the entry this acquisition added.
#[allow(clippy::too_many_arguments)]
fn track(
    store: &EtcdStore,
    key: &str,
    request: &AcquireRequest<'_>,
    lease: &Arc<EtcdLease>,
    value: &[u8],
    create_revision: i64,
    started: Instant,
    phase: Phase,
) {
    let key_bytes = store.inner.layout.entry_key(key, request.lease_id).len();
    store.inner.registry.lock().record(
        key,
        request.lease_id,
        Tracked {
            lease: lease.clone(),
            value: value.to_vec(),
            create_revision,
            mode: request.mode,
            limit: request.limit,
            key_bytes,
            refreshed: started,
            phase,
        },
    );
}

/// etcd said a lease of the request does not exist: ask each again (a new
/// keep-alive) and forget the ones that are gone.
async fn forget_gone_leases<const N: usize>(
    store: &EtcdStore,
    leases: [Option<&Arc<EtcdLease>>; N],
) {
    let now = Instant::now();
    for lease in leases.into_iter().flatten() {
        if let Ok(KeepAlive::Gone) = lease.keep_alive(&store.inner.conn, now).await {
            store.inner.registry.lease_gone(lease);
        }
    }
}
