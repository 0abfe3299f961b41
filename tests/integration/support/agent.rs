//! The agent for tests: `ygg-agent run` as a child process in a temp folder
//! of its own (config, log, plugins folder), one-shot CLI runs, and the
//! test plugins built and copied into place.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{ConfigFile, PATIENCE, send_signal};

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
    install_file(&plugin_file(name), dir, as_name);
}

/// Builds the Python and JavaScript plugins (once per test process, through
/// `scripts/build-polyglot`: it installs the pinned toolchains into
/// `target/toolchains` when missing, and copies a component whose inputs
/// are unchanged from its cache instead of building it again) and returns
/// the folder of `.wasm` files.
pub fn built_polyglot_plugins() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            // At nice 10, like the agent's compiles: it may run beside
            // tests that time things (`prepare_polyglot_in_background`).
            let output = Command::new("nice")
                .args(["-n", "10", "bash"])
                .arg(root.join("scripts/build-polyglot"))
                .current_dir(&root)
                .output()
                .expect("run scripts/build-polyglot");
            assert!(
                output.status.success(),
                "scripts/build-polyglot failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            root.join("target/polyglot")
        })
        .clone()
}

/// The built `.wasm` of Python or JavaScript plugin `name`.
pub fn polyglot_plugin_file(name: &str) -> PathBuf {
    let path = built_polyglot_plugins().join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Copies Python or JavaScript plugin `name` into `dir` as `as_name.wasm`.
pub fn install_polyglot_plugin(dir: &Path, name: &str, as_name: &str) {
    install_file(&polyglot_plugin_file(name), dir, as_name);
}

fn install_file(file: &Path, dir: &Path, as_name: &str) {
    let tmp = dir.join(format!(".{as_name}.wasm.tmp"));
    std::fs::copy(file, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{as_name}.wasm"))).unwrap();
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
        self.spawn_configured(extra_args, |command| {
            command.envs(env.iter().copied());
        });
    }

    /// Starts the agent with `configure` applied to its command last (an
    /// environment, a resource limit, another user).
    pub fn spawn_configured(&mut self, extra_args: &[&str], configure: impl FnOnce(&mut Command)) {
        self.spawn_program(&agent_binary(), extra_args, configure);
    }

    /// Starts `program` (a copy of the agent binary somewhere else) as the
    /// agent, with `configure` applied to its command last.
    pub fn spawn_program(
        &mut self,
        program: &Path,
        extra_args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut command = Command::new(program);
        command
            .args(extra_args)
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env(
                "RUST_LOG",
                std::env::var("YGG_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        configure(&mut command);
        let child = command.spawn().expect("start ygg-agent");
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

    /// Waits for the `config error: …` line naming `needle` that follows the
    /// last `config reload failed` line (they are two log events, so the
    /// summary may be in the log before its details).
    pub async fn wait_reload_error(&self, needle: &str) {
        super::wait_for(
            PATIENCE,
            &format!("a config error line with {needle:?}"),
            || {
                let log = self.log();
                let found = log.rfind("config reload failed").is_some_and(|at| {
                    log[at..]
                        .lines()
                        .skip(1)
                        .any(|l| l.contains("config error") && l.contains(needle))
                });
                async move { found.then_some(()) }
            },
        )
        .await;
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
/// Seconds since midnight (UTC) of an agent log line's timestamp
/// (`2026-12-01T19:03:50.852756Z  INFO …`).
pub fn log_time(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split('T').nth(1)?;
    let mut parts = time.trim_end_matches('Z').split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

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

/// An agent with the local API on a socket in its folder (and `extra`
/// under `agent:`), its state folder beside it: started, and the socket's
/// path.
pub fn api_agent(config: &mut ConfigFile, extra: &str) -> (Agent, PathBuf) {
    let mut agent = Agent::prepare(config);
    let dir = agent.dir.path().to_path_buf();
    let socket = dir.join("agent.sock");
    config.agent_extra = format!(
        "  stateDir: {}\n  api:\n    socket: {}\n{extra}",
        dir.join("state").display(),
        socket.display()
    );
    agent.rewrite_config(config);
    agent.spawn(&[]);
    (agent, socket)
}

/// One call to the local API on `socket` (through the CLI's client):
/// (status, JSON answer).
pub async fn api_call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    ygg_agent::api::client::call(
        socket,
        method,
        path,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
    .expect("the agent answers")
}
