use super::*;

#[test]
fn check_lists_the_warnings_after_the_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    let text = "\
yggdrasil:
  registry:
    config:
      ttl: 10
      colour: blue
agent:
  instances:
    - {namespace: default, name: svc, version: 1.0.0, endpoints: [{scheme: grpc, address: \"127.0.0.1:1\"}]}
";
    std::fs::write(&path, text).unwrap();
    let error = config::load(&path).unwrap_err();
    let printed = problems(&error);
    let lines: Vec<&str> = printed.lines().collect();
    assert!(
        lines[0].starts_with("error: ") && lines[0].ends_with("(1 error):"),
        "{printed}"
    );
    assert!(
        lines[1].starts_with("  yggdrasil.registry.config.ttl: ") && lines[1].ends_with("(line 4)"),
        "{printed}"
    );
    assert_eq!(lines.len(), 3, "{printed}");
    assert!(
        lines[2].starts_with("warning: yggdrasil.registry.config.colour: ")
            && lines[2].ends_with("(line 5)"),
        "{printed}"
    );
}
