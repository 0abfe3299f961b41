use super::*;

fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    dir
}

fn ok(text: &str) -> Loaded {
    let dir = dir();
    match parse(text, dir.path()) {
        Ok(loaded) => loaded,
        Err(issues) => panic!("expected a valid config, got {issues:#?}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    let dir = dir();
    match parse(text, dir.path()) {
        Ok(loaded) => panic!("expected errors, got {:#?}", loaded.config),
        Err(issues) => issues.iter().map(ToString::to_string).collect(),
    }
}

fn assert_has(errors: &[String], needle: &str) {
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "no error contains {needle:?}; errors were:\n{}",
        errors.join("\n")
    );
}

const SEED: &str = r#"
yggdrasil:
  registry:
    type: etcd
    config:
      client:
        endpoints: ["127.0.0.1:2379"]
        dialTimeout: 5s
      prefix: /yggdrasil/registry
      ttl: 10s
      keepAlive: true
      retryInterval: 3s
agent:
  instances:
    - namespace: default
      name: example-registry-server
      version: 1.0.0
      region: us-west
      zone: us-west-1
      campus: campus-a
      metadata: {env: dev, pod: pod-1234567890}
      endpoints:
        - {scheme: grpc, address: "127.0.0.1:54321"}
        - {scheme: http, address: "127.0.0.1:54321", metadata: {path: /api}}
  plugins:
    dir: plugins
    interval: 30s
    timeout: 1s
    memoryLimit: 32MiB
    settings:
      heartbeat: {format: rfc3339}
  admin:
    listen: 127.0.0.1:9901
  shutdownTimeout: 5s
"#;

#[test]
fn the_spec_example_is_valid() {
    let loaded = ok(SEED);
    let config = loaded.config;
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(config.registry.client.endpoints, vec!["127.0.0.1:2379"]);
    assert_eq!(config.registry.prefix, "/yggdrasil/registry");
    assert_eq!(config.registry.ttl, Duration::from_secs(10));
    let instance = &config.agent.instances[0];
    assert_eq!(
        instance.service_label(),
        "default/example-registry-server/1.0.0"
    );
    assert_eq!(instance.endpoints.len(), 2);
    assert_eq!(instance.endpoints[1].metadata["path"], "/api");
    assert_eq!(instance.metadata["pod"], "pod-1234567890");
    let plugins = config.agent.plugins.unwrap();
    assert_eq!(plugins.memory_limit, 32 << 20);
    assert_eq!(plugins.settings["heartbeat"]["format"], "rfc3339");
    assert_eq!(config.agent.admin.unwrap().listen.port(), 9901);
}

#[test]
fn defaults_are_the_seeds() {
    let config = ok(
        "agent:\n  instances:\n    - name: s\n      endpoints: [{scheme: grpc, address: 'a:1'}]\n",
    )
    .config;
    assert_eq!(config.registry, RegistryConfig::default());
    assert_eq!(config.registry.client.endpoints, vec!["127.0.0.1:2379"]);
    assert_eq!(config.registry.client.dial_timeout, Duration::from_secs(5));
    assert_eq!(config.registry.prefix, "/yggdrasil/registry");
    assert_eq!(config.registry.ttl, Duration::from_secs(10));
    assert!(config.registry.keep_alive);
    assert_eq!(config.registry.retry_interval, Duration::from_secs(3));
    assert_eq!(config.agent.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(config.agent.instances[0].namespace, "default");
    assert!(config.agent.plugins.is_none());
    assert!(config.agent.admin.is_none());
}

fn warnings(text: &str) -> Vec<String> {
    ok(text).warnings.iter().map(ToString::to_string).collect()
}

/// A config with `prefix` (as YAML) and one grpc instance of service `s`.
fn with_prefix(prefix: &str) -> String {
    format!(
        "yggdrasil:\n  registry:\n    config:\n      prefix: {prefix}\nagent:\n  instances:\n    - {{namespace: '', name: s, endpoints: [{{scheme: grpc, address: 'a:1'}}]}}\n"
    )
}

#[test]
fn empty_namespace_means_default_and_prefix_keeps_trailing_slash() {
    // Yggdrasil's Go registry joins `prefix + "/" + namespace + …` with the
    // prefix as configured, so a Go app sharing this file writes and
    // watches `/a/b//default/s/…`: the agent must too.
    let loaded = ok(&with_prefix("/a/b/"));
    let config = &loaded.config;
    assert_eq!(config.agent.instances[0].namespace, "default");
    assert_eq!(config.registry.prefix, "/a/b/");
    let key = record::registry_key(&config.registry.prefix, &config.agent.instances[0]);
    assert!(key.starts_with("/a/b//default/s/"), "{key}");
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "yggdrasil.registry.config.prefix: `/a/b/` ends with `/`, and the prefix is used as written \
             (as Yggdrasil's Go registry does): keys are `/a/b//<namespace>/<name>/<id>`, with a double \
             slash. A Go app configured with `/a/b/` sees these instances; one configured without the \
             trailing `/` does not: write `/a/b` unless every app sharing the registry writes `/a/b/` too \
             (line 4)"
        ]
    );
}

#[test]
fn an_empty_prefix_is_the_default_and_a_slash_alone_is_the_root() {
    // Go's NewRegistry: `if cfg.Prefix == "" { cfg.Prefix = "/yggdrasil/registry" }`.
    let loaded = ok(&with_prefix("''"));
    assert_eq!(loaded.config.registry.prefix, DEFAULT_PREFIX);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    // `/` is used as written too: Go's keys start `//<namespace>/`.
    let loaded = ok(&with_prefix("/"));
    let config = &loaded.config;
    assert_eq!(config.registry.prefix, "/");
    let key = record::registry_key(&config.registry.prefix, &config.agent.instances[0]);
    assert!(key.starts_with("//default/s/"), "{key}");
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let warning = loaded.warnings[0].to_string();
    assert!(
        warning.contains("keys are `//<namespace>/<name>/<id>`, with a double slash")
            && warning.contains("use a prefix such as /yggdrasil/registry unless every app"),
        "{warning}"
    );
    // Without a trailing `/` there is nothing to warn about.
    assert!(warnings(&with_prefix("/a/b")).is_empty());
}

#[test]
fn a_prefix_still_needs_a_leading_slash_and_no_inner_empty_segment() {
    for (prefix, expected) in [
        ("registry/", "`registry/` must start with `/`"),
        ("/a//b/", "`/a//b/` has an empty path segment"),
        ("'/a b/'", "`/a b/` contains white space"),
    ] {
        let errors = errors(&with_prefix(prefix));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_has(
            &errors,
            &format!("yggdrasil.registry.config.prefix: {expected}"),
        );
    }
}

#[test]
fn endpoints_a_default_yggdrasil_client_drops_are_warned_once_per_instance() {
    let text = "agent:\n  instances:\n    - name: db\n      endpoints:\n        - {scheme: tcp, address: '10.0.0.1:5432'}\n        - {scheme: grpc, address: '10.0.0.1:9000'}\n        - {scheme: https, address: '10.0.0.1:443'}\n    - name: api\n      namespace: prod\n      endpoints: [{scheme: grpc, address: 'a:1'}, {scheme: http, address: 'a:2'}]\n    - name: raw\n      endpoints: [{scheme: GRPC, address: 'b:1'}]\n";
    let warnings = warnings(text);
    assert_eq!(
        warnings,
        [
            "agent.instances[0]: service default/db: endpoints tcp://10.0.0.1:5432, https://10.0.0.1:443 \
             are invisible to a Yggdrasil client with the default resolver, which keeps only the schemes \
             grpc and http (add the scheme to the resolver's `protocols` if a Yggdrasil client should see \
             it) (line 3)",
            // Go compares schemes case-sensitively.
            "agent.instances[2]: service default/raw: endpoint GRPC://b:1 is invisible to a Yggdrasil \
             client with the default resolver, which keeps only the schemes grpc and http, so such a \
             client sees none of this instance (add the scheme to the resolver's `protocols` if a \
             Yggdrasil client should see it) (line 11)",
        ]
    );
}

#[test]
fn a_slash_in_a_namespace_or_service_name_is_already_an_error() {
    // Go would split the key into more segments, and a resolver watching
    // `<prefix>/<namespace>/<name>` would miss it or see it as another service.
    let errors = errors(
        "agent:\n  instances:\n    - {namespace: a/b, name: s, endpoints: [{scheme: grpc, address: 'a:1'}]}\n    - {name: s/t, endpoints: [{scheme: grpc, address: 'a:1'}]}\n",
    );
    assert_has(
        &errors,
        "agent.instances[0].namespace: namespace `a/b` cannot contain `/`",
    );
    assert_has(
        &errors,
        "agent.instances[1].name: name `s/t` cannot contain `/`",
    );
}

#[test]
fn other_yggdrasil_keys_are_ignored_and_unknown_registry_keys_warned() {
    let loaded = ok(
        "yggdrasil:\n  server: {port: 1}\n  registry:\n    config:\n      ttll: 5s\nagent: {instances: []}\nlogging: {level: info}\n",
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .contains("yggdrasil.registry.config.ttll: unknown key, ignored (did you mean `ttl`?)"),
        "{warnings:?}"
    );
}

#[test]
fn every_error_is_reported_at_once_with_its_path_and_line() {
    let errors = errors(
        "agent:\n  instances:\n    - name: a\n      endpoints: []\n    - name: b\n      endpoints: []\n  shutdownTimeout: soon\n",
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert_has(
        &errors,
        "agent.instances[0].endpoints: at least one endpoint (line 4)",
    );
    assert_has(
        &errors,
        "agent.instances[1].endpoints: at least one endpoint (line 6)",
    );
    assert_has(&errors, "agent.shutdownTimeout: `soon` is not a duration");
}

#[test]
fn malformed_inputs_name_what_and_where() {
    let cases: &[(&str, &str)] = &[
        ("", "the file is empty"),
        ("agent: [\n", "YAML syntax error"),
        ("- a\n- b\n", "must be a mapping"),
        (
            "agent: {instances: [{name: a, endpoints: [{scheme: grpc, address: 'x:1'}]}], instances: []}\n",
            "duplicate key `instances`",
        ),
        (
            "yggdrasil: {registry: {type: consul}}\n",
            "yggdrasil.registry.type: `consul` is not supported",
        ),
        (
            "yggdrasil: {registry: {config: {ttl: 1s}}}\n",
            "yggdrasil.registry.config.ttl: 1s is below the minimum of 2s",
        ),
        (
            "yggdrasil: {registry: {config: {ttl: 2500ms}}}\n",
            "not a whole number of seconds",
        ),
        (
            "yggdrasil: {registry: {config: {ttl: 10}}}\n",
            "yggdrasil.registry.config.ttl: `10` has no unit",
        ),
        (
            "yggdrasil: {registry: {config: {keepAlive: maybe}}}\n",
            "yggdrasil.registry.config.keepAlive: expected true or false",
        ),
        (
            "yggdrasil: {registry: {config: {retryInterval: 1ms}}}\n",
            "yggdrasil.registry.config.retryInterval: 1ms is below the minimum",
        ),
        (
            "yggdrasil: {registry: {config: {prefix: registry}}}\n",
            "yggdrasil.registry.config.prefix: `registry` must start with `/`",
        ),
        (
            "yggdrasil: {registry: {config: {prefix: /a//b}}}\n",
            "empty path segment",
        ),
        (
            "yggdrasil: {registry: {config: {client: {endpoints: []}}}}\n",
            "yggdrasil.registry.config.client.endpoints: at least one etcd endpoint",
        ),
        (
            "yggdrasil: {registry: {config: {client: {endpoints: [localhost]}}}}\n",
            "yggdrasil.registry.config.client.endpoints[0]: `localhost` is not an etcd address",
        ),
        (
            "yggdrasil: {registry: {config: {client: {endpoints: ['h:99999']}}}}\n",
            "has an invalid port",
        ),
        (
            "agent: {instances: [{name: a, metadata: {instance_id: '..'}, endpoints: [{scheme: grpc, address: 'x:1'}]}]}\n",
            "or be `.` or `..`",
        ),
        // Found by fuzzing: control characters and stray colons in the host.
        (
            "yggdrasil: {registry: {config: {client: {endpoints: [\"129\\x0e0.0.1:2campus:379\"]}}}}\n",
            "is not an etcd address",
        ),
        (
            "yggdrasil: {registry: {config: {client: {endpoints: ['::1:2379']}}}}\n",
            "is not an etcd address",
        ),
        (
            "yggdrasil: {registry: {config: {client: {endpoints: 'h:1'}}}}\n",
            "client.endpoints: expected a list",
        ),
        (
            "yggdrasil: {registry: {config: {client: {dialTimeout: 0s}}}}\n",
            "client.dialTimeout: must be longer than 0",
        ),
        (
            "yggdrasil: {registry: {config: {client: {username: root}}}}\n",
            "client.username: a username needs a password",
        ),
        (
            "yggdrasil: {registry: {config: {client: {password: hunter2}}}}\n",
            "client.password: a password needs a username",
        ),
        (
            "yggdrasil: {registry: {config: {client: {tls: {certFile: c.pem}}}}}\n",
            "client.tls.caFile: TLS needs caFile",
        ),
        (
            "yggdrasil: {registry: {config: {client: {tls: {caFile: missing.pem}}}}}\n",
            "client.tls.caFile: ",
        ),
        (
            "yggdrasil: {registry: {config: {client: {endpoints: ['https://h:1']}}}}\n",
            "is https: set yggdrasil.registry.config.client.tls.caFile",
        ),
        (
            "agent: {instances: {name: a}}\n",
            "agent.instances: expected a list",
        ),
        (
            "agent: {instances: [{endpoints: [{scheme: grpc, address: 'x:1'}]}]}\n",
            "agent.instances[0].name: missing",
        ),
        (
            "agent: {instances: [{name: 'a/b', endpoints: [{scheme: grpc, address: 'x:1'}]}]}\n",
            "agent.instances[0].name: name `a/b` cannot contain `/`",
        ),
        (
            "agent: {instances: [{name: a, namespace: 'x y', endpoints: [{scheme: grpc, address: 'x:1'}]}]}\n",
            "agent.instances[0].namespace: namespace `x y` contains white space",
        ),
        (
            "agent: {instances: [{name: a}]}\n",
            "agent.instances[0].endpoints: at least one endpoint",
        ),
        (
            "agent: {instances: [{name: a, endpoints: [{address: 'x:1'}]}]}\n",
            "agent.instances[0].endpoints[0].scheme: missing",
        ),
        (
            "agent: {instances: [{name: a, endpoints: [{scheme: grpc}]}]}\n",
            "agent.instances[0].endpoints[0].address: missing",
        ),
        (
            "agent: {instances: [{name: a, endpoints: [{scheme: '9p', address: 'x:1'}]}]}\n",
            "endpoints[0].scheme: `9p` is not a scheme",
        ),
        (
            "agent: {instances: [{name: a, endpoints: [{scheme: grpc, address: 'x:1'}, {scheme: grpc, address: 'x:1'}]}]}\n",
            "agent.instances[0].endpoints[1]: grpc://x:1 is listed twice",
        ),
        (
            "agent: {instances: [{name: a, metadata: [x], endpoints: [{scheme: grpc, address: 'x:1'}]}]}\n",
            "agent.instances[0].metadata: expected a mapping",
        ),
        (
            "agent: {instances: [{name: a, metadata: {k: {nested: 1}}, endpoints: [{scheme: grpc, address: 'x:1'}]}]}\n",
            "agent.instances[0].metadata.k: expected a single value",
        ),
        (
            "agent: {instances: [{name: a, metadata: {instance_id: 'a/b'}, endpoints: [{scheme: grpc, address: 'x:1'}]}]}\n",
            "metadata.instance_id: `a/b` cannot contain `/`",
        ),
        (
            "agent: {instances: [{name: a, endpoints: [{scheme: grpc, address: 'x:1'}]}, {name: a, endpoints: [{scheme: grpc, address: 'x:1'}]}]}\n",
            "agent.instances[1]: same instance key as agent.instances[0]",
        ),
        (
            "agent: {instances: [{name: a, port: 1, endpoints: [{scheme: grpc, address: 'x:1'}]}]}\n",
            "agent.instances[0].port: unknown key",
        ),
        (
            "agent: {instancs: []}\n",
            "agent.instancs: unknown key (did you mean `instances`?)",
        ),
        (
            "agent: {shutdownTimeout: 0s}\n",
            "agent.shutdownTimeout: must be longer than 0",
        ),
        (
            "agent: {admin: {listen: 'localhost'}}\n",
            "agent.admin.listen: `localhost` is not an IP address and port",
        ),
        ("agent: {admin: {}}\n", "agent.admin.listen: missing"),
        ("agent: {plugins: {dir: nowhere}}\n", "agent.plugins.dir: "),
        (
            "agent: {plugins: {interval: 1ms}}\n",
            "agent.plugins.interval: 1ms is below the minimum",
        ),
        (
            "agent: {plugins: {timeout: 1ms}}\n",
            "agent.plugins.timeout: 1ms is below the minimum",
        ),
        (
            "agent: {plugins: {memoryLimit: 1KiB}}\n",
            "agent.plugins.memoryLimit: must be between 2MiB and 4GiB",
        ),
        (
            "agent: {plugins: {memoryLimit: lots}}\n",
            "agent.plugins.memoryLimit: `lots` is not a size",
        ),
        (
            "agent: {plugins: {settings: {'bad name': {a: b}}}}\n",
            "agent.plugins.settings.bad name: not a plugin name",
        ),
        (
            "agent: {plugins: {settings: {load: [1]}}}\n",
            "agent.plugins.settings.load: expected a mapping",
        ),
        (
            "agent: {plugins: {sttings: {}}}\n",
            "agent.plugins.sttings: unknown key (did you mean `settings`?)",
        ),
        ("agent: &a {instances: []}\n", "anchors"),
        ("agent: !!map {instances: []}\n", "tags"),
    ];
    for (text, needle) in cases {
        let errors = errors(text);
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "config {text:?}\n  expected an error containing {needle:?}\n  got {errors:#?}"
        );
    }
}

#[test]
fn ipv6_and_url_endpoints_are_accepted() {
    let config = ok(
        "yggdrasil: {registry: {config: {client: {endpoints: ['[::1]:2379', 'http://etcd-1.internal:2379', 'etcd_2:2379']}}}}\nagent: {instances: []}\n",
    )
    .config;
    assert_eq!(config.registry.client.endpoints.len(), 3);
}

#[test]
fn passwords_never_appear_in_errors_or_debug_output() {
    let errors = errors(
        "yggdrasil: {registry: {config: {client: {password: hunter2-secret, dialTimeout: x}}}}\n",
    );
    assert!(errors.iter().all(|e| !e.contains("hunter2")), "{errors:?}");
    let config = ok("yggdrasil: {registry: {config: {client: {username: root, password: hunter2-secret}}}}\nagent: {instances: []}\n").config;
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("<redacted>"));
    assert_eq!(
        config
            .registry
            .client
            .credentials
            .unwrap()
            .password
            .expose(),
        "hunter2-secret"
    );
}

#[test]
fn tls_paths_resolve_against_the_config_folder() {
    let dir = dir();
    for f in ["ca.pem", "c.pem", "k.pem"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let loaded = parse(
        "yggdrasil: {registry: {config: {client: {tls: {caFile: ca.pem, certFile: c.pem, keyFile: k.pem}}}}}\nagent: {instances: []}\n",
        dir.path(),
    )
    .unwrap();
    let tls = loaded.config.registry.client.tls.unwrap();
    assert_eq!(tls.ca_file, dir.path().join("ca.pem"));
    assert_eq!(
        tls.identity,
        Some((dir.path().join("c.pem"), dir.path().join("k.pem")))
    );
}

#[test]
fn quoted_values_stay_strings() {
    let config = ok("agent:\n  instances:\n    - name: a\n      version: 1.10\n      metadata: {flag: 'true', n: 007}\n      endpoints: [{scheme: grpc, address: 'x:1'}]\n").config;
    let instance = &config.agent.instances[0];
    assert_eq!(instance.version, "1.10");
    assert_eq!(instance.metadata["flag"], "true");
    assert_eq!(instance.metadata["n"], "007");
}

#[test]
fn endpoint_scheme_errors_name_the_endpoint_after_an_invalid_one() {
    // Found while refactoring: the index counted only the valid endpoints,
    // so these pointed at `endpoints[0]` (the invalid one), without a line.
    let dir = dir();
    std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
    let with_tls = "yggdrasil:\n  registry:\n    config:\n      client:\n        endpoints:\n          - bad\n          - http://h:1\n        tls: {caFile: ca.pem}\n";
    let without = "yggdrasil:\n  registry:\n    config:\n      client:\n        endpoints: [bad, 'https://h:1']\n";
    let base = "yggdrasil.registry.config.client";
    for (text, expected) in [
        (
            with_tls,
            format!(
                "{base}.endpoints[1]: `http://h:1` is plain http but {base}.tls is set: write host:port or https:// (line 7)"
            ),
        ),
        (
            without,
            format!(
                "{base}.endpoints[1]: `https://h:1` is https: set {base}.tls.caFile to the CA that signed etcd's certificate (line 5)"
            ),
        ),
    ] {
        let errors: Vec<String> = parse(text, dir.path())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].starts_with(&format!(
            "{base}.endpoints[0]: `bad` is not an etcd address"
        )));
        assert_eq!(errors[1], expected);
    }
}

#[test]
fn a_repeated_endpoint_names_the_first_one_after_an_entry_in_error() {
    // Found while refactoring: "also at" counted only the readable entries.
    let errors = errors(
        "agent:\n  instances:\n    - name: a\n      endpoints:\n        - x\n        - {scheme: grpc, address: 'x:1'}\n        - {scheme: grpc, address: 'x:1'}\n",
    );
    assert_eq!(
        errors,
        [
            "agent.instances[0].endpoints[0]: expected a mapping (key: value lines), found a single value (line 5)",
            "agent.instances[0].endpoints[2]: grpc://x:1 is listed twice (also at agent.instances[0].endpoints[1]) (line 7)",
        ]
    );
}

#[test]
fn a_name_that_is_not_a_single_value_is_not_also_called_missing() {
    let errors = errors(
        "agent:\n  instances:\n    - name: [a]\n      endpoints: [{scheme: grpc, address: 'x:1'}]\n",
    );
    assert_eq!(
        errors,
        ["agent.instances[0].name: expected a single value, found a list (line 3)"]
    );
}

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
        "        - {scheme: tcp, address: '10.0.0.1:5432'}\n        - {scheme: grpc, address: '10.0.0.1'}\n",
        "- tcp: ~\n- http: ~\n- grpc:",
    );
    assert_eq!(
        errors(&text),
        [
            "agent.instances[0].checks[1].http: no URL given and the instance has no http or https endpoint to check (line 9)",
            "agent.instances[0].checks[2].grpc: no address given, and the instance's grpc endpoint cannot be checked: `10.0.0.1` has no port (expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080) (line 10)",
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
    let shipped = include_str!("../../../config/agent.yaml");
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

// Yggdrasil v3 layout. Keys and defaults are those of
// codesjoy/yggdrasil-ecosystem `modules/etcd` at commit 2159f4b.

/// [`SEED`] with its `yggdrasil` section in the v3 layout.
fn seed_v3() -> String {
    let v3 = r#"
yggdrasil:
  etcd:
    clients:
      default:
        endpoints: ["127.0.0.1:2379"]
        dial_timeout: 5s
  discovery:
    registry:
      type: etcd
      config:
        client: default
        prefix: /yggdrasil/registry
        ttl: 10s
        keep_alive: true
        retry_interval: 3s
agent:"#;
    let agent = SEED.split_once("\nagent:").unwrap().1;
    format!("{v3}{agent}")
}

#[test]
fn the_seed_in_the_v3_layout_is_the_same_config() {
    let dir = dir();
    let v3 = parse(&seed_v3(), dir.path()).unwrap();
    assert!(v3.warnings.is_empty(), "{:?}", v3.warnings);
    assert_eq!(v3.config, parse(SEED, dir.path()).unwrap().config);
}

#[test]
fn every_v3_key_lands_where_its_v2_twin_does() {
    let v2 = "yggdrasil:\n  registry:\n    type: etcd\n    config:\n      client:\n        endpoints: ['10.0.0.1:2379', 'http://10.0.0.2:2379']\n        dialTimeout: 1500ms\n        username: root\n        password: pw\n      prefix: /apps/reg\n      ttl: 4s\n      keepAlive: false\n      retryInterval: 250ms\nagent: {instances: []}\n";
    let v3 = "yggdrasil:\n  etcd:\n    clients:\n      other: {endpoints: ['10.9.9.9:2379']}\n      blue:\n        endpoints: ['10.0.0.1:2379', 'http://10.0.0.2:2379']\n        dial_timeout: 1500ms\n        username: root\n        password: pw\n  discovery:\n    resolvers: {default: {type: etcd}}\n    registry:\n      type: etcd\n      config:\n        client: blue\n        prefix: /apps/reg\n        ttl: 4s\n        keep_alive: false\n        retry_interval: 250ms\nagent: {instances: []}\n";
    let (v2, v3) = (ok(v2), ok(v3));
    assert!(v3.warnings.is_empty(), "{:?}", v3.warnings);
    assert_eq!(v3.config, v2.config);
    let registry = v3.config.registry;
    assert_eq!(
        registry.client.endpoints,
        ["10.0.0.1:2379", "http://10.0.0.2:2379"]
    );
    assert_eq!(registry.client.dial_timeout, Duration::from_millis(1500));
    assert_eq!(registry.client.credentials.unwrap().username, "root");
    assert!(!registry.keep_alive);
    assert_eq!(registry.retry_interval, Duration::from_millis(250));
}

#[test]
fn v3_defaults_are_the_go_defaults() {
    // discovery/registry.go at 2159f4b: prefix "/yggdrasil/registry" (line 63),
    // ttl 10s (line 66), retry_interval 3s (line 69), keep_alive nil means
    // true (line 112). internal/client/client.go: a blank client name is
    // "default" (lines 28, 82-87); endpoints ["127.0.0.1:2379"] (line 101),
    // dial_timeout 5s (line 104).
    let go_defaults = RegistryConfig {
        client: ClientConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            dial_timeout: Duration::from_secs(5),
            credentials: None,
            tls: None,
        },
        prefix: "/yggdrasil/registry".into(),
        ttl: Duration::from_secs(10),
        keep_alive: true,
        retry_interval: Duration::from_secs(3),
    };
    let agent = "agent: {instances: []}\n";
    for registry in [
        "yggdrasil: {discovery: {registry: {type: etcd}}}",
        "yggdrasil: {discovery: {registry: {type: etcd, config: {}}}}",
        "yggdrasil: {discovery: {registry: {config: {client: ''}}}}",
        "yggdrasil: {etcd: {clients: {default: {}}}, discovery: {registry: {config: {client: ' '}}}}",
        "yggdrasil: {etcd: {clients: {default: {}}}, discovery: {registry: {config: {client: default}}}}",
    ] {
        let loaded = ok(&format!("{registry}\n{agent}"));
        assert!(
            loaded.warnings.is_empty(),
            "{registry}: {:?}",
            loaded.warnings
        );
        assert_eq!(loaded.config.registry, go_defaults, "{registry}");
    }
    // A blank name reads the `default` client, whatever else is defined.
    let config = ok("yggdrasil:\n  etcd: {clients: {default: {endpoints: ['e:1']}, b: {endpoints: ['b:1']}}}\n  discovery: {registry: {type: etcd}}\nagent: {instances: []}\n").config;
    assert_eq!(config.registry.client.endpoints, ["e:1"]);
    assert_eq!(config.registry.client.dial_timeout, Duration::from_secs(5));
}

#[test]
fn a_v3_client_that_is_not_defined_is_an_error_at_its_name() {
    let found = errors(
        "yggdrasil:\n  etcd:\n    clients:\n      default: {endpoints: ['e:1']}\n  discovery:\n    registry:\n      type: etcd\n      config:\n        client: blue\n",
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_has(
        &found,
        "yggdrasil.discovery.registry.config.client: client `blue` is not defined: add yggdrasil.etcd.clients.blue (Yggdrasil would dial 127.0.0.1:2379 instead) (line 9)",
    );
    let found = errors("yggdrasil: {discovery: {registry: {config: {client: default}}}}\n");
    assert_has(&found, "add yggdrasil.etcd.clients.default");
}

#[test]
fn both_layouts_at_once_is_an_error_naming_both() {
    let found = errors(
        "yggdrasil:\n  registry:\n    type: etcd\n  discovery:\n    registry:\n      type: etcd\nagent: {instances: []}\n",
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_has(
        &found,
        "yggdrasil.discovery.registry: both yggdrasil.registry (Yggdrasil v2 layout) and yggdrasil.discovery.registry (v3 layout) are set: keep one (line 6)",
    );
    // The v3 client list alone, or resolvers alone, is the application's.
    let config = ok("yggdrasil:\n  registry: {config: {ttl: 4s}}\n  etcd: {clients: {default: {endpoints: ['e:1']}}}\n  discovery: {resolvers: {}}\nagent: {instances: []}\n").config;
    assert_eq!(config.registry.ttl, Duration::from_secs(4));
    assert_eq!(config.registry.client.endpoints, ["127.0.0.1:2379"]);
}

#[test]
fn v3_errors_carry_paths_and_lines_and_unknown_keys_warn() {
    let found = errors(
        "yggdrasil:\n  etcd:\n    clients:\n      default:\n        endpoints: ['https://e:1', 'nope']\n        dial_timeout: soon\n  discovery:\n    registry:\n      type: consul\n      config: {ttl: 1500ms, prefix: x}\n",
    );
    assert_eq!(found.len(), 6, "{found:#?}");
    assert_has(
        &found,
        "yggdrasil.etcd.clients.default.endpoints[0]: `https://e:1` is https, but Yggdrasil v3's etcd client has no TLS settings",
    );
    assert_has(
        &found,
        "yggdrasil.etcd.clients.default.endpoints[1]: `nope` is not an etcd address",
    );
    assert_has(
        &found,
        "yggdrasil.etcd.clients.default.dial_timeout: `soon` is not a duration",
    );
    assert_has(
        &found,
        "yggdrasil.discovery.registry.type: `consul` is not supported",
    );
    assert_has(&found, "yggdrasil.discovery.registry.config.ttl:");
    assert_has(
        &found,
        "yggdrasil.discovery.registry.config.prefix: `x` must start with `/`",
    );

    let found = warnings(
        "yggdrasil:\n  etcd:\n    clients:\n      default: {endpoints: ['e:1'], tls: {caFile: ca.pem}}\n      other: {whatever: 1}\n    other: 1\n  discovery:\n    resolvers: {x: 1}\n    registry:\n      kind: etcd\n      config: {keepAlive: false}\nagent: {instances: []}\n",
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_has(
        &found,
        "yggdrasil.etcd.clients.default.tls: unknown key, ignored (line 4)",
    );
    assert_has(
        &found,
        "yggdrasil.discovery.registry.kind: unknown key, ignored",
    );
    assert_has(
        &found,
        "yggdrasil.discovery.registry.config.keepAlive: unknown key, ignored (did you mean `keep_alive`?)",
    );
}

#[test]
fn v3_passwords_never_appear_in_errors_or_debug_output() {
    let found = errors(
        "yggdrasil:\n  etcd: {clients: {default: {password: hunter2-secret, dial_timeout: x}}}\n  discovery: {registry: {type: etcd}}\n",
    );
    assert_has(&found, "a password needs a username beside it");
    assert!(found.iter().all(|e| !e.contains("hunter2")), "{found:?}");
    let found = errors(
        "yggdrasil:\n  etcd: {clients: {default: {username: root, password: [hunter2-secret]}}}\n  discovery: {registry: {type: etcd}}\n",
    );
    assert!(found.iter().all(|e| !e.contains("hunter2")), "{found:?}");
    let config = ok("yggdrasil:\n  etcd: {clients: {default: {username: root, password: hunter2-secret}}}\n  discovery: {registry: {type: etcd}}\nagent: {instances: []}\n").config;
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    let credentials = config.registry.client.credentials.unwrap();
    assert_eq!(credentials.password.expose(), "hunter2-secret");
}

fn with_publish(publish: &str) -> String {
    SEED.replace(
        "  shutdownTimeout: 5s\n",
        &format!("  shutdownTimeout: 5s\n{publish}"),
    )
}

#[test]
fn yggdrasil_alone_is_the_default_and_etcd_naming_is_added_by_publish() {
    assert_eq!(ok(SEED).config.agent.publish, Publish::default());
    let loaded = ok(&with_publish("  publish: [yggdrasil, etcd-naming]\n"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let publish = &loaded.config.agent.publish;
    assert!(publish.yggdrasil);
    let naming = publish.etcd_naming.as_ref().unwrap();
    assert_eq!(naming, &EtcdNaming::default());
    let instance = &loaded.config.agent.instances[0];
    assert_eq!(naming.target(instance), "default/example-registry-server");

    let text = with_publish(
        "  publish: [etcd-naming]\n  etcdNaming:\n    prefix: /services\n    targets:\n      default/example-registry-server: example\n",
    );
    let loaded = ok(&text);
    let publish = &loaded.config.agent.publish;
    assert!(!publish.yggdrasil);
    let naming = publish.etcd_naming.as_ref().unwrap();
    assert_eq!(
        naming.target(&loaded.config.agent.instances[0]),
        "/services/example"
    );
}

#[test]
fn publish_and_etcd_naming_errors_name_what_and_where() {
    let errors = errors(&with_publish(
        "  publish: [yggdrasil, consul]\n  etcdNaming:\n    targets:\n      svc: x\n      default/a: /x/\n    port: 1\n",
    ));
    assert_has(
        &errors,
        "agent.publish[1]: unknown format `consul`: the formats are `yggdrasil` and `etcd-naming` (line 35)",
    );
    assert_has(
        &errors,
        "agent.etcdNaming.targets: `default/a`: target `/x/` must be non-empty and not begin or end with `/`; \
         `svc`: name a service as `<namespace>/<name>` (line 38)",
    );
    assert_has(&errors, "agent.etcdNaming.port: unknown key (line 40)");
    let errors = self::errors(&with_publish("  publish: []\n"));
    assert_has(
        &errors,
        "agent.publish: lists no format: write one or both of `yggdrasil` and `etcd-naming` (line 35)",
    );
}

#[test]
fn etcd_naming_warns_about_targets_that_are_prefixes_and_unused_settings() {
    let canary = r#"
    - name: example-registry-server-canary
      endpoints:
        - {scheme: grpc, address: "127.0.0.1:54322"}
"#;
    let text = with_publish("  publish: [yggdrasil, etcd-naming]\n").replace(
        "  plugins:\n",
        &format!("{}\n  plugins:\n", canary.trim_end()),
    );
    let warnings = warnings(&text);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(
            "etcd-naming target `default/example-registry-server` is a prefix of `default/example-registry-server-canary`"
        ),
        "{warnings:?}"
    );
    let warnings = self::warnings(&with_publish("  etcdNaming: {prefix: /x}\n"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("agent.etcdNaming: set, but `agent.publish` does not list etcd-naming: no naming keys are written (line 35)"),
        "{warnings:?}"
    );
}

#[test]
fn min_rewrite_interval_is_read_and_off_by_default() {
    let plugins = |config: &Config| config.agent.plugins.clone().unwrap();
    assert_eq!(plugins(&ok(SEED).config).min_rewrite_interval, None);
    let text = SEED.replace(
        "    interval: 30s\n",
        "    interval: 30s\n    minRewriteInterval: 5m\n",
    );
    assert_eq!(
        plugins(&ok(&text).config).min_rewrite_interval,
        Some(Duration::from_secs(300))
    );
    let text = SEED.replace(
        "    interval: 30s\n",
        "    interval: 30s\n    minRewriteInterval: 0s\n",
    );
    assert_has(
        &errors(&text),
        "agent.plugins.minRewriteInterval: must be longer than 0 (line 28)",
    );
}
