//! The locker's view of time: tokio's monotonic clock, plus the boot clock
//! that keeps counting while the machine is suspended.
//!
//! `Instant` (CLOCK_MONOTONIC on Linux) stops during system suspend, so a
//! laptop or VM that resumes would believe its leases still run although the
//! store expired them long ago. Each lease therefore keeps a second deadline
//! on CLOCK_BOOTTIME, and counts as expired when either one passes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A source of boot-clock readings (time since boot, suspend included).
pub(crate) type BootClockFn = Arc<dyn Fn() -> Option<Duration> + Send + Sync>;

/// One reading of both clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    pub(crate) mono: Instant,
    pub(crate) boot: Option<Duration>,
}

impl Stamp {
    /// This stamp moved forward by `by` on both clocks.
    pub(crate) fn plus(self, by: Duration) -> Stamp {
        Stamp {
            mono: self.mono + by,
            boot: self.boot.map(|boot| boot + by),
        }
    }

    /// Whether `self` (a deadline) has passed at `now` on either clock.
    pub(crate) fn passed_at(self, now: Stamp) -> bool {
        if now.mono >= self.mono {
            return true;
        }
        matches!((self.boot, now.boot), (Some(deadline), Some(now)) if now >= deadline)
    }

    /// The later of two deadlines, clock by clock.
    pub(crate) fn max(self, other: Stamp) -> Stamp {
        Stamp {
            mono: self.mono.max(other.mono),
            boot: match (self.boot, other.boot) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// Reads both clocks.
#[derive(Clone)]
pub(crate) struct Clock {
    boot: Option<BootClockFn>,
}

impl Clock {
    /// The system clocks, or a replacement boot clock (for tests that
    /// simulate suspend).
    pub(crate) fn new(boot: Option<BootClockFn>) -> Self {
        Self { boot }
    }

    pub(crate) fn now(&self) -> Stamp {
        let boot = match &self.boot {
            Some(read) => read(),
            None => system_boot_time(),
        };
        Stamp {
            mono: Instant::now(),
            boot,
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.boot.is_some() {
            "Clock(custom boot clock)"
        } else {
            "Clock(system)"
        })
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn system_boot_time() -> Option<Duration> {
    use rustix::time::{DynamicClockId, clock_gettime_dynamic};
    let now = clock_gettime_dynamic(DynamicClockId::Boottime).ok()?;
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn system_boot_time() -> Option<Duration> {
    // Elsewhere the monotonic clock is the only one; suspend is not detected.
    None
}
