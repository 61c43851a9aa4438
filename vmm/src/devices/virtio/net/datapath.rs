//! Frames between the guest's queues and the backend. The guest's chains are
//! hostile: every length is bounded by `MAX_FRAME_LEN` or by what was checked
//! to be guest RAM, nothing is allocated in proportion to what the guest
//! claims, and a chain that breaks a rule costs the guest that chain (it is
//! returned, used length 0) or the frame it was meant for, never the VMM.
//! Received frames are read from the backend straight into the guest's
//! buffers (`rx_chains`) when those held have room for the largest frame;
//! else into the VMM and copied once there is room.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::rx_chains::{Room, RxChains};
use super::tap::{Backend, VNET_HDR_LEN};
use crate::devices::virtio::Interrupt;
use crate::dhcp::{DhcpResponder, ETHERNET_HEADER_LEN};

/// The header and the largest frame a tap passes with TSO: 64 KiB of IP
/// payload behind an Ethernet header (Firecracker's MAX_BUFFER_SIZE).
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65550;
/// Header and Ethernet header: anything shorter is not a frame.
pub const MIN_TX_LEN: usize = VNET_HDR_LEN + ETHERNET_HEADER_LEN;
/// DHCP replies waiting for receive buffers; older ones give way.
const MAX_INJECTED: usize = 8;
/// Frames moved per wakeup in one direction before the other gets its turn.
const MAX_FRAMES_PER_PASS: usize = 256;
/// Transmitted frames this long or longer go to the backend straight from
/// guest memory (one `writev`); shorter ones are copied first, so the DHCP
/// responder can look at them (DHCP requests are a few hundred bytes).
const ZERO_COPY_TX_LEN: usize = 4096;

/// The available ring cannot be used any more: the device needs a reset.
#[derive(Debug, thiserror::Error)]
#[error("virtio-net: {0}")]
pub struct QueueBroken(pub &'static str);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    pub tx_frames: u64,
    pub tx_dropped: u64,
    pub rx_frames: u64,
    /// Bytes of delivered frames, their headers included.
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub dhcp_replies: u64,
}

pub struct Datapath {
    memory: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
    backend: Arc<Backend>,
    dhcp: Option<Arc<DhcpResponder>>,
    mergeable: bool,
    /// Receive chains taken off the ring, not yet used.
    rx_chains: RxChains,
    /// A frame read from the backend into the VMM, waiting for receive
    /// buffers (`rx_pending` bytes); else where a frame too long for a
    /// chain without MRG_RXBUF ends.
    rx_frame: Vec<u8>,
    rx_pending: Option<usize>,
    /// No receive buffers: the backend is not read until the guest adds some.
    starved: bool,
    injected: VecDeque<Vec<u8>>,
    tx_frame: Vec<u8>,
    /// The current transmit chain's buffers (kept for their capacity).
    tx_segments: Vec<(GuestAddress, usize)>,
    pub counters: NetCounters,
}

fn in_ram(memory: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    len == 0 || memory.get_slice(addr, len as usize).is_ok()
}

impl Datapath {
    pub fn new(
        memory: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        interrupt: Arc<Interrupt>,
        backend: Arc<Backend>,
        dhcp: Option<Arc<DhcpResponder>>,
        mergeable: bool,
    ) -> Self {
        Datapath {
            memory,
            rx,
            tx,
            interrupt,
            backend,
            dhcp,
            mergeable,
            rx_chains: RxChains::new(mergeable),
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_pending: None,
            starved: false,
            injected: VecDeque::new(),
            tx_frame: vec![0; MAX_FRAME_LEN],
            tx_segments: Vec::new(),
            counters: NetCounters::default(),
        }
    }

    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// Whether the backend should be polled for input: not while a frame
    /// already waits for buffers, nor while there are none.
    pub fn wants_backend_input(&self) -> bool {
        self.rx_pending.is_none() && self.injected.is_empty() && !self.starved
    }

    /// Sends the frames the guest queued (DHCP requests go to the responder),
    /// at most `MAX_FRAMES_PER_PASS`; true when the ring is drained, false when
    /// more wait (kicks stay off until then: call again).
    pub fn process_tx(&mut self) -> Result<bool, QueueBroken> {
        let mut used_any = false;
        let mut drained = false;
        self.tx.disable_notification(&self.memory).map_err(|_| QueueBroken("transmit ring unusable"))?;
        for _ in 0..MAX_FRAMES_PER_PASS {
            let next = self.tx.iter(&self.memory).map_err(|_| QueueBroken("transmit ring corrupt"))?.next();
            let Some(chain) = next else {
                // Re-enable kicks; if the guest added a chain meanwhile, go on.
                if self.tx.enable_notification(&self.memory).map_err(|_| QueueBroken("transmit ring unusable"))? {
                    self.tx.disable_notification(&self.memory).map_err(|_| QueueBroken("transmit ring unusable"))?;
                    continue;
                }
                drained = true;
                break;
            };
            let head = chain.head_index();
            let mut len = 0usize;
            let mut valid = true;
            self.tx_segments.clear();
            for desc in chain {
                let n = desc.len() as usize;
                if desc.is_write_only() || len + n > MAX_FRAME_LEN || !in_ram(&self.memory, desc.addr(), desc.len()) {
                    valid = false;
                    break;
                }
                self.tx_segments.push((desc.addr(), n));
                len += n;
            }
            if !valid || len < MIN_TX_LEN {
                tracing::debug!(len, valid, "virtio-net: malformed transmit chain dropped");
                self.counters.tx_dropped += 1;
            } else if len >= ZERO_COPY_TX_LEN {
                self.transmit_from_guest(len);
            } else {
                let mut offset = 0;
                for &(addr, n) in &self.tx_segments {
                    // Checked to be guest RAM above.
                    let _ = self.memory.read_slice(&mut self.tx_frame[offset..offset + n], addr);
                    offset += n;
                }
                self.transmit(len);
            }
            self.tx.add_used(&self.memory, head, 0).map_err(|_| QueueBroken("transmit used ring unusable"))?;
            used_any = true;
        }
        if used_any && self.tx.needs_notification(&self.memory).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
        if !self.injected.is_empty() {
            self.process_rx()?;
        }
        Ok(drained)
    }

    /// Writes the chain in `tx_segments` (`len` bytes, checked to be guest
    /// RAM) to the backend as one frame, without copying it.
    fn transmit_from_guest(&mut self, len: usize) {
        let mut guards = Vec::with_capacity(self.tx_segments.len());
        for &(addr, n) in &self.tx_segments {
            match self.memory.get_slice(addr, n) {
                Ok(slice) => guards.push((slice.ptr_guard(), n)),
                Err(_) => {
                    self.counters.tx_dropped += 1;
                    return;
                }
            }
        }
        let buffers: Vec<std::io::IoSlice<'_>> = guards
            .iter()
            .map(|(guard, n)| {
                // SAFETY: each guard keeps a live mapping of `n` bytes of guest
                // RAM (checked by get_slice); the guest may change the bytes while
                // the kernel copies them, which changes only what is sent.
                std::io::IoSlice::new(unsafe { std::slice::from_raw_parts(guard.as_ptr(), *n) })
            })
            .collect();
        self.count_write(self.backend.file().write_vectored(&buffers), len);
    }

    /// Counts a write of one `len`-byte frame to the backend.
    fn count_write(&mut self, result: std::io::Result<usize>, len: usize) {
        match result {
            Ok(written) if written == len => self.counters.tx_frames += 1,
            Ok(_) => self.counters.tx_dropped += 1,
            Err(e) => {
                if e.kind() != ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, "virtio-net: the backend refused a frame");
                }
                self.counters.tx_dropped += 1;
            }
        }
    }

    fn transmit(&mut self, len: usize) {
        let frame = &self.tx_frame[VNET_HDR_LEN..len];
        if let Some(dhcp) = &self.dhcp {
            if DhcpResponder::is_dhcp_request(frame) {
                if let Some(reply) = dhcp.answer(frame) {
                    if self.injected.len() == MAX_INJECTED {
                        self.injected.pop_front();
                    }
                    let mut with_header = vec![0u8; VNET_HDR_LEN];
                    with_header.extend_from_slice(&reply);
                    self.injected.push_back(with_header);
                    self.counters.dhcp_replies += 1;
                }
                return;
            }
        }
        // A tap (like a SOCK_SEQPACKET socket) takes a frame whole or not at all.
        let result = self.backend.file().write(&self.tx_frame[..len]);
        self.count_write(result, len);
    }

    /// Fills receive buffers: DHCP replies first, then the backend's frames,
    /// until either runs out.
    pub fn process_rx(&mut self) -> Result<(), QueueBroken> {
        self.starved = false;
        let mut used_any = false;
        let result = self.fill_rx(&mut used_any);
        if used_any && self.rx.needs_notification(&self.memory).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
        result
    }

    /// Takes receive chains for a frame of `len` bytes; counts the ones
    /// refused as dropped frames (each costs the guest what it would have held).
    fn take_rx_chains(&mut self, len: usize, used_any: &mut bool) -> Result<Room, QueueBroken> {
        let refused = self.rx_chains.take(&self.memory, &mut self.rx, len)?;
        if refused > 0 {
            tracing::debug!(refused, "virtio-net: malformed receive chains returned unused");
            self.counters.rx_dropped += refused;
            *used_any = true;
        }
        Ok(self.rx_chains.room_for(len))
    }

    /// Copies a frame held by the VMM (a DHCP reply, or a frame read before
    /// there were buffers enough for the largest) into receive chains.
    /// Returns false when it has to wait for the guest's buffers.
    fn copy_to_guest(&mut self, frame: &mut [u8], used_any: &mut bool) -> Result<bool, QueueBroken> {
        match self.take_rx_chains(frame.len(), used_any)? {
            Room::Wait => return Ok(false),
            Room::Never => {
                if !self.mergeable {
                    self.rx_chains.refuse_first(&self.memory, &mut self.rx)?;
                }
                self.counters.rx_dropped += 1;
            }
            Room::Fits => {
                self.rx_chains.copy_in(&self.memory, &mut self.rx, frame)?;
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += frame.len() as u64;
            }
        }
        *used_any = true;
        Ok(true)
    }

    fn fill_rx(&mut self, used_any: &mut bool) -> Result<(), QueueBroken> {
        while let Some(mut frame) = self.injected.pop_front() {
            if !self.copy_to_guest(&mut frame, used_any)? {
                self.injected.push_front(frame);
                return self.wait_for_rx_buffers();
            }
        }
        for _ in 0..MAX_FRAMES_PER_PASS {
            if let Some(len) = self.rx_pending {
                let mut frame = std::mem::take(&mut self.rx_frame);
                let delivered = self.copy_to_guest(&mut frame[..len], used_any);
                self.rx_frame = frame;
                if !delivered? {
                    return self.wait_for_rx_buffers();
                }
                self.rx_pending = None;
                continue;
            }
            let room = self.take_rx_chains(MAX_FRAME_LEN, used_any)?;
            if self.rx_chains.is_empty() {
                // The frame stays in the backend until the guest adds buffers.
                self.starved = true;
                return self.wait_for_rx_buffers();
            }
            let read = if self.mergeable && room != Room::Fits {
                // Held chains might be too few for the next frame: read it into
                // the VMM and copy it once they are enough.
                self.backend.file().read(&mut self.rx_frame).map(|len| (len, true))
            } else {
                self.rx_chains.read_from(&self.memory, self.backend.file(), &mut self.rx_frame).map(|len| (len, false))
            };
            let (len, in_vmm) = match read {
                Ok((0, _)) => return Ok(()),
                Ok(read) => read,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-net: reading the backend failed");
                    return Ok(());
                }
            };
            if len < MIN_TX_LEN {
                self.counters.rx_dropped += 1;
            } else if in_vmm {
                self.rx_pending = Some(len);
            } else if self.rx_chains.room_for(len) != Room::Fits {
                // Without MRG_RXBUF, longer than the chain: the rest went to rx_frame.
                self.rx_chains.refuse_first(&self.memory, &mut self.rx)?;
                self.counters.rx_dropped += 1;
                *used_any = true;
            } else {
                self.rx_chains.fill(&self.memory, &mut self.rx, len)?;
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += len as u64;
                *used_any = true;
            }
        }
        Ok(())
    }

    /// Asks for a kick when the guest adds buffers (with EVENT_IDX, only then).
    fn wait_for_rx_buffers(&mut self) -> Result<(), QueueBroken> {
        self.rx.enable_notification(&self.memory).map_err(|_| QueueBroken("receive ring unusable"))?;
        Ok(())
    }
}
