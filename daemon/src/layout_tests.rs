//! The layout the crate promises (DESIGN.md): only `sources` and `loader`
//! use aya, `unsafe` lives in `sys` alone, and the top-level modules import
//! each other without cycles. Checked on the source files themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &mut out);
    out.into_iter()
        .map(|(path, text)| (path.strip_prefix(&root).unwrap().to_path_buf(), text))
        .collect()
}

/// The top-level module a file belongs to (`sources/xdp/mod.rs` -> `sources`).
fn module_of(path: &Path) -> String {
    let first = path
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Code lines, without comments (a comment may name anything).
fn code(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//"))
}

#[test]
fn only_the_sources_and_the_loader_use_aya() {
    let mut offenders = Vec::new();
    for (path, text) in sources() {
        let module = module_of(&path);
        if module == "sources" || module == "loader" || module == "layout_tests" {
            continue;
        }
        if code(&text).any(|l| l.contains("aya::") || l.contains("aya_log::")) {
            offenders.push(path.display().to_string());
        }
    }
    assert!(offenders.is_empty(), "aya used in {offenders:?}");
}

#[test]
fn unsafe_code_is_in_sys_alone() {
    let mut offenders = Vec::new();
    for (path, text) in sources() {
        if module_of(&path) == "sys" || module_of(&path) == "layout_tests" {
            continue;
        }
        if code(&text)
            .any(|l| l.contains("unsafe {") || l.contains("unsafe fn") || l.contains("unsafe impl"))
        {
            offenders.push(path.display().to_string());
        }
    }
    assert!(offenders.is_empty(), "unsafe code in {offenders:?}");
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let files = sources();
    let modules: BTreeSet<String> = files
        .iter()
        .map(|(path, _)| module_of(path))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in &files {
        let from = module_of(path);
        if from == "lib" || from == "main" || from == "layout_tests" {
            continue;
        }
        for line in code(text) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) && name != from {
                    edges.entry(from.clone()).or_default().insert(name);
                }
            }
        }
    }
    // Depth-first search for a cycle, reporting its path.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for module in &modules {
        if let Some(cycle) = visit(module, &edges, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}; edges {edges:?}", cycle.join(" -> "));
        }
    }
    // The edges that matter most, so the check cannot pass vacuously.
    assert!(edges["service"].contains("sources"), "{edges:?}");
    assert!(edges["mapek"].contains("sources"), "{edges:?}");
}

#[test]
fn every_source_file_is_a_module() {
    let files = sources();
    let text_of = |path: &Path| {
        files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.as_str())
            .unwrap_or("")
    };
    let mut orphans = Vec::new();
    for (path, _) in &files {
        let name = path.file_stem().unwrap().to_string_lossy();
        if path == Path::new("lib.rs") || path == Path::new("main.rs") {
            continue;
        }
        // `a/b.rs` and `a/b/mod.rs` are declared in `a/mod.rs` (or lib.rs).
        let (module, dir) = if name == "mod" {
            let dir = path.parent().unwrap();
            (
                dir.file_name().unwrap().to_string_lossy(),
                dir.parent().unwrap(),
            )
        } else {
            (name.clone(), path.parent().unwrap())
        };
        let parent = if dir.as_os_str().is_empty() {
            PathBuf::from("lib.rs")
        } else {
            dir.join("mod.rs")
        };
        let declared = code(text_of(&parent)).any(|l| {
            l.contains(&format!("mod {module};")) || l.contains(&format!("mod {module} "))
        });
        if !declared {
            orphans.push(path.display().to_string());
        }
    }
    assert!(orphans.is_empty(), "not declared as modules: {orphans:?}");
}
