//! Counters and latency histograms through the `metrics` facade (feature
//! `metrics`); without the feature every function here compiles to nothing.
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `dlock_acquire_total` | counter | `outcome`: acquired, taken, error |
//! | `dlock_takeover_total` | counter | |
//! | `dlock_renew_calls_total` | counter | `outcome`: ok, error |
//! | `dlock_lost_total` | counter | `reason`: deadline, store |
//! | `dlock_warnings_total` | counter | |
//! | `dlock_release_total` | counter | `outcome`: released, not_held, error |
//! | `dlock_store_seconds` | histogram | `op`: acquire, renew, release |

use std::time::Duration;

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
pub(crate) fn store_latency(op: &'static str, took: Duration) {
    #[cfg(feature = "metrics")]
    enabled::store_latency(op, took);
    #[cfg(not(feature = "metrics"))]
    let _ = (op, took);
}

/// Counts a release by its outcome.
pub(crate) fn count_release(result: &Result<crate::ReleaseOutcome, crate::StoreError>) {
    let outcome = match result {
        Ok(crate::ReleaseOutcome::Released) => "released",
        Ok(crate::ReleaseOutcome::NotHeld) => "not_held",
        Err(_) => "error",
    };
    count("dlock_release_total", "outcome", outcome);
}
