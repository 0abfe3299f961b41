//! Test support: real etcd processes on loopback ports in temp dirs
//! (`etcd`), the agent binary as a child process (`agent`), its config files
//! (`config`), its HTTP endpoints (`http`), a fault proxy between the
//! agent and etcd (`proxy`) and a fleet of agents (`fleet`). Everything started here is
//! killed when its handle drops. Tests `use crate::support::*`.

// Explicit paths, so `host/examples/bench.rs` can include this file with
// `#[path]` and still find the submodules (a `#[path]` module looks for its
// children beside it, not in a folder named after it).
#[path = "support/agent.rs"]
mod agent;
#[path = "support/config.rs"]
mod config;
#[path = "support/etcd.rs"]
mod etcd;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/http.rs"]
mod http;
#[path = "support/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

pub use agent::*;
pub use config::*;
pub use etcd::*;
pub use fleet::*;
pub use http::*;
pub use proxy::*;

/// Generous bound for things that should happen "soon" (process start, etc.).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until no other heavy test runs and keeps them out until the
/// returned permit drops. A test that starts a 3-member cluster or
/// registers a thousand instances holds it for its whole run, so two such
/// tests never starve each other (or a measured window) on a small
/// machine; light tests keep running beside it.
pub async fn heavy_test() -> tokio::sync::SemaphorePermit<'static> {
    static HEAVY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    HEAVY
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`
/// saying `what` did not happen. Returns the value and the time it took.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return (value, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// A TCP listener on 127.0.0.1:`port` that accepts connections and drops
/// them, until the task is aborted: a service a `tcp` health check can see
/// die (abort) and come back (call again).
pub async fn accept_and_drop(port: u16) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    })
}
