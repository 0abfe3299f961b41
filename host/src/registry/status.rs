//! What the registry actor tells the rest of the agent about its
//! registrations: [`RegistryStatus`], computed from the session and the
//! target after every round.

use tokio::time::Instant;

use super::session::Session;
use crate::desired::{RecordKind, Target};

/// What the actor knows about its registrations, for `/readyz`, systemd
/// readiness and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryStatus {
    /// The last etcd request succeeded.
    pub connected: bool,
    /// The lease holding our keys, while etcd confirms it alive.
    pub lease: Option<i64>,
    pub desired: usize,
    /// Desired records etcd holds as we wrote them, under a live lease.
    pub registered: usize,
    /// Every desired record is registered under a live lease.
    pub ready: bool,
    /// When the lease runs out without another renewal (for the status).
    pub lease_expires_at: Option<Instant>,
    /// The instance records (keys) that are desired but not yet held as
    /// written under the lease: the status's `pending` instances.
    pub pending: Vec<String>,
    /// The last anti-entropy check, and how many keys it rewrote.
    pub last_verify: Option<(std::time::SystemTime, usize)>,
}

impl RegistryStatus {
    /// `3/5 instances registered; etcd connected`: for people (`/readyz`,
    /// `systemctl status`).
    pub fn summary(&self) -> String {
        format!(
            "{}/{} instances registered; etcd {}",
            self.registered,
            self.desired,
            if self.connected {
                "connected"
            } else {
                "unreachable"
            }
        )
    }

    /// The status of `target` as `session` holds it now. Instances count
    /// Yggdrasil records; ready needs every key (naming keys too).
    pub(super) fn of(
        session: Option<&Session>,
        target: &Target,
        connected: bool,
        last_verify: Option<(std::time::SystemTime, usize)>,
    ) -> Self {
        let now = Instant::now();
        let instance_keys = || {
            target
                .records
                .iter()
                .filter(|(_, record)| record.kind == RecordKind::Instance)
                .map(|(key, _)| key.clone())
        };
        let mut pending = Vec::new();
        let mut expires_at = None;
        let (lease, registered, held) = match session {
            Some(session) => {
                let live_lease = session
                    .lease
                    .as_ref()
                    .filter(|l| l.expires_at().is_some_and(|at| at > now))
                    .map(|l| l.id);
                expires_at = session
                    .lease
                    .as_ref()
                    .and_then(|l| l.expires_at())
                    .filter(|at| *at > now);
                let (mut registered, mut held) = (0, 0);
                if let Some(lease_id) = live_lease {
                    for (key, record) in &target.records {
                        if session.holds(key, record, lease_id) {
                            held += 1;
                            registered += usize::from(record.kind == RecordKind::Instance);
                        } else if record.kind == RecordKind::Instance {
                            pending.push(key.clone());
                        }
                    }
                } else {
                    pending.extend(instance_keys());
                }
                (live_lease, registered, held)
            }
            None => {
                pending.extend(instance_keys());
                (None, 0, 0)
            }
        };
        RegistryStatus {
            connected,
            lease,
            desired: target.instances(),
            registered,
            ready: connected && held == target.records.len() && lease.is_some(),
            lease_expires_at: expires_at,
            pending,
            last_verify,
        }
    }
}
