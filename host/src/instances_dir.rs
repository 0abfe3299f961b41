//! `agent.instancesDir`: a folder of `*.yaml` (or `*.yml`) files, each a list of
//! instances in the `agent.instances[]` schema, applied live. This module
//! owns what each file contributes (its last good content); the supervisor
//! owns the watch and the debounce, and starts [`scan`] on a blocking thread
//! (reading and parsing never happen on its loop). [`InstancesDir::apply`]
//! then decides, file by file: new or edited and valid → its instances;
//! gone → none; invalid, or holding an instance another source already
//! registers → refused, its last good instances stay.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use crate::config::{self, CheckConfig, CheckTiming, InstancesFile};
use crate::record::Instance;
use crate::watch::{self as folder_watch, Watched};

/// A file larger than this is refused unread (a thousand instances take
/// about 200 KiB).
const MAX_FILE_BYTES: u64 = 4 << 20;

/// What one scan of the folder found. Built off the loop.
#[derive(Debug)]
pub struct DirScan {
    /// The folder scanned (a reload may have moved it since).
    pub dir: PathBuf,
    /// Every `*.yaml`/`*.yml` file and what it holds, or why it cannot be used.
    pub files: BTreeMap<PathBuf, Result<InstancesFile, Vec<String>>>,
    /// The folder could not be listed (other than gone): nothing changes.
    pub error: Option<String>,
    /// The folders to watch for it now (symlinks followed).
    pub watch: BTreeSet<PathBuf>,
}

/// Reads and validates every `*.yaml` and `*.yml` file in `dir`. Blocking. A folder
/// that does not exist holds no files.
pub fn scan(dir: &Path, defaults: &CheckTiming) -> DirScan {
    let watch = folder_watch::folders_to_watch(dir, Watched::Folder);
    let mut files = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return DirScan {
                dir: dir.to_path_buf(),
                files,
                error: None,
                watch,
            };
        }
        Err(error) => {
            return DirScan {
                dir: dir.to_path_buf(),
                files,
                error: Some(format!("cannot read {}: {error}", dir.display())),
                watch,
            };
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Editors' and `kubectl`'s temporary files start with a dot.
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if !yaml || name.starts_with('.') || !path.is_file() {
            continue;
        }
        files.insert(path.clone(), read_file(&path, defaults));
    }
    DirScan {
        dir: dir.to_path_buf(),
        files,
        error: None,
        watch,
    }
}

fn read_file(path: &Path, defaults: &CheckTiming) -> Result<InstancesFile, Vec<String>> {
    let mut text = String::new();
    let read = std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text));
    match read {
        Err(error) => return Err(vec![format!("cannot read it: {error}")]),
        Ok(n) if n as u64 > MAX_FILE_BYTES => {
            return Err(vec![format!("larger than {} MiB", MAX_FILE_BYTES >> 20)]);
        }
        Ok(_) => {}
    }
    config::parse_instances(&text, defaults)
        .map_err(|issues| issues.iter().map(ToString::to_string).collect())
}

/// What became of one file in an [`InstancesDir::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Its instances are now the ones in force.
    Applied,
    /// Gone: its instances are deregistered.
    Removed,
    /// Invalid or clashing: its last good instances (if any) stay.
    Refused(Vec<String>),
}

/// The instances each file of the folder contributes.
#[derive(Debug, Default)]
pub struct InstancesDir {
    /// Each file's instances in force: its last content that was valid and
    /// clashed with no other source.
    files: BTreeMap<PathBuf, InstancesFile>,
    /// Why each refused file was refused, so a refusal is logged once
    /// until the file or the reason changes.
    refused: BTreeMap<PathBuf, Vec<String>>,
    /// The folder has been scanned at least once.
    scanned: bool,
}

impl InstancesDir {
    pub fn scanned(&self) -> bool {
        self.scanned
    }

    /// Every refused file and why (its last good instances stay in force).
    pub fn refused(&self) -> impl Iterator<Item = (&Path, &[String])> {
        self.refused
            .iter()
            .map(|(path, why)| (path.as_path(), &why[..]))
    }

    /// Every instance in force, in file order: (file, index, instance,
    /// its checks).
    pub fn instances(&self) -> impl Iterator<Item = (&Path, usize, &Instance, &[CheckConfig])> {
        self.files.iter().flat_map(|(path, file)| {
            file.instances
                .iter()
                .zip(&file.checks)
                .enumerate()
                .map(move |(i, (instance, checks))| (path.as_path(), i, instance, &checks[..]))
        })
    }

    /// Takes a scan. `key` gives an instance's registry key; `taken` holds
    /// the keys other sources (the config file) already register, with a
    /// description of where. A file whose instance clashes with another
    /// source (or another file before it) is refused, and names both.
    /// Returns what became of each file that changed (an unchanged file is
    /// not listed).
    pub fn apply(
        &mut self,
        scan: DirScan,
        key: impl Fn(&Instance) -> String,
        taken: &BTreeMap<String, String>,
    ) -> BTreeMap<PathBuf, FileOutcome> {
        let mut outcomes = BTreeMap::new();
        if let Some(error) = scan.error {
            error!(dir = %scan.dir.display(), %error, "cannot read the instances folder; its instances stay as they are");
            return outcomes;
        }
        self.scanned = true;
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .chain(self.refused.keys())
            .filter(|path| !scan.files.contains_key(*path))
            .cloned()
            .collect();
        for path in gone {
            self.refused.remove(&path);
            if let Some(file) = self.files.remove(&path) {
                info!(path = %path.display(), instances = file.instances.len(), "instances file removed: deregistering its instances");
                outcomes.insert(path, FileOutcome::Removed);
            }
        }
        for (path, read) in scan.files {
            let result = read.and_then(|file| {
                self.clashes(&path, &file, &key, taken)
                    .map_or(Ok(file), Err)
            });
            match result {
                Ok(file) => {
                    self.refused.remove(&path);
                    if self.files.get(&path) == Some(&file) {
                        continue;
                    }
                    for warning in &file.warnings {
                        warn!(path = %path.display(), %warning, "instances file warning");
                    }
                    info!(path = %path.display(), instances = file.instances.len(), "instances file applied");
                    self.files.insert(path.clone(), file);
                    outcomes.insert(path, FileOutcome::Applied);
                }
                Err(problems) => {
                    if self.refused.get(&path) != Some(&problems) {
                        let kept = self.files.get(&path).map_or(0, |f| f.instances.len());
                        error!(path = %path.display(), errors = problems.len(), kept_instances = kept,
                            "instances file refused; its last good instances stay");
                        for problem in &problems {
                            error!(path = %path.display(), "instances file error: {problem}");
                        }
                        self.refused.insert(path.clone(), problems.clone());
                        outcomes.insert(path, FileOutcome::Refused(problems));
                    }
                }
            }
        }
        outcomes
    }

    /// The instances of `file` (at `path`) another source already holds:
    /// the config (`taken`), or another file's instances in force.
    fn clashes(
        &self,
        path: &Path,
        file: &InstancesFile,
        key: &impl Fn(&Instance) -> String,
        taken: &BTreeMap<String, String>,
    ) -> Option<Vec<String>> {
        let mut others: BTreeMap<String, String> = taken.clone();
        for (other, i, instance, _) in self.instances() {
            if other != path {
                others.insert(key(instance), format!("{} [{i}]", other.display()));
            }
        }
        let problems: Vec<String> = file
            .instances
            .iter()
            .enumerate()
            .filter_map(|(i, instance)| {
                let key = key(instance);
                let holder = others.get(&key)?;
                Some(format!(
                    "[{i}]: the same instance as {holder} ({}/{}, key {key}): this file is refused",
                    instance.namespace, instance.name
                ))
            })
            .collect();
        (!problems.is_empty()).then_some(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> CheckTiming {
        CheckTiming::default()
    }

    fn key(instance: &Instance) -> String {
        crate::record::registry_key("/p", instance)
    }

    const A: &str =
        "- name: a\n  version: \"1\"\n  endpoints: [{scheme: http, address: \"10.0.0.1:1\"}]\n";
    const B: &str = "- name: b\n  endpoints: [{scheme: http, address: \"10.0.0.1:2\"}]\n";

    fn names(dir: &InstancesDir) -> Vec<String> {
        dir.instances().map(|(_, _, i, _)| i.name.clone()).collect()
    }

    #[test]
    fn files_come_change_break_and_go() {
        let folder = tempfile::tempdir().unwrap();
        let one = folder.path().join("one.yaml");
        let mut dir = InstancesDir::default();
        let none = BTreeMap::new();
        assert!(!dir.scanned());

        std::fs::write(&one, A).unwrap();
        std::fs::write(folder.path().join("notes.txt"), "not yaml").unwrap();
        std::fs::write(folder.path().join(".one.yaml.swp"), "junk").unwrap();
        let outcome = dir.apply(scan(folder.path(), &defaults()), key, &none);
        assert_eq!(outcome[&one], FileOutcome::Applied);
        assert_eq!(outcome.len(), 1);
        assert!(dir.scanned());
        assert_eq!(names(&dir), ["a"]);

        // Unchanged: nothing to report.
        assert!(
            dir.apply(scan(folder.path(), &defaults()), key, &none)
                .is_empty()
        );

        std::fs::write(&one, format!("{A}{B}")).unwrap();
        dir.apply(scan(folder.path(), &defaults()), key, &none);
        assert_eq!(names(&dir), ["a", "b"]);

        // Broken: refused with path and line; the last good content stays,
        // and the refusal is reported once.
        std::fs::write(&one, format!("{A}- name: c\n  endpoints: []\n")).unwrap();
        let outcome = dir.apply(scan(folder.path(), &defaults()), key, &none);
        match &outcome[&one] {
            FileOutcome::Refused(problems) => assert_eq!(
                problems,
                &["[1].endpoints: at least one endpoint (line 5)".to_string()]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(names(&dir), ["a", "b"]);
        assert!(
            dir.apply(scan(folder.path(), &defaults()), key, &none)
                .is_empty()
        );

        // Not a list; empty.
        std::fs::write(&one, "name: a\n").unwrap();
        let outcome = dir.apply(scan(folder.path(), &defaults()), key, &none);
        assert!(
            matches!(&outcome[&one], FileOutcome::Refused(p) if p[0].contains("must be a list of instances") && p[0].ends_with("(line 1)")),
            "{outcome:?}"
        );
        std::fs::write(&one, "").unwrap();
        let outcome = dir.apply(scan(folder.path(), &defaults()), key, &none);
        assert!(
            matches!(&outcome[&one], FileOutcome::Refused(p) if p[0].contains("the file is empty")),
            "{outcome:?}"
        );
        assert_eq!(names(&dir), ["a", "b"]);

        std::fs::remove_file(&one).unwrap();
        let outcome = dir.apply(scan(folder.path(), &defaults()), key, &none);
        assert_eq!(outcome[&one], FileOutcome::Removed);
        assert!(names(&dir).is_empty());
    }

    #[test]
    fn the_same_instance_in_two_sources_refuses_the_later_and_names_both() {
        let folder = tempfile::tempdir().unwrap();
        let (one, two) = (
            folder.path().join("one.yaml"),
            folder.path().join("two.yaml"),
        );
        let mut dir = InstancesDir::default();
        std::fs::write(&one, A).unwrap();
        let none = BTreeMap::new();
        dir.apply(scan(folder.path(), &defaults()), key, &none);

        std::fs::write(&two, format!("{B}{A}")).unwrap();
        let outcome = dir.apply(scan(folder.path(), &defaults()), key, &none);
        match &outcome[&two] {
            FileOutcome::Refused(problems) => {
                assert!(
                    problems[0].starts_with(&format!(
                        "[1]: the same instance as {} [0] (default/a",
                        one.display()
                    )),
                    "{problems:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(names(&dir), ["a"]);

        // Held by the config: the file is refused, naming the config.
        let instance = config::parse_instances(B, &defaults())
            .unwrap()
            .instances
            .remove(0);
        let taken = BTreeMap::from([(key(&instance), "agent.yaml agent.instances[0]".to_string())]);
        std::fs::write(&two, B).unwrap();
        let outcome = dir.apply(scan(folder.path(), &defaults()), key, &taken);
        assert!(
            matches!(&outcome[&two], FileOutcome::Refused(p) if p[0].contains("as agent.yaml agent.instances[0]")),
            "{outcome:?}"
        );
        // Once the config lets go of it, the file applies.
        let outcome = dir.apply(scan(folder.path(), &defaults()), key, &none);
        assert_eq!(outcome[&two], FileOutcome::Applied);
        assert_eq!(names(&dir), ["a", "b"]);
    }
}
