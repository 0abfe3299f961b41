//! What the instances start from besides the config: the local API
//! server, the maintenance in force and its writer, and what an upgrade
//! handed over.

use std::collections::BTreeSet;

use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::agent::shutdown::Stops;
use crate::api::{self, ApiRequest, ApiServer};
use crate::config::{self, Config};
use crate::handover::{HandedRegistration, Incoming, Inherited};
use crate::state_dir::{self, Maintenance};

/// What `Instances::new` takes besides the config.
pub struct LocalParts {
    pub maintenance: Maintenance,
    /// Drains and API registrations handed over by the previous process
    /// on an upgrade.
    pub drained: BTreeSet<String>,
    pub node_drained: bool,
    pub api_registrations: Vec<HandedRegistration>,
    pub api: Option<ApiServer>,
    pub check_defaults: watch::Sender<config::CheckTiming>,
    pub state_writer: Option<watch::Sender<Maintenance>>,
}

impl LocalParts {
    /// Starts the local API server (its calls go to `calls`; the
    /// supervisor's inbox holds the receiver), reads the maintenance in
    /// force from the state folder and starts its writer. On an upgrade,
    /// `incoming` holds the listeners, maintenance and drains the previous
    /// process handed over.
    pub async fn start(
        config: &Config,
        calls: mpsc::Sender<ApiRequest>,
        tracker: &TaskTracker,
        stops: &Stops,
        incoming: Option<&mut Incoming>,
    ) -> LocalParts {
        let local = &config.agent.local;
        let (check_defaults, defaults_rx) = watch::channel(local.check_defaults.clone());
        let mut none = Inherited::default();
        let (inherited, handed) = match incoming {
            Some(incoming) => (&mut incoming.listeners, Some(&incoming.handover)),
            None => (&mut none, None),
        };
        let api = match local.api.as_ref() {
            Some(api_config) => {
                match api::start(
                    api_config,
                    calls,
                    defaults_rx,
                    tracker,
                    &stops.api,
                    inherited,
                )
                .await
                {
                    Ok(server) => Some(server),
                    Err(error) => {
                        error!(%error, "cannot start the local API; running without it (fix agent.api and restart)");
                        None
                    }
                }
            }
            None => None,
        };
        // Maintenance outlives restarts: read before the first target.
        let state_dir = (local.api.is_some() || local.state_dir.is_some())
            .then(|| state_dir::resolve(local.state_dir.as_deref()))
            .flatten();
        let maintenance = match (handed, state_dir.clone()) {
            (Some(handed), _) => handed.maintenance.clone(),
            (None, Some(dir)) => tokio::task::spawn_blocking(move || state_dir::load(&dir))
                .await
                .unwrap_or_default(),
            (None, None) => Maintenance::default(),
        };
        if maintenance != Maintenance::default() {
            info!(node = ?maintenance.node, instances = maintenance.instances.len(), "maintenance in force from the state folder");
        }
        let state_writer = state_dir
            .map(|dir| state_dir::writer(dir, maintenance.clone(), tracker, stops.state.clone()));
        LocalParts {
            maintenance,
            drained: handed.map(|h| h.drained.clone()).unwrap_or_default(),
            node_drained: handed.is_some_and(|h| h.node_drained),
            api_registrations: handed.map(|h| h.api.clone()).unwrap_or_default(),
            api,
            check_defaults,
            state_writer,
        }
    }
}
