//! One setting read from the file, still carrying where it came from (its
//! YAML path and line), so each rule about it is one chained call that
//! records its own error: `cfg.duration("ttl").min(MIN_TTL).or(DEFAULT_TTL)`.
//!
//! A setting is absent (the key is missing or null), unreadable (wrong type
//! or unparsable: the reader already reported it, the value is gone), or
//! read. A failed check reports and marks it invalid but keeps the value, so
//! rules across keys still see what was written; later checks on it are
//! skipped, so one key gets one error. An invalid value can never reach a
//! [`Config`](super::Config): every failed check adds an error, and a file
//! with errors is refused as a whole.

use std::fmt::Debug;
use std::ops::RangeInclusive;
use std::time::Duration;

use super::report::{Report, YamlPath};

/// A value read from the config file (or not), with its path and line.
pub struct Field<'a, T> {
    value: Option<T>,
    present: bool,
    invalid: bool,
    path: YamlPath,
    line: Option<usize>,
    report: &'a Report,
}

impl<'a, T> Field<'a, T> {
    /// A key that was written: `value` is `None` when it could not be read
    /// (the reader has reported why).
    pub(super) fn read(
        value: Option<T>,
        path: YamlPath,
        line: Option<usize>,
        report: &'a Report,
    ) -> Self {
        Field {
            value,
            present: true,
            invalid: false,
            path,
            line,
            report,
        }
    }

    /// A missing key; its errors point at the enclosing mapping's line.
    pub(super) fn absent(path: YamlPath, line: Option<usize>, report: &'a Report) -> Self {
        Field {
            value: None,
            present: false,
            invalid: false,
            path,
            line,
            report,
        }
    }

    pub fn is_absent(&self) -> bool {
        !self.present
    }

    /// The value as read, if any; even when a check failed (see the module doc).
    pub fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// Reports a problem with this setting (the rule is the caller's).
    pub fn error(&self, message: impl Into<String>) {
        self.report.error(&self.path, self.line, message);
    }

    /// Applies a rule: an `Err` is reported here and marks the value invalid.
    /// Skipped when there is no value or an earlier check failed.
    pub fn check(mut self, rule: impl FnOnce(&T) -> Result<(), String>) -> Self {
        if let Some(value) = &self.value
            && !self.invalid
            && let Err(message) = rule(value)
        {
            self.error(message);
            self.invalid = true;
        }
        self
    }

    /// Applies an advisory rule to a valid value: a `Some` is reported here
    /// as a warning and the value is kept.
    pub fn warn(self, rule: impl FnOnce(&T) -> Option<String>) -> Self {
        if let Some(value) = &self.value
            && !self.invalid
            && let Some(message) = rule(value)
        {
            self.report.warning(&self.path, self.line, message);
        }
        self
    }

    /// Converts the value; an `Err` is reported here and leaves no value.
    pub fn parse<U>(self, convert: impl FnOnce(T) -> Result<U, String>) -> Field<'a, U> {
        let value = match self.value {
            Some(value) if !self.invalid => match convert(value) {
                Ok(converted) => Some(converted),
                Err(message) => {
                    self.report.error(&self.path, self.line, message);
                    None
                }
            },
            _ => None,
        };
        Field {
            value,
            present: self.present,
            invalid: self.invalid,
            path: self.path,
            line: self.line,
            report: self.report,
        }
    }

    /// Converts the value with a function that cannot fail.
    pub fn map<U>(self, convert: impl FnOnce(T) -> U) -> Field<'a, U> {
        Field {
            value: self.value.map(convert),
            present: self.present,
            invalid: self.invalid,
            path: self.path,
            line: self.line,
            report: self.report,
        }
    }

    /// Drops a value the rest of the chain should treat as not written
    /// (such as an empty namespace, which means the default).
    pub fn filter(mut self, keep: impl FnOnce(&T) -> bool) -> Self {
        self.value = self.value.filter(keep);
        self
    }

    /// Uses `value` when the key is absent or unreadable; later checks apply
    /// to it as to a written value, and report at this key.
    pub fn default(mut self, value: T) -> Self {
        self.value.get_or_insert(value);
        self
    }

    /// The value, or `None` when absent or unreadable.
    pub fn value(self) -> Option<T> {
        self.value
    }

    /// The value, or `default` when absent or unreadable.
    pub fn or(self, default: T) -> T {
        self.value.unwrap_or(default)
    }

    pub fn or_default(self) -> T
    where
        T: Default,
    {
        self.value.unwrap_or_default()
    }

    /// The value only if every check passed: for lists that leave out the
    /// entries in error before checking them together.
    pub fn valid(self) -> Option<T> {
        if self.invalid { None } else { self.value }
    }

    /// The value; an absent key is reported with `message`.
    pub fn required(self, message: &str) -> Option<T> {
        if !self.present {
            self.error(message);
        }
        self.value
    }
}

impl<'a, T: PartialOrd + Debug> Field<'a, T> {
    /// `{value:?} is below the minimum of {min:?}`.
    pub fn min(self, min: T) -> Self {
        self.check(|value| {
            if *value < min {
                Err(format!("{value:?} is below the minimum of {min:?}"))
            } else {
                Ok(())
            }
        })
    }

    /// Inside `range`, or `message`.
    pub fn within(self, range: RangeInclusive<T>, message: &str) -> Self {
        self.check(|value| {
            if range.contains(value) {
                Ok(())
            } else {
                Err(message.to_string())
            }
        })
    }
}

impl<'a> Field<'a, Duration> {
    /// A timeout of zero would fire before anything could happen.
    pub fn nonzero(self) -> Self {
        self.check(|d| {
            if d.is_zero() {
                Err("must be longer than 0".into())
            } else {
                Ok(())
            }
        })
    }
}

impl<'a> Field<'a, std::collections::BTreeMap<String, String>> {
    /// Applies `rule` to the entry under `key` if there is one; an error is
    /// reported at `path.key` on this mapping's line.
    pub fn check_entry(mut self, key: &str, rule: impl FnOnce(&str) -> Result<(), String>) -> Self {
        if let Some(entry) = self.value.as_ref().and_then(|map| map.get(key))
            && !self.invalid
            && let Err(message) = rule(entry)
        {
            self.report.error(&self.path.key(key), self.line, message);
            self.invalid = true;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> YamlPath {
        YamlPath::default().key("agent").key("timeout")
    }

    fn issues(report: Report) -> Vec<String> {
        let (errors, _) = report.into_issues();
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_value_below_the_minimum_is_reported_where_it_was_written() {
        let report = Report::default();
        let field = Field::read(Some(Duration::from_millis(5)), path(), Some(7), &report)
            .min(Duration::from_millis(10));
        assert_eq!(field.get(), Some(&Duration::from_millis(5)));
        assert_eq!(field.valid(), None);
        assert_eq!(
            issues(report),
            ["agent.timeout: 5ms is below the minimum of 10ms (line 7)"]
        );
    }

    #[test]
    fn values_that_pass_come_through_and_defaults_fill_the_gaps() {
        let report = Report::default();
        let d = Duration::from_secs;
        let ok = Field::read(Some(d(3)), path(), Some(1), &report)
            .min(d(1))
            .nonzero();
        assert_eq!(ok.or(d(9)), d(3));
        assert_eq!(
            Field::absent(path(), Some(1), &report).min(d(1)).or(d(9)),
            d(9)
        );
        let unreadable = Field::<Duration>::read(None, path(), Some(1), &report);
        assert_eq!(unreadable.nonzero().or(d(9)), d(9));
        assert!(issues(report).is_empty());
    }

    #[test]
    fn one_key_gets_one_error_however_many_rules_it_breaks() {
        let report = Report::default();
        let checked = Field::read(Some(0u64), path(), Some(2), &report)
            .within(1..=5, "must be between 1 and 5")
            .min(3)
            .check(|_| Err("never reached".into()));
        assert_eq!(checked.value(), Some(0));
        assert_eq!(
            issues(report),
            ["agent.timeout: must be between 1 and 5 (line 2)"]
        );
    }

    #[test]
    fn errors_accumulate_across_settings_in_order() {
        let report = Report::default();
        Field::read(Some(Duration::ZERO), path(), Some(3), &report).nonzero();
        let other = YamlPath::default().key("agent").key("size");
        Field::read(Some("x".to_string()), other, Some(4), &report).parse(|s| {
            s.parse::<u64>()
                .map_err(|_| format!("`{s}` is not a number"))
        });
        assert_eq!(
            issues(report),
            [
                "agent.timeout: must be longer than 0 (line 3)",
                "agent.size: `x` is not a number (line 4)"
            ]
        );
    }

    #[test]
    fn required_reports_only_a_missing_key() {
        let report = Report::default();
        assert_eq!(
            Field::<u8>::absent(path(), Some(1), &report).required("missing"),
            None
        );
        // Written but unreadable: the reader said why; "missing" would be wrong.
        assert_eq!(
            Field::<u8>::read(None, path(), Some(2), &report).required("missing"),
            None
        );
        assert_eq!(
            Field::read(Some(1u8), path(), Some(3), &report).required("missing"),
            Some(1)
        );
        assert_eq!(issues(report), ["agent.timeout: missing (line 1)"]);
    }

    #[test]
    fn a_default_is_checked_like_a_written_value() {
        let report = Report::default();
        let dir = Field::<String>::absent(path(), Some(5), &report)
            .default("plugins".into())
            .check(|d| Err(format!("{d} is not a folder")));
        assert_eq!(dir.value().as_deref(), Some("plugins"));
        assert_eq!(
            issues(report),
            ["agent.timeout: plugins is not a folder (line 5)"]
        );
    }

    #[test]
    fn entry_rules_report_under_the_entry_key() {
        let report = Report::default();
        let map = std::collections::BTreeMap::from([("id".to_string(), "a/b".to_string())]);
        let metadata = YamlPath::default().key("metadata");
        Field::read(Some(map), metadata, Some(8), &report)
            .check_entry("id", |id| Err(format!("`{id}` has a slash")))
            .check_entry("absent", |_| Err("never reached".into()));
        assert_eq!(issues(report), ["metadata.id: `a/b` has a slash (line 8)"]);
    }
}
