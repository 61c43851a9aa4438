//! From a VirtualMachineInstance to the `VmConfig` of its microVM.
//!
//! Pure: files are not touched here. The result says which disk files to
//! make (seed, empty disks, copies of container disks) and `node::disks`
//! makes them. Anything the VMI asks for that kvmlet cannot honour is an
//! error naming the field, never ignored.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use proto::kubevirt::{Disk, VirtualMachineInstance, Volume};
use uuid::Uuid;
use vmm::nocloud::{default_hostname, CloudInitNoCloud, NoCloudSeed};
use vmm::{ConfigError, DiskConfig, VmConfig};

use super::quantity;

/// What the node adds to every VMI: a default kernel for VMIs that name
/// none, and where container images live.
#[derive(Debug, Clone, Default)]
pub struct NodeDefaults {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Each image `REF` is the directory `image_dir/REF` (tag `:latest` when
    /// none), with its raw disk in `disk/` and kernels where `kernelPath` says.
    pub image_dir: PathBuf,
}

/// Secret name → key → bytes, for the `cloudInitNoCloud` secret references.
pub type Secrets = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// A field of the VMI that cannot be run, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), message: message.into() }
}

/// A disk file to make before the VM starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskFile {
    /// A sparse file of this size (emptyDisk, hostDisk `DiskOrCreate`).
    Sparse { path: PathBuf, bytes: u64, keep_existing: bool },
    /// A private copy of a container disk (writes never reach the image).
    Copy { from: PathBuf, to: PathBuf },
    /// The cloud-init NoCloud seed.
    Seed { path: PathBuf, seed: NoCloudSeed },
}

/// The microVM for a VMI: its config and the files it needs.
#[derive(Debug, Clone)]
pub struct VmPlan {
    pub config: VmConfig,
    pub files: Vec<DiskFile>,
    /// The VMI field behind each disk, for naming it in errors.
    disk_fields: Vec<String>,
    kernel_field: &'static str,
}

impl VmPlan {
    /// The VMI field a `VmConfig` validation error is about.
    pub fn spec_error(&self, error: &ConfigError) -> SpecError {
        let field = match error {
            ConfigError::Vcpus(_) => "spec.domain.cpu".to_string(),
            ConfigError::MemoryZero | ConfigError::MemoryTooLarge { .. } => "spec.domain.memory".to_string(),
            ConfigError::KernelUnreadable { .. } | ConfigError::KernelFormat { .. } => self.kernel_field.to_string(),
            ConfigError::InitrdUnreadable { .. } => format!("{}.initrdPath", self.kernel_field),
            ConfigError::Cmdline(_) => "spec.domain.firmware.kernelBoot.kernelArgs".to_string(),
            ConfigError::Serial(_) => "spec.domain.firmware.serial".to_string(),
            ConfigError::ConsoleFile { .. } => "console".to_string(),
            ConfigError::TooManyDisks { .. } => "spec.domain.devices.disks".to_string(),
            ConfigError::TooManyVirtioDevices { .. } | ConfigError::Net(_) => {
                "spec.domain.devices.interfaces".to_string()
            }
            ConfigError::DiskUnreadable { index, .. } | ConfigError::DiskSerial { index, .. } => {
                self.disk_fields.get(*index).cloned().unwrap_or_else(|| "spec.domain.devices.disks".into())
            }
        };
        err(field, error.to_string())
    }
}

/// Names of the Secrets the VMI's cloud-init volumes refer to.
pub fn secret_names(vmi: &VirtualMachineInstance) -> Vec<String> {
    let cloud_inits = vmi.spec.volumes.iter().filter_map(|v| v.cloud_init_no_cloud.as_ref());
    cloud_inits
        .flat_map(|c| [c.secret_ref.as_ref(), c.network_data_secret_ref.as_ref()])
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

/// Translates `vmi`; its disk files go under `disks_dir`.
pub fn translate(
    vmi: &VirtualMachineInstance,
    node: &NodeDefaults,
    secrets: &Secrets,
    disks_dir: &Path,
) -> Result<VmPlan, SpecError> {
    let spec = &vmi.spec;
    let domain = &spec.domain;
    if !spec.networks.is_empty() {
        return Err(err("spec.networks", "networks are not supported by kvmlet yet"));
    }
    if !domain.devices.interfaces.is_empty() {
        return Err(err("spec.domain.devices.interfaces", "network interfaces are not supported by kvmlet yet"));
    }
    if let Some(machine) = &domain.machine {
        if !matches!(machine.type_.as_str(), "" | "microvm") {
            return Err(err(
                "spec.domain.machine.type",
                format!("{:?} is not supported: kvmlet runs microvm machines (leave it empty)", machine.type_),
            ));
        }
    }
    let vcpus = vcpus(vmi)?;
    let memory_mib = memory_mib(vmi)?;
    let firmware = domain.firmware.clone().unwrap_or_default();
    let uuid = match &firmware.uuid {
        Some(uuid) => {
            Some(Uuid::parse_str(uuid).map_err(|e| err("spec.domain.firmware.uuid", format!("{uuid:?}: {e}")))?)
        }
        None => vmi.metadata.uid.as_deref().and_then(|uid| Uuid::parse_str(uid).ok()),
    };
    let (kernel, initrd, kernel_field) = kernel(vmi, node)?;
    let cmdline =
        firmware.kernel_boot.as_ref().and_then(|k| k.kernel_args.clone()).unwrap_or_else(|| node.cmdline.clone());

    let mut config =
        VmConfig { vcpus, memory_mib, initrd, cmdline, uuid, serial: firmware.serial.clone(), ..VmConfig::new(kernel) };
    let mut files = Vec::new();
    let mut disk_fields = Vec::new();
    for (index, volume) in spec.volumes.iter().enumerate() {
        if !domain.devices.disks.iter().any(|d| d.name == volume.name) {
            return Err(err(
                format!("spec.volumes[{index}]"),
                format!("volume {:?} is not used by any disk", volume.name),
            ));
        }
    }
    let mut seen = Vec::new();
    for (index, disk) in domain.devices.disks.iter().enumerate() {
        let field = format!("spec.domain.devices.disks[{index}]");
        if seen.contains(&&disk.name) {
            return Err(err(format!("{field}.name"), format!("disk {:?} is listed twice", disk.name)));
        }
        seen.push(&disk.name);
        let readonly = disk_target(disk, &field)?;
        let (volume_index, volume) = spec
            .volumes
            .iter()
            .enumerate()
            .find(|(_, v)| v.name == disk.name)
            .ok_or_else(|| err(format!("{field}.name"), format!("no volume named {:?}", disk.name)))?;
        let volume_field = format!("spec.volumes[{volume_index}]");
        let (path, readonly) = volume_file(vmi, volume, &volume_field, readonly, node, secrets, disks_dir, &mut files)?;
        config.disks.push(DiskConfig { path, readonly, serial: disk.serial.clone() });
        disk_fields.push(volume_field);
    }
    Ok(VmPlan { config, files, disk_fields, kernel_field })
}

/// vCPUs: cores × sockets × threads, else the CPU request, else 1.
fn vcpus(vmi: &VirtualMachineInstance) -> Result<u8, SpecError> {
    let domain = &vmi.spec.domain;
    let count: u64 = match &domain.cpu {
        Some(cpu) => {
            if let Some(model) = cpu.model.as_deref() {
                if !matches!(model, "" | "host-passthrough" | "host-model") {
                    return Err(err(
                        "spec.domain.cpu.model",
                        format!("{model:?} is not supported (kvmlet passes the host CPU through)"),
                    ));
                }
            }
            [cpu.cores, cpu.sockets, cpu.threads].iter().map(|n| u64::from(n.unwrap_or(1))).product()
        }
        None => match domain.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("cpu")) {
            Some(q) => quantity::cpus(&q.0).map_err(|e| err("spec.domain.resources.requests.cpu", e))?,
            None => 1,
        },
    };
    u8::try_from(count).ok().filter(|n| (1..=vmm::arch::layout::MAX_VCPUS).contains(n)).ok_or_else(|| {
        err("spec.domain.cpu", format!("{count} vCPUs, kvmlet runs 1 to {}", vmm::arch::layout::MAX_VCPUS))
    })
}

/// Guest memory: `domain.memory.guest`, else `resources.requests.memory`.
fn memory_mib(vmi: &VirtualMachineInstance) -> Result<u64, SpecError> {
    let domain = &vmi.spec.domain;
    if let Some(resources) = &domain.resources {
        if resources.limits.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(err("spec.domain.resources.limits", "limits are not enforced by kvmlet yet"));
        }
        for key in resources.requests.iter().flat_map(|r| r.keys()) {
            if key != "memory" && key != "cpu" {
                return Err(err(
                    format!("spec.domain.resources.requests.{key}"),
                    "not supported (only memory and cpu)",
                ));
            }
        }
    }
    let guest = domain.memory.as_ref().and_then(|m| m.guest.as_ref()).map(|q| ("spec.domain.memory.guest", q));
    let request = || {
        let requests = domain.resources.as_ref()?.requests.as_ref()?;
        requests.get("memory").map(|q| ("spec.domain.resources.requests.memory", q))
    };
    let (field, q) = guest.or_else(request).ok_or_else(|| {
        err(
            "spec.domain.resources.requests.memory",
            "the VMI sets no memory (domain.memory.guest or resources.requests.memory)",
        )
    })?;
    let bytes = quantity::bytes(&q.0).map_err(|e| err(field, e))?;
    if bytes == 0 {
        return Err(err(field, "must be more than 0"));
    }
    Ok(bytes.div_ceil(1 << 20))
}

/// The kernel and initrd: from `kernelBoot.container` in the image directory,
/// else the node's default kernel.
fn kernel(
    vmi: &VirtualMachineInstance,
    node: &NodeDefaults,
) -> Result<(PathBuf, Option<PathBuf>, &'static str), SpecError> {
    const FIELD: &str = "spec.domain.firmware.kernelBoot.container";
    let container =
        vmi.spec.domain.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref()).and_then(|k| k.container.as_ref());
    let Some(container) = container else {
        let kernel = node.kernel.clone().ok_or_else(|| {
            err(
                "spec.domain.firmware.kernelBoot",
                "the VMI names no kernel and this node has no default kernel (kvmlet agent --default-kernel)",
            )
        })?;
        return Ok((kernel, node.initrd.clone(), "spec.domain.firmware.kernelBoot"));
    };
    if let Some(policy) = container.image_pull_policy.as_deref() {
        check_pull_policy(policy, &format!("{FIELD}.imagePullPolicy"))?;
    }
    let root = image_root(&node.image_dir, &container.image).map_err(|e| err(format!("{FIELD}.image"), e))?;
    let in_image = |path: &Option<String>, name: &str| -> Result<Option<PathBuf>, SpecError> {
        path.as_deref().map(|p| inside(&root, p).map_err(|e| err(format!("{FIELD}.{name}"), e))).transpose()
    };
    let kernel = in_image(&container.kernel_path, "kernelPath")?
        .ok_or_else(|| err(format!("{FIELD}.kernelPath"), "required: kvmlet boots the kernel directly"))?;
    let initrd = in_image(&container.initrd_path, "initrdPath")?;
    Ok((kernel, initrd, "spec.domain.firmware.kernelBoot.container.kernelPath"))
}

fn disk_target(disk: &Disk, field: &str) -> Result<bool, SpecError> {
    if disk.cdrom.is_some() {
        return Err(err(format!("{field}.cdrom"), "cdrom disks are not supported (use disk with bus virtio)"));
    }
    if disk.boot_order.is_some() {
        return Err(err(format!("{field}.bootOrder"), "not supported: kvmlet boots the kernel directly"));
    }
    let target = disk.disk.clone().unwrap_or_default();
    if let Some(bus) = target.bus.as_deref() {
        if bus != "virtio" {
            return Err(err(format!("{field}.disk.bus"), format!("{bus:?} is not supported (only virtio)")));
        }
    }
    Ok(target.read_only.unwrap_or(false))
}

/// The file behind one volume, and whether it must be read-only.
#[allow(clippy::too_many_arguments)]
fn volume_file(
    vmi: &VirtualMachineInstance,
    volume: &Volume,
    field: &str,
    readonly: bool,
    node: &NodeDefaults,
    secrets: &Secrets,
    disks_dir: &Path,
    files: &mut Vec<DiskFile>,
) -> Result<(PathBuf, bool), SpecError> {
    let sources = [
        volume.container_disk.is_some(),
        volume.cloud_init_no_cloud.is_some(),
        volume.host_disk.is_some(),
        volume.empty_disk.is_some(),
    ];
    match sources.iter().filter(|s| **s).count() {
        1 => {}
        0 => {
            return Err(err(
                field,
                "no volume source kvmlet supports (containerDisk, hostDisk, emptyDisk, cloudInitNoCloud)",
            ))
        }
        _ => return Err(err(field, "more than one volume source is set")),
    }
    let own = disks_dir.join(format!("{}.img", volume.name));
    if let Some(container) = &volume.container_disk {
        if let Some(policy) = container.image_pull_policy.as_deref() {
            check_pull_policy(policy, &format!("{field}.containerDisk.imagePullPolicy"))?;
        }
        let image = &container.image;
        let root = image_root(&node.image_dir, image).map_err(|e| err(format!("{field}.containerDisk.image"), e))?;
        let from = match &container.path {
            Some(path) => inside(&root, path).map_err(|e| err(format!("{field}.containerDisk.path"), e))?,
            None => only_disk_file(&root.join("disk")).map_err(|e| err(format!("{field}.containerDisk.image"), e))?,
        };
        files.push(DiskFile::Copy { from, to: own.clone() });
        return Ok((own, readonly));
    }
    if let Some(empty) = &volume.empty_disk {
        let bytes = quantity::bytes(&empty.capacity.0).map_err(|e| err(format!("{field}.emptyDisk.capacity"), e))?;
        files.push(DiskFile::Sparse { path: own.clone(), bytes: round_up_to_sector(bytes), keep_existing: false });
        return Ok((own, readonly));
    }
    if let Some(host) = &volume.host_disk {
        let path = PathBuf::from(&host.path);
        if !path.is_absolute() {
            return Err(err(format!("{field}.hostDisk.path"), format!("{:?} is not an absolute path", host.path)));
        }
        match host.type_.as_str() {
            "Disk" => {
                if !path.exists() {
                    return Err(err(format!("{field}.hostDisk.path"), format!("{} does not exist", host.path)));
                }
            }
            "DiskOrCreate" => {
                let capacity = host
                    .capacity
                    .as_ref()
                    .ok_or_else(|| err(format!("{field}.hostDisk.capacity"), "required with type DiskOrCreate"))?;
                let bytes = quantity::bytes(&capacity.0).map_err(|e| err(format!("{field}.hostDisk.capacity"), e))?;
                files.push(DiskFile::Sparse {
                    path: path.clone(),
                    bytes: round_up_to_sector(bytes),
                    keep_existing: true,
                });
            }
            other => {
                return Err(err(
                    format!("{field}.hostDisk.type"),
                    format!("{other:?} is not a hostDisk type (Disk or DiskOrCreate)"),
                ))
            }
        }
        return Ok((path, readonly));
    }
    let cloud_init = volume.cloud_init_no_cloud.as_ref().expect("one source is set");
    let secret = |reference: &Option<proto::kubevirt::LocalObjectReference>, keys: [&str; 2], name: &str| {
        let Some(reference) = reference else { return Ok(None) };
        let data = secrets.get(&reference.name).ok_or_else(|| {
            err(format!("{field}.cloudInitNoCloud.{name}"), format!("secret {:?} not found", reference.name))
        })?;
        keys.iter().find_map(|k| data.get(*k)).cloned().map(Some).ok_or_else(|| {
            err(
                format!("{field}.cloudInitNoCloud.{name}"),
                format!("secret {:?} has no key {} or {}", reference.name, keys[0], keys[1]),
            )
        })
    };
    let source = CloudInitNoCloud {
        user_data: cloud_init.user_data.clone(),
        user_data_base64: cloud_init.user_data_base64.clone(),
        user_data_secret: secret(&cloud_init.secret_ref, ["userdata", "userData"], "secretRef")?,
        network_data: cloud_init.network_data.clone(),
        network_data_base64: cloud_init.network_data_base64.clone(),
        network_data_secret: secret(
            &cloud_init.network_data_secret_ref,
            ["networkdata", "networkData"],
            "networkDataSecretRef",
        )?,
    };
    let (user_data, network_data) = source.resolve().map_err(|e| err(field, e.to_string()))?;
    let name = vmi.metadata.name.as_deref().unwrap_or_default();
    let instance_id = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.uuid.clone())
        .or_else(|| vmi.metadata.uid.clone())
        .unwrap_or_else(|| name.to_string());
    let hostname = default_hostname(name, vmi.spec.hostname.as_deref());
    let seed = NoCloudSeed::new(&instance_id, Some(&hostname), user_data, network_data);
    files.push(DiskFile::Seed { path: own.clone(), seed });
    Ok((own, true))
}

/// Images are node-local: a policy that asks for a pull is refused by name.
fn check_pull_policy(policy: &str, field: &str) -> Result<(), SpecError> {
    match policy {
        "IfNotPresent" | "Never" => Ok(()),
        other => Err(err(field, format!("{other:?}: kvmlet does not pull images yet (use IfNotPresent or Never)"))),
    }
}

fn round_up_to_sector(bytes: u64) -> u64 {
    bytes.div_ceil(512) * 512
}

/// `image_dir/REF`, with `:latest` added to a reference without tag or digest.
pub fn image_root(image_dir: &Path, image: &str) -> Result<PathBuf, String> {
    let last = image.rsplit('/').next().unwrap_or(image);
    let reference =
        if last.contains(':') || last.contains('@') { image.to_string() } else { format!("{image}:latest") };
    let relative = Path::new(&reference);
    let plain = relative.components().all(|c| matches!(c, Component::Normal(_)));
    if image.is_empty() || !plain {
        return Err(format!("{image:?} is not an image reference"));
    }
    let root = image_dir.join(relative);
    if !root.is_dir() {
        return Err(format!("image {image:?} is not on this node (no directory {})", root.display()));
    }
    Ok(root)
}

/// `path` (absolute within the image, as KubeVirt writes it) under `root`.
fn inside(root: &Path, path: &str) -> Result<PathBuf, String> {
    let relative = Path::new(path.trim_start_matches('/'));
    if path.is_empty() || !relative.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("{path:?} is not a path inside the image"));
    }
    Ok(root.join(relative))
}

/// A container disk's one file in `disk/`.
fn only_disk_file(dir: &Path) -> Result<PathBuf, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    match files.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("{} holds no disk image", dir.display())),
        _ => Err(format!("{} holds {} files; set containerDisk.path", dir.display(), files.len())),
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
