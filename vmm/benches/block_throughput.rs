//! virtio-blk device throughput without a guest: requests are placed in a
//! split queue in guest memory, as a driver would, and served by the same
//! queue processing the device's worker runs, on a raw file, on a qcow2
//! image with every cluster allocated, and on a fresh qcow2 overlay over the
//! raw file (its first write to each 64 KiB cluster copies the rest of the
//! cluster up from the base); the same I/O is then done directly on the raw
//! file with pread/pwrite. One table, side by side.
//!
//! `cargo bench -p kvmlet-vmm --bench block_throughput`

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imago::FormatCreateBuilder;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::irq::IrqLine;
use vmm::devices::virtio::block::{process_queue, Disk, ID_BYTES, QUEUE_SIZE, SECTOR_SIZE};
use vmm::devices::virtio::guest_queue::GuestQueue;
use vmm::devices::virtio::{ActiveQueue, Interrupt};
use vmm::image::{DiskImage, ImageFiles};
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

fn rig(image: DiskImage) -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap();
    let driver = GuestQueue::new(QUEUE_BASE, QUEUE_SIZE);
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_desc_table_address(Some(driver.desc_table as u32), Some(0));
    queue.set_avail_ring_address(Some(driver.avail_ring as u32), Some(0));
    queue.set_used_ring_address(Some(driver.used_ring as u32), Some(0));
    queue.set_ready(true);
    let disk = Disk { image, readonly: false, capacity_sectors: DISK_BYTES / SECTOR_SIZE, id: [0; ID_BYTES] };
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

/// A qcow2 image of `DISK_BYTES` with every cluster written (allocated).
fn allocated_qcow2(path: &Path) -> DiskImage {
    let storage = imago::file::File::try_from(File::create_new(path).unwrap()).unwrap();
    imago::qcow2::Qcow2::<imago::file::File>::create_builder(storage).size(DISK_BYTES).create().unwrap();
    let image = ImageFiles::open(path, false, &[]).unwrap().into_image(true).unwrap();
    let DiskImage::Qcow2(qcow2) = &image else { unreachable!("a qcow2 file") };
    let mut chunk = vec![0x11u8; 1 << 20];
    for offset in (0..DISK_BYTES).step_by(chunk.len()) {
        qcow2.write(&[vm_memory::VolatileSlice::from(&mut chunk[..])], offset).unwrap();
    }
    qcow2.flush().unwrap();
    image
}

/// A new qcow2 overlay over the raw file at `base`.
fn overlay(path: &Path, base: &Path) -> DiskImage {
    vmm::image::create_overlay(File::create_new(path).unwrap(), base).unwrap();
    ImageFiles::open(path, false, &[base.to_path_buf()]).unwrap().into_image(true).unwrap()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("disk.raw");
    let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&raw_path).unwrap();
    file.write_all_at(&vec![0x11u8; DISK_BYTES as usize], 0).unwrap();
    file.sync_all().unwrap();
    let mut raw = rig(DiskImage::Raw(file.try_clone().unwrap()));
    let mut qcow2 = rig(allocated_qcow2(&dir.path().join("allocated.qcow2")));
    let mut overlay = rig(overlay(&dir.path().join("overlay.qcow2"), &raw_path));
    let workloads = [
        Workload { name: "4 KiB random read", block: 4096, write: false, random: true, requests: 50_000 },
        Workload { name: "4 KiB random write", block: 4096, write: true, random: true, requests: 50_000 },
        Workload { name: "1 MiB sequential read", block: 1 << 20, write: false, random: false, requests: 1024 },
        Workload { name: "1 MiB sequential write", block: 1 << 20, write: true, random: false, requests: 1024 },
    ];
    println!(
        "\nvirtio-blk device model, raw and qcow2, vs direct file I/O (page cache, {} MiB disk, {IN_FLIGHT} requests in flight; MiB/s)",
        DISK_BYTES >> 20
    );
    println!(
        "{:<24}{:>9}{:>9}{:>12}{:>9}{:>14}{:>9}{:>12}{:>12}",
        "workload", "raw", "qcow2", "qcow2/raw", "overlay", "overlay/raw", "direct", "raw/direct", "raw req/s"
    );
    for workload in workloads {
        let offsets = offsets(workload);
        let mib = (workload.requests * workload.block) as f64 / f64::from(1 << 20);
        let rate = |d: Duration| mib / d.as_secs_f64();
        // Warm up every path once, then measure; the overlay has no warm-up,
        // so that its first writes still allocate.
        through_device(&mut raw, workload, &offsets[..offsets.len() / 10]);
        through_device(&mut qcow2, workload, &offsets[..offsets.len() / 10]);
        direct(&file, workload, &offsets[..offsets.len() / 10]);
        let raw_time = through_device(&mut raw, workload, &offsets);
        let qcow2_time = through_device(&mut qcow2, workload, &offsets);
        let overlay_time = through_device(&mut overlay, workload, &offsets);
        let direct_time = direct(&file, workload, &offsets);
        let (raw_mib, qcow2_mib, overlay_mib) = (rate(raw_time), rate(qcow2_time), rate(overlay_time));
        let direct_mib = rate(direct_time);
        println!(
            "{:<24}{:>9.0}{:>9.0}{:>11.0}%{:>9.0}{:>13.0}%{:>9.0}{:>11.0}%{:>12.0}",
            workload.name,
            raw_mib,
            qcow2_mib,
            100.0 * qcow2_mib / raw_mib,
            overlay_mib,
            100.0 * overlay_mib / raw_mib,
            direct_mib,
            100.0 * raw_mib / direct_mib,
            workload.requests as f64 / raw_time.as_secs_f64()
        );
    }
}
