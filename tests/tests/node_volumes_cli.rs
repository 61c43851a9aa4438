//! The node loop's volumes (containerDisk from the image directory,
//! emptyDisk, hostDisk, cloud-init from a Secret) as the guest sees them, and
//! the node-local debugging socket through `kvmlet ps|inspect|console` and curl.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use e2e::node::*;
use e2e::standalone::Standalone;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use serde_json::json;

#[tokio::test]
async fn volumes_reach_the_guest_in_order() {
    // hostDisk volumes need the gate and a root (KubeVirt's HostDisk feature gate).
    let host_dir = tempfile::tempdir().unwrap();
    let root = host_dir.path().to_str().unwrap();
    let server = Standalone::with_node(&["--feature-gates", "HostDisk", "--host-disk-root", root]);
    let client = server.client().await;
    // A container image on the node: REF/disk/<raw file>.
    let image = server.image_dir().join("example.org/probe-disk:v1/disk");
    std::fs::create_dir_all(&image).unwrap();
    let image_file = image.join("disk.img");
    std::fs::write(&image_file, vec![0u8; 1 << 20]).unwrap();
    let host_disk = host_dir.path().join("created.img");

    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "probe-userdata"},
        "stringData": {"userdata": "#!/bin/sh\necho user data from a secret\n"},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();

    let vmi: VirtualMachineInstance = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "volumes"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "domain": {
                "cpu": {"cores": 2},
                "memory": {"guest": "96Mi"},
                "firmware": {
                    "uuid": "5d1c1b34-7f0e-4a5e-9c61-4a2f3b9e8d10", "serial": "volumes-serial",
                    "kernelBoot": {"kernelArgs": "probe.action=wait probe.marker_sector=8 probe.marker_disk=0"},
                },
                "devices": {"disks": [
                    {"name": "root", "disk": {"bus": "virtio"}, "serial": "root-0"},
                    {"name": "scratch", "disk": {}},
                    {"name": "host", "disk": {"bus": "virtio", "readOnly": true}},
                    {"name": "cloudinit", "disk": {"bus": "virtio"}},
                ]},
            },
            "volumes": [
                {"name": "root", "containerDisk": {"image": "example.org/probe-disk:v1"}},
                {"name": "scratch", "emptyDisk": {"capacity": "2Mi"}},
                {"name": "host", "hostDisk": {"path": host_disk, "type": "DiskOrCreate", "capacity": "3Mi"}},
                {"name": "cloudinit", "cloudInitNoCloud": {"secretRef": {"name": "probe-userdata"}}},
            ],
        },
    }))
    .unwrap();
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &vmi).await;
    wait_for_phase(&vmis, &server, "volumes", Phase::Running).await;
    let console = wait_console(&server, "volumes", "probe: waiting for power button").await;

    assert!(console.contains("probe: cpus=2"), "{console}");
    assert!(
        console.contains("probe: smbios version=3.2 uuid=5d1c1b34-7f0e-4a5e-9c61-4a2f3b9e8d10 serial=volumes-serial"),
        "{console}"
    );
    assert!(console.contains("probe: memory ram_total="), "{console}");
    assert!(console.contains("probe: disk index=0 base=0xc0001000 sectors=2048 serial=root-0 ro=0"), "{console}");
    assert!(console.contains("probe: disk index=1 base=0xc0002000 sectors=4096"), "{console}");
    assert!(
        console.contains("probe: disk index=2 base=0xc0003000 sectors=6144") && console.contains("ro=1"),
        "{console}"
    );
    assert!(console.contains("probe: cidata disk=3"), "{console}");
    assert!(console.contains("echo user data from a secret"), "{console}");
    assert!(console.contains("probe: marker disk=0 sector=8 write=ok flush=ok readback=marker"), "{console}");
    // The guest wrote to its own overlay over the container disk, not the image.
    assert!(std::fs::read(&image_file).unwrap().iter().all(|b| *b == 0), "the node's image is untouched");
    assert_eq!(std::fs::metadata(&host_disk).unwrap().len(), 3 << 20, "DiskOrCreate made the host disk");
    assert_eq!(std::fs::metadata(&host_disk).unwrap().permissions().mode() & 0o777, 0o600, "born private");
    // The node's own files have names it chose, never a volume's name.
    let uid = vmis.get("volumes").await.unwrap().metadata.uid.unwrap();
    let mut files: Vec<String> = std::fs::read_dir(server.run_dir().join("vms").join(&uid).join("disks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["cidata.iso", "disk-0.qcow2", "disk-1.img"], "the container disk's overlay, not a copy");

    vmis.delete("volumes", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &server, "volumes").await;
    assert!(host_disk.exists(), "a host disk outlives the VM");
}

#[tokio::test]
async fn debugging_socket_and_cli() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let mut vmi = probe_vmi("debug-me", "probe.action=wait", 30);
    vmi.spec.domain.firmware.as_mut().unwrap().serial = Some("debug-serial".into());
    create(&vmis, &vmi).await;
    let running = wait_for_phase(&vmis, &server, "debug-me", Phase::Running).await;
    let uid = running.metadata.uid.clone().unwrap();

    let socket = server.run_dir().join("kvmlet.sock");
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);

    let out = server.kvmlet(&["ps"]).output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("NAMESPACE") && header.contains("PID") && header.contains("LAST EXIT"), "{table}");
    let row = table.lines().find(|l| l.contains("debug-me")).expect("ps lists the VM");
    assert!(row.contains(&uid) && row.contains("Running") && row.contains("64Mi"), "{table}");

    let (ok, listed) = node_socket(&server, &[], "/v1/vms");
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["name"], "debug-me");
    assert_eq!(listed[0]["boots"], 1);

    let out = server.kvmlet(&["inspect", "debug-me", "-n", "default"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let detail: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(detail["uid"], uid.as_str());
    assert_eq!(detail["config"]["vcpus"], 1);
    assert_eq!(detail["config"]["memoryMib"], 64);
    assert_eq!(detail["config"]["uuid"], uid.as_str(), "a VMI without firmware.uuid gets its own UID");
    assert_eq!(detail["config"]["serial"], "debug-serial");
    assert_eq!(detail["config"]["cmdline"], "probe.action=wait");

    // Errors say what is wrong.
    let out = server.kvmlet(&["inspect", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no VM default/nope on this node"));
    let out = server.kvmlet(&["ps", "--run-dir", "/nonexistent"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the node agent at /nonexistent/kvmlet.sock"));

    // Typed input reaches the guest's UART (the probe does not read it, so
    // what fits the 64-byte FIFO is accepted).
    let (ok, _) =
        node_socket(&server, &["-X", "POST", "--data-binary", "hello"], "/v1/namespaces/default/vms/debug-me/console");
    assert!(ok, "console input accepted");

    // `kvmlet console` follows the console until the VM stops.
    wait_console(&server, "debug-me", "probe: waiting for power button").await;
    let console = server.kvmlet(&["console", "debug-me"]).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, _) = node_socket(&server, &["-X", "POST"], "/v1/namespaces/default/vms/debug-me/power-button");
    assert!(ok);
    let out = tokio::task::spawn_blocking(move || console.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("probe: smbios version=3.2 uuid="), "{text}");
    assert!(text.contains("serial=debug-serial"), "{text}");
    assert!(text.contains("probe: power button events="), "the console followed to the end: {text}");
    wait_for_phase(&vmis, &server, "debug-me", Phase::Succeeded).await;

    // A stopped VM refuses control requests, by name.
    let (ok, _) = node_socket(&server, &["-X", "POST"], "/v1/namespaces/default/vms/debug-me/kill");
    assert!(!ok, "kill of a stopped VM is refused");
}
