//! containerDisk images pulled from a registry (Debian's docker-registry on
//! loopback, images pushed with skopeo) by `kvmlet standalone`, through
//! `--registry-mirror docker.io=http://…`, and what the guest and the VMI show.

use std::time::{Duration, Instant};

use e2e::node::*;
use e2e::registry::{disk_layer, tar, Compression, Entry, Registry};
use e2e::standalone::Standalone;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use serde_json::json;

/// A disk with a pattern the test can recognise: 2 MiB of a repeating byte ramp.
fn pattern_disk() -> Vec<u8> {
    (0..2 << 20).map(|i: u32| (i % 251) as u8).collect()
}

fn server_for(registry: &Registry) -> Standalone {
    let flags = registry.mirror_flags();
    Standalone::with_node(&flags.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Waits for an event on `name` with `reason` whose message contains `needle`.
async fn wait_event(client: &kube::Client, server: &Standalone, name: &str, reason: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = event_reasons(client, name).await;
        if let Some((_, message)) = events.iter().find(|(r, m)| r == reason && m.contains(needle)) {
            return message.clone();
        }
        assert!(Instant::now() < deadline, "no {reason} event with {needle:?} on {name}: {events:?}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the VM's disk holds: its qcow2 overlay read over the pulled image's
/// file by qemu-img (`-U`: the VM holds the overlay).
fn disk_copy(server: &Standalone, uid: &str) -> Vec<u8> {
    let overlay = server.run_dir().join("vms").join(uid).join("disks/disk-0.qcow2");
    let flat = overlay.with_extension("flat");
    let mut convert = std::process::Command::new(e2e::require_tool("qemu-img", "qemu-utils"));
    e2e::boot_disk::run(convert.args(["convert", "-U", "-O", "raw"]).arg(&overlay).arg(&flat));
    let bytes = std::fs::read(&flat).unwrap();
    std::fs::remove_file(&flat).unwrap();
    bytes
}

#[tokio::test]
async fn the_seed_vm_pulls_its_container_disk_through_a_mirror_and_runs() {
    let registry = Registry::start();
    let disk = pattern_disk();
    registry.push("kubevirt/cirros-container-disk-demo:latest", &[disk_layer("disk.img", &disk)]);
    // The seed names no kernel arguments: the node's default command line keeps the probe running.
    let mut flags = registry.mirror_flags();
    flags.extend(["--default-cmdline".to_string(), "probe.action=wait".to_string()]);
    let server = Standalone::with_node(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let client = server.client().await;
    let seed = e2e::workspace_root().join("examples/vm-cirros.yaml");
    let kubectl = std::path::Path::new("kubectl");
    let out = e2e::kubectl(kubectl, &server.kubeconfig(), &["apply", "-f", seed.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let patch = r#"{"spec":{"running":true}}"#;
    let out = e2e::kubectl(
        kubectl,
        &server.kubeconfig(),
        &["patch", "vm", "vm-cirros", "--type", "merge", "-p", patch],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let deadline = Duration::from_secs(120);
    let running =
        wait_for(&vmis, &server, "vm-cirros", "Running", deadline, |v| v.and_then(phase) == Some(Phase::Running))
            .await
            .unwrap();
    let image = "kubevirt/cirros-container-disk-demo:latest";
    wait_event(&client, &server, "vm-cirros", "Pulling", &format!("Pulling image {image:?}")).await;
    let pulled =
        wait_event(&client, &server, "vm-cirros", "Pulled", &format!("Successfully pulled image {image:?} in ")).await;
    assert!(pulled.contains("Image size: ") && pulled.ends_with(" bytes."), "{pulled}");
    // The guest's disk reads as the image's one file under /disk/ (through its overlay).
    let uid = running.metadata.uid.unwrap();
    assert_eq!(disk_copy(&server, &uid), disk, "the VM's disk holds the pushed pattern");
    wait_console(&server, "vm-cirros", "probe: disk index=0").await;
    let console = wait_console(&server, "vm-cirros", "sectors=4096").await;
    assert!(console.contains("sectors=4096"), "{console}");

    // The store: one reference, its tree, and `kvmlet images` lists it with its user.
    let out = server.kvmlet(&["images", "--image-dir", server.image_dir().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table.lines().find(|l| l.starts_with("docker.io/kubevirt/cirros-container-disk-demo:latest"));
    let row = row.unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("sha256:") && row.contains(&uid), "{table}");
    assert!(std::fs::read_dir(server.image_dir().join("tmp")).unwrap().next().is_none(), "nothing half-written");
}

#[tokio::test]
async fn if_not_present_uses_the_stored_image_without_the_registry_and_concurrent_pulls_share_blobs() {
    let mut registry = Registry::start();
    let disk = pattern_disk();
    let layers = registry.push("disks/shared:v1", &[disk_layer("d.img", &disk)]);
    let server = server_for(&registry);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    // Two VMIs pull the same image at once.
    create(&vmis, &container_disk_vmi("first", "disks/shared:v1", "probe.action=wait", json!({}))).await;
    create(&vmis, &container_disk_vmi("second", "disks/shared:v1", "probe.action=wait", json!({}))).await;
    let first = wait_for_phase(&vmis, &server, "first", Phase::Running).await;
    let second = wait_for_phase(&vmis, &server, "second", Phase::Running).await;
    assert_eq!(disk_copy(&server, first.metadata.uid.as_deref().unwrap()), disk);
    assert_eq!(disk_copy(&server, second.metadata.uid.as_deref().unwrap()), disk);
    let blobs: Vec<_> = std::fs::read_dir(server.image_dir().join("blobs/sha256")).unwrap().flatten().collect();
    assert_eq!(blobs.len(), 1, "the layer is stored once: {blobs:?}");
    assert_eq!(format!("sha256:{}", blobs[0].file_name().to_string_lossy()), layers[0]);

    // With the registry gone, IfNotPresent (the default for a tag other than latest) still starts.
    registry.stop();
    create(
        &vmis,
        &container_disk_vmi(
            "third",
            "disks/shared:v1",
            "probe.action=wait",
            json!({"imagePullPolicy": "IfNotPresent"}),
        ),
    )
    .await;
    let third = wait_for_phase(&vmis, &server, "third", Phase::Running).await;
    assert_eq!(disk_copy(&server, third.metadata.uid.as_deref().unwrap()), disk);
    let events = event_reasons(&client, "third").await;
    assert!(!events.iter().any(|(r, _)| r == "Pulling"), "IfNotPresent pulled: {events:?}");
    // Always asks the registry, which is gone: ErrImagePull, and the VMI stays Scheduled.
    create(
        &vmis,
        &container_disk_vmi("fourth", "disks/shared:v1", "probe.action=wait", json!({"imagePullPolicy": "Always"})),
    )
    .await;
    let failed = wait_event(&client, &server, "fourth", "Failed", "Failed to pull image \"disks/shared:v1\"").await;
    assert!(failed.contains(&registry.host()), "{failed}");
    let fourth = vmis.get("fourth").await.unwrap();
    assert_eq!(phase(&fourth), Some(Phase::Scheduled));
    let reason = fourth.status.unwrap().reason.unwrap_or_default();
    assert!(reason == "ErrImagePull" || reason == "ImagePullBackOff", "{reason}");

    // Prune keeps what running VMs use.
    let image_dir = server.image_dir();
    let out = server.kvmlet(&["images", "prune", "--image-dir", image_dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("disks/shared"), "an image in use was pruned");
    for name in ["first", "second", "third", "fourth"] {
        vmis.delete(name, &DeleteParams::default()).await.unwrap();
        wait_gone(&vmis, &server, name).await;
    }
    let out = server.kvmlet(&["images", "prune", "--image-dir", image_dir.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted docker.io/disks/shared:v1"), "{out:?}");
    assert_eq!(std::fs::read_dir(image_dir.join("blobs/sha256")).unwrap().count(), 0);
}

#[tokio::test]
async fn credentials_come_from_an_image_pull_secret() {
    let registry = Registry::start_with(Some(("tester", "s3cret")));
    let disk = pattern_disk();
    registry.push("private/disk:v1", &[disk_layer("d.img", &disk)]);
    let server = server_for(&registry);
    let client = server.client().await;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    for (name, password) in [("good-creds", "s3cret"), ("bad-creds", "wrong")] {
        let config = json!({"auths": {registry.host(): {"username": "tester", "password": password}}});
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": config.to_string()},
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(
        &vmis,
        &container_disk_vmi("authed", "private/disk:v1", "probe.action=wait", json!({"imagePullSecret": "good-creds"})),
    )
    .await;
    create(
        &vmis,
        &container_disk_vmi("wrong", "private/disk:v1", "probe.action=wait", json!({"imagePullSecret": "bad-creds"})),
    )
    .await;
    create(&vmis, &container_disk_vmi("anonymous", "private/disk:v1", "probe.action=wait", json!({}))).await;
    let authed = wait_for_phase(&vmis, &server, "authed", Phase::Running).await;
    assert_eq!(disk_copy(&server, authed.metadata.uid.as_deref().unwrap()), disk);
    for name in ["wrong", "anonymous"] {
        let failed = wait_event(&client, &server, name, "Failed", "Failed to pull image \"private/disk:v1\"").await;
        let lower = failed.to_lowercase();
        assert!(lower.contains("not authorized") || lower.contains("unauthorized"), "{failed}");
        let vmi = vmis.get(name).await.unwrap();
        assert_eq!(phase(&vmi), Some(Phase::Scheduled), "a failed pull keeps the VMI waiting");
        let condition = vmi.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
        let reason = condition.reason.unwrap_or_default();
        assert!(reason == "ErrImagePull" || reason == "ImagePullBackOff", "{reason}");
        assert!(condition.message.unwrap_or_default().contains("private/disk:v1"));
    }
}

#[tokio::test]
async fn bad_images_fail_with_their_reason_named() {
    let registry = Registry::start();
    let tampered = registry.push("bad/tampered:v1", &[disk_layer("d.img", &pattern_disk())]);
    std::fs::write(registry.blob_file(&tampered[0]), b"not the layer that was pushed").unwrap();
    registry.push("bad/escape:v1", &[tar(&[Entry::dir("disk/"), Entry::file("../escape.img", b"x")])]);
    registry.push("bad/symlink:v1", &[tar(&[Entry::dir("disk/"), Entry::symlink("disk/d.img", "/etc/shadow")])]);
    registry.push(
        "bad/two:v1",
        &[tar(&[Entry::dir("disk/"), Entry::file("disk/a.img", b"a"), Entry::file("disk/b.img", b"b")])],
    );
    let server = server_for(&registry);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let cases = [
        ("unknown", "bad/nothing:v1", "Failed", "manifest unknown"),
        ("tampered", "bad/tampered:v1", "Failed", "igest"),
        ("escape", "bad/escape:v1", "Failed", "a path with '..'"),
        ("symlink", "bad/symlink:v1", "Failed", "a symlink pointing outside the image"),
        ("two", "bad/two:v1", "Failed", "holds 2 files; set containerDisk.path"),
    ];
    for (name, image, _, _) in cases {
        create(&vmis, &container_disk_vmi(name, image, "probe.action=wait", json!({}))).await;
    }
    for (name, _, reason, needle) in cases {
        let message = wait_event(&client, &server, name, reason, needle).await;
        let vmi = vmis.get(name).await.unwrap();
        let condition = vmi.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").cloned().unwrap();
        assert!(condition.message.unwrap_or_default().contains(needle), "{name}: {message}");
    }
    // Never, and the image is not on the node: the VMI fails at once, naming the policy.
    create(
        &vmis,
        &container_disk_vmi("never", "bad/nothing:v1", "probe.action=wait", json!({"imagePullPolicy": "Never"})),
    )
    .await;
    let never = wait_for_phase(&vmis, &server, "never", Phase::Failed).await;
    let condition = never.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(condition.message.unwrap_or_default().contains("ErrImageNeverPull"));
    assert!(!event_reasons(&client, "never").await.iter().any(|(r, _)| r == "Pulling"));
    // Nothing hostile reached the store or the host.
    assert!(
        !server.image_dir().join("escape.img").exists()
            && !server.image_dir().parent().unwrap().join("escape.img").exists()
    );
    assert!(std::fs::read_dir(server.image_dir().join("tmp")).unwrap().next().is_none(), "nothing half-written");
    let tampered_blob = server.image_dir().join("blobs/sha256").join(tampered[0].trim_start_matches("sha256:"));
    assert!(!tampered_blob.exists(), "a blob that failed its digest check is never stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_pull_leaves_nothing_half_visible_and_pulls_again() {
    let registry = Registry::start();
    let disk = e2e::registry::noise(6 << 20, 7);
    registry.push("disks/big:v1", &[disk_layer("big.img", &disk)]);
    let proxy = e2e::registry::slow_proxy(registry.host()).await;
    let flags =
        ["--registry-mirror".to_string(), format!("docker.io=http://{proxy}"), "--insecure-registry".into(), proxy];
    let mut server = Standalone::with_node(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &container_disk_vmi("big", "disks/big:v1", "probe.action=wait", json!({}))).await;

    // Wait until the layer is partly downloaded, then SIGKILL the server.
    let tmp = server.image_dir().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let partial =
            std::fs::read_dir(&tmp).map(|d| d.flatten().any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false)));
        if partial.unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline, "the pull never started: {}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.restart();
    let dir = server.image_dir();
    let visible = |sub: &str| std::fs::read_dir(dir.join(sub)).map(|d| d.count()).unwrap_or(0);
    assert_eq!((visible("refs"), visible("unpacked")), (0, 0), "a killed pull left an image visible");

    let vmi = wait_for(&vmis, &server, "big", "Running", Duration::from_secs(120), |v| {
        v.and_then(phase) == Some(Phase::Running)
    })
    .await
    .unwrap();
    assert_eq!(disk_copy(&server, vmi.metadata.uid.as_deref().unwrap()), disk);
    assert_eq!(visible("tmp"), 0, "the killed pull's temporary files are gone");
    assert_eq!((visible("refs"), visible("unpacked"), visible("blobs/sha256")), (1, 1, 1));
}

#[tokio::test]
async fn an_insecure_registry_is_reached_over_tls_without_verification_and_only_then() {
    let registry = Registry::start_tls();
    let disk = pattern_disk();
    registry.push("disks/tls:v1", &[disk_layer("d.img", &disk)]);
    let mirror = format!("docker.io=https://{}", registry.host());
    let server = Standalone::with_node(&["--registry-mirror", &mirror, "--insecure-registry", &registry.host()]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &container_disk_vmi("tls", "disks/tls:v1", "probe.action=wait", json!({}))).await;
    let vmi = wait_for_phase(&vmis, &server, "tls", Phase::Running).await;
    assert_eq!(disk_copy(&server, vmi.metadata.uid.as_deref().unwrap()), disk);

    // The same mirror without --insecure-registry: the self-signed certificate is refused.
    let strict = Standalone::with_node(&["--registry-mirror", &mirror]);
    let client = strict.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &container_disk_vmi("strict", "disks/tls:v1", "probe.action=wait", json!({}))).await;
    let failed = wait_event(&client, &strict, "strict", "Failed", "Failed to pull image \"disks/tls:v1\"").await;
    assert!(failed.to_lowercase().contains("certificate"), "{failed}");
}

#[tokio::test]
async fn a_multi_arch_index_resolves_to_linux_amd64_and_zstd_layers_unpack() {
    let registry = Registry::start();
    let disk = pattern_disk();
    let decoy = vec![0xAAu8; 1 << 20];
    let images = [("arm64", vec![disk_layer("d.img", &decoy)]), ("amd64", vec![disk_layer("d.img", &disk)])];
    registry.push_image("disks/multi:v1", &images, Compression::Zstd, true);
    let server = server_for(&registry);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &container_disk_vmi("multi", "disks/multi:v1", "probe.action=wait", json!({}))).await;
    let vmi = wait_for_phase(&vmis, &server, "multi", Phase::Running).await;
    assert_eq!(disk_copy(&server, vmi.metadata.uid.as_deref().unwrap()), disk, "the amd64 image's disk");
}

#[tokio::test]
async fn a_kernel_boot_container_is_pulled_and_its_kernel_booted() {
    let registry = Registry::start();
    let kernel = std::fs::read(&e2e::probe().bzimage).unwrap();
    registry.push("kernels/probe:v1", &[tar(&[Entry::dir("boot/"), Entry::file("boot/vmlinuz", &kernel)])]);
    // A node without a default kernel: the VMI boots only if the pulled one is used.
    let flags = registry.mirror_flags();
    let mut args: Vec<std::ffi::OsString> =
        vec!["--node-name".into(), "test-node".into(), "--heartbeat-interval".into(), "1".into()];
    args.extend(flags.iter().map(std::ffi::OsString::from));
    let server = Standalone::start_with(args);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let vmi: VirtualMachineInstance = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "kernel"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "domain": {
                "resources": {"requests": {"memory": "64Mi"}},
                "firmware": {"kernelBoot": {
                    "kernelArgs": "probe.action=wait",
                    "container": {"image": "kernels/probe:v1", "kernelPath": "/boot/vmlinuz"},
                }},
                "devices": {"disks": []},
            },
        },
    }))
    .unwrap();
    create(&vmis, &vmi).await;
    wait_for_phase(&vmis, &server, "kernel", Phase::Running).await;
    wait_console(&server, "kernel", "probe: waiting for power button").await;
    wait_event(&client, &server, "kernel", "Pulled", "Successfully pulled image \"kernels/probe:v1\"").await;
}
