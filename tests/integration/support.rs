//! Test support: real etcd processes on loopback ports in temp dirs
//! (`etcd`), the agent binary as a child process (`agent`), its config files
//! (`config`), its HTTP endpoints (`http`), a fault proxy between the
//! agent and etcd (`proxy`), a fleet of agents (`fleet`), what etcd holds
//! under the registry prefix and a watch that counts its changes (`keys`),
//! the Python and JavaScript plugins with one compile cache per test run
//! (`polyglot`), `/proc/<pid>/status` (`process`), systemd's notify socket
//! (`systemd`), headless Chromium
//! through WebDriver (`browser`). Everything started here
//! is killed when its handle drops. Tests `use crate::support::*`.
//!
//! Used by name rather than glob: the gap observer (`observer`), the
//! helpers the fault tests share (`faults`), a plugin that takes seconds
//! to compile (`big_component`) and another local user's connection flood
//! (`flood`).

// Explicit paths, so `host/examples/bench.rs` can include this file with
// `#[path]` and still find the submodules (a `#[path]` module looks for its
// children beside it, not in a folder named after it).
#[path = "support/agent.rs"]
mod agent;
#[path = "support/big_component.rs"]
pub mod big_component;
#[path = "support/browser.rs"]
mod browser;
#[path = "support/config.rs"]
mod config;
#[path = "support/etcd.rs"]
mod etcd;
#[path = "support/faults.rs"]
pub mod faults;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/flood.rs"]
pub mod flood;
#[path = "support/http.rs"]
mod http;
#[path = "support/keys.rs"]
mod keys;
#[path = "support/observer.rs"]
pub mod observer;
#[path = "support/polyglot.rs"]
mod polyglot;
#[path = "support/process.rs"]
mod process;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/systemd.rs"]
mod systemd;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use agent::*;
pub use browser::*;
pub use config::*;
pub use etcd::*;
pub use fleet::*;
pub use http::*;
pub use keys::*;
pub use polyglot::*;
pub use process::*;
pub use proxy::*;
pub use systemd::*;

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

/// The `metadata` of the Yggdrasil record under `key`, values as strings
/// (`None`: no such key, or not a record).
pub fn metadata_of(
    entries: &BTreeMap<String, Entry>,
    key: &str,
) -> Option<BTreeMap<String, String>> {
    let value: serde_json::Value = serde_json::from_str(&entries.get(key)?.value).ok()?;
    let map = value.get("metadata")?.as_object()?;
    Some(
        map.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
    )
}

/// The seed instance's metadata (under the default prefix) once it
/// satisfies `check`, waiting at most `limit`.
pub async fn wait_metadata(
    etcd: &Etcd,
    what: &str,
    limit: Duration,
    check: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let endpoints = etcd.endpoints();
    let check = &check;
    wait_for(limit, what, || {
        let endpoints = endpoints.clone();
        async move {
            let entries = try_entries(&endpoints, "/yggdrasil/registry/").await?;
            metadata_of(&entries, SEED_KEY).filter(|m| check(m))
        }
    })
    .await
    .0
}

/// Sends SIGTERM to `agent` while a plugin compiles and checks it stops
/// promptly: exit 0 within 2 s, before the compile ended, with every key
/// under `prefix` deleted. `what` names the compile in the test's output.
pub async fn assert_sigterm_stops_mid_compile(
    agent: &mut Agent,
    etcd: &Etcd,
    prefix: &str,
    what: &str,
) {
    agent.signal(libc::SIGTERM);
    let (status, took) = agent.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let log = agent.log();
    assert!(
        !log.contains("plugin loaded"),
        "the agent finished the compile before stopping:\n{log}"
    );
    eprintln!("SIGTERM during {what}: deregistered and exited in {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} to stop:\n{log}"
    );
    let mut client = etcd.client().await;
    assert!(entries(&mut client, prefix).await.is_empty());
}

/// Waits (at most `limit`) until no key is left under `prefix`; how long
/// that took.
pub async fn wait_prefix_empty(etcd: &Etcd, prefix: &str, limit: Duration, what: &str) -> Duration {
    let endpoints = etcd.endpoints();
    wait_for(limit, what, || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, prefix)
                .await
                .filter(|e| e.is_empty())
        }
    })
    .await
    .1
}
