//! The transport under every probe: the TCP connect (the whole of a `tcp`
//! check), the wording of socket errors, where a probe was when its
//! deadline passed ([`Stage`]), and [`DeadlineIo`], a socket that fails
//! once the probe's deadline has passed, so a connection driven by a task
//! we do not own (tonic's) ends with the probe.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Where a probe was; the reason of a timeout names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connecting,
    LoadingRoots,
    TlsHandshake,
    /// Request sent (or being sent), no answer yet.
    Waiting,
    /// The answer's status is known; its body is being read.
    ReadingBody(u16),
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Connecting => f.write_str("while connecting"),
            Stage::LoadingRoots => f.write_str("while loading the system's TLS roots"),
            Stage::TlsHandshake => f.write_str("in the TLS handshake"),
            Stage::Waiting => f.write_str("waiting for the answer"),
            Stage::ReadingBody(status) => write!(f, "reading the body (HTTP {status})"),
        }
    }
}

/// `host:port` (or `[v6]:port`) → an open connection. Host names resolve
/// through tokio (the system resolver on tokio's blocking pool).
pub async fn connect(address: &str) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| io_reason(&e))?;
    // Probes send little; waiting for more to coalesce only adds latency.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The `tcp` check: passes when a connection opens; it is closed at once.
/// As few system calls as a connect allows (no options but the reset on
/// close, no peer lookup): a thousand checks a second run this.
pub async fn probe(address: &str) -> Result<String, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| io_reason(&e))?;
    // Close with a reset, as load balancers' TCP checks do: no FIN
    // exchange and no TIME_WAIT socket left behind per run (a thousand
    // checks a second would otherwise keep ~60,000 of them around).
    let _ = stream.set_zero_linger();
    drop(stream);
    Ok(format!("connected to {address}"))
}

/// A socket error in a few plain words (`connection refused`).
pub fn io_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        io::ErrorKind::ConnectionAborted => "connection aborted".to_string(),
        io::ErrorKind::UnexpectedEof => "connection closed".to_string(),
        io::ErrorKind::HostUnreachable => "host unreachable".to_string(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".to_string(),
        io::ErrorKind::TimedOut => "connect timed out".to_string(),
        _ => match error.get_ref() {
            // An error wrapped in io::Error (rustls') says more than its kind.
            Some(inner) => inner.to_string(),
            None => error.to_string(),
        },
    }
}

/// An error and its causes on one line (`a: b: c`), each said once.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// A socket whose reads and writes fail with `TimedOut` once `deadline`
/// has passed. A pending read registers the timer too, so a connection
/// task parked on a silent server wakes and ends at the deadline.
pub struct DeadlineIo<S> {
    inner: S,
    deadline: Pin<Box<Sleep>>,
}

impl<S> DeadlineIo<S> {
    pub fn new(inner: S, deadline: Instant) -> Self {
        DeadlineIo {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn expired_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the check's deadline passed")
}

impl<S: AsyncRead + Unpin> AsyncRead for DeadlineIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
