//! What `ygg-agent status` shows: every configured instance, whether it is
//! registered or withheld by its health checks, and each check's last
//! result. The supervisor publishes an [`AgentStatus`] on a `watch`
//! channel; the admin server serves it as JSON at `/status`; the command
//! line fetches it from there and prints a table (or the JSON).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The agent's view of its instances, newest first published.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub instances: Vec<InstanceStatus>,
    /// Plugins refused by `agent.plugins.trustedKeys` (unsigned, changed
    /// after signing, signed by another key), each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_plugins: Vec<RefusedPlugin>,
}

/// A plugin the agent refuses to load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedPlugin {
    pub plugin: String,
    pub reason: String,
}

/// One configured instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Its etcd key.
    pub key: String,
    /// `namespace/name/version`.
    pub service: String,
    pub state: InstanceState,
    pub checks: Vec<CheckStatusView>,
}

/// Whether an instance is meant to be in etcd now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// In the registry's target (see `/readyz` for whether etcd has it).
    Registered,
    /// Held out of etcd: a check is critical.
    Withheld,
}

/// One check of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckStatusView {
    /// `tcp 127.0.0.1:8080`, `http http://…/health`, `grpc 127.0.0.1:9090`.
    pub check: String,
    /// `passing` or `critical`.
    pub status: String,
    /// The last run's output (`HTTP 200`) or why it failed; empty before
    /// the first run.
    pub output: String,
    /// How long the last run took, in milliseconds.
    pub duration_ms: Option<f64>,
}

impl AgentStatus {
    pub fn withheld(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.state == InstanceState::Withheld)
            .count()
    }

    /// The table `ygg-agent status` prints: one line per instance, then one
    /// indented line per check. Data from the config and from checks is
    /// printed with control characters escaped.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.instances.is_empty() {
            out.push_str("no instances configured\n");
        }
        self.instance_table(&mut out);
        for refused in &self.refused_plugins {
            let _ = writeln!(
                out,
                "plugin {}: refused — {}",
                escape(&refused.plugin),
                escape(&refused.reason)
            );
        }
        out
    }

    fn instance_table(&self, out: &mut String) {
        if self.instances.is_empty() {
            return;
        }
        let width = self
            .instances
            .iter()
            .map(|i| escape(&i.service).chars().count())
            .max()
            .unwrap_or(0)
            .max("SERVICE".len());
        let _ = writeln!(out, "{:<width$}  {:<10}  KEY", "SERVICE", "STATE");
        for instance in &self.instances {
            let state = match instance.state {
                InstanceState::Registered => "registered",
                InstanceState::Withheld => "withheld",
            };
            let _ = writeln!(
                out,
                "{:<width$}  {state:<10}  {}",
                escape(&instance.service),
                escape(&instance.key)
            );
            for check in &instance.checks {
                let took = check
                    .duration_ms
                    .map(|ms| format!(" ({ms:.1} ms)"))
                    .unwrap_or_default();
                let output = if check.output.is_empty() {
                    "not run yet".to_string()
                } else {
                    escape(&check.output)
                };
                let _ = writeln!(
                    out,
                    "  - {}: {} — {output}{took}",
                    escape(&check.check),
                    check.status
                );
            }
        }
    }
}

/// Where to reach a listener bound to `listen`: an unspecified address
/// (`0.0.0.0`, `::`) is reached on loopback.
pub fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

/// Longest `/status` answer read (a thousand instances with a few checks
/// each fit well within it).
const MAX_STATUS_BYTES: u64 = 64 << 20;
/// How long `fetch` waits for the whole answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /status` from the admin listener at `address`.
pub async fn fetch(address: SocketAddr) -> Result<AgentStatus, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("GET /status HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .take(MAX_STATUS_BYTES)
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("{}: {}", escape(status_line), escape(body.trim())));
    }
    serde_json::from_str(body).map_err(|e| format!("not a status answer: {e}"))
}

/// `text` with control characters shown as `\u{1b}` escapes, so data from
/// a config, a server or etcd cannot drive the operator's terminal.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// `rows` under `headers` in left-aligned columns two spaces apart, every
/// cell escaped (data from etcd, the API or a config never reaches the
/// terminal raw), trailing spaces trimmed; one line per row.
pub fn table<const N: usize>(headers: [&str; N], rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(|c| escape(c)))
        .collect();
    let mut widths = headers.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let text: Vec<String> = (cells.iter().zip(widths))
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(headers);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> AgentStatus {
        AgentStatus {
            instances: vec![
                InstanceStatus {
                    key: "/r/default/api/abc".into(),
                    service: "default/api/1.0.0".into(),
                    state: InstanceState::Registered,
                    checks: vec![CheckStatusView {
                        check: "tcp 127.0.0.1:8080".into(),
                        status: "passing".into(),
                        output: "connected".into(),
                        duration_ms: Some(0.25),
                    }],
                },
                InstanceStatus {
                    key: "/r/default/db/def".into(),
                    service: "default/db/2\u{1b}]0;pwned\u{7}".into(),
                    state: InstanceState::Withheld,
                    checks: vec![CheckStatusView {
                        check: "http http://127.0.0.1:9/".into(),
                        status: "critical".into(),
                        output: String::new(),
                        duration_ms: None,
                    }],
                },
            ],
            refused_plugins: Vec::new(),
        }
    }

    #[test]
    fn the_table_names_every_instance_and_check() {
        let table = status().table();
        assert!(table.contains("default/api/1.0.0"), "{table}");
        assert!(table.contains("registered"), "{table}");
        assert!(table.contains("withheld"), "{table}");
        assert!(
            table.contains("  - tcp 127.0.0.1:8080: passing — connected (0.2 ms)")
                || table.contains("  - tcp 127.0.0.1:8080: passing — connected (0.3 ms)"),
            "{table}"
        );
        assert!(table.contains("critical — not run yet"), "{table}");
        assert_eq!(status().withheld(), 1);
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let table = status().table();
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
        assert!(
            table.contains("default/db/2\\u{1b}]0;pwned\\u{7}"),
            "{table}"
        );
    }

    #[test]
    fn the_json_round_trips() {
        let json = serde_json::to_string(&status()).unwrap();
        assert!(json.contains("\"state\":\"withheld\""), "{json}");
        let back: AgentStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status());
    }
}
