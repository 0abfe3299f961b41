//! Operations against a real etcd: the admin endpoints and metrics, `list`,
//! TLS and authentication, systemd notifications, JSON logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::support::*;

async fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics").await.expect("metrics answer");
    assert_eq!(status, 200);
    body
}

/// Waits until `sample` in /metrics satisfies `check`.
async fn wait_metric(addr: &str, sample: &str, check: impl Fn(f64) -> bool) -> f64 {
    let check = &check;
    wait_for(PATIENCE, &format!("metric {sample}"), || async move {
        metric(&scrape(addr).await, sample).filter(|v| check(*v))
    })
    .await
    .0
}

async fn wait_readyz(addr: &str, code: u16) -> String {
    wait_readyz_saying(addr, code, "").await
}

/// Waits until `/readyz` answers `code` with a body containing `says`.
async fn wait_readyz_saying(addr: &str, code: u16, says: &str) -> String {
    wait_for(
        PATIENCE,
        &format!("/readyz {code} {says:?}"),
        || async move {
            http_get(addr, "/readyz")
                .await
                .filter(|(s, b)| *s == code && b.contains(says))
                .map(|(_, b)| b)
        },
    )
    .await
    .0
}

#[tokio::test]
async fn admin_endpoints_and_metrics_follow_what_happens() {
    let mut etcd = Etcd::start().await;
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = format!(
        "  admin:\n    listen: {admin}\n  plugins:\n    dir: plugins\n    interval: 1s\n    cacheDir: cache\n    settings:\n      echo: {{value: x}}\n"
    );
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "echo", "echo");
    agent.spawn(&[]);

    let ready = wait_readyz(&admin, 200).await;
    assert!(
        ready.starts_with(
            "ready: 1/1 instances registered; etcd connected; 0 withheld by health checks; lease "
        ),
        "{ready}"
    );
    assert_eq!(
        http_get(&admin, "/healthz").await,
        Some((200, "ok\n".into()))
    );
    let text = scrape(&admin).await;
    for (sample, expected) in [
        ("ygg_agent_instances_desired", 1.0),
        ("ygg_agent_instances_registered", 1.0),
        ("ygg_agent_etcd_connected", 1.0),
        ("ygg_agent_lease_grants_total", 1.0),
        ("ygg_agent_lease_losses_total", 0.0),
    ] {
        assert_eq!(metric(&text, sample), Some(expected), "{sample} in\n{text}");
    }
    assert!(metric(&text, "ygg_agent_registrations_total{result=\"ok\"}").unwrap() >= 1.0);
    // The plugin may still be compiling (registration waits at most 2 s).
    wait_metric(&admin, "ygg_agent_plugins_loaded", |v| v == 1.0).await;
    wait_metric(
        &admin,
        "ygg_agent_plugin_calls_total{plugin=\"echo\",result=\"ok\"}",
        |v| v >= 1.0,
    )
    .await;
    wait_metric(
        &admin,
        "ygg_agent_plugin_call_duration_seconds_count{plugin=\"echo\"}",
        |v| v >= 1.0,
    )
    .await;
    wait_metric(&admin, "ygg_agent_keepalives_total{result=\"ok\"}", |v| {
        v >= 1.0
    })
    .await;

    // Someone deletes our key: it is repaired, and counted.
    let mut client = etcd.client().await;
    client.delete(SEED_KEY, None).await.unwrap();
    wait_metric(&admin, "ygg_agent_repairs_total", |v| v >= 1.0).await;
    // Counted when seen; put back a round later: ready again before the
    // next fault, so the 503 below is etcd's and not the repair's.
    wait_readyz(&admin, 200).await;

    // etcd goes away: not ready, not connected, keepalive failures counted.
    etcd.kill9();
    let not_ready = wait_readyz(&admin, 503).await;
    assert!(not_ready.contains("etcd unreachable"), "{not_ready}");
    wait_metric(&admin, "ygg_agent_etcd_connected", |v| v == 0.0).await;
    wait_metric(
        &admin,
        "ygg_agent_keepalives_total{result=\"error\"}",
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(
        http_get(&admin, "/healthz").await.map(|(s, _)| s),
        Some(200),
        "alive while etcd is down"
    );
    etcd.restart().await;
    wait_readyz(&admin, 200).await;

    // Reloads, good and bad, are counted.
    agent.signal(libc::SIGHUP);
    wait_metric(
        &admin,
        "ygg_agent_config_reloads_total{result=\"ok\"}",
        |v| v >= 1.0,
    )
    .await;
    std::fs::write(&agent.config_path, "agent: [broken\n").unwrap();
    wait_metric(
        &admin,
        "ygg_agent_config_reloads_total{result=\"error\"}",
        |v| v >= 1.0,
    )
    .await;

    // On stop the admin server goes away with the agent.
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(10));
    assert!(http_get(&admin, "/healthz").await.is_none());
}

#[tokio::test]
async fn readyz_waits_for_etcd_and_the_admin_address_follows_a_reload() {
    let mut etcd = Etcd::start().await;
    etcd.kill9();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = format!("  admin:\n    listen: {admin}\n");
    let agent = Agent::start(&config);
    // Until its first target (after the plugins' first round) the registry
    // holds none and says 0/0: wait for the config's one instance.
    let body = wait_readyz_saying(&admin, 503, "0/1 instances registered").await;
    assert!(body.contains("etcd unreachable"), "{body}");
    etcd.restart().await;
    wait_readyz(&admin, 200).await;

    let moved = format!("127.0.0.1:{}", free_port());
    config.agent_extra = format!("  admin:\n    listen: {moved}\n");
    agent.rewrite_config(&config);
    wait_readyz(&moved, 200).await;
    assert!(
        http_get(&admin, "/healthz").await.is_none(),
        "the old address still answers"
    );
}

#[tokio::test]
async fn list_prints_the_registry() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = format!(
        "{SEED_INSTANCE}{}    - namespace: prod\n      name: api\n      version: \"2\"\n      region: eu\n      endpoints: [{{scheme: http, address: \"10.0.0.9:80\"}}]\n",
        instances("other", 2)
    );
    let _agent = Agent::start(&config);
    let endpoints = etcd.endpoints();
    wait_for(PATIENCE, "4 instances", || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, PREFIX)
                .await
                .filter(|e| e.len() == 4)
        }
    })
    .await;
    let mut client = etcd.client().await;
    client
        .put(format!("{PREFIX}default/broken/abc"), "not json", None)
        .await
        .unwrap();
    let endpoint = etcd.endpoint();

    let (code, stdout, stderr) = run_cli(&["list", "--endpoints", &endpoint]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("NAMESPACE  SERVICE"), "{stdout}");
    assert!(
        stdout.contains("grpc://127.0.0.1:54321,http://127.0.0.1:54321  us-west/us-west-1/campus-a  5b51df33a06e"),
        "{stdout}"
    );
    assert!(stdout.contains("prod       api"), "{stdout}");
    assert!(
        stdout.ends_with("4 instances of 3 services; 1 invalid record\n"),
        "{stdout}"
    );
    assert!(
        stderr.contains("/yggdrasil/registry/default/broken/abc: not a valid instance record"),
        "{stderr}"
    );

    let (_, stdout, _) = run_cli(&["list", "--endpoints", &endpoint, "--namespace", "prod"]);
    assert!(stdout.ends_with("1 instance of 1 service\n"), "{stdout}");
    let (_, stdout, _) = run_cli(&["list", "--endpoints", &endpoint, "other"]);
    assert!(stdout.ends_with("2 instances of 1 service\n"), "{stdout}");
    // Filtered by scheme; the invalid record (whose scheme nobody knows) is
    // still reported.
    let (_, stdout, _) = run_cli(&["list", "--endpoints", &endpoint, "--scheme", "grpc"]);
    assert!(
        stdout.ends_with("1 instance of 1 service; 1 invalid record\n")
            && !stdout.contains("http://"),
        "{stdout}"
    );

    let (code, stdout, _) = run_cli(&[
        "list",
        "--endpoints",
        &endpoint,
        "--json",
        "--namespace",
        "default",
    ]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 4);
    let seed = listed.iter().find(|l| l["key"] == SEED_KEY).unwrap();
    assert_eq!(seed["instance"]["zone"], "us-west-1");
    assert_eq!(seed["instance"]["endpoints"][0]["scheme"], "grpc");
    let broken = listed
        .iter()
        .find(|l| l["key"].as_str().unwrap().ends_with("/broken/abc"))
        .unwrap();
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("not a valid instance record")
    );

    // The connection and prefix can come from the agent's config file.
    let (code, stdout, _) = run_cli(&[
        "list",
        "--config",
        _agent.config_path.to_str().unwrap(),
        "api",
    ]);
    assert_eq!(code, 0);
    assert!(stdout.ends_with("1 instance of 1 service\n"), "{stdout}");

    // Nothing answers: exit 1 with the reason.
    let (code, _, stderr) =
        run_cli(&["list", "--endpoints", &format!("127.0.0.1:{}", free_port())]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read the registry") && stderr.contains("Connection refused"),
        "{stderr}"
    );
}

/// A CA, an etcd server certificate for 127.0.0.1 and a client certificate,
/// all written as PEM files into `dir`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let write = |file: &str, text: String| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf = |cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("etcd", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf("ygg-agent", ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server: (
            write("server.pem", server_cert),
            write("server-key.pem", server_key),
        ),
        client: (
            write("client.pem", client_cert),
            write("client-key.pem", client_key),
        ),
    }
}

fn tls_section(ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> String {
    let mut tls = format!("        tls:\n          caFile: {}\n", ca.display());
    if let Some((cert, key)) = identity {
        tls.push_str(&format!(
            "          certFile: {}\n          keyFile: {}\n",
            cert.display(),
            key.display()
        ));
    }
    tls
}

/// The config with a `tls:` block under `client:`.
fn with_tls(config: &ConfigFile, tls: &str) -> String {
    config.render().replace(
        "        dialTimeout: 2s\n",
        &format!("        dialTimeout: 2s\n{tls}"),
    )
}

#[tokio::test]
async fn mutual_tls_registers_and_a_missing_client_certificate_is_refused_clearly() {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(certs.path(), "good");
    let etcd = Etcd::start_tls(EtcdTls {
        cert: pki.server.0.clone(),
        key: pki.server.1.clone(),
        ca: pki.ca.clone(),
        client_cert_auth: true,
        client_identity: Some(pki.client.clone()),
    })
    .await;
    let config = ConfigFile::new(etcd.endpoints());

    // CA only, but etcd wants a client certificate: a clear error, retried.
    let mut agent = Agent::prepare(&config);
    std::fs::write(
        &agent.config_path,
        with_tls(&config, &tls_section(&pki.ca, None)),
    )
    .unwrap();
    agent.spawn(&[]);
    agent.wait_for_log_count("retrying", 2, PATIENCE).await;
    let log = agent.log();
    assert!(
        log.contains("etcd request failed") && !log.contains("instance registered successfully"),
        "{log}"
    );

    // With the client certificate (applied by reload): registered.
    std::fs::write(
        &agent.config_path,
        with_tls(&config, &tls_section(&pki.ca, Some(&pki.client))),
    )
    .unwrap();
    agent
        .wait_for_log("instance registered successfully", PATIENCE)
        .await;
    let mut client = etcd.client().await;
    assert_eq!(
        entries(&mut client, PREFIX).await[SEED_KEY].value,
        SEED_VALUE
    );
}

#[tokio::test]
async fn server_only_tls_registers_and_an_untrusted_ca_is_refused_clearly() {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(certs.path(), "good");
    let stranger = make_pki(certs.path(), "stranger");
    let etcd = Etcd::start_tls(EtcdTls {
        cert: pki.server.0.clone(),
        key: pki.server.1.clone(),
        ca: pki.ca.clone(),
        client_cert_auth: false,
        client_identity: None,
    })
    .await;
    let config = ConfigFile::new(etcd.endpoints());

    // A CA that did not sign etcd's certificate: refused, said why, retried.
    let mut agent = Agent::prepare(&config);
    std::fs::write(
        &agent.config_path,
        with_tls(&config, &tls_section(&stranger.ca, None)),
    )
    .unwrap();
    agent.spawn(&[]);
    agent.wait_for_log_count("retrying", 2, PATIENCE).await;
    let log = agent.log();
    assert!(
        log.to_lowercase().contains("certificate"),
        "the error should name the certificate problem:\n{log}"
    );

    // The right CA: registered.
    std::fs::write(
        &agent.config_path,
        with_tls(&config, &tls_section(&pki.ca, None)),
    )
    .unwrap();
    agent
        .wait_for_log("instance registered successfully", PATIENCE)
        .await;
    let mut client = etcd.client().await;
    assert_eq!(entries(&mut client, PREFIX).await.len(), 1);
}

#[tokio::test]
async fn authentication_works_a_wrong_password_is_retried_and_never_logged() {
    let etcd = Etcd::start().await;
    etcd.enable_auth(PREFIX).await;

    let config = ConfigFile::new(etcd.endpoints());
    let credentials = |password: &str| {
        config.render().replace(
            "        dialTimeout: 2s\n",
            &format!(
                "        dialTimeout: 2s\n        username: agent\n        password: {password}\n"
            ),
        )
    };
    let mut agent = Agent::prepare(&config);
    std::fs::write(&agent.config_path, credentials("wrong-staple-guess")).unwrap();
    agent.spawn(&[]);
    agent.wait_for_log_count("retrying", 2, PATIENCE).await;
    assert!(
        agent.log().contains("etcd refused the credentials"),
        "{}",
        agent.log()
    );

    std::fs::write(&agent.config_path, credentials("correct-horse-battery")).unwrap();
    agent
        .wait_for_log("instance registered successfully", PATIENCE)
        .await;
    let options = ConnectOptions::new().with_user("root", "root-pw-123");
    let mut admin = Client::connect(etcd.endpoints(), Some(options))
        .await
        .unwrap();
    assert_eq!(
        entries(&mut admin, PREFIX).await[SEED_KEY].value,
        SEED_VALUE
    );

    // A graceful stop deregisters with the same credentials.
    agent.signal(libc::SIGTERM);
    let (status, _) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(entries(&mut admin, PREFIX).await.is_empty());
    let log = agent.log();
    for secret in ["wrong-staple-guess", "correct-horse-battery"] {
        assert!(!log.contains(secret), "a password reached the log:\n{log}");
    }
    let (_, stdout, stderr) = run_cli(&["check", "--config", agent.config_path.to_str().unwrap()]);
    assert!(!stdout.contains("correct-horse") && !stderr.contains("correct-horse"));
}

#[tokio::test]
async fn systemd_hears_ready_after_registration_then_stopping() {
    let mut etcd = Etcd::start().await;
    etcd.kill9();
    let config = ConfigFile::new(etcd.endpoints());
    let mut agent = Agent::prepare(&config);
    let mut systemd = FakeSystemd::bind(agent.dir.path());
    agent.spawn_with_env(&[], &systemd.env());
    // etcd is down: no READY, but watchdog pings and a status line.
    systemd.listen_for(Duration::from_secs(2));
    assert!(
        !systemd.heard_any("READY=1"),
        "READY before registration: {:?}",
        systemd.heard
    );
    assert!(systemd.heard_any("WATCHDOG=1"), "{:?}", systemd.heard);
    etcd.restart().await;
    systemd.listen_until(|h| h.iter().any(|m| m.contains("READY=1")));
    let ready = systemd
        .heard
        .iter()
        .find(|m| m.contains("READY=1"))
        .unwrap();
    assert!(
        ready.contains("STATUS=1/1 instances registered; etcd connected"),
        "{ready}"
    );
    let mut client = etcd.client().await;
    assert_eq!(
        entries(&mut client, PREFIX).await.len(),
        1,
        "READY=1 means registered"
    );
    agent.signal(libc::SIGTERM);
    systemd.listen_until(|h| h.iter().any(|m| m.contains("STOPPING=1")));
    agent.wait_exit(Duration::from_secs(10));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_naming_service_key_and_plugin() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = "  plugins:\n    dir: plugins\n    cacheDir: cache\n".into();
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "echo", "echo");
    agent.spawn(&["--log-format", "json"]);
    agent
        .wait_for_log("instance registered successfully", PATIENCE)
        .await;
    agent.wait_for_log("echo initialised", PATIENCE).await;
    let mut registered = None;
    let mut started = None;
    let mut plugin_line = None;
    for line in agent.log().lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            object["timestamp"].is_string() && object["level"].is_string(),
            "{line}"
        );
        if object["message"] == "instance registered successfully" {
            registered = Some(object.clone());
        }
        if object["message"] == "agent started" {
            started = Some(object.clone());
        }
        if object["message"] == "echo initialised" {
            plugin_line = Some(object);
        }
    }
    let registered = registered.expect("registration line");
    assert_eq!(registered["key"], SEED_KEY);
    assert_eq!(
        registered["service"],
        "default/example-registry-server/1.0.0"
    );
    assert_eq!(registered["level"], "INFO");
    assert_eq!(plugin_line.expect("plugin line")["plugin"], "echo");
    // A list of plain endpoints, comma-separated, not JSON text in a string.
    let started = started.expect("start line");
    assert_eq!(started["endpoints"], etcd.endpoints().join(","));
}
