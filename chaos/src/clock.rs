//! One clock for every process of a run: CLOCK_MONOTONIC in nanoseconds,
//! comparable across the processes of one machine.

use std::time::Duration;

/// Now, in nanoseconds of the monotonic clock.
pub(crate) fn now_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}

/// A tokio instant on the same clock.
pub(crate) fn ns_of(instant: tokio::time::Instant) -> u64 {
    let now = tokio::time::Instant::now();
    let base = now_ns();
    if instant >= now {
        base + nanos(instant - now)
    } else {
        base.saturating_sub(nanos(now - instant))
    }
}

pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
