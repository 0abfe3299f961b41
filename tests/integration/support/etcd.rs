//! etcd for tests: single members and clusters as real processes on
//! loopback in temp dirs, started again on new ports when a start fails,
//! and helpers to read what etcd holds (entries, leases).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use tempfile::TempDir;

use super::{PATIENCE, send_signal};

/// How many times a new etcd (or cluster) is started on fresh ports before
/// the test fails: another process may take a port between `free_port`
/// checking it and etcd binding it.
const START_ATTEMPTS: usize = 3;

/// How much of a failing member's log a panic message quotes.
const LOG_TAIL_LINES: usize = 40;

/// The ports `free_port` walks through: below the kernel's ephemeral range,
/// so no outgoing connection (our clients', the agent's) is ever given one
/// as its local port between our check and etcd's bind.
fn port_range() -> std::ops::Range<u16> {
    const LOWEST: u16 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768u16);
    LOWEST..ephemeral_low.max(LOWEST + 1_000)
}

/// A port nobody listens on right now and that no other caller in this
/// process has been given: ports are handed out in turn from a random
/// start (so two test processes rarely walk the same ones), skipping those
/// something already listens on.
pub fn free_port() -> u16 {
    static NEXT: LazyLock<Mutex<u16>> =
        LazyLock::new(|| Mutex::new(rand::random_range(port_range())));
    let range = port_range();
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in range.clone() {
        let port = *next;
        *next = if port + 1 >= range.end {
            range.start
        } else {
            port + 1
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {range:?}");
}

/// TLS for an etcd that serves clients over https.
#[derive(Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Require client certificates signed by `ca`.
    pub client_cert_auth: bool,
    /// The certificate the test's own client presents.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// One etcd member.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    initial_cluster: String,
    child: Option<Child>,
    log: PathBuf,
    tls: Option<EtcdTls>,
    /// More etcd flags (`--auth-token-ttl 2`).
    extra_args: Vec<String>,
}

impl EtcdMember {
    pub fn endpoint(&self) -> String {
        match self.tls {
            Some(_) => format!("https://127.0.0.1:{}", self.client_port),
            None => format!("127.0.0.1:{}", self.client_port),
        }
    }

    fn spawn(&mut self, state: &str) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
            // etcd 3.4 asks every client for a certificate as soon as it
            // has a trusted CA, so server-only TLS must not name one.
            if tls.client_cert_auth {
                command
                    .arg("--trusted-ca-file")
                    .arg(&tls.ca)
                    .arg("--client-cert-auth");
            }
        }
        let child = command
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "ygg-test"])
            // Quick elections keep failover tests short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"])
            .args(&self.extra_args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd is not installed: apt-get install -y etcd-server etcd-client");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Deletes the member's data and starts it empty (it must be stopped),
    /// not waiting for it: with the other members of its initial cluster it
    /// forms the cluster again.
    pub fn start_wiped(&mut self) {
        if self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir).expect("wipe data dir");
        }
        self.spawn("new");
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP, returning once every thread of the member is stopped:
    /// kill(2) returns before that, and on a busy machine a thread woken by
    /// a request could otherwise still answer it after `pause` returned.
    pub fn pause(&self) {
        let pid = self.pid();
        send_signal(pid, libc::SIGSTOP);
        let start = Instant::now();
        while !all_threads_stopped(pid) {
            assert!(
                start.elapsed() < PATIENCE,
                "etcd {pid} not stopped {PATIENCE:?} after SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn resume(&self) {
        send_signal(self.pid(), libc::SIGCONT);
    }

    /// Started by the test and not stopped by it (it may have exited on
    /// its own: see `exited`).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How the process ended, if it ended on its own (a port taken, a
    /// crash) while the test meant it to run.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The last lines of this member's log, for a panic message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!(
            "--- {} (client port {}, peer port {}), last {LOG_TAIL_LINES} lines of its log ---\n{tail}",
            self.name, self.client_port, self.peer_port
        )
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused process must be resumed to die promptly.
            let _ = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
        }
        self.kill9();
    }
}

/// A single etcd or a cluster of several members, each its own process.
pub struct Etcd {
    pub members: Vec<EtcdMember>,
    _dir: TempDir,
}

impl Etcd {
    /// One etcd, healthy when this returns.
    pub async fn start() -> Etcd {
        Self::start_cluster(1).await
    }

    /// One etcd serving clients over TLS, healthy when this returns.
    pub async fn start_tls(tls: EtcdTls) -> Etcd {
        Self::start_members(1, Some(tls), &[]).await
    }

    /// `size` members on loopback, healthy (with a leader) when this returns.
    pub async fn start_cluster(size: usize) -> Etcd {
        Self::start_members(size, None, &[]).await
    }

    /// One etcd started with more flags (`--auth-token-ttl`, …).
    pub async fn start_with_args(args: &[&str]) -> Etcd {
        Self::start_members(1, None, args).await
    }

    /// Starts the members on fresh ports; when one exits or the cluster
    /// does not become healthy, stops them all and starts again on other
    /// ports. Panics with each failing member's log after the last attempt.
    async fn start_members(size: usize, tls: Option<EtcdTls>, args: &[&str]) -> Etcd {
        #[cfg(test)]
        super::prepare_polyglot_in_background();
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut etcd = Self::spawn_new(size, tls.clone(), args);
            match etcd.healthy_within(PATIENCE).await {
                Ok(()) => return etcd,
                // The logs are read here, before the temp dir goes.
                Err(why) => {
                    if attempt < START_ATTEMPTS {
                        let first_line = why.lines().next().unwrap_or_default();
                        eprintln!(
                            "etcd start attempt {attempt} failed ({first_line}); again on new ports"
                        );
                    }
                    failures.push(format!("attempt {attempt}: {why}"));
                }
            }
        }
        panic!(
            "etcd ({size} member(s)) did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    fn spawn_new(size: usize, tls: Option<EtcdTls>, args: &[&str]) -> Etcd {
        let dir = fast_tempdir();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client_port, peer_port))| EtcdMember {
                name: format!("n{i}"),
                client_port: *client_port,
                peer_port: *peer_port,
                data_dir: dir.path().join(format!("n{i}.etcd")),
                initial_cluster: initial_cluster.clone(),
                child: None,
                log: dir.path().join(format!("n{i}.log")),
                tls: tls.clone(),
                extra_args: args.iter().map(|a| a.to_string()).collect(),
            })
            .collect();
        let mut etcd = Etcd { members, _dir: dir };
        for member in &mut etcd.members {
            member.spawn("new");
        }
        etcd
    }

    /// Every endpoint, comma-free, for the config file.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::endpoint).collect()
    }

    pub fn endpoint(&self) -> String {
        self.members[0].endpoint()
    }

    /// Options for the test's own clients (TLS when etcd serves it).
    pub fn connect_options(&self) -> Option<etcd_client::ConnectOptions> {
        let tls = self.members[0].tls.as_ref()?;
        let mut options = etcd_client::TlsOptions::new().ca_certificate(
            etcd_client::Certificate::from_pem(std::fs::read(&tls.ca).unwrap()),
        );
        if let Some((cert, key)) = &tls.client_identity {
            options = options.identity(etcd_client::Identity::from_pem(
                std::fs::read(cert).unwrap(),
                std::fs::read(key).unwrap(),
            ));
        }
        Some(etcd_client::ConnectOptions::new().with_tls(options))
    }

    /// A client that talks to every member.
    pub async fn client(&self) -> Client {
        Client::connect(self.endpoints(), self.connect_options())
            .await
            .expect("etcd client")
    }

    /// Waits until a write through the running members succeeds; panics
    /// with their logs when one exits or none succeeds in time.
    pub async fn wait_healthy(&mut self) {
        if let Err(why) = self.healthy_within(PATIENCE).await {
            panic!("{why}");
        }
    }

    /// Waits until a write through the running members succeeds. The error
    /// names what went wrong and quotes the log of each member that exited,
    /// or of every running member when none did.
    async fn healthy_within(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(EtcdMember::endpoint)
            .collect();
        loop {
            let exited: Vec<String> = self
                .members
                .iter_mut()
                .filter_map(|m| {
                    let status = m.exited()?;
                    Some(format!("{} exited ({status})\n{}", m.name, m.log_tail()))
                })
                .collect();
            if !exited.is_empty() {
                return Err(exited.join("\n"));
            }
            let probe = tokio::time::timeout(Duration::from_secs(2), async {
                let mut client = Client::connect(&endpoints, self.connect_options()).await?;
                client.put("/ygg-test/health", "ok", None).await
            })
            .await;
            if matches!(probe, Ok(Ok(_))) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .filter(|m| m.is_running())
                    .map(EtcdMember::log_tail)
                    .collect();
                return Err(format!(
                    "etcd did not become healthy within {limit:?}\n{}",
                    logs.join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// kill -9 every member.
    pub fn kill9(&mut self) {
        for member in &mut self.members {
            member.kill9();
        }
    }

    /// Starts every stopped member again with its data (on its own ports:
    /// the agent's config names them).
    pub async fn restart(&mut self) {
        for member in &mut self.members {
            if !member.is_running() {
                member.spawn("existing");
            }
        }
        self.wait_healthy().await;
    }

    /// kill -9, delete the data, start empty: etcd forgets every key and
    /// lease. Every member of a cluster is wiped and the cluster formed
    /// again on the same ports.
    pub async fn wipe_and_restart(&mut self) {
        self.kill9();
        self.wipe();
        self.wait_healthy().await;
    }

    /// Starts every stopped member again with its data, not waiting for
    /// health.
    pub fn respawn(&mut self) {
        for member in &mut self.members {
            if !member.is_running() {
                member.spawn("existing");
            }
        }
    }

    /// Deletes the data of every stopped member and starts it empty (not
    /// waiting for health).
    pub fn wipe(&mut self) {
        for member in &mut self.members {
            if member.is_running() {
                continue;
            }
            if member.data_dir.exists() {
                std::fs::remove_dir_all(&member.data_dir).expect("wipe data dir");
            }
            member.spawn("new");
        }
    }

    pub fn pause(&self) {
        for member in &self.members {
            member.pause();
        }
    }

    pub fn resume(&self) {
        for member in &self.members {
            member.resume();
        }
    }

    /// The member that leads, by asking each member's status.
    /// Turns authentication on: a root user ([`ETCD_ROOT`], which etcd
    /// needs first) and the agent's user ([`ETCD_AGENT`]) with read-write
    /// access under `prefix` only.
    pub async fn enable_auth(&self, prefix: &str) {
        use etcd_client::Permission;
        let mut root = self.client().await;
        root.user_add(ETCD_ROOT.0, ETCD_ROOT.1, None).await.unwrap();
        root.user_grant_role(ETCD_ROOT.0, "root").await.unwrap();
        root.role_add("registry").await.unwrap();
        let access = Permission::read_write(prefix).with_prefix();
        root.role_grant_permission("registry", access)
            .await
            .unwrap();
        root.user_add(ETCD_AGENT.0, ETCD_AGENT.1, None)
            .await
            .unwrap();
        root.user_grant_role(ETCD_AGENT.0, "registry")
            .await
            .unwrap();
        root.auth_enable().await.unwrap();
    }

    pub async fn leader_index(&self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            for (i, member) in self.members.iter().enumerate() {
                if !member.is_running() {
                    continue;
                }
                if let Ok(mut client) = Client::connect([member.endpoint()], None).await
                    && let Ok(Ok(status)) =
                        tokio::time::timeout(Duration::from_secs(1), client.status()).await
                    && status.leader() == status.header().map(|h| h.member_id()).unwrap_or(0)
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no etcd leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A directory for data that is cheap to fsync: tmpfs when there is one.
fn fast_tempdir() -> TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("ygg-test-").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::Builder::new()
        .prefix("ygg-test-")
        .tempdir()
        .expect("temp dir")
}

/// The root user and password `Etcd::enable_auth` creates.
pub const ETCD_ROOT: (&str, &str) = ("root", "root-pw-123");
/// The agent's user and password `Etcd::enable_auth` creates.
pub const ETCD_AGENT: (&str, &str) = ("agent", "correct-horse-battery");

/// A key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: String,
    pub lease: i64,
    pub mod_revision: i64,
    pub create_revision: i64,
}

fn entries_of(response: &etcd_client::GetResponse) -> BTreeMap<String, Entry> {
    response
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                Entry {
                    value: kv.value_str().unwrap().to_string(),
                    lease: kv.lease(),
                    mod_revision: kv.mod_revision(),
                    create_revision: kv.create_revision(),
                },
            )
        })
        .collect()
}

/// Every key under `prefix`.
pub async fn entries(client: &mut Client, prefix: &str) -> BTreeMap<String, Entry> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("etcd get");
    entries_of(&response)
}

/// Every key under `prefix`, or None while etcd is unavailable.
pub async fn try_entries(endpoints: &[String], prefix: &str) -> Option<BTreeMap<String, Entry>> {
    let mut client = Client::connect(endpoints, None).await.ok()?;
    let response = tokio::time::timeout(
        Duration::from_secs(2),
        client.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await
    .ok()?
    .ok()?;
    Some(entries_of(&response))
}

/// Lease IDs etcd holds.
pub async fn leases(client: &mut Client) -> Vec<i64> {
    let response = client.leases().await.expect("lease list");
    response.leases().iter().map(|l| l.id()).collect()
}

/// Whether every thread of `pid` is in the stopped state (`T` in
/// /proc/PID/task/TID/stat).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    })
}
