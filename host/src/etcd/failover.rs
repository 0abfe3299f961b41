//! The channel under every etcd client we build: the members in turn, and
//! a request that cannot connect to one goes to the next at once.
//!
//! etcd-client's own channel is tonic's balanced one. A member that refuses
//! connections (its process not started yet after a whole-cluster restart,
//! or dead) looks *ready* there: tonic keeps the failed connect's error and
//! hands it to the next request sent that way, and the refusal is the
//! quickest connect to complete, so the balancer picks that member first.
//! The request fails while the other members answer, and the registry
//! waits a whole backoff step (up to `retryInterval`) to try again: the
//! fleet's straggler (FAILURES.md). Measured with 10 agents, one member
//! still down after the restart: three refusals in a row for one agent,
//! 15.6 s before its keys were back.
//!
//! Here every member has a lazily connected tonic channel of its own. A
//! request goes to the members in turn (round robin), those that refused a
//! connection within [`REFUSED_FOR`] last. When the connection to one
//! cannot be made (refused, unreachable, connect timeout: nothing of the
//! request was sent), a unary request is sent to the next member at once;
//! only when none connects does the caller see the error. A streaming
//! request (a watch, a keepalive) cannot be sent twice: it goes to the
//! first member in that order, and its owner reopens it.
//!
//! Connections to the members are closed abortively (`SO_LINGER` 0: a
//! reset, and whatever the kernel still holds unsent is dropped). An agent
//! that exits while etcd cannot be reached (a partition) leaves nothing
//! queued behind it: with an orderly close the kernel would go on
//! retransmitting its last requests, a lease renewal among them, and a
//! partition that heals after the exit would deliver that renewal and keep
//! the dead agent's keys for another TTL.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use std::io;

use bytes::Bytes;
use etcd_client::{BalancedChannelBuilder, Channel};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::Endpoint;
use tonic::transport::channel::Change;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};
use tracing::debug;

/// A member that refused a connection is tried after the others for this
/// long; then it takes its turn again (it may be back).
pub const REFUSED_FOR: Duration = Duration::from_secs(1);

/// The etcd methods whose request is a stream of messages: sent once, to
/// one member.
const STREAMING: [&str; 2] = [
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseKeepAlive",
];

/// Builds the channel for `Client::connect_with_balanced_channel`; a
/// connection to a member not made within `connect_timeout` counts as
/// refused.
pub struct Failover {
    pub connect_timeout: Option<Duration>,
}

impl BalancedChannelBuilder for Failover {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(Channel, mpsc::Sender<Change<Uri, Endpoint>>), Self::Error> {
        let (members, changes) = Members::new(buffer_size, self.connect_timeout);
        Ok((Channel::Custom(BoxCloneSyncService::new(members)), changes))
    }
}

#[derive(Clone)]
struct Members(Arc<Mutex<State>>);

struct State {
    /// Members added or removed by the client (all of them are added
    /// before its first request).
    changes: mpsc::Receiver<Change<Uri, Endpoint>>,
    members: Vec<Member>,
    /// Where the next request starts.
    next: usize,
    connector: Abortive,
}

struct Member {
    uri: Uri,
    channel: tonic::transport::Channel,
    refused_until: Option<Instant>,
}

impl State {
    /// The members to try for one request, in order.
    fn turn(&mut self, now: Instant) -> Vec<(Uri, tonic::transport::Channel)> {
        while let Ok(change) = self.changes.try_recv() {
            match change {
                Change::Insert(uri, endpoint) => {
                    self.members.retain(|m| m.uri != uri);
                    self.members.push(Member {
                        uri,
                        // TLS, when configured, is layered on by tonic.
                        channel: endpoint.connect_with_connector_lazy(self.connector.clone()),
                        refused_until: None,
                    });
                }
                Change::Remove(uri) => self.members.retain(|m| m.uri != uri),
            }
        }
        let refused: Vec<bool> = self
            .members
            .iter()
            .map(|m| m.refused_until.is_some_and(|until| until > now))
            .collect();
        let order = order(self.next, &refused);
        self.next = self.next.wrapping_add(1);
        order
            .into_iter()
            .map(|i| (self.members[i].uri.clone(), self.members[i].channel.clone()))
            .collect()
    }

    fn note(&mut self, uri: &Uri, refused: bool, now: Instant) {
        if let Some(member) = self.members.iter_mut().find(|m| m.uri == *uri) {
            member.refused_until = refused.then_some(now + REFUSED_FOR);
        }
    }
}

/// The order to try `refused.len()` members in, starting at `start` (mod
/// the count) and going round: those not marked refused first, then the
/// refused ones, each group in turn order.
fn order(start: usize, refused: &[bool]) -> Vec<usize> {
    let n = refused.len();
    if n == 0 {
        return Vec::new();
    }
    let turn = (0..n).map(|k| (start + k) % n);
    let (open, closed): (Vec<usize>, Vec<usize>) = turn.partition(|&i| !refused[i]);
    open.into_iter().chain(closed).collect()
}

/// Whether the error is a failed connection (refused, unreachable, connect
/// timeout, TLS handshake): nothing of the request reached the member.
fn is_connect_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// One attempt's request: the same head, the buffered body.
fn copy(parts: &http::request::Parts, body: &Bytes) -> Request<Body> {
    let mut request = Request::new(Body::new(Full::new(body.clone())));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

impl Members {
    fn new(
        buffer_size: usize,
        connect_timeout: Option<Duration>,
    ) -> (Members, mpsc::Sender<Change<Uri, Endpoint>>) {
        let (changes_tx, changes) = mpsc::channel(buffer_size);
        let members = Members(Arc::new(Mutex::new(State {
            changes,
            members: Vec::new(),
            next: 0,
            connector: Abortive {
                timeout: connect_timeout,
            },
        })));
        (members, changes_tx)
    }

    fn note(&self, uri: &Uri, refused: bool) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.note(uri, refused, Instant::now());
    }

    /// Sends through one member, noting whether it refused.
    async fn attempt(
        &self,
        uri: &Uri,
        mut channel: tonic::transport::Channel,
        request: Request<Body>,
    ) -> Result<Response<Body>, tonic::transport::Error> {
        let result = match channel.ready().await {
            Ok(ready) => ready.call(request).await,
            Err(error) => Err(error),
        };
        let refused = matches!(&result, Err(e) if is_connect_error(e));
        self.note(uri, refused);
        result
    }

    async fn send(
        self,
        tries: Vec<(Uri, tonic::transport::Channel)>,
        request: Request<Body>,
    ) -> Result<Response<Body>, BoxError> {
        let streaming = STREAMING.contains(&request.uri().path());
        let mut tries = tries.into_iter();
        let Some((uri, channel)) = tries.next() else {
            return Err("no etcd endpoint to send the request to".into());
        };
        if streaming || tries.len() == 0 {
            if streaming {
                let endpoint = uri.authority().map_or("", |a| a.as_str());
                debug!(endpoint = %endpoint, method = request.uri().path(), "stream sent to one member");
            }
            return Ok(self.attempt(&uri, channel, request).await?);
        }
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        let mut last = match self.attempt(&uri, channel, copy(&parts, &body)).await {
            Err(error) if is_connect_error(&error) => error,
            other => return Ok(other?),
        };
        let mut failed = uri;
        for (next, channel) in tries {
            debug!(endpoint = %failed, next = %next, error = %last, "cannot connect to the etcd member; sending to the next one");
            match self.attempt(&next, channel, copy(&parts, &body)).await {
                Err(error) if is_connect_error(&error) => last = error,
                other => return Ok(other?),
            }
            failed = next;
        }
        Err(last.into())
    }
}

impl Service<Request<Body>> for Members {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each member's channel is made ready when the request is sent.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let tries = {
            let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
            state.turn(Instant::now())
        };
        Box::pin(self.clone().send(tries, request))
    }
}

/// Connects to a member over TCP (no delay), within `timeout`, closed
/// abortively (see the module's comment). Its errors reach the caller as
/// tonic's `ConnectError`.
#[derive(Clone)]
struct Abortive {
    timeout: Option<Duration>,
}

impl Service<Uri> for Abortive {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = self.timeout;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
                })?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                });
            let stream = match timeout {
                Some(limit) => tokio::time::timeout(limit, connect(&host, port))
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no connection to {host}:{port} within {limit:?}"),
                        )
                    })??,
                None => connect(&host, port).await?,
            };
            stream.set_nodelay(true)?;
            stream.set_zero_linger()?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The first of `host`'s addresses that accepts a connection.
async fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for address in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_take_turns() {
        let none = [false; 3];
        assert_eq!(order(0, &none), [0, 1, 2]);
        assert_eq!(order(1, &none), [1, 2, 0]);
        assert_eq!(order(5, &none), [2, 0, 1]);
        assert_eq!(order(7, &[]), Vec::<usize>::new());
    }

    #[test]
    fn a_member_that_refused_goes_last() {
        assert_eq!(order(0, &[true, false, false]), [1, 2, 0]);
        assert_eq!(order(2, &[false, false, true]), [0, 1, 2]);
        assert_eq!(order(1, &[true, true, false]), [2, 1, 0]);
        assert_eq!(order(0, &[true, true, true]), [0, 1, 2]);
    }

    #[test]
    fn connect_errors_are_told_from_others_through_their_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] BoxError);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = Outer(Box::new(tonic::ConnectError(Box::new(refused))));
        assert!(is_connect_error(&connect));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!is_connect_error(&Outer(Box::new(reset))));
    }

    fn request() -> Request<Body> {
        Request::builder()
            .uri("/etcdserverpb.KV/Range")
            .body(Body::new(Full::new(Bytes::from_static(b"\0\0\0\0\0"))))
            .unwrap()
    }

    /// A port nothing listens on (bound, then closed): connections refused.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    async fn members(ports: &[u16]) -> Members {
        let (members, changes) = Members::new(8, Some(Duration::from_secs(2)));
        for port in ports {
            let uri: Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
            let endpoint = Endpoint::from(uri.clone());
            changes.send(Change::Insert(uri, endpoint)).await.unwrap();
        }
        members
    }

    fn refused(members: &Members) -> Vec<bool> {
        let state = members.0.lock().unwrap();
        state
            .members
            .iter()
            .map(|m| m.refused_until.is_some())
            .collect()
    }

    /// The first member in turn refuses the connection: the request goes
    /// to the second at once (it accepts the connection; it never answers,
    /// so the request stays pending there), and the first is marked.
    #[tokio::test]
    async fn a_request_refused_by_one_member_goes_to_the_next_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap().port();
        let mut members = members(&[closed_port(), live]).await;
        let call = members.call(request());
        let accepted = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        tokio::select! {
            result = call => panic!("the request ended: {:?}", result.map(|_| ())),
            socket = accepted => {
                let _socket = socket.unwrap().unwrap();
            }
            () = tokio::time::sleep(Duration::from_secs(10)) => {
                panic!("the second member never saw a connection")
            }
        }
        assert_eq!(refused(&members), [true, false]);
    }

    /// Nothing listens on either port: the request tries both and fails
    /// with the connect error; both are marked.
    #[tokio::test]
    async fn a_request_fails_only_when_no_member_connects() {
        let mut members = members(&[closed_port(), closed_port()]).await;
        let result = tokio::time::timeout(Duration::from_secs(10), members.call(request())).await;
        let error = result.expect("within 10 s").map(|_| ()).unwrap_err();
        assert!(is_connect_error(&*error), "{error}");
        assert_eq!(refused(&members), [true, true]);
    }
}
