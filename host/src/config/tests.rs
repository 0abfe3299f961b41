use std::time::Duration;

use super::*;

pub(super) fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    dir
}

pub(super) fn ok(text: &str) -> Loaded {
    let dir = dir();
    match parse(text, dir.path()) {
        Ok(loaded) => loaded,
        Err(issues) => panic!("expected a valid config, got {issues:#?}"),
    }
}

pub(super) fn errors(text: &str) -> Vec<String> {
    let dir = dir();
    match parse(text, dir.path()) {
        Ok(loaded) => panic!("expected errors, got {:#?}", loaded.config),
        Err(issues) => issues.iter().map(ToString::to_string).collect(),
    }
}

pub(super) fn assert_has(errors: &[String], needle: &str) {
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "no error contains {needle:?}; errors were:\n{}",
        errors.join("\n")
    );
}

pub(super) const SEED: &str = r#"
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

pub(super) fn warnings(text: &str) -> Vec<String> {
    ok(text).warnings.iter().map(ToString::to_string).collect()
}
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
