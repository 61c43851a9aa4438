//! The vCPUs and memory a VMI asks for, computed once for the scheduler,
//! the node's capacity accounting and the VM the node starts.
//!
//! - vCPUs: `cores × sockets × threads` when any of them is set (each
//!   missing one counts 1), else `resources.requests.cpu` rounded up to
//!   whole vCPUs (`500m` is 1, `1500m` is 2: a vCPU is not divisible),
//!   else 1; between 1 and `vmm`'s maximum.
//! - memory: `domain.memory.guest`, else `resources.requests.memory`, rounded
//!   up to whole MiB and at least [`MIN_MEMORY_MIB`] (less cannot hold a
//!   kernel, and should fail here naming the field, not later naming the kernel).
//! - `resources.limits` and requests other than `cpu` and `memory` are refused.

use proto::kubevirt::VirtualMachineInstanceSpec;

use super::quantity;
use super::SpecError;

/// Smallest guest memory kvmlet runs.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Most vCPUs one VM may have.
pub const MAX_VCPUS: u64 = vmm::arch::layout::MAX_VCPUS as u64;

/// What a VMI asks of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    pub vcpus: u64,
    pub memory_mib: u64,
}

/// The VMI's vCPUs and memory, or the first field that makes no sense.
pub fn request(spec: &VirtualMachineInstanceSpec) -> Result<Request, SpecError> {
    check_resource_kinds(spec)?;
    Ok(Request { vcpus: vcpus(spec)?, memory_mib: memory_mib(spec)? })
}

fn check_resource_kinds(spec: &VirtualMachineInstanceSpec) -> Result<(), SpecError> {
    let Some(resources) = &spec.domain.resources else { return Ok(()) };
    if resources.limits.as_ref().is_some_and(|l| !l.is_empty()) {
        return Err(SpecError::new("spec.domain.resources.limits", "limits are not enforced by kvmlet yet"));
    }
    for key in resources.requests.iter().flat_map(|r| r.keys()) {
        if key != "memory" && key != "cpu" {
            return Err(SpecError::new(
                format!("spec.domain.resources.requests.{key}"),
                "not supported (only memory and cpu)",
            ));
        }
    }
    Ok(())
}

fn vcpus(spec: &VirtualMachineInstanceSpec) -> Result<u64, SpecError> {
    let domain = &spec.domain;
    let cpu = domain.cpu.clone().unwrap_or_default();
    if let Some(model) = cpu.model.as_deref() {
        if !matches!(model, "" | "host-passthrough" | "host-model") {
            return Err(SpecError::new(
                "spec.domain.cpu.model",
                format!("{model:?} is not supported (kvmlet passes the host CPU through)"),
            ));
        }
    }
    let topology = [cpu.cores, cpu.sockets, cpu.threads];
    let requested = domain.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("cpu"));
    let (field, count) = if topology.iter().any(Option::is_some) {
        ("spec.domain.cpu", topology.iter().map(|n| u64::from(n.unwrap_or(1))).product())
    } else if let Some(q) = requested {
        const FIELD: &str = "spec.domain.resources.requests.cpu";
        let millicores = quantity::millicores(&q.0).map_err(|e| SpecError::new(FIELD, e.to_string()))?;
        (FIELD, millicores.div_ceil(1000))
    } else {
        return Ok(1);
    };
    if !(1..=MAX_VCPUS).contains(&count) {
        return Err(SpecError::new(field, format!("{count} vCPUs, kvmlet runs 1 to {MAX_VCPUS}")));
    }
    Ok(count)
}

fn memory_mib(spec: &VirtualMachineInstanceSpec) -> Result<u64, SpecError> {
    let domain = &spec.domain;
    let guest = domain.memory.as_ref().and_then(|m| m.guest.as_ref()).map(|q| ("spec.domain.memory.guest", q));
    let request = || {
        let requests = domain.resources.as_ref()?.requests.as_ref()?;
        requests.get("memory").map(|q| ("spec.domain.resources.requests.memory", q))
    };
    let (field, q) = guest.or_else(request).ok_or_else(|| {
        SpecError::new(
            "spec.domain.resources.requests.memory",
            "the VMI sets no memory (domain.memory.guest or resources.requests.memory)",
        )
    })?;
    let bytes = quantity::bytes(&q.0).map_err(|e| SpecError::new(field, e.to_string()))?;
    let mib = bytes.div_ceil(1 << 20);
    if mib < MIN_MEMORY_MIB {
        return Err(SpecError::new(
            field,
            format!("{:?} is {bytes} bytes; a VM needs at least {MIN_MEMORY_MIB}Mi", q.0),
        ));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(domain: serde_json::Value) -> VirtualMachineInstanceSpec {
        serde_json::from_value(json!({"domain": domain})).unwrap()
    }

    fn with(cpu: serde_json::Value, requests: serde_json::Value) -> Result<Request, SpecError> {
        request(&spec(json!({"cpu": cpu, "resources": {"requests": requests}, "devices": {}})))
    }

    #[test]
    fn topology_wins_over_the_cpu_request() {
        let r = with(json!({"cores": 2, "sockets": 2, "threads": 2}), json!({"memory": "64Mi", "cpu": "1"}));
        assert_eq!(r, Ok(Request { vcpus: 8, memory_mib: 64 }));
        let r = with(json!({"sockets": 3}), json!({"memory": "64Mi", "cpu": "16"}));
        assert_eq!(r.unwrap().vcpus, 3, "missing topology fields count 1");
    }

    #[test]
    fn the_cpu_request_counts_when_no_topology_is_set() {
        assert_eq!(with(json!({}), json!({"memory": "64Mi", "cpu": "4"})).unwrap().vcpus, 4);
        assert_eq!(with(json!({"model": "host-passthrough"}), json!({"memory": "64Mi", "cpu": "4"})).unwrap().vcpus, 4);
        assert_eq!(with(json!({}), json!({"memory": "64Mi", "cpu": "500m"})).unwrap().vcpus, 1);
        assert_eq!(with(json!({}), json!({"memory": "64Mi", "cpu": "1500m"})).unwrap().vcpus, 2);
        assert_eq!(with(json!({}), json!({"memory": "64Mi", "cpu": "1.5"})).unwrap().vcpus, 2);
        assert_eq!(with(json!({}), json!({"memory": "64Mi"})).unwrap().vcpus, 1, "nothing asked: one vCPU");
        let zero = with(json!({}), json!({"memory": "64Mi", "cpu": "0"})).unwrap_err();
        assert_eq!(zero.field, "spec.domain.resources.requests.cpu");
        let many = with(json!({}), json!({"memory": "64Mi", "cpu": "33"})).unwrap_err();
        assert_eq!(many.to_string(), "spec.domain.resources.requests.cpu: 33 vCPUs, kvmlet runs 1 to 32");
        let many = with(json!({"cores": 64}), json!({"memory": "64Mi"})).unwrap_err();
        assert_eq!(many.field, "spec.domain.cpu");
        let bad = with(json!({}), json!({"memory": "64Mi", "cpu": "two"})).unwrap_err();
        assert!(bad.to_string().starts_with("spec.domain.resources.requests.cpu: \"two\" is not a quantity"), "{bad}");
        let model = with(json!({"model": "Haswell"}), json!({"memory": "64Mi"})).unwrap_err();
        assert_eq!(model.field, "spec.domain.cpu.model");
    }

    #[test]
    fn memory_in_any_quantity_form_rounds_up_to_mib() {
        let mib = |q: &str| with(json!({}), json!({"memory": q})).map(|r| r.memory_mib);
        assert_eq!(mib("1.5Gi"), Ok(1536));
        assert_eq!(mib("+64Mi"), Ok(64));
        assert_eq!(mib("1e9"), Ok(954));
        assert_eq!(mib("64M"), Ok(62));
        let guest = request(&spec(
            json!({"memory": {"guest": "1Gi"}, "resources": {"requests": {"memory": "64Mi"}}, "devices": {}}),
        ));
        assert_eq!(guest.unwrap().memory_mib, 1024, "domain.memory.guest wins over the request");
    }

    #[test]
    fn too_little_or_no_memory_names_the_memory_field() {
        let tiny = with(json!({}), json!({"memory": "1e3"})).unwrap_err();
        assert_eq!(tiny.field, "spec.domain.resources.requests.memory");
        assert!(tiny.message.contains("at least 16Mi"), "{tiny}");
        let tiny = request(&spec(json!({"memory": {"guest": "15Mi"}, "devices": {}}))).unwrap_err();
        assert_eq!(tiny.field, "spec.domain.memory.guest");
        let none = request(&spec(json!({"devices": {}}))).unwrap_err();
        assert!(none.to_string().starts_with("spec.domain.resources.requests.memory: the VMI sets no memory"));
        let negative = with(json!({}), json!({"memory": "-64Mi"})).unwrap_err();
        assert!(negative.message.contains("negative"), "{negative}");
    }

    #[test]
    fn limits_and_other_resources_are_refused() {
        let limits = request(&spec(
            json!({"resources": {"requests": {"memory": "64M"}, "limits": {"memory": "64M"}}, "devices": {}}),
        ));
        assert_eq!(limits.unwrap_err().field, "spec.domain.resources.limits");
        let gpu = with(json!({}), json!({"memory": "64M", "nvidia.com/gpu": "1"})).unwrap_err();
        assert_eq!(
            gpu.to_string(),
            "spec.domain.resources.requests.nvidia.com/gpu: not supported (only memory and cpu)"
        );
    }
}
