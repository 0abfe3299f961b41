//! The local API and its command line against a real etcd (#12): every
//! route, TTL registrations, maintenance across a restart, the socket's
//! mode, the TCP listener's token, and hostile bodies.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ygg_agent::api::client::call;

use crate::support::*;

/// The seed instance's id in the API: the last segment of its key.
const SEED_ID: &str = "5b51df33a06ef6bde3a81b1ad8d1792ed24de006";

async fn wait_socket(agent: &Agent, socket: &Path) {
    agent.wait_for_log("local API listening", PATIENCE).await;
    assert!(socket.exists(), "no socket at {}", socket.display());
}

fn app(port: u16, ttl: Option<&str>) -> Value {
    let mut body = json!({
        "name": "app",
        "version": "1",
        "endpoints": [{"scheme": "http", "address": format!("127.0.0.1:{port}")}],
    });
    if let Some(ttl) = ttl {
        body["ttl"] = json!(ttl);
    }
    body
}

async fn put(socket: &Path, path: &str, body: &Value) -> (u16, Value) {
    api_call(socket, "PUT", path, Some(body)).await
}

async fn ask(socket: &Path, method: &str, path: &str) -> (u16, Value) {
    api_call(socket, method, path, None).await
}

fn state_of(listing: &Value, id: &str) -> String {
    listing["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .map(|i| i["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no {id} in {listing}"))
}

#[tokio::test]
async fn every_route_registers_lists_holds_out_and_deregisters() {
    let etcd = Etcd::start().await;
    let (agent, socket) = api_agent(&mut ConfigFile::new(etcd.endpoints()), "");
    wait_socket(&agent, &socket).await;
    const SEED: &str = "example-registry-server";
    wait_keys(&etcd, SEED, 1).await;

    // Only the agent's user and group may use the socket.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), unsafe { libc::getuid() });

    let (status, answer) = put(&socket, "/v1/instances/app-1", &app(1, None)).await;
    assert_eq!(status, 200, "{answer}");
    wait_keys(&etcd, "app", 1).await;
    let (status, listing) = ask(&socket, "GET", "/v1/instances").await;
    assert_eq!(status, 200);
    let sources: Vec<(&str, &str, &str)> = listing["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap(),
                i["source"].as_str().unwrap(),
                i["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            (SEED_ID, "config", "registered"),
            ("app-1", "api", "registered")
        ]
    );

    // The same instance under another id, or the config's: refused.
    let (status, answer) = put(&socket, "/v1/instances/app-2", &app(1, None)).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("API registration app-1"),
        "{answer}"
    );
    let seed = json!({
        "namespace": "default", "name": SEED, "version": "1.0.0", "region": "us-west",
        "zone": "us-west-1", "campus": "campus-a",
        "metadata": {"env": "dev", "pod": "pod-1234567890"},
        "endpoints": [{"scheme": "grpc", "address": "127.0.0.1:54321"},
                      {"scheme": "http", "address": "127.0.0.1:54321"}],
    });
    let (status, answer) = put(&socket, "/v1/instances/seed", &seed).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("agent.instances[0]"),
        "{answer}"
    );

    // The id of the config's instance is not free either.
    let (status, answer) = put(&socket, &format!("/v1/instances/{SEED_ID}"), &app(9, None)).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("is taken by"),
        "{answer}"
    );

    // Instance maintenance: out, then back.
    let (status, _) = put(
        &socket,
        "/v1/instances/app-1/maintenance",
        &json!({"reason": "deploy"}),
    )
    .await;
    assert_eq!(status, 200);
    wait_keys(&etcd, "app", 0).await;
    let (_, listing) = ask(&socket, "GET", "/v1/instances").await;
    assert_eq!(state_of(&listing, "app-1"), "maintenance");
    assert_eq!(
        ask(&socket, "DELETE", "/v1/instances/app-1/maintenance")
            .await
            .0,
        200
    );
    wait_keys(&etcd, "app", 1).await;

    // Node maintenance: everything out, then back.
    let (status, _) = put(&socket, "/v1/maintenance", &json!({"reason": "kernel"})).await;
    assert_eq!(status, 200);
    wait_keys(&etcd, "app", 0).await;
    wait_keys(&etcd, SEED, 0).await;
    assert_eq!(ask(&socket, "DELETE", "/v1/maintenance").await.0, 200);
    wait_keys(&etcd, "app", 1).await;
    wait_keys(&etcd, SEED, 1).await;

    // Drain one instance without stopping the agent; maintenance off ends it.
    let (status, answer) = ask(&socket, "POST", &format!("/v1/instances/{SEED_ID}/drain")).await;
    assert_eq!(status, 200, "{answer}");
    wait_keys(&etcd, SEED, 0).await;
    let (_, listing) = ask(&socket, "GET", "/v1/instances").await;
    assert_eq!(state_of(&listing, SEED_ID), "drained");
    assert_eq!(keys_of(&etcd, "app").await, 1);
    assert_eq!(
        ask(
            &socket,
            "DELETE",
            &format!("/v1/instances/{SEED_ID}/maintenance")
        )
        .await
        .0,
        200
    );
    wait_keys(&etcd, SEED, 1).await;
    assert_eq!(
        ask(&socket, "POST", "/v1/instances/nobody/drain").await.0,
        404
    );

    // Pass without a TTL, deregister what is not the API's, unknown ids.
    assert_eq!(ask(&socket, "PUT", "/v1/instances/app-1/pass").await.0, 409);
    assert_eq!(
        ask(&socket, "PUT", "/v1/instances/nobody/pass").await.0,
        404
    );
    assert_eq!(
        ask(&socket, "DELETE", &format!("/v1/instances/{SEED_ID}"))
            .await
            .0,
        409
    );
    assert_eq!(ask(&socket, "DELETE", "/v1/instances/nobody").await.0, 404);
    assert_eq!(ask(&socket, "GET", "/v1/nothing").await.0, 404);

    let (status, _) = ask(&socket, "DELETE", "/v1/instances/app-1").await;
    assert_eq!(status, 200);
    wait_keys(&etcd, "app", 0).await;
}

/// Hostile requests get a clear 4xx and change nothing.
#[tokio::test]
async fn malformed_oversized_and_unknown_bodies_are_refused_and_change_nothing() {
    let etcd = Etcd::start().await;
    let (agent, socket) = api_agent(&mut ConfigFile::new(etcd.endpoints()), "");
    wait_socket(&agent, &socket).await;
    wait_keys(&etcd, "example-registry-server", 1).await;
    let before = try_entries(&etcd.endpoints(), PREFIX).await.unwrap();
    let (_, listing_before) = ask(&socket, "GET", "/v1/instances").await;
    let watch = KeyWatch::start(&etcd, PREFIX).await;

    let raw = |body: &[u8]| Some(body.to_vec());
    let mut big = app(2, None);
    big["metadata"] = json!({"blob": "x".repeat(70 << 10)});
    let cases: Vec<(&str, Option<Vec<u8>>, u16, &str)> = vec![
        ("/v1/instances/a", raw(b"{not json"), 400, "body is not valid JSON"),
        ("/v1/instances/a", raw(b"[]"), 400, "body must be a JSON object"),
        ("/v1/instances/a", raw(b"\xff\xfe"), 400, "body is not UTF-8"),
        ("/v1/instances/a", Some(big.to_string().into_bytes()), 413, "body larger than 64 KiB"),
        (
            "/v1/instances/a",
            Some(json!({"name": "app", "colour": "blue", "endpoints": [{"scheme": "http", "address": "127.0.0.1:1"}]}).to_string().into_bytes()),
            400,
            "colour: unknown key",
        ),
        (
            "/v1/instances/a",
            Some(json!({"name": "app", "endpoints": [{"scheme": "http", "address": "no port"}]}).to_string().into_bytes()),
            400,
            "endpoints[0].address",
        ),
        ("/v1/instances/a%2Fb", Some(app(3, None).to_string().into_bytes()), 400, "id may hold only"),
        ("/v1/instances/a/maintenance", raw(br#"{"why": 1}"#), 400, "unknown field"),
    ];
    for (path, body, code, wanted) in cases {
        let (status, answer) = call(&socket, "PUT", path, body).await.unwrap();
        assert_eq!(status, code, "{path}: {answer}");
        let text = answer.to_string();
        assert!(text.contains(wanted), "{path}: wanted {wanted:?} in {text}");
    }
    // Nothing changed: neither etcd nor the agent's view.
    watch
        .assert_unchanged_for(Duration::from_millis(300), "refused calls")
        .await;
    let after = try_entries(&etcd.endpoints(), PREFIX).await.unwrap();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert_eq!(ask(&socket, "GET", "/v1/instances").await.1, listing_before);
}

/// An app registers with a TTL, passes for a while, then stops passing:
/// its key is gone within TTL + 1 s, and comes back with the next pass.
#[tokio::test]
async fn a_ttl_registration_lives_while_its_app_passes() {
    let etcd = Etcd::start().await;
    let (agent, socket) = api_agent(&mut ConfigFile::new(etcd.endpoints()), "");
    wait_socket(&agent, &socket).await;
    let ttl = Duration::from_secs(2);
    let (status, answer) = put(&socket, "/v1/instances/ttl-app", &app(7, Some("2s"))).await;
    assert_eq!(status, 200, "{answer}");
    wait_keys(&etcd, "app", 1).await;

    // The app: a pass every 700 ms for 4 s (two TTLs); the key never goes.
    let until = Instant::now() + Duration::from_secs(4);
    let mut last_pass = Instant::now();
    while Instant::now() < until {
        assert_eq!(
            ask(&socket, "PUT", "/v1/instances/ttl-app/pass").await.0,
            200
        );
        last_pass = Instant::now();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            keys_of(&etcd, "app").await,
            1,
            "key gone while the app passed"
        );
    }
    // It stops passing.
    let (_, took) = wait_for(
        ttl + Duration::from_secs(3),
        "key gone after the TTL",
        || async { (keys_of(&etcd, "app").await == 0).then_some(()) },
    )
    .await;
    let gone_after = last_pass.elapsed();
    println!("key gone {gone_after:?} after the last pass ({took:?} of waiting)");
    assert!(
        gone_after <= ttl + Duration::from_secs(1),
        "gone {gone_after:?} after the last pass"
    );
    assert!(
        gone_after >= ttl,
        "gone before the TTL ran out: {gone_after:?}"
    );
    let (_, listing) = ask(&socket, "GET", "/v1/instances").await;
    assert_eq!(state_of(&listing, "ttl-app"), "ttl-expired");

    // A pass brings it back.
    assert_eq!(
        ask(&socket, "PUT", "/v1/instances/ttl-app/pass").await.0,
        200
    );
    wait_keys(&etcd, "app", 1).await;
}

/// Maintenance is kept in the state folder: a restarted agent keeps the
/// instance out of rotation; an API registration is not restored.
#[tokio::test]
async fn maintenance_survives_a_restart_and_api_registrations_do_not() {
    let etcd = Etcd::start().await;
    let (mut agent, socket) = api_agent(&mut ConfigFile::new(etcd.endpoints()), "");
    wait_socket(&agent, &socket).await;
    const SEED: &str = "example-registry-server";
    wait_keys(&etcd, SEED, 1).await;
    assert_eq!(
        put(&socket, "/v1/instances/app-1", &app(1, None)).await.0,
        200
    );
    let path = format!("/v1/instances/{SEED_ID}/maintenance");
    assert_eq!(
        put(&socket, &path, &json!({"reason": "disk swap"})).await.0,
        200
    );
    wait_keys(&etcd, SEED, 0).await;
    wait_keys(&etcd, "app", 1).await;

    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(10)).0.code(), Some(0));
    assert!(!socket.exists(), "socket left behind");
    agent.spawn(&[]);
    agent
        .wait_for_log_count("local API listening", 2, PATIENCE)
        .await;
    agent.wait_for_log_count("agent started", 2, PATIENCE).await;
    let (_, listing) = ask(&socket, "GET", "/v1/instances").await;
    assert_eq!(state_of(&listing, SEED_ID), "maintenance");
    let seed = listing["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == SEED_ID)
        .unwrap()
        .clone();
    assert_eq!(seed["reason"], "disk swap");
    assert!(
        listing["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"] != "app-1"),
        "{listing}"
    );
    // Registered: nothing, for a while (the agent is up and converged).
    agent
        .wait_for_log("maintenance in force from the state folder", PATIENCE)
        .await;
    let watch = KeyWatch::start(&etcd, PREFIX).await;
    watch
        .assert_unchanged_for(Duration::from_secs(1), "maintenance from the state folder")
        .await;
    assert_eq!(keys_of(&etcd, SEED).await, 0);

    assert_eq!(ask(&socket, "DELETE", &path).await.0, 200);
    wait_keys(&etcd, SEED, 1).await;
}

/// The loopback TCP listener wants the bearer token; a non-loopback
/// address is refused by the config check.
#[tokio::test]
async fn the_tcp_listener_requires_the_token() {
    let etcd = Etcd::start().await;
    let port = free_port();
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (agent, socket) = api_agent(
        &mut ConfigFile::new(etcd.endpoints()),
        &format!(
            "    listen: 127.0.0.1:{port}\n    tokenFile: {}\n",
            token_file.display()
        ),
    );
    wait_socket(&agent, &socket).await;
    let addr = format!("127.0.0.1:{port}");
    let get = |auth: Option<&'static str>| {
        let addr = addr.clone();
        async move {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
            let (status, _) = http_request(&addr, "GET", "/v1/instances", &headers)
                .await
                .expect("the TCP listener answers");
            status
        }
    };
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some("Bearer wrong")).await, 401);
    assert_eq!(get(Some("Basic czNjcmV0")).await, 401);
    assert_eq!(get(Some("Bearer s3cret")).await, 200);

    let config = format!(
        "agent:\n  api:\n    listen: 0.0.0.0:{port}\n    tokenFile: {}\n",
        token_file.display()
    );
    let path = token_dir.path().join("agent.yaml");
    std::fs::write(&path, config).unwrap();
    let (code, _, stderr) = run_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("agent.api.listen: 0.0.0.0:") && stderr.contains("not a loopback address"),
        "{stderr}"
    );
    std::fs::write(
        &path,
        format!("agent:\n  api:\n    listen: 127.0.0.1:{port}\n"),
    )
    .unwrap();
    let (code, _, stderr) = run_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("agent.api.tokenFile: required with `listen`"),
        "{stderr}"
    );
}

/// The command line drives every route and prints escaped tables.
#[tokio::test]
async fn the_command_line_drives_the_api() {
    let etcd = Etcd::start().await;
    let (agent, socket) = api_agent(&mut ConfigFile::new(etcd.endpoints()), "");
    wait_socket(&agent, &socket).await;
    let s = socket.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A name holding escape sequences is refused, and the refusal is
    // printed escaped.
    let hostile = dir.path().join("hostile.yaml");
    std::fs::write(
        &hostile,
        "name: \"web\\e]0;pwned\\a\"\nendpoints: [{scheme: http, address: \"\\e[2J:1\"}]\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["register", "--socket", s, hostile.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        !err.contains('\u{1b}') && !err.contains('\u{7}'),
        "raw control characters: {err:?}"
    );
    assert!(err.contains("\\u{1b}]0;pwned"), "{err}");

    let file = dir.path().join("web-1.yaml");
    std::fs::write(
        &file,
        "name: web\nversion: \"2\"\nendpoints: [{scheme: http, address: \"127.0.0.1:9\"}]\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["register", "--socket", s, file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("registered web-1 (/yggdrasil/registry/default/web/"),
        "{out}"
    );
    wait_keys(&etcd, "web", 1).await;

    let (code, out, _) = run_cli(&["instances", "--socket", s]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("web-1") && l.contains("api") && l.contains("default/web/2")),
        "{out}"
    );
    let (code, out, _) = run_cli(&["instances", "--socket", s, "--json"]);
    assert_eq!(code, 0);
    let listing: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listing["instances"].as_array().unwrap().len(), 2);

    let (code, out, err) = run_cli(&[
        "maint", "--socket", s, "enable", "web-1", "--reason", "deploy",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("maintenance on for web-1"), "{out}");
    let (_, out, _) = run_cli(&["instances", "--socket", s]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("web-1") && l.contains("maintenance") && l.contains("deploy")),
        "{out}"
    );
    assert_eq!(run_cli(&["maint", "--socket", s, "disable", "web-1"]).0, 0);
    assert_eq!(
        run_cli(&["maint", "--socket", s, "enable", "--reason", "all"]).0,
        0
    );
    let (_, out, _) = run_cli(&["instances", "--socket", s]);
    assert!(out.contains("node in maintenance: all"), "{out}");
    assert_eq!(run_cli(&["maint", "--socket", s, "disable"]).0, 0);
    let (code, out, _) = run_cli(&["drain", "--socket", s, SEED_ID]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("drained {SEED_ID}")), "{out}");
    let (code, out, err) = run_cli(&["drain", "--socket", s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("drained the node"), "{out}");
    assert_eq!(run_cli(&["maint", "--socket", s, "disable"]).0, 0);

    // Refusals exit 2 with the agent's reasons; no agent exits 1.
    let (code, _, err) = run_cli(&["pass", "--socket", s, "web-1"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("409") && err.contains("registered without a ttl"),
        "{err}"
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name": "x", "endpoints": []}"#).unwrap();
    let (code, _, err) = run_cli(&["register", "--socket", s, bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("endpoints: at least one endpoint"), "{err}");
    assert_eq!(run_cli(&["deregister", "--socket", s, "a/b"]).0, 2);
    let (code, out, err) = run_cli(&["deregister", "--socket", s, "web-1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "deregistered web-1\n");
    let (code, _, err) = run_cli(&["instances", "--socket", "/nonexistent/agent.sock"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the agent"), "{err}");
}
