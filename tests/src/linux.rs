//! The Linux guest tests' prerequisites: the stock kernel + busybox initramfs
//! built by `tests/linux/build`, and an honest check of whether this host's KVM
//! can run a stock kernel at all.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::{build_outputs, kvmlet_bin};

/// The Linux guest: Debian's cloud kernel and the test initramfs.
pub struct LinuxGuest {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// Builds (once per process) the Linux guest from Debian packages.
pub fn linux_guest() -> &'static LinuxGuest {
    static GUEST: OnceLock<LinuxGuest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let mut outputs = build_outputs("tests/linux/build", 2).into_iter();
        LinuxGuest { kernel: outputs.next().unwrap(), initramfs: outputs.next().unwrap() }
    })
}

/// A minimal bzImage whose 64-bit entry (load address + 0x200) runs `code`.
pub fn tiny_bzimage(code: &[u8]) -> Vec<u8> {
    const SETUP_SECTS: u8 = 1;
    let mut image = vec![0u8; (SETUP_SECTS as usize + 1) * 512];
    image[0x1f1] = SETUP_SECTS;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // boot protocol 2.15
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image[0x236..0x238].copy_from_slice(&0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    let protected_mode_start = image.len();
    image.resize(protected_mode_start + 0x200, 0);
    image.extend_from_slice(code);
    image
}

/// Ring-0 code that enables SSE, executes `xorps` and powers off through the
/// ACPI sleep-control port: exactly what the nested KVM here cannot emulate.
const RING0_SSE_THEN_POWEROFF: &[u8] = &[
    0x0f, 0x20, 0xe0, // mov rax, cr4
    0x0d, 0x00, 0x06, 0x00, 0x00, // or eax, 0x600 (OSFXSR | OSXMMEXCPT)
    0x0f, 0x22, 0xe0, // mov cr4, rax
    0x0f, 0x57, 0xc0, // xorps xmm0, xmm0
    0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
    0xb0, 0x34, // mov al, (5 << 2) | (1 << 5): SLP_TYP=S5, SLP_EN
    0xee, // out dx, al
    0x0f, 0x0b, // ud2: not reached when the power-off works
];

/// Ok if this host's KVM runs guest kernel code the way stock Linux needs it
/// (here: SSE in ring 0); Err(why) otherwise. Decided by running a guest.
pub fn host_runs_stock_kernels() -> Result<(), String> {
    static VERDICT: OnceLock<Result<(), String>> = OnceLock::new();
    VERDICT
        .get_or_init(|| {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let kernel = dir.path().join("sse-check.bzImage");
            std::fs::write(&kernel, tiny_bzimage(RING0_SSE_THEN_POWEROFF)).map_err(|e| e.to_string())?;
            let output = Command::new(kvmlet_bin())
                .arg("run")
                .arg("--kernel")
                .arg(&kernel)
                .output()
                .map_err(|e| format!("run kvmlet: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "this host's KVM cannot run ring-0 SSE code (a stock kernel needs it): a guest doing \
                     `xorps` in ring 0 ended with {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_bzimage_has_a_valid_setup_header() {
        let image = tiny_bzimage(&[0xf4]);
        assert_eq!(&image[0x202..0x206], b"HdrS");
        assert_eq!(image[0x1f1], 1);
        // Entry byte sits at the protected-mode start (after 2 sectors) + 0x200.
        assert_eq!(image[1024 + 0x200], 0xf4);
    }
}
