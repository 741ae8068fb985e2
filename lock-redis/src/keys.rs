//! The key layout: which Redis keys and channel one lock uses.

use std::fmt;

/// How many distinct hash tags keys are spread over: the keys of one tag
/// share a hash slot, so a Cluster renewal batch needs at most this many
/// script calls however large it is.
const TAG_BUCKETS: u64 = 256;

/// The Redis names one lock uses, as [`RedisStore::redis_keys`] gives them.
///
/// A lock is a queue of entries (see [`LeaseStore`](lock_core::LeaseStore)):
/// the entries that hold live in the state string, the waiting ones in a
/// sorted set and a hash that exist only while someone waits. For the lock
/// key `K` and the store prefix `P` (default `dlock:`):
///
/// | name | Redis type | content |
/// | --- | --- | --- |
/// | `P{TT}:lock:K` | string, no expiry | the state: `<counter>` alone while nothing holds or waits; `<token>,<lease id><mode>,<ttl ms>,<limit>,<owner>,<renewed µs>` for a lone holder whose token is the counter (token and renewal time of 16 digits each, ttl of 20), nobody waiting (limit 0 for an exclusive holder: exclusive entries neither set nor check it), and after its release the same with 33 dashes in place of `<lease id><mode>` (idle again, the counter `<token>`); otherwise `<counter, 16 digits>,<limit>,<waiting 0/1>,<n>,<previous owner, n bytes>` followed by `;<lease id><mode><token>,<renewed µs>,<ttl ms>,<n>,<owner, n bytes>` for each holder, in grant order |
/// | `P{TT}:queue:K` | sorted set | the waiting entries' lease ids, scored by their sequence number |
/// | `P{TT}:waiting:K` | hash | lease id to `<mode><sequence number>,<renewed µs>,<waiter ttl ms>,<owner>` for each waiting entry |
/// | `P{TT}:fence:K` | hash | the previous version's fencing counter: read once and deleted when the lock is migrated |
/// | `P{TT}:chan:K` | pub/sub channel (sharded in Cluster mode) | a message when entries start holding: `<lease id>:<token>` for each, space-separated |
///
/// An entry expires its ttl after it was last granted or renewed (`<renewed
/// µs>`, the server's clock, `TIME`), compared inside the scripts;
/// `<mode>` is `x` (exclusive) or `s` (shared), upper case for an entry
/// that mints no token. The counter is the last sequence number handed
/// out; an entry's sequence number is its fencing token,
/// `max(counter + 1, TIME in microseconds)`. A lock that nobody waits for
/// costs one string: a grant and its release each read and write it once
/// (the lone holder's form has fixed widths up to its ttl, so a release
/// reads it without parsing).
///
/// A waiting entry that is no longer renewed (its process died) stays in
/// the queue until its waiter ttl passes, then is skipped by the next
/// operation that reaches it; promoted before that, it holds until that
/// same expiry. So a dead waiter delays the entries behind it by at most
/// its waiter ttl, and costs its sorted-set member and hash field until
/// then.
///
/// `TT` is the key's *hash tag*: two lower-case hex digits computed from
/// the bytes of `K` (64-bit FNV-1a, folded to 8 bits). Every name of one
/// lock carries the same tag, so they hash to one Cluster slot whatever
/// `K` contains (`{`, `}`, newlines, emoji...), and `K` itself follows
/// verbatim, so distinct keys never share a name. The layout is part of
/// the wire format: every client of one lock must use the same version of
/// it and the same prefix. The previous version kept a lease as
/// `<lease id>:<owner>` with `PX` at the same `lock` name and its counter
/// in the `fence` hash: the first operation on such a lock carries the
/// lease and the counter over; clients of the previous version then find a
/// value they cannot read and report the key as corrupt, so stop them
/// before starting this version.
///
/// [`RedisStore::redis_keys`]: crate::RedisStore::redis_keys
#[derive(Clone, PartialEq, Eq)]
pub struct RedisKeys {
    /// The state string: the counter, the limit and the holders.
    pub lock: String,
    /// The sorted set of waiting lease ids.
    pub queue: String,
    /// The hash of waiting entries.
    pub waiting: String,
    /// The previous version's fencing hash, migrated on first use.
    pub fence: String,
    /// The channel a grant by handoff publishes on.
    pub channel: String,
    /// The hash tag shared by all of them (without braces).
    pub tag: String,
}

impl fmt::Debug for RedisKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKeys")
            .field("lock", &self.lock)
            .field("queue", &self.queue)
            .field("waiting", &self.waiting)
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
            queue: name("queue"),
            waiting: name("waiting"),
            fence: name("fence"),
            channel: name("chan"),
            tag,
        }
    }

    /// The name of the script key at `index` (1-based, as the scripts
    /// report a corrupt key).
    pub(crate) fn script_key(&self, index: i64) -> &str {
        match index {
            2 => &self.queue,
            3 => &self.waiting,
            4 => &self.fence,
            _ => &self.lock,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_one_tag_whatever_the_key_holds() {
        for key in ["plain", "}{", "}x", "{a}", "a{b}c", "line\nbreak", "🔒", ""] {
            let keys = RedisKeys::new("dlock:", key);
            let tag = format!("{{{}}}", keys.tag);
            for name in [
                &keys.lock,
                &keys.queue,
                &keys.waiting,
                &keys.fence,
                &keys.channel,
            ] {
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
}
