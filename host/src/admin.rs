//! The admin HTTP server on `agent.admin.listen`: `/metrics` (Prometheus
//! text), `/healthz` (the process is up) and `/readyz` (every instance is
//! registered under a live lease). It only reads: the shared metrics and
//! the registry's status channel.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::metrics::Metrics;
use crate::registry::RegistryStatus;

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    status: watch::Receiver<RegistryStatus>,
}

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
}

impl AdminServer {
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

/// Binds `listen` and serves on `tracker` until the returned handle drops.
pub async fn start(
    listen: SocketAddr,
    metrics: Metrics,
    status: watch::Receiver<RegistryStatus>,
    tracker: &TaskTracker,
) -> std::io::Result<AdminServer> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local_addr = listener.local_addr()?;
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState { metrics, status });
    let stop = CancellationToken::new();
    let closed = CancellationToken::new();
    let stopped = stop.clone().cancelled_owned();
    let done = closed.clone();
    tracker.spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            error!(%error, "admin server failed");
        }
        done.cancel();
    });
    info!(listen = %local_addr, "admin server listening (/metrics, /healthz, /readyz)");
    Ok(AdminServer {
        listen,
        local_addr,
        stop,
        closed,
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
    metrics: Metrics,
    status: watch::Receiver<RegistryStatus>,
    tracker: &TaskTracker,
) -> Option<AdminServer> {
    let error = match start(listen, metrics.clone(), status.clone(), tracker).await {
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
    match start(listen, metrics.clone(), status.clone(), tracker).await {
        Ok(server) => Some(server),
        Err(error) => {
            error!(%listen, %error, old = %previous, "cannot move the admin server; it keeps serving on the old address");
            match start(previous, metrics, status, tracker).await {
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

async fn metrics_page(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    let status = state.status.borrow().clone();
    let lease = status
        .lease
        .map_or_else(|| "none".to_string(), |id| format!("{id:x}"));
    let summary = format!("{}; lease {lease}\n", status.summary());
    if status.ready {
        (StatusCode::OK, format!("ready: {summary}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {summary}"),
        )
    }
}
