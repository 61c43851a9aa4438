//! A VM's pod network, start to end: its namespace, the pod IP from CNI
//! (ADD's result kept in the state directory, 0600, for CHECK and DEL) and
//! the masquerade layout; freed again by `detach`, also after an agent
//! restart (the namespace and the kept result outlive the agent).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::cni::{self, CniError, CniNetwork, PodAddress};
use super::pod_netns::{NetnsError, VmNetns};
use crate::vmi::network::Port;
use crate::vmprocess::state_dir::StateDir;

/// ADD's result, in the VM's state directory.
pub const CNI_RESULT_FILE: &str = "cni-result.json";

#[derive(Debug, thiserror::Error)]
pub enum VmNetworkError {
    #[error("the VM's network namespace")]
    Netns(#[from] NetnsError),
    #[error("the pod network (CNI)")]
    Cni(#[from] CniError),
    #[error("keep the CNI result")]
    Keep(#[source] std::io::Error),
}

/// The VM's network once attached.
#[derive(Debug, Clone)]
pub struct Attached {
    pub netns: PathBuf,
    pub address: PodAddress,
    /// The pod interface's MTU, for the guest's NIC.
    pub mtu: Option<u16>,
}

/// Makes the namespace, runs CNI ADD on it and lays out the masquerade
/// binding; on failure, what was made is freed again.
pub fn attach(cni: &CniNetwork, dir: &StateDir, uid: &str, ports: &[Port]) -> Result<Attached, VmNetworkError> {
    let netns = VmNetns::for_uid(uid);
    let attached = attach_in(cni, dir, uid, &netns, ports);
    if attached.is_err() {
        detach(cni, dir, uid);
    }
    attached
}

fn attach_in(
    cni: &CniNetwork,
    dir: &StateDir,
    uid: &str,
    netns: &VmNetns,
    ports: &[Port],
) -> Result<Attached, VmNetworkError> {
    netns.create()?;
    let result = cni.add(uid, &netns.path())?;
    keep(&dir.path().join(CNI_RESULT_FILE), &result).map_err(VmNetworkError::Keep)?;
    let address = cni::pod_address(&result).ok_or(CniError::NoAddress)?;
    let mtu = pod_mtu(netns);
    netns.set_up_masquerade(ports, mtu.unwrap_or(vmm::net_config::DEFAULT_MTU))?;
    Ok(Attached { netns: netns.path(), address, mtu })
}

/// The pod IP of a VM attached earlier (from the kept ADD result), after
/// CNI CHECK confirms the namespace still is as ADD left it.
pub fn reattach(cni: &CniNetwork, dir: &StateDir, uid: &str) -> Result<Option<PodAddress>, VmNetworkError> {
    let Some(result) = kept(dir) else { return Ok(None) };
    cni.check(uid, &VmNetns::for_uid(uid).path(), &result)?;
    Ok(cni::pod_address(&result))
}

/// The pod IP kept for a VM, without asking the plugins.
pub fn pod_address(dir: &StateDir) -> Option<PodAddress> {
    kept(dir).as_ref().and_then(cni::pod_address)
}

/// CNI DEL and the namespace (with its links and nft table) freed; errors
/// are logged, not returned: cleanup goes on with the rest.
pub fn detach(cni: &CniNetwork, dir: &StateDir, uid: &str) {
    let netns = VmNetns::for_uid(uid);
    if netns.exists() || dir.path().join(CNI_RESULT_FILE).exists() {
        if let Err(e) = cni.del(uid, &netns.path()) {
            tracing::warn!(error = %crate::errors::with_causes(&e), "CNI DEL failed");
        }
    }
    if let Err(e) = netns.delete() {
        tracing::warn!(error = %crate::errors::with_causes(&e), "cannot delete the VM's network namespace");
    }
    let _ = std::fs::remove_file(dir.path().join(CNI_RESULT_FILE));
}

fn kept(dir: &StateDir) -> Option<Value> {
    let text = std::fs::read(dir.path().join(CNI_RESULT_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Written 0600: CNI results can carry more than addresses.
fn keep(path: &Path, result: &Value) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(result.to_string().as_bytes())
}

/// `eth0`'s MTU in the namespace, as CNI set it.
fn pod_mtu(netns: &VmNetns) -> Option<u16> {
    let output =
        Command::new("ip").args(["-n", netns.name(), "-o", "link", "show", "dev", cni::IFNAME]).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}
