use super::*;
use crate::config::parse;
use crate::config::tests::{SEED, assert_has, dir, errors, ok, warnings};
use crate::record;

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
