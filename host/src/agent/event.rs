//! What the supervisor reacts to: requests from outside ([`Control`]) and
//! everything else that happens to the agent ([`Event`]), each arriving on
//! one channel of the supervisor's `Inbox` (see `wiring.rs`).

use std::sync::Arc;

use super::input::{Folder, Found};
use super::upgrade::UpgradeOutcome;
use crate::admin::{AdminServer, StatusRequest};
use crate::api::ApiRequest;
use crate::checks::CheckReport;
use crate::plugins::system::SystemSnapshot;
use crate::plugins::{LoadOutcome, RoundResult};
use crate::registry::RegistryStatus;

/// Requests from outside the agent: signals in production, the test in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Deregister and stop (SIGINT, SIGTERM).
    Shutdown,
    /// Re-read the config file, the plugins and the instances folder now
    /// (SIGHUP).
    Reload,
    /// Start the binary at the path this one was started from and hand it
    /// everything; stop without deregistering once it says ready
    /// (SIGUSR2; `crate::handover`).
    Upgrade,
}

/// Everything the supervisor reacts to.
#[derive(Debug)]
pub(super) enum Event {
    /// A signal (or the test) asks to stop or reload.
    Control(Control),
    /// The control channel closed: nobody can ask us to stop any more, so stop.
    ControlClosed,
    /// Changes to an input on disk settled (the debounce ran out): scan it.
    Settled(Folder),
    /// A scan of an input on disk (or a read of the config file) finished.
    Found(Found),
    /// A plugin finished loading (or failed to).
    PluginLoaded(LoadOutcome),
    /// The collect timer ticked, with the system snapshot it read.
    CollectTick(Arc<SystemSnapshot>),
    /// A plugin answered a round.
    PluginResult(RoundResult),
    /// Plugin results have settled: publish the merged metadata.
    ResultsSettled,
    /// A start-up wait ran out.
    StartupDeadline,
    /// A new admin listener is serving (or the old one still is).
    AdminRebound(Option<AdminServer>),
    /// A request to the local API.
    Api(ApiRequest),
    /// The TTL of an API registration ran out (unless passed meanwhile).
    TtlDue,
    /// A health check's status changed.
    CheckReport(CheckReport),
    /// The admin server asks what `ygg-agent status` shows.
    StatusRequest(StatusRequest),
    /// The registry's status changed (readiness, counts, connection).
    RegistryStatus(RegistryStatus),
    /// Time to ping systemd's watchdog.
    WatchdogTick,
    /// A plugin-only change held back by `minRewriteInterval` may go out.
    RewriteDue,
    /// An upgrade ended: the new process took over, or failed.
    Upgrade(UpgradeOutcome),
    /// The target is dirty and nothing else is ready: the end of a burst.
    Publish,
}
