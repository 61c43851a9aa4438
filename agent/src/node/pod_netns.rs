//! A VM's network namespace with KubeVirt's masquerade layout: the pod
//! side `eth0` (made by CNI), a bridge `k6t-eth0` (02:00:00:00:00:00,
//! 10.0.2.1/24, `route_localnet`), `tap0` (vnet_hdr) on the bridge for the
//! VM's NIC, and the nft table that forwards the pod IP's ports to the guest
//! at 10.0.2.2 and masquerades its egress out of `eth0`.
//!
//! The namespace is `ip netns`-style: a bind mount at `/run/netns/kvmlet-<uid>`,
//! so it outlives the agent (a restarted agent finds it) and is freed by
//! `delete`. Links and rules are made with `ip -batch` and `nft -f -`
//! (iproute2 and nftables), started inside the namespace.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::vmi::network::{Port, Protocol, BRIDGE_MAC, GATEWAY_ADDRESS, GUEST_ADDRESS, GUEST_PREFIX_LEN};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// The pod side, the bridge and the VM's tap, as KubeVirt names them.
pub const POD_INTERFACE: &str = "eth0";
pub const BRIDGE: &str = "k6t-eth0";
pub const TAP: &str = "tap0";
/// The nft table kvmlet owns in each VM namespace.
pub const NFT_TABLE: &str = "kvmlet_masquerade";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// One VM's network namespace, named after its VMI's UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNetns {
    name: String,
}

impl VmNetns {
    /// `kvmlet-<uid>`; the UID is a plain name (the state directory checked it).
    pub fn for_uid(uid: &str) -> VmNetns {
        VmNetns { name: format!("kvmlet-{uid}") }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount a process `setns()`es into.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Makes the namespace (kept when it exists: a restarted agent re-attaches).
    pub fn create(&self) -> Result<(), NetnsError> {
        if self.exists() {
            return Ok(());
        }
        run(Command::new("ip").args(["netns", "add", &self.name]), None)
    }

    /// The masquerade layout on top of the pod side `eth0`: `lo` up, bridge,
    /// tap and nft table. `ports` are the forwarded ports (all when empty);
    /// `mtu` is the pod interface's. Idempotent: what exists is kept, the
    /// table is replaced.
    ///
    /// One thread enters the namespace and does it all from there: the links
    /// in one `ip -batch`, the sysctls as file writes, then `nft -f` (both
    /// programs start in the thread's namespace). Each program started costs
    /// a few milliseconds, and they add up to VMI → Running.
    pub fn set_up_masquerade(&self, ports: &[Port], mtu: u16) -> Result<(), NetnsError> {
        let ruleset = masquerade_ruleset(ports);
        self.inside(|| {
            let exists = |link: &str| nix::net::if_::if_nametoindex(link).is_ok();
            let mut batch = String::from("link set lo up\n");
            if !exists(BRIDGE) {
                batch.push_str(&format!("link add {BRIDGE} type bridge\n"));
            }
            batch.push_str(&format!("link set {BRIDGE} address {BRIDGE_MAC} mtu {mtu}\n"));
            batch.push_str(&format!("address replace {GATEWAY_ADDRESS}/{GUEST_PREFIX_LEN} dev {BRIDGE}\n"));
            if !exists(TAP) {
                batch.push_str(&format!("tuntap add dev {TAP} mode tap vnet_hdr\n"));
            }
            batch.push_str(&format!("link set {TAP} master {BRIDGE} mtu {mtu} up\nlink set {BRIDGE} up\n"));
            run(Command::new("ip").args(["-batch", "-"]), Some(&batch))?;
            sysctl("net/ipv4/ip_forward")?;
            sysctl(&format!("net/ipv4/conf/{BRIDGE}/route_localnet"))?;
            run(Command::new("nft").args(["-f", "-"]), Some(&ruleset))
        })
    }

    /// Runs `work` on a thread of its own that entered the namespace (only
    /// that thread: the rest of the agent stays where it is).
    fn inside(&self, work: impl FnOnce() -> Result<(), NetnsError> + Send) -> Result<(), NetnsError> {
        let enter_error = |source| NetnsError::Io { what: format!("enter {}", self.path().display()), source };
        let namespace = std::fs::File::open(self.path()).map_err(enter_error)?;
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| enter_error(std::io::Error::from(e)))?;
                work()
            });
            worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Frees the namespace and everything in it (links, tap, nft table);
    /// nothing to do when it is gone.
    pub fn delete(&self) -> Result<(), NetnsError> {
        if !self.exists() {
            return Ok(());
        }
        run(Command::new("ip").args(["netns", "delete", &self.name]), None)
    }
}

/// Sets a boolean sysctl of the calling thread's network namespace (`/proc/sys/net`
/// shows the namespace of the thread that opens it).
fn sysctl(key: &str) -> Result<(), NetnsError> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, "1").map_err(|source| NetnsError::Io { what: format!("write {path}"), source })
}

/// Runs `command` (feeding it `stdin`), its stderr in the error.
fn run(command: &mut Command, stdin: Option<&str>) -> Result<(), NetnsError> {
    let text = format!("{command:?}").replace('"', "");
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    let spawn_error = |source| NetnsError::Spawn { command: text.clone(), source };
    let mut child = command.spawn().map_err(spawn_error)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Err(NetnsError::Failed { command: text, stderr })
}

/// KubeVirt's masquerade rules, as `nft -f` text for the VM's namespace:
/// what arrives on `eth0` for the listed ports (all when none are listed) is
/// DNATed to the guest; the guest's egress is masqueraded out of `eth0`;
/// local connections to 127.0.0.1 on those ports are DNATed to the guest and
/// SNATed to the gateway so the guest can answer them. The table is replaced
/// whole on every load.
pub fn masquerade_ruleset(ports: &[Port]) -> String {
    let guest = GUEST_ADDRESS;
    let gateway = GATEWAY_ADDRESS;
    let subnet = format!("{}/{GUEST_PREFIX_LEN}", std::net::Ipv4Addr::from(u32::from(guest) & !0xff));
    let matches: Vec<String> = if ports.is_empty() {
        vec![String::new()]
    } else {
        ports
            .iter()
            .map(|p| {
                let protocol = match p.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                };
                format!("{protocol} dport {} ", p.port)
            })
            .collect()
    };
    let mut text = format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n");
    text.push_str("  chain prerouting {\n    type nat hook prerouting priority -100; policy accept;\n");
    for m in &matches {
        text.push_str(&format!("    iifname \"{POD_INTERFACE}\" {m}counter dnat to {guest}\n"));
    }
    text.push_str("  }\n  chain output {\n    type nat hook output priority -100; policy accept;\n");
    for m in &matches {
        text.push_str(&format!("    ip daddr 127.0.0.1 {m}counter dnat to {guest}\n"));
    }
    text.push_str("  }\n  chain postrouting {\n    type nat hook postrouting priority 100; policy accept;\n");
    text.push_str(&format!("    ip saddr {subnet} oifname \"{POD_INTERFACE}\" counter masquerade\n"));
    for m in &matches {
        text.push_str(&format!("    ip saddr 127.0.0.1 oifname \"{BRIDGE}\" {m}counter snat to {gateway}\n"));
    }
    text.push_str("  }\n}\n");
    text
}

#[cfg(test)]
#[path = "pod_netns_tests.rs"]
mod tests;
