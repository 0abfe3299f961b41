//! One compile cache for the Python and JavaScript plugins per test run.
//!
//! These components are 12-18 MB and each takes seconds to compile, tens
//! of seconds at nice 10 on a busy 2-core machine. The tests that run them
//! point their agents at one cache folder for the whole test process, and
//! ask for the components they load to be compiled into it first
//! (`warm_polyglot_cache`): each component is compiled cold once per run,
//! by whichever test needs it first, and a test asks for at most two
//! that no earlier test compiled. A test that needs a cold compile (a
//! SIGTERM in the middle of one) keeps a cache of its own.
//!
//! The folder is made by us with mode 0700 under `target/`, so it passes
//! the agent's trust rules for a cache (owned by the agent's user, not
//! writable by group or others), and is removed when the test process
//! exits.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::Digest;

use super::{
    Agent, ConfigFile, Etcd, install_polyglot_plugin, polyglot_plugin_file, wait_for,
    workspace_root,
};

/// How long compiling one or two of these components cold may take (at
/// nice 10, beside other tests and a `cargo build`).
pub const COMPILE_PATIENCE: Duration = Duration::from_secs(240);

/// The compile cache folder the polyglot tests share in this test process.
pub fn polyglot_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let parent = workspace_root().join("target/test-plugin-cache");
        std::fs::create_dir_all(&parent).expect("create target/test-plugin-cache");
        // tempfile creates the folder with mode 0700.
        let dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&parent)
            .expect("create the shared plugin cache")
            .keep();
        extern "C" fn remove_cache() {
            if let Some(dir) = CACHE.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: registers a plain function to run at process exit.
        unsafe { libc::atexit(remove_cache) };
        dir
    })
}

/// `agent.plugins` for the polyglot tests: the default limits (what an
/// operator would run these with), quick rounds, and the compile cache
/// `cache` (`polyglot_cache()`, or a folder of the test's own).
pub fn polyglot_plugins_section(cache: &Path, settings: &str) -> String {
    format!(
        "  plugins:\n    dir: plugins\n    interval: 1s\n    cacheDir: {}\n    settings:\n{settings}",
        cache.display()
    )
}

/// Has `polyglot_cache()` hold the compiled code of each of the Python or
/// JavaScript plugins `names` (as built by `scripts/build-polyglot`): the
/// ones no earlier call compiled are compiled now, together, by an agent of
/// their own. One warm-up runs at a time; a call waits for the one running.
/// At most two new components a call, so no test compiles more.
pub async fn warm_polyglot_cache(names: &[&str]) {
    static WARMED: tokio::sync::Mutex<BTreeSet<String>> =
        tokio::sync::Mutex::const_new(BTreeSet::new());
    let mut warmed = WARMED.lock().await;
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !warmed.contains(*n))
        .collect();
    if missing.is_empty() {
        return;
    }
    assert!(
        missing.len() <= 2,
        "warm at most two large components in one test: {missing:?}"
    );
    let cache = polyglot_cache();
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = polyglot_plugins_section(cache, "      {}\n");
    let mut agent = Agent::prepare(&config);
    let mut entries = Vec::new();
    for name in &missing {
        install_polyglot_plugin(&agent.plugins_dir(), name, name);
        let bytes = std::fs::read(polyglot_plugin_file(name)).unwrap();
        entries.push(hex::encode(sha2::Sha256::digest(&bytes)));
    }
    let started = Instant::now();
    agent.spawn(&[]);
    wait_for(
        COMPILE_PATIENCE,
        &format!("{missing:?} compiled into {}", cache.display()),
        || {
            let entries = &entries;
            async move { entries.iter().all(|e| cached(cache, e)).then_some(()) }
        },
    )
    .await;
    eprintln!(
        "compiled {missing:?} cold into the shared cache in {:?}",
        started.elapsed()
    );
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(30));
    warmed.extend(missing.iter().map(ToString::to_string));
}

/// On a run of the whole suite, builds the Python and JavaScript plugins
/// and compiles them into `polyglot_cache()` on a thread of its own, from
/// the first etcd a test starts. The tests that load them come late in the
/// suite's order and run one at a time (`heavy_test`); without this each
/// built or compiled its components inside its own run while the machine
/// sat mostly idle, waiting on the fault tests ahead of it (about two
/// minutes of a fresh clone's suite). A run of chosen tests builds only
/// what they ask for, when they ask. When the preparation fails, the tests
/// that need it do the same work again and fail with its error.
#[cfg(test)]
pub fn prepare_polyglot_in_background() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if !whole_suite_run() {
        return;
    }
    STARTED.call_once(|| {
        std::thread::Builder::new()
            .name("polyglot-prepare".into())
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the preparation");
                runtime.block_on(async {
                    super::built_polyglot_plugins();
                    for names in [
                        &["python-example", "js-example"][..],
                        &["py_hostile", "js_hostile"],
                        &["js_with_http"],
                    ] {
                        warm_polyglot_cache(names).await;
                    }
                });
            })
            .expect("spawn the polyglot preparation");
    });
}

/// Whether this test process runs every test: no name filter among its
/// arguments (libtest's options that take a value are skipped with it).
#[cfg(test)]
fn whole_suite_run() -> bool {
    const WITH_VALUE: &[&str] = &[
        "--test-threads",
        "--skip",
        "--format",
        "--logfile",
        "--color",
        "-Z",
        "--shuffle-seed",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if arg == "--list" || !arg.starts_with('-') {
            return false;
        }
    }
    true
}

/// Whether `cache` holds an entry for the component whose SHA-256 is
/// `digest` (entries are named by it; temp files start with a dot).
fn cached(cache: &Path, digest: &str) -> bool {
    std::fs::read_dir(cache).is_ok_and(|dir| {
        dir.flatten().any(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(digest))
        })
    })
}
