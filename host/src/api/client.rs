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
    tokio::time::timeout(DEADLINE, exchange(socket, method, path, body))
        .await
        .map_err(|_| format!("no answer within {DEADLINE:?}"))?
}

async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, serde_json::Value), String> {
    // Nothing is sent to a socket another user could have put there.
    let allowed = crate::socket_dir::check_client_socket(socket)?;
    let stream = tokio::net::UnixStream::connect(socket)
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
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
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
