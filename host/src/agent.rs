//! The supervisor: one loop that turns everything that happens to the
//! agent into the registry's target. Everything arrives as one [`Event`]
//! (`next_event`) and is handled by one `handle` that never waits: it
//! dispatches to the module that owns the state the event is about, which
//! says what moved; `handle` then marks the target dirty, and the target
//! is rebuilt and published once per burst (`Event::Publish`, when
//! nothing else is ready, and at most once a millisecond while changes
//! keep coming). Reading the config file, scanning folders,
//! compiling plugins, reading `/proc` and rebinding the admin listener run
//! beside the loop and come back as events, so a signal, a watchdog ping
//! or a config edit is never queued behind a plugin that takes seconds to
//! compile.
//!
//! The state, by owner:
//! - [`reload`]: the config file, its input and the last read;
//! - [`instances`]: the instances in force and their sources, the local
//!   API's registrations, maintenance and drains;
//! - [`health`]: the checks, the withheld set, the status rows;
//! - [`plugins`]: the plugin host, its metadata, the collect timer;
//! - [`input`]: one way to follow a path on disk, for all three inputs;
//! - [`shutdown`]: the cancellation tokens and their order;
//! - here: the running config, start-up, the target, the admin listener,
//!   systemd, and the channels.
//!
//! A new input is one [`Event`] variant, its channel in [`Inbox`] and the
//! module that owns its state.

mod event;
mod health;
mod input;
mod instances;
mod listener;
mod plugins;
mod reload;
mod shutdown;
mod startup;
mod status;
mod target;
mod upgrade;
mod wiring;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin;
use crate::api;
use crate::checks::CheckHost;
use crate::config::{Config, PluginsConfig};
use crate::handover::{Incoming, Launch};
use crate::metrics::Metrics;
use crate::plugins::{self as plugin_host, RoundResult};
use crate::registry::RegistryHandle;
use crate::status::AgentStatus;
use crate::systemd::Notifier;
pub use event::Control;
use event::Event;
use health::Health;
use input::{Folder, Found, Scanner, until};
use instances::{Instances, LocalParts, Moved};
use listener::AdminListener;
use plugins::Plugins;
pub use reload::ReloadOutcome;
use reload::{ConfigDiff, Reloader};
use shutdown::Stops;
use startup::{Startup, StartupStep};
use target::Publisher;
use upgrade::Upgrader;
use wiring::{Inbox, Wiring};

/// What `run` needs besides the config it starts with.
pub struct RunOptions {
    /// The file to watch and re-read.
    pub config_path: PathBuf,
    /// The SHA-256 of the bytes the starting config was parsed from: a
    /// file event that finds the same bytes changes nothing.
    pub config_digest: [u8; 32],
    pub metrics: Metrics,
    /// How this process was started, for an upgrade (`None`: SIGUSR2 says
    /// it cannot upgrade).
    pub launch: Option<Launch>,
    /// What the previous process handed over, when an upgrade started this
    /// one.
    pub incoming: Option<Incoming>,
}

struct Supervisor {
    /// The running config (the instances of other sources are in
    /// `instances`).
    config: Config,
    reloader: Reloader,
    instances: Instances,
    health: Health,
    plugins: Option<Plugins>,
    target: Publisher,
    admin: AdminListener,
    startup: Option<Startup>,
    systemd: Notifier,
    /// SIGUSR2: the upgrade under way, if any; the one this process was
    /// started by, until it said ready; the process it handed over to.
    upgrader: Upgrader,
    wiring: Wiring,
    inbox: Inbox,
}

/// Runs the agent until `control` says stop (or closes), then deregisters
/// within the config's `shutdownTimeout`.
pub async fn run(options: RunOptions, config: Config, control: mpsc::Receiver<Control>) {
    let mut supervisor = Supervisor::start(options, config, control).await;
    while let Some(event) = supervisor.next_event().await {
        if !supervisor.handle(event) {
            break;
        }
    }
    supervisor.shutdown().await;
}

impl Supervisor {
    async fn start(
        mut options: RunOptions,
        config: Config,
        control: mpsc::Receiver<Control>,
    ) -> Self {
        let tracker = TaskTracker::new();
        let stops = Stops::new();
        let (results_tx, results_rx) = mpsc::channel(wiring::PLUGIN_RESULTS_CAPACITY);
        let (loads_tx, loads_rx) = mpsc::channel(wiring::LOADS_CAPACITY);
        let (found_tx, found_rx) = mpsc::channel(input::FOUND_CAPACITY);
        let (ticks_tx, ticks_rx) = mpsc::channel(1);
        let (admin_tx, admin_rx) = mpsc::channel(1);
        let (status_tx, status_rx) = mpsc::channel(wiring::STATUS_REQUESTS_CAPACITY);

        // Registration waits for the plugins' first round (boundedly): the
        // registry starts idle and gets its first target when that is over.
        let handed_lease = (options.incoming.as_ref())
            .and_then(|i| i.handover.lease.as_ref())
            .map(|r| r.lease);
        let registry = RegistryHandle::spawn_with_record(
            None,
            options.metrics.clone(),
            &tracker,
            stops.registry.clone(),
            crate::state_dir::lease_record_folder(config.agent.local.state_dir.as_deref()),
            options
                .incoming
                .as_mut()
                .and_then(|i| i.handover.lease.take()),
        );
        let registry_status = registry.status();
        let mut systemd = Notifier::from_env();
        if let Some(incoming) = &options.incoming {
            info!(
                from = incoming.handover.from_pid,
                lease = ?handed_lease,
                "upgrade: taking over from the previous process"
            );
            systemd.take_over();
        }
        let watchdog = systemd.watchdog_every.map(|every| {
            let mut timer = tokio::time::interval(every);
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            timer
        });
        // Check plugins: the plugin host publishes them, the checks read.
        let (check_plugins_tx, check_plugins) =
            watch::channel(plugin_host::CheckPlugins::default());
        let wiring = Wiring {
            metrics: options.metrics,
            scanner: Scanner {
                tracker: tracker.clone(),
                stop: stops.inputs.clone(),
                found: found_tx,
            },
            tracker,
            stops,
            plugins: plugin_host::Outbox {
                results: results_tx,
                loads: loads_tx,
                check_plugins: check_plugins_tx,
            },
            ticks: ticks_tx,
        };
        let sources = admin::Sources {
            metrics: wiring.metrics.clone(),
            registry: registry_status.clone(),
            agent: status_tx,
        };
        let admin_listen = config.agent.admin.as_ref().map(|a| a.listen);
        let admin = AdminListener::start(
            admin_listen,
            admin_listen.and_then(|listen| {
                (options.incoming.as_mut()).and_then(|i| i.listeners.take_admin(listen))
            }),
            sources,
            wiring.tracker.clone(),
            wiring.stops.admin.clone(),
            admin_tx,
        )
        .await;
        let plugins = config
            .agent
            .plugins
            .as_ref()
            .and_then(|p| Plugins::start(p, &wiring.plugins()));
        let (checks, check_reports) = CheckHost::new(
            wiring.tracker.clone(),
            check_plugins,
            wiring.stops.checks.clone(),
        );
        let (api_tx, api_rx) = mpsc::channel(api::API_REQUESTS_CAPACITY);
        let (parts, reloader) = {
            let parts = LocalParts::start(
                &config,
                api_tx,
                &wiring.tracker,
                &wiring.stops,
                options.incoming.as_mut(),
            )
            .await;
            let reloader = Reloader::new(
                options.config_path.clone(),
                options.config_digest,
                wiring.metrics.clone(),
            );
            (parts, reloader)
        };
        let instances = Instances::new(&config, options.config_path, parts, &wiring.scanner);
        let (upgrades_tx, upgrades_rx) = mpsc::channel(1);
        let upgrader = Upgrader::new(
            options.launch,
            wiring.tracker.clone(),
            wiring.stops.inputs.clone(),
            upgrades_tx,
        )
        .taking_over(options.incoming);
        let mut supervisor = Supervisor {
            reloader,
            instances,
            health: Health::new(checks, wiring.metrics.clone()),
            plugins,
            target: Publisher::new(registry, min_rewrite_interval(&config)),
            startup: Some(Startup::new(Instant::now())),
            admin,
            systemd,
            upgrader,
            config,
            wiring,
            inbox: Inbox {
                control,
                found: found_rx,
                results: results_rx,
                loads: loads_rx,
                ticks: ticks_rx,
                admin: admin_rx,
                check_reports,
                status_requests: status_rx,
                api_requests: api_rx,
                registry_status,
                watchdog,
                upgrades: upgrades_rx,
            },
        };
        let _ = supervisor.health.set(supervisor.instances.effective());
        supervisor.advance_startup();
        supervisor
    }

    /// The next thing to react to; `None` never happens while the
    /// supervisor holds its own senders, but ends the loop if it does.
    /// Biased: `Publish` comes only when nothing else is ready.
    async fn next_event(&mut self) -> Option<Event> {
        let inbox = &mut self.inbox;
        let (plugins_input, publish_due) = match self.plugins.as_mut() {
            Some(p) => (Some(&mut p.input), p.publish_due),
            None => (None, None),
        };
        let config_input = self.reloader.input();
        let instances_due = self.instances.next_due();
        let instances_input = self.instances.input();
        let startup_due = self.startup.as_ref().map(Startup::deadline);
        let publish_at = self
            .startup
            .is_none()
            .then(|| self.target.publish_at())
            .flatten();
        let publish_now = publish_at.is_some_and(|at| at <= Instant::now());
        let event = tokio::select! {
            biased;
            message = inbox.control.recv() => match message {
                Some(control) => Event::Control(control),
                None => Event::ControlClosed,
            },
            _ = async { inbox.watchdog.as_mut().expect("guarded").tick().await }, if inbox.watchdog.is_some() => Event::WatchdogTick,
            Some(request) = inbox.status_requests.recv() => Event::StatusRequest(request),
            Ok(()) = inbox.registry_status.changed() => Event::RegistryStatus(inbox.registry_status.borrow_and_update().clone()),
            () = config_input.settled() => Event::Settled(Folder::Config),
            () = async { plugins_input.expect("guarded").settled().await }, if plugins_input.is_some() => Event::Settled(Folder::Plugins),
            () = async { instances_input.expect("guarded").settled().await }, if instances_input.is_some() => Event::Settled(Folder::Instances),
            Some(found) = inbox.found.recv() => Event::Found(found),
            Some(outcome) = inbox.loads.recv() => Event::PluginLoaded(outcome),
            Some(system) = inbox.ticks.recv() => Event::CollectTick(system),
            Some(result) = inbox.results.recv() => Event::PluginResult(result),
            Some(server) = inbox.admin.recv() => Event::AdminRebound(server),
            Some(report) = inbox.check_reports.recv() => Event::CheckReport(report),
            Some(request) = inbox.api_requests.recv() => Event::Api(request),
            Some(outcome) = inbox.upgrades.recv() => Event::Upgrade(outcome),
            () = until(instances_due) => Event::TtlDue,
            () = until(publish_due) => Event::ResultsSettled,
            () = until(startup_due) => Event::StartupDeadline,
            () = until(self.target.rewrite_due) => Event::RewriteDue,
            () = std::future::ready(()), if publish_now => Event::Publish,
            () = until(publish_at), if !publish_now => Event::Publish,
        };
        Some(event)
    }

    /// Reacts to one event without waiting on anything: dispatch to the
    /// owner of the state, then one publish (which builds the target only
    /// at the end of a burst). False: stop.
    fn handle(&mut self, event: Event) -> bool {
        let scanner = &self.wiring.scanner;
        match event {
            Event::Control(Control::Shutdown) | Event::ControlClosed => return false,
            Event::Control(Control::Reload) => {
                // SIGHUP re-reads everything: the fallback where file
                // events do not arrive (network file systems).
                self.reloader.read(true, scanner);
                if let Some(plugins) = self.plugins.as_mut() {
                    plugins.scan(scanner);
                }
                self.instances.scan(scanner);
            }
            Event::Control(Control::Upgrade) => self.upgrade(),
            Event::Upgrade(outcome) => {
                if self.upgrader.ended(outcome).is_some() {
                    return false;
                }
            }
            Event::Settled(Folder::Config) => self.reloader.read(false, scanner),
            Event::Settled(Folder::Plugins) => {
                if let Some(plugins) = self.plugins.as_mut() {
                    plugins.scan(scanner);
                }
            }
            Event::Settled(Folder::Instances) => self.instances.scan(scanner),
            Event::Found(Found::Config(read)) => {
                let instances = &self.instances;
                let (outcome, diff) = self
                    .reloader
                    .finish(*read, &self.config, scanner, |c| instances.clashes(c));
                if let Some(diff) = diff {
                    self.apply(diff);
                }
                tracing::debug!(?outcome, "config read handled");
            }
            Event::Found(Found::Plugins(scan)) => {
                if let Some(plugins) = self.plugins.as_mut() {
                    let changes = plugins.take_scan(scan, scanner);
                    self.plugins_changed(changes);
                }
                self.advance_startup();
            }
            Event::Found(Found::Instances(scan)) => {
                let moved = self.instances.take_scan(scan, &self.config, scanner);
                self.moved(moved);
                self.advance_startup();
            }
            Event::PluginLoaded(outcome) => {
                if let Some(plugins) = self.plugins.as_mut() {
                    let changes = plugins.take_load(outcome);
                    self.plugins_changed(changes);
                }
                self.advance_startup();
            }
            Event::CollectTick(system) => {
                if let Some(plugins) = self.plugins.as_mut() {
                    plugins.tick(system);
                    if self.startup.is_none() {
                        plugins.start_round(self.instances.effective(), None);
                    }
                }
            }
            Event::PluginResult(result) => self.take_result(result),
            Event::ResultsSettled => {
                if let Some(plugins) = self.plugins.as_mut() {
                    plugins.publish_due = None;
                }
                self.target.mark();
            }
            Event::StartupDeadline => self.advance_startup(),
            Event::AdminRebound(server) => self.admin.rebound(server),
            Event::Api(request) => {
                let (reply, moved) = match request.call {
                    api::ApiCall::List => {
                        let withheld = self.health.withheld();
                        let listing = status::listing(&self.instances, withheld);
                        (api::ApiReply::ok(listing), Moved::default())
                    }
                    // The new process started from the state handed over:
                    // a change now would be lost with this process.
                    api::ApiCall::Change(_) if self.upgrader.under_way().is_some() => {
                        (api::ApiReply::error(503, upgrade::BUSY), Moved::default())
                    }
                    api::ApiCall::Change(change) => self.instances.call(change, &self.config),
                };
                self.moved(moved);
                let _ = request.reply.send(reply);
            }
            Event::TtlDue => {
                let moved = self.instances.expire();
                self.moved(moved);
            }
            Event::CheckReport(report) => {
                let changed = self.health.take(report);
                self.target.mark_keys(changed);
            }
            Event::StatusRequest(reply) => {
                let _ = reply.send(self.status());
            }
            Event::RegistryStatus(status) => {
                self.systemd.registry(&status);
                if status.ready {
                    self.upgrader.say_ready();
                }
            }
            Event::WatchdogTick => self.systemd.watchdog(),
            Event::RewriteDue => {
                self.target.rewrite_due = None;
                self.target.mark();
            }
            Event::Publish => {}
        }
        self.publish();
        true
    }

    /// SIGUSR2: starts the new binary with everything it needs to carry
    /// on (see `upgrade.rs`); one upgrade at a time.
    fn upgrade(&mut self) {
        let registry_status = self.inbox.registry_status.borrow().clone();
        self.upgrader.begin(|| {
            upgrade::handover(
                self.target.registry(),
                &registry_status,
                &self.instances,
                &self.admin,
            )
        });
    }

    /// The instances moved or what is held out changed: the checks, the
    /// plugin metadata and the records of what moved follow (all of them
    /// after a folder scan or a node-wide change), and the plugins collect
    /// for new instances.
    fn moved(&mut self, moved: Moved) {
        if moved.all {
            let effective = self.instances.effective();
            let _ = self.health.set(effective);
            if let Some(plugins) = self.plugins.as_mut() {
                let health = &self.health;
                plugins.retain(|key| health.knows(key));
                plugins.start_round(effective, None);
            }
            self.target.mark();
            return;
        }
        for key in &moved.instances {
            let found = self.instances.find(key);
            let changed = self.health.set_instance(key, found);
            self.target.mark_keys(changed);
            if found.is_none()
                && let Some(plugins) = self.plugins.as_mut()
            {
                plugins.retain(|other| other != key);
            }
        }
        if !moved.instances.is_empty()
            && let Some(plugins) = self.plugins.as_mut()
        {
            plugins.start_round(self.instances.effective(), None);
        }
        self.target.mark_keys(moved.instances);
        self.target.mark_keys(moved.held_out);
    }

    /// Moves the start-up phase on: once the loads are done (or their wait
    /// ran out) the first round goes out; once it is answered (or its wait
    /// ran out) registration starts.
    fn advance_startup(&mut self) {
        let Some(startup) = self.startup.as_mut() else {
            return;
        };
        let now = Instant::now();
        let loads_done =
            self.plugins.as_ref().is_none_or(Plugins::is_settled) && self.instances.scanned();
        match startup.step(now, loads_done) {
            StartupStep::Wait => return,
            StartupStep::FirstRound => {
                let effective = self.instances.effective();
                let offered = self
                    .plugins
                    .as_mut()
                    .map_or(0, |p| p.start_round(effective, None));
                if offered > 0 {
                    let timeout = self
                        .plugins
                        .as_ref()
                        .map_or(Duration::ZERO, |p| p.host().config().timeout);
                    startup.round_sent(now, offered, timeout);
                    return;
                }
            }
            StartupStep::Register => {}
        }
        self.startup = None;
        info!(
            instances = self.instances.effective().agent.instances.len(),
            plugins = self.plugins.as_ref().map_or(0, |p| p.host().loaded().len()),
            endpoints = %self.config.registry.client.endpoints.join(","),
            prefix = %self.config.registry.prefix,
            "agent started"
        );
        self.target.mark();
    }

    /// Builds the target and hands it to the registry if it is dirty, at
    /// the end of a burst (see `target.rs`). Not during start-up.
    fn publish(&mut self) {
        if self.startup.is_some() || !self.target.due(self.more_ready()) {
            return;
        }
        let (instances, health) = (&self.instances, &self.health);
        let plugins = self.plugins.as_ref();
        // One instance's record can be built alone unless plugin metadata
        // (clashes between plugins) or the naming format (two instances
        // may share a key) ties it to the others.
        let alone = plugins.is_none_or(|p| p.metadata().values().all(|m| m.is_empty()))
            && self.config.agent.publish.etcd_naming.is_none();
        let one = |key: &str| target::build_one(instances, health, key);
        let one: Option<target::OneRecord<'_>> = alone.then_some(&one);
        let clashes = self
            .target
            .publish(|| target::build(instances, health, plugins), one);
        if let (Some(plugins), Some(clashes)) = (self.plugins.as_mut(), clashes) {
            plugins.report_clashes(clashes);
        }
    }

    /// Whether another event is waiting in a channel that bursts come
    /// through (API calls, check reports, plugin results): the publish
    /// waits for `Event::Publish` then.
    fn more_ready(&self) -> bool {
        !self.inbox.api_requests.is_empty()
            || !self.inbox.check_reports.is_empty()
            || !self.inbox.results.is_empty()
            || !self.inbox.found.is_empty()
    }

    fn take_result(&mut self, result: RoundResult) {
        let Some(plugins) = self.plugins.as_mut() else {
            return;
        };
        if !plugins.merge(result) {
            return;
        }
        if let Some(startup) = self.startup.as_mut() {
            startup.answered();
            self.advance_startup();
        }
    }

    /// Plugins started or stopped: a stopped plugin's metadata is gone
    /// from the target; a started one collects at once.
    fn plugins_changed(&mut self, changes: plugin_host::Changes) {
        if !changes.stopped.is_empty() {
            self.target.mark();
        }
        // During start-up the first round goes to every plugin at once.
        let waiting_for_loads = self
            .startup
            .as_ref()
            .is_some_and(Startup::waiting_for_loads);
        if !changes.started.is_empty()
            && !waiting_for_loads
            && let Some(plugins) = self.plugins.as_mut()
        {
            // Old output of a replaced plugin stays until the new one answers.
            plugins.start_round(self.instances.effective(), Some(&changes.started));
        }
    }

    /// What `/status`, the status page and `ygg-agent status` show.
    fn status(&self) -> AgentStatus {
        status::build(&status::Parts {
            config: &self.config,
            instances: &self.instances,
            health: &self.health,
            plugins: self.plugins.as_ref(),
            registry: self.inbox.registry_status.borrow().clone(),
            starting: self.startup.is_some(),
        })
    }

    /// Applies a new valid config as a difference from the running one.
    fn apply(&mut self, diff: ConfigDiff) {
        let old_target = target::build(&self.instances, &self.health, self.plugins.as_ref()).0;
        let ConfigDiff {
            new,
            plugins,
            admin,
            registry,
            instances: _,
            local,
        } = &diff;
        let keys_moved = diff.moves_keys();
        self.config = new.clone();
        self.target
            .set_min_rewrite_interval(min_rewrite_interval(&self.config));
        let scanner = &self.wiring.scanner;
        self.instances
            .reconfigure(&self.config, local, keys_moved, scanner);
        // The checks follow the new instances; plugin metadata of
        // instances that no longer exist is dropped (no round yet: the
        // plugins may change below).
        let _ = self.health.set(self.instances.effective());
        if let Some(plugins) = self.plugins.as_mut() {
            let health = &self.health;
            plugins.retain(|key| health.knows(key));
        }
        let new_target = target::build(&self.instances, &self.health, self.plugins.as_ref()).0;
        let (added, removed, changed) = target::count_changes(&old_target, &new_target);
        info!(
            path = %self.reloader.path().display(),
            added, removed, changed,
            registry_settings_changed = *registry,
            plugins_changed = plugins.is_some(),
            "config reloaded: applying the changes"
        );
        if let Some(old) = plugins.clone() {
            self.apply_plugins_config(old);
        }
        if let Some(wanted) = *admin {
            self.admin.want(wanted);
        }
        self.target.mark();
        if keys_moved {
            // New or moved instances get their plugin metadata right away.
            if let Some(plugins) = self.plugins.as_mut() {
                plugins.start_round(self.instances.effective(), None);
            }
        }
    }

    fn apply_plugins_config(&mut self, old: Option<PluginsConfig>) {
        let wiring = self.wiring.plugins();
        match (old, self.config.agent.plugins.clone()) {
            (_, None) => {
                if let Some(plugins) = self.plugins.take() {
                    plugins.stop();
                    self.target.mark();
                }
            }
            (None, Some(new)) => {
                self.plugins = Plugins::start(&new, &wiring);
            }
            (Some(_), Some(new)) => {
                let Some(plugins) = self.plugins.as_mut() else {
                    // The engine could not start before: try again.
                    self.plugins = Plugins::start(&new, &wiring);
                    return;
                };
                let changes = plugins.reconfigure(new, &self.wiring.scanner);
                self.plugins_changed(changes);
            }
        }
    }

    /// Stops every concern in the order of the shutdown tree (see
    /// `shutdown.rs`): inputs, servers, plugins and checks, the drain, the
    /// registry (deregister, revoke), the state writer. `shutdownTimeout`
    /// bounds it for an etcd that does not answer.
    ///
    /// After an upgrade (`handed_to`) the same order, but the new process
    /// holds the registrations and the listeners: no `STOPPING=1`, no
    /// drain, nothing deleted or revoked, the socket file left in place.
    async fn shutdown(mut self) {
        let timeout = self.config.agent.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        let handed_to = self.upgrader.handed_to();
        match handed_to {
            Some(pid) => info!(pid, "upgrade: handing over to the new process"),
            None => {
                info!(timeout = ?timeout, "shutting down: deregistering every instance");
                self.systemd.stopping();
                // A new process still starting must not outlive the keys.
                self.upgrader.abandon();
            }
        }
        let stops = self.wiring.stops.clone();
        // 1. Nothing new comes in; 2. no API calls once stopping (the
        // socket file goes with the server), no admin server.
        stops.inputs.cancel();
        if handed_to.is_some() {
            self.instances.keep_socket_file();
        }
        stops.api.cancel();
        self.instances.stop_inputs();
        drop(self.reloader);
        stops.admin.cancel();
        drop(self.admin);
        // 3. Loads under way are cancelled (a compile already running ends
        // on its own thread), every plugin task and health check stops.
        stops.plugins.cancel();
        drop(self.plugins);
        stops.checks.cancel();
        drop(self.health);
        drop(self.inbox);
        // 4. The drain. Nothing is registered before start-up ends.
        let drain = self.config.agent.local.drain_delay;
        let registry = self.target.into_registry();
        let deadline = if handed_to.is_some() {
            // The new process holds the keys and the lease.
            if !registry.hand_over(deadline).await {
                warn!("the registry did not stop within shutdownTimeout");
            }
            deadline
        } else {
            let deadline = if drain.is_zero() || self.startup.is_some() {
                deadline
            } else {
                shutdown::drain_keys(&registry, &self.config, deadline, drain).await;
                Instant::now() + timeout
            };
            // 5. Deregister and revoke the lease.
            if !registry.stop(deadline).await {
                warn!(
                    "deregistration did not finish within shutdownTimeout; the lease will expire on its own"
                );
            }
            deadline
        };
        stops.registry.cancel();
        // 6. The last maintenance is written.
        stops.state.cancel();
        self.instances.stop_writer();
        // 7. Anything left.
        stops.all();
        let tracker = self.wiring.tracker.clone();
        drop(self.wiring);
        tracker.close();
        let stopped = tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_ok();
        if handed_to.is_some() {
            info!("agent stopped (upgraded: the new process holds every registration)");
            return;
        }
        if !stopped {
            warn!(
                tasks = tracker.len(),
                "some tasks did not stop within shutdownTimeout"
            );
        }
        info!("agent stopped");
    }
}

fn min_rewrite_interval(config: &Config) -> Option<Duration> {
    config.agent.plugins.as_ref()?.min_rewrite_interval
}

#[cfg(test)]
mod tests;
