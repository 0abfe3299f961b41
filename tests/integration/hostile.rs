//! Hostile neighbours on the node (FAILURES.md, "Local attackers"): a
//! plugin or a checked service trying to forge log lines, secrets in check
//! URLs, connections that never finish their request, and folders another
//! local user prepared.

use std::time::Duration;

use crate::support::flood::*;
use crate::support::*;

const PREFIX: &str = "/yggdrasil/registry/";

/// A line a plugin would like the operator to believe the agent wrote.
const FORGED_KEY: &str = "key=/forged/by/plugin";
/// YAML (double-quoted) for the forging text: a newline, a well-formed log
/// line, a carriage return.
const FORGED_YAML: &str = r#""hello\n2026-12-06T05:00:00.000000Z  INFO ygg_agent::registry: instance registered successfully key=/forged/by/plugin\rtail""#;

fn echo_saying_forged_lines() -> String {
    format!(
        "  plugins:\n    dir: plugins\n    interval: 1s\n    timeout: 500ms\n    memoryLimit: 16MiB\n    cacheDir: cache\n    settings:\n      echo: {{say: {FORGED_YAML}}}\n"
    )
}

/// Every line holding the forged key is a line of the plugin's: its `log`
/// message with the newline escaped, or one line of its stdout or stderr
/// (split at newlines, as a terminal would, but each tagged as the
/// plugin's); no carriage return is in the log at all.
fn assert_not_forged(log: &str) {
    assert!(!log.contains('\r'), "a raw carriage return in the log");
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-12-06T05:00:00"),
            "a forged line: {line:?}"
        );
        if line.contains(FORGED_KEY) {
            let printed = line.contains("ygg_agent::plugins::stdio");
            assert!(
                printed
                    || line.contains("hello\\u{a}2026-12-06T05:00:00")
                    || line.contains("hello\\\\u{a}2026-12-06T05:00:00"),
                "not escaped: {line:?}"
            );
            assert!(
                line.contains("plugin=echo") || line.contains("\"plugin\":\"echo\""),
                "not tagged: {line:?}"
            );
            assert!(line.contains("\\u{d}tail"), "CR not escaped: {line:?}");
        }
    }
}

#[tokio::test]
async fn a_plugin_cannot_forge_log_lines_in_text_or_json_logs() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = echo_saying_forged_lines();
    for json in [false, true] {
        let mut agent = Agent::prepare(&config);
        install_plugin(&agent.plugins_dir(), "echo", "echo");
        agent.spawn(if json { &["--log-format", "json"] } else { &[] });
        // stdout, stderr and the host's `log`: three lines, each the plugin's.
        agent.wait_for_log_count(FORGED_KEY, 3, PATIENCE).await;
        let log = agent.log();
        assert_not_forged(&log);
        if json {
            for line in log.lines() {
                let event: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not one JSON event per line ({e}): {line:?}"));
                let message = event["message"].as_str().unwrap_or_default();
                assert!(!message.contains('\n') && !message.contains('\r'), "{line}");
            }
        }
        let tagged = log
            .lines()
            .filter(|line| line.contains(FORGED_KEY) && line.contains("echo"))
            .count();
        assert_eq!(tagged, 3, "{log}");
    }
}

/// A server answering every request with 503 and `body`, until dropped.
async fn answering(body: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, task)
}

/// A token in a check URL's query string shows nowhere; a checked body
/// (which may hold secrets, or lines meant to look like the agent's) is
/// never shown or logged.
#[tokio::test]
async fn check_urls_are_redacted_and_bodies_never_shown() {
    const BODY: &str = "db password s3cret-body\n2026-12-06T05:00:00.000000Z  INFO ygg_agent::registry: instance registered successfully key=/forged/by/service\r";
    let etcd = Etcd::start().await;
    let (port, _server) = answering(BODY).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = format!(
        "    - name: web\n      version: \"1\"\n      endpoints: [{{scheme: http, address: \"127.0.0.1:{port}\"}}]\n      checks:\n        - http: \"http://127.0.0.1:{port}/health?token=s3cret-token&x=1\"\n          initialStatus: passing\n"
    );
    config.agent_extra = format!(
        "  checks: {{interval: 200ms, timeout: 150ms, failuresBeforeCritical: 1}}\n  admin:\n    listen: {admin}\n"
    );
    let agent = Agent::start(&config);
    let shown = format!("http GET http://127.0.0.1:{port}/health?<redacted>");
    agent
        .wait_for_log(
            &format!("instance unhealthy: check {shown} failed 1 time in a row: HTTP 503"),
            PATIENCE,
        )
        .await;
    let ((_, status), _) = wait_for(PATIENCE, "/status with the check's result", || async {
        http_get(&admin, "/status")
            .await
            .filter(|(code, body)| *code == 200 && body.contains("HTTP 503"))
    })
    .await;
    let (_, metrics) = http_get(&admin, "/metrics")
        .await
        .expect("/metrics answers");
    assert!(status.contains(&shown), "{status}");
    assert!(metrics.contains(&shown), "{metrics}");
    let log = agent.log();
    for (what, text) in [("log", &log), ("/status", &status), ("/metrics", &metrics)] {
        for secret in ["s3cret-token", "s3cret-body", "/forged/by/service"] {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
    }
}

/// With `RLIMIT_NOFILE` 1,024, another local user (a member of the group
/// the socket is shared with) holds 2,000 half-sent requests against each
/// of the admin listener, the API socket and the API's TCP listener (the
/// ones the agent closes opened again every 100 ms): a TCP-checked healthy
/// instance stays registered throughout (no DELETE in etcd), root's
/// answers on the socket (this process's client: connect, request, whole
/// answer) come within [`ANSWERS`], and every call of the operator's
/// command line succeeds within 2 s (its process start on a loaded machine
/// is not the agent's answer time).
#[tokio::test]
async fn half_sent_requests_to_every_listener_take_nothing_out() {
    flood("held", false, Some(ANSWERS), Duration::from_secs(2)).await;
}

/// The bounds on root's answers on the socket under the held flood: the
/// median, and each. The issue's 100 ms for each holds in release
/// (`./scripts/bench flood`: at most 26 ms); this debug build beside other
/// tests and a build took up to 96 ms (a 55 ms `connect`: the debug accept
/// loop drains slower than the attacker fills the backlog), so each is
/// bounded at 400 ms here, the median at 50 ms (7 ms measured), while the
/// listeners before the per-user share took 220 ms median, 849 ms max.
const ANSWERS: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(400));

/// The same with the attacker opening connections in a tight loop (tens
/// of thousands a second on the socket): the instance still stays, and
/// every command-line call still succeeds (it races the attacker for room
/// in the socket's backlog; see FAILURES.md).
#[tokio::test]
async fn a_tight_loop_of_connects_to_every_listener_takes_nothing_out() {
    flood("tight loop", true, None, Duration::from_secs(5)).await;
}

/// The flood (`churn`: a tight loop) and its bounds: root's answers on
/// the socket, the median and each, within `answers` (when given), each
/// command-line call within `cli_within`.
async fn flood(
    what: &str,
    churn: bool,
    answers: Option<(Duration, Duration)>,
    cli_within: Duration,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const HELD: usize = 2000;
    const CALLS: usize = 30;
    const CLI_CALLS: usize = 5;
    let _heavy = heavy_test().await;
    let limit = raise_own_open_files(4 * HELD as u64 + 1024);
    if limit < 3 * HELD as u64 + 512 {
        eprintln!("SKIPPED the {what} flood: this process may open only {limit} files");
        return;
    }
    // The attacker: the second user when running as root; else this
    // process's own (then the agent cannot tell it from the operator, and
    // the answer-time bounds are not asserted).
    let hostile = other_user(&format!("the {what} flood")).map(|uid| (uid, other_group()));
    let etcd = Etcd::start().await;
    let flooded = FloodedAgent::start(&etcd, hostile).await;
    let key = wait_for(PATIENCE, "the checked instance registered", || async {
        try_entries(&etcd.endpoints(), PREFIX)
            .await
            .and_then(|e| e.keys().next().cloned())
    })
    .await
    .0;
    let quiet = socket_calls(&flooded.socket, "steady", CALLS).await;
    let quiet_cli = operator_calls(&flooded.socket, "steady", CLI_CALLS).await;

    // Every DELETE under the prefix from here on.
    let mut client = etcd.client().await;
    let mut events = client
        .watch(PREFIX, Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let deletes = Arc::new(AtomicUsize::new(0));
    let counting = deletes.clone();
    let watching = tokio::spawn(async move {
        while let Ok(Some(response)) = events.message().await {
            let n = response
                .events()
                .iter()
                .filter(|e| e.event_type() == etcd_client::EventType::Delete)
                .count();
            counting.fetch_add(n, Ordering::SeqCst);
        }
    });

    let flood = Flood::start(hostile, &flooded.targets(), HELD, churn).await;
    let took = socket_calls(&flooded.socket, "steady", CALLS).await;
    let took_cli = operator_calls(&flooded.socket, "steady", CLI_CALLS).await;
    let opened = flood.stop();
    let cli = |took: &[Duration]| {
        format!(
            "median {:?}, max {:?}",
            took[took.len() / 2],
            took[took.len() - 1]
        )
    };
    eprintln!(
        "root's answers on the socket ({CALLS} calls, median / p99 / max): quiet {}; under the {what} flood {}; operator's `ygg-agent instances` ({CLI_CALLS} calls): quiet {}, under the flood {}; connections opened (admin, API TCP, API socket): {opened:?}",
        timed_figures(&quiet),
        timed_figures(&took),
        cli(&quiet_cli),
        cli(&took_cli)
    );
    if hostile.is_some() {
        if let Some((median, each)) = answers {
            assert!(took[took.len() / 2].total < median, "{took:?}");
            assert!(took[took.len() - 1].total < each, "{took:?}");
        }
        assert!(took_cli[took_cli.len() - 1] < cli_within, "{took_cli:?}");
    }

    // Still registered, never deleted, nothing ran out of files.
    let entries = try_entries(&etcd.endpoints(), PREFIX).await.unwrap();
    assert!(entries.contains_key(&key), "{entries:?}");
    let agent = &flooded.agent;
    assert_eq!(deletes.load(Ordering::SeqCst), 0, "{}", agent.log());
    watching.abort();
    let log = agent.log();
    assert!(!log.contains("os error 24"), "{log}");
    assert!(!log.contains("instance unhealthy"), "{log}");
    // The listeners said they were full (and did not stop serving); the
    // second user's connections over its share were closed and counted.
    if hostile.is_some() {
        assert!(log.contains("holds its whole share"), "{log}");
        let (_, metrics) = http_get(&flooded.admin, "/metrics")
            .await
            .expect("/metrics");
        // Every listener tells the second user from root (the TCP ones
        // through the kernel's socket table).
        for listener in ["admin", "api_tcp", "api_socket"] {
            let closed = metrics
                .lines()
                .find(|l| {
                    l.starts_with("ygg_agent_listener_connections_closed_total{")
                        && l.contains(&format!("listener=\"{listener}\""))
                        && l.contains("reason=\"user_share\"")
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or_default();
            assert!(closed > 1000.0, "{listener}: {metrics}");
        }
    } else {
        assert!(log.contains("connection limit reached"), "{log}");
    }
}

/// A client sending its request a byte a second is closed at the header
/// deadline (5 s), not served for minutes.
#[tokio::test]
async fn a_client_sending_a_byte_a_second_is_closed_at_the_header_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let etcd = Etcd::start().await;
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = format!("  admin:\n    listen: {admin}\n");
    let agent = Agent::start(&config);
    agent.wait_for_log("admin server listening", PATIENCE).await;
    let mut stream = tokio::net::TcpStream::connect(&admin).await.unwrap();
    let began = std::time::Instant::now();
    let request =
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut buf = [0u8; 256];
    let mut closed = false;
    for byte in request {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => panic!("answered a request sent a byte a second"),
            Err(_) => {}
        }
    }
    let took = began.elapsed();
    eprintln!("a byte a second: closed after {took:?}");
    assert!(closed, "still open after {took:?}");
    assert!(took >= Duration::from_secs(4), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// Runs `args` as the second user; panics unless it succeeds.
fn as_other_user(args: &[&str]) {
    let status = std::process::Command::new("runuser")
        .args(["-u", "ygg-hostile", "--"])
        .args(args)
        .status()
        .expect("runuser");
    assert!(status.success(), "{args:?} as ygg-hostile: {status}");
}

/// An agent whose local API socket is `socket`.
fn agent_with_socket(etcd: &Etcd, socket: &std::path::Path) -> Agent {
    let mut config = ConfigFile::new(etcd.endpoints());
    let agent = Agent::prepare(&config);
    config.agent_extra = format!(
        "  stateDir: {}\n  api:\n    socket: {}\n",
        agent.dir.path().join("state").display(),
        socket.display()
    );
    agent.rewrite_config(&config);
    agent
}

/// Another user makes the socket's folder first (as in `$TMPDIR`, the
/// fallback when there is no runtime folder): the agent refuses it, says
/// why, and `check` says so too; a folder everyone may write is refused
/// the same way.
#[tokio::test]
async fn a_socket_folder_another_user_prepared_is_refused() {
    let etcd = Etcd::start().await;
    let base = shared_tmp();
    // (what, folder, why refused, the user under whom it would pass)
    let mut cases = vec![(
        "0777, root's",
        base.path().join("open"),
        "has mode 0777",
        None,
    )];
    std::fs::create_dir(&cases[0].1).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cases[0].1, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let theirs = base.path().join("ygg-agent-0");
    if let Some(uid) = other_user("a_socket_folder_another_user_prepared_is_refused") {
        as_other_user(&["mkdir", "-m", "0755", theirs.to_str().unwrap()]);
        cases.push(("another user's", theirs, "is owned by uid", Some(uid)));
    }
    for (what, folder, why, owner) in cases {
        let socket = folder.join("agent.sock");
        let mut agent = agent_with_socket(&etcd, &socket);
        let (code, _, stderr) =
            run_cli(&["check", "--config", agent.config_path.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stderr.contains("agent.api.socket") && stderr.contains(why),
            "{what}: {stderr}"
        );
        // Root checking a folder that is its owner's alone (as a packaged
        // agent's is) also hears that the agent run as that owner takes it.
        match owner {
            Some(uid) => assert!(
                stderr.contains(&format!(
                    "run as uid {uid} (ygg-hostile), the folder's owner, the agent would accept it"
                )),
                "{what}: {stderr}"
            ),
            None => assert!(!stderr.contains("would accept it"), "{what}: {stderr}"),
        }
        agent.spawn(&[]);
        agent
            .wait_for_log("cannot start the local API", PATIENCE)
            .await;
        let log = agent.log();
        assert!(
            log.contains(why) && log.contains("set agent.api.socket"),
            "{what}: {log}"
        );
        assert!(!socket.exists(), "{what}: a socket was made there");
    }
}

/// The agent opens its socket folder once: a folder moved away and
/// replaced after start (by someone who could: root here) changes nothing.
/// The agent keeps serving on the socket it bound and, stopping, removes
/// only that one; the command line refuses the impostor's socket (another
/// user's, in another user's folder) before sending anything.
#[tokio::test]
async fn a_socket_folder_swapped_after_start_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let etcd = Etcd::start().await;
    let base = shared_tmp();
    let folder = base.path().join("ygg");
    let socket = folder.join("agent.sock");
    let mut agent = agent_with_socket(&etcd, &socket);
    agent.spawn(&[]);
    agent.wait_for_log("local API listening", PATIENCE).await;
    assert_eq!(
        std::fs::metadata(&folder).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o660
    );

    let moved = base.path().join("ygg.moved");
    std::fs::rename(&folder, &moved).unwrap();
    std::fs::create_dir(&folder).unwrap();
    // The impostor: a socket in the new folder, both another user's.
    let impostor = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    impostor.set_nonblocking(true).unwrap();
    let other = other_user("a_socket_folder_swapped_after_start_changes_nothing");
    if let Some(uid) = other {
        std::os::unix::fs::lchown(&folder, Some(uid), Some(uid)).unwrap();
        std::os::unix::fs::lchown(&socket, Some(uid), Some(uid)).unwrap();
    } else {
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let (code, _, stderr) = run_cli(&[
        "maint",
        "enable",
        "--reason",
        "deploy",
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("refusing to talk to"), "{stderr}");
    assert!(
        matches!(impostor.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the command line connected to the impostor"
    );

    // The agent still serves where it bound.
    let (code, stdout, stderr) = run_cli(&[
        "instances",
        "--socket",
        moved.join("agent.sock").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // Stopping removes its own socket, not the impostor's.
    agent.signal(libc::SIGTERM);
    agent.wait_exit(PATIENCE);
    assert!(
        !moved.join("agent.sock").exists(),
        "its own socket left behind"
    );
    assert!(socket.exists(), "the impostor's socket was removed");
}

/// The durations (ms) `/status` reports for the check described `check`,
/// sampled every `every` for `window` (each new run once); panics if the
/// check is ever not passing.
async fn sample_durations(admin: &str, check: &str, every: Duration, window: Duration) -> Vec<f64> {
    let end = std::time::Instant::now() + window;
    let mut seen = Vec::new();
    let mut last = None;
    while std::time::Instant::now() < end {
        if let Some((200, body)) = http_get(admin, "/status").await {
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            let found = status["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|i| i["checks"].as_array().cloned().unwrap_or_default())
                .find(|c| c["check"] == check);
            if let Some(found) = found {
                assert_eq!(found["status"], "passing", "{found}");
                let ms = found["duration_ms"].as_f64();
                if let Some(value) = ms
                    && ms != last
                {
                    seen.push(value);
                    last = ms;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
    seen
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A built-in `tcp` check keeps its timing while 12 check plugins spin
/// through their CPU budgets (they run on a thread of their own).
#[tokio::test]
async fn spinning_check_plugins_leave_a_tcp_checks_timing_alone() {
    let _heavy = heavy_test().await;
    let etcd = Etcd::start().await;
    let port = free_port();
    let _service = accept_and_drop(port).await;
    let spin_port = free_port();
    let _spin_target = accept_and_drop(spin_port).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    let steady = format!(
        "    - name: steady\n      version: \"1\"\n      endpoints: [{{scheme: tcp, address: \"127.0.0.1:{port}\"}}]\n      checks:\n        - tcp: ~\n          interval: 100ms\n          timeout: 90ms\n"
    );
    config.instances = steady.clone();
    config.agent_extra = format!(
        "  checks: {{interval: 300ms, timeout: 250ms, failuresBeforeCritical: 3}}\n  plugins:\n    dir: plugins\n    interval: 1s\n    timeout: 200ms\n    memoryLimit: 32MiB\n    cacheDir: cache\n  admin:\n    listen: {admin}\n"
    );
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "check_escape", "check_escape");
    agent.spawn(&[]);
    let check = format!("tcp 127.0.0.1:{port}");
    wait_for(PATIENCE, "the tcp check passing", || async {
        http_get(&admin, "/status")
            .await
            .filter(|(_, body)| body.contains("\"passing\""))
    })
    .await;
    let every = Duration::from_millis(50);
    let mut unloaded = sample_durations(&admin, &check, every, Duration::from_secs(3)).await;

    // Twelve check plugins spinning until their budget traps them, again
    // and again.
    config.instances = steady
        + &(0..12)
            .map(|i| {
                format!(
                    "    - name: spin{i}\n      version: \"1\"\n      endpoints: [{{scheme: tcp, address: \"127.0.0.1:{spin_port}\"}}]\n      checks:\n        - plugin: check_escape\n          settings: {{then: spin}}\n"
                )
            })
            .collect::<String>();
    agent.rewrite_config(&config);
    wait_for(
        PATIENCE,
        "the spinning plugins' checks critical",
        || async {
            http_get(&admin, "/status")
                .await
                .filter(|(_, body)| body.matches("\"critical\"").count() >= 12)
        },
    )
    .await;
    let mut loaded = sample_durations(&admin, &check, every, Duration::from_secs(5)).await;
    for samples in [&mut unloaded, &mut loaded] {
        samples.sort_by(f64::total_cmp);
        assert!(samples.len() >= 10, "{samples:?}");
    }
    let (u50, u95) = (percentile(&unloaded, 0.5), percentile(&unloaded, 0.95));
    let (l50, l95) = (percentile(&loaded, 0.5), percentile(&loaded, 0.95));
    eprintln!(
        "tcp check latency: unloaded median {u50:.2} ms, p95 {u95:.2} ms ({} runs); 12 plugins spinning: median {l50:.2} ms, p95 {l95:.2} ms, max {:.2} ms ({} runs)",
        unloaded.len(),
        loaded[loaded.len() - 1],
        loaded.len()
    );
    // The budget is 20 ms over the unloaded figure; loosely here (a busy
    // machine): the median within it, every run well inside its timeout.
    assert!(
        l50 < u50 + 20.0,
        "median {l50} ms against {u50} ms unloaded"
    );
    assert!(loaded[loaded.len() - 1] < 90.0, "{loaded:?}");
    assert!(
        try_entries(&etcd.endpoints(), PREFIX)
            .await
            .unwrap()
            .keys()
            .any(|k| k.contains("/steady/")),
        "the steady instance left etcd"
    );
}
