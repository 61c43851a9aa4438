use std::process::Command;

use serde_json::json;

use super::*;
use crate::node::pod_netns::VmNetns;

/// Debian's containernetworking-plugins (scripts/install-deps).
const DEBIAN_CNI_BIN: &str = "/usr/lib/cni";

#[test]
fn the_pod_address_is_eth0s_first_ipv4_address() {
    let result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "kvmlet0", "mac": "aa"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [
            {"address": "10.88.0.1/16", "interface": 0},
            {"address": "fd00::5/64", "interface": 2},
            {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2},
        ],
    });
    assert_eq!(pod_address(&result), Some(PodAddress { ip: Ipv4Addr::new(10, 88, 0, 5), prefix_len: 16 }));
    let no_interface = json!({"ips": [{"address": "192.0.2.9/24"}]});
    assert_eq!(pod_address(&no_interface).unwrap().ip, Ipv4Addr::new(192, 0, 2, 9));
    assert_eq!(pod_address(&json!({"ips": [{"address": "10.0.0.1/40"}]})), None);
    assert_eq!(pod_address(&json!({"ips": [{"address": "10.0.0.1/16", "interface": 7}]})), None);
    assert_eq!(pod_address(&json!({})), None);
}

#[test]
fn plugin_errors_are_read_from_the_spec_error_object() {
    let error = json!({"code": 11, "msg": "failed to allocate", "details": "range full"});
    assert_eq!(plugin_error(&error, b""), "failed to allocate: range full");
    assert_eq!(plugin_error(&Value::Null, b" panic: x \n"), "panic: x");
}

#[test]
fn the_first_configuration_is_used_and_a_single_conf_becomes_a_list() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(CniNetwork::from_dir(dir.path(), Path::new("/bin")), Err(CniError::NoConfig(_))));
    std::fs::write(dir.path().join("20-b.conflist"), r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"ptp"}]}"#)
        .unwrap();
    std::fs::write(dir.path().join("10-a.conf"), r#"{"cniVersion":"0.4.0","name":"a","type":"bridge"}"#).unwrap();
    let network = CniNetwork::from_dir(dir.path(), Path::new("/bin")).unwrap();
    let plugins = network.plugins().unwrap();
    assert_eq!(plugins.len(), 1);
    assert_eq!((plugins[0]["type"].as_str(), plugins[0]["name"].as_str()), (Some("bridge"), Some("a")));
    assert_eq!(plugins[0]["cniVersion"], "0.4.0");
    let bad = CniNetwork::new(
        json!({"name": "x", "cniVersion": "1.0.0", "plugins": [{"type": "../sh"}]}),
        "x".into(),
        "/bin".into(),
    );
    let error = bad.del("c", Path::new("/nonexistent")).unwrap_err();
    assert!(error.to_string().contains("plugin type \"../sh\""), "{error}");
}

/// ADD, CHECK and DEL with the real plugins, in a network namespace of its
/// own (the `kvmlet0` bridge and its private address never reach the host's):
/// the test re-runs itself under `unshare --net`.
#[test]
fn add_check_and_del_with_debians_plugins_in_a_private_namespace() {
    let output = Command::new("unshare")
        .args(["--net", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "node::cni::tests::inside_a_private_namespace", "--ignored", "--nocapture"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && text.contains("1 passed"), "{text}");
    let host_bridge = Command::new("ip").args(["link", "show", STANDALONE_BRIDGE]).output().unwrap();
    assert!(!host_bridge.status.success(), "kvmlet0 must not exist in the host's namespace");
}

#[test]
#[ignore = "run by add_check_and_del_with_debians_plugins_in_a_private_namespace inside `unshare --net`"]
fn inside_a_private_namespace() {
    let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap();
    assert!(up.success());
    let ipam = tempfile::tempdir().unwrap();
    let network =
        CniNetwork::new(default_conflist("10.88.0.0/16", ipam.path()), "built-in".into(), DEBIAN_CNI_BIN.into());
    let netns = VmNetns::for_uid(&format!("cni-test-{}", std::process::id()));
    netns.create().unwrap();
    let result = std::panic::catch_unwind(|| {
        let added = network.add("cni-test", &netns.path()).unwrap();
        let address = pod_address(&added).unwrap();
        assert_eq!((address.ip.octets()[..2].to_vec(), address.prefix_len), (vec![10, 88], 16), "{address:?}");
        let eth0 =
            Command::new("ip").args(["-n", netns.name(), "-o", "address", "show", "dev", "eth0"]).output().unwrap();
        let eth0 = String::from_utf8_lossy(&eth0.stdout).to_string();
        assert!(eth0.contains(&format!("inet {}/16", address.ip)), "{eth0}");
        network.check("cni-test", &netns.path(), &added).unwrap();
        let leases = std::fs::read_dir(ipam.path().join("kvmlet")).unwrap().count();
        assert!(leases >= 1, "host-local keeps a lease file");
        network.del("cni-test", &netns.path()).unwrap();
        let lease_files: Vec<_> = std::fs::read_dir(ipam.path().join("kvmlet"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.parse::<Ipv4Addr>().is_ok())
            .collect();
        assert!(lease_files.is_empty(), "DEL frees the IPAM lease: {lease_files:?}");
        // DEL again (cleanup after an agent restart) is not an error.
        network.del("cni-test", &netns.path()).unwrap();
    });
    netns.delete().unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
