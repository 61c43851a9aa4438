//! The README's first command, `scripts/quickstart`, end to end as a new user
//! runs it (with the kvmlet binary this test run already built, through
//! KVMLET_BIN, instead of a second, release build).

use std::process::Command;
use std::time::Duration;

#[test]
fn quickstart_runs_the_example_vm_and_shows_its_cloud_init_data() {
    let data = tempfile::tempdir().unwrap();
    let script = e2e::workspace_root().join("scripts/quickstart");
    let mut command = Command::new(&script);
    command.env("KVMLET_DATA_DIR", data.path()).env("KVMLET_BIN", e2e::kvmlet_bin());
    let (finished, stdout, stderr) = e2e::output_within(&mut command, Duration::from_secs(300));
    let pid: Option<i32> =
        std::fs::read_to_string(data.path().join("kvmlet.pid")).ok().and_then(|p| p.trim().parse().ok());
    // Clean up before asserting: the server, then the VM it started.
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    e2e::standalone::kill_vm_processes(&data.path().join("run"));
    let log = std::fs::read_to_string(data.path().join("kvmlet.log")).unwrap_or_default();
    assert!(finished, "scripts/quickstart did not finish:\n{stdout}\n{stderr}\n--- server log ---\n{log}");
    assert!(pid.is_some(), "the server's pid file: {stdout}{stderr}");
    assert!(stdout.contains("virtualmachine.kubevirt.io/vm-cirros created"), "{stdout}\n{stderr}");
    assert!(stdout.contains("condition met"), "kubectl wait saw Running: {stdout}\n{stderr}");
    assert!(stdout.contains("echo 'printed from cloud-init userdata'"), "the guest's cloud-init data: {stdout}");
    assert!(stdout.contains("probe: smbios version=3.2 uuid="), "{stdout}");
    assert!(stdout.contains("kubectl describe vm vm-cirros"), "next steps are printed: {stdout}");
    let table_row = |prefix: &str| {
        stdout.lines().any(|l| l.starts_with(prefix) && l.split_whitespace().any(|cell| cell == "Running"))
    };
    assert!(table_row("virtualmachine.kubevirt.io/vm-cirros"), "kubectl get vm shows Running: {stdout}");
    assert!(table_row("virtualmachineinstance.kubevirt.io/vm-cirros"), "kubectl get vmi shows Running: {stdout}");
}
