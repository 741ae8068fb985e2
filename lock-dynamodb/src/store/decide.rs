//! How an acquisition decides, from the key item it read: grant, queue,
//! refuse, or write again; and the updates that carry it out.

use super::*;

impl DynamoStore {
    /// The first attempt of every acquisition: grant on a key with no
    /// entries, bumping the counter, in one conditional write.
    pub(super) fn fast_grant(
        &self,
        request: &AcquireRequest<'_>,
        now: u64,
        skew_ms: u64,
    ) -> Update {
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
    pub(super) fn check_request(
        &self,
        request: &AcquireRequest<'_>,
        skew_ms: u64,
    ) -> Result<(), StoreError> {
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
    pub(super) fn decide(
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
                let left = entry.expires_at - now;
                Decision::Answer(queued(request, &view, entry.seq, left, now, skew_ms))
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
        // Every entry counted as expired is removed, and the write checks it
        // was not renewed since the read.
        let purge: Vec<(LeaseId, u64)> = view
            .expired
            .iter()
            .map(|entry| (entry.lease_id, entry.expires_at))
            .collect();
        if !holds && own.is_none() && request.mode == LockMode::Exclusive {
            // An exclusive waiter takes its place whatever else changed
            // since the read (no limit to agree on, nothing decided by the
            // read but which expired entries go).
            return Ok(Decision::Enqueue(self.enqueue(
                request,
                &purge,
                expires_at,
                entry_ttl_ms,
                skew_ms,
                now,
            )));
        }
        let seq = state.fence.saturating_add(1);
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
            queued(request, &view, seq, entry_ttl_ms, now, skew_ms)
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
            update.remove_expired(lease_id, expires_at);
        }
        Ok(Decision::Write { update, outcome })
    }

    /// Adds the waiting exclusive entry of `request` at the end of the
    /// queue, with the next sequence number, in a write that no other
    /// entry's arrival or departure refuses: only its own entry already
    /// stored (an earlier attempt landed), or an entry of `purge` renewed
    /// since the read, refuses it. The entries racing to line up are then
    /// queued in the order their writes land, each in one write, instead
    /// of all but one being refused and trying again.
    pub(super) fn enqueue(
        &self,
        request: &AcquireRequest<'_>,
        purge: &[(LeaseId, u64)],
        expires_at: u64,
        entry_ttl_ms: u64,
        skew_ms: u64,
        now: u64,
    ) -> Update {
        let mut update = Update::default();
        let entry = update.name(&entry_attribute(request.lease_id));
        update.condition(format!("attribute_not_exists({entry})"));
        let fence = update.name(FENCE);
        let zero = update.value(number(0));
        let one = update.value(number(1));
        // Both read the counter as it was (DynamoDB evaluates every
        // operand against the item before the update).
        let next = format!("if_not_exists({fence}, {zero}) + {one}");
        let seq = update.name(&seq_attribute(request.lease_id));
        update.set(seq, next.clone());
        update.set(fence, next);
        // One entry more, less the ones purged.
        let count = update.name(COUNT);
        let change = match purge.len() {
            0 => format!("+ {one}"),
            purged => format!("- {}", update.value(number(purged - 1))),
        };
        update.set(
            count.clone(),
            format!("if_not_exists({count}, {zero}) {change}"),
        );
        let info = update.value(new_info(request, false, entry_ttl_ms, skew_ms).value());
        update.set(entry, info);
        update.set_value(&expiry_attribute(request.lease_id), number(expires_at));
        if let Some(at) = self.idle_expiry_at(now) {
            update.set_value(IDLE_EXPIRY, number(at));
        }
        for &(lease_id, expires_at) in purge {
            update.remove_expired(lease_id, expires_at);
        }
        update
    }

    /// Extends the live entry `lease_id` to `ttl_ms` from `now`, rewriting
    /// its settings to `info` when given, if it is still live by this
    /// client's clock.
    pub(super) fn extend(
        &self,
        lease_id: LeaseId,
        now: u64,
        ttl_ms: u64,
        info: Option<EntryInfo>,
    ) -> Update {
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
}

/// What a waiting entry of `request` with sequence number `seq`, alive
/// for `ttl_ms`, is told, from `view` (with or without the entry itself:
/// only the entries ahead of it and the holders count).
pub(super) fn queued(
    request: &AcquireRequest<'_>,
    view: &View<'_>,
    seq: u64,
    ttl_ms: u64,
    now: u64,
    skew_ms: u64,
) -> AcquireOutcome {
    let mut queued = Queued::new(Duration::from_millis(ttl_ms));
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
}

/// The settings of a new entry for `request`.
pub(super) fn new_info(
    request: &AcquireRequest<'_>,
    told: bool,
    ttl_ms: u64,
    skew_ms: u64,
) -> EntryInfo {
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
pub(super) fn applied_waiter_ms(requested_ms: u64) -> u64 {
    requested_ms.saturating_add((requested_ms / 2).min(WAITER_READ_SPAN_MS))
}

/// The longest the store stretches a waiting entry's ttl to spare writes.
pub(super) const WAITER_READ_SPAN_MS: u64 = 1000;

/// What [`DynamoStore::decide`] concluded.
pub(super) enum Decision {
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
    /// Add the request's waiting entry with `update` (see
    /// [`DynamoStore::enqueue`]); what to answer follows from the item it
    /// leaves.
    Enqueue(Update),
    /// Write `update` (conditional on the item being unchanged), then
    /// answer `outcome`.
    Write {
        update: Update,
        outcome: AcquireOutcome,
    },
}

/// What a conditional write did.
pub(super) enum Written {
    /// Applied; the attributes asked for.
    Applied(Item),
    /// The condition failed; the item as it was, when asked for.
    Refused(Option<Item>),
}
