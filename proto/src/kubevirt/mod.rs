//! `kubevirt.io/v1`: VirtualMachine and VirtualMachineInstance.
//!
//! Fields kvmlet does not model are not silently dropped: the generated schema
//! rejects them (and `kubectl` reports them), while the few KubeVirt fields
//! kept opaque here (`interfaces`, `networks`) are accepted and refused by the
//! node agent with a condition naming them when it cannot honour them.

mod vm;
mod vmi;

pub use vm::*;
pub use vmi::*;

/// The CRDs for both kinds, generated from these types (deploy/ and the
/// embedded API's schemas come from here).
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![VirtualMachine::crd(), VirtualMachineInstance::crd()]
}

/// The OpenAPI v3 schema of objects of `kind`, from its CRD.
pub fn object_schema(kind: &str) -> Option<serde_json::Value> {
    let crd = crds().into_iter().find(|crd| crd.spec.names.kind == kind)?;
    let schema = crd.spec.versions.first()?.schema.as_ref()?.open_api_v3_schema.as_ref()?;
    serde_json::to_value(schema).ok()
}

/// The API group and version of both kinds.
pub const API_GROUP: &str = "kubevirt.io";
pub const API_VERSION: &str = "kubevirt.io/v1";

/// A condition as KubeVirt reports them on VMs and VMIs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Schema for a list of objects kept as written (KubeVirt's richer types).
pub(crate) fn opaque_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    const VM_CIRROS: &str = include_str!("../../../examples/vm-cirros.yaml");

    #[test]
    fn the_user_guide_manifest_loads_and_round_trips() {
        let vm: VirtualMachine = serde_yaml::from_str(VM_CIRROS).unwrap();
        assert_eq!(vm.metadata.name.as_deref(), Some("vm-cirros"));
        assert_eq!(vm.spec.running, Some(false));
        assert_eq!(vm.spec.effective_run_strategy(), Some(RunStrategy::Halted));
        let spec = &vm.spec.template.spec;
        assert_eq!(spec.domain.devices.disks.len(), 2);
        assert_eq!(spec.domain.devices.disks[0].disk.as_ref().unwrap().bus.as_deref(), Some("virtio"));
        assert_eq!(spec.termination_grace_period_seconds, Some(0));
        let cloud_init = spec.volumes[1].cloud_init_no_cloud.as_ref().unwrap();
        assert!(cloud_init.user_data_base64.as_deref().unwrap().starts_with("IyEvYmluL3No"));
        let memory = &spec.domain.resources.as_ref().unwrap().requests.as_ref().unwrap()["memory"];
        assert_eq!(memory.0, "64M");

        let json = serde_json::to_value(&vm).unwrap();
        let back: VirtualMachine = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.spec, vm.spec);
        assert_eq!(json["spec"]["template"]["spec"]["domain"]["machine"]["type"], "");
        assert!(json["spec"].get("runStrategy").is_none(), "unset fields stay unset");
    }

    #[test]
    fn run_strategies_use_kubevirt_names() {
        for strategy in RunStrategy::ALL {
            let json = serde_json::to_value(strategy).unwrap();
            assert_eq!(json, strategy.as_str());
            assert_eq!(RunStrategy::parse(strategy.as_str()), Some(strategy));
        }
        assert_eq!(RunStrategy::parse("Sometimes"), None);
        let spec = VirtualMachineSpec { running: Some(true), ..Default::default() };
        assert_eq!(spec.effective_run_strategy(), Some(RunStrategy::Always));
    }

    #[test]
    fn crds_carry_names_columns_and_the_exclusivity_rule() {
        let vm = serde_json::to_value(VirtualMachine::crd()).unwrap();
        assert_eq!(vm["spec"]["group"], "kubevirt.io");
        assert_eq!(vm["spec"]["names"]["shortNames"], serde_json::json!(["vm", "vms"]));
        let version = &vm["spec"]["versions"][0];
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Age", "Status", "Ready"]);
        let rules = serde_json::to_string(&version["schema"]).unwrap();
        assert!(rules.contains("has(self.running) && has(self.runStrategy)"), "{rules}");

        let vmi = serde_json::to_value(VirtualMachineInstance::crd()).unwrap();
        assert_eq!(vmi["spec"]["names"]["shortNames"], serde_json::json!(["vmi", "vmis"]));
        let columns: Vec<&str> = vmi["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Age", "Phase", "IP", "NodeName", "Ready"]);
    }

    #[test]
    fn final_phases() {
        assert!(VirtualMachineInstancePhase::Succeeded.is_final());
        assert!(VirtualMachineInstancePhase::Failed.is_final());
        assert!(!VirtualMachineInstancePhase::Running.is_final());
    }
}
