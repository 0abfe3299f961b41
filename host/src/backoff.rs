//! Capped exponential backoff, the one used by every retry loop: the
//! registry's etcd retries, the keepalive's stream reopens and the rebuild
//! of a failed plugin. Each owner counts its consecutive failures in a
//! [`Backoff`] and resets it on success; only the constants differ.
//!
//! A `Backoff` computes delays and keeps no clock: its owner sleeps, or
//! remembers when to try again.

use std::time::Duration;

use rand::Rng;

/// The doubling stops after this many steps, so the multiplication cannot
/// overflow whatever the cap (100 ms × 2^16 is about 1.8 hours).
const MAX_DOUBLINGS: u32 = 16;

/// Consecutive failures and the delay they call for: `first` after the
/// first failure, doubling after each further one up to `cap`, then, with
/// jitter, multiplied by a random factor in `[low, high)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    jitter: Option<(f64, f64)>,
    failures: u32,
}

impl Backoff {
    /// No failures yet; delays start at `first` and stop growing at `cap`.
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            jitter: None,
            failures: 0,
        }
    }

    /// Spreads each delay by a random factor in `[low, high)`, applied after
    /// the cap, so a fleet of agents does not retry in step.
    pub fn with_jitter(mut self, low: f64, high: f64) -> Backoff {
        assert!(
            0.0 <= low && low < high,
            "jitter range [{low}, {high}) is empty or negative"
        );
        self.jitter = Some((low, high));
        self
    }

    /// A new cap for the next delays (the registry's `retryInterval` can
    /// change on reload); the failures counted so far stay.
    pub fn set_cap(&mut self, cap: Duration) {
        self.cap = cap;
    }

    /// Consecutive failures since the last [`reset`](Backoff::reset).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        self.fail_with(&mut rand::rng())
    }

    /// [`fail`](Backoff::fail) drawing the jitter from `rng`.
    pub fn fail_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(MAX_DOUBLINGS);
        let delay = self.first.saturating_mul(1 << doublings).min(self.cap);
        match self.jitter {
            Some((low, high)) => jitter_with(delay, low, high, rng),
            None => delay,
        }
    }

    /// A success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `d` multiplied by a random factor in `[low, high)`.
pub fn jitter(d: Duration, low: f64, high: f64) -> Duration {
    jitter_with(d, low, high, &mut rand::rng())
}

fn jitter_with<R: Rng + ?Sized>(d: Duration, low: f64, high: f64, rng: &mut R) -> Duration {
    d.mul_f64(rng.random_range(low..high))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: Duration = Duration::from_millis(1);

    /// A random source stuck at one value: 0 draws the low end of a range,
    /// `u64::MAX` the top.
    struct Fixed(u64);

    impl rand::RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            self.0 as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(self.0 as u8);
        }
    }

    fn delays(backoff: &mut Backoff, n: usize) -> Vec<Duration> {
        (0..n).map(|_| backoff.fail()).collect()
    }

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        assert_eq!(
            delays(&mut backoff, 7),
            [100, 200, 400, 800, 1000, 1000, 1000].map(|ms| ms * MS)
        );
        assert_eq!(backoff.failures(), 7);
    }

    #[test]
    fn a_cap_below_the_first_delay_wins() {
        let mut backoff = Backoff::new(Duration::from_secs(1), 300 * MS);
        assert_eq!(delays(&mut backoff, 3), [300 * MS; 3]);
    }

    #[test]
    fn stops_doubling_but_never_overflows() {
        let mut backoff = Backoff::new(100 * MS, Duration::MAX);
        let all = delays(&mut backoff, 40);
        assert_eq!(all[16], 100 * MS * (1 << 16));
        assert_eq!(all[39], all[16], "growth stops after 16 doublings");
        let mut huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        assert_eq!(delays(&mut huge, 3)[2], Duration::MAX);
    }

    #[test]
    fn reset_starts_again_from_the_first_delay() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        delays(&mut backoff, 5);
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert_eq!(backoff.fail(), Duration::from_secs(1));
        assert_eq!(backoff.fail(), Duration::from_secs(2));
    }

    #[test]
    fn a_new_cap_applies_to_the_next_delay_and_keeps_the_count() {
        let mut backoff = Backoff::new(100 * MS, Duration::from_secs(10));
        delays(&mut backoff, 4);
        backoff.set_cap(500 * MS);
        assert_eq!(backoff.fail(), 500 * MS);
        backoff.set_cap(Duration::from_secs(10));
        assert_eq!(backoff.fail(), 3200 * MS, "sixth failure: 100 ms × 2^5");
    }

    #[test]
    fn jitter_spans_its_range_after_the_cap() {
        let mut low = Backoff::new(100 * MS, 1000 * MS).with_jitter(0.5, 1.0);
        let mut high = low.clone();
        let lows: Vec<Duration> = (0..6).map(|_| low.fail_with(&mut Fixed(0))).collect();
        assert_eq!(lows, [50, 100, 200, 400, 500, 500].map(|ms| ms * MS));
        for capped in [100, 200, 400, 800, 1000, 1000] {
            let delay = high.fail_with(&mut Fixed(u64::MAX));
            // At most the cap: `Duration` rounds the top of the range to it.
            assert!(delay <= capped * MS, "{delay:?} above {capped} ms");
            assert!(
                delay > capped * MS * 99 / 100,
                "{delay:?} far below {capped} ms"
            );
        }
    }

    #[test]
    fn jittered_delays_stay_in_bounds_and_spread() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(100 * MS, 1000 * MS).with_jitter(0.5, 1.0);
        delays(&mut backoff, 10);
        let draws: Vec<Duration> = (0..2000).map(|_| backoff.fail_with(&mut rng)).collect();
        assert!(draws.iter().all(|d| (500 * MS..1000 * MS).contains(d)));
        let (min, max) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
        assert!(*min < 520 * MS && *max > 980 * MS, "{min:?}..{max:?}");
    }

    #[test]
    fn jitter_alone_keeps_its_bounds() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..2000 {
            let d = jitter_with(Duration::from_secs(10), 0.8, 1.0, &mut rng);
            assert!((Duration::from_secs(8)..Duration::from_secs(10)).contains(&d));
        }
    }
}
