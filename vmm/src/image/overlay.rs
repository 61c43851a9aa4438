//! Copy-on-write overlays: a small qcow2 file over a read-only base image,
//! so that a VM writes to its own file while the base (and its pages in the
//! host's cache) is shared.

use std::fs::File;
use std::io;
use std::path::Path;

use imago::qcow2::Qcow2;
use imago::FormatCreateBuilder;

use super::{ImageError, ImageFiles};

/// Formats `overlay`, an empty file the caller made (with the name, mode and
/// owner it wants), as a qcow2 image over `base`, raw or qcow2: the same
/// virtual size, with `base` (made absolute) and its format recorded as the
/// backing file, as `qemu-img create -b` records them. kvmlet itself never
/// follows that name: whoever runs the overlay passes the base explicitly
/// (`DiskConfig::backing`). A qcow2 base must not have a backing file of its
/// own. Returns the virtual size.
pub fn create_overlay(overlay: File, base: &Path) -> Result<u64, ImageError> {
    let base_files = ImageFiles::open(base, true, &[])?;
    let format = base_files.format();
    let size = base_files.into_image(false)?.size().map_err(ImageError::Detect)?;
    let absolute = std::path::absolute(base).map_err(ImageError::CreateOverlay)?;
    let name = absolute.to_str().ok_or_else(|| {
        ImageError::CreateOverlay(io::Error::new(io::ErrorKind::InvalidInput, "the base's path is not UTF-8"))
    })?;
    let storage = imago::file::File::try_from(overlay).map_err(ImageError::CreateOverlay)?;
    Qcow2::<imago::file::File>::create_builder(storage)
        .size(size)
        .backing(name.to_string(), format.name().to_string())
        .create()
        .map_err(ImageError::CreateOverlay)?;
    Ok(size)
}
