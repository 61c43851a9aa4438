//! `kubectl get` asks for a Table (`Accept: ...;as=Table;g=meta.k8s.io;v=v1`):
//! rows with the columns KubeVirt prints (VMs: Age, Status, Ready; VMIs: Age,
//! Phase, IP, NodeName, Ready), evaluated from the CRD's printer columns.

use serde_json::{json, Value};

use super::resources::Resource;

struct Column {
    name: &'static str,
    kind: &'static str,
    path: &'static str,
}

/// When an Event was last seen: events.k8s.io writers (kube-rs's Recorder)
/// set only `eventTime` and `series`, core writers `lastTimestamp`.
const LAST_SEEN: &str = ".series.lastObservedTime|.lastTimestamp|.eventTime";
/// Not a path: the Event's object as kubectl shows it, `kind/name` in lower case.
const INVOLVED_OBJECT: &str = "involvedObject";

fn columns(resource: &Resource) -> Vec<Column> {
    let age = Column { name: "Age", kind: "date", path: ".metadata.creationTimestamp" };
    let ready = Column { name: "Ready", kind: "string", path: ".status.conditions[?(@.type=='Ready')].status" };
    match resource.kind {
        "VirtualMachine" => {
            vec![age, Column { name: "Status", kind: "string", path: ".status.printableStatus" }, ready]
        }
        "VirtualMachineInstance" => vec![
            age,
            Column { name: "Phase", kind: "string", path: ".status.phase" },
            Column { name: "IP", kind: "string", path: ".status.interfaces[0].ipAddress" },
            Column { name: "NodeName", kind: "string", path: ".status.nodeName" },
            ready,
        ],
        "Namespace" => vec![Column { name: "Status", kind: "string", path: ".status.phase" }, age],
        // As the Kubernetes API server prints core Events (Name only with -o wide).
        "Event" => vec![
            Column { name: "Last Seen", kind: "date", path: LAST_SEEN },
            Column { name: "Type", kind: "string", path: ".type" },
            Column { name: "Reason", kind: "string", path: ".reason" },
            Column { name: "Object", kind: "string", path: INVOLVED_OBJECT },
            Column { name: "Message", kind: "string", path: ".message" },
        ],
        _ => vec![age],
    }
}

/// Evaluates the JSONPath forms printer columns use: `.a.b`, `.a[0].b` and
/// `.a[?(@.key=='value')].b`.
pub fn evaluate<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = object;
    for segment in segments(path.trim_start_matches('.')) {
        let (field, filter) = match segment.split_once('[') {
            Some((field, rest)) => (field, Some(rest.trim_end_matches(']'))),
            None => (segment, None),
        };
        if !field.is_empty() {
            current = current.get(field)?;
        }
        match filter {
            None => {}
            Some("") => return None,
            Some(index) if index.parse::<usize>().is_ok() => current = current.get(index.parse::<usize>().ok()?)?,
            Some(predicate) => {
                // ?(@.type=='Ready') -- possibly followed by more segments (handled by the split on '.')
                let inner = predicate.strip_prefix("?(@")?.strip_suffix(')')?;
                let (key, value) = inner.trim_start_matches('.').split_once("==")?;
                let value = value.trim_matches(|c| c == '\'' || c == '"');
                current =
                    current.as_array()?.iter().find(|item| item.get(key).and_then(Value::as_str) == Some(value))?;
            }
        }
    }
    Some(current)
}

/// Splits a path on the dots that are not inside `[...]`.
fn segments(path: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in path.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => {
                out.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&path[start..]);
    out
}

/// "5s", "3m20s", "2h", "4d": the way kubectl shows ages.
pub fn age(timestamp: &str) -> String {
    let Ok(time) = timestamp.parse::<k8s_openapi::jiff::Timestamp>() else { return "<unknown>".into() };
    let seconds = k8s_openapi::jiff::Timestamp::now().duration_since(time).as_secs().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Missing values are empty cells, as kubectl prints them for CRD columns.
fn cell(column: &Column, object: &Value) -> Value {
    if column.path == INVOLVED_OBJECT {
        let involved = &object["involvedObject"];
        let kind = involved["kind"].as_str().unwrap_or_default().to_lowercase();
        return json!(format!("{kind}/{}", involved["name"].as_str().unwrap_or_default()));
    }
    // Alternatives separated by `|`: the first that is set.
    let value = column.path.split('|').find_map(|path| evaluate(object, path).filter(|v| !v.is_null()));
    match value {
        None | Some(Value::Null) => json!(""),
        Some(Value::String(s)) if column.kind == "date" => json!(age(s)),
        Some(value) => value.clone(),
    }
}

pub fn table(resource: &Resource, items: &[Value], resource_version: u64) -> Value {
    let name_priority = if resource.kind == "Event" { 1 } else { 0 };
    let mut definitions = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": name_priority}),
    ];
    let columns = columns(resource);
    for column in &columns {
        definitions.push(json!({"name": column.name, "type": if column.kind == "date" { "string" } else { column.kind }, "format": "", "description": column.name, "priority": 0}));
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|object| {
            let mut cells = vec![object["metadata"]["name"].clone()];
            cells.extend(columns.iter().map(|c| cell(c, object)));
            let metadata = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]});
            json!({"cells": cells, "object": metadata})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// Whether the client asked for a Table.
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|t| t.contains("as=Table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths() {
        let vmi = json!({"status": {"phase": "Running", "nodeName": "n1",
            "interfaces": [{"ipAddress": "10.0.0.2"}],
            "conditions": [{"type": "Paused", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(evaluate(&vmi, ".status.phase"), Some(&json!("Running")));
        assert_eq!(evaluate(&vmi, ".status.interfaces[0].ipAddress"), Some(&json!("10.0.0.2")));
        assert_eq!(evaluate(&vmi, ".status.conditions[?(@.type=='Ready')].status"), Some(&json!("True")));
        assert_eq!(evaluate(&vmi, ".status.missing"), None);
    }

    #[test]
    fn vm_table_has_kubevirt_columns() {
        let vm = Resource::find("kubevirt.io", "v1", "virtualmachines").unwrap();
        let object = json!({"metadata": {"name": "a", "creationTimestamp": crate::clock::now_rfc3339()},
            "status": {"printableStatus": "Stopped"}});
        let table = table(vm, &[object], 7);
        let names: Vec<&str> =
            table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Name", "Age", "Status", "Ready"]);
        assert_eq!(table["rows"][0]["cells"], json!(["a", "0s", "Stopped", ""]));
    }

    #[test]
    fn events_print_like_kubectl_get_events() {
        let events = Resource::find("", "v1", "events").unwrap();
        let recorded = json!({"metadata": {"name": "vm-cirros.1"}, "type": "Normal", "reason": "SuccessfulCreate",
            "message": "Created the VMI", "eventTime": crate::clock::now_rfc3339(),
            "involvedObject": {"kind": "VirtualMachine", "name": "vm-cirros"}});
        let table = table(events, &[recorded], 3);
        let names: Vec<&str> =
            table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Name", "Last Seen", "Type", "Reason", "Object", "Message"]);
        assert_eq!(table["columnDefinitions"][0]["priority"], 1, "kubectl get events shows no name column");
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["vm-cirros.1", "0s", "Normal", "SuccessfulCreate", "virtualmachine/vm-cirros", "Created the VMI"])
        );
    }
}
