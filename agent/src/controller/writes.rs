//! Everything the VM controller writes: VMIs created, adopted and deleted,
//! finalizers, the persisted firmware identity, the VM's status and
//! state change requests (JSON patches that `test` what they replace, like
//! the node's finalizer patches), and events on the VM.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use proto::kubevirt::{
    Firmware, StateChangeRequest, VirtualMachine, VirtualMachineInstance, VirtualMachineStatus, API_VERSION,
};
use proto::labels::{VM_CONTROLLER_FINALIZER, VM_GENERATION_ANNOTATION};
use serde_json::{json, Value};

use crate::finalizers;

pub struct Writer {
    pub client: Client,
    pub recorder: Recorder,
}

/// The owner reference a VM's VMI carries.
pub fn owner_reference(vm: &VirtualMachine) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.into(),
        kind: "VirtualMachine".into(),
        name: vm.name_any(),
        uid: vm.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The VMI made from the VM's template: same name and namespace, the
/// template's labels, annotations and spec, owned by the VM, and held by
/// the controller's finalizer until its final state is recorded.
pub fn instance_of(vm: &VirtualMachine) -> VirtualMachineInstance {
    let template = &vm.spec.template;
    let mut vmi = VirtualMachineInstance::new(&vm.name_any(), template.spec.clone());
    vmi.metadata.namespace = vm.namespace();
    if let Some(meta) = &template.metadata {
        vmi.metadata.labels = meta.labels.clone();
        vmi.metadata.annotations = meta.annotations.clone();
    }
    // Which template this is: the VM's status reports it as observedGeneration.
    if let Some(generation) = vm.metadata.generation {
        vmi.annotations_mut().insert(VM_GENERATION_ANNOTATION.into(), generation.to_string());
    }
    vmi.metadata.owner_references = Some(vec![owner_reference(vm)]);
    vmi.metadata.finalizers = Some(vec![VM_CONTROLLER_FINALIZER.into()]);
    vmi
}

fn json_patch(patch: Value) -> Patch<()> {
    Patch::Json(serde_json::from_value(patch).expect("a well-formed JSON patch"))
}

impl Writer {
    fn vms(&self, vm: &VirtualMachine) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), &vm.namespace().unwrap_or_default())
    }

    fn vmis(&self, vm: &VirtualMachine) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.client.clone(), &vm.namespace().unwrap_or_default())
    }

    pub async fn add_vm_finalizer(&self, vm: &VirtualMachine) -> kube::Result<()> {
        finalizers::add(&self.vms(vm), vm, VM_CONTROLLER_FINALIZER).await.map(|_| ())
    }

    pub async fn remove_vm_finalizer(&self, vm: &VirtualMachine) -> kube::Result<()> {
        finalizers::remove(&self.vms(vm), vm, VM_CONTROLLER_FINALIZER).await.map(|_| ())
    }

    pub async fn remove_vmi_finalizer(&self, vm: &VirtualMachine, vmi: &VirtualMachineInstance) -> kube::Result<()> {
        match finalizers::remove(&self.vmis(vm), vmi, VM_CONTROLLER_FINALIZER).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes the firmware identity into the VM's template, only if the VM
    /// is still the one that was read (resourceVersion test).
    pub async fn persist_firmware(&self, vm: &VirtualMachine, firmware: &Firmware) -> kube::Result<()> {
        let patch = json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": vm.resource_version()},
            {"op": "add", "path": "/spec/template/spec/domain/firmware", "value": firmware},
        ]);
        self.vms(vm).patch(&vm.name_any(), &PatchParams::default(), &json_patch(patch)).await.map(|_| ())
    }

    /// Claims an orphan VMI: adds the VM as its controller, only if the VMI
    /// did not change since it was read (so a VMI being deleted or claimed
    /// meanwhile is left alone).
    pub async fn adopt(&self, vm: &VirtualMachine, vmi: &VirtualMachineInstance) -> kube::Result<()> {
        let mut owners = vmi.owner_references().to_vec();
        owners.push(owner_reference(vm));
        let patch = json!({"metadata": {"resourceVersion": vmi.resource_version(), "ownerReferences": owners}});
        self.vmis(vm).patch(&vmi.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
    }

    pub async fn create_vmi(&self, vm: &VirtualMachine) -> kube::Result<VirtualMachineInstance> {
        self.vmis(vm).create(&PostParams::default(), &instance_of(vm)).await
    }

    /// Deletes exactly this VMI (a UID precondition protects a successor).
    pub async fn delete_vmi(&self, vm: &VirtualMachine, vmi: &VirtualMachineInstance) -> kube::Result<()> {
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: vmi.uid(), resource_version: None }),
            ..DeleteParams::default()
        };
        match self.vmis(vm).delete(&vmi.name_any(), &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the state change requests, testing the list that was read
    /// (or, when there was none, the resourceVersion) so a request a user
    /// appended meanwhile is never lost.
    pub async fn write_requests(
        &self,
        vm: &VirtualMachine,
        old: &[StateChangeRequest],
        new: &[StateChangeRequest],
    ) -> kube::Result<()> {
        if old == new {
            return Ok(());
        }
        let test = if old.is_empty() {
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": vm.resource_version()})
        } else {
            json!({"op": "test", "path": "/status/stateChangeRequests", "value": old})
        };
        let mut ops = vec![test];
        if vm.status.is_none() {
            ops.push(json!({"op": "add", "path": "/status", "value": {}}));
        }
        ops.push(if new.is_empty() {
            json!({"op": "remove", "path": "/status/stateChangeRequests"})
        } else {
            json!({"op": "add", "path": "/status/stateChangeRequests", "value": new})
        });
        self.vms(vm).patch_status(&vm.name_any(), &PatchParams::default(), &json_patch(Value::Array(ops))).await?;
        Ok(())
    }

    /// Writes the controller's status fields when they changed.
    pub async fn write_status(&self, vm: &VirtualMachine, new: &VirtualMachineStatus) -> kube::Result<()> {
        let old = vm.status.clone().unwrap_or_default();
        let Some(patch) = super::status::merge_patch(&old, new) else { return Ok(()) };
        self.vms(vm).patch_status(&vm.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
    }

    /// Records an event on the VM; a failure is logged, never fatal.
    pub async fn event(&self, vm: &VirtualMachine, type_: EventType, reason: &str, note: String) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &vm.object_ref(&())).await {
            tracing::warn!(reason, error = %e, "cannot record an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proto::kubevirt::{TemplateMeta, VirtualMachineInstanceTemplateSpec, VirtualMachineSpec};

    use super::*;

    #[test]
    fn the_vmi_carries_the_template_and_the_vm_as_its_controller() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let annotations = BTreeMap::from([("note".to_string(), "x".to_string())]);
        let mut vm = VirtualMachine::new(
            "web",
            VirtualMachineSpec {
                run_strategy: Some(proto::kubevirt::RunStrategy::Always),
                template: VirtualMachineInstanceTemplateSpec {
                    metadata: Some(TemplateMeta {
                        labels: Some(labels.clone()),
                        annotations: Some(annotations.clone()),
                        creation_timestamp: None,
                    }),
                    spec: Default::default(),
                },
                ..Default::default()
            },
        );
        vm.metadata.namespace = Some("ns".into());
        vm.metadata.uid = Some("vm-uid".into());
        vm.spec.template.spec.hostname = Some("h".into());
        let vmi = instance_of(&vm);
        assert_eq!((vmi.name_any(), vmi.namespace()), ("web".to_string(), Some("ns".to_string())));
        assert_eq!(vmi.metadata.labels, Some(labels));
        assert_eq!(vmi.metadata.annotations, Some(annotations.clone()));
        vm.metadata.generation = Some(3);
        let mut with_generation = annotations;
        with_generation.insert(VM_GENERATION_ANNOTATION.into(), "3".into());
        assert_eq!(instance_of(&vm).metadata.annotations, Some(with_generation));
        assert_eq!(vmi.spec, vm.spec.template.spec);
        let owner = &vmi.owner_references()[0];
        assert_eq!(
            (owner.api_version.as_str(), owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("kubevirt.io/v1", "VirtualMachine", "web", "vm-uid")
        );
        assert_eq!((owner.controller, owner.block_owner_deletion), (Some(true), Some(true)));
        assert_eq!(vmi.finalizers(), [VM_CONTROLLER_FINALIZER]);
    }
}
