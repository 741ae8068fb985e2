//! What `dlock status` prints: every holder, how many wait, the limit of a
//! semaphore or shared lock, and the last fencing token.

use std::time::Duration;

use dlock::{Holder, LeaseInfo, LockMode};

/// To the millisecond, for messages.
fn round(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

fn holder_text(holder: &Holder) -> String {
    let left = holder
        .remaining
        .map(|left| format!(" for another {}", humantime::format_duration(round(left))))
        .unwrap_or_default();
    format!("{}{left}", holder.owner)
}

/// The holders' names, for the waiting line: `a`, or `a, b and c`.
pub(crate) fn owners(info: &LeaseInfo) -> String {
    let names: Vec<&str> = info.holders.iter().map(|h| h.owner.as_str()).collect();
    match names.split_last() {
        None => "nobody".to_owned(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// One line (or a few) for people.
pub(crate) fn text(id: &str, info: Option<&LeaseInfo>) -> String {
    let Some(info) = info else {
        return format!("{id}: free");
    };
    let token = info
        .last_token
        .as_ref()
        .map(|t| format!(", last fencing token {t}"))
        .unwrap_or_default();
    let waiting = match info.waiting {
        0 => String::new(),
        1 => ", 1 waiting".to_owned(),
        n => format!(", {n} waiting"),
    };
    let shared = info
        .holders
        .iter()
        .any(|holder| holder.mode == LockMode::Shared);
    let held = match info.holders.as_slice() {
        [] => "free".to_owned(),
        [only] if !shared => format!("held by {}", holder_text(only)),
        holders => {
            let of = match info.limit {
                Some(limit) if limit < u32::MAX => format!(" of {limit} permits"),
                _ => String::new(),
            };
            let list: Vec<String> = holders.iter().map(holder_text).collect();
            format!("held shared by {}{of}: {}", holders.len(), list.join("; "))
        }
    };
    format!("{id}: {held}{waiting}{token}")
}

/// One JSON object for programs.
pub(crate) fn json(id: &str, info: Option<&LeaseInfo>) -> serde_json::Value {
    let holders: Vec<serde_json::Value> = info
        .map(|info| {
            info.holders
                .iter()
                .map(|holder| {
                    serde_json::json!({
                        "owner": holder.owner,
                        "mode": holder.mode.as_str(),
                        "remaining_ms": holder.remaining.map(|d| d.as_millis()),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let first = info.and_then(|info| info.holders.first());
    serde_json::json!({
        "id": id,
        "held": first.is_some(),
        "holder": first.map(|h| h.owner.clone()),
        "remaining_ms": first.and_then(|h| h.remaining).map(|d| d.as_millis()),
        "holders": holders,
        "waiting": info.map_or(0, |info| info.waiting),
        "limit": info.and_then(|info| info.limit),
        "last_token": info.and_then(|info| info.last_token.as_ref()).map(ToString::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(owner: &str, mode: LockMode, secs: u64) -> Holder {
        Holder::new(owner)
            .with_mode(mode)
            .with_remaining(Duration::from_secs(secs))
    }

    #[test]
    fn every_holder_and_the_waiting_count_are_shown() {
        assert_eq!(text("job", None), "job: free");
        let mutex = LeaseInfo::new(vec![holder("a", LockMode::Exclusive, 3)], Some(7u64.into()))
            .with_waiting(2);
        assert_eq!(
            text("job", Some(&mutex)),
            "job: held by a for another 3s, 2 waiting, last fencing token 7"
        );
        let semaphore = LeaseInfo::new(
            vec![
                holder("a", LockMode::Shared, 1),
                holder("b", LockMode::Shared, 2),
            ],
            None,
        )
        .with_limit(3);
        assert_eq!(
            text("slots", Some(&semaphore)),
            "slots: held shared by 2 of 3 permits: a for another 1s; b for another 2s"
        );
        assert_eq!(owners(&semaphore), "a and b");
        let json = json("slots", Some(&semaphore));
        assert_eq!(json["holders"][1]["owner"], "b");
        assert_eq!(json["holders"][1]["mode"], "shared");
        assert_eq!(json["limit"], 3);
        assert_eq!(json["waiting"], 0);
    }
}
