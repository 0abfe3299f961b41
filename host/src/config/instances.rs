//! Instances: `agent.instances[]` and the files of `agent.instancesDir`
//! (one schema, one set of readers), with their endpoints.

use std::collections::HashMap;

use crate::record::{
    self, DEFAULT_NAMESPACE, Endpoint, INSTANCE_ID_KEY, INSTANCE_ID_MAX_LEN, Instance,
};

use super::checks::{CheckConfig, CheckTiming, read_checks};
use super::report::{ConfigIssue, Report, YamlPath};
use super::rules::{check_segment, printable};
use super::yaml::{Document, List, Section, Unknown};

/// The endpoint schemes Yggdrasil's Go resolver keeps when its `protocols`
/// list is not set (compared case-sensitively, as Go does).
pub const YGGDRASIL_DEFAULT_PROTOCOLS: [&str; 2] = ["grpc", "http"];

/// The instances of one file of `agent.instancesDir`: what it must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct InstancesFile {
    pub instances: Vec<Instance>,
    /// `checks[i]` are the health checks of `instances[i]`.
    pub checks: Vec<Vec<CheckConfig>>,
    pub warnings: Vec<ConfigIssue>,
}

/// Validates one file of `agent.instancesDir`: a YAML list of instances in
/// the `agent.instances[]` schema, read by the same readers (same rules,
/// same wording; paths like `[0].endpoints`), their checks starting from
/// `defaults` (`agent.checks` of the config).
pub fn parse_instances(
    text: &str,
    defaults: &CheckTiming,
) -> Result<InstancesFile, Vec<ConfigIssue>> {
    if text.trim().is_empty() {
        return Err(vec![ConfigIssue {
            path: YamlPath::default().to_string(),
            line: None,
            message: "the file is empty (write `[]` for no instances)".into(),
        }]);
    }
    let document = Document::parse_list(text).map_err(|issue| vec![issue])?;
    let report = Report::default();
    let list = document.root(&report).list().value();
    let (instances, checks) = list
        .map(|l| read_instances(&l, defaults, &report))
        .unwrap_or_default();
    let (errors, warnings) = report.into_issues();
    if errors.is_empty() {
        Ok(InstancesFile {
            instances,
            checks,
            warnings,
        })
    } else {
        Err(errors)
    }
}

/// Checks each instance, then that no two share an etcd key. The second
/// list holds each instance's health checks, index for index: an instance
/// in error is left out of both.
pub(super) fn read_instances(
    list: &List,
    defaults: &CheckTiming,
    report: &Report,
) -> (Vec<Instance>, Vec<Vec<CheckConfig>>) {
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut instances = Vec::new();
    let mut all_checks = Vec::new();
    for (i, item) in list.items().enumerate() {
        let instance = item.section().value();
        let read = instance.and_then(|map| read_instance(map, defaults, report));
        let Some((instance, checks)) = read else {
            continue;
        };
        let label = format!(
            "{}/{}/{}",
            instance.namespace,
            instance.name,
            record::instance_key(&instance)
        );
        if let Some(first) = keys.insert(label.clone(), i) {
            item.error(format!(
                "same instance key as {}[{first}] ({label}): change its version, endpoints or metadata.instance_id",
                list.yaml_path()
            ));
        }
        instances.push(instance);
        all_checks.push(checks);
    }
    (instances, all_checks)
}

/// An instance and its checks, or `None` if anything in it is wrong
/// (reported).
pub(super) fn read_instance(
    mut map: Section,
    defaults: &CheckTiming,
    report: &Report,
) -> Option<(Instance, Vec<CheckConfig>)> {
    let errors_before = report.error_count();
    #[rustfmt::skip]
    let mut instance = Instance {
        namespace: map.string("namespace").filter(|ns| !ns.is_empty())
            .check(|ns| check_segment("namespace", ns)).or(DEFAULT_NAMESPACE.into()),
        name: map.string("name").check(|name| check_segment("name", name))
            .required("missing: every instance needs the service name").unwrap_or_default(),
        version: map.string("version").check(|v| printable(v)).or_default(),
        region: map.string("region").check(|v| printable(v)).or_default(),
        zone: map.string("zone").check(|v| printable(v)).or_default(),
        campus: map.string("campus").check(|v| printable(v)).or_default(),
        metadata: map.string_map("metadata").check_entry(INSTANCE_ID_KEY, check_instance_id).or_default(),
        endpoints: Vec::new(),
    };
    // A check without an address targets one of these: it is told only
    // about a list read without errors, so it never blames a missing
    // endpoint that is really one written wrong.
    let endpoint_errors = report.error_count();
    instance.endpoints = (map.list("endpoints").required("at least one endpoint"))
        .map(read_endpoints)
        .unwrap_or_default();
    let endpoints = (report.error_count() == endpoint_errors).then_some(&instance.endpoints[..]);
    // Said even when something else in the instance is wrong.
    if let Some(warning) = invisible_endpoints(&instance) {
        map.warning(warning);
    }
    let checks = map.list("checks").value();
    let checks = checks
        .map(|list| read_checks(&list, &instance, endpoints, defaults))
        .unwrap_or_default();
    map.finish(Unknown::Error);
    (report.error_count() == errors_before).then_some((instance, checks))
}

fn read_endpoints(list: List) -> Vec<Endpoint> {
    if list.is_empty() {
        list.error("at least one endpoint");
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    // Where each of `endpoints` is in the list (entries in error are not).
    let mut indices: Vec<usize> = Vec::new();
    for (i, item) in list.items().enumerate() {
        let example = "`{scheme: grpc, address: \"127.0.0.1:9000\"}`";
        let Some(mut map) = item.section_like(example).value() else {
            continue;
        };
        #[rustfmt::skip]
        let (scheme, address, metadata) = (
            map.string("scheme").check(|s| check_scheme(s)).required("missing (e.g. grpc, http)"),
            map.string("address").check(|a| check_address(a)).required("missing (e.g. 10.0.0.1:8080)"),
            map.string_map("metadata").or_default(),
        );
        map.finish(Unknown::Error);
        let (Some(scheme), Some(address)) = (scheme, address) else {
            continue;
        };
        let same = |e: &Endpoint| e.scheme == scheme && e.address == address;
        if let Some(first) = endpoints.iter().position(same) {
            item.error(format!(
                "{scheme}://{address} is listed twice (also at {})",
                list.yaml_path().index(indices[first])
            ));
        }
        indices.push(i);
        endpoints.push(Endpoint {
            scheme,
            address,
            metadata,
        });
    }
    endpoints
}

/// The endpoints a Yggdrasil Go client with the default resolver drops
/// (its `protocols` list keeps only grpc and http), as one warning.
fn invisible_endpoints(instance: &Instance) -> Option<String> {
    let invisible: Vec<String> = (instance.endpoints.iter())
        .filter(|e| !YGGDRASIL_DEFAULT_PROTOCOLS.contains(&e.scheme.as_str()))
        .map(ToString::to_string)
        .collect();
    if invisible.is_empty() {
        return None;
    }
    let (noun, verb) = match invisible.len() {
        1 => ("endpoint", "is"),
        _ => ("endpoints", "are"),
    };
    let all = if invisible.len() == instance.endpoints.len() {
        ", so such a client sees none of this instance"
    } else {
        ""
    };
    Some(format!(
        "service {}/{}: {noun} {} {verb} invisible to a Yggdrasil client with the default resolver, \
         which keeps only the schemes grpc and http{all} (add the scheme to the resolver's `protocols` \
         if a Yggdrasil client should see it)",
        instance.namespace,
        instance.name,
        invisible.join(", ")
    ))
}

/// `metadata.instance_id` becomes the etcd key's last segment.
fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > INSTANCE_ID_MAX_LEN {
        Err(format!("must be 1 to {INSTANCE_ID_MAX_LEN} characters"))
    } else if id.contains('/')
        || id == "."
        || id == ".."
        || id.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Err(format!(
            "`{}` cannot contain `/` or white space, or be `.` or `..` (it becomes the etcd key's last segment)",
            id.escape_debug()
        ))
    } else {
        Ok(())
    }
}

fn check_scheme(scheme: &str) -> Result<(), String> {
    let valid = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!("`{scheme}` is not a scheme (e.g. grpc, http, tcp)"))
    }
}

/// `host:port` (`[v6]:port`): a Yggdrasil client dials what it lists, and
/// an address without a port is not dialable.
fn check_address(address: &str) -> Result<(), String> {
    let not_an_address = || {
        Err(format!(
            "`{address}` is not an address (e.g. 10.0.0.1:8080)"
        ))
    };
    if address.is_empty() || address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return not_an_address();
    }
    let port = address.rsplit_once(':').filter(|(host, _)| {
        !host.is_empty() && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
    });
    match port {
        Some((_, port)) if port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        Some(_) => Err(format!(
            "`{address}` has no valid port (1-65535; e.g. 10.0.0.1:8080)"
        )),
        None => Err(format!(
            "`{address}` has no port: write host:port (e.g. 10.0.0.1:8080)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_has, errors, ok, warnings};

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
    fn the_scheme_warning_stays_when_the_same_instance_also_has_an_error() {
        let text = "agent:\n  instances:\n    - name: db\n      version: 1\n      zone: [not, a, string]\n      endpoints: [{scheme: tcp, address: '10.0.0.1:5432'}]\n";
        let dir = tempfile::tempdir().unwrap();
        let (errors, warnings) = crate::config::validate(text, dir.path()).unwrap_err();
        assert!(!errors.is_empty());
        let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "agent.instances[0]: service default/db: endpoint tcp://10.0.0.1:5432 is invisible"
            ) && warnings[0].ends_with("(line 3)"),
            "{warnings:?}"
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
    fn quoted_values_stay_strings() {
        let config = ok("agent:\n  instances:\n    - name: a\n      version: 1.10\n      metadata: {flag: 'true', n: 007}\n      endpoints: [{scheme: grpc, address: 'x:1'}]\n").config;
        let instance = &config.agent.instances[0];
        assert_eq!(instance.version, "1.10");
        assert_eq!(instance.metadata["flag"], "true");
        assert_eq!(instance.metadata["n"], "007");
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
                "agent.instances[0].endpoints[0]: expected a mapping such as `{scheme: grpc, address: \"127.0.0.1:9000\"}`, found a single value (line 5)",
                "agent.instances[0].endpoints[2]: grpc://x:1 is listed twice (also at agent.instances[0].endpoints[1]) (line 7)",
            ]
        );
    }

    #[test]
    fn an_address_needs_a_port_and_an_endpoint_written_as_a_url_gets_an_example() {
        let errors = errors(
            "agent:\n  instances:\n    - name: a\n      endpoints:\n        - {scheme: http, address: nope}\n        - {scheme: http, address: 'h:0'}\n        - grpc://127.0.0.1:9000\n",
        );
        assert_eq!(
            errors,
            [
                "agent.instances[0].endpoints[0].address: `nope` has no port: write host:port (e.g. 10.0.0.1:8080) (line 5)",
                "agent.instances[0].endpoints[1].address: `h:0` has no valid port (1-65535; e.g. 10.0.0.1:8080) (line 6)",
                "agent.instances[0].endpoints[2]: expected a mapping such as `{scheme: grpc, address: \"127.0.0.1:9000\"}`, found a single value (line 7)",
            ]
        );
        ok(
            "agent:\n  instances:\n    - name: a\n      endpoints: [{scheme: grpc, address: '[::1]:9000'}, {scheme: http, address: 'web.local:80'}]\n",
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
}
