//! A throwaway moto server (moto's server mode): an in-memory
//! emulation of AWS APIs, DynamoDB among them, for the DynamoDB store's
//! tests. moto is not DynamoDB (neither its speed nor every corner of its
//! behaviour), but it speaks DynamoDB's wire protocol and evaluates
//! condition and update expressions.
//!
//! `DLOCK_TEST_DYNAMODB_URL` names an endpoint that is already running
//! instead (`http://127.0.0.1:8000`: moto, DynamoDB Local, or anything that
//! speaks DynamoDB's protocol).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tracing::debug;

use super::process::{ServerProcess, run_command, wait_until};
use super::{
    HarnessError, SecretUrl, check_reachable, env_override, require_program, resolve_url,
    url_with_addr,
};

const SERVER: &str = "moto";
/// moto's server (`python3 -m moto.server`), with each request handled
/// under one lock. moto evaluates a condition and applies the write without
/// a lock of its own, so two concurrent conditional writes on one item can
/// both pass, where DynamoDB serializes the writes to an item. Bodies are
/// read before the lock is taken, so a client stalled mid-request (a fault
/// proxy's black hole) does not stall the others, and the lock is taken in
/// arrival order, so no request waits behind later ones. The list of moto's
/// service modules, which its dispatcher reads from the disk on every
/// request (a tenth of its time), is read once.
const SERVER_SCRIPT: &str = r#"
import collections, io, sys, threading
from werkzeug.serving import run_simple
from moto import backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

service_modules = tuple(backends.list_of_moto_modules())
backends.list_of_moto_modules = lambda: service_modules

moto_app = DomainDispatcherApplication(create_backend_app)

class FifoLock:
    """A lock handed to its waiters in arrival order (threading.Lock is not
    fair: a request could wait behind any number of later ones)."""

    def __init__(self):
        self._guard = threading.Lock()
        self._waiters = collections.deque()
        self._held = False

    def __enter__(self):
        with self._guard:
            if not self._held:
                self._held = True
                return
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()

    def __exit__(self, *exc):
        with self._guard:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False

one_at_a_time = FifoLock()

def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    with one_at_a_time:
        return list(moto_app(environ, start_response))

run_simple(sys.argv[1], int(sys.argv[2]), app, threaded=True)
"#;
const URL_VAR: &str = "DLOCK_TEST_DYNAMODB_URL";
const INSTALL_HINT: &str = "python3, then moto with its server extras: pip install 'moto[server]' (scripts/install-servers does both)";
const DEFAULT_PORT: u16 = 80;

/// A cold Python start that imports moto's services takes seconds on a
/// busy two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const IMPORT_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(3);

static MOTO: OnceCell<MotoServer> = OnceCell::const_new();

/// A moto server on a free loopback port, its working directory a
/// temporary one, or the endpoint named by `DLOCK_TEST_DYNAMODB_URL`.
///
/// Its data lives in memory: a restart (or a kill) forgets every table.
/// Dropping it kills the server and removes its directory.
#[derive(Debug)]
pub struct MotoServer {
    endpoint: SecretUrl,
    addr: SocketAddr,
    /// `None` for a server provided by the environment.
    process: Option<ServerProcess>,
    // Declared after `process` so the process is killed before its
    // directory is removed.
    _dir: Option<TempDir>,
}

impl MotoServer {
    /// Starts moto's server (or checks `DLOCK_TEST_DYNAMODB_URL`) and waits
    /// until it answers HTTP.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unavailable`] when python3 or moto with its server
    /// extras is not installed, or the configured endpoint is unreachable;
    /// [`HarnessError::StartFailed`], with the end of its log, when it does
    /// not come up.
    pub async fn start() -> Result<MotoServer, HarnessError> {
        if let Some(url) = env_override(URL_VAR) {
            let addr = resolve_url(SERVER, &url, DEFAULT_PORT)?;
            check_reachable(SERVER, addr, REACHABLE_TIMEOUT).await?;
            return Ok(MotoServer {
                endpoint: SecretUrl(url),
                addr,
                process: None,
                _dir: None,
            });
        }
        let python = require_program(SERVER, "python3", INSTALL_HINT)?;
        check_moto_installed(&python).await?;
        let dir = tempfile::Builder::new()
            .prefix("dlock-moto-")
            .tempdir()
            .map_err(|error| HarnessError::io(SERVER, "creating a temporary directory", error))?;
        let port = super::pick_free_port()
            .map_err(|error| HarnessError::io(SERVER, "picking a free port", error))?;
        let args: Vec<OsString> = vec![
            "-c".into(),
            SERVER_SCRIPT.into(),
            "127.0.0.1".into(),
            port.to_string().into(),
        ];
        let mut process = ServerProcess::new(
            SERVER,
            python,
            args,
            dir.path(),
            dir.path().join("moto.log"),
        )
        // No buffering, so the log tail of a failed start is complete.
        .with_environment(vec![("PYTHONUNBUFFERED".into(), "1".into())]);
        process.spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until(&mut [&mut process], "an HTTP answer", START_TIMEOUT, || {
            answers_http(addr)
        })
        .await?;
        debug!(%addr, "moto server ready");
        Ok(MotoServer {
            endpoint: SecretUrl(format!("http://{addr}")),
            addr,
            process: Some(process),
            _dir: Some(dir),
        })
    }

    /// The endpoint URL clients send DynamoDB requests to,
    /// `http://127.0.0.1:PORT` for a server the harness started.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// The server's socket address (to put a fault proxy in front of it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// [`endpoint`](Self::endpoint) with host and port replaced by `addr`,
    /// e.g. a [`FaultProxy`](crate::fault_proxy::FaultProxy)'s listen
    /// address.
    pub fn endpoint_via(&self, addr: SocketAddr) -> String {
        url_with_addr(self.endpoint(), addr)
    }

    /// Whether the server was provided by `DLOCK_TEST_DYNAMODB_URL`.
    pub fn is_external(&self) -> bool {
        self.process.is_none()
    }

    fn process(&mut self, operation: &'static str) -> Result<&mut ServerProcess, HarnessError> {
        self.process
            .as_mut()
            .ok_or_else(|| HarnessError::unsupported(SERVER, operation))
    }

    /// Kills the server with `SIGKILL` and waits for it to exit. Its data
    /// is gone.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external server.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        self.process("kill")?.kill();
        Ok(())
    }

    /// Starts the server again on the same port (killing it first if it
    /// runs) and waits until it answers; it comes back empty.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external server;
    /// [`HarnessError::StartFailed`] if it does not come back.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        let addr = self.addr;
        let process = self.process("restart")?;
        process.kill();
        process.spawn()?;
        wait_until(&mut [process], "an HTTP answer", START_TIMEOUT, || {
            answers_http(addr)
        })
        .await
    }

    /// Freezes the server with `SIGSTOP`: connections stay open, nothing is
    /// answered.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external or stopped server.
    pub fn pause(&mut self) -> Result<(), HarnessError> {
        self.process("pause")?.pause()
    }

    /// Continues a paused server with `SIGCONT`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] for an external or stopped server.
    pub fn resume(&mut self) -> Result<(), HarnessError> {
        self.process("resume")?.resume()
    }
}

/// The test binary's single moto server, started on first use and killed
/// when the test process exits.
///
/// # Errors
///
/// As [`MotoServer::start`]; a failed start is tried again by the next
/// caller.
pub async fn shared_moto() -> Result<&'static MotoServer, HarnessError> {
    MOTO.get_or_try_init(MotoServer::start).await
}

/// Fails as `Unavailable` when `python` cannot import moto's server and
/// its extras (flask, flask-cors).
async fn check_moto_installed(python: &std::path::Path) -> Result<(), HarnessError> {
    let mut command = Command::new(python);
    command.args(["-c", "import moto.server, flask, flask_cors"]);
    match run_command(SERVER, command, IMPORT_TIMEOUT).await {
        Ok(_) => Ok(()),
        Err(HarnessError::CommandFailed { output, .. }) => Err(HarnessError::Unavailable {
            server: SERVER,
            reason: format!(
                "{} cannot import moto's server (install {INSTALL_HINT}): {}",
                python.display(),
                output.lines().last().unwrap_or_default()
            ),
        }),
        Err(other) => Err(other),
    }
}

/// Whether something at `addr` answers a plain HTTP request.
async fn answers_http(addr: SocketAddr) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut start = [0_u8; 5];
        stream.read_exact(&mut start).await?;
        Ok::<bool, std::io::Error>(&start == b"HTTP/")
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, exchange).await,
        Ok(Ok(true))
    )
}
