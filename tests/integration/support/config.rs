//! Agent config files for tests: the `ConfigFile` builder, generated
//! instances, the seed instance with its key and record (SPEC §3), and
//! malformed configs with the message each must produce.

/// Builds a config file for the agent.
#[derive(Clone)]
pub struct ConfigFile {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ttl: &'static str,
    pub retry_interval: &'static str,
    pub keep_alive: bool,
    pub shutdown_timeout: &'static str,
    /// YAML of the `instances:` list items, already indented by 4.
    pub instances: String,
    /// Extra YAML under `agent:` (plugins, admin), indented by 2.
    pub agent_extra: String,
}

/// The seed's instance, as YAML list items.
pub const SEED_INSTANCE: &str = r#"    - namespace: default
      name: example-registry-server
      version: 1.0.0
      region: us-west
      zone: us-west-1
      campus: campus-a
      metadata: {env: dev, pod: pod-1234567890}
      endpoints:
        - {scheme: grpc, address: "127.0.0.1:54321"}
        - {scheme: http, address: "127.0.0.1:54321"}
"#;

/// The seed instance's key under the default prefix (SPEC §3 test vector).
pub const SEED_KEY: &str =
    "/yggdrasil/registry/default/example-registry-server/5b51df33a06ef6bde3a81b1ad8d1792ed24de006";

/// The seed instance's record with the configured metadata only.
pub const SEED_VALUE: &str = r#"{"namespace":"default","name":"example-registry-server","version":"1.0.0","region":"us-west","zone":"us-west-1","campus":"campus-a","metadata":{"env":"dev","pod":"pod-1234567890"},"endpoints":[{"scheme":"grpc","address":"127.0.0.1:54321","metadata":null},{"scheme":"http","address":"127.0.0.1:54321","metadata":null}]}"#;

/// `n` small instances of service `svc`, one endpoint each.
pub fn instances(service: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "    - name: {service}\n      version: \"1\"\n      endpoints: [{{scheme: http, address: \"10.0.0.1:{}\"}}]\n",
                10000 + i
            )
        })
        .collect()
}

impl ConfigFile {
    pub fn new(endpoints: Vec<String>) -> Self {
        ConfigFile {
            endpoints,
            prefix: "/yggdrasil/registry".into(),
            ttl: "4s",
            retry_interval: "1s",
            keep_alive: true,
            shutdown_timeout: "5s",
            instances: SEED_INSTANCE.into(),
            agent_extra: String::new(),
        }
    }

    pub fn render(&self) -> String {
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "yggdrasil:\n  registry:\n    type: etcd\n    config:\n      client:\n        endpoints: [{endpoints}]\n        dialTimeout: 2s\n      prefix: {}\n      ttl: {}\n      keepAlive: {}\n      retryInterval: {}\nagent:\n  shutdownTimeout: {}\n  instances:\n{}{}",
            self.prefix,
            self.ttl,
            self.keep_alive,
            self.retry_interval,
            self.shutdown_timeout,
            self.instances,
            self.agent_extra,
        )
    }
}

/// `agent.plugins` (indented for `ConfigFile::agent_extra`) for tests:
/// quick rounds, tight limits, and a cache private to the agent's folder,
/// so every compile is cold. `settings` are YAML map items indented by 6.
pub fn plugins_section(settings: &str) -> String {
    format!(
        "  plugins:\n    dir: plugins\n    interval: 1s\n    timeout: 500ms\n    memoryLimit: 16MiB\n    cacheDir: cache\n    settings:\n{settings}"
    )
}

/// Malformed config files, each with the message (and YAML path) it must
/// produce. Used at start-up (`check`, `run`) and on reload.
pub const MALFORMED_CONFIGS: &[(&str, &str)] = &[
    (
        "agent:\n  instances:\n    - name: a\n      endpoints: []\n",
        "agent.instances[0].endpoints: at least one endpoint (line 4)",
    ),
    (
        "agent:\n  instances:\n    - version: 1\n      endpoints: [{scheme: grpc, address: 'x:1'}]\n",
        "agent.instances[0].name: missing",
    ),
    (
        "yggdrasil:\n  registry:\n    type: zookeeper\n",
        "yggdrasil.registry.type: `zookeeper` is not supported",
    ),
    (
        "yggdrasil:\n  registry:\n    config:\n      ttl: 1s\n",
        "yggdrasil.registry.config.ttl: 1s is below the minimum of 2s (line 4)",
    ),
    (
        "yggdrasil:\n  registry:\n    config:\n      retryInterval: often\n",
        "yggdrasil.registry.config.retryInterval: `often` is not a duration",
    ),
    (
        "yggdrasil:\n  registry:\n    config:\n      keepAlive: yes please\n",
        "yggdrasil.registry.config.keepAlive: expected true or false",
    ),
    (
        "yggdrasil:\n  registry:\n    config:\n      client:\n        endpoints: [etcd]\n",
        "yggdrasil.registry.config.client.endpoints[0]: `etcd` is not an etcd address",
    ),
    (
        "yggdrasil:\n  registry:\n    config:\n      prefix: registry\n",
        "yggdrasil.registry.config.prefix: `registry` must start with `/`",
    ),
    (
        "agent:\n  shutdownTimeout: 5\n",
        "agent.shutdownTimeout: `5` has no unit",
    ),
    (
        "agent:\n  instances: []\n  colour: blue\n",
        "agent.colour: unknown key",
    ),
    (
        "agent:\n  instances:\n    - name: a\n      endpoints: [{scheme: grpc}]\n",
        "agent.instances[0].endpoints[0].address: missing",
    ),
    (
        "agent:\n  admin:\n    listen: everywhere\n",
        "agent.admin.listen: `everywhere` is not an IP address and port",
    ),
    (
        "agent:\n  plugins:\n    memoryLimit: 1KiB\n",
        "agent.plugins.memoryLimit: must be between 2MiB and 4GiB",
    ),
    (
        "agent:\n  api:\n    listen: 0.0.0.0:9999\n    tokenFile: /etc/hostname\n",
        "agent.api.listen: 0.0.0.0:9999 is not a loopback address",
    ),
    (
        "agent:\n  instancesDir: /etc/hostname\n",
        "agent.instancesDir: /etc/hostname is not a folder",
    ),
    ("agent: [oops\n", "YAML syntax error"),
    ("", "the file is empty"),
];
