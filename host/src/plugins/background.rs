//! Compiling a plugin is background work: it runs on threads of low
//! priority (nice 10), so on a small machine the agent's own threads, and
//! etcd beside it, are scheduled first while a large component compiles
//! for seconds. wasmtime compiles a component's functions in parallel on
//! rayon's global pool, whose threads are lowered the same way.

use std::sync::Once;

use tokio::sync::oneshot;

/// The nice value of compile threads (0 is normal, 19 the lowest).
const COMPILE_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority (Linux: nice is per thread). A
/// failure leaves it as it was: priority is a courtesy, not a guarantee.
fn lower_this_thread() {
    // SAFETY: gettid and setpriority have no memory-safety preconditions;
    // PRIO_PROCESS with a thread id changes only that thread on Linux.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, COMPILE_NICE);
    }
}

/// Sets up rayon's global pool (used by wasmtime's parallel compilation)
/// with threads of low priority, once per process. If something built the
/// pool before, it stays as it is.
pub fn init_compile_pool() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("ygg-compile-{i}"))
            .start_handler(|_| lower_this_thread())
            .build_global();
    });
}

/// Runs `work` on a new thread of low priority; the answer comes through
/// the returned receiver. Nobody joins the thread: if the receiver is
/// dropped (the load was cancelled, the agent stops), the work finishes on
/// its own and its result is dropped.
pub fn spawn<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<oneshot::Receiver<T>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_this_thread();
            let _ = tx.send(work());
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> libc::c_int {
        // SAFETY: as in `lower_this_thread`.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        }
    }

    #[tokio::test]
    async fn work_runs_at_low_priority_and_the_caller_keeps_its_own() {
        let before = nice_of_this_thread();
        let nice = spawn("test-compile", nice_of_this_thread)
            .unwrap()
            .await
            .unwrap();
        assert_eq!(nice, COMPILE_NICE.max(before));
        assert_eq!(nice_of_this_thread(), before);
    }

    #[test]
    fn the_compile_pool_runs_at_low_priority() {
        init_compile_pool();
        let (nice, _) = rayon::join(nice_of_this_thread, || ());
        assert_eq!(nice, COMPILE_NICE.max(0));
    }
}
