//! virtio-net over a tap: a receive and a transmit queue served by a worker
//! thread the device starts on activation and stops on reset. DHCP from the
//! guest is answered inside the VMM (see `crate::dhcp`) when the NIC's config
//! carries a lease.

pub mod datapath;
mod rx_chains;
pub mod tap;

use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1 as F_VERSION_1_BIT;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use datapath::{Datapath, NetCounters, QueueBroken, MAX_FRAME_LEN, MIN_TX_LEN};
pub use tap::{Backend, TapError, VNET_HDR_LEN};

use super::{ActivateError, ActiveQueue, Interrupt, VirtioDevice};
use crate::dhcp::DhcpResponder;
use crate::net_config::{MacAddr, NetConfig};

pub const DEVICE_TYPE_NET: u32 = VIRTIO_ID_NET;
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

const fn bit(n: u32) -> u64 {
    1 << n
}

/// Checksum and segmentation offloads, both ways.
pub const OFFLOAD_FEATURES: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6);
pub const FEATURES: u64 = bit(F_VERSION_1_BIT)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | OFFLOAD_FEATURES;

/// `struct virtio_net_config` up to `mtu`: mac, status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

/// The TUN_F_* offloads the tap may use on frames for the guest: those the
/// guest accepted (GUEST_CSUM, GUEST_TSO4/6).
pub fn tap_offload(features: u64) -> libc::c_uint {
    let mut flags = 0;
    if features & bit(VIRTIO_NET_F_GUEST_CSUM) != 0 {
        flags |= libc::TUN_F_CSUM;
        if features & bit(VIRTIO_NET_F_GUEST_TSO4) != 0 {
            flags |= libc::TUN_F_TSO4;
        }
        if features & bit(VIRTIO_NET_F_GUEST_TSO6) != 0 {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

pub struct Net {
    backend: Arc<Backend>,
    dhcp: Option<Arc<DhcpResponder>>,
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 2],
    worker: Option<Worker>,
}

struct Worker {
    kill: Arc<EventFd>,
    thread: JoinHandle<()>,
}

impl Net {
    /// A NIC as `config` describes it; opens its tap.
    pub fn new(config: &NetConfig) -> Result<Net, TapError> {
        let backend = Backend::open(&config.tap)?;
        Ok(Net::with_backend(backend, config))
    }

    /// A NIC on an already open backend (the tap `config` names is not opened).
    pub fn with_backend(backend: Backend, config: &NetConfig) -> Net {
        let dhcp = config.dhcp.clone().map(|lease| Arc::new(DhcpResponder::new(config.mac, config.mtu, lease)));
        Net {
            backend: Arc::new(backend),
            dhcp,
            config: config_space(config.mac, config.mtu),
            queue_sizes: [QUEUE_SIZE, QUEUE_SIZE],
            worker: None,
        }
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            let _ = worker.kill.write(1);
            let _ = worker.thread.join();
        }
    }
}

fn config_space(mac: MacAddr, mtu: u16) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    config[0..6].copy_from_slice(&mac.0);
    config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    config[8..10].copy_from_slice(&1u16.to_le_bytes());
    config[10..12].copy_from_slice(&mtu.to_le_bytes());
    config
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else { return };
        if start < CONFIG_LEN {
            let n = data.len().min(CONFIG_LEN - start);
            data[..n].copy_from_slice(&self.config[start..start + n]);
        }
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
        features: u64,
    ) -> Result<(), ActivateError> {
        let [mut rx, mut tx]: [ActiveQueue; 2] =
            queues.try_into().map_err(|q: Vec<_>| ActivateError::QueueCount { expected: 2, found: q.len() })?;
        self.stop_worker();
        let event_idx = features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        rx.queue.set_event_idx(event_idx);
        tx.queue.set_event_idx(event_idx);
        if let Err(e) = self.backend.set_offload(tap_offload(features)) {
            tracing::warn!(error = %e, "virtio-net: the tap refused the offloads; the guest may see dropped frames");
        }
        let mergeable = features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0;
        let notify = [rx.notify.clone(), tx.notify.clone()];
        let datapath =
            Datapath::new(memory, rx.queue, tx.queue, interrupt, self.backend.clone(), self.dhcp.clone(), mergeable);
        let kill = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?);
        let worker_kill = kill.clone();
        let backend = self.backend.clone();
        let thread = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || {
                crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::NetWorker);
                run_worker(datapath, notify, &backend, &worker_kill)
            })
            .map_err(ActivateError::Worker)?;
        self.worker = Some(Worker { kill, thread });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

/// Waits for kicks, backend input or the kill event, and moves frames.
fn run_worker(mut datapath: Datapath, notify: [Arc<EventFd>; 2], backend: &Backend, kill: &EventFd) {
    let broken = |e: QueueBroken, datapath: &Datapath| {
        tracing::warn!(error = %e, "virtio-net: device needs reset");
        datapath_interrupt(datapath);
    };
    // Buffers and frames may already be waiting from before activation.
    let mut ok = datapath.process_tx().and_then(|_| datapath.process_rx()).map_err(|e| broken(e, &datapath)).is_ok();
    // A backend that reports an error or hangup (its interface deleted) would
    // wake poll forever: it is not polled again, and the guest's frames to it are dropped.
    let mut backend_usable = true;
    loop {
        let backend_fd = if backend_usable { backend.file().as_raw_fd() } else { -1 };
        let backend_events = if ok && datapath.wants_backend_input() { libc::POLLIN } else { 0 };
        let mut fds = [
            libc::pollfd { fd: notify[RX].as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: notify[TX].as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: backend_fd, events: backend_events, revents: 0 },
            libc::pollfd { fd: kill.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: `fds` is a valid array of pollfds for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %std::io::Error::last_os_error(), "virtio-net worker: poll failed");
            return;
        }
        if fds[3].revents != 0 {
            return;
        }
        if fds[2].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            tracing::warn!(revents = fds[2].revents, "virtio-net: the tap failed; no more frames are received from it");
            backend_usable = false;
            fds[2].revents = 0;
        }
        if fds[RX].revents != 0 {
            let _ = notify[RX].read();
        }
        if fds[TX].revents != 0 {
            let _ = notify[TX].read();
        }
        if !ok {
            continue; // kicks are drained until the driver resets the device
        }
        let result = (|| {
            if fds[TX].revents != 0 {
                while !datapath.process_tx()? {
                    datapath.process_rx()?;
                }
            }
            if fds[RX].revents != 0 || fds[2].revents != 0 {
                datapath.process_rx()?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            broken(e, &datapath);
            ok = false;
        }
    }
}

fn datapath_interrupt(datapath: &Datapath) {
    datapath.interrupt().signal_needs_reset();
}

#[cfg(test)]
mod tests;
