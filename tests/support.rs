//! Test support: real etcd processes on free loopback ports in temp dirs,
//! the agent binary as a child process, and helpers to look at etcd.
//! Everything started here is killed when its handle drops.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use tempfile::TempDir;

/// Generous bound for things that should happen "soon" (process start, etc.).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The agent binary: cargo says where for tests; the benchmark (an example)
/// finds it beside its own `examples/` folder.
pub fn agent_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_ygg-agent") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    profile_dir.join("ygg-agent")
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds every example and test plugin (once per test process, through
/// `scripts/build-plugins`, which uses its own target dir so it never waits
/// on the cargo that runs the tests) and returns the folder of `.wasm` files.
pub fn built_plugins() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            let output = Command::new("bash")
                .arg(root.join("scripts/build-plugins"))
                .current_dir(&root)
                .output()
                .expect("run scripts/build-plugins");
            assert!(
                output.status.success(),
                "scripts/build-plugins failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            root.join("target/wasm/wasm32-wasip2/release")
        })
        .clone()
}

/// The built `.wasm` of plugin `name`.
pub fn plugin_file(name: &str) -> PathBuf {
    let path = built_plugins().join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Copies plugin `name` into `dir` as `as_name.wasm` the way operators are
/// told to: copy to a temp name, then rename into place.
pub fn install_plugin(dir: &Path, name: &str, as_name: &str) {
    let tmp = dir.join(format!(".{as_name}.wasm.tmp"));
    std::fs::copy(plugin_file(name), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{as_name}.wasm"))).unwrap();
}

/// A directory for data that is cheap to fsync: tmpfs when there is one.
pub fn fast_tempdir() -> TempDir {
    let shm = Path::new("/dev/shm");
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

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
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
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd is not installed: apt-get install -y etcd-server etcd-client");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pause(&self) {
        send_signal(self.pid(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        send_signal(self.pid(), libc::SIGCONT);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
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
        Self::start_members(1, Some(tls)).await
    }

    /// `size` members on loopback, healthy (with a leader) when this returns.
    pub async fn start_cluster(size: usize) -> Etcd {
        Self::start_members(size, None).await
    }

    async fn start_members(size: usize, tls: Option<EtcdTls>) -> Etcd {
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
            })
            .collect();
        let mut etcd = Etcd { members, _dir: dir };
        for member in &mut etcd.members {
            member.spawn("new");
        }
        etcd.wait_healthy().await;
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

    /// Waits until a write through the cluster succeeds.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + PATIENCE;
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(EtcdMember::endpoint)
            .collect();
        loop {
            if let Ok(mut client) = Client::connect(&endpoints, self.connect_options()).await {
                let probe = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.put("/ygg-test/health", "ok", None),
                )
                .await;
                if matches!(probe, Ok(Ok(_))) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy; see {:?}",
                self.members[0].log
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// kill -9 every member.
    pub fn kill9(&mut self) {
        for member in &mut self.members {
            member.kill9();
        }
    }

    /// Starts every stopped member again with its data.
    pub async fn restart(&mut self) {
        for member in &mut self.members {
            if !member.is_running() {
                member.spawn("existing");
            }
        }
        self.wait_healthy().await;
    }

    /// kill -9, delete the data, start empty: etcd forgets every key and lease.
    pub async fn wipe_and_restart(&mut self) {
        assert_eq!(self.members.len(), 1, "wipe is for single-member etcd");
        self.kill9();
        let member = &mut self.members[0];
        std::fs::remove_dir_all(&member.data_dir).expect("wipe data dir");
        member.spawn("new");
        self.wait_healthy().await;
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

/// A key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: String,
    pub lease: i64,
    pub mod_revision: i64,
    pub create_revision: i64,
}

/// Every key under `prefix`.
pub async fn entries(client: &mut Client, prefix: &str) -> BTreeMap<String, Entry> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("etcd get");
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

/// Every key under `prefix`, retrying while etcd is unavailable.
pub async fn try_entries(endpoints: &[String], prefix: &str) -> Option<BTreeMap<String, Entry>> {
    let mut client = Client::connect(endpoints, None).await.ok()?;
    let response = tokio::time::timeout(
        Duration::from_secs(2),
        client.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await
    .ok()?
    .ok()?;
    Some(
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
            .collect(),
    )
}

/// Lease IDs etcd holds.
pub async fn leases(client: &mut Client) -> Vec<i64> {
    let response = client.leases().await.expect("lease list");
    response.leases().iter().map(|l| l.id()).collect()
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

/// Builds a config file for the agent.
#[derive(Clone)]
pub struct ConfigFile {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ttl: &'static str,
    pub retry_interval: &'static str,
    pub keep_alive: bool,
    pub shutdown_timeout: &'static str,
    /// YAML of the `instances:` list items, already indented by 4.
    pub instances: String,
    /// Extra YAML under `agent:` (plugins, admin), indented by 2.
    pub agent_extra: String,
}

/// The seed's instance, as YAML list items.
pub const SEED_INSTANCE: &str = r#"    - namespace: default
      name: example-registry-server
      version: 1.0.0
      region: us-west
      zone: us-west-1
      campus: campus-a
      metadata: {env: dev, pod: pod-1234567890}
      endpoints:
        - {scheme: grpc, address: "127.0.0.1:54321"}
        - {scheme: http, address: "127.0.0.1:54321"}
"#;

/// The seed instance's key under the default prefix (SPEC §3 test vector).
pub const SEED_KEY: &str =
    "/yggdrasil/registry/default/example-registry-server/5b51df33a06ef6bde3a81b1ad8d1792ed24de006";

/// The seed instance's record with the configured metadata only.
pub const SEED_VALUE: &str = r#"{"namespace":"default","name":"example-registry-server","version":"1.0.0","region":"us-west","zone":"us-west-1","campus":"campus-a","metadata":{"env":"dev","pod":"pod-1234567890"},"endpoints":[{"scheme":"grpc","address":"127.0.0.1:54321","metadata":null},{"scheme":"http","address":"127.0.0.1:54321","metadata":null}]}"#;

/// `n` small instances of service `svc`, one endpoint each.
pub fn instances(service: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "    - name: {service}\n      version: \"1\"\n      endpoints: [{{scheme: http, address: \"10.0.0.1:{}\"}}]\n",
                10000 + i
            )
        })
        .collect()
}

impl ConfigFile {
    pub fn new(endpoints: Vec<String>) -> Self {
        ConfigFile {
            endpoints,
            prefix: "/yggdrasil/registry".into(),
            ttl: "4s",
            retry_interval: "1s",
            keep_alive: true,
            shutdown_timeout: "5s",
            instances: SEED_INSTANCE.into(),
            agent_extra: String::new(),
        }
    }

    pub fn render(&self) -> String {
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "yggdrasil:\n  registry:\n    type: etcd\n    config:\n      client:\n        endpoints: [{endpoints}]\n        dialTimeout: 2s\n      prefix: {}\n      ttl: {}\n      keepAlive: {}\n      retryInterval: {}\nagent:\n  shutdownTimeout: {}\n  instances:\n{}{}",
            self.prefix,
            self.ttl,
            self.keep_alive,
            self.retry_interval,
            self.shutdown_timeout,
            self.instances,
            self.agent_extra,
        )
    }
}

/// The agent binary running as a child process.
pub struct Agent {
    child: Option<Child>,
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Agent {
    /// Writes `config` and starts `ygg-agent run` on it.
    pub fn start(config: &ConfigFile) -> Agent {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &ConfigFile, extra_args: &[&str]) -> Agent {
        let mut agent = Self::prepare(config);
        agent.spawn(extra_args);
        agent
    }

    /// Writes `config` in a fresh folder (with an empty `plugins/`) without
    /// starting the agent, so a test can fill the folder first.
    pub fn prepare(config: &ConfigFile) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("ygg-agent-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        let config_path = dir.path().join("agent.yaml");
        std::fs::write(&config_path, config.render()).unwrap();
        Agent {
            child: None,
            log_path: dir.path().join("agent.log"),
            config_path,
            dir,
        }
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn spawn(&mut self, extra_args: &[&str]) {
        self.spawn_with_env(extra_args, &[]);
    }

    /// Starts the agent with extra environment variables.
    pub fn spawn_with_env(&mut self, extra_args: &[&str], env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(agent_binary())
            .args(extra_args)
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env(
                "RUST_LOG",
                std::env::var("YGG_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ygg-agent");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, signal: libc::c_int) {
        send_signal(self.pid(), signal);
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return (status, start.elapsed());
            }
            if start.elapsed() > limit {
                panic!("agent did not exit within {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) {
        self.wait_for_log_count(needle, 1, limit).await;
    }

    /// Waits until the log contains `needle` at least `count` times (the log
    /// file is shared by every run of the agent in a test).
    pub async fn wait_for_log_count(&self, needle: &str, count: usize, limit: Duration) {
        let start = Instant::now();
        while self.log().matches(needle).count() < count {
            assert!(
                start.elapsed() < limit,
                "agent log has no {needle:?} after {limit:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Rewrites the config file in place.
    pub fn rewrite_config(&self, config: &ConfigFile) {
        std::fs::write(&self.config_path, config.render()).unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// Runs `ygg-agent ARGS` to completion and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(agent_binary())
        .args(args)
        .output()
        .expect("run ygg-agent");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A minimal HTTP/1.0 GET on loopback: (status code, body), or None when
/// nothing answers.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The value of one Prometheus sample, e.g. `ygg_agent_registrations_total{result="ok"}`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Malformed config files, each with the message (and YAML path) it must
/// produce. Used at start-up (`check`, `run`) and on reload.
pub const MALFORMED_CONFIGS: &[(&str, &str)] = &[
    (
        "agent:\n  instances:\n    - name: a\n      endpoints: []\n",
        "agent.instances[0].endpoints: at least one endpoint (line 4)",
    ),
    (
        "agent:\n  instances:\n    - version: 1\n      endpoints: [{scheme: grpc, address: 'x:1'}]\n",
        "agent.instances[0].name: missing",
    ),
    (
        "yggdrasil:\n  registry:\n    type: zookeeper\n",
        "yggdrasil.registry.type: `zookeeper` is not supported",
    ),
    (
        "yggdrasil:\n  registry:\n    config:\n      ttl: 1s\n",
        "yggdrasil.registry.config.ttl: 1s is below the minimum of 2s (line 4)",
    ),
    (
        "yggdrasil:\n  registry:\n    config:\n      retryInterval: often\n",
        "yggdrasil.registry.config.retryInterval: `often` is not a duration",
    ),
    (
        "yggdrasil:\n  registry:\n    config:\n      keepAlive: yes please\n",
        "yggdrasil.registry.config.keepAlive: expected true or false",
    ),
    (
        "yggdrasil:\n  registry:\n    config:\n      client:\n        endpoints: [etcd]\n",
        "yggdrasil.registry.config.client.endpoints[0]: `etcd` is not an etcd address",
    ),
    (
        "yggdrasil:\n  registry:\n    config:\n      prefix: registry\n",
        "yggdrasil.registry.config.prefix: `registry` must start with `/`",
    ),
    (
        "agent:\n  shutdownTimeout: 5\n",
        "agent.shutdownTimeout: `5` has no unit",
    ),
    (
        "agent:\n  instances: []\n  colour: blue\n",
        "agent.colour: unknown key",
    ),
    (
        "agent:\n  instances:\n    - name: a\n      endpoints: [{scheme: grpc}]\n",
        "agent.instances[0].endpoints[0].address: missing",
    ),
    (
        "agent:\n  admin:\n    listen: everywhere\n",
        "agent.admin.listen: `everywhere` is not an IP address and port",
    ),
    (
        "agent:\n  plugins:\n    memoryLimit: 1KiB\n",
        "agent.plugins.memoryLimit: must be between 2MiB and 4GiB",
    ),
    ("agent: [oops\n", "YAML syntax error"),
    ("", "the file is empty"),
];
