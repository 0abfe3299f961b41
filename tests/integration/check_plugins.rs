//! Check plugins (WIT 0.2.0, world `check`) against real servers: a real
//! `redis-server` checked by `redis_check`, beside a 0.1.0 metadata plugin
//! in the same agent; and the hostile `check_escape`, whose every attempt
//! past its target is refused while the test counts what reaches it.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;

/// Fast checks: a run every 300 ms, 2 failures to go critical.
const FAST_CHECKS: &str = "  checks: {interval: 300ms, timeout: 250ms, failuresBeforeCritical: 2, successBeforePassing: 1}\n";

/// `agent.plugins` with the folder the agent's test dir holds.
const PLUGINS: &str = "  plugins:\n    dir: plugins\n    interval: 1s\n    timeout: 200ms\n    memoryLimit: 32MiB\n    cacheDir: cache\n";

/// A `redis-server` on 127.0.0.1:`port`, in memory only; killed on drop.
struct Redis {
    child: Child,
}

impl Redis {
    async fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/ensure-deps installs it)");
        wait_for(PATIENCE, "redis-server listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        Redis { child }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_text(agent: &Agent) -> String {
    let (code, stdout, stderr) =
        run_cli(&["status", "--config", agent.config_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    stdout
}

#[tokio::test]
async fn a_redis_check_plugin_follows_a_real_redis_beside_0_1_0_and_0_2_0_metadata_plugins() {
    let etcd = Etcd::start().await;
    let port = free_port();
    let redis = Redis::start(port).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = format!(
        "    - name: cache\n      version: \"7\"\n      endpoints: [{{scheme: redis, address: \"127.0.0.1:{port}\"}}]\n      checks:\n        - plugin: redis_check\n"
    );
    config.agent_extra = format!(
        "{FAST_CHECKS}{PLUGINS}    settings:\n      heartbeat: {{format: unix}}\n  admin:\n    listen: {admin}\n"
    );
    let mut agent = Agent::prepare(&config);
    // A 0.2.0 check plugin, a 0.1.0 and a 0.2.0 metadata plugin, side by side.
    install_plugin(&agent.plugins_dir(), "redis_check", "redis_check");
    install_plugin(&agent.plugins_dir(), "heartbeat", "heartbeat");
    install_plugin(&agent.plugins_dir(), "metadata_v0_2", "metadata_v0_2");
    agent.spawn(&[]);

    // Registered once PING answers, with both metadata plugins' output.
    let (services, _) = wait_for(
        PATIENCE,
        "cache registered with both plugins' metadata",
        || async {
            registered(&etcd).await.filter(|r| {
                r.get("cache").is_some_and(|entry| {
                    let v: serde_json::Value = serde_json::from_str(&entry.value).unwrap();
                    v["metadata"].get("heartbeat").is_some() && v["metadata"]["wit"] == "0.2.0"
                })
            })
        },
    )
    .await;
    assert_eq!(services.len(), 1);
    agent.wait_for_log("check plugin loaded", PATIENCE).await;
    assert!(
        status_text(&agent).contains(&format!(
            "plugin redis_check 127.0.0.1:{port}: passing — PONG"
        )),
        "{}",
        status_text(&agent)
    );

    // Redis dies: the key goes, with the plugin's reason in the log.
    drop(redis);
    let (_, took) = wait_for(PATIENCE, "the key gone", || async {
        registered(&etcd).await.filter(|r| r.is_empty())
    })
    .await;
    assert!(took < Duration::from_secs(3), "{took:?}");
    agent
        .wait_for_log(
            &format!("instance unhealthy: check plugin redis_check 127.0.0.1:{port} failed 2 times in a row: cannot connect to 127.0.0.1:{port}"),
            PATIENCE,
        )
        .await;

    // Back: registered again.
    let _redis = Redis::start(port).await;
    let (_, took) = wait_for(PATIENCE, "the key back", || async {
        registered(&etcd).await.filter(|r| r.contains_key("cache"))
    })
    .await;
    assert!(took < Duration::from_secs(3), "{took:?}");
    agent.wait_for_log("instance healthy again", PATIENCE).await;

    // The plugin's file goes: the check cannot run, the key goes; the
    // file comes back: so does the key.
    std::fs::remove_file(agent.plugins_dir().join("redis_check.wasm")).unwrap();
    agent
        .wait_for_log("check plugin unloaded (its file is gone)", PATIENCE)
        .await;
    wait_for(PATIENCE, "the key gone with the plugin", || async {
        registered(&etcd).await.filter(|r| r.is_empty())
    })
    .await;
    assert!(
        status_text(&agent).contains("critical — no check plugin `redis_check` is loaded"),
        "{}",
        status_text(&agent)
    );
    install_plugin(&agent.plugins_dir(), "redis_check", "redis_check");
    wait_for(PATIENCE, "the key back with the plugin", || async {
        registered(&etcd).await.filter(|r| r.contains_key("cache"))
    })
    .await;
}

/// A TCP listener counting the connections it accepts.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (port, count)
}

#[tokio::test]
async fn a_hostile_check_plugin_reaches_nothing_but_its_target() {
    let etcd = Etcd::start().await;
    let (target, target_hits) = counting_listener().await;
    let (other, other_hits) = counting_listener().await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let datagrams = Arc::new(AtomicUsize::new(0));
    let counted = datagrams.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while udp.recv_from(&mut buf).await.is_ok() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let listen = free_port();
    let etcd_address = etcd.endpoints()[0].clone();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = format!(
        "    - name: hostile\n      version: \"1\"\n      endpoints: [{{scheme: tcp, address: \"127.0.0.1:{target}\"}}]\n      checks:\n        - plugin: check_escape\n          settings: {{etcd: \"{etcd_address}\", other: \"127.0.0.1:{other}\", name: localhost, listen: \"{listen}\", udp: \"127.0.0.1:{udp_port}\"}}\n"
    );
    config.agent_extra = format!("{FAST_CHECKS}{PLUGINS}  admin:\n    listen: {admin}\n");
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "check_escape", "check_escape");
    agent.spawn(&[]);

    // It passes only when every attempt but its target was refused.
    wait_for(PATIENCE, "hostile registered", || async {
        registered(&etcd)
            .await
            .filter(|r| r.contains_key("hostile"))
    })
    .await;
    // A few more runs, each trying every way out again.
    wait_for(
        PATIENCE,
        "three runs of the check reaching its target",
        || async { (target_hits.load(Ordering::SeqCst) >= 3).then_some(()) },
    )
    .await;
    let status = status_text(&agent);
    assert!(
        status.contains(&format!(
            "plugin check_escape 127.0.0.1:{target}: passing — etcd=refused other=refused lookup=refused listen=refused udp=refused target=connected"
        )),
        "{status}"
    );
    // The plugin's own log lines say why each was refused.
    let log = agent.log();
    for what in ["etcd", "other", "lookup", "listen", "udp"] {
        assert!(log.contains(&format!("{what} refused")), "{what}: {log}");
    }
    // Nothing reached the ports it tried; its target saw every run.
    assert_eq!(other_hits.load(Ordering::SeqCst), 0);
    assert_eq!(datagrams.load(Ordering::SeqCst), 0);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", listen)).is_err(),
        "something listens on {listen}"
    );
}

/// A TCP listener that records, for each connection, how long it stayed
/// open (until the other side closed it).
async fn timing_listener() -> (u16, Arc<std::sync::Mutex<Vec<Duration>>>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let open_for = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = open_for.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let accepted = std::time::Instant::now();
                let mut buf = [0u8; 64];
                while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                recorded.lock().unwrap().push(accepted.elapsed());
            });
        }
    });
    (port, open_for)
}

#[tokio::test]
async fn a_check_plugin_is_held_to_the_plugin_limits_and_its_connections_close() {
    let etcd = Etcd::start().await;
    let (held, open_for) = timing_listener().await;
    let spin_port = free_port();
    let _spin_target = accept_and_drop(spin_port).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    let check = |port: u16, then: &str| {
        format!(
            "    - name: {then}\n      version: \"1\"\n      endpoints: [{{scheme: tcp, address: \"127.0.0.1:{port}\"}}]\n      checks:\n        - plugin: check_escape\n          settings: {{then: {then}}}\n"
        )
    };
    config.instances = format!("{}{}", check(held, "hold"), check(spin_port, "spin"));
    // The check's own timeout is long: the plugin limit (200 ms) ends the calls.
    config.agent_extra = format!(
        "  checks: {{interval: 1500ms, timeout: 1s, failuresBeforeCritical: 1}}\n{PLUGINS}  admin:\n    listen: {admin}\n"
    );
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "check_escape", "check_escape");
    agent.spawn(&[]);

    let (status, _) = wait_for(PATIENCE, "both checks' errors in status", || async {
        let (code, status, _) =
            run_cli(&["status", "--config", agent.config_path.to_str().unwrap()]);
        (code == 0
            && status.contains("ran past the 200ms timeout")
            && status.contains("CPU budget exhausted"))
        .then_some(status)
    })
    .await;
    assert!(
        status.contains(&format!(
            "plugin check_escape 127.0.0.1:{held}: critical — plugin check_escape ran past the 200ms timeout"
        )),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "plugin check_escape 127.0.0.1:{spin_port}: critical — plugin check_escape trapped: CPU budget exhausted"
        )),
        "{status}"
    );
    // The held connections were closed when their calls ended.
    let (closed, _) = wait_for(PATIENCE, "two held connections closed", || async {
        let closed = open_for.lock().unwrap().clone();
        (closed.len() >= 2).then_some(closed)
    })
    .await;
    for open in closed {
        assert!(
            open < Duration::from_millis(900),
            "a connection stayed open {open:?}"
        );
    }
    // Neither instance is registered, and the agent is still fine.
    assert_eq!(registered(&etcd).await.map(|r| r.len()), Some(0));
}

/// The folder of PostgreSQL's server programs: on the PATH, or Debian's.
fn postgres_bin() -> std::path::PathBuf {
    let on_path = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(initdb) = on_path {
        let initdb = std::fs::canonicalize(initdb).unwrap();
        return initdb.parent().unwrap().to_path_buf();
    }
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server (scripts/ensure-deps installs it)")
        .map(|e| e.unwrap().path().join("bin"))
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version")
}

/// A throwaway PostgreSQL server on 127.0.0.1:`port` whose `postgres` user
/// logs in with SCRAM-SHA-256 and `password`. Run as the `postgres` user
/// when the tests run as root (the server refuses root). Stopped on drop.
struct Postgres {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Postgres {
    async fn start(port: u16, password: &str) -> Postgres {
        use std::os::unix::fs::PermissionsExt;
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, password).unwrap();
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        let data = dir.path().join("data");
        // SAFETY: geteuid cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let command = |program: &str| {
            let mut command = if as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(program));
                c
            } else {
                Command::new(bin.join(program))
            };
            command.stdout(Stdio::null()).stderr(Stdio::null());
            command
        };
        let status = command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        // Its own process group, so a stop reaches the server behind runuser.
        let child = std::os::unix::process::CommandExt::process_group(&mut command("postgres"), 0)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path())
            .spawn()
            .expect("start postgres");
        wait_for(PATIENCE, "postgres listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        Postgres { child, _dir: dir }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT to the group (runuser and the server): a fast shutdown.
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGINT) };
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_postgres_check_plugin_logs_in_with_scram_and_asks_select_1() {
    let etcd = Etcd::start().await;
    let port = free_port();
    let postgres = Postgres::start(port, "s3cret pw").await;
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    let instance = |name: &str, password: &str| {
        format!(
            "    - name: {name}\n      version: \"15\"\n      endpoints: [{{scheme: postgres, address: \"127.0.0.1:{port}\"}}]\n      checks:\n        - plugin: postgres_check\n          settings: {{user: postgres, password: \"{password}\"}}\n"
        )
    };
    config.instances = format!(
        "{}{}",
        instance("db", "s3cret pw"),
        instance("wrongpw", "guess")
    );
    config.agent_extra = format!("{FAST_CHECKS}{PLUGINS}  admin:\n    listen: {admin}\n");
    // SCRAM's 4096 rounds of PBKDF2 take a few ms natively, more in wasm.
    config.agent_extra = config
        .agent_extra
        .replace("timeout: 250ms", "timeout: 1500ms")
        .replace("interval: 300ms", "interval: 2s")
        .replace("    timeout: 200ms\n", "    timeout: 1s\n");
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "postgres_check", "postgres_check");
    agent.spawn(&[]);

    // The right password logs in; the wrong one is refused by the server.
    wait_for(PATIENCE, "db registered", || async {
        registered(&etcd).await.filter(|r| r.contains_key("db"))
    })
    .await;
    let (status, _) = wait_for(PATIENCE, "both checks run", || async {
        let (code, status, _) =
            run_cli(&["status", "--config", agent.config_path.to_str().unwrap()]);
        (code == 0 && status.contains("28P01")).then_some(status)
    })
    .await;
    assert!(
        status.contains(&format!(
            "plugin postgres_check 127.0.0.1:{port}: passing — SELECT 1 as postgres@postgres"
        )),
        "{status}"
    );
    assert!(
        status.contains(
            "critical — FATAL 28P01 password authentication failed for user \"postgres\""
        ),
        "{status}"
    );
    assert_eq!(
        registered(&etcd)
            .await
            .map(|r| r.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["db".to_string()])
    );

    // The server stops: the key goes.
    drop(postgres);
    wait_for(PATIENCE, "db's key gone", || async {
        registered(&etcd).await.filter(|r| r.is_empty())
    })
    .await;
}
