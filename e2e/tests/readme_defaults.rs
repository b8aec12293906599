//! The README's configuration table states a default for every setting; this pins each one to
//! the default the code loads. Setting a variable to the value the README calls its default
//! must load exactly what not setting it loads (secrets compare through their redacted Debug,
//! which still tells "set" from "unset").

use std::path::Path;

use shared::Settings;

/// Defaults the README describes in words instead of a value, and why each is right.
const DESCRIBED: &[(&str, &str)] = &[
    // "batch size × concurrency": computed from two other settings (`Settings::worker_prefetch`).
    ("WORKER_PREFETCH", "batch size × concurrency"),
    // "on iff TOSS_SECRET_KEY is set" (`Settings::toss_fetch_back_enabled`).
    ("TOSS_FETCH_BACK", "on iff"),
];

/// (variable, default cell) of every row of the README's configuration table.
fn readme_defaults() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let table = readme.split("\n## Configuration\n").nth(1).expect("a Configuration section");
    let table = table.split("\n## ").next().unwrap();
    let mut rows = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, defaults) = (cells[1], cells[2]);
        let names: Vec<&str> = names.split(" / ").map(|n| n.trim_matches('`')).collect();
        let values: Vec<&str> = if names.len() > 1 { defaults.split(" / ").collect() } else { vec![defaults] };
        assert_eq!(names.len(), values.len(), "one default per variable in {line}");
        rows.extend(names.into_iter().zip(values).map(|(n, v)| (n.to_string(), v.to_string())));
    }
    rows
}

/// The value a default cell states: the backticked literal, or "" for none or empty.
fn stated(cell: &str) -> Option<String> {
    if let Some(start) = cell.find('`') {
        let rest = &cell[start + 1..];
        return Some(rest[..rest.find('`').expect("a closing backtick")].to_string());
    }
    if cell.starts_with('—') || cell.starts_with("empty") {
        return Some(String::new());
    }
    cell.parse::<f64>().ok().map(|_| cell.to_string())
}

/// Change a default in shared/src/settings.rs (e.g. `database_pool_size: 16` to 20), or a value
/// in the README's table, to see this fail.
#[test]
fn every_default_the_readme_states_is_the_loaded_default() {
    let defaults = format!("{:?}", Settings::from_vars([]).unwrap());
    let names = Settings::env_names();
    let mut checked = 0;
    for (name, cell) in readme_defaults() {
        if !names.contains(&name) {
            // RUST_LOG, WEBHOOKS_CONFIG, OTEL_*: read by the process, not settings fields.
            continue;
        }
        if let Some((_, words)) = DESCRIBED.iter().find(|(n, _)| *n == name) {
            assert!(cell.contains(words), "{name}'s default is described as {words:?}: {cell}");
            continue;
        }
        let value = stated(&cell).unwrap_or_else(|| panic!("{name}: no default value in {cell:?}"));
        let loaded = Settings::from_vars([(name.as_str(), value.as_str())])
            .unwrap_or_else(|e| panic!("{name}={value:?}, the README's default, is refused: {e}"));
        assert_eq!(format!("{loaded:?}"), defaults, "{name}={value:?} (the README's default) is not the default");
        checked += 1;
    }
    let documented = names.len() - DESCRIBED.len();
    assert_eq!(checked, documented, "every setting's default is stated in the README and checked");
}
