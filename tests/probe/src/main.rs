//! The probe guest: boots like a Linux kernel, reads the platform the way a
//! kernel does and reports what it found on COM1, then powers off, reboots or
//! waits for the ACPI power button as its command line says.
//!
//! Output format: tests/probe/README.md.

#![no_std]
#![no_main]

mod acpi;
mod bootinfo;
mod disks;
mod entry;
mod hw;
mod mem;
mod net;
mod netdev;
#[macro_use]
mod serial;
mod smbios;
mod virtio;

use acpi::{Gas, Platform};
use bootinfo::cmdline_value;
use hw::{mmio_read8, mmio_write8, outb, outw, pause};

const GAS_SYSTEM_MEMORY: u8 = 0;
const GAS_SYSTEM_IO: u8 = 1;
const SLP_EN: u8 = 1 << 5;
/// The i8042's command port (0xFE to it pulses the CPU reset line); named as in kvmlet's vmm.
const I8042_COMMAND_PORT: u16 = 0x64;
const GIB4: u64 = 1 << 32;

#[no_mangle]
extern "C" fn probe_main(boot_info: u64, protocol: u64) -> ! {
    serial::init();
    report!("start");
    let info = match bootinfo::read(boot_info, protocol) {
        Ok(info) => info,
        Err(why) => {
            report!("error boot info: {}", why);
            halt_forever()
        }
    };
    report!("boot protocol={}", info.protocol);
    report!("cmdline={}", info.cmdline);
    let mut ram_top = 0;
    for entry in info.e820[..info.e820_len].iter().filter(|e| e.size != 0) {
        let end = entry.addr + entry.size;
        report!("e820 start={:#x} end={:#x} type={}", entry.addr, end, bootinfo::e820_kind(entry.kind));
        if entry.kind == 1 {
            ram_top = ram_top.max(end);
        }
    }
    let ram_total: u64 = info.e820[..info.e820_len].iter().filter(|e| e.kind == 1).map(|e| e.size).sum();
    report!("memory ram_total={} ram_top={:#x}", ram_total, ram_top);

    let platform = acpi::read(info.rsdp).unwrap_or_else(|| {
        report!("error no ACPI RSDP found");
        Platform::default()
    });
    report!("cpus={}", platform.cpus);
    report!("acpi tables={}", if platform.tables_ok { "ok" } else { "bad" });
    let mut ged_register = 0;
    let mut ged_gsi = None;
    let mut virtio_bases = [0u64; 32];
    let mut virtio_count = 0;
    if let Some(dsdt) = platform.dsdt {
        acpi::devices(dsdt, |d| {
            let hid = core::str::from_utf8(&d.hid).unwrap_or("?").trim_end();
            let name = core::str::from_utf8(&d.name).unwrap_or("?");
            report!("device name={} hid={} mmio={:#x} len={:#x} gsi={}", name, hid, d.mmio_base, d.mmio_len, d.gsi);
            if hid == "ACPI0013" {
                ged_register = d.region;
                ged_gsi = Some(d.gsi);
            }
            if hid == "LNRO0005" && virtio_count < virtio_bases.len() {
                virtio_bases[virtio_count] = d.mmio_base;
                virtio_count += 1;
            }
        });
    }

    match smbios::system_info() {
        Some(system) => {
            let mut uuid = heapless_string::Line::new();
            let _ = smbios::format_uuid(&system.uuid, &mut uuid);
            report!(
                "smbios version={}.{} uuid={} serial={}",
                system.version.0,
                system.version.1,
                uuid.as_str(),
                system.serial
            );
        }
        None => report!("error no SMBIOS system information"),
    }

    // Disks come first in kvmlet's device order, so a disk's index is its
    // position among virtio devices; NICs follow.
    let mut disk_bases = [0u64; 32];
    let mut disk_count = 0;
    let mut net_base = None;
    for &base in &virtio_bases[..virtio_count] {
        match virtio::read32(base, virtio::REG_DEVICE_ID) {
            netdev::DEVICE_ID_NET => {
                net_base = net_base.or(Some(base));
            }
            _ => {
                disk_bases[disk_count] = base;
                disk_count += 1;
            }
        }
    }
    disks::probe_disks(&disk_bases[..disk_count], info.cmdline, flood_buffer(&info));
    if let Some(base) = net_base {
        net::probe_net(base, info.cmdline);
    }

    let action = cmdline_value(info.cmdline, "probe.action").unwrap_or("poweroff");
    report!("action={}", action);
    match action {
        "poweroff" => {
            report!("done");
            power_off(&platform)
        }
        "reboot" => {
            report!("done");
            if cmdline_value(info.cmdline, "probe.reboot") == Some("i8042") || !platform.reset_supported {
                reboot_i8042()
            } else {
                write_gas(platform.reset_register, platform.reset_value);
                give_the_vmm_time();
                report!("error reset register write did not reset");
                reboot_i8042()
            }
        }
        "wait" => {
            match ged_gsi.filter(|_| platform.ioapic != 0) {
                Some(gsi) => wait_for_power_button_interrupt(ged_register, platform.ioapic, gsi),
                None => report!("error no GED interrupt or IOAPIC in the firmware tables"),
            }
            report!("done");
            power_off(&platform)
        }
        "wait-poll" => {
            wait_for_power_button(ged_register);
            report!("done");
            power_off(&platform)
        }
        "spin" => halt_forever(),
        "triple-fault" => {
            report!("done");
            // SAFETY: deliberately raises #UD; with an empty IDT the CPU shuts down.
            unsafe { core::arch::asm!("ud2", options(noreturn)) }
        }
        other => {
            report!("error unknown probe.action={}", other);
            power_off(&platform)
        }
    }
}

/// The last `FLOOD_SEGMENT_BYTES` of the highest RAM below 4 GiB (identity
/// mapped), if they lie above the probe's own image.
fn flood_buffer(info: &bootinfo::BootInfo) -> Option<u64> {
    extern "C" {
        static __bss_end: u8;
    }
    let image_end = core::ptr::addr_of!(__bss_end) as u64;
    let size = u64::from(disks::FLOOD_SEGMENT_BYTES);
    info.e820[..info.e820_len]
        .iter()
        .filter(|e| e.kind == 1 && e.addr + e.size <= GIB4 && e.size >= size)
        .map(|e| e.addr + e.size - size)
        .filter(|start| *start >= image_end)
        .max()
}

fn write_gas(register: Gas, value: u8) {
    match register.space {
        GAS_SYSTEM_IO => outb(register.address as u16, value),
        GAS_SYSTEM_MEMORY => mmio_write8(register.address, value),
        _ => report!("error unsupported register address space {}", register.space),
    }
}

fn power_off(platform: &Platform) -> ! {
    let sleep_type = platform.dsdt.and_then(acpi::s5_sleep_type).unwrap_or(5);
    if platform.sleep_control.address != 0 {
        write_gas(platform.sleep_control, (sleep_type << 2) | SLP_EN);
    } else if platform.pm1a_control != 0 {
        outw(platform.pm1a_control as u16, (u16::from(sleep_type) << 10) | (1 << 13));
    }
    give_the_vmm_time();
    report!("error power-off request did not stop the VM");
    halt_forever()
}

fn reboot_i8042() -> ! {
    outb(I8042_COMMAND_PORT, 0xfe);
    give_the_vmm_time();
    report!("error i8042 reset did not reset");
    halt_forever()
}

/// Some VMMs (QEMU) act on a power-off or reset request asynchronously: keep
/// quiet for a few billion TSC ticks before calling the request a failure.
fn give_the_vmm_time() {
    let start = hw::rdtsc();
    while hw::rdtsc().wrapping_sub(start) < 4_000_000_000 {
        pause();
    }
}

/// Polls the GED's event register (found in the DSDT); any event is taken as
/// the power button, the only event kvmlet's GED raises.
fn wait_for_power_button(register: u64) {
    if register == 0 {
        report!("error no GED event register in the DSDT");
        return;
    }
    report!("waiting for power button");
    loop {
        let events = mmio_read8(register);
        if events != 0 {
            report!("power button events={:#x}", events);
            return;
        }
        // An idle guest halts: the host gets its CPU back, and the button
        // is still seen within the timer period.
        entry::idle(IDLE_POLL_NANOS);
    }
}

/// Halts until the GED's interrupt (routed through the IOAPIC) arrives,
/// then reads its event register, as a kernel's GED driver does: no timer,
/// so a waiting probe wakes its host only when the button is pressed.
fn wait_for_power_button_interrupt(register: u64, ioapic: u64, gsi: u32) {
    if register == 0 {
        report!("error no GED event register in the DSDT");
        return;
    }
    // Interrupts stay off in ring 3: one raised before the HLT is taken by
    // it, so none is lost between the look at the register and the halt.
    entry::route_interrupt(ioapic, gsi);
    report!("waiting for power button");
    loop {
        let events = mmio_read8(register);
        if events != 0 {
            report!("power button events={:#x}", events);
            return;
        }
        entry::idle(0);
    }
}

/// How long the polling probe (`wait-poll`) halts between looks at the GED
/// register.
const IDLE_POLL_NANOS: u32 = 50_000_000;

fn halt_forever() -> ! {
    loop {
        pause();
    }
}

#[panic_handler]
fn panic(panic: &core::panic::PanicInfo) -> ! {
    report!("error panic: {}", panic);
    halt_forever()
}

/// A fixed-capacity line buffer for formatting without an allocator.
pub mod heapless_string {
    pub struct Line {
        buf: [u8; 64],
        len: usize,
    }

    impl Line {
        pub fn new() -> Self {
            Line { buf: [0; 64], len: 0 }
        }

        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
        }
    }

    impl core::fmt::Write for Line {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self.len + s.len();
            if end > self.buf.len() {
                return Err(core::fmt::Error);
            }
            self.buf[self.len..end].copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
}
