//! The embedded API's answers to bad input, through the real kubectl
//! binaries (the apiserver's own messages, as kubectl shows them), its
//! protobuf bodies (kubectl 1.32 on), its health endpoints, and the modes
//! of the private files of a data directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::standalone::Standalone;

/// `kubectl.1.NN` next to the machine's kubectl.
fn kubectl_version(minor: u32) -> PathBuf {
    let kubectl = e2e::require_tool("kubectl", "kubectl");
    let dir = std::fs::canonicalize(&kubectl).unwrap().parent().unwrap().to_path_buf();
    let binary = dir.join(format!("kubectl.1.{minor}"));
    assert!(binary.exists(), "{} is missing", binary.display());
    binary
}

fn ok(binary: &Path, api: &Standalone, args: &[&str], stdin: Option<&str>) -> String {
    api.kubectl_ok(binary, args, stdin)
}

fn fails(binary: &Path, api: &Standalone, args: &[&str], stdin: Option<&str>) -> String {
    api.kubectl_fails(binary, args, stdin)
}

fn vm(name: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  running: false\n  template:\n    spec:\n      domain:\n        memory:\n          guest: 64Mi\n        devices: {{}}\n"
    )
}

const SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

#[test]
fn kubectl_shows_the_apiservers_validation_messages() {
    let api = Standalone::start();
    for minor in [27, 33] {
        let binary = kubectl_version(minor);
        let error = fails(&binary, &api, &["create", "-f", "-"], Some(&vm("Bad_Name")));
        let expected = format!(
            "The VirtualMachine \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": {SUBDOMAIN_MESSAGE}"
        );
        assert!(error.contains(&expected), "kubectl 1.{minor}: {error}");

        let long = "a".repeat(300);
        let error = fails(&binary, &api, &["create", "-f", "-"], Some(&vm(&long)));
        assert!(error.contains("must be no more than 253 characters"), "kubectl 1.{minor}: {error}");

        let name = format!("labelled-{minor}");
        ok(&binary, &api, &["create", "-f", "-"], Some(&vm(&name)));
        let error = fails(&binary, &api, &["label", "vm", &name, "a/b/c!!=x"], None);
        assert!(
            error.contains(&format!("The VirtualMachine \"{name}\" is invalid: metadata.labels: Invalid value: \"a/b/c!!\": a qualified name must consist of alphanumeric characters")),
            "kubectl 1.{minor}: {error}"
        );
        // kubectl label checks values itself; a manifest reaches the server.
        let big = vm("big-label")
            .replace("metadata:\n", &format!("metadata:\n  labels:\n    big: {}\n", "v".repeat(100_000)));
        let error = fails(&binary, &api, &["create", "-f", "-"], Some(&big));
        let shown = |e: &str| e.chars().take(400).collect::<String>();
        assert!(error.contains("metadata.labels: Invalid value: \"vvvv"), "kubectl 1.{minor}: {}", shown(&error));
        assert!(error.contains(": must be no more than 63 characters"), "kubectl 1.{minor}: {}", shown(&error));

        let error = fails(&binary, &api, &["get", "vms", "-l", "a/b/c!!"], None);
        assert!(error.contains("(BadRequest)") && error.contains("unable to parse requirement: "), "{error}");

        let error = fails(&binary, &api, &["create", "namespace", "Bad.Name"], None);
        assert!(error.contains("The Namespace \"Bad.Name\" is invalid: metadata.name: Invalid value: \"Bad.Name\": a lowercase RFC 1123 label must consist"), "kubectl 1.{minor}: {error}");
    }
    let listed = ok(&kubectl_version(33), &api, &["get", "vms", "-o", "name"], None);
    assert_eq!(listed.lines().count(), 2, "only the two valid VMs exist: {listed}");
}

#[test]
fn kubectl_creates_namespaces_and_secrets_with_protobuf_bodies() {
    let api = Standalone::start();
    for minor in [32, 33] {
        let binary = kubectl_version(minor);
        let namespace = format!("proto-{minor}");
        ok(&binary, &api, &["create", "namespace", &namespace], None);
        let phase = ok(&binary, &api, &["get", "namespace", &namespace, "-o", "jsonpath={.status.phase}"], None);
        assert_eq!(phase, "Active");
        let created = ok(
            &binary,
            &api,
            &[
                "create",
                "secret",
                "generic",
                "creds",
                "-n",
                &namespace,
                "--from-literal=user=admin",
                "--from-literal=pass=s3cret",
            ],
            None,
        );
        assert!(created.contains("secret/creds created"), "{created}");
        let data = ok(
            &binary,
            &api,
            &["get", "secret", "creds", "-n", &namespace, "-o", "jsonpath={.data.user} {.data.pass} {.type}"],
            None,
        );
        assert_eq!(data, "YWRtaW4= czNjcmV0 Opaque");
        let error = fails(&binary, &api, &["create", "namespace", "Bad_NS"], None);
        assert!(error.contains("The Namespace \"Bad_NS\" is invalid"), "kubectl 1.{minor}: {error}");
    }
}

#[test]
fn health_endpoints_need_no_token() {
    let api = Standalone::start();
    let curl = e2e::require_tool("curl", "curl");
    let ca = api.data_dir().join("tls/ca.pem");
    let get = |path: &str| {
        let url = format!("https://{}{path}", api.address());
        let out = Command::new(&curl).args(["-s", "--cacert", ca.to_str().unwrap(), &url]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for endpoint in ["healthz", "livez", "readyz"] {
        assert_eq!(get(&format!("/{endpoint}")), "ok");
        assert_eq!(get(&format!("/{endpoint}?verbose")), format!("[+]ping ok\n[+]store ok\n{endpoint} check passed\n"));
    }
    let raw = ok(&kubectl_version(33), &api, &["get", "--raw", "/readyz"], None);
    assert_eq!(raw, "ok");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "the data directory");
    assert_eq!(mode(&dir.join("tls")), 0o700, "the TLS directory");
    for file in ["state.redb", "token", "kubeconfig", "api.sock", "tls/server.key.der", "tls/server.der", "tls/ca.pem"]
    {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
}

#[test]
fn private_files_are_born_private() {
    // A fresh data directory, created by the server (parents too).
    let parent = tempfile::tempdir().unwrap();
    let fresh = parent.path().join("nested/data");
    let mut server = Command::new(e2e::kvmlet_bin())
        .args(["standalone", "--no-node", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&fresh)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // The unix socket is bound just after the kubeconfig is written.
    while !fresh.join("kubeconfig").exists() || !fresh.join("api.sock").exists() {
        assert!(std::time::Instant::now() < deadline, "the server did not write its kubeconfig and socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let result = std::panic::catch_unwind(|| assert_private(&fresh));
    let _ = server.kill();
    let _ = server.wait();
    result.unwrap();

    // An existing directory that others may read is tightened, with a log line.
    let existing = tempfile::tempdir().unwrap();
    std::fs::set_permissions(existing.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A token kept from an earlier run, readable by others: kept, and tightened.
    let token = existing.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let api = Standalone::start_in(existing, vec!["--no-node".into()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !api.data_dir().join("api.sock").exists() {
        assert!(std::time::Instant::now() < deadline, "the server did not bind its socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_private(api.data_dir());
    assert!(api.log().contains("tightening the data directory to 0700"), "{}", api.log());
    assert!(api.log().contains("tightening a private file to 0600"), "{}", api.log());
    let kubeconfig = std::fs::read_to_string(api.kubeconfig()).unwrap();
    assert!(kubeconfig.contains("token: 0123456789abcdef0123456789abcdef\n"), "the kept token is served");
}

#[test]
fn an_oversized_manifest_is_refused_with_a_status_kubectl_shows() {
    let api = Standalone::start();
    let huge =
        vm("huge").replace("metadata:\n", &format!("metadata:\n  annotations:\n    x: {}\n", "y".repeat(3 << 20)));
    for minor in [27, 33] {
        let error = fails(&kubectl_version(minor), &api, &["create", "-f", "-"], Some(&huge));
        let shown: String = error.chars().take(400).collect();
        assert!(
            error.contains("Error from server (RequestEntityTooLarge)")
                && error.contains("Request entity too large: limit is 3145728"),
            "kubectl 1.{minor}: {shown}"
        );
    }
}
