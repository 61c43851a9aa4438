//! `kvmlet run --net` in a network namespace of the test's own, laid out as
//! KubeVirt's masquerade binding lays out a virt-launcher pod: a bridge
//! `k6t-eth0` (02:00:00:00:00:00, 10.0.2.1/24) with the VM's tap on it. The
//! probe guest gets its lease from the VMM's DHCP responder, ARPs the bridge,
//! sends a UDP datagram to a listener in the namespace and answers a TCP
//! connection from it. Private addresses exist only inside that namespace.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{kvmlet_bin, output_within, probe, probe_lines, probe_value, require_tool};

const VM_TIMEOUT: Duration = Duration::from_secs(240);
const HARNESS_TIMEOUT: Duration = Duration::from_secs(240);
const UDP_PORT: u16 = 5555;
const TCP_PORT: u16 = 8080;
const GUEST_MAC: &str = "02:6b:76:00:00:01";

/// A named network namespace (and its resolv.conf under /etc/netns), removed
/// when dropped, also when the test fails.
struct Netns {
    name: String,
    etc: PathBuf,
}

impl Netns {
    fn create() -> Netns {
        let name = format!("kvmlet-test-{}", std::process::id());
        let etc = PathBuf::from("/etc/netns").join(&name);
        let ns = Netns { name, etc };
        let status = Command::new("ip").args(["netns", "add", &ns.name]).status().expect("run ip");
        assert!(status.success(), "ip netns add {}", ns.name);
        ns
    }

    /// `ip ARGS` inside the namespace; must succeed.
    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip").args(["-n", &self.name]).args(args).status().expect("run ip");
        assert!(status.success(), "ip -n {} {}", self.name, args.join(" "));
    }

    /// A command run inside the namespace (`ip netns exec`, which also
    /// bind-mounts this namespace's resolv.conf over /etc/resolv.conf).
    fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// Listens for the probe's datagram, then connects to its TCP port until it
/// answers (both bounded) and prints what it got. Writes `ready` to the file
/// given as its argument once the UDP socket is bound.
const HARNESS: &str = r#"
import socket, sys, time
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("10.0.2.1", int(sys.argv[2])))
udp.settimeout(200)
open(sys.argv[1], "w").write("ready")
data, peer = udp.recvfrom(2048)
print("udp from=%s data=%s" % (peer[0], data.decode().strip()), flush=True)
deadline = time.time() + 200
while True:
    try:
        tcp = socket.create_connection(("10.0.2.2", int(sys.argv[3])), timeout=5)
        break
    except OSError as e:
        if time.time() > deadline:
            print("tcp error=%s" % e, flush=True)
            sys.exit(1)
        time.sleep(0.2)
tcp.settimeout(30)
banner = b""
while not banner.endswith(b"\n"):
    chunk = tcp.recv(256)
    if not chunk:
        break
    banner += chunk
print("tcp banner=%s" % banner.decode().strip(), flush=True)
"#;

#[test]
fn the_probe_gets_kubevirts_masquerade_lease_and_talks_udp_and_tcp() {
    require_tool("ip", "iproute2");
    require_tool("python3", "python3");
    let ns = Netns::create();
    std::fs::create_dir_all(&ns.etc).unwrap();
    std::fs::write(
        ns.etc.join("resolv.conf"),
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\n",
    )
    .unwrap();
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["link", "add", "k6t-eth0", "address", "02:00:00:00:00:00", "type", "bridge"]);
    ns.ip(&["addr", "add", "10.0.2.1/24", "dev", "k6t-eth0"]);
    ns.ip(&["link", "set", "k6t-eth0", "up"]);
    ns.ip(&["tuntap", "add", "tap0", "mode", "tap", "vnet_hdr"]);
    ns.ip(&["link", "set", "tap0", "master", "k6t-eth0"]);
    ns.ip(&["link", "set", "tap0", "up"]);

    let ready = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    std::fs::remove_file(&ready).unwrap();
    let mut harness = ns.exec("python3");
    harness.args(["-c", HARNESS, ready.to_str().unwrap(), &UDP_PORT.to_string(), &TCP_PORT.to_string()]);
    let harness = std::thread::spawn(move || output_within(&mut harness, HARNESS_TIMEOUT));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline && !harness.is_finished(), "the harness never bound its UDP socket");
        std::thread::sleep(Duration::from_millis(20));
    }

    let cmdline = format!("probe.action=poweroff probe.net_udp=10.0.2.1:{UDP_PORT} probe.net_tcp={TCP_PORT}");
    let net = format!("tap=tap0,mac={GUEST_MAC},mtu=1400,hostname=probe-vm");
    let mut vm = ns.exec(kvmlet_bin().to_str().unwrap());
    vm.arg("run").arg("--kernel").arg(&probe().bzimage).args(["--cmdline", &cmdline, "--net", &net]);
    let (finished, stdout, stderr) = output_within(&mut vm, VM_TIMEOUT);
    let (harness_finished, harness_out, harness_err) = harness.join().unwrap();
    let context = format!("VM stdout:\n{stdout}\nVM stderr:\n{stderr}\nharness:\n{harness_out}{harness_err}");
    assert!(finished, "the VM did not power off\n{context}");
    assert!(probe_lines(&stdout).iter().all(|l| !l.starts_with("error")), "{context}");

    let net_line = probe_lines(&stdout).into_iter().find(|l| l.starts_with("net mac="));
    assert_eq!(net_line, Some(format!("net mac={GUEST_MAC} mtu=1400 link=up").as_str()), "{context}");
    let lease = |key| probe_value(&stdout, "net lease", key);
    assert_eq!(lease("ip"), Some("10.0.2.2/24"), "{context}");
    assert_eq!(lease("router"), Some("10.0.2.1"), "{context}");
    assert_eq!(lease("dns"), Some("10.96.0.10"), "{context}");
    assert_eq!(lease("hostname"), Some("probe-vm"), "{context}");
    assert_eq!(lease("mtu"), Some("1400"), "{context}");
    assert_eq!(lease("search"), Some("default.svc.cluster.local,svc.cluster.local"), "{context}");
    assert_eq!(probe_value(&stdout, "net arp", "mac"), Some("02:00:00:00:00:00"), "the bridge answered ARP\n{context}");
    assert_eq!(probe_value(&stdout, "net udp", "sent"), Some("ok"), "{context}");

    assert!(harness_finished, "{context}");
    assert!(harness_out.contains("udp from=10.0.2.2 data=probe-udp probe-vm"), "{context}");
    assert!(harness_out.contains("tcp banner=probe-banner probe-vm"), "{context}");
    assert_eq!(probe_value(&stdout, "net tcp", "served"), Some("1"), "{context}");
}
