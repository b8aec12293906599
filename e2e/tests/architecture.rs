//! The shape `docs/architecture.md` describes, checked: which workspace crate may depend on
//! which (so no cycle comes back, dev-dependencies included), and which folder of the worker
//! may import which (nothing imports "upward").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e sits in the workspace").to_path_buf()
}

/// Workspace crate → (kind, workspace crate) it depends on, as `cargo metadata` reads the manifests.
fn workspace_edges() -> BTreeMap<String, BTreeSet<(String, String)>> {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    packages
        .iter()
        .map(|package| {
            let edges = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| members.contains(d["name"].as_str().unwrap()))
                .map(|d| {
                    let kind = d["kind"].as_str().unwrap_or("normal").to_string();
                    (kind, d["name"].as_str().unwrap().to_string())
                })
                .collect();
            (package["name"].as_str().unwrap().to_string(), edges)
        })
        .collect()
}

/// Every edge of the crate graph, exactly. A new edge is a decision: make it here and in
/// docs/architecture.md together. Add `ingest.workspace = true` to worker's
/// `[dev-dependencies]` (the cycle this crate broke) to see this fail.
#[test]
fn crates_depend_only_along_the_allowed_edges() {
    let allowed: BTreeMap<&str, &[(&str, &str)]> = BTreeMap::from([
        ("shared", &[][..]),
        ("ingest", &[("normal", "shared"), ("dev", "testkit")][..]),
        ("worker", &[("normal", "shared"), ("dev", "testkit")][..]),
        ("hookctl", &[("normal", "shared"), ("normal", "worker")][..]),
        ("console", &[("normal", "shared"), ("normal", "hookctl"), ("normal", "worker"), ("dev", "testkit")][..]),
        ("testkit", &[("normal", "shared")][..]),
        ("bench", &[("normal", "shared"), ("normal", "ingest"), ("normal", "worker"), ("normal", "testkit")][..]),
        (
            "e2e",
            &[
                ("normal", "ingest"),
                ("normal", "worker"),
                ("normal", "hookctl"),
                ("normal", "shared"),
                ("dev", "testkit"),
                ("dev", "console"),
            ][..],
        ),
    ]);
    let edges = workspace_edges();
    let crates: BTreeSet<&str> = edges.keys().map(String::as_str).collect();
    assert_eq!(crates, allowed.keys().copied().collect(), "the workspace's crates");
    for (name, found) in &edges {
        let expected: BTreeSet<(String, String)> =
            allowed[name.as_str()].iter().map(|(k, d)| (k.to_string(), d.to_string())).collect();
        assert_eq!(found, &expected, "{name}'s dependencies on workspace crates (kind, crate)");
    }
}

/// Whatever the list above says, the graph (dev-dependencies included) has no cycle.
#[test]
fn the_crate_graph_has_no_cycle_even_through_dev_dependencies() {
    let edges = workspace_edges();
    fn visit<'a>(
        name: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<(String, String)>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(name) {
            return;
        }
        assert!(!path.contains(&name), "dependency cycle: {} -> {name}", path.join(" -> "));
        path.push(name);
        for (_, dependency) in &edges[name] {
            visit(dependency, edges, path, done);
        }
        path.pop();
        done.insert(name);
    }
    let mut done = BTreeSet::new();
    for name in edges.keys() {
        visit(name, &edges, &mut Vec::new(), &mut done);
    }
}

/// The worker's folders (and its top-level modules) and what each may import of the crate.
const WORKER_LAYERS: &[(&str, &[&str])] = &[
    ("domain", &["domain"]),
    ("provider_api", &["domain", "provider_api"]),
    ("metrics", &["domain", "metrics"]),
    ("store", &["domain", "metrics", "store"]),
    ("pipeline", &["domain", "metrics", "pipeline", "provider_api", "store"]),
    ("delivery", &["domain", "delivery", "metrics", "pipeline", "store"]),
    ("health", &["health", "metrics", "pipeline", "store"]),
    ("reconcile", &["domain", "metrics", "provider_api", "reconcile", "store"]),
];

fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        files.extend(rust_files(&entry.unwrap().path()));
    }
    files
}

/// The first segment of every `crate::…` path in the code (comments left out).
fn crate_imports(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut found = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (i, _) in line.match_indices("crate::") {
            let preceded = line[..i].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_');
            if preceded {
                continue;
            }
            let rest = &line[i + "crate::".len()..];
            let segment: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !segment.is_empty() {
                found.insert(segment);
            }
        }
    }
    found
}

/// Add `use crate::pipeline::halt::Halt;` to worker/src/domain/outcome.rs (or any
/// `crate::store` path to a domain file) to see this fail.
#[test]
fn no_worker_module_imports_upward() {
    let src = repo_root().join("worker/src");
    for (layer, allowed) in WORKER_LAYERS {
        let mut files = Vec::new();
        for path in [src.join(layer), src.join(format!("{layer}.rs"))] {
            if path.exists() {
                files.extend(rust_files(&path));
            }
        }
        assert!(!files.is_empty(), "worker/src/{layer} exists");
        for file in files {
            for import in crate_imports(&file) {
                assert!(
                    allowed.contains(&import.as_str()),
                    "{} imports crate::{import}; {layer} may import only {allowed:?} (docs/architecture.md)",
                    file.strip_prefix(repo_root()).unwrap().display()
                );
            }
        }
    }
}

/// Every folder and top-level module of the worker is in the table above (and so in the docs).
#[test]
fn every_worker_module_has_a_layer() {
    let known: BTreeSet<&str> = WORKER_LAYERS.iter().map(|(layer, _)| *layer).chain(["lib", "main", "cli"]).collect();
    for entry in std::fs::read_dir(repo_root().join("worker/src")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(known.contains(name.as_str()), "worker/src/{name} belongs to no layer of docs/architecture.md");
    }
}

/// Small files in the crates this shape was made for, and the console over hookctl: one that
/// grows past ~400 lines is usually two things.
#[test]
fn no_worker_hookctl_or_console_file_is_far_over_400_lines() {
    for crate_dir in ["worker", "hookctl", "console"] {
        for file in rust_files(&repo_root().join(crate_dir).join("src")) {
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            assert!(
                lines <= 420,
                "{} has {lines} lines; split it at its seam",
                file.strip_prefix(repo_root()).unwrap().display()
            );
        }
    }
}

/// The domain decides and never does I/O, logging included: a line logged while deciding would
/// be written while the batch's transaction holds its payments' row locks. What a decision has
/// to say travels in its outcome and is logged when the event concludes, after the commit. Add
/// a `tracing::warn!` to worker/src/domain/decide.rs to see this fail.
#[test]
fn the_worker_domain_logs_nothing() {
    for file in rust_files(&repo_root().join("worker/src/domain")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let code: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
        let logs = code.iter().any(|l| l.contains("tracing::") || l.contains("log::"));
        assert!(!logs, "{} logs; return what it has to say instead", file.strip_prefix(repo_root()).unwrap().display());
    }
}
