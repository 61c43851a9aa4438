//! A qcow2 image and its backing chain, through imago's synchronous API:
//! the block worker thread calls it directly, reading into and writing from
//! guest memory without a bounce buffer.

use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Mutex;

use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::{ImageError, ImageFormat};

type Storage = imago::file::File;
type Access = FormatAccess<Storage>;

/// One qcow2 disk. Requests are served one at a time (the mutex also lets
/// discards take the exclusive access imago asks for); a request that made
/// imago panic poisons it, and every later request fails with an I/O error
/// instead of touching metadata left half-updated.
pub struct Qcow2Image {
    access: Mutex<Access>,
    size: u64,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image").field("size", &self.size).finish_non_exhaustive()
    }
}

impl Qcow2Image {
    /// The qcow2 image in `file` over `backing` (path, file, format; nearest
    /// first), which must be exactly the chain its headers name.
    pub(super) fn open(
        file: File,
        backing: Vec<(PathBuf, File, ImageFormat)>,
        writable: bool,
    ) -> Result<Qcow2Image, ImageError> {
        let mut chain = backing.into_iter();
        let access = open_qcow2(file, &mut chain, writable)?;
        let size = access.size();
        Ok(Qcow2Image { access: Mutex::new(access), size })
    }

    /// The virtual disk size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buffers` (guest memory) from the disk at byte `offset`.
    pub fn read<B: BitmapSlice>(&self, buffers: &[VolatileSlice<'_, B>], offset: u64) -> io::Result<()> {
        self.with(|access| {
            let (vector, _guard) = imago::io_buffers::IoVectorMut::from_volatile_slice(buffers);
            access.readv(vector, offset)
        })
    }

    /// Writes `buffers` (guest memory) to the disk at byte `offset`.
    pub fn write<B: BitmapSlice>(&self, buffers: &[VolatileSlice<'_, B>], offset: u64) -> io::Result<()> {
        self.with(|access| {
            let (vector, _guard) = imago::io_buffers::IoVector::from_volatile_slice(buffers);
            access.writev(vector, offset)
        })
    }

    /// Writes imago's cached metadata back and syncs the file.
    pub fn flush(&self) -> io::Result<()> {
        self.with(|access| {
            access.flush()?;
            access.sync()
        })
    }

    /// Gives clusters of the range back where it can; what reads back
    /// afterwards is unspecified (virtio-blk's DISCARD).
    pub fn discard(&self, offset: u64, length: u64) -> io::Result<()> {
        self.with(|access| match access.discard_to_any(offset, length) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()), // a hint only
            other => other,
        })
    }

    /// Makes the range read back as zeros; `unmap` lets it free clusters.
    pub fn write_zeroes(&self, offset: u64, length: u64, unmap: bool) -> io::Result<()> {
        self.with(
            |access| if unmap { access.discard_to_zero(offset, length) } else { access.write_zeroes(offset, length) },
        )
    }

    pub(super) fn with<T>(&self, op: impl FnOnce(&mut Access) -> io::Result<T>) -> io::Result<T> {
        // A panic in the library must cost this request (and the disk), not
        // the worker thread: it becomes an I/O error, and unwinding through
        // the guard poisons the mutex, so that nothing more runs on metadata
        // it may have left half-updated.
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut access = self.access.lock().map_err(|_| io::Error::other("the qcow2 image failed earlier"))?;
            op(&mut access)
        }));
        result.unwrap_or_else(|_| {
            tracing::error!("qcow2: the image library panicked; the disk fails every request from now on");
            Err(io::Error::other("the qcow2 image library panicked"))
        })
    }
}

/// A qcow2 layer over the rest of `chain`, with no other file opened: its
/// backing image is the chain's next layer exactly when its header names one.
fn open_qcow2(
    file: File,
    chain: &mut impl Iterator<Item = (PathBuf, File, ImageFormat)>,
    writable: bool,
) -> Result<Access, ImageError> {
    let storage = Storage::try_from(file).map_err(ImageError::Qcow2)?;
    let mut qcow2: Qcow2<Storage> = Qcow2::open_image(storage, writable).map_err(ImageError::Qcow2)?;
    if qcow2.requires_external_data_file() {
        return Err(ImageError::ExternalDataFile);
    }
    qcow2.set_data_file(None);
    let backing = match (qcow2.implicit_backing_file(), chain.next()) {
        (None, None) => None,
        (Some(name), None) => return Err(ImageError::UnexpectedBacking { name: name.clone() }),
        (None, Some(_)) => return Err(ImageError::BackingNotNamed),
        (Some(_), Some((path, file, format))) => {
            let layer = open_backing(file, format, chain)
                .map_err(|source| ImageError::Backing { path, source: Box::new(source) })?;
            Some(layer)
        }
    };
    qcow2.set_backing(backing);
    Ok(FormatAccess::new(qcow2))
}

/// A read-only backing layer of either format.
fn open_backing(
    file: File,
    format: ImageFormat,
    chain: &mut impl Iterator<Item = (PathBuf, File, ImageFormat)>,
) -> Result<Access, ImageError> {
    match format {
        ImageFormat::Qcow2 => open_qcow2(file, chain, false),
        ImageFormat::Raw => {
            if chain.next().is_some() {
                return Err(ImageError::RawWithBacking);
            }
            let storage = Storage::try_from(file).map_err(ImageError::Qcow2)?;
            let raw =
                Raw::builder(storage).write(false).open(DenyImplicitOpenGate::default()).map_err(ImageError::Qcow2)?;
            Ok(FormatAccess::new(raw))
        }
    }
}
