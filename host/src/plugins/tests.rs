use super::*;
use sha2::Digest;

struct Harness {
    host: PluginHost,
    loads: mpsc::Receiver<LoadOutcome>,
    _results: mpsc::Receiver<RoundResult>,
}

fn harness(dir: &Path, cache: &Path) -> Harness {
    let (results, _results) = mpsc::channel(8);
    let (loads_tx, loads) = mpsc::channel(8);
    let config = PluginsConfig {
        dir: dir.to_path_buf(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        memory_limit: 16 << 20,
        settings: BTreeMap::new(),
        cache_dir: Some(cache.to_path_buf()),
        min_rewrite_interval: None,
        trusted_keys: Vec::new(),
    };
    let outbox = Outbox {
        results,
        loads: loads_tx,
        check_plugins: watch::channel(CheckPlugins::default()).0,
    };
    let host = PluginHost::new(
        config,
        outbox,
        Metrics::new(),
        TaskTracker::new(),
        &CancellationToken::new(),
    )
    .unwrap();
    Harness {
        host,
        loads,
        _results,
    }
}

impl Harness {
    async fn scan(&mut self) -> Changes {
        let scan = tokio::task::spawn_blocking(self.host.scan_job())
            .await
            .unwrap();
        self.host.apply_scan(scan)
    }
}

#[tokio::test]
async fn only_the_newest_load_of_a_plugin_counts() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), cache.path());
    std::fs::write(dir.path().join("a.wasm"), b"first junk").unwrap();
    h.scan().await;
    assert!(!h.host.is_settled(), "a load is under way");
    let first = h.host.pending["a"].id;

    // New bytes before the first load is handled: a second load
    // supersedes it (and cancels it).
    std::fs::write(dir.path().join("a.wasm"), b"second junk!").unwrap();
    h.scan().await;
    let second = h.host.pending["a"].id;
    assert!(second > first);

    // Whatever arrives of the first load changes nothing.
    let stale = LoadOutcome {
        name: "a".into(),
        id: first,
        path: dir.path().join("a.wasm"),
        result: Err(FailedLoad {
            inputs: h.host.pending["a"].inputs.clone(),
            result: "error",
            message: "stale".into(),
        }),
    };
    assert_eq!(h.host.finish_load(stale), Changes::default());
    assert!(h.host.failed.is_empty());
    loop {
        let outcome = h.loads.recv().await.unwrap();
        let newest = outcome.id == second;
        assert_eq!(h.host.finish_load(outcome), Changes::default());
        if newest {
            break;
        }
    }
    assert!(h.host.is_settled());
    let expected: [u8; 32] = sha2::Sha256::digest(b"second junk!").into();
    assert_eq!(h.host.failed["a"].digest, expected);

    // The same bytes again: not retried.
    h.scan().await;
    assert!(
        h.host.is_settled(),
        "a failed file is retried only when it changes"
    );

    // Gone: forgotten, and a load under way for it no longer counts.
    std::fs::write(dir.path().join("a.wasm"), b"third junk").unwrap();
    h.scan().await;
    let third = h.host.pending["a"].id;
    std::fs::remove_file(dir.path().join("a.wasm")).unwrap();
    h.scan().await;
    assert!(h.host.pending.is_empty() && h.host.failed.is_empty());
    let late = LoadOutcome {
        name: "a".into(),
        id: third,
        path: dir.path().join("a.wasm"),
        result: Err(FailedLoad {
            inputs: LoadInputs {
                digest: [0; 32],
                settings: Vec::new(),
                limits: Limits::of(None),
                trust: None,
            },
            result: "error",
            message: "late".into(),
        }),
    };
    assert_eq!(h.host.finish_load(late), Changes::default());
    assert!(h.host.failed.is_empty());
}
