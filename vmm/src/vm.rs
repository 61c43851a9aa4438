//! `Vm`: one microVM, assembled from a `VmConfig` in one readable function and
//! then started, stopped and waited on.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::signal::Killable;

use crate::arch::layout::{
    self, ACPI_SHUTDOWN_PORT, ACPI_SHUTDOWN_PORT_LEN, COM1_IRQ, COM1_PORT, COM1_PORT_LEN, GED_IRQ, GED_MMIO_SIZE,
    GED_MMIO_START, I8042_DATA_PORT, I8042_PORT_LEN,
};
use crate::arch::x86_64::boot_params::{self, BootInfo};
use crate::arch::x86_64::regs::EntryProtocol;
use crate::boot;
use crate::config::{DiskConfig, VmConfig};
use crate::console::{Console, ConsoleRing};
use crate::devices::acpi::{AcpiShutdown, Ged};
use crate::devices::coalesced::CoalescedRing;
use crate::devices::legacy::I8042;
use crate::devices::manager::{self, irq_line, MmioDeviceManager, VirtioRole};
use crate::devices::serial::{self, Doorbell, SerialPort};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::VirtioDevice;
use crate::devices::Bus;
use crate::error::Error;
use crate::exit::{ExitReason, ExitSignal};
use crate::firmware;
use crate::host_files::HostFiles;
use crate::image::ImageFiles;
use crate::vcpu::{install_kick_handler, kick_signal, Vcpu};

/// How long `wait` keeps kicking vCPUs that do not leave KVM_RUN.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Lets another thread press the power button or kill a running VM.
#[derive(Clone)]
pub struct VmHandle {
    exit: Arc<ExitSignal>,
    ged: Arc<Mutex<Ged>>,
    serial: Arc<Mutex<SerialPort>>,
}

impl VmHandle {
    /// Presses the ACPI power button: the guest decides what to do.
    pub fn power_button(&self) -> std::io::Result<()> {
        self.ged.lock().unwrap_or_else(|p| p.into_inner()).press_power_button()
    }

    /// Stops the VM at once; `Vm::wait` returns `ExitReason::Killed`.
    pub fn kill(&self) {
        self.exit.request(ExitReason::Killed);
    }

    /// Types `bytes` on the serial console; returns how many the UART took
    /// (its receive FIFO holds 64 bytes until the guest reads them).
    pub fn console_input(&self, bytes: &[u8]) -> usize {
        self.serial.lock().unwrap_or_else(|p| p.into_inner()).input(bytes)
    }

    /// The exit reason, if the VM has stopped (or is stopping).
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.reason()
    }
}

/// A microVM. Dropping it kills it; no vCPU thread or fd outlives it.
pub struct Vm {
    config: VmConfig,
    // Field order is drop order: threads first (joined in Drop), fds last.
    threads: Vec<JoinHandle<()>>,
    /// Wakes the serial flusher (None: output is not coalesced).
    serial_doorbell: Option<Arc<Doorbell>>,
    vcpus: Vec<Vcpu>,
    handle: VmHandle,
    console: Option<ConsoleRing>,
    memory: GuestMemoryMmap,
    _vm_fd: Arc<VmFd>,
    _kvm: Arc<Kvm>,
}

impl Vm {
    /// Validates `config`, opens its files and builds the VM; no vCPU runs
    /// until `start`.
    pub fn new(config: VmConfig) -> Result<Vm, Error> {
        let files = HostFiles::open(&config)?;
        Vm::with_files(config, files)
    }

    /// Builds the VM `config` describes on files already opened for it
    /// (`HostFiles::open` of the same config): opens nothing by path.
    pub fn with_files(config: VmConfig, files: HostFiles) -> Result<Vm, Error> {
        let HostFiles { kvm, mut kernel, kernel_format, initrd, disks, taps, console } = files;
        let vcpus = config.vcpus;
        let span = tracing::info_span!("vm", vcpus, memory_mib = config.memory_mib);
        let _enter = span.enter();

        for (cap, name) in
            [(Cap::Irqchip, "an in-kernel irqchip"), (Cap::Irqfd, "irqfd"), (Cap::Ioeventfd, "ioeventfd")]
        {
            if !kvm.check_extension(cap) {
                return Err(Error::MissingCapability(name));
            }
        }
        let vm_fd = Arc::new(kvm.create_vm().map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?);
        let memory = guest_memory(&vm_fd, config.memory_bytes())?;
        vm_fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize).map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR", e))?;
        vm_fd.create_irq_chip().map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        vm_fd.create_pit2(pit).map_err(|e| Error::Kvm("KVM_CREATE_PIT2", e))?;

        // Kernel, initrd, command line, boot information, firmware tables.
        let entry = boot::load_kernel(&memory, &config.kernel, &mut kernel, kernel_format)?;
        let initrd = match (initrd, &config.initrd) {
            (Some(mut file), Some(path)) => Some(boot::load_initrd(&memory, path, &mut file, entry.kernel_end)?),
            _ => None,
        };
        let cmdline_len = boot::load_cmdline(&memory, &config.cmdline)?;
        let e820 = boot_params::e820_map(config.memory_bytes());
        let info = BootInfo { e820: &e820, cmdline_len, initrd };
        match entry.protocol {
            EntryProtocol::Linux64 => boot_params::write_zero_page(&memory, entry.setup_header, &info)?,
            EntryProtocol::Pvh => boot_params::write_pvh_start_info(&memory, &info)?,
        }
        // Devices.
        let exit = Arc::new(ExitSignal::default());
        let console = Console::new(&config.console, console);
        let console_ring = console.ring();
        let serial_irq = irq_line(&vm_fd, COM1_IRQ)?;
        let ged = Arc::new(Mutex::new(Ged::new(irq_line(&vm_fd, GED_IRQ)?)));
        let serial = Arc::new(Mutex::new(SerialPort::new(serial_irq, console)));
        let mut pio = Bus::new();
        pio.insert(COM1_PORT.into(), COM1_PORT_LEN.into(), serial.clone())?;
        pio.insert(I8042_DATA_PORT.into(), I8042_PORT_LEN.into(), Arc::new(Mutex::new(I8042::new(exit.clone()))))?;
        let shutdown = Arc::new(Mutex::new(AcpiShutdown::new(exit.clone())));
        pio.insert(ACPI_SHUTDOWN_PORT.into(), ACPI_SHUTDOWN_PORT_LEN.into(), shutdown)?;
        let mut mmio = Bus::new();
        mmio.insert(GED_MMIO_START, GED_MMIO_SIZE, ged.clone())?;
        let mut devices = MmioDeviceManager::new(&vm_fd, &memory);
        let (mut disks, mut taps) =
            (disks.into_iter().map(Some).collect::<Vec<_>>(), taps.into_iter().map(Some).collect::<Vec<_>>());
        for slot in manager::plan(&config) {
            let device: Box<dyn VirtioDevice> = match slot.role {
                VirtioRole::Disk(index) => {
                    let file = disks.get_mut(index).and_then(Option::take).ok_or(Error::FilesMismatch("disks"))?;
                    Box::new(block_device(index, file, &config.disks[index])?)
                }
                VirtioRole::Net(index) => {
                    let tap = taps.get_mut(index).and_then(Option::take).ok_or(Error::FilesMismatch("nets"))?;
                    Box::new(Net::with_backend(tap, &config.nets[index]))
                }
            };
            devices.attach(&mut mmio, slot, device)?;
        }
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));

        // Firmware tables declare the devices just attached.
        let tables =
            firmware::build_with_devices(&config, devices.attached()).map_err(|e| Error::Firmware(e.to_string()))?;
        for (address, bytes) in tables.blobs() {
            memory.write_slice(bytes, GuestAddress(address)).map_err(|e| Error::Firmware(e.to_string()))?;
        }

        // vCPUs.
        let supported_cpuid =
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let vcpus = (0..vcpus)
            .map(|index| {
                let fd = vm_fd.create_vcpu(index.into()).map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
                let vcpu = Vcpu::new(fd, index, pio.clone(), mmio.clone(), exit.clone());
                vcpu.configure(&supported_cpuid, config.vcpus, &memory, &entry)?;
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let serial_doorbell = vcpus.first().and_then(|first| coalesce_serial_output(&kvm, &vm_fd, first, &serial));

        tracing::debug!(entry = format_args!("{:#x}", entry.address), protocol = ?entry.protocol, "VM built");
        Ok(Vm {
            config,
            threads: Vec::new(),
            serial_doorbell,
            vcpus,
            handle: VmHandle { exit, ged, serial },
            console: console_ring,
            memory,
            _vm_fd: vm_fd,
            _kvm: kvm,
        })
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The in-memory console ring, when the config asked for one.
    pub fn console(&self) -> Option<&ConsoleRing> {
        self.console.as_ref()
    }

    pub fn handle(&self) -> VmHandle {
        self.handle.clone()
    }

    /// Guest memory, for inspection by tests and the debugging socket.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Starts one thread per vCPU.
    pub fn start(&mut self) -> Result<(), Error> {
        if self.vcpus.is_empty() {
            return Err(Error::AlreadyStarted);
        }
        install_kick_handler()?;
        for vcpu in self.vcpus.drain(..) {
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{}", self.threads.len()))
                .spawn(move || vcpu.run())
                .map_err(Error::Thread)?;
            self.threads.push(thread);
        }
        // Coalesced console output reaches the console even while the guest
        // does nothing that exits (it may be halted); the flusher sleeps
        // while the guest is silent.
        if let Some(doorbell) = self.serial_doorbell.clone() {
            let serial = self.handle.serial.clone();
            let flush = move || {
                crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Serial);
                serial::flush_while_pending(&serial, &doorbell);
            };
            let thread = std::thread::Builder::new().name("serial".into()).spawn(flush).map_err(Error::Thread)?;
            self.threads.push(thread);
        }
        Ok(())
    }

    pub fn power_button(&self) -> std::io::Result<()> {
        self.handle.power_button()
    }

    pub fn kill(&self) {
        self.handle.kill()
    }

    /// Blocks until the guest stops, then stops every vCPU thread.
    pub fn wait(&mut self) -> ExitReason {
        let reason = loop {
            if let Some(reason) = self.handle.exit.wait_timeout(Duration::from_secs(3600)) {
                break reason;
            }
        };
        self.stop_vcpus();
        reason
    }

    /// Waits up to `timeout`; None if the guest still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitReason> {
        let reason = self.handle.exit.wait_timeout(timeout)?;
        self.stop_vcpus();
        Some(reason)
    }

    /// Kicks vCPU threads out of KVM_RUN until they all see the exit request.
    fn stop_vcpus(&mut self) {
        if let Some(doorbell) = &self.serial_doorbell {
            doorbell.stop();
        }
        let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
        while self.threads.iter().any(|t| !t.is_finished()) {
            for thread in self.threads.iter().filter(|t| !t.is_finished()) {
                let _ = thread.kill(kick_signal());
            }
            if Instant::now() > deadline {
                tracing::error!("vCPU threads did not stop; joining anyway");
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // What the guest wrote last, typically just before powering off.
        self.handle.serial.lock().unwrap_or_else(|p| p.into_inner()).replay();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.handle.kill();
            self.stop_vcpus();
        }
    }
}

/// Anonymous guest RAM, registered with KVM slot by slot.
fn guest_memory(vm_fd: &VmFd, size: u64) -> Result<GuestMemoryMmap, Error> {
    let ranges: Vec<(GuestAddress, usize)> =
        layout::ram_regions(size).into_iter().map(|(start, len)| (GuestAddress(start), len as usize)).collect();
    let memory = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::GuestMemory(e.to_string()))?;
    for (slot, region) in memory.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: memory
                .get_host_address(region.start_addr())
                .map_err(|e| Error::GuestMemory(e.to_string()))? as u64,
            flags: 0,
        };
        // SAFETY: the host range is a live mmap owned by `memory`, which the Vm
        // keeps until after the VM fd (and with it the slot) is closed.
        unsafe { vm_fd.set_user_memory_region(region_desc) }
            .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(memory)
}

/// virtio-blk for `disks[index]`, on its opened image files.
fn block_device(index: usize, files: ImageFiles, disk: &DiskConfig) -> Result<Block, Error> {
    let fail = |e: &dyn std::error::Error| Error::Device(format!("disks[{index}]: {}", error_chain(e)));
    let image = files.into_image(!disk.readonly).map_err(|e| fail(&e))?;
    Block::new(image, disk.readonly, disk.serial.as_deref()).map_err(|e| fail(&e))
}

/// An error and its sources, for a message that must stand alone.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Lets KVM queue the guest's console output instead of exiting per byte,
/// where KVM can; without it the console works the same, only slower.
/// Returns the doorbell of the flusher the VM must run.
fn coalesce_serial_output(
    kvm: &Kvm,
    vm_fd: &Arc<VmFd>,
    vcpu: &Vcpu,
    serial: &Mutex<SerialPort>,
) -> Option<Arc<Doorbell>> {
    if !kvm.check_extension(Cap::CoalescedPio) {
        tracing::debug!("KVM cannot coalesce port writes; console output exits per byte");
        return None;
    }
    let coalesced = CoalescedRing::map(vcpu.fd()).map_err(|e| e.to_string()).and_then(|ring| {
        serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .coalesce(vm_fd.clone(), ring, COM1_PORT)
            .map_err(|e| e.to_string())
    });
    coalesced.inspect_err(|e| tracing::warn!(error = %e, "console output is not coalesced")).ok()
}
