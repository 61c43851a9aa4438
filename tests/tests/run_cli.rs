//! `kvmlet run` as a user runs it: the probe guest's console on standard
//! output, exit statuses, Ctrl-C as the power button.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use e2e::{kvmlet_bin, probe, probe_value};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn run(args: &[&str]) -> (i32, String, String) {
    let output =
        Command::new(kvmlet_bin()).arg("run").arg("--kernel").arg(&probe().bzimage).args(args).output().unwrap();
    (
        output.status.code().expect("exited normally"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn guest_power_off_exits_zero_with_the_console_on_stdout() {
    let uuid = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    let (code, stdout, stderr) = run(&[
        "--vcpus",
        "2",
        "--memory",
        "192",
        "--uuid",
        uuid,
        "--serial",
        "cli-1",
        "--cmdline",
        "probe.action=poweroff",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(probe_value(&stdout, "smbios", "uuid"), Some(uuid));
    assert_eq!(probe_value(&stdout, "smbios", "serial"), Some("cli-1"));
    assert_eq!(probe_value(&stdout, "cpus", "cpus"), Some("2"));
    assert_eq!(probe_value(&stdout, "memory", "ram_top"), Some("0xc000000"));
}

#[test]
fn without_uuid_each_run_gets_a_fresh_random_one() {
    let uuids: Vec<String> = (0..2)
        .map(|_| {
            let (code, stdout, stderr) = run(&["--cmdline", "probe.action=poweroff"]);
            assert_eq!(code, 0, "{stderr}");
            probe_value(&stdout, "smbios", "uuid").expect("the probe prints the SMBIOS UUID").to_string()
        })
        .collect();
    for uuid in &uuids {
        let parsed = uuid::Uuid::parse_str(uuid).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4, "a random (v4) UUID, not zeros: {uuid}");
    }
    assert_ne!(uuids[0], uuids[1], "each run is a new machine");
}

#[test]
fn other_endings_have_distinct_statuses_and_messages() {
    let (code, _, stderr) = run(&["--cmdline", "probe.action=reboot"]);
    assert_eq!(code, 3);
    assert!(stderr.contains("reboot"), "{stderr}");
    let (code, _, stderr) = run(&["--cmdline", "probe.action=triple-fault"]);
    assert_eq!(code, 4);
    assert!(stderr.contains("triple-fault"), "{stderr}");
}

#[test]
fn invalid_flags_fail_with_the_field_named() {
    let (code, stdout, stderr) = run(&["--vcpus", "0"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("vcpus: 0"), "{stderr}");
    assert!(stdout.is_empty(), "no guest ran: {stdout}");
    let (code, _, stderr) = run(&["--memory", "0"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("memory:"), "{stderr}");
    let (code, _, stderr) = run(&["--disk", "/nonexistent/disk.img"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("disks[0].path: /nonexistent/disk.img"), "{stderr}");
}

/// Starts a VM whose probe waits, and returns once it waits for the button.
fn start_waiting(action: &str) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(kvmlet_bin())
        .arg("run")
        .arg("--kernel")
        .arg(&probe().bzimage)
        .args(["--cmdline", &format!("probe.action={action}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("probe: action=") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "kvmlet exited early");
    }
    (child, stdout)
}

#[test]
fn ctrl_c_presses_the_power_button() {
    let (mut child, mut stdout) = start_waiting("wait");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.contains("probe: power button"), "{rest}");
    assert_eq!(status.code(), Some(0), "the guest powered off by itself");
}

#[test]
fn second_ctrl_c_kills_a_guest_that_ignores_the_button() {
    let (mut child, _stdout) = start_waiting("spin");
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(child.try_wait().unwrap().is_none(), "the first Ctrl-C only presses the button");
    kill(pid, Signal::SIGINT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
}

#[test]
fn disks_and_cloud_init_flags_reach_the_guest_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.img");
    std::fs::File::create(&data).unwrap().set_len(1 << 20).unwrap();
    let user_data = dir.path().join("user-data");
    std::fs::write(&user_data, "#!/bin/sh\necho from-the-cli\n").unwrap();
    let network = dir.path().join("network-config");
    std::fs::write(&network, "version: 2\n").unwrap();
    let uuid = "1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9";
    let (code, stdout, stderr) = run(&[
        "--disk",
        &format!("{},serial=data-cli", data.display()),
        "--cloud-init-user-data",
        user_data.to_str().unwrap(),
        "--cloud-init-network-data",
        network.to_str().unwrap(),
        "--uuid",
        uuid,
        "--cmdline",
        "probe.action=poweroff probe.marker_sector=9",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("probe: disk index=0 base=0xc0001000 sectors=2048 serial=data-cli ro=0"), "{stdout}");
    assert!(stdout.contains("probe: disk index=1 base=0xc0002000"), "the seed comes after the other disks: {stdout}");
    assert!(stdout.contains("probe: cidata disk=1"), "{stdout}");
    assert!(stdout.contains("echo from-the-cli"), "{stdout}");
    assert!(stdout.contains("probe: marker disk=0 sector=9 write=ok flush=ok readback=marker"), "{stdout}");
    let marker = std::fs::read(&data).unwrap();
    assert!(marker[9 * 512..].starts_with(b"KVMLET-PROBE-MARKER sector=9"));
}
