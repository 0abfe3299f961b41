//! The start-up phase: registration waits (boundedly) for the plugins in
//! the folder to load and answer once, so the first record carries their
//! metadata.

use std::time::Duration;

use tokio::time::Instant;

/// At start, registration waits this long at most for the plugins found in
/// the folder to load (from the compile cache that takes milliseconds; a
/// cold compile of a large component takes seconds, and registration does
/// not wait for it: its metadata is written when it comes).
const STARTUP_LOAD_WAIT: Duration = Duration::from_secs(2);
/// Then it waits at most one call's `timeout` plus this for their first
/// round, so the first record already carries their metadata.
const FIRST_ROUND_SLACK: Duration = Duration::from_millis(100);

/// The start-up phase: registration waits (boundedly) for the plugins in
/// the folder to load and answer once, so the first record carries their
/// metadata.
#[derive(Debug)]
pub(super) struct Startup {
    /// Until when to wait for the loads.
    loads_until: Instant,
    /// Once the first round is out: until when to wait for it, and how many
    /// plugins have not answered yet.
    round: Option<(Instant, usize)>,
}

/// What the start-up phase wants done next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartupStep {
    Wait,
    /// Send the first round to every loaded plugin.
    FirstRound,
    /// Start registering.
    Register,
}

impl Startup {
    pub fn new(now: Instant) -> Startup {
        Startup {
            loads_until: now + STARTUP_LOAD_WAIT,
            round: None,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.round.map_or(self.loads_until, |(until, _)| until)
    }

    /// `loads_done`: no scan or load is under way.
    pub fn step(&self, now: Instant, loads_done: bool) -> StartupStep {
        match self.round {
            None if loads_done || now >= self.loads_until => StartupStep::FirstRound,
            None => StartupStep::Wait,
            Some((until, waiting)) if waiting > 0 && now < until => StartupStep::Wait,
            Some(_) => StartupStep::Register,
        }
    }

    /// The first round went to `plugins` plugins, each with `timeout`.
    pub fn round_sent(&mut self, now: Instant, plugins: usize, timeout: Duration) {
        self.round = Some((now + timeout + FIRST_ROUND_SLACK, plugins));
    }

    /// A plugin answered the first round.
    pub fn answered(&mut self) {
        if let Some((_, waiting)) = self.round.as_mut() {
            *waiting = waiting.saturating_sub(1);
        }
    }

    pub fn waiting_for_loads(&self) -> bool {
        self.round.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn start_up_waits_for_loads_then_the_first_round_and_no_longer() {
        let start = Instant::now();
        let mut startup = Startup::new(start);
        assert_eq!(startup.step(start, false), StartupStep::Wait);
        assert_eq!(startup.deadline(), start + STARTUP_LOAD_WAIT);
        // Loads done early: the first round goes out at once.
        assert_eq!(startup.step(start, true), StartupStep::FirstRound);
        // A load that takes longer than the wait does not hold registration.
        let late = start + STARTUP_LOAD_WAIT;
        assert_eq!(startup.step(late, false), StartupStep::FirstRound);

        let timeout = Duration::from_secs(1);
        startup.round_sent(start, 2, timeout);
        assert!(!startup.waiting_for_loads());
        assert_eq!(startup.deadline(), start + timeout + FIRST_ROUND_SLACK);
        assert_eq!(startup.step(start, true), StartupStep::Wait);
        startup.answered();
        assert_eq!(startup.step(start, true), StartupStep::Wait);
        startup.answered();
        assert_eq!(startup.step(start, true), StartupStep::Register);

        // A plugin that never answers holds registration for one call's
        // timeout (plus the slack), no longer.
        let mut startup = Startup::new(start);
        startup.round_sent(start, 1, timeout);
        let just_before = start + timeout + FIRST_ROUND_SLACK - Duration::from_millis(1);
        assert_eq!(startup.step(just_before, true), StartupStep::Wait);
        assert_eq!(
            startup.step(start + timeout + FIRST_ROUND_SLACK, true),
            StartupStep::Register
        );
    }
}
