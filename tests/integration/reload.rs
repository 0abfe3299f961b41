//! Hot reload against a real etcd: every kind of change, every way of
//! saving, bursts of edits, and bad files that must change nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// Edits are applied within a second; tests allow more on a loaded machine.
const APPLIED: Duration = Duration::from_secs(5);

fn instance(name: &str, version: &str, port: u16, env: &str) -> String {
    format!(
        "    - name: {name}\n      version: \"{version}\"\n      metadata: {{env: {env}}}\n      endpoints: [{{scheme: http, address: \"127.0.0.1:{port}\"}}]\n"
    )
}

async fn wait_state(
    etcd: &Etcd,
    what: &str,
    check: impl Fn(&BTreeMap<String, Entry>) -> bool,
) -> BTreeMap<String, Entry> {
    let endpoints = etcd.endpoints();
    let check = &check;
    wait_for(APPLIED, what, || {
        let endpoints = endpoints.clone();
        async move { try_entries(&endpoints, PREFIX).await.filter(|e| check(e)) }
    })
    .await
    .0
}

fn key_of(entries: &BTreeMap<String, Entry>, service: &str) -> Option<String> {
    entries
        .keys()
        .find(|k| k.contains(&format!("/{service}/")))
        .cloned()
}

fn value_has(entries: &BTreeMap<String, Entry>, service: &str, needle: &str) -> bool {
    key_of(entries, service).is_some_and(|k| entries[&k].value.contains(needle))
}

/// An agent registering `instances` (YAML list items) on `etcd`, its
/// config (for later edits) and what etcd holds once all `count` are there.
async fn start_registered(
    etcd: &Etcd,
    instances: String,
    count: usize,
) -> (Agent, ConfigFile, BTreeMap<String, Entry>) {
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = instances;
    let agent = Agent::start(&config);
    let state = wait_state(etcd, "registered", |e| e.len() == count).await;
    (agent, config, state)
}

/// Saves by writing a temp file in the folder and renaming it over the
/// config, as vim and VS Code do.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn instance_changes_apply_as_a_diff_without_touching_the_rest() {
    let etcd = Etcd::start().await;
    let (agent, mut config, before) = start_registered(
        &etcd,
        format!(
            "{}{}",
            instance("stays", "1", 1001, "dev"),
            instance("goes", "1", 1002, "dev")
        ),
        2,
    )
    .await;
    let stays = key_of(&before, "stays").unwrap();

    // Add one, remove one, leave one alone.
    config.instances = format!(
        "{}{}",
        instance("stays", "1", 1001, "dev"),
        instance("comes", "1", 1003, "dev")
    );
    agent.rewrite_config(&config);
    let after = wait_state(&etcd, "added and removed", |e| {
        key_of(e, "comes").is_some() && key_of(e, "goes").is_none()
    })
    .await;
    assert_eq!(after.len(), 2);
    assert_eq!(
        after[&stays], before[&stays],
        "an unchanged instance was rewritten"
    );

    // Metadata change: the same key, rewritten in place.
    config.instances = format!(
        "{}{}",
        instance("stays", "1", 1001, "prod"),
        instance("comes", "1", 1003, "dev")
    );
    agent.rewrite_config(&config);
    let changed = wait_state(&etcd, "metadata change", |e| {
        value_has(e, "stays", "\"env\":\"prod\"")
    })
    .await;
    assert_eq!(changed.len(), 2);
    assert!(
        changed.contains_key(&stays),
        "metadata must not change the key"
    );
    assert_eq!(
        changed[&stays].create_revision,
        before[&stays].create_revision
    );
    agent
        .wait_for_log("config reloaded: applying the changes", PATIENCE)
        .await;
}

#[tokio::test]
async fn an_identity_change_swaps_keys_in_one_transaction() {
    let etcd = Etcd::start().await;
    let (agent, mut config, before) =
        start_registered(&etcd, instance("svc", "1", 2001, "dev"), 1).await;
    let old_key = before.keys().next().unwrap().clone();

    let watch = KeyWatch::start(&etcd, PREFIX).await;
    // A new version is a new identity; moving the port too.
    config.instances = instance("svc", "2", 2002, "dev");
    agent.rewrite_config(&config);
    watch.wait_count(KeyChange::Delete, 1, APPLIED).await;
    watch.wait_count(KeyChange::Put, 1, APPLIED).await;
    let events = watch.events();
    let revision_of = |kind: KeyChange, old: bool| {
        events
            .iter()
            .find(|e| e.kind == kind && (e.key == old_key) == old)
            .map(|e| e.revision)
    };
    let delete_rev = revision_of(KeyChange::Delete, true);
    assert!(
        delete_rev.is_some(),
        "the old key was not deleted: {events:?}"
    );
    assert_eq!(
        delete_rev,
        revision_of(KeyChange::Put, false),
        "the old key's delete and the new key's put must share one revision"
    );
    let mut client = etcd.client().await;
    let after = entries(&mut client, PREFIX).await;
    assert_eq!(after.len(), 1);
    assert!(
        after
            .values()
            .next()
            .unwrap()
            .value
            .contains("\"version\":\"2\"")
    );
}

#[tokio::test]
async fn a_ttl_change_moves_keys_to_a_new_lease_and_revokes_the_old() {
    let etcd = Etcd::start().await;
    let (agent, mut config, before) = start_registered(
        &etcd,
        format!(
            "{}{}",
            instance("a", "1", 3001, "dev"),
            instance("b", "1", 3002, "dev")
        ),
        2,
    )
    .await;
    let old_lease = before.values().next().unwrap().lease;
    config.ttl = "7s";
    agent.rewrite_config(&config);
    let after = wait_state(&etcd, "keys on a new lease", |e| {
        e.len() == 2 && e.values().all(|v| v.lease != old_lease && v.lease != 0)
    })
    .await;
    let mut client = etcd.client().await;
    let new_lease = after.values().next().unwrap().lease;
    let (leases_now, _) = wait_for(APPLIED, "old lease revoked", || {
        let mut client = client.clone();
        async move {
            let l = leases(&mut client).await;
            (l.len() == 1).then_some(l)
        }
    })
    .await;
    assert_eq!(leases_now, vec![new_lease]);
    let ttl = client.lease_time_to_live(new_lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 7);
}

#[tokio::test]
async fn an_endpoint_change_moves_the_registrations_to_another_etcd() {
    let old = Etcd::start().await;
    let new = Etcd::start().await;
    let config = ConfigFile::new(old.endpoints());
    let agent = Agent::start(&config);
    wait_state(&old, "registered on the old etcd", |e| e.len() == 1).await;
    let mut moved = config.clone();
    moved.endpoints = new.endpoints();
    agent.rewrite_config(&moved);
    let there = wait_state(&new, "registered on the new etcd", |e| e.len() == 1).await;
    assert_eq!(there[SEED_KEY].value, SEED_VALUE);
    wait_state(&old, "gone from the old etcd", |e| e.is_empty()).await;
    let old_client = old.client().await;
    let (_, _) = wait_for(APPLIED, "old lease revoked", || {
        let mut c = old_client.clone();
        async move { leases(&mut c).await.is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_prefix_change_moves_the_keys() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    let agent = Agent::start(&config);
    wait_state(&etcd, "registered", |e| e.len() == 1).await;
    config.prefix = "/elsewhere/registry".into();
    agent.rewrite_config(&config);
    wait_state(&etcd, "old prefix empty", |e| e.is_empty()).await;
    let mut client = etcd.client().await;
    let endpoints = etcd.endpoints();
    wait_for(APPLIED, "keys under the new prefix", || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, "/elsewhere/registry/")
                .await
                .filter(|e| e.len() == 1)
        }
    })
    .await;
    assert_eq!(leases(&mut client).await.len(), 1);
}

#[tokio::test]
async fn adding_a_trailing_slash_to_the_prefix_moves_the_keys_and_warns() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    let agent = Agent::start(&config);
    wait_state(&etcd, "registered", |e| e.contains_key(SEED_KEY)).await;
    assert!(!agent.log().contains("ends with `/`"), "{}", agent.log());
    // The prefix a Go app configured with `/yggdrasil/registry/` uses.
    config.prefix = "/yggdrasil/registry/".into();
    agent.rewrite_config(&config);
    let moved = SEED_KEY.replace("/yggdrasil/registry/", "/yggdrasil/registry//");
    wait_state(&etcd, "keys under the double slash", |e| {
        e.len() == 1 && e.contains_key(&moved)
    })
    .await;
    agent
        .wait_for_log("`/yggdrasil/registry/` ends with `/`", APPLIED)
        .await;
}

#[tokio::test]
async fn every_way_of_saving_counts() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = instance("svc", "1", 4001, "v0");
    let agent = Agent::start(&config);
    wait_state(&etcd, "registered", |e| value_has(e, "svc", "v0")).await;

    // In place.
    config.instances = instance("svc", "1", 4001, "v1");
    agent.rewrite_config(&config);
    wait_state(&etcd, "in-place save", |e| value_has(e, "svc", "v1")).await;

    // Saved by rename, as editors do.
    config.instances = instance("svc", "1", 4001, "v2");
    save_by_rename(&agent.config_path, &config.render());
    wait_state(&etcd, "rename save", |e| value_has(e, "svc", "v2")).await;

    // `cp` over it, and `mv` from elsewhere in the folder.
    config.instances = instance("svc", "1", 4001, "v3");
    let other = agent.dir.path().join("new.yaml");
    std::fs::write(&other, config.render()).unwrap();
    std::fs::copy(&other, &agent.config_path).unwrap();
    wait_state(&etcd, "cp save", |e| value_has(e, "svc", "v3")).await;
    config.instances = instance("svc", "1", 4001, "v4");
    std::fs::write(&other, config.render()).unwrap();
    std::fs::rename(&other, &agent.config_path).unwrap();
    wait_state(&etcd, "mv save", |e| value_has(e, "svc", "v4")).await;
}

#[tokio::test]
async fn a_kubernetes_configmap_symlink_swap_counts() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = instance("svc", "1", 5001, "k0");
    // The kubelet's layout: agent.yaml -> ..data/agent.yaml, ..data -> ..v0.
    let mut agent = Agent::prepare(&config);
    let dir = agent.dir.path().to_path_buf();
    let version = |n: u32, text: &str| {
        let folder = dir.join(format!("..v{n}"));
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("agent.yaml"), text).unwrap();
    };
    version(0, &config.render());
    std::os::unix::fs::symlink("..v0", dir.join("..data")).unwrap();
    std::fs::remove_file(&agent.config_path).unwrap();
    std::os::unix::fs::symlink("..data/agent.yaml", &agent.config_path).unwrap();
    agent.spawn(&[]);
    wait_state(&etcd, "registered", |e| value_has(e, "svc", "k0")).await;

    // The swap: a new version folder, a new ..data symlink renamed over the old.
    config.instances = instance("svc", "1", 5001, "k1");
    version(1, &config.render());
    std::os::unix::fs::symlink("..v1", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_state(&etcd, "ConfigMap swap applied", |e| {
        value_has(e, "svc", "k1")
    })
    .await;
}

#[tokio::test]
async fn rapid_successive_edits_end_in_the_last_one() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = instance("svc", "1", 6001, "e0");
    let agent = Agent::start(&config);
    wait_state(&etcd, "registered", |e| value_has(e, "svc", "e0")).await;
    for i in 1..=20 {
        config.instances = instance("svc", "1", 6001, &format!("e{i}"));
        agent.rewrite_config(&config);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    wait_state(&etcd, "the last edit", |e| {
        value_has(e, "svc", "\"env\":\"e20\"")
    })
    .await;
    // And it stays the last one: no late write of an older edit.
    let watch = KeyWatch::start(&etcd, PREFIX).await;
    watch
        .assert_unchanged_for(Duration::from_secs(1), "after the last edit")
        .await;
    let mut client = etcd.client().await;
    let now = entries(&mut client, PREFIX).await;
    assert!(value_has(&now, "svc", "\"env\":\"e20\""));
}

#[tokio::test]
async fn bad_files_change_nothing_and_the_next_good_save_applies() {
    let etcd = Etcd::start().await;
    let (agent, mut config, good) = start_registered(
        &etcd,
        format!(
            "{}{}",
            instance("one", "1", 7001, "good"),
            instance("two", "1", 7002, "good")
        ),
        2,
    )
    .await;
    let path = agent.config_path.clone();
    let no_endpoints = config.render().replace(
        "endpoints: [{scheme: http, address: \"127.0.0.1:7002\"}]",
        "endpoints: []",
    );
    let unknown_key = config.render() + "  surprise: 1\n";

    /// Breaks the config file one way.
    type Breaker<'a> = Box<dyn Fn() + 'a>;
    let bad_cases: Vec<(&str, Breaker)> = vec![
        (
            "YAML syntax error",
            Box::new(|| std::fs::write(&path, "agent: [broken\n").unwrap()),
        ),
        (
            "at least one endpoint",
            Box::new(|| std::fs::write(&path, &no_endpoints).unwrap()),
        ),
        (
            "the file is empty",
            Box::new(|| std::fs::write(&path, "").unwrap()),
        ),
        (
            "unknown key",
            Box::new(|| std::fs::write(&path, &unknown_key).unwrap()),
        ),
        (
            "cannot read config file",
            Box::new(|| std::fs::remove_file(&path).unwrap()),
        ),
        (
            "cannot read config file",
            Box::new(|| std::fs::create_dir(&path).unwrap()),
        ),
    ];
    for (i, (error, break_it)) in bad_cases.iter().enumerate() {
        let watch = KeyWatch::start(&etcd, PREFIX).await;
        break_it();
        agent
            .wait_for_log_count("config reload failed", i + 1, PATIENCE)
            .await;
        agent.wait_reload_error(error).await;
        // Nothing deregistered, nothing rewritten.
        watch
            .assert_unchanged_for(Duration::from_millis(500), &format!("a bad file ({error})"))
            .await;
        let mut client = etcd.client().await;
        assert_eq!(
            entries(&mut client, PREFIX).await,
            good,
            "a bad file ({error}) changed etcd"
        );
        // Put things back the way a user would, for the next case.
        if path.is_dir() {
            std::fs::remove_dir(&path).unwrap();
        }
    }
    // Every error of a bad file is logged with its path.
    let log = agent.log();
    assert!(
        log.contains("agent.instances[1].endpoints: at least one endpoint"),
        "{log}"
    );

    // The next good save applies normally.
    drop(bad_cases);
    config.instances = format!(
        "{}{}",
        instance("one", "1", 7001, "better"),
        instance("two", "1", 7002, "good")
    );
    agent.rewrite_config(&config);
    wait_state(&etcd, "good save after bad ones", |e| {
        value_has(e, "one", "better")
    })
    .await;
}

#[tokio::test]
async fn sighup_reloads_now() {
    let etcd = Etcd::start().await;
    let config = ConfigFile::new(etcd.endpoints());
    let agent = Agent::start(&config);
    wait_state(&etcd, "registered", |e| e.len() == 1).await;
    agent.signal(libc::SIGHUP);
    agent
        .wait_for_log("config reloaded: no change", PATIENCE)
        .await;
    agent.signal(libc::SIGHUP);
    agent
        .wait_for_log_count("config reloaded: no change", 2, PATIENCE)
        .await;
}

#[tokio::test]
async fn every_malformed_config_on_reload_changes_nothing() {
    let etcd = Etcd::start().await;
    let config = ConfigFile::new(etcd.endpoints());
    let agent = Agent::start(&config);
    let good = wait_state(&etcd, "registered", |e| e.len() == 1).await;
    let watch = KeyWatch::start(&etcd, PREFIX).await;
    for (i, (text, needle)) in MALFORMED_CONFIGS.iter().enumerate() {
        std::fs::write(&agent.config_path, text).unwrap();
        agent
            .wait_for_log_count("config reload failed", i + 1, PATIENCE)
            .await;
        agent.wait_reload_error(needle).await;
    }
    // Nothing was deregistered or rewritten by any of them (the watch saw
    // every change since the first), and the agent still renews: the key
    // is the same write, on a live lease.
    watch
        .assert_unchanged_for(Duration::from_millis(500), "malformed configs")
        .await;
    let mut client = etcd.client().await;
    let now = entries(&mut client, PREFIX).await;
    assert_eq!(now, good, "a malformed config changed etcd");
    let lease = now[SEED_KEY].lease;
    assert!(client.lease_time_to_live(lease, None).await.unwrap().ttl() > 0);
}
