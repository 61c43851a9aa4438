//! `deploy/crds.yaml` is generated from the types; this test fails when the
//! two drift apart (compared as parsed values, so formatting and comments do
//! not matter) and says how to regenerate the file.

use std::path::Path;

use serde::Deserialize;

const REGENERATE: &str = "cargo run -q -p kvmlet-proto --example crds > deploy/crds.yaml";

fn checked_in() -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}; generate it with `{REGENERATE}`", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let value = serde_yaml::Value::deserialize(document).unwrap_or_else(|e| {
                panic!("{} is not valid YAML ({e}); regenerate it with `{REGENERATE}`", path.display())
            });
            serde_json::to_value(value).expect("YAML value as JSON")
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn generated() -> Vec<serde_json::Value> {
    proto::crds().iter().map(|crd| serde_json::to_value(crd).expect("CRD as JSON")).collect()
}

fn name(crd: &serde_json::Value) -> &str {
    crd["metadata"]["name"].as_str().unwrap_or("<no name>")
}

#[test]
fn deploy_crds_match_the_types() {
    let on_disk = checked_in();
    let expected = generated();
    let names = |crds: &[serde_json::Value]| crds.iter().map(|c| name(c).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        names(&on_disk),
        names(&expected),
        "deploy/crds.yaml holds other CRDs than proto::crds() produces; regenerate it with `{REGENERATE}`"
    );
    for (file, types) in on_disk.iter().zip(&expected) {
        assert!(
            file == types,
            "deploy/crds.yaml is stale: CRD {} differs from what the kvmlet-proto types produce; \
             regenerate it with `{REGENERATE}`\nfirst difference: {}",
            name(types),
            first_difference(file, types, String::new()).unwrap_or_default()
        );
    }
}

#[test]
fn both_kinds_are_generated() {
    let names: Vec<String> = generated().iter().map(|c| name(c).to_owned()).collect();
    assert_eq!(names, ["virtualmachines.kubevirt.io", "virtualmachineinstances.kubevirt.io"]);
}

/// Where two JSON values first differ, as a JSON pointer with both sides.
fn first_difference(file: &serde_json::Value, types: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match (file, types) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|key| {
                let path = format!("{at}/{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(x, y, path),
                    (x, y) => Some(format!("{path}: file has {x:?}, types produce {y:?}")),
                }
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| first_difference(x, y, format!("{at}/{i}")))
        }
        _ if file == types => None,
        _ => Some(format!("{at}: file has {file}, types produce {types}")),
    }
}
