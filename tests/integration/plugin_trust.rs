//! Who may put code into the agent: a plugins folder another user could
//! write is refused as a whole; with `trustedKeys`, only plugins signed by
//! a trusted key (real `minisign`) load; cold compiles run in a child
//! process whose limits fail only that plugin's load.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; -1 keeps the group.
    let rc = unsafe { libc::lchown(c.as_ptr(), uid, u32::MAX) };
    assert_eq!(rc, 0, "chown: {}", std::io::Error::last_os_error());
}

fn plugins_section(extra: &str) -> String {
    format!(
        "  plugins:\n    dir: plugins\n    interval: 1s\n    timeout: 500ms\n    memoryLimit: 16MiB\n    cacheDir: cache\n{extra}    settings:\n      echo: {{value: x}}\n"
    )
}

/// `ygg-agent check` on a config whose plugins folder is `agent`'s.
fn check(agent: &Agent) -> (i32, String) {
    let (code, _, stderr) = run_cli(&["check", "--config", agent.config_path.to_str().unwrap()]);
    (code, stderr)
}

#[test]
fn a_plugins_folder_others_could_write_is_refused_by_check() {
    let config = ConfigFile::new(vec!["127.0.0.1:2379".into()]);
    let mut config = config;
    config.agent_extra = plugins_section("");
    let agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "echo", "echo");
    let (code, stderr) = check(&agent);
    assert_eq!(code, 0, "{stderr}");

    // A folder anyone can write.
    chmod(&agent.plugins_dir(), 0o777);
    let (code, stderr) = check(&agent);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("is refused, nothing in it would load"),
        "{stderr}"
    );
    assert!(stderr.contains("mode 0777"), "{stderr}");
    // `plugin check` of a file in that folder says the same.
    let echo = agent.plugins_dir().join("echo.wasm");
    let (code, _, stderr) = run_cli(&[
        "plugin",
        "check",
        echo.to_str().unwrap(),
        "--config",
        agent.config_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("is refused, nothing in it would load"),
        "{stderr}"
    );
    chmod(&agent.plugins_dir(), 0o755);

    // A plugin file others can write.
    chmod(&echo, 0o666);
    let (code, stderr) = check(&agent);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("echo.wasm is writable by group or others"),
        "{stderr}"
    );
    chmod(&echo, 0o644);

    // A symlink into a world-writable folder.
    let shared = agent.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    install_plugin(&shared, "echo", "linked");
    std::os::unix::fs::symlink(
        shared.join("linked.wasm"),
        agent.plugins_dir().join("linked.wasm"),
    )
    .unwrap();
    let (code, stderr) = check(&agent);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("linked.wasm is a symlink to"), "{stderr}");
    assert!(stderr.contains("mode 0777"), "{stderr}");
    std::fs::remove_file(agent.plugins_dir().join("linked.wasm")).unwrap();

    // A file owned by another user (root only can make one).
    if !is_root() {
        eprintln!("skipping the file-owned-by-another-user case: not running as root");
        return;
    }
    chown(&echo, NOBODY);
    let (code, stderr) = check(&agent);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("owned by uid 65534"), "{stderr}");
}

#[tokio::test]
async fn nothing_loads_from_a_refused_plugins_folder() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("");
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "echo", "echo");
    chmod(&agent.plugins_dir(), 0o777);
    agent.spawn(&[]);
    agent.wait_for_log("plugins folder refused", PATIENCE).await;
    agent.wait_for_log("instance registered", PATIENCE).await;
    assert!(agent.log().contains("mode 0777"), "{}", agent.log());
    assert!(!agent.log().contains("loading plugin"), "{}", agent.log());

    // Fixed: the next scan loads it.
    chmod(&agent.plugins_dir(), 0o755);
    agent.signal(libc::SIGHUP);
    agent.wait_for_log("plugin loaded", PATIENCE).await;
}

/// A minisign key pair made by the real `minisign` (no password).
struct Key {
    public: PathBuf,
    secret: PathBuf,
}

fn minisign(args: &[&str]) {
    let output = Command::new("minisign")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("minisign is installed (scripts/ensure-deps)");
    assert!(
        output.status.success(),
        "minisign {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn key(dir: &Path, name: &str) -> Key {
    let key = Key {
        public: dir.join(format!("{name}.pub")),
        secret: dir.join(format!("{name}.sec")),
    };
    minisign(&[
        "-G",
        "-W",
        "-p",
        key.public.to_str().unwrap(),
        "-s",
        key.secret.to_str().unwrap(),
    ]);
    key
}

/// Signs `file` (writes `file.minisig`); `legacy` makes a non-prehashed one.
fn sign(key: &Key, file: &Path, legacy: bool) {
    let mut args = vec![
        "-S",
        "-s",
        key.secret.to_str().unwrap(),
        "-m",
        file.to_str().unwrap(),
    ];
    if legacy {
        args.push("-l");
    }
    minisign(&args);
}

/// Copies plugin `echo` as `as_name` into `dir`, signature first, then the
/// plugin by rename.
fn install_signed(dir: &Path, staging: &Path, as_name: &str, key: Option<&Key>, tamper: bool) {
    let staged = staging.join(format!("{as_name}.wasm"));
    std::fs::copy(plugin_file("echo"), &staged).unwrap();
    if let Some(key) = key {
        sign(key, &staged, false);
        std::fs::copy(
            staging.join(format!("{as_name}.wasm.minisig")),
            dir.join(format!("{as_name}.wasm.minisig")),
        )
        .unwrap();
    }
    if tamper {
        let mut bytes = std::fs::read(&staged).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&staged, bytes).unwrap();
    }
    let tmp = dir.join(format!(".{as_name}.tmp"));
    std::fs::copy(&staged, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{as_name}.wasm"))).unwrap();
}

fn untrusted_loads(metrics: &str) -> f64 {
    metric(
        metrics,
        "ygg_agent_plugin_loads_total{result=\"untrusted\"}",
    )
    .unwrap_or(-1.0)
}

#[tokio::test]
async fn only_plugins_signed_by_a_trusted_key_load() {
    let etcd = Etcd::start().await;
    let keys = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let ours = key(keys.path(), "ours");
    let theirs = key(keys.path(), "theirs");
    let theirs_line = std::fs::read_to_string(&theirs.public)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    let trusted = |keys: &str| {
        format!(
            "{}  admin:\n    listen: {admin}\n",
            plugins_section(&format!("    trustedKeys: {keys}\n"))
        )
    };
    config.agent_extra = trusted(&format!("[\"file:{}\"]", ours.public.display()));
    let mut agent = Agent::prepare(&config);
    let dir = agent.plugins_dir();
    install_signed(&dir, staging.path(), "signed", Some(&ours), false);
    install_signed(&dir, staging.path(), "unsigned", None, false);
    install_signed(&dir, staging.path(), "tampered", Some(&ours), true);
    install_signed(&dir, staging.path(), "foreign", Some(&theirs), false);
    // A legacy (not prehashed) signature is accepted too.
    let legacy = staging.path().join("legacy.wasm");
    std::fs::copy(plugin_file("echo"), &legacy).unwrap();
    sign(&ours, &legacy, true);
    std::fs::copy(
        staging.path().join("legacy.wasm.minisig"),
        dir.join("legacy.wasm.minisig"),
    )
    .unwrap();
    std::fs::copy(&legacy, dir.join("legacy.wasm")).unwrap();
    agent.spawn(&[]);

    agent.wait_for_log_count("plugin loaded", 2, PATIENCE).await;
    agent.wait_for_log_count("refused:", 3, PATIENCE).await;
    let log = agent.log();
    let line = |plugin: &str| {
        log.lines()
            .find(|l| l.contains(&format!("plugin={plugin} ")) && l.contains("not loaded"))
            .unwrap_or_else(|| panic!("no refusal of {plugin}:\n{log}"))
            .to_string()
    };
    assert!(line("unsigned").contains("unsigned"), "{log}");
    assert!(
        line("tampered").contains("does not match its bytes"),
        "{log}"
    );
    assert!(
        line("foreign").contains("not in agent.plugins.trustedKeys"),
        "{log}"
    );
    for loaded in ["signed", "legacy"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("plugin={loaded} ")) && l.contains("plugin loaded")),
            "{loaded} did not load:\n{log}"
        );
    }
    let (_, metrics) = http_get(&admin, "/metrics").await.expect("metrics");
    assert_eq!(untrusted_loads(&metrics), 3.0, "{metrics}");

    // `plugin check` verifies the same way.
    let config_path = agent.config_path.to_str().unwrap();
    let (code, stdout, stderr) = run_cli(&[
        "plugin",
        "check",
        dir.join("signed.wasm").to_str().unwrap(),
        "--config",
        config_path,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("verified"), "{stdout}");
    let (code, _, stderr) = run_cli(&[
        "plugin",
        "check",
        dir.join("tampered.wasm").to_str().unwrap(),
        "--config",
        config_path,
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("untrusted"), "{stderr}");

    // A signature added later: the plugin is evaluated again and loads.
    let unsigned = staging.path().join("unsigned.wasm");
    sign(&ours, &unsigned, false);
    std::fs::copy(
        staging.path().join("unsigned.wasm.minisig"),
        dir.join("unsigned.wasm.minisig"),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    agent
        .wait_for_log("plugin=unsigned version", PATIENCE)
        .await;

    // Our key removed, theirs trusted: ours stop, theirs loads.
    config.agent_extra = trusted(&format!("[\"{theirs_line}\"]"));
    agent.rewrite_config(&config);
    agent.signal(libc::SIGHUP);
    agent.wait_for_log("plugin=foreign version", PATIENCE).await;
    agent
        .wait_for_log_count("no longer trusted", 3, PATIENCE)
        .await;
    let (_, metrics) = http_get(&admin, "/metrics").await.expect("metrics");
    assert_eq!(
        metric(&metrics, "ygg_agent_plugins_loaded"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_compile_over_its_memory_limit_fails_only_that_plugin() {
    let etcd = Etcd::start().await;
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = format!("{}  admin:\n    listen: {admin}\n", plugins_section(""));
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "echo", "echo");
    // First run: echo compiles (in a child) and lands in the cache.
    agent.spawn(&[]);
    agent.wait_for_log("plugin loaded", PATIENCE).await;
    agent.signal(libc::SIGTERM);
    agent.wait_exit(PATIENCE);

    // Again with a compile limit far too low: echo comes from the cache,
    // heartbeat must compile and its child runs out of memory.
    install_plugin(&agent.plugins_dir(), "heartbeat", "heartbeat");
    agent.spawn_with_env(&[], &[("YGG_AGENT_COMPILE_MEMORY_MIB", "48")]);
    agent.wait_for_log("plugin=heartbeat", PATIENCE).await;
    agent.wait_for_log_count("plugin loaded", 2, PATIENCE).await;
    agent.wait_for_log("the compile process", PATIENCE).await;
    let log = agent.log();
    let failure = log
        .lines()
        .find(|l| l.contains("plugin=heartbeat") && l.contains("not loaded"))
        .unwrap_or_else(|| panic!("no failure line for heartbeat:\n{log}"));
    assert!(failure.contains("memory limit 48 MiB"), "{failure}");
    let (_, metrics) = http_get(&admin, "/metrics").await.expect("metrics");
    assert_eq!(
        metric(
            &metrics,
            "ygg_agent_plugin_loads_total{result=\"compile_failed\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "ygg_agent_plugins_loaded"),
        Some(1.0),
        "{metrics}"
    );
    // The agent is fine: echo's output reaches etcd.
    wait_metadata(&etcd, "echo output", PATIENCE, |m| m.contains_key("value")).await;
}

/// The compile child of a plugin whose file goes away mid-compile is killed.
#[tokio::test]
async fn a_cancelled_load_kills_its_compile_child() {
    let _heavy = heavy_test().await;
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("");
    let mut agent = Agent::prepare(&config);
    let base = std::fs::read(plugin_file("echo")).unwrap();
    let big = crate::support::big_component::padded_component(&base, 8000, 200);
    let tmp = agent.plugins_dir().join(".big.tmp");
    std::fs::write(&tmp, big).unwrap();
    std::fs::rename(&tmp, agent.plugins_dir().join("big.wasm")).unwrap();
    agent.spawn(&[]);
    let pid = agent.pid();
    let child = wait_for(PATIENCE, "a compile child", || async {
        compile_child_of(pid)
    })
    .await
    .0;
    std::fs::remove_file(agent.plugins_dir().join("big.wasm")).unwrap();
    agent.signal(libc::SIGHUP);
    wait_for(PATIENCE, "the compile child gone", || async {
        (!Path::new(&format!("/proc/{child}")).exists() || is_zombie(child)).then_some(())
    })
    .await;
    assert!(!agent.log().contains("plugin loaded"), "{}", agent.log());
}

/// The pid of a running `__compile-plugin` child of `parent`.
fn compile_child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim();
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            (ppid == parent.to_string()
                && String::from_utf8_lossy(&cmdline).contains("__compile-plugin"))
            .then_some(pid)
        })
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}
