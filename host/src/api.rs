//! The local API (`agent.api`): HTTP/JSON for apps and operators on the
//! node, on a Unix socket (mode 0660) and optionally on a loopback TCP
//! address that requires a bearer token. The server only reads and
//! validates requests ([`body`], off the supervisor's loop); every change
//! goes to the supervisor as an [`ApiRequest`] carrying a oneshot for the
//! answer (like `/status`), and the supervisor handles it as one event
//! without waiting.
//!
//! Routes: `GET /v1/instances`; `PUT|DELETE /v1/instances/{id}`;
//! `PUT /v1/instances/{id}/pass`; `PUT|DELETE /v1/instances/{id}/maintenance`;
//! `POST /v1/instances/{id}/drain`; `PUT|DELETE /v1/maintenance`;
//! `POST /v1/drain`.

pub mod body;
pub mod client;
pub mod commands;

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::bounded;
use crate::config::{ApiConfig, ApiInstance, CheckTiming};
use crate::handover::{HandedSocket, HandedTcp, Inherited};
use crate::socket_dir::SocketDir;
use crate::systemd;

/// Requests waiting for the supervisor.
pub const API_REQUESTS_CAPACITY: usize = 64;
/// How long a request waits for the supervisor's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// Mode of the socket file: the agent's user and group.
const SOCKET_MODE: u32 = 0o660;

/// What a request asks the supervisor to do.
#[derive(Debug)]
pub enum ApiCall {
    /// Every instance, its source and state (answered by the supervisor,
    /// which reads the checks too).
    List,
    /// A change to the local instances (`agent::instances`).
    Change(ApiChange),
}

impl From<ApiChange> for ApiCall {
    fn from(change: ApiChange) -> ApiCall {
        ApiCall::Change(change)
    }
}

/// A call that changes the local instances.
#[derive(Debug)]
pub enum ApiChange {
    /// Register (or replace) the API instance `id`.
    Register {
        id: String,
        registration: Box<ApiInstance>,
        /// The JSON it was read from (an upgrade hands it to the next
        /// process, which reads it again).
        body: String,
    },
    Deregister {
        id: String,
    },
    /// The app behind a TTL registration is alive.
    Pass {
        id: String,
    },
    /// `Some(reason)`: take `id` (or, `None`, the node) out of rotation
    /// and keep it out across restarts; `None`: end it (and a drain).
    Maintenance {
        id: Option<String>,
        reason: Option<String>,
    },
    /// Delete the key of `id` (or of every instance) and keep it out until
    /// maintenance is ended or the agent restarts.
    Drain {
        id: Option<String>,
    },
}

/// A call and where its answer goes.
#[derive(Debug)]
pub struct ApiRequest {
    pub call: ApiCall,
    pub reply: oneshot::Sender<ApiReply>,
}

/// The supervisor's answer: an HTTP status and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiReply {
    pub status: u16,
    pub body: serde_json::Value,
}

impl ApiReply {
    pub fn ok(body: serde_json::Value) -> ApiReply {
        ApiReply { status: 200, body }
    }

    pub fn error(status: u16, message: impl Into<String>) -> ApiReply {
        ApiReply {
            status,
            body: json!({ "error": message.into() }),
        }
    }

    fn invalid(problems: Vec<String>) -> ApiReply {
        ApiReply {
            status: 400,
            body: json!({ "error": "invalid request", "problems": problems }),
        }
    }
}

impl IntoResponse for ApiReply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{}\n", self.body),
        )
            .into_response()
    }
}

/// Where the socket goes without `agent.api.socket`: systemd's
/// `$RUNTIME_DIRECTORY/agent.sock`, else `/run/ygg-agent/agent.sock` if that
/// folder exists, else `$XDG_RUNTIME_DIR/ygg-agent/agent.sock`, else
/// `/tmp/ygg-agent-<uid>/agent.sock`. The CLI finds the agent the same way.
pub fn default_socket() -> PathBuf {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = systemd::directory("RUNTIME_DIRECTORY") {
        return dir.join("agent.sock");
    }
    if Path::new("/run/ygg-agent").is_dir() {
        return PathBuf::from("/run/ygg-agent/agent.sock");
    }
    if let Some(runtime) = env("XDG_RUNTIME_DIR") {
        return PathBuf::from(runtime).join("ygg-agent/agent.sock");
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("ygg-agent-{uid}/agent.sock"))
}

#[derive(Clone)]
struct ApiState {
    calls: mpsc::Sender<ApiRequest>,
    /// `agent.checks` of the running config (a reload updates it).
    defaults: watch::Receiver<CheckTiming>,
    /// The bearer token the TCP listener requires; `None` on the socket
    /// (its file mode is the access control).
    token: Option<Arc<str>>,
}

/// A running API server (socket, and TCP if asked); dropping it stops
/// both and removes the socket file.
pub struct ApiServer {
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    stop: CancellationToken,
    dir: SocketDir,
    name: std::ffi::OsString,
    inode: u64,
    /// The listeners' descriptors (duplicates), for an upgrade's handover;
    /// the TCP one with the address it was asked for.
    socket_fd: OwnedFd,
    tcp_fd: Option<(OwnedFd, SocketAddr)>,
    /// An upgrade handed the socket to the next process: its file stays.
    keep_file: bool,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
        // The socket we bound, in the folder we opened (not whatever the
        // path names now).
        if !self.keep_file {
            self.dir.remove(&self.name, self.inode);
        }
    }
}

impl ApiServer {
    /// The listeners to hand to the next process on an upgrade (their
    /// descriptors stay open while this server lives).
    pub fn handed(&self) -> (HandedSocket, Option<HandedTcp>) {
        let socket = HandedSocket {
            fd: self.socket_fd.as_raw_fd(),
            path: self.socket.clone(),
            inode: self.inode,
        };
        let tcp = self.tcp_fd.as_ref().map(|(fd, listen)| HandedTcp {
            fd: fd.as_raw_fd(),
            listen: *listen,
        });
        (socket, tcp)
    }

    /// The next process serves the socket now: stopping leaves its file.
    pub fn keep_socket_file(&mut self) {
        self.keep_file = true;
    }
}

/// Binds the socket (and the TCP address) and serves on `tracker` until the
/// returned handle drops or `parent` is cancelled (open connections are
/// closed gracefully: a call in flight gets its answer). A listener the
/// previous process handed over (`inherited`, on an upgrade) for the same
/// path or address is served instead of binding a new one.
pub async fn start(
    config: &ApiConfig,
    calls: mpsc::Sender<ApiRequest>,
    defaults: watch::Receiver<CheckTiming>,
    tracker: &TaskTracker,
    parent: &CancellationToken,
    inherited: &mut Inherited,
) -> std::io::Result<ApiServer> {
    let socket = config.socket.clone().unwrap_or_else(default_socket);
    let BoundSocket {
        listener: socket_listener,
        dir,
        name,
        inode,
    } = match inherited.take_api_socket(&socket) {
        Some((listener, inode)) => adopt_socket(&socket, listener, inode)?,
        None => bind_socket(&socket)?,
    };
    let socket_fd = socket_listener.as_fd().try_clone_to_owned()?;
    let mut tcp_fd = None;
    let limits = bounded::Limits::for_agent();
    let stop = parent.child_token();
    let state = ApiState {
        calls,
        defaults,
        token: None,
    };
    let tcp = match config.listen {
        Some(listen) => {
            let token = read_token(config.token_file.as_deref()).await?;
            let listener = match inherited.take_api_tcp(listen) {
                Some(listener) => tokio::net::TcpListener::from_std(listener)?,
                None => tokio::net::TcpListener::bind(listen).await?,
            };
            let local = listener.local_addr()?;
            tcp_fd = Some((listener.as_fd().try_clone_to_owned()?, listen));
            let router = router(ApiState {
                token: Some(token.into()),
                ..state.clone()
            });
            tracker.spawn(bounded::serve(
                listener,
                router,
                limits,
                "local API (TCP)",
                stop.clone(),
                tracker.clone(),
            ));
            Some(local)
        }
        None => None,
    };
    let router = router(state);
    tracker.spawn(bounded::serve(
        socket_listener,
        router,
        limits,
        "local API (socket)",
        stop.clone(),
        tracker.clone(),
    ));
    info!(socket = %socket.display(), tcp = ?tcp, "local API listening");
    Ok(ApiServer {
        socket,
        tcp,
        stop,
        dir,
        name,
        inode,
        socket_fd,
        tcp_fd,
        keep_file: false,
    })
}

/// The socket the previous process handed over (it listens at `path`):
/// its folder is opened and checked as for a new one.
fn adopt_socket(
    path: &Path,
    listener: std::os::unix::net::UnixListener,
    inode: u64,
) -> std::io::Result<BoundSocket> {
    let (folder, name) = socket_parts(path)?;
    Ok(BoundSocket {
        listener: tokio::net::UnixListener::from_std(listener)?,
        dir: SocketDir::open(folder)?,
        name: name.to_os_string(),
        inode,
    })
}

fn socket_parts(path: &Path) -> std::io::Result<(&Path, &std::ffi::OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no socket file", path.display())))?;
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((folder, name))
}

/// Binds the Unix socket: its folder is created if missing (0750), checked
/// (the agent's user's or root's, nobody else may write it or a folder
/// above: [`socket_dir`]) and opened once; a stale socket left by a crash
/// is replaced (anything else at the path is not touched), and the socket
/// gets mode 0660, all through the folder's descriptor.
fn bind_socket(path: &Path) -> std::io::Result<BoundSocket> {
    let (folder, name) = socket_parts(path)?;
    let dir = SocketDir::open(folder)?;
    let (listener, inode) = dir.bind(name, SOCKET_MODE)?;
    Ok(BoundSocket {
        listener,
        dir,
        name: name.to_os_string(),
        inode,
    })
}

struct BoundSocket {
    listener: tokio::net::UnixListener,
    dir: SocketDir,
    name: std::ffi::OsString,
    inode: u64,
}

async fn read_token(path: Option<&Path>) -> std::io::Result<String> {
    let path = path.ok_or_else(|| {
        std::io::Error::other("agent.api.tokenFile is required with agent.api.listen")
    })?;
    let file = tokio::fs::File::open(path).await?;
    // The mode of the file read, not of whatever the path names later.
    let mode = std::os::unix::fs::PermissionsExt::mode(&file.metadata().await?.permissions());
    crate::config::private_mode("agent.api.tokenFile", path, mode)
        .map_err(std::io::Error::other)?;
    use tokio::io::AsyncReadExt;
    let mut token = String::new();
    file.take(64 << 10).read_to_string(&mut token).await?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::other(format!(
            "{} is empty",
            path.display()
        )));
    }
    Ok(token)
}

fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/instances", get(list))
        .route("/v1/instances/{id}", put(register).delete(deregister))
        .route("/v1/instances/{id}/pass", put(pass))
        .route(
            "/v1/instances/{id}/maintenance",
            put(maintenance_on).delete(maintenance_off),
        )
        .route("/v1/instances/{id}/drain", post(drain))
        .route(
            "/v1/maintenance",
            put(node_maintenance_on).delete(node_maintenance_off),
        )
        .route("/v1/drain", post(node_drain))
        .fallback(|| async { ApiReply::error(404, "no such route (see README: Local API)") })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiReply::error(
                405,
                format!(
                    "{method} is not a method of {} (see README: Local API)",
                    uri.path()
                ),
            )
        })
        // Outside the routing: on TCP the token is checked before anything
        // else, so an unknown route or method answers 401 too.
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Lets a request through: on the socket always (its file mode is the
/// access control), on TCP with the token.
async fn authorize(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Some(token) = state.token.as_deref() {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return ApiReply::error(401, "a bearer token is required (agent.api.tokenFile)")
                .into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body, at most [`body::MAX_BODY`] bytes.
async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiReply> {
    axum::body::to_bytes(body, body::MAX_BODY)
        .await
        .map_err(|_| {
            ApiReply::error(
                413,
                format!("body larger than {} KiB", body::MAX_BODY >> 10),
            )
        })
}

fn valid_id(id: &str) -> Result<(), ApiReply> {
    body::check_id(id).map_err(|e| ApiReply::invalid(vec![e]))
}

/// Hands `call` to the supervisor and waits for its answer.
async fn ask(state: &ApiState, call: impl Into<ApiCall>) -> ApiReply {
    let call = call.into();
    let (reply, answer) = oneshot::channel();
    let unavailable = |why: &str| ApiReply::error(503, why);
    if state
        .calls
        .send_timeout(ApiRequest { call, reply }, ANSWER_WAIT)
        .await
        .is_err()
    {
        return unavailable("the agent is stopping or busy");
    }
    match tokio::time::timeout(ANSWER_WAIT, answer).await {
        Ok(Ok(reply)) => reply,
        _ => unavailable("the agent did not answer"),
    }
}

async fn list(State(state): State<ApiState>) -> ApiReply {
    ask(&state, ApiCall::List).await
}

async fn register(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> ApiReply {
    if let Err(reply) = valid_id(&id) {
        return reply;
    }
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(reply) => return reply,
    };
    let defaults = state.defaults.borrow().clone();
    match body::registration(&bytes, &defaults) {
        Ok(registration) => {
            let registration = Box::new(registration);
            // UTF-8 already (`body::registration` checked it).
            let body = String::from_utf8_lossy(&bytes).into_owned();
            let change = ApiChange::Register {
                id,
                registration,
                body,
            };
            ask(&state, change).await
        }
        Err(problems) => ApiReply::invalid(problems),
    }
}

async fn with_id(state: &ApiState, id: String, call: impl FnOnce(String) -> ApiChange) -> ApiReply {
    match valid_id(&id) {
        Ok(()) => ask(state, call(id)).await,
        Err(reply) => reply,
    }
}

async fn deregister(State(state): State<ApiState>, UrlPath(id): UrlPath<String>) -> ApiReply {
    with_id(&state, id, |id| ApiChange::Deregister { id }).await
}

async fn pass(State(state): State<ApiState>, UrlPath(id): UrlPath<String>) -> ApiReply {
    with_id(&state, id, |id| ApiChange::Pass { id }).await
}

async fn drain(State(state): State<ApiState>, UrlPath(id): UrlPath<String>) -> ApiReply {
    with_id(&state, id, |id| ApiChange::Drain { id: Some(id) }).await
}

async fn node_drain(State(state): State<ApiState>) -> ApiReply {
    ask(&state, ApiChange::Drain { id: None }).await
}

async fn reason_of(body: Body) -> Result<String, ApiReply> {
    let bytes = read_body(body).await?;
    body::reason(&bytes).map_err(ApiReply::invalid)
}

async fn maintenance_on(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> ApiReply {
    if let Err(reply) = valid_id(&id) {
        return reply;
    }
    match reason_of(body).await {
        Ok(reason) => {
            let call = ApiChange::Maintenance {
                id: Some(id),
                reason: Some(reason),
            };
            ask(&state, call).await
        }
        Err(reply) => reply,
    }
}

async fn maintenance_off(State(state): State<ApiState>, UrlPath(id): UrlPath<String>) -> ApiReply {
    with_id(&state, id, |id| ApiChange::Maintenance {
        id: Some(id),
        reason: None,
    })
    .await
}

async fn node_maintenance_on(State(state): State<ApiState>, body: Body) -> ApiReply {
    match reason_of(body).await {
        Ok(reason) => {
            let call = ApiChange::Maintenance {
                id: None,
                reason: Some(reason),
            };
            ask(&state, call).await
        }
        Err(reply) => reply,
    }
}

async fn node_maintenance_off(State(state): State<ApiState>) -> ApiReply {
    let call = ApiChange::Maintenance {
        id: None,
        reason: None,
    };
    ask(&state, call).await
}
