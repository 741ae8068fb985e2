//! A key's queue as an acquisition reads it, and who holds by position.

use std::time::Duration;

use lock_core::{Holder, LeaseId, LockMode, StoreError};

/// One entry of a key, as stored.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) seq: i64,
    pub(crate) lease_id: LeaseId,
    pub(crate) owner: String,
    pub(crate) shared: bool,
    /// The limit the entry agreed on.
    pub(crate) lim: u32,
    pub(crate) expires_ms: i64,
}

/// A key's entries in sequence order, live and expired, read at `now_ms`.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) now_ms: i64,
    pub(crate) entries: Vec<Entry>,
}

impl Queue {
    /// The limit the live shared entries agreed on (exclusive entries
    /// ignore it).
    pub(crate) fn limit(&self) -> Option<u32> {
        self.live()
            .find(|entry| entry.shared)
            .map(|entry| entry.lim)
    }

    /// The entries live at `now_ms`, in sequence order.
    pub(crate) fn live(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.expires_ms > self.now_ms)
    }

    /// The live entries with whether each holds: an entry holds when every
    /// live entry before it holds and it is compatible with them (exclusive
    /// when first; shared when no entry before it is exclusive and fewer
    /// than the limit are).
    pub(crate) fn positions(&self) -> Vec<(&Entry, bool)> {
        let limit = usize::try_from(self.limit().unwrap_or(1)).unwrap_or(usize::MAX);
        let mut exclusive_before = false;
        let mut all_hold = true;
        self.live()
            .enumerate()
            .map(|(ahead, entry)| {
                let compatible = ahead == 0 || (entry.shared && !exclusive_before && ahead < limit);
                all_hold &= compatible;
                exclusive_before |= !entry.shared;
                (entry, all_hold)
            })
            .collect()
    }

    /// Whether a new entry of `mode` would hold at the end of the queue,
    /// under `limit`.
    pub(crate) fn would_hold(&self, shared: bool, limit: u32) -> bool {
        let live: Vec<&Entry> = self.live().collect();
        live.is_empty()
            || (shared
                && live.iter().all(|e| e.shared)
                && live.len() < usize::try_from(limit).unwrap_or(usize::MAX))
    }

    /// The first live entry (it always holds), as a holder.
    pub(crate) fn first_holder(&self) -> Option<Holder> {
        self.live().next().map(|entry| self.holder(entry))
    }

    pub(crate) fn holder(&self, entry: &Entry) -> Holder {
        let remaining = u64::try_from(entry.expires_ms - self.now_ms).unwrap_or(0);
        Holder::new(entry.owner.clone())
            .with_remaining(Duration::from_millis(remaining))
            .with_mode(mode(entry.shared))
    }

    /// How soon a live entry before `seq` (all live ones when `None`)
    /// expires.
    pub(crate) fn retry_after(&self, before: Option<i64>) -> Option<Duration> {
        self.live()
            .filter(|e| before.is_none_or(|seq| e.seq < seq))
            .map(|e| e.expires_ms - self.now_ms)
            .min()
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis)
    }
}

pub(crate) fn mode(shared: bool) -> LockMode {
    if shared {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    }
}

/// A stored lease id: 16 bytes.
pub(crate) fn lease_id(key: &str, bytes: &[u8]) -> Result<LeaseId, StoreError> {
    <[u8; 16]>::try_from(bytes)
        .map(LeaseId::from_bytes)
        .map_err(|_| StoreError::corrupt(key, format!("a lease id of {} bytes", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(limit: u32, entries: &[(bool, i64)]) -> Queue {
        Queue {
            now_ms: 1000,
            entries: entries
                .iter()
                .enumerate()
                .map(|(i, (shared, expires_ms))| Entry {
                    seq: i64::try_from(i).unwrap() + 1,
                    lease_id: LeaseId::random(),
                    owner: format!("o{i}"),
                    shared: *shared,
                    lim: limit,
                    expires_ms: *expires_ms,
                })
                .collect(),
        }
    }

    fn holds(queue: &Queue) -> Vec<bool> {
        queue
            .positions()
            .into_iter()
            .map(|(_, holds)| holds)
            .collect()
    }

    #[test]
    fn positions_follow_the_rule_for_mutexes_semaphores_and_rw_locks() {
        let (shared, exclusive, live, dead) = (true, false, 2000, 500);
        // Mutex: the first holds.
        assert_eq!(
            holds(&queue(1, &[(exclusive, live), (exclusive, live)])),
            [true, false]
        );
        // Semaphore of 2.
        assert_eq!(
            holds(&queue(2, &[(shared, live), (shared, live), (shared, live)])),
            [true, true, false]
        );
        // Readers, a writer, a reader behind it.
        assert_eq!(
            holds(&queue(
                9,
                &[
                    (shared, live),
                    (shared, live),
                    (exclusive, live),
                    (shared, live)
                ]
            )),
            [true, true, false, false]
        );
        // A writer first: readers behind it wait.
        assert_eq!(
            holds(&queue(9, &[(exclusive, live), (shared, live)])),
            [true, false]
        );
        // Expired entries are skipped.
        assert_eq!(
            holds(&queue(1, &[(exclusive, dead), (exclusive, live)])),
            [true]
        );
    }

    #[test]
    fn a_new_entry_holds_only_where_the_rule_lets_it() {
        let (shared, exclusive, live) = (true, false, 2000);
        assert!(queue(1, &[]).would_hold(exclusive, 1));
        assert!(!queue(3, &[(shared, live)]).would_hold(exclusive, 3));
        assert!(queue(3, &[(shared, live), (shared, live)]).would_hold(shared, 3));
        assert!(!queue(2, &[(shared, live), (shared, live)]).would_hold(shared, 2));
        assert!(!queue(9, &[(shared, live), (exclusive, live)]).would_hold(shared, 9));
    }
}
