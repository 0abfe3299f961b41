//! Cold compiles run in a short-lived child process, never in the agent:
//! the agent's own binary started again as `ygg-agent __compile-plugin`
//! (`/proc/self/exe`, so the child is the very build that will load the
//! code, even after a package replaced the file), at nice 10, with an
//! address-space limit (`RLIMIT_AS`) and a wall-clock limit. The compiler's
//! working memory (hundreds of MiB for a Python or JavaScript plugin) dies
//! with the child instead of staying in the agent's heap.
//!
//! The plugin's bytes reach the child as its stdin, a sealed memfd; the
//! child writes the compiled code (what `Component::serialize` would) to
//! its stdout, another memfd the agent created, which the agent then
//! sealed and maps (or copies into the compile cache in the kernel and
//! maps from there). Who holds what: the load task owns the child; dropping
//! the task (a newer version of the plugin, the file gone, shutdown) kills
//! it (`kill_on_drop`), and tokio reaps it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use rustix::fs::{MemfdFlags, SealFlags};
use tokio::io::AsyncReadExt;

/// The hidden subcommand that compiles: stdin the component, stdout the code.
pub const SUBCOMMAND: &str = "__compile-plugin";

/// Environment variables overriding the child's limits.
pub const MEMORY_LIMIT_ENV: &str = "YGG_AGENT_COMPILE_MEMORY_MIB";
pub const TIMEOUT_ENV: &str = "YGG_AGENT_COMPILE_TIMEOUT_SECS";

/// Address space a compile may use: the 18 MB Python plugin peaks near
/// 1 GiB of address space (most of it reserved, not touched).
pub const DEFAULT_MEMORY_LIMIT: u64 = 4 << 30;

/// Wall-clock time a compile may take: the Python plugin takes 5-12 s in a
/// release build, and over 300 s was seen at nice 10 on two cores with a
/// load average of 20 (a debug build among many compilers).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

/// The nice value of the child (0 normal, 19 lowest).
const CHILD_NICE: i32 = 10;

/// What the child writes to stderr that the agent keeps for the log.
const MAX_CHILD_STDERR: u64 = 4 << 10;

/// The child's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildLimits {
    pub memory: u64,
    pub timeout: Duration,
}

impl ChildLimits {
    /// The defaults, overridden by [`MEMORY_LIMIT_ENV`] and [`TIMEOUT_ENV`]
    /// when they hold a positive whole number (a warning names one that
    /// does not).
    pub fn from_env() -> ChildLimits {
        let read = |name: &str| -> Option<u64> {
            let value = std::env::var(name).ok()?;
            match value.trim().parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    tracing::warn!(variable = name, %value, "ignoring a compile limit that is not a positive whole number");
                    None
                }
            }
        };
        ChildLimits {
            memory: read(MEMORY_LIMIT_ENV).map_or(DEFAULT_MEMORY_LIMIT, |mib| mib << 20),
            timeout: read(TIMEOUT_ENV).map_or(DEFAULT_TIMEOUT, Duration::from_secs),
        }
    }
}

/// Why a compile child produced nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChildError {
    #[error("cannot start the compile process: {0}")]
    Spawn(String),
    #[error(
        "the compile process ran longer than its {0:?} limit and was killed ({TIMEOUT_ENV} sets it)"
    )]
    Timeout(Duration),
    #[error(
        "the compile process {how} (memory limit {limit_mib} MiB of address space, {MEMORY_LIMIT_ENV} sets it){stderr}"
    )]
    Died {
        how: String,
        limit_mib: u64,
        stderr: String,
    },
    /// The component did not compile: an answer about the plugin.
    #[error("{0}")]
    Compile(String),
}

/// Compiles `bytes` in a child process under `limits`; the compiled code
/// comes back in a sealed memfd. Cancel-safe: dropping the future kills
/// the child.
pub async fn compile(bytes: &[u8], limits: ChildLimits) -> Result<File, ChildError> {
    let spawn_error = |e: std::io::Error| ChildError::Spawn(e.to_string());
    let input = sealed_memfd("ygg-plugin-wasm", bytes).map_err(spawn_error)?;
    let output = memfd("ygg-plugin-code").map_err(spawn_error)?;
    let program = if std::path::Path::new("/proc/self/exe").exists() {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().map_err(spawn_error)?
    };
    let mut command = tokio::process::Command::new(program);
    command
        .arg(SUBCOMMAND)
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(output.try_clone().map_err(spawn_error)?))
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    let memory = limits.memory;
    // SAFETY: between fork and exec the closure only makes two system
    // calls (setpriority, setrlimit), both async-signal-safe, and touches
    // no memory but its captured integer.
    unsafe {
        command.pre_exec(move || {
            libc::setpriority(libc::PRIO_PROCESS, 0, CHILD_NICE);
            let limit = libc::rlimit {
                rlim_cur: memory,
                rlim_max: memory,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(spawn_error)?;
    let mut stderr = child.stderr.take();
    let run = async {
        let mut text = Vec::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.take(MAX_CHILD_STDERR).read_to_end(&mut text).await;
        }
        (child.wait().await, text)
    };
    let finished = tokio::time::timeout(limits.timeout, run).await;
    let (status, stderr) = match finished {
        Ok((status, stderr)) => (status.map_err(spawn_error)?, stderr),
        Err(_) => {
            // Dropping `child` below kills it too; kill now so the memory
            // is back before the error is reported.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(ChildError::Timeout(limits.timeout));
        }
    };
    let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
    if status.success() {
        let mut output = output;
        output.rewind().map_err(spawn_error)?;
        seal(&output).map_err(spawn_error)?;
        return Ok(output);
    }
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(COMPILE_FAILED), _) => Err(ChildError::Compile(stderr)),
        (code, signal) => Err(ChildError::Died {
            how: match (code, signal) {
                (_, Some(signal)) => {
                    format!("was killed by signal {signal} ({})", signal_name(signal))
                }
                (Some(code), None) => format!("exited with status {code}"),
                (None, None) => "ended for no reason given".into(),
            },
            limit_mib: memory >> 20,
            stderr: if stderr.is_empty() {
                String::new()
            } else {
                format!(": {}", stderr.replace('\n', " | "))
            },
        }),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL: killed from outside, or by the kernel out of memory",
        libc::SIGABRT => "SIGABRT: most often an allocation over the memory limit",
        libc::SIGSEGV => "SIGSEGV: most often a stack or mapping over the memory limit",
        libc::SIGBUS => "SIGBUS",
        _ => "a signal",
    }
}

/// The child's exit status when the component did not compile.
const COMPILE_FAILED: i32 = 3;

fn memfd(name: &str) -> std::io::Result<File> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    Ok(File::from(fd))
}

/// No more writes, growth or shrinking: the mapped code stays what the
/// child wrote.
fn seal(file: &File) -> std::io::Result<()> {
    rustix::fs::fcntl_add_seals(
        file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    Ok(())
}

fn sealed_memfd(name: &str, bytes: &[u8]) -> std::io::Result<File> {
    let mut file = memfd(name)?;
    file.write_all(bytes)?;
    file.rewind()?;
    seal(&file)?;
    Ok(file)
}

/// `ygg-agent __compile-plugin`, if that is what this process was started
/// as: compiles stdin to stdout and returns the exit code. `None` for
/// every other command line.
pub fn main_if_asked() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != SUBCOMMAND || args.next().is_some() {
        return None;
    }
    Some(child_main())
}

fn child_main() -> ExitCode {
    // `systemctl kill -s USR2` (an upgrade in place) signals every process
    // of the unit: a compile under way is not what it is meant for.
    // SAFETY: setting a signal's disposition to ignore, before any thread.
    unsafe {
        libc::signal(libc::SIGUSR2, libc::SIG_IGN);
    }
    let mut bytes = Vec::new();
    if let Err(error) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("cannot read the component: {error}");
        return ExitCode::from(1);
    }
    let engine = match wasmtime::Engine::new(&super::engine::engine_config()) {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("cannot create the engine: {error:#}");
            return ExitCode::from(1);
        }
    };
    let compiled = match engine.precompile_component(&bytes) {
        Ok(compiled) => compiled,
        Err(error) => {
            eprintln!("{error:#}");
            return ExitCode::from(COMPILE_FAILED as u8);
        }
    };
    drop(bytes);
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(&compiled).and_then(|()| stdout.flush()) {
        eprintln!("cannot write the compiled code: {error}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
