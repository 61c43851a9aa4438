use serde_json::json;

use super::*;
use crate::vmi::cloud_init;

fn vmi(spec: serde_json::Value) -> VirtualMachineInstance {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1.example", "namespace": "ns", "uid": "0b9f7c1e-2f4a-4e5b-9a6c-7d8e9f0a1b2c"},
        "spec": spec,
    }))
    .unwrap()
}

fn node() -> NodeDefaults {
    NodeDefaults {
        kernel: Some("/boot/vmlinuz".into()),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        image_dir: "/nonexistent".into(),
        host_disks: HostDiskPolicy::closed(),
        pod_network: None,
    }
}

fn minimal() -> serde_json::Value {
    json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {}}})
}

fn plan(spec: serde_json::Value) -> Result<VmPlan, SpecError> {
    translate(&vmi(spec), &node(), &Secrets::new(), Path::new("/run/kvmlet/vms/u/disks"))
}

fn error(spec: serde_json::Value) -> String {
    plan(spec).unwrap_err().to_string()
}

#[test]
fn a_minimal_vmi_gets_the_node_kernel_and_its_uid_as_firmware_uuid() {
    let plan = plan(minimal()).unwrap();
    assert_eq!(plan.config.vcpus, 1);
    assert_eq!(plan.config.memory_mib, 62, "64M rounded up to whole MiB");
    assert_eq!(plan.config.kernel, Path::new("/boot/vmlinuz"));
    assert_eq!(plan.config.cmdline, "console=ttyS0");
    assert_eq!(plan.config.uuid.unwrap().to_string(), "0b9f7c1e-2f4a-4e5b-9a6c-7d8e9f0a1b2c");
    assert!(plan.files.is_empty() && plan.config.disks.is_empty());
}

#[test]
fn cpu_memory_and_firmware_come_from_the_spec() {
    let full = plan(json!({"domain": {
        "cpu": {"cores": 2, "sockets": 2, "threads": 1},
        "memory": {"guest": "1Gi"},
        "resources": {"requests": {"memory": "64M", "cpu": "500m"}},
        "firmware": {"uuid": "5d1c1b34-7f0e-4a5e-9c61-4a2f3b9e8d10", "serial": "s1", "kernelBoot": {"kernelArgs": "quiet"}},
        "devices": {},
    }}))
    .unwrap();
    assert_eq!(full.config.vcpus, 4);
    assert_eq!(full.config.memory_mib, 1024, "domain.memory.guest wins over the request");
    assert_eq!(full.config.uuid.unwrap().to_string(), "5d1c1b34-7f0e-4a5e-9c61-4a2f3b9e8d10");
    assert_eq!(full.config.serial.as_deref(), Some("s1"));
    assert_eq!(full.config.cmdline, "quiet");
    let by_request =
        plan(json!({"domain": {"resources": {"requests": {"memory": "64Mi", "cpu": "1500m"}}, "devices": {}}}));
    assert_eq!(by_request.unwrap().config.vcpus, 2);
}

#[test]
fn each_unsupported_field_is_named() {
    let cases = [
        (json!({"domain": {"devices": {}}}), "spec.domain.resources.requests.memory: the VMI sets no memory"),
        (
            json!({"domain": {"resources": {"requests": {"memory": "lots"}}, "devices": {}}}),
            "spec.domain.resources.requests.memory: \"lots\"",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}, "limits": {"memory": "64M"}}, "devices": {}}}),
            "spec.domain.resources.limits:",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M", "nvidia.com/gpu": "1"}}, "devices": {}}}),
            "spec.domain.resources.requests.nvidia.com/gpu: not supported",
        ),
        (
            json!({"domain": {"cpu": {"cores": 64}, "resources": {"requests": {"memory": "64M"}}, "devices": {}}}),
            "spec.domain.cpu: 64 vCPUs",
        ),
        (
            json!({"domain": {"cpu": {"model": "Haswell"}, "resources": {"requests": {"memory": "64M"}}, "devices": {}}}),
            "spec.domain.cpu.model: \"Haswell\"",
        ),
        (
            json!({"domain": {"machine": {"type": "q35"}, "resources": {"requests": {"memory": "64M"}}, "devices": {}}}),
            "spec.domain.machine.type: \"q35\"",
        ),
        (
            json!({"domain": {"firmware": {"uuid": "not-a-uuid"}, "resources": {"requests": {"memory": "64M"}}, "devices": {}}}),
            "spec.domain.firmware.uuid: \"not-a-uuid\"",
        ),
        (
            json!({"networks": [{"name": "default", "pod": {}}], "domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {}}}),
            "spec.networks[0].name: \"default\" not found",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "d", "cdrom": {"bus": "sata"}}]}}, "volumes": [{"name": "d", "emptyDisk": {"capacity": "1Mi"}}]}),
            "spec.domain.devices.disks[0].cdrom:",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "d", "bootOrder": 0}]}}, "volumes": [{"name": "d", "emptyDisk": {"capacity": "1Mi"}}]}),
            "spec.domain.devices.disks[0].bootOrder: must have a boot order > 0",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "d", "bootOrder": 2}, {"name": "e", "bootOrder": 2}]}}, "volumes": [{"name": "d", "emptyDisk": {"capacity": "1Mi"}}, {"name": "e", "emptyDisk": {"capacity": "1Mi"}}]}),
            "spec.domain.devices.disks[1].bootOrder: Boot order 2 for disk \"e\" already set",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "d"}]}}}),
            "spec.domain.devices.disks[0].name: no volume named \"d\"",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "d", "disk": {"bus": "sata"}}]}}, "volumes": [{"name": "d", "emptyDisk": {"capacity": "1Mi"}}]}),
            "spec.domain.devices.disks[0].disk.bus: Unsupported value: \"sata\"",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "d"}]}}, "volumes": [{"name": "d", "hostDisk": {"path": "/var/disk.img", "type": "Disk"}}]}),
            "spec.volumes[0].hostDisk.path: hostDisk volumes need the HostDisk feature gate",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "1e3"}}, "devices": {}}}),
            "spec.domain.resources.requests.memory: \"1e3\" is 1000 bytes",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {}}, "volumes": [{"name": "v", "emptyDisk": {"capacity": "1Mi"}}]}),
            "spec.volumes[0]: volume \"v\" is not used by any disk",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "v"}]}}, "volumes": [{"name": "v"}]}),
            "spec.volumes[0]: no volume source kvmlet supports",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "v"}]}}, "volumes": [{"name": "v", "hostDisk": {"path": "rel.img", "type": "Disk"}}]}),
            "spec.volumes[0].hostDisk.path: \"rel.img\" is not an absolute path",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "v"}]}}, "volumes": [{"name": "v", "hostDisk": {"path": "/x.img", "type": "DiskOrCreate"}}]}),
            "spec.volumes[0].hostDisk.capacity: required",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "v"}]}}, "volumes": [{"name": "v", "containerDisk": {"image": "a/b", "imagePullPolicy": "Sometimes"}}]}),
            "spec.volumes[0].containerDisk.imagePullPolicy: Unsupported value: \"Sometimes\"",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "v"}]}}, "volumes": [{"name": "v", "containerDisk": {"image": "../../etc"}}]}),
            "spec.volumes[0].containerDisk.image: \"../../etc\" is not an image reference",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "v"}]}}, "volumes": [{"name": "v", "containerDisk": {"image": "no/such:1"}}]}),
            "spec.volumes[0].containerDisk.image: image \"no/such:1\" is not on this node",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "v"}]}}, "volumes": [{"name": "v", "cloudInitNoCloud": {"secretRef": {"name": "missing"}}}]}),
            "spec.volumes[0].cloudInitNoCloud.secretRef: secret \"missing\" not found",
        ),
        (
            json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "v"}]}}, "volumes": [{"name": "v", "cloudInitNoCloud": {}}]}),
            "spec.volumes[0]: cloudInitNoCloud: exactly one of userData",
        ),
    ];
    for (spec, expected) in cases {
        let message = error(spec.clone());
        assert!(message.starts_with(expected), "{spec}\n  gave: {message}\n  want: {expected}");
    }
}

#[test]
fn no_kernel_anywhere_is_an_error() {
    let vmi = vmi(minimal());
    let node = NodeDefaults { kernel: None, ..node() };
    let e = translate(&vmi, &node, &Secrets::new(), Path::new("/d")).unwrap_err();
    assert_eq!(e.field, "spec.domain.firmware.kernelBoot");
    assert!(e.message.contains("--default-kernel"));
}

#[test]
fn disks_follow_the_disk_order_with_their_files() {
    let images = tempfile::tempdir().unwrap();
    let disk_dir = images.path().join("quay.io/demo/root:latest/disk");
    std::fs::create_dir_all(&disk_dir).unwrap();
    std::fs::write(disk_dir.join("root.raw"), b"").unwrap();
    std::fs::create_dir_all(images.path().join("quay.io/demo/kernel:v2/boot")).unwrap();
    let spec = json!({
        "hostname": "custom-host",
        "domain": {
            "resources": {"requests": {"memory": "64M"}},
            "firmware": {"kernelBoot": {"container": {"image": "quay.io/demo/kernel:v2", "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initrd"}}},
            "devices": {"disks": [
                {"name": "cloud", "disk": {"bus": "virtio"}},
                {"name": "root", "serial": "r0"},
                {"name": "scratch", "disk": {"readOnly": true}},
            ]},
        },
        "volumes": [
            {"name": "root", "containerDisk": {"image": "quay.io/demo/root"}},
            {"name": "scratch", "emptyDisk": {"capacity": "1000"}},
            {"name": "cloud", "cloudInitNoCloud": {"secretRef": {"name": "ud"}, "networkData": "version: 2\n"}},
        ],
    });
    let secrets =
        Secrets::from([("ud".to_string(), BTreeMap::from([("userData".to_string(), b"#cloud-config\n".to_vec())]))]);
    let node = NodeDefaults { image_dir: images.path().to_path_buf(), ..node() };
    let plan = translate(&vmi(spec), &node, &secrets, Path::new("/d")).unwrap();
    let kernel_root = images.path().join("quay.io/demo/kernel:v2");
    assert_eq!(plan.config.kernel, kernel_root.join("boot/vmlinuz"));
    assert_eq!(plan.config.initrd, Some(kernel_root.join("boot/initrd")));
    let disks: Vec<(&str, bool, Option<&str>)> =
        plan.config.disks.iter().map(|d| (d.path.to_str().unwrap(), d.readonly, d.serial.as_deref())).collect();
    assert_eq!(
        disks,
        [
            ("/d/cidata.iso", true, Some("cidata")),
            ("/d/disk-1.qcow2", false, Some("r0")),
            ("/d/disk-2.img", true, None)
        ]
    );
    // The container disk runs on its own overlay over the image's file, given as its only backing file.
    let backing: Vec<&[PathBuf]> = plan.config.disks.iter().map(|d| d.backing.as_slice()).collect();
    assert_eq!(backing, [&[][..], &[disk_dir.join("root.raw")][..], &[][..]]);
    let seed = cloud_init::seed(
        "0b9f7c1e-2f4a-4e5b-9a6c-7d8e9f0a1b2c",
        Some("custom-host"),
        b"#cloud-config\n".to_vec(),
        Some(b"version: 2\n".to_vec()),
    );
    assert_eq!(
        plan.files,
        [
            DiskFile::Seed { path: "/d/cidata.iso".into(), seed },
            DiskFile::Overlay { base: disk_dir.join("root.raw"), path: "/d/disk-1.qcow2".into() },
            DiskFile::Sparse { path: "/d/disk-2.img".into(), bytes: 1024 },
        ]
    );
}

#[test]
fn config_errors_map_back_to_vmi_fields() {
    let spec = json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "firmware": {"kernelBoot": {}}, "devices": {"disks": [{"name": "a"}, {"name": "b"}]}},
        "volumes": [{"name": "b", "emptyDisk": {"capacity": "1Mi"}}, {"name": "a", "emptyDisk": {"capacity": "1Mi"}}]});
    let plan = plan(spec).unwrap();
    let unreadable = ConfigError::DiskUnreadable {
        index: 0,
        path: "/d/disk-0.img".into(),
        source: std::io::ErrorKind::NotFound.into(),
    };
    assert_eq!(plan.spec_error(&unreadable).field, "spec.volumes[1]", "disk 0 is volume 1");
    assert_eq!(plan.spec_error(&ConfigError::Serial("too long".into())).field, "spec.domain.firmware.serial");
    let missing_kernel = plan.config.validate().unwrap_err();
    assert_eq!(plan.spec_error(&missing_kernel).field, "spec.domain.firmware.kernelBoot", "{missing_kernel}");
}

#[test]
fn without_kernel_boot_the_boot_disk_is_the_lowest_boot_order_else_the_first_but_the_seed() {
    let disks = |disks: serde_json::Value, firmware: serde_json::Value| {
        let all = [
            json!({"name": "ci", "cloudInitNoCloud": {"userData": "#!/bin/sh\n"}}),
            json!({"name": "a", "emptyDisk": {"capacity": "1Mi"}}),
            json!({"name": "b", "emptyDisk": {"capacity": "1Mi"}}),
        ];
        let used = |v: &&serde_json::Value| disks.as_array().unwrap().iter().any(|d| d["name"] == v["name"]);
        let volumes: Vec<serde_json::Value> = all.iter().filter(used).cloned().collect();
        let spec = json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "firmware": firmware, "devices": {"disks": disks}}, "volumes": volumes});
        plan(spec).unwrap()
    };
    let all = json!([{"name": "ci"}, {"name": "a"}, {"name": "b", "bootOrder": 3}]);
    let boot = disks(all.clone(), json!({})).boot_disk.unwrap();
    assert_eq!(boot, BootDisk { index: 2, name: "b".into(), field: "spec.domain.devices.disks[2]".into() });
    let first = json!([{"name": "ci"}, {"name": "a"}, {"name": "b"}]);
    let plan = disks(first, json!({}));
    assert_eq!(plan.boot_disk.as_ref().map(|b| b.index), Some(1), "the seed is never the boot disk");
    assert_eq!(plan.config.kernel, Path::new(""), "set once the disk is read");
    let missing = plan.config.validate().unwrap_err();
    assert_eq!(plan.spec_error(&missing).field, "spec.domain.devices.disks[1]");
    // kernelBoot (even without a container) keeps the node's kernel; a seed alone boots it too.
    assert_eq!(disks(all, json!({"kernelBoot": {"kernelArgs": "x"}})).boot_disk, None);
    let seed_only = disks(json!([{"name": "ci"}]), json!({}));
    assert_eq!((seed_only.boot_disk, seed_only.config.kernel), (None, "/boot/vmlinuz".into()));
}

#[test]
fn image_references_get_a_tag() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("busybox:latest")).unwrap();
    std::fs::create_dir_all(dir.path().join("registry:5000/img@sha256:abc")).unwrap();
    assert_eq!(image_root(dir.path(), "busybox").unwrap(), dir.path().join("busybox:latest"));
    assert!(image_root(dir.path(), "registry:5000/img@sha256:abc").is_ok());
    assert!(image_root(dir.path(), "registry:5000/img").unwrap_err().contains("not on this node"));
    assert!(image_root(dir.path(), "/etc/passwd").is_err());
}

#[test]
fn a_seed_keeps_a_serial_its_disk_names() {
    let spec = json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "ci", "serial": "mine"}]}},
        "volumes": [{"name": "ci", "cloudInitNoCloud": {"userData": "#!/bin/sh\n"}}]});
    let plan = plan(spec).unwrap();
    assert_eq!(plan.config.disks[0].serial.as_deref(), Some("mine"));
    let DiskFile::Seed { seed, .. } = &plan.files[0] else { panic!("{:?}", plan.files) };
    let meta: serde_json::Value = serde_json::from_slice(&seed.meta_data).unwrap();
    assert_eq!(meta["instance-id"], "0b9f7c1e-2f4a-4e5b-9a6c-7d8e9f0a1b2c", "the firmware UUID (here the VMI's UID)");
    assert_eq!(meta["local-hostname"], "vm1", "the VMI name up to its first dot");
}

#[test]
fn host_disks_resolve_under_the_roots_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("a.img"), b"").unwrap();
    let node = NodeDefaults { host_disks: HostDiskPolicy::new(true, std::slice::from_ref(&root)).unwrap(), ..node() };
    let spec = |path: &Path, kind: &str| {
        json!({"domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {"disks": [{"name": "h"}]}},
            "volumes": [{"name": "h", "hostDisk": {"path": path, "type": kind, "capacity": "1Mi"}}]})
    };
    let run = |path: &Path, kind: &str| translate(&vmi(spec(path, kind)), &node, &Secrets::new(), Path::new("/d"));
    let plan = run(&root.join("a.img"), "Disk").unwrap();
    assert_eq!(plan.config.disks[0].path, root.join("a.img"));
    assert!(plan.files.is_empty(), "Disk makes no file");
    let plan = run(&root.join("sub/../new.img"), "DiskOrCreate").unwrap();
    assert_eq!(plan.files, [DiskFile::HostDisk { path: root.join("new.img"), bytes: 1 << 20 }]);
    let e = run(&root.join("../escape.img"), "DiskOrCreate").unwrap_err();
    assert_eq!(e.field, "spec.volumes[0].hostDisk.path");
    assert!(e.message.contains("not under a host disk root"), "{e}");
}

fn pod_network() -> PodNetwork {
    PodNetwork {
        tap: vmm::TapSource::Name("tap0".into()),
        mtu: 1450,
        resolv: ResolvConf::parse("nameserver 10.96.0.10\nsearch ns.svc.cluster.local\n"),
    }
}

fn masquerade() -> serde_json::Value {
    json!({
        "hostname": "web",
        "networks": [{"name": "default", "pod": {}}],
        "domain": {"resources": {"requests": {"memory": "64M"}}, "devices": {
            "interfaces": [{"name": "default", "masquerade": {}, "ports": [{"port": 80}],
                            "dhcpOptions": {"ntpServers": ["10.1.1.1"]}}]}},
    })
}

#[test]
fn on_a_pod_network_a_vmi_gets_one_nic_with_kubevirts_masquerade_lease() {
    let node = NodeDefaults { pod_network: Some(pod_network()), ..node() };
    let plan = translate(&vmi(masquerade()), &node, &Secrets::new(), Path::new("/d")).unwrap();
    let [net] = plan.config.nets.as_slice() else { panic!("{:?}", plan.config.nets) };
    assert_eq!(net.tap, vmm::TapSource::Name("tap0".into()));
    assert_eq!(net.mtu, 1450, "the pod interface's MTU");
    assert_eq!(net.mac, crate::vmi::network::stable_mac("ns", "vm1.example"));
    let lease = net.dhcp.as_ref().unwrap();
    assert_eq!(
        (lease.address.to_string(), lease.prefix_len, lease.router.to_string()),
        ("10.0.2.2".into(), 24, "10.0.2.1".into())
    );
    assert_eq!(lease.dns_servers.len(), 1);
    assert_eq!(lease.search_domains, ["ns.svc.cluster.local"]);
    assert_eq!(lease.hostname.as_deref(), Some("web"), "spec.hostname");
    assert_eq!(lease.ntp_servers.len(), 1, "dhcpOptions are honoured");
    assert_eq!(plan.interface.unwrap().ports.len(), 1);

    // No interfaces at all: KubeVirt's default, hostname from the VMI name, the spec's MAC wins.
    let default = translate(&vmi(minimal()), &node, &Secrets::new(), Path::new("/d")).unwrap();
    assert_eq!(default.config.nets[0].dhcp.as_ref().unwrap().hostname.as_deref(), Some("vm1"));
    assert_eq!(default.interface.unwrap().name, "default");
    let mut with_mac = masquerade();
    with_mac["domain"]["devices"]["interfaces"][0]["macAddress"] = json!("02:aa:bb:cc:dd:ee");
    let plan = translate(&vmi(with_mac), &node, &Secrets::new(), Path::new("/d")).unwrap();
    assert_eq!(plan.config.nets[0].mac.to_string(), "02:aa:bb:cc:dd:ee");

    // autoattachPodInterface: false, and no interface named: no NIC, no pod interface.
    let mut detached = minimal();
    detached["domain"]["devices"] = json!({"autoattachPodInterface": false});
    let plan = translate(&vmi(detached), &node, &Secrets::new(), Path::new("/d")).unwrap();
    assert!(plan.config.nets.is_empty() && plan.interface.is_none());
}

#[test]
fn without_a_pod_network_only_vmis_naming_no_network_run() {
    assert!(plan(minimal()).unwrap().config.nets.is_empty());
    assert!(
        error(masquerade()).starts_with("spec.domain.devices.interfaces[0]: this node runs VMs without a pod network")
    );
}
