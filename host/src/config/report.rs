//! Problems found in a config file, with where they are: the YAML path
//! (`agent.instances[1].endpoints`) and the line. Every reader of the file
//! reports into one [`Report`], so `check` names every mistake at once.

use std::cell::RefCell;
use std::fmt;

/// One problem in the file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// YAML path such as `agent.instances[1].endpoints`.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

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

/// Errors and warnings found so far. Shared by every [`Section`], [`Value`]
/// and [`Field`] of one parse, which is why it fills through `&self`.
#[derive(Debug, Default)]
pub struct Report {
    errors: RefCell<Vec<ConfigIssue>>,
    warnings: RefCell<Vec<ConfigIssue>>,
}

impl Report {
    pub fn error(&self, path: &YamlPath, line: Option<usize>, message: impl Into<String>) {
        self.errors.borrow_mut().push(ConfigIssue {
            path: path.to_string(),
            line,
            message: message.into(),
        });
    }

    pub fn warning(&self, path: &YamlPath, line: Option<usize>, message: impl Into<String>) {
        self.warnings.borrow_mut().push(ConfigIssue {
            path: path.to_string(),
            line,
            message: message.into(),
        });
    }

    pub fn error_count(&self) -> usize {
        self.errors.borrow().len()
    }

    /// The errors and the warnings, each in the order they were found.
    pub fn into_issues(self) -> (Vec<ConfigIssue>, Vec<ConfigIssue>) {
        (self.errors.into_inner(), self.warnings.into_inner())
    }
}
