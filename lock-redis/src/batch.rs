//! Renewal batches: how one renewal round is cut into script calls.
//!
//! A script may only touch keys of one hash slot in a Cluster, so entries
//! are grouped by their keys' hash tag (at most 256 tags, see
//! [`RedisKeys`](crate::RedisKeys)); on one server, any keys go together.
//! Each group is then cut into calls of at most `max_batch` entries. The
//! calls are independent: they run concurrently, and each entry keeps its
//! index in the round, so outcomes come back in the caller's order.

use std::collections::HashMap;

use lock_core::RenewEntry;

use crate::keys::hash_tag;

/// An entry of a renewal round, with its index in the round.
pub(crate) type Indexed<'a, 'k> = (usize, &'a RenewEntry<'k>);

/// The script calls renewing `leases`: per hash tag when `cluster`, each
/// of at most `max_batch` (at least 1) entries.
pub(crate) fn batches<'a, 'k>(
    leases: &'a [RenewEntry<'k>],
    cluster: bool,
    max_batch: usize,
) -> Vec<Vec<Indexed<'a, 'k>>> {
    let max_batch = max_batch.max(1);
    let mut batches: Vec<Vec<Indexed<'a, 'k>>> = Vec::new();
    if cluster {
        let mut by_tag: HashMap<String, Vec<Indexed<'a, 'k>>> = HashMap::new();
        for (index, entry) in leases.iter().enumerate() {
            by_tag
                .entry(hash_tag(entry.key))
                .or_default()
                .push((index, entry));
        }
        for group in by_tag.into_values() {
            for chunk in group.chunks(max_batch) {
                batches.push(chunk.to_vec());
            }
        }
    } else {
        let all: Vec<Indexed<'a, 'k>> = leases.iter().enumerate().collect();
        for chunk in all.chunks(max_batch) {
            batches.push(chunk.to_vec());
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use lock_core::LeaseId;

    use super::*;

    fn entries(keys: &[String]) -> Vec<RenewEntry<'_>> {
        keys.iter()
            .map(|key| RenewEntry::held(key, LeaseId::random()))
            .collect()
    }

    #[test]
    fn one_server_takes_any_keys_in_chunks() {
        let keys: Vec<String> = (0..7).map(|i| format!("job/{i}")).collect();
        let leases = entries(&keys);
        let cut = batches(&leases, false, 3);
        let sizes: Vec<usize> = cut.iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let indexes: Vec<usize> = cut.iter().flatten().map(|(index, _)| *index).collect();
        assert_eq!(indexes, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn a_cluster_call_holds_one_hash_tag() {
        let keys: Vec<String> = (0..2000).map(|i| format!("job/{i}")).collect();
        let leases = entries(&keys);
        let cut = batches(&leases, true, 4);
        let mut seen = vec![false; keys.len()];
        for batch in &cut {
            assert!(!batch.is_empty() && batch.len() <= 4);
            let tag = hash_tag(batch[0].1.key);
            for (index, entry) in batch {
                assert_eq!(hash_tag(entry.key), tag);
                assert_eq!(entry.key, keys[*index]);
                assert!(!seen[*index], "entry {index} twice");
                seen[*index] = true;
            }
        }
        assert!(seen.iter().all(|seen| *seen));
    }
}
