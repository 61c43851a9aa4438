//! Receive buffers the guest offered, taken off the available ring ahead of
//! need and checked once, so that a frame can be read from the backend
//! straight into them (one `readv`, no copy through the VMM) and only the
//! chains it filled are returned used. Chains it did not need stay here, in
//! ring order, for the next frame.
//!
//! The guest is hostile: a chain with a device-readable descriptor, a range
//! outside guest RAM, or room for less than a `virtio_net_hdr` is returned
//! unused (length 0) as soon as it is seen; what is held is bounded by
//! `MAX_HELD_SEGMENTS` (and a chain by the queue size), never by what the
//! guest claims.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::datapath::{QueueBroken, MAX_FRAME_LEN};
use super::tap::VNET_HDR_LEN;

/// Segments held before no more chains are taken: enough for a 64 KiB frame
/// in buffers of 256 bytes; with a chain's own (at most the queue size),
/// below IOV_MAX.
const MAX_HELD_SEGMENTS: usize = 256;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

struct Chain {
    head: u16,
    segments: usize,
    capacity: u32,
}

/// Whether the held chains can take a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Room {
    Fits,
    /// Not yet: the available ring is empty, the guest has to add buffers.
    Wait,
    /// Never: the first chain is too small without MRG_RXBUF, or the most
    /// that may be held is too small. The frame has to be dropped.
    Never,
}

pub struct RxChains {
    chains: VecDeque<Chain>,
    segments: VecDeque<(GuestAddress, u32)>,
    capacity: u64,
    mergeable: bool,
    iovecs: IoVecs,
}

/// `readv`'s list, kept for its allocation.
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the pointers are written and used only inside one `read_from`
// call, on the thread making it; between calls they are never dereferenced.
unsafe impl Send for IoVecs {}

fn in_ram(memory: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    len == 0 || memory.get_slice(addr, len as usize).is_ok()
}

fn unusable(_: virtio_queue::Error) -> QueueBroken {
    QueueBroken("receive ring unusable")
}

impl RxChains {
    pub fn new(mergeable: bool) -> Self {
        RxChains {
            chains: VecDeque::with_capacity(usize::from(super::QUEUE_SIZE)),
            segments: VecDeque::with_capacity(2 * MAX_HELD_SEGMENTS),
            capacity: 0,
            mergeable,
            iovecs: IoVecs(Vec::with_capacity(2 * MAX_HELD_SEGMENTS + 1)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    fn full(&self) -> bool {
        self.segments.len() >= MAX_HELD_SEGMENTS
    }

    /// Takes chains off the ring until the held ones have room for `len`
    /// bytes (without MRG_RXBUF: until one is held), the ring is empty or
    /// the most that may be held is held. Returns the chains it returned
    /// unused because they broke a rule.
    pub fn take(&mut self, memory: &GuestMemoryMmap, rx: &mut Queue, len: usize) -> Result<u64, QueueBroken> {
        let mut refused = 0;
        while !self.full() && if self.mergeable { self.capacity < len as u64 } else { self.chains.is_empty() } {
            let next = rx.iter(memory).map_err(|_| QueueBroken("receive ring corrupt"))?.next();
            let Some(chain) = next else { break };
            let head = chain.head_index();
            let before = self.segments.len();
            let mut capacity = 0u64;
            let mut valid = true;
            for desc in chain {
                if !desc.is_write_only() || !in_ram(memory, desc.addr(), desc.len()) {
                    valid = false;
                    break;
                }
                if desc.len() > 0 {
                    self.segments.push_back((desc.addr(), desc.len()));
                    capacity += u64::from(desc.len());
                }
            }
            if !valid || capacity < VNET_HDR_LEN as u64 || capacity > u64::from(u32::MAX) {
                self.segments.truncate(before);
                rx.add_used(memory, head, 0).map_err(unusable)?;
                refused += 1;
                continue;
            }
            let segments = self.segments.len() - before;
            self.chains.push_back(Chain { head, segments, capacity: capacity as u32 });
            self.capacity += capacity;
        }
        Ok(refused)
    }

    /// Whether a frame of `len` bytes (header included) fits the held chains.
    pub fn room_for(&self, len: usize) -> Room {
        let held =
            if self.mergeable { self.capacity } else { self.chains.front().map_or(0, |c| u64::from(c.capacity)) };
        if held >= len as u64 {
            Room::Fits
        } else if self.chains.is_empty() || (self.mergeable && !self.full()) {
            Room::Wait
        } else {
            Room::Never
        }
    }

    /// Returns the first held chain unused (its frame did not fit it).
    pub fn refuse_first(&mut self, memory: &GuestMemoryMmap, rx: &mut Queue) -> Result<(), QueueBroken> {
        if let Some(chain) = self.pop_front() {
            rx.add_used(memory, chain.head, 0).map_err(unusable)?;
        }
        Ok(())
    }

    fn pop_front(&mut self) -> Option<Chain> {
        let chain = self.chains.pop_front()?;
        self.segments.drain(..chain.segments);
        self.capacity -= u64::from(chain.capacity);
        Some(chain)
    }

    /// Reads one frame from `backend` into the held chains (without
    /// MRG_RXBUF, into the first; what does not fit it lands in `overflow`)
    /// and returns its length. Nothing is returned to the guest yet: `fill`
    /// does that.
    pub fn read_from(
        &mut self,
        memory: &GuestMemoryMmap,
        backend: &impl AsRawFd,
        overflow: &mut [u8],
    ) -> io::Result<usize> {
        let segments = if self.mergeable { self.segments.len() } else { self.chains.front().map_or(0, |c| c.segments) };
        let iovecs = &mut self.iovecs.0;
        iovecs.clear();
        // Only as many as the largest frame needs: the kernel copies and checks each.
        let mut room = 0usize;
        for &(addr, len) in self.segments.iter().take(segments) {
            if room >= MAX_FRAME_LEN {
                break;
            }
            room += len as usize;
            // Checked to be guest RAM when the chain was taken.
            let slice = memory.get_slice(addr, len as usize).map_err(io::Error::other)?;
            iovecs.push(libc::iovec { iov_base: slice.ptr_guard_mut().as_ptr().cast(), iov_len: len as usize });
        }
        if !self.mergeable {
            iovecs.push(libc::iovec { iov_base: overflow.as_mut_ptr().cast(), iov_len: overflow.len() });
        }
        // SAFETY: every iovec points at memory that stays mapped for the call:
        // guest RAM (checked by get_slice; the guest may change it meanwhile,
        // which only changes what it receives) or `overflow`, borrowed mutably.
        // One buffer is read with read(2), cheaper in the tap than readv(2).
        let n = unsafe {
            if iovecs.len() == 1 {
                libc::read(backend.as_raw_fd(), iovecs[0].iov_base, iovecs[0].iov_len)
            } else {
                libc::readv(backend.as_raw_fd(), iovecs.as_ptr(), iovecs.len() as libc::c_int)
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Copies a frame (its header first) into the held chains; `room_for`
    /// must have said it fits. Then returns them as `fill` does.
    pub fn copy_in(&mut self, memory: &GuestMemoryMmap, rx: &mut Queue, frame: &[u8]) -> Result<u16, QueueBroken> {
        let mut offset = 0;
        for &(addr, len) in &self.segments {
            if offset == frame.len() {
                break;
            }
            let n = (len as usize).min(frame.len() - offset);
            // Checked to be guest RAM when the chain was taken.
            if let Err(e) = memory.write_slice(&frame[offset..offset + n], addr) {
                tracing::warn!(error = %e, "virtio-net: writing a receive buffer failed");
            }
            offset += n;
        }
        self.fill(memory, rx, frame.len())
    }

    /// Returns the chains that a frame of `len` bytes (already in them)
    /// filled, with `num_buffers` in its header saying how many, and their
    /// used lengths. Returns that count.
    pub fn fill(&mut self, memory: &GuestMemoryMmap, rx: &mut Queue, len: usize) -> Result<u16, QueueBroken> {
        let mut count = 0usize;
        let mut covered = 0u64;
        for chain in &self.chains {
            if covered >= len as u64 {
                break;
            }
            covered += u64::from(chain.capacity);
            count += 1;
        }
        // At most the queue size: chains come off a ring of that many entries.
        let count = count as u16;
        self.write_header(memory, NUM_BUFFERS_OFFSET, &count.to_le_bytes());
        let mut left = len as u64;
        for _ in 0..count {
            let chain = self.pop_front().expect("counted above");
            let used = left.min(u64::from(chain.capacity));
            rx.add_used(memory, chain.head, used as u32).map_err(unusable)?;
            left -= used;
        }
        Ok(count)
    }

    /// Writes `bytes` at `offset` of the first chain (within its header,
    /// which every held chain has room for).
    fn write_header(&self, memory: &GuestMemoryMmap, mut offset: usize, mut bytes: &[u8]) {
        for &(addr, len) in &self.segments {
            if bytes.is_empty() {
                return;
            }
            let len = len as usize;
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = bytes.len().min(len - offset);
            if let Err(e) = memory.write_slice(&bytes[..n], addr.unchecked_add(offset as u64)) {
                tracing::warn!(error = %e, "virtio-net: writing a receive header failed");
            }
            bytes = &bytes[n..];
            offset = 0;
        }
    }
}
