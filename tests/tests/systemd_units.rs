//! The systemd units in systemd/ pass `systemd-analyze verify` without a
//! single complaint, and carry the settings that keep VMs alive across agent
//! restarts and let the agent reach /dev/kvm inside its sandbox.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 2] = ["kvmlet-agent.service", "kvmlet-standalone.service"];
const INSTALLED_BIN: &str = "/usr/local/bin/kvmlet";

fn unit_text(name: &str) -> String {
    let path = e2e::workspace_root().join("systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `Key=value` settings per key, in order, from one section of a unit file.
fn settings(text: &str, section: &str) -> BTreeMap<String, Vec<String>> {
    let mut current = String::new();
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
        } else if current == section {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not a setting: {line}"));
            found.entry(key.trim().to_owned()).or_default().push(value.trim().to_owned());
        }
    }
    found
}

fn one<'a>(settings: &'a BTreeMap<String, Vec<String>>, unit: &str, key: &str) -> &'a str {
    match settings.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{unit}: expected exactly one {key}=, found {other:?}"),
    }
}

/// Copies the unit into `dir` with ExecStart pointing at this workspace's
/// kvmlet (verify checks that the binary exists); every other line is verbatim.
fn staged_copy(name: &str, dir: &Path, bin: &Path) -> PathBuf {
    let text = unit_text(name);
    let prefix = format!("ExecStart={INSTALLED_BIN} ");
    let mut rewritten = 0;
    let staged: String = text
        .lines()
        .map(|line| match line.strip_prefix(&prefix) {
            Some(args) => {
                rewritten += 1;
                format!("ExecStart={} {args}\n", bin.display())
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert_eq!(rewritten, 1, "{name}: expected one `{prefix}...` line");
    let path = dir.join(name);
    std::fs::write(&path, staged).unwrap();
    path
}

/// Whether a diagnostic line of systemd-analyze is about a unit other than
/// ours (the host's own units can be broken in a sandbox). Lines that name no
/// unit count as ours.
fn about_another_unit(line: &str, ours: &[PathBuf]) -> bool {
    let subject = line.split(':').next().unwrap_or_default().trim();
    let is_unit = [".service", ".socket", ".target", ".mount", ".timer", ".path", ".slice", ".device", ".scope"]
        .iter()
        .any(|suffix| subject.ends_with(suffix));
    let is_ours = ours.iter().any(|path| {
        let name = path.file_name().unwrap().to_str().unwrap();
        subject == name || subject == path.to_str().unwrap() || line.contains(name)
    });
    is_unit && !is_ours
}

fn verify(units: &[PathBuf]) -> (bool, Vec<String>) {
    let analyze = e2e::require_tool("systemd-analyze", "systemd");
    let out = Command::new(analyze).arg("verify").args(units).output().expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints = stderr
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter(|line| !line.trim().is_empty() && !about_another_unit(line, units))
        .map(str::to_owned)
        .collect();
    (out.status.success(), complaints)
}

#[test]
fn units_pass_systemd_analyze_verify_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let bin = e2e::kvmlet_bin();
    let staged: Vec<PathBuf> = UNITS.iter().map(|name| staged_copy(name, dir.path(), bin)).collect();
    let (ok, complaints) = verify(&staged);
    assert!(ok && complaints.is_empty(), "systemd-analyze verify (exit ok: {ok}):\n{}", complaints.join("\n"));
}

/// The check above can fail: a misspelt key and an unparsable value are reported.
#[test]
fn systemd_analyze_verify_reports_a_broken_unit() {
    let dir = tempfile::tempdir().unwrap();
    let good = staged_copy("kvmlet-agent.service", dir.path(), e2e::kvmlet_bin());
    let text = std::fs::read_to_string(&good).unwrap();
    assert!(text.contains("\nKillMode=process\n") && text.contains("\nWatchdogSec=30s\n"));
    let broken = dir.path().join("kvmlet-broken.service");
    std::fs::write(
        &broken,
        text.replace("\nKillMode=", "\nKilMode=").replace("\nWatchdogSec=30s", "\nWatchdogSec=half"),
    )
    .unwrap();
    let (_, complaints) = verify(std::slice::from_ref(&broken));
    let all = complaints.join("\n");
    assert!(all.contains("KilMode"), "misspelt key not reported:\n{all}");
    assert!(all.contains("half"), "bad WatchdogSec not reported:\n{all}");
}

#[test]
fn vms_survive_agent_restarts_and_kvm_is_reachable() {
    for unit in UNITS {
        let service = settings(&unit_text(unit), "Service");
        assert_eq!(one(&service, unit, "KillMode"), "process", "{unit}: VM processes must outlive the main process");
        assert_eq!(one(&service, unit, "Restart"), "on-failure", "{unit}");
        assert_eq!(one(&service, unit, "RuntimeDirectory"), "kvmlet", "{unit}");
        assert_eq!(one(&service, unit, "RuntimeDirectoryPreserve"), "yes", "{unit}: control sockets must survive");
        assert!(one(&service, unit, "StateDirectory").split_whitespace().any(|d| d == "kvmlet"), "{unit}");
        let devices = &service["DeviceAllow"];
        assert!(devices.iter().any(|d| d == "/dev/kvm rw"), "{unit}: DeviceAllow=/dev/kvm rw missing: {devices:?}");
        assert!(devices.iter().any(|d| d == "/dev/net/tun rw"), "{unit}: DeviceAllow=/dev/net/tun rw missing");
        assert_eq!(one(&service, unit, "ProtectSystem"), "strict", "{unit}");
        assert_eq!(one(&service, unit, "NoNewPrivileges"), "yes", "{unit}");
        // Settings that would break the agent: no /dev/kvm, or a read-only cgroup tree.
        for (key, breaking) in
            [("PrivateDevices", "yes"), ("ProtectControlGroups", "yes"), ("ProtectKernelTunables", "yes")]
        {
            assert!(
                service.get(key).is_none_or(|values| values.iter().all(|v| v != breaking)),
                "{unit}: {key}={breaking} would stop it from running VMs"
            );
        }
        let families: Vec<&str> = one(&service, unit, "RestrictAddressFamilies").split_whitespace().collect();
        assert_eq!(families, ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"], "{unit}");
        let caps: Vec<&str> = one(&service, unit, "CapabilityBoundingSet").split_whitespace().collect();
        assert!(caps.contains(&"CAP_NET_ADMIN"), "{unit}: tap devices need CAP_NET_ADMIN");
        for needed in ["CAP_SYS_ADMIN", "CAP_SETPCAP"] {
            assert!(
                caps.contains(&needed),
                "{unit}: the VM jail needs {needed} (namespaces, pivot_root, bounding set)"
            );
        }
        for dropped in ["CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE"] {
            assert!(!caps.contains(&dropped), "{unit}: {dropped} must not be kept");
        }
        assert!(one(&service, unit, "ExecStart").starts_with(INSTALLED_BIN), "{unit}");
    }
    let agent = settings(&unit_text("kvmlet-agent.service"), "Service");
    // Both report readiness and feed the watchdog (sd_notify; tests/tests/operability.rs
    // checks that the processes really send READY=1 and WATCHDOG=1).
    assert_eq!(one(&agent, "agent", "Type"), "notify");
    assert_eq!(one(&agent, "agent", "NotifyAccess"), "main");
    assert_eq!(one(&agent, "agent", "WatchdogSec"), "30s");
    assert_eq!(one(&agent, "agent", "ExecStart"), format!("{INSTALLED_BIN} agent"));
    assert_eq!(agent["EnvironmentFile"], ["-/etc/kvmlet/agent.env"]);
    let standalone = settings(&unit_text("kvmlet-standalone.service"), "Service");
    assert_eq!(one(&standalone, "standalone", "Type"), "notify");
    assert_eq!(one(&standalone, "standalone", "NotifyAccess"), "main");
    assert_eq!(one(&standalone, "standalone", "WatchdogSec"), "30s");
    assert_eq!(
        one(&standalone, "standalone", "ExecStart"),
        format!("{INSTALLED_BIN} standalone --data-dir /var/lib/kvmlet/standalone")
    );
}

/// systemd/agent.env documents every variable the agent reads, all commented
/// out (it is an example), each as KEY=value that systemd can parse.
#[test]
fn agent_env_example_documents_every_variable() {
    let path = e2e::workspace_root().join("systemd/agent.env");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut keys = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let setting = line.strip_prefix('#').unwrap_or_else(|| panic!("agent.env sets `{line}`: keep it an example"));
        if let Some((key, value)) = setting.split_once('=') {
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
                assert!(!value.is_empty() && !value.contains(' '), "agent.env: {line}");
                keys.push(key.to_owned());
            }
        }
    }
    for key in [
        "KVMLET_NODE_NAME",
        "KVMLET_KUBECONFIG",
        "KVMLET_RUN_DIR",
        "KVMLET_IMAGE_DIR",
        "KVMLET_DEFAULT_KERNEL",
        "KVMLET_DEFAULT_INITRD",
        "KVMLET_DEFAULT_CMDLINE",
        "KVMLET_CGROUP_PARENT",
        "KVMLET_HEARTBEAT_INTERVAL",
        "KVMLET_VM_USER",
        "KVMLET_HEALTH_LISTEN",
        "KVMLET_MAX_IMAGE_SIZE",
    ] {
        assert!(keys.iter().any(|k| k == key), "agent.env does not document {key}: {keys:?}");
    }
    assert!(text.contains("KVMLET_RUN_DIR=/run/kvmlet"), "default run dir");
}

/// `kvmlet run` of the probe under a capability bounding set (setpriv names)
/// and no-new-privs, as systemd would start it: (succeeded, stderr).
fn run_bounded(caps: &[String]) -> (bool, String) {
    let bounding = std::iter::once("-all".to_owned()).chain(caps.iter().map(|c| format!("+{c}"))).collect::<Vec<_>>();
    let out = Command::new("setpriv")
        .arg(format!("--bounding-set={}", bounding.join(",")))
        .args(["--inh-caps=-all", "--no-new-privs", "--"])
        .arg(e2e::kvmlet_bin())
        .args(["run", "--cmdline", "probe.action=poweroff", "--kernel"])
        .arg(&e2e::probe().bzimage)
        .output()
        .expect("run setpriv");
    let console = String::from_utf8_lossy(&out.stdout);
    (out.status.success() && console.contains("probe: done"), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The units' capability bounding set is enough for a VM process to jail
/// itself (namespaces, pivot_root, an emptied bounding set) and boot a guest;
/// without CAP_SYS_ADMIN the jail fails and says where.
#[test]
fn the_units_capabilities_let_a_vm_process_jail_itself() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: the VM jail needs root");
        return;
    }
    for unit in ["kvmlet-agent.service", "kvmlet-standalone.service"] {
        let service = settings(&unit_text(unit), "Service");
        let caps: Vec<String> = one(&service, unit, "CapabilityBoundingSet")
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_lowercase())
            .collect();
        let (ok, stderr) = run_bounded(&caps);
        assert!(ok, "{unit}: a jailed VM under the unit's capabilities:\n{stderr}");

        let without: Vec<String> = caps.into_iter().filter(|c| c != "sys_admin").collect();
        let (ok, stderr) = run_bounded(&without);
        assert!(!ok, "{unit}: without CAP_SYS_ADMIN the jail cannot be made");
        // The first namespace the jail makes is its PID namespace.
        assert!(stderr.contains("jail: unshare the PID namespace"), "{stderr}");
    }
}
