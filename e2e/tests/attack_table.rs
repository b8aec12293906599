//! README's "What an attacker can and cannot do" names, for every attack, the test that shows
//! the defence. Tests move and get renamed; a row naming a test that no longer exists would be a
//! claim nobody checks. So every file the table names exists, and every test it names is a
//! function of the file named before it in the same cell (a name ending in `…` is a prefix).
//! A bare file name (`trust.rs`) stands for the path given earlier in the table, or else for
//! the one file of that name in the workspace.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e lives in the workspace").to_path_buf()
}

/// The "shown by" cells of the attack table, with their line numbers in README.md.
fn shown_by_cells(readme: &str) -> Vec<(usize, String)> {
    let mut in_section = false;
    let mut cells = Vec::new();
    for (number, line) in readme.lines().enumerate() {
        if line.starts_with("## ") {
            in_section = line.trim() == "## What an attacker can and cannot do";
            continue;
        }
        if !in_section || !line.starts_with('|') {
            continue;
        }
        let columns: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        let Some(last) = columns.last() else { continue };
        if columns.len() < 3 || *last == "shown by" || last.starts_with("---") {
            continue;
        }
        cells.push((number + 1, last.to_string()));
    }
    cells
}

/// The code spans of a cell, in order.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// Every `.rs` file of the workspace outside `target/`, relative to the root.
fn workspace_sources(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("readable directory") {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    walk(root, &path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// Whether `source` defines a function named `name` (or, for a prefix, one starting with it).
fn defines_function(source: &str, name: &str) -> bool {
    let (name, prefix) = match name.strip_suffix('…') {
        Some(prefix) => (prefix, true),
        None => (name, false),
    };
    source.match_indices("fn ").any(|(at, _)| {
        let rest = &source[at + 3..];
        let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if prefix {
            ident.starts_with(name)
        } else {
            ident == name
        }
    })
}

/// The problems of the table: a file that does not exist, a test its file does not define.
fn problems(root: &Path, readme: &str) -> Vec<String> {
    let sources = workspace_sources(root);
    let mut known: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    for (line, cell) in shown_by_cells(readme) {
        let mut current: Option<String> = None;
        for span in code_spans(&cell) {
            if span.ends_with(".rs") {
                let path = if span.contains('/') {
                    Some(span.to_string())
                } else {
                    let suffix = format!("/{span}");
                    let earlier = known.iter().find(|p| p.ends_with(&suffix)).cloned();
                    earlier.or_else(|| {
                        let matches: Vec<&String> = sources.iter().filter(|p| p.ends_with(&suffix)).collect();
                        (matches.len() == 1).then(|| matches[0].clone())
                    })
                };
                match path {
                    Some(path) if root.join(&path).is_file() => {
                        if !known.contains(&path) {
                            known.push(path.clone());
                        }
                        current = Some(path);
                    }
                    _ => {
                        problems.push(format!("README.md:{line}: `{span}` is not a file of the workspace"));
                        current = None;
                    }
                }
            } else if span.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '…') {
                let Some(path) = &current else {
                    problems.push(format!("README.md:{line}: test `{span}` follows no file"));
                    continue;
                };
                let source = std::fs::read_to_string(root.join(path)).expect("readable source");
                if !defines_function(&source, span) {
                    problems.push(format!("README.md:{line}: {path} has no test `{span}`"));
                }
            }
        }
    }
    problems
}

#[test]
fn every_test_the_attack_table_names_exists() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let cells = shown_by_cells(&readme);
    assert!(cells.len() >= 20, "README's attack table has a row per attack ({} found)", cells.len());
    let problems = problems(&root, &readme);
    assert!(problems.is_empty(), "the attack table names what does not exist:\n{}", problems.join("\n"));
}

#[test]
fn a_renamed_test_or_a_moved_file_is_reported() {
    let root = repo_root();
    let table = "## What an attacker can and cannot do\n\n| attack | result | shown by |\n|---|---|---|\n\
        | a | b | `e2e/tests/trust.rs` `no_such_test_…`, `worker/tests/gone.rs` |\n\
        | c | d | `trust.rs` `replaying_a_dead_letter_goes_through_the_same_check` |\n\n## Next\n";
    let problems = problems(&root, table);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("has no test `no_such_test_…`"), "{problems:?}");
    assert!(problems[1].contains("`worker/tests/gone.rs` is not a file"), "{problems:?}");
}
