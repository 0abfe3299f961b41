//! Health checks against real servers started here (a TCP listener, an
//! HTTP server, a gRPC server serving `grpc.health.v1`) and a real etcd: an
//! instance is in etcd only while its service answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::support::*;

/// Fast checks for tests: a run every 300 ms, 2 failures to go critical.
const FAST_CHECKS: &str = "  checks: {interval: 300ms, timeout: 200ms, failuresBeforeCritical: 2, successBeforePassing: 1}\n";

/// An instance of service `name` with one grpc endpoint on `port` and the
/// checks given as YAML list items (indented by 8).
fn instance(name: &str, port: u16, checks: &str) -> String {
    format!(
        "    - name: {name}\n      version: \"1\"\n      endpoints: [{{scheme: grpc, address: \"127.0.0.1:{port}\"}}]\n      checks:\n{checks}"
    )
}

#[tokio::test]
async fn only_instances_whose_service_answers_are_registered() {
    let etcd = Etcd::start().await;
    let (up, down) = (free_port(), free_port());
    let server = accept_and_drop(up).await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = format!(
        "{}{}",
        instance("up", up, "        - tcp: ~\n"),
        instance("down", down, "        - tcp: ~\n")
    );
    config.agent_extra = FAST_CHECKS.into();
    let agent = Agent::start(&config);

    // The healthy one is registered; the other waits for its first pass.
    wait_registered(&etcd, &["up"]).await;
    agent
        .wait_for_log("instance withheld until its health checks pass", PATIENCE)
        .await;

    // Its service dies: the key goes, with the reason in the log.
    server.abort();
    let _ = server.await;
    let (_, took) = wait_for(PATIENCE, "the dead service's key gone", || async {
        registered(&etcd).await.filter(|r| r.is_empty())
    })
    .await;
    // interval × failuresBeforeCritical + timeout + 1 s
    assert!(
        took < Duration::from_millis(300 * 2 + 200 + 1000 + 500),
        "{took:?}"
    );
    agent
        .wait_for_log(
            &format!("instance unhealthy: check tcp 127.0.0.1:{up} failed 2 times in a row: connection refused"),
            PATIENCE,
        )
        .await;

    // Back, and the other one comes up too: within
    // interval × successBeforePassing + 1 s.
    let _server = accept_and_drop(up).await;
    let _other = accept_and_drop(down).await;
    let (_, took) = wait_for(PATIENCE, "both keys back", || async {
        registered(&etcd).await.filter(|r| r.len() == 2)
    })
    .await;
    assert!(took < Duration::from_millis(300 + 1000 + 500), "{took:?}");
    agent.wait_for_log("instance healthy again", PATIENCE).await;
}

#[tokio::test]
async fn a_server_that_never_answers_is_caught_by_the_timeout() {
    let etcd = Etcd::start().await;
    // Accepts connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = instance(
        "silent",
        port,
        "        - http: ~\n          initialStatus: passing\n",
    )
    .replace("scheme: grpc", "scheme: http");
    config.agent_extra = FAST_CHECKS.into();
    let agent = Agent::start(&config);
    // `passing` to start with: registered at once...
    wait_registered(&etcd, &["silent"]).await;
    // ...and withheld once the timeouts add up.
    wait_registered(&etcd, &[]).await;
    agent
        .wait_for_log("failed 2 times in a row: timed out after 200ms", PATIENCE)
        .await;
    drop(listener);
}

/// An HTTP server that answers 503 and 200 in turn; counts the requests.
async fn flapping_server() -> (u16, Arc<AtomicUsize>) {
    use axum::http::StatusCode;
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n.is_multiple_of(2) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, requests)
}

#[tokio::test]
async fn thresholds_keep_a_flapping_server_from_flapping_etcd() {
    let etcd = Etcd::start().await;
    let (port, requests) = flapping_server().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = instance(
        "flappy",
        port,
        "        - http: ~\n          initialStatus: passing\n",
    )
    .replace("scheme: grpc", "scheme: http");
    config.agent_extra = FAST_CHECKS.into();
    let agent = Agent::start(&config);
    let entries = wait_registered(&etcd, &["flappy"]).await;
    let written = entries["flappy"].mod_revision;
    // Fail, pass, fail, pass…: never two failures in a row.
    wait_for(PATIENCE, "ten check runs", || async {
        (requests.load(Ordering::SeqCst) >= 10).then_some(())
    })
    .await;
    let entries = wait_registered(&etcd, &["flappy"]).await;
    assert_eq!(
        entries["flappy"].mod_revision, written,
        "the key was rewritten while the server flapped"
    );
    assert!(
        !agent.log().contains("instance unhealthy"),
        "{}",
        agent.log()
    );
}

#[tokio::test]
async fn a_check_edited_on_reload_applies_and_an_unchanged_one_keeps_its_state() {
    let etcd = Etcd::start().await;
    let (steady, closed, open) = (free_port(), free_port(), free_port());
    let _steady = accept_and_drop(steady).await;
    let _open = accept_and_drop(open).await;
    let mut config = ConfigFile::new(etcd.endpoints());
    let steady_instance = instance("steady", steady, "        - tcp: ~\n");
    config.instances = format!(
        "{steady_instance}{}",
        instance(
            "edited",
            closed,
            &format!("        - tcp: \"127.0.0.1:{closed}\"\n")
        )
    );
    config.agent_extra = FAST_CHECKS.into();
    let agent = Agent::start(&config);
    let before = wait_registered(&etcd, &["steady"]).await;

    // The check now points at a port that answers.
    config.instances = format!(
        "{steady_instance}{}",
        instance(
            "edited",
            closed,
            &format!("        - tcp: \"127.0.0.1:{open}\"\n")
        )
    );
    agent.rewrite_config(&config);
    let after = wait_registered(&etcd, &["edited", "steady"]).await;
    assert_eq!(
        after["steady"].mod_revision, before["steady"].mod_revision,
        "the instance whose check did not change was rewritten"
    );

    // A check that is not valid: refused, nothing changes.
    config.instances = format!(
        "{steady_instance}{}",
        instance("edited", closed, "        - tcp: \"no-port\"\n")
    );
    agent.rewrite_config(&config);
    agent.wait_reload_error("has no port").await;
    wait_registered(&etcd, &["edited", "steady"]).await;
}

#[tokio::test]
async fn grpc_health_status_and_readiness_follow_the_server() {
    use tonic_health::ServingStatus;
    let etcd = Etcd::start().await;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders", ServingStatus::Serving)
        .await;
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = incoming.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    let closed = free_port();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = format!(
        "{}{}",
        instance(
            "orders",
            port,
            "        - grpc: ~\n          service: orders\n"
        ),
        instance("gone", closed, "        - grpc: ~\n")
    );
    config.agent_extra = format!("{FAST_CHECKS}  admin:\n    listen: {admin}\n");
    let agent = Agent::start(&config);
    wait_registered(&etcd, &["orders"]).await;

    // Ready: the withheld instance is intended, and the line says so.
    let ((_, ready), _) = wait_for(PATIENCE, "ready", || async {
        http_get(&admin, "/readyz")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await;
    assert!(ready.contains("1 withheld by health checks"), "{ready}");

    // `ygg-agent status` names both, and each check's last result.
    let (code, stdout, stderr) =
        run_cli(&["status", "--config", agent.config_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("registered") && stdout.contains("withheld"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "grpc 127.0.0.1:{port} service \"orders\": passing — SERVING"
        )),
        "{stdout}"
    );
    let (code, json, _) = run_cli(&["status", "--admin", &admin, "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["instances"].as_array().unwrap().len(), 2, "{json}");

    // NOT_SERVING: withheld; SERVING again: back.
    reporter
        .set_service_status("orders", ServingStatus::NotServing)
        .await;
    wait_registered(&etcd, &[]).await;
    let (_, metrics) = http_get(&admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("ygg_agent_instances_withheld 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "ygg_agent_check_status{{service=\"default/orders/1\",check=\"grpc 127.0.0.1:{port} service \\\"orders\\\"\"}} 0"
        )),
        "{metrics}"
    );
    reporter
        .set_service_status("orders", ServingStatus::Serving)
        .await;
    wait_registered(&etcd, &["orders"]).await;
}

#[tokio::test]
async fn the_status_command_explains_a_missing_admin_listener() {
    let config = ConfigFile::new(vec!["127.0.0.1:9".into()]);
    let agent = Agent::prepare(&config);
    let (code, _, stderr) = run_cli(&["status", "--config", agent.config_path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("has no agent.admin.listen"), "{stderr}");
}

#[tokio::test]
async fn etcd_naming_keys_follow_the_instance_record_through_checks_edits_and_stop() {
    let etcd = Etcd::start().await;
    let port = free_port();
    let server = accept_and_drop(port).await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = instance("greeter", port, "        - tcp: ~\n");
    config.agent_extra = format!(
        "{FAST_CHECKS}  publish: [yggdrasil, etcd-naming]\n  etcdNaming: {{prefix: naming}}\n"
    );
    let mut agent = Agent::start(&config);
    let naming = |port: u16| format!("naming/default/greeter/127.0.0.1:{port}");
    let endpoints = etcd.endpoints();
    // Every key of both formats.
    let keys_now = || {
        let endpoints = endpoints.clone();
        async move {
            let mut all = try_entries(&endpoints, "naming/").await?;
            all.extend(try_entries(&endpoints, PREFIX).await?);
            Some(all)
        }
    };

    // Both formats, on one lease; the naming value is etcd's, byte for byte.
    let (all, _) = wait_for(PATIENCE, "the record and its naming key", || async {
        keys_now().await.filter(|e| e.len() == 2)
    })
    .await;
    let entry = &all[&naming(port)];
    assert_eq!(
        entry.value,
        format!(r#"{{"Op":0,"Addr":"127.0.0.1:{port}","Metadata":null}}"#)
    );
    assert!(entry.lease != 0);
    assert!(all.values().all(|e| e.lease == entry.lease), "{all:#?}");
    agent
        .wait_for_log("etcd-naming endpoint published", PATIENCE)
        .await;

    // A failing check takes the naming key away with the record.
    server.abort();
    let _ = server.await;
    wait_for(PATIENCE, "both keys gone while unhealthy", || async {
        keys_now().await.filter(|e| e.is_empty())
    })
    .await;

    // An edit that moves the endpoint moves the naming key.
    let moved = free_port();
    let _server = accept_and_drop(moved).await;
    let mut edited = config.clone();
    edited.instances = instance("greeter", moved, "        - tcp: ~\n");
    agent.rewrite_config(&edited);
    let (all, _) = wait_for(PATIENCE, "the moved naming key", || async {
        keys_now()
            .await
            .filter(|e| e.len() == 2 && e.contains_key(&naming(moved)))
    })
    .await;
    assert!(!all.contains_key(&naming(port)), "{all:#?}");

    // Stop: every key goes.
    agent.signal(libc::SIGTERM);
    let (status, _) = agent.wait_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
    let left = keys_now().await.expect("etcd answers");
    assert!(left.is_empty(), "{left:#?}");
    assert!(agent.log().contains("etcd-naming endpoint removed"));
}
