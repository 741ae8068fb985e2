//! The harness and the fault proxy against real servers and real sockets.
//!
//! A server that is not installed skips its test with a printed reason,
//! unless `DLOCK_TEST_REQUIRE=1`, which turns the skip into a failure.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
use conformance_tests::harness::{
    EtcdCluster, EtcdServer, HarnessError, PostgresServer, RedisCluster, RedisReply, RedisServer,
    redis_command,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound for any one test, so a hang fails instead of stalling CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a read must stay silent to count as "nothing arrives".
const SILENCE: Duration = Duration::from_millis(300);
/// How long something that should happen may take.
const PROMPTLY: Duration = Duration::from_secs(5);

async fn bounded(test: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_TIMEOUT, test).await.is_err() {
        panic!("test did not finish within {TEST_TIMEOUT:?}");
    }
}

/// Unwraps a started server, or ends the (async block of the) test with a
/// printed reason when the server is unavailable and not required.
macro_rules! start_or_skip {
    ($start:expr) => {
        match conformance_tests::harness::or_skip($start.await) {
            Some(server) => server,
            None => return,
        }
    };
}

// ---------------------------------------------------------------------------
// Fault proxy, with both ends of each connection held by the test.

/// A proxy in front of a listener the test owns, so each side of a proxied
/// connection can be read and written independently.
async fn proxy_to_test_listener() -> (FaultProxy, TcpListener) {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::start(upstream.local_addr().unwrap())
        .await
        .unwrap();
    (proxy, upstream)
}

/// Connects through the proxy and accepts the proxied connection upstream.
async fn connected_pair(proxy: &FaultProxy, upstream: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(proxy.listen_addr()).await.unwrap();
    let (server, _) = tokio::time::timeout(PROMPTLY, upstream.accept())
        .await
        .expect("the proxy connects upstream")
        .unwrap();
    (client, server)
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
}

/// Reads exactly `expected.len()` bytes within `PROMPTLY` and compares.
async fn expect_bytes(stream: &mut TcpStream, expected: &[u8]) {
    let mut received = vec![0_u8; expected.len()];
    tokio::time::timeout(PROMPTLY, stream.read_exact(&mut received))
        .await
        .expect("bytes arrive in time")
        .unwrap();
    assert_eq!(received, expected);
}

/// Asserts that nothing arrives for `SILENCE` and the connection stays open.
async fn expect_silence(stream: &mut TcpStream) {
    let mut byte = [0_u8; 1];
    match tokio::time::timeout(SILENCE, stream.read(&mut byte)).await {
        Err(_elapsed) => {}
        Ok(Ok(0)) => panic!("the connection was closed"),
        Ok(Ok(_)) => panic!("a byte arrived: {byte:?}"),
        Ok(Err(error)) => panic!("the connection failed: {error}"),
    }
}

async fn expect_reset(stream: &mut TcpStream) {
    let mut byte = [0_u8; 1];
    let read = tokio::time::timeout(PROMPTLY, stream.read(&mut byte))
        .await
        .expect("the reset arrives in time");
    match read {
        Err(error) => assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}"),
        Ok(count) => panic!("expected a reset, read {count} bytes"),
    }
}

#[tokio::test]
async fn proxy_passes_traffic_both_ways_and_counts_connections() {
    bounded(async {
        let (proxy, upstream) = proxy_to_test_listener().await;
        assert_eq!(proxy.mode(), FaultMode::PassThrough);
        let (mut client, mut server) = connected_pair(&proxy, &upstream).await;
        send(&mut client, b"request").await;
        expect_bytes(&mut server, b"request").await;
        send(&mut server, b"response").await;
        expect_bytes(&mut client, b"response").await;
        assert_eq!(proxy.accepted_connections(), 1);
        assert_eq!(proxy.active_connections(), 1);

        // A client's half-close reaches the server, and the other direction
        // keeps working until the server closes too.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(PROMPTLY, server.read_to_end(&mut rest))
            .await
            .expect("end of stream arrives")
            .unwrap();
        assert!(rest.is_empty());
        send(&mut server, b"bye").await;
        expect_bytes(&mut client, b"bye").await;
        drop(server);
        let mut tail = Vec::new();
        tokio::time::timeout(PROMPTLY, client.read_to_end(&mut tail))
            .await
            .expect("end of stream arrives")
            .unwrap();
        assert!(tail.is_empty());
    })
    .await;
}

#[tokio::test]
async fn black_hole_holds_existing_and_new_connections_open() {
    bounded(async {
        let (proxy, upstream) = proxy_to_test_listener().await;
        let (mut client, mut server) = connected_pair(&proxy, &upstream).await;
        send(&mut client, b"warm-up").await;
        expect_bytes(&mut server, b"warm-up").await;

        proxy.set_mode(FaultMode::BlackHole);
        assert_eq!(proxy.mode(), FaultMode::BlackHole);
        send(&mut client, b"held-up").await;
        send(&mut server, b"held-down").await;
        expect_silence(&mut server).await;
        expect_silence(&mut client).await;

        // A new connection is accepted but not forwarded anywhere.
        let mut late_client = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        assert!(
            tokio::time::timeout(SILENCE, upstream.accept())
                .await
                .is_err(),
            "a black-holed connection must not reach the server"
        );
        expect_silence(&mut late_client).await;

        // Held bytes are delivered, in order, once the black hole ends.
        proxy.set_mode(FaultMode::PassThrough);
        expect_bytes(&mut server, b"held-up").await;
        expect_bytes(&mut client, b"held-down").await;
        let (mut late_server, _) = tokio::time::timeout(PROMPTLY, upstream.accept())
            .await
            .expect("the held connection is forwarded after the black hole")
            .unwrap();
        send(&mut late_client, b"late").await;
        expect_bytes(&mut late_server, b"late").await;
        assert_eq!(proxy.accepted_connections(), 2);
    })
    .await;
}

#[tokio::test]
async fn reset_mode_resets_existing_and_new_connections() {
    bounded(async {
        let (proxy, upstream) = proxy_to_test_listener().await;
        let (mut client, mut server) = connected_pair(&proxy, &upstream).await;
        send(&mut client, b"ping").await;
        expect_bytes(&mut server, b"ping").await;

        proxy.set_mode(FaultMode::Reset);
        expect_reset(&mut client).await;
        expect_reset(&mut server).await;

        let mut late_client = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        expect_reset(&mut late_client).await;
        assert!(
            tokio::time::timeout(SILENCE, upstream.accept())
                .await
                .is_err(),
            "a reset connection must not reach the server"
        );

        proxy.set_mode(FaultMode::PassThrough);
        let (mut client, mut server) = connected_pair(&proxy, &upstream).await;
        send(&mut client, b"again").await;
        expect_bytes(&mut server, b"again").await;
    })
    .await;
}

#[tokio::test]
async fn latency_delays_each_direction_and_keeps_order() {
    bounded(async {
        let delay = Duration::from_millis(150);
        let (proxy, upstream) = proxy_to_test_listener().await;
        let (mut client, mut server) = connected_pair(&proxy, &upstream).await;
        proxy.set_mode(FaultMode::Latency(delay));

        let started = Instant::now();
        send(&mut client, b"a").await;
        send(&mut client, b"b").await;
        send(&mut client, b"c").await;
        expect_bytes(&mut server, b"abc").await;
        let one_way = started.elapsed();
        send(&mut server, b"reply").await;
        expect_bytes(&mut client, b"reply").await;
        let round_trip = started.elapsed();
        assert!(one_way >= delay, "one way took only {one_way:?}");
        assert!(
            round_trip >= delay * 2,
            "round trip took only {round_trip:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn cutting_one_direction_holds_only_that_direction() {
    bounded(async {
        let (proxy, upstream) = proxy_to_test_listener().await;
        let (mut client, mut server) = connected_pair(&proxy, &upstream).await;

        proxy.set_mode(FaultMode::CutClientToServer);
        send(&mut client, b"up-1").await;
        send(&mut server, b"down-1").await;
        expect_bytes(&mut client, b"down-1").await;
        expect_silence(&mut server).await;

        proxy.set_mode(FaultMode::CutServerToClient);
        // The bytes held by the previous cut now flow.
        expect_bytes(&mut server, b"up-1").await;
        send(&mut server, b"down-2").await;
        send(&mut client, b"up-2").await;
        expect_bytes(&mut server, b"up-2").await;
        expect_silence(&mut client).await;

        proxy.set_mode(FaultMode::PassThrough);
        expect_bytes(&mut client, b"down-2").await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_every_connection_and_the_listener() {
    bounded(async {
        let (proxy, upstream) = proxy_to_test_listener().await;
        let (mut client, mut server) = connected_pair(&proxy, &upstream).await;
        let listen_addr = proxy.listen_addr();
        proxy.shutdown().await;

        for stream in [&mut client, &mut server] {
            let mut byte = [0_u8; 1];
            let read = tokio::time::timeout(PROMPTLY, stream.read(&mut byte))
                .await
                .expect("the proxied connection is closed promptly");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        assert!(TcpStream::connect(listen_addr).await.is_err());
    })
    .await;
}

// ---------------------------------------------------------------------------
// Fault proxy in front of a real Redis, on one long-lived connection.

/// Sends an inline `PING` and reads the reply, failing after `limit`.
async fn ping(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    stream
        .write_all(b"PING\r\n")
        .await
        .map_err(|error| error.to_string())?;
    read_pong(stream, limit).await
}

async fn read_pong(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    let mut reply = [0_u8; 7];
    match tokio::time::timeout(limit, stream.read_exact(&mut reply)).await {
        Ok(Ok(_)) => Ok(reply.to_vec()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_elapsed) => Err("timed out".to_owned()),
    }
}

#[tokio::test]
async fn proxy_modes_apply_to_a_pooled_redis_connection() {
    bounded(async {
        let redis = start_or_skip!(RedisServer::start());
        let proxy = FaultProxy::start(redis.addr()).await.unwrap();
        let mut connection = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        assert_eq!(ping(&mut connection, PROMPTLY).await.unwrap(), b"+PONG\r\n");

        let delay = Duration::from_millis(100);
        proxy.set_mode(FaultMode::Latency(delay));
        let started = Instant::now();
        assert_eq!(ping(&mut connection, PROMPTLY).await.unwrap(), b"+PONG\r\n");
        assert!(started.elapsed() >= delay * 2, "{:?}", started.elapsed());

        proxy.set_mode(FaultMode::BlackHole);
        assert_eq!(
            ping(&mut connection, SILENCE).await,
            Err("timed out".to_owned())
        );
        proxy.set_mode(FaultMode::PassThrough);
        // The held PING is answered once traffic flows again.
        assert_eq!(
            read_pong(&mut connection, PROMPTLY).await.unwrap(),
            b"+PONG\r\n"
        );

        proxy.set_mode(FaultMode::Reset);
        let failed = ping(&mut connection, PROMPTLY).await;
        assert!(failed.is_err(), "{failed:?}");
        assert_eq!(proxy.accepted_connections(), 1);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Servers.

#[tokio::test]
async fn redis_restart_comes_back_empty_on_the_same_port() {
    bounded(async {
        let mut redis = start_or_skip!(RedisServer::start());
        if redis.is_external() {
            eprintln!("skipped: DLOCK_TEST_REDIS_URL names an external server");
            return;
        }
        let url = redis.url().to_owned();
        assert!(url.starts_with("redis://127.0.0.1:"), "{url}");
        assert_eq!(
            redis.command(&["SET", "dlock-key", "v"]).await.unwrap(),
            RedisReply::Simple("OK".to_owned())
        );
        assert_eq!(
            redis.command(&["GET", "dlock-key"]).await.unwrap(),
            RedisReply::Bulk(b"v".to_vec())
        );

        redis.kill().unwrap();
        assert!(redis.command(&["PING"]).await.is_err());
        redis.restart().await.unwrap();
        assert_eq!(redis.url(), url);
        assert_eq!(
            redis.command(&["GET", "dlock-key"]).await.unwrap(),
            RedisReply::Nil
        );

        redis.pause().unwrap();
        let mut connection = TcpStream::connect(redis.addr()).await.unwrap();
        assert_eq!(
            ping(&mut connection, SILENCE).await,
            Err("timed out".to_owned())
        );
        redis.resume().unwrap();
        assert_eq!(
            read_pong(&mut connection, PROMPTLY).await.unwrap(),
            b"+PONG\r\n"
        );
    })
    .await;
}

#[tokio::test]
async fn redis_cluster_forms_and_recovers_a_restarted_master() {
    bounded(async {
        let mut cluster = start_or_skip!(RedisCluster::start(3));
        assert_eq!(cluster.urls().len(), 3);
        for index in 0..cluster.size() {
            let info = cluster.command(index, &["CLUSTER", "INFO"]).await.unwrap();
            let info = info.as_text().unwrap();
            assert!(info.contains("cluster_state:ok"), "{info}");
            assert!(info.contains("cluster_known_nodes:3"), "{info}");
        }
        if cluster.is_external() {
            return;
        }
        cluster.restart(1).await.unwrap();
        cluster
            .wait_cluster_ok(Duration::from_secs(30))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn etcd_single_member_is_healthy_and_survives_restart() {
    bounded(async {
        let mut etcd = start_or_skip!(EtcdServer::start());
        assert!(etcd.is_healthy().await);
        assert_eq!(etcd.endpoints(), vec![etcd.url().to_owned()]);
        if etcd.is_external() {
            return;
        }
        etcd.kill().unwrap();
        assert!(!etcd.is_healthy().await);
        etcd.restart().await.unwrap();
        assert!(etcd.is_healthy().await);

        etcd.pause().unwrap();
        assert!(!etcd.is_healthy().await);
        etcd.resume().unwrap();
        etcd.wait_healthy(PROMPTLY).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn etcd_cluster_survives_the_loss_of_its_leader() {
    bounded(async {
        let mut cluster = start_or_skip!(EtcdCluster::start(3));
        assert_eq!(cluster.endpoints().len(), 3);
        for index in 0..3 {
            assert!(cluster.is_healthy(index).await.unwrap());
        }
        if cluster.is_external() {
            return;
        }
        let leader = cluster
            .wait_for_leader(Duration::from_secs(10))
            .await
            .unwrap();
        cluster.kill(leader).unwrap();
        assert!(!cluster.is_healthy(leader).await.unwrap());
        cluster.wait_healthy(Duration::from_secs(30)).await.unwrap();
        let new_leader = cluster
            .wait_for_leader(Duration::from_secs(30))
            .await
            .unwrap();
        assert_ne!(new_leader, leader);

        cluster.restart(leader).await.unwrap();
        cluster.wait_healthy(Duration::from_secs(30)).await.unwrap();
        assert!(matches!(
            cluster.kill(3),
            Err(HarnessError::NoSuchMember {
                index: 3,
                size: 3,
                ..
            })
        ));
    })
    .await;
}

#[tokio::test]
async fn postgres_provides_a_fresh_database_and_drops_it() {
    bounded(async {
        let postgres = start_or_skip!(PostgresServer::start());
        assert_eq!(postgres.psql("select 1").await.unwrap().trim(), "1");
        let current = postgres.psql("select current_database()").await.unwrap();
        assert_eq!(current.trim(), postgres.database());
        if !postgres.is_external() {
            return;
        }
        assert!(postgres.database().starts_with("dlock_test_"));
        postgres.psql("create table t (id int)").await.unwrap();
        let dropped_name = postgres.database().to_owned();
        drop(postgres);

        let witness = start_or_skip!(PostgresServer::start());
        let sql = format!("select count(*) from pg_database where datname = '{dropped_name}'");
        assert_eq!(witness.psql(&sql).await.unwrap().trim(), "0");
    })
    .await;
}

#[tokio::test]
async fn postgres_local_cluster_keeps_data_across_kill_and_restart() {
    bounded(async {
        let mut postgres = start_or_skip!(PostgresServer::start_local());
        assert!(!postgres.is_external());
        postgres
            .psql("create table fences (fence bigint); insert into fences values (7)")
            .await
            .unwrap();

        postgres.kill().unwrap();
        assert!(postgres.psql("select 1").await.is_err());
        postgres.restart().await.unwrap();
        assert_eq!(
            postgres
                .psql("select fence from fences")
                .await
                .unwrap()
                .trim(),
            "7"
        );

        postgres.pause().unwrap();
        let mut connection = TcpStream::connect(postgres.addr()).await.unwrap();
        // An SSLRequest: a running server answers with one byte at once.
        let ssl_request = [0, 0, 0, 8, 4, 210, 22, 47];
        connection.write_all(&ssl_request).await.unwrap();
        expect_silence(&mut connection).await;
        postgres.resume().unwrap();
        let mut answer = [0_u8; 1];
        tokio::time::timeout(PROMPTLY, connection.read_exact(&mut answer))
            .await
            .expect("the resumed server answers")
            .unwrap();
        assert!(answer == *b"N" || answer == *b"S", "{answer:?}");
    })
    .await;
}

#[tokio::test]
async fn unreachable_redis_url_is_unavailable() {
    // Exercises the error the tests above turn into skips, without touching
    // the environment: a command to a port nobody listens on.
    let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let error = redis_command(nobody, &["PING"]).await.unwrap_err();
    assert!(matches!(error, HarnessError::Io { .. }), "{error}");
}
