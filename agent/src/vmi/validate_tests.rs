use serde_json::json;

use super::*;

fn check(value: serde_json::Value) -> Result<(), SpecError> {
    spec(&serde_json::from_value(value).unwrap())
}

fn with_volume(disk: serde_json::Value, volume: serde_json::Value) -> Result<(), SpecError> {
    check(json!({
        "domain": {"resources": {"requests": {"memory": "64Mi"}}, "devices": {"disks": [disk]}},
        "volumes": [volume],
    }))
}

#[test]
fn a_full_spec_passes() {
    let spec = json!({
        "domain": {
            "cpu": {"cores": 2},
            "memory": {"guest": "1.5Gi"},
            "firmware": {"uuid": "5d1c1b34-7f0e-4a5e-9c61-4a2f3b9e8d10", "kernelBoot": {"container": {"image": "quay.io/k:v1", "kernelPath": "/boot/vmlinuz"}}},
            "devices": {"disks": [
                {"name": "root", "disk": {"bus": "virtio"}},
                {"name": "scratch-1"},
                {"name": "host"},
                {"name": "cloudinit"},
            ]},
        },
        "volumes": [
            {"name": "root", "containerDisk": {"image": "registry:5000/img@sha256:abc", "path": "/disk/root.raw"}},
            {"name": "scratch-1", "emptyDisk": {"capacity": "1e6"}},
            {"name": "host", "hostDisk": {"path": "/var/lib/vms/a.img", "type": "DiskOrCreate", "capacity": "1Gi"}},
            {"name": "cloudinit", "cloudInitNoCloud": {"secretRef": {"name": "any"}}},
        ],
    });
    assert_eq!(check(spec), Ok(()));
}

#[test]
fn volume_and_disk_names_are_dns_labels() {
    for bad in ["../../etc/x", "Root", "a_b", "-a", "a-", "", "a.b", &"a".repeat(64)] {
        let e = with_volume(json!({"name": "ok"}), json!({"name": bad, "emptyDisk": {"capacity": "1Mi"}})).unwrap_err();
        assert_eq!(e.field, "spec.volumes[0].name", "{bad:?}: {e}");
        assert!(e.message.starts_with("Invalid value:"), "{e}");
        let e = with_volume(json!({"name": bad}), json!({"name": "ok", "emptyDisk": {"capacity": "1Mi"}})).unwrap_err();
        assert_eq!(e.field, "spec.domain.devices.disks[0].name", "{bad:?}: {e}");
    }
    assert!(dns1123_label("../x").unwrap_err().contains("RFC 1123 label"));
    assert_eq!(dns1123_label("a"), Ok(()));
    assert_eq!(dns1123_label("0-disk-9"), Ok(()));
    assert_eq!(dns1123_label(&"a".repeat(63)), Ok(()));
}

#[test]
fn unsupported_bus_in_kubernetes_words() {
    let e = with_volume(
        json!({"name": "d", "disk": {"bus": "sata"}}),
        json!({"name": "d", "emptyDisk": {"capacity": "1Mi"}}),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec.domain.devices.disks[0].disk.bus: Unsupported value: \"sata\": supported values: \"virtio\""
    );
    assert_eq!(e.clone().in_template().field, "spec.template.spec.domain.devices.disks[0].disk.bus");
}

#[test]
fn image_references_stay_in_the_image_directory() {
    for bad in ["../../etc", "/etc/passwd", "a/../b", "a//b", "./a", "", "a/.."] {
        assert!(image_reference(bad).is_err(), "{bad:?}");
        let e = with_volume(json!({"name": "d"}), json!({"name": "d", "containerDisk": {"image": bad}})).unwrap_err();
        assert_eq!(e.field, "spec.volumes[0].containerDisk.image", "{bad:?}");
    }
    assert_eq!(image_reference("busybox"), Ok(PathBuf::from("busybox:latest")));
    assert_eq!(image_reference("registry:5000/img"), Ok(PathBuf::from("registry:5000/img:latest")));
    assert_eq!(image_reference("quay.io/a/b@sha256:ab"), Ok(PathBuf::from("quay.io/a/b@sha256:ab")));
    for bad in ["/disk/../../x", "..", "/", ""] {
        assert!(path_in_image(bad).is_err(), "{bad:?}");
    }
    assert_eq!(path_in_image("/disk/a.raw"), Ok(PathBuf::from("disk/a.raw")));
}

#[test]
fn each_field_is_named() {
    let emptydisk = |capacity: &str| json!({"name": "d", "emptyDisk": {"capacity": capacity}});
    let cases = [
        (with_volume(json!({"name": "d"}), emptydisk("0")), "spec.volumes[0].emptyDisk.capacity: must be more than 0"),
        (with_volume(json!({"name": "d"}), emptydisk("1.5.2")), "spec.volumes[0].emptyDisk.capacity: \"1.5.2\" is not"),
        (
            with_volume(json!({"name": "d"}), json!({"name": "d", "hostDisk": {"path": "/a", "type": "Directory"}})),
            "spec.volumes[0].hostDisk.type: Unsupported value: \"Directory\"",
        ),
        (
            with_volume(json!({"name": "d"}), json!({"name": "d", "cloudInitNoCloud": {"userDataBase64": "%%%"}})),
            "spec.volumes[0]: cloudInitNoCloud.userDataBase64: not valid base64: Invalid symbol 37",
        ),
        (
            with_volume(json!({"name": "d"}), json!({"name": "d", "cloudInitNoCloud": {"userData": "x".repeat(2049)}})),
            "spec.volumes[0]: cloudInitNoCloud.userData: 2049 bytes exceed the 2048 byte limit",
        ),
        (
            with_volume(json!({"name": "d"}), json!({"name": "d", "containerDisk": {"image": "a", "path": "/../x"}})),
            "spec.volumes[0].containerDisk.path: \"/../x\" is not a path inside the image",
        ),
        (
            with_volume(
                json!({"name": "d"}),
                json!({"name": "d", "emptyDisk": {"capacity": "1Mi"}, "hostDisk": {"path": "/a", "type": "Disk"}}),
            ),
            "spec.volumes[0]: more than one volume source is set",
        ),
        (
            check(json!({"domain": {"memory": {"guest": "1e3"}, "devices": {}}})),
            "spec.domain.memory.guest: \"1e3\" is 1000 bytes; a VM needs at least 16Mi",
        ),
        (
            check(
                json!({"domain": {"memory": {"guest": "64Mi"}, "firmware": {"kernelBoot": {"container": {"image": "k"}}}, "devices": {}}}),
            ),
            "spec.domain.firmware.kernelBoot.container.kernelPath: required",
        ),
        (
            check(
                json!({"domain": {"memory": {"guest": "64Mi"}, "firmware": {"kernelBoot": {"container": {"image": "k", "kernelPath": "/boot/../../x"}}}, "devices": {}}}),
            ),
            "spec.domain.firmware.kernelBoot.container.kernelPath: \"/boot/../../x\"",
        ),
        (
            check(json!({
                "domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": [{"name": "a"}, {"name": "b"}]}},
                "volumes": [{"name": "a", "cloudInitNoCloud": {"userData": "x"}}, {"name": "b", "cloudInitNoCloud": {"userData": "y"}}],
            })),
            "spec.volumes[1].cloudInitNoCloud: only one cloudInitNoCloud volume is allowed",
        ),
        (
            check(json!({
                "domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": [{"name": "a"}, {"name": "a"}]}},
                "volumes": [{"name": "a", "emptyDisk": {"capacity": "1Mi"}}],
            })),
            "spec.domain.devices.disks[1].name: Duplicate value: \"a\"",
        ),
        (
            check(json!({
                "domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": [{"name": "a"}]}},
                "volumes": [{"name": "a", "emptyDisk": {"capacity": "1Mi"}}, {"name": "a", "emptyDisk": {"capacity": "1Mi"}}],
            })),
            "spec.volumes[1].name: Duplicate value: \"a\"",
        ),
    ];
    for (result, expected) in cases {
        let message = result.unwrap_err().to_string();
        assert!(message.starts_with(expected), "\n  gave: {message}\n  want: {expected}");
    }
}
