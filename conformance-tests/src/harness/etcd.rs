//! Throwaway `etcd` members: a single-member server and a multi-member
//! cluster, both run the same way (a server is a cluster of one).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

const SERVER: &str = "etcd";
const CLUSTER: &str = "etcd cluster";
const URL_VAR: &str = "DLOCK_TEST_ETCD_URL";
const CLUSTER_URLS_VAR: &str = "DLOCK_TEST_ETCD_CLUSTER_URLS";
const DEFAULT_PORT: u16 = 2379;
const INSTALL_HINT: &str = "the etcd-server package";
const ETCDCTL_INSTALL_HINT: &str = "the etcd-client package";

const START_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(3);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// One etcd member: its client endpoint and, when the harness started it,
/// its process.
#[derive(Debug)]
struct EtcdMember {
    url: SecretUrl,
    addr: SocketAddr,
    process: Option<ServerProcess>,
    /// How the member was bootstrapped, to restore a snapshot into it.
    bootstrap: Option<Bootstrap>,
}

/// A harness-started member's identity in its cluster.
#[derive(Debug, Clone)]
struct Bootstrap {
    name: String,
    data_dir: PathBuf,
    peer_url: String,
    initial_cluster: String,
    token: String,
}

impl EtcdMember {
    fn external(server: &'static str, url: &str) -> Result<Self, HarnessError> {
        Ok(EtcdMember {
            url: SecretUrl(url.to_owned()),
            addr: resolve_url(server, url, DEFAULT_PORT)?,
            process: None,
            bootstrap: None,
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

    fn is_running(&mut self) -> bool {
        self.process.as_mut().is_none_or(ServerProcess::is_running)
    }
}

/// The members of a cluster plus the directory holding their data.
#[derive(Debug)]
struct Members {
    server: &'static str,
    members: Vec<EtcdMember>,
    // Declared after `members` so processes die before their data goes.
    _dir: Option<TempDir>,
}

impl Members {
    async fn from_urls(server: &'static str, urls: &str) -> Result<Self, HarnessError> {
        let mut members = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|url| !url.is_empty()) {
            let member = EtcdMember::external(server, url)?;
            check_reachable(server, member.addr, REACHABLE_TIMEOUT).await?;
            members.push(member);
        }
        Ok(Members {
            server,
            members,
            _dir: None,
        })
    }

    async fn start(server: &'static str, size: usize) -> Result<Self, HarnessError> {
        if size == 0 {
            return Err(HarnessError::InvalidRequest {
                server,
                detail: "a cluster needs at least one member".to_owned(),
            });
        }
        let program = require_program(server, "etcd", INSTALL_HINT)?;
        let dir = tempfile::Builder::new()
            .prefix("dlock-etcd-")
            .tempdir()
            .map_err(|error| HarnessError::io(server, "creating a temporary directory", error))?;
        let ports = super::pick_free_ports(size * 2)
            .map_err(|error| HarnessError::io(server, "picking free ports", error))?;
        let (client_ports, peer_ports) = ports.split_at(size);
        let peer_url = |index: usize| format!("http://127.0.0.1:{}", peer_ports[index]);
        let initial_cluster = (0..size)
            .map(|index| format!("n{index}={}", peer_url(index)))
            .collect::<Vec<_>>()
            .join(",");
        // A token unique to this cluster keeps members of different test
        // clusters from ever talking to each other.
        let token = format!("dlock-test-{}-{}", std::process::id(), client_ports[0]);

        let mut members = Vec::with_capacity(size);
        for (index, &client_port) in client_ports.iter().enumerate() {
            let name = format!("n{index}");
            let client_url = format!("http://127.0.0.1:{client_port}");
            let data_dir = dir.path().join(format!("{name}.etcd"));
            let args: Vec<OsString> = [
                "--name".to_owned(),
                name.clone(),
                "--data-dir".to_owned(),
                data_dir.display().to_string(),
                "--listen-client-urls".to_owned(),
                client_url.clone(),
                "--advertise-client-urls".to_owned(),
                client_url.clone(),
                "--listen-peer-urls".to_owned(),
                peer_url(index),
                "--initial-advertise-peer-urls".to_owned(),
                peer_url(index),
                "--initial-cluster".to_owned(),
                initial_cluster.clone(),
                "--initial-cluster-state".to_owned(),
                "new".to_owned(),
                "--initial-cluster-token".to_owned(),
                token.clone(),
                "--logger".to_owned(),
                "zap".to_owned(),
            ]
            .map(OsString::from)
            .into();
            let mut process = ServerProcess::new(
                server,
                program.clone(),
                args,
                dir.path(),
                dir.path().join(format!("{name}.log")),
            );
            // Start every member before waiting for any: a member is only
            // healthy once a quorum is up.
            process.spawn()?;
            members.push(EtcdMember {
                url: SecretUrl(client_url),
                addr: SocketAddr::from(([127, 0, 0, 1], client_port)),
                process: Some(process),
                bootstrap: Some(Bootstrap {
                    name,
                    data_dir,
                    peer_url: peer_url(index),
                    initial_cluster: initial_cluster.clone(),
                    token: token.clone(),
                }),
            });
        }
        let mut started = Members {
            server,
            members,
            _dir: Some(dir),
        };
        for index in 0..size {
            started.wait_member_healthy(index, START_TIMEOUT).await?;
        }
        debug!(server, urls = ?started.urls(), "etcd ready");
        Ok(started)
    }

    fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| member.url.as_str().to_owned())
            .collect()
    }

    fn member(&mut self, index: usize) -> Result<&mut EtcdMember, HarnessError> {
        let size = self.members.len();
        self.members
            .get_mut(index)
            .ok_or(HarnessError::NoSuchMember {
                server: self.server,
                index,
                size,
            })
    }

    fn member_ref(&self, index: usize) -> Result<&EtcdMember, HarnessError> {
        self.members.get(index).ok_or(HarnessError::NoSuchMember {
            server: self.server,
            index,
            size: self.members.len(),
        })
    }

    /// Waits for member `index` to report healthy, failing early with its log
    /// if its process exits.
    async fn wait_member_healthy(
        &mut self,
        index: usize,
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        let server = self.server;
        let member = self.member(index)?;
        let addr = member.addr;
        match member.process.as_mut() {
            Some(process) => {
                wait_until(&mut [process], "/health to report true", timeout, || {
                    is_healthy(addr)
                })
                .await
            }
            None => wait_healthy_external(server, addr, timeout).await,
        }
    }

    async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let started = Instant::now();
        for index in 0..self.members.len() {
            if !self.member(index)?.is_running() {
                continue;
            }
            let remaining = timeout.saturating_sub(started.elapsed());
            self.wait_member_healthy(index, remaining).await?;
        }
        Ok(())
    }

    async fn restart(&mut self, index: usize) -> Result<(), HarnessError> {
        let server = self.server;
        let process = self.member(index)?.process(server, "restart")?;
        process.kill();
        process.spawn()?;
        self.wait_member_healthy(index, START_TIMEOUT).await
    }

    async fn leader_index(&mut self) -> Option<usize> {
        let mut own_ids = Vec::with_capacity(self.members.len());
        let mut leader_ids = Vec::new();
        for member in &mut self.members {
            if !member.is_running() {
                own_ids.push(None);
                continue;
            }
            match member_status(member.addr).await {
                Ok(status) => {
                    own_ids.push(Some(status.member_id));
                    leader_ids.push(status.leader_id);
                }
                // An unresponsive member (paused, or mid-election) simply
                // does not vote here.
                Err(error) => {
                    debug!(%error, addr = %member.addr, "etcd status failed");
                    own_ids.push(None);
                }
            }
        }
        own_ids
            .iter()
            .position(|own| own.is_some_and(|own| leader_ids.contains(&own)))
    }
}

async fn wait_healthy_external(
    server: &'static str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let started = Instant::now();
    while !is_healthy(addr).await {
        if started.elapsed() >= timeout {
            return Err(HarnessError::Timeout {
                server,
                what: format!("/health on {addr} to report true"),
                waited: timeout,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

/// Whether the member at `addr` answers `/health` with `"health":"true"`,
/// which etcd only does while the cluster has a leader and quorum.
async fn is_healthy(addr: SocketAddr) -> bool {
    match http_request(addr, "GET", "/health", None).await {
        Ok((200, body)) => body.replace(' ', "").contains(r#""health":"true""#),
        _ => false,
    }
}

/// What `/v3/maintenance/status` says about a member.
struct MemberStatus {
    member_id: u64,
    leader_id: u64,
}

async fn member_status(addr: SocketAddr) -> Result<MemberStatus, HarnessError> {
    let (status, body) = http_request(addr, "POST", "/v3/maintenance/status", Some("{}"))
        .await
        .map_err(|error| {
            HarnessError::io(SERVER, format!("asking {addr} for its status"), error)
        })?;
    let protocol = |detail: String| HarnessError::Protocol {
        server: SERVER,
        detail,
    };
    if status != 200 {
        return Err(protocol(format!(
            "status request answered {status}: {body}"
        )));
    }
    let member_id = json_number(&body, "member_id")
        .or_else(|| json_number(&body, "memberId"))
        .ok_or_else(|| protocol(format!("no member id in {body}")))?;
    let leader_id =
        json_number(&body, "leader").ok_or_else(|| protocol(format!("no leader in {body}")))?;
    Ok(MemberStatus {
        member_id,
        leader_id,
    })
}

/// The number under `"key":` in a flat JSON text; the gRPC gateway writes
/// 64-bit numbers as strings, so surrounding quotes are accepted. Enough for
/// the status reply without a JSON dependency.
fn json_number(json: &str, key: &str) -> Option<u64> {
    let quoted_key = format!("\"{key}\"");
    let after_key = &json[json.find(&quoted_key)? + quoted_key.len()..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start();
    let value = value.strip_prefix('"').unwrap_or(value);
    let digits_end = value
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(value.len());
    value[..digits_end].parse().ok()
}

/// A minimal HTTP/1.0 exchange (the server closes the connection after its
/// response, so the body is everything after the headers).
async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let body = json_body.unwrap_or_default();
        let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
        if json_body.is_some() {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_elapsed| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no HTTP response in time")
        })??;
    let malformed =
        || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(malformed)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_headers, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A single-member etcd on free loopback ports, or the server named by
/// `DLOCK_TEST_ETCD_URL`.
///
/// Dropping it kills the member and removes its data directory.
#[derive(Debug)]
pub struct EtcdServer {
    members: Members,
}

impl EtcdServer {
    /// Starts a member named `n0` (or connects to `DLOCK_TEST_ETCD_URL`) and
    /// waits until `/health` reports true.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unavailable`] if `etcd` is not installed or the
    /// configured server is unreachable; [`HarnessError::StartFailed`], with
    /// the end of its log, if it does not become healthy.
    pub async fn start() -> Result<EtcdServer, HarnessError> {
        let members = match env_override(URL_VAR) {
            Some(url) => Members::from_urls(SERVER, &url).await?,
            None => Members::start(SERVER, 1).await?,
        };
        Ok(EtcdServer { members })
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        self.members
            .members
            .first()
            .map_or("", |member| member.url.as_str())
    }

    /// The client URLs, for clients that take a list (one entry unless
    /// `DLOCK_TEST_ETCD_URL` listed several).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.urls()
    }

    /// The client socket address (to put a fault proxy in front of it).
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`] only if `DLOCK_TEST_ETCD_URL` named no
    /// endpoint at all.
    pub fn addr(&self) -> Result<SocketAddr, HarnessError> {
        self.members.member_ref(0).map(|member| member.addr)
    }

    /// [`url`](Self::url) with host and port replaced by `addr`, e.g. a
    /// [`FaultProxy`](crate::fault_proxy::FaultProxy)'s listen address.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        url_with_addr(self.url(), addr)
    }

    /// Whether the server was provided by `DLOCK_TEST_ETCD_URL`.
    pub fn is_external(&self) -> bool {
        self.members
            .members
            .iter()
            .all(|member| member.process.is_none())
    }

    /// Whether the server answers `/health` with true right now.
    pub async fn is_healthy(&self) -> bool {
        match self.addr() {
            Ok(addr) => is_healthy(addr).await,
            Err(_) => false,
        }
    }

    /// Waits until the server reports healthy.
    ///
    /// # Errors
    ///
    /// [`HarnessError::StartFailed`] or [`HarnessError::Timeout`] if it does
    /// not within `timeout`.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        self.members.wait_healthy(timeout).await
    }

    /// Kills the member with `SIGKILL` and waits for it to exit.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external server.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        self.members.member(0)?.process(SERVER, "kill")?.kill();
        Ok(())
    }

    /// Starts the member again on the same ports and data directory (killing
    /// it first if it is running; its data survives) and waits until it is
    /// healthy.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external server;
    /// [`HarnessError::StartFailed`] if it does not come back.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.members.restart(0).await
    }

    /// Saves a snapshot of the server's data to `path` (`etcdctl snapshot
    /// save`), as a backup would.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unavailable`] if `etcdctl` is not installed;
    /// [`HarnessError::CommandFailed`] if it fails.
    pub async fn save_snapshot(&self, path: &Path) -> Result<(), HarnessError> {
        let etcdctl = require_program(SERVER, "etcdctl", ETCDCTL_INSTALL_HINT)?;
        let mut command = Command::new(etcdctl);
        command
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.url())
            .args(["snapshot", "save"])
            .arg(path);
        run_command(SERVER, command, SNAPSHOT_TIMEOUT).await?;
        Ok(())
    }

    /// Replaces the server's data with `snapshot` the way an operator
    /// restores a backup: stops it, `etcdctl snapshot restore` into its data
    /// directory (same name, peer URL and cluster token), starts it and
    /// waits until it is healthy.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external server;
    /// [`HarnessError::Unavailable`] if `etcdctl` is not installed;
    /// [`HarnessError::CommandFailed`] if the restore fails;
    /// [`HarnessError::StartFailed`] if the server does not come back.
    pub async fn restore_snapshot(&mut self, snapshot: &Path) -> Result<(), HarnessError> {
        let etcdctl = require_program(SERVER, "etcdctl", ETCDCTL_INSTALL_HINT)?;
        let member = self.members.member(0)?;
        let bootstrap = member
            .bootstrap
            .clone()
            .ok_or_else(|| HarnessError::unsupported(SERVER, "restore a snapshot"))?;
        member.process(SERVER, "restore a snapshot")?.kill();
        std::fs::remove_dir_all(&bootstrap.data_dir).map_err(|error| {
            HarnessError::io(
                SERVER,
                format!("removing {}", bootstrap.data_dir.display()),
                error,
            )
        })?;
        let mut command = Command::new(etcdctl);
        command
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .arg("--data-dir")
            .arg(&bootstrap.data_dir)
            .args([
                "--name",
                &bootstrap.name,
                "--initial-cluster",
                &bootstrap.initial_cluster,
                "--initial-advertise-peer-urls",
                &bootstrap.peer_url,
                "--initial-cluster-token",
                &bootstrap.token,
            ]);
        run_command(SERVER, command, SNAPSHOT_TIMEOUT).await?;
        self.members.restart(0).await
    }

    /// Freezes the member with `SIGSTOP`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external or stopped server.
    pub fn pause(&mut self) -> Result<(), HarnessError> {
        self.members.member(0)?.process(SERVER, "pause")?.pause()
    }

    /// Continues a paused member with `SIGCONT`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external or stopped server.
    pub fn resume(&mut self) -> Result<(), HarnessError> {
        self.members.member(0)?.process(SERVER, "resume")?.resume()
    }
}

/// An etcd cluster of members `n0`, `n1`, ... on free loopback ports, or the
/// endpoints named by `DLOCK_TEST_ETCD_CLUSTER_URLS` (comma-separated).
///
/// Dropping it kills every member and removes their data.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Members,
}

impl EtcdCluster {
    /// Starts `size` members together and waits until every one reports
    /// healthy.
    ///
    /// # Errors
    ///
    /// [`HarnessError::InvalidRequest`] for `size == 0`;
    /// [`HarnessError::Unavailable`] if `etcd` is not installed or a
    /// configured endpoint is unreachable; [`HarnessError::StartFailed`],
    /// with the end of a member's log, if the cluster does not form.
    pub async fn start(size: usize) -> Result<EtcdCluster, HarnessError> {
        let members = match env_override(CLUSTER_URLS_VAR) {
            Some(urls) => Members::from_urls(CLUSTER, &urls).await?,
            None => Members::start(CLUSTER, size).await?,
        };
        Ok(EtcdCluster { members })
    }

    /// How many members the cluster has.
    pub fn size(&self) -> usize {
        self.members.members.len()
    }

    /// Every member's client URL (`http://127.0.0.1:PORT`), in index order,
    /// whether or not it is running.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.urls()
    }

    /// Member `index`'s client socket address.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`] if `index` is out of range.
    pub fn addr(&self, index: usize) -> Result<SocketAddr, HarnessError> {
        self.members.member_ref(index).map(|member| member.addr)
    }

    /// Whether member `index` answers `/health` with true right now.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`] if `index` is out of range.
    pub async fn is_healthy(&self, index: usize) -> Result<bool, HarnessError> {
        Ok(is_healthy(self.addr(index)?).await)
    }

    /// Waits until every running member reports healthy (killed members are
    /// skipped; a paused one times out).
    ///
    /// # Errors
    ///
    /// [`HarnessError::StartFailed`] or [`HarnessError::Timeout`] if they do
    /// not within `timeout`.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        self.members.wait_healthy(timeout).await
    }

    /// The index of the current leader, as reported by the running members
    /// through `/v3/maintenance/status`, or `None` while there is none
    /// (an election is under way, or the leader is not among the members the
    /// harness can reach).
    pub async fn leader_index(&mut self) -> Option<usize> {
        self.members.leader_index().await
    }

    /// Waits until the running members agree on a leader and returns its
    /// index.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Timeout`] if there is none within `timeout`.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> Result<usize, HarnessError> {
        let started = Instant::now();
        loop {
            if let Some(index) = self.members.leader_index().await {
                return Ok(index);
            }
            if started.elapsed() >= timeout {
                return Err(HarnessError::Timeout {
                    server: CLUSTER,
                    what: "a leader".to_owned(),
                    waited: timeout,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kills member `index` with `SIGKILL` and waits for it to exit.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`]; [`HarnessError::Unsupported`] for
    /// external members.
    pub fn kill(&mut self, index: usize) -> Result<(), HarnessError> {
        self.members.member(index)?.process(CLUSTER, "kill")?.kill();
        Ok(())
    }

    /// Starts member `index` again on the same ports and data directory
    /// (killing it first if it is running) and waits until it is healthy.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`]; [`HarnessError::Unsupported`] for
    /// external members; [`HarnessError::StartFailed`].
    pub async fn restart(&mut self, index: usize) -> Result<(), HarnessError> {
        self.members.restart(index).await
    }

    /// Freezes member `index` with `SIGSTOP`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`]; [`HarnessError::Unsupported`] for
    /// external or stopped members.
    pub fn pause(&mut self, index: usize) -> Result<(), HarnessError> {
        self.members
            .member(index)?
            .process(CLUSTER, "pause")?
            .pause()
    }

    /// Continues member `index` with `SIGCONT`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NoSuchMember`]; [`HarnessError::Unsupported`] for
    /// external or stopped members.
    pub fn resume(&mut self, index: usize) -> Result<(), HarnessError> {
        self.members
            .member(index)?
            .process(CLUSTER, "resume")?
            .resume()
    }

    /// Whether the members were provided by `DLOCK_TEST_ETCD_CLUSTER_URLS`.
    pub fn is_external(&self) -> bool {
        self.members
            .members
            .iter()
            .all(|member| member.process.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_quoted_or_not() {
        let status = r#"{"header":{"cluster_id":"1","member_id":"987","revision":"5"},"leader":"987","raftIndex":"9"}"#;
        assert_eq!(json_number(status, "member_id"), Some(987));
        assert_eq!(json_number(status, "leader"), Some(987));
        assert_eq!(json_number(r#"{"leader": 12}"#, "leader"), Some(12));
        assert_eq!(json_number(status, "absent"), None);
    }
}
