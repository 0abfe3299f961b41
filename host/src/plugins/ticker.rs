//! The epoch ticker: a plain OS thread that advances the engine's epoch
//! while a plugin call is running, which is what turns a CPU budget counted
//! in ticks into time.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often the engine's epoch advances: the granularity of CPU budgets.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Advances the engine's epoch every [`EPOCH_TICK`] while a plugin call is
/// running, and sleeps otherwise: an idle agent does not wake 100 times a
/// second for nothing.
pub struct EpochTicker {
    calls: Mutex<usize>,
    wake: Condvar,
}

/// Held for the duration of a plugin call.
pub struct Ticking(Arc<EpochTicker>);

impl EpochTicker {
    /// Starts the ticker thread for `engine`; it holds only a weak
    /// reference and ends within a second of the engine being dropped.
    pub fn start(engine: &wasmtime::Engine) -> std::io::Result<Arc<EpochTicker>> {
        let ticker = Arc::new(EpochTicker {
            calls: Mutex::new(0),
            wake: Condvar::new(),
        });
        let weak = engine.weak();
        let thread_ticker = ticker.clone();
        std::thread::Builder::new()
            .name("ygg-epoch-ticker".into())
            .spawn(move || run_ticker(weak, thread_ticker))?;
        Ok(ticker)
    }

    pub fn busy(self: &Arc<Self>) -> Ticking {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        *calls += 1;
        if *calls == 1 {
            self.wake.notify_one();
        }
        Ticking(self.clone())
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        let mut calls = self.0.calls.lock().unwrap_or_else(|e| e.into_inner());
        *calls -= 1;
    }
}

/// The ticker thread: it ends within a second of the engine being dropped.
fn run_ticker(weak: wasmtime::EngineWeak, ticker: Arc<EpochTicker>) {
    loop {
        {
            let mut calls = ticker.calls.lock().unwrap_or_else(|e| e.into_inner());
            while *calls == 0 {
                calls = ticker
                    .wake
                    .wait_timeout(calls, Duration::from_secs(1))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if weak.upgrade().is_none() {
                    return;
                }
            }
        }
        std::thread::sleep(EPOCH_TICK);
        match weak.upgrade() {
            Some(engine) => engine.increment_epoch(),
            None => return,
        }
    }
}
