//! Test only: no import circles between the crate's modules (an invariant
//! in ARCHITECTURE.md). Reads the sources as text: every `crate::…`,
//! `super::…` or child-module path a module names is an edge to the
//! deepest module it reaches; code after `#[cfg(test)]` is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every module file under `src`, by module path (`plugins::runner`).
fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module == ["lib"] || module == ["main"] {
                module.clear();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            found.insert(module, code.to_string());
        }
    }
    found
}

/// The paths (as segments) that follow `prefix` in `code`; a brace group
/// (`super::{a, b::{c, d}}`) gives one path per leaf.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let mut rest = code[at + prefix.len()..].chars().peekable();
        use_tree(&mut rest, Vec::new(), &mut out);
    }
    out
}

/// Reads one use-tree (`a::b`, `a::{b, c::d}`, `*`) from `chars`.
fn use_tree(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    mut path: Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            loop {
                use_tree(chars, path.clone(), out);
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                match chars.next() {
                    Some(',') => continue,
                    _ => return, // '}' or the end
                }
            }
        }
        let mut ident = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_alphanumeric() || c == '_' {
                ident.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if !ident.is_empty() && ident != "self" {
            path.push(ident);
        }
        let mut lookahead = chars.clone();
        if lookahead.next() == Some(':') && lookahead.next() == Some(':') {
            chars.next();
            chars.next();
            continue;
        }
        out.push(path);
        return;
    }
}

fn edges(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let deepest = |mut path: Module| {
        while !path.is_empty() && !modules.contains_key(&path) {
            path.pop();
        }
        path
    };
    let mut graph = BTreeMap::new();
    for (module, code) in modules {
        let mut targets = BTreeSet::new();
        let lines: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for path in paths_after(&lines, "crate::") {
            targets.insert(deepest(path));
        }
        let parent: Module = module[..module.len().saturating_sub(1)].to_vec();
        for path in paths_after(&lines, "super::") {
            let mut full = parent.clone();
            full.extend(path);
            targets.insert(deepest(full));
        }
        // Children named by a bare path (`folder::scan`, `use report::…`).
        for child in modules
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
        {
            let name = child.last().unwrap();
            if !paths_after(&lines, &format!("{name}::")).is_empty() {
                targets.insert(child.clone());
            }
        }
        targets.remove(module);
        graph.insert(module.clone(), targets);
    }
    graph
}

/// One circle, if there is any: the modules along it.
fn find_circle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<String>> {
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        stack: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|m| m == node) {
            let mut circle: Vec<String> = stack[at..].iter().map(name).collect();
            circle.push(name(node));
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, stack, done) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    assert!(modules.contains_key(&vec!["plugins".to_string(), "runner".to_string()]));
    let graph = edges(&modules);
    // The checker itself must see the edges it is about.
    assert!(graph[&vec!["agent".to_string()]].contains(&vec!["plugins".to_string()]));
    if let Some(circle) = find_circle(&graph) {
        panic!("import circle: {}", circle.join(" -> "));
    }
}

#[test]
fn a_circle_is_found() {
    let modules = BTreeMap::from([
        (vec!["a".to_string()], "use crate::b::X;".to_string()),
        (vec!["b".to_string()], "use crate::a::Y;".to_string()),
        (vec!["c".to_string()], "use crate::a::Y;".to_string()),
    ]);
    let circle = find_circle(&edges(&modules)).expect("a circle");
    assert_eq!(circle, ["a", "b", "a"]);
}
