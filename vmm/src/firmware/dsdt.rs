//! The DSDT: the devices a hardware-reduced ACPI guest finds — COM1, the
//! Generic Event Device with its power button, `_S5_`, and one `LNRO0005`
//! virtio-mmio device per slot the device manager placed, in slot order.

use acpi_tables::aml::{
    self, Device, EISAName, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt,
    Memory32Fixed, Method, Name, Notify, OpRegion, OpRegionSpace, Package, Path, ResourceTemplate, Scope, Store, IO,
};
use acpi_tables::Aml;

use crate::arch::layout::{
    ACPI_S5_SLEEP_TYPE, COM1_IRQ, COM1_PORT, COM1_PORT_LEN, GED_EVENT_POWER_BUTTON, GED_IRQ, GED_MMIO_START,
};
use crate::devices::manager::MmioSlot;

// Edge-triggered, active-high, exclusive: what an irqfd delivers — one pulse
// per event, with no resample/EOI path to lower a level line. For the GED this
// is safe because `_EVT` reads (and so clears) every pending event bit at
// once, so an event raised while the guest runs `_EVT` either is in that read
// or comes with its own new edge. Cloud Hypervisor declares its GED the same way.
fn interrupt(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

fn com1() -> Vec<u8> {
    let io = IO::new(COM1_PORT, COM1_PORT, 1, COM1_PORT_LEN as u8);
    let irq = interrupt(COM1_IRQ);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    let hid = EISAName::new("PNP0501");
    bytes(&Device::new(
        "_SB_.COM1".into(),
        vec![&Name::new("_HID".into(), &hid), &Name::new("_UID".into(), &aml::ZERO), &Name::new("_CRS".into(), &crs)],
    ))
}

fn ged_and_power_button() -> Vec<u8> {
    let irq = interrupt(GED_IRQ);
    let crs = ResourceTemplate::new(vec![&irq]);
    let hid = "ACPI0013";
    let region_base = GED_MMIO_START as u32;
    let region = OpRegion::new("GDST".into(), OpRegionSpace::SystemMemory, &region_base, &1u8);
    let field = Field::new(
        "GDST".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 8)],
    );
    // _EVT: read (and so clear) the pending events; notify the power button.
    let local0 = aml::Local(0);
    let gdat: Path = "GDAT".into();
    let read_events = Store::new(&local0, &gdat);
    let button_bit = GED_EVENT_POWER_BUTTON;
    let masked = aml::And::new(&aml::ZERO, &local0, &button_bit);
    let pressed = aml::Equal::new(&masked, &button_bit);
    let pwrb: Path = "\\_SB_.PWRB".into();
    let notify = Notify::new(&pwrb, &0x80u8);
    let on_button = If::new(&pressed, vec![&notify]);
    let evt = Method::new("_EVT".into(), 1, true, vec![&read_events, &on_button]);
    let mut out = bytes(&Device::new(
        "_SB_.GED_".into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    ));
    let button_hid = EISAName::new("PNP0C0C");
    out.extend(bytes(&Device::new(
        "_SB_.PWRB".into(),
        vec![&Name::new("_HID".into(), &button_hid), &Name::new("_UID".into(), &aml::ZERO)],
    )));
    out
}

fn virtio_mmio(slot: &MmioSlot) -> Vec<u8> {
    let window = Memory32Fixed::new(true, slot.base as u32, slot.size as u32);
    let irq = interrupt(slot.gsi);
    let crs = ResourceTemplate::new(vec![&window, &irq]);
    let index = slot.index;
    let uid = index as u32;
    let hid = "LNRO0005";
    bytes(&Device::new(
        format!("_SB_.V{index:03}").as_str().into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &uid),
            &Name::new("_CCA".into(), &aml::ONE),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    aml.to_aml_bytes(&mut out);
    out
}

/// The DSDT's AML body (everything after the table header).
pub fn body(virtio_devices: &[MmioSlot]) -> Vec<u8> {
    let mut out = Vec::new();
    // The \_SB_ scope must exist before devices are declared in it.
    out.extend(bytes(&Scope::new("_SB_".into(), vec![])));
    out.extend(com1());
    out.extend(ged_and_power_button());
    for slot in virtio_devices {
        out.extend(virtio_mmio(slot));
    }
    let s5 = ACPI_S5_SLEEP_TYPE;
    out.extend(bytes(&Name::new("_S5_".into(), &Package::new(vec![&s5, &s5, &aml::ZERO, &aml::ZERO]))));
    out
}
