//! The admin listener (`agent.admin.listen`): the server serving now, the
//! address the config wants and a move between the two under way. A move
//! runs beside the loop and reports back through `rebound` (the
//! supervisor's inbox holds the receiver): the new address is bound while
//! the old listener still serves; if the two overlap (the same port on
//! 0.0.0.0 and 127.0.0.1) the old one is closed first and the bind waits
//! for its port. A bind that fails is logged with the reason and the old
//! listener keeps serving (bound again if it had to close).

use std::net::SocketAddr;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::admin::{self, AdminServer};

/// The admin server and its moves.
pub(super) struct AdminListener {
    server: Option<AdminServer>,
    /// The address the config asks for.
    wanted: Option<SocketAddr>,
    /// A rebind task holds the server until it reports back.
    rebinding: bool,
    /// What every server serves from (metrics, the registry's status, the
    /// supervisor for `/status`).
    sources: admin::Sources,
    tracker: TaskTracker,
    /// The shutdown tree's `admin` token.
    stop: CancellationToken,
    /// A move's result; the supervisor's inbox holds the receiver.
    rebound: mpsc::Sender<Option<AdminServer>>,
}

impl AdminListener {
    /// Serves on `wanted` (if set): on `inherited`, the listener an
    /// upgrade handed over for that address, else on a new one. A port
    /// that cannot be bound is logged and the agent runs without it
    /// (registration matters more).
    pub async fn start(
        wanted: Option<SocketAddr>,
        inherited: Option<std::net::TcpListener>,
        sources: admin::Sources,
        tracker: TaskTracker,
        stop: CancellationToken,
        rebound: mpsc::Sender<Option<AdminServer>>,
    ) -> AdminListener {
        let handed = match (wanted, inherited) {
            (Some(listen), Some(listener)) => tokio::net::TcpListener::from_std(listener)
                .and_then(|l| admin::serve_on(l, listen, sources.clone(), &tracker, &stop))
                .ok(),
            _ => None,
        };
        let server = match wanted {
            _ if handed.is_some() => handed,
            Some(listen) => match admin::start(listen, sources.clone(), &tracker, &stop).await {
                Ok(server) => Some(server),
                Err(error) => {
                    error!(%listen, %error, "cannot start the admin server; running without it (fix agent.admin.listen and reload)");
                    None
                }
            },
            None => None,
        };
        AdminListener {
            server,
            wanted,
            rebinding: false,
            sources,
            tracker,
            stop,
            rebound,
        }
    }

    /// The listener to hand over on an upgrade (none while it moves).
    pub fn handed(&self) -> Option<crate::handover::HandedTcp> {
        self.server.as_ref().map(AdminServer::handed)
    }

    /// The config wants `wanted` now.
    pub fn want(&mut self, wanted: Option<SocketAddr>) {
        self.wanted = wanted;
        self.rebind();
    }

    /// A move finished: `server` serves now (or none does).
    pub fn rebound(&mut self, server: Option<AdminServer>) {
        self.server = server;
        self.rebinding = false;
        let serving = self.server.as_ref().map(|s| s.listen);
        if serving != self.wanted {
            self.rebind();
        }
    }

    /// Moves the listener to the address the config wants, beside the loop.
    fn rebind(&mut self) {
        if self.rebinding {
            return; // `rebound` checks `wanted` again
        }
        let Some(listen) = self.wanted else {
            if self.server.take().is_some() {
                info!("admin server stopped (agent.admin removed)");
            }
            return;
        };
        if self.server.as_ref().is_some_and(|s| s.listen == listen) {
            return;
        }
        self.rebinding = true;
        let old = self.server.take();
        let sources = self.sources.clone();
        let tracker = self.tracker.clone();
        let reply = self.rebound.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let server = admin::rebind(old, listen, sources, &tracker, &stop).await;
            let _ = reply.send(server).await;
        });
    }
}
