//! The README's configuration table states a default for every setting, and which binaries
//! read it; this pins both to the code. Setting a variable to the value the README calls its
//! default must load exactly what not setting it loads, in every binary that reads it (secrets
//! compare through their redacted Debug, which still tells "set" from "unset").

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::Path;

use shared::settings::{HookctlSettings, IngestSettings, Settings, WorkerSettings};

/// Defaults the README describes in words instead of a value, and why each is right.
const DESCRIBED: &[(&str, &str)] = &[
    // "batch size × concurrency": computed from two other settings (`WorkerPart::worker_prefetch`).
    ("WORKER_PREFETCH", "batch size × concurrency"),
    // "on iff TOSS_SECRET_KEY is set" (`TossApiSettings::toss_fetch_back_enabled`).
    ("TOSS_FETCH_BACK", "on iff"),
];

/// The binaries with settings, as the table's "used by" column names them ("all": every one).
const BINARIES: [&str; 3] = ["ingest", "worker", "hookctl"];

/// One variable of the README's configuration table.
struct Row {
    name: String,
    default: String,
    used_by: String,
}

/// Every variable of the README's configuration table (a row may name several, with a
/// default each).
fn readme_rows() -> Vec<Row> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let table = readme.split("\n## Configuration\n").nth(1).expect("a Configuration section");
    let table = table.split("\n## ").next().unwrap();
    let mut rows = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, defaults, used_by) = (cells[1], cells[2], cells[3]);
        let names: Vec<&str> = names.split(" / ").map(|n| n.trim_matches('`')).collect();
        let values: Vec<&str> = if names.len() > 1 { defaults.split(" / ").collect() } else { vec![defaults] };
        assert_eq!(names.len(), values.len(), "one default per variable in {line}");
        rows.extend(names.into_iter().zip(values).map(|(name, default)| Row {
            name: name.to_string(),
            default: default.to_string(),
            used_by: used_by.to_string(),
        }));
    }
    rows
}

/// The names each binary reads.
fn names_by_binary() -> [(&'static str, Vec<String>); 3] {
    [
        ("ingest", IngestSettings::env_names()),
        ("worker", WorkerSettings::env_names()),
        ("hookctl", HookctlSettings::env_names()),
    ]
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

/// Checks every default the README states for `S`'s settings; returns the names checked.
fn check_defaults<S: Settings + Debug>(rows: &[Row]) -> BTreeSet<String> {
    let defaults = format!("{:?}", S::from_vars([]).unwrap());
    let names = S::env_names();
    let mut checked = BTreeSet::new();
    for row in rows.iter().filter(|row| names.contains(&row.name)) {
        let (name, cell) = (&row.name, &row.default);
        if let Some((_, words)) = DESCRIBED.iter().find(|(n, _)| n == name) {
            assert!(cell.contains(words), "{name}'s default is described as {words:?}: {cell}");
            continue;
        }
        let value = stated(cell).unwrap_or_else(|| panic!("{name}: no default value in {cell:?}"));
        let loaded = S::from_vars([(name.as_str(), value.as_str())])
            .unwrap_or_else(|e| panic!("{name}={value:?}, the README's default, is refused: {e}"));
        assert_eq!(format!("{loaded:?}"), defaults, "{name}={value:?} (the README's default) is not the default");
        checked.insert(name.clone());
    }
    checked
}

/// Change a default in shared/src/settings/ (e.g. `database_pool_size: 16` to 20), or a value
/// in the README's table, to see this fail.
#[test]
fn every_default_the_readme_states_is_the_loaded_default_in_every_binary() {
    let rows = readme_rows();
    let mut checked = check_defaults::<IngestSettings>(&rows);
    checked.extend(check_defaults::<WorkerSettings>(&rows));
    checked.extend(check_defaults::<HookctlSettings>(&rows));
    checked.extend(DESCRIBED.iter().map(|(name, _)| name.to_string()));
    // RUST_LOG, WEBHOOKS_CONFIG, OTEL_*: read by the process, not settings; nothing else is
    // left out.
    let every: BTreeSet<String> = shared::settings::env_names().into_iter().collect();
    assert_eq!(checked, every, "every setting's default is stated in the README and checked");
}

/// The "used by" column names exactly the binaries that read each setting. Move a field to
/// another binary's part (e.g. `log_format` from `ServiceSettings` to `CommonSettings`), or
/// change a cell, to see this fail.
#[test]
fn the_readme_names_the_binaries_that_read_each_setting() {
    let by_binary = names_by_binary();
    let every = shared::settings::env_names();
    for row in readme_rows().iter().filter(|row| every.contains(&row.name)) {
        let stated: BTreeSet<&str> = if row.used_by == "all" {
            BINARIES.into_iter().collect()
        } else {
            row.used_by.split(", ").filter(|b| BINARIES.contains(b)).collect()
        };
        let reading: BTreeSet<&str> =
            by_binary.iter().filter(|(_, names)| names.contains(&row.name)).map(|(binary, _)| *binary).collect();
        assert_eq!(stated, reading, "{}: the README says used by {:?}", row.name, row.used_by);
    }
}
