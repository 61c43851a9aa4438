//! How a VMI is known to Services: the labels KubeVirt puts on a VMI's
//! virt-launcher pod, which Services select. kvmlet has no pods, so these
//! labels live here and the EndpointSlice writer matches selectors against them.

use std::collections::BTreeMap;

use proto::kubevirt::{VirtualMachine, VirtualMachineInstance};
use proto::labels::{APP_LABEL, CREATED_BY_LABEL, NODE_NAME_LABEL, VMI_ID_LABEL, VM_NAME_LABEL};
use sha1::{Digest, Sha1};

/// The longest label value (a DNS-1123 label).
const MAX_LABEL_VALUE: usize = 63;
/// How much of a long name is kept before its hash.
const KEPT_PREFIX: usize = 54;

/// KubeVirt's `CalculateVirtualMachineInstanceID`: the VMI's name when it is
/// a valid label value's length, else its first 54 characters, `-`, and the
/// first 8 hex digits of the SHA-1 of the whole name.
pub fn vmi_id(name: &str) -> String {
    if name.len() <= MAX_LABEL_VALUE {
        return name.to_string();
    }
    let digest = Sha1::digest(name.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    // VMI names are DNS-1123 subdomains (ASCII), so a byte cut is a character cut.
    format!("{}-{hex}", &name[..KEPT_PREFIX])
}

/// The labels of a VMI's endpoint: the VMI's own labels, then KubeVirt's
/// launcher-pod labels (which win, as KubeVirt sets them last).
pub fn endpoint_labels(vmi: &VirtualMachineInstance) -> BTreeMap<String, String> {
    let name = vmi.metadata.name.as_deref().unwrap_or_default();
    let mut labels = vmi.metadata.labels.clone().unwrap_or_default();
    // Where the VMI runs is not part of what it is.
    labels.remove(NODE_NAME_LABEL);
    add_launcher_labels(&mut labels, name);
    if let Some(uid) = &vmi.metadata.uid {
        labels.insert(CREATED_BY_LABEL.into(), uid.clone());
    }
    labels
}

/// The labels a VM's VMI will have on its endpoint (without the UID it does
/// not have yet): so a Service made for a stopped VM is known to be the VM's.
pub fn template_endpoint_labels(vm: &VirtualMachine) -> BTreeMap<String, String> {
    let name = vm.metadata.name.as_deref().unwrap_or_default();
    let mut labels = vm.spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    add_launcher_labels(&mut labels, name);
    labels
}

fn add_launcher_labels(labels: &mut BTreeMap<String, String>, vmi_name: &str) {
    labels.insert(APP_LABEL.into(), "virt-launcher".into());
    labels.insert(VM_NAME_LABEL.into(), vmi_name.into());
    labels.insert(VMI_ID_LABEL.into(), vmi_id(vmi_name));
}

/// Whether a Service's `selector` selects these labels (every pair present;
/// an empty selector selects nothing, as for Services).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_their_own_id_and_long_ones_are_cut_and_hashed() {
        assert_eq!(vmi_id("vm-cirros"), "vm-cirros");
        let exactly = "a".repeat(63);
        assert_eq!(vmi_id(&exactly), exactly);
        let long = format!("{}-end", "v".repeat(66));
        let id = vmi_id(&long);
        assert_eq!(id.len(), 63);
        assert_eq!(&id[..55], format!("{}-", "v".repeat(54)));
        // SHA-1 of the whole name, computed independently with `sha1sum`.
        let expected =
            std::process::Command::new("sh").args(["-c", &format!("printf %s '{long}' | sha1sum")]).output().unwrap();
        let expected = String::from_utf8(expected.stdout).unwrap();
        assert_eq!(&id[55..], &expected[..8]);
        assert_ne!(vmi_id(&format!("{long}x")), id, "names sharing a prefix differ by their hash");
    }

    #[test]
    fn endpoint_labels_are_the_vmis_with_kubevirts_launcher_labels() {
        let vmi: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "uid": "u-1", "labels": {"app": "mongo", "kubevirt.io/nodeName": "n1",
                         "vm.kubevirt.io/name": "spoofed"}},
            "spec": {"domain": {"devices": {}}},
        }))
        .unwrap();
        let labels = endpoint_labels(&vmi);
        let expected: BTreeMap<String, String> = [
            ("app", "mongo"),
            ("kubevirt.io", "virt-launcher"),
            ("kubevirt.io/created-by", "u-1"),
            ("vm.kubevirt.io/name", "db"),
            ("vmi.kubevirt.io/id", "db"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(labels, expected);
        let selector = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(selects(&selector(&[("vmi.kubevirt.io/id", "db")]), &labels));
        assert!(selects(&selector(&[("app", "mongo"), ("kubevirt.io", "virt-launcher")]), &labels));
        assert!(!selects(&selector(&[("app", "mongo"), ("tier", "x")]), &labels));
        assert!(!selects(&BTreeMap::new(), &labels), "an empty selector selects nothing");
    }
}
