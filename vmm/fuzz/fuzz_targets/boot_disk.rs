//! cargo +nightly fuzz run boot_disk   (from vmm/)
//! A hostile disk image: partition tables, ext4 and FAT metadata, loader
//! configurations. Finding a kernel and copying it out must never panic.
#![no_main]

use std::sync::Arc;

use vmm::bootdisk::{self, BootDiskError, DiskRead};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let disk: Arc<dyn DiskRead> = Arc::new(data.to_vec());
    match bootdisk::find(disk.clone()) {
        Ok(choice) => {
            let kernel = choice.write_kernel(&disk, &mut std::io::sink());
            assert!(!matches!(kernel, Err(BootDiskError::Panicked)));
            let initrd = choice.write_initrd(&disk, &mut std::io::sink());
            assert!(!matches!(initrd, Err(BootDiskError::Panicked)));
        }
        Err(e) => assert!(!matches!(e, BootDiskError::Panicked)),
    }
});
