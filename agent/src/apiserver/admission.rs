//! Admission checks, with KubeVirt's messages where it has them.

use serde_json::Value;

use super::error::ApiError;
use super::resources::Resource;
use crate::vmi::SpecError;

fn invalid(resource: &Resource, name: &str, field: &str, message: &str) -> ApiError {
    let mut error = ApiError::invalid(resource.kind, name, vec![(field.to_string(), message.to_string())]);
    error.message = format!("{}.{} \"{name}\" is invalid: {field}: {message}", resource.kind, resource.group);
    error.subject = Some(Box::new((resource.group.to_string(), resource.kind.to_string(), name.to_string())));
    error
}

/// Defaults applied before an object is checked and stored, as the real API
/// server does them: a Secret's write-only `stringData` is folded into
/// `data` (base64), its keys winning over `data`'s.
pub fn mutate(resource: &Resource, object: &mut Value) {
    use base64::Engine;
    if resource.kind != "Secret" {
        return;
    }
    let Some(map) = object.as_object_mut() else { return };
    let Some(Value::Object(strings)) = map.remove("stringData") else { return };
    let data = map.entry("data").or_insert_with(|| Value::Object(Default::default()));
    if let Some(data) = data.as_object_mut() {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default();
            data.insert(key, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

/// Checks an object about to be stored (replacing `previous`, on updates);
/// `Err` is the 422 to return. The spec checks run when the spec is new or
/// changed: an object stored before a check existed can still get its
/// status, finalizers and deletion written.
pub fn check(resource: &Resource, name: &str, object: &Value, previous: Option<&Value>) -> Result<(), ApiError> {
    let spec_changed = previous.is_none_or(|p| p.get("spec") != object.get("spec"));
    match resource.kind {
        "VirtualMachine" => {
            let spec = &object["spec"];
            let running = spec.get("running").filter(|v| !v.is_null());
            let strategy = spec.get("runStrategy").filter(|v| !v.is_null());
            if running.is_some() && strategy.is_some() {
                return Err(invalid(resource, name, "spec.running", "Running and RunStrategy are mutually exclusive"));
            }
            if let Some(strategy) = strategy {
                let known = strategy.as_str().and_then(proto::RunStrategy::parse).is_some();
                if !known {
                    return Err(invalid(
                        resource,
                        name,
                        "spec.runStrategy",
                        &format!("Invalid RunStrategy ({strategy})"),
                    ));
                }
            }
            let vm = typed::<proto::VirtualMachine>(resource, name, object)?;
            if !spec_changed {
                return Ok(());
            }
            spec_checks(resource, name, crate::vmi::validate::spec(&vm.spec.template.spec).map_err(|e| e.in_template()))
        }
        "VirtualMachineInstance" => {
            let vmi = typed::<proto::VirtualMachineInstance>(resource, name, object)?;
            if !spec_changed {
                return Ok(());
            }
            spec_checks(resource, name, crate::vmi::validate::spec(&vmi.spec))
        }
        _ => Ok(()),
    }
}

/// The checks the node applies that need nothing but the spec
/// (`vmi::validate`), as a 422 naming the field.
fn spec_checks(resource: &Resource, name: &str, result: Result<(), SpecError>) -> Result<(), ApiError> {
    result.map_err(|e| invalid(resource, name, &e.field, &e.message))
}

/// The object must be a well-formed instance of its Rust type; the error
/// names the path serde stopped at.
fn typed<T: serde::de::DeserializeOwned>(resource: &Resource, name: &str, object: &Value) -> Result<T, ApiError> {
    serde_json::from_value::<T>(object.clone()).map_err(|e| invalid(resource, name, "spec", &e.to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vm(spec: Value) -> Value {
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "a"}, "spec": spec})
    }

    fn template() -> Value {
        json!({"spec": {"domain": {"memory": {"guest": "64Mi"}, "devices": {}}}})
    }

    #[test]
    fn kubevirt_run_strategy_rules() {
        let resource = Resource::find("kubevirt.io", "v1", "virtualmachines").unwrap();
        assert!(check(resource, "a", &vm(json!({"running": true, "template": template()})), None).is_ok());
        let both =
            check(resource, "a", &vm(json!({"running": true, "runStrategy": "Always", "template": template()})), None);
        assert!(both.unwrap_err().message.contains("Running and RunStrategy are mutually exclusive"));
        let unknown = check(resource, "a", &vm(json!({"runStrategy": "Sometimes", "template": template()})), None);
        let error = unknown.unwrap_err();
        assert_eq!(error.code.as_u16(), 422);
        assert!(error.message.contains("Invalid RunStrategy"), "{}", error.message);
        let malformed = check(resource, "a", &vm(json!({"running": "yes", "template": template()})), None);
        assert_eq!(malformed.unwrap_err().code.as_u16(), 422);
    }

    #[test]
    fn templates_and_vmis_get_the_node_checks_with_their_field_paths() {
        let vms = Resource::find("kubevirt.io", "v1", "virtualmachines").unwrap();
        let mut sata = template();
        sata["spec"]["domain"]["devices"] = json!({"disks": [{"name": "root", "disk": {"bus": "sata"}}]});
        sata["spec"]["volumes"] = json!([{"name": "root", "containerDisk": {"image": "a"}}]);
        let error = check(vms, "a", &vm(json!({"running": false, "template": sata})), None).unwrap_err();
        assert_eq!(error.code.as_u16(), 422);
        assert_eq!(
            error.message,
            "VirtualMachine.kubevirt.io \"a\" is invalid: spec.template.spec.domain.devices.disks[0].disk.bus: \
             Unsupported value: \"sata\": supported values: \"virtio\""
        );
        let vmis = Resource::find("kubevirt.io", "v1", "virtualmachineinstances").unwrap();
        let mut spec = template()["spec"].clone();
        spec["domain"]["devices"] = json!({"disks": [{"name": "root"}]});
        spec["volumes"] = json!([{"name": "root", "emptyDisk": {"capacity": "1Mi"}}]);
        let vmi = |spec: &Value| json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "i"}, "spec": spec});
        assert!(check(vmis, "i", &vmi(&spec), None).is_ok());
        spec["volumes"][0]["name"] = json!("../../x");
        let error = check(vmis, "i", &vmi(&spec), None).unwrap_err();
        assert!(
            error.message.contains("is invalid: spec.volumes[0].name: Invalid value: \"../../x\""),
            "{}",
            error.message
        );
    }
}

#[cfg(test)]
mod mutate_tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::resources::RESOURCES;

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let secret = RESOURCES.iter().find(|r| r.kind == "Secret").unwrap();
        let mut object =
            json!({"data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "userdata": "#!/bin/sh"}});
        mutate(secret, &mut object);
        assert_eq!(object, json!({"data": {"a": "bmV3", "keep": "eA==", "userdata": "IyEvYmluL3No"}}));
        let vm = RESOURCES.iter().find(|r| r.kind == "VirtualMachine").unwrap();
        let mut other = json!({"stringData": {"a": "b"}});
        mutate(vm, &mut other);
        assert_eq!(other, json!({"stringData": {"a": "b"}}), "only Secrets have stringData");
    }
}
