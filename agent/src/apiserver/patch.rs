//! PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902,
//! including `test`, which kube-rs's finalizer helper and `kvmlet start/stop`
//! rely on to make racing writers fail instead of both winning).

use serde_json::Value;

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JsonPatchError {
    #[error("the patch is not an array of operations")]
    NotAList,
    #[error("operation {0}: {1}")]
    Invalid(usize, String),
    #[error("test operation {0} failed at {1}")]
    TestFailed(usize, String),
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// The parent container of `pointer` and the last token.
fn parent<'a>(doc: &'a mut Value, pointer: &str) -> Option<(&'a mut Value, String)> {
    let (parent_path, last) = pointer.rsplit_once('/')?;
    let parent = if parent_path.is_empty() { Some(doc) } else { doc.pointer_mut(parent_path) }?;
    Some((parent, unescape(last)))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, key) = parent(doc, path).ok_or_else(|| format!("path {path} does not exist"))?;
    match parent {
        Value::Object(map) => {
            map.insert(key, value);
            Ok(())
        }
        Value::Array(list) => {
            let index = if key == "-" { list.len() } else { key.parse().map_err(|_| format!("bad index {key}"))? };
            if index > list.len() {
                return Err(format!("index {index} out of range"));
            }
            list.insert(index, value);
            Ok(())
        }
        _ => Err(format!("{path}: parent is not a container")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = parent(doc, path).ok_or_else(|| format!("path {path} does not exist"))?;
    match parent {
        Value::Object(map) => map.remove(&key).ok_or_else(|| format!("path {path} does not exist")),
        Value::Array(list) => {
            let index: usize = key.parse().map_err(|_| format!("bad index {key}"))?;
            (index < list.len()).then(|| list.remove(index)).ok_or_else(|| format!("index {index} out of range"))
        }
        _ => Err(format!("{path}: parent is not a container")),
    }
}

/// Applies an RFC 6902 patch; nothing changes unless every operation succeeds.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, JsonPatchError> {
    let ops = patch.as_array().ok_or(JsonPatchError::NotAList)?;
    let mut out = doc.clone();
    for (i, op) in ops.iter().enumerate() {
        let invalid = |msg: String| JsonPatchError::Invalid(i, msg);
        let path = op["path"].as_str().ok_or_else(|| invalid("missing path".into()))?;
        let value = || op.get("value").cloned().ok_or_else(|| invalid("missing value".into()));
        let from = || op["from"].as_str().ok_or_else(|| invalid("missing from".into()));
        match op["op"].as_str() {
            Some("add") => add(&mut out, path, value()?).map_err(invalid)?,
            Some("remove") => {
                remove(&mut out, path).map_err(invalid)?;
            }
            Some("replace") => {
                remove(&mut out, path).map_err(invalid)?;
                add(&mut out, path, value()?).map_err(invalid)?;
            }
            Some("move") => {
                let moved = remove(&mut out, from()?).map_err(invalid)?;
                add(&mut out, path, moved).map_err(invalid)?;
            }
            Some("copy") => {
                let copied = out.pointer(from()?).cloned().ok_or_else(|| invalid("from does not exist".into()))?;
                add(&mut out, path, copied).map_err(invalid)?;
            }
            Some("test") => {
                if out.pointer(path) != Some(&value()?) {
                    return Err(JsonPatchError::TestFailed(i, path.to_string()));
                }
            }
            other => return Err(invalid(format!("unknown op {other:?}"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        merge(&mut doc, &json!({"spec": {"running": true}}));
        assert_eq!(doc["spec"]["running"], true);
    }

    #[test]
    fn json_patch_ops_and_test() {
        let doc = json!({"status": {"stateChangeRequests": [{"action": "Stop"}]}, "list": [1, 2]});
        let patched = json_patch(
            &doc,
            &json!([
                {"op": "test", "path": "/status/stateChangeRequests", "value": [{"action": "Stop"}]},
                {"op": "add", "path": "/status/stateChangeRequests/-", "value": {"action": "Start"}},
                {"op": "replace", "path": "/list/0", "value": 9},
                {"op": "remove", "path": "/list/1"},
                {"op": "copy", "from": "/list", "path": "/copy"},
                {"op": "move", "from": "/copy", "path": "/moved"}
            ]),
        )
        .unwrap();
        assert_eq!(patched["status"]["stateChangeRequests"][1]["action"], "Start");
        assert_eq!(patched["list"], json!([9]));
        assert_eq!(patched["moved"], json!([9]));
        assert!(patched.get("copy").is_none());
        let failed = json_patch(&doc, &json!([{"op": "test", "path": "/status/stateChangeRequests", "value": []}]));
        assert_eq!(failed, Err(JsonPatchError::TestFailed(0, "/status/stateChangeRequests".into())));
        assert!(json_patch(&doc, &json!({"op": "add"})).is_err());
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
