//! What each plugin's `Store` holds: the (empty) WASI context, the memory
//! limiter, the CPU budget of the current call, and what the host imports
//! of every WIT version read (settings, the round's system snapshot, the
//! plugin's log).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tracing::{debug, error, info, warn};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::stdio::{GuestOutput, MAX_LINES_PER_CALL};
use super::system::SystemSnapshot;
use super::ticker::EpochTicker;

/// A plugin's store data: WASI (empty), limits and what the host imports see.
pub struct PluginState {
    name: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) settings: Vec<(String, String)>,
    pub(super) system: Arc<SystemSnapshot>,
    /// Epoch ticks the current call may still run for.
    pub(super) cpu_ticks_left: u64,
    /// Lines logged during the current call (host log and stdio together).
    pub(super) lines: Arc<AtomicU32>,
    pub(super) ticker: Arc<EpochTicker>,
}

impl PluginState {
    pub fn new(
        name: Arc<str>,
        settings: Vec<(String, String)>,
        memory_limit: u64,
        system: Arc<SystemSnapshot>,
        ticker: Arc<EpochTicker>,
    ) -> Self {
        let lines = Arc::new(AtomicU32::new(0));
        let mut wasi = WasiCtx::builder();
        // No preopened folders, no environment, no arguments, no network:
        // the plugin sees the machine only through the `host` interface.
        wasi.stdout(GuestOutput::new(name.clone(), "stdout", lines.clone()))
            .stderr(GuestOutput::new(name.clone(), "stderr", lines.clone()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        PluginState {
            name,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
                peak: 0,
            },
            settings,
            system,
            cpu_ticks_left: 0,
            lines,
            ticker,
        }
    }

    /// A line the plugin logged through the host.
    pub(super) fn guest_log(&mut self, level: tracing::Level, message: &str) {
        let n = self.lines.fetch_add(1, Ordering::Relaxed);
        if n >= MAX_LINES_PER_CALL {
            return;
        }
        let message: String = message.chars().take(4096).collect();
        let plugin = &*self.name;
        match level {
            tracing::Level::ERROR => error!(plugin = %plugin, "{message}"),
            tracing::Level::WARN => warn!(plugin = %plugin, "{message}"),
            tracing::Level::INFO => info!(plugin = %plugin, "{message}"),
            tracing::Level::DEBUG => debug!(plugin = %plugin, "{message}"),
            _ => tracing::trace!(plugin = %plugin, "{message}"),
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses linear memory beyond the limit (the guest traps with a message
/// saying so) and remembers the peak, for recycling.
pub struct MemoryLimiter {
    limit: usize,
    pub(super) peak: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            wasmtime::bail!(
                "memory limit exceeded: the plugin asked for {:.1} MiB of linear memory, memoryLimit is {:.1} MiB",
                desired as f64 / (1 << 20) as f64,
                self.limit as f64 / (1 << 20) as f64
            );
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
