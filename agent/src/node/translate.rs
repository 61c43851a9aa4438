//! From a VirtualMachineInstance to the `VmConfig` of its microVM.
//!
//! Pure but for reading the node's image directory and host disk roots:
//! files are not made here. The result says which disk files to make (seed,
//! empty disks, qcow2 overlays over container disks) and `node::disks` makes them.
//! The spec is first checked by `vmi::validate` (the checks admission also
//! runs); then what only this node knows: its kernel, images, Secrets and
//! host disk roots. Files kvmlet makes for a VMI get names kvmlet chooses
//! (`disk-<index>.img`, `disk-<index>.qcow2`, `cidata.iso`), never a name
//! from the manifest.
//! A VMI without `firmware.kernelBoot` boots its disk's own kernel: the plan
//! names the disk (`VmPlan::boot_disk`) and `node::boot_disk` reads it once
//! the disk file exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proto::kubevirt::{VirtualMachineInstance, Volume};
use uuid::Uuid;
use vmm::nocloud::NoCloudSeed;
use vmm::{ConfigError, DiskConfig, NetConfig, TapSource, VmConfig};

use crate::vmi::cloud_init::{self, CloudInitNoCloud};
use crate::vmi::host_disk::HostDiskPolicy;
use crate::vmi::network::{self, PodInterface, ResolvConf};
pub use crate::vmi::SpecError;
use crate::vmi::{resources, validate};

/// What the node adds to every VMI: a default kernel for VMIs that name
/// none, where container images live, and where hostDisks may be.
#[derive(Debug, Clone, Default)]
pub struct NodeDefaults {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Each image `REF` is the directory `image_dir/REF` (tag `:latest` when
    /// none), with its raw disk in `disk/` and kernels where `kernelPath` says.
    pub image_dir: PathBuf,
    /// The `HostDisk` feature gate and its roots.
    pub host_disks: HostDiskPolicy,
    /// The network each VM's NIC is attached to; none: VMs that name no
    /// network run without a NIC and VMs that name one fail.
    pub pod_network: Option<PodNetwork>,
}

/// What the node gives each VM's pod interface: the tap the NIC is on (in
/// the VM's network namespace), the pod interface's MTU and the DNS its guest is told.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    pub tap: TapSource,
    pub mtu: u16,
    pub resolv: ResolvConf,
}

/// Secret name → key → bytes, for the `cloudInitNoCloud` secret references.
pub type Secrets = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// The seed's file name in the disks directory.
pub const SEED_FILE: &str = "cidata.iso";

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::new(field, message)
}

/// A disk file to make before the VM starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskFile {
    /// A new sparse file of this size in the VM's state directory (emptyDisk).
    Sparse { path: PathBuf, bytes: u64 },
    /// A hostDisk `DiskOrCreate`: a sparse file made only if none exists,
    /// in a directory that exists (its path was checked against the roots).
    HostDisk { path: PathBuf, bytes: u64 },
    /// A container disk's own qcow2 overlay over the image's (shared,
    /// read-only) disk file: the VM's writes land in the overlay only.
    Overlay { base: PathBuf, path: PathBuf },
    /// The cloud-init NoCloud seed.
    Seed { path: PathBuf, seed: NoCloudSeed },
}

/// The microVM for a VMI: its config and the files it needs.
#[derive(Debug, Clone)]
pub struct VmPlan {
    pub config: VmConfig,
    pub files: Vec<DiskFile>,
    /// The pod interface behind `config.nets[0]`, when the VM has a NIC.
    pub interface: Option<PodInterface>,
    /// The disk whose own kernel boots (no `kernelBoot`); until
    /// `node::boot_disk::prepare` ran, `config.kernel` is empty.
    pub boot_disk: Option<BootDisk>,
    /// The VMI field behind each disk, for naming it in errors.
    disk_fields: Vec<String>,
    kernel_field: String,
}

/// The disk a VMI without `kernelBoot` boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDisk {
    /// Its index in `spec.domain.devices.disks` and `config.disks`.
    pub index: usize,
    pub name: String,
    /// `spec.domain.devices.disks[i]`.
    pub field: String,
}

impl VmPlan {
    /// The VMI field a `VmConfig` validation error is about.
    pub fn spec_error(&self, error: &ConfigError) -> SpecError {
        let field = match error {
            ConfigError::Vcpus(_) => "spec.domain.cpu".to_string(),
            ConfigError::MemoryZero | ConfigError::MemoryTooLarge { .. } => "spec.domain.memory".to_string(),
            ConfigError::KernelUnreadable { .. } | ConfigError::KernelFormat { .. } => self.kernel_field.clone(),
            ConfigError::InitrdUnreadable { .. } if self.boot_disk.is_some() => self.kernel_field.clone(),
            ConfigError::InitrdUnreadable { .. } => format!("{}.initrdPath", self.kernel_field),
            ConfigError::Cmdline(_) => "spec.domain.firmware.kernelBoot.kernelArgs".to_string(),
            ConfigError::Serial(_) => "spec.domain.firmware.serial".to_string(),
            ConfigError::ConsoleFile { .. } => "console".to_string(),
            ConfigError::TooManyDisks { .. } => "spec.domain.devices.disks".to_string(),
            ConfigError::TooManyVirtioDevices { .. } | ConfigError::Net(_) => {
                "spec.domain.devices.interfaces".to_string()
            }
            ConfigError::DiskUnreadable { index, .. }
            | ConfigError::DiskImage { index, .. }
            | ConfigError::DiskSerial { index, .. } => {
                self.disk_fields.get(*index).cloned().unwrap_or_else(|| "spec.domain.devices.disks".into())
            }
        };
        err(field, crate::errors::with_causes(error))
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
    validate::spec(spec)?;
    let request = resources::request(spec)?;
    let vcpus = u8::try_from(request.vcpus).map_err(|_| err("spec.domain.cpu", "too many vCPUs"))?;
    let firmware = spec.domain.firmware.clone().unwrap_or_default();
    // The firmware UUID: the spec's, else the VMI's UID (a VMI always has
    // one from the API server), else a new one. cloud-init's instance-id follows it.
    let uuid = match &firmware.uuid {
        Some(uuid) => Uuid::parse_str(uuid).map_err(|e| err("spec.domain.firmware.uuid", format!("{uuid:?}: {e}")))?,
        None => vmi.metadata.uid.as_deref().and_then(|uid| Uuid::parse_str(uid).ok()).unwrap_or_else(Uuid::new_v4),
    };
    let boot_disk = match &firmware.kernel_boot {
        None => boot_disk_index(vmi).map(|index| BootDisk {
            index,
            name: spec.domain.devices.disks[index].name.clone(),
            field: format!("spec.domain.devices.disks[{index}]"),
        }),
        Some(_) => None,
    };
    let (kernel, initrd, kernel_field) = match &boot_disk {
        Some(disk) => (PathBuf::new(), None, disk.field.clone()),
        None => kernel(vmi, node)?,
    };
    let cmdline =
        firmware.kernel_boot.as_ref().and_then(|k| k.kernel_args.clone()).unwrap_or_else(|| node.cmdline.clone());

    let mut config = VmConfig {
        vcpus,
        memory_mib: request.memory_mib,
        initrd,
        cmdline,
        uuid: Some(uuid),
        serial: firmware.serial.clone(),
        ..VmConfig::new(kernel)
    };
    let mut files = Vec::new();
    let mut disk_fields = Vec::new();
    for (index, disk) in spec.domain.devices.disks.iter().enumerate() {
        let field = format!("spec.domain.devices.disks[{index}]");
        let readonly = validate::disk_target(disk, &field)?;
        let (volume_index, volume) = spec
            .volumes
            .iter()
            .enumerate()
            .find(|(_, v)| v.name == disk.name)
            .ok_or_else(|| err(format!("{field}.name"), format!("no volume named {:?}", disk.name)))?;
        let volume_field = format!("spec.volumes[{volume_index}]");
        let source = VolumeContext { vmi, uuid: &uuid, node, secrets, disks_dir, index };
        let VolumeDisk { path, readonly, backing, file } = volume_file(&source, volume, &volume_field, readonly)?;
        files.extend(file);
        let serial = match volume.cloud_init_no_cloud {
            Some(_) => Some(disk.serial.clone().unwrap_or_else(|| cloud_init::SEED_SERIAL.to_string())),
            None => disk.serial.clone(),
        };
        config.disks.push(DiskConfig { path, readonly, serial, backing });
        disk_fields.push(volume_field);
    }
    let interface = nic(vmi, node.pod_network.as_ref())?;
    if let Some((interface, net)) = &interface {
        config.nets.push(net.clone());
        tracing::debug!(interface = interface.name, mac = %net.mac, "pod interface");
    }
    let interface = interface.map(|(interface, _)| interface);
    Ok(VmPlan { config, files, interface, boot_disk, disk_fields, kernel_field })
}

/// The disk a VMI without `kernelBoot` boots: the lowest `bootOrder` (1 in
/// KubeVirt's terms), else the first disk that is not the cloud-init seed
/// (kvmlet writes that one; it holds no kernel). None: no disk to boot.
fn boot_disk_index(vmi: &VirtualMachineInstance) -> Option<usize> {
    let disks = &vmi.spec.domain.devices.disks;
    let ordered = disks.iter().enumerate().filter_map(|(i, d)| Some((d.boot_order?, i))).min();
    if let Some((_, index)) = ordered {
        return Some(index);
    }
    let seed = |name: &str| vmi.spec.volumes.iter().any(|v| v.name == name && v.cloud_init_no_cloud.is_some());
    disks.iter().position(|d| !seed(&d.name))
}

/// The VMI's pod interface and its NIC on the node's pod network: MAC from
/// the spec or derived from namespace/name, KubeVirt's masquerade lease.
fn nic(vmi: &VirtualMachineInstance, pod: Option<&PodNetwork>) -> Result<Option<(PodInterface, NetConfig)>, SpecError> {
    let spec = &vmi.spec;
    let devices = &spec.domain.devices;
    let Some(interface) =
        network::pod_interface(&devices.interfaces, &spec.networks, devices.autoattach_pod_interface)?
    else {
        return Ok(None);
    };
    let Some(pod) = pod else {
        if spec.domain.devices.interfaces.is_empty() && spec.networks.is_empty() {
            return Ok(None);
        }
        return Err(err(
            "spec.domain.devices.interfaces[0]",
            "this node runs VMs without a pod network, so no interface can be attached",
        ));
    };
    let name = vmi.metadata.name.as_deref().unwrap_or_default();
    let namespace = vmi.metadata.namespace.as_deref().unwrap_or("default");
    let mac = interface.mac.unwrap_or_else(|| network::stable_mac(namespace, name));
    let hostname = cloud_init::local_hostname(name, spec.hostname.as_deref());
    let lease = network::masquerade_lease(Some(hostname), &pod.resolv, &interface.dhcp_options);
    let net = NetConfig { tap: pod.tap.clone(), mac, mtu: pod.mtu, dhcp: Some(lease) };
    Ok(Some((interface, net)))
}

/// The kernel and initrd: from `kernelBoot.container` in the image directory,
/// else the node's default kernel.
fn kernel(vmi: &VirtualMachineInstance, node: &NodeDefaults) -> Result<(PathBuf, Option<PathBuf>, String), SpecError> {
    const FIELD: &str = "spec.domain.firmware.kernelBoot.container";
    let container =
        vmi.spec.domain.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref()).and_then(|k| k.container.as_ref());
    let Some(container) = container else {
        let kernel = node.kernel.clone().ok_or_else(|| {
            err(
                "spec.domain.firmware.kernelBoot",
                "the VMI names no kernel, has no disk to boot and this node has no default kernel \
                 (kvmlet agent --default-kernel)",
            )
        })?;
        return Ok((kernel, node.initrd.clone(), "spec.domain.firmware.kernelBoot".into()));
    };
    let root = image_root(&node.image_dir, &container.image).map_err(|e| err(format!("{FIELD}.image"), e))?;
    let in_image = |path: &Option<String>, name: &str| -> Result<Option<PathBuf>, SpecError> {
        path.as_deref().map(|p| inside(&root, p).map_err(|e| err(format!("{FIELD}.{name}"), e))).transpose()
    };
    let kernel = in_image(&container.kernel_path, "kernelPath")?
        .ok_or_else(|| err(format!("{FIELD}.kernelPath"), "required: kvmlet boots the kernel directly"))?;
    let initrd = in_image(&container.initrd_path, "initrdPath")?;
    Ok((kernel, initrd, "spec.domain.firmware.kernelBoot.container.kernelPath".into()))
}

/// What a volume's file may depend on.
struct VolumeContext<'a> {
    vmi: &'a VirtualMachineInstance,
    uuid: &'a Uuid,
    node: &'a NodeDefaults,
    secrets: &'a Secrets,
    disks_dir: &'a Path,
    /// The disk's index, for the names of the files kvmlet makes for it.
    index: usize,
}

/// The disk behind one volume: its file, whether it must be read-only, its
/// backing file, and the file to make for it.
struct VolumeDisk {
    path: PathBuf,
    readonly: bool,
    backing: Vec<PathBuf>,
    file: Option<DiskFile>,
}

impl VolumeDisk {
    fn new(path: PathBuf, readonly: bool, file: Option<DiskFile>) -> VolumeDisk {
        VolumeDisk { path, readonly, backing: Vec::new(), file }
    }
}

/// The disk behind one volume.
fn volume_file(cx: &VolumeContext, volume: &Volume, field: &str, readonly: bool) -> Result<VolumeDisk, SpecError> {
    let own = |extension: &str| cx.disks_dir.join(format!("disk-{}.{extension}", cx.index));
    if let Some(container) = &volume.container_disk {
        let image = &container.image;
        let root = image_root(&cx.node.image_dir, image).map_err(|e| err(format!("{field}.containerDisk.image"), e))?;
        let from = match &container.path {
            Some(path) => inside(&root, path).map_err(|e| err(format!("{field}.containerDisk.path"), e))?,
            None => only_disk_file(&root.join("disk")).map_err(|e| err(format!("{field}.containerDisk.image"), e))?,
        };
        // The image's file is the overlay's base, opened read-only and shared.
        let path = own("qcow2");
        let file = DiskFile::Overlay { base: from.clone(), path: path.clone() };
        return Ok(VolumeDisk { backing: vec![from], ..VolumeDisk::new(path, readonly, Some(file)) });
    }
    if let Some(empty) = &volume.empty_disk {
        let bytes = validate::disk_bytes(&empty.capacity.0, &format!("{field}.emptyDisk.capacity"))?;
        let path = own("img");
        return Ok(VolumeDisk::new(path.clone(), readonly, Some(DiskFile::Sparse { path, bytes })));
    }
    if let Some(host) = &volume.host_disk {
        let create = host.type_ == "DiskOrCreate";
        let path = cx.node.host_disks.allow(&host.path, create, &format!("{field}.hostDisk"))?;
        let file = match (&host.capacity, create) {
            (Some(capacity), true) => {
                let bytes = validate::disk_bytes(&capacity.0, &format!("{field}.hostDisk.capacity"))?;
                Some(DiskFile::HostDisk { path: path.clone(), bytes })
            }
            _ => None,
        };
        return Ok(VolumeDisk::new(path, readonly, file));
    }
    let cloud_init = volume.cloud_init_no_cloud.as_ref().ok_or_else(|| err(field, "no volume source"))?;
    let secret = |reference: &Option<proto::kubevirt::LocalObjectReference>, keys: [&str; 2], name: &str| {
        let Some(reference) = reference else { return Ok(None) };
        let data = cx.secrets.get(&reference.name).ok_or_else(|| {
            err(format!("{field}.cloudInitNoCloud.{name}"), format!("secret {:?} not found", reference.name))
        })?;
        keys.iter().find_map(|k| data.get(*k)).cloned().map(Some).ok_or_else(|| {
            err(
                format!("{field}.cloudInitNoCloud.{name}"),
                format!("secret {:?} has no key {} or {}", reference.name, keys[0], keys[1]),
            )
        })
    };
    let source = CloudInitNoCloud::new(
        cloud_init,
        secret(&cloud_init.secret_ref, cloud_init::USER_DATA_KEYS, "secretRef")?,
        secret(&cloud_init.network_data_secret_ref, cloud_init::NETWORK_DATA_KEYS, "networkDataSecretRef")?,
    );
    let (user_data, network_data) = source.resolve().map_err(|e| err(field, crate::errors::with_causes(&e)))?;
    let name = cx.vmi.metadata.name.as_deref().unwrap_or_default();
    let hostname = cloud_init::local_hostname(name, cx.vmi.spec.hostname.as_deref());
    let seed: NoCloudSeed =
        cloud_init::seed(&cloud_init::instance_id(cx.uuid), Some(&hostname), user_data, network_data);
    let path = cx.disks_dir.join(SEED_FILE);
    Ok(VolumeDisk::new(path.clone(), true, Some(DiskFile::Seed { path, seed })))
}

/// `image_dir/REF`, with `:latest` added to a reference without tag or digest;
/// else the tree of the image pulled into the node's store (`crate::images`).
pub fn image_root(image_dir: &Path, image: &str) -> Result<PathBuf, String> {
    let root = image_dir.join(validate::image_reference(image)?);
    if root.is_dir() {
        return Ok(root);
    }
    crate::images::store::pulled_tree(image_dir, image)
        .ok_or_else(|| format!("image {image:?} is not on this node (no directory {})", root.display()))
}

/// `path` (absolute within the image, as KubeVirt writes it) under `root`.
fn inside(root: &Path, path: &str) -> Result<PathBuf, String> {
    Ok(root.join(validate::path_in_image(path)?))
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
