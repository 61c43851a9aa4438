//! Bootable disks for the tests, made by the real tools as an installer or
//! image builder leaves them: a partition table (sfdisk for MBR, sgdisk for
//! GPT), an ext4 (`mkfs.ext4 -d`) or FAT (`mkfs.fat` + `mcopy`) boot file
//! system holding the probe guest as its kernel, and `qemu-img` for qcow2.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{probe, require_tool};

/// The file system UUID of partition 1 (ext4), for `search --fs-uuid` and `root=UUID=`.
pub const ROOT_UUID: &str = "6b1d3c52-8a0e-4f7d-9c2b-1e5a7f3d9b40";

/// Where a file's content is the probe guest's bzImage.
pub const PROBE: &str = "PROBE";

/// Runs `command`, failing the test with its stderr unless it succeeds.
pub fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Lays out `files` (path, contents) under `dir`, the probe kernel where a content is [`PROBE`].
fn tree(dir: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        match *contents {
            PROBE => std::fs::copy(&probe().bzimage, &path).map(drop).unwrap(),
            text => std::fs::write(&path, text).unwrap(),
        }
    }
}

/// A raw disk `WORK/NAME.img` of 48 MiB: partition 1 (from sector 2048,
/// 16 MiB) holds `files` in ext4 with [`ROOT_UUID`] (or FAT for `esp`),
/// partition 2 an empty ext4 "root". `gpt`: sgdisk, else sfdisk (MBR).
pub fn disk(work: &Path, name: &str, gpt: bool, esp: bool, files: &[(&str, &str)]) -> PathBuf {
    let content = tempfile::tempdir_in(work).unwrap();
    tree(content.path(), files);
    let part1 = work.join("part1.img");
    let _ = std::fs::remove_file(&part1);
    if esp {
        run(Command::new(require_tool("mkfs.fat", "dosfstools")).arg("-C").arg(&part1).arg("16384"));
        for entry in std::fs::read_dir(content.path()).unwrap() {
            let entry = entry.unwrap().path();
            run(Command::new(require_tool("mcopy", "mtools")).args(["-s", "-i"]).arg(&part1).arg(&entry).arg("::/"));
        }
    } else {
        let mkfs = require_tool("mkfs.ext4", "e2fsprogs");
        run(Command::new(&mkfs).args(["-q", "-F", "-U", ROOT_UUID, "-d"]).arg(content.path()).arg(&part1).arg("16M"));
    }
    let part2 = work.join("part2.img");
    run(Command::new(require_tool("mkfs.ext4", "e2fsprogs")).args(["-q", "-F"]).arg(&part2).arg("16M"));
    let path = work.join(format!("{name}.img"));
    std::fs::File::create(&path).unwrap().set_len(48 << 20).unwrap();
    if gpt {
        let kind = if esp { "ef00" } else { "8300" };
        let args = format!("-n 1:2048:+16M -t 1:{kind} -n 2:0:+16M -t 2:8300");
        run(Command::new(require_tool("sgdisk", "gdisk")).args(args.split(' ')).arg(&path));
    } else {
        let table = "label: dos\nstart=2048, size=32768, type=83\nstart=34816, size=32768, type=83\n";
        let mut sfdisk = Command::new(require_tool("sfdisk", "fdisk"))
            .args(["--no-reread", "--no-tell-kernel", "-q"])
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut sfdisk.stdin.take().unwrap(), table.as_bytes()).unwrap();
        assert!(sfdisk.wait().unwrap().success());
    }
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (sector, image) in [(2048u64, &part1), (2048 + 32768, &part2)] {
        std::os::unix::fs::FileExt::write_all_at(&file, &std::fs::read(image).unwrap(), sector * 512).unwrap();
    }
    path
}

/// `qemu-img convert` of the raw `disk` to a qcow2 image beside it
/// (`NAME.qcow2`), every cluster zlib-compressed when `compressed`.
pub fn qcow2(disk: &Path, compressed: bool) -> PathBuf {
    let out = disk.with_extension("qcow2");
    let mut convert = Command::new(require_tool("qemu-img", "qemu-utils"));
    convert.arg("convert");
    if compressed {
        convert.arg("-c");
    }
    run(convert.args(["-f", "raw", "-O", "qcow2"]).arg(disk).arg(&out));
    out
}
