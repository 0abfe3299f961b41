//! A real browser for tests: headless Chromium (Debian's `chromium`)
//! driven by `chromedriver` (Debian's `chromium-driver`) through the W3C
//! WebDriver protocol, plain HTTP/1.1 + JSON on loopback. One [`Browser`]
//! is one chromedriver process, one session and one fresh profile folder;
//! dropping it ends the session and kills chromedriver and every Chromium
//! process started for that profile, also when the test failed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::free_port;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// One WebDriver request (navigation and scripts included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    profile: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session of
    /// headless Chromium with a profile of its own.
    pub async fn start() -> Browser {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Debian's chromium and chromium-driver (scripts/ensure-deps installs them)"
            );
        }
        let profile = tempfile::tempdir().expect("profile folder");
        let port = free_port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).expect("log");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            // Its own process group, so the browser it starts can be found
            // and killed with it.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            profile,
        };
        let started = Instant::now();
        loop {
            let ready = browser.call("GET", "/status", None).await;
            if ready.as_ref().is_ok_and(|v| v["value"]["ready"] == true) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not become ready: {ready:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let user_data = browser.profile.path().join("chromium");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--window-size=1400,900",
                    format!("--user-data-dir={}", user_data.display()),
                ],
            },
        }}});
        let answer = browser
            .call("POST", "/session", Some(capabilities))
            .await
            .unwrap_or_else(|e| panic!("cannot open a browser session: {e}"));
        browser.session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {answer}"))
            .to_string();
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let (port, method, path) = (self.port, method.to_string(), path.to_string());
        tokio::task::spawn_blocking(move || request(port, &method, &path, body.as_ref()))
            .await
            .map_err(|e| e.to_string())?
    }

    async fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        match self.call(method, &path, body).await {
            Ok(answer) => answer["value"].clone(),
            Err(error) => panic!("WebDriver {method} {path}: {error}"),
        }
    }

    /// Navigates to `url` and waits for the document to load.
    pub async fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the
    /// page and returns its value. WebDriver runs it outside the page's
    /// Content-Security-Policy.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Polls `script` until it returns something other than `null`,
    /// `false` or `undefined`; panics after `limit` saying `what`.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        script: &str,
        args: Vec<Value>,
    ) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let value = self.execute(script, args.clone()).await;
            if !(value.is_null() || value == Value::Bool(false)) {
                return (value, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting in the browser for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let value = self.session_call("GET", "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("base64 PNG"))
            .expect("valid base64")
    }

    /// The processes started for this browser's profile (Chromium and its
    /// helpers), by pid.
    fn chromium_pids(&self) -> Vec<i32> {
        let marker = self.profile.path().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                String::from_utf8_lossy(&cmdline)
                    .contains(&marker)
                    .then_some(pid)
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            );
        }
        // SAFETY: kill(2) on the process group chromedriver leads (we
        // started it with `process_group(0)`) and on the processes whose
        // command line names this browser's own profile folder.
        unsafe {
            libc::kill(-(self.driver.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        for pid in self.chromium_pids() {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// One HTTP/1.1 exchange with chromedriver, a connection each: the
/// answer's JSON, or why not. A WebDriver error (`value.error`) is an
/// `Err` with its message.
fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| format!("send: {e}"))?;
    // chromedriver keeps the connection open: read up to the body's end.
    let mut response = Vec::new();
    let mut chunk = [0u8; 16384];
    let body = loop {
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        response.extend_from_slice(&chunk[..n]);
        if let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
            let body = &response[split + 4..];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(length) => body.len() >= length,
                None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
                None => n == 0,
            };
            if done {
                let body = match length {
                    Some(length) => body[..length].to_vec(),
                    None if head.contains("transfer-encoding: chunked") => dechunk(body)?,
                    None => body.to_vec(),
                };
                break body;
            }
        }
        if n == 0 {
            return Err("the connection closed before the answer ended".into());
        }
    };
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        )
    })?;
    if let Some(error) = value["value"]["error"].as_str() {
        return Err(format!("{error}: {}", value["value"]["message"]));
    }
    Ok(value)
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size: {e}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).ok_or("short chunk")?);
        body = body.get(size + 2..).ok_or("short chunk")?;
    }
}

/// Where the README's screenshot of the status page is kept.
pub fn screenshot_path() -> PathBuf {
    super::workspace_root().join("docs/status-page.png")
}
