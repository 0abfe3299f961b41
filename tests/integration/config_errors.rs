//! Bad config files at start: `check` and `run` exit 2 and name every
//! problem with its YAML path; a good file passes `check`.

use crate::support::{MALFORMED_CONFIGS, run_cli};

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const GOOD: &str = "agent:\n  instances:\n    - name: svc\n      endpoints: [{scheme: grpc, address: '127.0.0.1:1'}]\n";

#[test]
fn check_accepts_a_good_file_and_the_shipped_example() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run_cli(&["check", "--config", &write(&dir, GOOD)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("valid (1 instance"), "{stdout}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.yaml");
    let (code, stdout, stderr) = run_cli(&["check", "--config", example]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn malformed_configs_exit_2_naming_the_yaml_path() {
    let cases = MALFORMED_CONFIGS;
    for (text, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        let path = write(&dir, text);
        for command in ["check", "run"] {
            let (code, stdout, stderr) = run_cli(&[command, "--config", &path]);
            assert_eq!(
                code, 2,
                "`{command}` on {text:?} exited {code}: {stdout}{stderr}"
            );
            assert!(
                stderr.contains(needle),
                "`{command}` on {text:?}: stderr lacks {needle:?}:\n{stderr}"
            );
        }
    }
}

#[test]
fn every_error_is_listed_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "yggdrasil:\n  registry:\n    config:\n      ttl: 1s\n      prefix: nope\nagent:\n  instances:\n    - name: a\n      endpoints: []\n  shutdownTimeout: never\n",
    );
    let (code, _, stderr) = run_cli(&["run", "--config", &path]);
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid (4 errors)"), "{stderr}");
    for needle in [
        "config.ttl",
        "config.prefix",
        "instances[0].endpoints",
        "agent.shutdownTimeout",
    ] {
        assert!(stderr.contains(needle), "missing {needle}:\n{stderr}");
    }
}

#[test]
fn a_missing_file_or_bad_usage_exits_2() {
    let (code, _, stderr) = run_cli(&["check", "--config", "/nonexistent/agent.yaml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read config file /nonexistent/agent.yaml"),
        "{stderr}"
    );
    let (code, _, _) = run_cli(&["run"]);
    assert_eq!(code, 2);
    let (code, _, _) = run_cli(&["frobnicate"]);
    assert_eq!(code, 2);
    let (code, stdout, _) = run_cli(&["run", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--config"));
}

#[test]
fn check_never_prints_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "yggdrasil:\n  registry:\n    config:\n      client:\n        username: root\n        password: s3cret-pw\n        dialTimeout: nope\n",
    );
    let (code, stdout, stderr) = run_cli(&["check", "--config", &path]);
    assert_eq!(code, 2);
    assert!(
        !stdout.contains("s3cret-pw") && !stderr.contains("s3cret-pw"),
        "{stdout}{stderr}"
    );
}

#[test]
fn check_warns_about_a_double_slash_prefix_and_endpoints_yggdrasil_drops() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "yggdrasil:\n  registry:\n    config:\n      prefix: /yggdrasil/registry/\nagent:\n  instances:\n    - name: db\n      endpoints: [{scheme: tcp, address: '127.0.0.1:5432'}]\n",
    );
    let (code, stdout, stderr) = run_cli(&["check", "--config", &path]);
    assert_eq!(code, 0, "{stderr}");
    // The prefix as written: the keys Go writes with it.
    assert!(stdout.contains("prefix /yggdrasil/registry/)"), "{stdout}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings[0].starts_with(
            "warning: yggdrasil.registry.config.prefix: `/yggdrasil/registry/` ends with `/`"
        ) && warnings[0].contains("keys are `/yggdrasil/registry//<namespace>/<name>/<id>`")
            && warnings[0].ends_with("(line 4)"),
        "{stderr}"
    );
    assert!(
        warnings[1].starts_with("warning: agent.instances[0]: service default/db: endpoint tcp://127.0.0.1:5432 is invisible")
            && warnings[1].ends_with("(line 7)"),
        "{stderr}"
    );
}
