use super::*;
use crate::config::read_root;
use crate::config::report::Report;
use crate::config::tests::{SEED, dir, errors, ok};
use crate::config::yaml::Document;

// Health checks (`agent.checks`, `agent.instances[].checks`).

/// One instance with a grpc and an http endpoint (lines 5 and 6) and
/// `checks` (its items from line 8, indented for a list under `checks:`).
fn with_checks(checks: &str) -> String {
    instance_with_checks(
        "        - {scheme: grpc, address: '10.0.0.1:9000'}\n        - {scheme: http, address: '10.0.0.1:8080'}\n",
        checks,
    )
}

/// One instance with `endpoints` (two lines: 5 and 6) and `checks` from line 8.
fn instance_with_checks(endpoints: &str, checks: &str) -> String {
    let checks: String = checks.lines().map(|l| format!("        {l}\n")).collect();
    format!(
        "agent:\n  instances:\n    - name: svc\n      endpoints:\n{endpoints}      checks:\n{checks}"
    )
}

fn probes(text: &str) -> Vec<Probe> {
    let config = ok(text).config;
    assert_eq!(config.agent.checks.len(), config.agent.instances.len());
    config.agent.checks[0]
        .iter()
        .map(|c| c.probe.clone())
        .collect()
}

fn tcp(address: &str) -> Probe {
    Probe::Tcp {
        address: address.into(),
    }
}

fn http(url: &str) -> Probe {
    Probe::Http {
        url: url.into(),
        method: "GET".into(),
        headers: BTreeMap::new(),
        tls_skip_verify: false,
    }
}

fn grpc(address: &str) -> Probe {
    Probe::Grpc {
        address: address.into(),
        service: String::new(),
        tls: false,
    }
}

#[test]
fn a_plugin_check_targets_its_address_or_every_endpoint() {
    let config = ok(&with_checks(
        "- plugin: redis_check\n- {plugin: redis_check, target: 'cache.internal:6379', settings: {password: pw}}",
    ))
    .config;
    let instance = Box::new(config.agent.instances[0].clone());
    let probes: Vec<Probe> = config.agent.checks[0]
        .iter()
        .map(|c| c.probe.clone())
        .collect();
    assert_eq!(
        probes,
        [
            Probe::Plugin {
                plugin: "redis_check".into(),
                targets: vec!["10.0.0.1:9000".into(), "10.0.0.1:8080".into()],
                settings: BTreeMap::new(),
                instance: instance.clone(),
            },
            Probe::Plugin {
                plugin: "redis_check".into(),
                targets: vec!["cache.internal:6379".into()],
                settings: BTreeMap::from([("password".into(), "pw".into())]),
                instance,
            },
        ]
    );
    assert_eq!(config.agent.checks[0][0].interval, DEFAULT_CHECK_INTERVAL);
}

#[test]
fn each_kind_of_check_with_its_address_and_the_defaults() {
    let config = ok(&with_checks(
        "- tcp: \"127.0.0.1:5432\"\n- http: \"https://example.com:8443/healthz?full=1\"\n- grpc: \"[::1]:50051\"\n- http: http://[::1]/\n- tcp: db.internal:5432",
    ))
    .config;
    let checks = &config.agent.checks[0];
    let probes: Vec<Probe> = checks.iter().map(|c| c.probe.clone()).collect();
    assert_eq!(
        probes,
        [
            tcp("127.0.0.1:5432"),
            http("https://example.com:8443/healthz?full=1"),
            grpc("[::1]:50051"),
            http("http://[::1]/"),
            tcp("db.internal:5432"),
        ]
    );
    for check in checks {
        assert_eq!(check.interval, Duration::from_secs(10));
        assert_eq!(check.timeout, Duration::from_secs(2));
        assert_eq!(check.success_before_passing, 1);
        assert_eq!(check.failures_before_critical, 3);
        assert_eq!(check.initial_status, CheckStatus::Critical);
    }
}

#[test]
fn instances_without_checks_have_an_empty_list_in_step_with_instances() {
    let config = ok(SEED).config;
    assert_eq!(config.agent.checks, vec![Vec::new()]);
    let config = ok(
        "agent:\n  instances:\n    - {name: a, endpoints: [{scheme: grpc, address: 'a:1'}]}\n    - {name: b, endpoints: [{scheme: grpc, address: 'b:1'}], checks: [{tcp: 'b:1'}]}\n    - {name: c, endpoints: [{scheme: grpc, address: 'c:1'}], checks: []}\n",
    )
    .config;
    assert_eq!(
        config.agent.checks,
        [
            vec![],
            vec![CheckConfig {
                probe: tcp("b:1"),
                interval: DEFAULT_CHECK_INTERVAL,
                timeout: DEFAULT_CHECK_TIMEOUT,
                success_before_passing: DEFAULT_SUCCESS_BEFORE_PASSING,
                failures_before_critical: DEFAULT_FAILURES_BEFORE_CRITICAL,
                initial_status: DEFAULT_INITIAL_STATUS,
            }],
            vec![]
        ]
    );
    assert!(
        ok("agent: {instances: []}\n")
            .config
            .agent
            .checks
            .is_empty()
    );
}

#[test]
fn a_check_without_an_address_targets_the_instances_own_endpoint() {
    // Every way of leaving the address out.
    for form in ["~", "null", "", "\"\"", "''"] {
        let text = with_checks(&format!("- tcp: {form}\n- http: {form}\n- grpc: {form}"));
        assert_eq!(
            probes(&text),
            [
                tcp("10.0.0.1:9000"),
                http("http://10.0.0.1:8080/"),
                grpc("10.0.0.1:9000")
            ],
            "form {form:?}"
        );
    }
    // The first endpoint of the right scheme, wherever it is in the list;
    // tcp takes the first endpoint whatever its scheme.
    let text = instance_with_checks(
        "        - {scheme: https, address: 'web:443'}\n        - {scheme: grpc, address: 'rpc:9000'}\n",
        "- tcp: ~\n- http: ~\n- grpc: ~",
    );
    assert_eq!(
        probes(&text),
        [tcp("web:443"), http("https://web:443/"), grpc("rpc:9000")]
    );
}

#[test]
fn a_check_without_an_address_on_an_instance_without_that_endpoint_says_so() {
    let text = instance_with_checks(
        "        - {scheme: tcp, address: '10.0.0.1:5432'}\n        - {scheme: grpc, address: '10.0.0.1:9000'}\n",
        "- tcp: ~\n- http: ~\n- grpc:",
    );
    assert_eq!(
        errors(&text),
        [
            "agent.instances[0].checks[1].http: no URL given and the instance has no http or https endpoint to check (line 9)",
        ]
    );
    // An endpoint without a port is refused where it is written (see
    // config::instances), before any check reads it.
    let text = instance_with_checks("        - {scheme: grpc, address: '10.0.0.1'}\n", "- grpc:");
    assert_eq!(
        errors(&text),
        [
            "agent.instances[0].endpoints[0].address: `10.0.0.1` has no port: write host:port (e.g. 10.0.0.1:8080) (line 5)",
        ]
    );
    let text = instance_with_checks(
        "        - {scheme: http, address: '10.0.0.1:8080'}\n        - {scheme: tcp, address: '10.0.0.1:5432'}\n",
        "- grpc: ~",
    );
    assert_eq!(
        errors(&text),
        [
            "agent.instances[0].checks[0].grpc: no address given and the instance has no grpc endpoint to check (line 8)"
        ]
    );
}

#[test]
fn an_endpoint_in_error_is_not_also_blamed_on_a_check_without_an_address() {
    let text = instance_with_checks(
        "        - {scheme: '9p', address: '10.0.0.1:9000'}\n        - {scheme: http, address: '10.0.0.1:8080'}\n",
        "- grpc: ~\n- tcp: x",
    );
    assert_eq!(
        errors(&text),
        [
            "agent.instances[0].endpoints[0].scheme: `9p` is not a scheme (e.g. grpc, http, tcp) (line 5)",
            "agent.instances[0].checks[1].tcp: `x` has no port (expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080) (line 9)",
        ]
    );
}

#[test]
fn agent_checks_sets_the_defaults_and_each_check_overrides_them() {
    let text = with_checks(
        "- tcp: ~\n- tcp: 'other:1'\n  interval: 1m\n  timeout: 500ms\n  successBeforePassing: 4\n  failuresBeforeCritical: 1\n  initialStatus: critical\n- http: ~\n  method: HEAD\n  headers: {Authorization: 'Bearer t', X-Probe: ~}\n  tlsSkipVerify: true\n- grpc: ~\n  service: pkg.Orders\n  tls: true",
    )
    .replace(
        "agent:\n",
        "agent:\n  checks: {interval: 30s, timeout: 5s, successBeforePassing: 2, failuresBeforeCritical: 5, initialStatus: passing}\n",
    );
    let checks = ok(&text).config.agent.checks.remove(0);
    let timing = |c: &CheckConfig| {
        (
            c.interval,
            c.timeout,
            c.success_before_passing,
            c.failures_before_critical,
            c.initial_status,
        )
    };
    let s = Duration::from_secs;
    let inherited = (s(30), s(5), 2, 5, CheckStatus::Passing);
    assert_eq!(timing(&checks[0]), inherited);
    let own = (
        s(60),
        Duration::from_millis(500),
        4,
        1,
        CheckStatus::Critical,
    );
    assert_eq!(timing(&checks[1]), own);
    assert_eq!(timing(&checks[2]), inherited);
    assert_eq!(
        checks[2].probe,
        Probe::Http {
            url: "http://10.0.0.1:8080/".into(),
            method: "HEAD".into(),
            headers: BTreeMap::from([
                ("Authorization".into(), "Bearer t".into()),
                ("X-Probe".into(), String::new())
            ]),
            tls_skip_verify: true,
        }
    );
    assert_eq!(
        checks[3].probe,
        Probe::Grpc {
            address: "10.0.0.1:9000".into(),
            service: "pkg.Orders".into(),
            tls: true,
        }
    );
}

#[test]
fn a_check_setting_one_of_interval_and_timeout_is_held_to_the_other() {
    // Each line of `checks` against `agent.checks` of interval 10s (the
    // default) and timeout 4s.
    let cases = [
        (
            "- {tcp: 'h:1', timeout: 10s}",
            "timeout: 10s is not below the interval of 10s (the default): a check must end before the next one starts",
        ),
        (
            "- {tcp: 'h:1', interval: 4s}",
            "interval: 4s is not above the timeout of 4s (agent.checks.timeout): a check must end before the next one starts",
        ),
        (
            "- {tcp: 'h:1', interval: 5s, timeout: 5s}",
            "timeout: 5s is not below the interval of 5s: a check must end before the next one starts",
        ),
    ];
    for (check, expected) in cases {
        let text = with_checks(check).replace("agent:\n", "agent:\n  checks: {timeout: 4s}\n");
        assert_eq!(
            errors(&text),
            [format!("agent.instances[0].checks[0].{expected} (line 9)")]
        );
    }
    // Longer ones are fine.
    let text = with_checks("- {tcp: 'h:1', interval: 5s}")
        .replace("agent:\n", "agent:\n  checks: {timeout: 4s}\n");
    assert_eq!(
        ok(&text).config.agent.checks[0][0].interval,
        Duration::from_secs(5)
    );
}

#[test]
fn agent_checks_errors() {
    let cases = [
        (
            "{timeout: 10s}",
            "agent.checks.timeout: 10s is not below the interval of 10s (the default): a check must end before the next one starts (line 2)",
        ),
        (
            "{interval: 2s}",
            "agent.checks.interval: 2s is not above the timeout of 2s (the default): a check must end before the next one starts (line 2)",
        ),
        (
            "{interval: 50ms}",
            "agent.checks.interval: 50ms is below the minimum of 100ms (line 2)",
        ),
        (
            "{timeout: 0s}",
            "agent.checks.timeout: must be longer than 0 (line 2)",
        ),
        (
            "{successBeforePassing: 0}",
            "agent.checks.successBeforePassing: 0 is below the minimum of 1 (line 2)",
        ),
        (
            "{failuresBeforeCritical: 0}",
            "agent.checks.failuresBeforeCritical: 0 is below the minimum of 1 (line 2)",
        ),
        (
            "{failuresBeforeCritical: -1}",
            "agent.checks.failuresBeforeCritical: expected a whole number, found `-1` (line 2)",
        ),
        (
            "{initialStatus: up}",
            "agent.checks.initialStatus: `up` is not a status (expected passing or critical) (line 2)",
        ),
        (
            "{intervl: 5s}",
            "agent.checks.intervl: unknown key (did you mean `interval`?) (line 2)",
        ),
        (
            "[{tcp: 'h:1'}]",
            "agent.checks: expected a mapping (key: value lines), found a list (line 2)",
        ),
    ];
    for (checks, expected) in cases {
        let text = format!("agent:\n  checks: {checks}\n  instances: []\n");
        assert_eq!(errors(&text), [expected], "agent.checks: {checks}");
    }
}

#[test]
fn invalid_checks_are_named_with_their_path_and_line() {
    let p = "agent.instances[0].checks[0]";
    #[rustfmt::skip]
    let cases: &[(&str, String)] = &[
        ("- udp: 'h:1'", format!("{p}.udp: not a check kind: use tcp, http, grpc or plugin (did you mean `tcp`?) (line 8)")),
        ("- exec: /bin/true", format!("{p}.exec: not a check kind: use tcp, http, grpc or plugin (line 8)")),
        ("- {interval: 5s}", format!("{p}: no check kind: write one of tcp, http, grpc or plugin (e.g. `- tcp: \"127.0.0.1:8080\"`) (line 8)")),
        ("- {tcp: 'h:1', http: 'http://h/'}", format!("{p}.http: a check has one kind, and this one is already `tcp`: write a second check for `http` (line 8)")),
        ("- http: localhost:8080/health", format!("{p}.http: `localhost:8080/health` has no scheme (write http://localhost:8080/health or https://localhost:8080/health) (line 8)")),
        ("- http: example.com", format!("{p}.http: `example.com` has no scheme (write http://example.com or https://example.com) (line 8)")),
        ("- http: ftp://h/x", format!("{p}.http: `ftp://h/x` is not an http:// or https:// URL (line 8)")),
        ("- http: http:///health", format!("{p}.http: `http:///health` has no valid host (e.g. http://127.0.0.1:8080/health) (line 8)")),
        ("- http: 'http://h:99999/'", format!("{p}.http: `http://h:99999/` has no valid host (e.g. http://127.0.0.1:8080/health) (line 8)")),
        ("- http: 'http://admin:pw@h/'", format!("{p}.http: `http://admin:pw@h/` holds a user name or password: send credentials in `headers` (they would show in logs) (line 8)")),
        ("- http: 'http://h/a b'", format!("{p}.http: `http://h/a b` holds ` `, which a URL cannot hold unencoded (write it as %XX) (line 8)")),
        ("- tcp: localhost", format!("{p}.tcp: `localhost` has no port (expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080) (line 8)")),
        ("- tcp: 'h:'", format!("{p}.tcp: `h:` has no port (expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080) (line 8)")),
        ("- grpc: '::1'", format!("{p}.grpc: `::1` has no port (expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080) (line 8)")),
        ("- grpc: 'a/b:80'", format!("{p}.grpc: `a/b:80` is not an address (expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080) (line 8)")),
        ("- tcp: 'h:0'", format!("{p}.tcp: `h:0` has an invalid port `0` (line 8)")),
        ("- tcp: {host: h}", format!("{p}.tcp: expected a single value, found a mapping (line 8)")),
        ("- {tcp: 'h:1', successBeforePassing: 0}", format!("{p}.successBeforePassing: 0 is below the minimum of 1 (line 8)")),
        ("- {tcp: 'h:1', failuresBeforeCritical: 0}", format!("{p}.failuresBeforeCritical: 0 is below the minimum of 1 (line 8)")),
        ("- {tcp: 'h:1', failuresBeforeCritical: 2.5}", format!("{p}.failuresBeforeCritical: expected a whole number, found `2.5` (line 8)")),
        ("- {tcp: 'h:1', interval: 10ms, timeout: 5ms}", format!("{p}.interval: 10ms is below the minimum of 100ms (line 8)")),
        ("- {tcp: 'h:1', timeout: 0s}", format!("{p}.timeout: must be longer than 0 (line 8)")),
        ("- {tcp: 'h:1', initialStatus: Passing}", format!("{p}.initialStatus: `Passing` is not a status (expected passing or critical) (line 8)")),
        ("- {tcp: 'h:1', intervall: 5s}", format!("{p}.intervall: unknown key (did you mean `interval`?) (line 8)")),
        ("- {tcp: 'h:1', method: HEAD}", format!("{p}.method: `method` is for http checks only, and this check is tcp (line 8)")),
        ("- {http: ~, service: x}", format!("{p}.service: `service` is for grpc checks only, and this check is http (line 8)")),
        ("- {http: ~, method: 'GE T'}", format!("{p}.method: `GE T` is not an HTTP method (e.g. GET, HEAD) (line 8)")),
        ("- {http: ~, headers: {'X A': b}}", format!("{p}.headers: `X A` is not a header name (letters, digits and !#$%&'*+-.^_`|~) (line 8)")),
        ("- {http: ~, headers: {X-A: \"a\\r\\nX-B: b\"}}", format!("{p}.headers: the value of `X-A` holds control or non-ASCII characters (line 8)")),
        ("- {http: ~, headers: {X-A: \"café\"}}", format!("{p}.headers: the value of `X-A` holds control or non-ASCII characters (line 8)")),
        ("- {http: ~, tlsSkipVerify: yes}", format!("{p}.tlsSkipVerify: expected true or false, found `yes` (line 8)")),
        ("- {grpc: ~, tls: 1}", format!("{p}.tls: expected true or false, found `1` (line 8)")),
        ("- tcp", format!("{p}: expected a mapping (key: value lines), found a single value (line 8)")),
        ("- plugin: ~", format!("{p}.plugin: no plugin named: write the check plugin's name (its file name without .wasm) (line 8)")),
        ("- plugin: 'a b'", format!("{p}.plugin: not a plugin name (letters, digits, `_`, `-`, `.`) (line 8)")),
        ("- {plugin: redis_check, target: localhost}", format!("{p}.target: `localhost` has no port (expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080) (line 8)")),
        ("- {plugin: redis_check, settings: {a: [1]}}", format!("{p}.settings.a: expected a single value, found a list (line 8)")),
        ("- {tcp: 'h:1', target: 'h:2'}", format!("{p}.target: `target` is for plugin checks only, and this check is tcp (line 8)")),
        ("- {http: ~, settings: {a: b}}", format!("{p}.settings: `settings` is for plugin checks only, and this check is http (line 8)")),
        ("- tcp: 'h:1'\n- {tcp: 'h:1', interval: 1m}", "agent.instances[0].checks[1]: the same check as agent.instances[0].checks[0] (tcp h:1): keep one (line 9)".into()),
    ];
    for (checks, expected) in cases {
        assert_eq!(
            errors(&with_checks(checks)),
            [expected.as_str()],
            "checks: {checks}"
        );
    }
    assert_eq!(
        errors(
            "agent:\n  instances:\n    - name: a\n      endpoints: [{scheme: grpc, address: 'a:1'}]\n      checks: {tcp: 'a:1'}\n"
        ),
        ["agent.instances[0].checks: expected a list, found a mapping (line 5)"]
    );
}

#[test]
fn every_check_error_is_reported_at_once() {
    let text = "agent:\n  checks: {timeout: 0s}\n  instances:\n    - name: a\n      endpoints: [{scheme: http, address: 'a:1'}]\n      checks:\n        - grpc: ~\n        - tcp: a\n    - name: b\n      endpoints: [{scheme: grpc, address: 'b:1'}]\n      checks: [{http: b}, {tcp: 'b:1', initialStatus: up}]\n";
    assert_eq!(
        errors(text),
        [
            "agent.checks.timeout: must be longer than 0 (line 2)",
            "agent.instances[0].checks[0].grpc: no address given and the instance has no grpc endpoint to check (line 7)",
            "agent.instances[0].checks[1].tcp: `a` has no port (expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080) (line 8)",
            "agent.instances[1].checks[0].http: `b` has no scheme (write http://b or https://b) (line 11)",
            "agent.instances[1].checks[1].initialStatus: `up` is not a status (expected passing or critical) (line 11)",
        ]
    );
}

#[test]
fn checks_stay_in_step_with_instances_when_an_instance_is_in_error() {
    // The config is refused, but what was read is still aligned: an
    // instance in error is left out together with its checks.
    let text = "agent:\n  instances:\n    - {name: a, endpoints: [{scheme: grpc, address: 'a:1'}], checks: [{tcp: 'a:1'}]}\n    - {name: 'b/c', endpoints: [{scheme: grpc, address: 'b:1'}], checks: [{tcp: 'b:1'}]}\n    - {name: d, endpoints: [{scheme: grpc, address: 'd:1'}]}\n";
    let document = Document::parse(text).unwrap();
    let report = Report::default();
    let dir = dir();
    let config = read_root(document.root(&report), dir.path(), &report).unwrap();
    assert_eq!(report.error_count(), 1);
    let names: Vec<&str> = config
        .agent
        .instances
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(names, ["a", "d"]);
    let probes: Vec<Vec<Probe>> = (config.agent.checks.iter())
        .map(|checks| checks.iter().map(|c| c.probe.clone()).collect())
        .collect();
    assert_eq!(probes, [vec![tcp("a:1")], vec![]]);
}

#[test]
fn the_shipped_example_is_valid_and_so_is_its_check_example() {
    let shipped = include_str!("../../../../config/agent.yaml");
    let loaded = ok(shipped);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    // The quick start has no service running: no check is on.
    assert_eq!(loaded.config.agent.checks, vec![Vec::new()]);
    // Uncommenting the example (the lines starting `# ` inside `checks:`).
    let mut on = String::new();
    // The indentation of the `# checks:` line of the block being read; the
    // block goes on over comments indented further at the same column.
    let mut example: Option<usize> = None;
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with("# checks:") {
            example = Some(indent);
        } else if !trimmed.starts_with("#  ") || example != Some(indent) {
            example = None;
        }
        match trimmed.strip_prefix("# ") {
            Some(code) if example.is_some() => {
                on.push_str(&format!("{}{code}\n", " ".repeat(indent)));
            }
            _ => on.push_str(&format!("{line}\n")),
        }
    }
    let checks = ok(&on).config.agent.checks.remove(0);
    let probes: Vec<&Probe> = checks.iter().map(|c| &c.probe).collect();
    assert_eq!(
        probes[..2],
        [&tcp("127.0.0.1:54321"), &grpc("127.0.0.1:54321")],
        "{on}"
    );
    assert_eq!(checks.len(), 3, "{on}");
}
