//! Port I/O and physical memory, reachable from ring 3 because the entry code
//! set IOPL=3 and mapped the first 4 GiB user-accessible.

use core::arch::asm;

pub fn outb(port: u16, value: u8) {
    // SAFETY: IOPL=3 allows port I/O in ring 3; the probe owns the machine.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

pub fn outw(port: u16, value: u16) {
    // SAFETY: as for outb.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) }
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for outb.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reads guest-physical memory (identity mapped). Addresses come from
/// firmware tables; a bad one faults, which ends the VM with a triple fault.
pub fn peek<T: Copy>(addr: u64) -> T {
    // SAFETY: the first 4 GiB are identity mapped; read_unaligned copes with
    // packed firmware structures.
    unsafe { core::ptr::read_unaligned(addr as usize as *const T) }
}

pub fn peek_bytes(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: as for peek; firmware tables are not written while we read them.
    unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len) }
}

pub fn mmio_read8(addr: u64) -> u8 {
    // SAFETY: device registers are identity mapped; volatile keeps every access.
    unsafe { core::ptr::read_volatile(addr as usize as *const u8) }
}

pub fn mmio_write8(addr: u64, value: u8) {
    // SAFETY: as for mmio_read8.
    unsafe { core::ptr::write_volatile(addr as usize as *mut u8, value) }
}

pub fn rdtsc() -> u64 {
    // SAFETY: CR4.TSD is clear, so RDTSC is allowed in ring 3; it has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub fn pause() {
    core::hint::spin_loop();
}
