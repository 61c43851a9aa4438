//! Disk images behind virtio-blk: raw files, and qcow2 (v2 and v3, zlib
//! compressed clusters, backing images) through the `imago` crate.
//!
//! A file's format is told by its first bytes (`QFI\xfb` is qcow2, anything
//! else raw), never by its name. Backing files are only those the caller
//! names, in order (`DiskConfig::backing`, e.g. the node's overlay over a
//! container disk): a qcow2 image that names a backing file of its own in its
//! header is refused unless one was given, so that an image cannot make the
//! VMM open a host path it chose. Every file is opened by path once, before
//! the VM process jails itself (`ImageFiles::open`); each boot builds its
//! `DiskImage` from duplicates of those descriptors (`ImageFiles::into_image`).

mod overlay;
mod qcow2;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use overlay::create_overlay;
pub use qcow2::Qcow2Image;

/// The first four bytes of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// How a disk file is laid out, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    /// Reads the magic at offset 0: a file shorter than the magic is raw.
    pub fn detect(file: &File) -> io::Result<ImageFormat> {
        let mut magic = [0u8; 4];
        match file.read_exact_at(&mut magic, 0) {
            Ok(()) if magic == QCOW2_MAGIC => Ok(ImageFormat::Qcow2),
            Ok(()) => Ok(ImageFormat::Raw),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(ImageFormat::Raw),
            Err(e) => Err(e),
        }
    }

    /// The name qemu-img and qcow2 headers use for it.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// Why an image (or one of its backing files) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a file")]
    NotAFile { path: PathBuf },
    #[error("read the image's format")]
    Detect(#[source] io::Error),
    #[error("duplicate the image's descriptors")]
    Duplicate(#[source] io::Error),
    #[error("qcow2 image")]
    Qcow2(#[source] io::Error),
    #[error(
        "the image names the backing file {name:?}; kvmlet opens only the backing files it is given \
         (an overlay's base), never one an image names"
    )]
    UnexpectedBacking { name: String },
    #[error("a backing file was given, but the qcow2 image names none")]
    BackingNotNamed,
    #[error("a backing file was given for a raw image, which cannot have one")]
    RawWithBacking,
    #[error("the qcow2 image keeps its data in an external data file, which kvmlet does not open")]
    ExternalDataFile,
    #[error("backing file {path}")]
    Backing {
        path: PathBuf,
        #[source]
        source: Box<ImageError>,
    },
    #[error("create the qcow2 overlay")]
    CreateOverlay(#[source] io::Error),
}

/// The open files of one disk: the image itself, then its backing chain
/// (nearest first), each with the format its first bytes say.
#[derive(Debug)]
pub struct ImageFiles {
    layers: Vec<Layer>,
}

#[derive(Debug)]
struct Layer {
    /// For error messages only: nothing is reopened by path.
    path: PathBuf,
    file: File,
    format: ImageFormat,
}

impl Layer {
    fn open(path: &Path, writable: bool) -> Result<Layer, ImageError> {
        let open = |source| ImageError::Open { path: path.to_path_buf(), source };
        let file = std::fs::OpenOptions::new().read(true).write(writable).open(path).map_err(open)?;
        if file.metadata().map_err(open)?.is_dir() {
            return Err(ImageError::NotAFile { path: path.to_path_buf() });
        }
        let format = ImageFormat::detect(&file).map_err(ImageError::Detect)?;
        Ok(Layer { path: path.to_path_buf(), file, format })
    }
}

impl ImageFiles {
    /// Opens `path` (read-write unless `readonly`) and each of `backing`
    /// read-only, by path, and checks that they make one usable image.
    pub fn open(path: &Path, readonly: bool, backing: &[PathBuf]) -> Result<ImageFiles, ImageError> {
        let mut layers = vec![Layer::open(path, !readonly)?];
        for backing_path in backing {
            let layer = Layer::open(backing_path, false)
                .map_err(|source| ImageError::Backing { path: backing_path.clone(), source: Box::new(source) })?;
            layers.push(layer);
        }
        let files = ImageFiles { layers };
        // Read its metadata once now, so that a broken image fails the VM
        // before it boots rather than on the guest's first request.
        drop(files.try_clone().map_err(ImageError::Duplicate)?.into_image(false)?);
        Ok(files)
    }

    /// The format of the image itself (not of its backing files).
    pub fn format(&self) -> ImageFormat {
        self.layers[0].format
    }

    /// New descriptors for the same files, for one more boot.
    pub fn try_clone(&self) -> io::Result<ImageFiles> {
        let layers = self
            .layers
            .iter()
            .map(|l| Ok(Layer { path: l.path.clone(), file: l.file.try_clone()?, format: l.format }))
            .collect::<io::Result<_>>()?;
        Ok(ImageFiles { layers })
    }

    /// The image the guest sees, on these descriptors (nothing is opened by
    /// path). Backing files are only ever read.
    pub fn into_image(self, writable: bool) -> Result<DiskImage, ImageError> {
        let mut layers = self.layers.into_iter();
        let top = layers.next().expect("ImageFiles holds at least the image");
        match top.format {
            ImageFormat::Raw if layers.len() > 0 => Err(ImageError::RawWithBacking),
            ImageFormat::Raw => Ok(DiskImage::Raw(top.file)),
            ImageFormat::Qcow2 => {
                let chain: Vec<_> = layers.map(|l| (l.path, l.file, l.format)).collect();
                Ok(DiskImage::Qcow2(Qcow2Image::open(top.file, chain, writable)?))
            }
        }
    }
}

/// What a virtio-blk device reads and writes.
#[derive(Debug)]
pub enum DiskImage {
    /// The file is the disk, byte for byte.
    Raw(File),
    Qcow2(Qcow2Image),
}

impl DiskImage {
    /// The disk's size in bytes, as the guest sees it.
    pub fn size(&self) -> io::Result<u64> {
        match self {
            DiskImage::Raw(file) => Ok(file.metadata()?.len()),
            DiskImage::Qcow2(image) => Ok(image.size()),
        }
    }
}

/// A boot disk's kernel is read through the image format, so a qcow2
/// container disk (on its overlay) boots as a raw one does.
impl crate::bootdisk::DiskRead for DiskImage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            // Past the end, the file itself says UnexpectedEof.
            DiskImage::Raw(file) => file.read_exact_at(buf, offset),
            DiskImage::Qcow2(image) => {
                if offset.checked_add(buf.len() as u64).is_none_or(|end| end > image.size()) {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the disk"));
                }
                image.read(&[vm_memory::VolatileSlice::from(buf)], offset)
            }
        }
    }
    fn len(&self) -> u64 {
        self.size().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
