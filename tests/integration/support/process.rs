//! A process as Linux shows it in `/proc/<pid>/status`: its memory, its
//! threads, its state, read by field name.

/// The field `name` of `/proc/<pid>/status` (`VmRSS`, `Threads`, `State`,
/// …), its value trimmed; `None` when the process or the field is gone.
pub fn proc_status(pid: u32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let (field, value) = line.split_once(':')?;
        (field == name).then(|| value.trim().to_string())
    })
}

/// A size field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …) in KiB.
pub fn proc_status_kib(pid: u32, name: &str) -> Option<u64> {
    proc_status(pid, name)?
        .strip_suffix(" kB")?
        .trim()
        .parse()
        .ok()
}

/// The resident set of process `pid` in MiB (0 once it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0
}
