//! Serving HTTP/1.1 on the agent's listeners (admin, local API socket,
//! local API TCP) so that no local user can exhaust the agent: every
//! listener has a cap on open connections, a header-read deadline (which
//! is also the idle deadline between requests on a kept-alive
//! connection), a cap on header bytes and a bound on a connection's life.
//!
//! Over the cap a new connection is never queued: the oldest connection
//! that has not sent a whole request head yet (a slow or silent client) is
//! closed to make room (a new connection whose request head is not there
//! yet replaces only one that has had [`EVICTABLE_AFTER`]), and otherwise
//! the new one is closed at once (or, when its head may be on its way, after
//! at most [`PROBATION`], [`PROBATION_SLOTS`] at a time). A connection whose whole request head is
//! already there when it is accepted counts as busy from the start, so a
//! client that sends its request at once is served even while others
//! open and hold half-sent requests as fast as they can.
//!
//! The file-descriptor budget ([`open_files_budget`]): the agent raises its
//! soft `RLIMIT_NOFILE` to the hard limit at start ([`raise_open_files_limit`]),
//! keeps [`RESERVED_FILES`] for its own work (etcd, health checks, config,
//! plugin and cache reads, watches) and splits the rest between its three
//! listeners, at most [`MAX_CONNECTIONS`] each.
//!
//! Each server is one accept task on the caller's tracker plus one task per
//! connection on the same tracker; cancelling the server's token stops the
//! accept loop at once and gives each connection [`STOP_GRACE`] to finish;
//! a connection accepted but not yet read first gets [`FIRST_REQUEST_GRACE`]
//! to start its request, so no caller this process accepted (as on an
//! upgrade, when the next process takes the listener) goes unanswered.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

/// Open files kept for the agent's own work, whatever its listeners hold.
pub const RESERVED_FILES: u64 = 512;
/// Open connections per listener, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// Open connections per listener, at least (even with a tiny limit).
const MIN_CONNECTIONS: usize = 4;
/// Listeners sharing what the reserve leaves.
const LISTENERS: u64 = 3;
/// How long a client has to send a whole request head, counted from the
/// connection's start or the end of its previous answer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Request head (request line and headers) bytes, at most.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Headers per request, at most.
const MAX_HEADERS: usize = 64;
/// A connection's life, at most: then it is asked to close after the
/// request in flight, and closed [`STOP_GRACE`] later (a request body sent
/// a byte at a time ends there). The slowest answer (a `/status` or API
/// call waiting 2 × 5 s for the supervisor) fits well within it.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30);
/// How long a connection may finish its request once asked to close.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a connection that has not started a request yet is given, when
/// its server stops, to start one (a client that connected a moment
/// before the stop has its request on the way): it is answered, then the
/// connection closes.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(250);
/// How long a connection without a whole request head is safe from being
/// closed to make room for another such connection.
pub const EVICTABLE_AFTER: Duration = Duration::from_secs(1);
/// How long a new connection over the cap may take to show a whole
/// request head (a client whose request is on its way), and how many may
/// wait so at once per listener (more are closed at once).
pub const PROBATION: Duration = Duration::from_millis(100);
pub const PROBATION_SLOTS: usize = 16;
const PROBATION_STEP: Duration = Duration::from_millis(5);
/// How often a listener says it is full or cannot accept, at most.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors: let some close).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// A listener the server accepts connections from. The accept loop takes
/// connections as bare descriptors (`accept4`), asks who opened them, and
/// hands only the ones it serves to the runtime: one it closes at once
/// costs three system calls, never a registration with the reactor.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send + 'static;
    /// The listening socket, for the accept loop to own.
    fn into_fd(self) -> std::io::Result<OwnedFd>;
    /// The backlog to listen with, if not the one it was bound with.
    const BACKLOG: Option<i32> = None;
    /// The user id of the process that opened the connection `fd`, when
    /// the listener can tell.
    fn peer_uid(fd: &OwnedFd) -> Option<u32>;
    /// The connection `fd` (non-blocking), for the runtime to serve.
    fn io(fd: OwnedFd) -> std::io::Result<Self::Io>;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    fn into_fd(self) -> std::io::Result<OwnedFd> {
        Ok(self.into_std()?.into())
    }
    /// Looked up in the kernel's socket table ([`peer`]): known for a
    /// peer on this node.
    fn peer_uid(fd: &OwnedFd) -> Option<u32> {
        peer::tcp_peer_uid(fd)
    }
    fn io(fd: OwnedFd) -> std::io::Result<Self::Io> {
        tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    /// Short, so a client waits behind few connections another user
    /// queued (each is closed in microseconds, but a flood queues
    /// thousands with the kernel's default of 4,096); a connect that finds
    /// it full waits in the kernel (a blocking one, as the command line's)
    /// or fails with `EAGAIN` (a non-blocking one) until the agent takes
    /// one.
    const BACKLOG: Option<i32> = Some(SOCKET_BACKLOG);
    fn into_fd(self) -> std::io::Result<OwnedFd> {
        Ok(self.into_std()?.into())
    }
    /// `SO_PEERCRED`: the user of the process that connected.
    fn peer_uid(fd: &OwnedFd) -> Option<u32> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt into a local struct of the length given.
        let done = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        (done == 0).then_some(cred.uid)
    }
    fn io(fd: OwnedFd) -> std::io::Result<Self::Io> {
        tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))
    }
}

/// The API socket's backlog (see [`Accept::BACKLOG`]).
pub const SOCKET_BACKLOG: i32 = 128;

/// Connections the accept loop takes in one go when it closes each at
/// once (a user over its share), before it looks at anything else.
const ACCEPT_BATCH: usize = 1024;

/// A connection queued on `listener` now, non-blocking and close-on-exec
/// (`None`: none, or an error the next [`accept_fd`] meets again).
fn try_accept(listener: &OwnedFd) -> Option<OwnedFd> {
    // SAFETY: as in `accept_fd`.
    let raw = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    // SAFETY: a new descriptor no one else owns.
    (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The next connection on `listener`, non-blocking and close-on-exec.
async fn accept_fd(listener: &AsyncFd<OwnedFd>) -> std::io::Result<OwnedFd> {
    loop {
        let mut ready = listener.readable().await?;
        let accepted = ready.try_io(|fd| {
            // SAFETY: accept4 on our listening descriptor, no address
            // asked; a descriptor it returns is ours to own.
            let raw = unsafe {
                libc::accept4(
                    fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if raw < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                // SAFETY: a new descriptor no one else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(raw) })
            }
        });
        if let Ok(result) = accepted {
            return result;
        }
    }
}

/// Raises the soft open-files limit to the hard one; returns the soft
/// limit in force afterwards. Called once, at the start of `run`.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a
    // local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Ok(limit.rlim_cur)
}

/// The soft open-files limit now (`u64::MAX` when unlimited or unknown).
fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid resource and a pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return u64::MAX;
    }
    limit.rlim_cur
}

/// Open connections per listener for an open-files limit of `limit`:
/// what is left after [`RESERVED_FILES`], split between the listeners,
/// within [`MIN_CONNECTIONS`]..=[`MAX_CONNECTIONS`].
pub fn open_files_budget(limit: u64) -> usize {
    let share =
        (limit.saturating_sub(RESERVED_FILES) / LISTENERS).saturating_sub(PROBATION_SLOTS as u64);
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_age: Duration,
}

impl Limits {
    /// The agent's bounds, the connection cap from the open-files limit in
    /// force now.
    pub fn for_agent() -> Limits {
        Limits {
            max_connections: open_files_budget(open_files_limit()),
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_header_bytes: MAX_HEADER_BYTES,
            max_age: MAX_CONNECTION_AGE,
        }
    }
}

/// Who opened a connection, as far as the listener can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// Root or the agent's own user: may take any slot, including the
    /// [`reserved_slots`] no one else may.
    Trusted,
    /// Another local user: at most [`user_share`] connections.
    User(u32),
    /// Not known (a TCP peer the listener cannot map to a user).
    Unknown,
}

impl Peer {
    fn of(uid: Option<u32>, own: u32) -> Peer {
        match uid {
            Some(uid) if uid == 0 || uid == own => Peer::Trusted,
            Some(uid) => Peer::User(uid),
            None => Peer::Unknown,
        }
    }
}

/// How many connections of a listener capped at `cap` one local user other
/// than root and the agent's own may hold: a quarter.
pub fn user_share(cap: usize) -> usize {
    (cap / 4).max(1)
}

/// How many connections of a listener capped at `cap` only root and the
/// agent's own user may take: a quarter (so a flood from any number of
/// other users never leaves the operator's command line without a slot).
pub fn reserved_slots(cap: usize) -> usize {
    (cap / 4).max(1)
}

/// Why a listener closed a connection it accepted before serving it: the
/// `reason` label of `ygg_agent_listener_connections_closed_total`.
pub const CLOSED_REASONS: [&str; 4] = ["user_share", "full", "probation", "evicted"];
/// The `listener` labels of the same metric.
pub const LISTENER_LABELS: [&str; 3] = ["admin", "api_socket", "api_tcp"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ClosedLabel {
    pub listener: &'static str,
    pub reason: &'static str,
}

/// Connections the listeners closed before serving them, by listener and
/// reason (one family for the process; [`crate::metrics::Metrics`]
/// registers it).
pub fn closed_connections() -> &'static Family<ClosedLabel, Counter> {
    static CLOSED: std::sync::OnceLock<Family<ClosedLabel, Counter>> = std::sync::OnceLock::new();
    CLOSED.get_or_init(|| {
        let family = Family::default();
        for listener in LISTENER_LABELS {
            for reason in CLOSED_REASONS {
                let _ = family.get_or_create(&ClosedLabel { listener, reason });
            }
        }
        family
    })
}

/// The metric label of the listener named `name` in log lines.
fn listener_label(name: &'static str) -> &'static str {
    match name {
        "local API (socket)" => "api_socket",
        "local API (TCP)" => "api_tcp",
        other => other,
    }
}

/// One open connection, as the accept loop sees it.
struct Open {
    opened: Instant,
    peer: Peer,
    /// Requests being answered on it now (0: still reading a head, or idle
    /// between requests: the connection may be closed to make room).
    busy: Arc<AtomicUsize>,
    /// Cancelled to close it now.
    close: CancellationToken,
    /// Cancelled by its task when it ends.
    ended: CancellationToken,
}

impl Open {
    fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }
}

/// What the accept loop does with a new connection.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Serve it (after closing the open connection at this index, if any).
    Serve(Option<usize>),
    /// Give it [`PROBATION`] to show its request head.
    Probation,
    /// Close it at once, for this reason (one of [`CLOSED_REASONS`]).
    Close(&'static str),
}

/// Whether `peer` is another user already holding its [`user_share`] of
/// `open` under a cap of `cap`: its new connection is closed at once.
fn over_share(open: &[Open], peer: Peer, cap: usize) -> bool {
    matches!(peer, Peer::User(_))
        && open.iter().filter(|c| c.peer == peer).count() >= user_share(cap)
}

/// Where a new connection from `peer` (within its share: [`over_share`])
/// goes among `open` (ended ones already left out) under a cap of `cap`;
/// `primed`: its whole request head is already there; `probation_free`: a
/// probation slot is free.
///
/// Other users
/// (and unknown peers) together never hold the [`reserved_slots`]; at
/// their limit, the oldest idle connection that is not root's or the
/// agent's user's makes room (one that had [`EVICTABLE_AFTER`], unless the
/// new one is primed). Root and the agent's user may take any slot; a full
/// listener closes an idle connection of another user for them at once,
/// else the oldest idle one as for others.
fn admit(
    open: &[Open],
    peer: Peer,
    primed: bool,
    cap: usize,
    probation_free: bool,
    now: Instant,
) -> Admit {
    let others = open.iter().filter(|c| c.peer != Peer::Trusted).count();
    let evictable =
        |c: &Open| c.idle() && (primed || now.duration_since(c.opened) >= EVICTABLE_AFTER);
    let victim = if peer == Peer::Trusted {
        if open.len() < cap {
            return Admit::Serve(None);
        }
        open.iter()
            .position(|c| c.peer != Peer::Trusted && c.idle())
            .or_else(|| open.iter().position(evictable))
    } else {
        if others < cap.saturating_sub(reserved_slots(cap)) && open.len() < cap {
            return Admit::Serve(None);
        }
        open.iter()
            .position(|c| c.peer != Peer::Trusted && evictable(c))
    };
    match victim {
        Some(index) => Admit::Serve(Some(index)),
        None if !primed && probation_free => Admit::Probation,
        None => Admit::Close("full"),
    }
}

/// Serves `router` on `listener` under `limits` until `stop` is cancelled;
/// `name` names the listener in log lines. Connections run on `tracker`.
pub async fn serve<L: Accept>(
    listener: L,
    router: Router,
    limits: Limits,
    name: &'static str,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(MAX_HEADERS);
    let builder = Arc::new(builder);
    let listener = match listener.into_fd().and_then(|fd| {
        if let Some(backlog) = L::BACKLOG {
            // SAFETY: listen(2) again on a listening socket only sets its
            // backlog.
            if unsafe { libc::listen(fd.as_raw_fd(), backlog) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: an OwnedFd: open, the same description as long as the
        // AsyncFd owns it.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)
    }) {
        Ok(listener) => listener,
        Err(error) => {
            error!(listener = name, %error, "cannot serve the listener");
            return;
        }
    };
    let own = crate::socket_dir::euid();
    let label = listener_label(name);
    let closed = |reason: &'static str| {
        closed_connections()
            .get_or_create(&ClosedLabel {
                listener: label,
                reason,
            })
            .inc();
    };
    // A connection of a user over its share, closed: counted, and logged
    // at most every `Throttled` period.
    let shed = |uid, shared_out: &mut Throttled| {
        closed("user_share");
        if let Some(more) = shared_out.due() {
            warn!(
                listener = name,
                uid,
                share = user_share(limits.max_connections),
                more,
                "a user holds its whole share of connections; closing its new ones"
            );
        }
    };
    let mut open: Vec<Open> = Vec::with_capacity(limits.max_connections);
    // New connections over the cap, given `PROBATION` to show a whole
    // request head: (the connection, its peer, whether it did).
    let mut probation: futures_util::stream::FuturesUnordered<
        futures_util::future::BoxFuture<'static, (OwnedFd, Peer, bool)>,
    > = Default::default();
    let mut full = Throttled::new();
    let mut failing = Throttled::new();
    let mut shared_out = Throttled::new();
    loop {
        let (io, peer, probed) = tokio::select! {
            _ = stop.cancelled() => return,
            Some((io, peer, primed)) = probation.next(), if !probation.is_empty() => {
                if !primed {
                    closed("probation");
                    continue;
                }
                (io, peer, true)
            }
            accepted = accept_fd(&listener) => match accepted {
                Ok(fd) => {
                    // Drained in one go: the connections of a user over
                    // its share are closed here, up to `ACCEPT_BATCH`, so
                    // the backlog empties before anything else runs and a
                    // trusted client's connect finds room.
                    open.retain(|c| !c.ended.is_cancelled());
                    let mut next = Some(fd);
                    let mut taken = 0;
                    let mut kept = None;
                    while let Some(fd) = next.take() {
                        let peer = Peer::of(L::peer_uid(&fd), own);
                        if let Peer::User(uid) = peer
                            && over_share(&open, peer, limits.max_connections)
                        {
                            shed(uid, &mut shared_out);
                            drop(fd);
                            taken += 1;
                            if taken < ACCEPT_BATCH {
                                next = try_accept(listener.get_ref());
                            }
                        } else {
                            kept = Some((fd, peer));
                        }
                    }
                    match kept {
                        Some((fd, peer)) => (fd, peer, false),
                        None => continue,
                    }
                }
                Err(error) => {
                    if let Some(more) = failing.due() {
                        warn!(listener = name, %error, more, "cannot accept a connection; trying again");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            },
        };
        open.retain(|c| !c.ended.is_cancelled());
        // Over one user's share: closed before anything else is looked at.
        if let Peer::User(uid) = peer
            && over_share(&open, peer, limits.max_connections)
        {
            shed(uid, &mut shared_out);
            drop(io);
            continue;
        }
        // Busy from the start when its request head is already there: it
        // is served next, and may take the place of an idle connection.
        let primed = probed || has_request_head(io.as_raw_fd());
        let probation_free = probation.len() < PROBATION_SLOTS;
        match admit(
            &open,
            peer,
            primed,
            limits.max_connections,
            probation_free,
            Instant::now(),
        ) {
            Admit::Serve(None) => {}
            Admit::Serve(Some(victim)) => {
                open.remove(victim).close.cancel();
                closed("evicted");
                if let Some(more) = full.due() {
                    warn!(
                        listener = name,
                        connections = open.len() + 1,
                        more,
                        "connection limit reached; closing the oldest that has not sent a whole request"
                    );
                }
            }
            Admit::Probation => {
                // Perhaps a client whose request is on its way.
                probation.push(Box::pin(probe(io, peer)));
                continue;
            }
            Admit::Close(reason) => {
                closed(reason);
                if let Some(more) = full.due() {
                    warn!(
                        listener = name,
                        connections = open.len(),
                        more,
                        "connection limit reached; closing new connections until one frees"
                    );
                }
                drop(io);
                continue;
            }
        }
        let connection = Open {
            opened: Instant::now(),
            peer,
            busy: Arc::new(AtomicUsize::new(usize::from(primed))),
            close: CancellationToken::new(),
            ended: CancellationToken::new(),
        };
        let io = match L::io(io) {
            Ok(io) => io,
            Err(error) => {
                if let Some(more) = failing.due() {
                    warn!(listener = name, %error, more, "cannot serve an accepted connection");
                }
                continue;
            }
        };
        tracker.spawn(run_connection(
            io,
            router.clone(),
            builder.clone(),
            limits.max_age,
            connection.busy.clone(),
            primed,
            connection.close.clone(),
            stop.clone(),
            connection.ended.clone(),
        ));
        open.push(connection);
    }
}

/// `io` and whether it holds a whole request head within `PROBATION`
/// (looked at every `PROBATION_STEP`).
async fn probe<I: AsRawFd>(io: I, peer: Peer) -> (I, Peer, bool) {
    let deadline = Instant::now() + PROBATION;
    loop {
        if has_request_head(io.as_raw_fd()) {
            return (io, peer, true);
        }
        if Instant::now() >= deadline {
            return (io, peer, false);
        }
        tokio::time::sleep(PROBATION_STEP).await;
    }
}

/// Whether the socket `fd` already holds a whole request head (looked at
/// without taking it: hyper reads it next).
fn has_request_head(fd: std::os::fd::RawFd) -> bool {
    let mut buf = [0u8; 4096];
    // SAFETY: recv into a local buffer of its length; MSG_PEEK leaves the
    // bytes in the socket, MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return false;
    };
    buf[..n].windows(4).any(|w| w == b"\r\n\r\n")
}

/// Counts a request as busy until dropped.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(busy: &Arc<AtomicUsize>) -> Busy {
        busy.fetch_add(1, Ordering::AcqRel);
        Busy(busy.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_connection<I>(
    io: I,
    router: Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    max_age: Duration,
    busy: Arc<AtomicUsize>,
    primed: bool,
    close: CancellationToken,
    stop: CancellationToken,
    ended: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ended = ended.drop_guard();
    // The count the accept loop started a primed connection with, handed
    // over to its first request.
    let primed = std::sync::atomic::AtomicBool::new(primed);
    // Cancelled when the first request starts.
    let started = CancellationToken::new();
    let first = started.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        if !first.is_cancelled() {
            first.cancel();
        }
        let busy = Busy::new(&busy);
        if primed.swap(false, Ordering::AcqRel) {
            busy.0.fetch_sub(1, Ordering::AcqRel);
        }
        let mut router = router.clone();
        async move {
            let response = tower_service::Service::call(&mut router, request).await;
            drop(busy);
            response
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let deadline = Instant::now() + max_age;
    let finish = tokio::select! {
        _ = connection.as_mut() => false,
        // Closed to make room.
        _ = close.cancelled() => false,
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep_until(deadline) => true,
    };
    if finish {
        // hyper closes a connection that has not started a request at once
        // when asked to shut down: a request sent just before the stop (or
        // on its way) would find it closed unanswered.
        if !started.is_cancelled() {
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = started.cancelled() => {}
                _ = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
            }
        }
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(STOP_GRACE, connection).await;
    }
}

/// A warning at most every [`WARN_EVERY`], with how many were held back.
struct Throttled {
    last: Option<Instant>,
    held: u64,
}

impl Throttled {
    fn new() -> Throttled {
        Throttled {
            last: None,
            held: 0,
        }
    }

    /// `Some(held back since the last)` when a warning is due now.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + WARN_EVERY) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

#[path = "bounded/peer.rs"]
mod peer;

#[cfg(test)]
#[path = "bounded/tests.rs"]
mod tests;
