//! Frames between the guest's queues and the backend. The guest's chains are
//! hostile: every length is bounded by `MAX_FRAME_LEN` or by what was checked
//! to be guest RAM, nothing is allocated in proportion to what the guest
//! claims, and a chain that breaks a rule costs the guest its frame (the
//! buffer is returned, used length 0), never the VMM.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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

/// What happened to one frame offered to the receive queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Not enough buffers yet; nothing was consumed.
    NoBuffers,
    /// The guest's buffers broke a rule; they were returned unused.
    Dropped,
}

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
    mergeable_rx: bool,
    /// One frame read from the backend, waiting for receive buffers.
    rx_frame: Vec<u8>,
    rx_pending: Option<usize>,
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
        mergeable_rx: bool,
    ) -> Self {
        Datapath {
            memory,
            rx,
            tx,
            interrupt,
            backend,
            dhcp,
            mergeable_rx,
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_pending: None,
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
    /// already waits for buffers.
    pub fn wants_backend_input(&self) -> bool {
        self.rx_pending.is_none() && self.injected.is_empty()
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
        let mut used_any = false;
        let result = self.fill_rx(&mut used_any);
        if used_any && self.rx.needs_notification(&self.memory).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
        result
    }

    fn fill_rx(&mut self, used_any: &mut bool) -> Result<(), QueueBroken> {
        while let Some(mut frame) = self.injected.pop_front() {
            match deliver(&self.memory, &mut self.rx, self.mergeable_rx, &mut frame)? {
                Delivery::NoBuffers => {
                    self.injected.push_front(frame);
                    return self.wait_for_rx_buffers();
                }
                Delivery::Delivered => self.counters.rx_frames += 1,
                Delivery::Dropped => self.counters.rx_dropped += 1,
            }
            *used_any = true;
        }
        for _ in 0..MAX_FRAMES_PER_PASS {
            let len = match self.rx_pending.take() {
                Some(len) => len,
                None => match self.backend.file().read(&mut self.rx_frame) {
                    Ok(len) if len >= MIN_TX_LEN => len,
                    Ok(0) => return Ok(()),
                    Ok(_) => {
                        self.counters.rx_dropped += 1;
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "virtio-net: reading the backend failed");
                        return Ok(());
                    }
                },
            };
            match deliver(&self.memory, &mut self.rx, self.mergeable_rx, &mut self.rx_frame[..len])? {
                Delivery::NoBuffers => {
                    self.rx_pending = Some(len);
                    return self.wait_for_rx_buffers();
                }
                Delivery::Delivered => {
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += len as u64;
                }
                Delivery::Dropped => self.counters.rx_dropped += 1,
            }
            *used_any = true;
        }
        Ok(())
    }

    /// Asks for a kick when the guest adds buffers (with EVENT_IDX, only then).
    fn wait_for_rx_buffers(&mut self) -> Result<(), QueueBroken> {
        self.rx.enable_notification(&self.memory).map_err(|_| QueueBroken("receive ring unusable"))?;
        Ok(())
    }
}

/// Puts one frame (its 12-byte header first) in the receive queue: one chain,
/// or with MRG_RXBUF as many as it takes, `num_buffers` telling how many.
pub fn deliver(
    memory: &GuestMemoryMmap,
    rx: &mut Queue,
    mergeable: bool,
    frame: &mut [u8],
) -> Result<Delivery, QueueBroken> {
    struct Chain {
        head: u16,
        segments: Vec<(GuestAddress, u32)>,
    }
    let mut chains: Vec<Chain> = Vec::new();
    let mut capacity = 0u64;
    let mut broken = false;
    while capacity < frame.len() as u64 {
        if !mergeable && !chains.is_empty() {
            broken = true; // one chain must hold the frame
            break;
        }
        let next = rx.iter(memory).map_err(|_| QueueBroken("receive ring corrupt"))?.next();
        let Some(chain) = next else {
            for _ in &chains {
                rx.go_to_previous_position();
            }
            return Ok(Delivery::NoBuffers);
        };
        let mut this = Chain { head: chain.head_index(), segments: Vec::new() };
        for desc in chain {
            if !desc.is_write_only() || !in_ram(memory, desc.addr(), desc.len()) {
                broken = true;
                break;
            }
            if desc.len() > 0 {
                this.segments.push((desc.addr(), desc.len()));
                capacity += u64::from(desc.len());
            }
        }
        let first_too_short = chains.is_empty() && capacity < VNET_HDR_LEN as u64;
        chains.push(this);
        if broken || first_too_short {
            broken = true;
            break;
        }
    }
    if broken {
        for chain in &chains {
            rx.add_used(memory, chain.head, 0).map_err(|_| QueueBroken("receive used ring unusable"))?;
        }
        return Ok(Delivery::Dropped);
    }
    // num_buffers, the last field of virtio_net_hdr_v1.
    frame[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
    let mut offset = 0usize;
    for chain in &chains {
        let start = offset;
        for &(addr, len) in &chain.segments {
            let n = (len as usize).min(frame.len() - offset);
            if n == 0 {
                break;
            }
            // The range was checked to be guest RAM above; a failure here is a bug, not the guest's.
            if let Err(e) = memory.write_slice(&frame[offset..offset + n], addr) {
                tracing::warn!(error = %e, "virtio-net: writing a receive buffer failed");
            }
            offset += n;
        }
        rx.add_used(memory, chain.head, (offset - start) as u32)
            .map_err(|_| QueueBroken("receive used ring unusable"))?;
    }
    Ok(Delivery::Delivered)
}
