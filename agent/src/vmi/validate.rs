//! Every check on a VMI spec that needs nothing but the spec: admission
//! runs it on VMIs and on VM templates, the node runs it again before
//! anything else (a VMI stored before a check existed is still refused by
//! name). What only the node can know (files, images, Secrets, host memory,
//! the HostDisk gate) is checked by the node.

use std::path::{Component, Path, PathBuf};

use proto::kubevirt::{Disk, VirtualMachineInstanceSpec, Volume};

use super::cloud_init::CloudInitNoCloud;
use super::{quantity, resources, SpecError};

/// The first problem with `spec`, with its field (`spec.…`).
pub fn spec(spec: &VirtualMachineInstanceSpec) -> Result<(), SpecError> {
    let domain = &spec.domain;
    let devices = &domain.devices;
    super::network::pod_interface(&devices.interfaces, &spec.networks, devices.autoattach_pod_interface)?;
    if let Some(machine) = &domain.machine {
        if !matches!(machine.type_.as_str(), "" | "microvm") {
            return Err(SpecError::new(
                "spec.domain.machine.type",
                format!("{:?} is not supported: kvmlet runs microvm machines (leave it empty)", machine.type_),
            ));
        }
    }
    resources::request(spec)?;
    firmware(spec)?;
    // Names first: a name that could look like a path is refused as such.
    for (index, volume) in spec.volumes.iter().enumerate() {
        dns1123_label(&volume.name).map_err(|e| SpecError::new(format!("spec.volumes[{index}].name"), e))?;
    }
    for (index, disk) in domain.devices.disks.iter().enumerate() {
        dns1123_label(&disk.name).map_err(|e| SpecError::new(format!("spec.domain.devices.disks[{index}].name"), e))?;
    }
    for (index, volume) in spec.volumes.iter().enumerate() {
        let field = format!("spec.volumes[{index}]");
        if spec.volumes[..index].iter().any(|v| v.name == volume.name) {
            return Err(SpecError::new(format!("{field}.name"), format!("Duplicate value: {:?}", volume.name)));
        }
        if !domain.devices.disks.iter().any(|d| d.name == volume.name) {
            return Err(SpecError::new(field, format!("volume {:?} is not used by any disk", volume.name)));
        }
        volume_source(volume, &field)?;
    }
    for (index, disk) in domain.devices.disks.iter().enumerate() {
        disk_target(disk, &format!("spec.domain.devices.disks[{index}]"))?;
        if domain.devices.disks[..index].iter().any(|d| d.name == disk.name) {
            return Err(SpecError::new(
                format!("spec.domain.devices.disks[{index}].name"),
                format!("Duplicate value: {:?}", disk.name),
            ));
        }
        if let Some(order) = disk.boot_order {
            if domain.devices.disks[..index].iter().any(|d| d.boot_order == Some(order)) {
                return Err(SpecError::new(
                    format!("spec.domain.devices.disks[{index}].bootOrder"),
                    format!("Boot order {order} for disk {:?} already set for a different device", disk.name),
                ));
            }
        }
        if !spec.volumes.iter().any(|v| v.name == disk.name) {
            return Err(SpecError::new(
                format!("spec.domain.devices.disks[{index}].name"),
                format!("no volume named {:?}", disk.name),
            ));
        }
    }
    let seeds = spec.volumes.iter().enumerate().filter(|(_, v)| v.cloud_init_no_cloud.is_some());
    if let Some((index, _)) = seeds.clone().nth(1) {
        return Err(SpecError::new(
            format!("spec.volumes[{index}].cloudInitNoCloud"),
            "only one cloudInitNoCloud volume is allowed",
        ));
    }
    Ok(())
}

fn firmware(spec: &VirtualMachineInstanceSpec) -> Result<(), SpecError> {
    let Some(firmware) = &spec.domain.firmware else { return Ok(()) };
    if let Some(uuid) = &firmware.uuid {
        uuid::Uuid::parse_str(uuid)
            .map_err(|e| SpecError::new("spec.domain.firmware.uuid", format!("{uuid:?}: {e}")))?;
    }
    let Some(container) = firmware.kernel_boot.as_ref().and_then(|k| k.container.as_ref()) else { return Ok(()) };
    const FIELD: &str = "spec.domain.firmware.kernelBoot.container";
    if let Some(policy) = container.image_pull_policy.as_deref() {
        pull_policy(policy, &format!("{FIELD}.imagePullPolicy"))?;
    }
    image_reference(&container.image).map_err(|e| SpecError::new(format!("{FIELD}.image"), e))?;
    match &container.kernel_path {
        Some(path) => path_in_image(path).map_err(|e| SpecError::new(format!("{FIELD}.kernelPath"), e))?,
        None => {
            return Err(SpecError::new(format!("{FIELD}.kernelPath"), "required: kvmlet boots the kernel directly"))
        }
    };
    if let Some(path) = &container.initrd_path {
        path_in_image(path).map_err(|e| SpecError::new(format!("{FIELD}.initrdPath"), e))?;
    }
    Ok(())
}

/// The disk's target; Ok(read-only).
pub fn disk_target(disk: &Disk, field: &str) -> Result<bool, SpecError> {
    if disk.cdrom.is_some() {
        return Err(SpecError::new(
            format!("{field}.cdrom"),
            "cdrom disks are not supported (use disk with bus virtio)",
        ));
    }
    if disk.boot_order == Some(0) {
        return Err(SpecError::new(format!("{field}.bootOrder"), "must have a boot order > 0, if supplied"));
    }
    let target = disk.disk.clone().unwrap_or_default();
    if let Some(bus) = target.bus.as_deref() {
        if bus != "virtio" {
            return Err(SpecError::new(
                format!("{field}.disk.bus"),
                format!("Unsupported value: {bus:?}: supported values: \"virtio\""),
            ));
        }
    }
    Ok(target.read_only.unwrap_or(false))
}

fn volume_source(volume: &Volume, field: &str) -> Result<(), SpecError> {
    let sources = [
        volume.container_disk.is_some(),
        volume.cloud_init_no_cloud.is_some(),
        volume.host_disk.is_some(),
        volume.empty_disk.is_some(),
    ];
    match sources.iter().filter(|s| **s).count() {
        1 => {}
        0 => {
            return Err(SpecError::new(
                field,
                "no volume source kvmlet supports (containerDisk, hostDisk, emptyDisk, cloudInitNoCloud)",
            ))
        }
        _ => return Err(SpecError::new(field, "more than one volume source is set")),
    }
    if let Some(container) = &volume.container_disk {
        if let Some(policy) = container.image_pull_policy.as_deref() {
            pull_policy(policy, &format!("{field}.containerDisk.imagePullPolicy"))?;
        }
        image_reference(&container.image).map_err(|e| SpecError::new(format!("{field}.containerDisk.image"), e))?;
        if let Some(path) = &container.path {
            path_in_image(path).map_err(|e| SpecError::new(format!("{field}.containerDisk.path"), e))?;
        }
    }
    if let Some(empty) = &volume.empty_disk {
        disk_bytes(&empty.capacity.0, &format!("{field}.emptyDisk.capacity"))?;
    }
    if let Some(host) = &volume.host_disk {
        if !Path::new(&host.path).is_absolute() {
            return Err(SpecError::new(
                format!("{field}.hostDisk.path"),
                format!("{:?} is not an absolute path", host.path),
            ));
        }
        match host.type_.as_str() {
            "Disk" => {}
            "DiskOrCreate" => {
                let capacity = host.capacity.as_ref().ok_or_else(|| {
                    SpecError::new(format!("{field}.hostDisk.capacity"), "required with type DiskOrCreate")
                })?;
                disk_bytes(&capacity.0, &format!("{field}.hostDisk.capacity"))?;
            }
            other => {
                return Err(SpecError::new(
                    format!("{field}.hostDisk.type"),
                    format!("Unsupported value: {other:?}: supported values: \"Disk\", \"DiskOrCreate\""),
                ))
            }
        }
    }
    if let Some(cloud_init) = &volume.cloud_init_no_cloud {
        CloudInitNoCloud::check(cloud_init).map_err(|e| SpecError::new(field, crate::errors::with_causes(&e)))?;
    }
    Ok(())
}

/// A disk size in bytes, rounded up to whole 512-byte sectors.
pub fn disk_bytes(capacity: &str, field: &str) -> Result<u64, SpecError> {
    let bytes = quantity::bytes(capacity).map_err(|e| SpecError::new(field, e.to_string()))?;
    if bytes == 0 {
        return Err(SpecError::new(field, "must be more than 0"));
    }
    bytes.checked_next_multiple_of(512).ok_or_else(|| SpecError::new(field, format!("{capacity:?} is out of range")))
}

/// `imagePullPolicy`: one of Kubernetes' three values (the node pulls images).
fn pull_policy(policy: &str, field: &str) -> Result<(), SpecError> {
    match policy {
        "Always" | "IfNotPresent" | "Never" => Ok(()),
        other => Err(SpecError::new(
            field,
            format!("Unsupported value: {other:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\""),
        )),
    }
}

/// An image reference as a relative path in the image directory
/// (`REF`, with `:latest` added when it has no tag or digest). Absolute
/// references and `.`/`..` components are refused: they would leave the
/// image directory.
pub fn image_reference(image: &str) -> Result<PathBuf, String> {
    let last = image.rsplit('/').next().unwrap_or(image);
    let reference =
        if last.contains(':') || last.contains('@') { image.to_string() } else { format!("{image}:latest") };
    let plain = !image.is_empty()
        && !image.starts_with('/')
        && image.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    if !plain {
        return Err(format!("{image:?} is not an image reference"));
    }
    Ok(PathBuf::from(reference))
}

/// A path inside an image (absolute within it, as KubeVirt writes it), as a
/// relative path; `.`/`..` components are refused.
pub fn path_in_image(path: &str) -> Result<PathBuf, String> {
    let relative = Path::new(path.trim_start_matches('/'));
    let plain = !relative.as_os_str().is_empty()
        && path.split('/').all(|part| part != "." && part != "..")
        && relative.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!("{path:?} is not a path inside the image"));
    }
    Ok(relative.to_path_buf())
}

/// KubeVirt names volumes and disks with DNS-1123 labels; a name never
/// becomes a file name, and this keeps it from ever looking like a path.
pub fn dns1123_label(name: &str) -> Result<(), String> {
    const RULE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
                        and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc', \
                        regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
    if name.len() > 63 {
        return Err(format!("Invalid value: {name:?}: must be no more than 63 characters"));
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1])
        && bytes.iter().all(|b| alnum(*b) || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("Invalid value: {name:?}: {RULE}"))
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
