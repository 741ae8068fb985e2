//! Counters and latency histograms through the `metrics` facade (feature
//! `metrics`); without the feature every function here compiles to nothing.
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `dlock_acquire_total` | counter | `outcome`: acquired, taken, queued, limit_mismatch, error |
//! | `dlock_takeover_total` | counter | |
//! | `dlock_renew_calls_total` | counter | `outcome`: ok, error |
//! | `dlock_lost_total` | counter | `reason`: deadline, store |
//! | `dlock_warnings_total` | counter | |
//! | `dlock_release_total` | counter | `outcome`: released, not_held, error |
//! | `dlock_inspect_total` | counter | `outcome`: ok, error |
//! | `dlock_store_seconds` | histogram | `op`: acquire, renew, release, inspect |
//!
//! Every store call is counted and timed in one place,
//! [`store_call`], called by the locker's one store-call path.

use std::time::Duration;

use crate::calls::Op;

#[cfg(feature = "metrics")]
mod enabled {
    use std::time::Duration;

    pub(crate) fn count(name: &'static str, label: &'static str, value: &'static str) {
        if label.is_empty() {
            metrics::counter!(name).increment(1);
        } else {
            metrics::counter!(name, label => value).increment(1);
        }
    }

    pub(crate) fn store_latency(op: &'static str, took: Duration) {
        metrics::histogram!("dlock_store_seconds", "op" => op).record(took.as_secs_f64());
    }
}

/// Counts one event of counter `name`, with one label (or none when
/// `label` is empty).
#[inline]
pub(crate) fn count(name: &'static str, label: &'static str, value: &'static str) {
    #[cfg(feature = "metrics")]
    enabled::count(name, label, value);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, label, value);
}

/// Records how long a store call took.
#[inline]
fn store_latency(op: &'static str, took: Duration) {
    #[cfg(feature = "metrics")]
    enabled::store_latency(op, took);
    #[cfg(not(feature = "metrics"))]
    let _ = (op, took);
}

/// Counts and times one store call of `op` that ended with `outcome`.
#[inline]
pub(crate) fn store_call(op: Op, took: Duration, outcome: &'static str) {
    let counter = match op {
        Op::Acquire => "dlock_acquire_total",
        Op::Renew => "dlock_renew_calls_total",
        Op::Release => "dlock_release_total",
        Op::Inspect => "dlock_inspect_total",
    };
    count(counter, "outcome", outcome);
    store_latency(op.name(), took);
}
