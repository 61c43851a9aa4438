//! Which kernel a disk boots: the loader configurations in this order, each
//! looked for on every partition in table order before the next kind:
//!
//! 1. Boot Loader Specification entries (`/loader/entries/*.conf`, also under `/boot`);
//! 2. `grub.cfg`'s default `menuentry`;
//! 3. `extlinux.conf` / `syslinux.cfg`'s default label;
//! 4. `/vmlinuz` and `/initrd.img` (also under `/boot`), with `root=UUID=`
//!    the file system's UUID.
//!
//! A configuration that cannot be read or names nothing bootable is noted
//! and the search goes on; once an entry is chosen, a kernel or initrd it
//! names that is missing or too large is an error (a boot loader would fail
//! too), not a reason to boot something else.

use std::sync::Arc;

use super::fs::{self, BootFs, FsError};
use super::partitions::{self, Partition};
use super::{bls, extlinux, grub, BootChoice, BootDiskError, BootFile, DiskRead};
use super::{chain, guard, place, MAX_INITRD_BYTES, MAX_KERNEL_BYTES};

const BLS_DIRS: [&str; 2] = ["/loader/entries", "/boot/loader/entries"];
const GRUB_FILES: [&str; 4] = ["/boot/grub/grub.cfg", "/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub2/grub.cfg"];
const EXTLINUX_FILES: [&str; 6] = [
    "/boot/extlinux/extlinux.conf",
    "/extlinux/extlinux.conf",
    "/extlinux.conf",
    "/boot/syslinux/syslinux.cfg",
    "/syslinux/syslinux.cfg",
    "/syslinux.cfg",
];
const FALLBACK: [(&str, &str); 2] = [("/vmlinuz", "/initrd.img"), ("/boot/vmlinuz", "/boot/initrd.img")];
/// BLS entry files read from one directory at most.
const MAX_BLS_ENTRIES: usize = 64;
/// Partitions looked at at most.
const MAX_PARTITIONS: usize = 128;

/// What `NotFound` says was looked for, in order.
pub const LOOKED_FOR: &str = "/loader/entries/*.conf, /boot/loader/entries/*.conf, /boot/grub/grub.cfg, \
/grub/grub.cfg, /boot/grub2/grub.cfg, /grub2/grub.cfg, extlinux.conf or syslinux.cfg (in /boot/extlinux, \
/extlinux, /, /boot/syslinux, /syslinux), /vmlinuz, /boot/vmlinuz";

struct Volume {
    part: Partition,
    fs: Box<dyn BootFs>,
}

/// An entry as a configuration names it, before its files are looked up.
struct Found {
    volume: usize,
    kernel: Target,
    initrds: Vec<Target>,
    cmdline: String,
    source: String,
}

/// A path on a partition, or on one a GRUB device names.
struct Target {
    volume: Result<usize, String>,
    path: String,
}

/// Finds what `disk` boots.
pub fn find(disk: Arc<dyn DiskRead>) -> Result<BootChoice, BootDiskError> {
    guard(|| find_inner(&disk))
}

fn find_inner(disk: &Arc<dyn DiskRead>) -> Result<BootChoice, BootDiskError> {
    let table = partitions::read(disk.as_ref()).map_err(BootDiskError::Table)?;
    let mut volumes = Vec::new();
    let mut notes = Vec::new();
    for part in table.partitions.iter().take(MAX_PARTITIONS) {
        match fs::open(disk, *part) {
            Ok(Some(fs)) => volumes.push(Volume { part: *part, fs }),
            Ok(None) => notes.push(format!("{}: no ext2/3/4 or FAT file system", place(part))),
            Err(e) => notes.push(format!("{}: {}", place(part), chain(&e))),
        }
    }
    let found = bls_entry(&volumes, &mut notes)
        .or_else(|| grub_entry(&volumes, &mut notes))
        .or_else(|| extlinux_entry(&volumes, &mut notes));
    let found = match found {
        Some(found) => found,
        None => match fallback(&volumes)? {
            Some(found) => found,
            None => {
                let mut looked: Vec<String> =
                    volumes.iter().map(|v| format!("{} ({})", place(&v.part), v.fs.name())).collect();
                if looked.is_empty() {
                    looked.push("no partition with a file system".into());
                }
                let mut text = looked.join(", ");
                for note in notes {
                    text.push_str("; ");
                    text.push_str(&note);
                }
                return Err(BootDiskError::NotFound { looked: text });
            }
        },
    };
    let kernel = lookup(&volumes, &found, &found.kernel, "kernel")?;
    if kernel.len > MAX_KERNEL_BYTES {
        let source = FsError::TooLarge { len: kernel.len, limit: MAX_KERNEL_BYTES };
        return Err(super::file_error(&kernel, "kernel", source));
    }
    let initrds = found.initrds.iter().map(|t| lookup(&volumes, &found, t, "initrd")).collect::<Result<Vec<_>, _>>()?;
    let choice = BootChoice {
        kernel,
        initrds,
        cmdline: found.cmdline,
        source: found.source,
        source_partition: volumes[found.volume].part,
    };
    if choice.initrd_len() > MAX_INITRD_BYTES {
        let source = FsError::TooLarge { len: choice.initrd_len(), limit: MAX_INITRD_BYTES };
        return Err(super::file_error(&choice.initrds[0], "initrd", source));
    }
    Ok(choice)
}

fn lookup(volumes: &[Volume], found: &Found, target: &Target, what: &'static str) -> Result<BootFile, BootDiskError> {
    let index = target.volume.clone().map_err(|device| BootDiskError::Device {
        config: found.source.clone(),
        what,
        path: target.path.clone(),
        device,
    })?;
    let volume = &volumes[index];
    let (components, len) = fs::file(volume.fs.as_ref(), &target.path).map_err(|source| BootDiskError::File {
        what,
        path: target.path.clone(),
        place: format!("{} (named by {})", place(&volume.part), found.source),
        source,
    })?;
    Ok(BootFile { partition: volume.part, path: fs::display(&components), len, components })
}

/// A configuration file's text, or a note on why it could not be read.
fn config(volume: &Volume, path: &str, notes: &mut Vec<String>) -> Option<String> {
    match fs::read_config(volume.fs.as_ref(), path) {
        Ok(text) => text,
        Err(e) => {
            notes.push(format!("{} {path}: {}", place(&volume.part), chain(&e)));
            None
        }
    }
}

fn bls_entry(volumes: &[Volume], notes: &mut Vec<String>) -> Option<Found> {
    for (index, volume) in volumes.iter().enumerate() {
        for dir in BLS_DIRS {
            let names = match fs::list_dir(volume.fs.as_ref(), dir) {
                Ok(names) => names,
                Err(e) => {
                    notes.push(format!("{} {dir}: {}", place(&volume.part), chain(&e)));
                    continue;
                }
            };
            let mut ids: Vec<&str> = names.iter().filter_map(|n| n.strip_suffix(".conf")).collect();
            ids.sort_unstable();
            ids.truncate(MAX_BLS_ENTRIES);
            let entries: Vec<bls::Entry> = ids
                .iter()
                .filter_map(|id| config(volume, &format!("{dir}/{id}.conf"), notes).map(|t| bls::Entry::parse(id, &t)))
                .collect();
            if entries.is_empty() {
                continue;
            }
            let loader_conf = dir.replace("/entries", "/loader.conf");
            let default = config(volume, &loader_conf, notes).and_then(|t| bls::loader_default(&t));
            let Some((entry, why)) = bls::choose(entries, default.as_deref()) else {
                notes.push(format!("{} {dir}: no entry with a linux kernel", place(&volume.part)));
                continue;
            };
            let on_volume = |path: &str| Target { volume: Ok(index), path: path.to_string() };
            return Some(Found {
                volume: index,
                kernel: on_volume(entry.linux.as_deref().unwrap_or_default()),
                initrds: entry.initrds.iter().map(|p| on_volume(p)).collect(),
                cmdline: entry.cmdline(),
                source: format!("{dir}/{}.conf {:?} ({why})", entry.id, entry.name()),
            });
        }
    }
    None
}

fn grub_entry(volumes: &[Volume], notes: &mut Vec<String>) -> Option<Found> {
    for (index, volume) in volumes.iter().enumerate() {
        for file in GRUB_FILES {
            let Some(text) = config(volume, file, notes) else { continue };
            let env_path = file.replace("grub.cfg", "grubenv");
            let env = config(volume, &env_path, notes).map(|t| grub::parse_env(&t)).unwrap_or_default();
            let chosen = match grub::choose(&text, env) {
                Ok(chosen) => chosen,
                Err(e) => {
                    notes.push(format!("{} {file}: {e}", place(&volume.part)));
                    continue;
                }
            };
            let target =
                |path: &grub::GrubPath| Target { volume: grub_volume(volumes, index, path), path: path.path.clone() };
            return Some(Found {
                volume: index,
                kernel: target(&chosen.kernel),
                initrds: chosen.initrds.iter().map(target).collect(),
                cmdline: chosen.cmdline,
                source: format!("{file} menuentry {:?} ({})", chosen.title, chosen.why),
            });
        }
    }
    None
}

/// The volume a GRUB path is on: its device's, else the one `grub.cfg` is on.
fn grub_volume(volumes: &[Volume], config: usize, path: &grub::GrubPath) -> Result<usize, String> {
    let by = |f: &dyn Fn(&Volume) -> bool, name: String| volumes.iter().position(f).ok_or(name);
    match &path.device {
        None | Some(grub::Device::Other(_)) => Ok(config),
        Some(grub::Device::Partition(n)) => by(&|v| v.part.number == *n, format!("(hd0,{n})")),
        Some(grub::Device::Whole) => by(&|v| v.part.number == 0, "(hd0)".into()),
        Some(grub::Device::FsUuid(uuid)) => {
            by(&|v| v.fs.uuid().eq_ignore_ascii_case(uuid), format!("the file system with UUID {uuid}"))
        }
    }
}

fn extlinux_entry(volumes: &[Volume], notes: &mut Vec<String>) -> Option<Found> {
    for (index, volume) in volumes.iter().enumerate() {
        for file in EXTLINUX_FILES {
            let Some(text) = config(volume, file, notes) else { continue };
            let Some(chosen) = extlinux::choose(&text) else {
                notes.push(format!("{} {file}: no label with a kernel", place(&volume.part)));
                continue;
            };
            // Relative paths are relative to the file's directory.
            let dir = &file[..file.rfind('/').unwrap_or(0)];
            let target = |path: &str| {
                let path = if path.starts_with('/') { path.to_string() } else { format!("{dir}/{path}") };
                Target { volume: Ok(index), path }
            };
            return Some(Found {
                volume: index,
                kernel: target(&chosen.kernel),
                initrds: chosen.initrds.iter().map(|p| target(p)).collect(),
                cmdline: chosen.cmdline,
                source: format!("{file} label {:?} ({})", chosen.label, chosen.why),
            });
        }
    }
    None
}

/// `/vmlinuz` (or `/boot/vmlinuz`), the initrd beside it if there is one,
/// and the file system as the root.
fn fallback(volumes: &[Volume]) -> Result<Option<Found>, BootDiskError> {
    for (index, volume) in volumes.iter().enumerate() {
        for (kernel, initrd) in FALLBACK {
            let exists = |path: &str| match fs::file(volume.fs.as_ref(), path) {
                Ok(_) => Ok(true),
                Err(FsError::NotFound | FsError::NotADirectory) => Ok(false),
                Err(source) => Err(BootDiskError::File {
                    what: "kernel",
                    path: path.to_string(),
                    place: place(&volume.part),
                    source,
                }),
            };
            if !exists(kernel)? {
                continue;
            }
            let initrds = if exists(initrd)? { vec![initrd] } else { Vec::new() };
            let on_volume = |path: &str| Target { volume: Ok(index), path: path.to_string() };
            return Ok(Some(Found {
                volume: index,
                kernel: on_volume(kernel),
                initrds: initrds.into_iter().map(on_volume).collect(),
                cmdline: format!("root=UUID={} ro", volume.fs.uuid()),
                source: format!("{kernel} (no loader configuration)"),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_disk_without_a_kernel_never_a_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for size in [0usize, 511, 512, 4096, 1 << 16, 1 << 20] {
            let mut disk = vec![0u8; size];
            for byte in disk.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            if size >= 512 {
                disk[510..512].copy_from_slice(&[0x55, 0xaa]);
            }
            match find(Arc::new(disk)) {
                Err(BootDiskError::NotFound { looked }) => assert!(!looked.is_empty()),
                other => panic!("{size}: {other:?}"),
            }
        }
    }
}
