use std::process::Command;

use super::*;

fn tcp(port: u16) -> Port {
    Port { name: None, protocol: Protocol::Tcp, port }
}

#[test]
fn without_ports_everything_arriving_on_eth0_goes_to_the_guest() {
    let text = masquerade_ruleset(&[]);
    assert!(text.starts_with("table ip kvmlet_masquerade\ndelete table ip kvmlet_masquerade\n"), "{text}");
    assert!(text.contains("iifname \"eth0\" counter dnat to 10.0.2.2\n"), "{text}");
    assert!(text.contains("ip daddr 127.0.0.1 counter dnat to 10.0.2.2\n"), "{text}");
    assert!(text.contains("ip saddr 10.0.2.0/24 oifname \"eth0\" counter masquerade\n"), "{text}");
    assert!(text.contains("ip saddr 127.0.0.1 oifname \"k6t-eth0\" counter snat to 10.0.2.1\n"), "{text}");
    assert!(text.contains("type nat hook prerouting priority -100;"));
    assert!(text.contains("type nat hook postrouting priority 100;"));
}

#[test]
fn listed_ports_alone_are_forwarded_by_protocol() {
    let text = masquerade_ruleset(&[tcp(80), Port { name: None, protocol: Protocol::Udp, port: 53 }]);
    assert!(text.contains("iifname \"eth0\" tcp dport 80 counter dnat to 10.0.2.2\n"), "{text}");
    assert!(text.contains("iifname \"eth0\" udp dport 53 counter dnat to 10.0.2.2\n"), "{text}");
    assert!(text.contains("ip daddr 127.0.0.1 tcp dport 80 counter dnat to 10.0.2.2\n"), "{text}");
    assert!(text.contains("oifname \"k6t-eth0\" udp dport 53 counter snat to 10.0.2.1\n"), "{text}");
    assert!(!text.contains("iifname \"eth0\" counter dnat"), "no catch-all DNAT when ports are listed: {text}");
    assert_eq!(text.matches("counter masquerade\n").count(), 1, "egress is masqueraded whatever the ports");
}

fn in_netns(netns: &VmNetns, args: &[&str]) -> String {
    let output = Command::new("ip").args(["netns", "exec", netns.name()]).args(args).output().unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Runs as root with iproute2 and nftables (scripts/install-deps); the
/// namespace is this test's own, and 10.0.2.1 exists only inside it.
#[test]
fn the_layout_is_made_idempotently_and_deleting_the_namespace_frees_it() {
    let netns = VmNetns::for_uid(&format!("unit-test-{}", std::process::id()));
    assert!(!netns.exists());
    netns.create().unwrap();
    let result = std::panic::catch_unwind(|| {
        netns.set_up_masquerade(&[tcp(8080)], 1400).unwrap();
        // Again, as on re-attach after an agent restart.
        netns.create().unwrap();
        netns.set_up_masquerade(&[tcp(8080)], 1400).unwrap();
        let lo = in_netns(&netns, &["ip", "-o", "link", "show", "dev", "lo"]);
        assert!(lo.contains(",UP"), "{lo}");
        let links = in_netns(&netns, &["ip", "-o", "link", "show"]);
        assert!(links.contains("k6t-eth0:") && links.contains("tap0:"), "{links}");
        let bridge = in_netns(&netns, &["ip", "-o", "address", "show", "dev", "k6t-eth0"]);
        assert!(bridge.contains("inet 10.0.2.1/24"), "{bridge}");
        assert_eq!(bridge.matches("inet ").count(), 1, "{bridge}");
        let link = in_netns(&netns, &["ip", "-o", "link", "show", "dev", "k6t-eth0"]);
        assert!(link.contains("02:00:00:00:00:00") && link.contains("mtu 1400"), "{link}");
        let tap = in_netns(&netns, &["ip", "-d", "-o", "link", "show", "dev", "tap0"]);
        assert!(tap.contains("master k6t-eth0") && tap.contains("vnet_hdr"), "{tap}");
        let localnet = in_netns(&netns, &["sysctl", "-n", "net.ipv4.conf.k6t-eth0.route_localnet"]);
        assert_eq!(localnet.trim(), "1");
        let table = in_netns(&netns, &["nft", "list", "table", "ip", NFT_TABLE]);
        assert!(table.contains("tcp dport 8080") && table.contains("dnat to 10.0.2.2"), "{table}");
        assert_eq!(table.matches(" masquerade").count(), 1, "the table was replaced, not appended to: {table}");
    });
    netns.delete().unwrap();
    assert!(!netns.exists());
    netns.delete().unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
