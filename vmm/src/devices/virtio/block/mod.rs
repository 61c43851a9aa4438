//! virtio-blk over a disk image (raw or qcow2, `crate::image`): one request
//! queue, processed on a worker thread that the device starts on activation
//! and stops on reset.

mod request;

use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{ByteValued, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use request::{execute, Disk, ParseError, Request, RequestType, Segment, ID_BYTES, SECTOR_SIZE};
pub use request::{
    DISCARD_SECTOR_ALIGNMENT, MAX_DISCARD_RANGES, MAX_DISCARD_SECTORS, MAX_SEGMENTS, MAX_SEGMENT_BYTES,
    MAX_WRITE_ZEROES_RANGES, MAX_WRITE_ZEROES_SECTORS,
};
pub use request::{S_IOERR, S_OK, S_UNSUPP};

use super::{ActivateError, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::image::DiskImage;

pub const DEVICE_TYPE_BLOCK: u32 = VIRTIO_ID_BLOCK;
pub const QUEUE_SIZE: u16 = 256;

const F_SIZE_MAX: u64 = 1 << VIRTIO_BLK_F_SIZE_MAX;
const F_SEG_MAX: u64 = 1 << VIRTIO_BLK_F_SEG_MAX;
const F_RO: u64 = 1 << VIRTIO_BLK_F_RO;
const F_BLK_SIZE: u64 = 1 << VIRTIO_BLK_F_BLK_SIZE;
const F_FLUSH: u64 = 1 << VIRTIO_BLK_F_FLUSH;
const F_DISCARD: u64 = 1 << VIRTIO_BLK_F_DISCARD;
const F_WRITE_ZEROES: u64 = 1 << VIRTIO_BLK_F_WRITE_ZEROES;

/// The device's configuration space, laid out as `struct virtio_blk_config`.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ConfigSpace(virtio_blk_config);

// SAFETY: `virtio_blk_config` is `repr(C, packed)` and made of integers,
// integer arrays and `repr(C)` structs of them without padding (bindgen's
// layout assertions pin every size and offset): every byte is initialised
// and every byte pattern is a valid value.
unsafe impl ByteValued for ConfigSpace {}

impl ConfigSpace {
    /// Capacity and the limits `request` enforces, little-endian as virtio 1.x wants.
    fn new(capacity_sectors: u64) -> Self {
        ConfigSpace(virtio_blk_config {
            capacity: capacity_sectors.to_le(),
            size_max: MAX_SEGMENT_BYTES.to_le(),
            seg_max: (MAX_SEGMENTS as u32).to_le(),
            blk_size: (SECTOR_SIZE as u32).to_le(),
            max_discard_sectors: MAX_DISCARD_SECTORS.to_le(),
            max_discard_seg: MAX_DISCARD_RANGES.to_le(),
            discard_sector_alignment: DISCARD_SECTOR_ALIGNMENT.to_le(),
            max_write_zeroes_sectors: MAX_WRITE_ZEROES_SECTORS.to_le(),
            max_write_zeroes_seg: MAX_WRITE_ZEROES_RANGES.to_le(),
            write_zeroes_may_unmap: 1,
            ..Default::default()
        })
    }
}

pub struct Block {
    disk: Arc<Disk>,
    config: ConfigSpace,
    queue_sizes: [u16; 1],
    worker: Option<Worker>,
}

struct Worker {
    kill: Arc<EventFd>,
    thread: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("read the size of the disk")]
    Metadata(#[source] std::io::Error),
}

impl Block {
    /// A device for `image`, opened by the caller with the access it needs.
    /// The capacity is the disk's size in whole sectors.
    pub fn new(image: DiskImage, readonly: bool, serial: Option<&str>) -> Result<Block, BlockError> {
        let size = image.size().map_err(BlockError::Metadata)?;
        let capacity_sectors = size / SECTOR_SIZE;
        let mut id = [0u8; ID_BYTES];
        if let Some(serial) = serial {
            let n = serial.len().min(ID_BYTES);
            id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        }
        Ok(Block {
            disk: Arc::new(Disk { image, readonly, capacity_sectors, id }),
            config: ConfigSpace::new(capacity_sectors),
            queue_sizes: [QUEUE_SIZE],
            worker: None,
        })
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            let _ = worker.kill.write(1);
            let _ = worker.thread.join();
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let base = VIRTIO_F_VERSION_1 | F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH;
        if self.disk.readonly {
            base | F_RO
        } else {
            base | F_DISCARD | F_WRITE_ZEROES
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = self.config.as_slice();
        let Ok(start) = usize::try_from(offset) else { return };
        if start < config.len() {
            let n = data.len().min(config.len() - start);
            data[..n].copy_from_slice(&config[start..start + n]);
        }
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        mut queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount { expected: 1, found: queues.len() });
        }
        self.stop_worker();
        let active = queues.remove(0);
        let kill = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?);
        let disk = self.disk.clone();
        let worker_kill = kill.clone();
        let thread = std::thread::Builder::new()
            .name("virtio-blk".into())
            .spawn(move || {
                crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::BlockWorker);
                run_worker(memory, active, interrupt, disk, worker_kill)
            })
            .map_err(ActivateError::Worker)?;
        self.worker = Some(Worker { kill, thread });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

/// Waits for queue notifications (or the kill event) and serves the queue.
fn run_worker(
    memory: GuestMemoryMmap,
    mut active: ActiveQueue,
    interrupt: Arc<Interrupt>,
    disk: Arc<Disk>,
    kill: Arc<EventFd>,
) {
    let mut fds = [
        libc::pollfd { fd: active.notify.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: kill.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    // Requests may already be waiting from before activation.
    process_queue(&memory, &mut active, &interrupt, &disk);
    loop {
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %std::io::Error::last_os_error(), "virtio-blk worker: poll failed");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents != 0 {
            let _ = active.notify.read();
            process_queue(&memory, &mut active, &interrupt, &disk);
        }
    }
}

/// Serves every available request, then interrupts the driver once.
pub fn process_queue(memory: &GuestMemoryMmap, active: &mut ActiveQueue, interrupt: &Interrupt, disk: &Disk) {
    let queue = &mut active.queue;
    let mut used_any = false;
    loop {
        let chains: Vec<_> = match queue.iter(memory) {
            Ok(iter) => iter.collect(),
            Err(e) => {
                tracing::warn!(error = ?e, "virtio-blk: the available ring is corrupt; device needs reset");
                interrupt.signal_needs_reset();
                return;
            }
        };
        if chains.is_empty() {
            break;
        }
        for chain in chains {
            let head = chain.head_index();
            let written = match Request::parse(memory, chain) {
                Ok(request) => execute(memory, disk, &request).1,
                Err(error) => {
                    tracing::debug!(%error, "virtio-blk: malformed request");
                    if let Some(status) = error.status {
                        let _ = vm_memory::Bytes::write_obj(memory, S_IOERR, status);
                        1
                    } else {
                        0
                    }
                }
            };
            if let Err(e) = queue.add_used(memory, head, written) {
                tracing::warn!(error = ?e, "virtio-blk: cannot return a used buffer; device needs reset");
                interrupt.signal_needs_reset();
                return;
            }
            used_any = true;
        }
    }
    if used_any && queue.needs_notification(memory).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
}

#[cfg(test)]
mod tests;
