//! KVM's coalesced I/O ring. Writes to a registered port range do not exit
//! to the VMM: KVM appends them to a page it shares with us, and the device
//! that owns the range replays them, in order, before it handles anything
//! else (QEMU does the same). For a serial console this turns one VM exit
//! per byte into none.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};

/// One write KVM queued: `len` bytes of `data` to port or address `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalescedWrite {
    pub pio: bool,
    pub addr: u64,
    pub data: [u8; 8],
    pub len: usize,
}

impl CoalescedWrite {
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// The shared page: a header (`first`, which we advance, and `last`, which
/// KVM advances) followed by as many entries as fit.
pub struct CoalescedRing {
    page: NonNull<kvm_coalesced_mmio_ring>,
    page_size: usize,
    /// Whether `page` is our mmap of the vCPU fd (unmapped on drop), not a
    /// test's buffer.
    mapped: bool,
}

// SAFETY: the page is only touched through `&mut self`, and KVM's side of
// the protocol is safe against a consumer on any thread.
unsafe impl Send for CoalescedRing {}

impl CoalescedRing {
    /// Maps the ring from a vCPU fd (the page is the VM's; any vCPU's fd
    /// maps the same one).
    pub fn map(vcpu: &impl AsRawFd) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            -1 => return Err(io::Error::last_os_error()),
            size => size as usize,
        };
        let offset = libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * page_size as libc::off_t;
        // SAFETY: a fresh shared mapping of one page of the vCPU fd at the
        // offset KVM documents for the coalesced ring; nothing else uses the
        // address range it returns.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = NonNull::new(addr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(CoalescedRing { page, page_size, mapped: true })
    }

    /// How many entries the page holds (KVM_COALESCED_MMIO_MAX).
    fn capacity(&self) -> u32 {
        ((self.page_size - size_of::<kvm_coalesced_mmio_ring>()) / size_of::<kvm_coalesced_mmio>()) as u32
    }

    /// Takes every queued write, oldest first.
    pub fn drain(&mut self, mut each: impl FnMut(CoalescedWrite)) {
        let capacity = self.capacity();
        let ring = self.page.as_ptr();
        loop {
            // SAFETY: `ring` points at our live page; the header fields are
            // read and written volatile because KVM changes `last` (and reads
            // `first`) concurrently.
            let (first, last) = unsafe {
                (std::ptr::addr_of!((*ring).first).read_volatile(), std::ptr::addr_of!((*ring).last).read_volatile())
            };
            // KVM keeps both below capacity; anything else means the page is
            // not what we think it is, and nothing in it can be trusted.
            if first == last || first >= capacity || last >= capacity {
                return;
            }
            // The entry was written before `last` moved past it.
            fence(Ordering::Acquire);
            // SAFETY: `first < capacity`, so the entry lies inside the page.
            let entry: kvm_coalesced_mmio = unsafe {
                std::ptr::addr_of!((*ring).coalesced_mmio)
                    .cast::<kvm_coalesced_mmio>()
                    .add(first as usize)
                    .read_volatile()
            };
            // SAFETY: both union members are plain u32s.
            let pio = unsafe { entry.__bindgen_anon_1.pio } != 0;
            let len = (entry.len as usize).min(entry.data.len());
            // The entry is copied out before KVM may reuse its slot.
            fence(Ordering::Release);
            // SAFETY: as above; only we write `first`.
            unsafe { std::ptr::addr_of_mut!((*ring).first).write_volatile((first + 1) % capacity) };
            each(CoalescedWrite { pio, addr: entry.phys_addr, data: entry.data, len });
        }
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: the page was mapped by `map` with this size and is not
            // used after this.
            unsafe { libc::munmap(self.page.as_ptr().cast(), self.page_size) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring over a plain page, filled the way KVM fills it.
    struct FakePage(Box<[u64; 512]>);

    impl FakePage {
        fn ring(&mut self) -> CoalescedRing {
            let page = NonNull::new(self.0.as_mut_ptr().cast()).unwrap();
            CoalescedRing { page, page_size: 4096, mapped: false }
        }

        fn header(&mut self) -> *mut kvm_coalesced_mmio_ring {
            self.0.as_mut_ptr().cast()
        }

        /// KVM's side: append a one-byte port write at `last`.
        fn push(&mut self, port: u64, byte: u8) {
            let ring = self.header();
            // SAFETY: the test's page, laid out like KVM's.
            unsafe {
                let last = (*ring).last;
                let entry =
                    std::ptr::addr_of_mut!((*ring).coalesced_mmio).cast::<kvm_coalesced_mmio>().add(last as usize);
                let mut write = kvm_coalesced_mmio { phys_addr: port, len: 1, ..Default::default() };
                write.__bindgen_anon_1.pio = 1;
                write.data[0] = byte;
                entry.write(write);
                (*ring).last = (last + 1) % 170;
            }
        }
    }

    fn page() -> FakePage {
        FakePage(Box::new([0; 512]))
    }

    #[test]
    fn writes_come_out_in_order_across_the_wrap() {
        let mut page = page();
        let mut ring = page.ring();
        assert_eq!(ring.capacity(), 170, "KVM_COALESCED_MMIO_MAX for 4 KiB pages");
        let mut seen = Vec::new();
        // 400 bytes in batches that wrap the 170-entry ring twice.
        for batch in 0..8u32 {
            for i in 0..50u32 {
                page.push(0x3f8, (batch * 50 + i) as u8);
            }
            ring.drain(|w| {
                assert!(w.pio && w.addr == 0x3f8);
                seen.push(w.bytes()[0]);
            });
        }
        let expected: Vec<u8> = (0..400u32).map(|i| i as u8).collect();
        assert_eq!(seen, expected);
        ring.drain(|_| panic!("the ring is empty"));
    }

    #[test]
    fn a_corrupt_header_is_not_followed() {
        let mut page = page();
        let mut ring = page.ring();
        // SAFETY: the test's page.
        unsafe { (*page.header()).last = 5000 };
        ring.drain(|_| panic!("no entry may be read past the page"));
    }
}
