//! A cursor over the parsed YAML tree that remembers where it is (`agent.
//! instances[1].endpoints`, line 23) and collects problems instead of stopping
//! at the first, so one run of `check` names every mistake in the file.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};

use super::ConfigIssue;
use super::units::{parse_duration, parse_size};

/// A dotted YAML path: `agent.instances[1].endpoints`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct YamlPath(String);

impl YamlPath {
    pub fn key(&self, key: &str) -> YamlPath {
        if self.0.is_empty() {
            YamlPath(key.to_string())
        } else {
            YamlPath(format!("{}.{}", self.0, key))
        }
    }

    pub fn index(&self, index: usize) -> YamlPath {
        YamlPath(format!("{}[{}]", self.0, index))
    }
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(top level)")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// Errors and warnings found so far.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<ConfigIssue>,
    pub warnings: Vec<ConfigIssue>,
}

fn line_of(span: &Span) -> Option<usize> {
    span.start().map(|m| m.line())
}

impl Report {
    pub fn error(&mut self, path: &YamlPath, span: Option<&Span>, message: impl Into<String>) {
        self.errors.push(ConfigIssue {
            path: path.to_string(),
            line: span.and_then(line_of),
            message: message.into(),
        });
    }

    pub fn warning(&mut self, path: &YamlPath, span: Option<&Span>, message: impl Into<String>) {
        self.warnings.push(ConfigIssue {
            path: path.to_string(),
            line: span.and_then(line_of),
            message: message.into(),
        });
    }
}

/// What to do with keys nobody asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    Error,
    Warn,
    Ignore,
}

/// A mapping being read; keys read through [`Mapping::get`] are marked, and
/// [`Mapping::finish`] reports the rest.
pub struct Mapping<'a> {
    node: &'a MarkedMappingNode,
    pub path: YamlPath,
    used: HashSet<&'a str>,
    paths: Vec<YamlPath>,
}

impl<'a> Mapping<'a> {
    pub fn new(node: &'a MarkedMappingNode, path: YamlPath) -> Self {
        Mapping {
            node,
            path,
            used: HashSet::new(),
            paths: Vec::new(),
        }
    }

    pub fn span(&self) -> &'a Span {
        self.node.span()
    }

    /// The value under `key` with its path, or `None` when absent or null.
    pub fn get(&mut self, key: &'a str) -> Option<(&'a Node, YamlPath)> {
        self.used.insert(key);
        let node = self.node.get_node(key)?;
        if is_null(node) {
            return None;
        }
        let path = self.path.key(key);
        self.paths.push(path.clone());
        Some((node, path))
    }

    /// Every entry, for mappings whose keys are data (metadata, settings).
    pub fn entries(&self) -> impl Iterator<Item = (&'a MarkedScalarNode, &'a Node)> {
        self.node.iter()
    }

    pub fn finish(self, report: &mut Report, unknown: Unknown) {
        for key in self.node.keys() {
            if self.used.contains(key.as_str()) {
                continue;
            }
            let path = self.path.key(key.as_str());
            let known: Vec<&str> = self.used.iter().copied().collect();
            let hint = closest(key.as_str(), &known)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            match unknown {
                Unknown::Error => {
                    report.error(&path, Some(key.span()), format!("unknown key{hint}"))
                }
                Unknown::Warn => report.warning(
                    &path,
                    Some(key.span()),
                    format!("unknown key, ignored{hint}"),
                ),
                Unknown::Ignore => {}
            }
        }
    }
}

/// An unquoted empty scalar, `~` or `null`: YAML's way of saying "absent".
pub fn is_null(node: &Node) -> bool {
    match node {
        Node::Scalar(s) => {
            s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
        }
        _ => false,
    }
}

fn kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a single value",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

pub fn mapping<'a>(node: &'a Node, path: YamlPath, report: &mut Report) -> Option<Mapping<'a>> {
    match node {
        Node::Mapping(m) => Some(Mapping::new(m, path)),
        other => {
            report.error(
                &path,
                Some(other.span()),
                format!(
                    "expected a mapping (key: value lines), found {}",
                    kind(other)
                ),
            );
            None
        }
    }
}

pub fn sequence<'a>(node: &'a Node, path: &YamlPath, report: &mut Report) -> Option<&'a [Node]> {
    match node {
        Node::Sequence(s) => Some(s.as_slice()),
        other => {
            report.error(
                path,
                Some(other.span()),
                format!("expected a list, found {}", kind(other)),
            );
            None
        }
    }
}

pub fn string(node: &Node, path: &YamlPath, report: &mut Report) -> Option<String> {
    match node {
        Node::Scalar(s) => Some(s.as_str().to_string()),
        other => {
            report.error(
                path,
                Some(other.span()),
                format!("expected a single value, found {}", kind(other)),
            );
            None
        }
    }
}

pub fn boolean(node: &Node, path: &YamlPath, report: &mut Report) -> Option<bool> {
    let text = string(node, path, report)?;
    match text.as_str() {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        other => {
            report.error(
                path,
                Some(node.span()),
                format!("expected true or false, found `{other}`"),
            );
            None
        }
    }
}

pub fn duration(node: &Node, path: &YamlPath, report: &mut Report) -> Option<Duration> {
    let text = string(node, path, report)?;
    match parse_duration(&text) {
        Ok(d) => Some(d),
        Err(message) => {
            report.error(path, Some(node.span()), message);
            None
        }
    }
}

pub fn size(node: &Node, path: &YamlPath, report: &mut Report) -> Option<u64> {
    let text = string(node, path, report)?;
    match parse_size(&text) {
        Ok(n) => Some(n),
        Err(message) => {
            report.error(path, Some(node.span()), message);
            None
        }
    }
}

/// A mapping of plain values, such as `metadata: {env: dev}`.
pub fn string_map(
    node: &Node,
    path: &YamlPath,
    report: &mut Report,
) -> Option<BTreeMap<String, String>> {
    let map = mapping(node, path.clone(), report)?;
    let mut out = BTreeMap::new();
    for (key, value) in map.entries() {
        let value_path = path.key(key.as_str());
        if key.as_str().is_empty() {
            report.error(&value_path, Some(key.span()), "empty key");
            continue;
        }
        let text = if is_null(value) {
            String::new()
        } else {
            match string(value, &value_path, report) {
                Some(text) => text,
                None => continue,
            }
        };
        out.insert(key.as_str().to_string(), text);
    }
    Some(out)
}

/// The known key nearest to a misspelt one, for "did you mean".
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_yaml() {
        let p = YamlPath::default()
            .key("agent")
            .key("instances")
            .index(1)
            .key("endpoints");
        assert_eq!(p.to_string(), "agent.instances[1].endpoints");
    }

    #[test]
    fn suggestions_for_typos() {
        assert_eq!(
            closest("retryIntervall", &["retryInterval", "ttl"]),
            Some("retryInterval")
        );
        assert_eq!(closest("keepalive", &["keepAlive"]), Some("keepAlive"));
        assert_eq!(closest("zzz", &["keepAlive"]), None);
    }
}
