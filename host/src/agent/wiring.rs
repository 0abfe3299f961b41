//! The supervisor's channels: [`Wiring`] holds the senders it hands to
//! what it starts beside the loop, [`Inbox`] the receivers it listens to,
//! each documented with who holds the other end.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::Interval;
use tokio_util::task::TaskTracker;

use super::event::Control;
use super::input::{Found, Scanner};
use super::plugins::PluginsWiring;
use super::shutdown::Stops;
use super::upgrade::UpgradeOutcome;
use crate::admin::{AdminServer, StatusRequest};
use crate::api::ApiRequest;
use crate::checks::CheckReport;
use crate::metrics::Metrics;
use crate::plugins::system::SystemSnapshot;
use crate::plugins::{self as plugin_host, LoadOutcome, RoundResult};
use crate::registry::RegistryStatus;

/// Round results in flight from plugin tasks to the supervisor.
pub(super) const PLUGIN_RESULTS_CAPACITY: usize = 64;
/// Plugin loads finished beside the loop, waiting to be handled: one is
/// under way at a time per plugin, so a few slots.
pub(super) const LOADS_CAPACITY: usize = 16;
/// `/status` requests waiting for the supervisor (each is answered at once).
pub(super) const STATUS_REQUESTS_CAPACITY: usize = 8;

/// What the supervisor hands to things it starts beside the loop (each
/// sender's receiver is in [`Inbox`]).
pub(super) struct Wiring {
    pub(super) metrics: Metrics,
    pub(super) tracker: TaskTracker,
    /// The shutdown tree: every task spawned on `tracker` ends when its
    /// concern's token is cancelled.
    pub(super) stops: Stops,
    /// Scans and reads of the inputs on disk (→ `Inbox::found`).
    pub(super) scanner: Scanner,
    /// The plugin host's results and loads (→ `Inbox::results`, `loads`).
    pub(super) plugins: plugin_host::Outbox,
    /// The collect timer's ticks (→ `Inbox::ticks`).
    pub(super) ticks: mpsc::Sender<Arc<SystemSnapshot>>,
}

/// What the supervisor listens to; who holds the other end of each.
pub(super) struct Inbox {
    /// `cli.rs`'s signal handler (the test, in tests).
    pub(super) control: mpsc::Receiver<Control>,
    /// Scan and read tasks of the three inputs (`Wiring::scanner`).
    pub(super) found: mpsc::Receiver<Found>,
    /// Plugin runner tasks (`Outbox::results`).
    pub(super) results: mpsc::Receiver<RoundResult>,
    /// Plugin load tasks (`Outbox::loads`).
    pub(super) loads: mpsc::Receiver<LoadOutcome>,
    /// The collect timer task (`Wiring::ticks`).
    pub(super) ticks: mpsc::Receiver<Arc<SystemSnapshot>>,
    /// Admin rebind tasks (`AdminListener::rebound`).
    pub(super) admin: mpsc::Receiver<Option<AdminServer>>,
    /// The check tasks (the `CheckHost`'s senders).
    pub(super) check_reports: mpsc::Receiver<CheckReport>,
    /// The admin server's `/status` handler (`admin::Sources::agent`).
    pub(super) status_requests: mpsc::Receiver<StatusRequest>,
    /// The local API server's handlers.
    pub(super) api_requests: mpsc::Receiver<ApiRequest>,
    /// The registry actor's status (a watch: the latest wins).
    pub(super) registry_status: watch::Receiver<RegistryStatus>,
    /// systemd's watchdog pings, when systemd asked for them.
    pub(super) watchdog: Option<Interval>,
    /// The upgrade's wait task (`Upgrader`).
    pub(super) upgrades: mpsc::Receiver<UpgradeOutcome>,
}

impl Wiring {
    /// What the plugins runtime needs of the wiring.
    pub(super) fn plugins(&self) -> PluginsWiring<'_> {
        PluginsWiring {
            outbox: &self.plugins,
            metrics: &self.metrics,
            tracker: &self.tracker,
            stop: &self.stops.plugins,
            ticks: &self.ticks,
            scanner: &self.scanner,
        }
    }
}
