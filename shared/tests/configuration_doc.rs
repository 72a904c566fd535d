//! `docs/configuration.md` against the settings: every setting the code reads
//! (with its environment variable) has a row there, and every row names a
//! setting that exists, so the page cannot drift from `Settings`.

use auditline_shared::settings::Settings;
use serde_json::Value;

/// Dotted keys of every leaf setting, from the defaults serialized.
fn keys(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                keys(&path, value, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

fn page() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    std::fs::read_to_string(&path).expect("docs/configuration.md")
}

#[test]
fn every_setting_has_a_row_with_its_environment_variable() {
    let page = page();
    let mut all = Vec::new();
    keys(
        "",
        &serde_json::to_value(Settings::default()).expect("settings serialize"),
        &mut all,
    );
    // Destinations are a map, empty by default: the page documents its fields.
    all.retain(|key| key != "exports.destinations");
    assert!(all.len() >= 45, "only {} settings found", all.len());
    let missing: Vec<&String> = all
        .iter()
        .filter(|key| {
            let env = format!("AUDITLINE_{}", key.to_uppercase().replace('.', "__"));
            let env_tail = format!("__{}", key.rsplit('.').next().unwrap_or(key).to_uppercase());
            let row = page
                .lines()
                .find(|line| line.starts_with('|') && line.contains(&format!("`{key}`")));
            match row {
                None => true,
                Some(row) => !(row.contains(&env) || row.contains(&env_tail)),
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "settings without a row (or without their environment variable) in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn every_row_names_a_setting_that_exists() {
    let page = page();
    let mut all = Vec::new();
    keys(
        "",
        &serde_json::to_value(Settings::default()).expect("settings serialize"),
        &mut all,
    );
    let unknown: Vec<String> = page
        .lines()
        .filter(|line| line.starts_with("| `"))
        .flat_map(|line| {
            let first = line.split('|').nth(1).unwrap_or_default();
            first
                .split(',')
                .map(|k| k.trim().trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|key| !key.starts_with("exports.destinations.") && !key.starts_with('.'))
        .filter(|key| !all.contains(key))
        .collect();
    assert!(
        unknown.is_empty(),
        "rows of docs/configuration.md naming no setting: {unknown:?}"
    );
}
