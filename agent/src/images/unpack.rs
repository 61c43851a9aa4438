//! Image layers applied to a directory, hostile content refused.
//!
//! A layer is a tar archive, gzip- or zstd-compressed or plain (recognised by
//! its magic bytes). Entries are written by hand, never through `tar`'s own
//! unpacking: absolute paths, `..`, paths through a symlink, symlinks or
//! hard links that point outside the tree, device nodes and FIFOs are refused;
//! whiteouts (`.wh.NAME`, `.wh..wh..opq`) delete what lower layers made.
//! Modes keep only the permission bits (no setuid); owners are not copied.
//!
//! What one image may unpack to is bounded ([`Limits`]): the bytes of its
//! layers' uncompressed tar streams, the bytes written into files, and the
//! number of entries, each summed over all layers. A gzip or zstd bomb stops
//! when the bound is reached, not when the disk is full.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use tar::EntryType;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// The node's default for `--max-image-size`: as large as the largest layer
/// a registry may send (64 GiB), far above any containerDisk.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 64 << 30;

/// The most entries (files, directories, links, whiteouts) one image may hold.
pub const MAX_IMAGE_ENTRIES: u64 = 1 << 20;

/// Bounds on what one image may unpack to, over all its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes: of the uncompressed layer streams, and of the files written (`--max-image-size`).
    pub max_bytes: u64,
    /// Tar entries.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_bytes: DEFAULT_MAX_IMAGE_BYTES, max_entries: MAX_IMAGE_ENTRIES }
    }
}

/// What the layers of one image used of its [`Limits`] so far.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    /// Uncompressed stream bytes read, shared with the reader that counts them.
    read: Rc<Cell<u64>>,
    written: u64,
    entries: u64,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget { limits, read: Rc::default(), written: 0, entries: 0 }
    }

    fn too_large(&self) -> UnpackError {
        UnpackError::TooLarge { limit: self.limits.max_bytes }
    }

    /// Bytes a file may still get.
    fn write_left(&self) -> u64 {
        self.limits.max_bytes.saturating_sub(self.written)
    }
}

/// A reader that counts into a [`Budget`] and fails past its byte limit.
struct Counted<R> {
    inner: R,
    read: Rc<Cell<u64>>,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.limit.saturating_sub(self.read.get());
        if left == 0 {
            // One byte more than the limit shows the stream goes on.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.read.set(self.limit.saturating_add(1));
                    Err(io::Error::new(io::ErrorKind::FileTooLarge, "the image is larger than its limit"))
                }
            };
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// Bytes for a message: `64 GiB`, `1 MiB`, else bytes.
fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{b} bytes"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {entry:?}: {why}")]
    Refused { entry: String, why: &'static str },
    #[error("the image unpacks to more than {} (the node's limit, --max-image-size)", size_text(*limit))]
    TooLarge { limit: u64 },
    #[error("the image has more than {limit} entries (kvmlet's limit)")]
    TooManyEntries { limit: u64 },
    #[error("reading the layer")]
    Read(#[source] io::Error),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn refused(entry: &Path, why: &'static str) -> UnpackError {
    UnpackError::Refused { entry: entry.display().to_string(), why }
}

/// Applies the layer in `blob` (compressed or not) on top of `root`,
/// counting what it unpacks to into `budget`.
pub fn apply_layer(blob: &Path, root: &Path, budget: &mut Budget) -> Result<(), UnpackError> {
    let mut file = BufReader::new(File::open(blob).map_err(UnpackError::Read)?);
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(UnpackError::Read)?;
    let head = io::Cursor::new(magic[..n].to_vec()).chain(file);
    match magic {
        [0x1f, 0x8b, ..] => apply_tar(flate2::read::GzDecoder::new(head), root, budget),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(head)
                .map_err(|e| UnpackError::Read(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            apply_tar(decoder, root, budget)
        }
        _ => apply_tar(head, root, budget),
    }
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Applies an uncompressed tar stream on top of `root`, within `budget`.
pub fn apply_tar(reader: impl Read, root: &Path, budget: &mut Budget) -> Result<(), UnpackError> {
    let read = budget.read.clone();
    let counted = Counted { inner: reader, read: read.clone(), limit: budget.limits.max_bytes };
    let result = apply_entries(tar::Archive::new(counted), root, budget);
    if read.get() > budget.limits.max_bytes {
        // Whatever the tar reader made of the cut-off stream: the limit is why.
        return Err(budget.too_large());
    }
    result
}

fn apply_entries(mut archive: tar::Archive<impl Read>, root: &Path, budget: &mut Budget) -> Result<(), UnpackError> {
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        budget.entries += 1;
        if budget.entries > budget.limits.max_entries {
            return Err(UnpackError::TooManyEntries { limit: budget.limits.max_entries });
        }
        let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
        let relative = clean(&raw)?;
        let Some(relative) = relative else { continue }; // the root itself
        let name = relative.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let parent = relative.parent().unwrap_or(Path::new(""));
        let dir = make_dirs(root, parent, &raw)?;
        if name == OPAQUE {
            for child in fs::read_dir(&dir).map_err(|e| write_err(&dir, e))? {
                let child = child.map_err(|e| write_err(&dir, e))?;
                remove(&child.path())?;
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(refused(&raw, "a whiteout names no file"));
            }
            remove(&dir.join(hidden))?;
            continue;
        }
        let target = dir.join(&name);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match entry.header().entry_type() {
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        remove(&target)?;
                        mkdir(&target)?;
                    }
                    Err(_) => mkdir(&target)?,
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(|e| write_err(&target, e))?;
            }
            EntryType::Regular | EntryType::Continuous => {
                remove(&target)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(|e| write_err(&target, e))?;
                // One byte past what is left shows the file is over the limit.
                let left = budget.write_left();
                let copied = io::copy(&mut (&mut entry).take(left.saturating_add(1)), &mut out)
                    .map_err(|e| write_err(&target, e))?;
                if copied > left {
                    return Err(budget.too_large());
                }
                budget.written += copied;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| refused(&raw, "a symlink without a target"))?;
                if link.is_absolute() || lexical_join(parent, &link).is_none() {
                    return Err(refused(&raw, "a symlink pointing outside the image"));
                }
                remove(&target)?;
                std::os::unix::fs::symlink(&link, &target).map_err(|e| write_err(&target, e))?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| refused(&raw, "a hard link without a target"))?;
                let source = clean(&link)?.ok_or_else(|| refused(&raw, "a hard link to the root"))?;
                let source_dir = make_dirs(root, source.parent().unwrap_or(Path::new("")), &raw)?;
                let source = source_dir.join(source.file_name().unwrap_or_default());
                let meta = fs::symlink_metadata(&source).map_err(|_| refused(&raw, "a hard link to a missing file"))?;
                if !meta.is_file() {
                    return Err(refused(&raw, "a hard link to something other than a file"));
                }
                remove(&target)?;
                fs::hard_link(&source, &target).map_err(|e| write_err(&target, e))?;
            }
            EntryType::Char | EntryType::Block => return Err(refused(&raw, "a device node")),
            EntryType::Fifo => return Err(refused(&raw, "a FIFO")),
            // PAX and GNU long-name headers are folded into entries by `tar`;
            // anything else carries no file.
            _ => {}
        }
    }
    Ok(())
}

/// The entry's path as plain relative components (`./` dropped); `None` for the root.
fn clean(raw: &Path) -> Result<Option<PathBuf>, UnpackError> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(refused(raw, "an absolute path")),
            Component::ParentDir => return Err(refused(raw, "a path with '..'")),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// `dir` + `link` resolved lexically; `None` when it climbs above the root.
fn lexical_join(dir: &Path, link: &Path) -> Option<PathBuf> {
    let mut parts: Vec<_> = dir.components().collect();
    for component in link.components() {
        match component {
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir => {}
            Component::Normal(_) => parts.push(component),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// Makes (or walks) `relative` under `root`, refusing to go through a symlink
/// or a file; returns the directory.
fn make_dirs(root: &Path, relative: &Path, entry: &Path) -> Result<PathBuf, UnpackError> {
    let mut dir = root.to_path_buf();
    for part in relative.components() {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => return Err(refused(entry, "a path through a symlink")),
            Ok(_) => return Err(refused(entry, "a path through a file")),
            Err(_) => mkdir(&dir)?,
        }
    }
    Ok(dir)
}

fn mkdir(path: &Path) -> Result<(), UnpackError> {
    fs::DirBuilder::new().mode(0o755).create(path).map_err(|e| write_err(path, e))
}

/// Removes whatever is at `path` (nothing there is fine), never following a symlink.
fn remove(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map_err(|e| write_err(path, e)),
        Ok(_) => fs::remove_file(path).map_err(|e| write_err(path, e)),
        Err(_) => Ok(()),
    }
}

fn write_err(path: &Path, source: io::Error) -> UnpackError {
    UnpackError::Write { path: path.to_path_buf(), source }
}

/// After all layers: every symlink resolves inside `root` (or nowhere).
/// Catches chains of links that each looked harmless alone.
pub fn check_links(root: &Path) -> Result<(), UnpackError> {
    let canonical_root = root.canonicalize().map_err(|e| write_err(root, e))?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for child in fs::read_dir(&dir).map_err(|e| write_err(&dir, e))? {
            let path = child.map_err(|e| write_err(&dir, e))?.path();
            let meta = fs::symlink_metadata(&path).map_err(|e| write_err(&path, e))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.file_type().is_symlink() {
                if let Ok(resolved) = path.canonicalize() {
                    if !resolved.starts_with(&canonical_root) {
                        let entry = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                        return Err(refused(&entry, "a symlink pointing outside the image"));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(path: &str, kind: EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o4755);
        // set_path refuses '..': write the name bytes directly, as a hostile tool would.
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        header
    }

    /// path, kind, contents, link target.
    type Spec<'a> = (&'a str, EntryType, &'a [u8], Option<&'a str>);

    fn layer(entries: &[Spec]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = header(path, *kind, data.len() as u64);
            if let Some(link) = link {
                h.set_link_name(link).unwrap();
                h.set_cksum();
            }
            builder.append(&h, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn apply(entries: &[Spec], root: &Path) -> Result<(), UnpackError> {
        apply_tar(&layer(entries)[..], root, &mut Budget::new(Limits::default()))
    }

    #[test]
    fn files_directories_links_and_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        apply(
            &[
                ("disk/", EntryType::Directory, b"", None),
                ("./disk/disk.img", EntryType::Regular, b"pattern", None),
                ("old/gone", EntryType::Regular, b"x", None),
                ("opaque/a", EntryType::Regular, b"x", None),
                ("disk/alias", EntryType::Symlink, b"", Some("disk.img")),
                ("disk/hard", EntryType::Link, b"", Some("disk/disk.img")),
            ],
            root,
        )
        .unwrap();
        apply(
            &[
                ("old/.wh.gone", EntryType::Regular, b"", None),
                ("opaque/.wh..wh..opq", EntryType::Regular, b"", None),
                ("opaque/b", EntryType::Regular, b"y", None),
            ],
            root,
        )
        .unwrap();
        assert_eq!(fs::read(root.join("disk/disk.img")).unwrap(), b"pattern");
        assert_eq!(fs::read(root.join("disk/alias")).unwrap(), b"pattern");
        assert_eq!(fs::read(root.join("disk/hard")).unwrap(), b"pattern");
        let mode = fs::metadata(root.join("disk/disk.img")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755, "setuid is dropped");
        assert!(!root.join("old/gone").exists());
        assert!(!root.join("opaque/a").exists());
        assert!(root.join("opaque/b").exists());
        check_links(root).unwrap();
    }

    #[test]
    fn hostile_entries_are_refused_by_name() {
        let cases: &[(&[Spec], &str)] = &[
            (&[("../escape", EntryType::Regular, b"x", None)], "'..'"),
            (&[("/etc/passwd", EntryType::Regular, b"x", None)], "absolute"),
            (&[("disk/l", EntryType::Symlink, b"", Some("../../etc"))], "outside"),
            (&[("disk/l", EntryType::Symlink, b"", Some("/etc"))], "outside"),
            (
                &[("l", EntryType::Symlink, b"", Some(".")), ("l/x", EntryType::Regular, b"x", None)],
                "through a symlink",
            ),
            (&[("h", EntryType::Link, b"", Some("../x"))], "'..'"),
            (&[("dev", EntryType::Char, b"", None)], "device node"),
            (&[("fifo", EntryType::Fifo, b"", None)], "FIFO"),
        ];
        for (entries, why) in cases {
            let dir = tempfile::tempdir().unwrap();
            let error = apply(entries, dir.path()).unwrap_err().to_string();
            assert!(error.contains(why), "{entries:?}: {error}");
        }
    }

    #[test]
    fn chained_links_that_escape_together_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        // a/b/self -> "." looks deeper than it is; a/b/up climbs through it.
        apply(
            &[
                ("a/b/", EntryType::Directory, b"", None),
                ("a/b/self", EntryType::Symlink, b"", Some(".")),
                ("a/b/up", EntryType::Symlink, b"", Some("self/../../..")),
            ],
            &root,
        )
        .ok();
        let error = check_links(&root).map(|()| "accepted".to_string()).unwrap_or_else(|e| e.to_string());
        // Either the entry was refused on the spot or the final check caught it.
        assert!(!root.join("a/b/up").exists() || error.contains("outside"), "{error}");
    }

    #[test]
    fn gzip_zstd_and_plain_layers_are_recognised() {
        let tar = layer(&[("disk/d.img", EntryType::Regular, b"abc", None)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
        for (name, bytes) in [("plain", tar.clone()), ("gzip", gz), ("zstd", zst)] {
            let dir = tempfile::tempdir().unwrap();
            let blob = dir.path().join("blob");
            fs::write(&blob, bytes).unwrap();
            let root = dir.path().join("root");
            fs::create_dir(&root).unwrap();
            apply_layer(&blob, &root, &mut Budget::new(Limits::default())).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(fs::read(root.join("disk/d.img")).unwrap(), b"abc", "{name}");
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        io::Write::write_all(&mut gz, bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn a_layer_over_the_size_limit_stops_at_the_limit() {
        let limits = Limits { max_bytes: 1 << 20, max_entries: 100 };
        let dir = tempfile::tempdir().unwrap();
        // A bomb: 8 MiB of zeros in a file, a few KiB compressed.
        let zeros = vec![0u8; 8 << 20];
        let bomb = gzip(&layer(&[("disk/d.img", EntryType::Regular, &zeros, None)]));
        assert!(bomb.len() < 64 << 10);
        fs::write(dir.path().join("bomb"), &bomb).unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let error = apply_layer(&dir.path().join("bomb"), &root, &mut Budget::new(limits)).unwrap_err();
        assert!(matches!(error, UnpackError::TooLarge { limit: 1048576 }), "{error:?}");
        assert_eq!(error.to_string(), "the image unpacks to more than 1 MiB (the node's limit, --max-image-size)");
        let written = fs::metadata(root.join("disk/d.img")).map(|m| m.len()).unwrap_or(0);
        assert!(written <= 1 << 20, "{written} bytes written past the limit");

        // The limit is over all layers of the image: two of 600 KiB are too much together.
        let part = vec![7u8; 600 << 10];
        let mut budget = Budget::new(limits);
        let root = dir.path().join("two");
        fs::create_dir(&root).unwrap();
        apply_tar(&layer(&[("a", EntryType::Regular, &part, None)])[..], &root, &mut budget).unwrap();
        let error = apply_tar(&layer(&[("b", EntryType::Regular, &part, None)])[..], &root, &mut budget).unwrap_err();
        assert!(matches!(error, UnpackError::TooLarge { .. }), "{error:?}");

        // Under the limit: unpacked.
        let root = dir.path().join("small");
        fs::create_dir(&root).unwrap();
        apply_tar(&layer(&[("a", EntryType::Regular, &part, None)])[..], &root, &mut Budget::new(limits)).unwrap();
        assert_eq!(fs::read(root.join("a")).unwrap(), part);
    }

    #[test]
    fn a_data_stream_over_the_limit_is_refused_even_when_nothing_is_written() {
        // A directory entry claiming 4 MiB of data: never written, still read.
        let limits = Limits { max_bytes: 1 << 20, max_entries: 100 };
        let junk = vec![1u8; 4 << 20];
        let tar = layer(&[("d/", EntryType::Directory, &junk, None)]);
        let dir = tempfile::tempdir().unwrap();
        let error = apply_tar(&tar[..], dir.path(), &mut Budget::new(limits)).unwrap_err();
        assert!(matches!(error, UnpackError::TooLarge { .. }), "{error:?}");
    }

    #[test]
    fn too_many_entries_are_refused() {
        let limits = Limits { max_bytes: 1 << 20, max_entries: 3 };
        let names: Vec<String> = (0..4).map(|i| format!("f{i}")).collect();
        let entries: Vec<Spec> = names.iter().map(|n| (n.as_str(), EntryType::Regular, &b"x"[..], None)).collect();
        let dir = tempfile::tempdir().unwrap();
        let error = apply_tar(&layer(&entries)[..], dir.path(), &mut Budget::new(limits)).unwrap_err();
        assert_eq!(error.to_string(), "the image has more than 3 entries (kvmlet's limit)");
        let dir = tempfile::tempdir().unwrap();
        apply_tar(&layer(&entries[..3])[..], dir.path(), &mut Budget::new(limits)).unwrap();
    }
}
