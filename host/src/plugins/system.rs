//! Facts about the machine that plugins may see (SPEC §5), read once per
//! collection round and shared by every plugin. Reading never fails: a fact
//! that cannot be read is zero or empty.

use std::time::Duration;

/// The host's view of the machine at the start of a collection round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SystemSnapshot {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub hostname: String,
    pub uptime: Duration,
    pub cpu_count: u32,
}

/// Reads `/proc` and the hostname.
pub fn read() -> SystemSnapshot {
    let mut snapshot = SystemSnapshot {
        cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        hostname: hostname(),
        ..SystemSnapshot::default()
    };
    if let Ok(loadavg) = std::fs::read_to_string("/proc/loadavg") {
        let mut fields = loadavg
            .split_whitespace()
            .map(|f| f.parse::<f64>().unwrap_or(0.0));
        snapshot.load1 = fields.next().unwrap_or(0.0);
        snapshot.load5 = fields.next().unwrap_or(0.0);
        snapshot.load15 = fields.next().unwrap_or(0.0);
    }
    if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
        snapshot.memory_total_bytes = meminfo_kib(&meminfo, "MemTotal:") * 1024;
        snapshot.memory_available_bytes = meminfo_kib(&meminfo, "MemAvailable:") * 1024;
    }
    if let Ok(uptime) = std::fs::read_to_string("/proc/uptime")
        && let Some(seconds) = uptime
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<f64>().ok())
    {
        snapshot.uptime = Duration::from_secs_f64(seconds.max(0.0));
    }
    snapshot
}

fn meminfo_kib(meminfo: &str, field: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let snapshot = read();
        assert!(snapshot.cpu_count >= 1);
        assert!(snapshot.memory_total_bytes > 0);
        assert!(snapshot.memory_available_bytes <= snapshot.memory_total_bytes);
        assert!(!snapshot.hostname.is_empty());
        assert!(snapshot.uptime > Duration::ZERO);
        assert!(snapshot.load1 >= 0.0);
    }

    #[test]
    fn meminfo_fields() {
        let text = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal:"), 24_000_000);
        assert_eq!(meminfo_kib(text, "MemAvailable:"), 23_000_000);
        assert_eq!(meminfo_kib(text, "Nope:"), 0);
    }
}
