//! The node loop end to end: `kvmlet standalone` runs VMIs as VM processes
//! booting the probe guest, and reports their phases through the API.

use std::time::Duration;

use e2e::node::*;
use e2e::standalone::Standalone;
use kube::api::{Api, DeleteParams};
use kube::ResourceExt;
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use proto::labels::VMI_FOREGROUND_FINALIZER;

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[tokio::test]
async fn vmi_runs_then_succeeds_when_the_guest_powers_off() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &probe_vmi("poweroff", "probe.action=wait", 30)).await;

    let running = wait_for_phase(&vmis, &server, "poweroff", Phase::Running).await;
    let status = running.status.clone().unwrap();
    assert_eq!(status.node_name.as_deref(), Some(e2e::standalone::NODE_NAME));
    assert_eq!(running.labels().get("kubevirt.io/nodeName").map(String::as_str), Some(e2e::standalone::NODE_NAME));
    assert_eq!(ready(&running).as_deref(), Some("True"));
    assert!(has_finalizer(&running, VMI_FOREGROUND_FINALIZER), "the node holds its finalizer while the VM runs");
    let uid = running.uid().unwrap();
    let state_dir = server.run_dir().join("vms").join(&uid);
    assert!(state_dir.join("control.sock").exists());

    // The guest powers off when the power button is pressed (debug socket).
    let (ok, _) = node_socket(&server, &["-X", "POST"], "/v1/namespaces/default/vms/poweroff/power-button");
    assert!(ok, "power button through the debugging socket");
    let done = wait_for_phase(&vmis, &server, "poweroff", Phase::Succeeded).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.reason.as_deref(), Some("GuestPoweredOff"));
    assert_eq!(ready(&done).as_deref(), Some("False"));
    let phases: Vec<Phase> = status.phase_transition_timestamps.iter().map(|t| t.phase).collect();
    assert_eq!(phases, [Phase::Scheduled, Phase::Running, Phase::Succeeded]);
    let done = wait_for(&vmis, &server, "poweroff", "without the node's finalizer", Duration::from_secs(30), |v| {
        v.is_some_and(|v| !has_finalizer(v, VMI_FOREGROUND_FINALIZER))
    })
    .await
    .unwrap();
    assert_eq!(phase(&done), Some(Phase::Succeeded), "a final phase stays final");
    assert!(!state_dir.exists(), "state directory removed once the VM is gone");
    let reasons: Vec<String> = event_reasons(&client, "poweroff").await.into_iter().map(|(r, _)| r).collect();
    assert_eq!(reasons, ["Created", "Started", "Stopped"]);
}

#[tokio::test]
async fn delete_shuts_the_guest_down_gracefully_and_then_the_vmi_is_gone() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &probe_vmi("graceful", "probe.action=wait", 30)).await;
    wait_for_phase(&vmis, &server, "graceful", Phase::Running).await;
    let pid = ps_entry(&server, "graceful").unwrap()["pid"].as_i64().unwrap() as i32;

    vmis.delete("graceful", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &server, "graceful").await;
    assert!(!pid_alive(pid), "the VM process is gone before the VMI is");
    let events = event_reasons(&client, "graceful").await;
    assert!(events.iter().any(|(r, m)| r == "ShuttingDown" && m.contains("power button")), "{events:?}");
    assert!(events.iter().any(|(r, m)| r == "Stopped" && m.contains("GuestPoweredOff")), "{events:?}");
}

#[tokio::test]
async fn grace_period_zero_kills_and_an_expired_grace_period_fails_the_vmi() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    // `spin` ignores the power button: only a kill stops it.
    create(&vmis, &probe_vmi("now", "probe.action=spin", 0)).await;
    create(&vmis, &probe_vmi("late", "probe.action=spin", 2)).await;
    wait_for_phase(&vmis, &server, "now", Phase::Running).await;
    wait_for_phase(&vmis, &server, "late", Phase::Running).await;

    vmis.delete("now", &DeleteParams::default()).await.unwrap();
    vmis.delete("late", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &server, "now").await;
    wait_gone(&vmis, &server, "late").await;
    let now = event_reasons(&client, "now").await;
    assert!(now.iter().any(|(r, m)| r == "ShuttingDown" && m.contains("grace period 0")), "{now:?}");
    assert!(now.iter().any(|(r, m)| r == "Failed" && m.contains("grace period 0: the VM was killed")), "{now:?}");
    let late = event_reasons(&client, "late").await;
    assert!(
        late.iter().any(|(r, m)| r == "Failed"
            && m.contains("GracePeriodExpired: the guest did not power off within its 2s grace period")),
        "{late:?}"
    );
    assert!(ps(&server).iter().all(|vm| vm["pid"].is_null()), "no VM process left: {:?}", ps(&server));
}

#[tokio::test]
async fn a_killed_vm_process_fails_its_vmi_and_nothing_else() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &probe_vmi("victim", "probe.action=wait", 0)).await;
    create(&vmis, &probe_vmi("bystander", "probe.action=wait", 0)).await;
    wait_for_phase(&vmis, &server, "victim", Phase::Running).await;
    wait_for_phase(&vmis, &server, "bystander", Phase::Running).await;
    let pid = ps_entry(&server, "victim").unwrap()["pid"].as_i64().unwrap() as i32;

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let failed = wait_for_phase(&vmis, &server, "victim", Phase::Failed).await;
    let status = failed.status.unwrap();
    assert_eq!(status.reason.as_deref(), Some("VMProcessFailed"));
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.as_deref().unwrap().contains(&format!("pid {pid}) died unexpectedly")), "{ready:?}");
    let bystander = vmis.get("bystander").await.unwrap();
    assert_eq!(phase(&bystander), Some(Phase::Running));
}

#[tokio::test]
async fn restarting_the_agent_keeps_vms_running_and_reattaches() {
    let mut server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &probe_vmi("survivor", "probe.action=wait", 0)).await;
    let before = wait_for_phase(&vmis, &server, "survivor", Phase::Running).await;
    let pid = ps_entry(&server, "survivor").unwrap()["pid"].as_i64().unwrap();
    let transitions = before.status.as_ref().unwrap().phase_transition_timestamps.len();
    wait_console(&server, "survivor", "probe: waiting for power button").await;

    server.restart(); // SIGKILL, then a new agent on the same directories
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let entry = ps_entry(&server, "survivor").expect("the new agent lists the VM");
    assert_eq!(entry["pid"].as_i64(), Some(pid), "same VM process");
    assert!(pid_alive(pid as i32));
    // kvmlet ps shows the VMI's phase once the new agent has looked at it,
    // not only after the VMI's next phase change.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ps_entry(&server, "survivor").unwrap()["phase"] != "Running" {
        assert!(std::time::Instant::now() < deadline, "ps: {:?}", ps_entry(&server, "survivor"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The VM still answers through the new agent, and its VMI never left Running.
    let (ok, console) = node_socket(&server, &[], "/v1/namespaces/default/vms/survivor/console");
    assert!(ok && console.contains("probe: waiting for power button"), "{console}");
    let after = vmis.get("survivor").await.unwrap();
    assert_eq!(phase(&after), Some(Phase::Running));
    assert_eq!(after.status.unwrap().phase_transition_timestamps.len(), transitions);

    // And the re-attached VM is still fully managed: deletion stops it.
    vmis.delete("survivor", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &server, "survivor").await;
    assert!(!pid_alive(pid as i32));
}

#[tokio::test]
async fn what_kvmlet_cannot_run_fails_the_vmi_naming_the_field() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    // What the spec alone shows is refused when the VMI is created, naming the field.
    let mut refused: Vec<(VirtualMachineInstance, &str)> = Vec::new();
    let mut sata = probe_vmi("sata", "probe.action=poweroff", 0);
    sata.spec.domain.devices.disks[0].disk.as_mut().unwrap().bus = Some("sata".into());
    refused.push((sata, "spec.domain.devices.disks[0].disk.bus: Unsupported value: \"sata\""));
    let mut q35 = probe_vmi("q35", "probe.action=poweroff", 0);
    q35.spec.domain.machine = Some(proto::kubevirt::Machine { type_: "q35".into() });
    refused.push((q35, "spec.domain.machine.type"));
    let mut nic = probe_vmi("nic", "probe.action=poweroff", 0);
    nic.spec.domain.devices.interfaces = vec![serde_json::json!({"name": "default", "masquerade": {}})];
    refused.push((nic, "spec.domain.devices.interfaces"));
    for (vmi, field) in &refused {
        let error = vmis.create(&Default::default(), vmi).await.unwrap_err();
        let kube::Error::Api(status) = error else { panic!("{error}") };
        assert_eq!(status.code, 422);
        assert!(status.message.contains(field), "{}", status.message);
    }
    // What only the node knows fails the VMI on the node.
    let mut cases: Vec<(&str, VirtualMachineInstance, &str)> = Vec::new();
    let mut host = probe_vmi("host", "probe.action=poweroff", 0);
    host.spec.volumes[0] = serde_json::from_value(
        serde_json::json!({"name": "cloudinitdisk", "hostDisk": {"path": "/nonexistent/disk.img", "type": "Disk"}}),
    )
    .unwrap();
    cases.push(("host", host, "spec.volumes[0].hostDisk.path: hostDisk volumes need the HostDisk feature gate"));
    let mut image = probe_vmi("image", "probe.action=poweroff", 0);
    image.spec.volumes[0] =
        serde_json::from_value(serde_json::json!({"name": "cloudinitdisk", "containerDisk": {"image": "no/such:1", "imagePullPolicy": "Never"}}))
            .unwrap();
    cases.push(("image", image, "spec.volumes[0].containerDisk.image: image \"no/such:1\" is not on this node"));

    for (_, vmi, _) in &cases {
        create(&vmis, vmi).await;
    }
    for (name, _, field) in &cases {
        let failed = wait_for_phase(&vmis, &server, name, Phase::Failed).await;
        let ready = failed.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").cloned().unwrap();
        assert!(ready.message.as_deref().unwrap_or_default().contains(field), "{name}: {ready:?}");
        assert_eq!(ready.reason.as_deref(), Some("Unsupported"));
        // The node records the event before it drops its finalizer.
        wait_for(&vmis, &server, name, "without the node's finalizer", Duration::from_secs(30), |v| {
            v.is_some_and(|v| !has_finalizer(v, VMI_FOREGROUND_FINALIZER))
        })
        .await;
        let events = event_reasons(&client, name).await;
        assert!(events.iter().any(|(r, m)| r == "Failed" && m.contains(field)), "{name}: {events:?}");
        assert!(ps_entry(&server, name).is_none(), "{name}: no VM process was started");
    }
}

#[tokio::test]
async fn twenty_vmis_started_at_once_all_run() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let names: Vec<String> = (0..20).map(|i| format!("many-{i:02}")).collect();
    let creates = names.iter().map(|name| {
        let vmis = vmis.clone();
        let vmi = probe_vmi(name, "probe.action=wait", 0);
        async move { create(&vmis, &vmi).await }
    });
    futures::future::join_all(creates).await;
    for name in &names {
        wait_for_phase(&vmis, &server, name, Phase::Running).await;
    }
    let running: Vec<_> = ps(&server).into_iter().filter(|vm| vm["phase"] == "Running").collect();
    assert_eq!(running.len(), 20, "{running:?}");
    let pids: std::collections::BTreeSet<i64> = running.iter().map(|vm| vm["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids.len(), 20, "one VM process per VMI");
    for name in &names {
        vmis.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in &names {
        wait_gone(&vmis, &server, name).await;
    }
}

#[tokio::test]
async fn a_guest_reboot_restarts_the_guest_in_the_same_vm_process() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    // The probe reboots right after its report, every boot.
    create(&vmis, &probe_vmi("rebooter", "probe.action=reboot", 0)).await;
    let running = wait_for_phase(&vmis, &server, "rebooter", Phase::Running).await;
    let pid = ps_entry(&server, "rebooter").unwrap()["pid"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ps_entry(&server, "rebooter").unwrap()["boots"].as_u64().unwrap() < 3 {
        assert!(std::time::Instant::now() < deadline, "the guest did not boot three times: {:?}", ps(&server));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let entry = ps_entry(&server, "rebooter").unwrap();
    assert_eq!(entry["pid"].as_i64(), Some(pid), "same VM process");
    let now = vmis.get("rebooter").await.unwrap();
    assert_eq!(phase(&now), Some(Phase::Running));
    assert_eq!(
        now.status.unwrap().phase_transition_timestamps.len(),
        running.status.unwrap().phase_transition_timestamps.len(),
        "reboots do not change the phase"
    );
    vmis.delete("rebooter", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &server, "rebooter").await;
}

#[tokio::test]
async fn one_vm_process_per_vmi_and_hostile_control_requests_are_refused() {
    use std::io::{BufRead, BufReader, Write};
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let running = wait_for_phase_after_create(&vmis, &server, probe_vmi("single", "probe.action=wait", 0)).await;
    let state_dir = server.run_dir().join("vms").join(running.metadata.uid.unwrap());

    // A second VM process for the same state directory refuses to start.
    let second = std::process::Command::new(e2e::kvmlet_bin())
        .arg("vm-process")
        .arg("--state-dir")
        .arg(&state_dir)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another VM process runs this VMI"));

    // Garbage on the control socket gets an error answer; the VM is unaffected.
    let mut control = std::os::unix::net::UnixStream::connect(state_dir.join("control.sock")).unwrap();
    let mut answers = BufReader::new(control.try_clone().unwrap());
    for request in ["not json", r#"{"op":"format-disk"}"#, r#"{"op":"consoleInput","data":"!!!"}"#] {
        writeln!(control, "{request}").unwrap();
        let mut line = String::new();
        answers.read_line(&mut line).unwrap();
        let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{request}: {line}");
        assert_eq!(answer["state"], "Running");
    }
    control.write_all(&vec![b'x'; 64 * 1024]).unwrap();
    let mut line = String::new();
    answers.read_line(&mut line).unwrap();
    assert!(line.contains("request longer than"), "{line}");
    drop(control);
    assert_eq!(phase(&vmis.get("single").await.unwrap()), Some(Phase::Running));
    assert_eq!(ps(&server).len(), 1);
}

async fn wait_for_phase_after_create(
    vmis: &Api<VirtualMachineInstance>,
    server: &Standalone,
    vmi: VirtualMachineInstance,
) -> VirtualMachineInstance {
    let name = vmi.metadata.name.clone().unwrap();
    create(vmis, &vmi).await;
    wait_for_phase(vmis, server, &name, Phase::Running).await
}

#[tokio::test]
async fn a_second_agent_on_a_busy_run_dir_exits_at_once_and_the_first_ones_vms_keep_running() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &probe_vmi("first", "probe.action=wait", 0)).await;
    wait_for_phase(&vmis, &server, "first", Phase::Running).await;
    let pid = ps_entry(&server, "first").unwrap()["pid"].as_i64().unwrap();

    let other_data = tempfile::tempdir().unwrap();
    let mut second = std::process::Command::new(e2e::kvmlet_bin());
    second
        .args(["standalone", "--listen", "127.0.0.1:0", "--node-name", "second-node"])
        .arg("--data-dir")
        .arg(other_data.path())
        .arg("--run-dir")
        .arg(server.run_dir())
        .arg("--default-kernel")
        .arg(&e2e::probe().bzimage);
    let (out, finished) = e2e::run_within(&mut second, None, Duration::from_secs(30));
    assert!(finished, "the second server must exit by itself");
    assert!(!out.status.success(), "the second server exits non-zero");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let real = std::fs::canonicalize(server.run_dir()).unwrap();
    assert!(stderr.contains(&format!("{} is in use by pid {}", real.display(), server.pid())), "{stderr}");
    assert!(!other_data.path().join("kubeconfig").exists(), "the second server never served its API");

    assert!(pid_alive(pid as i32), "the first server's VM process lives on");
    assert_eq!(ps_entry(&server, "first").unwrap()["pid"].as_i64(), Some(pid));
    assert_eq!(phase(&vmis.get("first").await.unwrap()), Some(Phase::Running));
    assert!(server.run_dir().join("kvmlet.sock").exists(), "the first server's debugging socket stays");
}
