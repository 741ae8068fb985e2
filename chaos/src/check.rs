//! The checks of a chaos run, over the merged events of every worker.

use std::collections::HashMap;

use serde_json::Value;

use crate::RunKey;
use crate::register::Decision;

/// A time window in which some holders are excused from exclusion: a paused
/// worker (its clients only) or a store that lost its data (everyone).
#[derive(Debug, Clone)]
pub(crate) struct Excuse {
    pub(crate) from: u64,
    pub(crate) to: u64,
    /// Clients whose name starts with this are excused; empty: everyone.
    pub(crate) client_prefix: String,
}

impl Excuse {
    fn covers(&self, client: &str, from: u64, to: u64) -> bool {
        client.starts_with(&self.client_prefix) && from <= self.to && self.from <= to
    }
}

struct Grant<'a> {
    at: u64,
    called: u64,
    token: u64,
    lease: &'a str,
    client: &'a str,
    end: u64,
    /// Held alone (a mutex, a writer), or shared with up to `limit`.
    exclusive: bool,
    limit: u64,
}

fn num(event: &Value, field: &str) -> u64 {
    event[field].as_u64().unwrap_or(0)
}

fn text<'a>(event: &'a Value, field: &str) -> &'a str {
    event[field].as_str().unwrap_or("")
}

/// When the checks look for what.
#[derive(Debug, Clone)]
pub(crate) struct Phases {
    /// From here on no fault is in effect: every lock must be granted again.
    pub(crate) quiet_from: u64,
    /// When the final phase's holder was killed (its waiters were already
    /// asking), if it got that far.
    pub(crate) holder_killed_at: Option<u64>,
    /// How long after its holder's death a lock may stay taken: the ttl
    /// plus what the store adds (see RELIABILITY.md).
    pub(crate) outlive_bound: u64,
}

/// One rule broken.
#[derive(Debug, Clone)]
pub(crate) struct Violation {
    /// What happened, with the events involved.
    pub(crate) text: String,
    /// The lock id and time window whose history explains it.
    pub(crate) slice: Option<(String, u64, u64)>,
}

impl Violation {
    pub(crate) fn new(text: String) -> Self {
        Self { text, slice: None }
    }

    fn on(key: &str, from: u64, to: u64, text: String) -> Self {
        Self {
            text,
            slice: Some((key.to_owned(), from, to)),
        }
    }
}

/// The outcome of the checks.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Every rule broken.
    pub(crate) violations: Vec<Violation>,
    /// Per key, how long the dead holder's lock stayed taken after its
    /// death (until a waiter got it).
    pub(crate) outlived: Vec<(String, u64)>,
    /// Overlapping holders inside an excused window: paused or blocked
    /// holders, locks a store lost. Fencing has to stop these.
    pub(crate) excused_overlaps: usize,
}

/// Checks a run's merged events and register decisions.
pub(crate) fn check(
    events: &[Value],
    decisions: &[Decision],
    excuses: &[Excuse],
    phases: &Phases,
    keys: &[RunKey],
) -> Report {
    let quiet_from = phases.quiet_from;
    let mut report = Report::default();
    let mut excused_overlaps = 0;
    let violations = &mut report.violations;
    let mut by_key: HashMap<&str, Vec<&Value>> = HashMap::new();
    for event in events {
        by_key.entry(text(event, "k")).or_default().push(event);
    }
    for (key, key_events) in &by_key {
        // Each holder's interval: its grant to its release or observed
        // expiry, cut at the last deadline it saw.
        let mut ends: HashMap<&str, u64> = HashMap::new();
        let mut deadlines: HashMap<&str, u64> = HashMap::new();
        for event in key_events {
            let lease = text(event, "lease");
            match text(event, "kind") {
                "granted" | "renewed" => {
                    let deadline = deadlines.entry(lease).or_default();
                    *deadline = (*deadline).max(num(event, "deadline"));
                }
                "releasing" | "expired" => {
                    ends.entry(lease).or_insert(num(event, "at"));
                }
                _ => {}
            }
        }
        let mut grants: Vec<Grant<'_>> = key_events
            .iter()
            .filter(|event| text(event, "kind") == "granted")
            .map(|event| {
                let lease = text(event, "lease");
                let deadline = deadlines.get(lease).copied().unwrap_or(u64::MAX);
                Grant {
                    at: num(event, "at"),
                    called: num(event, "called"),
                    token: num(event, "token"),
                    lease,
                    client: text(event, "w"),
                    end: ends.get(lease).copied().unwrap_or(deadline).min(deadline),
                    exclusive: text(event, "mode") != "s",
                    limit: event["limit"].as_u64().unwrap_or(1),
                }
            })
            .collect();
        grants.sort_by_key(|grant| grant.at);

        let mut seen: HashMap<u64, &str> = HashMap::new();
        for grant in &grants {
            if let Some(other) = seen.insert(grant.token, grant.lease)
                && other != grant.lease
            {
                violations.push(Violation::on(
                    key,
                    grant.at,
                    grant.at,
                    format!(
                        "{key}: fencing token {} granted twice (leases {other} and {})",
                        grant.token, grant.lease
                    ),
                ));
            }
        }
        for a in &grants {
            for b in &grants {
                if a.lease != b.lease && a.at < b.called && a.token >= b.token {
                    violations.push(Violation::on(
                        key,
                        a.at,
                        b.at,
                        format!(
                            "{key}: {} got token {} at {}, before {} asked ({}) and got the smaller or equal token {}",
                            a.client, a.token, a.at, b.client, b.called, b.token
                        ),
                    ));
                }
            }
        }
        let excused = |a: &Grant<'_>| {
            excuses
                .iter()
                .any(|excuse| excuse.covers(a.client, a.at, a.end))
        };
        // Q1: an exclusive holder is alone; shared holders are never more
        // than their limit at once.
        for (i, a) in grants.iter().enumerate() {
            for b in &grants[i + 1..] {
                if b.at >= a.end || !(a.exclusive || b.exclusive) {
                    continue;
                }
                if excused(a) || excused(b) {
                    excused_overlaps += 1;
                } else {
                    violations.push(Violation::on(
                        key,
                        a.at,
                        a.end,
                        format!(
                            "{key}: two holders at once: {} held [{}, {}) (token {}), {} was granted at {} (token {})",
                            a.client, a.at, a.end, a.token, b.client, b.at, b.token
                        ),
                    ));
                }
            }
        }
        for a in grants.iter().filter(|grant| !grant.exclusive) {
            let together: Vec<&Grant<'_>> = grants
                .iter()
                .filter(|b| !b.exclusive && b.at <= a.at && a.at < b.end)
                .collect();
            if u64::try_from(together.len()).unwrap_or(u64::MAX) > a.limit {
                if together.iter().any(|b| excused(b)) {
                    excused_overlaps += 1;
                } else {
                    let holders: Vec<String> = together
                        .iter()
                        .map(|b| format!("{} [{}, {}) token {}", b.client, b.at, b.end, b.token))
                        .collect();
                    violations.push(Violation::on(
                        key,
                        a.at,
                        a.at,
                        format!(
                            "{key}: {} shared holders at {} with a limit of {}: {}",
                            together.len(),
                            a.at,
                            a.limit,
                            holders.join(", ")
                        ),
                    ));
                }
            }
        }
        // Q2, Q3: the store grants in arrival order and tokens are arrival
        // numbers, so around an exclusive grant, grants come in token
        // order. (Shared holders promoted together may hear it in any
        // order.)
        for (i, a) in grants.iter().enumerate() {
            for b in &grants[i + 1..] {
                if a.token < b.token || !(a.exclusive || b.exclusive) || a.lease == b.lease {
                    continue;
                }
                if excused(a) || excused(b) {
                    continue;
                }
                violations.push(Violation::on(
                    key,
                    a.at,
                    b.at,
                    format!(
                        "{key}: granted out of arrival order: {} got token {} at {}, then {} got the smaller token {} at {}",
                        a.client, a.token, a.at, b.client, b.token, b.at
                    ),
                ));
            }
        }
        for event in key_events {
            if text(event, "kind") != "expired" {
                continue;
            }
            let (at, deadline) = (num(event, "at"), num(event, "deadline"));
            // Holders poll every 20-400 ms on a loaded machine: this only
            // catches gross errors (a deadline from the wrong base, a lock
            // counted valid long after it ran out).
            let late = at > deadline + 2_000_000_000;
            let excused = excuses
                .iter()
                .any(|excuse| excuse.covers(text(event, "w"), deadline, at));
            if late && !excused {
                violations.push(Violation::on(
                    key,
                    deadline,
                    at,
                    format!(
                        "{key}: {} saw its lock expired at {at}, long after its deadline {deadline}",
                        text(event, "w")
                    ),
                ));
            }
        }
    }
    let mut last: HashMap<&str, u64> = HashMap::new();
    for decision in decisions.iter().filter(|d| d.accepted) {
        if let Some(previous) = last.insert(&decision.key, decision.token)
            && decision.token < previous
        {
            violations.push(Violation::new(format!(
                "{}: the register accepted token {} after {previous}",
                decision.key, decision.token
            )));
        }
    }
    for key in keys.iter().map(|key| key.id) {
        let granted_when_quiet = by_key.get(key).is_some_and(|events| {
            events
                .iter()
                .any(|event| text(event, "kind") == "granted" && num(event, "at") >= quiet_from)
        });
        if !granted_when_quiet {
            violations.push(Violation::new(format!(
                "{key}: never granted after the faults stopped"
            )));
        }
    }
    check_warnings(events, violations);
    check_limits(events, violations);
    report.excused_overlaps = excused_overlaps;
    check_final_phase(events, phases, keys, &mut report);
    report
}

/// Every worker asks for one id with one count of permits (readers: any
/// number), and exclusive requests carry none: a store that refuses a
/// request for its limit has mixed them up.
fn check_limits(events: &[Value], violations: &mut Vec<Violation>) {
    for event in events
        .iter()
        .filter(|e| text(e, "kind") == "limit-mismatch")
    {
        violations.push(Violation::on(
            text(event, "k"),
            num(event, "called"),
            num(event, "at"),
            format!(
                "{}: {} was refused for its limit, though every request on it agrees: {}",
                text(event, "k"),
                text(event, "w"),
                text(event, "error")
            ),
        ));
    }
}

/// Every loss came after a warning, a live lock never showed a deadline in
/// the past, and a lost lock never turned valid again.
fn check_warnings(events: &[Value], violations: &mut Vec<Violation>) {
    let mut warned: HashMap<&str, u64> = HashMap::new();
    let mut lost: HashMap<&str, u64> = HashMap::new();
    for event in events {
        let lease = text(event, "lease");
        match text(event, "kind") {
            "warned" => {
                warned.entry(lease).or_insert(num(event, "at"));
            }
            "lost" => {
                lost.insert(lease, num(event, "at"));
            }
            "valid-after-deadline" => violations.push(Violation::on(
                text(event, "k"),
                num(event, "deadline"),
                num(event, "asked"),
                format!(
                    "{}: {} was told its lock was valid at {}, after its deadline {}",
                    text(event, "k"),
                    text(event, "w"),
                    num(event, "asked"),
                    num(event, "deadline")
                ),
            )),
            _ => {}
        }
    }
    for event in events {
        let lease = text(event, "lease");
        let Some(&lost_at) = lost.get(lease) else {
            continue;
        };
        match text(event, "kind") {
            "lost" if warned.get(lease).is_none_or(|&at| at > lost_at) => {
                violations.push(Violation::on(
                    text(event, "k"),
                    lost_at,
                    lost_at,
                    format!(
                        "{}: {} lost lease {lease} at {lost_at} without a warning first",
                        text(event, "k"),
                        text(event, "w")
                    ),
                ));
            }
            "renewed" if num(event, "at") > lost_at => violations.push(Violation::on(
                text(event, "k"),
                lost_at,
                num(event, "at"),
                format!(
                    "{}: {} saw lease {lease} valid again at {} after it was lost at {lost_at}",
                    text(event, "k"),
                    text(event, "w"),
                    num(event, "at")
                ),
            )),
            _ => {}
        }
    }
}

/// After the faults: every waiter that asked long enough got the lock, and
/// the killed holder's locks were free again within the bound.
fn check_final_phase(events: &[Value], phases: &Phases, keys: &[RunKey], report: &mut Report) {
    let Some(killed_at) = phases.holder_killed_at else {
        return;
    };
    let final_events = || events.iter().filter(|event| event["final"] == true);
    for event in final_events() {
        if matches!(
            text(event, "kind"),
            "not-granted" | "store-error" | "other" | "cancelled"
        ) {
            report.violations.push(Violation::on(
                text(event, "k"),
                num(event, "called"),
                num(event, "at"),
                format!(
                    "{}: {} asked for {} ms after the faults stopped and did not get it: {}",
                    text(event, "k"),
                    text(event, "w"),
                    num(event, "wait") / 1_000_000,
                    text(event, "error")
                ),
            ));
        }
    }
    for key in keys.iter().map(|key| key.id) {
        let first = final_events()
            .filter(|event| text(event, "k") == key && text(event, "kind") == "granted")
            .map(|event| num(event, "at"))
            .min();
        let Some(first) = first else {
            report.violations.push(Violation::new(format!(
                "{key}: never granted after its holder was killed"
            )));
            continue;
        };
        let outlived = first.saturating_sub(killed_at);
        report.outlived.push((key.to_owned(), outlived));
        if outlived > phases.outlive_bound {
            report.violations.push(Violation::on(
                key,
                killed_at,
                first,
                format!(
                    "{key}: the killed holder's lock stayed taken {} ms after its death (bound {} ms)",
                    outlived / 1_000_000,
                    phases.outlive_bound / 1_000_000
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MS: u64 = 1_000_000;

    const KEY_A: [RunKey; 1] = [RunKey {
        id: "a",
        kind: crate::KeyKind::Mutex,
    }];

    const KEYS_AB: [RunKey; 2] = [
        RunKey {
            id: "a",
            kind: crate::KeyKind::Mutex,
        },
        RunKey {
            id: "b",
            kind: crate::KeyKind::Mutex,
        },
    ];

    fn shared(client: &str, lease: &str, token: u64, at: u64, deadline: u64) -> Value {
        json!({"kind": "granted", "k": "a", "w": client, "lease": lease, "token": token,
               "called": 0, "at": at, "deadline": deadline, "mode": "s", "limit": 2})
    }

    #[test]
    fn shared_holders_beyond_their_limit_are_caught() {
        let within = [
            shared("w0/t0", "l1", 1, 10 * MS, 2000 * MS),
            shared("w1/t0", "l2", 2, 20 * MS, 2000 * MS),
        ];
        assert_eq!(run(&within, &[]), Vec::<String>::new());
        let beyond = [
            shared("w0/t0", "l1", 1, 10 * MS, 2000 * MS),
            shared("w1/t0", "l2", 2, 20 * MS, 2000 * MS),
            shared("w2/t0", "l3", 3, 30 * MS, 2000 * MS),
        ];
        let found = run(&beyond, &[]);
        assert!(
            found.iter().any(|v| v.contains("3 shared holders")),
            "{found:?}"
        );
        // A writer beside a reader is two holders at once.
        let mixed = [
            shared("w0/t0", "l1", 1, 10 * MS, 2000 * MS),
            grant("w1/t0", "l2", 2, 0, 20 * MS, 2000 * MS),
        ];
        let found = run(&mixed, &[]);
        assert!(
            found.iter().any(|v| v.contains("two holders at once")),
            "{found:?}"
        );
    }

    #[test]
    fn grants_out_of_arrival_order_are_caught() {
        let events = [
            grant("w0/t0", "l1", 5, 0, 10 * MS, 2000 * MS),
            releasing("w0/t0", "l1", 100 * MS),
            grant("w1/t0", "l2", 4, 0, 110 * MS, 2100 * MS),
        ];
        let found = run(&events, &[]);
        assert!(
            found.iter().any(|v| v.contains("out of arrival order")),
            "{found:?}"
        );
    }

    fn grant(client: &str, lease: &str, token: u64, called: u64, at: u64, deadline: u64) -> Value {
        json!({"kind": "granted", "k": "a", "w": client, "lease": lease, "token": token,
               "called": called, "at": at, "deadline": deadline})
    }

    fn releasing(client: &str, lease: &str, at: u64) -> Value {
        json!({"kind": "releasing", "k": "a", "w": client, "lease": lease, "at": at})
    }

    fn phases(quiet_from: u64) -> Phases {
        Phases {
            quiet_from,
            holder_killed_at: None,
            outlive_bound: 3000 * MS,
        }
    }

    fn run(events: &[Value], excuses: &[Excuse]) -> Vec<String> {
        texts(check(events, &[], excuses, &phases(0), &KEY_A))
    }

    fn texts(report: Report) -> Vec<String> {
        report.violations.into_iter().map(|v| v.text).collect()
    }

    #[test]
    fn a_clean_handoff_passes() {
        let events = [
            grant("w0/t0", "l1", 1, 0, 10 * MS, 2000 * MS),
            releasing("w0/t0", "l1", 100 * MS),
            grant("w1/t0", "l2", 2, 50 * MS, 110 * MS, 2100 * MS),
        ];
        assert_eq!(run(&events, &[]), Vec::<String>::new());
    }

    #[test]
    fn overlapping_holders_are_caught_unless_excused() {
        let events = [
            grant("w0/t0", "l1", 1, 0, 10 * MS, 2000 * MS),
            grant("w1/t0", "l2", 2, 50 * MS, 500 * MS, 2500 * MS),
        ];
        let found = run(&events, &[]);
        assert!(
            found.iter().any(|v| v.contains("two holders at once")),
            "{found:?}"
        );
        let paused = Excuse {
            from: 0,
            to: 3000 * MS,
            client_prefix: "w0/".into(),
        };
        let report = check(&events, &[], &[paused], &phases(0), &KEY_A);
        assert_eq!(report.excused_overlaps, 1);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }

    #[test]
    fn repeated_and_backward_tokens_are_caught() {
        let events = [
            grant("w0/t0", "l1", 5, 0, 10 * MS, 20 * MS),
            grant("w1/t0", "l2", 5, 30 * MS, 40 * MS, 50 * MS),
            grant("w2/t0", "l3", 4, 60 * MS, 70 * MS, 80 * MS),
        ];
        let found = run(&events, &[]);
        assert!(
            found.iter().any(|v| v.contains("granted twice")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|v| v.contains("smaller or equal token 4")),
            "{found:?}"
        );
    }

    #[test]
    fn a_late_expiry_a_stale_register_write_and_no_progress_are_caught() {
        let events = [
            grant("w0/t0", "l1", 1, 0, 10 * MS, 100 * MS),
            json!({"kind": "expired", "k": "a", "w": "w0/t0", "lease": "l1",
                   "at": 2900 * MS, "deadline": 100 * MS}),
        ];
        let decisions = [
            Decision {
                key: "a".into(),
                token: 3,
                accepted: true,
            },
            Decision {
                key: "a".into(),
                token: 2,
                accepted: true,
            },
        ];
        let found = texts(check(&events, &decisions, &[], &phases(200 * MS), &KEYS_AB));
        assert!(
            found.iter().any(|v| v.contains("long after its deadline")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|v| v.contains("accepted token 2 after 3")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|v| v.contains("a: never granted after")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|v| v.contains("b: never granted after")),
            "{found:?}"
        );
    }

    #[test]
    fn a_loss_without_warning_and_a_lock_valid_again_are_caught() {
        let lost = |lease: &str, at: u64| json!({"kind": "lost", "k": "a", "w": "w0/t0", "lease": lease, "at": at});
        let events = [
            grant("w0/t0", "l1", 1, 0, 10 * MS, 2000 * MS),
            json!({"kind": "warned", "k": "a", "w": "w0/t0", "lease": "l1", "at": 1000 * MS}),
            lost("l1", 1100 * MS),
            releasing("w0/t0", "l1", 1100 * MS),
            grant("w0/t0", "l2", 2, 1200 * MS, 1300 * MS, 3000 * MS),
            lost("l2", 1400 * MS),
            json!({"kind": "renewed", "k": "a", "w": "w0/t0", "lease": "l2",
                   "at": 1500 * MS, "deadline": 3500 * MS}),
            json!({"kind": "valid-after-deadline", "k": "a", "w": "w0/t0", "lease": "l2",
                   "asked": 4000 * MS, "deadline": 3500 * MS}),
        ];
        let found = run(&events, &[]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("valid at 4000000000"), "{found:?}");
        assert!(found[1].contains("lost lease l2 at 1400000000 without a warning"));
        assert!(found[2].contains("valid again"), "{found:?}");
    }

    #[test]
    fn the_final_phase_wants_every_waiter_served_and_dead_holders_gone_in_time() {
        let waiter = |kind: &str, key: &str, at: u64| {
            json!({"kind": kind, "k": key, "w": "w5/t0", "lease": "l9", "at": at,
                   "token": 9, "called": 0, "deadline": at + 2000 * MS, "final": true,
                   "wait": 20_000 * MS, "error": "timed out"})
        };
        let events = [
            waiter("granted", "a", 12_000 * MS),
            waiter("not-granted", "a", 30_000 * MS),
        ];
        let phases = Phases {
            quiet_from: 0,
            holder_killed_at: Some(10_000 * MS),
            outlive_bound: 3000 * MS,
        };
        let report = check(&events, &[], &[], &phases, &KEYS_AB);
        assert_eq!(report.outlived, vec![("a".to_owned(), 2000 * MS)]);
        let found = &texts(report);
        assert!(
            found.iter().any(|v| v.contains("w5/t0 asked for 20000 ms")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|v| v.contains("b: never granted after its holder")),
            "{found:?}"
        );
        let late = Phases {
            outlive_bound: 1000 * MS,
            ..phases
        };
        let found = texts(check(&events[..1], &[], &[], &late, &KEY_A));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("stayed taken 2000 ms"), "{found:?}");
    }
}
