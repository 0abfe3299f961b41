//! The one status model, [`AgentStatus`]: what `/status` serves (JSON),
//! what the status page at `/` shows, what `ygg-agent status` prints as a
//! table and `ygg-agent status ID` as one instance's story. The supervisor
//! builds it on request (`agent/status.rs`); this module holds the types,
//! the pure rules that pick each instance's state and reason, the text
//! renderings, and the client that fetches it. One word per state, the
//! same everywhere: `registered`, `pending`, `withheld`, `ttl-expired`,
//! `maintenance`, `drained`, `refused`.
//!
//! Times are Unix milliseconds (`*_ms` fields) so the page and the command
//! line can both say "12 s ago" against `now_ms`, the agent's clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How many recent runs each check keeps for the status (its timeline).
pub const CHECK_HISTORY: usize = 20;

/// Everything the agent can say about itself, built fresh per request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's clock when this was built.
    #[serde(default)]
    pub now_ms: u64,
    pub instances: Vec<InstanceStatus>,
    /// Files of the instances folder that were refused (their last good
    /// instances, if any, are among `instances`).
    #[serde(default)]
    pub refused: Vec<RefusedFile>,
    #[serde(default)]
    pub plugins: Vec<PluginStatus>,
    #[serde(default)]
    pub etcd: SessionStatus,
    /// Node maintenance in force, with its reason.
    #[serde(default)]
    pub maintenance: Option<String>,
    /// The whole node is drained.
    #[serde(default)]
    pub drained: bool,
}

/// One instance of the effective config (config, instances folder, API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Its id in the local API (`maint`, `drain`, `status ID`).
    #[serde(default)]
    pub id: String,
    /// Its etcd key.
    pub key: String,
    /// `namespace/name/version`.
    pub service: String,
    /// `config`, `file` or `api`.
    #[serde(default)]
    pub source: String,
    /// Where exactly: `agent.yaml agent.instances[0]`, `…/a.yaml [2]`,
    /// `API registration app-1`.
    #[serde(default)]
    pub origin: String,
    pub state: InstanceState,
    /// Why it is in that state, in words (one sentence).
    #[serde(default)]
    pub reason: String,
    /// Since when, if known.
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// The lease its key is written under (hex), while registered.
    #[serde(default)]
    pub lease: Option<String>,
    /// An API registration's TTL (`15s`).
    #[serde(default)]
    pub ttl: Option<String>,
    /// `scheme://address` of each endpoint.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The metadata its record carries: its own, then the plugins'.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub checks: Vec<CheckStatusView>,
}

/// Where an instance stands, one word each (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Its key is in etcd, as written, under a live lease.
    Registered,
    /// In the target, not yet written or confirmed by etcd.
    Pending,
    /// Held out: a health check is critical.
    Withheld,
    /// Held out: an API registration missed its TTL.
    TtlExpired,
    /// Held out by the operator (`maint enable`).
    Maintenance,
    /// Drained by the operator (`drain`).
    Drained,
    /// Its file or registration was refused.
    Refused,
}

impl InstanceState {
    pub fn word(self) -> &'static str {
        match self {
            InstanceState::Registered => "registered",
            InstanceState::Pending => "pending",
            InstanceState::Withheld => "withheld",
            InstanceState::TtlExpired => "ttl-expired",
            InstanceState::Maintenance => "maintenance",
            InstanceState::Drained => "drained",
            InstanceState::Refused => "refused",
        }
    }

    /// Kept out of the target on purpose (`held_out`).
    pub fn is_held_out(self) -> bool {
        matches!(
            self,
            InstanceState::Withheld
                | InstanceState::TtlExpired
                | InstanceState::Maintenance
                | InstanceState::Drained
        )
    }
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
    /// When the check took its current status (its start, if it never
    /// changed).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// The last runs, oldest first (at most [`CHECK_HISTORY`]).
    #[serde(default)]
    pub history: Vec<CheckRun>,
}

/// One run of a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRun {
    pub at_ms: u64,
    pub passed: bool,
    /// The probe's output, or why it failed.
    pub output: String,
    pub duration_ms: f64,
}

/// A refused file of the instances folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedFile {
    pub file: String,
    /// Always `refused`.
    pub state: InstanceState,
    /// Every problem found, each naming where.
    pub reasons: Vec<String>,
}

/// One loaded plugin (or one that failed to load).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    pub name: String,
    /// What `describe` said (empty for a check plugin or a failed load).
    pub version: String,
    /// `metadata` or `check`.
    pub kind: String,
    /// `loaded`, `failed`, or `untrusted` (refused by
    /// `agent.plugins.trustedKeys`).
    pub state: String,
    pub loaded_ms: Option<u64>,
    /// When its last round answered (metadata plugins; a check plugin is
    /// called by its checks, see their history).
    pub last_call_ms: Option<u64>,
    /// Calls that answered and calls that failed since it was loaded.
    pub calls: u64,
    pub errors: u64,
    /// The last failure (a call, or the load).
    pub last_error: Option<String>,
    /// Peak linear memory of its instance, and the limit.
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: u64,
}

/// The etcd session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub endpoints: Vec<String>,
    /// The last request succeeded.
    pub connected: bool,
    /// The lease (hex) while etcd confirms it alive.
    pub lease: Option<String>,
    /// The lease's TTL, in seconds.
    pub ttl_s: u64,
    /// How long the lease lives without another renewal.
    pub ttl_left_ms: Option<u64>,
    /// The last anti-entropy check, and how many keys it rewrote.
    pub last_repair_check_ms: Option<u64>,
    pub last_repaired: u64,
    /// Instance records meant to be in etcd, and how many are.
    pub desired: usize,
    pub registered: usize,
    pub ready: bool,
}

/// What keeps an instance out of the target, besides its checks (the
/// supervisor's `LocalState::held`, in this module's words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldBy {
    Maintenance { reason: String, node: bool },
    Drained { node: bool },
    TtlExpired { ttl: Option<Duration> },
}

/// The first critical check of an instance, for its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct CriticalCheck<'a> {
    pub check: &'a str,
    pub output: &'a str,
    pub since_ms: Option<u64>,
}

/// An instance's state and its reason in words, by the one rule every
/// view uses: the operator's hold first (maintenance, then a drain), then
/// a missed TTL, then a critical check, then whether etcd has the key.
pub fn decide(
    held: Option<&HeldBy>,
    critical: Option<&CriticalCheck<'_>>,
    confirmed: bool,
    lease: Option<&str>,
    connected: bool,
) -> (InstanceState, String) {
    match held {
        Some(HeldBy::Maintenance { reason, node }) => {
            let whose = if *node {
                "node maintenance"
            } else {
                "maintenance"
            };
            return (
                InstanceState::Maintenance,
                format!("held out by {whose}: {reason}"),
            );
        }
        Some(HeldBy::Drained { node }) => {
            let what = if *node {
                "the node was drained"
            } else {
                "drained"
            };
            return (
                InstanceState::Drained,
                format!("{what} by the operator; out of rotation until maintenance is ended"),
            );
        }
        Some(HeldBy::TtlExpired { ttl }) => {
            let ttl = ttl.map(|t| format!(" {t:?}")).unwrap_or_default();
            return (
                InstanceState::TtlExpired,
                format!("missed its TTL{ttl}: held out until the next `pass`"),
            );
        }
        None => {}
    }
    if let Some(check) = critical {
        let output = if check.output.is_empty() {
            "not run yet".to_string()
        } else {
            check.output.to_string()
        };
        return (
            InstanceState::Withheld,
            format!("withheld by check {}: {output}", check.check),
        );
    }
    if confirmed {
        let lease = lease
            .map(|l| format!(" under lease {l}"))
            .unwrap_or_default();
        return (InstanceState::Registered, format!("in etcd{lease}"));
    }
    let why = if connected {
        "waiting for etcd to confirm the write"
    } else {
        "etcd is not answering: not written yet"
    };
    (InstanceState::Pending, why.to_string())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `scheme://host:port` with any `user:password@` taken out.
pub fn endpoint_without_credentials(endpoint: &str) -> String {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, endpoint),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let rest = format!("{authority}{path}");
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest.to_string(),
    }
}

/// `12s ago`, `3m ago`, `2h ago` (for `at` against `now`).
fn ago(now_ms: u64, at_ms: u64) -> String {
    let secs = now_ms.saturating_sub(at_ms) / 1000;
    match secs {
        0..120 => format!("{secs}s ago"),
        120..7200 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

impl AgentStatus {
    /// Instances held out by a critical check.
    pub fn withheld(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.state == InstanceState::Withheld)
            .count()
    }

    /// The instance `id` (its API id, its key, or its key's last segment).
    pub fn instance(&self, id: &str) -> Option<&InstanceStatus> {
        self.instances
            .iter()
            .find(|i| i.id == id || i.key == id || i.key.rsplit('/').next() == Some(id))
    }

    /// The table `ygg-agent status` prints: one line per instance, then one
    /// indented line per check; refused files; the etcd session. Data from
    /// the config, checks and etcd is printed with control characters
    /// escaped.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.instances.is_empty() {
            out.push_str("no instances configured\n");
        } else {
            let width = |f: fn(&InstanceStatus) -> &str, header: &str| {
                self.instances
                    .iter()
                    .map(|i| escape(f(i)).chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(header.len())
            };
            let (sw, iw) = (width(|i| &i.service, "SERVICE"), width(|i| &i.id, "ID"));
            let _ = writeln!(
                out,
                "{:<sw$}  {:<iw$}  {:<11}  {:<6}  KEY",
                "SERVICE", "ID", "STATE", "SOURCE"
            );
            for instance in &self.instances {
                let _ = writeln!(
                    out,
                    "{:<sw$}  {:<iw$}  {:<11}  {:<6}  {}",
                    escape(&instance.service),
                    escape(&instance.id),
                    instance.state.word(),
                    escape(&instance.source),
                    escape(&instance.key)
                );
                if instance.state != InstanceState::Registered {
                    let _ = writeln!(out, "  why: {}", escape(&instance.reason));
                }
                for check in &instance.checks {
                    let _ = writeln!(out, "  - {}", check_line(check));
                }
            }
        }
        for file in &self.refused {
            let _ = writeln!(
                out,
                "refused file {}: {}",
                escape(&file.file),
                escape(&file.reasons.join("; "))
            );
        }
        let _ = writeln!(out, "etcd: {}", self.etcd.line(self.now_ms));
        out
    }

    /// One instance's whole story, for `ygg-agent status ID`.
    pub fn explain(&self, instance: &InstanceStatus) -> String {
        let mut out = String::new();
        let e = |s: &str| escape(s);
        let _ = writeln!(out, "{} ({})", e(&instance.service), e(&instance.id));
        let since = instance
            .since_ms
            .map(|at| format!(" since {}", ago(self.now_ms, at)))
            .unwrap_or_default();
        let _ = writeln!(out, "  state:  {}{since}", instance.state.word());
        let _ = writeln!(out, "  why:    {}", e(&instance.reason));
        let _ = writeln!(
            out,
            "  source: {} ({})",
            e(&instance.source),
            e(&instance.origin)
        );
        let _ = writeln!(out, "  key:    {}", e(&instance.key));
        let lease = instance.lease.as_deref().unwrap_or("none (not in etcd)");
        let _ = writeln!(out, "  lease:  {}", e(lease));
        if let Some(ttl) = &instance.ttl {
            let _ = writeln!(out, "  ttl:    {}", e(ttl));
        }
        let _ = writeln!(out, "  endpoints: {}", e(&instance.endpoints.join(", ")));
        for (key, value) in &instance.metadata {
            let _ = writeln!(out, "  metadata {}: {}", e(key), e(value));
        }
        if let Some(reason) = &self.maintenance {
            let _ = writeln!(out, "  node maintenance: {}", e(reason));
        }
        if instance.checks.is_empty() {
            let _ = writeln!(out, "  checks: none");
        } else {
            let _ = writeln!(out, "  checks:");
        }
        for check in &instance.checks {
            let since = check
                .since_ms
                .map(|at| format!(", {} since {}", check.status, ago(self.now_ms, at)))
                .unwrap_or_default();
            let _ = writeln!(out, "  - {}{since}", check_line(check));
            for run in check.history.iter().rev().take(5) {
                let _ = writeln!(
                    out,
                    "      {:>8}  {}  {}",
                    ago(self.now_ms, run.at_ms),
                    if run.passed { "pass" } else { "fail" },
                    e(&run.output)
                );
            }
        }
        let _ = writeln!(out, "  etcd:   {}", self.etcd.line(self.now_ms));
        out
    }
}

fn check_line(check: &CheckStatusView) -> String {
    let took = check
        .duration_ms
        .map(|ms| format!(" ({ms:.1} ms)"))
        .unwrap_or_default();
    let output = if check.output.is_empty() {
        "not run yet".to_string()
    } else {
        escape(&check.output)
    };
    format!(
        "{}: {} — {output}{took}",
        escape(&check.check),
        check.status
    )
}

impl SessionStatus {
    /// `connected to …; lease 694d… (TTL 10s, 8s left); 2/2 registered`.
    pub fn line(&self, now_ms: u64) -> String {
        let endpoints = escape(&self.endpoints.join(","));
        let mut line = if self.connected {
            format!("connected to {endpoints}")
        } else {
            format!("not answering at {endpoints}")
        };
        match &self.lease {
            Some(lease) => {
                let left = self
                    .ttl_left_ms
                    .map(|ms| format!(", {}s left", ms / 1000))
                    .unwrap_or_default();
                let _ = write!(line, "; lease {lease} (TTL {}s{left})", self.ttl_s);
            }
            None => line.push_str("; no lease"),
        }
        let _ = write!(line, "; {}/{} registered", self.registered, self.desired);
        if let Some(at) = self.last_repair_check_ms {
            let _ = write!(
                line,
                "; anti-entropy {} ({} repaired)",
                ago(now_ms, at),
                self.last_repaired
            );
        }
        line
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

    fn check(status: &str, output: &str, duration_ms: Option<f64>) -> CheckStatusView {
        CheckStatusView {
            check: "tcp 127.0.0.1:8080".into(),
            status: status.into(),
            output: output.into(),
            duration_ms,
            since_ms: Some(1_000),
            history: vec![CheckRun {
                at_ms: 1_000,
                passed: status == "passing",
                output: output.into(),
                duration_ms: 0.25,
            }],
        }
    }

    fn instance(
        service: &str,
        state: InstanceState,
        checks: Vec<CheckStatusView>,
    ) -> InstanceStatus {
        InstanceStatus {
            id: "abc".into(),
            key: "/r/default/api/abc".into(),
            service: service.into(),
            source: "config".into(),
            origin: "agent.yaml agent.instances[0]".into(),
            state,
            reason: String::new(),
            since_ms: None,
            lease: None,
            ttl: None,
            endpoints: vec!["grpc://127.0.0.1:8080".into()],
            metadata: BTreeMap::from([("env".into(), "dev".into())]),
            checks,
        }
    }

    fn status() -> AgentStatus {
        let mut db = instance(
            "default/db/2\u{1b}]0;pwned\u{7}",
            InstanceState::Withheld,
            vec![CheckStatusView {
                check: "http http://127.0.0.1:9/".into(),
                ..check("critical", "", None)
            }],
        );
        db.id = "def".into();
        db.key = "/r/default/db/def".into();
        db.reason = "withheld by check http http://127.0.0.1:9/: not run yet".into();
        AgentStatus {
            now_ms: 61_000,
            instances: vec![
                instance(
                    "default/api/1.0.0",
                    InstanceState::Registered,
                    vec![check("passing", "connected", Some(0.25))],
                ),
                db,
            ],
            ..AgentStatus::default()
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
        assert!(
            table.contains("  why: withheld by check http http://127.0.0.1:9/: not run yet"),
            "{table}"
        );
        assert_eq!(status().withheld(), 1);
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let status = status();
        for text in [status.table(), status.explain(&status.instances[1])] {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "{text:?}"
            );
            assert!(text.contains("default/db/2\\u{1b}]0;pwned\\u{7}"), "{text}");
        }
    }

    #[test]
    fn the_json_round_trips_with_one_word_per_state() {
        let json = serde_json::to_string(&status()).unwrap();
        assert!(json.contains("\"state\":\"withheld\""), "{json}");
        let back: AgentStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status());
        for (state, word) in [
            (InstanceState::Registered, "registered"),
            (InstanceState::Pending, "pending"),
            (InstanceState::Withheld, "withheld"),
            (InstanceState::TtlExpired, "ttl-expired"),
            (InstanceState::Maintenance, "maintenance"),
            (InstanceState::Drained, "drained"),
            (InstanceState::Refused, "refused"),
        ] {
            assert_eq!(state.word(), word);
            assert_eq!(serde_json::to_value(state).unwrap(), word);
        }
    }

    #[test]
    fn the_operators_hold_outranks_a_missed_ttl_a_check_and_etcd() {
        let critical = CriticalCheck {
            check: "tcp 127.0.0.1:1",
            output: "connection refused",
            since_ms: None,
        };
        let maintenance = HeldBy::Maintenance {
            reason: "kernel upgrade".into(),
            node: false,
        };
        let (state, why) = decide(Some(&maintenance), Some(&critical), true, Some("1f"), true);
        assert_eq!(state, InstanceState::Maintenance);
        assert_eq!(why, "held out by maintenance: kernel upgrade");
        let (state, why) = decide(
            Some(&HeldBy::Drained { node: true }),
            None,
            false,
            None,
            true,
        );
        assert_eq!(state, InstanceState::Drained);
        assert!(why.starts_with("the node was drained"), "{why}");
        let ttl = HeldBy::TtlExpired {
            ttl: Some(Duration::from_secs(15)),
        };
        let (state, why) = decide(Some(&ttl), Some(&critical), false, None, true);
        assert_eq!(state, InstanceState::TtlExpired);
        assert_eq!(why, "missed its TTL 15s: held out until the next `pass`");
        let (state, why) = decide(None, Some(&critical), true, Some("1f"), true);
        assert_eq!(state, InstanceState::Withheld);
        assert_eq!(why, "withheld by check tcp 127.0.0.1:1: connection refused");
        let (state, why) = decide(None, None, true, Some("1f"), true);
        assert_eq!(
            (state, why.as_str()),
            (InstanceState::Registered, "in etcd under lease 1f")
        );
        let (state, why) = decide(None, None, false, None, false);
        assert_eq!(state, InstanceState::Pending);
        assert!(why.contains("etcd is not answering"), "{why}");
    }

    #[test]
    fn explain_tells_one_instances_story() {
        let status = status();
        let db = status.instance("def").expect("by id");
        assert_eq!(status.instance("/r/default/db/def"), Some(db));
        let story = status.explain(db);
        for part in [
            "state:  withheld",
            "why:    withheld by check http http://127.0.0.1:9/: not run yet",
            "source: config (agent.yaml agent.instances[0])",
            "key:    /r/default/db/def",
            "lease:  none (not in etcd)",
            "critical since 60s ago",
            "60s ago  fail",
        ] {
            assert!(story.contains(part), "{part:?} in\n{story}");
        }
    }

    #[test]
    fn endpoints_lose_their_credentials() {
        assert_eq!(
            endpoint_without_credentials("https://user:pw@10.0.0.1:2379"),
            "https://10.0.0.1:2379"
        );
        assert_eq!(endpoint_without_credentials("u:p@h:1/x@y"), "h:1/x@y");
        assert_eq!(
            endpoint_without_credentials("127.0.0.1:2379"),
            "127.0.0.1:2379"
        );
    }
}
