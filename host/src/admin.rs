//! The admin HTTP server on `agent.admin.listen`: `/` (the status page,
//! [`page`]), `/metrics` (Prometheus text), `/healthz` (the process is
//! up), `/readyz` (every instance meant to be in etcd is registered under
//! a live lease) and `/status` (the [`AgentStatus`] as JSON, for the page
//! and `ygg-agent status`). It only reads: the shared metrics, the
//! registry's status channel, and the supervisor's answer to a status
//! request. Only GET; every answer says `nosniff`, no framing, no caching.

mod page;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::bounded;
use crate::metrics::Metrics;
use crate::registry::RegistryStatus;
use crate::status::AgentStatus;

/// What the admin server reads: the shared metrics, the registry's status,
/// and the supervisor (asked for `/status` over a channel).
#[derive(Clone)]
pub struct Sources {
    pub metrics: Metrics,
    pub registry: watch::Receiver<RegistryStatus>,
    /// The supervisor's end answers each request with a fresh snapshot.
    pub agent: mpsc::Sender<StatusRequest>,
}

/// A `/status` request to the supervisor: it answers on the oneshot.
pub type StatusRequest = oneshot::Sender<AgentStatus>;

/// How long `/status` waits for the supervisor's answer.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// How long a rebind waits for the old listener to let go of its port.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A running admin server; dropping it stops the server.
pub struct AdminServer {
    /// The address it was asked to listen on (`agent.admin.listen`).
    pub listen: SocketAddr,
    pub local_addr: SocketAddr,
    stop: CancellationToken,
    /// Cancelled when the server task has ended and its listener is closed.
    closed: CancellationToken,
    /// The listener's descriptor (a duplicate), for an upgrade's handover.
    fd: std::os::fd::OwnedFd,
}

impl AdminServer {
    /// The listener to hand to the next process on an upgrade (its
    /// descriptor stays open while this server lives).
    pub fn handed(&self) -> crate::handover::HandedTcp {
        use std::os::fd::AsRawFd;
        crate::handover::HandedTcp {
            fd: self.fd.as_raw_fd(),
            listen: self.listen,
        }
    }

    /// Stops the server and waits (at most [`CLOSE_WAIT`]) until its
    /// listener is closed, so its port can be bound again.
    async fn close(self) {
        let closed = self.closed.clone();
        drop(self);
        let _ = tokio::time::timeout(CLOSE_WAIT, closed.cancelled()).await;
    }
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("listen", &self.listen)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Binds `listen` and serves on `tracker` until the returned handle drops
/// or `parent` is cancelled (open connections are closed gracefully).
pub async fn start(
    listen: SocketAddr,
    sources: Sources,
    tracker: &TaskTracker,
    parent: &CancellationToken,
) -> std::io::Result<AdminServer> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    serve_on(listener, listen, sources, tracker, parent)
}

/// Serves on `listener`, bound for `listen` (by [`start`], or by the
/// previous process, handed over on an upgrade).
pub fn serve_on(
    listener: tokio::net::TcpListener,
    listen: SocketAddr,
    sources: Sources,
    tracker: &TaskTracker,
    parent: &CancellationToken,
) -> std::io::Result<AdminServer> {
    let local_addr = listener.local_addr()?;
    let fd = std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned()?;
    let router = Router::new()
        .route("/", get(status_html))
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_page))
        .layer(axum::middleware::map_response(secure))
        .with_state(sources);
    let stop = parent.child_token();
    let closed = CancellationToken::new();
    let stopped = stop.clone();
    let done = closed.clone();
    let connections = tracker.clone();
    tracker.spawn(async move {
        let limits = bounded::Limits::for_agent();
        bounded::serve(listener, router, limits, "admin", stopped, connections).await;
        done.cancel();
    });
    info!(listen = %local_addr, "admin server listening (/ status page, /status, /metrics, /healthz, /readyz)");
    Ok(AdminServer {
        listen,
        local_addr,
        stop,
        closed,
        fd,
    })
}

/// Moves the admin server from `old` to `listen`. The new address is bound
/// while the old server still serves; when that fails and the two
/// addresses overlap (the same port, one of them unspecified or both the
/// same IP), the old server is closed first and the bind tried again. When
/// the new address cannot be had, the reason is logged and the old address
/// keeps serving. Returns the server that serves afterwards.
pub async fn rebind(
    old: Option<AdminServer>,
    listen: SocketAddr,
    sources: Sources,
    tracker: &TaskTracker,
    parent: &CancellationToken,
) -> Option<AdminServer> {
    let error = match start(listen, sources.clone(), tracker, parent).await {
        Ok(server) => return Some(server),
        Err(error) => error,
    };
    let Some(old) = old else {
        error!(%listen, %error, "cannot start the admin server; running without it (fix agent.admin.listen and reload)");
        return None;
    };
    if !overlaps(old.local_addr, listen) {
        error!(%listen, %error, old = %old.listen, "cannot move the admin server; it keeps serving on the old address");
        return Some(old);
    }
    let previous = old.listen;
    old.close().await;
    match start(listen, sources.clone(), tracker, parent).await {
        Ok(server) => Some(server),
        Err(error) => {
            error!(%listen, %error, old = %previous, "cannot move the admin server; it keeps serving on the old address");
            match start(previous, sources, tracker, parent).await {
                Ok(server) => Some(server),
                Err(error) => {
                    error!(listen = %previous, %error, "cannot bind the old admin address again; running without the admin server");
                    None
                }
            }
        }
    }
}

/// Whether binding `b` can conflict with a listener on `a`.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

async fn metrics_page(State(state): State<Sources>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
}

/// The headers of every answer; a policy that allows nothing unless the
/// answer brings its own (the page's).
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in page::common_headers() {
        headers.insert(name, value);
    }
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    response
}

/// The status page: one document, its script and style inline, allowed by
/// hash in its Content-Security-Policy.
async fn status_html() -> impl IntoResponse {
    let page = &*page::PAGE;
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_str(&page.policy).expect("the policy is ASCII"),
            ),
        ],
        page.html.clone(),
    )
}

/// What `ygg-agent status` shows, as JSON, fresh from the supervisor.
async fn status_page(
    State(state): State<Sources>,
) -> Result<axum::Json<AgentStatus>, (StatusCode, String)> {
    let (reply, answer) = oneshot::channel();
    let unavailable = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    state
        .agent
        .send_timeout(reply, STATUS_WAIT)
        .await
        .map_err(|_| unavailable("the agent is stopping or busy"))?;
    match tokio::time::timeout(STATUS_WAIT, answer).await {
        Ok(Ok(status)) => Ok(axum::Json(status)),
        _ => Err(unavailable("the agent did not answer")),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when every instance that should be in etcd is: an instance held
/// out by a critical health check is intended, and counted on the line.
async fn readyz(State(state): State<Sources>) -> (StatusCode, String) {
    let status = state.registry.borrow().clone();
    let lease = status
        .lease
        .map_or_else(|| "none".to_string(), |id| format!("{id:x}"));
    let withheld = state.metrics.instances_withheld.get();
    let summary = format!(
        "{}; {withheld} withheld by health checks; lease {lease}\n",
        status.summary()
    );
    if status.ready {
        (StatusCode::OK, format!("ready: {summary}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {summary}"),
        )
    }
}
