//! What each plugin's `Store` holds: the WASI context (empty; for a check
//! call, TCP to its target's addresses only), the memory limiter, the CPU budget of the current call, and what the host imports
//! of every WIT version read (settings, the round's system snapshot, the
//! plugin's log).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tracing::{debug, error, info, warn};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

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
        Self::build(name, settings, memory_limit, system, ticker, |wasi| {
            // No network: the plugin sees the machine only through the
            // `host` interface.
            wasi.allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false);
        })
    }

    /// The state of one check call: as [`PluginState::new`], plus TCP
    /// connections to `allowed` and nowhere else. Refused: every other
    /// address, listening, accepting, binding a chosen address or port,
    /// UDP, and name resolution. The one bind allowed is the implicit one
    /// of a connect (`0.0.0.0:0` / `[::]:0`, an ephemeral port the kernel
    /// picks), which wasmtime checks before every connect.
    pub fn for_check(
        name: Arc<str>,
        settings: Vec<(String, String)>,
        memory_limit: u64,
        system: Arc<SystemSnapshot>,
        ticker: Arc<EpochTicker>,
        allowed: Arc<BTreeSet<SocketAddr>>,
    ) -> Self {
        Self::build(name, settings, memory_limit, system, ticker, |wasi| {
            wasi.allow_tcp(true)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .socket_addr_check(move |addr, used| {
                    let ok = socket_allowed(&allowed, addr, used);
                    Box::pin(async move { ok })
                });
        })
    }

    fn build(
        name: Arc<str>,
        settings: Vec<(String, String)>,
        memory_limit: u64,
        system: Arc<SystemSnapshot>,
        ticker: Arc<EpochTicker>,
        network: impl FnOnce(&mut WasiCtxBuilder),
    ) -> Self {
        let lines = Arc::new(AtomicU32::new(0));
        let mut wasi = WasiCtx::builder();
        // No preopened folders, no environment, no arguments.
        wasi.stdout(GuestOutput::new(name.clone(), "stdout", lines.clone()))
            .stderr(GuestOutput::new(name.clone(), "stderr", lines.clone()));
        network(&mut wasi);
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

    /// A line the plugin logged through the host: cut at 4,096
    /// characters, control characters escaped (a newline in it cannot
    /// start a line of its own in the agent's log).
    pub(super) fn guest_log(&mut self, level: tracing::Level, message: &str) {
        let n = self.lines.fetch_add(1, Ordering::Relaxed);
        if n >= MAX_LINES_PER_CALL {
            return;
        }
        let message: String = message.chars().take(4096).collect();
        let message = crate::status::escape(&message);
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

/// A check call's socket rule: connect to `allowed` only, after the
/// implicit bind of a connect to the unspecified address, port 0.
fn socket_allowed(allowed: &BTreeSet<SocketAddr>, addr: SocketAddr, used: SocketAddrUse) -> bool {
    match used {
        SocketAddrUse::TcpConnect => allowed.contains(&addr),
        SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
        _ => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_may_only_connect_to_its_target() {
        let target: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        let allowed = BTreeSet::from([target]);
        let ok = |addr: &str, used| socket_allowed(&allowed, addr.parse().unwrap(), used);
        assert!(ok("127.0.0.1:6379", SocketAddrUse::TcpConnect));
        assert!(ok("0.0.0.0:0", SocketAddrUse::TcpBind));
        assert!(ok("[::]:0", SocketAddrUse::TcpBind));
        assert!(!ok("127.0.0.1:2379", SocketAddrUse::TcpConnect));
        assert!(!ok("127.0.0.2:6379", SocketAddrUse::TcpConnect));
        assert!(!ok("0.0.0.0:6379", SocketAddrUse::TcpBind));
        assert!(!ok("127.0.0.1:0", SocketAddrUse::TcpBind));
        assert!(!ok("0.0.0.0:0", SocketAddrUse::TcpListen));
        assert!(!ok("127.0.0.1:6379", SocketAddrUse::TcpAccept));
        for used in [
            SocketAddrUse::UdpBind,
            SocketAddrUse::UdpSend,
            SocketAddrUse::UdpReceive,
        ] {
            assert!(!ok("127.0.0.1:6379", used));
            assert!(!ok("0.0.0.0:0", used));
        }
    }
}
