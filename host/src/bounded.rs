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
//! accept loop at once and gives each connection [`STOP_GRACE`] to finish.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

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

/// A listener the server accepts connections from.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send + 'static;
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        tokio::net::TcpListener::accept(self)
            .await
            .map(|(io, _)| io)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(io, _)| io)
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

/// One open connection, as the accept loop sees it.
struct Open {
    opened: Instant,
    /// Requests being answered on it now (0: still reading a head, or idle
    /// between requests: the connection may be closed to make room).
    busy: Arc<AtomicUsize>,
    /// Cancelled to close it now.
    close: CancellationToken,
    /// Cancelled by its task when it ends.
    ended: CancellationToken,
}

/// Serves `router` on `listener` under `limits` until `stop` is cancelled;
/// `name` names the listener in log lines. Connections run on `tracker`.
pub async fn serve<L: Accept>(
    mut listener: L,
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
    let mut open: Vec<Open> = Vec::with_capacity(limits.max_connections);
    // New connections over the cap, given `PROBATION` to show a whole
    // request head: (the connection, whether it did).
    let mut probation: futures_util::stream::FuturesUnordered<
        futures_util::future::BoxFuture<'static, (L::Io, bool)>,
    > = Default::default();
    let mut full = Throttled::new();
    let mut failing = Throttled::new();
    loop {
        let (io, probed) = tokio::select! {
            _ = stop.cancelled() => return,
            Some((io, primed)) = probation.next(), if !probation.is_empty() => {
                if !primed {
                    continue;
                }
                (io, true)
            }
            accepted = listener.accept() => match accepted {
                Ok(io) => (io, false),
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
        // Busy from the start when its request head is already there: it
        // is served next, and may take the place of an idle connection.
        let primed = probed || has_request_head(io.as_raw_fd());
        if open.len() >= limits.max_connections {
            // Oldest first: the one waiting longest for a request head. A
            // connection with nothing to ask yet replaces only one that
            // had `EVICTABLE_AFTER` to send its head (so a flood of
            // half-sent requests churns at most the cap per that time).
            let now = Instant::now();
            let victim = open.iter().position(|c| {
                c.busy.load(Ordering::Acquire) == 0
                    && (primed || now.duration_since(c.opened) >= EVICTABLE_AFTER)
            });
            match victim {
                Some(idle) => open.remove(idle).close.cancel(),
                None if !primed && probation.len() < PROBATION_SLOTS => {
                    // Perhaps a client whose request is on its way.
                    probation.push(Box::pin(probe(io)));
                    continue;
                }
                None => {
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
            if let Some(more) = full.due() {
                warn!(
                    listener = name,
                    connections = open.len() + 1,
                    more,
                    "connection limit reached; closing the oldest that has not sent a whole request"
                );
            }
        }
        let connection = Open {
            opened: Instant::now(),
            busy: Arc::new(AtomicUsize::new(usize::from(primed))),
            close: CancellationToken::new(),
            ended: CancellationToken::new(),
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
async fn probe<I: AsRawFd>(io: I) -> (I, bool) {
    let deadline = Instant::now() + PROBATION;
    loop {
        if has_request_head(io.as_raw_fd()) {
            return (io, true);
        }
        if Instant::now() >= deadline {
            return (io, false);
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
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
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

#[cfg(test)]
#[path = "bounded/tests.rs"]
mod tests;
