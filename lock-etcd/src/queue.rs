//! A key's queue as read from etcd, and who holds by position.
//!
//! The same rule as [`lock_core::LeaseStore`] states, applied to what a
//! range read returned (entries sorted by create revision) or to what a
//! waiter remembers of the entries ahead of it ([`Ahead`]): an exclusive
//! entry holds when nothing is ahead of it; a shared one when everything
//! ahead is shared and fewer than the limit. An old lock key (the previous
//! version's) is an exclusive holder ahead of every entry.

use std::collections::HashMap;

use etcd_client::KeyValue;
use lock_core::{Holder, LeaseId, LockMode, StoreError};

use crate::layout::{Layout, decode_entry, decode_legacy, excerpt};
use crate::watches::Gone;

/// One live key of a lock key's range.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) lease_id: LeaseId,
    pub(crate) owner: String,
    pub(crate) mode: LockMode,
    /// `None` for the old lock key.
    pub(crate) limit: Option<u32>,
    pub(crate) create_revision: i64,
    pub(crate) etcd_lease: i64,
    pub(crate) value: Vec<u8>,
}

impl Seen {
    pub(crate) fn is_legacy(&self) -> bool {
        self.limit.is_none()
    }

    pub(crate) fn holder(&self) -> Holder {
        Holder::new(self.owner.clone()).with_mode(self.mode)
    }
}

/// A lock key's queue at one revision: the old lock key first, then the
/// entries by create revision.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    pub(crate) revision: i64,
    pub(crate) entries: Vec<Seen>,
}

impl Queue {
    /// Reads the key-values of `key`'s range (sorted by create revision) at
    /// `revision`.
    ///
    /// # Errors
    ///
    /// `Corrupt`, naming the etcd key, for a key in the range that is not an
    /// entry or an old lock, or one without an etcd lease (it would never
    /// expire).
    pub(crate) fn parse(
        layout: &Layout,
        key: &str,
        kvs: &[KeyValue],
        revision: i64,
    ) -> Result<Self, StoreError> {
        let legacy_key = layout.legacy_key(key);
        let mut entries = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let corrupt = |why: String| {
                StoreError::corrupt(
                    key,
                    format!(
                        "etcd key {:?} does not hold a dlock entry: {why} (value {}); delete it or use another namespace",
                        String::from_utf8_lossy(kv.key()),
                        excerpt(kv.value())
                    ),
                )
            };
            let seen = if kv.key() == legacy_key.as_slice() {
                let value = decode_legacy(kv.value()).map_err(|why| corrupt(why.to_string()))?;
                Seen {
                    lease_id: value.lease_id,
                    owner: value.owner,
                    mode: LockMode::Exclusive,
                    limit: None,
                    create_revision: kv.create_revision(),
                    etcd_lease: kv.lease(),
                    value: kv.value().to_vec(),
                }
            } else {
                let value = decode_entry(kv.value()).map_err(|why| corrupt(why.to_string()))?;
                if layout.entry_of(kv.key()) != Some((key, value.lease_id)) {
                    return Err(corrupt("its key does not carry its lease id".into()));
                }
                Seen {
                    lease_id: value.lease_id,
                    owner: value.owner,
                    mode: value.mode,
                    limit: Some(value.limit),
                    create_revision: kv.create_revision(),
                    etcd_lease: kv.lease(),
                    value: kv.value().to_vec(),
                }
            };
            if kv.lease() == 0 {
                return Err(StoreError::corrupt(
                    key,
                    format!(
                        "etcd key {:?} holds a dlock value but no etcd lease, so it would never expire; delete it",
                        String::from_utf8_lossy(kv.key())
                    ),
                ));
            }
            entries.push(seen);
        }
        // The old lock key holds ahead of every entry, whatever its
        // revision; etcd sorted the rest.
        entries.sort_by_key(|seen| (!seen.is_legacy(), seen.create_revision));
        Ok(Self { revision, entries })
    }

    /// The limit the shared entries agreed on; `None` without shared
    /// entries (exclusive entries, and an old lock, hold alone whatever
    /// it is).
    pub(crate) fn limit(&self) -> Option<u32> {
        self.entries
            .iter()
            .filter(|seen| seen.mode == LockMode::Shared)
            .find_map(|seen| seen.limit)
    }

    /// How many entries, from the head, hold.
    pub(crate) fn holding(&self) -> usize {
        let Some(first) = self.entries.first() else {
            return 0;
        };
        if first.mode == LockMode::Exclusive {
            return 1;
        }
        let limit = usize::try_from(self.limit().unwrap_or(1)).unwrap_or(usize::MAX);
        self.entries
            .iter()
            .take(limit)
            .take_while(|seen| seen.mode == LockMode::Shared)
            .count()
    }

    /// Where the entry of `lease_id` stands (the old lock key aside).
    pub(crate) fn position(&self, lease_id: LeaseId) -> Option<usize> {
        self.entries
            .iter()
            .position(|seen| !seen.is_legacy() && seen.lease_id == lease_id)
    }

    /// Whether a new entry of `mode` added at the end would hold.
    pub(crate) fn would_hold_at_end(&self, mode: LockMode, limit: u32) -> bool {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        match mode {
            LockMode::Exclusive => self.entries.is_empty(),
            LockMode::Shared => {
                self.entries.len() < limit
                    && self
                        .entries
                        .iter()
                        .all(|seen| !seen.is_legacy() && seen.mode == LockMode::Shared)
            }
        }
    }

    /// The first holder.
    pub(crate) fn first_holder(&self) -> Option<Holder> {
        self.entries.first().map(Seen::holder)
    }

    /// What the entry at `index` must wait for.
    pub(crate) fn ahead_of(&self, index: usize) -> Ahead {
        let mut ahead = Ahead {
            revision: self.revision,
            entries: HashMap::new(),
            legacy: false,
        };
        for seen in &self.entries[..index.min(self.entries.len())] {
            if seen.is_legacy() {
                ahead.legacy = true;
            } else {
                ahead.entries.insert(seen.lease_id, seen.mode);
            }
        }
        ahead
    }
}

/// The live entries ahead of a waiting entry, as of `revision`: what a
/// waiter needs to decide, from the deletions a watch reports, when it
/// holds. Entries created later are behind it and never matter.
#[derive(Debug, Clone)]
pub(crate) struct Ahead {
    pub(crate) revision: i64,
    entries: HashMap<LeaseId, LockMode>,
    /// The old lock key is live.
    legacy: bool,
}

impl Ahead {
    /// Whether an entry of `mode` with these entries ahead holds.
    pub(crate) fn holds(&self, mode: LockMode, limit: u32) -> bool {
        if self.legacy {
            return false;
        }
        match mode {
            LockMode::Exclusive => self.entries.is_empty(),
            LockMode::Shared => {
                usize::try_from(limit).is_ok_and(|limit| self.entries.len() < limit)
                    && self.entries.values().all(|mode| *mode == LockMode::Shared)
            }
        }
    }

    /// A key of this lock key's range was deleted.
    pub(crate) fn deleted(&mut self, gone: Gone) {
        match gone {
            Gone::Entry(lease_id) => {
                self.entries.remove(&lease_id);
            }
            Gone::Legacy => self.legacy = false,
        }
    }

    /// How many entries are ahead (for bounding what is remembered).
    pub(crate) fn len(&self) -> usize {
        self.entries.len() + usize::from(self.legacy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: u128, mode: LockMode, limit: Option<u32>, revision: i64) -> Seen {
        Seen {
            lease_id: LeaseId::from_u128(id),
            owner: format!("o{id}"),
            mode,
            limit,
            create_revision: revision,
            etcd_lease: 1,
            value: Vec::new(),
        }
    }

    fn queue(entries: Vec<Seen>) -> Queue {
        Queue {
            revision: 100,
            entries,
        }
    }

    use LockMode::{Exclusive as X, Shared as S};

    #[test]
    fn holders_by_position() {
        assert_eq!(queue(vec![]).holding(), 0);
        let mutex = queue(vec![seen(1, X, Some(1), 5), seen(2, X, Some(1), 6)]);
        assert_eq!(mutex.holding(), 1);
        assert!(!mutex.would_hold_at_end(X, 1));
        let semaphore = queue(vec![
            seen(1, S, Some(3), 5),
            seen(2, S, Some(3), 6),
            seen(3, S, Some(3), 7),
            seen(4, S, Some(3), 8),
        ]);
        assert_eq!(semaphore.holding(), 3);
        assert!(!semaphore.would_hold_at_end(S, 3));
        let readers = queue(vec![seen(1, S, Some(9), 5), seen(2, S, Some(9), 6)]);
        assert_eq!(readers.holding(), 2);
        assert!(readers.would_hold_at_end(S, 9));
        assert!(!readers.would_hold_at_end(X, 9));
        // A waiting writer blocks the readers behind it.
        let writer_waits = queue(vec![
            seen(1, S, Some(9), 5),
            seen(2, X, Some(9), 6),
            seen(3, S, Some(9), 7),
        ]);
        assert_eq!(writer_waits.holding(), 1);
        assert!(!writer_waits.would_hold_at_end(S, 9));
        assert!(!writer_waits.ahead_of(2).holds(S, 9));
        assert!(!writer_waits.ahead_of(1).holds(X, 9));
        assert!(writer_waits.ahead_of(0).holds(S, 9));
    }

    #[test]
    fn an_old_lock_holds_ahead_of_every_entry() {
        let with_legacy = queue(vec![seen(1, S, Some(5), 9), seen(2, X, None, 12)]);
        let parsed_order = {
            let mut entries = with_legacy.entries.clone();
            entries.sort_by_key(|seen| (!seen.is_legacy(), seen.create_revision));
            entries
        };
        let sorted = queue(parsed_order);
        assert!(sorted.entries[0].is_legacy());
        assert_eq!(sorted.holding(), 1);
        assert_eq!(sorted.limit(), Some(5));
        assert_eq!(sorted.position(LeaseId::from_u128(1)), Some(1));
        assert!(!sorted.would_hold_at_end(S, 5));
        let mut ahead = sorted.ahead_of(1);
        assert!(!ahead.holds(S, 5));
        ahead.deleted(Gone::Legacy);
        assert!(ahead.holds(S, 5));
        assert_eq!(queue(vec![seen(2, X, None, 1)]).limit(), None);
    }

    #[test]
    fn deletions_ahead_promote() {
        let semaphore = queue(vec![
            seen(1, S, Some(2), 5),
            seen(2, S, Some(2), 6),
            seen(3, S, Some(2), 7),
        ]);
        let mut ahead = semaphore.ahead_of(2);
        assert!(!ahead.holds(S, 2));
        ahead.deleted(Gone::Entry(LeaseId::from_u128(7)));
        assert!(!ahead.holds(S, 2), "an entry that was not ahead");
        ahead.deleted(Gone::Entry(LeaseId::from_u128(2)));
        assert!(ahead.holds(S, 2));
        assert_eq!(ahead.len(), 1);
    }
}
