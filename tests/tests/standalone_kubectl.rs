//! `kvmlet standalone` driven by the real kubectl binaries of this machine:
//! the oldest, 1.32 and the newest side by side, each in its own namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e::standalone::Standalone;
use e2e::workspace_root;

/// kubectl 1.27 and 1.28 read the protobuf /openapi/v2 before every create
/// (to learn that the server validates fields); 1.29 on read OpenAPI v3. The
/// server serves both, so every kubectl.1.NN here is supported.
const OLDEST_SUPPORTED_MINOR: u32 = 27;

/// kubectl.1.NN binaries next to the machine's kubectl: the oldest supported,
/// 1.32 and the newest.
fn kubectls() -> Vec<PathBuf> {
    let kubectl = e2e::require_tool("kubectl", "kubectl");
    let dir = std::fs::canonicalize(&kubectl).unwrap().parent().unwrap().to_path_buf();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let minor: u32 = path.file_name()?.to_str()?.strip_prefix("kubectl.1.")?.parse().ok()?;
            (minor >= OLDEST_SUPPORTED_MINOR).then_some((minor, path))
        })
        .collect();
    versions.sort();
    assert!(!versions.is_empty(), "no kubectl.1.NN binaries next to {}", kubectl.display());
    let mut chosen: Vec<PathBuf> = Vec::new();
    for pick in [versions.first(), versions.iter().find(|(m, _)| *m == 32), versions.last()].into_iter().flatten() {
        if !chosen.contains(&pick.1) {
            chosen.push(pick.1.clone());
        }
    }
    chosen
}

fn kubectl(binary: &Path, api: &Standalone, args: &[&str], stdin: Option<&str>) -> Output {
    api.kubectl_with(binary, args, stdin)
}

fn ok(binary: &Path, api: &Standalone, args: &[&str], stdin: Option<&str>) -> String {
    api.kubectl_ok(binary, args, stdin)
}

fn fails(binary: &Path, api: &Standalone, args: &[&str], stdin: Option<&str>) -> String {
    api.kubectl_fails(binary, args, stdin)
}

/// The current UTC time in RFC 3339 (seconds), from `date`.
fn chrono_free_now() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A VMI owned by the VM (as the controller will create it).
fn owned_vmi(vm_uid: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: vm-cirros\n  ownerReferences:\n  - apiVersion: kubevirt.io/v1\n    kind: VirtualMachine\n    name: vm-cirros\n    uid: {vm_uid}\n    controller: true\n    blockOwnerDeletion: true\nspec:\n  domain:\n    memory:\n      guest: 64Mi\n    devices: {{}}\n"
    )
}

#[test]
fn kubectl_cascading_deletes() {
    let api = Standalone::start();
    let manifest = std::fs::read_to_string(workspace_root().join("examples/vm-cirros.yaml")).unwrap();
    for binary in kubectls() {
        let version = binary.file_name().unwrap().to_string_lossy().into_owned();
        let k = |args: &[&str], stdin: Option<&str>| ok(&binary, &api, args, stdin);
        let count = |kind: &str| {
            let out = kubectl(&binary, &api, &["get", kind, "-o", "name"], None);
            String::from_utf8_lossy(&out.stdout).lines().count()
        };
        for (cascade, vmis_left) in [("background", 0), ("foreground", 0), ("orphan", 1)] {
            k(&["create", "-f", "-"], Some(&manifest));
            let uid = k(&["get", "vm", "vm-cirros", "-o", "jsonpath={.metadata.uid}"], None);
            k(&["create", "-f", "-"], Some(&owned_vmi(&uid)));
            k(&["delete", "vm", "vm-cirros", &format!("--cascade={cascade}")], None);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while count("vmis") != vmis_left && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            assert_eq!(count("vms"), 0, "{version} --cascade={cascade} deletes the VM");
            assert_eq!(count("vmis"), vmis_left, "{version} --cascade={cascade}");
            if vmis_left == 1 {
                let owners = k(&["get", "vmi", "vm-cirros", "-o", "jsonpath={.metadata.ownerReferences}"], None);
                assert_eq!(owners, "", "{version}: an orphan has no owner reference left");
                k(&["delete", "vmi", "vm-cirros"], None);
            }
        }
    }
}

#[test]
fn kubectl_walks_through_the_user_guide() {
    let api = Standalone::start();
    let manifest = std::fs::read_to_string(workspace_root().join("examples/vm-cirros.yaml")).unwrap();
    for binary in kubectls() {
        let version = binary.file_name().unwrap().to_string_lossy().replace("kubectl.", "v");
        let ns = format!("walk-{}", version.replace('.', "-"));
        let k = |args: &[&str]| ok(&binary, &api, args, None);
        // `kubectl create namespace` sends protobuf (1.32+), which the server
        // does not decode yet; a manifest goes as JSON.
        let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
        ok(&binary, &api, &["create", "-f", "-"], Some(&namespace));
        let created = ok(&binary, &api, &["create", "-n", &ns, "-f", "-"], Some(&manifest));
        assert!(created.contains("virtualmachine.kubevirt.io/vm-cirros created"), "{version}: {created}");

        let vms = k(&["get", "vms", "-n", &ns]);
        assert!(vms.lines().any(|l| l.starts_with("vm-cirros")), "{version}: {vms}");
        let header: Vec<&str> = vms.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, ["NAME", "AGE", "STATUS", "READY"], "{version}: KubeVirt's columns");
        let short = k(&["get", "vm", "-n", &ns, "-o", "name"]);
        assert_eq!(short.trim(), "virtualmachine.kubevirt.io/vm-cirros", "{version}");
        let all = k(&["get", "vms", "-A"]);
        assert!(all.lines().next().unwrap_or_default().starts_with("NAMESPACE"), "{version}: {all}");
        let vmis = kubectl(&binary, &api, &["get", "vmis", "-n", &ns], None);
        assert!(String::from_utf8_lossy(&vmis.stderr).contains("No resources found"), "{version}");

        // An event about the VM, as the controller records them; describe shows it.
        let uid = k(&["get", "vm", "vm-cirros", "-n", &ns, "-o", "jsonpath={.metadata.uid}"]);
        let now = chrono_free_now();
        let event = format!(
            "apiVersion: v1\nkind: Event\nmetadata:\n  name: vm-cirros.1\n  namespace: {ns}\ninvolvedObject:\n  apiVersion: kubevirt.io/v1\n  kind: VirtualMachine\n  name: vm-cirros\n  namespace: {ns}\n  uid: {uid}\nreason: SuccessfulCreate\nmessage: \"Created virtual machine: vm-cirros\"\ntype: Normal\nsource:\n  component: virtualmachine-controller\nfirstTimestamp: \"{now}\"\nlastTimestamp: \"{now}\"\ncount: 1\n"
        );
        ok(&binary, &api, &["create", "-f", "-"], Some(&event));
        let described = k(&["describe", "vm", "vm-cirros", "-n", &ns]);
        let events = described.split("Events:").nth(1).unwrap_or_default();
        assert!(
            events.contains("SuccessfulCreate") && events.contains("Created virtual machine: vm-cirros"),
            "{version}: {described}"
        );

        k(&["patch", "vm", "vm-cirros", "-n", &ns, "--type", "merge", "-p", r#"{"spec":{"running":true}}"#]);
        let running =
            k(&["get", "vm", "vm-cirros", "-n", &ns, "-o", "jsonpath={.spec.running} {.metadata.generation}"]);
        assert_eq!(running, "true 2", "{version}: a spec change bumps the generation");
        k(&["patch", "vm", "vm-cirros", "-n", &ns, "--type", "merge", "-p", r#"{"spec":{"running":false}}"#]);

        // -o yaml round trip: what kubectl prints, it can replace with.
        let yaml = k(&["get", "vm", "vm-cirros", "-n", &ns, "-o", "yaml"]);
        assert!(yaml.contains("uid:") && yaml.contains("resourceVersion:"), "{version}: {yaml}");
        let replaced = ok(&binary, &api, &["replace", "-f", "-"], Some(&yaml));
        assert!(replaced.contains("replaced"), "{version}: {replaced}");
        let stale = fails(&binary, &api, &["replace", "-f", "-"], Some(&yaml));
        assert!(
            stale.contains("the object has been modified"),
            "{version}: a stale resourceVersion conflicts: {stale}"
        );

        let both = fails(
            &binary,
            &api,
            &["patch", "vm", "vm-cirros", "-n", &ns, "--type", "merge", "-p", r#"{"spec":{"runStrategy":"Always"}}"#],
            None,
        );
        assert!(both.contains("Running and RunStrategy are mutually exclusive"), "{version}: {both}");

        let bogus = manifest
            .replace("  running: false\n", "  running: false\n  bogus: 1\n")
            .replace("name: vm-cirros\nspec", "name: vm-bogus\nspec");
        let strict = fails(&binary, &api, &["create", "-n", &ns, "-f", "-"], Some(&bogus));
        assert!(strict.contains("unknown field \"spec.bogus\""), "{version}: {strict}");

        let deleted = k(&["delete", "vm", "vm-cirros", "-n", &ns]);
        assert!(deleted.contains("deleted"), "{version}: {deleted}");
        let gone = kubectl(&binary, &api, &["get", "vm", "vm-cirros", "-n", &ns], None);
        assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"), "{version}");
    }
}

#[test]
fn tcp_needs_the_token_and_the_unix_socket_is_private() {
    let api = Standalone::start();
    let curl = e2e::require_tool("curl", "curl");
    let kubeconfig = std::fs::read_to_string(api.kubeconfig()).unwrap();
    let server = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().to_string();
    let dir = api.kubeconfig().parent().unwrap().to_path_buf();
    let status = |args: &[&str]| {
        let out =
            Command::new(&curl).args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = format!("{server}/api/v1/namespaces");
    let ca = dir.join("tls/ca.pem");
    assert_eq!(status(&["--cacert", ca.to_str().unwrap(), &url]), "401", "no token, no access");
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    let bearer = format!("Authorization: Bearer {}", token.trim());
    assert_eq!(status(&["--cacert", ca.to_str().unwrap(), "-H", &bearer, &url]), "200");
    let socket = dir.join("api.sock");
    assert_eq!(status(&["--unix-socket", socket.to_str().unwrap(), "http://localhost/api/v1/namespaces"]), "200");
    use std::os::unix::fs::PermissionsExt;
    for private in [socket, dir.join("token"), dir.join("kubeconfig"), dir.join("tls/server.key.der")] {
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", private.display());
    }
}

#[test]
fn kubectl_apply_client_and_server_side() {
    let api = Standalone::start();
    let manifest = std::fs::read_to_string(workspace_root().join("examples/vm-cirros.yaml")).unwrap();
    let started = manifest.replace("  running: false\n", "  running: true\n");
    assert_ne!(started, manifest, "the example is created stopped");
    for binary in kubectls() {
        let version = binary.file_name().unwrap().to_string_lossy().replace("kubectl.", "v");
        for (mode, flags) in [("client", &[][..]), ("server", &["--server-side"][..])] {
            let ns = format!("apply-{mode}-{}", version.replace('.', "-"));
            let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
            ok(&binary, &api, &["create", "-f", "-"], Some(&namespace));
            let apply: Vec<&str> = ["apply", "-n", &ns, "-f", "-"].into_iter().chain(flags.iter().copied()).collect();
            ok(&binary, &api, &apply, Some(&manifest));
            let fields = ["get", "vm", "vm-cirros", "-n", &ns, "-o", "jsonpath={.spec.running} {.metadata.generation}"];
            assert_eq!(ok(&binary, &api, &fields, None), "false 1", "{version} {mode}-side apply creates");
            ok(&binary, &api, &apply, Some(&started));
            assert_eq!(ok(&binary, &api, &fields, None), "true 2", "{version} {mode}-side apply updates");
        }
    }
}
