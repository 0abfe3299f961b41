//! The status page (`/` on the admin listener) in a real browser: headless
//! Chromium through WebDriver (`support/browser.rs`) against the real agent
//! and a real etcd. It follows a health check live without a reload, says
//! so when the agent stops answering, renders hostile values from every
//! source as text with nothing run and nothing fetched, and is served
//! under a strict Content-Security-Policy. And `ygg-agent status ID`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ygg_agent::api::client::call;

use crate::support::*;

/// A run every 200 ms, critical at the first failure.
const FAST_CHECKS: &str = "  checks: {interval: 200ms, timeout: 150ms, failuresBeforeCritical: 1, successBeforePassing: 1}\n";

/// The state word the page shows for the instance of `service`, or null.
const STATE_OF: &str = r#"
const row = [...document.querySelectorAll('tr.instance')]
  .find((r) => r.querySelector('.service')?.textContent === arguments[0]);
return row ? row.querySelector('.state').textContent : null;"#;

/// An agent with the admin listener, the local API on a socket and a
/// state folder, `instances` and `extra` agent settings; its admin address
/// and socket.
fn agent_with_admin(etcd: &Etcd, instances: String, extra: &str) -> (Agent, String, PathBuf) {
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = instances;
    let agent = Agent::prepare(&config);
    let dir = agent.dir.path().to_path_buf();
    let socket = dir.join("agent.sock");
    let admin = format!("127.0.0.1:{}", free_port());
    config.agent_extra = format!(
        "{FAST_CHECKS}  admin:\n    listen: {admin}\n  stateDir: {}\n  api:\n    socket: {}\n{extra}",
        dir.join("state").display(),
        socket.display()
    );
    agent.rewrite_config(&config);
    (agent, admin, socket)
}

/// One instance of `name` (version 1, one http endpoint on `port`), with
/// `rest` (YAML, indented by 6) after it.
fn instance(name: &str, port: u16, rest: &str) -> String {
    format!(
        "    - name: {name}\n      version: \"1\"\n      endpoints: [{{scheme: http, address: \"127.0.0.1:{port}\"}}]\n{rest}"
    )
}

/// `GET path` on `addr`: (status line, lower-cased header lines, body).
async fn get_with_headers(addr: &str, path: &str) -> (String, Vec<String>, String) {
    let response = http_exchange(addr, "GET", path, &[])
        .await
        .expect("the admin server answers");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines.map(str::to_ascii_lowercase).collect();
    (status, headers, body.to_string())
}

/// The id `/status` gives the instance of `service`.
async fn id_of(admin: &str, service: &str) -> String {
    let (status, _) = wait_for(PATIENCE, "/status answers", || async {
        let (code, body) = http_get(admin, "/status").await?;
        (code == 200).then(|| serde_json::from_str::<Value>(&body).ok())?
    })
    .await;
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["service"] == service)
        .and_then(|i| i["id"].as_str())
        .unwrap_or_else(|| panic!("no {service} in {status}"))
        .to_string()
}

/// The state `/status` gives the instance of `service`.
async fn state_in_json(admin: &str, service: &str) -> Option<String> {
    let (_, body) = http_get(admin, "/status").await?;
    let status: Value = serde_json::from_str(&body).ok()?;
    status["instances"]
        .as_array()?
        .iter()
        .find(|i| i["service"] == service)
        .and_then(|i| i["state"].as_str())
        .map(str::to_string)
}

/// Waits until both `/status` and the page say `state` for `service`;
/// returns how long after `/status` the page said it (the page's lag,
/// measured by one loop polling both every 50 ms).
async fn page_follows(browser: &Browser, admin: &str, service: &str, state: &str) -> Duration {
    let started = Instant::now();
    let (mut json_at, mut page_at) = (None, None);
    loop {
        if json_at.is_none() && state_in_json(admin, service).await.as_deref() == Some(state) {
            json_at = Some(Instant::now());
        }
        if page_at.is_none() && browser.execute(STATE_OF, vec![json!(service)]).await == state {
            page_at = Some(Instant::now());
        }
        if let (Some(json_at), Some(page_at)) = (json_at, page_at) {
            return page_at.saturating_duration_since(json_at);
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{service} never became {state} (status {json_at:?}, page {page_at:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_page_follows_a_check_going_critical_and_back_live_and_says_when_the_agent_is_gone() {
    let etcd = Etcd::start().await;
    let web = free_port();
    let server = accept_and_drop(web).await;
    let instances = format!(
        "{}{}",
        instance("web", web, "      checks:\n        - tcp: ~\n"),
        instance("billing", free_port(), ""),
    );
    let instances = format!("{instances}{}", instance("orders", free_port(), ""));
    let (mut agent, admin, socket) = agent_with_admin(&etcd, instances, "");
    agent.spawn(&[]);
    let billing = id_of(&admin, "default/billing/1").await;
    let (code, _) = call(
        &socket,
        "PUT",
        &format!("/v1/instances/{billing}/maintenance"),
        Some(json!({"reason": "disk swap"}).to_string().into_bytes()),
    )
    .await
    .expect("the API answers");
    assert_eq!(code, 200);

    let browser = Browser::start().await;
    browser.goto(&format!("http://{admin}/")).await;
    let url = browser.execute("return location.href", vec![]).await;
    assert_eq!(url, format!("http://{admin}/"));
    browser
        .wait_for(
            PATIENCE,
            "the page live",
            "return document.getElementById('live').textContent === 'live'",
            vec![],
        )
        .await;
    // A reload would lose this.
    browser
        .execute("window.__sameDocument = 42; return null", vec![])
        .await;
    page_follows(&browser, &admin, "default/web/1", "registered").await;
    page_follows(&browser, &admin, "default/billing/1", "maintenance").await;
    let why = browser
        .execute(
            "return [...document.querySelectorAll('tr.instance')].map((r) => r.querySelector('.reason').textContent)",
            vec![],
        )
        .await;
    assert!(
        why.as_array()
            .unwrap()
            .contains(&json!("held out by maintenance: disk swap")),
        "{why}"
    );

    // The service dies: withheld on the page within a second of /status.
    server.abort();
    let _ = server.await;
    let lag = page_follows(&browser, &admin, "default/web/1", "withheld").await;
    println!("page lag behind /status, critical: {lag:?}");
    assert!(lag < Duration::from_secs(1), "{lag:?}");
    let (reason, _) = browser
        .wait_for(
            PATIENCE,
            "the reason names the check and its output",
            r#"const r = [...document.querySelectorAll('tr.instance')]
                 .find((r) => r.querySelector('.service').textContent === 'default/web/1');
               const why = r.querySelector('.reason').textContent;
               return why.includes('connection refused') ? why : null;"#,
            vec![],
        )
        .await;
    assert_eq!(
        reason,
        format!("withheld by check tcp 127.0.0.1:{web}: connection refused")
    );
    browser
        .wait_for(
            PATIENCE,
            "a failed run on the timeline",
            "return document.querySelectorAll('.run.fail').length > 0",
            vec![],
        )
        .await;
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let shot = workspace_root().join("target/status-page.png");
    std::fs::write(&shot, &png).unwrap();
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        std::fs::write(screenshot_path(), &png).unwrap();
    }

    // Back: registered again, on the same document.
    let _server = accept_and_drop(web).await;
    let lag = page_follows(&browser, &admin, "default/web/1", "registered").await;
    println!("page lag behind /status, passing again: {lag:?}");
    assert!(lag < Duration::from_secs(1), "{lag:?}");
    assert_eq!(
        browser
            .execute("return window.__sameDocument", vec![])
            .await,
        42
    );

    // The agent stops: the page says so, and keeps the last answer.
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(15));
    let (_, took) = browser
        .wait_for(
            PATIENCE,
            "the page says the agent is not answering",
            "return document.getElementById('live').textContent === 'not answering'",
            vec![],
        )
        .await;
    println!("'not answering' shown {took:?} after the agent exited");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        browser
            .execute(STATE_OF, vec![json!("default/web/1")])
            .await,
        "registered"
    );
    assert_eq!(
        browser
            .execute("return window.__sameDocument", vec![])
            .await,
        42
    );
}

/// A TCP listener that counts the connections it gets: a request for a URL
/// a hostile value names would land here.
async fn canary() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (port, hits)
}

/// An HTTP server that answers every request 500 with `body`: a health
/// check's output the server chooses.
async fn hostile_server(body: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = format!(
                "HTTP/1.1 500 Oops\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn hostile_values_render_as_text_and_run_or_fetch_nothing() {
    let etcd = Etcd::start().await;
    let (canary, hits) = canary().await;
    let img =
        |n: u32| format!("\"><img src=http://127.0.0.1:{canary}/{n} onerror=window.__pwned={n}>");
    let script = |n: u32| format!("<script>window.__pwned={n}</script>");
    // From a server: a failing http check's body (never shown: the
    // output is the status alone).
    let server = hostile_server(format!("{}{}", script(1), img(2))).await;
    // From the config: version, metadata (with control characters and a
    // javascript: URL); from a plugin: echo's output is its settings.
    let config_instance = format!(
        "    - name: \"<i>x\"\n      version: '{}'\n      metadata:\n        html: '{}'\n        link: \"javascript:window.__pwned=4\"\n        term: \"\\e[31mred\\a\"\n      endpoints: [{{scheme: http, address: \"127.0.0.1:{server}\"}}]\n      checks:\n        - http: ~\n",
        img(3),
        script(5),
    );
    let plugins = format!(
        "  plugins:\n    dir: plugins\n    interval: 1s\n    timeout: 500ms\n    memoryLimit: 16MiB\n    cacheDir: cache\n    settings:\n      echo: {{script: '{}', image: '{}'}}\n  instancesDir: instances.d\n",
        script(6),
        img(7),
    );
    let (mut agent, admin, socket) = agent_with_admin(&etcd, config_instance, &plugins);
    install_plugin(&agent.plugins_dir(), "echo", "echo");
    // From a file of the instances folder: refused, its name in the reason.
    let folder = agent.dir.path().join("instances.d");
    std::fs::create_dir(&folder).unwrap();
    let refused_name = "<svg onload=window.__pwned=8>.yaml";
    std::fs::write(folder.join(refused_name), "- name: [not, a, name]\n").unwrap();
    agent.spawn(&[]);
    // From the local API: a maintenance reason.
    let id = id_of(&admin, &format!("default/<i>x/{}", img(3))).await;
    let reason = format!("{}{}", script(9), img(10));
    let (code, _) = call(
        &socket,
        "PUT",
        &format!("/v1/instances/{id}/maintenance"),
        Some(json!({ "reason": reason }).to_string().into_bytes()),
    )
    .await
    .expect("the API answers");
    assert_eq!(code, 200);

    let browser = Browser::start().await;
    browser.goto(&format!("http://{admin}/")).await;
    // Everything arrived: the check's output, the plugin's, the refusal.
    let (text, _) = browser
        .wait_for(
            PATIENCE,
            "every hostile value on the page",
            r#"const text = document.body.textContent;
               return arguments[0].every((s) => text.includes(s)) ? text : null;"#,
            vec![json!([
                "<i>x".to_string(),
                img(3),
                "javascript:window.__pwned=4",
                script(5),
                script(6),
                img(7),
                refused_name,
                script(9),
                img(10),
            ])],
        )
        .await;
    let text = text.as_str().unwrap();
    // A checked service's body is never kept or shown (it may hold
    // secrets): only its status reaches the page.
    assert!(
        !text.contains(&script(1)) && !text.contains(&img(2)),
        "{text}"
    );
    // Control characters shown, not sent.
    assert!(text.contains("term=\\u{1b}[31mred\\u{7}"), "{text}");
    assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'));
    // Let a few more renders happen before looking for side effects.
    let renders = "return document.getElementById('updated').textContent";
    let first = browser.execute(renders, vec![]).await;
    browser
        .wait_for(
            PATIENCE,
            "another render",
            "return document.getElementById('updated').textContent !== arguments[0]",
            vec![first],
        )
        .await;

    let outcome = browser
        .execute(
            r#"return {
                 pwned: typeof window.__pwned,
                 scripts: document.scripts.length,
                 foreign: document.querySelectorAll('img, svg, iframe, object, embed, a, link, base, form, i, meta[http-equiv], [onerror], [onload]').length,
                 resources: performance.getEntriesByType('resource').map((e) => e.name),
               }"#,
            vec![],
        )
        .await;
    assert_eq!(outcome["pwned"], "undefined", "{outcome}");
    assert_eq!(outcome["scripts"], 1, "{outcome}");
    assert_eq!(outcome["foreign"], 0, "{outcome}");
    let own = format!("http://{admin}/status");
    for resource in outcome["resources"].as_array().unwrap() {
        assert_eq!(resource, &json!(own), "{outcome}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a request reached the canary"
    );

    // The plugin that said it: loaded, called, its memory measured.
    let (echo, _) = wait_for(PATIENCE, "echo called in /status", || async {
        let (_, body) = http_get(&admin, "/status").await?;
        let status: Value = serde_json::from_str(&body).ok()?;
        let echo = status["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "echo")?
            .clone();
        (echo["calls"].as_u64()? > 0).then_some(echo)
    })
    .await;
    assert_eq!(echo["kind"], "metadata", "{echo}");
    assert_eq!(echo["state"], "loaded", "{echo}");
    assert!(!echo["version"].as_str().unwrap().is_empty(), "{echo}");
    assert!(
        echo["loaded_ms"].as_u64().is_some() && echo["last_call_ms"].as_u64().is_some(),
        "{echo}"
    );
    assert!(echo["memory_bytes"].as_u64().unwrap() > 0, "{echo}");
    assert_eq!(echo["memory_limit_bytes"], 16 << 20, "{echo}");

    // The policy, and the headers beside it.
    let (status, headers, body) = get_with_headers(&admin, "/").await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("<script>") && !body.contains("<script src"));
    let header = |name: &str| {
        headers
            .iter()
            .find_map(|h| h.strip_prefix(&format!("{name}: ")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
    };
    let policy = header("content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'sha256-",
        "style-src 'sha256-",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(policy.contains(part), "{part} not in {policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(header("content-type").starts_with("text/html"));
    let (_, headers, _) = get_with_headers(&admin, "/status").await;
    assert!(
        headers.contains(&"x-content-type-options: nosniff".to_string()),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("content-security-policy: default-src 'none'")),
        "{headers:?}"
    );
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(15));
}

#[tokio::test]
async fn status_id_tells_one_instances_story_in_the_pages_words() {
    let etcd = Etcd::start().await;
    let down = free_port();
    let instances = format!(
        "{}{}",
        instance("web", down, "      checks:\n        - tcp: ~\n"),
        instance("billing", free_port(), "")
    );
    let (mut agent, admin, socket) = agent_with_admin(&etcd, instances, "");
    agent.spawn(&[]);
    let web = id_of(&admin, "default/web/1").await;
    let billing = id_of(&admin, "default/billing/1").await;
    call(
        &socket,
        "PUT",
        &format!("/v1/instances/{billing}/maintenance"),
        Some(json!({"reason": "disk swap"}).to_string().into_bytes()),
    )
    .await
    .expect("the API answers");

    let (story, _) = wait_for(PATIENCE, "web withheld with its reason", || async {
        let (code, out, _) = run_cli(&["status", &web, "--admin", &admin]);
        (code == 0 && out.contains("connection refused")).then_some(out)
    })
    .await;
    for part in [
        "default/web/1 (".to_string(),
        "state:  withheld since ".into(),
        format!("why:    withheld by check tcp 127.0.0.1:{down}: connection refused"),
        format!(
            "source: config ({} agent.instances[0])",
            agent.config_path.display()
        ),
        format!("key:    /yggdrasil/registry/default/web/{web}"),
        "lease:  none (not in etcd)".into(),
        format!("- tcp 127.0.0.1:{down}: critical — connection refused"),
        "fail  connection refused".into(),
    ] {
        assert!(story.contains(&part), "{part:?} not in\n{story}");
    }

    let (story, _) = wait_for(PATIENCE, "billing in maintenance", || async {
        let (code, out, _) = run_cli(&["status", &billing, "--admin", &admin]);
        (code == 0 && out.contains("state:  maintenance")).then_some(out)
    })
    .await;
    assert!(
        story.contains("why:    held out by maintenance: disk swap"),
        "{story}"
    );
    assert!(story.contains("checks: none"), "{story}");

    // The etcd session.
    let (_, body) = http_get(&admin, "/status").await.unwrap();
    let status: Value = serde_json::from_str(&body).unwrap();
    let session = &status["etcd"];
    assert_eq!(session["endpoints"], json!(etcd.endpoints()), "{session}");
    assert_eq!(session["connected"], true, "{session}");
    assert_eq!(session["ttl_s"], 4, "{session}");
    assert!(
        session["lease"].as_str().is_some_and(|l| !l.is_empty()),
        "{session}"
    );
    assert!(
        session["ttl_left_ms"].as_u64().is_some_and(|ms| ms <= 4000),
        "{session}"
    );

    // The same words in the table and the JSON.
    let (code, table, _) = run_cli(&["status", "--admin", &admin]);
    assert_eq!(code, 0);
    assert!(
        table.contains("  why: held out by maintenance: disk swap"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("default/billing/1") && l.contains(" maintenance ")),
        "{table}"
    );
    let (_, json, _) = run_cli(&["status", &billing, "--admin", &admin, "--json"]);
    let one: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(one["state"], "maintenance", "{json}");
    assert_eq!(one["reason"], "held out by maintenance: disk swap");

    // An unknown id: exit 1, naming the ones there are.
    let (code, _, stderr) = run_cli(&["status", "nope", "--admin", &admin]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no instance nope"), "{stderr}");
    assert!(
        stderr.contains(&web) && stderr.contains(&billing),
        "{stderr}"
    );
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(15));
}
