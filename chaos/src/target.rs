//! The store under test: its servers, the fault proxies in front of them,
//! and the faults the nemesis can do to them.

use std::path::Path;
use std::time::Duration;

use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
use conformance_tests::harness::{
    EtcdCluster, EtcdServer, MotoServer, PostgresServer, RedisCluster, RedisServer,
};
use rand::Rng;
use rand::rngs::StdRng;

use crate::LEASE;
use crate::clock::{nanos, now_ns};

/// The backends `dlock-chaos` knows, in the order it runs them.
pub(crate) const BACKENDS: [&str; 7] = [
    "sqlite",
    "postgres",
    "redis",
    "redis-cluster",
    "etcd",
    "etcd-cluster",
    "dynamodb",
];

/// The clock skew the DynamoDB run allows between its clients: they all
/// read one machine's clock.
pub(crate) const DYNAMODB_SKEW: Duration = Duration::from_millis(250);

enum Server {
    /// SQLite: a file, nothing to hurt but the workers.
    None,
    Postgres(PostgresServer),
    Redis(RedisServer),
    /// Three masters without replicas, reached directly: cluster clients
    /// follow the addresses the nodes announce, so no proxy sits between.
    RedisCluster(RedisCluster),
    Etcd(EtcdServer),
    /// Three members, each behind its own proxy.
    EtcdCluster(EtcdCluster),
    /// moto serving DynamoDB's protocol, behind a proxy. No restarts:
    /// moto keeps its tables in memory, DynamoDB does not lose data.
    Moto(MotoServer),
}

/// A running store to lock through.
pub(crate) struct Target {
    server: Server,
    proxies: Vec<FaultProxy>,
    /// The URL the workers open.
    pub(crate) url: String,
}

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

impl Target {
    /// Starts the servers of `backend`; SQLite's file goes in `dir`.
    pub(crate) async fn start(backend: &str, dir: &Path) -> Result<Target, String> {
        let target = match backend {
            "sqlite" => Target {
                server: Server::None,
                proxies: Vec::new(),
                url: format!("sqlite:{}", dir.join("locks.db").display()),
            },
            "postgres" => {
                let server = PostgresServer::start_local().await.map_err(text)?;
                let proxy = FaultProxy::start(server.addr()).await.map_err(text)?;
                let url = server.url_via(proxy.listen_addr());
                Target {
                    server: Server::Postgres(server),
                    proxies: vec![proxy],
                    url,
                }
            }
            "redis" => {
                let server = RedisServer::start().await.map_err(text)?;
                let proxy = FaultProxy::start(server.addr()).await.map_err(text)?;
                let url = server.url_via(proxy.listen_addr());
                Target {
                    server: Server::Redis(server),
                    proxies: vec![proxy],
                    url,
                }
            }
            "redis-cluster" => {
                let cluster = RedisCluster::start(3).await.map_err(text)?;
                let nodes: Vec<String> = (0..cluster.size())
                    .filter_map(|i| cluster.addr(i).ok())
                    .map(|addr| addr.to_string())
                    .collect();
                Target {
                    server: Server::RedisCluster(cluster),
                    proxies: Vec::new(),
                    url: format!("redis+cluster://{}", nodes.join(",")),
                }
            }
            "etcd" => {
                let server = EtcdServer::start().await.map_err(text)?;
                let proxy = FaultProxy::start(server.addr().map_err(text)?)
                    .await
                    .map_err(text)?;
                let url = format!("etcd://{}", proxy.listen_addr());
                Target {
                    server: Server::Etcd(server),
                    proxies: vec![proxy],
                    url,
                }
            }
            "etcd-cluster" => {
                let cluster = EtcdCluster::start(3).await.map_err(text)?;
                let mut proxies = Vec::new();
                for i in 0..cluster.size() {
                    proxies.push(
                        FaultProxy::start(cluster.addr(i).map_err(text)?)
                            .await
                            .map_err(text)?,
                    );
                }
                let endpoints: Vec<String> = proxies
                    .iter()
                    .map(|proxy| proxy.listen_addr().to_string())
                    .collect();
                Target {
                    server: Server::EtcdCluster(cluster),
                    proxies,
                    url: format!("etcd://{}", endpoints.join(",")),
                }
            }
            "dynamodb" => {
                let server = MotoServer::start().await.map_err(text)?;
                let proxy = FaultProxy::start(server.addr()).await.map_err(text)?;
                let endpoint = server.endpoint_via(proxy.listen_addr());
                // moto takes any key; a real table's would come from the
                // standard AWS chain.
                let url = format!(
                    "dynamodb://AKIDDLOCKCHAOS:chaos-secret@dlock_chaos?region=us-east-1&endpoint={endpoint}&create_table=true&max_clock_skew={}ms",
                    DYNAMODB_SKEW.as_millis()
                );
                Target {
                    server: Server::Moto(server),
                    proxies: vec![proxy],
                    url,
                }
            }
            other => {
                return Err(format!(
                    "unknown backend {other:?}; known: {}",
                    BACKENDS.join(", ")
                ));
            }
        };
        Ok(target)
    }

    /// The faults this target can suffer (besides the workers' own).
    pub(crate) fn fault_kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if !self.proxies.is_empty() {
            kinds.extend(["black-hole", "reset", "latency"]);
        }
        match self.server {
            Server::None => {}
            Server::Postgres(_) | Server::Redis(_) | Server::Etcd(_) => kinds.push("restart"),
            Server::RedisCluster(_) => kinds.extend(["restart-node", "pause-node"]),
            Server::EtcdCluster(_) => kinds.extend(["kill-leader", "kill-member", "pause-member"]),
            Server::Moto(_) => kinds.push("pause-server"),
        }
        kinds
    }

    /// Does fault `kind` and heals it. Returns the window in which the
    /// store may have ended granted locks behind their holders' backs (a
    /// Redis restart without persistence, a stalled etcd leader), during
    /// which every holder is excused from exclusion.
    pub(crate) async fn inject(
        &mut self,
        kind: &str,
        rng: &mut StdRng,
    ) -> Result<Option<(u64, u64)>, String> {
        let pause = |rng: &mut StdRng, from: u64, to: u64| {
            Duration::from_millis(rng.random_range(from..to))
        };
        match kind {
            "black-hole" | "reset" | "latency" => {
                let (mode, hold) = match kind {
                    "black-hole" => (FaultMode::BlackHole, pause(rng, 500, 4000)),
                    "reset" => (FaultMode::Reset, Duration::from_millis(200)),
                    _ => (
                        FaultMode::Latency(pause(rng, 50, 800)),
                        Duration::from_secs(2),
                    ),
                };
                // Every member at once: the client is cut from the store.
                for proxy in &self.proxies {
                    proxy.set_mode(mode);
                }
                tokio::time::sleep(hold).await;
                for proxy in &self.proxies {
                    proxy.set_mode(FaultMode::PassThrough);
                }
                Ok(None)
            }
            "restart" => {
                let from = now_ns();
                let down = pause(rng, 300, 1500);
                match &mut self.server {
                    Server::Postgres(server) => {
                        server.kill().map_err(text)?;
                        tokio::time::sleep(down).await;
                        server.restart().await.map_err(text)?;
                        Ok(None)
                    }
                    Server::Etcd(server) => {
                        server.kill().map_err(text)?;
                        tokio::time::sleep(down).await;
                        server.restart().await.map_err(text)?;
                        Ok(None)
                    }
                    Server::Redis(server) => {
                        server.kill().map_err(text)?;
                        tokio::time::sleep(down).await;
                        server.restart().await.map_err(text)?;
                        // Without persistence the restart lost every lock:
                        // holders learn it at their next renewal. Fencing is
                        // the defence, not exclusion.
                        Ok(Some((from, now_ns() + nanos(LEASE))))
                    }
                    _ => Err(format!("no {kind} for this backend")),
                }
            }
            "restart-node" | "pause-node" => {
                let Server::RedisCluster(cluster) = &mut self.server else {
                    return Err(format!("no {kind} for this backend"));
                };
                let node = rng.random_range(0..cluster.size());
                let from = now_ns();
                if kind == "pause-node" {
                    let hold = pause(rng, 500, 2500);
                    cluster.pause(node).map_err(text)?;
                    tokio::time::sleep(hold).await;
                    cluster.resume(node).map_err(text)?;
                    return Ok(None);
                }
                let down = pause(rng, 300, 1500);
                cluster.kill(node).map_err(text)?;
                tokio::time::sleep(down).await;
                cluster.restart(node).await.map_err(text)?;
                // The master's shard came back empty.
                Ok(Some((from, now_ns() + nanos(LEASE))))
            }
            "kill-leader" | "kill-member" | "pause-member" => {
                let Server::EtcdCluster(cluster) = &mut self.server else {
                    return Err(format!("no {kind} for this backend"));
                };
                let size = cluster.size();
                // A cluster that elects no leader in 10 s is hurt anyway:
                // then any member will do.
                let leader = cluster
                    .wait_for_leader(Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|_| rng.random_range(0..size));
                let member = match kind {
                    "kill-leader" => leader,
                    // A follower.
                    "kill-member" => (leader + rng.random_range(1..size)) % size,
                    _ => rng.random_range(0..size),
                };
                if kind == "pause-member" {
                    let hold = pause(rng, 500, 3000);
                    let from = now_ns();
                    cluster.pause(member).map_err(text)?;
                    tokio::time::sleep(hold).await;
                    cluster.resume(member).map_err(text)?;
                    // A stalled leader that resumes may still act as leader
                    // for a moment: it revokes leases whose keep-alives went
                    // to the new leader, and answers keep-alives it can no
                    // longer honour (etcd-io/etcd#15247, fixed upstream in
                    // 2024; Debian 12's etcd 3.4.23 has it). Locks can end
                    // early without their holders knowing: fencing is the
                    // defence, as after a Redis restart.
                    return Ok((member == leader).then(|| (from, now_ns() + nanos(LEASE))));
                }
                let down = pause(rng, 300, 1500);
                cluster.kill(member).map_err(text)?;
                tokio::time::sleep(down).await;
                cluster.restart(member).await.map_err(text)?;
                Ok(None)
            }
            "pause-server" => {
                let Server::Moto(server) = &mut self.server else {
                    return Err(format!("no {kind} for this backend"));
                };
                let hold = pause(rng, 300, 2500);
                server.pause().map_err(text)?;
                tokio::time::sleep(hold).await;
                server.resume().map_err(text)?;
                Ok(None)
            }
            other => Err(format!("unknown fault {other:?}")),
        }
    }
}
