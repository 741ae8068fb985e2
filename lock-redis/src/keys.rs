//! The key layout: which Redis keys and channel one lock uses, and how the
//! lock value is written.

use std::fmt;

use lock_core::{Holder, LeaseId, StoreError};

/// How many distinct hash tags keys are spread over: the keys of one tag
/// share a hash slot, so a Cluster renewal batch needs at most this many
/// script calls however large it is.
const TAG_BUCKETS: u64 = 256;

/// The Redis names one lock uses, as [`RedisStore::redis_keys`] gives them.
///
/// For the lock key `K` and the store prefix `P` (default `dlock:`):
///
/// | name | Redis type | content |
/// | --- | --- | --- |
/// | `P{TT}:lock:K` | string with a `PX` expiry | `<lease id, 32 hex digits>:<owner>` |
/// | `P{TT}:fence:K` | hash, no expiry | `token`: the last fencing token; `holder`: the lock value of the last grant until it is released |
/// | `P{TT}:chan:K` | pub/sub channel (sharded in Cluster mode) | a message on every release |
///
/// `TT` is the key's *hash tag*: two lower-case hex digits computed from
/// the bytes of `K` (64-bit FNV-1a, folded to 8 bits). Every name of one
/// lock carries the same tag, so they hash to one Cluster slot whatever
/// `K` contains (`{`, `}`, newlines, emoji...), and `K` itself follows
/// verbatim, so distinct keys never share a name. The layout is part of
/// the wire format: every client of one lock must use the same version of
/// it and the same prefix.
///
/// [`RedisStore::redis_keys`]: crate::RedisStore::redis_keys
#[derive(Clone, PartialEq, Eq)]
pub struct RedisKeys {
    /// The lock key: the live lease, if any.
    pub lock: String,
    /// The fencing key: the token counter, kept across releases while
    /// fencing is on.
    pub fence: String,
    /// The channel a release publishes on.
    pub channel: String,
    /// The hash tag shared by the three (without braces).
    pub tag: String,
}

impl fmt::Debug for RedisKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKeys")
            .field("lock", &self.lock)
            .field("fence", &self.fence)
            .field("channel", &self.channel)
            .finish()
    }
}

impl RedisKeys {
    /// The names for lock key `key` under `prefix`.
    pub(crate) fn new(prefix: &str, key: &str) -> Self {
        let tag = hash_tag(key);
        let name = |kind: &str| {
            let mut name = String::with_capacity(prefix.len() + 10 + kind.len() + key.len());
            name.push_str(prefix);
            name.push('{');
            name.push_str(&tag);
            name.push_str("}:");
            name.push_str(kind);
            name.push(':');
            name.push_str(key);
            name
        };
        Self {
            lock: name("lock"),
            fence: name("fence"),
            channel: name("chan"),
            tag,
        }
    }
}

/// The hash tag of `key`: two hex digits from a 64-bit FNV-1a of its bytes.
pub(crate) fn hash_tag(key: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 32;
    hash ^= hash >> 16;
    hash ^= hash >> 8;
    format!("{:02x}", hash % TAG_BUCKETS)
}

/// The lock value of a lease: `<lease id>:<owner>`. The lease id has a
/// fixed width, so any owner (colons included) reads back unambiguously.
pub(crate) fn lock_value(lease_id: LeaseId, owner: &str) -> String {
    format!("{lease_id}:{owner}")
}

/// The owner of a lock value the scripts have already checked.
pub(crate) fn owner_of(key: &str, value: &[u8]) -> Result<String, StoreError> {
    match value.get(33..).map(std::str::from_utf8) {
        Some(Ok(owner)) if value.get(32) == Some(&b':') => Ok(owner.to_owned()),
        _ => Err(StoreError::corrupt(
            key,
            "the lock value is not `<lease id>:<owner>` in UTF-8",
        )),
    }
}

/// A holder from a lock value and its PTTL (negative: no expiry known).
pub(crate) fn holder_of(key: &str, value: &[u8], pttl: i64) -> Result<Holder, StoreError> {
    let holder = Holder::new(owner_of(key, value)?);
    Ok(match u64::try_from(pttl) {
        Ok(ms) => holder.with_remaining(std::time::Duration::from_millis(ms)),
        Err(_) => holder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_one_tag_whatever_the_key_holds() {
        for key in ["plain", "}{", "}x", "{a}", "a{b}c", "line\nbreak", "🔒", ""] {
            let keys = RedisKeys::new("dlock:", key);
            let tag = format!("{{{}}}", keys.tag);
            for name in [&keys.lock, &keys.fence, &keys.channel] {
                assert!(name.starts_with(&format!("dlock:{tag}:")), "{name:?}");
                assert!(name.ends_with(key), "{name:?}");
                // The first `{...}` of the name is our tag.
                let open = name.find('{').unwrap();
                let close = open + name[open..].find('}').unwrap();
                assert_eq!(&name[open + 1..close], keys.tag);
            }
        }
    }

    #[test]
    fn tags_are_stable_and_spread() {
        assert_eq!(hash_tag("invoice-run"), hash_tag("invoice-run"));
        let tags: std::collections::HashSet<String> =
            (0..4096).map(|i| hash_tag(&format!("job/{i}"))).collect();
        assert!(tags.len() > 250, "{}", tags.len());
        assert!(tags.iter().all(|t| t.len() == 2));
    }

    #[test]
    fn values_keep_any_owner() {
        let lease = LeaseId::from_u128(0xabc);
        let value = lock_value(lease, "a:b\n🔒");
        assert_eq!(value.len(), 33 + "a:b\n🔒".len());
        assert_eq!(owner_of("k", value.as_bytes()).unwrap(), "a:b\n🔒");
        assert!(owner_of("k", b"short").is_err());
        let holder = holder_of("k", value.as_bytes(), 1500).unwrap();
        assert_eq!(
            holder.remaining,
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(
            holder_of("k", value.as_bytes(), -1).unwrap().remaining,
            None
        );
    }
}
