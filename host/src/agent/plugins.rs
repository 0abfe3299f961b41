//! The plugins runtime, while `agent.plugins` is configured: the plugin
//! host, the plugins folder's input, the plugins' last good output
//! ([`PluginMetadata`]), when merged results are due to be published, and
//! the collect timer. The timer is a task beside the loop and the one
//! owner of `agent.plugins.interval`: at each tick it reads the system
//! snapshot (four `/proc` files) on a blocking thread and sends it; the
//! round goes out when the supervisor handles it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::input::{Folder, FolderInput, Found, Scanner};
use crate::config::{Config, PluginsConfig};
use crate::desired::{Clash, PluginMetadata};
use crate::metrics::Metrics;
use crate::plugins::system::{self, SystemSnapshot};
use crate::plugins::{self, Changes, LoadOutcome, PluginHost, PluginInstance, Round, RoundResult};
use crate::record;

/// Results of one round arrive within microseconds of each other: the
/// merged metadata is published this long after the first (the delay is
/// not re-armed by later results), one write instead of one per plugin.
const RESULTS_COALESCE: Duration = Duration::from_millis(20);

/// What starting the plugins runtime needs from the supervisor.
pub(super) struct PluginsWiring<'a> {
    pub outbox: &'a plugins::Outbox,
    pub metrics: &'a Metrics,
    pub tracker: &'a TaskTracker,
    /// The shutdown tree's `plugins` token.
    pub stop: &'a CancellationToken,
    /// The supervisor's inbox holds the other end (`Inbox::ticks`).
    pub ticks: &'a mpsc::Sender<Arc<SystemSnapshot>>,
    pub scanner: &'a Scanner,
}

/// Everything that exists only while `agent.plugins` is configured.
pub(super) struct Plugins {
    host: PluginHost,
    pub(super) input: FolderInput,
    /// The plugins' last good output, by plugin and instance.
    metadata: PluginMetadata,
    /// When merged plugin results are due to be published.
    pub(super) publish_due: Option<Instant>,
    /// Clashes reported so far, so each is reported once.
    clashes: Vec<Clash>,
    /// The collect timer's period (the task holds the receiver).
    interval: watch::Sender<Duration>,
    /// The last system snapshot: rounds between ticks use it.
    system: Arc<SystemSnapshot>,
    /// Stops the collect timer task.
    _timer: DropGuard,
}

impl Plugins {
    /// Creates the plugin host and starts the first scan. `None` (logged)
    /// when the engine cannot start: the agent runs without plugins.
    pub fn start(config: &PluginsConfig, wiring: &PluginsWiring<'_>) -> Option<Plugins> {
        let host = match PluginHost::new(
            config.clone(),
            wiring.outbox.clone(),
            wiring.metrics.clone(),
            wiring.tracker.clone(),
            wiring.stop,
        ) {
            Ok(host) => host,
            Err(error) => {
                error!(%error, "cannot start the WebAssembly engine; running without plugins");
                return None;
            }
        };
        let timer = wiring.stop.child_token();
        let (interval, period) = watch::channel(config.interval);
        spawn_timer(period, wiring.ticks.clone(), wiring.tracker, timer.clone());
        let mut plugins = Plugins {
            host,
            input: FolderInput::new(Folder::Plugins, &config.dir),
            metadata: PluginMetadata::new(),
            publish_due: None,
            clashes: Vec::new(),
            interval,
            // The first round (at start) needs one; the timer refreshes it.
            system: Arc::new(system::read()),
            _timer: timer.drop_guard(),
        };
        plugins.scan(wiring.scanner);
        Some(plugins)
    }

    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    pub fn metadata(&self) -> &PluginMetadata {
        &self.metadata
    }

    /// No scan and no load is under way.
    pub fn is_settled(&self) -> bool {
        self.input.is_idle() && self.host.is_settled()
    }

    /// Scans the plugins folder beside the loop (one scan at a time).
    pub fn scan(&mut self, scanner: &Scanner) {
        let job = self.host.scan_job();
        self.input
            .scan(false, scanner, move |_| Found::Plugins(job()));
    }

    /// A scan came back: watch what the folder resolves to now, load what
    /// changed.
    pub fn take_scan(&mut self, scan: plugins::Scan, scanner: &Scanner) -> Changes {
        let again = self.input.finished(&scan.watch).is_some();
        let changes = self.host.apply_scan(scan);
        if again {
            self.scan(scanner);
        }
        self.forget(changes)
    }

    /// A load finished.
    pub fn take_load(&mut self, outcome: LoadOutcome) -> Changes {
        let changes = self.host.finish_load(outcome);
        self.forget(changes)
    }

    /// Drops the metadata of stopped plugins; `changes.stopped` keeps only
    /// those that had any (the target changes).
    fn forget(&mut self, mut changes: Changes) -> Changes {
        changes
            .stopped
            .retain(|name| self.metadata.remove(name).is_some());
        changes
    }

    /// A new `agent.plugins` (same engine): the timer follows the
    /// interval, the host the rest; the scan it needs starts.
    pub fn reconfigure(&mut self, config: PluginsConfig, scanner: &Scanner) -> Changes {
        self.interval.send_if_modified(|period| {
            let changed = *period != config.interval;
            *period = config.interval;
            changed
        });
        let changes = self.host.reconfigure(config);
        self.scan(scanner);
        self.forget(changes)
    }

    /// A tick of the collect timer, with the snapshot it read.
    pub fn tick(&mut self, system: Arc<SystemSnapshot>) {
        self.system = system;
    }

    /// Offers a round over the instances of `effective` to every plugin
    /// that is due, or to `only`. Returns how many took it.
    pub fn start_round(&mut self, effective: &Config, only: Option<&[String]>) -> usize {
        if effective.agent.instances.is_empty() {
            return 0;
        }
        let instances = effective
            .agent
            .instances
            .iter()
            .map(|instance| PluginInstance {
                key: record::registry_key(&effective.registry.prefix, instance),
                instance: instance.clone(),
            })
            .collect();
        let round = Round {
            system: self.system.clone(),
            instances: Arc::new(instances),
        };
        let interval = *self.interval.borrow();
        self.host.start_round(&round, only, interval)
    }

    /// Keeps the outputs that succeeded (failed calls leave the last good
    /// output) and arms the publish. False for a result of a replaced or
    /// unloaded version.
    pub fn merge(&mut self, result: RoundResult) -> bool {
        if !self.host.is_current(&result) {
            return false;
        }
        self.host.note_result(&result);
        let per_instance = self.metadata.entry(result.plugin.to_string()).or_default();
        for (key, output) in result.outputs {
            per_instance.insert(key, output);
        }
        self.publish_due
            .get_or_insert_with(|| Instant::now() + RESULTS_COALESCE);
        true
    }

    /// Drops the metadata of instances `keep` says are gone.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        for per_instance in self.metadata.values_mut() {
            per_instance.retain(|key, _| keep(key));
        }
    }

    /// Warns about plugin clashes when they change, not on every round.
    pub fn report_clashes(&mut self, clashes: Vec<Clash>) {
        if clashes == self.clashes {
            return;
        }
        for clash in clashes.iter().filter(|c| !self.clashes.contains(c)) {
            warn!(
                key = %clash.key,
                service = %clash.service,
                metadata_key = %clash.metadata_key,
                winner = %clash.winner,
                loser = %clash.loser,
                "two plugins set the same metadata key; the one whose name sorts first wins"
            );
        }
        self.clashes = clashes;
    }

    /// `agent.plugins` removed.
    pub fn stop(self) {
        info!("plugins turned off; unloading them");
    }
}

/// The collect timer: every `period` it reads the system snapshot on a
/// blocking thread and sends it to the supervisor; a new period starts a
/// new schedule. Ends with `stop`.
fn spawn_timer(
    mut period: watch::Receiver<Duration>,
    ticks: mpsc::Sender<Arc<SystemSnapshot>>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    let timer = |every: Duration| {
        let mut timer = tokio::time::interval_at(Instant::now() + every, every);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    };
    tracker.spawn(async move {
        let mut ticker = timer(*period.borrow_and_update());
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = period.changed() => match changed {
                    Ok(()) => ticker = timer(*period.borrow_and_update()),
                    Err(_) => return,
                },
                _ = ticker.tick() => {
                    let read = tokio::task::spawn_blocking(system::read);
                    let snapshot = tokio::select! {
                        () = stop.cancelled() => return,
                        read = read => read.unwrap_or_default(),
                    };
                    if ticks.send(Arc::new(snapshot)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}
