//! The VM process: `kvmlet vm-process --state-dir DIR`, one per VMI, started
//! by the node agent. It runs the guest (rebooting it in place when the
//! guest asks), answers the control socket, and records how the guest ended
//! in `exit.json` before it exits. It uses plain threads, no async runtime:
//! it should cost little more than the guest's memory.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use proto::debug::{ControlRequest, VmExit, VmExitKind, VmProcessState, VmProcessStatus};
use vmm::jail::JailConfig;
use vmm::{ExitReason, HostFiles, Vm, VmHandle};

use super::state_dir::{StateDir, VmIdentity};

/// Longest request line accepted on the control socket.
const MAX_REQUEST_LINE: u64 = 16 * 1024;
/// Most console input bytes in one request.
const MAX_CONSOLE_INPUT: usize = 4096;
/// How long console input may wait for the guest to drain the UART's FIFO.
const CONSOLE_INPUT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum VmProcessError {
    #[error("state directory {path}")]
    StateDir { path: String, source: io::Error },
    #[error("control socket")]
    ControlSocket(#[source] io::Error),
    #[error(transparent)]
    Seccomp(#[from] vmm::seccomp::SeccompError),
    #[error("enter the network namespace {path}")]
    Netns {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Jail(#[from] vmm::jail::JailError),
    #[error("cgroup")]
    Cgroup(#[source] io::Error),
}

/// What the control threads share with the thread that runs the guest.
struct Shared {
    status: Mutex<(u64, VmProcessStatus)>,
    changed: Condvar,
    vm: Mutex<Option<VmHandle>>,
    kill_requested: AtomicBool,
    /// Answer `testJail` requests (set by the agent's `--test-vm-hooks`).
    test_hooks: bool,
}

impl Shared {
    fn update(&self, change: impl FnOnce(&mut VmProcessStatus)) {
        let mut guard = self.status.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut guard.1);
        guard.0 += 1;
        self.changed.notify_all();
    }

    fn snapshot(&self) -> (u64, VmProcessStatus) {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs the VM recorded in `dir` until the guest stops for good.
pub fn run(dir: &StateDir) -> Result<VmExit, VmProcessError> {
    let fail = |source| VmProcessError::StateDir { path: dir.path().display().to_string(), source };
    // Held until this process exits: the node's proof that the VM is alive.
    let _lock = dir.take_lock().map_err(fail)?;
    let record = dir.read_record().map_err(fail)?;
    let VmIdentity { namespace, name, uid } = &record.identity;
    let span = tracing::info_span!("vm", %namespace, vmi = %name, %uid);
    let _enter = span.enter();
    // Its cgroups first: everything from here on is charged and limited there.
    super::cgroup::enter(&record.cgroups).map_err(VmProcessError::Cgroup)?;
    // The network namespace first, before any thread exists (threads inherit
    // it): the tap the VMM opens by name lives there.
    if let Some(path) = &record.netns {
        let netns_error = |source| VmProcessError::Netns { path: path.display().to_string(), source };
        let file = std::fs::File::open(path).map_err(netns_error)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|errno| netns_error(io::Error::from(errno)))?;
    }
    // Its own PID namespace before anything else is opened or started: the
    // process the agent spawned stays outside as the VM's supervisor, the
    // VM runs on as pid 1 inside, known to the node by its host pid.
    let pid = match record.vm_user {
        Some(_) => vmm::jail::pid_namespace::enter(nix::sys::signal::SigSet::empty())?,
        None => std::process::id(),
    };
    std::fs::write(dir.pid(), format!("{pid}\n")).map_err(fail)?;
    let exit_record = dir.create_exit_record().map_err(fail)?;

    let shared = Arc::new(Shared {
        status: Mutex::new((
            0,
            VmProcessStatus {
                pid,
                state: VmProcessState::Starting,
                boots: 0,
                started_at_ms: None,
                exit: None,
                error: None,
            },
        )),
        changed: Condvar::new(),
        vm: Mutex::new(None),
        kill_requested: AtomicBool::new(false),
        test_hooks: record.test_hooks,
    });
    let socket = dir.control_socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(VmProcessError::ControlSocket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(VmProcessError::ControlSocket)?;

    // Everything the guest will use is opened now (in the VM's network
    // namespace, where its tap is), then the process locks itself in. A VM
    // that cannot be built still jails itself: the exit is recorded the same way.
    let mut config = record.config.clone();
    config.console.file = Some(dir.serial_log());
    let files = HostFiles::open(&config);
    if let Some(user) = record.vm_user {
        let jail = JailConfig { root: dir.jail_root(), user, new_network: record.netns.is_none() };
        std::fs::create_dir_all(&jail.root).map_err(fail)?;
        let landlock = vmm::jail::enter(&jail)?;
        tracing::info!(%user, ?landlock, "jailed");
    }
    // Then this thread's seccomp filter (setns, mount and the jail's other
    // calls are not on its list); every thread started from here on
    // inherits it before entering its own.
    vmm::seccomp::enter(vmm::seccomp::ThreadKind::Control)?;
    let accept_shared = shared.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || accept(listener, accept_shared))
        .map_err(VmProcessError::ControlSocket)?;

    let exit = match files {
        Ok(files) => run_guest(&shared, config, files),
        Err(e) => VmExit { kind: VmExitKind::Error, message: crate::errors::with_causes(&e), at_ms: now_ms() },
    };
    tracing::info!(exit = ?exit.kind, message = %exit.message, "guest stopped");
    // exit.json first: whoever sees the socket close can then read why.
    if let Err(e) = exit_record.write(&exit) {
        tracing::error!(error = %e, "cannot record the exit");
    }
    shared.update(|status| {
        status.state = VmProcessState::Exited;
        status.exit = Some(exit.clone());
    });
    Ok(exit)
}

/// Boots the guest, again after each reboot, until it stops for another
/// reason. Each boot works on its own duplicates of `files`.
fn run_guest(shared: &Shared, config: vmm::VmConfig, files: HostFiles) -> VmExit {
    let exit = |kind, message: String| VmExit { kind, message, at_ms: now_ms() };
    loop {
        let boot_files = match files.try_clone() {
            Ok(files) => files,
            Err(e) => return exit(VmExitKind::Error, format!("duplicate the VM's files: {e}")),
        };
        let mut vm = match Vm::with_files(config.clone(), boot_files) {
            Ok(vm) => vm,
            Err(e) => return exit(VmExitKind::Error, crate::errors::with_causes(&e)),
        };
        *shared.vm.lock().unwrap_or_else(|p| p.into_inner()) = Some(vm.handle());
        // A kill that arrived while no VM existed (between boots) still counts.
        if shared.kill_requested.load(Ordering::SeqCst) {
            return exit(VmExitKind::Killed, ExitReason::Killed.to_string());
        }
        if let Err(e) = vm.start() {
            return exit(VmExitKind::Error, crate::errors::with_causes(&e));
        }
        shared.update(|status| {
            status.state = VmProcessState::Running;
            status.boots += 1;
            status.started_at_ms = Some(now_ms());
        });
        let reason = vm.wait();
        *shared.vm.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if reason == ExitReason::Reboot {
            tracing::info!("guest rebooting");
            shared.update(|status| status.state = VmProcessState::Starting);
            continue;
        }
        return exit(exit_kind(&reason), reason.to_string());
    }
}

/// The one translation from the VMM's reason to the exit kind the node,
/// `kvmlet run` and `kvmlet vm-process` report.
pub fn exit_kind(reason: &ExitReason) -> VmExitKind {
    match reason {
        ExitReason::PowerOff => VmExitKind::PowerOff,
        ExitReason::Reboot => VmExitKind::Reboot,
        ExitReason::TripleFault => VmExitKind::TripleFault,
        ExitReason::Killed => VmExitKind::Killed,
        ExitReason::Error(_) => VmExitKind::Error,
    }
}

fn accept(listener: UnixListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let shared = shared.clone();
        let spawned = std::thread::Builder::new().name("control-conn".into()).spawn(move || {
            if let Err(e) = serve(stream, &shared) {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot serve a control connection");
        }
    }
}

/// One connection: a request per line, an answer per line.
fn serve(stream: UnixStream, shared: &Shared) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.by_ref().take(MAX_REQUEST_LINE).read_line(&mut line)? == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST_LINE {
            let (_, status) = shared.snapshot();
            let error = format!("request longer than {MAX_REQUEST_LINE} bytes");
            return answer(&mut writer, VmProcessStatus { error: Some(error), ..status });
        }
        let request = match serde_json::from_str::<ControlRequest>(line.trim()) {
            Ok(request) => request,
            Err(e) => {
                let (_, status) = shared.snapshot();
                answer(&mut writer, VmProcessStatus { error: Some(format!("invalid request: {e}")), ..status })?;
                continue;
            }
        };
        if matches!(request, ControlRequest::Watch {}) {
            return watch(&mut writer, shared);
        }
        let error = handle(&request, shared).err();
        let (_, status) = shared.snapshot();
        answer(&mut writer, VmProcessStatus { error, ..status })?;
    }
}

fn answer(writer: &mut UnixStream, status: VmProcessStatus) -> io::Result<()> {
    let mut line = serde_json::to_vec(&status)?;
    line.push(b'\n');
    writer.write_all(&line)
}

/// Sends the status now and after every change, until the guest has exited.
fn watch(writer: &mut UnixStream, shared: &Shared) -> io::Result<()> {
    let mut seen = None;
    loop {
        let (version, status) = {
            let mut guard = shared.status.lock().unwrap_or_else(|p| p.into_inner());
            while Some(guard.0) == seen {
                guard = shared.changed.wait(guard).unwrap_or_else(|p| p.into_inner());
            }
            guard.clone()
        };
        seen = Some(version);
        let exited = status.state == VmProcessState::Exited;
        answer(writer, status)?;
        if exited {
            return Ok(());
        }
    }
}

fn handle(request: &ControlRequest, shared: &Shared) -> Result<(), String> {
    let vm = shared.vm.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match request {
        ControlRequest::Status {} | ControlRequest::Watch {} => Ok(()),
        ControlRequest::Kill {} => {
            shared.kill_requested.store(true, Ordering::SeqCst);
            if let Some(vm) = vm {
                vm.kill();
            }
            Ok(())
        }
        ControlRequest::PowerButton {} => match vm {
            Some(vm) => vm.power_button().map_err(|e| format!("power button: {e}")),
            None => Err("the guest is not running".into()),
        },
        ControlRequest::ConsoleInput { data } => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| format!("consoleInput.data: not valid base64: {e}"))?;
            if bytes.len() > MAX_CONSOLE_INPUT {
                return Err(format!("consoleInput.data: {} bytes, at most {MAX_CONSOLE_INPUT}", bytes.len()));
            }
            let vm = vm.ok_or("the guest is not running")?;
            type_slowly(&vm, &bytes)
        }
        ControlRequest::TestJail { check } if shared.test_hooks => Err(super::jail_checks::attempt(*check)),
        ControlRequest::TestJail { .. } => Err("testJail: this VM process was not started with test hooks".into()),
    }
}

/// Feeds the UART's 64-byte FIFO as the guest drains it.
fn type_slowly(vm: &VmHandle, mut bytes: &[u8]) -> Result<(), String> {
    let deadline = Instant::now() + CONSOLE_INPUT_TIMEOUT;
    while !bytes.is_empty() {
        let queued = vm.console_input(bytes);
        bytes = &bytes[queued..];
        if queued == 0 {
            if Instant::now() > deadline {
                return Err(format!("the guest did not read its console; {} bytes dropped", bytes.len()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}
