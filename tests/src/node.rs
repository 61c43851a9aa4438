//! Helpers for tests of the node loop: probe-guest VMIs, waiting on VMI
//! states, and the node's view through `kvmlet ps`.

use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase};
use serde_json::{json, Value};

use crate::standalone::Standalone;

/// A VMI booting the probe (kernelBoot, the node's default kernel) with
/// `kernel_args` on one containerDisk `image`; `container_disk` adds fields
/// to the volume (`imagePullPolicy`, `imagePullSecret`, `path`).
pub fn container_disk_vmi(
    name: &str,
    image: &str,
    kernel_args: &str,
    container_disk: serde_json::Value,
) -> VirtualMachineInstance {
    let mut volume = serde_json::json!({"image": image});
    if let (Some(volume), Some(extra)) = (volume.as_object_mut(), container_disk.as_object()) {
        volume.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "domain": {
                "resources": {"requests": {"memory": "64Mi"}},
                "firmware": {"kernelBoot": {"kernelArgs": kernel_args}},
                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
            },
            "volumes": [{"name": "root", "containerDisk": volume}],
        },
    }))
    .expect("a valid VMI")
}

/// A VMI that boots the node's default kernel (the probe) with `kernel_args`
/// and a cloud-init NoCloud disk.
pub fn probe_vmi(name: &str, kernel_args: &str, grace_seconds: i64) -> VirtualMachineInstance {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": grace_seconds,
            "domain": {
                "resources": {"requests": {"memory": "64Mi"}},
                "firmware": {"kernelBoot": {"kernelArgs": kernel_args}},
                "devices": {"disks": [{"name": "cloudinitdisk", "disk": {"bus": "virtio"}}]},
            },
            "volumes": [{"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": "#!/bin/sh\necho hello from cloud-init\n"}}],
        },
    }))
    .expect("a valid VMI")
}

pub async fn create(api: &Api<VirtualMachineInstance>, vmi: &VirtualMachineInstance) -> VirtualMachineInstance {
    api.create(&PostParams::default(), vmi).await.expect("create VMI")
}

pub fn phase(vmi: &VirtualMachineInstance) -> Option<VirtualMachineInstancePhase> {
    vmi.status.as_ref().and_then(|s| s.phase)
}

/// Polls until `ready` holds for the VMI (or panics after `timeout`, with
/// the last state seen and the server's log).
pub async fn wait_for(
    api: &Api<VirtualMachineInstance>,
    server: &Standalone,
    name: &str,
    what: &str,
    timeout: Duration,
    ready: impl Fn(Option<&VirtualMachineInstance>) -> bool,
) -> Option<VirtualMachineInstance> {
    let deadline = Instant::now() + timeout;
    loop {
        let vmi = api.get_opt(name).await.expect("get VMI");
        if ready(vmi.as_ref()) {
            return vmi;
        }
        if Instant::now() > deadline {
            panic!(
                "VMI {name} never became {what}; last seen: {}\n--- server log ---\n{}",
                serde_json::to_string_pretty(&vmi).unwrap(),
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the VMI to reach `phase`.
pub async fn wait_for_phase(
    api: &Api<VirtualMachineInstance>,
    server: &Standalone,
    name: &str,
    phase_wanted: VirtualMachineInstancePhase,
) -> VirtualMachineInstance {
    let what = format!("{phase_wanted:?}");
    wait_for(api, server, name, &what, Duration::from_secs(60), |vmi| vmi.and_then(phase) == Some(phase_wanted))
        .await
        .expect("the VMI exists")
}

/// Waits until the VMI is gone.
pub async fn wait_gone(api: &Api<VirtualMachineInstance>, server: &Standalone, name: &str) {
    wait_for(api, server, name, "gone", Duration::from_secs(60), |vmi| vmi.is_none()).await;
}

/// `kvmlet ps -o json` against the server's node.
pub fn ps(server: &Standalone) -> Vec<Value> {
    let out = server.kvmlet(&["ps", "-o", "json"]).output().expect("run kvmlet ps");
    assert!(out.status.success(), "kvmlet ps: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("kvmlet ps -o json prints JSON")
}

/// The node's entry for VMI `name` (the live one if there are several).
pub fn ps_entry(server: &Standalone, name: &str) -> Option<Value> {
    let list = ps(server);
    let mut matching: Vec<Value> = list.into_iter().filter(|vm| vm["name"] == name).collect();
    matching.sort_by_key(|vm| vm["pid"].is_null());
    matching.into_iter().next()
}

/// Reasons of the events recorded about object `name`, oldest first.
pub async fn event_reasons(client: &kube::Client, name: &str) -> Vec<(String, String)> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::default_namespaced(client.clone());
    let list = events.list(&ListParams::default()).await.expect("list events");
    let mut found: Vec<_> = list
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect();
    found.dedup();
    found
}

/// The Ready condition's status ("True"/"False"), if any.
pub fn ready(vmi: &VirtualMachineInstance) -> Option<String> {
    let status = vmi.status.as_ref()?;
    status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

/// Whether the VMI still carries `finalizer`.
pub fn has_finalizer(vmi: &VirtualMachineInstance, finalizer: &str) -> bool {
    vmi.finalizers().iter().any(|f| f == finalizer)
}

/// `curl -s -f ARGS` against the node's debugging socket; (succeeded, body).
pub fn node_socket(server: &Standalone, args: &[&str], path: &str) -> (bool, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-f"])
        .args(args)
        .arg("--unix-socket")
        .arg(server.run_dir().join("kvmlet.sock"))
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("run curl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls the VM's serial console (debugging socket) until it shows `needle`;
/// returns the console so far.
pub async fn wait_console(server: &Standalone, name: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, console) = node_socket(server, &[], &format!("/v1/namespaces/default/vms/{name}/console"));
        if console.contains(needle) {
            return console;
        }
        assert!(Instant::now() < deadline, "{name}'s console never showed {needle:?}:\n{console}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
