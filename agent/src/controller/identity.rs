//! A VM's stable firmware identity: the SMBIOS UUID (and serial) its guests
//! see, persisted into the VM's template so every VMI made from it, now and
//! after restarts, looks like the same machine (licences, cloud-init
//! `instance-id`).

use proto::kubevirt::{Firmware, VirtualMachine};
use uuid::Uuid;

/// KubeVirt's namespace for name-derived firmware UUIDs.
pub const FIRMWARE_UUID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1a24a1_4061_4607_8bf4_a3963d0c5895);

/// The firmware block with the identity filled in, or None when the VM
/// already has both a UUID and a serial.
///
/// A new VM gets random values. A VM that already ran without a persisted
/// UUID (it had a VMI) gets the UUID derived from its name, which is what its
/// guests saw before, so their identity does not change under them.
pub fn missing(vm: &VirtualMachine, had_vmi: bool) -> Option<Firmware> {
    let firmware = vm.spec.template.spec.domain.firmware.clone().unwrap_or_default();
    if firmware.uuid.is_some() && firmware.serial.is_some() {
        return None;
    }
    let name = vm.metadata.name.as_deref().unwrap_or_default();
    let (uuid, serial) = if had_vmi {
        (
            Uuid::new_v5(&FIRMWARE_UUID_NAMESPACE, name.as_bytes()),
            Uuid::new_v5(&FIRMWARE_UUID_NAMESPACE, format!("{name}/serial").as_bytes()),
        )
    } else {
        (Uuid::new_v4(), Uuid::new_v4())
    };
    Some(Firmware {
        uuid: firmware.uuid.or_else(|| Some(uuid.to_string())),
        serial: firmware.serial.or_else(|| Some(serial.to_string())),
        ..firmware
    })
}

#[cfg(test)]
mod tests {
    use proto::kubevirt::VirtualMachineSpec;

    use super::*;

    #[test]
    fn new_vms_get_random_ids_older_ones_their_name_derived_uuid() {
        let vm = VirtualMachine::new("vm-cirros", VirtualMachineSpec::default());
        let a = missing(&vm, false).unwrap();
        let b = missing(&vm, false).unwrap();
        assert_ne!(a.uuid, b.uuid);
        assert_eq!(Uuid::parse_str(a.uuid.as_deref().unwrap()).unwrap().get_version_num(), 4);
        let old = missing(&vm, true).unwrap();
        assert_eq!(old.uuid, missing(&vm, true).unwrap().uuid, "stable");
        assert_eq!(
            old.uuid.as_deref(),
            Some(Uuid::new_v5(&FIRMWARE_UUID_NAMESPACE, b"vm-cirros").to_string().as_str())
        );
        let mut done = vm.clone();
        done.spec.template.spec.domain.firmware = Some(a.clone());
        assert_eq!(missing(&done, false), None);
        let mut only_uuid = vm;
        only_uuid.spec.template.spec.domain.firmware = Some(Firmware { uuid: a.uuid.clone(), ..Default::default() });
        assert_eq!(missing(&only_uuid, false).unwrap().uuid, a.uuid, "a given UUID is kept");
    }
}
