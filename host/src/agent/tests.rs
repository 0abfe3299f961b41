//! The supervisor's own tests: start-up, reload through the loop.

use std::path::Path;

use super::*;
use crate::config;

const CONFIG: &str = "yggdrasil:
  registry:
    config:
      client:
        endpoints: [\"127.0.0.1:9\"]
      ttl: 4s
agent:
  instances:
    - name: svc
      version: 1.0.0
      endpoints: [{scheme: grpc, address: \"127.0.0.1:1\"}]
";

/// A supervisor on `path`, as `run` starts it (its registry points at a
/// closed port and retries in the background).
async fn supervisor(path: &Path) -> (Supervisor, mpsc::Sender<Control>) {
    let loaded = config::load(path).expect("valid");
    let (control_tx, control_rx) = mpsc::channel(1);
    let options = RunOptions {
        config_path: path.to_path_buf(),
        config_digest: loaded.digest,
        metrics: Metrics::new(),
        launch: None,
        incoming: None,
    };
    let supervisor = Supervisor::start(options, loaded.config, control_rx).await;
    (supervisor, control_tx)
}

/// Reads the config file now and hands the read to the supervisor.
async fn reload(supervisor: &mut Supervisor, forced: bool) -> ReloadOutcome {
    let path = supervisor.reloader.path().to_path_buf();
    let read = tokio::task::spawn_blocking(move || input::read_config(&path, forced))
        .await
        .unwrap();
    let instances = &supervisor.instances;
    let (outcome, diff) =
        supervisor
            .reloader
            .finish(read, &supervisor.config, &supervisor.wiring.scanner, |c| {
                instances.clashes(c)
            });
    if let Some(diff) = diff {
        supervisor.apply(diff);
    }
    outcome
}

#[tokio::test]
async fn reload_applies_valid_changes_and_refuses_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    let (mut supervisor, _control) = supervisor(&path).await;
    assert!(
        supervisor.startup.is_none(),
        "no plugins: registers at once"
    );

    // The bytes it started from: nothing to do, even after a touch.
    assert_eq!(
        reload(&mut supervisor, false).await,
        ReloadOutcome::Unchanged
    );
    // A comment changes the bytes, not the config.
    std::fs::write(&path, format!("# note\n{CONFIG}")).unwrap();
    assert_eq!(
        reload(&mut supervisor, false).await,
        ReloadOutcome::Unchanged
    );

    std::fs::write(&path, CONFIG.replace("ttl: 4s", "ttl: 6s")).unwrap();
    assert_eq!(reload(&mut supervisor, false).await, ReloadOutcome::Applied);
    assert_eq!(supervisor.config.registry.ttl, Duration::from_secs(6));

    // Invalid: refused with the error and its line; the config stays.
    std::fs::write(&path, CONFIG.replace("ttl: 4s", "ttl: soon")).unwrap();
    match reload(&mut supervisor, false).await {
        ReloadOutcome::Refused(problems) => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains("ttl") && problems[0].contains("line 6"),
                "{problems:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(supervisor.config.registry.ttl, Duration::from_secs(6));

    // Gone: refused, config kept; back: applied.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        reload(&mut supervisor, false).await,
        ReloadOutcome::Refused(_)
    ));
    std::fs::write(&path, CONFIG).unwrap();
    assert_eq!(reload(&mut supervisor, false).await, ReloadOutcome::Applied);
    assert_eq!(supervisor.config.registry.ttl, Duration::from_secs(4));

    // SIGHUP re-reads the same bytes; a config equal to the running one
    // is still "unchanged".
    assert_eq!(
        reload(&mut supervisor, true).await,
        ReloadOutcome::Unchanged
    );

    let reloads = supervisor.wiring.metrics.render();
    assert!(
        reloads.contains("ygg_agent_config_reloads_total{result=\"error\"} 2"),
        "{reloads}"
    );
    supervisor.shutdown().await;
}

/// Handles events until a config read arrives, and returns it.
async fn next_read(supervisor: &mut Supervisor) -> Box<input::ConfigRead> {
    loop {
        match supervisor.next_event().await {
            Some(Event::Found(Found::Config(read))) => return read,
            Some(other) => assert!(supervisor.handle(other)),
            None => panic!("the supervisor's inbox closed"),
        }
    }
}

#[tokio::test]
async fn a_read_asked_for_during_a_read_runs_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    let (mut supervisor, _control) = supervisor(&path).await;
    let scanner = supervisor.wiring.scanner.clone();
    supervisor.reloader.read(false, &scanner);
    supervisor.reloader.read(true, &scanner);
    let first = next_read(&mut supervisor).await;
    assert!(!first.forced);
    assert!(supervisor.handle(Event::Found(Found::Config(first))));
    // The forced one follows on its own.
    let second = next_read(&mut supervisor).await;
    assert!(second.forced);
    supervisor.shutdown().await;
}
