//! The node's table of VM processes, keyed by VMI UID, kept current by one
//! watch task per process. Every change pokes the node loop for that VMI.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;
use proto::debug::{VmExit, VmProcessState, VmProcessStatus, VmSummary};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase};
use tokio::sync::mpsc::UnboundedSender;
use vmm::VmConfig;

use crate::vmprocess::client::{self, StatusWatch};
use crate::vmprocess::server::now_ms;
use crate::vmprocess::state_dir::{self, StateDir, VmIdentity, VmRecord};

/// What the agent knows of a VM process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Process {
    /// Spawned or attached; the guest does not run yet.
    Starting,
    /// The guest runs (`status` has its boot count and start time).
    Running,
    /// The process is gone: with the exit it recorded, or, if it died
    /// without recording one (killed, crashed), one the agent made when it
    /// noticed (see [`died`]).
    Exited(VmExit),
}

/// A graceful shutdown in progress.
#[derive(Debug, Clone)]
pub struct Shutdown {
    pub started: Instant,
    pub last_press: Instant,
    pub grace: Duration,
    /// The grace period ran out and the VM was killed.
    pub killed: bool,
}

#[derive(Debug, Clone)]
pub struct VmEntry {
    pub identity: VmIdentity,
    pub dir: StateDir,
    pub config: VmConfig,
    pub pid: Option<u32>,
    pub process: Process,
    pub status: Option<VmProcessStatus>,
    pub shutdown: Option<Shutdown>,
    /// The state directory is gone (the VM's final state was handled).
    pub cleaned: bool,
    /// The phase last reported for the VMI.
    pub phase: String,
    /// Which kernel boots and why (`VmRecord::boot`).
    pub boot: Option<String>,
}

impl VmEntry {
    pub fn summary(&self) -> VmSummary {
        let running = self.process == Process::Running;
        let uptime_seconds = self
            .status
            .as_ref()
            .and_then(|s| s.started_at_ms)
            .filter(|_| running)
            .map(|started| now_ms().saturating_sub(started) / 1000);
        let last_exit = self.exit();
        VmSummary {
            namespace: self.identity.namespace.clone(),
            name: self.identity.name.clone(),
            uid: self.identity.uid.clone(),
            pid: self.pid.filter(|_| !matches!(self.process, Process::Exited(_))),
            phase: self.phase.clone(),
            vcpus: self.config.vcpus,
            memory_mib: self.config.memory_mib,
            uptime_seconds,
            boots: self.status.as_ref().map_or(0, |s| s.boots),
            last_exit,
        }
    }

    /// How the VM ended, once its process is gone.
    pub fn exit(&self) -> Option<VmExit> {
        match &self.process {
            Process::Exited(exit) => Some(exit.clone()),
            _ => None,
        }
    }

    pub fn object_ref(&self) -> ObjectRef<VirtualMachineInstance> {
        ObjectRef::new(&self.identity.name).within(&self.identity.namespace)
    }
}

/// The exit a gone VM process recorded, or else that it died (read while
/// its state directory, and the last line of its log, are still there).
fn exit_of(dir: &StateDir, pid: Option<u32>) -> VmExit {
    dir.read_exit().unwrap_or_else(|| died(dir, pid))
}

/// A VM process that died without recording an exit (killed, crashed).
pub fn died(dir: &StateDir, pid: Option<u32>) -> VmExit {
    let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    let cgroups = dir.read_record().map(|record| record.cgroups).unwrap_or_default();
    if let Some(limit) = crate::vmprocess::cgroup::oom_killed(&cgroups) {
        let allowance = crate::vmprocess::cgroup::VMM_MEMORY_ALLOWANCE_MIB;
        return VmExit {
            kind: proto::debug::VmExitKind::Error,
            message: format!(
                "the VM process{pid} was killed by its memory cgroup: it needed more than its limit of {} MiB \
                 (guest memory + {allowance} MiB for the VMM)",
                limit >> 20
            ),
            at_ms: now_ms(),
        };
    }
    let log = std::fs::read_to_string(dir.vmm_log()).unwrap_or_default();
    let last = log.lines().rev().find(|l| !l.trim().is_empty());
    let last = last.map(|l| format!(": {}", l.trim())).unwrap_or_default();
    VmExit {
        kind: proto::debug::VmExitKind::Error,
        message: format!("the VM process{pid} died unexpectedly{last}"),
        at_ms: now_ms(),
    }
}

/// The shared table and the channel that pokes the node loop.
#[derive(Clone)]
pub struct VmTable {
    entries: Arc<Mutex<HashMap<String, VmEntry>>>,
    poke: UnboundedSender<ObjectRef<VirtualMachineInstance>>,
}

impl VmTable {
    pub fn new(poke: UnboundedSender<ObjectRef<VirtualMachineInstance>>) -> VmTable {
        VmTable { entries: Arc::default(), poke }
    }

    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, VmEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, uid: &str) -> Option<VmEntry> {
        self.lock().get(uid).cloned()
    }

    pub fn update(&self, uid: &str, change: impl FnOnce(&mut VmEntry)) {
        if let Some(entry) = self.lock().get_mut(uid) {
            change(entry);
        }
    }

    /// The VMI phase `kvmlet ps` shows for the VM (if the node has it).
    pub fn set_phase(&self, uid: &str, phase: VirtualMachineInstancePhase) {
        let phase = format!("{phase:?}");
        self.update(uid, |e| {
            if e.phase != phase {
                e.phase = phase;
            }
        });
    }

    pub fn remove(&self, uid: &str) -> Option<VmEntry> {
        self.lock().remove(uid)
    }

    /// Finds the VM processes a previous agent left in `run_dir` and watches
    /// them again. Directories without a readable record are removed.
    pub fn attach_all(&self, run_dir: &Path) {
        for dir in state_dir::list(run_dir) {
            let record = match dir.read_record() {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(dir = %dir.path().display(), error = %e, "removing a state directory without a record");
                    let _ = dir.remove();
                    continue;
                }
            };
            let alive = dir.is_locked();
            let process = if alive { Process::Starting } else { Process::Exited(exit_of(&dir, dir.read_pid())) };
            let VmIdentity { namespace, name, uid } = &record.identity;
            tracing::info!(%namespace, vmi = %name, %uid, alive, pid = ?dir.read_pid(), "re-attached to a VM");
            self.insert(record, dir.clone(), dir.read_pid(), process);
            if alive {
                self.watch(dir, None);
            }
        }
    }

    /// Writes the record, starts the VM process and watches it.
    pub fn start(&self, record: VmRecord, dir: StateDir, exe: &Path) -> std::io::Result<()> {
        dir.write_record(&record)?;
        let pid = client::spawn(exe, &dir)?;
        self.insert(record, dir.clone(), Some(pid), Process::Starting);
        self.watch(dir, Some(pid));
        Ok(())
    }

    pub(super) fn insert(&self, record: VmRecord, dir: StateDir, pid: Option<u32>, process: Process) {
        let entry = VmEntry {
            identity: record.identity.clone(),
            dir,
            config: record.config,
            pid,
            process,
            status: None,
            shutdown: None,
            cleaned: false,
            phase: String::new(),
            boot: record.boot,
        };
        self.lock().insert(record.identity.uid, entry);
    }

    /// Follows one VM process until it is gone.
    /// `spawned`: the pid of a process just started, waited for while it opens its socket.
    fn watch(&self, dir: StateDir, spawned: Option<u32>) {
        let table = self.clone();
        tokio::spawn(async move {
            let Some(uid) = dir.path().file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
            match StatusWatch::connect(&dir, spawned).await {
                Ok(mut watch) => {
                    while let Ok(Some(status)) = watch.next().await {
                        table.update(&uid, |entry| {
                            entry.pid = Some(status.pid);
                            if status.state == VmProcessState::Running {
                                entry.process = Process::Running;
                            }
                            entry.status = Some(status);
                        });
                        table.poke(&uid);
                    }
                }
                Err(e) => tracing::debug!(%uid, error = %e, "cannot watch the VM process"),
            }
            // The socket closed: the process is gone (its lock goes with it).
            table.update(&uid, |entry| entry.process = Process::Exited(exit_of(&dir, entry.pid)));
            table.poke(&uid);
        });
    }

    /// Asks the node loop to look at this VM's VMI again.
    pub fn poke(&self, uid: &str) {
        if let Some(object) = self.get(uid).map(|e| e.object_ref()) {
            let _ = self.poke.send(object);
        }
    }

    pub fn summaries(&self) -> Vec<VmSummary> {
        let mut list: Vec<VmSummary> = self.lock().values().map(VmEntry::summary).collect();
        list.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        list
    }

    pub fn find(&self, namespace: &str, name: &str) -> Option<VmEntry> {
        self.lock().values().find(|e| e.identity.namespace == namespace && e.identity.name == name).cloned()
    }
}
