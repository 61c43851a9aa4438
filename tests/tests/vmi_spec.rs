//! What a VMI may ask for, checked where it can be: the spec alone at
//! admission (`kubectl create` of a VMI or a VM template), the node's
//! knowledge (images, Secrets, the HostDisk gate and roots) on the node, and
//! the VM showing why its VMI failed, even after the VMI is gone.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use e2e::node::*;
use e2e::standalone::Standalone;
use kube::api::Api;
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use serde_json::{json, Value};

fn kubectl(server: &Standalone, args: &[&str], stdin: Option<&str>) -> Output {
    e2e::kubectl(&e2e::require_tool("kubectl", "kubectl"), &server.kubeconfig(), args, stdin)
}

fn kubectl_ok(server: &Standalone, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(server, args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl {args:?}: {stderr}\n--- server log ---\n{}", server.log());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl create -f -` of `object`, which must be refused; its stderr.
fn refused(server: &Standalone, object: &Value) -> String {
    let out = kubectl(server, &["create", "-f", "-"], Some(&object.to_string()));
    assert!(!out.status.success(), "created: {object}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A VMI booting the probe with one disk on `volume`.
fn vmi(name: &str, volume: Value) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": spec(volume),
    })
}

fn spec(volume: Value) -> Value {
    let disk = volume["name"].clone();
    json!({
        "terminationGracePeriodSeconds": 0,
        "domain": {
            "resources": {"requests": {"memory": "64Mi"}},
            "firmware": {"kernelBoot": {"kernelArgs": "probe.action=poweroff"}},
            "devices": {"disks": [{"name": disk, "disk": {"bus": "virtio"}}]},
        },
        "volumes": [volume],
    })
}

fn vm(name: &str, run_strategy: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": run_strategy, "template": {"spec": spec}},
    })
}

fn host_disk(path: &Path, kind: &str) -> Value {
    json!({"name": "host", "hostDisk": {"path": path, "type": kind, "capacity": "1Mi"}})
}

/// The Ready condition's message of a Failed VMI.
async fn failure_message(vmis: &Api<VirtualMachineInstance>, server: &Standalone, name: &str) -> String {
    let failed = wait_for_phase(vmis, server, name, Phase::Failed).await;
    let conditions = failed.status.unwrap().conditions;
    let ready = conditions.iter().find(|c| c.type_ == "Ready").expect("a Ready condition");
    ready.message.clone().unwrap_or_default()
}

#[tokio::test]
async fn host_disks_are_refused_while_the_gate_is_closed() {
    let server = Standalone::with_node(&[]);
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(server.client().await);
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    kubectl_ok(&server, &["create", "-f", "-"], Some(&vmi("gated", host_disk(&disk, "Disk")).to_string()));
    let message = failure_message(&vmis, &server, "gated").await;
    assert!(message.starts_with("spec.volumes[0].hostDisk.path: "), "{message}");
    assert!(message.contains("HostDisk feature gate"), "{message}");
    assert!(ps_entry(&server, "gated").is_none(), "no VM process was started");
}

#[tokio::test]
async fn host_disks_must_resolve_under_a_root() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let server =
        Standalone::with_node(&["--feature-gates", "HostDisk", "--host-disk-root", root_path.to_str().unwrap()]);
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(server.client().await);
    let secret_disk = outside.path().join("secret.img");
    std::fs::write(&secret_disk, vec![0u8; 1 << 20]).unwrap();
    symlink(outside.path(), root.path().join("escape")).unwrap();

    let cases = [
        ("outside", host_disk(&secret_disk, "Disk")),
        ("dotdot", host_disk(&root.path().join("../escaped.img"), "DiskOrCreate")),
        ("symlink", host_disk(&root.path().join("escape/created.img"), "DiskOrCreate")),
    ];
    for (name, volume) in &cases {
        kubectl_ok(&server, &["create", "-f", "-"], Some(&vmi(name, volume.clone()).to_string()));
    }
    for (name, _) in &cases {
        let message = failure_message(&vmis, &server, name).await;
        assert!(message.starts_with("spec.volumes[0].hostDisk.path: "), "{name}: {message}");
        assert!(message.contains("not under a host disk root"), "{name}: {message}");
        assert!(message.contains(&root_path.display().to_string()), "{name}: the roots are named: {message}");
    }
    assert!(!root.path().join("../escaped.img").exists(), "nothing was created outside the root");
    assert!(!outside.path().join("created.img").exists(), "nothing was created through the symlink");

    // Under the root, DiskOrCreate creates the file (and nothing else).
    kubectl_ok(
        &server,
        &["create", "-f", "-"],
        Some(&vmi("inside", host_disk(&root.path().join("new.img"), "DiskOrCreate")).to_string()),
    );
    wait_for_phase(&vmis, &server, "inside", Phase::Succeeded).await;
    assert_eq!(std::fs::metadata(root.path().join("new.img")).unwrap().len(), 1 << 20);
}

#[tokio::test]
async fn names_and_references_that_look_like_paths_are_refused_at_admission() {
    let server = Standalone::with_node(&[]);
    let volume = json!({"name": "../../escape", "emptyDisk": {"capacity": "1Mi"}});
    let stderr = refused(&server, &vmi("pathname", volume.clone()));
    assert!(stderr.contains("spec.volumes[0].name: Invalid value: \"../../escape\""), "{stderr}");
    assert!(stderr.contains("RFC 1123 label"), "{stderr}");
    let stderr = refused(&server, &vm("pathname", "Always", spec(volume)));
    assert!(stderr.contains("spec.template.spec.volumes[0].name: Invalid value: \"../../escape\""), "{stderr}");
    let image = json!({"name": "root", "containerDisk": {"image": "../../etc"}});
    let stderr = refused(&server, &vmi("image", image));
    assert!(
        stderr.contains("spec.volumes[0].containerDisk.image: \"../../etc\" is not an image reference"),
        "{stderr}"
    );
    let image = json!({"name": "root", "containerDisk": {"image": "/etc/passwd"}});
    let stderr = refused(&server, &vm("image", "Always", spec(image)));
    assert!(stderr.contains("spec.template.spec.volumes[0].containerDisk.image"), "{stderr}");

    // Nothing was stored, and no file appeared where the old naming would have put it.
    let listed = kubectl_ok(&server, &["get", "vms,vmis", "-o", "name"], None);
    assert_eq!(listed.trim(), "", "{listed}");
    let run_dir = server.run_dir();
    for stray in [run_dir.join("escape.img"), run_dir.join("vms/escape.img"), run_dir.join("../escape.img")] {
        assert!(!stray.exists(), "{}", stray.display());
    }
}

#[tokio::test]
async fn a_template_the_node_would_refuse_is_refused_at_create() {
    let server = Standalone::start();
    let mut sata = spec(json!({"name": "root", "emptyDisk": {"capacity": "1Mi"}}));
    sata["domain"]["devices"]["disks"][0]["disk"]["bus"] = json!("sata");
    let stderr = refused(&server, &vm("sata", "Always", sata));
    assert!(
        stderr.contains(
            "spec.template.spec.domain.devices.disks[0].disk.bus: Unsupported value: \"sata\": supported values: \"virtio\""
        ),
        "{stderr}"
    );
    assert!(stderr.contains("is invalid"), "a 422 Invalid status: {stderr}");
    let cases = [
        (
            "/domain/resources/requests/memory",
            json!("1e3"),
            "spec.template.spec.domain.resources.requests.memory: \"1e3\" is 1000 bytes",
        ),
        ("/domain/resources/requests/cpu", json!("64"), "spec.template.spec.domain.resources.requests.cpu: 64 vCPUs"),
        ("/domain/resources/limits", json!({"memory": "64Mi"}), "spec.template.spec.domain.resources.limits"),
        (
            "/volumes/0/cloudInitNoCloud",
            json!({"userDataBase64": "%%%"}),
            "cloudInitNoCloud.userDataBase64: not valid base64",
        ),
        ("/volumes/0/cloudInitNoCloud", json!({"userData": "x".repeat(2049)}), "2049 bytes exceed the 2048 byte limit"),
        ("/volumes/0/emptyDisk", json!({"capacity": "1.5.2"}), "spec.template.spec.volumes[0].emptyDisk.capacity"),
    ];
    for (pointer, value, expected) in cases {
        let mut spec = spec(json!({"name": "root", "emptyDisk": {"capacity": "1Mi"}}));
        if pointer.starts_with("/volumes/0/cloudInitNoCloud") {
            spec["volumes"][0] = json!({"name": "root"});
        }
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = spec.pointer_mut(parent).unwrap_or_else(|| panic!("{parent}"));
        target[key] = value;
        let stderr = refused(&server, &vm("bad", "Always", spec));
        assert!(stderr.contains(expected), "{pointer}: {stderr}");
    }
}

#[tokio::test]
async fn a_vm_shows_why_its_vmi_failed_after_the_vmi_is_gone() {
    let server = Standalone::with_node(&[]);
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(server.client().await);
    let cases = [
        (
            "no-image",
            json!({"name": "root", "containerDisk": {"image": "no/such:1", "imagePullPolicy": "Never"}}),
            "spec.volumes[0].containerDisk.image: image \"no/such:1\" is not on this node",
        ),
        (
            "no-secret",
            json!({"name": "cloudinit", "cloudInitNoCloud": {"secretRef": {"name": "missing"}}}),
            "spec.volumes[0].cloudInitNoCloud.secretRef: secret \"missing\" not found",
        ),
    ];
    for (name, volume, _) in &cases {
        kubectl_ok(&server, &["create", "-f", "-"], Some(&vm(name, "Manual", spec(volume.clone())).to_string()));
    }
    for (name, _, expected) in &cases {
        let out = server.kvmlet(&["start", name]).output().unwrap();
        assert!(out.status.success(), "kvmlet start {name}: {}", String::from_utf8_lossy(&out.stderr));
        let message = failure_message(&vmis, &server, name).await;
        assert!(message.starts_with(expected), "{name}: {message}");
        kubectl_ok(&server, &["delete", "vmi", name], None);
        wait_gone(&vmis, &server, name).await;
        // The VM controller records the failure; wait for it, then read it as a user would.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let describe = loop {
            let describe = kubectl_ok(&server, &["describe", "vm", name], None);
            if describe.contains("VMINotExists") && describe.contains(expected) {
                break describe;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: no Failure condition:\n{describe}\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(describe.contains("Failure") && describe.contains("Unsupported"), "{describe}");
        let conditions = kubectl_ok(&server, &["get", "vm", name, "-o", "jsonpath={.status.conditions}"], None);
        let conditions: Value = serde_json::from_str(&conditions).unwrap();
        let failure = conditions.as_array().unwrap().iter().find(|c| c["type"] == "Failure").cloned();
        let failure = failure.unwrap_or_else(|| panic!("{name}: {conditions}"));
        assert_eq!(failure["status"], "True");
        assert_eq!(failure["reason"], "Unsupported");
        assert!(failure["message"].as_str().unwrap().starts_with(expected), "{failure}");
    }
}

#[tokio::test]
async fn the_cpu_request_and_fractional_memory_are_run_as_asked() {
    let server = Standalone::with_node(&[]);
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(server.client().await);
    let mut object = vmi("sized", json!({"name": "scratch", "emptyDisk": {"capacity": "1Mi"}}));
    object["spec"]["domain"]["resources"]["requests"] = json!({"cpu": "3500m", "memory": "0.125Gi"});
    object["spec"]["domain"]["firmware"]["kernelBoot"]["kernelArgs"] = json!("probe.action=wait");
    kubectl_ok(&server, &["create", "-f", "-"], Some(&object.to_string()));
    wait_for_phase(&vmis, &server, "sized", Phase::Running).await;
    let out = server.kvmlet(&["inspect", "sized", "-n", "default"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let detail: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(detail["config"]["vcpus"], 4, "3500m rounds up to 4 vCPUs");
    assert_eq!(detail["config"]["memoryMib"], 128);
    let console = wait_console(&server, "sized", "probe: waiting for power button").await;
    assert!(console.contains("probe: cpus=4"), "{console}");
    kubectl_ok(&server, &["delete", "vmi", "sized"], None);
    wait_gone(&vmis, &server, "sized").await;
}
