//! Measuring: throughput of an operation run by several tasks, latency
//! percentiles, and medians of interleaved repetitions.

use std::future::Future;
use std::time::{Duration, Instant};

/// Operations per second and every operation's latency.
pub(crate) struct Run {
    pub(crate) per_second: f64,
    pub(crate) latencies: Vec<Duration>,
}

/// Runs `op(task)` `ops` times in all, split over `tasks` tasks; each task
/// passes its own index, so a task can reuse its key (distinct keys across
/// tasks, the same key within one, as a job locking its own id does).
pub(crate) async fn throughput<F, Fut>(tasks: usize, ops: usize, op: F) -> Run
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let per_task = (ops / tasks).max(1);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let began = Instant::now();
                    op(t).await;
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(per_task * tasks);
    for handle in handles {
        latencies.extend(handle.await.expect("benchmark task"));
    }
    Run {
        per_second: count(per_task * tasks) / start.elapsed().as_secs_f64(),
        latencies,
    }
}

/// A count as a float, exact below 2^53.
pub(crate) fn count(n: usize) -> f64 {
    f64::from(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Each round's ratio of `ours` to `base` (the rounds ran side by side).
pub(crate) fn paired_ratios(ours: &[f64], base: &[f64]) -> Vec<f64> {
    ours.iter()
        .zip(base)
        .map(|(ours, base)| ours / base)
        .collect()
}

/// The median of `values`.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `percent`-th percentile of `samples` (sorted in place).
pub(crate) fn percentile(samples: &mut [Duration], percent: usize) -> Duration {
    samples.sort();
    match samples.len() {
        0 => Duration::ZERO,
        n => samples[((n - 1) * percent.min(100)) / 100],
    }
}

/// Milliseconds, for tables.
pub(crate) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
