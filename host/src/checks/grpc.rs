//! The `grpc` probe: `grpc.health.v1.Health/Check` (tonic-health) on a
//! fresh channel, over TLS when asked. tonic drives its connection in tasks
//! of its own: they run on the supervisor's tracker, and their socket is a
//! [`DeadlineIo`] that fails just after the probe's deadline, so none of
//! them outlives its probe for long, whatever the server does.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tonic::transport::{ClientTlsConfig, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::tcp::{self, DeadlineIo, Stage};
use super::tls::TlsRoots;

/// The largest answer accepted (a health answer is a few bytes), and the
/// largest HTTP/2 header list.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// How long after the probe's deadline tonic's connection tasks see their
/// socket fail (the probe itself has answered "timed out" by then).
const SOCKET_GRACE: Duration = Duration::from_millis(100);

/// A `grpc` check's settings (`Probe::Grpc`).
pub struct GrpcProbe<'a> {
    pub address: &'a str,
    pub service: &'a str,
    pub tls: bool,
}

pub async fn probe(
    check: &GrpcProbe<'_>,
    roots: &TlsRoots,
    tracker: &TaskTracker,
    deadline: Instant,
    stage: &mut Stage,
) -> Result<String, String> {
    let address = check.address;
    let scheme = if check.tls { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| format!("invalid gRPC address {address:?}: {}", tcp::chain(&e)))?
        .executor(OnTracker(tracker.clone()))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES);
    if check.tls {
        *stage = Stage::LoadingRoots;
        let roots = roots.get().await?;
        let config = ClientTlsConfig::new().trust_anchors(roots.roots.iter().cloned());
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| format!("TLS set-up: {}", tcp::chain(&e)))?;
    }
    *stage = Stage::Connecting;
    let connector = Connector {
        address: Arc::from(address),
        socket_deadline: deadline + SOCKET_GRACE,
    };
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| tcp::chain(&e))?;
    *stage = Stage::Waiting;
    let mut client = HealthClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let request = HealthCheckRequest {
        service: check.service.to_string(),
    };
    match client.check(request).await {
        Ok(answer) => match answer.into_inner().status() {
            ServingStatus::Serving => Ok("SERVING".to_string()),
            other => Err(other.as_str_name().to_string()),
        },
        Err(status) if status.code() == tonic::Code::NotFound => Err(format!(
            "SERVICE_UNKNOWN: the server does not know service {:?} ({})",
            check.service,
            status.message()
        )),
        Err(status) => {
            let mut reason = format!("gRPC error {:?}", status.code());
            if !status.message().is_empty() {
                reason = format!("{reason}: {}", status.message());
            }
            if let Some(source) = std::error::Error::source(&status) {
                reason = format!("{reason}: {}", tcp::chain(source));
            }
            Err(reason)
        }
    }
}

/// Spawns tonic's connection tasks on the supervisor's tracker.
#[derive(Clone)]
struct OnTracker(TaskTracker);

impl<F> hyper::rt::Executor<F> for OnTracker
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// Opens the TCP connection for tonic (which adds TLS for `https`) and
/// wraps it in a [`DeadlineIo`].
#[derive(Clone)]
struct Connector {
    address: Arc<str>,
    socket_deadline: Instant,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<DeadlineIo<TcpStream>>>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<DeadlineIo<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Connecting {
        let address = self.address.clone();
        let deadline = self.socket_deadline;
        Box::pin(async move {
            let stream = tcp::connect(&address).await.map_err(io::Error::other)?;
            Ok(TokioIo::new(DeadlineIo::new(stream, deadline)))
        })
    }
}
