//! Local control against a real etcd (#12): drain on SIGTERM, and control
//! characters in registry data never reaching the operator's terminal.

use std::time::{Duration, Instant};

use crate::support::*;

/// `agent.drainDelay`: on SIGTERM every key goes first while the lease
/// stays alive, and the agent exits (revoking the lease) only `drainDelay`
/// after the deletes.
#[tokio::test]
async fn sigterm_with_drain_delay_deletes_keys_first_and_exits_that_much_later() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = format!("{SEED_INSTANCE}{}", instances("other", 2));
    config.agent_extra = "  drainDelay: 3s\n".into();
    let mut agent = Agent::start(&config);
    let endpoints = etcd.endpoints();
    wait_for(PATIENCE, "3 keys", || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, PREFIX)
                .await
                .filter(|e| e.len() == 3)
        }
    })
    .await;

    agent.signal(libc::SIGTERM);
    let took = wait_prefix_empty(&etcd, PREFIX, Duration::from_secs(5), "keys deleted").await;
    let keys_gone = Instant::now();
    println!("keys deleted {took:?} after SIGTERM");
    // Still running, and still holding its lease: only the keys went.
    let mut client = etcd.client().await;
    assert_eq!(leases(&mut client).await.len(), 1, "lease revoked early");
    assert!(!agent.log().contains("agent stopped"), "{}", agent.log());

    let (status, _) = agent.wait_exit(Duration::from_secs(15));
    let drained = keys_gone.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    // The keys were gone at `keys_gone` at the latest, so the exit came at
    // least the whole delay after the deletes (less the poll's slack).
    assert!(
        drained >= Duration::from_millis(2800),
        "exited {drained:?} after the keys went, drainDelay is 3s"
    );
    assert!(leases(&mut client).await.is_empty(), "lease not revoked");
    // The agent's own clock agrees: from the confirmed deletes to the stop.
    let log = agent.log();
    let time_of = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .and_then(log_time)
            .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"))
    };
    let waited = time_of("agent stopped") - time_of("drain: every key deleted");
    assert!(waited >= 3.0, "waited {waited}s between deletes and exit");
}

/// A second signal during the drain exits at once.
#[tokio::test]
async fn a_second_signal_during_the_drain_exits_at_once() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = "  drainDelay: 60s\n".into();
    let mut agent = Agent::start(&config);
    agent
        .wait_for_log("instance registered successfully", PATIENCE)
        .await;
    agent.signal(libc::SIGTERM);
    agent
        .wait_for_log("drain: every key deleted", PATIENCE)
        .await;
    agent.signal(libc::SIGTERM);
    let (status, took) = agent.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "log:\n{}", agent.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// Anyone who can write a record under the prefix must not be able to
/// drive the operator's terminal through `ygg-agent list`.
#[tokio::test]
async fn list_escapes_control_characters_from_etcd() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let record = serde_json::json!({
        "namespace": "default",
        "name": "\u{1b}]0;pwned\u{7}",
        "version": "1",
        "endpoints": [{"scheme": "http", "address": "\u{1b}[2J"}],
    });
    client
        .put(
            format!("{PREFIX}default/evil\u{1b}[31m/abc"),
            record.to_string(),
            None,
        )
        .await
        .unwrap();
    client
        .put(format!("{PREFIX}default/bad\u{7}/def"), "not json", None)
        .await
        .unwrap();
    let (code, stdout, stderr) = run_cli(&["list", "--endpoints", &etcd.endpoint()]);
    assert_eq!(code, 0, "{stderr}");
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains('\u{1b}') && !output.contains('\u{7}'),
            "raw control characters in {output:?}"
        );
    }
    assert!(stdout.contains("\\u{1b}]0;pwned\\u{7}"), "{stdout}");
    assert!(stdout.contains("http://\\u{1b}[2J"), "{stdout}");
    assert!(stderr.contains("bad\\u{7}/def"), "{stderr}");
}

/// `n` instances of `service` as an instances file (a YAML list).
fn instances_file(service: &str, ports: std::ops::Range<u16>) -> String {
    ports
        .map(|port| {
            format!("- name: {service}\n  version: \"1\"\n  endpoints: [{{scheme: http, address: \"10.0.0.1:{port}\"}}]\n")
        })
        .collect()
}

/// The registered services and how many instances each has.
async fn services(endpoints: &[String]) -> Option<std::collections::BTreeMap<String, usize>> {
    let entries = try_entries(endpoints, PREFIX).await?;
    let mut counts = std::collections::BTreeMap::new();
    for key in entries.keys() {
        let service = key.split('/').nth(4).unwrap_or_default().to_string();
        *counts.entry(service).or_insert(0) += 1;
    }
    Some(counts)
}

async fn wait_services(endpoints: &[String], want: &[(&str, usize)]) {
    let want: std::collections::BTreeMap<String, usize> =
        want.iter().map(|(s, n)| (s.to_string(), *n)).collect();
    wait_for(PATIENCE, &format!("services {want:?}"), || {
        let (endpoints, want) = (endpoints.to_vec(), want.clone());
        async move { services(&endpoints).await.filter(|s| *s == want) }
    })
    .await;
}

/// `agent.instancesDir`: files come, change, break and go while the agent
/// runs; a broken file or one holding another source's instance is
/// refused (with its path, YAML path and line, or both sources) and keeps
/// its last good instances.
#[tokio::test]
async fn the_instances_folder_applies_live_and_refuses_bad_files() {
    let etcd = Etcd::start().await;
    let endpoints = etcd.endpoints();
    let mut config = ConfigFile::new(endpoints.clone());
    config.agent_extra = "  instancesDir: instances.d\n".into();
    let mut agent = Agent::prepare(&config);
    let dir = agent.dir.path().join("instances.d");
    std::fs::create_dir(&dir).unwrap();
    let (a, b) = (dir.join("a.yaml"), dir.join("b.yaml"));
    std::fs::write(&a, instances_file("alpha", 1..3)).unwrap();
    agent.spawn(&[]);
    // Read before registration starts: one write with all three.
    wait_services(&endpoints, &[("alpha", 2), ("example-registry-server", 1)]).await;

    std::fs::write(&b, instances_file("beta", 1..2)).unwrap();
    wait_services(
        &endpoints,
        &[("alpha", 2), ("beta", 1), ("example-registry-server", 1)],
    )
    .await;

    // Edited: the difference.
    std::fs::write(&a, instances_file("alpha", 2..3)).unwrap();
    wait_services(
        &endpoints,
        &[("alpha", 1), ("beta", 1), ("example-registry-server", 1)],
    )
    .await;

    // Broken: refused with path, YAML path and line; alpha stays.
    std::fs::write(
        &a,
        format!(
            "{}- name: alpha\n  endpoints: []\n",
            instances_file("alpha", 5..6)
        ),
    )
    .unwrap();
    agent
        .wait_for_log("[1].endpoints: at least one endpoint (line 5)", PATIENCE)
        .await;
    let log = agent.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("[1].endpoints: at least one endpoint"))
        .unwrap();
    assert!(refusal.contains(&a.display().to_string()), "{refusal}");
    // The same instance as the config's: refused, naming both.
    std::fs::write(
        &b,
        format!("- {}", &SEED_INSTANCE[6..].replace("\n      ", "\n  ")),
    )
    .unwrap();
    agent.wait_for_log("the same instance as", PATIENCE).await;
    let log = agent.log();
    let clash = log
        .lines()
        .find(|l| l.contains("the same instance as"))
        .unwrap();
    assert!(
        clash.contains(&b.display().to_string())
            && clash.contains(&format!(
                "{} agent.instances[0]",
                agent.config_path.display()
            )),
        "{clash}"
    );
    assert_eq!(
        services(&endpoints).await.unwrap(),
        [("alpha", 1), ("beta", 1), ("example-registry-server", 1)]
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect()
    );

    // Removed: its instances go, the broken one's last good ones too.
    std::fs::remove_file(&b).unwrap();
    std::fs::remove_file(&a).unwrap();
    wait_services(&endpoints, &[("example-registry-server", 1)]).await;

    // A config reload that adds an instance a file holds is the later
    // source: refused, naming both; the running config stays.
    let c = dir.join("c.yaml");
    std::fs::write(&c, instances_file("gamma", 1..2)).unwrap();
    wait_services(&endpoints, &[("example-registry-server", 1), ("gamma", 1)]).await;
    let mut clashing = config.clone();
    clashing.instances = SEED_INSTANCE.to_string();
    clashing.instances.push_str(
        "    - name: gamma\n      version: \"1\"\n      endpoints: [{scheme: http, address: \"10.0.0.1:1\"}]\n",
    );
    agent.rewrite_config(&clashing);
    agent.wait_reload_error("the same instance as").await;
    let log = agent.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("config error") && l.contains("the same instance as"))
        .unwrap_or_else(|| panic!("no clash in the log:\n{log}"));
    assert!(
        refusal.contains("agent.instances[1]") && refusal.contains(&format!("{} [0]", c.display())),
        "{refusal}"
    );
    wait_services(&endpoints, &[("example-registry-server", 1), ("gamma", 1)]).await;

    agent.signal(libc::SIGTERM);
    let (status, _) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}
