//! One vCPU: its boot state, and the thread that runs it and dispatches its
//! exits to the buses until the VM stops.

use std::sync::{Arc, OnceLock};

use kvm_bindings::{
    kvm_msr_entry, CpuId, Msrs, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_INTERNAL_ERROR_SIMUL_EX, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::x86_64::{cpuid, interrupts, msr, regs};
use crate::boot::KernelEntry;
use crate::devices::Bus;
use crate::error::Error;
use crate::exit::{ExitReason, ExitSignal};

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: being interrupted makes KVM_RUN return EINTR.
}

/// Installs the kick handler once per process (and remembers if that failed).
pub fn install_kick_handler() -> Result<(), Error> {
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    (*INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), on_kick)))
        .map_err(|e| Error::Kvm("install vCPU kick handler", e))
}

pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
}

impl Vcpu {
    pub fn new(fd: VcpuFd, index: u8, pio: Arc<Bus>, mmio: Arc<Bus>, exit: Arc<ExitSignal>) -> Self {
        Vcpu { fd, index, pio, mmio, exit }
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// CPUID, MSRs, registers and LAPIC as the kernel expects them at `entry`.
    pub fn configure(
        &self,
        supported_cpuid: &CpuId,
        vcpus: u8,
        mem: &GuestMemoryMmap,
        entry: &KernelEntry,
    ) -> Result<(), Error> {
        let mut cpuid = supported_cpuid.clone();
        cpuid::configure(&mut cpuid, self.index, vcpus);
        self.fd.set_cpuid2(&cpuid).map_err(|e| Error::Kvm("KVM_SET_CPUID2", e))?;

        let msrs = msr::boot_msrs();
        let written = self.fd.set_msrs(&msrs).map_err(|e| Error::Kvm("KVM_SET_MSRS", e))?;
        if written != msrs.as_slice().len() {
            return Err(Error::Msrs { written, wanted: msrs.as_slice().len() });
        }

        if is_amd(supported_cpuid) {
            self.set_tsc_freq_sel();
        }

        let sregs = self.fd.get_sregs().map_err(|e| Error::Kvm("KVM_GET_SREGS", e))?;
        let sregs = regs::boot_sregs(mem, entry.protocol, sregs)?;
        self.fd.set_sregs(&sregs).map_err(|e| Error::Kvm("KVM_SET_SREGS", e))?;
        self.fd.set_regs(&regs::boot_regs(entry.protocol, entry.address)).map_err(|e| Error::Kvm("KVM_SET_REGS", e))?;
        self.fd.set_fpu(&regs::boot_fpu()).map_err(|e| Error::Kvm("KVM_SET_FPU", e))?;

        let mut lapic = self.fd.get_lapic().map_err(|e| Error::Kvm("KVM_GET_LAPIC", e))?;
        interrupts::configure_lint(&mut lapic);
        self.fd.set_lapic(&lapic).map_err(|e| Error::Kvm("KVM_SET_LAPIC", e))?;
        Ok(())
    }

    /// Sets TscFreqSel in AMD's HWCR, as firmware does on real AMD machines:
    /// without it Linux warns `[Firmware Bug]: TSC doesn't count with P0
    /// frequency!`. KVM accepts the bit from the VMM since Linux 6.7; an older
    /// KVM refuses it, and its guests keep the (harmless) warning.
    fn set_tsc_freq_sel(&self) {
        let hwcr = kvm_msr_entry { index: MSR_K7_HWCR, data: HWCR_TSC_FREQ_SEL, ..Default::default() };
        let written = Msrs::from_entries(&[hwcr]).ok().and_then(|msrs| self.fd.set_msrs(&msrs).ok());
        if written != Some(1) {
            tracing::debug!(vcpu = self.index, "this KVM does not let the VMM set HWCR.TscFreqSel");
        }
    }

    /// Runs the guest until an exit is requested (by this or another vCPU, a
    /// device, or the VMM's caller), recording why if this vCPU caused it.
    pub fn run(mut self) {
        crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Vcpu);
        let span = tracing::debug_span!("vcpu", index = self.index);
        let _enter = span.enter();
        while !self.exit.is_requested() {
            if let Some(reason) = self.run_once() {
                self.exit.request(reason);
            }
        }
    }

    fn run_once(&mut self) -> Option<ExitReason> {
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                self.pio.read(u64::from(port), data);
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Shutdown) => {
                self.log_triple_fault();
                Some(ExitReason::TripleFault)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => ExitReason::Reboot,
                KVM_SYSTEM_EVENT_CRASH => ExitReason::Error("the guest reported a crash".into()),
                other => ExitReason::Error(format!("unknown KVM system event {other}")),
            }),
            Ok(VcpuExit::InternalError) => Some(ExitReason::Error(self.internal_error())),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                Some(ExitReason::Error(format!("KVM entry failed on cpu {cpu}: hardware reason {reason:#x}")))
            }
            Ok(VcpuExit::Hlt) => None, // the in-kernel LAPIC handles HLT; harmless if seen
            Ok(other) => Some(ExitReason::Error(format!("vCPU {}: unexpected KVM exit {other:?}", self.index))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(ExitReason::Error(format!("vCPU {}: KVM_RUN failed: {e}", self.index))),
        }
    }

    /// Where the guest was and which exception it could not take: what a
    /// guest developer needs to find the fault.
    fn log_triple_fault(&self) {
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or_default();
        let cs = self.fd.get_sregs().map(|s| s.cs.selector).unwrap_or_default();
        let exception = self.fd.get_vcpu_events().map(|e| e.exception.nr).unwrap_or_default();
        tracing::warn!(
            vcpu = self.index,
            rip = format_args!("{rip:#x}"),
            cs = format_args!("{cs:#x}"),
            exception,
            "triple fault"
        );
    }

    /// Describes KVM_EXIT_INTERNAL_ERROR: for an instruction KVM could not
    /// emulate, where the guest was (RIP, its guest-physical address, CPL) and
    /// the instruction's bytes when KVM reports them, so the blocker names itself.
    fn internal_error(&mut self) -> String {
        let index = self.index;
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so `internal` is the
        // active member of the exit union (`emulation_failure` overlays it and is
        // decoded from these same words).
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let error = InternalError::decode(internal.suberror, internal.ndata, &internal.data);
        let location = self.location();
        format!("vCPU {index}: {}", error.describe(location.as_ref()))
    }

    /// Where this vCPU is: RIP, the guest-physical address it maps to (through
    /// the guest's page tables, by KVM_TRANSLATE) and the privilege level.
    fn location(&self) -> Option<GuestLocation> {
        let rip = self.fd.get_regs().ok()?.rip;
        let sregs = self.fd.get_sregs().ok()?;
        let gpa = self.fd.translate_gva(rip).ok().filter(|t| t.valid != 0).map(|t| t.physical_address);
        Some(GuestLocation { rip, gpa, cpl: sregs.cs.dpl, cs: sregs.cs.selector })
    }
}

/// AMD's hardware configuration register (MSR C001_0015) and its TscFreqSel
/// bit: the TSC counts at the P0 frequency (every AMD CPU since family 10h).
const MSR_K7_HWCR: u32 = 0xc001_0015;
const HWCR_TSC_FREQ_SEL: u64 = 1 << 24;

/// True when the CPUID vendor (leaf 0) is `AuthenticAMD`.
fn is_amd(cpuid: &CpuId) -> bool {
    let word = |bytes: &[u8; 4]| u32::from_le_bytes(*bytes);
    cpuid.as_slice().iter().any(|leaf| {
        leaf.function == 0 && leaf.ebx == word(b"Auth") && leaf.edx == word(b"enti") && leaf.ecx == word(b"cAMD")
    })
}

/// Where a vCPU stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GuestLocation {
    rip: u64,
    /// None when RIP does not map (or KVM_TRANSLATE failed).
    gpa: Option<u64>,
    cpl: u8,
    cs: u16,
}

/// A KVM_EXIT_INTERNAL_ERROR as kvm_run reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InternalError {
    suberror: u32,
    /// The bytes at RIP KVM fetched for the instruction it could not emulate
    /// (suberror KVM_INTERNAL_ERROR_EMULATION with the instruction-bytes flag;
    /// up to 15, the instruction first).
    instruction: Option<Vec<u8>>,
    /// KVM's remaining data words (for an emulation failure: the exit
    /// information after the flags and instruction bytes).
    data: Vec<u64>,
}

impl InternalError {
    /// Decodes kvm_run's `internal` member. For KVM_INTERNAL_ERROR_EMULATION,
    /// `emulation_failure` overlays it: data[0] holds its flags and, with
    /// KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, data[1..3] hold the
    /// instruction's size (first byte) and up to 15 bytes.
    fn decode(suberror: u32, ndata: u32, data: &[u64; 16]) -> Self {
        let words = &data[..(ndata as usize).min(data.len())];
        let with_bytes = u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
        if suberror == KVM_INTERNAL_ERROR_EMULATION && words.len() >= 3 && words[0] & with_bytes != 0 {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&words[1].to_le_bytes());
            raw[8..].copy_from_slice(&words[2].to_le_bytes());
            let size = usize::from(raw[0]).min(15);
            return InternalError { suberror, instruction: Some(raw[1..1 + size].to_vec()), data: words[3..].to_vec() };
        }
        let skip = if suberror == KVM_INTERNAL_ERROR_EMULATION && !words.is_empty() { 1 } else { 0 };
        InternalError { suberror, instruction: None, data: words[skip..].to_vec() }
    }

    fn describe(&self, at: Option<&GuestLocation>) -> String {
        let kind = match self.suberror {
            KVM_INTERNAL_ERROR_EMULATION => "could not emulate an instruction",
            KVM_INTERNAL_ERROR_SIMUL_EX => "hit simultaneous exceptions",
            KVM_INTERNAL_ERROR_DELIVERY_EV => "could not deliver an event",
            _ => "reported an internal error",
        };
        let mut text = format!("KVM {kind} (internal error {})", self.suberror);
        if let Some(at) = at {
            text += &format!(" at rip {:#x}", at.rip);
            match at.gpa {
                Some(gpa) => text += &format!(" (guest-physical {gpa:#x})"),
                None => text += " (not mapped)",
            }
            text += &format!(", cs {:#x}, cpl {}", at.cs, at.cpl);
        }
        match &self.instruction {
            Some(bytes) if bytes.is_empty() => text += ", bytes at rip: none fetched",
            Some(bytes) => {
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                text += &format!(", bytes at rip: {}", hex.join(" "));
            }
            None if self.suberror == KVM_INTERNAL_ERROR_EMULATION => text += ", bytes at rip: not reported by this KVM",
            None => {}
        }
        if !self.data.is_empty() {
            let words: Vec<String> = self.data.iter().map(|d| format!("{d:#x}")).collect();
            text += &format!(", data [{}]", words.join(", "));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[u64]) -> [u64; 16] {
        let mut data = [0u64; 16];
        data[..list.len()].copy_from_slice(list);
        data
    }

    /// An emulation failure as Linux's KVM reports it for `vmcall` (0f 01 c1) padded
    /// with nops: flags, size + bytes, then five words of exit information.
    #[test]
    fn emulation_failure_with_instruction_bytes_names_them() {
        let mut raw = [0x90u8; 16];
        raw[0] = 3;
        raw[1..4].copy_from_slice(&[0x0f, 0x01, 0xc1]);
        let data = words(&[
            1,
            u64::from_le_bytes(raw[..8].try_into().unwrap()),
            u64::from_le_bytes(raw[8..].try_into().unwrap()),
            0x30,
            0x7,
        ]);
        let error = InternalError::decode(KVM_INTERNAL_ERROR_EMULATION, 5, &data);
        assert_eq!(error.instruction.as_deref(), Some(&[0x0f, 0x01, 0xc1][..]));
        assert_eq!(error.data, vec![0x30, 0x7]);
        let at = GuestLocation { rip: 0xffff_ffff_8100_1000, gpa: Some(0x100_1000), cpl: 0, cs: 0x10 };
        assert_eq!(
            error.describe(Some(&at)),
            "KVM could not emulate an instruction (internal error 1) at rip 0xffffffff81001000 \
             (guest-physical 0x1001000), cs 0x10, cpl 0, bytes at rip: 0f 01 c1, data [0x30, 0x7]"
        );
    }

    #[test]
    fn emulation_failure_without_instruction_bytes_says_so() {
        // Older KVMs: no flags word at all, or flags without the bytes flag.
        let bare = InternalError::decode(KVM_INTERNAL_ERROR_EMULATION, 0, &[0; 16]);
        assert_eq!(bare.instruction, None);
        let flagless = InternalError::decode(KVM_INTERNAL_ERROR_EMULATION, 3, &words(&[0, 0xaa, 0xbb]));
        assert_eq!(flagless.instruction, None);
        assert_eq!(flagless.data, vec![0xaa, 0xbb]);
        let at = GuestLocation { rip: 0x1234, gpa: None, cpl: 3, cs: 0x23 };
        assert_eq!(
            flagless.describe(Some(&at)),
            "KVM could not emulate an instruction (internal error 1) at rip 0x1234 (not mapped), cs 0x23, \
             cpl 3, bytes at rip: not reported by this KVM, data [0xaa, 0xbb]"
        );
    }

    #[test]
    fn instruction_size_is_bounded_by_the_buffer() {
        // A hostile or buggy size byte cannot read past the 15 bytes KVM has.
        let data = words(&[1, 0xffff_ffff_ffff_ff20, u64::MAX, 9]);
        let error = InternalError::decode(KVM_INTERNAL_ERROR_EMULATION, 4, &data);
        assert_eq!(error.instruction.map(|b| b.len()), Some(15));
        // ndata larger than the array is clamped too.
        let error = InternalError::decode(KVM_INTERNAL_ERROR_SIMUL_EX, 200, &words(&[1, 2]));
        assert_eq!(error.data.len(), 16);
    }

    #[test]
    fn amd_is_recognised_by_its_cpuid_vendor() {
        let vendor = |ebx: &[u8; 4], edx: &[u8; 4], ecx: &[u8; 4]| {
            let leaf = kvm_bindings::kvm_cpuid_entry2 {
                function: 0,
                ebx: u32::from_le_bytes(*ebx),
                edx: u32::from_le_bytes(*edx),
                ecx: u32::from_le_bytes(*ecx),
                ..Default::default()
            };
            CpuId::from_entries(&[leaf]).unwrap()
        };
        assert!(is_amd(&vendor(b"Auth", b"enti", b"cAMD")));
        assert!(!is_amd(&vendor(b"Genu", b"ineI", b"ntel")));
    }

    #[test]
    fn other_internal_errors_keep_their_data() {
        let error = InternalError::decode(KVM_INTERNAL_ERROR_DELIVERY_EV, 2, &words(&[0x80000b0e, 0x2]));
        assert_eq!(error.instruction, None);
        assert_eq!(error.describe(None), "KVM could not deliver an event (internal error 3), data [0x80000b0e, 0x2]");
    }
}
