//! Replays inputs the fuzzers found (fuzz/regressions/) through the same
//! functions, so a fixed crash stays fixed.
//!
//! The fuzz targets (fuzz/, nightly, run by scripts/fuzz) and this test share
//! their invariant checks: fuzz/src/checks.rs, included below. Each file in
//! `fuzz/regressions/<target>/` holds one input in the target's canonical
//! form (described in checks.rs); the seed corpora of the targets whose fuzz
//! input is already canonical (config_parse, durations) are replayed too.

use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "../../fuzz/src/checks.rs"]
mod checks;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The input files in `dir`, sorted; dot files and READMEs are not inputs.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && !name.starts_with("README")
        })
        .collect();
    files.sort();
    files
}

/// Replays every file, then fails naming each one that broke an invariant.
fn replay_all(target: &str, files: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for file in files {
        let bytes = std::fs::read(file).expect("read input");
        let outcome = std::panic::catch_unwind(|| checks::replay(target, &bytes));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(malformed)) => {
                failures.push(format!("{}: malformed input: {malformed}", file.display()))
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(non-string panic)".into());
                failures.push(format!("{}: {message}", file.display()));
            }
        }
    }
    failures
}

#[test]
fn every_target_has_its_folders() {
    let fuzz = fuzz_dir();
    assert!(fuzz.join("Cargo.toml").is_file(), "fuzz/Cargo.toml");
    for target in checks::TARGETS {
        let source = fuzz.join("fuzz_targets").join(format!("{target}.rs"));
        assert!(source.is_file(), "{} is missing", source.display());
        for folder in ["regressions", "corpus"] {
            let dir = fuzz.join(folder).join(target);
            assert!(dir.is_dir(), "{} is missing", dir.display());
        }
        let seeds = std::fs::read_dir(fuzz.join("corpus").join(target))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
            .count();
        assert!(seeds > 0, "fuzz/corpus/{target} has no seed-* file");
    }
}

#[test]
fn regressions_still_pass() {
    let mut failures = Vec::new();
    for target in checks::TARGETS {
        let dir = fuzz_dir().join("regressions").join(target);
        failures.extend(replay_all(target, &inputs(&dir)));
    }
    assert!(
        failures.is_empty(),
        "{} fuzz regression(s) fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn seed_corpora_pass() {
    let mut replayed = 0;
    let mut failures = Vec::new();
    for target in checks::RAW_TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let seeds: Vec<PathBuf> = inputs(&dir)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("seed-")
            })
            .collect();
        replayed += seeds.len();
        failures.extend(replay_all(target, &seeds));
    }
    assert!(replayed > 0, "no seed corpus to replay");
    assert!(
        failures.is_empty(),
        "seed inputs fail:\n{}",
        failures.join("\n")
    );
}

/// The checks must notice a broken invariant, or a green replay means
/// nothing: feed each check something it must refuse.
#[test]
fn the_checks_catch_what_they_claim_to() {
    let refused = |f: fn()| std::panic::catch_unwind(f).is_err();
    // A validated output whose key the rules forbid.
    assert!(refused(|| {
        let config = "agent:\n  instances:\n    - name: svc\n      endpoints: [{scheme: grpc, address: 'a:1'}]\n";
        let mut loaded = ygg_agent::config::parse(config, checks::fuzz_base()).unwrap();
        loaded.config.agent.instances[0].endpoints.clear();
        checks::check_config(&loaded.config);
    }));
    assert!(refused(|| {
        let config = "agent:\n  instances:\n    - name: svc\n      endpoints: [{scheme: grpc, address: 'a:1'}]\n";
        let mut loaded = ygg_agent::config::parse(config, checks::fuzz_base()).unwrap();
        loaded.config.registry.prefix.push_str("//x");
        checks::check_config(&loaded.config);
    }));
    // A good config passes, including the shipped example.
    let example = std::fs::read_to_string(fuzz_dir().join("../config/agent.yaml")).unwrap();
    checks::check_config_text(&example, None);
    assert!(
        ygg_agent::config::parse(&example, checks::fuzz_base()).is_ok(),
        "the example config must be valid against the fuzz base folder"
    );
    checks::check_plugin_output(vec![("load".into(), "0.42".into())]);
    checks::check_duration_text("1m|30s");
}
