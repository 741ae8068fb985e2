//! Which keys this store found contended a moment ago: their acquisitions
//! and releases skip the small uncontended statements, which would only
//! find other entries and hand over to the full ones (a round trip lost).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long a key counts as contended after it was last seen so.
const MEMORY: Duration = Duration::from_secs(1);

/// Keys seen contended, with when.
#[derive(Default)]
pub(crate) struct BusyKeys {
    keys: Mutex<HashMap<String, Instant>>,
}

impl BusyKeys {
    fn keys(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        // Every update under this lock is complete before it can panic.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `key` was seen contended within the last second.
    pub(crate) fn is_busy(&self, key: &str) -> bool {
        let keys = self.keys();
        !keys.is_empty() && keys.get(key).is_some_and(|seen| seen.elapsed() < MEMORY)
    }

    /// `key` has other entries.
    pub(crate) fn mark(&self, key: &str) {
        let now = Instant::now();
        let mut keys = self.keys();
        if keys.len() >= 1024 && !keys.contains_key(key) {
            keys.retain(|_, seen| now.duration_since(*seen) < MEMORY);
        }
        keys.insert(key.to_owned(), now);
    }
}
