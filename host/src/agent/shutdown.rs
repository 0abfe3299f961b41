//! The shutdown tree: one cancellation token per concern, each a child of
//! the agent's own, and every task the agent spawns tied to one of them.
//! A stop cancels them in a fixed order instead of relying on which field
//! is dropped when; a task that outlives its token is a bug, and the final
//! wait on the task tracker (bounded by `shutdownTimeout`) only catches an
//! etcd that does not answer.
//!
//! The order (`Supervisor::shutdown`):
//! 1. `inputs`: config reads and folder scans under way end, the folder
//!    watches go: nothing new comes in.
//! 2. `api`, `admin`: the local API (its socket removed; a call in flight
//!    gets its answer) and the admin server stop listening and close their
//!    connections.
//! 3. `plugins`, `checks`: plugin scans, loads and runners and every
//!    health check stop; nothing changes the target any more.
//! 4. The drain (`drainDelay`, if set): the keys go while the lease lives.
//! 5. The registry: `RegistryHandle::stop` deletes the keys and revokes
//!    the lease (bounded by `shutdownTimeout`); then `registry` ends its
//!    actor (and its lease keepers) if it overran.
//! 6. `state`: the state writer writes the last maintenance and ends.
//! 7. The agent's token, for anything left; then the tracker is waited on.

use tokio_util::sync::CancellationToken;

/// The agent's token and one child per concern (see the module docs for
/// what each stops and when).
#[derive(Debug, Clone)]
pub(crate) struct Stops {
    agent: CancellationToken,
    pub inputs: CancellationToken,
    pub api: CancellationToken,
    pub admin: CancellationToken,
    pub plugins: CancellationToken,
    pub checks: CancellationToken,
    pub registry: CancellationToken,
    pub state: CancellationToken,
}

impl Stops {
    pub fn new() -> Stops {
        let agent = CancellationToken::new();
        Stops {
            inputs: agent.child_token(),
            api: agent.child_token(),
            admin: agent.child_token(),
            plugins: agent.child_token(),
            checks: agent.child_token(),
            registry: agent.child_token(),
            state: agent.child_token(),
            agent,
        }
    }

    /// Step 7: everything not stopped yet.
    pub fn all(&self) {
        self.agent.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_concern_stops_on_its_own_and_the_agent_stops_all() {
        let stops = Stops::new();
        stops.inputs.cancel();
        assert!(stops.inputs.is_cancelled());
        assert!(!stops.api.is_cancelled() && !stops.state.is_cancelled());
        let child = stops.checks.child_token();
        stops.all();
        for token in [
            &stops.api,
            &stops.admin,
            &stops.plugins,
            &stops.checks,
            &stops.registry,
            &stops.state,
            &child,
        ] {
            assert!(token.is_cancelled());
        }
    }
}
