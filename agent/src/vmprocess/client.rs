//! The agent's side of a VM process: start one, and talk to it over its
//! control socket.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use proto::debug::{ControlRequest, VmProcessStatus};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;

use super::state_dir::StateDir;

/// How long a new VM process may take to open its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `exe vm-process --state-dir DIR` for the record already written in
/// `dir`. The process gets its own process group (a Ctrl-C or SIGTERM aimed
/// at the agent's group does not reach it) and is reaped by a thread here
/// while this agent lives; a later agent re-attaches through the socket.
/// The process enters the cgroups its record names itself.
pub fn spawn(exe: &Path, dir: &StateDir) -> io::Result<u32> {
    let log = std::fs::File::create(dir.vmm_log())?;
    let mut child = Command::new(exe)
        .arg("vm-process")
        .arg("--state-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    std::thread::Builder::new().name(format!("reap-{pid}")).spawn(move || child.wait())?;
    Ok(pid)
}

/// One request, one answer.
pub async fn request(dir: &StateDir, request: &ControlRequest) -> io::Result<VmProcessStatus> {
    let mut lines = send(dir, request).await?;
    let status = next_status(&mut lines)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "the VM process closed the connection"))?;
    match status.error {
        Some(error) => Err(io::Error::other(error)),
        None => Ok(status),
    }
}

/// A stream of status changes; `None` when the VM process is gone.
pub struct StatusWatch {
    lines: Lines<BufReader<OwnedReadHalf>>,
}

impl StatusWatch {
    /// Connects, retrying while `spawned` (the pid of a process just
    /// started) is alive and has no socket yet.
    pub async fn connect(dir: &StateDir, spawned: Option<u32>) -> io::Result<StatusWatch> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            match send(dir, &ControlRequest::Watch {}).await {
                Ok(lines) => return Ok(StatusWatch { lines }),
                Err(e) if tokio::time::Instant::now() < deadline && spawned.is_some_and(alive) => {
                    tracing::trace!(error = %e, "VM process not ready yet");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn next(&mut self) -> io::Result<Option<VmProcessStatus>> {
        next_status(&mut self.lines).await
    }
}

async fn send(dir: &StateDir, request: &ControlRequest) -> io::Result<Lines<BufReader<OwnedReadHalf>>> {
    let stream = UnixStream::connect(dir.control_socket()).await?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    Ok(BufReader::new(read).lines())
}

async fn next_status(lines: &mut Lines<BufReader<OwnedReadHalf>>) -> io::Result<Option<VmProcessStatus>> {
    match lines.next_line().await? {
        Some(line) => serde_json::from_str(&line).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        None => Ok(None),
    }
}

/// Whether the VM process `pid`, just spawned, still lives. Asked of the
/// process, not of its lock: probing the lock takes it for a moment, and a
/// VM process taking it in that moment would think another one runs.
fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}
