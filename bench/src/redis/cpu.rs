//! Redis server CPU per uncontended acquire+release, from the server's own
//! counters (`INFO commandstats`): each subject runs alone between a
//! `CONFIG RESETSTAT` and a reading, in interleaved rounds, so no other
//! subject's commands land in its figures. Time moves with the machine:
//! [`super::instructions`] counts the same work in instructions.

use lock_redis::RedisStore;
use redis::aio::ConnectionManager;

use crate::driver::spread;
use crate::measure::{count, median, paired_ratios};
use crate::ours;
use crate::report::Row;

/// The least a script can do that reads the server's clock and a state
/// string and writes the state back, as dlock's acquire and release both
/// must: its cost, twice per pair, is the floor of any such design.
pub(super) const FLOOR_SCRIPT: &str = "local s = redis.pcall('GET', KEYS[1]) \
    local t = redis.call('TIME') \
    redis.call('SET', KEYS[1], ARGV[1] .. t[1]) \
    return 1";

/// Microseconds of server CPU per pair for each subject, one value per
/// round.
#[derive(Default)]
struct Samples {
    dlock: Vec<f64>,
    raw: Vec<f64>,
    floor: Vec<f64>,
}

pub(super) async fn server_cpu(
    store: &RedisStore,
    raw: &mut ConnectionManager,
    rounds: usize,
    pairs: usize,
) -> Result<Row, String> {
    let floor = redis::Script::new(FLOOR_SCRIPT);
    let mut samples = Samples::default();
    for round in 0..rounds {
        for subject in (0..3).map(|i| (i + round) % 3) {
            reset(raw).await?;
            match subject {
                0 => {
                    ours::store_pairs(store, 1, pairs).await;
                    samples
                        .dlock
                        .push(usage(raw, "evalsha").await? / count(pairs));
                }
                1 => {
                    super::raw_pairs(raw, 1, pairs).await;
                    let (set, del) = (usage(raw, "set").await?, usage(raw, "del").await?);
                    samples.raw.push((set + del) / count(pairs));
                }
                _ => {
                    for _ in 0..2 * pairs {
                        let _: i64 = floor
                            .key("bench-cpu-floor")
                            .arg("lease-and-token-and-owner-of-about-the-same-length")
                            .invoke_async(raw)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    samples
                        .floor
                        .push(usage(raw, "evalsha").await? / count(pairs));
                }
            }
        }
    }
    let (to_raw, floor_to_raw) = (
        paired_ratios(&samples.dlock, &samples.raw),
        paired_ratios(&samples.floor, &samples.raw),
    );
    let floor_median = median(&mut samples.floor.clone());
    Ok(Row {
        backend: "redis",
        scenario: "1. Uncontended acquire+release",
        metric: "server CPU per acquire+release, µs".into(),
        higher_is_better: false,
        ours: median(&mut samples.dlock),
        raw: Some(median(&mut samples.raw)),
        peer: None,
        note: format!(
            "from INFO commandstats, each subject alone ({pairs} pairs a round, {rounds} rounds, each first in turn); dlock (acquire and release script) / SET NX PX + DEL per round {}; the floor of any script pair that reads the clock and the state and writes it back (GET, TIME and SET in one script, twice): {floor_median:.2} µs, {} times SET NX PX + DEL",
            spread(to_raw),
            spread(floor_to_raw),
        ),
    })
}

async fn reset(raw: &mut ConnectionManager) -> Result<(), String> {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(raw)
        .await
        .map_err(|e| e.to_string())
}

/// Total microseconds spent in `command` since the last reset.
async fn usage(raw: &mut ConnectionManager, command: &str) -> Result<f64, String> {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(raw)
        .await
        .map_err(|e| e.to_string())?;
    let prefix = format!("cmdstat_{command}:");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|fields| {
            fields
                .split(',')
                .find_map(|field| field.strip_prefix("usec="))
        })
        .and_then(|value| value.parse::<f64>().ok())
        .ok_or_else(|| format!("INFO commandstats has no usec for {command}"))
}
