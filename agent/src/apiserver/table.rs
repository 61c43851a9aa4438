//! `kubectl get` asks for a Table (`Accept: ...;as=Table;g=meta.k8s.io;v=v1`):
//! rows with the columns KubeVirt prints (VMs: Age, Status, Ready; VMIs: Age,
//! Phase, IP, NodeName, Ready), evaluated from the CRD's printer columns,
//! and those kube-apiserver prints for built-in kinds (Events, Services,
//! EndpointSlices; computed in `printers`).

use serde_json::{json, Value};

use super::resources::Resource;

mod printers;

/// Where a column's cells come from.
enum Source {
    /// A printer-column JSONPath; alternatives separated by `|` (the first set wins).
    Path(&'static str),
    /// Computed from the object, as kube-apiserver's printers for built-in kinds do.
    Computed(fn(&Value) -> String),
}

struct Column {
    name: &'static str,
    kind: &'static str,
    source: Source,
    /// 0 shown always, 1 only with `-o wide`.
    priority: u8,
}

impl Column {
    fn path(name: &'static str, kind: &'static str, path: &'static str) -> Column {
        Column { name, kind, source: Source::Path(path), priority: 0 }
    }

    fn computed(name: &'static str, compute: fn(&Value) -> String) -> Column {
        Column { name, kind: "string", source: Source::Computed(compute), priority: 0 }
    }
}

/// When an Event was last seen: events.k8s.io writers (kube-rs's Recorder)
/// set only `eventTime` and `series`, core writers `lastTimestamp`.
const LAST_SEEN: &str = ".series.lastObservedTime|.lastTimestamp|.eventTime";

fn columns(resource: &Resource) -> Vec<Column> {
    let age = || Column::path("Age", "date", ".metadata.creationTimestamp");
    let ready = Column::path("Ready", "string", ".status.conditions[?(@.type=='Ready')].status");
    match resource.kind {
        "VirtualMachine" => vec![age(), Column::path("Status", "string", ".status.printableStatus"), ready],
        "VirtualMachineInstance" => vec![
            age(),
            Column::path("Phase", "string", ".status.phase"),
            Column::path("IP", "string", ".status.interfaces[0].ipAddress"),
            Column::path("NodeName", "string", ".status.nodeName"),
            ready,
        ],
        "Namespace" => vec![Column::path("Status", "string", ".status.phase"), age()],
        // As the Kubernetes API server prints core Events (Name only with -o wide).
        "Event" => vec![
            Column::path("Last Seen", "date", LAST_SEEN),
            Column::path("Type", "string", ".type"),
            Column::path("Reason", "string", ".reason"),
            Column::computed("Object", printers::involved_object),
            Column::path("Message", "string", ".message"),
        ],
        // kube-apiserver's printers for Services and EndpointSlices.
        "Service" => vec![
            Column::path("Type", "string", ".spec.type"),
            Column::computed("Cluster-IP", printers::cluster_ip),
            Column::computed("External-IP", printers::external_ip),
            Column::computed("Port(s)", printers::service_ports),
            age(),
            Column { priority: 1, ..Column::computed("Selector", printers::selector) },
        ],
        "EndpointSlice" => vec![
            Column::path("AddressType", "string", ".addressType"),
            Column::computed("Ports", printers::slice_ports),
            Column::computed("Endpoints", printers::slice_endpoints),
            age(),
        ],
        _ => vec![age()],
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
    let path = match column.source {
        Source::Computed(compute) => return json!(compute(object)),
        Source::Path(path) => path,
    };
    // Alternatives separated by `|`: the first that is set.
    let value = path.split('|').find_map(|path| evaluate(object, path).filter(|v| !v.is_null()));
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
        definitions.push(json!({"name": column.name, "type": if column.kind == "date" { "string" } else { column.kind }, "format": "", "description": column.name, "priority": column.priority}));
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
