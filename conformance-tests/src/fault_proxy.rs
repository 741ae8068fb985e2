//! An in-process TCP proxy that injects network faults between a client and
//! a server.
//!
//! [`FaultProxy`] listens on a free loopback port and forwards every
//! connection to a target address. Its [`FaultMode`] can be switched at any
//! time from any task; a switch affects connections that are already open
//! (pooled, long-lived clients) as well as new ones.
//!
//! Bytes that a mode holds back are not lost: the proxy stops reading them
//! (so TCP flow control pushes back on the sender) and delivers them, in
//! order, once a later mode lets that direction flow again. That is how TCP
//! behaves across a real partition that heals before a timeout.
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
//!
//! let proxy = FaultProxy::start(server).await?;
//! // Point the client under test at `proxy.listen_addr()` instead of `server`.
//! proxy.set_mode(FaultMode::BlackHole);
//! // ... the client's requests now hang ...
//! proxy.set_mode(FaultMode::PassThrough);
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, trace, warn};

/// Size of one read from either socket.
const CHUNK_SIZE: usize = 16 * 1024;

/// How many chunks a direction may hold back before the proxy stops reading
/// from the sender (bounds memory under latency or a cut).
const MAX_QUEUED_CHUNKS: usize = 64;

/// Pause after a failed `accept` (for example, out of file descriptors), so
/// that a persistent failure does not spin a core.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// What the proxy does to the traffic flowing through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultMode {
    /// Forward everything in both directions as it arrives.
    #[default]
    PassThrough,
    /// Accept connections and hold them open, but forward nothing in either
    /// direction, on new and existing connections alike. New connections are
    /// not even connected to the target until the mode changes.
    BlackHole,
    /// Reset (TCP RST) every existing connection at once, and every new one
    /// as soon as it is accepted.
    Reset,
    /// Deliver every chunk in each direction this long after it was read,
    /// preserving order. A request/response round trip takes at least twice
    /// this long.
    Latency(Duration),
    /// Hold bytes sent by the client; bytes from the server still flow.
    CutClientToServer,
    /// Hold bytes sent by the server; bytes from the client still flow.
    CutServerToClient,
}

impl FaultMode {
    /// Whether bytes travelling in `direction` are forwarded in this mode.
    fn lets_through(self, direction: Direction) -> bool {
        match self {
            FaultMode::PassThrough | FaultMode::Latency(_) => true,
            FaultMode::BlackHole | FaultMode::Reset => false,
            FaultMode::CutClientToServer => direction == Direction::ServerToClient,
            FaultMode::CutServerToClient => direction == Direction::ClientToServer,
        }
    }

    /// How long a chunk read now must wait before it is delivered.
    fn delay(self) -> Duration {
        match self {
            FaultMode::Latency(delay) => delay,
            _ => Duration::ZERO,
        }
    }
}

/// One of the two byte streams of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

/// Connection counters shared by the proxy handle and its tasks.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
}

/// Decrements the active-connection counter when a connection task ends,
/// however it ends (including cancellation on shutdown).
struct ActiveConnection(Arc<Counters>);

impl ActiveConnection {
    fn register(counters: &Arc<Counters>) -> Self {
        counters.active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection(Arc::clone(counters))
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP proxy on `127.0.0.1` whose [`FaultMode`] can be changed at run time.
///
/// All its tasks end and all its sockets close when it is dropped or
/// [`shut down`](FaultProxy::shutdown). It must be created inside a Tokio
/// runtime.
#[derive(Debug)]
pub struct FaultProxy {
    listen_addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<FaultMode>,
    stop: watch::Sender<bool>,
    counters: Arc<Counters>,
    accept_task: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy in [`FaultMode::PassThrough`] on a free port of
    /// `127.0.0.1`, forwarding to `target`.
    ///
    /// The target is only contacted when a client connects, so it need not
    /// be up yet.
    ///
    /// # Errors
    ///
    /// Returns the I/O error if the listening socket cannot be bound.
    pub async fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let listen_addr = listener.local_addr()?;
        let (mode, mode_watch) = watch::channel(FaultMode::PassThrough);
        let (stop, stop_watch) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let accept_task = tokio::spawn(accept_loop(
            listener,
            target,
            mode_watch,
            stop_watch,
            Arc::clone(&counters),
        ));
        debug!(%listen_addr, %target, "fault proxy started");
        Ok(FaultProxy {
            listen_addr,
            target,
            mode,
            stop,
            counters,
            accept_task: Some(accept_task),
        })
    }

    /// The address clients should connect to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The address every connection is forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Switches the proxy to `mode`. Existing connections follow the switch
    /// before they forward any byte read after this call returns.
    pub fn set_mode(&self, mode: FaultMode) {
        let previous = self.mode.send_replace(mode);
        debug!(listen_addr = %self.listen_addr, ?previous, ?mode, "fault proxy mode changed");
    }

    /// The current mode.
    pub fn mode(&self) -> FaultMode {
        *self.mode.borrow()
    }

    /// How many client connections the proxy has accepted since it started,
    /// including those it reset or black-holed.
    pub fn accepted_connections(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// How many client connections are open through the proxy right now.
    pub fn active_connections(&self) -> u64 {
        self.counters.active.load(Ordering::Relaxed)
    }

    /// Stops accepting, closes every proxied connection and waits until all
    /// of the proxy's tasks have ended.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(accept_task) = self.accept_task.take()
            && let Err(error) = accept_task.await
        {
            warn!(%error, "fault proxy accept task ended abnormally");
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        // Aborting drops the accept loop's JoinSet, which aborts every
        // connection task and so closes their sockets.
        if let Some(accept_task) = self.accept_task.take() {
            accept_task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<FaultMode>,
    mut stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    trace!(%peer, "fault proxy accepted a connection");
                    let active = ActiveConnection::register(&counters);
                    connections.spawn(serve_connection(client, target, mode.clone(), active));
                }
                Err(error) => {
                    warn!(%error, "fault proxy failed to accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reap finished connection tasks so the set does not grow
            // without bound on a long-running proxy.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
    debug!("fault proxy stopped");
}

/// Makes the kernel answer with RST instead of FIN when `stream` is closed.
fn arm_reset(stream: &TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        debug!(%error, "could not set SO_LINGER 0; the connection will close with FIN");
    }
}

async fn serve_connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<FaultMode>,
    _active: ActiveConnection,
) {
    // A black hole holds the client without contacting the target, so the
    // connection can still be used if the black hole ends.
    loop {
        let current = *mode.borrow_and_update();
        match current {
            FaultMode::Reset => {
                arm_reset(&client);
                return;
            }
            FaultMode::BlackHole => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            _ => break,
        }
    }

    let mut server = match TcpStream::connect(target).await {
        Ok(server) => server,
        Err(error) => {
            // Resetting tells the client the path is broken, as a real
            // proxy that cannot reach its backend would.
            debug!(%target, %error, "fault proxy could not reach its target");
            arm_reset(&client);
            return;
        }
    };
    // Small request/response messages must not be held back by Nagle's
    // algorithm, or latency measurements through the proxy would be skewed.
    for stream in [&client, &server] {
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "could not set TCP_NODELAY on a proxied socket");
        }
    }

    // Borrowed halves, not owned ones: dropping an owned write half sends
    // FIN, which would reach the peer ahead of the RST a reset must deliver.
    // The streams themselves are dropped (closed) when this task ends.
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let client_to_server = pump(
        Direction::ClientToServer,
        client_read,
        server_write,
        mode.clone(),
    );
    let server_to_client = pump(Direction::ServerToClient, server_read, client_write, mode);
    tokio::pin!(client_to_server, server_to_client);

    // A graceful end of one direction (a half-close) leaves the other running;
    // a reset of either ends the whole connection.
    tokio::select! {
        end = &mut client_to_server => {
            if end == PumpEnd::Finished {
                server_to_client.await;
            }
        }
        end = &mut server_to_client => {
            if end == PumpEnd::Finished {
                client_to_server.await;
            }
        }
    }
}

/// How one direction of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpEnd {
    /// The sender closed its side and every byte was delivered; the end of
    /// stream was forwarded.
    Finished,
    /// The connection must be torn down (reset mode, an I/O error, or the
    /// proxy is going away).
    Abort,
}

/// A chunk read from the sender and not yet fully written to the receiver.
struct PendingChunk {
    deliver_at: Instant,
    bytes: Vec<u8>,
    written: usize,
}

/// Moves bytes from `from` to `to`, obeying the current mode at every step.
async fn pump(
    direction: Direction,
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut mode: watch::Receiver<FaultMode>,
) -> PumpEnd {
    let mut buffer = vec![0_u8; CHUNK_SIZE];
    let mut pending: VecDeque<PendingChunk> = VecDeque::new();
    let mut sender_open = true;
    loop {
        if !sender_open && pending.is_empty() {
            // Forward the half-close only once everything before it is out.
            if let Err(error) = to.shutdown().await {
                trace!(?direction, %error, "forwarding end of stream failed");
                return PumpEnd::Abort;
            }
            return PumpEnd::Finished;
        }

        // Read the mode afresh each round, so nothing read after a switch is
        // forwarded under the previous mode.
        let current = *mode.borrow_and_update();
        if current == FaultMode::Reset {
            // Both sockets are reachable through the halves; arm both so
            // that client and server each see a reset when they are closed.
            arm_reset(from.as_ref());
            arm_reset(to.as_ref());
            return PumpEnd::Abort;
        }
        let flowing = current.lets_through(direction);
        let next_delivery = pending.front().map(|chunk| chunk.deliver_at);
        let now = Instant::now();
        let front_due = next_delivery.is_some_and(|at| at <= now);
        let can_read = flowing && sender_open && pending.len() < MAX_QUEUED_CHUNKS;

        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return PumpEnd::Abort;
                }
            }
            read = from.read(&mut buffer), if can_read => match read {
                Ok(0) => sender_open = false,
                Ok(count) => pending.push_back(PendingChunk {
                    deliver_at: Instant::now() + current.delay(),
                    bytes: buffer[..count].to_vec(),
                    written: 0,
                }),
                Err(error) => {
                    trace!(?direction, %error, "proxied read failed; resetting the connection");
                    arm_reset(to.as_ref());
                    return PumpEnd::Abort;
                }
            },
            () = sleep_until_some(next_delivery), if flowing && next_delivery.is_some() && !front_due => {}
            written = write_front(&mut to, &pending), if flowing && front_due => match written {
                Ok(count) => {
                    if let Some(front) = pending.front_mut() {
                        front.written += count;
                        if front.written >= front.bytes.len() {
                            pending.pop_front();
                        }
                    }
                }
                Err(error) => {
                    trace!(?direction, %error, "proxied write failed; resetting the connection");
                    arm_reset(from.as_ref());
                    return PumpEnd::Abort;
                }
            },
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// Writes (part of) the oldest pending chunk. A single `write` rather than
/// `write_all`, so a mode switch can interrupt a large chunk between writes
/// without losing track of what was sent.
async fn write_front(
    to: &mut WriteHalf<'_>,
    pending: &VecDeque<PendingChunk>,
) -> io::Result<usize> {
    let Some(front) = pending.front() else {
        return Ok(0);
    };
    let count = to.write(&front.bytes[front.written..]).await?;
    if count == 0 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the receiving socket accepted no bytes",
        ));
    }
    Ok(count)
}
