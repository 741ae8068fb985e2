//! Where entries live in etcd, and what their values look like.
//!
//! ```text
//! <namespace>lock/<lock key>\0<32 hex lease id>
//!     one key per entry (holding or waiting), attached to one of the
//!     store's etcd leases; value "dlock2:<limit>:<x|s>:<32 hex lease id>:<owner>";
//!     its create revision orders the queue and is the entry's fencing token
//! <namespace>lock/<lock key>
//!     the previous version's lock key (value "dlock1:<32 hex lease id>:<owner>");
//!     never written any more, read as a holder ahead of every entry
//! <namespace>fence/<lock key>
//!     empty value, no lease; put in the same transaction as every entry made
//!     with fencing, so its mod revision is the key's last token
//! ```
//!
//! Lock keys contain no NUL byte, so the range from `<namespace>lock/<lock
//! key>` (inclusive) to the same followed by `\x01` (exclusive) holds
//! exactly that lock key's entries and its old lock key: one range read,
//! one range comparison and one watch cover the whole queue.

use lock_core::{LeaseId, LockMode};

/// The tag of the previous version's lock values.
const LEGACY_TAG: &[u8] = b"dlock1:";
/// The tag every entry value starts with.
const TAG: &[u8] = b"dlock2:";

/// The etcd key layout of one store.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    namespace: String,
    lock_prefix: Vec<u8>,
    fence_prefix: Vec<u8>,
}

impl Layout {
    pub(crate) fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            lock_prefix: format!("{namespace}lock/").into_bytes(),
            fence_prefix: format!("{namespace}fence/").into_bytes(),
        }
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The previous version's lock key of `key`: also where the key's range
    /// starts.
    pub(crate) fn legacy_key(&self, key: &str) -> Vec<u8> {
        join(&self.lock_prefix, key)
    }

    /// The etcd key of the entry of `lease_id` on `key`.
    pub(crate) fn entry_key(&self, key: &str, lease_id: LeaseId) -> Vec<u8> {
        let mut out = self.legacy_key(key);
        out.push(0);
        out.extend_from_slice(lease_id.to_string().as_bytes());
        out
    }

    /// The range `[start, end)` of `key`'s entries and old lock key.
    pub(crate) fn range(&self, key: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.legacy_key(key);
        let mut end = start.clone();
        end.push(1);
        (start, end)
    }

    /// The etcd key whose mod revision is `key`'s last fencing token.
    pub(crate) fn fence_key(&self, key: &str) -> Vec<u8> {
        join(&self.fence_prefix, key)
    }

    /// The lock key and lease id of an entry's etcd key, when it is one.
    pub(crate) fn entry_of<'a>(&self, etcd_key: &'a [u8]) -> Option<(&'a str, LeaseId)> {
        let rest = etcd_key.strip_prefix(self.lock_prefix.as_slice())?;
        let nul = rest.iter().position(|byte| *byte == 0)?;
        let key = std::str::from_utf8(&rest[..nul]).ok()?;
        let hex = std::str::from_utf8(&rest[nul + 1..]).ok()?;
        Some((key, hex.parse().ok()?))
    }
}

fn join(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + key.len() + 33);
    out.extend_from_slice(prefix);
    out.extend_from_slice(key.as_bytes());
    out
}

/// What an entry's value says: what others need to place it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryValue {
    pub(crate) limit: u32,
    pub(crate) mode: LockMode,
    pub(crate) lease_id: LeaseId,
    pub(crate) owner: String,
}

fn mode_char(mode: LockMode) -> u8 {
    match mode {
        LockMode::Exclusive => b'x',
        LockMode::Shared => b's',
    }
}

/// The value of an entry: tag, limit, mode, fixed-width lease id, owner.
/// The limit comes first so that one pair of range comparisons checks that
/// every entry of a key agrees on it ([`limit_band`]); the owner is the
/// remainder, so it may contain any character.
pub(crate) fn encode_entry(limit: u32, mode: LockMode, lease_id: LeaseId, owner: &str) -> Vec<u8> {
    let mut value = limit_prefix(limit);
    value.push(mode_char(mode));
    value.push(b':');
    value.extend_from_slice(lease_id.to_string().as_bytes());
    value.push(b':');
    value.extend_from_slice(owner.as_bytes());
    value
}

fn limit_prefix(limit: u32) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(TAG.len() + 11 + 36);
    prefix.extend_from_slice(TAG);
    prefix.extend_from_slice(limit.to_string().as_bytes());
    prefix.push(b':');
    prefix
}

/// Bounds strictly enclosing every entry value of `limit`, and no other
/// value: `low` is a proper prefix of each, `high` is `low` with its last
/// byte (`:`) incremented. A value comparison over a key's range against
/// both holds exactly when every entry agrees on `limit` (and the old lock
/// key is absent: its value starts with another tag).
pub(crate) fn limit_band(limit: u32) -> (Vec<u8>, Vec<u8>) {
    let low = limit_prefix(limit);
    let mut high = low.clone();
    if let Some(last) = high.last_mut() {
        *last += 1;
    }
    (low, high)
}

/// The previous version's lock value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LegacyValue {
    pub(crate) lease_id: LeaseId,
    pub(crate) owner: String,
}

/// Why a value is not an entry (or an old lock) value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadValue {
    #[error(
        "the value does not start with the dlock tag {:?}",
        String::from_utf8_lossy(TAG)
    )]
    Tag,
    #[error("the value's limit is not a number from 1 followed by ':'")]
    Limit,
    #[error("the value's mode is not 'x' or 's' followed by ':'")]
    Mode,
    #[error("the value's lease id is not 32 hex digits followed by ':'")]
    LeaseId,
    #[error("the value's owner is not UTF-8")]
    Owner,
}

pub(crate) fn decode_entry(value: &[u8]) -> Result<EntryValue, BadValue> {
    let rest = value.strip_prefix(TAG).ok_or(BadValue::Tag)?;
    let colon = rest
        .iter()
        .position(|byte| *byte == b':')
        .ok_or(BadValue::Limit)?;
    let limit = std::str::from_utf8(&rest[..colon])
        .ok()
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u32>().ok())
        .filter(|limit| *limit >= 1)
        .ok_or(BadValue::Limit)?;
    let rest = &rest[colon + 1..];
    let mode = match rest {
        [b'x', b':', ..] => LockMode::Exclusive,
        [b's', b':', ..] => LockMode::Shared,
        _ => return Err(BadValue::Mode),
    };
    let (lease_id, owner) = lease_and_owner(&rest[2..])?;
    Ok(EntryValue {
        limit,
        mode,
        lease_id,
        owner,
    })
}

pub(crate) fn decode_legacy(value: &[u8]) -> Result<LegacyValue, BadValue> {
    let rest = value.strip_prefix(LEGACY_TAG).ok_or(BadValue::Tag)?;
    let (lease_id, owner) = lease_and_owner(rest)?;
    Ok(LegacyValue { lease_id, owner })
}

/// `<32 hex>:<owner>`.
fn lease_and_owner(rest: &[u8]) -> Result<(LeaseId, String), BadValue> {
    if rest.len() < 33 || rest[32] != b':' {
        return Err(BadValue::LeaseId);
    }
    let hex = std::str::from_utf8(&rest[..32]).map_err(|_| BadValue::LeaseId)?;
    let lease_id = hex.parse::<LeaseId>().map_err(|_| BadValue::LeaseId)?;
    let owner = std::str::from_utf8(&rest[33..]).map_err(|_| BadValue::Owner)?;
    Ok((lease_id, owner.to_owned()))
}

/// A short, printable excerpt of a value for error messages.
pub(crate) fn excerpt(value: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(&value[..value.len().min(48)])
        .chars()
        .collect();
    if value.len() > 48 {
        format!("{shown:?}...")
    } else {
        format!("{shown:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_whatever_the_owner() {
        for owner in ["alice", "", "a:b:c", "new\nline", "🔒", "dlock2:1:x:"] {
            for (limit, mode) in [(1, LockMode::Exclusive), (7, LockMode::Shared)] {
                let lease = LeaseId::random();
                let value = encode_entry(limit, mode, lease, owner);
                let decoded = decode_entry(&value).unwrap();
                assert_eq!(
                    decoded,
                    EntryValue {
                        limit,
                        mode,
                        lease_id: lease,
                        owner: owner.to_owned()
                    }
                );
            }
        }
    }

    #[test]
    fn the_band_of_a_limit_encloses_exactly_its_values() {
        let inside = |limit: u32, value: &[u8]| {
            let (low, high) = limit_band(limit);
            value > low.as_slice() && value < high.as_slice()
        };
        let lease = LeaseId::from_u128(0xabc);
        for limit in [1, 2, 9, 10, 12, 100, u32::MAX] {
            for owner in ["", "x", "\u{10ffff}"] {
                for mode in [LockMode::Exclusive, LockMode::Shared] {
                    let value = encode_entry(limit, mode, lease, owner);
                    assert!(inside(limit, &value), "{limit} {owner:?}");
                    for other in [1, 2, 9, 10, 11, 12, 100, 1000, u32::MAX] {
                        if other != limit {
                            assert!(!inside(other, &value), "{limit} in band {other}");
                        }
                    }
                }
            }
        }
        let legacy = format!("dlock1:{lease}:alice");
        assert!(!inside(1, legacy.as_bytes()));
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(decode_entry(b"hello"), Err(BadValue::Tag));
        assert_eq!(decode_entry(b"dlock2:0:x:"), Err(BadValue::Limit));
        assert_eq!(decode_entry(b"dlock2:+1:x:"), Err(BadValue::Limit));
        assert_eq!(decode_entry(b"dlock2:1:y:"), Err(BadValue::Mode));
        assert_eq!(decode_entry(b"dlock2:1:x:1234"), Err(BadValue::LeaseId));
        let mut value = encode_entry(1, LockMode::Exclusive, LeaseId::random(), "x");
        value.push(0xff);
        assert_eq!(decode_entry(&value), Err(BadValue::Owner));
        let legacy = format!("dlock1:{}:bob", LeaseId::from_u128(5));
        assert_eq!(
            decode_legacy(legacy.as_bytes()),
            Ok(LegacyValue {
                lease_id: LeaseId::from_u128(5),
                owner: "bob".into()
            })
        );
        assert_eq!(decode_legacy(b"dlock2:1:x:"), Err(BadValue::Tag));
    }

    #[test]
    fn a_keys_range_holds_its_entries_and_old_key_only() {
        let layout = Layout::new("ns/");
        let lease = LeaseId::from_u128(1);
        let (start, end) = layout.range("a");
        let inside = |etcd_key: &[u8]| etcd_key >= start.as_slice() && etcd_key < end.as_slice();
        assert_eq!(start, b"ns/lock/a");
        assert!(inside(&layout.entry_key("a", lease)));
        assert!(inside(&layout.legacy_key("a")));
        for other in ["a/b", "a\u{1}", "ab", "a ", "A", "\u{7f}"] {
            assert!(!inside(&layout.entry_key(other, lease)), "{other:?}");
            assert!(!inside(&layout.legacy_key(other)), "{other:?}");
        }
        assert_eq!(
            layout.entry_of(&layout.entry_key("a/b", lease)),
            Some(("a/b", lease))
        );
        assert_eq!(layout.entry_of(&layout.legacy_key("a")), None);
        assert_eq!(layout.entry_of(b"ns/fence/a\x00x"), None);
        assert_eq!(layout.fence_key("a"), b"ns/fence/a");
    }
}
