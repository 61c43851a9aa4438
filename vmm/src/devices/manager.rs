//! The one place that decides where virtio-mmio devices live: each device's
//! 4 KiB register window, its GSI, its ioeventfds and irqfd, and (through the
//! list of slots) its DSDT entry. Like Firecracker's `MMIODeviceManager`.
//!
//! `plan` is a pure function of the `VmConfig`, so `kvmlet firmware-dump`
//! sees the same DSDT as the VM: disks first in config order (the guest's
//! `/dev/vda` is `disks[0]`), then NICs in config order.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::layout::{self, MAX_VIRTIO_DEVICES};
use crate::config::VmConfig;
use crate::devices::irq::IrqLine;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::VirtioDevice;
use crate::devices::Bus;
use crate::error::Error;

/// Which entry of the config a slot serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioRole {
    /// `disks[i]`
    Disk(usize),
    /// `nets[i]`
    Net(usize),
}

/// One virtio-mmio device's place in the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Position among virtio-mmio devices (the DSDT's `_UID`).
    pub index: usize,
    pub role: VirtioRole,
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
}

impl MmioSlot {
    fn new(index: usize, role: VirtioRole) -> Self {
        MmioSlot {
            index,
            role,
            base: layout::virtio_mmio_base(index),
            size: layout::VIRTIO_MMIO_SIZE,
            gsi: layout::virtio_irq(index),
        }
    }
}

/// The slots for every virtio device `config` asks for, at most
/// `MAX_VIRTIO_DEVICES` (`VmConfig::validate` refuses more).
pub fn plan(config: &VmConfig) -> Vec<MmioSlot> {
    let roles = (0..config.disks.len()).map(VirtioRole::Disk).chain((0..config.nets.len()).map(VirtioRole::Net));
    roles.take(MAX_VIRTIO_DEVICES).enumerate().map(|(index, role)| MmioSlot::new(index, role)).collect()
}

/// Puts devices in their slots on the MMIO bus, wired to KVM.
pub struct MmioDeviceManager<'a> {
    vm_fd: &'a VmFd,
    memory: &'a GuestMemoryMmap,
    attached: Vec<MmioSlot>,
}

impl<'a> MmioDeviceManager<'a> {
    pub fn new(vm_fd: &'a VmFd, memory: &'a GuestMemoryMmap) -> Self {
        MmioDeviceManager { vm_fd, memory, attached: Vec::new() }
    }

    /// Registers `device` at `slot`: an irqfd for its GSI, an ioeventfd per
    /// queue on QueueNotify (queue kicks never reach the vCPU thread), its
    /// transport on the bus.
    pub fn attach(&mut self, bus: &mut Bus, slot: MmioSlot, device: Box<dyn VirtioDevice>) -> Result<(), Error> {
        let name = role_name(slot.role);
        let irq = irq_line(self.vm_fd, slot.gsi)?;
        let transport =
            MmioTransport::new(device, self.memory.clone(), irq).map_err(|e| Error::Device(format!("{name}: {e}")))?;
        for (offset, queue, evt) in transport.queue_notifiers() {
            self.vm_fd
                .register_ioevent(evt, &IoEventAddress::Mmio(slot.base + offset), queue)
                .map_err(|e| Error::Kvm("KVM_IOEVENTFD", e))?;
        }
        bus.insert(slot.base, slot.size, Arc::new(Mutex::new(transport)))?;
        self.attached.push(slot);
        Ok(())
    }

    /// The devices attached so far, in slot order: what the DSDT declares.
    pub fn attached(&self) -> &[MmioSlot] {
        &self.attached
    }
}

/// `disks[i]` / `nets[i]`, for error messages.
pub fn role_name(role: VirtioRole) -> String {
    match role {
        VirtioRole::Disk(i) => format!("disks[{i}]"),
        VirtioRole::Net(i) => format!("nets[{i}]"),
    }
}

/// An eventfd registered as KVM's irqfd for `gsi`.
pub fn irq_line(vm_fd: &VmFd, gsi: u32) -> Result<IrqLine, Error> {
    let line = IrqLine::new().map_err(|e| Error::Device(format!("eventfd for GSI {gsi}: {e}")))?;
    vm_fd.register_irqfd(line.eventfd(), gsi).map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DiskConfig;
    use crate::net_config::{NetConfig, TapSource};

    #[test]
    fn disks_come_first_in_order_then_nics() {
        let mut config = VmConfig::new("/boot/vmlinuz");
        let disk = |p: &str| DiskConfig::new(p);
        config.disks = vec![disk("a"), disk("b")];
        config.nets = vec![NetConfig {
            tap: TapSource::Name("tap0".into()),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            mtu: 1500,
            dhcp: None,
        }];
        let slots = plan(&config);
        let roles: Vec<_> = slots.iter().map(|s| s.role).collect();
        assert_eq!(roles, [VirtioRole::Disk(0), VirtioRole::Disk(1), VirtioRole::Net(0)]);
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!((slot.index, slot.base, slot.gsi), (i, 0xc000_1000 + 0x1000 * i as u64, 6 + i as u32));
        }
    }
}
