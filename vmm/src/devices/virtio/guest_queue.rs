//! The driver's side of a split virtqueue, laid out in guest memory: what
//! tests, benchmarks and the fuzz target use to hand a device requests the way
//! a guest driver would (and to hand it malformed ones).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;

/// One descriptor as the driver writes it.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// A split queue of `size` entries at `base`: descriptor table, available
/// ring, used ring, each at the alignment the spec asks for.
pub struct GuestQueue {
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    next_avail: u16,
    next_desc: u16,
}

impl GuestQueue {
    pub fn new(base: u64, size: u16) -> Self {
        let desc_table = base;
        let avail_ring = desc_table + 16 * u64::from(size);
        let used_ring = (avail_ring + 6 + 2 * u64::from(size)).next_multiple_of(4);
        GuestQueue { size, desc_table, avail_ring, used_ring, next_avail: 0, next_desc: 0 }
    }

    /// First byte after the queue's rings.
    pub fn end(&self) -> u64 {
        self.used_ring + 6 + 8 * u64::from(self.size)
    }

    pub fn write_desc(&self, mem: &GuestMemoryMmap, index: u16, desc: Desc) {
        let at = GuestAddress(self.desc_table + 16 * u64::from(index));
        mem.write_obj(desc.addr, at).unwrap();
        mem.write_obj(desc.len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(desc.flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(desc.next, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Writes `chain` as linked descriptors (NEXT flags and indices filled in)
    /// and makes its head available. Returns the head index.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, chain: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, writable)) in chain.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == chain.len();
            let flags = if *writable { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            self.write_desc(mem, index, Desc { addr: *addr, len: *len, flags, next: (index + 1) % self.size });
        }
        self.next_desc = (head + chain.len() as u16) % self.size;
        self.make_available(mem, head);
        head
    }

    /// Puts descriptor `head` in the available ring and bumps its index.
    pub fn make_available(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail_ring + 4 + 2 * u64::from(self.next_avail % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        mem.write_obj(self.next_avail, GuestAddress(self.avail_ring + 2)).unwrap();
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used_ring + 2)).unwrap()
    }

    /// Used element `n`: (descriptor head, bytes written).
    pub fn used(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.used_ring + 4 + 8 * u64::from(n % self.size);
        (mem.read_obj(GuestAddress(at)).unwrap(), mem.read_obj(GuestAddress(at + 4)).unwrap())
    }
}
