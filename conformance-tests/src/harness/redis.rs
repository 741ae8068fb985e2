//! Throwaway `redis-server` instances: a single node and a cluster of masters.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tracing::debug;

use super::process::{ServerProcess, run_command, wait_until};
use super::{
    HarnessError, POLL_INTERVAL, SecretUrl, check_reachable, env_override, require_program,
    resolve_url, url_with_addr,
};

const SERVER: &str = "redis";
const CLUSTER: &str = "redis cluster";
const URL_VAR: &str = "DLOCK_TEST_REDIS_URL";
const CLUSTER_URLS_VAR: &str = "DLOCK_TEST_REDIS_CLUSTER_URLS";
const DEFAULT_PORT: u16 = 6379;
const INSTALL_HINT: &str = "the redis-server package";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Short enough that a killed or paused master is noticed within a test,
/// long enough not to flap on a busy two-core machine.
const CLUSTER_NODE_TIMEOUT_MS: u32 = 2_000;
/// `--cluster-port`, which lets the bus port be chosen freely, came in 7.0.
const MIN_CLUSTER_MAJOR_VERSION: u32 = 7;

/// A reply of the Redis protocol (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisReply {
    /// A status reply such as `OK` or `PONG`.
    Simple(String),
    /// An error reply, e.g. `ERR unknown command`.
    Error(String),
    /// An integer reply.
    Integer(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// The null bulk string or null array (a missing key).
    Nil,
    /// An array of replies.
    Array(Vec<RedisReply>),
}

impl RedisReply {
    /// The reply as text, for status and bulk-string replies.
    pub fn as_text(&self) -> Option<String> {
        match self {
            RedisReply::Simple(text) => Some(text.clone()),
            RedisReply::Bulk(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }
}

/// Sends one command on a fresh connection to the Redis server at `addr` and
/// returns its reply. Meant for test setup and checks, not for speed; it
/// does not authenticate.
///
/// # Errors
///
/// Returns [`HarnessError::Io`] if the connection fails or nothing complete
/// arrives within 5 seconds, and [`HarnessError::Protocol`] if the reply is
/// malformed. An error *reply* is not an error: it is
/// [`RedisReply::Error`].
pub async fn redis_command(addr: SocketAddr, args: &[&str]) -> Result<RedisReply, HarnessError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&encode_command(args)).await?;
        let mut received = Vec::new();
        let mut chunk = [0_u8; 4096];
        loop {
            match parse_reply(&received) {
                Ok(Some((reply, _used))) => return Ok(Ok(reply)),
                Ok(None) => {}
                Err(detail) => return Ok(Err(detail)),
            }
            let count = stream.read(&mut chunk).await?;
            if count == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before a complete reply",
                ));
            }
            received.extend_from_slice(&chunk[..count]);
        }
    };
    let command_name = args.first().copied().unwrap_or_default();
    match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
        Ok(Ok(Ok(reply))) => Ok(reply),
        Ok(Ok(Err(detail))) => Err(HarnessError::Protocol {
            server: SERVER,
            detail,
        }),
        Ok(Err(error)) => Err(HarnessError::io(
            SERVER,
            format!("sending {command_name} to {addr}"),
            error,
        )),
        Err(_elapsed) => Err(HarnessError::io(
            SERVER,
            format!("sending {command_name} to {addr}"),
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply within 5 s"),
        )),
    }
}

fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut encoded = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        encoded.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        encoded.extend_from_slice(arg.as_bytes());
        encoded.extend_from_slice(b"\r\n");
    }
    encoded
}

/// Parses one reply from the start of `input`: `Ok(None)` if more bytes are
/// needed, else the reply and how many bytes it took.
fn parse_reply(input: &[u8]) -> Result<Option<(RedisReply, usize)>, String> {
    let Some(line_end) = input.windows(2).position(|pair| pair == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = input[..line_end].split_first() else {
        return Err("empty reply line".to_owned());
    };
    let line = String::from_utf8_lossy(line).into_owned();
    let after_line = line_end + 2;
    let number = |line: &str| {
        line.parse::<i64>()
            .map_err(|_| format!("`{line}` is not a length or integer"))
    };
    match kind {
        b'+' => Ok(Some((RedisReply::Simple(line), after_line))),
        b'-' => Ok(Some((RedisReply::Error(line), after_line))),
        b':' => Ok(Some((RedisReply::Integer(number(&line)?), after_line))),
        b'$' => {
            let Ok(length) = usize::try_from(number(&line)?) else {
                return Ok(Some((RedisReply::Nil, after_line)));
            };
            let end = after_line + length;
            if input.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((
                RedisReply::Bulk(input[after_line..end].to_vec()),
                end + 2,
            )))
        }
        b'*' => {
            let Ok(count) = usize::try_from(number(&line)?) else {
                return Ok(Some((RedisReply::Nil, after_line)));
            };
            let mut items = Vec::with_capacity(count.min(1024));
            let mut used = after_line;
            for _ in 0..count {
                match parse_reply(&input[used..])? {
                    Some((item, item_length)) => {
                        items.push(item);
                        used += item_length;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((RedisReply::Array(items), used)))
        }
        other => Err(format!("unknown reply type byte {other:#04x}")),
    }
}

async fn answers_ping(addr: SocketAddr) -> bool {
    matches!(redis_command(addr, &["PING"]).await, Ok(RedisReply::Simple(pong)) if pong == "PONG")
}

/// Arguments every harness-started redis-server gets: no persistence at all,
/// so a restart comes back empty.
fn base_args(port: u16, dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--save",
        "",
        "--appendonly",
        "no",
        "--bind",
        "127.0.0.1",
        "--port",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(port.to_string().into());
    args.push("--dir".into());
    args.push(dir.as_os_str().to_owned());
    args
}

fn create_dir(server: &'static str, prefix: &str) -> Result<TempDir, HarnessError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|error| HarnessError::io(server, "creating a temporary directory", error))
}

fn local_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn pick_port(server: &'static str) -> Result<u16, HarnessError> {
    super::pick_free_port().map_err(|error| HarnessError::io(server, "picking a free port", error))
}

/// Where a Redis endpoint comes from.
#[derive(Debug)]
struct RedisNode {
    url: SecretUrl,
    addr: SocketAddr,
    /// `None` for a server provided by the environment.
    process: Option<ServerProcess>,
}

impl RedisNode {
    fn external(server: &'static str, url: &str) -> Result<Self, HarnessError> {
        Ok(RedisNode {
            url: SecretUrl(url.to_owned()),
            addr: resolve_url(server, url, DEFAULT_PORT)?,
            process: None,
        })
    }

    fn process(
        &mut self,
        server: &'static str,
        operation: &'static str,
    ) -> Result<&mut ServerProcess, HarnessError> {
        self.process
            .as_mut()
            .ok_or_else(|| HarnessError::unsupported(server, operation))
    }

    async fn restart(&mut self, server: &'static str) -> Result<(), HarnessError> {
        let addr = self.addr;
        let process = self.process(server, "restart")?;
        process.kill();
        process.spawn()?;
        wait_until(&mut [process], "PING to be answered", START_TIMEOUT, || {
            answers_ping(addr)
        })
        .await
    }
}

/// A single `redis-server` on a free loopback port, without persistence,
/// or the server named by `DLOCK_TEST_REDIS_URL`.
///
/// Dropping it kills the server and removes its directory.
#[derive(Debug)]
pub struct RedisServer {
    node: RedisNode,
    // Declared after `node` so the process is killed before its directory
    // is removed.
    _dir: Option<TempDir>,
}

impl RedisServer {
    /// Starts a server (or connects to `DLOCK_TEST_REDIS_URL`) and waits
    /// until it answers `PING`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unavailable`] if `redis-server` is not installed or the
    /// configured server is unreachable; [`HarnessError::StartFailed`], with
    /// the end of the server's log, if it does not come up.
    pub async fn start() -> Result<RedisServer, HarnessError> {
        if let Some(url) = env_override(URL_VAR) {
            let node = RedisNode::external(SERVER, &url)?;
            check_reachable(SERVER, node.addr, REACHABLE_TIMEOUT).await?;
            return Ok(RedisServer { node, _dir: None });
        }
        let program = require_program(SERVER, "redis-server", INSTALL_HINT)?;
        let dir = create_dir(SERVER, "dlock-redis-")?;
        let port = pick_port(SERVER)?;
        let mut process = ServerProcess::new(
            SERVER,
            program,
            base_args(port, dir.path()),
            dir.path(),
            dir.path().join("redis.log"),
        );
        process.spawn()?;
        let addr = local_addr(port);
        wait_until(
            &mut [&mut process],
            "PING to be answered",
            START_TIMEOUT,
            || answers_ping(addr),
        )
        .await?;
        debug!(%addr, "redis server ready");
        Ok(RedisServer {
            node: RedisNode {
                url: SecretUrl(format!("redis://{addr}")),
                addr,
                process: Some(process),
            },
            _dir: Some(dir),
        })
    }

    /// The URL clients connect with, `redis://127.0.0.1:PORT` for a server
    /// the harness started.
    pub fn url(&self) -> &str {
        self.node.url.as_str()
    }

    /// The server's socket address (to put a fault proxy in front of it).
    pub fn addr(&self) -> SocketAddr {
        self.node.addr
    }

    /// [`url`](Self::url) with host and port replaced by `addr`, e.g. a
    /// [`FaultProxy`](crate::fault_proxy::FaultProxy)'s listen address.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        url_with_addr(self.url(), addr)
    }

    /// Whether the server was provided by `DLOCK_TEST_REDIS_URL`.
    pub fn is_external(&self) -> bool {
        self.node.process.is_none()
    }

    /// Sends one command to the server; see [`redis_command`].
    ///
    /// # Errors
    ///
    /// As for [`redis_command`].
    pub async fn command(&self, args: &[&str]) -> Result<RedisReply, HarnessError> {
        redis_command(self.node.addr, args).await
    }

    /// Kills the server with `SIGKILL` and waits for it to exit. Its data is
    /// gone: nothing is persisted.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external server.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        self.node.process(SERVER, "kill")?.kill();
        Ok(())
    }

    /// Starts the server again on the same port and directory (killing it
    /// first if it is running) and waits until it answers `PING`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external server;
    /// [`HarnessError::StartFailed`] if it does not come back.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.node.restart(SERVER).await
    }

    /// Freezes the server with `SIGSTOP`: connections stay open, nothing is
    /// answered.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external or stopped server.
    pub fn pause(&mut self) -> Result<(), HarnessError> {
        self.node.process(SERVER, "pause")?.pause()
    }

    /// Continues a paused server with `SIGCONT`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external or stopped server.
    pub fn resume(&mut self) -> Result<(), HarnessError> {
        self.node.process(SERVER, "resume")?.resume()
    }
}

/// A Redis cluster of masters without replicas, each a `redis-server` on
/// free loopback ports, or the nodes named by
/// `DLOCK_TEST_REDIS_CLUSTER_URLS` (comma-separated).
///
/// Dropping it kills every node and removes their directories.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisNode>,
    // Declared after `nodes` so processes die before their directory goes.
    _dir: Option<TempDir>,
}

impl RedisCluster {
    /// Starts `masters` nodes with cluster mode on, joins them with
    /// `redis-cli --cluster create` (slots split evenly, no replicas) and
    /// waits until every node reports `cluster_state:ok`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::InvalidRequest`] for fewer than 3 masters (Redis
    /// refuses such clusters); [`HarnessError::Unavailable`] if
    /// `redis-server` 7+ or `redis-cli` is missing or a configured node is
    /// unreachable; [`HarnessError::StartFailed`] or
    /// [`HarnessError::CommandFailed`] if the cluster does not form.
    pub async fn start(masters: usize) -> Result<RedisCluster, HarnessError> {
        if let Some(urls) = env_override(CLUSTER_URLS_VAR) {
            let mut nodes = Vec::new();
            for url in urls.split(',').map(str::trim).filter(|url| !url.is_empty()) {
                let node = RedisNode::external(CLUSTER, url)?;
                check_reachable(CLUSTER, node.addr, REACHABLE_TIMEOUT).await?;
                nodes.push(node);
            }
            return Ok(RedisCluster { nodes, _dir: None });
        }
        if masters < 3 {
            return Err(HarnessError::InvalidRequest {
                server: CLUSTER,
                detail: format!("a cluster needs at least 3 masters, {masters} were asked for"),
            });
        }
        let server_program = require_program(CLUSTER, "redis-server", INSTALL_HINT)?;
        let cli_program = require_program(CLUSTER, "redis-cli", "the redis-tools package")?;
        check_cluster_support(&server_program).await?;

        let dir = create_dir(CLUSTER, "dlock-redis-cluster-")?;
        let mut nodes = Vec::with_capacity(masters);
        for index in 0..masters {
            let node_dir = dir.path().join(format!("node{index}"));
            std::fs::create_dir(&node_dir).map_err(|error| {
                HarnessError::io(CLUSTER, format!("creating {}", node_dir.display()), error)
            })?;
            let port = pick_port(CLUSTER)?;
            let bus_port = pick_port(CLUSTER)?;
            let mut args = base_args(port, &node_dir);
            args.extend(
                [
                    "--cluster-enabled".to_owned(),
                    "yes".to_owned(),
                    "--cluster-config-file".to_owned(),
                    "nodes.conf".to_owned(),
                    "--cluster-port".to_owned(),
                    bus_port.to_string(),
                    "--cluster-node-timeout".to_owned(),
                    CLUSTER_NODE_TIMEOUT_MS.to_string(),
                ]
                .map(OsString::from),
            );
            let mut process = ServerProcess::new(
                CLUSTER,
                server_program.clone(),
                args,
                &node_dir,
                node_dir.join("redis.log"),
            );
            process.spawn()?;
            let addr = local_addr(port);
            nodes.push(RedisNode {
                url: SecretUrl(format!("redis://{addr}")),
                addr,
                process: Some(process),
            });
        }
        let mut cluster = RedisCluster {
            nodes,
            _dir: Some(dir),
        };
        for node in &mut cluster.nodes {
            let addr = node.addr;
            let process = node.process(CLUSTER, "start")?;
            wait_until(&mut [process], "PING to be answered", START_TIMEOUT, || {
                answers_ping(addr)
            })
            .await?;
        }

        let mut create = Command::new(cli_program);
        create.args(["--cluster", "create"]);
        create.args(cluster.nodes.iter().map(|node| node.addr.to_string()));
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let output = run_command(CLUSTER, create, CLUSTER_TIMEOUT).await?;
        debug!(%output, "redis-cli --cluster create finished");

        cluster.wait_cluster_ok(CLUSTER_TIMEOUT).await?;
        debug!(urls = ?cluster.urls(), "redis cluster ready");
        Ok(cluster)
    }

    /// How many nodes the cluster has.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's URL (`redis://127.0.0.1:PORT`), in index order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| node.url.as_str().to_owned())
            .collect()
    }

    /// Node `index`'s socket address.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`] if `index` is out of range.
    pub fn addr(&self, index: usize) -> Result<SocketAddr, HarnessError> {
        self.nodes
            .get(index)
            .map(|node| node.addr)
            .ok_or_else(|| self.no_such_member(index))
    }

    /// Sends one command to node `index`; see [`redis_command`].
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`], or as for [`redis_command`].
    pub async fn command(&self, index: usize, args: &[&str]) -> Result<RedisReply, HarnessError> {
        redis_command(self.addr(index)?, args).await
    }

    /// Waits until every running node reports `cluster_state:ok` in
    /// `CLUSTER INFO`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Timeout`] if that does not happen within `timeout`.
    pub async fn wait_cluster_ok(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let started = Instant::now();
        loop {
            let mut all_ok = true;
            for node in &mut self.nodes {
                let running = node.process.as_mut().is_none_or(ServerProcess::is_running);
                if running && !reports_cluster_ok(node.addr).await {
                    all_ok = false;
                    break;
                }
            }
            if all_ok {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(HarnessError::Timeout {
                    server: CLUSTER,
                    what: "cluster_state:ok on every running node".to_owned(),
                    waited: timeout,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kills node `index` with `SIGKILL` and waits for it to exit.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`]; [`HarnessError::Unsupported`] for
    /// external nodes.
    pub fn kill(&mut self, index: usize) -> Result<(), HarnessError> {
        self.node(index)?.process(CLUSTER, "kill")?.kill();
        Ok(())
    }

    /// Starts node `index` again on the same ports and directory (killing it
    /// first if it is running) and waits until it answers `PING`. It rejoins
    /// the cluster from its `nodes.conf` but has lost its data; use
    /// [`wait_cluster_ok`](Self::wait_cluster_ok) to wait for the cluster.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`]; [`HarnessError::Unsupported`] for
    /// external nodes; [`HarnessError::StartFailed`].
    pub async fn restart(&mut self, index: usize) -> Result<(), HarnessError> {
        self.node(index)?.restart(CLUSTER).await
    }

    /// Freezes node `index` with `SIGSTOP`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`]; [`HarnessError::Unsupported`] for
    /// external or stopped nodes.
    pub fn pause(&mut self, index: usize) -> Result<(), HarnessError> {
        self.node(index)?.process(CLUSTER, "pause")?.pause()
    }

    /// Continues node `index` with `SIGCONT`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`]; [`HarnessError::Unsupported`] for
    /// external or stopped nodes.
    pub fn resume(&mut self, index: usize) -> Result<(), HarnessError> {
        self.node(index)?.process(CLUSTER, "resume")?.resume()
    }

    /// Whether the nodes were provided by `DLOCK_TEST_REDIS_CLUSTER_URLS`.
    pub fn is_external(&self) -> bool {
        self.nodes.iter().all(|node| node.process.is_none())
    }

    fn node(&mut self, index: usize) -> Result<&mut RedisNode, HarnessError> {
        let size = self.nodes.len();
        self.nodes.get_mut(index).ok_or(HarnessError::NoSuchMember {
            server: CLUSTER,
            index,
            size,
        })
    }

    fn no_such_member(&self, index: usize) -> HarnessError {
        HarnessError::NoSuchMember {
            server: CLUSTER,
            index,
            size: self.nodes.len(),
        }
    }
}

async fn reports_cluster_ok(addr: SocketAddr) -> bool {
    match redis_command(addr, &["CLUSTER", "INFO"]).await {
        Ok(reply) => reply
            .as_text()
            .is_some_and(|info| info.lines().any(|line| line.trim() == "cluster_state:ok")),
        Err(_) => false,
    }
}

/// Fails as `Unavailable` if the installed redis-server is too old for the
/// cluster harness.
async fn check_cluster_support(program: &Path) -> Result<(), HarnessError> {
    let mut version = Command::new(program);
    version.arg("--version");
    let output = run_command(CLUSTER, version, COMMAND_TIMEOUT).await?;
    // "Redis server v=7.0.15 sha=..."
    let major = output
        .split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .and_then(|version| version.split('.').next()?.parse::<u32>().ok());
    match major {
        Some(major) if major >= MIN_CLUSTER_MAJOR_VERSION => Ok(()),
        _ => Err(HarnessError::Unavailable {
            server: CLUSTER,
            reason: format!(
                "the cluster harness needs redis-server {MIN_CLUSTER_MAJOR_VERSION} or later, found `{}`",
                output.trim()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies() {
        assert_eq!(
            parse_reply(b"+PONG\r\n"),
            Ok(Some((RedisReply::Simple("PONG".into()), 7)))
        );
        assert_eq!(parse_reply(b"$5\r\nhel"), Ok(None));
        assert_eq!(
            parse_reply(b"$5\r\nhello\r\n"),
            Ok(Some((RedisReply::Bulk(b"hello".to_vec()), 11)))
        );
        assert_eq!(parse_reply(b"$-1\r\n"), Ok(Some((RedisReply::Nil, 5))));
        assert_eq!(
            parse_reply(b"*2\r\n:1\r\n-ERR x\r\n"),
            Ok(Some((
                RedisReply::Array(vec![
                    RedisReply::Integer(1),
                    RedisReply::Error("ERR x".into())
                ]),
                16
            )))
        );
        assert!(parse_reply(b"?\r\n").is_err());
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(
            encode_command(&["GET", "k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }
}
