//! renew: one keep-alive and one key listing per etcd lease of the batch,
//! whatever the number of entries on it, and, for waiting entries, one
//! transaction reading their queues.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Txn;
use futures_util::future::join_all;
use lock_core::{FencingToken, Grant, LeaseId, RenewEntry, RenewOutcome, StoreError};
use tokio::time::Instant;

use super::{Move, OPS_PER_TXN, move_entries, queue_of, read_queue};
use crate::error::store_error;
use crate::lease::{EtcdLease, KeepAlive};
use crate::queue::Queue;
use crate::registry::Phase;
use crate::store::EtcdStore;
use crate::sweep::Orphan;

/// What a renewal learnt about one etcd lease.
enum LeaseCheck {
    Alive {
        ttl: Duration,
        keys: HashSet<Vec<u8>>,
    },
    Gone,
}

/// What to do for one entry of the batch, from what the registry knows.
enum Plan {
    /// Not tracked, or its ttl ran out without a renewal.
    Lost,
    /// Holds on a holder's lease (slot of `leases`): keep the lease alive,
    /// check the key is still on it.
    Held { lease: usize, token: i64 },
    /// Holds (a wait saw it promoted) but is still on its waiter's lease:
    /// move it to the holder's lease.
    Promoted { value: Vec<u8>, token: i64 },
    /// Waits (as far as the store knows) on a lease (slot of `leases`):
    /// read its queue.
    Waiting {
        lease: usize,
        value: Vec<u8>,
        token: i64,
    },
}

/// One keep-alive and one time-to-live (listing the lease's keys) per etcd
/// lease the batch is on, and one transaction of range reads for the
/// queues of the waiting entries, all concurrently: for a locker with no
/// waiting entry, one etcd lease and so one round trip whatever the number
/// of locks. An entry holding is renewed when its etcd lease lives and
/// still carries its key; it is `Lost` otherwise, or when no renewal
/// covered it for its whole ttl. A waiting entry is `Waiting` (its waiter
/// lease was kept alive) or, when its queue shows it holds, moved to the
/// etcd lease of `ttl` (a second transaction, for all such entries of the
/// batch) and `Granted`. The applied ttl of a holding entry is its etcd
/// lease's (etcd cannot change a lease's ttl).
///
/// Keys the listings show on a lease that nothing claims, and entries of
/// this store that nothing claims standing in a queue read, go to the
/// sweeper.
pub(super) async fn renew(
    store: &EtcdStore,
    entries: &[RenewEntry<'_>],
    ttl: Duration,
) -> Result<Vec<RenewOutcome>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let inner = &store.inner;
    let started = Instant::now();
    let mut leases: Vec<Arc<EtcdLease>> = Vec::new();
    let mut slot_of = |lease: &Arc<EtcdLease>| {
        leases
            .iter()
            .position(|known| Arc::ptr_eq(known, lease))
            .unwrap_or_else(|| {
                leases.push(lease.clone());
                leases.len() - 1
            })
    };
    let plans: Vec<Plan> = {
        let state = inner.registry.lock();
        entries
            .iter()
            .map(|entry| {
                let Some(tracked) = state.live(entry.key, entry.lease_id, started) else {
                    return Plan::Lost;
                };
                let token = tracked.create_revision;
                match &tracked.phase {
                    Phase::Held => Plan::Held {
                        lease: slot_of(&tracked.lease),
                        token,
                    },
                    Phase::Promoted => Plan::Promoted {
                        value: tracked.value.clone(),
                        token,
                    },
                    Phase::Waiting(_) => Plan::Waiting {
                        lease: slot_of(&tracked.lease),
                        value: tracked.value.clone(),
                        token,
                    },
                }
            })
            .collect()
    };
    // The holder's lease waiting entries move to when they hold.
    let may_move = plans
        .iter()
        .any(|plan| matches!(plan, Plan::Promoted { .. } | Plan::Waiting { .. }));
    let target = if may_move {
        let key_len = entries
            .iter()
            .map(|entry| inner.layout.entry_key(entry.key, entry.lease_id).len())
            .max()
            .unwrap_or(0);
        let lease = inner
            .registry
            .lease_for(
                &inner.conn,
                inner.config.lease_slack,
                store.ttl_secs(ttl),
                started,
                key_len,
            )
            .await?;
        Some(slot_of(&lease))
    } else {
        None
    };
    let waiting_keys: Vec<&str> = {
        let mut seen = HashSet::new();
        entries
            .iter()
            .zip(&plans)
            .filter(|(_, plan)| matches!(plan, Plan::Waiting { .. }))
            .map(|(entry, _)| entry.key)
            .filter(|key| seen.insert(*key))
            .collect()
    };

    let conn = &inner.conn;
    let checks = join_all(leases.iter().map(|lease| async move {
        let (kept, keys) = tokio::join!(lease.keep_alive(conn, started), lease.attached_keys(conn));
        match (kept?, keys?) {
            (KeepAlive::Alive { ttl }, Some(keys)) => Ok(LeaseCheck::Alive {
                ttl,
                keys: keys.into_iter().collect(),
            }),
            _ => Ok::<_, StoreError>(LeaseCheck::Gone),
        }
    }));
    let reads = join_all(
        waiting_keys
            .chunks(OPS_PER_TXN)
            .map(|keys| read_queues(store, keys)),
    );
    let (checks, reads) = tokio::join!(checks, reads);
    let checks = checks.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut queues: HashMap<&str, Queue> = HashMap::new();
    for read in reads {
        queues.extend(read?);
    }
    for (lease, check) in leases.iter().zip(&checks) {
        if matches!(check, LeaseCheck::Gone) {
            inner.registry.lease_gone(lease);
        }
    }
    let alive = |slot: usize| match &checks[slot] {
        LeaseCheck::Alive { ttl, keys } => Some((*ttl, keys)),
        LeaseCheck::Gone => None,
    };

    // Decide each entry; moves are collected for one more transaction.
    let mut outcomes: Vec<Option<RenewOutcome>> = Vec::with_capacity(entries.len());
    let mut moves: Vec<(usize, Move<'_>)> = Vec::new();
    let mut mistaken: Vec<(&str, LeaseId, Vec<u8>, Option<i64>)> = Vec::new();
    {
        let mut state = inner.registry.lock();
        for (index, (entry, plan)) in entries.iter().zip(&plans).enumerate() {
            let outcome = match plan {
                Plan::Lost => Some(RenewOutcome::Lost),
                Plan::Held { lease, token } => {
                    let etcd_key = inner.layout.entry_key(entry.key, entry.lease_id);
                    match alive(*lease) {
                        Some((applied, keys)) if keys.contains(&etcd_key) => {
                            state.renewed(entry.key, entry.lease_id, started);
                            Some(match entry.wait_ttl {
                                None => RenewOutcome::Renewed { ttl: applied },
                                Some(_) => RenewOutcome::Granted(granted(applied, *token)),
                            })
                        }
                        _ => Some(RenewOutcome::Lost),
                    }
                }
                Plan::Promoted { value, token } => {
                    moves.push((
                        index,
                        Move {
                            key: entry.key,
                            lease_id: entry.lease_id,
                            value: value.clone(),
                            create_revision: *token,
                        },
                    ));
                    None
                }
                Plan::Waiting {
                    lease,
                    value,
                    token,
                } => {
                    let queue = queues.get(entry.key);
                    let position = queue.and_then(|queue| {
                        let index = queue.position(entry.lease_id)?;
                        Some((queue, index))
                    });
                    match (position, alive(*lease)) {
                        (Some((queue, at)), _) if at < queue.holding() => {
                            moves.push((
                                index,
                                Move {
                                    key: entry.key,
                                    lease_id: entry.lease_id,
                                    value: value.clone(),
                                    create_revision: *token,
                                },
                            ));
                            None
                        }
                        (Some((queue, at)), Some((applied, _))) => match entry.wait_ttl {
                            Some(_) => {
                                state.renewed(entry.key, entry.lease_id, started);
                                state.set_ahead(
                                    entry.key,
                                    entry.lease_id,
                                    Some(queue.ahead_of(at)),
                                );
                                Some(RenewOutcome::Waiting {
                                    ttl: applied,
                                    retry_after: None,
                                })
                            }
                            // Renewed as held, but it waits: whoever renews
                            // it is mistaken; remove it rather than let it
                            // hold later for nobody.
                            None => {
                                mistaken.push((entry.key, entry.lease_id, value.clone(), None));
                                Some(RenewOutcome::Lost)
                            }
                        },
                        _ => Some(RenewOutcome::Lost),
                    }
                }
            };
            outcomes.push(outcome);
        }
    }

    if !moves.is_empty() {
        let target = target
            .map(|slot| leases[slot].clone())
            .ok_or_else(|| StoreError::unavailable("no holder lease to move entries to"))?;
        let applied = match target_check(&checks, &leases, &target) {
            Some(applied) => applied,
            None => {
                return Err(StoreError::unavailable(
                    "the etcd lease for holders ended during the renewal",
                ));
            }
        };
        let batch: Vec<Move<'_>> = moves
            .iter()
            .map(|(_, entry)| Move {
                key: entry.key,
                lease_id: entry.lease_id,
                value: entry.value.clone(),
                create_revision: entry.create_revision,
            })
            .collect();
        let moved = move_entries(store, &batch, &target).await?;
        let mut state = inner.registry.lock();
        for ((index, entry), moved) in moves.iter().zip(moved) {
            outcomes[*index] = Some(if moved {
                state.moved(entry.key, entry.lease_id, &target, started);
                match entries[*index].wait_ttl {
                    None => RenewOutcome::Renewed { ttl: applied },
                    Some(_) => RenewOutcome::Granted(granted(applied, entry.create_revision)),
                }
            } else {
                RenewOutcome::Lost
            });
        }
    }

    let outcomes: Vec<RenewOutcome> = outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or(RenewOutcome::Lost))
        .collect();
    for (entry, outcome) in entries.iter().zip(&outcomes) {
        if *outcome == RenewOutcome::Lost {
            inner.registry.forget(entry.key, entry.lease_id);
        }
    }
    if !mistaken.is_empty() {
        store.delete_entries(&mistaken).await?;
    }
    clean_up(store, &queues, &leases, checks, started);
    Ok(outcomes)
}

/// The applied ttl of `target` if the renewal's check found it alive.
fn target_check(
    checks: &[LeaseCheck],
    leases: &[Arc<EtcdLease>],
    target: &Arc<EtcdLease>,
) -> Option<Duration> {
    let slot = leases.iter().position(|lease| Arc::ptr_eq(lease, target))?;
    match &checks[slot] {
        LeaseCheck::Alive { ttl, .. } => Some(*ttl),
        LeaseCheck::Gone => None,
    }
}

fn granted(ttl: Duration, create_revision: i64) -> Grant {
    let grant = Grant::new(ttl);
    match u64::try_from(create_revision) {
        Ok(token) => grant.with_token(FencingToken::from(token)),
        Err(_) => grant,
    }
}

/// The queues of `keys`, in one transaction of range reads.
async fn read_queues<'k>(
    store: &EtcdStore,
    keys: &[&'k str],
) -> Result<Vec<(&'k str, Queue)>, StoreError> {
    let layout = &store.inner.layout;
    let txn = Txn::new().and_then(
        keys.iter()
            .map(|key| read_queue(layout, key))
            .collect::<Vec<_>>(),
    );
    let reply = store
        .inner
        .conn
        .txn(&txn)
        .await
        .map_err(|error| store_error(error, "renew", keys.first().copied()))?;
    keys.iter()
        .enumerate()
        .map(|(index, key)| Ok((*key, queue_of(store, key, &reply, index)?)))
        .collect()
}

/// Hands the sweeper what the renewal found that nobody claims: keys on
/// the store's leases, and entries of this store standing in the queues
/// read.
fn clean_up(
    store: &EtcdStore,
    queues: &HashMap<&str, Queue>,
    leases: &[Arc<EtcdLease>],
    checks: Vec<LeaseCheck>,
    started: Instant,
) {
    let mut orphans = Vec::new();
    for (lease, check) in leases.iter().zip(checks) {
        if let LeaseCheck::Alive { keys, .. } = check {
            orphans.extend(store.orphans_on_lease(lease, &keys, started));
        }
    }
    {
        let state = store.inner.registry.lock();
        let now = Instant::now();
        let listed: HashSet<(String, LeaseId)> = orphans
            .iter()
            .map(|orphan| (orphan.key.clone(), orphan.lease_id))
            .collect();
        let in_queues = queues
            .iter()
            .flat_map(|(key, queue)| {
                queue.entries.iter().filter_map(|seen| {
                    if listed.contains(&((*key).to_owned(), seen.lease_id)) {
                        return None;
                    }
                    let value = state.own_unclaimed(key, seen, now)?;
                    Some(Orphan {
                        key: (*key).to_owned(),
                        lease_id: seen.lease_id,
                        value: Some(value),
                        lease: Some(seen.etcd_lease),
                        in_doubt: false,
                    })
                })
            })
            .collect::<Vec<_>>();
        orphans.extend(in_queues);
    }
    store.spawn_cleanup(orphans);
    store.sweep(started);
}
