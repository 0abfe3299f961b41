//! The command line's side of the local API: one HTTP/1.1 request on the
//! agent's Unix socket (hyper's connection API), the answer as JSON; sent
//! only after the socket, its folder and the process serving it pass
//! [`crate::socket_dir::check_client_socket`] and `check_peer`.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;

/// A request and its answer take at most this long.
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a connect may wait for room in the agent's backlog.
const BACKLOG_WAIT: Duration = Duration::from_secs(2);
/// The longest answer read (a listing of thousands of instances fits).
const MAX_ANSWER: usize = 64 << 20;

/// Sends `method path` (with a JSON `body`) to the agent on `socket`;
/// returns the status and the JSON answer.
pub async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, serde_json::Value), String> {
    let attempts = async {
        let began = tokio::time::Instant::now();
        loop {
            match exchange(socket, method, path, body.clone()).await {
                // Closed unanswered: the agent's listener was full and
                // closed it before reading the request; try again.
                Err(e) if e.starts_with(NOT_ANSWERED) && began.elapsed() < BACKLOG_WAIT => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    };
    tokio::time::timeout(DEADLINE, attempts)
        .await
        .map_err(|_| format!("no answer within {DEADLINE:?}"))?
}

/// How an error about a connection closed before any answer begins.
const NOT_ANSWERED: &str = "the agent closed the connection without an answer";

async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, serde_json::Value), String> {
    // Nothing is sent to a socket another user could have put there.
    let allowed = crate::socket_dir::check_client_socket(socket)?;
    let stream = connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    crate::socket_dir::check_peer(&stream, &allowed)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "localhost")
        .header(CONNECTION, "close")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let work = async {
        let response = sender.send_request(request).await.map_err(|e| {
            if closed_unanswered(&e) {
                format!("{NOT_ANSWERED} ({e}; it may be full)")
            } else {
                e.to_string()
            }
        })?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let json = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "not a JSON answer (HTTP {status}): {e}: {}",
                crate::status::escape(&String::from_utf8_lossy(&bytes))
            )
        })?;
        Ok((status, json))
    };
    tokio::pin!(connection, work);
    let mut connection_done = false;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = &mut connection, if !connection_done => connection_done = true,
        }
    }
}

/// Whether the agent closed the connection before it answered: before
/// the request was read (the listener was full), or while it was being
/// written (a broken pipe or a reset under the write).
fn closed_unanswered(error: &hyper::Error) -> bool {
    if error.is_canceled() || error.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
            return matches!(io.kind(), BrokenPipe | ConnectionReset | ConnectionAborted);
        }
        source = cause.source();
    }
    false
}

/// Connects to `socket`: at once when the backlog has room (a non-blocking
/// connect either succeeds or fails with `EAGAIN`, never waits). With the
/// backlog full (others connecting faster than the agent accepts), a
/// blocking connect on a thread of its own, which waits in the kernel's
/// queue for room, where polling again with non-blocking ones would lose
/// every race. At most [`BACKLOG_WAIT`]; the thread is left behind then
/// (the command exits).
async fn connect(socket: &Path) -> std::io::Result<tokio::net::UnixStream> {
    match tokio::net::UnixStream::connect(socket).await {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => return other,
    }
    let (done, connected) = tokio::sync::oneshot::channel();
    let path = socket.to_path_buf();
    std::thread::Builder::new()
        .name("ygg-connect".into())
        .spawn(move || {
            let _ = done.send(std::os::unix::net::UnixStream::connect(path));
        })?;
    let stream = match tokio::time::timeout(BACKLOG_WAIT, connected).await {
        Ok(Ok(stream)) => stream?,
        Ok(Err(_)) => return Err(std::io::Error::other("the connecting thread ended")),
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the agent accepted no connection within {BACKLOG_WAIT:?}"),
            ));
        }
    };
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}
