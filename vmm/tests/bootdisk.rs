//! `vmm::bootdisk` on disks made by the real tools (sfdisk, sgdisk,
//! mkfs.ext4 -d, mkfs.fat + mtools), as a distribution's installer or image
//! builder leaves them, and on hostile ones.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vmm::bootdisk::{self, BootChoice, BootDiskError, DiskRead, FsError};

const MIB: u64 = 1 << 20;
const ROOT_UUID: &str = "0e2a9c4d-7f51-4c1e-9d0b-6a1f3e5b7c21";
const BOOT_UUID: &str = "b007b007-1111-4222-8333-944455556666";

/// Fails with an install hint when a tool is missing (scripts/install-deps installs them).
fn tool(name: &str, package: &str) -> PathBuf {
    let found =
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("`{name}` is missing: run scripts/install-deps (Debian package `{package}`)"))
}

fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A tree of files: (path, contents) or (path, "-> target") for a symlink.
fn tree(dir: &Path, files: &[(&str, &[u8])]) {
    for (path, contents) in files {
        let path = dir.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        match contents.strip_prefix(b"-> ") {
            Some(target) => std::os::unix::fs::symlink(std::str::from_utf8(target).unwrap(), &path).unwrap(),
            None => std::fs::write(&path, contents).unwrap(),
        }
    }
}

/// An ext4 file system of `mib` MiB holding `files`, with UUID `uuid`.
fn ext4(work: &Path, mib: u64, uuid: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let dir = tempfile::tempdir_in(work).unwrap();
    tree(dir.path(), files);
    let image = work.join(format!("ext4-{uuid}.img"));
    let mkfs = tool("mkfs.ext4", "e2fsprogs");
    run(Command::new(mkfs).args(["-q", "-F", "-U", uuid, "-d"]).arg(dir.path()).arg(&image).arg(format!("{mib}M")));
    std::fs::read(image).unwrap()
}

/// A FAT file system of `kib` KiB with volume id `id`, files copied in with mtools.
fn fat(work: &Path, kib: u64, id: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let dir = tempfile::tempdir_in(work).unwrap();
    tree(dir.path(), files);
    let image = work.join(format!("fat-{id}.img"));
    run(Command::new(tool("mkfs.fat", "dosfstools")).args(["-C", "-i", id]).arg(&image).arg(kib.to_string()));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap().path();
        run(Command::new(tool("mcopy", "mtools")).arg("-s").arg("-i").arg(&image).arg(&entry).arg("::/"));
    }
    std::fs::read(image).unwrap()
}

/// A disk of `mib` MiB partitioned by `table` (an sfdisk script, or sgdisk
/// arguments after `gpt:`), with each file system written at its partition's start.
fn make_disk(work: &Path, mib: u64, table: &str, filesystems: &[(u64, Vec<u8>)]) -> PathBuf {
    let path = work.join("disk.img");
    let _ = std::fs::remove_file(&path);
    std::fs::File::create(&path).unwrap().set_len(mib * MIB).unwrap();
    if let Some(args) = table.strip_prefix("gpt:") {
        run(Command::new(tool("sgdisk", "gdisk")).args(args.split(' ')).arg(&path));
    } else {
        let mut child = Command::new(tool("sfdisk", "fdisk"))
            .args(["--no-reread", "--no-tell-kernel", "-q"])
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(table.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "sfdisk {table}");
    }
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (start_sector, image) in filesystems {
        std::os::unix::fs::FileExt::write_all_at(&file, image, start_sector * 512).unwrap();
    }
    path
}

fn open(path: &Path) -> Arc<dyn DiskRead> {
    Arc::new(vmm::image::ImageFiles::open(path, true, &[]).unwrap().into_image(false).unwrap())
}

fn kernel_bytes(choice: &BootChoice, disk: &Arc<dyn DiskRead>) -> Vec<u8> {
    let mut out = Vec::new();
    choice.write_kernel(disk, &mut out).unwrap();
    out
}

fn initrd_bytes(choice: &BootChoice, disk: &Arc<dyn DiskRead>) -> Vec<u8> {
    let mut out = Vec::new();
    let n = choice.write_initrd(disk, &mut out).unwrap();
    assert_eq!(n, out.len() as u64);
    assert_eq!(n, choice.initrd_len());
    out
}

const GRUB_CFG: &str = r#"
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
else
   set default="Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-10-amd64"
fi
menuentry 'Debian GNU/Linux' --class debian {
	search --no-floppy --fs-uuid --set=root BOOT_UUID
	linux	/vmlinuz-6.1.0-9-amd64 root=UUID=ROOT_UUID ro quiet
	initrd	/initrd.img-6.1.0-9-amd64
}
submenu 'Advanced options for Debian GNU/Linux' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-10-amd64' --class debian {
		search --no-floppy --fs-uuid --set=root BOOT_UUID
		linux	/vmlinuz-6.1.0-10-amd64 root=UUID=ROOT_UUID ro console=ttyS0
		initrd	/initrd.img-6.1.0-10-amd64
	}
}
"#;

#[test]
fn mbr_with_a_separate_boot_partition_and_grub_cfg() {
    let work = tempfile::tempdir().unwrap();
    let cfg = GRUB_CFG.replace("BOOT_UUID", BOOT_UUID).replace("ROOT_UUID", ROOT_UUID);
    // Partition 1 is /boot (grub.cfg in /grub), partition 5 (logical) the root.
    let boot = ext4(
        work.path(),
        8,
        BOOT_UUID,
        &[
            ("grub/grub.cfg", cfg.as_bytes()),
            ("vmlinuz-6.1.0-9-amd64", b"old kernel"),
            ("vmlinuz-6.1.0-10-amd64", b"new kernel"),
            ("initrd.img-6.1.0-10-amd64", b"initrd!"),
        ],
    );
    let root = ext4(work.path(), 8, ROOT_UUID, &[("etc/hostname", b"debian\n")]);
    let table = "label: dos\nstart=2048, size=16384, type=83, bootable\nstart=18432, type=5\nstart=20480, size=16384, type=83\n";
    let path = make_disk(work.path(), 48, table, &[(2048, boot), (20480, root)]);
    let disk = open(&path);
    let choice = bootdisk::find(disk.clone()).unwrap();
    assert_eq!(choice.kernel.path, "/vmlinuz-6.1.0-10-amd64");
    assert_eq!(choice.kernel.partition.number, 1);
    assert_eq!(choice.cmdline, format!("root=UUID={ROOT_UUID} ro console=ttyS0"));
    assert_eq!(
        choice.describe("rootdisk"),
        "kernel /vmlinuz-6.1.0-10-amd64 from /grub/grub.cfg menuentry \"Debian GNU/Linux, with Linux 6.1.0-10-amd64\" \
         (default \"Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-10-amd64\") on disk rootdisk \
         partition 1"
    );
    assert_eq!(kernel_bytes(&choice, &disk), b"new kernel");
    assert_eq!(initrd_bytes(&choice, &disk), b"initrd!\0", "padded to 4 bytes");

    // The same grub.cfg on the root partition with paths under /boot,
    // booted by a title that names nothing: the first entry.
    let cfg = cfg.replace("/vmlinuz", "/boot/vmlinuz").replace("/initrd", "/boot/initrd").replace(BOOT_UUID, ROOT_UUID);
    let cfg = cfg.replace("set default=\"Advanced options", "set default=\"Nowhere");
    let root = ext4(
        work.path(),
        8,
        ROOT_UUID,
        &[
            ("boot/grub/grub.cfg", cfg.as_bytes()),
            ("boot/vmlinuz-6.1.0-9-amd64", b"old kernel"),
            ("boot/initrd.img-6.1.0-9-amd64", b"old initrd"),
        ],
    );
    let path = make_disk(work.path(), 16, "label: dos\nstart=2048, type=83\n", &[(2048, root)]);
    let choice = bootdisk::find(open(&path)).unwrap();
    assert_eq!(choice.kernel.path, "/boot/vmlinuz-6.1.0-9-amd64");
    assert!(choice.source.contains("names no entry; the first menuentry"), "{}", choice.source);
    assert_eq!(choice.cmdline, format!("root=UUID={ROOT_UUID} ro quiet"));
}

#[test]
fn gpt_with_an_esp_and_bls_entries() {
    let work = tempfile::tempdir().unwrap();
    let machine = "6a9857a393724b7a981ebb5b8495b9ea";
    let entry = |version: &str| {
        format!(
            "title Fedora Linux ({version})\nversion {version}\nmachine-id {machine}\n\
             linux /{machine}/{version}/linux\ninitrd /{machine}/{version}/microcode\n\
             initrd /{machine}/{version}/initrd\noptions root=UUID={ROOT_UUID} ro\noptions console=ttyS0\n"
        )
    };
    let (e1, e2, e3) = (entry("6.5.6-300.fc39"), entry("6.10.2-200.fc40"), entry("6.9.1-100.fc40"));
    let kernel = |v: &str| format!("{machine}/{v}/linux");
    let (k1, k2, k3) = (kernel("6.5.6-300.fc39"), kernel("6.10.2-200.fc40"), kernel("6.9.1-100.fc40"));
    let (m2, i2) = (format!("{machine}/6.10.2-200.fc40/microcode"), format!("{machine}/6.10.2-200.fc40/initrd"));
    let esp = fat(
        work.path(),
        16 << 10,
        "1234ABCD",
        &[
            ("loader/entries/fedora-6.5.6.conf", e1.as_bytes()),
            ("loader/entries/fedora-6.10.2.conf", e2.as_bytes()),
            ("loader/entries/fedora-6.9.1.conf", e3.as_bytes()),
            ("EFI/BOOT/BOOTX64.EFI", b"MZ"),
            (&k1, b"6.5"),
            (&k2, b"6.10"),
            (&k3, b"6.9"),
            (&m2, b"micro"),
            (&i2, b"init"),
        ],
    );
    let root = ext4(work.path(), 8, ROOT_UUID, &[("etc/os-release", b"ID=fedora\n")]);
    let args = "gpt:-n 1:2048:+16M -t 1:ef00 -n 2:0:+8M -t 2:8300";
    let path = make_disk(work.path(), 32, args, &[(2048, esp), (2048 + 16 * 2048, root)]);
    let disk = open(&path);
    let choice = bootdisk::find(disk.clone()).unwrap();
    assert_eq!(choice.kernel.path, format!("/{k2}"), "the newest version");
    assert!(choice.kernel.partition.esp);
    assert_eq!(choice.cmdline, format!("root=UUID={ROOT_UUID} ro console=ttyS0"));
    assert!(choice.source.starts_with("/loader/entries/fedora-6.10.2.conf \"Fedora Linux (6.10.2-200.fc40)\""));
    assert_eq!(kernel_bytes(&choice, &disk), b"6.10");
    assert_eq!(initrd_bytes(&choice, &disk), b"micro\0\0\0init", "both initrds, each padded");
}

#[test]
fn whole_disk_ext4_with_extlinux_and_a_fat_disk_with_syslinux() {
    let work = tempfile::tempdir().unwrap();
    let conf = "DEFAULT virt\nLABEL virt\n  MENU LABEL Linux virt\n  LINUX vmlinuz-virt\n  INITRD initramfs-virt\n  APPEND root=/dev/vda quiet\n";
    let path = work.path().join("whole.img");
    let image = ext4(
        work.path(),
        8,
        ROOT_UUID,
        &[
            ("boot/extlinux/extlinux.conf", conf.as_bytes()),
            ("boot/extlinux/vmlinuz-virt", b"virt"),
            ("boot/extlinux/initramfs-virt", b"ram!"),
        ],
    );
    std::fs::write(&path, image).unwrap();
    let disk = open(&path);
    let choice = bootdisk::find(disk.clone()).unwrap();
    assert_eq!(choice.kernel.path, "/boot/extlinux/vmlinuz-virt", "relative to the file's directory");
    assert_eq!(choice.kernel.partition.number, 0);
    assert_eq!(choice.cmdline, "root=/dev/vda quiet");
    assert_eq!(
        choice.describe("root"),
        "kernel /boot/extlinux/vmlinuz-virt from /boot/extlinux/extlinux.conf label \"Linux virt\" (DEFAULT virt) \
         on disk root (whole-disk file system)"
    );
    assert_eq!(initrd_bytes(&choice, &disk), b"ram!");

    let conf = "default linux\nlabel linux\n  kernel /VMLINUZ\n  append initrd=/INITRD.GZ console=ttyS0\n";
    let image = fat(
        work.path(),
        4 << 10,
        "0000BEEF",
        &[("syslinux.cfg", conf.as_bytes()), ("VMLINUZ", b"k"), ("INITRD.GZ", b"i")],
    );
    std::fs::write(&path, image).unwrap();
    let disk = open(&path);
    let choice = bootdisk::find(disk.clone()).unwrap();
    assert_eq!((choice.kernel.path.as_str(), choice.cmdline.as_str()), ("/VMLINUZ", "console=ttyS0"));
    assert_eq!(initrd_bytes(&choice, &disk), b"i\0\0\0");
}

#[test]
fn vmlinuz_symlinks_without_a_loader_boot_with_the_file_systems_uuid() {
    let work = tempfile::tempdir().unwrap();
    let root = ext4(
        work.path(),
        8,
        ROOT_UUID,
        &[
            ("vmlinuz", b"-> boot/vmlinuz-6.1.0-10-amd64"),
            ("initrd.img", b"-> boot/initrd.img-6.1.0-10-amd64"),
            ("boot/vmlinuz-6.1.0-10-amd64", b"kernel"),
            ("boot/initrd.img-6.1.0-10-amd64", b"initrd"),
        ],
    );
    let path = make_disk(work.path(), 16, "gpt:-n 1:2048:0 -t 1:8300", &[(2048, root)]);
    let disk = open(&path);
    let choice = bootdisk::find(disk.clone()).unwrap();
    assert_eq!(choice.kernel.path, "/boot/vmlinuz-6.1.0-10-amd64");
    assert_eq!(choice.cmdline, format!("root=UUID={ROOT_UUID} ro"));
    assert_eq!(choice.source, "/vmlinuz (no loader configuration)");
    assert_eq!(kernel_bytes(&choice, &disk), b"kernel");
}

#[test]
fn hostile_disks_fail_by_name() {
    let work = tempfile::tempdir().unwrap();
    let write = |files: &[(&str, &[u8])], big: Option<&str>| {
        let dir = tempfile::tempdir_in(work.path()).unwrap();
        tree(dir.path(), files);
        if let Some(big) = big {
            // Sparse: 300 MiB that take no room on the 8 MiB file system.
            std::fs::File::create(dir.path().join(big)).unwrap().set_len(300 * MIB).unwrap();
        }
        let image = work.path().join("hostile.img");
        run(Command::new(tool("mkfs.ext4", "e2fsprogs"))
            .args(["-q", "-F", "-d"])
            .arg(dir.path())
            .arg(&image)
            .arg("8M"));
        open(&image)
    };
    // A kernel over the cap, named by grub.cfg and as /vmlinuz.
    let cfg = b"menuentry x {\n linux /big root=/dev/vda\n}\n";
    let error = bootdisk::find(write(&[("boot/grub/grub.cfg", cfg)], Some("big"))).unwrap_err();
    assert!(matches!(error, BootDiskError::File { what: "kernel", source: FsError::TooLarge { .. }, .. }), "{error:?}");
    assert!(error.to_string().starts_with("kernel /big on the whole disk"), "{error}");
    let error = bootdisk::find(write(&[], Some("vmlinuz"))).unwrap_err();
    assert!(matches!(error, BootDiskError::File { source: FsError::TooLarge { len, .. }, .. } if len == 300 * MIB));
    // A symlink loop.
    let error = bootdisk::find(write(&[("vmlinuz", b"-> a"), ("a", b"-> vmlinuz")], None)).unwrap_err();
    assert!(matches!(error, BootDiskError::File { source: FsError::SymlinkHops, .. }), "{error:?}");
    // A kernel grub.cfg names that is not there.
    let error = bootdisk::find(write(&[("boot/grub/grub.cfg", cfg)], None)).unwrap_err();
    assert!(matches!(error, BootDiskError::File { source: FsError::NotFound, .. }), "{error:?}");
    // grub.cfg as a symlink loop and a device that is not on the disk: noted, nothing to boot.
    let error = bootdisk::find(write(&[("boot/grub/grub.cfg", b"-> grub.cfg")], None)).unwrap_err();
    let BootDiskError::NotFound { looked } = &error else { panic!("{error:?}") };
    assert!(looked.contains("/boot/grub/grub.cfg: more than 16 symbolic links followed"), "{looked}");
    let cfg = b"menuentry x {\n linux (hd0,gpt7)/vmlinuz\n}\n";
    let error = bootdisk::find(write(&[("boot/grub/grub.cfg", cfg)], None)).unwrap_err();
    assert!(error.to_string().contains("names kernel /vmlinuz on (hd0,7)"), "{error}");
    // Nothing bootable: the message says what was looked for and where.
    let error = bootdisk::find(write(&[("etc/hostname", b"x")], None)).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("no bootable kernel: looked for {} on the whole disk (ext4)", bootdisk::LOOKED_FOR)
    );
}

/// A disk in memory with some bytes changed (cheap to make many of).
struct Damaged {
    base: Arc<Vec<u8>>,
    edits: Vec<(u64, u8)>,
}

impl DiskRead for Damaged {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.base.read_at(buf, offset)?;
        for (at, value) in &self.edits {
            if let Some(i) = at.checked_sub(offset).filter(|i| *i < buf.len() as u64) {
                buf[i as usize] ^= value;
            }
        }
        Ok(())
    }
    fn len(&self) -> u64 {
        self.base.len() as u64
    }
}

/// Every few bytes of a real disk's metadata corrupted in turn, and runs of
/// pseudo-random damage anywhere: each is a boot choice or an error, never a
/// panic (not even one the reader's guard catches), and copies stay within their caps.
#[test]
fn corrupted_real_disks_never_panic() {
    let work = tempfile::tempdir().unwrap();
    let cfg = GRUB_CFG.replace("BOOT_UUID", BOOT_UUID).replace("ROOT_UUID", ROOT_UUID);
    let boot = ext4(
        work.path(),
        1,
        BOOT_UUID,
        &[
            ("grub/grub.cfg", cfg.as_bytes()),
            ("vmlinuz-6.1.0-10-amd64", &[7u8; 5000]),
            ("initrd.img-6.1.0-10-amd64", b"x"),
        ],
    );
    let esp =
        fat(work.path(), 900, "1234ABCD", &[("loader/entries/a.conf", b"linux /k\noptions x\n"), ("k", &[1u8; 3000])]);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (table, image) in [("label: dos\nstart=2048, type=83\n", boot), ("gpt:-n 1:2048:0 -t 1:ef00", esp)] {
        let path = make_disk(work.path(), 2, table, &[(2048, image)]);
        let base = Arc::new(std::fs::read(&path).unwrap());
        let size = base.len() as u64;
        if let Err(e) = bootdisk::find(base.clone()) {
            panic!("{table}: {e:?}");
        }
        // The table's sectors and the file system's first 64 KiB: boot
        // sector, superblock, group descriptors, inode table, FATs, root directory.
        let metadata = (0..3 * 512).chain(1 << 20..(1 << 20) + 65536).step_by(6);
        let damage = metadata
            .map(|at| vec![(at, 0xff)])
            .chain((0..500).map(|_| (0..8).map(|_| (random() % size, random() as u8 | 1)).collect::<Vec<_>>()));
        let (mut chosen, mut refused) = (0, 0);
        for edits in damage {
            let disk: Arc<dyn DiskRead> = Arc::new(Damaged { base: base.clone(), edits: edits.clone() });
            match bootdisk::find(disk.clone()) {
                Ok(choice) => {
                    chosen += 1;
                    let mut out = Vec::new();
                    let kernel = choice.write_kernel(&disk, &mut out);
                    assert!(!matches!(kernel, Err(BootDiskError::Panicked)), "{edits:?}");
                    assert!(out.len() as u64 <= bootdisk::MAX_KERNEL_BYTES);
                    let initrd = choice.write_initrd(&disk, &mut Vec::new());
                    assert!(!matches!(initrd, Err(BootDiskError::Panicked)), "{edits:?}");
                }
                Err(e) => {
                    refused += 1;
                    assert!(!matches!(e, BootDiskError::Panicked), "{edits:?}: {e}");
                }
            }
        }
        // FAT shrugs off most single-byte damage (22 of ~11 000 edits refused
        // here), so "both outcomes" asks for a handful of refusals, not a share.
        assert!(chosen > 100 && refused > 10, "{table}: the damage reached both outcomes ({chosen}, {refused})");
    }
}
