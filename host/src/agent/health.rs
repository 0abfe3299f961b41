//! Health: the running checks (a [`CheckHost`]), each instance's service
//! label, the `withheld` set (instances a critical check holds out of the
//! target) and the status rows built from them. Every method returns at
//! once; the checks themselves run on their own thread and report each
//! status change (a `CheckReport`) through the channel whose receiver is the
//! supervisor's inbox.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info, warn};

use crate::checks::{self, CheckHost, CheckId, CheckReport};
use crate::config::{self, CheckConfig, Config};
use crate::metrics::{CheckLabel, Metrics};
use crate::record::{self, Instance};

/// The health checks and what they hold out.
pub(super) struct Health {
    checks: CheckHost,
    /// Instances held out of the target: a health check is critical.
    withheld: BTreeSet<String>,
    /// Each configured instance's service label, by registry key.
    services: BTreeMap<String, String>,
    metrics: Metrics,
}

impl Health {
    pub fn new(checks: CheckHost, metrics: Metrics) -> Health {
        Health {
            checks,
            withheld: BTreeSet::new(),
            services: BTreeMap::new(),
            metrics,
        }
    }

    /// The instances a critical check holds out.
    pub fn withheld(&self) -> &BTreeSet<String> {
        &self.withheld
    }

    /// Whether `key` is an instance of the effective config (as of the
    /// last [`Health::set`]).
    pub fn knows(&self, key: &str) -> bool {
        self.services.contains_key(key)
    }

    /// Makes the running health checks those of `effective` (an unchanged
    /// check keeps its state and schedule), forgets the metric series of
    /// checks that are gone, and updates what is withheld. Returns the
    /// instances whose withheld state changed.
    pub fn set(&mut self, effective: &Config) -> BTreeSet<String> {
        let prefix = &effective.registry.prefix;
        let wanted = checks::from_config(&effective.agent, |i| record::registry_key(prefix, i));
        let services = effective
            .agent
            .instances
            .iter()
            .map(|i| (record::registry_key(prefix, i), i.service_label()))
            .collect();
        let labels =
            |host: &CheckHost, services: &BTreeMap<String, String>| -> BTreeSet<CheckLabel> {
                host.iter()
                    .map(|view| check_label(services, view.id, view.config))
                    .collect()
            };
        let before = labels(&self.checks, &self.services);
        self.services = services;
        // Each new check gets its metric series; its task updates them
        // after every run.
        let metrics = &self.metrics;
        let names = &self.services;
        self.checks.set_with_series(wanted, |id, config| {
            let label = check_label(names, id, config);
            Some(checks::CheckSeries {
                status: metrics.check_status.get_or_create_owned(&label),
                seconds: metrics.check_seconds.get_or_create_owned(&label),
            })
        });
        let after = labels(&self.checks, &self.services);
        for gone in before.difference(&after) {
            self.metrics.check_status.remove(gone);
            self.metrics.check_seconds.remove(gone);
        }
        self.update_withheld(None)
    }

    /// The checks of one instance (`key`; `found`: it and its checks, or
    /// `None` when it is gone) follow it, the others stay untouched.
    /// Returns the instances whose withheld state changed.
    pub fn set_instance(
        &mut self,
        key: &str,
        found: Option<(&Instance, &[CheckConfig])>,
    ) -> BTreeSet<String> {
        let before: Vec<CheckLabel> = (self.checks.of_instance(key))
            .map(|view| check_label(&self.services, view.id, view.config))
            .collect();
        match found {
            Some((instance, _)) => {
                self.services
                    .insert(key.to_string(), instance.service_label());
            }
            None => {
                self.services.remove(key);
            }
        }
        let checks = found.map_or(&[][..], |(_, checks)| checks);
        if before.is_empty() && checks.is_empty() {
            return BTreeSet::new();
        }
        let metrics = &self.metrics;
        let names = &self.services;
        self.checks
            .set_instance_with_series(key, checks, |id, config| {
                let label = check_label(names, id, config);
                Some(checks::CheckSeries {
                    status: metrics.check_status.get_or_create_owned(&label),
                    seconds: metrics.check_seconds.get_or_create_owned(&label),
                })
            });
        let after: BTreeSet<CheckLabel> = (self.checks.of_instance(key))
            .map(|view| check_label(&self.services, view.id, view.config))
            .collect();
        for gone in before.into_iter().filter(|label| !after.contains(label)) {
            // Another instance of the service may have the same check.
            let shared = (self.checks.iter())
                .any(|view| check_label(&self.services, view.id, view.config) == gone);
            if !shared {
                self.metrics.check_status.remove(&gone);
                self.metrics.check_seconds.remove(&gone);
            }
        }
        self.update_withheld(None)
    }

    /// A check's status changed (or it ran, for a host that reports every
    /// run): recorded. Returns the instances whose withheld state changed.
    pub fn take(&mut self, run: CheckReport) -> BTreeSet<String> {
        let cause = run.changed.then(|| run.clone());
        if !self.checks.record(run) {
            return BTreeSet::new(); // from a check since removed or changed
        }
        // Only a run that changed its check's status can change what is
        // withheld: a thousand steady checks cost no more than this.
        match cause {
            Some(cause) => self.update_withheld(Some(&cause)),
            None => BTreeSet::new(),
        }
    }

    /// Recomputes which instances are withheld; logs each instance whose
    /// health changed, with the reason. Returns those instances.
    fn update_withheld(&mut self, cause: Option<&CheckReport>) -> BTreeSet<String> {
        let withheld = self.checks.withheld();
        if withheld == self.withheld {
            return BTreeSet::new();
        }
        let changed = withheld
            .symmetric_difference(&self.withheld)
            .cloned()
            .collect();
        for key in withheld.difference(&self.withheld) {
            let service = self.services.get(key).map_or("", String::as_str);
            let failed = cause.filter(|r| &r.id.instance_key == key);
            match failed.and_then(|r| Some((r, self.checks.get(&r.id)?))) {
                Some((run, view)) => warn!(
                    %service, %key,
                    "instance unhealthy: check {} failed {} time{} in a row: {}",
                    checks::describe(&view.config.probe),
                    run.consecutive,
                    if run.consecutive == 1 { "" } else { "s" },
                    run.last.as_ref().err().map_or("", String::as_str),
                ),
                None => info!(%service, %key, "instance withheld until its health checks pass"),
            }
        }
        for key in self.withheld.difference(&withheld) {
            if let Some(service) = self.services.get(key) {
                info!(%service, %key, "instance healthy again");
            }
        }
        self.metrics.instances_withheld.set(withheld.len() as i64);
        self.withheld = withheld;
        changed
    }

    /// The running checks, for the status.
    pub fn checks(&self) -> &CheckHost {
        &self.checks
    }
}

/// The metric labels of a check: its instance's service and the check.
fn check_label(
    services: &BTreeMap<String, String>,
    id: &CheckId,
    config: &config::CheckConfig,
) -> CheckLabel {
    CheckLabel {
        service: services.get(&id.instance_key).cloned().unwrap_or_default(),
        check: checks::describe(&config.probe),
    }
}
