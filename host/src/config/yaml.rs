//! The only code that walks YAML: a cursor over the parsed tree that
//! remembers where it is (`agent.instances[1].endpoints`, line 23) and
//! collects problems instead of stopping at the first, so one run of `check`
//! names every mistake in the file. Readers ([`Section::duration`] and the
//! like) hand back a [`Field`]: the value with its path and line, so the
//! rules in `config.rs` never touch a YAML type.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use super::field::Field;
use super::report::{ConfigIssue, Report, YamlPath};
use super::secret::Secret;
use super::units::{parse_duration, parse_size};

fn line_of(span: &Span) -> Option<usize> {
    span.start().map(|m| m.line())
}

/// What to do with keys nobody asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    Error,
    Warn,
    Ignore,
}

/// A parsed file whose top level is a mapping, or a list for
/// [`Document::parse_list`] (the parser refuses anything else).
pub struct Document(Node);

impl Document {
    /// Parses `text`; a syntax error becomes the one issue of the file.
    pub fn parse(text: &str) -> Result<Document, ConfigIssue> {
        let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
        marked_yaml::parse_yaml_with_options(0, text, options)
            .map(Document)
            .map_err(|e| syntax_issue(&e))
    }

    /// Parses `text` whose top level is a list (a file of the instances
    /// folder).
    pub fn parse_list(text: &str) -> Result<Document, ConfigIssue> {
        let options = marked_yaml::LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .toplevel_sequence();
        marked_yaml::parse_yaml_with_options(0, text, options)
            .map(Document)
            .map_err(|e| syntax_issue(&e))
    }

    pub fn root<'a>(&'a self, report: &'a Report) -> Value<'a> {
        Value {
            node: &self.0,
            path: YamlPath::default(),
            report,
        }
    }
}

fn syntax_issue(error: &marked_yaml::LoadError) -> ConfigIssue {
    use marked_yaml::LoadError as E;
    let (line, message) = match error {
        E::TopLevelMustBeMapping(m) => (
            Some(m.line()),
            "the file must be a mapping with `yggdrasil:` and `agent:` sections".to_string(),
        ),
        E::TopLevelMustBeSequence(m) => (
            Some(m.line()),
            "the file must be a list of instances (`- name: …` items)".to_string(),
        ),
        E::UnexpectedAnchor(m) => (
            Some(m.line()),
            "YAML anchors and aliases are not supported".into(),
        ),
        E::UnexpectedTag(m) => (
            Some(m.line()),
            "YAML tags (`!foo`) are not supported".into(),
        ),
        E::MappingKeyMustBeScalar(m) => {
            (Some(m.line()), "mapping keys must be plain values".into())
        }
        E::DuplicateKey(inner) => (
            inner.key.span().start().map(|m| m.line()),
            format!(
                "duplicate key `{}` (first seen on line {})",
                inner.key.as_str(),
                inner.prev_key.span().start().map(|m| m.line()).unwrap_or(0)
            ),
        ),
        E::ScanError(m, e) => (Some(m.line()), format!("YAML syntax error: {e}")),
    };
    ConfigIssue {
        path: "(syntax)".into(),
        line,
        message,
    }
}

/// A mapping being read. Keys asked for are remembered (present or not),
/// and [`Section::finish`] deals with the rest under an [`Unknown`] policy.
/// Every reader returns a [`Field`]: an absent key's errors point at the
/// mapping's line.
pub struct Section<'a> {
    node: &'a MarkedMappingNode,
    path: YamlPath,
    used: HashSet<&'a str>,
    report: &'a Report,
}

impl<'a> Section<'a> {
    /// Reports something about the mapping as a whole that works but may
    /// not do what the user means, at the mapping's line.
    pub fn warning(&self, message: impl Into<String>) {
        (self.report).warning(&self.path, line_of(self.node.span()), message);
    }

    /// The line `key` is written on (its mapping's when absent), for
    /// messages about it raised after it was read.
    pub fn key_line(&self, key: &str) -> Option<usize> {
        match self.node.get_node(key) {
            Some(node) => line_of(node.span()),
            None => line_of(self.node.span()),
        }
    }

    /// `path.key`, for messages that name a neighbouring setting.
    pub fn key_path(&self, key: &str) -> YamlPath {
        self.path.key(key)
    }

    /// The value under `key`, or `None` when absent or null.
    pub fn get(&mut self, key: &'a str) -> Option<Value<'a>> {
        self.used.insert(key);
        let node = self.node.get_node(key)?;
        if is_null(node) {
            return None;
        }
        Some(Value {
            node,
            path: self.path.key(key),
            report: self.report,
        })
    }

    fn field<T>(
        &mut self,
        key: &'a str,
        read: impl FnOnce(Value<'a>) -> Field<'a, T>,
    ) -> Field<'a, T> {
        match self.get(key) {
            Some(value) => read(value),
            None => Field::absent(self.path.key(key), line_of(self.node.span()), self.report),
        }
    }

    pub fn string(&mut self, key: &'a str) -> Field<'a, String> {
        self.field(key, |v| v.string())
    }

    /// A value where null is written but empty (`tcp: ~` reads as `""`):
    /// absent only when the key is missing. A null is placed on its key's
    /// line (a bare `tcp:` has its empty value on the next line).
    pub fn string_or_empty(&mut self, key: &'a str) -> Field<'a, String> {
        self.used.insert(key);
        let path = self.path.key(key);
        match self.node.iter().find(|(k, _)| k.as_str() == key) {
            Some((k, node)) if is_null(node) => {
                Field::read(Some(String::new()), path, line_of(k.span()), self.report)
            }
            Some((_, node)) => Value {
                node,
                path,
                report: self.report,
            }
            .string(),
            None => Field::absent(path, line_of(self.node.span()), self.report),
        }
    }

    /// A whole number (`3`), such as a count of attempts.
    pub fn count(&mut self, key: &'a str) -> Field<'a, u32> {
        self.field(key, |v| v.count())
    }

    /// A credential: nothing that reports on it can print it.
    pub fn secret(&mut self, key: &'a str) -> Field<'a, Secret> {
        self.string(key).map(Secret::new)
    }

    /// A file system path, resolved against `base` (the config file's folder).
    pub fn path(&mut self, key: &'a str, base: &Path) -> Field<'a, PathBuf> {
        self.string(key).map(|text| base.join(text))
    }

    pub fn boolean(&mut self, key: &'a str) -> Field<'a, bool> {
        self.field(key, |v| v.boolean())
    }

    pub fn duration(&mut self, key: &'a str) -> Field<'a, Duration> {
        self.field(key, |v| v.duration())
    }

    pub fn size(&mut self, key: &'a str) -> Field<'a, u64> {
        self.field(key, |v| v.size())
    }

    pub fn string_map(&mut self, key: &'a str) -> Field<'a, BTreeMap<String, String>> {
        self.field(key, |v| v.string_map())
    }

    pub fn section(&mut self, key: &'a str) -> Field<'a, Section<'a>> {
        self.field(key, |v| v.section())
    }

    pub fn list(&mut self, key: &'a str) -> Field<'a, List<'a>> {
        self.field(key, |v| v.list())
    }

    /// Reports `key` as missing from this mapping (for rules across keys,
    /// such as "certFile is set but keyFile is missing").
    pub fn missing(&self, key: &str, message: impl Into<String>) {
        self.report
            .error(&self.path.key(key), line_of(self.node.span()), message);
    }

    /// Every entry, for mappings whose keys are data (plugin settings): the
    /// key as a field at its own line, and its value.
    pub fn entries(&self) -> impl Iterator<Item = (Field<'a, String>, Value<'a>)> + '_ {
        self.node.iter().map(|(key, node)| {
            let path = self.path.key(key.as_str());
            let name = Field::read(
                Some(key.as_str().to_string()),
                path.clone(),
                line_of(key.span()),
                self.report,
            );
            (
                name,
                Value {
                    node,
                    path,
                    report: self.report,
                },
            )
        })
    }

    /// Whether the mapping holds a key no reader has asked for.
    pub fn has_unread(&self) -> bool {
        (self.node.keys()).any(|key| !self.used.contains(key.as_str()))
    }

    pub fn finish(self, unknown: Unknown) {
        self.finish_as(unknown, "unknown key");
    }

    /// [`Section::finish`], saying `what` each unknown key is (where the
    /// mapping's keys are data, such as a check's kind).
    pub fn finish_as(self, unknown: Unknown, what: &str) {
        for key in self.node.keys() {
            if self.used.contains(key.as_str()) {
                continue;
            }
            let path = self.path.key(key.as_str());
            let known: Vec<&str> = self.used.iter().copied().collect();
            let hint = closest(key.as_str(), &known)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            let line = line_of(key.span());
            match unknown {
                Unknown::Error => self.report.error(&path, line, format!("{what}{hint}")),
                Unknown::Warn => self
                    .report
                    .warning(&path, line, format!("{what}, ignored{hint}")),
                Unknown::Ignore => {}
            }
        }
    }
}

/// A list being read; its items are [`Value`]s at `path[i]`.
pub struct List<'a> {
    items: &'a [Node],
    at: Value<'a>,
}

impl<'a> List<'a> {
    pub fn yaml_path(&self) -> &YamlPath {
        &self.at.path
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Reports a problem with the list as a whole.
    pub fn error(&self, message: impl Into<String>) {
        self.at.error(message);
    }

    pub fn items(&self) -> impl Iterator<Item = Value<'a>> + '_ {
        self.items.iter().enumerate().map(|(i, node)| Value {
            node,
            path: self.at.path.index(i),
            report: self.at.report,
        })
    }
}

/// One written value (under a key or in a list) and where it is.
#[derive(Clone)]
pub struct Value<'a> {
    node: &'a Node,
    path: YamlPath,
    report: &'a Report,
}

impl<'a> Value<'a> {
    fn line(&self) -> Option<usize> {
        line_of(self.node.span())
    }

    /// Reports a problem with this value (a rule across values).
    pub fn error(&self, message: impl Into<String>) {
        self.report.error(&self.path, self.line(), message);
    }

    fn field<T>(&self, value: Option<T>) -> Field<'a, T> {
        Field::read(value, self.path.clone(), self.line(), self.report)
    }

    fn wrong_kind<T>(&self, expected: &str) -> Field<'a, T> {
        self.error(format!("expected {expected}, found {}", kind(self.node)));
        self.field(None)
    }

    pub fn section(&self) -> Field<'a, Section<'a>> {
        match self.node {
            Node::Mapping(node) => self.field(Some(Section {
                node,
                path: self.path.clone(),
                used: HashSet::new(),
                report: self.report,
            })),
            _ => self.wrong_kind("a mapping (key: value lines)"),
        }
    }

    /// [`section`](Self::section), with an example of the mapping wanted
    /// in the error (`grpc://…` written where `{scheme, address}` goes).
    pub fn section_like(&self, example: &str) -> Field<'a, Section<'a>> {
        match self.node {
            Node::Mapping(_) => self.section(),
            _ => self.wrong_kind(&format!("a mapping such as {example}")),
        }
    }

    pub fn list(&self) -> Field<'a, List<'a>> {
        match self.node {
            Node::Sequence(items) => self.field(Some(List {
                items: items.as_slice(),
                at: self.clone(),
            })),
            _ => self.wrong_kind("a list"),
        }
    }

    pub fn string(&self) -> Field<'a, String> {
        match self.node {
            Node::Scalar(s) => self.field(Some(s.as_str().to_string())),
            _ => self.wrong_kind("a single value"),
        }
    }

    pub fn boolean(&self) -> Field<'a, bool> {
        self.string().parse(|text| match text.as_str() {
            "true" | "True" | "TRUE" => Ok(true),
            "false" | "False" | "FALSE" => Ok(false),
            other => Err(format!("expected true or false, found `{other}`")),
        })
    }

    pub fn duration(&self) -> Field<'a, Duration> {
        self.string().parse(|text| parse_duration(&text))
    }

    pub fn size(&self) -> Field<'a, u64> {
        self.string().parse(|text| parse_size(&text))
    }

    pub fn count(&self) -> Field<'a, u32> {
        self.string().parse(|text| {
            (text.parse::<u32>()).map_err(|_| format!("expected a whole number, found `{text}`"))
        })
    }

    /// A mapping of plain values, such as `metadata: {env: dev}`; null is
    /// an empty one.
    pub fn string_map(&self) -> Field<'a, BTreeMap<String, String>> {
        if is_null(self.node) {
            return self.field(Some(BTreeMap::new()));
        }
        let Some(map) = self.section().value() else {
            return self.field(None);
        };
        let mut out = BTreeMap::new();
        for (key, value) in map.entries() {
            let Some(key) = key
                .check(|k| {
                    if k.is_empty() {
                        Err("empty key".into())
                    } else {
                        Ok(())
                    }
                })
                .valid()
            else {
                continue;
            };
            if let Some(text) = value.string_or_empty().value() {
                out.insert(key, text);
            }
        }
        self.field(Some(out))
    }

    fn string_or_empty(&self) -> Field<'a, String> {
        if is_null(self.node) {
            self.field(Some(String::new()))
        } else {
            self.string()
        }
    }
}

/// An unquoted empty scalar, `~` or `null`: YAML's way of saying "absent".
fn is_null(node: &Node) -> bool {
    match node {
        Node::Scalar(s) => {
            s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
        }
        _ => false,
    }
}

/// A document whose top level is a mapping as JSON: scalars become strings
/// (null stays null), so the readers see the same values again when the
/// JSON is read back (`ygg-agent register FILE` sends a YAML file this way).
pub fn to_json(text: &str) -> Result<serde_json::Value, ConfigIssue> {
    fn convert(node: &Node) -> serde_json::Value {
        match node {
            _ if is_null(node) => serde_json::Value::Null,
            Node::Scalar(s) => serde_json::Value::String(s.as_str().to_string()),
            Node::Sequence(items) => items.iter().map(convert).collect(),
            Node::Mapping(map) => map
                .iter()
                .map(|(key, value)| (key.as_str().to_string(), convert(value)))
                .collect(),
        }
    }
    Document::parse(text).map(|document| convert(&document.0))
}

fn kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a single value",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
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

    /// Reads `text` with `read` on its top-level section; the errors and
    /// warnings as `check` prints them.
    fn read(text: &str, read: impl FnOnce(&mut Section)) -> (Vec<String>, Vec<String>) {
        let document = Document::parse(text).unwrap();
        let report = Report::default();
        let mut top = document.root(&report).section().value().unwrap();
        read(&mut top);
        top.finish(Unknown::Warn);
        let (errors, warnings) = report.into_issues();
        let show = |issues: Vec<ConfigIssue>| issues.iter().map(ToString::to_string).collect();
        (show(errors), show(warnings))
    }

    #[test]
    fn a_missing_key_is_reported_at_its_path_on_the_mapping_line() {
        let (errors, _) = read("a: 1\nb:\n  c: ~\n  d: 2\n", |top| {
            let mut b = top.section("b").value().unwrap();
            // Null is absent, like a missing key.
            assert_eq!(b.string("c").required("missing (c)"), None);
            assert_eq!(b.string("e").required("missing (e)"), None);
            assert_eq!(b.string("d").required("missing (d)").as_deref(), Some("2"));
            b.finish(Unknown::Error);
        });
        assert_eq!(
            errors,
            ["b.c: missing (c) (line 3)", "b.e: missing (e) (line 3)"]
        );
    }

    #[test]
    fn values_of_the_wrong_kind_are_reported_where_written() {
        let text = "list: [1]\nmap: {k: v}\nflag: maybe\nwait: 5\nsize: lots\n";
        let (errors, _) = read(text, |top| {
            assert!(top.string("list").value().is_none());
            assert!(top.list("map").value().is_none());
            assert!(top.boolean("flag").value().is_none());
            assert!(top.duration("wait").value().is_none());
            assert!(top.size("size").value().is_none());
        });
        assert_eq!(
            errors,
            [
                "list: expected a single value, found a list (line 1)",
                "map: expected a list, found a mapping (line 2)",
                "flag: expected true or false, found `maybe` (line 3)",
                "wait: `5` has no unit (write e.g. `5s` or `5ms`) (line 4)",
                "size: `lots` is not a size (expected e.g. 32MiB) (line 5)",
            ]
        );
    }

    #[test]
    fn keys_nobody_asked_for_follow_the_policy() {
        for (unknown, errors, warnings) in [
            (Unknown::Error, 1, 0),
            (Unknown::Warn, 0, 1),
            (Unknown::Ignore, 0, 0),
        ] {
            let (e, w) = read("s: {interval: 1s, intervall: 2s}\n", |top| {
                let mut s = top.section("s").value().unwrap();
                assert!(s.duration("interval").value().is_some());
                s.finish(unknown);
            });
            assert_eq!((e.len(), w.len()), (errors, warnings), "{e:?} {w:?}");
            let expected = "s.intervall: unknown key";
            assert!(
                e.iter().chain(&w).all(|i| i.starts_with(expected)
                    && i.ends_with("(did you mean `interval`?) (line 1)"))
            );
        }
    }

    #[test]
    fn string_maps_and_data_keys() {
        let text = "m: {a: x, b: ~, '': y, c: [1]}\nn: ~\nsettings: {p: {k: v}, q: ~}\n";
        let (errors, _) = read(text, |top| {
            let m = top.string_map("m").value().unwrap();
            let expected = BTreeMap::from([("a".into(), "x".into()), ("b".into(), String::new())]);
            assert_eq!(m, expected);
            assert!(top.string_map("n").is_absent());
            let settings = top.section("settings").value().unwrap();
            let read: Vec<(String, BTreeMap<String, String>)> = (settings.entries())
                .map(|(name, value)| (name.or_default(), value.string_map().or_default()))
                .collect();
            assert_eq!(read[0].1["k"], "v");
            assert_eq!((read[1].0.as_str(), read[1].1.len()), ("q", 0));
        });
        assert_eq!(
            errors,
            [
                "m.: empty key (line 1)",
                "m.c: expected a single value, found a list (line 1)"
            ]
        );
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
