//! The scenarios every backend runs: dlock beside its raw baseline and its
//! peer library, interleaved, with the rows they produce.

use std::time::Duration;

use async_trait::async_trait;
use lock_core::{LeaseLocker, LeaseStore, LockerOptions};

use crate::Settings;
use crate::measure::{Run, count, median, ms, paired_ratios, percentile};
use crate::ours;
use crate::report::Row;

/// What dlock is compared with in scenario 1 on one backend.
#[async_trait]
pub(crate) trait PairBaselines: Send + Sync {
    /// The raw baseline and the peer of scenario 1, in words.
    fn pairs_note(&self) -> &'static str;
    /// Acquire+release as raw operations through the same client.
    async fn raw_pairs(&self, tasks: usize, ops: usize) -> Run;
    /// Acquire+release through the peer library, where one runs here.
    async fn peer_pairs(&self, tasks: usize, ops: usize) -> Option<Run>;
}

/// What dlock is compared with in every scenario on one backend.
#[async_trait]
pub(crate) trait Baselines: PairBaselines {
    /// The peer of scenarios 3 and 4, in words.
    fn peer_note(&self) -> &'static str;
    /// Scenario 3's handoff target, in words.
    fn handoff_target(&self) -> &'static str;
    /// Scenario 3 through the peer library.
    async fn peer_handoff(&self, waiters: usize, rounds: usize) -> Vec<Duration>;
    /// Scenario 4 through the peer library: grants per second.
    async fn peer_contended(&self, tasks: usize, length: Duration) -> f64;
}

/// `n` lockers on `store`, with distinct owners.
fn lockers<S: LeaseStore + Clone>(store: &S, n: usize) -> Vec<LeaseLocker<S>> {
    (0..n)
        .map(|i| {
            let options = LockerOptions::builder()
                .owner(format!("bench-{i}"))
                .build()
                .expect("options");
            LeaseLocker::new(store.clone(), options).expect("locker")
        })
        .collect()
}

/// Scenario 1, 1 and 16 tasks: dlock, the store alone, raw and peer.
pub(crate) async fn pairs<S: LeaseStore + Clone>(
    backend: &'static str,
    store: &S,
    baselines: &dyn PairBaselines,
    settings: &Settings,
    ops: [usize; 2],
    rows: &mut Vec<Row>,
) {
    let locker = LeaseLocker::new(store.clone(), LockerOptions::default()).expect("locker");
    for (tasks, ops) in [1usize, 16].into_iter().zip(ops) {
        let rounds = settings.pair_rounds();
        let ops = settings.ops(ops) * settings.reps / rounds;
        let (mut ours_rates, mut store_rates) = (Vec::new(), Vec::new());
        let (mut raw_rates, mut peer_rates) = (Vec::new(), Vec::new());
        let mut latencies = Vec::new();
        let tag = format!("{backend}{tasks}");
        for round in 0..rounds {
            // Many short rounds, each subject starting a round in turn: what
            // runs first after another subject (or after the previous
            // scenario) pays for its leftovers, and no subject always does.
            for subject in (0..4).map(|i| (i + round) % 4) {
                match subject {
                    0 => {
                        let run = ours::pairs(&locker, tasks, ops, &tag).await;
                        ours_rates.push(run.per_second);
                        latencies.extend(run.latencies);
                    }
                    1 => store_rates.push(ours::store_pairs(store, tasks, ops).await.per_second),
                    2 => raw_rates.push(baselines.raw_pairs(tasks, ops).await.per_second),
                    _ => {
                        if let Some(run) = baselines.peer_pairs(tasks, ops).await {
                            peer_rates.push(run.per_second);
                        }
                    }
                }
            }
        }
        // Each round ran the four side by side: its ratios are paired.
        let ratios = |other: &[f64]| paired_ratios(&ours_rates, other);
        let (to_raw, to_peer, to_store) = (
            ratios(&raw_rates),
            ratios(&peer_rates),
            ratios(&store_rates),
        );
        let raw = median(&mut raw_rates);
        let (peer, peer_spread) = if peer_rates.is_empty() {
            (None, String::new())
        } else {
            (
                Some(median(&mut peer_rates)),
                format!(", dlock / peer {}", spread(to_peer)),
            )
        };
        rows.push(Row {
            backend,
            scenario: "1. Uncontended acquire+release",
            metric: format!("pairs/s, {tasks} task(s)"),
            higher_is_better: true,
            ours: median(&mut ours_rates),
            raw: Some(raw),
            peer,
            note: format!(
                "{}; per round (min / median / max of {rounds} rounds, each subject first in turn): dlock / raw {}{peer_spread}",
                baselines.pairs_note(),
                spread(to_raw),
            ),
        });
        rows.push(Row {
            backend,
            scenario: "1. Uncontended acquire+release",
            metric: format!("pairs/s through the store alone, no locker, {tasks} task(s)"),
            higher_is_better: true,
            ours: median(&mut store_rates),
            raw: Some(raw),
            peer: None,
            note: format!(
                "the store's acquire and release calls alone: the locker's share is the difference to the row above; dlock / store alone per round {}",
                spread(to_store)
            ),
        });
        rows.push(Row {
            backend,
            scenario: "1. Uncontended acquire+release",
            metric: format!("pair latency p50 ms, {tasks} task(s)"),
            higher_is_better: false,
            ours: ms(percentile(&mut latencies, 50)),
            raw: None,
            peer: None,
            note: format!("p99 {:.2} ms", ms(percentile(&mut latencies, 99))),
        });
    }
}

/// A peer library's semaphore and reader-writer lock, for scenarios 7
/// and 8.
#[async_trait]
pub(crate) trait KindPeer: Send + Sync {
    /// The peer, in words.
    fn note(&self) -> &'static str;
    /// Grants per second of `tasks` tasks looping acquire / release of one
    /// of `permits` permits for `length`.
    async fn semaphore(&self, tasks: usize, permits: u32, length: Duration) -> f64;
    /// `readers` readers and one writer, each holding `hold`, for `length`.
    async fn reader_heavy(
        &self,
        readers: usize,
        hold: Duration,
        length: Duration,
    ) -> ours::ReaderHeavy;
}

/// Scenarios 2, 3, 4, 6, 7 and 8.
pub(crate) async fn the_rest<S: LeaseStore + Clone>(
    backend: &'static str,
    store: &S,
    baselines: &dyn Baselines,
    kind_peer: Option<&dyn KindPeer>,
    settings: &Settings,
    rows: &mut Vec<Row>,
) {
    let renewal = ours::renewal(
        store.clone(),
        settings.held,
        Duration::from_secs(1),
        Duration::from_millis(500),
    )
    .await;
    rows.push(Row {
        backend,
        scenario: "2. Renewal cost with 10,000 held locks",
        metric: format!("store calls per heartbeat, {} locks", settings.held),
        higher_is_better: false,
        ours: renewal.calls_per_heartbeat,
        raw: None,
        peer: None,
        note: format!(
            "batch limit {}: ceil(N / limit) = {}; one round renewing all: {:.1} ms",
            renewal.batch_limit,
            settings.held.div_ceil(renewal.batch_limit),
            ms(renewal.round)
        ),
    });

    let rounds = settings.rounds(25);
    let mut ours_handoff = ours::handoff(lockers(store, 8), rounds).await;
    let handoff_p50 = percentile(&mut ours_handoff, 50);
    let mut peer_handoff = baselines.peer_handoff(8, rounds).await;
    rows.push(Row {
        backend,
        scenario: "3. Handoff among 8 waiters",
        metric: "release to next acquire, p50 ms".into(),
        higher_is_better: false,
        ours: ms(percentile(&mut ours_handoff, 50)),
        raw: None,
        peer: Some(ms(percentile(&mut peer_handoff, 50))),
        note: format!(
            "p99: dlock {:.2} ms, peer {:.2} ms; peer: {}; target {}",
            ms(percentile(&mut ours_handoff, 99)),
            ms(percentile(&mut peer_handoff, 99)),
            baselines.peer_note(),
            baselines.handoff_target()
        ),
    });

    let length = settings.length();
    let ours_grants = ours::contended(lockers(store, 16), length).await;
    let peer_grants = baselines.peer_contended(16, length).await;
    rows.push(Row {
        backend,
        scenario: "4. Contended throughput",
        metric: "grants/s, 16 tasks on one key".into(),
        higher_is_better: true,
        ours: ours_grants,
        raw: None,
        peer: Some(peer_grants),
        note: format!("peer: {}", baselines.peer_note()),
    });

    fairness(backend, store, settings, Some(handoff_p50), rows).await;
    kinds(backend, store, kind_peer, settings, rows).await;
}

/// Scenario 6, fairness: 8 tasks on 2 lockers, hold 2 ms, one key.
/// `handoff_p50` is scenario 3's, measured here when `None`.
pub(crate) async fn fairness<S: LeaseStore + Clone>(
    backend: &'static str,
    store: &S,
    settings: &Settings,
    handoff_p50: Option<Duration>,
    rows: &mut Vec<Row>,
) {
    // 8 tasks on 2 lockers, hold 2 ms, one key (the fairness targets:
    // longest wait at most 3 x 8 x (hold + handoff p50), Jain >= 0.95, no
    // grant straight back to the releasing task while others wait).
    let hold = Duration::from_millis(2);
    let handoff_p50 = match handoff_p50 {
        Some(p50) => p50,
        None => {
            let mut handoff = ours::handoff(lockers(store, 8), settings.rounds(25)).await;
            percentile(&mut handoff, 50)
        }
    };
    let length = settings.length();
    let fair = ours::fairness(lockers(store, 2), 8, hold, length).await;
    let bound = (hold + handoff_p50) * 24;
    let scenario = "6. Fairness: 8 tasks on 2 lockers, hold 2 ms, one key";
    let row = |metric: &str, higher_is_better: bool, ours: f64, note: String| Row {
        backend,
        scenario,
        metric: metric.into(),
        higher_is_better,
        ours,
        raw: None,
        peer: None,
        note,
    };
    rows.push(row(
        "grants/s",
        true,
        fair.grants_per_second,
        format!("{} grants in {:.0} s", fair.grants, length.as_secs_f64()),
    ));
    rows.push(row(
        "longest wait, ms",
        false,
        ms(fair.longest_wait),
        format!(
            "target at most 3 x 8 x (hold + handoff p50) = {:.1} ms",
            ms(bound)
        ),
    ));
    rows.push(row(
        "Jain's index over tasks",
        true,
        fair.jain,
        "target >= 0.95".into(),
    ));
    rows.push(row(
        "grants straight back to the releasing task while others waited",
        false,
        count(fair.straight_back),
        "target 0".into(),
    ));
}

/// Scenarios 7 and 8: a semaphore and a reader-heavy reader-writer lock.
pub(crate) async fn kinds<S: LeaseStore + Clone>(
    backend: &'static str,
    store: &S,
    peer: Option<&dyn KindPeer>,
    settings: &Settings,
    rows: &mut Vec<Row>,
) {
    let length = settings.length();
    let grants = ours::semaphore(lockers(store, 4), 16, 3, length).await;
    let peer_grants = match peer {
        Some(peer) => Some(peer.semaphore(16, 3, length).await),
        None => None,
    };
    let peer_note = peer.map_or("no peer runs here", |peer| peer.note());
    rows.push(Row {
        backend,
        scenario: "7. Semaphore of 3 permits, 16 tasks on 4 lockers",
        metric: "acquire+release/s".into(),
        higher_is_better: true,
        ours: grants,
        raw: None,
        peer: peer_grants,
        note: format!("each task loops acquire / release, fair among all; peer: {peer_note}"),
    });
    let hold = Duration::from_millis(2);
    let rw = ours::reader_heavy(lockers(store, 4), 16, hold, length).await;
    let peer_rw = match peer {
        Some(peer) => Some(peer.reader_heavy(16, hold, length).await),
        None => None,
    };
    let scenario = "8. Reader-heavy: 16 readers and 1 writer on 4 lockers, hold 2 ms";
    let note = "a waiting writer keeps later readers out: it is never starved";
    for (metric, higher_is_better, ours, peer) in [
        (
            "reads/s",
            true,
            rw.reads_per_second,
            peer_rw.as_ref().map(|p| p.reads_per_second),
        ),
        (
            "writes/s",
            true,
            rw.writes_per_second,
            peer_rw.as_ref().map(|p| p.writes_per_second),
        ),
        (
            "writer's longest wait, ms",
            false,
            ms(rw.longest_write_wait),
            peer_rw.as_ref().map(|p| ms(p.longest_write_wait)),
        ),
    ] {
        rows.push(Row {
            backend,
            scenario,
            metric: metric.into(),
            higher_is_better,
            ours,
            raw: None,
            peer,
            note: format!("{note}; peer: {peer_note}"),
        });
    }
}

/// "min / median / max" of per-round ratios.
pub(crate) fn spread(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    match (values.first(), values.last()) {
        (Some(min), Some(max)) => {
            let (min, max) = (*min, *max);
            format!("{min:.2} / {:.2} / {max:.2}", median(&mut values))
        }
        _ => "-".into(),
    }
}
