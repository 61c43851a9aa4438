//! The VirtualMachine controller end to end: `kvmlet standalone` with its
//! node loop and controller, driven by the real kubectl and by
//! `kvmlet start|stop|restart`, booting the probe guest (its kernel
//! arguments choose what the guest does; it prints its SMBIOS identity).

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use e2e::node::wait_for;
use e2e::standalone::Standalone;
use kube::api::Api;
use kube::ResourceExt;
use proto::kubevirt::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase as Phase};

const WAIT: Duration = Duration::from_secs(90);

/// A VM booting the probe with `kernel_args`, a cloud-init disk and 64Mi.
/// `strategy` is a spec line such as `running: false` or `runStrategy: Manual`.
fn vm_manifest(name: &str, strategy: &str, kernel_args: &str) -> String {
    format!(
        r##"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  labels:
    kubevirt.io/vm: {name}
spec:
  {strategy}
  template:
    metadata:
      labels:
        kubevirt.io/domain: {name}
    spec:
      terminationGracePeriodSeconds: 5
      domain:
        resources:
          requests:
            memory: 64Mi
        firmware:
          kernelBoot:
            kernelArgs: "{kernel_args}"
        devices:
          disks:
          - name: cloudinitdisk
            disk:
              bus: virtio
      volumes:
      - name: cloudinitdisk
        cloudInitNoCloud:
          userData: "#!/bin/sh\necho hi\n"
"##
    )
}

fn kubectl(api: &Standalone, args: &[&str], stdin: Option<&str>) -> Output {
    e2e::kubectl(&e2e::require_tool("kubectl", "kubectl"), &api.kubeconfig(), args, stdin)
}

/// `kubectl ARGS` for a change the controller may be writing to at the
/// same moment: a Conflict is retried, as a user would.
fn k_retry(api: &Standalone, args: &[&str]) -> String {
    for _ in 0..20 {
        let out = kubectl(api, args, None);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Conflict"), "kubectl {args:?}: {stderr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("kubectl {args:?} kept conflicting");
}

fn k(api: &Standalone, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(api, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}\n--- server log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        api.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kvmlet ARGS`: (success, stdout + stderr).
fn kvmlet(api: &Standalone, args: &[&str]) -> (bool, String) {
    let (out, finished) = e2e::run_within(&mut api.kvmlet(args), None, WAIT);
    assert!(finished, "kvmlet {args:?} did not finish within {WAIT:?}\n--- server log ---\n{}", api.log());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn kvmlet_ok(api: &Standalone, args: &[&str]) {
    let (ok, text) = kvmlet(api, args);
    assert!(ok, "kvmlet {args:?} failed: {text}\n--- server log ---\n{}", api.log());
}

fn kvmlet_fails(api: &Standalone, args: &[&str], needle: &str) {
    let (ok, text) = kvmlet(api, args);
    assert!(!ok, "kvmlet {args:?} should have failed: {text}");
    assert!(text.contains(needle), "kvmlet {args:?} should say {needle:?}: {text}");
}

/// How often the controller recorded `reason` about object `name` (the
/// event recorder folds repeats into one event with a count).
fn event_count(api: &Standalone, name: &str, reason: &str) -> u64 {
    let selector = format!("involvedObject.name={name}");
    let list = k(api, &["get", "events", "--field-selector", &selector, "-o", "json"], None);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let events = list["items"].as_array().cloned().unwrap_or_default();
    let of_reason = events.iter().filter(|e| e["reason"] == reason);
    of_reason.map(|e| e["count"].as_u64().unwrap_or(1).max(e["series"]["count"].as_u64().unwrap_or(0))).sum()
}

struct Apis {
    vms: Api<VirtualMachine>,
    vmis: Api<VirtualMachineInstance>,
}

async fn apis(api: &Standalone) -> Apis {
    let client = api.client().await;
    Apis { vms: Api::default_namespaced(client.clone()), vmis: Api::default_namespaced(client) }
}

/// Polls the VM until `ready` holds; panics with what was seen and the log.
async fn wait_vm(
    apis: &Apis,
    api: &Standalone,
    name: &str,
    what: &str,
    ready: impl Fn(&VirtualMachine) -> bool,
) -> VirtualMachine {
    let deadline = Instant::now() + WAIT;
    loop {
        let vm = apis.vms.get_opt(name).await.expect("get VM");
        if let Some(vm) = vm.as_ref().filter(|vm| ready(vm)) {
            return vm.clone();
        }
        assert!(
            Instant::now() < deadline,
            "VM {name} never became {what}; last seen: {}\n--- server log ---\n{}",
            serde_json::to_string_pretty(&vm).unwrap(),
            api.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the VM is Stopped with no VMI and no pending request
/// recorded (its status catches up after the VMI is gone).
async fn wait_stopped(apis: &Apis, api: &Standalone, name: &str) -> VirtualMachine {
    wait_vm(apis, api, name, "Stopped without a VMI", |vm| {
        let status = vm.status.clone().unwrap_or_default();
        printable(vm) == "Stopped" && !status.created && status.state_change_requests.is_empty()
    })
    .await
}

fn printable(vm: &VirtualMachine) -> &str {
    vm.status.as_ref().and_then(|s| s.printable_status.as_deref()).unwrap_or_default()
}

fn phase(vmi: &VirtualMachineInstance) -> Option<Phase> {
    vmi.status.as_ref().and_then(|s| s.phase)
}

/// Waits for a VMI of that name in `phase`, other than the one with `not_uid`.
async fn wait_vmi(
    apis: &Apis,
    api: &Standalone,
    name: &str,
    wanted: Phase,
    not_uid: Option<&str>,
) -> VirtualMachineInstance {
    let what = format!("{wanted:?} (not {not_uid:?})");
    wait_for(&apis.vmis, api, name, &what, WAIT, |vmi| {
        vmi.is_some_and(|v| phase(v) == Some(wanted) && v.uid().as_deref() != not_uid)
    })
    .await
    .unwrap()
}

async fn wait_vmi_gone(apis: &Apis, api: &Standalone, name: &str) {
    wait_for(&apis.vmis, api, name, "gone", WAIT, |vmi| vmi.is_none()).await;
}

/// The `uuid=` and `serial=` the probe printed from SMBIOS in this VMI.
async fn smbios_identity(api: &Standalone, vmi: &VirtualMachineInstance) -> (String, String) {
    let log = api.run_dir().join("vms").join(vmi.uid().unwrap()).join("serial.log");
    let deadline = Instant::now() + WAIT;
    loop {
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        // Only whole lines: the guest may be half way through writing one.
        let complete = &console[..console.rfind('\n').map_or(0, |end| end + 1)];
        if let Some(line) = complete.lines().find(|l| l.contains("smbios version=")) {
            let field = |key: &str| {
                line.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or_default().to_lowercase()
            };
            return (field("uuid="), field("serial="));
        }
        assert!(Instant::now() < deadline, "no SMBIOS line in {}:\n{console}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn firmware(vm: &VirtualMachine) -> (String, String) {
    let f = vm.spec.template.spec.domain.firmware.clone().unwrap_or_default();
    (f.uuid.unwrap_or_default().to_lowercase(), f.serial.unwrap_or_default().to_lowercase())
}

fn condition(vm: &VirtualMachine, type_: &str) -> Option<String> {
    let status = vm.status.as_ref()?;
    status.conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.clone())
}

/// The VM as the controller left it once it took it over (finalizer and identity).
async fn wait_adopted(apis: &Apis, api: &Standalone, name: &str) -> VirtualMachine {
    wait_vm(apis, api, name, "taken over by the controller", |vm| {
        !firmware(vm).0.is_empty() && vm.status.as_ref().is_some_and(|s| s.printable_status.is_some())
    })
    .await
}

#[tokio::test]
async fn user_guide_walkthrough_start_restart_stop() {
    let api = Standalone::with_node(&[]);
    let apis = apis(&api).await;
    k(&api, &["create", "-f", "-"], Some(&vm_manifest("vm-cirros", "running: false", "probe.action=wait")));
    let vm = wait_adopted(&apis, &api, "vm-cirros").await;
    assert_eq!(printable(&vm), "Stopped");
    assert!(vm.finalizers().iter().any(|f| f == "kubevirt.io/virtualMachineControllerFinalize"));
    let (uuid, serial) = firmware(&vm);
    assert!(!serial.is_empty());
    assert!(apis.vmis.get_opt("vm-cirros").await.unwrap().is_none(), "running: false starts nothing");
    let listed = k(&api, &["get", "vms"], None);
    assert!(listed.lines().any(|l| l.starts_with("vm-cirros") && l.contains("Stopped")), "{listed}");

    kvmlet_ok(&api, &["start", "vm-cirros"]);
    let first = wait_vmi(&apis, &api, "vm-cirros", Phase::Running, None).await;
    assert_eq!(first.labels().get("kubevirt.io/domain").map(String::as_str), Some("vm-cirros"));
    let owner = &first.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller, owner.block_owner_deletion),
        ("VirtualMachine", Some(true), Some(true))
    );
    let vm = wait_vm(&apis, &api, "vm-cirros", "Running and ready", |vm| {
        let s = vm.status.clone().unwrap_or_default();
        s.created && s.ready && printable(vm) == "Running"
    })
    .await;
    assert_eq!(vm.spec.running, Some(true), "start on running: false sets running: true");
    assert_eq!(smbios_identity(&api, &first).await, (uuid.clone(), serial.clone()), "the guest sees the VM's identity");
    let described = k(&api, &["describe", "vm", "vm-cirros"], None);
    let events = described.split("Events:").nth(1).unwrap_or_default();
    assert!(events.contains("SuccessfulCreate"), "{described}");
    kvmlet_fails(&api, &["start", "vm-cirros"], "already running");

    // A template change waits for a restart, which keeps the identity.
    let patch = r#"[{"op":"replace","path":"/spec/template/spec/domain/firmware/kernelBoot/kernelArgs","value":"probe.action=wait probe.generation=2"}]"#;
    k_retry(&api, &["patch", "vm", "vm-cirros", "--type", "json", "-p", patch]);
    let stale = wait_vm(&apis, &api, "vm-cirros", "RestartRequired", |vm| {
        condition(vm, "RestartRequired").as_deref() == Some("True")
    })
    .await;
    let generations = |vm: &VirtualMachine| {
        let status = vm.status.clone().unwrap_or_default();
        (status.observed_generation, status.desired_generation)
    };
    let (observed, desired) = generations(&stale);
    assert!(observed < desired && desired == stale.metadata.generation, "{observed:?} {desired:?}");
    kvmlet_ok(&api, &["restart", "vm-cirros"]);
    let second = wait_vmi(&apis, &api, "vm-cirros", Phase::Running, first.uid().as_deref()).await;
    let args =
        second.spec.domain.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref()).and_then(|k| k.kernel_args.clone());
    assert_eq!(args.as_deref(), Some("probe.action=wait probe.generation=2"), "the new template took effect");
    assert_eq!(smbios_identity(&api, &second).await, (uuid, serial), "a restart keeps the firmware identity");
    let current =
        wait_vm(&apis, &api, "vm-cirros", "without RestartRequired", |vm| condition(vm, "RestartRequired").is_none())
            .await;
    assert_eq!(generations(&current), (current.metadata.generation, current.metadata.generation));

    kvmlet_ok(&api, &["stop", "vm-cirros", "--grace-period", "0"]);
    wait_vmi_gone(&apis, &api, "vm-cirros").await;
    let vm = wait_stopped(&apis, &api, "vm-cirros").await;
    assert_eq!(vm.spec.running, Some(false));
    assert!(!vm.status.unwrap().created);
    kvmlet_fails(&api, &["stop", "vm-cirros"], "not running");
    kvmlet_fails(&api, &["restart", "vm-cirros"], "does not support manual restart");
    let events = k(
        &api,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=VirtualMachine",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        None,
    );
    assert!(events.contains("SuccessfulDelete"), "{events}");
    k(&api, &["delete", "vm", "vm-cirros"], None);
    wait_vmi_gone(&apis, &api, "vm-cirros").await;
}

#[tokio::test]
async fn always_recreates_and_rerun_on_failure_reruns_only_failures() {
    let api = Standalone::with_node(&["--start-backoff-base-ms", "200"]);
    let apis = apis(&api).await;
    k(&api, &["create", "-f", "-"], Some(&vm_manifest("always", "runStrategy: Always", "probe.action=wait")));
    let first = wait_vmi(&apis, &api, "always", Phase::Running, None).await;
    // --wait=false: kubectl waits for the *name* to go, and the VM puts a
    // new VMI of that name in place within milliseconds (kubectl can then
    // wait forever, as it would against any API server).
    k(&api, &["delete", "vmi", "always", "--wait=false"], None);
    let second = wait_vmi(&apis, &api, "always", Phase::Running, first.uid().as_deref()).await;
    assert_ne!(first.uid(), second.uid());
    kvmlet_fails(&api, &["start", "always"], "already running");
    // A forced restart does not wait for the guest (grace 0), and the VM comes back.
    kvmlet_fails(&api, &["restart", "always", "--grace-period=0"], "needs --force");
    kvmlet_ok(&api, &["restart", "always", "--force", "--grace-period=0"]);
    let third = wait_vmi(&apis, &api, "always", Phase::Running, second.uid().as_deref()).await;
    let grace = k(&api, &["get", "events", "--field-selector", "involvedObject.name=always", "-o", "json"], None);
    assert!(grace.contains(&second.uid().unwrap()), "the old VMI was deleted by the controller: {grace}");
    assert_ne!(third.uid(), first.uid());
    kvmlet_ok(&api, &["stop", "always", "--grace-period", "0"]);
    wait_vmi_gone(&apis, &api, "always").await;
    let vm = wait_vm(&apis, &api, "always", "Halted", |vm| printable(vm) == "Stopped").await;
    assert_eq!(vm.spec.run_strategy.map(|s| s.as_str()), Some("Halted"));
    k(&api, &["delete", "vm", "always"], None);

    // A guest that powers itself off under Always is started again.
    k(&api, &["create", "-f", "-"], Some(&vm_manifest("again", "runStrategy: Always", "probe.action=poweroff")));
    let off = wait_vmi(&apis, &api, "again", Phase::Succeeded, None).await;
    wait_for(&apis.vmis, &api, "again", "replaced", WAIT, |vmi| vmi.is_some_and(|v| v.uid() != off.uid())).await;
    kvmlet_ok(&api, &["stop", "again"]);
    wait_stopped(&apis, &api, "again").await;
    k(&api, &["delete", "vm", "again"], None);

    // A guest that crashes under RerunOnFailure is started again.
    k(
        &api,
        &["create", "-f", "-"],
        Some(&vm_manifest("crashy", "runStrategy: RerunOnFailure", "probe.action=triple-fault")),
    );
    let crashed = wait_vmi(&apis, &api, "crashy", Phase::Failed, None).await;
    wait_for(&apis.vmis, &api, "crashy", "replaced", WAIT, |vmi| vmi.is_some_and(|v| v.uid() != crashed.uid())).await;
    k_retry(&api, &["patch", "vm", "crashy", "--type", "merge", "-p", r#"{"spec":{"runStrategy":"Halted"}}"#]);
    wait_vmi_gone(&apis, &api, "crashy").await;

    // One that powers off is done: deleted, not restarted.
    k(&api, &["create", "-f", "-"], Some(&vm_manifest("done", "runStrategy: RerunOnFailure", "probe.action=poweroff")));
    wait_vm(&apis, &api, "done", "started", |vm| vm.status.as_ref().is_some_and(|s| s.run_strategy.is_some())).await;
    wait_vmi_gone(&apis, &api, "done").await;
    let vm = wait_stopped(&apis, &api, "done").await;
    let status = vm.status.unwrap();
    assert!(!status.created && status.start_failure.is_none(), "{status:?}");
    let creates = event_count(&api, "done", "SuccessfulCreate");
    assert_eq!(creates, 1, "created once");
    for name in ["crashy", "done"] {
        k(&api, &["delete", "vm", name], None);
    }
}

#[tokio::test]
async fn manual_and_once_leave_final_vmis_until_asked() {
    let api = Standalone::with_node(&[]);
    let apis = apis(&api).await;
    k(&api, &["create", "-f", "-"], Some(&vm_manifest("manual", "runStrategy: Manual", "probe.action=poweroff")));
    wait_adopted(&apis, &api, "manual").await;
    assert!(apis.vmis.get_opt("manual").await.unwrap().is_none(), "Manual creates nothing on its own");
    kvmlet_ok(&api, &["start", "manual"]);
    let first = wait_vmi(&apis, &api, "manual", Phase::Succeeded, None).await;
    let vm = wait_vm(&apis, &api, "manual", "Stopped with its VMI", |vm| printable(vm) == "Stopped").await;
    assert!(vm.status.as_ref().unwrap().created, "the Succeeded VMI is left in place");
    assert!(vm.status.unwrap().state_change_requests.is_empty());
    kvmlet_ok(&api, &["start", "manual"]);
    wait_vmi(&apis, &api, "manual", Phase::Succeeded, first.uid().as_deref()).await;
    kvmlet_fails(&api, &["stop", "manual"], "not running");
    k(&api, &["delete", "vm", "manual"], None);

    k(&api, &["create", "-f", "-"], Some(&vm_manifest("once", "runStrategy: Once", "probe.action=triple-fault")));
    let failed = wait_vmi(&apis, &api, "once", Phase::Failed, None).await;
    let vm = wait_vm(&apis, &api, "once", "Stopped", |vm| printable(vm) == "Stopped").await;
    assert!(vm.status.unwrap().created, "Once leaves the failed VMI");
    assert_eq!(apis.vmis.get("once").await.unwrap().uid(), failed.uid());
    kvmlet_fails(&api, &["start", "once"], "does not support manual start");
    kvmlet_fails(&api, &["restart", "once"], "does not support manual restart");
    k(&api, &["delete", "vm", "once"], None);
    wait_vmi_gone(&apis, &api, "once").await;
}

#[tokio::test]
async fn crash_loop_backoff_grows_and_a_stop_clears_it() {
    let api = Standalone::with_node(&["--start-backoff-base-ms", "300"]);
    let apis = apis(&api).await;
    // A kernel image that is not on the node, and may not be pulled, fails
    // every VMI before it runs.
    let manifest = vm_manifest("loop", "runStrategy: Always", "probe.action=wait").replace(
        "          kernelBoot:\n",
        "          kernelBoot:\n            container:\n              image: no/such-kernel:1\n              imagePullPolicy: Never\n              kernelPath: /vmlinuz\n",
    );
    k(&api, &["create", "-f", "-"], Some(&manifest));
    let mut crash_loop_seen = false;
    let vm = wait_vm(&apis, &api, "loop", "three start failures", |vm| {
        let failure = vm.status.as_ref().and_then(|s| s.start_failure.clone());
        failure.is_some_and(|f| f.consecutive_fail_count >= 3)
    })
    .await;
    let failure = vm.status.as_ref().unwrap().start_failure.clone().unwrap();
    assert!(failure.last_failed_vmi_uid.is_some() && failure.retry_after_timestamp.is_some(), "{failure:?}");
    // While the backoff holds the next start, the VM says so.
    let deadline = Instant::now() + WAIT;
    while !crash_loop_seen {
        let vm = apis.vms.get("loop").await.unwrap();
        crash_loop_seen = printable(&vm) == "CrashLoopBackOff";
        assert!(Instant::now() < deadline, "never CrashLoopBackOff:\n{}", api.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let creates = event_count(&api, "loop", "SuccessfulCreate");
    assert!(creates >= 3, "one SuccessfulCreate per attempt: {creates}");
    kvmlet_ok(&api, &["stop", "loop"]);
    let vm = wait_vm(&apis, &api, "loop", "Stopped without a start failure", |vm| {
        printable(vm) == "Stopped" && vm.status.as_ref().is_some_and(|s| s.start_failure.is_none())
    })
    .await;
    assert_eq!(vm.spec.run_strategy.map(|s| s.as_str()), Some("Halted"));
    wait_vmi_gone(&apis, &api, "loop").await;
    k(&api, &["delete", "vm", "loop"], None);
}

#[tokio::test]
async fn racing_starts_on_manual_exactly_one_wins() {
    let api = Standalone::with_node(&[]);
    let apis = apis(&api).await;
    k(&api, &["create", "-f", "-"], Some(&vm_manifest("race", "runStrategy: Manual", "probe.action=wait")));
    wait_adopted(&apis, &api, "race").await;
    let children: Vec<_> = (0..2)
        .map(|_| {
            let mut command = api.kvmlet(&["start", "race"]);
            command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let wins = outputs.iter().filter(|o| o.status.success()).count();
    let texts: Vec<String> = outputs.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect();
    assert_eq!(wins, 1, "exactly one start wins: {texts:?}");
    let loser = outputs.iter().find(|o| !o.status.success()).unwrap();
    let why = String::from_utf8_lossy(&loser.stderr);
    assert!(why.contains("already underway") || why.contains("already running"), "{why}");
    wait_vmi(&apis, &api, "race", Phase::Running, None).await;
    let creates = event_count(&api, "race", "SuccessfulCreate");
    assert_eq!(creates, 1, "created once");
    kvmlet_ok(&api, &["stop", "race", "--grace-period", "0"]);
    // The VMI stays until its final state is recorded, but may be gone already.
    if let Some(vmi) = apis.vmis.get_opt("race").await.unwrap() {
        assert_eq!(vmi.spec.termination_grace_period_seconds, Some(0), "stop wrote the grace period first");
    }
    wait_vmi_gone(&apis, &api, "race").await;
    let vm = wait_stopped(&apis, &api, "race").await;
    assert_eq!(vm.spec.run_strategy.map(|s| s.as_str()), Some("Manual"), "stop on Manual keeps the strategy");
    assert!(vm.status.unwrap().state_change_requests.is_empty(), "requests are consumed");
    kvmlet_fails(&api, &["restart", "race", "--grace-period", "3"], "only 0");
    kvmlet_fails(&api, &["start", "nosuchvm"], "not found");
    k(&api, &["delete", "vm", "race"], None);
}

#[test]
fn admission_rejects_both_or_unknown_run_strategies() {
    let api = Standalone::start();
    let both = vm_manifest("both", "running: true\n  runStrategy: Always", "probe.action=wait");
    let out = kubectl(&api, &["create", "-f", "-"], Some(&both));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Running and RunStrategy are mutually exclusive"));
    let bogus = vm_manifest("bogus", "runStrategy: Sometimes", "probe.action=wait");
    let out = kubectl(&api, &["create", "-f", "-"], Some(&bogus));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Sometimes"), "{stderr}");
    let listed = k(&api, &["get", "vms", "-o", "name"], None);
    assert_eq!(listed.trim(), "", "nothing was stored");
}

#[tokio::test]
async fn cascade_orphan_delete_and_adoption() {
    let api = Standalone::with_node(&[]);
    let apis = apis(&api).await;
    let manifest = vm_manifest("keep", "runStrategy: Always", "probe.action=wait");
    k(&api, &["create", "-f", "-"], Some(&manifest));
    let vmi = wait_vmi(&apis, &api, "keep", Phase::Running, None).await;
    k(&api, &["delete", "vm", "keep", "--cascade=orphan"], None);
    let deadline = Instant::now() + WAIT;
    while apis.vms.get_opt("keep").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "an orphan delete is not held up:\n{}", api.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let orphan = apis.vmis.get("keep").await.unwrap_or_else(|e| panic!("the orphan is gone: {e}\n{}", api.log()));
    assert_eq!((orphan.uid(), phase(&orphan)), (vmi.uid(), Some(Phase::Running)), "the orphan keeps running");
    assert!(orphan.owner_references().is_empty());

    // A new VM of that name adopts it instead of starting another; having
    // had a VMI, it gets the UUID derived from its name.
    k(&api, &["create", "-f", "-"], Some(&manifest));
    let vm =
        wait_vm(&apis, &api, "keep", "owning its VMI", |vm| vm.status.as_ref().is_some_and(|s| s.created && s.ready))
            .await;
    let adopted = apis.vmis.get("keep").await.unwrap();
    assert_eq!(adopted.uid(), vmi.uid(), "adopted, not replaced");
    assert_eq!(adopted.owner_references()[0].uid, vm.uid().unwrap());
    let namespace = uuid::Uuid::parse_str("6a1a24a1-4061-4607-8bf4-a3963d0c5895").unwrap();
    assert_eq!(firmware(&vm).0, uuid::Uuid::new_v5(&namespace, b"keep").to_string());

    // A plain delete takes the VMI along.
    k(&api, &["delete", "vm", "keep"], None);
    wait_vmi_gone(&apis, &api, "keep").await;

    // An orphan left alone can still be deleted: no VM holds it back.
    k(&api, &["create", "-f", "-"], Some(&manifest));
    wait_vmi(&apis, &api, "keep", Phase::Running, None).await;
    k(&api, &["delete", "vm", "keep", "--cascade=orphan"], None);
    let deadline = Instant::now() + WAIT;
    while apis.vms.get_opt("keep").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "an orphan delete is not held up:\n{}", api.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let orphan = apis.vmis.get("keep").await.unwrap();
    assert!(orphan.finalizers().iter().any(|f| f == "kubevirt.io/virtualMachineControllerFinalize"));
    k(&api, &["delete", "vmi", "keep", "--wait=false"], None);
    wait_vmi_gone(&apis, &api, "keep").await;

    // A VMI controlled by something else is neither adopted nor replaced.
    let foreign = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: taken
  ownerReferences:
  - apiVersion: v1
    kind: ConfigMap
    name: someone
    uid: 00000000-0000-0000-0000-000000000001
    controller: true
spec:
  terminationGracePeriodSeconds: 0
  domain:
    resources:
      requests:
        memory: 64Mi
    firmware:
      kernelBoot:
        kernelArgs: probe.action=wait
"#;
    k(&api, &["create", "-f", "-"], Some(foreign));
    let theirs = wait_vmi(&apis, &api, "taken", Phase::Running, None).await;
    k(&api, &["create", "-f", "-"], Some(&vm_manifest("taken", "runStrategy: Always", "probe.action=wait")));
    wait_vm(&apis, &api, "taken", "with its identity", |vm| !firmware(vm).0.is_empty()).await;
    let still = apis.vmis.get("taken").await.unwrap();
    assert_eq!((still.uid(), still.owner_references()[0].kind.as_str()), (theirs.uid(), "ConfigMap"));
    k(&api, &["delete", "vmi", "taken", "--wait=false"], None); // replaced at once, as above
    let mine = wait_vmi(&apis, &api, "taken", Phase::Running, theirs.uid().as_deref()).await;
    assert_eq!(mine.owner_references()[0].kind, "VirtualMachine", "once it is gone, the VM starts its own");
    k(&api, &["delete", "vm", "taken", "--cascade=foreground"], None);
    wait_vmi_gone(&apis, &api, "taken").await;
    let deadline = Instant::now() + WAIT;
    while apis.vms.get_opt("taken").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "foreground delete finishes:\n{}", api.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
