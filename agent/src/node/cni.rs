//! The pod IP through CNI: the node's CNI plugins run on a VM's network
//! namespace (ADD on start, CHECK on re-attach, DEL on cleanup) as the CNI
//! spec (1.0) says a runtime runs a network configuration list: each plugin
//! in order, with `name`, `cniVersion` and the previous plugin's result
//! (`prevResult`) added to its config; DEL in reverse order.
//!
//! Standalone nodes have no CNI configuration of their own: they use
//! `default_conflist`, a bridge `kvmlet0` with host-local IPAM on
//! `DEFAULT_POD_CIDR` (Debian's containernetworking-plugins).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// Where the node's CNI configuration and plugins are, by default.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// The pod network of a standalone node (`--pod-cidr` changes it).
pub const DEFAULT_POD_CIDR: &str = "10.88.0.0/16";
/// The bridge of the standalone pod network, in the agent's namespace.
pub const STANDALONE_BRIDGE: &str = "kvmlet0";
/// The interface CNI makes in the VM's namespace.
pub const IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no CNI network configuration (*.conflist, *.conf) in {0}")]
    NoConfig(PathBuf),
    #[error("read CNI configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("run CNI plugin {plugin}")]
    Spawn {
        plugin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command}: {message}")]
    Plugin { plugin: String, command: &'static str, message: String },
    #[error("the CNI result gives eth0 no IPv4 address")]
    NoAddress,
}

/// One network configuration list and where its plugins are.
#[derive(Debug, Clone)]
pub struct CniNetwork {
    conflist: Value,
    source: PathBuf,
    bin_dir: PathBuf,
}

/// The pod IP ADD gave the VM's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddress {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

/// The standalone pod network: bridge `kvmlet0` (the gateway, masquerading
/// egress) with host-local IPAM on `pod_cidr`, leases kept in `ipam_dir`.
pub fn default_conflist(pod_cidr: &str, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "kvmlet",
        "plugins": [{
            "type": "bridge",
            "bridge": STANDALONE_BRIDGE,
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": pod_cidr}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_dir,
            },
        }],
    })
}

impl CniError {
    /// The node has no CNI configuration at all (no directory, or no file in it).
    pub fn is_missing(&self) -> bool {
        match self {
            CniError::NoConfig(_) => true,
            CniError::Read { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

impl CniNetwork {
    pub fn new(conflist: Value, source: PathBuf, bin_dir: PathBuf) -> CniNetwork {
        CniNetwork { conflist, source, bin_dir }
    }

    /// The first configuration in `conf_dir` by file name, as kubelet chooses
    /// (a single `.conf` is read as a list of one plugin).
    pub fn from_dir(conf_dir: &Path, bin_dir: &Path) -> Result<CniNetwork, CniError> {
        let entries =
            std::fs::read_dir(conf_dir).map_err(|source| CniError::Read { path: conf_dir.to_path_buf(), source })?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("conflist" | "conf" | "json")))
            .collect();
        files.sort();
        let path = files.into_iter().next().ok_or_else(|| CniError::NoConfig(conf_dir.to_path_buf()))?;
        let text = std::fs::read_to_string(&path).map_err(|source| CniError::Read { path: path.clone(), source })?;
        let config_error = |message: String| CniError::Config { path: path.clone(), message };
        let mut value: Value = serde_json::from_str(&text).map_err(|e| config_error(e.to_string()))?;
        if value.get("plugins").is_none() {
            let name = value.get("name").cloned().unwrap_or(Value::Null);
            let version = value.get("cniVersion").cloned().unwrap_or(Value::Null);
            value = json!({"name": name, "cniVersion": version, "plugins": [value]});
        }
        Ok(CniNetwork { conflist: value, source: path, bin_dir: bin_dir.to_path_buf() })
    }

    fn plugins(&self) -> Result<Vec<Value>, CniError> {
        let config_error = |message: &str| CniError::Config { path: self.source.clone(), message: message.into() };
        let plugins =
            self.conflist.get("plugins").and_then(Value::as_array).ok_or_else(|| config_error("no plugins"))?;
        let name = self.conflist.get("name").cloned().ok_or_else(|| config_error("no name"))?;
        let version = self.conflist.get("cniVersion").cloned().ok_or_else(|| config_error("no cniVersion"))?;
        plugins
            .iter()
            .map(|plugin| {
                let mut plugin =
                    plugin.as_object().cloned().ok_or_else(|| config_error("a plugin is not an object"))?;
                plugin.get("type").and_then(Value::as_str).ok_or_else(|| config_error("a plugin has no type"))?;
                plugin.insert("name".into(), name.clone());
                plugin.insert("cniVersion".into(), version.clone());
                Ok(Value::Object(plugin))
            })
            .collect()
    }

    /// ADD: the plugins in order on `netns`. The result is kept by the
    /// caller (CHECK needs it, as libcni caches it) and holds the pod IP.
    pub fn add(&self, container_id: &str, netns: &Path) -> Result<Value, CniError> {
        let mut previous: Option<Value> = None;
        for mut plugin in self.plugins()? {
            if let Some(result) = &previous {
                plugin["prevResult"] = result.clone();
            }
            previous = Some(self.exec("ADD", &plugin, container_id, netns)?);
        }
        let result = previous.unwrap_or(Value::Null);
        pod_address(&result).ok_or(CniError::NoAddress)?;
        Ok(result)
    }

    /// CHECK (re-attach): the plugins confirm the namespace is as ADD
    /// (whose result is `added`) left it.
    pub fn check(&self, container_id: &str, netns: &Path, added: &Value) -> Result<(), CniError> {
        for mut plugin in self.plugins()? {
            plugin["prevResult"] = added.clone();
            self.exec("CHECK", &plugin, container_id, netns)?;
        }
        Ok(())
    }

    /// DEL: the plugins in reverse order; a namespace already gone is fine
    /// (the plugins then free only their IPAM lease and host side).
    pub fn del(&self, container_id: &str, netns: &Path) -> Result<(), CniError> {
        for plugin in self.plugins()?.iter().rev() {
            self.exec("DEL", plugin, container_id, netns)?;
        }
        Ok(())
    }

    fn exec(&self, command: &'static str, plugin: &Value, container_id: &str, netns: &Path) -> Result<Value, CniError> {
        let kind = plugin["type"].as_str().unwrap_or_default();
        // A plugin type is a file name in the bin dir, never a path.
        if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
            return Err(CniError::Config { path: self.source.clone(), message: format!("plugin type {kind:?}") });
        }
        let binary = self.bin_dir.join(kind);
        let spawn_error = |source| CniError::Spawn { plugin: binary.clone(), source };
        let mut child = Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", &self.bin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(plugin.to_string().as_bytes()).map_err(spawn_error)?;
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        let result: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if !output.status.success() {
            return Err(CniError::Plugin {
                plugin: kind.into(),
                command,
                message: plugin_error(&result, &output.stderr),
            });
        }
        Ok(result)
    }
}

/// A plugin's error, as the spec's error object says it, else its stderr.
fn plugin_error(result: &Value, stderr: &[u8]) -> String {
    let msg = result.get("msg").and_then(Value::as_str);
    let details = result.get("details").and_then(Value::as_str).filter(|d| !d.is_empty());
    match (msg, details) {
        (Some(msg), Some(details)) => format!("{msg}: {details}"),
        (Some(msg), None) => msg.to_string(),
        _ => String::from_utf8_lossy(stderr).trim().to_string(),
    }
}

/// The first IPv4 address of `eth0` in the namespace (the sandbox interface)
/// in a CNI result; an address on no interface counts too.
pub fn pod_address(result: &Value) -> Option<PodAddress> {
    let interfaces = result.get("interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
    let on_eth0 = |ip: &Value| match ip.get("interface").and_then(Value::as_u64) {
        None => true,
        Some(index) => usize::try_from(index)
            .ok()
            .and_then(|i| interfaces.get(i))
            .is_some_and(|i| i.get("name").and_then(Value::as_str) == Some(IFNAME) && i.get("sandbox").is_some()),
    };
    result.get("ips")?.as_array()?.iter().filter(|ip| on_eth0(ip)).find_map(|ip| {
        let (address, prefix) = ip.get("address")?.as_str()?.split_once('/')?;
        Some(PodAddress { ip: address.parse().ok()?, prefix_len: prefix.parse().ok().filter(|p| *p <= 32)? })
    })
}

#[cfg(test)]
#[path = "cni_tests.rs"]
mod tests;
