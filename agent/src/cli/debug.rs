//! `kvmlet ps`, `kvmlet inspect`, `kvmlet console`: the node's VMs through
//! the agent's debugging socket (RUN_DIR/kvmlet.sock).

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::Method;
use proto::debug::{VmDetail, VmSummary};

use crate::debug_socket::client::{vm_path, NodeClient};
use crate::debug_socket::SOCKET_NAME;

use super::print_out;

/// Ctrl-] ends `kvmlet console`, as in telnet and virsh.
const DETACH: u8 = 0x1d;

#[derive(Debug, Clone, Args)]
pub struct SocketArgs {
    /// The agent's run directory (its debugging socket is DIR/kvmlet.sock).
    #[arg(long, value_name = "DIR", default_value = "/run/kvmlet", env = "KVMLET_RUN_DIR")]
    pub run_dir: PathBuf,
}

impl SocketArgs {
    fn client(&self) -> NodeClient {
        NodeClient::new(&self.run_dir.join(SOCKET_NAME))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct VmiArgs {
    /// The VMI's name (its namespace: -n/--namespace).
    pub vmi: String,
    #[command(flatten)]
    pub socket: SocketArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn ps(args: PsArgs) -> anyhow::Result<()> {
    let vms: Vec<VmSummary> = runtime()?.block_on(args.socket.client().get("/v1/vms"))?;
    match args.output {
        Output::Json => print_out(&format!("{}\n", serde_json::to_string_pretty(&vms)?)),
        Output::Table => print_out(&table(&vms)),
    }
}

fn table(vms: &[VmSummary]) -> String {
    let mut rows =
        vec![["NAMESPACE", "NAME", "UID", "PID", "PHASE", "VCPUS", "MEMORY", "UPTIME", "BOOTS", "LAST EXIT"]
            .map(String::from)
            .to_vec()];
    for vm in vms {
        rows.push(vec![
            vm.namespace.clone(),
            vm.name.clone(),
            vm.uid.clone(),
            vm.pid.map_or("-".into(), |p| p.to_string()),
            if vm.phase.is_empty() { "-".into() } else { vm.phase.clone() },
            vm.vcpus.to_string(),
            format!("{}Mi", vm.memory_mib),
            vm.uptime_seconds.map_or("-".into(), |s| format!("{s}s")),
            vm.boots.to_string(),
            vm.last_exit.as_ref().map_or("-".into(), |e| e.message.clone()),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

pub fn inspect(args: VmiArgs, namespace: &str) -> anyhow::Result<()> {
    let path = vm_path(namespace, &args.vmi, "");
    let detail: VmDetail = runtime()?.block_on(args.socket.client().get(&path))?;
    print_out(&format!("{}\n", serde_json::to_string_pretty(&detail)?))
}

/// Follows the console until the VM stops; typed input goes to the guest.
/// On a terminal, input is raw and Ctrl-] detaches.
pub fn console(args: VmiArgs, namespace: &str) -> anyhow::Result<()> {
    let client = args.socket.client();
    let rt = runtime()?;
    let output =
        rt.block_on(client.send(Method::GET, &vm_path(namespace, &args.vmi, "/console?follow=true"), Bytes::new()))?;
    let interactive = std::io::stdin().is_terminal();
    let _raw = interactive.then(RawTerminal::enter).transpose()?;
    if interactive {
        eprint!("Connected to {namespace}/{}; detach with Ctrl-]\r\n", args.vmi);
    }
    let (input_tx, mut input_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buffer = [0u8; 1024];
        while let Ok(n) = stdin.read(&mut buffer) {
            if n == 0 || input_tx.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let input_path = vm_path(namespace, &args.vmi, "/console");
    rt.block_on(async move {
        let mut body = output.into_body();
        let mut stdout = std::io::stdout();
        let mut input_open = true;
        loop {
            tokio::select! {
                frame = body.frame() => match frame {
                    Some(frame) => {
                        if let Ok(data) = frame?.into_data() {
                            stdout.write_all(&data)?;
                            stdout.flush()?;
                        }
                    }
                    None => break,
                },
                typed = input_rx.recv(), if input_open => match typed {
                    Some(bytes) => {
                        let (bytes, detach) = match bytes.iter().position(|b| *b == DETACH) {
                            Some(at) => (bytes[..at].to_vec(), true),
                            None => (bytes, false),
                        };
                        if !bytes.is_empty() {
                            client.post(&input_path, Bytes::from(bytes)).await?;
                        }
                        if detach {
                            break;
                        }
                    }
                    None => input_open = false,
                },
            }
        }
        anyhow::Ok(())
    })?;
    if interactive {
        eprint!("\r\nDetached.\r\n");
    }
    Ok(())
}

/// Raw terminal input for the life of the value (restored on drop).
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> anyhow::Result<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_table_aligns_columns() {
        let vm = VmSummary {
            namespace: "default".into(),
            name: "vm-cirros".into(),
            uid: "u-1".into(),
            pid: Some(42),
            phase: "Running".into(),
            vcpus: 2,
            memory_mib: 64,
            uptime_seconds: Some(7),
            boots: 1,
            last_exit: None,
        };
        let out = table(&[vm]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE   NAME        UID"), "{out}");
        assert!(lines[1].starts_with("default     vm-cirros   u-1   42    Running"), "{out}");
        assert_eq!(lines[0].find("PHASE"), lines[1].find("Running"));
    }
}
