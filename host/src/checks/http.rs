//! The `http` probe: one HTTP/1.1 request (over TLS for `https://`) on a
//! fresh connection, driven in the probe's own future (no task). Passes on
//! 2xx; redirects are answers, not followed (a 3xx fails, saying so). The
//! answer's head may hold at most [`MAX_HEAD_BYTES`]; the body is read and
//! dropped, up to [`MAX_BODY_BYTES`] (an endless body fails there, or at the
//! deadline). The output is the status code alone: a body may hold what
//! the service would not tell everyone, and `/status` is served without
//! authentication (README: Health checks). URLs in messages are redacted.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONNECTION, HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::tcp::{self, Stage};
use super::tls::{self, TlsRoots};
use crate::config::redact_url;

/// The largest answer head (status line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A body longer than this fails the check (it is read only to its end).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

const AGENT: &str = concat!("ygg-agent/", env!("CARGO_PKG_VERSION"), " health check");

/// An `http` check's settings (`Probe::Http`).
pub struct HttpProbe<'a> {
    pub url: &'a str,
    pub method: &'a str,
    pub headers: &'a BTreeMap<String, String>,
    pub tls_skip_verify: bool,
}

/// Runs one request; `stage` follows it (the caller's deadline names it).
pub async fn probe(
    check: &HttpProbe<'_>,
    roots: &TlsRoots,
    stage: &mut Stage,
) -> Result<String, String> {
    let url = &redact_url(check.url);
    let uri: Uri = check
        .url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("URL {url:?} is neither http:// nor https://")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("URL {url:?} has no host"))?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let request = request(check, &uri)?;
    let address = if bare_host.contains(':') {
        format!("[{bare_host}]:{port}")
    } else {
        format!("{bare_host}:{port}")
    };

    *stage = Stage::Connecting;
    let stream = tcp::connect(&address).await?;
    if !https {
        return exchange(TokioIo::new(stream), request, stage).await;
    }
    let roots = if check.tls_skip_verify {
        None
    } else {
        *stage = Stage::LoadingRoots;
        Some(roots.get().await?)
    };
    let config = tls::client_config(roots, b"http/1.1")?;
    let name = ServerName::try_from(bare_host.to_string())
        .map_err(|e| format!("invalid TLS server name {bare_host:?}: {e}"))?;
    *stage = Stage::TlsHandshake;
    let stream = TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake: {}", tcp::io_reason(&e)))?;
    exchange(TokioIo::new(stream), request, stage).await
}

/// The request: origin-form target, `Host` from the URL (without user
/// info), then the check's headers (which may replace `Host` or
/// `User-Agent`).
fn request(check: &HttpProbe<'_>, uri: &Uri) -> Result<Request<Empty<Bytes>>, String> {
    let method = Method::from_bytes(check.method.as_bytes())
        .map_err(|_| format!("invalid HTTP method {:?}", check.method))?;
    let url = redact_url(check.url);
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let host = match (uri.host(), uri.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => String::new(),
    };
    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("invalid request for {url:?}: {e}"))?;
    let headers = request.headers_mut();
    headers.insert(
        HOST,
        HeaderValue::from_str(&host).map_err(|_| format!("invalid host in {url:?}"))?,
    );
    headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    for (name, value) in check.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
        headers.insert(name, value);
    }
    Ok(request)
}

/// Sends the request on `io` and reads the answer, driving the connection
/// beside the exchange in this same future.
async fn exchange<I>(
    io: I,
    request: Request<Empty<Bytes>>,
    stage: &mut Stage,
) -> Result<String, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    *stage = Stage::Waiting;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .handshake(io)
        .await
        .map_err(|e| hyper_reason(&e))?;
    let work = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| hyper_reason(&e))?;
        read(response, stage).await
    };
    tokio::pin!(connection, work);
    let mut connection_done = false;
    loop {
        tokio::select! {
            out = &mut work => return out,
            // Its errors reach `work` too (as the request's or the body's).
            _ = &mut connection, if !connection_done => connection_done = true,
        }
    }
}

async fn read(
    response: Response<hyper::body::Incoming>,
    stage: &mut Stage,
) -> Result<String, String> {
    let status = response.status();
    let code = status.as_u16();
    if status.is_redirection() {
        return Err(format!("redirect ({code}) not followed"));
    }
    *stage = Stage::ReadingBody(code);
    let mut body = response.into_body();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| format!("HTTP {code}, then the body failed: {}", hyper_reason(&e)))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        total += data.len();
        if total > MAX_BODY_BYTES {
            return Err(format!(
                "HTTP {code}: body longer than {} KiB",
                MAX_BODY_BYTES / 1024
            ));
        }
    }
    let output = format!("HTTP {code}");
    if status.is_success() {
        Ok(output)
    } else {
        Err(output)
    }
}

fn hyper_reason(error: &hyper::Error) -> String {
    if error.is_parse_too_large() {
        format!("answer head larger than {} KiB", MAX_HEAD_BYTES / 1024)
    } else if error.is_incomplete_message() {
        "connection closed before the answer was complete".to_string()
    } else {
        tcp::chain(error)
    }
}
