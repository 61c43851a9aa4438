//! Formats by magic, overlays over raw and qcow2 bases, backing files only
//! as given, and hostile qcow2 metadata failing requests rather than the VMM.
//! (Compressed clusters and images made by qemu-img are read in the
//! end-to-end test `tests/tests/qcow2_disks.rs`.)

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use imago::qcow2::Qcow2;
use imago::FormatCreateBuilder;
use vm_memory::VolatileSlice;

use super::*;

const MIB: u64 = 1 << 20;

fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn raw_base(dir: &Path, bytes: u64) -> PathBuf {
    let path = dir.join("base.raw");
    std::fs::write(&path, (0..bytes).map(pattern).collect::<Vec<u8>>()).unwrap();
    path
}

/// A standalone qcow2 image of `bytes`, empty.
fn qcow2_image(path: &Path, bytes: u64) {
    let file = File::create_new(path).unwrap();
    let storage = imago::file::File::try_from(file).unwrap();
    Qcow2::<imago::file::File>::create_builder(storage).size(bytes).create().unwrap();
}

fn overlay(dir: &Path, name: &str, base: &Path) -> PathBuf {
    let path = dir.join(name);
    create_overlay(File::create_new(&path).unwrap(), base).unwrap();
    path
}

fn open(path: &Path, readonly: bool, backing: &[PathBuf]) -> Qcow2Image {
    match ImageFiles::open(path, readonly, backing).unwrap().into_image(!readonly).unwrap() {
        DiskImage::Qcow2(image) => image,
        DiskImage::Raw(_) => panic!("{} opened as raw", path.display()),
    }
}

fn read(image: &Qcow2Image, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0xeeu8; len];
    image.read(&[VolatileSlice::from(&mut buf[..])], offset)?;
    Ok(buf)
}

fn write(image: &Qcow2Image, offset: u64, data: &[u8]) -> io::Result<()> {
    let mut copy = data.to_vec();
    image.write(&[VolatileSlice::from(&mut copy[..])], offset)
}

fn expected(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64).map(pattern).collect()
}

fn contents(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn formats_are_told_by_magic_not_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let qcow2_named_raw = dir.path().join("disk.raw");
    qcow2_image(&qcow2_named_raw, MIB);
    assert_eq!(ImageFormat::detect(&File::open(&qcow2_named_raw).unwrap()).unwrap(), ImageFormat::Qcow2);
    let raw_named_qcow2 = dir.path().join("disk.qcow2");
    std::fs::write(&raw_named_qcow2, b"QFI").unwrap(); // shorter than the magic
    assert_eq!(ImageFormat::detect(&File::open(&raw_named_qcow2).unwrap()).unwrap(), ImageFormat::Raw);
    std::fs::write(&raw_named_qcow2, vec![0u8; 4096]).unwrap();
    assert_eq!(ImageFormat::detect(&File::open(&raw_named_qcow2).unwrap()).unwrap(), ImageFormat::Raw);
    let files = ImageFiles::open(&raw_named_qcow2, false, &[]).unwrap();
    assert!(matches!(files.into_image(true).unwrap(), DiskImage::Raw(_)));
}

#[test]
fn an_overlay_reads_its_raw_base_and_keeps_writes_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let base = raw_base(dir.path(), 4 * MIB);
    let before = contents(&base);
    let path = overlay(dir.path(), "overlay.qcow2", &base);
    assert!(std::fs::metadata(&path).unwrap().len() < MIB, "an overlay is small");
    let image = open(&path, false, std::slice::from_ref(&base));
    assert_eq!(image.size(), 4 * MIB);
    for offset in [0, 512, 65536 - 512, 3 * MIB + 7 * 512] {
        assert_eq!(read(&image, offset, 1024).unwrap(), expected(offset, 1024), "offset {offset}");
    }
    // A write inside one cluster: the rest of that cluster still reads the base.
    write(&image, MIB + 512, &[0xab; 1024]).unwrap();
    image.flush().unwrap();
    let back = read(&image, MIB, 4096).unwrap();
    assert_eq!(back[..512], expected(MIB, 512)[..]);
    assert!(back[512..1536].iter().all(|b| *b == 0xab));
    assert_eq!(back[1536..], expected(MIB + 1536, 4096 - 1536)[..]);
    // Zeroed and discarded ranges.
    image.write_zeroes(2 * MIB, 65536, false).unwrap();
    assert!(read(&image, 2 * MIB, 65536).unwrap().iter().all(|b| *b == 0));
    image.write_zeroes(2 * MIB + 65536, 65536, true).unwrap();
    assert!(read(&image, 2 * MIB + 65536, 65536).unwrap().iter().all(|b| *b == 0));
    image.discard(3 * MIB, 65536).unwrap();
    // Past the end (the device checks requests against the capacity first).
    assert!(write(&image, 4 * MIB, &[1; 512]).is_err());
    drop(image);
    assert_eq!(contents(&base), before, "the base is untouched");

    // A second boot of the same overlay sees what the first wrote.
    let again = open(&path, false, std::slice::from_ref(&base));
    assert!(read(&again, MIB + 512, 1024).unwrap().iter().all(|b| *b == 0xab));
    assert_eq!(read(&again, 0, 512).unwrap(), expected(0, 512));
}

#[test]
fn two_overlays_of_one_base_see_their_own_writes_only() {
    let dir = tempfile::tempdir().unwrap();
    let base = raw_base(dir.path(), MIB);
    let (a, b) = (overlay(dir.path(), "a.qcow2", &base), overlay(dir.path(), "b.qcow2", &base));
    let (a, b) = (open(&a, false, std::slice::from_ref(&base)), open(&b, false, std::slice::from_ref(&base)));
    write(&a, 4096, &[0xaa; 512]).unwrap();
    write(&b, 8192, &[0xbb; 512]).unwrap();
    assert_eq!(read(&a, 4096, 512).unwrap(), [0xaa; 512]);
    assert_eq!(read(&a, 8192, 512).unwrap(), expected(8192, 512));
    assert_eq!(read(&b, 4096, 512).unwrap(), expected(4096, 512));
    assert_eq!(read(&b, 8192, 512).unwrap(), [0xbb; 512]);
}

#[test]
fn an_overlay_over_a_qcow2_base_and_a_read_only_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qcow2_image(&base, 2 * MIB);
    {
        let image = open(&base, false, &[]);
        write(&image, 65536, &expected(65536, 8192)).unwrap();
        image.flush().unwrap();
    }
    let before = contents(&base);
    let path = overlay(dir.path(), "overlay.qcow2", &base);
    let image = open(&path, false, std::slice::from_ref(&base));
    assert_eq!(image.size(), 2 * MIB);
    assert_eq!(read(&image, 65536, 8192).unwrap(), expected(65536, 8192));
    assert!(read(&image, 0, 4096).unwrap().iter().all(|b| *b == 0), "unallocated in both layers");
    write(&image, 65536 + 4096, &[0xcd; 512]).unwrap();
    image.flush().unwrap();
    drop(image);
    assert_eq!(contents(&base), before);

    let read_only = open(&base, true, &[]);
    assert_eq!(read(&read_only, 65536, 512).unwrap(), expected(65536, 512));
    assert!(write(&read_only, 0, &[1; 512]).is_err(), "a read-only image refuses writes");
}

#[test]
fn backing_files_are_only_those_given() {
    let dir = tempfile::tempdir().unwrap();
    let base = raw_base(dir.path(), MIB);
    let path = overlay(dir.path(), "overlay.qcow2", &base);
    // The header names the base, but naming is not giving.
    let error = ImageFiles::open(&path, false, &[]).unwrap_err();
    assert!(matches!(&error, ImageError::UnexpectedBacking { name } if Path::new(name) == base), "{error:?}");
    assert!(error.to_string().contains("never one an image names"), "{error}");

    // A backing file for an image that names none, or for a raw image.
    let standalone = dir.path().join("standalone.qcow2");
    qcow2_image(&standalone, MIB);
    let error = ImageFiles::open(&standalone, false, std::slice::from_ref(&base)).unwrap_err();
    assert!(matches!(error, ImageError::BackingNotNamed), "{error:?}");
    let error = ImageFiles::open(&base, false, std::slice::from_ref(&standalone)).unwrap_err();
    assert!(matches!(error, ImageError::RawWithBacking), "{error:?}");
    // Too short a chain one level down: the base's own backing file is not given.
    let middle = overlay(dir.path(), "middle.qcow2", &base);
    let error = create_overlay(File::create_new(dir.path().join("top.qcow2")).unwrap(), &middle).unwrap_err();
    assert!(matches!(error, ImageError::UnexpectedBacking { .. }), "{error:?}");
    let error = ImageFiles::open(&path, false, std::slice::from_ref(&middle)).unwrap_err();
    let ImageError::Backing { path: named, source } = &error else { panic!("{error:?}") };
    assert_eq!(named, &middle);
    assert!(matches!(**source, ImageError::UnexpectedBacking { .. }), "{error:?}");
    // The full chain, given: top -> middle -> base.
    std::fs::remove_file(dir.path().join("top.qcow2")).unwrap();
    let top = dir.path().join("top.qcow2");
    let storage = imago::file::File::try_from(File::create_new(&top).unwrap()).unwrap();
    Qcow2::<imago::file::File>::create_builder(storage)
        .size(MIB)
        .backing(middle.to_str().unwrap().into(), "qcow2".into())
        .create()
        .unwrap();
    let image = open(&top, true, &[middle, base]);
    assert_eq!(read(&image, 4096, 512).unwrap(), expected(4096, 512));
}

#[test]
fn a_missing_or_unopenable_backing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let base = raw_base(dir.path(), MIB);
    let path = overlay(dir.path(), "overlay.qcow2", &base);
    let gone = dir.path().join("gone.raw");
    let error = ImageFiles::open(&path, false, std::slice::from_ref(&gone)).unwrap_err();
    assert!(matches!(&error, ImageError::Backing { path, .. } if *path == gone), "{error:?}");
}

/// Offset of the L1 table, from the header (big-endian, bytes 40..48).
fn l1_offset(path: &Path) -> u64 {
    let mut raw = [0u8; 8];
    File::open(path).unwrap().read_exact_at(&mut raw, 40).unwrap();
    u64::from_be_bytes(raw)
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, offset).unwrap();
}

/// A qcow2 image whose first cluster holds data (so L1[0] points to an L2 table).
fn written_image(dir: &Path) -> PathBuf {
    let path = dir.join("victim.qcow2");
    qcow2_image(&path, 4 * MIB);
    let image = open(&path, false, &[]);
    write(&image, 0, &[0x77; 65536]).unwrap();
    image.flush().unwrap();
    path
}

#[test]
fn hostile_metadata_fails_requests_not_the_vmm() {
    let dir = tempfile::tempdir().unwrap();
    // An L1 entry pointing far past the end of the file (an L2 table that
    // reads as zeros: unallocated clusters), and one not aligned to a cluster.
    for (entry, fails) in [(0x8000_00ff_ffff_0000u64, false), (0x8000_0000_0001_0200, true)] {
        let path = written_image(dir.path());
        patch(&path, l1_offset(&path), &entry.to_be_bytes());
        // Refused when opened, or when read: never a panic, never the data.
        let read = ImageFiles::open(&path, true, &[]).and_then(|files| files.into_image(false)).map(|image| {
            let DiskImage::Qcow2(image) = image else { panic!("raw") };
            read(&image, 0, 4096)
        });
        match read {
            Ok(Ok(data)) => assert!(!fails && data.iter().all(|b| *b == 0), "L1 entry {entry:#x}: {:?}", &data[..8]),
            Ok(Err(e)) => assert!(fails, "L1 entry {entry:#x}: {e}"),
            Err(e) => assert!(fails, "L1 entry {entry:#x}: {e}"),
        }
        std::fs::remove_file(&path).unwrap();
    }
    // An L2 entry describing a compressed cluster far past the end of the file.
    let path = written_image(dir.path());
    let mut l2 = [0u8; 8];
    File::open(&path).unwrap().read_exact_at(&mut l2, l1_offset(&path)).unwrap();
    let l2_offset = u64::from_be_bytes(l2) & 0x00ff_ffff_ffff_fe00;
    patch(&path, l2_offset, &(0x4000_0000_0000_0000u64 | 0x00ff_ffff_0000).to_be_bytes());
    let image = open(&path, false, &[]);
    assert!(read(&image, 0, 4096).is_err());
    std::fs::remove_file(&path).unwrap();
    // Header fields out of range: cluster bits, L1 size, refcount order.
    for (offset, bytes) in [(20u64, &[0, 0, 0, 40][..]), (36, &[0xff, 0xff, 0xff, 0xff]), (96, &[0, 0, 0, 9])] {
        let path = written_image(dir.path());
        patch(&path, offset, bytes);
        assert!(ImageFiles::open(&path, false, &[]).is_err(), "header byte {offset}");
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn every_byte_of_a_small_image_may_be_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = std::fs::read(written_image(dir.path())).unwrap();
    let path = dir.path().join("mangled.qcow2");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        let mut bytes = pristine.clone();
        for _ in 0..8 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Metadata lives in the first clusters; data after them.
            let at = (state as usize) % bytes.len().min(6 * 65536);
            bytes[at] = (state >> 32) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        let Ok(files) = ImageFiles::open(&path, false, &[]) else { continue };
        let Ok(image) = files.into_image(true) else { continue };
        let DiskImage::Qcow2(image) = image else { continue };
        // Whatever each request returns, it returns; a panic fails the test.
        let _ = read(&image, 0, 65536);
        let _ = write(&image, 65536 * (round % 8), &[round as u8; 4096]);
        let _ = image.write_zeroes(MIB, 65536, round % 2 == 0);
        let _ = image.flush();
    }
}

#[test]
fn a_panic_in_the_library_fails_that_request_and_every_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let image = open(&written_image(dir.path()), false, &[]);
    let result: io::Result<()> = image.with(|_| panic!("a bug in the library (this test's own panic)"));
    assert!(result.is_err());
    assert!(read(&image, 0, 512).is_err(), "the disk stays failed");
}
