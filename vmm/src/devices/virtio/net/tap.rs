//! The host side of a NIC: a tap opened with `IFF_VNET_HDR`, so that every
//! frame read or written carries the guest's 12-byte `virtio_net_hdr_v1`
//! (checksum and segmentation offloads pass through untouched).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::net_config::{TapSource, MAX_TAP_NAME_LEN};

/// The header in front of every frame: `virtio_net_hdr_v1` (virtio 1.x, 5.1.6).
pub const VNET_HDR_LEN: usize = 12;

/// Where frames go and come from: a tap, or (in tests and benchmarks) one end
/// of a SOCK_SEQPACKET socket pair, which keeps frame boundaries just as a tap does.
pub struct Backend {
    file: File,
    is_tap: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("attach to tap `{name}`")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("file descriptor {fd}")]
    Fd {
        fd: i32,
        #[source]
        source: io::Error,
    },
    #[error("file descriptor {fd} is not a tap opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR")]
    NotAVnetTap { fd: i32 },
    #[error("set the tap's virtio header size")]
    VnetHdrSize(#[source] io::Error),
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd this process holds; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Backend {
    /// Opens (or duplicates) the tap `source` names, non-blocking, with the
    /// 12-byte virtio header.
    pub fn open(source: &TapSource) -> Result<Backend, TapError> {
        let file = match source {
            TapSource::Name(name) => open_by_name(name)?,
            TapSource::Fd(fd) => dup_tap(*fd)?,
        };
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is valid.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(TapError::VnetHdrSize(io::Error::last_os_error()));
        }
        Ok(Backend { file, is_tap: true })
    }

    /// A second descriptor for the same tap or socket (each boot of a VM
    /// process gets its own; closing it leaves the others working).
    pub fn try_clone(&self) -> io::Result<Backend> {
        Ok(Backend { file: self.file.try_clone()?, is_tap: self.is_tap })
    }

    /// A backend that is not a tap: one end of a socket pair (tests, benchmarks).
    pub fn from_socket(fd: OwnedFd) -> io::Result<Backend> {
        set_nonblocking(fd.as_raw_fd())?;
        Ok(Backend { file: File::from(fd), is_tap: false })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Tells the tap which offloads the guest accepts on frames it receives
    /// (TUN_F_* bits); a socket pair has nothing to tell.
    pub fn set_offload(&self, tun_flags: libc::c_uint) -> io::Result<()> {
        if !self.is_tap {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(tun_flags)) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn open_by_name(name: &str) -> Result<File, TapError> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_TAP_NAME_LEN || bytes.contains(&0) {
        let source = io::Error::from_raw_os_error(libc::EINVAL);
        return Err(TapError::Attach { name: name.into(), source });
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and may write) one `struct ifreq`, which `req` is
    // laid out as (16-byte name, flags, padding to 40 bytes) and lives across the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(TapError::Attach { name: name.into(), source: io::Error::last_os_error() });
    }
    Ok(tun)
}

fn dup_tap(fd: i32) -> Result<File, TapError> {
    let fail = |source| TapError::Fd { fd, source };
    // SAFETY: F_DUPFD_CLOEXEC on a caller-named fd number only creates a new
    // descriptor (or fails with EBADF); it touches no memory.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    // SAFETY: `copy` was just returned by the kernel and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(copy) });
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    // SAFETY: TUNGETIFF writes one `struct ifreq` into `req`, which is large enough.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut req) } < 0 {
        return Err(TapError::NotAVnetTap { fd });
    }
    let wanted = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    if req.flags & wanted != wanted {
        return Err(TapError::NotAVnetTap { fd });
    }
    set_nonblocking(file.as_raw_fd()).map_err(fail)?;
    Ok(file)
}

use std::os::unix::fs::OpenOptionsExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernels_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn an_fd_that_is_not_a_tap_is_refused() {
        let file = tempfile::tempfile().unwrap();
        let err = Backend::open(&TapSource::Fd(file.as_raw_fd())).err().unwrap();
        assert!(matches!(err, TapError::NotAVnetTap { .. }), "{err}");
        let err = Backend::open(&TapSource::Fd(987_654)).err().unwrap();
        assert!(matches!(err, TapError::Fd { .. }), "{err}");
    }
}
