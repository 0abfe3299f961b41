//! The rough edges a new operator hits (#24): API errors always JSON and
//! the token before anything else on TCP, maintenance kept by an identity
//! that survives a version bump (unknown ids refused, stale entries
//! dropped), what `register`, `list`, `check` and `--help` say when the
//! input is not what they expect, and log lines naming `service` and `key`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// The seed instance's id in the API: the last segment of its key.
const SEED_ID: &str = "5b51df33a06ef6bde3a81b1ad8d1792ed24de006";
const SEED: &str = "example-registry-server";

/// One request to the TCP listener, with the bearer `token` if any:
/// (status, body).
async fn tcp_request(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = (auth.iter())
        .map(|a| ("Authorization", a.as_str()))
        .collect();
    http_request(addr, method, path, &headers)
        .await
        .expect("the TCP listener answers")
}

#[tokio::test]
async fn a_wrong_method_answers_json_and_tcp_checks_the_token_first() {
    let etcd = Etcd::start().await;
    let port = free_port();
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    // A token file others may read is refused (as ssh refuses such a key).
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut config = ConfigFile::new(etcd.endpoints());
    let (agent, socket) = api_agent(
        &mut config,
        &format!(
            "    listen: 127.0.0.1:{port}\n    tokenFile: {}\n",
            token_file.display()
        ),
    );
    agent.wait_for_log("local API listening", PATIENCE).await;

    // On the socket: 405 with a JSON error naming the method.
    let (status, body) = api_call(&socket, "GET", "/v1/instances/web2", None).await;
    assert_eq!(status, 405, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("GET is not a method"),
        "{body}"
    );
    let (status, body) = api_call(&socket, "GET", "/v1/nowhere", None).await;
    assert_eq!((status, body["error"].is_string()), (404, true), "{body}");

    // On TCP: no token is 401 whatever the method or route; with it, the
    // same JSON 405.
    let addr = format!("127.0.0.1:{port}");
    for (method, path) in [
        ("GET", "/v1/instances/web2"),
        ("DELETE", "/v1/instances"),
        ("GET", "/v1/nowhere"),
    ] {
        let (status, body) = tcp_request(&addr, method, path, None).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(body["error"].as_str().unwrap().contains("bearer token"));
    }
    let (status, body) = tcp_request(&addr, "DELETE", "/v1/instances", Some("s3cret")).await;
    assert_eq!(status, 405, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("DELETE is not a method of /v1/instances"),
        "{body}"
    );
}

/// Maintenance is kept by the instance's identity (service and endpoints),
/// not its key: a version bump keeps it out of rotation; an id nobody has
/// is refused with the ids that exist; an entry whose instance is gone is
/// dropped with a log line. Drains and maintenance log `service` and `key`.
#[tokio::test]
async fn maintenance_follows_the_instance_through_a_version_bump() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    let (agent, socket) = api_agent(&mut config, "");
    agent.wait_for_log("local API listening", PATIENCE).await;
    wait_keys(&etcd, SEED, 1).await;
    let s = socket.to_str().unwrap();

    // A typo: 404, nothing stored, the known ids listed.
    let (code, out, err) = run_cli(&["maint", "--socket", s, "enable", "typo-id"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("404") && err.contains("no instance typo-id") && err.contains(SEED_ID),
        "{err}"
    );
    let (status, body) = api_call(&socket, "POST", "/v1/instances/typo-id/drain", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["known"], json!([SEED_ID]), "{body}");

    let (code, _, err) = run_cli(&[
        "maint",
        "--socket",
        s,
        "enable",
        SEED_ID,
        "--reason",
        "disk swap",
    ]);
    assert_eq!(code, 0, "{err}");
    wait_keys(&etcd, SEED, 0).await;
    let line = agent_line(&agent, "maintenance on: out of rotation").await;
    assert!(
        line.contains(&format!("service=default/{SEED}/1.0.0")) && line.contains(SEED_ID),
        "{line}"
    );
    let state_file = agent.dir.path().join("state/maintenance.json");
    let identity = "default/example-registry-server grpc://127.0.0.1:54321 http://127.0.0.1:54321";
    wait_for(PATIENCE, "maintenance.json by identity", || async {
        let text = std::fs::read_to_string(&state_file).ok()?;
        text.contains(identity).then_some(())
    })
    .await;

    // Version bump: a new key and id, still in maintenance.
    config.instances = SEED_INSTANCE.replace("version: 1.0.0", "version: 1.0.1");
    agent.rewrite_config(&config);
    agent.wait_for_log("config reloaded", PATIENCE).await;
    let (_, listing) = api_call(&socket, "GET", "/v1/instances", None).await;
    let instances = listing["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{listing}");
    let bumped = &instances[0];
    assert_ne!(bumped["id"], SEED_ID);
    assert_eq!(bumped["state"], "maintenance", "{listing}");
    assert_eq!(bumped["reason"], "disk swap", "{listing}");
    assert_eq!(bumped["identity"], identity, "{listing}");
    // Converged and still out.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(keys_of(&etcd, SEED).await, 0);

    // Drain logs service and key too.
    let bumped_id = bumped["id"].as_str().unwrap().to_string();
    let (code, _, err) = run_cli(&["drain", "--socket", s, &bumped_id]);
    assert_eq!(code, 0, "{err}");
    let line = agent_line(&agent, "drain: deleting the key").await;
    assert!(
        line.contains(&format!("service=default/{SEED}/1.0.1")) && line.contains(&bumped_id),
        "{line}"
    );

    // The instance goes (a new address): its maintenance is dropped.
    config.instances = SEED_INSTANCE
        .replace("version: 1.0.0", "version: 1.0.1")
        .replace("127.0.0.1:54321", "127.0.0.1:54399");
    agent.rewrite_config(&config);
    let line = agent_line(&agent, "maintenance dropped: no such instance any more").await;
    assert!(
        line.contains(identity) && line.contains("disk swap"),
        "{line}"
    );
    wait_keys(&etcd, SEED, 1).await;
    wait_for(PATIENCE, "maintenance.json without the entry", || async {
        let text = std::fs::read_to_string(&state_file).ok()?;
        (!text.contains(identity)).then_some(())
    })
    .await;
}

/// The first log line holding `needle`, once there is one.
async fn agent_line(agent: &Agent, needle: &str) -> String {
    agent.wait_for_log(needle, PATIENCE).await;
    agent
        .log()
        .lines()
        .find(|l| l.contains(needle))
        .unwrap()
        .to_string()
}

/// `register` says what is wrong with its file in the file's own terms.
#[tokio::test]
async fn register_explains_its_file() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    let (agent, socket) = api_agent(&mut config, "");
    agent.wait_for_log("local API listening", PATIENCE).await;
    let s = socket.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };

    // A mistake on line 3 is reported on line 3 (not the JSON's line 1).
    let typo = write(
        "typo.yaml",
        "name: web\nversion: \"1\"\nendpoints: [{scheme: http, adress: \"127.0.0.1:9\"}]\n",
    );
    let (code, _, err) = run_cli(&["register", "--socket", s, &typo]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("typo.yaml: invalid instance") && err.contains("(line 3)"),
        "{err}"
    );
    assert!(!err.contains("(line 1)"), "{err}");

    // A list (the instances folder's format) says so.
    let list = write(
        "list.yaml",
        "- name: web\n  endpoints: [{scheme: http, address: \"127.0.0.1:9\"}]\n",
    );
    let (code, _, err) = run_cli(&["register", "--socket", s, &list]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is a list of instances, the format of the instances folder"),
        "{err}"
    );

    // An id taken from the file name says so, and how to give one.
    let spaced = write(
        "has space.yaml",
        "name: web\nendpoints: [{scheme: http, address: \"127.0.0.1:9\"}]\n",
    );
    let (code, _, err) = run_cli(&["register", "--socket", s, &spaced]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the id `has space` comes from the file name") && err.contains("--id"),
        "{err}"
    );
    let (code, out, err) = run_cli(&["register", "--socket", s, "--id", "web-1", &spaced]);
    assert_eq!(code, 0, "{out}{err}");

    // A TTL miss is logged with the instance's service and key.
    let ttl = write(
        "ttl.json",
        r#"{"name": "ttl-app", "ttl": "1s", "endpoints": [{"scheme": "http", "address": "127.0.0.1:8"}]}"#,
    );
    assert_eq!(run_cli(&["register", "--socket", s, &ttl]).0, 0);
    let line = agent_line(&agent, "TTL missed").await;
    assert!(
        line.contains("service=default/ttl-app/")
            && line.contains("key=/yggdrasil/registry/default/ttl-app/"),
        "{line}"
    );
}

/// `--help` names the exit codes and every argument; `list --prefix`
/// without a leading `/` warns; `plugin check` with a missing config
/// exits 2 as its help says.
#[tokio::test]
async fn the_command_line_says_what_it_does() {
    for command in ["register", "deregister", "pass", "maint", "drain"] {
        let (code, out, _) = run_cli(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(
            out.contains("exit 0") && out.contains("2 refused"),
            "{command} --help:\n{out}"
        );
        assert!(
            out.contains("$TMPDIR/ygg-agent-<uid>/agent.sock"),
            "{command} --help:\n{out}"
        );
    }
    let (_, out, _) = run_cli(&["maint", "--help"]);
    let described = |arg: &str| {
        out.lines()
            .skip_while(|l| !l.trim_start().starts_with(arg))
            .nth(1)
            .is_some_and(|l| !l.trim().is_empty() && !l.trim_start().starts_with('-'))
            || out
                .lines()
                .any(|l| l.trim_start().starts_with(arg) && l.trim().len() > arg.len() + 4)
    };
    assert!(described("--reason"), "{out}");
    assert!(described("[ID]"), "{out}");

    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let (code, _, err) = run_cli(&["list", "--endpoints", &endpoint, "--prefix", "yggdrasil"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: --prefix `yggdrasil` does not start with `/`")
            && err.contains("`/yggdrasil`"),
        "{err}"
    );

    let (_, help, _) = run_cli(&["plugin", "check", "--help"]);
    assert!(
        help.contains("2 the\n") || help.contains("2 the --config"),
        "{help}"
    );
    let (code, _, err) = run_cli(&[
        "plugin",
        "check",
        "x.wasm",
        "--config",
        "/nonexistent/agent.yaml",
    ]);
    assert_eq!(code, 2, "{err}");
}

/// A missing `agent.instancesDir` is an empty folder at start too: the
/// agent runs and registers a file dropped into the folder once it
/// appears. `check` reads the folder's files; `*.yml` files count.
#[tokio::test]
async fn a_missing_instances_folder_is_watched_until_it_appears() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    let mut agent = Agent::prepare(&config);
    let folder = agent.dir.path().join("instances.d");
    config.agent_extra = format!("  instancesDir: {}\n", folder.display());
    agent.rewrite_config(&config);
    let path = agent.config_path.to_str().unwrap().to_string();
    let (code, out, err) = run_cli(&["check", "--config", &path]);
    assert_eq!(code, 0, "{out}{err}");
    agent.spawn(&[]);
    wait_keys(&etcd, SEED, 1).await;

    std::fs::create_dir(&folder).unwrap();
    std::fs::write(
        folder.join("web.yml"),
        "- name: web\n  endpoints: [{scheme: http, address: \"127.0.0.1:9\"}]\n",
    )
    .unwrap();
    wait_keys(&etcd, "web", 1).await;

    // `check` reads the files: a broken one makes the config invalid.
    std::fs::write(folder.join("broken.yaml"), "- name: api\n  endpoints: []\n").unwrap();
    let (code, _, err) = run_cli(&["check", "--config", &path]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("broken.yaml: [0].endpoints: at least one endpoint (line 2)"),
        "{err}"
    );
}

/// README's check-plugin example is valid and draws no warning (it used
/// to register a `redis` endpoint no Yggdrasil client sees).
#[test]
fn the_readme_check_plugin_example_is_valid_without_warnings() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("plugin: redis_check"))
        .expect("README has the check-plugin example");
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(
        &path,
        block.replace("/etc/ygg-agent/plugins", plugins.to_str().unwrap()),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
}
