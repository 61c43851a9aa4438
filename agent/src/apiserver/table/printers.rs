//! Cells kube-apiserver's printers (`pkg/printers/internalversion`) compute
//! for built-in kinds, rather than read from one path. The server prints
//! them as for `-o wide` (nothing clipped); kubectl hides the columns of
//! priority 1 unless asked.

use serde_json::Value;

fn strings(value: &Value) -> impl Iterator<Item = &str> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// An Event's object as kubectl shows it: `kind/name`, the kind in lower case.
pub fn involved_object(event: &Value) -> String {
    let involved = &event["involvedObject"];
    let kind = involved["kind"].as_str().unwrap_or_default().to_lowercase();
    format!("{kind}/{}", involved["name"].as_str().unwrap_or_default())
}

/// The first cluster IP (`None` for a headless Service), `<none>` without one.
pub fn cluster_ip(service: &Value) -> String {
    let spec = &service["spec"];
    let first = strings(&spec["clusterIPs"]).next().or(spec["clusterIP"].as_str()).filter(|ip| !ip.is_empty());
    first.unwrap_or("<none>").to_string()
}

/// `getServiceExternalIP`: external IPs, a load balancer's addresses
/// (`<pending>` until it has some), an ExternalName Service's name.
pub fn external_ip(service: &Value) -> String {
    let spec = &service["spec"];
    let external: Vec<&str> = strings(&spec["externalIPs"]).collect();
    match spec["type"].as_str().unwrap_or("ClusterIP") {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".into(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let ingress = service["status"]["loadBalancer"]["ingress"].as_array().into_iter().flatten();
            let mut balancer: Vec<&str> = ingress
                .filter_map(|i| i["ip"].as_str().filter(|s| !s.is_empty()).or(i["hostname"].as_str()))
                .filter(|s| !s.is_empty())
                .collect();
            balancer.sort_unstable();
            balancer.dedup();
            balancer.extend(external);
            if balancer.is_empty() {
                "<pending>".into()
            } else {
                balancer.join(",")
            }
        }
        "ExternalName" => spec["externalName"].as_str().unwrap_or_default().to_string(),
        _ => "<unknown>".into(),
    }
}

/// `makePortString`: `80/TCP`, with a node port `80:30080/TCP`, joined by ','.
pub fn service_ports(service: &Value) -> String {
    let ports: Vec<String> = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|port| {
            let number = port["port"].as_i64().unwrap_or_default();
            let protocol = port["protocol"].as_str().unwrap_or_default();
            match port["nodePort"].as_i64().filter(|n| *n > 0) {
                Some(node_port) => format!("{number}:{node_port}/{protocol}"),
                None => format!("{number}/{protocol}"),
            }
        })
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

/// `labels.FormatLabels`: `k=v,k2=v2` sorted by key, `<none>` when empty.
pub fn selector(service: &Value) -> String {
    let Some(selector) = service["spec"]["selector"].as_object().filter(|s| !s.is_empty()) else {
        return "<none>".into();
    };
    // serde_json's maps keep keys sorted.
    let pairs: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
    pairs.join(",")
}

/// How many items kube's EndpointSlice printer lists before `+ N more...`.
const LISTED: usize = 3;

/// `listWithMoreString`: the first items, how many more, `<unset>` for none.
fn list_with_more(items: Vec<String>) -> String {
    let listed = items.iter().take(LISTED).cloned().collect::<Vec<_>>().join(",");
    if items.len() > LISTED {
        format!("{listed} + {} more...", items.len() - LISTED)
    } else if listed.is_empty() {
        "<unset>".into()
    } else {
        listed
    }
}

/// `formatDiscoveryPorts`: each port's number, else its name (empty once
/// defaulted), else `*`.
pub fn slice_ports(slice: &Value) -> String {
    let ports = slice["ports"].as_array().into_iter().flatten();
    list_with_more(
        ports
            .map(|port| match (port["port"].as_i64(), port["name"].as_str()) {
                (Some(number), _) => number.to_string(),
                (None, Some(name)) => name.to_string(),
                (None, None) => "*".into(),
            })
            .collect(),
    )
}

/// `formatDiscoveryEndpoints`: the addresses of all endpoints.
pub fn slice_endpoints(slice: &Value) -> String {
    let endpoints = slice["endpoints"].as_array().into_iter().flatten();
    list_with_more(endpoints.flat_map(|e| strings(&e["addresses"])).map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn service_cells() {
        let node_port = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP"}],
            "selector": {"tier": "web", "app": "a"}}});
        assert_eq!(cluster_ip(&node_port), "10.96.0.5");
        assert_eq!(external_ip(&node_port), "<none>");
        assert_eq!(service_ports(&node_port), "80:30080/TCP,53/UDP");
        assert_eq!(selector(&node_port), "app=a,tier=web");

        let headless = json!({"spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"],
            "externalIPs": ["192.0.2.1", "192.0.2.2"]}});
        assert_eq!(
            (cluster_ip(&headless), external_ip(&headless), service_ports(&headless), selector(&headless)),
            ("None".into(), "192.0.2.1,192.0.2.2".into(), "<none>".into(), "<none>".into())
        );

        let pending = json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}});
        assert_eq!(external_ip(&pending), "<pending>");
        let balanced = json!({"spec": {"type": "LoadBalancer", "externalIPs": ["192.0.2.9"]}, "status": {"loadBalancer":
            {"ingress": [{"ip": "198.51.100.2"}, {"hostname": "lb.example"}, {"ip": "198.51.100.1"}]}}});
        assert_eq!(external_ip(&balanced), "198.51.100.1,198.51.100.2,lb.example,192.0.2.9");

        let external = json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert_eq!((cluster_ip(&external), external_ip(&external)), ("<none>".into(), "db.example.com".into()));
    }

    #[test]
    fn endpoint_slice_cells() {
        let slice = json!({"ports": [{"name": "http", "port": 80}, {"name": "", "port": 443}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3"]}, {"addresses": ["10.0.0.4"]},
                          {"addresses": ["10.0.0.5"]}]});
        assert_eq!(slice_ports(&slice), "80,443");
        assert_eq!(slice_endpoints(&slice), "10.0.0.1,10.0.0.2,10.0.0.3 + 2 more...");
        let empty = json!({"ports": [{"name": "", "protocol": "TCP"}]});
        assert_eq!((slice_ports(&empty), slice_endpoints(&empty)), ("<unset>".into(), "<unset>".into()));
        assert_eq!(slice_ports(&json!({})), "<unset>");
        assert_eq!(slice_ports(&json!({"ports": [{}]})), "*");
        let three = json!({"endpoints": [{"addresses": ["a.example.com", "b.example.com", "c.example.com"]}]});
        assert_eq!(slice_endpoints(&three), "a.example.com,b.example.com,c.example.com");
    }
}
