use serde_json::json;

use super::*;

fn list(v: Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn interface(interfaces: Value, networks: Value) -> Result<PodInterface, SpecError> {
    pod_interface(&list(interfaces), &list(networks), None).map(|i| i.expect("KubeVirt always attaches one"))
}

fn error(interfaces: Value, networks: Value) -> String {
    interface(interfaces, networks).unwrap_err().to_string()
}

#[test]
fn autoattach_pod_interface_false_leaves_a_vmi_naming_no_network_without_one() {
    assert_eq!(pod_interface(&[], &[], Some(false)).unwrap(), None);
    assert_eq!(pod_interface(&[], &[], Some(true)).unwrap().unwrap().name, "default");
    // Interfaces it names are attached whatever the flag says.
    let named = pod_interface(
        &list(json!([{"name": "default", "masquerade": {}}])),
        &list(json!([{"name": "default", "pod": {}}])),
        Some(false),
    );
    assert_eq!(named.unwrap().unwrap().name, "default");
}

#[test]
fn a_vmi_naming_no_network_gets_kubevirts_default_masquerade_interface() {
    let default = interface(json!([]), json!([])).unwrap();
    assert_eq!(default.name, "default");
    assert_eq!((default.mac, default.ports.len()), (None, 0));
}

#[test]
fn masquerade_on_the_pod_network_is_read_with_mac_ports_and_dhcp_options() {
    let parsed = interface(
        json!([{"name": "default", "masquerade": {}, "model": "virtio", "macAddress": "02:12:34:56:78:9a",
                "ports": [{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}],
                "dhcpOptions": {"bootFileName": "pxe", "ntpServers": ["10.1.1.1"],
                                "privateOptions": [{"option": 240, "value": "extra"}]}}]),
        json!([{"name": "default", "pod": {}}]),
    )
    .unwrap();
    assert_eq!(parsed.mac, Some(MacAddr([0x02, 0x12, 0x34, 0x56, 0x78, 0x9a])));
    assert_eq!(
        parsed.ports,
        [
            Port { name: Some("http".into()), protocol: Protocol::Tcp, port: 80 },
            Port { name: None, protocol: Protocol::Udp, port: 53 }
        ]
    );
    assert_eq!(parsed.dhcp_options.boot_file_name.as_deref(), Some("pxe"));
    assert_eq!(parsed.dhcp_options.ntp_servers, [Ipv4Addr::new(10, 1, 1, 1)]);
    assert_eq!(parsed.dhcp_options.private_options, [PrivateOption { option: 240, value: "extra".into() }]);
}

#[test]
fn what_kvmlet_cannot_bind_is_refused_naming_the_field() {
    let pod = json!([{"name": "default", "pod": {}}]);
    let cases = [
        (
            json!([{"name": "default", "bridge": {}}]),
            pod.clone(),
            "spec.domain.devices.interfaces[0].bridge: the bridge binding",
        ),
        (json!([{"name": "default", "sriov": {}}]), pod.clone(), "interfaces[0].sriov:"),
        (json!([{"name": "default", "passt": {}}]), pod.clone(), "interfaces[0].passt:"),
        (json!([{"name": "default"}]), pod.clone(), "spec.domain.devices.interfaces[0]: an interface needs a binding"),
        (
            json!([{"name": "default", "masquerade": {}, "model": "e1000"}]),
            pod.clone(),
            "interfaces[0].model: Unsupported value",
        ),
        (json!([{"name": "default", "masquerade": {}, "bogus": 1}]), pod.clone(), "interfaces[0].bogus: unknown field"),
        (
            json!([{"name": "default", "masquerade": {}}]),
            json!([{"name": "default", "multus": {"networkName": "x"}}]),
            "spec.networks[0].multus: multus networks are not supported",
        ),
        (json!([{"name": "default", "masquerade": {}}]), json!([]), "interfaces[0].name: \"default\" not found"),
        (json!([]), pod.clone(), "spec.networks[0].name: \"default\" not found"),
        (
            json!([{"name": "default", "masquerade": {}}]),
            json!([{"name": "default", "pod": {"vmNetworkCIDR": "10.1.0.0/24"}}]),
            "spec.networks[0].pod.vmNetworkCIDR: not supported",
        ),
        (
            json!([{"name": "a", "masquerade": {}}, {"name": "a", "masquerade": {}}]),
            json!([{"name": "a", "pod": {}}]),
            "interfaces[1].name: Duplicate value",
        ),
        (
            json!([{"name": "a", "masquerade": {}}]),
            json!([{"name": "a", "pod": {}}, {"name": "a", "pod": {}}]),
            "spec.networks[1].name: Duplicate value",
        ),
    ];
    for (interfaces, networks, expected) in cases {
        let message = error(interfaces, networks);
        assert!(message.contains(expected), "{message} lacks {expected}");
    }
}

#[test]
fn macs_ports_and_dhcp_options_are_checked() {
    let pod = json!([{"name": "default", "pod": {}}]);
    let with = |extra: Value| {
        let mut iface = json!({"name": "default", "masquerade": {}});
        iface.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        error(json!([iface]), pod.clone())
    };
    assert!(with(json!({"macAddress": "02:00:00:00:00:00"})).contains("macAddress: \"02:00:00:00:00:00\" is reserved"));
    assert!(with(json!({"macAddress": "zz"})).contains("macAddress: `zz` is not a MAC address"));
    assert!(with(json!({"macAddress": "01:00:5e:00:00:01"})).contains("multicast"));
    assert!(with(json!({"ports": [{"port": 0}]})).contains("ports[0].port: must be a port number"));
    assert!(with(json!({"ports": [{"port": 70000}]})).contains("ports[0].port:"));
    assert!(with(json!({"ports": [{"port": 80, "protocol": "SCTP"}]})).contains("ports[0].protocol: Unsupported"));
    assert!(with(json!({"dhcpOptions": {"privateOptions": [{"option": 12, "value": "x"}]}}))
        .contains("privateOptions[0].option: must be between 224 and 254"));
    assert!(with(json!({"dhcpOptions": {"ntpServers": ["fd00::1"]}})).contains("ntpServers[0]:"));
    assert!(with(json!({"dhcpOptions": {"bootFileName": "x".repeat(200)}})).contains("bootFileName: longer than"));
}

#[test]
fn the_stable_mac_is_locally_administered_unicast_and_follows_namespace_and_name() {
    let mac = stable_mac("ns", "vm1");
    assert_eq!(mac, stable_mac("ns", "vm1"));
    assert_eq!(mac.0[0], 0x02, "locally administered, unicast");
    assert_ne!(mac, stable_mac("ns", "vm2"));
    assert_ne!(stable_mac("ab", "c"), stable_mac("a", "bc"), "namespace and name are kept apart");
    assert_ne!(mac, BRIDGE_MAC);
    // The derivation is fixed (FNV-1a 64 of "namespace/name"): a MAC must not change when kvmlet is rebuilt.
    assert_eq!(stable_mac("default", "testvmi").to_string(), "02:6e:5f:73:81:2b");
}

#[test]
fn resolv_conf_keeps_ipv4_servers_and_the_last_search_line() {
    let conf = ResolvConf::parse(
        "# comment\nnameserver 10.96.0.10\nnameserver fd00::10\nsearch a.example\nsearch ns.svc.cluster.local svc.cluster.local\noptions ndots:5\n",
    );
    assert_eq!(conf.nameservers, [Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(conf.search, ["ns.svc.cluster.local", "svc.cluster.local"]);
}

#[test]
fn the_systemd_resolved_stub_is_replaced_by_its_upstreams() {
    let etc = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
    let upstream = "nameserver 192.0.2.1\nnameserver 127.0.0.1\nnameserver 192.0.2.2\nsearch corp.example\n";
    let conf = ResolvConf::for_guests(etc, Some(upstream));
    assert_eq!(conf.nameservers, [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)]);
    assert_eq!(conf.search, ["lan"], "the node's own search list stays");
    let no_search = ResolvConf::for_guests("nameserver 127.0.0.53\n", Some(upstream));
    assert_eq!(no_search.search, ["corp.example"]);
    assert!(ResolvConf::for_guests(etc, None).nameservers.is_empty(), "no stub is handed to a guest");
    let plain = ResolvConf::for_guests("nameserver 198.51.100.7\n", Some(upstream));
    assert_eq!(plain.nameservers, [Ipv4Addr::new(198, 51, 100, 7)]);
}

#[test]
fn the_masquerade_lease_is_kubevirts() {
    let resolv = ResolvConf::parse("nameserver 10.96.0.10\nsearch ns.svc.cluster.local svc.cluster.local\n");
    let options = DhcpOptions { tftp_server_name: Some("tftp".into()), ..Default::default() };
    let lease = masquerade_lease(Some("vm1".into()), &resolv, &options);
    assert_eq!(lease.address.to_string(), "10.0.2.2");
    assert_eq!((lease.prefix_len, lease.router.to_string()), (24, "10.0.2.1".to_string()));
    assert_eq!(lease.dns_servers, [Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(lease.search_domains, ["ns.svc.cluster.local", "svc.cluster.local"]);
    assert_eq!(lease.lease_seconds, 999 * 86400);
    assert_eq!(lease.hostname.as_deref(), Some("vm1"));
    assert_eq!(lease.tftp_server_name.as_deref(), Some("tftp"));
}

#[test]
fn status_interfaces_carry_the_pod_ip_as_kubevirt_reports_it() {
    let mac = MacAddr([0x02, 1, 2, 3, 4, 5]);
    let status = interface_status("default", mac, Some(Ipv4Addr::new(10, 88, 0, 7)));
    assert_eq!(
        status,
        json!({"name": "default", "mac": "02:01:02:03:04:05", "ipAddress": "10.88.0.7", "ipAddresses": ["10.88.0.7"],
               "infoSource": "domain", "podInterfaceName": "eth0", "queueCount": 1, "linkState": "up"})
    );
    assert!(interface_status("default", mac, None).get("ipAddress").is_none());
}
