//! Upgrade in place (issue 21, item 1): SIGUSR2 starts the binary at the
//! path the agent was started from and hands it the lease, what was
//! written, the listeners, maintenance and drains. The binary is started
//! from a copy in the test's folder, and "upgraded" the way a package
//! manager does it: a new file renamed over the old one.
//!
//! An etcd watch on the prefix from before the upgrade counts DELETE (a
//! caller sees the instance gone) and PUT events (a rewrite of an
//! unchanged key); the gap observer checks every key throughout; a client
//! polls the local API socket throughout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use ygg_agent::api::client::call;

use crate::support::faults::{instances_expected, seed_expected};
use crate::support::observer::Observer;
use crate::support::*;

/// Copies `from` to `dir/ygg-agent` as a package manager installs a
/// file: written under a temporary name, then renamed over the old one.
fn install_binary(from: &Path, dir: &Path) -> PathBuf {
    let target = dir.join("ygg-agent");
    let temp = dir.join(".ygg-agent.new");
    std::fs::copy(from, &temp).unwrap();
    std::fs::rename(&temp, &target).unwrap();
    target
}

/// Writes `text` as the "new binary" (renamed over the old), with `mode`.
fn install_file(dir: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let temp = dir.join(".ygg-agent.new");
    std::fs::write(&temp, text).unwrap();
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&temp, dir.join("ygg-agent")).unwrap();
}

/// The seed instance, 20 others, the local API on a socket in the agent's
/// folder and an admin listener; no `agent.stateDir`, so no lease record
/// on disk (the lease is handed over, not read back from a file), and
/// maintenance kept under the agent's own `XDG_STATE_HOME`.
fn upgradable(etcd: &Etcd) -> (Agent, PathBuf, String, BTreeMap<String, String>) {
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = format!("{SEED_INSTANCE}{}", instances("other", 20));
    let mut agent = Agent::prepare(&config);
    let socket = agent.dir.path().join("agent.sock");
    let admin = format!("127.0.0.1:{}", free_port());
    config.agent_extra = format!(
        "  api:\n    socket: {}\n  admin:\n    listen: {admin}\n",
        socket.display()
    );
    agent.rewrite_config(&config);
    let bin = agent.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let program = install_binary(&agent_binary(), &bin);
    let state = agent.dir.path().join("xdg-state");
    agent.spawn_program(&program, &[], |command| {
        command.env("XDG_STATE_HOME", state);
    });
    let mut expected = seed_expected();
    expected.extend(instances_expected("other", 20));
    (agent, socket, admin, expected)
}

/// The pid in the log line that says the upgrade started (the last one).
fn new_pid(agent: &Agent) -> u32 {
    let log = agent.log();
    let line = log
        .lines()
        .rfind(|l| l.contains("SIGUSR2: upgrade started"))
        .expect("an upgrade started");
    let pid = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("pid="))
        .expect("the new pid in the log line");
    pid.parse().unwrap()
}

/// Whether `pid` runs (not gone, not a zombie nobody reaped yet).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The new process, started by the old one (not the test's child): killed
/// when the test ends, however it ends.
struct Adopted(u32);

impl Adopted {
    async fn wait_gone(&self, limit: Duration) {
        wait_for(limit, "the new agent process to exit", || async {
            (!running(self.0)).then_some(())
        })
        .await;
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        if running(self.0) {
            send_signal(self.0, libc::SIGKILL);
        }
    }
}

/// Polls the local API socket (a listing) and the admin `/healthz` until
/// stopped; counts answers and failures (a refused or unanswered call).
struct Poller {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    fn start(socket: PathBuf, admin: String) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, a, f) = (stop.clone(), answered.clone(), failures.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                match call(&socket, "GET", "/v1/instances", None).await {
                    Ok((200, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((status, body)) => {
                        f.lock().unwrap().push(format!("socket: {status} {body}"))
                    }
                    Err(error) => f.lock().unwrap().push(format!("socket: {error}")),
                }
                match http_get(&admin, "/healthz").await {
                    Some((200, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    other => f.lock().unwrap().push(format!("admin: {other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Poller {
            stop,
            answered,
            failures,
            task,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.answered.load(Ordering::SeqCst), failures)
    }
}

/// Every key under the prefix with its revision and lease.
async fn held(etcd: &Etcd) -> BTreeMap<String, (String, i64, i64)> {
    let mut client = etcd.client().await;
    entries(&mut client, PREFIX)
        .await
        .into_iter()
        .map(|(k, e)| (k, (e.value, e.mod_revision, e.lease)))
        .collect()
}

async fn listing_states(socket: &Path) -> BTreeMap<String, String> {
    let (status, listing) = call(socket, "GET", "/v1/instances", None)
        .await
        .expect("the agent answers");
    assert_eq!(status, 200, "{listing}");
    listing["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i: &Value| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The id the local API gives a config instance: its key's last segment.
fn id_of(key: &str) -> String {
    key.rsplit('/').next().unwrap().to_string()
}

/// The whole promise: the binary file replaced, SIGUSR2; the new binary
/// runs, the old process is gone, and callers noticed nothing: no DELETE,
/// no rewrite of an unchanged key, every key present throughout, one
/// lease (the same one), the socket and the admin listener answering
/// throughout, maintenance, drains and API registrations carried over.
/// The new process upgrades again the same way; SIGTERM to the last one
/// still deregisters everything.
#[tokio::test]
async fn sigusr2_hands_everything_to_the_new_binary_without_a_gap() {
    let etcd = Etcd::start().await;
    let (mut agent, socket, admin, mut expected) = upgradable(&etcd);
    let observer = Observer::start(etcd.endpoints(), PREFIX, expected.clone()).await;
    observer.wait_all_good(PATIENCE).await;
    agent.wait_for_log("local API listening", PATIENCE).await;

    // One instance in maintenance, one drained: out of etcd, and they must
    // stay out after the upgrade (no state folder: handed over).
    let keys: Vec<String> = instances_expected("other", 20).into_keys().collect();
    let (maint, drained) = (id_of(&keys[0]), id_of(&keys[1]));
    let body = br#"{"reason": "disk swap"}"#.to_vec();
    let (status, answer) = call(
        &socket,
        "PUT",
        &format!("/v1/instances/{maint}/maintenance"),
        Some(body),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = call(
        &socket,
        "POST",
        &format!("/v1/instances/{drained}/drain"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    expected.remove(&keys[0]);
    expected.remove(&keys[1]);
    // And an app registered through the API, with a TTL (never on disk).
    let app = br#"{"name": "app", "version": "1", "ttl": "60s",
        "endpoints": [{"scheme": "http", "address": "127.0.0.1:7001"}]}"#;
    let (status, answer) = call(&socket, "PUT", "/v1/instances/app-1", Some(app.to_vec()))
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let (now, _) = wait_for(
        PATIENCE,
        "the held-out keys gone, the app's there",
        || async {
            let now = held(&etcd).await;
            let settled = !now.contains_key(&keys[0])
                && !now.contains_key(&keys[1])
                && now.keys().any(|k| k.contains("/default/app/"));
            settled.then_some(now)
        },
    )
    .await;
    let (app_key, (app_value, _, _)) = now
        .into_iter()
        .find(|(k, _)| k.contains("/default/app/"))
        .expect("the app's key");
    expected.insert(app_key, app_value);
    let observer = Observer::start(etcd.endpoints(), PREFIX, expected.clone()).await;
    observer.wait_all_good(PATIENCE).await;

    let before = held(&etcd).await;
    let lease = before.values().next().unwrap().2;
    let watch = KeyWatch::start(&etcd, PREFIX).await;
    let poller = Poller::start(socket.clone(), admin.clone());
    use std::os::unix::fs::MetadataExt;
    let socket_inode = std::fs::metadata(&socket).unwrap().ino();
    let old_pid = agent.pid();

    // The package manager's part, then the operator's.
    let bin = agent.dir.path().join("bin");
    install_binary(&agent_binary(), &bin);
    let t_signal = Instant::now();
    agent.signal(libc::SIGUSR2);
    agent
        .wait_for_log("upgrade: the new process is ready", PATIENCE)
        .await;
    let ready = t_signal.elapsed();
    let (status, _) = agent.wait_exit(PATIENCE);
    assert!(status.success(), "the old agent exited with {status}");
    let new = Adopted(new_pid(&agent));
    assert_ne!(new.0, old_pid);
    assert!(running(new.0), "the new agent is not running");
    // The new binary, not the old (deleted) file.
    let exe = std::fs::read_link(format!("/proc/{}/exe", new.0)).unwrap();
    assert_eq!(exe, bin.join("ygg-agent"), "the new process runs {exe:?}");
    // A moment of the new agent alone, still answering.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (answered, failures) = poller.finish().await;
    eprintln!(
        "upgrade: ready {} ms after SIGUSR2; {answered} answers during it",
        ready.as_millis()
    );

    assert!(failures.is_empty(), "callers were refused: {failures:?}");
    assert!(answered > 0, "the poller never got an answer");
    let w = observer.window_from(t_signal);
    assert!(w.is_clean(), "a gap during the upgrade: {w:?}");
    watch.sync().await;
    let events = watch.events();
    let deletes: Vec<_> = events
        .iter()
        .filter(|e| e.kind == KeyChange::Delete)
        .collect();
    assert!(deletes.is_empty(), "DELETE events: {deletes:?}");
    assert!(
        events.is_empty(),
        "unchanged keys were rewritten: {events:?}"
    );
    assert_eq!(
        held(&etcd).await,
        before,
        "keys, revisions or lease changed"
    );
    let mut client = etcd.client().await;
    assert_eq!(
        leases(&mut client).await,
        vec![lease],
        "one lease, the same"
    );
    // Maintenance and the drain came along.
    let states = listing_states(&socket).await;
    assert_eq!(states[&maint], "maintenance", "{states:?}");
    assert_eq!(states[&drained], "drained", "{states:?}");
    assert_eq!(states["app-1"], "registered", "{states:?}");
    // Its TTL came along too: a pass is accepted.
    let (status, answer) = call(&socket, "PUT", "/v1/instances/app-1/pass", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    // The very socket the old process bound: handed over, not bound anew.
    let inode = std::fs::metadata(&socket).map(|m| m.ino());
    assert_eq!(inode.ok(), Some(socket_inode), "the socket was bound anew");

    // Again, from the new process: its own launch (the path it was
    // started from) and its own handover.
    install_binary(&agent_binary(), &bin);
    send_signal(new.0, libc::SIGUSR2);
    agent
        .wait_for_log_count("upgrade: the new process is ready", 2, PATIENCE)
        .await;
    new.wait_gone(PATIENCE).await;
    let newer = Adopted(new_pid(&agent));
    assert_ne!(newer.0, new.0);
    assert!(running(newer.0), "the second new agent is not running");
    watch.sync().await;
    let events = watch.events();
    assert!(
        events.is_empty(),
        "the second upgrade changed etcd: {events:?}"
    );
    assert_eq!(
        held(&etcd).await,
        before,
        "keys, revisions or lease changed"
    );
    assert_eq!(
        leases(&mut client).await,
        vec![lease],
        "one lease, the same"
    );

    // SIGTERM keeps its meaning for the new process.
    send_signal(newer.0, libc::SIGTERM);
    wait_prefix_empty(&etcd, PREFIX, PATIENCE, "deregistration after the upgrade").await;
    newer.wait_gone(PATIENCE).await;
    assert!(
        leases(&mut client).await.is_empty(),
        "the lease was not revoked"
    );
    assert!(agent.log().contains("lease revoked"));
}

/// Waits for the `count`th "upgrade failed" line and checks it says `why`,
/// as an error.
async fn upgrade_failed(agent: &Agent, count: usize, why: &str) {
    agent
        .wait_for_log_count("upgrade failed:", count, PATIENCE)
        .await;
    let log = agent.log();
    let line = log
        .lines()
        .filter(|l| l.contains("upgrade failed:"))
        .nth(count - 1)
        .unwrap();
    assert!(line.contains(why), "expected {why:?} in {line}");
    assert!(line.contains("ERROR"), "not an error line: {line}");
    assert!(line.contains("keeps every registration"), "{line}");
}

/// What the new binary cannot do never costs a registration: a file that
/// is not executable, a program that exits at once, one that hangs on
/// (and a second SIGUSR2 meanwhile), and the real binary refusing the
/// config. Each time the old agent logs why and keeps running: no DELETE,
/// every key, the same lease. SIGTERM afterwards deregisters everything.
#[tokio::test]
async fn a_broken_new_binary_or_a_refused_config_keeps_the_old_agent() {
    let etcd = Etcd::start().await;
    let (mut agent, socket, _admin, expected) = upgradable(&etcd);
    let observer = Observer::start(etcd.endpoints(), PREFIX, expected.clone()).await;
    observer.wait_all_good(PATIENCE).await;
    agent.wait_for_log("local API listening", PATIENCE).await;
    let before = held(&etcd).await;
    let lease = before.values().next().unwrap().2;
    let watch = KeyWatch::start(&etcd, PREFIX).await;
    let bin = agent.dir.path().join("bin");
    let t_start = Instant::now();
    // Not executable.
    install_file(&bin, "not a program\n", 0o644);
    agent.signal(libc::SIGUSR2);
    upgrade_failed(&agent, 1, "Permission denied").await;
    // Exits at once.
    install_file(&bin, "#!/bin/sh\nexit 1\n", 0o755);
    agent.signal(libc::SIGUSR2);
    upgrade_failed(&agent, 2, "it exited").await;
    // Gone.
    std::fs::remove_file(bin.join("ygg-agent")).unwrap();
    agent.signal(libc::SIGUSR2);
    upgrade_failed(&agent, 3, "No such file").await;
    // Takes its time and never says ready; a second SIGUSR2 and a change
    // through the API meanwhile are refused.
    install_file(&bin, "#!/bin/sh\nsleep 2\nexit 3\n", 0o755);
    agent.signal(libc::SIGUSR2);
    agent
        .wait_for_log_count("SIGUSR2: upgrade started", 2, PATIENCE)
        .await;
    agent.signal(libc::SIGUSR2);
    let (status, answer) = call(&socket, "PUT", "/v1/maintenance", Some(b"{}".to_vec()))
        .await
        .unwrap();
    assert_eq!(status, 503, "{answer}");
    upgrade_failed(&agent, 4, "it exited").await;
    assert!(
        agent
            .log()
            .contains("SIGUSR2 ignored: an upgrade is already under way"),
        "the second SIGUSR2 was not ignored"
    );
    // The real binary, but a config it refuses (the running agent refuses
    // the edit too, and keeps its config).
    install_binary(&agent_binary(), &bin);
    let config = std::fs::read_to_string(&agent.config_path).unwrap();
    std::fs::write(&agent.config_path, config.replace("ttl: 4s", "ttl: soon")).unwrap();
    agent.signal(libc::SIGUSR2);
    upgrade_failed(&agent, 5, "it exited").await;
    assert!(
        agent.log().lines().any(|l| l.starts_with("error: ")),
        "the new binary did not say what it refused"
    );

    assert!(running(agent.pid()), "the old agent stopped");
    let w = observer.window_from(t_start);
    assert!(w.is_clean(), "a gap: {w:?}");
    watch.sync().await;
    let deletes = watch.count(KeyChange::Delete);
    assert_eq!(deletes, 0, "DELETE events: {:?}", watch.events());
    let mut client = etcd.client().await;
    assert_eq!(
        leases(&mut client).await,
        vec![lease],
        "one lease, the same"
    );
    assert_eq!(held(&etcd).await.len(), expected.len(), "keys went missing");

    agent.signal(libc::SIGTERM);
    wait_prefix_empty(&etcd, PREFIX, PATIENCE, "deregistration").await;
    agent.wait_exit(PATIENCE);
    assert!(
        leases(&mut client).await.is_empty(),
        "the lease was not revoked"
    );
}

/// What systemd hears (`NotifyAccess=all`): the new process announces
/// itself with `MAINPID=<its pid>` and `READY=1`, the old one never says
/// `STOPPING=1`, and the watchdog keeps being pinged afterwards (the new
/// process reads `WATCHDOG_USEC`; `WATCHDOG_PID` named the old one).
#[tokio::test]
async fn systemd_hears_the_new_main_pid_and_no_stopping() {
    let etcd = Etcd::start().await;
    let config = ConfigFile::new(etcd.endpoints());
    let mut agent = Agent::prepare(&config);
    let mut systemd = FakeSystemd::bind(agent.dir.path());
    let bin = agent.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let program = install_binary(&agent_binary(), &bin);
    let env = systemd.env().map(|(name, value)| (name, value.to_string()));
    agent.spawn_program(&program, &[], move |command| {
        command.envs(env);
    });
    let old_pid = agent.pid();
    let ready = |h: &[String]| h.iter().any(|m| m.contains("READY=1"));
    systemd.listen_until(ready);
    assert!(
        !systemd.heard_any("MAINPID="),
        "a first start says no MAINPID: {:?}",
        systemd.heard
    );
    systemd.heard.clear();
    install_binary(&agent_binary(), &bin);
    agent.signal(libc::SIGUSR2);
    systemd.listen_until(ready);
    agent.wait_exit(PATIENCE);
    let new = Adopted(new_pid(&agent));
    let said = systemd
        .heard
        .iter()
        .find(|m| m.contains("READY=1"))
        .unwrap();
    assert!(
        said.contains(&format!("MAINPID={}\n", new.0)),
        "READY=1 without the new MAINPID: {said:?}"
    );
    assert_ne!(new.0, old_pid);
    // Pings after the old process is gone: the new one's.
    systemd.heard.clear();
    systemd.listen_until(|h| h.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2);
    assert!(
        !systemd.heard_any("STOPPING=1"),
        "STOPPING=1 after an upgrade: {:?}",
        systemd.heard
    );
    send_signal(new.0, libc::SIGTERM);
    systemd.listen_until(|h| h.iter().any(|m| m.contains("STOPPING=1")));
    new.wait_gone(PATIENCE).await;
}
