//! virtio-blk device throughput without a guest: requests are placed in a
//! split queue in guest memory, as a driver would, and served by the same
//! queue processing the device's worker runs; the same I/O is then done
//! directly on the file with pread/pwrite. One table, side by side.
//!
//! `cargo bench -p kvmlet-vmm --bench block_throughput`

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::irq::IrqLine;
use vmm::devices::virtio::block::{process_queue, Disk, ID_BYTES, QUEUE_SIZE, SECTOR_SIZE};
use vmm::devices::virtio::guest_queue::GuestQueue;
use vmm::devices::virtio::{ActiveQueue, Interrupt};
use vmm::image::DiskImage;
use vmm_sys_util::eventfd::EventFd;

const DISK_BYTES: u64 = 256 << 20;
const MEMORY: usize = 96 << 20;
const QUEUE_BASE: u64 = 0x1000;
const HEADERS: u64 = 0x10_0000; // one 16-byte header and status byte per slot
const DATA: u64 = 0x20_0000; // data buffers
const IN_FLIGHT: u16 = 32;

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    block: u64,
    write: bool,
    random: bool,
    requests: u64,
}

struct Rig {
    mem: GuestMemoryMmap,
    driver: GuestQueue,
    active: ActiveQueue,
    interrupt: Interrupt,
    disk: Disk,
}

fn rig(file: &File) -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap();
    let driver = GuestQueue::new(QUEUE_BASE, QUEUE_SIZE);
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_desc_table_address(Some(driver.desc_table as u32), Some(0));
    queue.set_avail_ring_address(Some(driver.avail_ring as u32), Some(0));
    queue.set_used_ring_address(Some(driver.used_ring as u32), Some(0));
    queue.set_ready(true);
    let disk = Disk {
        image: DiskImage::Raw(file.try_clone().unwrap()),
        readonly: false,
        capacity_sectors: DISK_BYTES / SECTOR_SIZE,
        id: [0; ID_BYTES],
    };
    let active = ActiveQueue { queue, notify: Arc::new(EventFd::new(0).unwrap()) };
    Rig { mem, driver, active, interrupt: Interrupt::new(IrqLine::new().unwrap()), disk }
}

/// xorshift: reproducible offsets without a dependency.
fn offsets(workload: Workload) -> Vec<u64> {
    let slots = DISK_BYTES / workload.block;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..workload.requests)
        .map(|i| {
            if workload.random {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % slots) * workload.block
            } else {
                (i % slots) * workload.block
            }
        })
        .collect()
}

fn through_device(rig: &mut Rig, workload: Workload, offsets: &[u64]) -> Duration {
    let start = Instant::now();
    for batch in offsets.chunks(usize::from(IN_FLIGHT)) {
        for (slot, offset) in batch.iter().enumerate() {
            let header = HEADERS + slot as u64 * 32;
            let data = DATA + slot as u64 * workload.block;
            rig.mem.write_obj(u32::from(workload.write), GuestAddress(header)).unwrap();
            rig.mem.write_obj(offset / SECTOR_SIZE, GuestAddress(header + 8)).unwrap();
            rig.driver.add_chain(
                &rig.mem,
                &[(header, 16, false), (data, workload.block as u32, !workload.write), (header + 16, 1, true)],
            );
        }
        process_queue(&rig.mem, &mut rig.active, &rig.interrupt, &rig.disk);
        let status: u8 = rig.mem.read_obj(GuestAddress(HEADERS + 16)).unwrap();
        assert_eq!(status, 0, "{} request failed", workload.name);
    }
    start.elapsed()
}

/// The same I/O with pread/pwrite, rotating through as many buffers as the
/// device path has requests in flight, so both touch the same amount of memory.
fn direct(file: &File, workload: Workload, offsets: &[u64]) -> Duration {
    let mut buffers = vec![vec![0x5au8; workload.block as usize]; usize::from(IN_FLIGHT)];
    let start = Instant::now();
    for (i, offset) in offsets.iter().enumerate() {
        let buffer = &mut buffers[i % usize::from(IN_FLIGHT)];
        if workload.write {
            file.write_all_at(buffer, *offset).unwrap();
        } else {
            file.read_exact_at(buffer, *offset).unwrap();
        }
    }
    start.elapsed()
}

fn main() {
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(&vec![0x11u8; DISK_BYTES as usize], 0).unwrap();
    file.sync_all().unwrap();
    let mut rig = rig(&file);
    let workloads = [
        Workload { name: "4 KiB random read", block: 4096, write: false, random: true, requests: 50_000 },
        Workload { name: "4 KiB random write", block: 4096, write: true, random: true, requests: 50_000 },
        Workload { name: "1 MiB sequential read", block: 1 << 20, write: false, random: false, requests: 1024 },
        Workload { name: "1 MiB sequential write", block: 1 << 20, write: true, random: false, requests: 1024 },
    ];
    println!(
        "\nvirtio-blk device model vs direct file I/O (page cache, {} MiB file, {IN_FLIGHT} requests in flight)",
        DISK_BYTES >> 20
    );
    println!(
        "{:<26}{:>14}{:>14}{:>14}{:>14}{:>10}",
        "workload", "device MiB/s", "device req/s", "direct MiB/s", "direct req/s", "ratio"
    );
    for workload in workloads {
        let offsets = offsets(workload);
        // Warm up both paths once, then measure.
        through_device(&mut rig, workload, &offsets[..offsets.len() / 10]);
        direct(&file, workload, &offsets[..offsets.len() / 10]);
        let device = through_device(&mut rig, workload, &offsets);
        let plain = direct(&file, workload, &offsets);
        let mib = (workload.requests * workload.block) as f64 / f64::from(1 << 20);
        let rate = |d: Duration| (mib / d.as_secs_f64(), workload.requests as f64 / d.as_secs_f64());
        let (device_mib, device_iops) = rate(device);
        let (direct_mib, direct_iops) = rate(plain);
        println!(
            "{:<26}{:>14.0}{:>14.0}{:>14.0}{:>14.0}{:>9.0}%",
            workload.name,
            device_mib,
            device_iops,
            direct_mib,
            direct_iops,
            100.0 * device_mib / direct_mib
        );
    }
}
