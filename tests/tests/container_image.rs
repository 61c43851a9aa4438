//! `scripts/build-image`: kvmlet's container image as an OCI layout, built
//! without an engine, checked with the real OCI tools (skopeo, umoci) and run:
//! its unpacked root file system, with nothing from the host but /dev/kvm,
//! boots the probe guest.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn build(out: &Path) -> String {
    let script = e2e::workspace_root().join("scripts/build-image");
    let output = Command::new(script).arg("--binary").arg(e2e::kvmlet_bin()).arg(out).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scripts/build-image failed: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(command: &mut Command) -> Value {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            paths.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    paths.sort();
    paths
}

#[test]
fn the_image_holds_the_binary_and_its_libraries_and_runs_a_vm() {
    let skopeo = e2e::require_tool("skopeo", "skopeo");
    let umoci = e2e::require_tool("umoci", "umoci");
    // Under target/, not /tmp: a nodev /tmp would make the device node we
    // create for the chroot unusable.
    let scratch = e2e::workspace_root().join("target");
    std::fs::create_dir_all(&scratch).unwrap();
    let dir = tempfile::tempdir_in(scratch).unwrap();
    let layout = dir.path().join("oci");
    let summary = build(&layout);
    assert!(summary.contains("oci:") && summary.contains("MiB"), "{summary}");

    // A valid image for the OCI tools: amd64/linux, one layer, kvmlet as the entrypoint.
    let reference = format!("oci:{}:latest", layout.display());
    let inspected = json(Command::new(&skopeo).args(["inspect", &reference]));
    assert_eq!((inspected["Architecture"].as_str(), inspected["Os"].as_str()), (Some("amd64"), Some("linux")));
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(1), "{inspected}");
    let config = json(Command::new(&skopeo).args(["inspect", "--config", &reference]));
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/local/bin/kvmlet"]));

    // Reproducible: the same binary gives the same image digest.
    let again = dir.path().join("again");
    build(&again);
    let digest = |layout: &Path| {
        let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        index["manifests"][0]["digest"].as_str().unwrap().to_string()
    };
    assert_eq!(digest(&layout), digest(&again));

    // The binary, the libraries it links and a scratch /tmp: no shell, nothing else.
    let bundle = dir.path().join("bundle");
    let status = Command::new(&umoci)
        .args(["unpack", "--image", &format!("{}:latest", layout.display())])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(status.status.success(), "umoci unpack: {}", String::from_utf8_lossy(&status.stderr));
    let rootfs = bundle.join("rootfs");
    let files: Vec<String> = tree(&rootfs).into_iter().filter(|p| rootfs.join(p).is_file()).collect();
    assert!(files.contains(&"usr/local/bin/kvmlet".to_string()), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with("/libc.so.6")), "{files:?}");
    assert!(
        files.iter().all(|f| f == "usr/local/bin/kvmlet" || f.starts_with("lib")),
        "only kvmlet and libraries: {files:?}"
    );
    assert!(!rootfs.join("bin/sh").exists(), "no shell in the image");

    // Run it, jailed: only /dev/kvm and the guest image come from outside.
    std::fs::create_dir_all(rootfs.join("dev")).unwrap();
    let mknod = Command::new("mknod").arg(rootfs.join("dev/kvm")).args(["c", "10", "232"]).status().unwrap();
    assert!(mknod.success(), "mknod /dev/kvm in the root file system (needs root, as CI runs)");
    std::fs::copy(&e2e::probe().bzimage, rootfs.join("tmp/probe.bzImage")).unwrap();
    // As a container runtime would: a private mount namespace whose root is
    // a mount, so that kvmlet's jail can pivot out of it.
    let run = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" "$0" && exec chroot "$0" "$@""#)
        .arg(&rootfs)
        .args(["/usr/local/bin/kvmlet", "run", "--kernel", "/tmp/probe.bzImage", "--cmdline", "probe.action=poweroff"])
        .args(["--memory", "64"])
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "kvmlet in the image: {console}{}", String::from_utf8_lossy(&run.stderr));
    assert!(console.contains("probe: done"), "{console}");
}

#[test]
fn build_image_refuses_bad_arguments() {
    let script = e2e::workspace_root().join("scripts/build-image");
    let out = Command::new(&script).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option --bogus"));
    let out = Command::new(&script).args(["--binary", "/nonexistent/kvmlet", "/tmp/unused"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kvmlet is not an executable"));
}
