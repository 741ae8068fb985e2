//! The wall clock expiry follows: the system's, or one offset from it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time for a [`DynamoStore`](crate::DynamoStore).
///
/// DynamoDB cannot read a clock inside a conditional write, so every expiry
/// the store writes and every expiry it judges is a reading of this clock
/// on the client. The default is [`SystemClock`]; tests give one store an
/// [`OffsetClock`] to play a client whose clock is ahead or behind.
pub trait WallClock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The machine's clock ([`SystemTime::now`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_millis(&self) -> u64 {
        system_millis()
    }
}

fn system_millis() -> u64 {
    // A clock before 1970 reads as the epoch: every lease then looks live
    // to this client, which is the safe side.
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// The machine's clock plus an offset that can be changed at any time, for
/// tests: one store instance whose clock runs ahead (positive offset) or
/// behind (negative), as a client on a badly synchronized host would.
///
/// Clones share the offset.
///
/// # Examples
///
/// ```
/// use lock_dynamodb::{OffsetClock, WallClock};
///
/// let clock = OffsetClock::new();
/// let before = clock.now_millis();
/// clock.set_offset_millis(60_000);
/// assert!(clock.now_millis() >= before + 60_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct OffsetClock {
    offset_millis: Arc<AtomicI64>,
}

impl OffsetClock {
    /// A clock reading the machine's time (offset zero).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the offset: positive runs ahead of the machine's clock,
    /// negative behind.
    pub fn set_offset_millis(&self, offset_millis: i64) {
        self.offset_millis.store(offset_millis, Ordering::SeqCst);
    }

    /// The current offset in milliseconds.
    pub fn offset_millis(&self) -> i64 {
        self.offset_millis.load(Ordering::SeqCst)
    }
}

impl WallClock for OffsetClock {
    fn now_millis(&self) -> u64 {
        let offset = self.offset_millis();
        let now = system_millis();
        if offset >= 0 {
            now.saturating_add(offset.unsigned_abs())
        } else {
            now.saturating_sub(offset.unsigned_abs())
        }
    }
}

/// `duration` in whole milliseconds, rounded up (a store may round a ttl up,
/// never down).
pub(crate) fn millis_up(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_to_whole_milliseconds() {
        assert_eq!(millis_up(Duration::ZERO), 0);
        assert_eq!(millis_up(Duration::from_nanos(1)), 1);
        assert_eq!(millis_up(Duration::from_millis(1500)), 1500);
        assert_eq!(millis_up(Duration::from_micros(1500)), 2);
    }

    #[test]
    fn an_offset_clock_runs_ahead_and_behind() {
        let clock = OffsetClock::new();
        let shared = clock.clone();
        shared.set_offset_millis(-5_000);
        let behind = clock.now_millis();
        let real = SystemClock.now_millis();
        assert!(behind + 4_000 < real, "{behind} vs {real}");
        shared.set_offset_millis(5_000);
        assert!(clock.now_millis() > real + 4_000);
    }
}
