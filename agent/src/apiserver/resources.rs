//! The resources the embedded API serves, with what discovery says of them.

/// One served resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// API group ("" for the core group).
    pub group: &'static str,
    pub version: &'static str,
    /// Plural name, as in URLs.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Whether `/status` is a subresource (spec and status written separately).
    pub status_subresource: bool,
}

pub const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

const fn core(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
) -> Resource {
    Resource {
        group: "",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names: short,
        categories: &[],
        status_subresource: false,
    }
}

pub const RESOURCES: &[Resource] = &[
    // Namespaces and services have /status in Kubernetes too: create and
    // update of the object itself leave status alone.
    Resource { status_subresource: true, ..core("namespaces", "namespace", "Namespace", false, &["ns"]) },
    // As in Kubernetes: agents write capacity through nodes/status.
    Resource { status_subresource: true, ..core("nodes", "node", "Node", false, &["no"]) },
    core("events", "event", "Event", true, &["ev"]),
    Resource { status_subresource: true, ..core("services", "service", "Service", true, &["svc"]) },
    core("secrets", "secret", "Secret", true, &[]),
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status_subresource: false,
    },
    // What Services reach, as the EndpointSlice controller writes them.
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status_subresource: false,
    },
    // The same Events as core v1 (one storage; see `events`).
    Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status_subresource: false,
    },
    Resource {
        group: "kubevirt.io",
        version: "v1",
        plural: "virtualmachines",
        singular: "virtualmachine",
        kind: "VirtualMachine",
        namespaced: true,
        short_names: &["vm", "vms"],
        categories: &["all", "kubevirt"],
        status_subresource: true,
    },
    Resource {
        group: "kubevirt.io",
        version: "v1",
        plural: "virtualmachineinstances",
        singular: "virtualmachineinstance",
        kind: "VirtualMachineInstance",
        namespaced: true,
        short_names: &["vmi", "vmis"],
        categories: &["all", "kubevirt"],
        status_subresource: true,
    },
];

impl Resource {
    /// `apiVersion` of its objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store's name for the resource.
    pub fn store_name(&self) -> String {
        format!("{}/{}", if self.group.is_empty() { "core" } else { self.group }, self.plural)
    }

    pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Groups other than core, in a stable order.
    pub fn groups() -> Vec<&'static str> {
        let mut groups: Vec<&str> = RESOURCES.iter().map(|r| r.group).filter(|g| !g.is_empty()).collect();
        groups.dedup();
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_names() {
        let vm = Resource::find("kubevirt.io", "v1", "virtualmachines").unwrap();
        assert_eq!(vm.api_version(), "kubevirt.io/v1");
        assert_eq!(vm.store_name(), "kubevirt.io/virtualmachines");
        let ns = Resource::find("", "v1", "namespaces").unwrap();
        assert_eq!((ns.api_version().as_str(), ns.namespaced), ("v1", false));
        assert_eq!(Resource::groups(), ["coordination.k8s.io", "discovery.k8s.io", "events.k8s.io", "kubevirt.io"]);
        let slices = Resource::find("discovery.k8s.io", "v1", "endpointslices").unwrap();
        assert_eq!((slices.kind, slices.namespaced, slices.status_subresource), ("EndpointSlice", true, false));
        assert_eq!(slices.store_name(), "discovery.k8s.io/endpointslices");
        assert!(Resource::find("kubevirt.io", "v2", "virtualmachines").is_none());
    }
}
