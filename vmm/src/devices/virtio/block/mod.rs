//! virtio-blk over a raw image file: one request queue, processed on a
//! worker thread that the device starts on activation and stops on reset.

mod request;

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use request::{execute, Disk, ParseError, Request, RequestType, Segment, ID_BYTES, MAX_SEGMENTS, SECTOR_SIZE};
pub use request::{S_IOERR, S_OK, S_UNSUPP};

use super::{ActivateError, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

pub const DEVICE_TYPE_BLOCK: u32 = 2;
pub const QUEUE_SIZE: u16 = 256;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

/// Largest DISCARD / WRITE_ZEROES request, in sectors (1 GiB).
const MAX_DISCARD_SECTORS: u32 = 1 << 21;

pub struct Block {
    disk: Arc<Disk>,
    config: [u8; 60],
    queue_sizes: [u16; 1],
    worker: Option<Worker>,
}

struct Worker {
    kill: Arc<EventFd>,
    thread: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("read the size of the disk: {0}")]
    Metadata(std::io::Error),
}

impl Block {
    /// A device for `file`, opened by the caller with the access it needs.
    /// The capacity is the file size in whole sectors.
    pub fn new(file: File, readonly: bool, serial: Option<&str>) -> Result<Block, BlockError> {
        let size = file.metadata().map_err(BlockError::Metadata)?.len();
        let capacity_sectors = size / SECTOR_SIZE;
        let mut id = [0u8; ID_BYTES];
        if let Some(serial) = serial {
            let n = serial.len().min(ID_BYTES);
            id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        }
        let mut config = [0u8; 60];
        config[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        config[12..16].copy_from_slice(&(MAX_SEGMENTS as u32).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        config[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        config[40..44].copy_from_slice(&1u32.to_le_bytes());
        config[44..48].copy_from_slice(&1u32.to_le_bytes());
        config[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        config[52..56].copy_from_slice(&1u32.to_le_bytes());
        config[56] = 1; // write_zeroes_may_unmap
        Ok(Block {
            disk: Arc::new(Disk { file, readonly, capacity_sectors, id }),
            config,
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
        let base = VIRTIO_F_VERSION_1 | F_SEG_MAX | F_BLK_SIZE | F_FLUSH;
        if self.disk.readonly {
            base | F_RO
        } else {
            base | F_DISCARD | F_WRITE_ZEROES
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else { return };
        if start < self.config.len() {
            let n = data.len().min(self.config.len() - start);
            data[..n].copy_from_slice(&self.config[start..start + n]);
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
            .spawn(move || run_worker(memory, active, interrupt, disk, worker_kill))
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
