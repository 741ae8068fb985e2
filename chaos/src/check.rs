//! The checks of a chaos run, over the merged events of every worker.

use std::collections::HashMap;

use serde_json::Value;

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
}

fn num(event: &Value, field: &str) -> u64 {
    event[field].as_u64().unwrap_or(0)
}

fn text<'a>(event: &'a Value, field: &str) -> &'a str {
    event[field].as_str().unwrap_or("")
}

/// Every rule broken, described with the events involved (empty: none).
pub(crate) fn check(
    events: &[Value],
    decisions: &[Decision],
    excuses: &[Excuse],
    quiet_from: u64,
    keys: &[&str],
) -> Vec<String> {
    let mut violations = Vec::new();
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
                }
            })
            .collect();
        grants.sort_by_key(|grant| grant.at);

        let mut seen: HashMap<u64, &str> = HashMap::new();
        for grant in &grants {
            if let Some(other) = seen.insert(grant.token, grant.lease)
                && other != grant.lease
            {
                violations.push(format!(
                    "{key}: fencing token {} granted twice (leases {other} and {})",
                    grant.token, grant.lease
                ));
            }
        }
        for a in &grants {
            for b in &grants {
                if a.lease != b.lease && a.at < b.called && a.token >= b.token {
                    violations.push(format!(
                        "{key}: {} got token {} at {}, before {} asked ({}) and got the smaller or equal token {}",
                        a.client, a.token, a.at, b.client, b.called, b.token
                    ));
                }
            }
        }
        for (i, a) in grants.iter().enumerate() {
            for b in &grants[i + 1..] {
                if b.at >= a.end {
                    continue;
                }
                let excused = excuses.iter().any(|excuse| {
                    excuse.covers(a.client, a.at, a.end) || excuse.covers(b.client, b.at, b.end)
                });
                if !excused {
                    violations.push(format!(
                        "{key}: two holders at once: {} held [{}, {}) (token {}), {} was granted at {} (token {})",
                        a.client, a.at, a.end, a.token, b.client, b.at, b.token
                    ));
                }
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
                violations.push(format!(
                    "{key}: {} saw its lock expired at {at}, long after its deadline {deadline}",
                    text(event, "w")
                ));
            }
        }
    }
    let mut last: HashMap<&str, u64> = HashMap::new();
    for decision in decisions.iter().filter(|d| d.accepted) {
        if let Some(previous) = last.insert(&decision.key, decision.token)
            && decision.token < previous
        {
            violations.push(format!(
                "{}: the register accepted token {} after {previous}",
                decision.key, decision.token
            ));
        }
    }
    for key in keys {
        let granted_when_quiet = by_key.get(key).is_some_and(|events| {
            events
                .iter()
                .any(|event| text(event, "kind") == "granted" && num(event, "at") >= quiet_from)
        });
        if !granted_when_quiet {
            violations.push(format!("{key}: never granted after the faults stopped"));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MS: u64 = 1_000_000;

    fn grant(client: &str, lease: &str, token: u64, called: u64, at: u64, deadline: u64) -> Value {
        json!({"kind": "granted", "k": "a", "w": client, "lease": lease, "token": token,
               "called": called, "at": at, "deadline": deadline})
    }

    fn releasing(client: &str, lease: &str, at: u64) -> Value {
        json!({"kind": "releasing", "k": "a", "w": client, "lease": lease, "at": at})
    }

    fn run(events: &[Value], excuses: &[Excuse]) -> Vec<String> {
        check(events, &[], excuses, 0, &["a"])
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
        assert_eq!(run(&events, &[paused]), Vec::<String>::new());
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
        let found = check(&events, &decisions, &[], 200 * MS, &["a", "b"]);
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
}
