//! A replica promoted before it received a grant (asynchronous replication)
//! grants the lock a second time: Redis locks are efficiency locks. The
//! defence is fencing: the second grant's token is larger, because tokens
//! are floored at the server's clock, so the fenced resource refuses the
//! first holder once it has seen the second.

mod common;

use std::time::Duration;

use common::bounded;
use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
use conformance_tests::harness::{RedisReply, RedisServer};
use conformance_tests::register::FencedRegister;
use conformance_tests::{eventually, unique_key};
use lock_core::{FencingToken, LeaseLocker, LockGuard, LockStatus, Locker, LockerOptions};
use lock_redis::RedisStore;

async fn locker(url: &str, owner: &str) -> LeaseLocker<RedisStore> {
    let store = RedisStore::connect(url).await.unwrap();
    let options = LockerOptions::builder()
        .owner(owner)
        .lease(Duration::from_secs(10))
        .build()
        .unwrap();
    LeaseLocker::new(store, options).unwrap()
}

fn token(guard: &LockGuard) -> FencingToken {
    guard.fencing_token().cloned().expect("fencing is on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_that_missed_a_grant_grants_again_with_a_larger_token() {
    bounded(async {
        let master = start_or_skip!(RedisServer::start());
        let replica = start_or_skip!(RedisServer::start());
        if master.is_external() || replica.is_external() {
            eprintln!("skipped: needs two servers of the harness's own");
            return;
        }
        // Full syncs start at once rather than after the default 5 s.
        master
            .command(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"])
            .await
            .unwrap();
        // Replication runs through a proxy, to cut it.
        let link = FaultProxy::start(master.addr()).await.unwrap();
        let port = link.listen_addr().port().to_string();
        let reply = replica
            .command(&["REPLICAOF", "127.0.0.1", &port])
            .await
            .unwrap();
        assert_eq!(reply, RedisReply::Simple("OK".to_owned()));
        eventually(Duration::from_secs(10), "the replica syncs", || async {
            let info = replica.command(&["INFO", "replication"]).await.unwrap();
            info.as_text()
                .is_some_and(|info| info.contains("master_link_status:up"))
        })
        .await;

        let alice = locker(master.url(), "alice").await;
        let id = unique_key("failover");
        let state = alice.store().redis_keys(&id).lock;
        // An earlier grant reaches the replica: it has the counter.
        let earlier = alice.try_lock(&id).await.unwrap();
        let earlier_token = token(&earlier);
        earlier.unlock().await.unwrap();
        eventually(
            Duration::from_secs(10),
            "the counter replicates",
            || async {
                // Released, the state starts with the counter.
                let replicated = replica.command(&["GET", &state]).await.unwrap();
                replicated
                    .as_text()
                    .is_some_and(|state| state.starts_with(&format!("{earlier_token},")))
            },
        )
        .await;

        // Alice's grant never reaches the replica, which is then promoted.
        link.set_mode(FaultMode::BlackHole);
        let alice_guard = alice.try_lock(&id).await.unwrap();
        let alice_token = token(&alice_guard);
        assert!(alice_token > earlier_token);
        let reply = replica.command(&["REPLICAOF", "NO", "ONE"]).await.unwrap();
        assert_eq!(reply, RedisReply::Simple("OK".to_owned()));

        let bob = locker(replica.url(), "bob").await;
        let bob_guard = bob
            .try_lock(&id)
            .await
            .expect("the promoted replica never saw Alice's grant");
        // Two holders, each renewing on its own server: Redis alone does not
        // keep them apart.
        assert_eq!(*alice_guard.status().borrow(), LockStatus::Held);
        assert_eq!(*bob_guard.status().borrow(), LockStatus::Held);

        let bob_token = token(&bob_guard);
        assert!(
            bob_token > alice_token,
            "the replica's counter stopped at {earlier_token}, but its clock floors the next \
             token above Alice's: {bob_token} after {alice_token}"
        );
        let register = FencedRegister::new();
        register.increment(&alice_token).unwrap();
        register.increment(&bob_token).unwrap();
        assert!(
            register.increment(&alice_token).is_err(),
            "the register refuses Alice once it has seen Bob"
        );
        bob_guard.unlock().await.unwrap();
        alice_guard.unlock().await.unwrap();
    })
    .await;
}
