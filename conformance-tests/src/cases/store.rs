//! Cases for the `LeaseStore` contract, through raw store calls.

use lock_core::{
    AcquireRequest, Fencing, Grant, LeaseId, LeaseStore, ReleaseOutcome, RenewEntry, RenewOutcome,
};
use std::time::Duration;

use tokio::time::Instant;

use crate::support::{
    StoreFactory, acquire, expiry_slack, grant, grant_after_expiry, held, holder_of, short_ttl,
    unique_key,
};

/// A free key is granted with a token, the requested ttl (or more) and no
/// previous owner; inspect then shows the holder.
pub async fn acquire_grants_a_free_key<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = short_ttl(&store.capabilities());
    let key = unique_key("acquire_grants_a_free_key");
    let (_, grant) = grant(&store, &key, "alice", ttl).await;
    assert!(
        grant.ttl >= ttl,
        "applied ttl {:?} < requested {ttl:?}",
        grant.ttl
    );
    assert!(grant.token.is_some(), "fencing is enabled by default");
    assert_eq!(grant.previous_owner, None);
    assert_eq!(holder_of(&store, &key).await.as_deref(), Some("alice"));
}

/// A held key answers Held with the holder's owner and a remaining time
/// no longer than the ttl; losing the race is not an error.
pub async fn acquire_of_a_held_key_reports_the_holder<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let other = factory.connect().await;
    let ttl = 10 * short_ttl(&store.capabilities());
    let key = unique_key("acquire_of_a_held_key_reports_the_holder");
    let (_, first) = grant(&store, &key, "alice", ttl).await;
    let (_, outcome) = acquire(&other, &key, "bob", ttl).await;
    let holder = held(outcome);
    assert_eq!(holder.owner, "alice");
    if let Some(remaining) = holder.remaining {
        assert!(remaining <= first.ttl, "remaining {remaining:?} > ttl");
        assert!(
            remaining > first.ttl / 2,
            "remaining {remaining:?} too short"
        );
    }
}

/// An expired lease is taken over only after its ttl, and the grant names
/// the previous owner when the store still knows it.
pub async fn acquire_takes_over_an_expired_lease<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let caps = store.capabilities();
    let ttl = short_ttl(&caps);
    let key = unique_key("acquire_takes_over_an_expired_lease");
    let sent = Instant::now();
    let (_, first) = grant(&store, &key, "alice", ttl).await;
    let (_, grant) =
        grant_after_expiry(&store, &key, "bob", ttl, first.ttl + expiry_slack(&caps)).await;
    assert!(
        sent.elapsed() >= first.ttl.mul_f64(0.99),
        "taken over after {:?}, before the ttl {:?}",
        sent.elapsed(),
        first.ttl
    );
    if let Some(previous) = grant.previous_owner {
        assert_eq!(previous, "alice");
    }
    assert!(grant.token > first.token);
}

/// A key released by its holder is granted again with no previous owner.
pub async fn acquire_after_release_reports_no_previous_owner<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = short_ttl(&store.capabilities());
    let key = unique_key("acquire_after_release_reports_no_previous_owner");
    let (lease, _) = grant(&store, &key, "alice", ttl).await;
    let released = store.release(&key, lease, Fencing::Enabled).await.unwrap();
    assert_eq!(released, ReleaseOutcome::Released);
    let (_, grant) = grant(&store, &key, "bob", ttl).await;
    assert_eq!(grant.previous_owner, None);
}

/// A renewal of a live lease extends it past its first expiry.
pub async fn renew_extends_a_live_lease<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let caps = store.capabilities();
    let ttl = short_ttl(&caps);
    let key = unique_key("renew_extends_a_live_lease");
    let start = Instant::now();
    let (lease, first) = grant(&store, &key, "alice", ttl).await;
    tokio::time::sleep(first.ttl / 2).await;
    let outcomes = store
        .renew(&[RenewEntry::held(&key, lease)], ttl)
        .await
        .unwrap();
    let RenewOutcome::Renewed { ttl: applied } = outcomes[0] else {
        panic!("expected Renewed, got {outcomes:?}");
    };
    assert!(applied >= ttl);
    // Past the first expiry (plus slack), the renewed lease still holds.
    tokio::time::sleep_until(start + first.ttl + first.ttl / 4).await;
    assert_eq!(holder_of(&store, &key).await.as_deref(), Some("alice"));
}

/// A lease that expired and was taken over can not be renewed.
pub async fn renew_of_a_superseded_lease_is_lost<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let caps = store.capabilities();
    let ttl = short_ttl(&caps);
    let key = unique_key("renew_of_a_superseded_lease_is_lost");
    let (old, first) = grant(&store, &key, "alice", ttl).await;
    let limit = first.ttl + expiry_slack(&caps);
    let (new, _) = grant_after_expiry(&store, &key, "bob", 10 * ttl, limit).await;
    let outcomes = store
        .renew(&[RenewEntry::held(&key, old)], ttl)
        .await
        .unwrap();
    assert_eq!(outcomes, vec![RenewOutcome::Lost]);
    assert_eq!(holder_of(&store, &key).await.as_deref(), Some("bob"));
    let outcomes = store
        .renew(&[RenewEntry::held(&key, new)], ttl)
        .await
        .unwrap();
    assert!(matches!(outcomes[0], RenewOutcome::Renewed { .. }));
}

/// A lease that expired by the store's clock is Lost on renewal even when
/// nobody took the key, and the renewal does not bring it back.
pub async fn renew_of_an_expired_lease_is_lost<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = short_ttl(&store.capabilities());
    let key = unique_key("renew_of_an_expired_lease_is_lost");
    let (lease, _) = expired_grant(&store, &key, ttl).await;
    let outcomes = store
        .renew(&[RenewEntry::held(&key, lease)], ttl)
        .await
        .unwrap();
    assert_eq!(outcomes, vec![RenewOutcome::Lost]);
    assert_eq!(holder_of(&store, &key).await, None, "renew never recreates");
}

/// Alice's grant of `key` for `ttl`, once it has expired by the store's
/// clock (nobody took the key).
async fn expired_grant<S: LeaseStore>(store: &S, key: &str, ttl: Duration) -> (LeaseId, Grant) {
    let caps = store.capabilities();
    let (lease, first) = grant(store, key, "alice", ttl).await;
    let limit = first.ttl + expiry_slack(&caps);
    crate::support::eventually(limit, "the lease expires", || async {
        holder_of(store, key).await.is_none()
    })
    .await;
    (lease, first)
}

/// A released lease can not be renewed.
pub async fn renew_of_a_released_lease_is_lost<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = short_ttl(&store.capabilities());
    let key = unique_key("renew_of_a_released_lease_is_lost");
    let (lease, _) = grant(&store, &key, "alice", ttl).await;
    store.release(&key, lease, Fencing::Enabled).await.unwrap();
    let outcomes = store
        .renew(&[RenewEntry::held(&key, lease)], ttl)
        .await
        .unwrap();
    assert_eq!(outcomes, vec![RenewOutcome::Lost]);
    assert_eq!(holder_of(&store, &key).await, None);
}

/// Renewing a key the store never saw is Lost and creates nothing.
pub async fn renew_never_creates_a_lease<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = short_ttl(&store.capabilities());
    let key = unique_key("renew_never_creates_a_lease");
    let entries = [RenewEntry::held(&key, LeaseId::random())];
    assert_eq!(
        store.renew(&entries, ttl).await.unwrap(),
        vec![RenewOutcome::Lost]
    );
    assert_eq!(holder_of(&store, &key).await, None);
    let (_, grant) = grant(&store, &key, "alice", ttl).await;
    assert_eq!(grant.previous_owner, None);
}

/// A batch of live, released, unknown and mismatched leases is answered
/// entry by entry, in order.
pub async fn renew_answers_a_mixed_batch_in_order<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = 10 * short_ttl(&store.capabilities());
    let base = unique_key("renew_answers_a_mixed_batch_in_order");
    let keys: Vec<String> = (0..5).map(|i| format!("{base}/{i}")).collect();
    let (live_a, _) = grant(&store, &keys[0], "alice", ttl).await;
    let (released, _) = grant(&store, &keys[1], "alice", ttl).await;
    store
        .release(&keys[1], released, Fencing::Enabled)
        .await
        .unwrap();
    let (_, _) = grant(&store, &keys[3], "bob", ttl).await;
    let (live_b, _) = grant(&store, &keys[4], "alice", ttl).await;
    let entries = [
        RenewEntry::held(&keys[0], live_a),
        RenewEntry::held(&keys[1], released),
        RenewEntry::held(&keys[2], LeaseId::random()),
        RenewEntry::held(&keys[3], LeaseId::random()),
        RenewEntry::held(&keys[4], live_b),
    ];
    let outcomes = store.renew(&entries, ttl).await.unwrap();
    let renewed: Vec<bool> = outcomes
        .iter()
        .map(|o| matches!(o, RenewOutcome::Renewed { .. }))
        .collect();
    assert_eq!(renewed, [true, false, false, false, true], "{outcomes:?}");
    assert_eq!(holder_of(&store, &keys[3]).await.as_deref(), Some("bob"));
}

/// A batch as large as the store allows (up to 200) renews every lease in
/// one call; an empty batch answers nothing.
pub async fn renew_takes_a_full_batch<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let caps = store.capabilities();
    let ttl = 10 * short_ttl(&caps);
    let base = unique_key("renew_takes_a_full_batch");
    let size = caps.max_batch.clamp(1, 200);
    let mut held = Vec::with_capacity(size);
    for i in 0..size {
        let key = format!("{base}/{i}");
        let (lease, _) = grant(&store, &key, "alice", ttl).await;
        held.push((key, lease));
    }
    let entries: Vec<RenewEntry<'_>> = held
        .iter()
        .map(|(key, lease_id)| RenewEntry::held(key, *lease_id))
        .collect();
    let outcomes = store.renew(&entries, ttl).await.unwrap();
    assert_eq!(outcomes.len(), size);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, RenewOutcome::Renewed { .. }))
    );
    assert!(store.renew(&[], ttl).await.unwrap().is_empty());
}

/// After a release another client gets the key at once.
pub async fn release_frees_the_key<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let other = factory.connect().await;
    let ttl = 10 * short_ttl(&store.capabilities());
    let key = unique_key("release_frees_the_key");
    let (lease, _) = grant(&store, &key, "alice", ttl).await;
    held(acquire(&other, &key, "bob", ttl).await.1);
    let outcome = store.release(&key, lease, Fencing::Enabled).await.unwrap();
    assert_eq!(outcome, ReleaseOutcome::Released);
    assert_eq!(holder_of(&other, &key).await, None);
    grant(&other, &key, "bob", ttl).await;
}

/// A stale holder's late release (its lease expired and was taken over)
/// changes nothing: release never deletes by key alone.
pub async fn release_by_a_superseded_lease_changes_nothing<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let caps = store.capabilities();
    let ttl = short_ttl(&caps);
    let key = unique_key("release_by_a_superseded_lease_changes_nothing");
    let (old, first) = grant(&store, &key, "alice", ttl).await;
    let limit = first.ttl + expiry_slack(&caps);
    let (new, _) = grant_after_expiry(&store, &key, "bob", 10 * ttl, limit).await;
    let outcome = store.release(&key, old, Fencing::Enabled).await.unwrap();
    assert_eq!(outcome, ReleaseOutcome::NotHeld);
    assert_eq!(holder_of(&store, &key).await.as_deref(), Some("bob"));
    let outcomes = store
        .renew(&[RenewEntry::held(&key, new)], ttl)
        .await
        .unwrap();
    assert!(matches!(outcomes[0], RenewOutcome::Renewed { .. }));
}

/// A late release by a lease that expired while nobody took the key
/// answers NotHeld and changes nothing: the next grant is a takeover (it
/// names the expired owner, when the store reports one), not a grant after
/// a release.
pub async fn release_by_an_expired_lease_changes_nothing<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = short_ttl(&store.capabilities());
    let key = unique_key("release_by_an_expired_lease_changes_nothing");
    let (lease, first) = expired_grant(&store, &key, ttl).await;
    let outcome = store.release(&key, lease, Fencing::Enabled).await.unwrap();
    assert_eq!(outcome, ReleaseOutcome::NotHeld);
    let (_, grant) = grant(&store, &key, "bob", ttl).await;
    if let Some(previous) = grant.previous_owner {
        assert_eq!(previous, "alice");
    }
    assert!(grant.token > first.token);
}

/// A release with a lease id that never held the key leaves the holder.
pub async fn release_with_a_foreign_lease_id_keeps_the_holder<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = 10 * short_ttl(&store.capabilities());
    let key = unique_key("release_with_a_foreign_lease_id_keeps_the_holder");
    grant(&store, &key, "alice", ttl).await;
    let outcome = store
        .release(&key, LeaseId::random(), Fencing::Enabled)
        .await
        .unwrap();
    assert_eq!(outcome, ReleaseOutcome::NotHeld);
    assert_eq!(holder_of(&store, &key).await.as_deref(), Some("alice"));
}

/// Releasing twice: the second answers NotHeld; releasing a key the store
/// never saw answers NotHeld.
pub async fn release_twice_and_unknown_keys_are_not_held<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = short_ttl(&store.capabilities());
    let key = unique_key("release_twice_and_unknown_keys_are_not_held");
    let (lease, _) = grant(&store, &key, "alice", ttl).await;
    let first = store.release(&key, lease, Fencing::Enabled).await.unwrap();
    let second = store.release(&key, lease, Fencing::Enabled).await.unwrap();
    assert_eq!(
        (first, second),
        (ReleaseOutcome::Released, ReleaseOutcome::NotHeld)
    );
    let unknown = unique_key("never-seen");
    let outcome = store
        .release(&unknown, LeaseId::random(), Fencing::Enabled)
        .await
        .unwrap();
    assert_eq!(outcome, ReleaseOutcome::NotHeld);
}

/// Tokens strictly increase across releases, and inspect keeps the last
/// one after the release.
pub async fn fencing_tokens_increase_across_release<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = short_ttl(&store.capabilities());
    let key = unique_key("fencing_tokens_increase_across_release");
    let mut last = None;
    for round in 0..5 {
        let (lease, grant) = grant(&store, &key, "alice", ttl).await;
        assert!(
            grant.token > last,
            "round {round}: {:?} after {last:?}",
            grant.token
        );
        last = grant.token;
        store.release(&key, lease, Fencing::Enabled).await.unwrap();
    }
    let info = store.inspect(&key).await.unwrap().expect("the key is kept");
    assert_eq!(info.holder, None);
    assert_eq!(info.last_token, last, "the fencing state survives release");
}

/// Tokens strictly increase across expiry and takeover.
pub async fn fencing_tokens_increase_across_expiry_and_takeover<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let caps = store.capabilities();
    let ttl = short_ttl(&caps);
    let key = unique_key("fencing_tokens_increase_across_expiry_and_takeover");
    let (_, first) = grant(&store, &key, "alice", ttl).await;
    let limit = first.ttl + expiry_slack(&caps);
    let (_, second) = grant_after_expiry(&store, &key, "bob", ttl, limit).await;
    let (_, third) = grant_after_expiry(&store, &key, "carol", ttl, limit).await;
    assert!(
        first.token < second.token,
        "{:?} then {:?}",
        first.token,
        second.token
    );
    assert!(
        second.token < third.token,
        "{:?} then {:?}",
        second.token,
        third.token
    );
}

/// Grants interleaved on two keys: each key's tokens strictly increase.
pub async fn fencing_tokens_increase_per_key_when_keys_interleave<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = short_ttl(&store.capabilities());
    let base = unique_key("fencing_tokens_increase_per_key_when_keys_interleave");
    let keys = [format!("{base}/a"), format!("{base}/b")];
    let mut last = [None, None];
    for round in 0..8 {
        let which = if round % 3 == 0 { 1 } else { 0 };
        let (lease, grant) = grant(&store, &keys[which], "alice", ttl).await;
        assert!(
            grant.token > last[which],
            "key {which}: {:?} after {:?}",
            grant.token,
            last[which]
        );
        last[which] = grant.token;
        store
            .release(&keys[which], lease, Fencing::Enabled)
            .await
            .unwrap();
    }
}

/// With fencing disabled a grant carries no token, and the key can be
/// released and granted again.
pub async fn fencing_disabled_grants_without_a_token<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = short_ttl(&store.capabilities());
    let key = unique_key("fencing_disabled_grants_without_a_token");
    for _ in 0..2 {
        let lease = LeaseId::random();
        let request =
            AcquireRequest::new(&key, "alice", lease, ttl).with_fencing(Fencing::Disabled);
        let grant = crate::support::granted(store.acquire(request).await.unwrap());
        assert_eq!(grant.token, None);
        let outcome = store.release(&key, lease, Fencing::Disabled).await.unwrap();
        assert_eq!(outcome, ReleaseOutcome::Released);
        assert_eq!(holder_of(&store, &key).await, None);
    }
}

/// Inspect: nothing for an unknown key; holder, remaining time and token
/// for a held one.
pub async fn inspect_reports_holder_remaining_and_token<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = 10 * short_ttl(&store.capabilities());
    let key = unique_key("inspect_reports_holder_remaining_and_token");
    assert_eq!(store.inspect(&key).await.unwrap(), None);
    let (_, grant) = grant(&store, &key, "alice", ttl).await;
    let info = store.inspect(&key).await.unwrap().expect("held key");
    let holder = info.holder.expect("a live holder");
    assert_eq!(holder.owner, "alice");
    if let Some(remaining) = holder.remaining {
        assert!(
            remaining <= grant.ttl && remaining > grant.ttl / 2,
            "{remaining:?}"
        );
    }
    assert_eq!(info.last_token, grant.token);
}

/// Ids with quotes, wildcards of SQL, glob and Redis patterns, braces (hash
/// tags), newlines, emoji and the separators of state strings are stored
/// and matched exactly, as owners too: holding one never makes a
/// look-alike key held.
pub async fn weird_ids_are_stored_and_matched_exactly<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = 10 * short_ttl(&store.capabilities());
    let base = unique_key("weird_ids_are_stored_and_matched_exactly");
    let weird = [
        ("it's \"quoted\"", "it-s -quoted-"),
        ("100%", "1000"),
        ("a_b", "axb"),
        ("star*", "star-and-more"),
        ("what?", "whatx"),
        ("{tag}x", "{tag}y"),
        ("[ab]", "a"),
        ("line\nbreak", "line"),
        ("back\\slash", "back"),
        ("🔒 lock", "🔓 lock"),
        ("trailing ", "trailing"),
        ("Case", "case"),
        // Separators of stored state strings, and a release mark.
        (
            ",---------------------------------,1,0,;x:y,",
            ",--,1,0,;x:y,",
        ),
    ];
    for (id, look_alike) in weird {
        let key = format!("{base}/{id}");
        let other = format!("{base}/{look_alike}");
        let (lease, _) = grant(&store, &key, id, ttl).await;
        assert_eq!(holder_of(&store, &key).await.as_deref(), Some(id), "{id:?}");
        assert_eq!(
            holder_of(&store, &other).await,
            None,
            "{id:?} leaked to {look_alike:?}"
        );
        let (other_lease, _) = grant(&store, &other, "other", ttl).await;
        let outcome = store.release(&key, lease, Fencing::Enabled).await.unwrap();
        assert_eq!(outcome, ReleaseOutcome::Released, "{id:?}");
        assert_eq!(holder_of(&store, &other).await.as_deref(), Some("other"));
        store
            .release(&other, other_lease, Fencing::Enabled)
            .await
            .unwrap();
    }
}

/// A key of the maximum length (the store's, at most 1024 bytes) works and
/// differs from the same key with its last byte changed.
pub async fn keys_of_the_maximum_length_work<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let caps = store.capabilities();
    let ttl = 10 * short_ttl(&caps);
    let base = unique_key("keys_of_the_maximum_length_work");
    let length = caps.max_key_len.min(lock_core::MAX_KEY_LEN);
    assert!(
        length > base.len() + 1,
        "the store's keys are too short for the suite"
    );
    let key_a = format!("{base}{}", "a".repeat(length - base.len()));
    let key_b = format!("{}b", &key_a[..length - 1]);
    assert_eq!((key_a.len(), key_b.len()), (length, length));
    grant(&store, &key_a, "alice", ttl).await;
    assert_eq!(holder_of(&store, &key_b).await, None);
    grant(&store, &key_b, "bob", ttl).await;
    assert_eq!(holder_of(&store, &key_a).await.as_deref(), Some("alice"));
}

/// A granted lease really lasts its ttl: another client is refused until
/// then.
pub async fn acquire_holds_for_the_whole_ttl<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let other = factory.connect().await;
    let ttl = short_ttl(&store.capabilities());
    let key = unique_key("acquire_holds_for_the_whole_ttl");
    let sent = Instant::now();
    grant(&store, &key, "alice", ttl).await;
    while sent.elapsed() < ttl.mul_f64(0.9) {
        let (_, outcome) = acquire(&other, &key, "bob", ttl).await;
        if sent.elapsed() < ttl.mul_f64(0.9) {
            held(outcome);
        }
        tokio::time::sleep(ttl / 10).await;
    }
}

/// Many clients acquiring one free key at the same moment: exactly one is
/// granted.
pub async fn concurrent_acquires_grant_exactly_one<F: StoreFactory>(factory: &F) {
    let ttl = 10 * short_ttl(&factory.connect().await.capabilities());
    for round in 0..5 {
        let key = unique_key("concurrent_acquires_grant_exactly_one");
        let mut clients = Vec::new();
        for _ in 0..16 {
            clients.push(factory.connect().await);
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
        let attempts = clients.into_iter().enumerate().map(|(i, store)| {
            let (key, barrier) = (key.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let (_, outcome) = acquire(&store, &key, &format!("client-{i}"), ttl).await;
                matches!(outcome, lock_core::AcquireOutcome::Acquired(_))
            })
        });
        let mut granted = 0;
        for attempt in attempts.collect::<Vec<_>>() {
            granted += usize::from(attempt.await.expect("attempt task"));
        }
        assert_eq!(granted, 1, "round {round}: {granted} grants of one key");
    }
}
