//! The admin HTTP server on `agent.admin.listen`: `/metrics` (Prometheus
//! text), `/healthz` (the process is up) and `/readyz` (every instance is
//! registered under a live lease). It only reads: the shared metrics and
//! the registry's status channel.

use std::net::SocketAddr;

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

/// A running admin server; dropping it stops the server.
pub struct AdminServer {
    pub local_addr: SocketAddr,
    stop: CancellationToken,
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
    let stopped = stop.clone().cancelled_owned();
    tracker.spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            error!(%error, "admin server failed");
        }
    });
    info!(listen = %local_addr, "admin server listening (/metrics, /healthz, /readyz)");
    Ok(AdminServer { local_addr, stop })
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
