//! The key item: its attributes, how it is read, and who holds by
//! position at a given reading of the wall clock.
//!
//! One item per lock key holds everything about the key (see the crate
//! docs, "Key schema"):
//!
//! | attribute | type | meaning |
//! | --- | --- | --- |
//! | `lock_key` | S | the lock key (partition key) |
//! | `fence` | N | the last sequence number handed out; the fencing counter |
//! | `entries` | N | how many entries the item stores (live or expired) |
//! | `format` | N | absent in this format; a later format sets it, and this version refuses such items |
//! | `idle_expiry` | N | epoch seconds; DynamoDB TTL (only with idle expiry on) |
//! | `e:<lease id>` | S | an entry's settings (see [`EntryInfo`]) |
//! | `s:<lease id>` | N | its sequence number |
//! | `x:<lease id>` | N | its expiry, ms since the epoch by its last writer's clock |
//!
//! An entry is three scalar attributes rather than one map: a renewal
//! updates `x:` alone, and items stay small and cheap to read.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use lock_core::{Holder, LeaseId, LockMode, StoreError, StoreErrorKind};

/// The partition key attribute.
pub(crate) const KEY: &str = "lock_key";
/// The sequence counter, which is also the fencing counter.
pub(crate) const FENCE: &str = "fence";
/// How many entries the item stores.
pub(crate) const COUNT: &str = "entries";
/// The item format: absent in this format (1), which saves every write
/// an action; a later format sets it, so that this version refuses it.
pub(crate) const FORMAT: &str = "format";
/// The DynamoDB TTL attribute, in epoch seconds.
pub(crate) const IDLE_EXPIRY: &str = "idle_expiry";
/// The format this version writes and reads.
pub(crate) const FORMAT_VERSION: u64 = 1;
/// How many entries one view counts as expired (see [`KeyState::view`]).
pub(crate) const MAX_EXPIRED: usize = 64;

const ENTRY_PREFIX: &str = "e:";
const SEQ_PREFIX: &str = "s:";
const EXPIRY_PREFIX: &str = "x:";

/// The name of the attribute holding the settings of `lease_id`'s entry.
pub(crate) fn entry_attribute(lease_id: LeaseId) -> String {
    format!("{ENTRY_PREFIX}{lease_id}")
}

/// The name of the attribute holding the sequence number of `lease_id`.
pub(crate) fn seq_attribute(lease_id: LeaseId) -> String {
    format!("{SEQ_PREFIX}{lease_id}")
}

/// The name of the attribute holding the expiry of `lease_id`.
pub(crate) fn expiry_attribute(lease_id: LeaseId) -> String {
    format!("{EXPIRY_PREFIX}{lease_id}")
}

/// A number attribute value.
pub(crate) fn number(value: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// What an entry's `e:` attribute says, written as one string:
/// `{H|W}{x|s} LIMIT TTL_MS SKEW_MS OWNER`, e.g. `Hx 1 60000 10000 web-1`.
/// `H` once its owner was told it holds (so a renewal as held can check
/// it with `begins_with`), `W` before; `x` exclusive, `s` shared; the ttl
/// of its grant (or its applied waiter ttl); the clock skew its owner
/// allows; the owner name last, as it may contain spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryInfo {
    pub(crate) told: bool,
    pub(crate) mode: LockMode,
    pub(crate) limit: u32,
    pub(crate) ttl_ms: u64,
    pub(crate) skew_ms: u64,
    pub(crate) owner: String,
}

/// The prefix of a told entry's `e:` attribute.
pub(crate) const TOLD_PREFIX: &str = "H";

impl EntryInfo {
    /// The attribute value.
    pub(crate) fn value(&self) -> AttributeValue {
        AttributeValue::S(format!(
            "{}{} {} {} {} {}",
            if self.told { TOLD_PREFIX } else { "W" },
            match self.mode {
                LockMode::Exclusive => "x",
                LockMode::Shared => "s",
            },
            self.limit,
            self.ttl_ms,
            self.skew_ms,
            self.owner
        ))
    }

    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(5, ' ');
        let flags = parts.next()?.as_bytes();
        let told = match flags.first()? {
            b'H' => true,
            b'W' => false,
            _ => return None,
        };
        let mode = match flags.get(1..)? {
            b"x" => LockMode::Exclusive,
            b"s" => LockMode::Shared,
            _ => return None,
        };
        Some(Self {
            told,
            mode,
            limit: parts.next()?.parse().ok()?,
            ttl_ms: parts.next()?.parse().ok()?,
            skew_ms: parts.next()?.parse().ok()?,
            owner: parts.next()?.to_owned(),
        })
    }
}

/// One entry of a key's queue, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) lease_id: LeaseId,
    pub(crate) seq: u64,
    pub(crate) owner: String,
    pub(crate) mode: LockMode,
    pub(crate) limit: u32,
    /// Milliseconds since the epoch, by the clock of the client that wrote it.
    pub(crate) expires_at: u64,
    pub(crate) ttl_ms: u64,
    pub(crate) skew_ms: u64,
    /// Whether its owner was told it holds (granted, or renewed as granted).
    pub(crate) told: bool,
}

impl Entry {
    /// Its `e:` attribute, told or not, with `ttl_ms`.
    pub(crate) fn info(&self, told: bool, ttl_ms: u64) -> EntryInfo {
        EntryInfo {
            told,
            mode: self.mode,
            limit: self.limit,
            ttl_ms,
            skew_ms: self.skew_ms,
            owner: self.owner.clone(),
        }
    }

    /// Whether a client reading `now` on its clock, allowing `skew_ms`,
    /// must still count the entry as live: until its clock is past
    /// `expires_at` plus the larger of the entry's skew and its own.
    pub(crate) fn is_live_for(&self, now: u64, skew_ms: u64) -> bool {
        now < self.expires_at.saturating_add(self.skew_ms.max(skew_ms))
    }

    /// How soon the entry may end for a client reading `now`: its own end
    /// while that is ahead (its owner stops then, and may have released it
    /// before), else the moment this client may count it expired. A waiter
    /// polling at these moments looks no later than the holder's expiry
    /// and does not spin through the skew window after it.
    pub(crate) fn ends_in(&self, now: u64, skew_ms: u64) -> u64 {
        if self.expires_at > now {
            self.expires_at - now
        } else {
            self.expires_at
                .saturating_add(self.skew_ms.max(skew_ms))
                .saturating_sub(now)
        }
    }

    /// The entry as a holder, with the time left by the reader's clock
    /// (never more than the ttl of its last write).
    pub(crate) fn holder(&self, now: u64) -> Holder {
        let remaining = self.expires_at.saturating_sub(now).min(self.ttl_ms);
        Holder::new(self.owner.clone())
            .with_mode(self.mode)
            .with_remaining(std::time::Duration::from_millis(remaining))
    }
}

/// Everything the key item says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct KeyState {
    /// The last sequence number handed out (0: none yet).
    pub(crate) fence: u64,
    /// The stored entry count, as the item says.
    pub(crate) count: u64,
    /// Every stored entry, by sequence number.
    pub(crate) entries: Vec<Entry>,
}

/// The entries of a key as one client sees them at one instant.
#[derive(Debug)]
pub(crate) struct View<'a> {
    /// Live entries by sequence number, each with whether it holds.
    pub(crate) live: Vec<(&'a Entry, bool)>,
    /// Entries the client may count as expired.
    pub(crate) expired: Vec<&'a Entry>,
}

impl KeyState {
    /// Reads a key item.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Corrupt`] naming the key when an attribute is
    /// missing or malformed; [`StoreErrorKind::Invalid`] for an item of a
    /// format this version does not know.
    pub(crate) fn parse(
        key: &str,
        item: &HashMap<String, AttributeValue>,
    ) -> Result<Self, StoreError> {
        let corrupt = |what: String| StoreError::corrupt(key, format!("the key item {what}"));
        if let Some(format) = item.get(FORMAT) {
            let format = as_u64(format).ok_or_else(|| corrupt("has a malformed format".into()))?;
            if format != FORMAT_VERSION {
                return Err(StoreError::new(
                    StoreErrorKind::Invalid,
                    format!(
                        "the key item has format {format}, which this version of lock-dynamodb does not know (it reads format {FORMAT_VERSION}, whose items have no format attribute): use the newer version for this table"
                    ),
                )
                .with_key(key));
            }
        }
        let read_number = |name: &str| -> Result<u64, StoreError> {
            match item.get(name) {
                None => Ok(0),
                Some(value) => as_u64(value)
                    .ok_or_else(|| corrupt(format!("has a malformed {name}: {value:?}"))),
            }
        };
        let fence = read_number(FENCE)?;
        let count = read_number(COUNT)?;
        let mut entries = Vec::new();
        for (name, value) in item {
            let Some(hex) = name.strip_prefix(ENTRY_PREFIX) else {
                continue;
            };
            let lease_id: LeaseId = hex
                .parse()
                .map_err(|_| corrupt(format!("has an entry named {name:?}")))?;
            let seq = item
                .get(&seq_attribute(lease_id))
                .and_then(as_u64)
                .ok_or_else(|| corrupt(format!("has no sequence number for entry {lease_id}")))?;
            let expires_at = item
                .get(&expiry_attribute(lease_id))
                .and_then(as_u64)
                .ok_or_else(|| corrupt(format!("has no expiry for entry {lease_id}")))?;
            let info = match value {
                AttributeValue::S(text) => EntryInfo::parse(text),
                _ => None,
            }
            .ok_or_else(|| corrupt(format!("has a malformed entry {lease_id}: {value:?}")))?;
            entries.push(Entry {
                lease_id,
                seq,
                owner: info.owner,
                mode: info.mode,
                limit: info.limit,
                expires_at,
                ttl_ms: info.ttl_ms,
                skew_ms: info.skew_ms,
                told: info.told,
            });
        }
        entries.sort_by_key(|entry| entry.seq);
        Ok(Self {
            fence,
            count,
            entries,
        })
    }

    /// Reads the item a refused write returned, if any.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse).
    pub(crate) fn parse_refused(
        key: &str,
        item: Option<HashMap<String, AttributeValue>>,
    ) -> Result<Option<Self>, StoreError> {
        item.map(|item| Self::parse(key, &item)).transpose()
    }

    /// The entry of `lease_id`, if stored.
    pub(crate) fn find(&self, lease_id: LeaseId) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.lease_id == lease_id)
    }

    /// The entries as a client reading `now` (allowing `skew_ms`) sees
    /// them: which are live, which of those hold by position, and which
    /// it may count as expired.
    ///
    /// At most [`MAX_EXPIRED`] entries count as expired (the first ones in
    /// line); any further expired entry counts as live. A write that relies
    /// on an entry being expired must check, in its condition, that the
    /// entry's expiry is still the one read (its owner may have renewed it
    /// after the read), and an update expression has room for only so many
    /// such checks.
    pub(crate) fn view(&self, now: u64, skew_ms: u64) -> View<'_> {
        let mut live = Vec::new();
        let mut expired = Vec::new();
        for entry in &self.entries {
            if entry.is_live_for(now, skew_ms) || expired.len() >= MAX_EXPIRED {
                live.push(entry);
            } else {
                expired.push(entry);
            }
        }
        // Live shared entries agree on their limit (exclusive ones hold
        // alone whatever it is); should clocks disagree on which entries
        // live, the latest shared request's limit counts.
        let limit = live
            .iter()
            .rev()
            .find(|entry| entry.mode == LockMode::Shared)
            .map_or(1, |entry| entry.limit.max(1));
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut exclusive = false;
        let mut holding = true;
        let live = live
            .into_iter()
            .enumerate()
            .map(|(ahead, entry)| {
                holding = holding
                    && match entry.mode {
                        LockMode::Exclusive => ahead == 0,
                        LockMode::Shared => !exclusive && ahead < limit,
                    };
                exclusive |= entry.mode == LockMode::Exclusive;
                (entry, holding)
            })
            .collect();
        View { live, expired }
    }
}

impl View<'_> {
    /// Whether a new entry of `mode` at the end of the queue would hold
    /// (the key's limit being `limit`).
    pub(crate) fn would_hold(&self, mode: LockMode, limit: u32) -> bool {
        match mode {
            LockMode::Exclusive => self.live.is_empty(),
            LockMode::Shared => {
                self.live
                    .iter()
                    .all(|(entry, holding)| *holding && entry.mode == LockMode::Shared)
                    && self.live.len() < usize::try_from(limit).unwrap_or(usize::MAX)
            }
        }
    }

    /// The limit of the live shared entries, when there are any.
    pub(crate) fn limit(&self) -> Option<u32> {
        self.live
            .iter()
            .rev()
            .find(|(entry, _)| entry.mode == LockMode::Shared)
            .map(|(entry, _)| entry.limit)
    }

    /// The first live holder.
    pub(crate) fn first_holder(&self, now: u64) -> Option<Holder> {
        self.holders(now).next()
    }

    /// Every live holder, in grant order.
    pub(crate) fn holders(&self, now: u64) -> impl Iterator<Item = Holder> + '_ {
        self.live
            .iter()
            .filter(|(_, holding)| *holding)
            .map(move |(entry, _)| entry.holder(now))
    }

    /// How many live entries wait.
    pub(crate) fn waiting(&self) -> usize {
        self.live.iter().filter(|(_, holding)| !holding).count()
    }

    /// Whether the live entry `lease_id` holds; `None` when it is not live.
    pub(crate) fn holds(&self, lease_id: LeaseId) -> Option<bool> {
        self.live
            .iter()
            .find(|(entry, _)| entry.lease_id == lease_id)
            .map(|(_, holding)| *holding)
    }

    /// How soon a live entry before sequence number `seq` may end for this
    /// client, in milliseconds (see [`Entry::ends_in`]).
    pub(crate) fn retry_after(&self, seq: u64, now: u64, skew_ms: u64) -> Option<u64> {
        self.live
            .iter()
            .filter(|(entry, _)| entry.seq < seq)
            .map(|(entry, _)| entry.ends_in(now, skew_ms))
            .min()
    }

    /// The entries counted as expired that are ahead of sequence number
    /// `seq`: a write deciding that `seq` holds must check their expiry.
    pub(crate) fn expired_before(&self, seq: u64) -> impl Iterator<Item = &Entry> + '_ {
        self.expired
            .iter()
            .copied()
            .filter(move |entry| entry.seq < seq)
    }

    /// The owner of an expired entry that held (it was told so, or was
    /// first in line), for [`Grant::previous_owner`](lock_core::Grant).
    pub(crate) fn expired_holder(&self) -> Option<&str> {
        let first_seq = self
            .live
            .first()
            .map(|(entry, _)| entry.seq)
            .into_iter()
            .chain(self.expired.iter().map(|entry| entry.seq))
            .min();
        self.expired
            .iter()
            .find(|entry| entry.told || Some(entry.seq) == first_seq)
            .map(|entry| entry.owner.as_str())
    }
}

fn as_u64(value: &AttributeValue) -> Option<u64> {
    match value {
        AttributeValue::N(text) => text.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(entries: &[(u128, u64, LockMode, u64, bool)]) -> HashMap<String, AttributeValue> {
        let mut item = HashMap::from([
            (KEY.to_owned(), AttributeValue::S("k".into())),
            (FENCE.to_owned(), number(9)),
            (COUNT.to_owned(), number(entries.len())),
        ]);
        for &(id, seq, mode, expires_at, told) in entries {
            let lease_id = LeaseId::from_u128(id);
            let info = EntryInfo {
                told,
                mode,
                limit: 2,
                ttl_ms: 1_000,
                skew_ms: 100,
                owner: format!("owner {id}"),
            };
            item.insert(entry_attribute(lease_id), info.value());
            item.insert(seq_attribute(lease_id), number(seq));
            item.insert(expiry_attribute(lease_id), number(expires_at));
        }
        item
    }

    #[test]
    fn parses_entries_in_sequence_order() {
        let state = KeyState::parse(
            "k",
            &item(&[
                (2, 7, LockMode::Shared, 5_000, false),
                (1, 3, LockMode::Exclusive, 5_000, true),
            ]),
        )
        .unwrap();
        assert_eq!(state.fence, 9);
        assert_eq!(state.view(0, 0).limit(), Some(2));
        let seqs: Vec<u64> = state.entries.iter().map(|entry| entry.seq).collect();
        assert_eq!(seqs, [3, 7]);
        assert!(state.entries[0].told);
        assert_eq!(state.entries[1].owner, "owner 2");
        assert_eq!(state.entries[1].mode, LockMode::Shared);
    }

    #[test]
    fn holding_is_decided_by_position_among_live_entries() {
        let state = KeyState::parse(
            "k",
            &item(&[
                (1, 1, LockMode::Exclusive, 1_000, true),
                (2, 2, LockMode::Shared, 9_000, false),
                (3, 3, LockMode::Shared, 9_000, false),
                (4, 4, LockMode::Shared, 9_000, false),
            ]),
        )
        .unwrap();
        // Before the exclusive entry expires (1000 + skew 100), it alone holds.
        let view = state.view(1_050, 0);
        assert_eq!(view.holds(LeaseId::from_u128(1)), Some(true));
        assert_eq!(view.holds(LeaseId::from_u128(2)), Some(false));
        // Past its end, the next look is when its skew has passed...
        assert_eq!(view.retry_after(2, 1_050, 0), Some(50));
        // ... by the larger of the entry's skew and the reader's.
        assert_eq!(view.retry_after(2, 1_050, 500), Some(450));
        // Before its end, the next look is at its end.
        assert_eq!(state.view(900, 0).retry_after(2, 900, 500), Some(100));
        // Past its expiry plus skew: two shared entries hold (limit 2).
        let view = state.view(1_100, 0);
        assert_eq!(view.holds(LeaseId::from_u128(1)), None);
        assert_eq!(view.holds(LeaseId::from_u128(2)), Some(true));
        assert_eq!(view.holds(LeaseId::from_u128(3)), Some(true));
        assert_eq!(view.holds(LeaseId::from_u128(4)), Some(false));
        assert_eq!(view.waiting(), 1);
        assert_eq!(view.expired_holder(), Some("owner 1"));
        assert!(!view.would_hold(LockMode::Shared, 2));
    }

    #[test]
    fn malformed_items_are_corrupt_naming_the_key() {
        let mut bad = item(&[(1, 1, LockMode::Exclusive, 1_000, true)]);
        bad.remove(&seq_attribute(LeaseId::from_u128(1)));
        let error = KeyState::parse("the/key", &bad).unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Corrupt);
        assert_eq!(error.key(), Some("the/key"));

        let mut newer = item(&[]);
        newer.insert(FORMAT.to_owned(), number(2));
        let error = KeyState::parse("k", &newer).unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Invalid);

        let mut garbage = item(&[]);
        garbage.insert(FENCE.to_owned(), AttributeValue::S("many".into()));
        assert_eq!(
            KeyState::parse("k", &garbage).unwrap_err().kind(),
            StoreErrorKind::Corrupt
        );
    }
}
