//! The node loop's reconcile against a real (in-process) API server:
//! what it writes for each kind of VMI, without spawning VM processes.

use std::sync::Arc;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use proto::debug::{VmExit, VmExitKind};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use proto::labels::{NODE_NAME_LABEL, VMI_FOREGROUND_FINALIZER};
use serde_json::json;

use super::report::VmiReporter;
use super::vms::{Process, VmTable};
use super::{reconcile, NodeConfig, NodeContext, NodeDefaults};
use crate::apiserver::embedded::EmbeddedApi;
use crate::vmprocess::state_dir::{StateDir, VmIdentity, VmRecord};

const NODE: &str = "node-1";

struct Node {
    _dir: tempfile::TempDir,
    _api: EmbeddedApi,
    ctx: Arc<NodeContext>,
    vmis: Api<VirtualMachineInstance>,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    let client = api.client();
    let config = NodeConfig {
        node_name: NODE.into(),
        run_dir: dir.path().join("run"),
        defaults: NodeDefaults {
            kernel: Some(dir.path().join("no-kernel")),
            initrd: None,
            cmdline: String::new(),
            image_dir: dir.path().join("images"),
            host_disks: Default::default(),
            pod_network: None,
        },
        cgroup_parents: Vec::new(),
        cni: None,
        // Never spawned here: these tests stop short of starting VM processes.
        exe: dir.path().join("no-kvmlet"),
        heartbeat_interval: std::time::Duration::from_secs(60),
        cpu_allocation_ratio: 1,
        memory_capacity_mib: None,
        max_vms: None,
        vm_user: vmm::jail::VmUser::DEFAULT,
        test_vm_hooks: false,
        registry: Default::default(),
        image_limits: Default::default(),
    };
    let (poke, _pokes) = tokio::sync::mpsc::unbounded_channel();
    let images = crate::images::Images::new(
        config.defaults.image_dir.clone(),
        Default::default(),
        Default::default(),
        client.clone(),
        poke.clone(),
    )
    .unwrap();
    let ctx = NodeContext {
        reporter: VmiReporter::new(client.clone(), NODE),
        vms: VmTable::new(poke),
        images,
        capacity: crate::node::registration::Capacity::of_this_host(10, None, None),
        slots: crate::node::slots::VmSlots::new(100),
        client,
        config,
    };
    let vmis = Api::default_namespaced(ctx.client.clone());
    Node { _dir: dir, _api: api, ctx: Arc::new(ctx), vmis }
}

impl Node {
    /// Creates a VMI (with the node's finalizer if `held`) and gives it `status`.
    async fn vmi(&self, name: &str, spec: serde_json::Value, held: bool, status: serde_json::Value) {
        let finalizers: Vec<&str> = if held { vec![VMI_FOREGROUND_FINALIZER] } else { vec![] };
        let vmi: VirtualMachineInstance = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "labels": {NODE_NAME_LABEL: NODE}, "finalizers": finalizers},
            "spec": spec,
        }))
        .unwrap();
        self.vmis.create(&PostParams::default(), &vmi).await.unwrap();
        let patch = json!({"status": status});
        self.vmis.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }

    async fn reconcile(&self, name: &str) {
        let vmi = self.vmis.get(name).await.unwrap();
        reconcile::reconcile(Arc::new(vmi), self.ctx.clone()).await.unwrap();
    }

    async fn get(&self, name: &str) -> VirtualMachineInstance {
        self.vmis.get(name).await.unwrap()
    }

    /// A VM process entry as `attach_all` makes one, with its state directory on disk.
    fn attach(&self, vmi: &VirtualMachineInstance, process: Process) -> StateDir {
        let uid = vmi.uid().unwrap();
        let dir = StateDir::new(&self.ctx.config.run_dir, &uid).unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        let config = serde_json::from_value(json!({"vcpus": 1, "memoryMib": 64, "kernel": "/k"})).unwrap();
        let identity = VmIdentity { namespace: "default".into(), name: vmi.name_any(), uid };
        self.ctx.vms.insert(
            VmRecord {
                identity,
                config,
                netns: None,
                cgroups: Vec::new(),
                vm_user: None,
                boot: None,
                test_hooks: false,
            },
            dir.clone(),
            Some(4242),
            process,
        );
        dir
    }
}

fn spec() -> serde_json::Value {
    json!({"domain": {"resources": {"requests": {"memory": "64Mi"}}, "devices": {}}})
}

fn phase(vmi: &VirtualMachineInstance) -> Phase {
    vmi.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

fn reason(vmi: &VirtualMachineInstance) -> Option<String> {
    vmi.status.as_ref().and_then(|s| s.reason.clone())
}

fn ready_message(vmi: &VirtualMachineInstance) -> String {
    let status = vmi.status.as_ref().unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").expect("a Ready condition");
    assert_eq!(ready.status, "False");
    ready.message.clone().unwrap_or_default()
}

fn held(vmi: &VirtualMachineInstance) -> bool {
    vmi.finalizers().iter().any(|f| f == VMI_FOREGROUND_FINALIZER)
}

#[tokio::test]
async fn a_vmi_only_labelled_for_this_node_is_left_alone() {
    let node = node();
    node.vmi("labelled", spec(), false, json!({"phase": "Pending"})).await;
    node.vmi("elsewhere", spec(), false, json!({"phase": "Scheduled", "nodeName": "node-2"})).await;
    for name in ["labelled", "elsewhere"] {
        node.reconcile(name).await;
        let vmi = node.get(name).await;
        assert!(!held(&vmi), "{name}: no finalizer taken");
        assert!(node.ctx.vms.get(&vmi.uid().unwrap()).is_none(), "{name}: nothing started");
        assert!(phase(&vmi) != Phase::Failed, "{name}");
    }
}

#[tokio::test]
async fn a_vmi_the_node_cannot_run_fails_naming_the_field_and_is_released() {
    let node = node();
    // Admission cannot know the node's feature gates: a hostDisk passes it,
    // and this node (HostDisk closed) refuses it by name.
    let spec = json!({"domain": {"resources": {"requests": {"memory": "64Mi"}},
        "devices": {"disks": [{"name": "d", "disk": {"bus": "virtio"}}]}},
        "volumes": [{"name": "d", "hostDisk": {"path": "/etc/shadow", "type": "Disk"}}]});
    node.vmi("host", spec, false, json!({"phase": "Scheduled", "nodeName": NODE})).await;
    node.reconcile("host").await;
    let vmi = node.get("host").await;
    assert_eq!(phase(&vmi), Phase::Failed);
    assert_eq!(reason(&vmi).as_deref(), Some("Unsupported"));
    let message = ready_message(&vmi);
    assert!(message.starts_with("spec.volumes[0].hostDisk.path: "), "{message}");
    assert!(message.contains("HostDisk"), "the message names the gate: {message}");
    assert!(!held(&vmi), "the finalizer taken for the start is released");
    assert!(!node.ctx.config.run_dir.join("vms").join(vmi.uid().unwrap()).exists());
    let phases: Vec<Phase> = vmi.status.unwrap().phase_transition_timestamps.iter().map(|t| t.phase).collect();
    assert_eq!(phases.last(), Some(&Phase::Failed));
}

#[tokio::test]
async fn a_running_vmi_whose_vm_the_node_lost_fails_and_is_not_started_again() {
    let node = node();
    node.vmi("lost", spec(), true, json!({"phase": "Running", "nodeName": NODE})).await;
    node.reconcile("lost").await;
    let vmi = node.get("lost").await;
    assert_eq!(phase(&vmi), Phase::Failed);
    assert_eq!(reason(&vmi).as_deref(), Some("VMProcessFailed"));
    assert!(ready_message(&vmi).contains("left no exit record"));
    assert!(!held(&vmi));
    assert!(node.ctx.vms.get(&vmi.uid().unwrap()).is_none(), "no second VM");
}

#[tokio::test]
async fn a_guest_that_powered_off_succeeds_and_its_vm_is_cleaned_up() {
    let node = node();
    node.vmi("off", spec(), true, json!({"phase": "Running", "nodeName": NODE})).await;
    let vmi = node.get("off").await;
    let exit = VmExit { kind: VmExitKind::PowerOff, message: "the guest powered off".into(), at_ms: 1 };
    let dir = node.attach(&vmi, Process::Exited(exit));
    node.reconcile("off").await;
    let vmi = node.get("off").await;
    assert_eq!(phase(&vmi), Phase::Succeeded);
    assert_eq!(reason(&vmi).as_deref(), Some("GuestPoweredOff"));
    assert!(!held(&vmi));
    assert!(!dir.path().exists(), "state directory removed");
    let entry = node.ctx.vms.get(&vmi.uid().unwrap()).unwrap();
    assert!(entry.cleaned);
    assert_eq!(entry.summary().phase, "Succeeded");
}

#[tokio::test]
async fn a_vm_process_that_died_without_an_exit_record_fails_its_vmi() {
    let node = node();
    node.vmi("crashed", spec(), true, json!({"phase": "Running", "nodeName": NODE})).await;
    let vmi = node.get("crashed").await;
    let dir = StateDir::new(&node.ctx.config.run_dir, &vmi.uid().unwrap()).unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(dir.vmm_log(), "starting\nKVM_RUN failed: bad address\n").unwrap();
    node.attach(&vmi, Process::Exited(super::vms::died(&dir, Some(4242))));
    node.reconcile("crashed").await;
    let vmi = node.get("crashed").await;
    assert_eq!(phase(&vmi), Phase::Failed);
    assert_eq!(reason(&vmi).as_deref(), Some("VMProcessFailed"));
    let message = ready_message(&vmi);
    assert!(message.contains("(pid 4242) died unexpectedly: KVM_RUN failed: bad address"), "{message}");
}

#[tokio::test]
async fn a_deleted_vmi_that_never_started_is_released_and_goes() {
    let node = node();
    node.vmi("early", spec(), true, json!({"phase": "Scheduled", "nodeName": NODE})).await;
    node.vmis.delete("early", &DeleteParams::default()).await.unwrap();
    assert!(node.get("early").await.metadata.deletion_timestamp.is_some(), "held by the finalizer");
    node.reconcile("early").await;
    assert!(node.vmis.get_opt("early").await.unwrap().is_none());
}

#[tokio::test]
async fn a_reattached_vm_shows_its_vmis_phase_at_once() {
    let node = node();
    node.vmi("survivor", spec(), true, json!({"phase": "Running", "nodeName": NODE})).await;
    let vmi = node.get("survivor").await;
    node.attach(&vmi, Process::Starting);
    let uid = vmi.uid().unwrap();
    assert_eq!(node.ctx.vms.get(&uid).unwrap().summary().phase, "", "nothing known before the first reconcile");
    node.reconcile("survivor").await;
    assert_eq!(node.ctx.vms.get(&uid).unwrap().summary().phase, "Running");
    let after = node.get("survivor").await;
    assert_eq!(after.resource_version(), vmi.resource_version(), "nothing written while the VM starts");
}
