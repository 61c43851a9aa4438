//! One vCPU: its boot state, and the thread that runs it and dispatches its
//! exits to the buses until the VM stops.

use std::sync::{Arc, OnceLock};

use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
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

    /// Describes KVM_EXIT_INTERNAL_ERROR, including the instruction bytes KVM
    /// could not emulate when it says so.
    fn internal_error(&mut self) -> String {
        let index = self.index;
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so `internal` is the
        // active member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let data: Vec<String> = internal.data[..ndata].iter().map(|d| format!("{d:#x}")).collect();
        let kind = match internal.suberror {
            1 => "instruction emulation failed",
            2 => "simultaneous exceptions",
            3 => "delivery event failed",
            _ => "internal error",
        };
        format!("vCPU {index}: KVM internal error {} ({kind}), data [{}]", internal.suberror, data.join(", "))
    }
}
