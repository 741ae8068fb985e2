//! The contention race: many lockers hammering one key through a fenced
//! register, checked by the history checker.

use std::sync::Arc;
use std::time::Duration;

use lock_core::Locker;

use crate::history::{CheckOptions, EventKind, History};
use crate::register::FencedRegister;
use crate::support::{StoreFactory, locker, unique_key};

/// 8 lockers x 4 tasks take one key 4 times each and increment a fenced
/// register while holding it: every increment is kept, no stale token is
/// accepted, tokens strictly increase, and no two holders overlap.
pub async fn contention_race_with_a_fenced_register<F: StoreFactory>(factory: &F) {
    const LOCKERS: usize = 8;
    const TASKS: usize = 4;
    const ROUNDS: usize = 4;
    let id = unique_key("contention_race_with_a_fenced_register");
    let history = Arc::new(History::new());
    let register = Arc::new(FencedRegister::new());
    let mut tasks = Vec::new();
    for l in 0..LOCKERS {
        let locker = Arc::new(locker(factory, &format!("locker-{l}")).await);
        for t in 0..TASKS {
            let (locker, history, register, id) = (
                locker.clone(),
                history.clone(),
                register.clone(),
                id.clone(),
            );
            let client = format!("locker-{l}/task-{t}");
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = locker
                        .lock(&id, Duration::from_secs(120))
                        .await
                        .unwrap_or_else(|e| panic!("{client}: {e}"));
                    history.granted(&guard, &client);
                    let token = guard.fencing_token().cloned().expect("fencing on");
                    let accepted = register.increment(&token).is_ok();
                    history.record(
                        &guard,
                        &client,
                        EventKind::RegisterWrite { token, accepted },
                    );
                    tokio::task::yield_now().await;
                    history.record(&guard, &client, EventKind::Releasing);
                    guard
                        .unlock()
                        .await
                        .unwrap_or_else(|e| panic!("{client}: {e}"));
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("race task");
    }
    if let Err(violation) = history.check(CheckOptions::default()) {
        panic!("{violation}");
    }
    let grants = LOCKERS * TASKS * ROUNDS;
    assert_eq!(
        register.rejected(),
        vec![],
        "stale tokens reached the register"
    );
    assert_eq!(
        register.value(),
        u64::try_from(grants).unwrap(),
        "increments lost"
    );
}
