//! `agent.instancesDir`: the folder, its last scan and its input.

use std::path::PathBuf;

use crate::agent::input::{Folder, FolderInput, Found, Scanner};
use crate::config;
use crate::instances_dir::{self, InstancesDir};

/// `agent.instancesDir` while it is configured.
pub(super) struct InstancesFolder {
    pub dir: PathBuf,
    /// `agent.checks` when the folder was set up: a change scans again.
    pub defaults: config::CheckTiming,
    pub state: InstancesDir,
    pub input: FolderInput,
}

impl InstancesFolder {
    pub fn new(dir: PathBuf, defaults: config::CheckTiming, scanner: &Scanner) -> InstancesFolder {
        let input = FolderInput::new(Folder::Instances, &dir);
        let mut folder = InstancesFolder {
            dir,
            defaults,
            state: InstancesDir::default(),
            input,
        };
        folder.scan(scanner);
        folder
    }

    /// Scans beside the loop (one at a time; one asked for meanwhile runs
    /// after it).
    pub fn scan(&mut self, scanner: &Scanner) {
        let (dir, defaults) = (self.dir.clone(), self.defaults.clone());
        self.input.scan(false, scanner, move |_| {
            Found::Instances(instances_dir::scan(&dir, &defaults))
        });
    }
}
