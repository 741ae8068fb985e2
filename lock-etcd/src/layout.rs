//! Where locks live in etcd, and what their values look like.
//!
//! ```text
//! <namespace>lock/<lock key>   value "dlock1:<32 hex lease id>:<owner>", attached to
//!                              the store's etcd lease; exists only while held
//! <namespace>fence/<lock key>  empty value, no lease; rewritten by every grant
//!                              made with fencing, so its mod revision is the
//!                              key's last fencing token
//! ```

use lock_core::LeaseId;

/// The version tag every lock value starts with.
const TAG: &[u8] = b"dlock1:";
/// Length of a value up to and including the separator after the lease id.
const HEADER_LEN: usize = TAG.len() + 32 + 1;

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

    /// The etcd key holding the lease on `key`.
    pub(crate) fn lock_key(&self, key: &str) -> Vec<u8> {
        join(&self.lock_prefix, key)
    }

    /// The etcd key whose mod revision is `key`'s last fencing token.
    pub(crate) fn fence_key(&self, key: &str) -> Vec<u8> {
        join(&self.fence_prefix, key)
    }

    /// The lock key of an etcd lock key, when it is one of ours.
    pub(crate) fn lock_key_of<'a>(&self, etcd_key: &'a [u8]) -> Option<&'a str> {
        etcd_key
            .strip_prefix(self.lock_prefix.as_slice())
            .and_then(|rest| std::str::from_utf8(rest).ok())
    }
}

fn join(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + key.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(key.as_bytes());
    out
}

/// The value stored under a held lock key: tag, fixed-width lease id, owner.
/// The owner is the remainder, so it may contain any character.
pub(crate) fn encode_value(lease_id: LeaseId, owner: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER_LEN + owner.len());
    value.extend_from_slice(TAG);
    value.extend_from_slice(lease_id.to_string().as_bytes());
    value.push(b':');
    value.extend_from_slice(owner.as_bytes());
    value
}

/// The two bounds of every value held by `lease_id`: such values are
/// strictly between them (`low` is a proper prefix of each, and `high` is
/// `low` followed by the byte after `:`). Comparing against both in one
/// transaction matches the lease id whatever the owner.
pub(crate) fn value_bounds(lease_id: LeaseId) -> (Vec<u8>, Vec<u8>) {
    let mut low = Vec::with_capacity(HEADER_LEN);
    low.extend_from_slice(TAG);
    low.extend_from_slice(lease_id.to_string().as_bytes());
    let mut high = low.clone();
    high.push(b':' + 1);
    (low, high)
}

/// A decoded lock value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LockValue {
    pub(crate) lease_id: LeaseId,
    pub(crate) owner: String,
}

/// Why a value is not a lock value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadValue {
    #[error(
        "the value does not start with the dlock tag {:?}",
        String::from_utf8_lossy(TAG)
    )]
    Tag,
    #[error("the value's lease id is not 32 hex digits followed by ':'")]
    LeaseId,
    #[error("the value's owner is not UTF-8")]
    Owner,
}

pub(crate) fn decode_value(value: &[u8]) -> Result<LockValue, BadValue> {
    let rest = value.strip_prefix(TAG).ok_or(BadValue::Tag)?;
    if rest.len() < 33 || rest[32] != b':' {
        return Err(BadValue::LeaseId);
    }
    let hex = std::str::from_utf8(&rest[..32]).map_err(|_| BadValue::LeaseId)?;
    let lease_id = hex.parse::<LeaseId>().map_err(|_| BadValue::LeaseId)?;
    let owner = std::str::from_utf8(&rest[33..]).map_err(|_| BadValue::Owner)?;
    Ok(LockValue {
        lease_id,
        owner: owner.to_owned(),
    })
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
        for owner in ["alice", "", "a:b:c", "new\nline", "🔒", "dlock1:x"] {
            let lease = LeaseId::random();
            let value = encode_value(lease, owner);
            let decoded = decode_value(&value).unwrap();
            assert_eq!(decoded.lease_id, lease);
            assert_eq!(decoded.owner, owner);
        }
    }

    #[test]
    fn bounds_enclose_exactly_the_values_of_one_lease() {
        let lease = LeaseId::from_u128(0xabc);
        let (low, high) = value_bounds(lease);
        for owner in ["", "x", "zzzz", "\u{10ffff}"] {
            let value = encode_value(lease, owner);
            assert!(value.as_slice() > low.as_slice() && value.as_slice() < high.as_slice());
        }
        for other in [LeaseId::from_u128(0xabb), LeaseId::from_u128(0xabd)] {
            let value = encode_value(other, "x");
            assert!(!(value.as_slice() > low.as_slice() && value.as_slice() < high.as_slice()));
        }
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(decode_value(b"hello"), Err(BadValue::Tag));
        assert_eq!(decode_value(b"dlock1:1234"), Err(BadValue::LeaseId));
        let mut value = encode_value(LeaseId::random(), "x");
        value.push(0xff);
        assert_eq!(decode_value(&value), Err(BadValue::Owner));
    }

    #[test]
    fn keys_are_namespaced_apart() {
        let layout = Layout::new("ns/");
        assert_eq!(layout.lock_key("a"), b"ns/lock/a");
        assert_eq!(layout.fence_key("a"), b"ns/fence/a");
        assert_eq!(layout.lock_key_of(b"ns/lock/a/b"), Some("a/b"));
        assert_eq!(layout.lock_key_of(b"ns/fence/a"), None);
    }
}
