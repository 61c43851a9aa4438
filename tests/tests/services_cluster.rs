//! EndpointSlices in cluster shape: an API-only `kvmlet standalone`, two
//! `kvmlet agent`s, each in a network namespace of its own as a node with
//! its own pod network, and `kvmlet controller`, which writes the slices.
//! The slice follows a VM's VMI from one node to the other across a restart.
//!
//! All of it runs inside a network namespace this test makes (`unshare
//! --net`); each agent reaches the API's loopback address through a small
//! forwarder the test runs inside the agent's namespace.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::standalone::{Standalone, VmReaper};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use proto::kubevirt::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use serde_json::json;

#[test]
fn the_endpoint_slice_follows_a_vmi_from_node_to_node() {
    e2e::run_in_private_netns("inside_a_private_namespace");
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct NodeNamespace(String);

impl NodeNamespace {
    fn new(name: String) -> NodeNamespace {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        assert!(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).status().unwrap().success());
        NodeNamespace(name)
    }
}

impl Drop for NodeNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Listens on 127.0.0.1 inside `namespace` and forwards each connection to
/// `api` (in this test's namespace): a thread enters the namespace only to
/// bind, so the sockets it connects later are made back in the test's.
fn forward_api_into(namespace: &str, api: SocketAddr) -> SocketAddr {
    let target = std::fs::File::open(format!("/run/netns/{namespace}")).unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        nix::sched::setns(home.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        sender.send(listener.local_addr().unwrap()).unwrap();
        for client in listener.incoming().flatten() {
            let Ok(upstream) = TcpStream::connect(api) else { continue };
            for (mut from, mut to) in [(client.try_clone().unwrap(), upstream.try_clone().unwrap()), (upstream, client)]
            {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    receiver.recv().unwrap()
}

fn agent(api: &Standalone, namespace: &str, node: &str, pod_cidr: &str, dir: &Path) -> Process {
    let local = forward_api_into(namespace, api.address());
    // The API's kubeconfig, pointed at the forwarder (same port number space, same certificate).
    let kubeconfig = std::fs::read_to_string(api.kubeconfig())
        .unwrap()
        .replace(&format!("https://{}", api.address()), &format!("https://{local}"));
    let path = dir.join(format!("{node}.kubeconfig"));
    std::fs::write(&path, kubeconfig).unwrap();
    let log = std::fs::File::create(dir.join(format!("{node}.log"))).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", namespace])
        .arg(e2e::kvmlet_bin())
        .arg("agent")
        .arg("--kubeconfig")
        .arg(&path)
        .args(["--node-name", node, "--heartbeat-interval", "1", "--network", "masquerade"])
        .args(["--pod-cidr", pod_cidr, "--cni-bin-dir", "/usr/lib/cni"])
        .arg("--run-dir")
        .arg(dir.join(node))
        .arg("--default-kernel")
        .arg(&e2e::probe().bzimage)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Process(child)
}

fn logs(dir: &Path) -> String {
    ["node-a.log", "node-b.log", "controller.log"]
        .iter()
        .map(|f| format!("--- {f} ---\n{}", std::fs::read_to_string(dir.join(f)).unwrap_or_default()))
        .collect()
}

/// The endpoints of `service`'s kvmlet slices as (address, nodeName).
async fn endpoints(slices: &Api<EndpointSlice>, service: &str) -> Vec<(String, String)> {
    let selector = format!("kubernetes.io/service-name={service},endpointslice.kubernetes.io/managed-by=kvmlet.io");
    let list = slices.list(&ListParams::default().labels(&selector)).await.unwrap();
    list.items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| (e.addresses[0].clone(), e.node_name.clone().unwrap_or_default()))
        .collect()
}

async fn wait_endpoint_on(slices: &Api<EndpointSlice>, node: &str, prefix: &str, dir: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen = endpoints(slices, "svc").await;
        if let [(address, on)] = seen.as_slice() {
            if on == node && address.starts_with(prefix) {
                return address.clone();
            }
        }
        assert!(Instant::now() < deadline, "no endpoint on {node}: {seen:?}\n{}", logs(dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by the_endpoint_slice_follows_a_vmi_from_node_to_node inside `unshare --net`"]
async fn inside_a_private_namespace() {
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap().success());
    let api = Standalone::start();
    let dir = tempfile::tempdir().unwrap();
    let _reapers = [VmReaper(dir.path().join("node-a")), VmReaper(dir.path().join("node-b"))];
    let pid = std::process::id();
    let (ns_a, ns_b) =
        (NodeNamespace::new(format!("kvmlet-e2e-{pid}-a")), NodeNamespace::new(format!("kvmlet-e2e-{pid}-b")));
    let _a = agent(&api, &ns_a.0, "node-a", "10.88.1.0/24", dir.path());
    let _b = agent(&api, &ns_b.0, "node-b", "10.88.2.0/24", dir.path());
    let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
    let _controller = Process(
        Command::new(e2e::kvmlet_bin())
            .args(["controller", "--kubeconfig"])
            .arg(api.kubeconfig())
            .args(["--lease-namespace", "default"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    for (node, zone) in [("node-a", "a"), ("node-b", "b")] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while nodes.get_opt(node).await.unwrap().is_none() {
            assert!(Instant::now() < deadline, "{node} never registered\n{}", logs(dir.path()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let label = json!({"metadata": {"labels": {"zone": zone}}});
        nodes.patch(node, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    }

    let vms: Api<VirtualMachine> = Api::default_namespaced(client.clone());
    let vm = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "mover"},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {"zone": "a"},
            "networks": [{"name": "default", "pod": {}}],
            "domain": {"resources": {"requests": {"memory": "64Mi"}},
                       "firmware": {"kernelBoot": {"kernelArgs": "probe.action=wait"}},
                       "devices": {"interfaces": [{"name": "default", "masquerade": {}}]}},
        }}},
    });
    vms.create(&PostParams::default(), &serde_json::from_value(vm).unwrap()).await.unwrap();
    let expose = Command::new(e2e::kvmlet_bin())
        .args(["expose", "vm", "mover", "--name", "svc", "--port", "80", "--kubeconfig"])
        .arg(api.kubeconfig())
        .output()
        .unwrap();
    assert!(expose.status.success(), "{}", String::from_utf8_lossy(&expose.stderr));

    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let on_a = wait_endpoint_on(&slices, "node-a", "10.88.1.", dir.path()).await;

    // Moved: the template now selects node-b, and a restart makes the new VMI there.
    let select_b = json!({"spec": {"template": {"spec": {"nodeSelector": {"zone": "b"}}}}});
    vms.patch("mover", &PatchParams::default(), &Patch::Merge(&select_b)).await.unwrap();
    let restart = Command::new(e2e::kvmlet_bin())
        .args(["restart", "mover", "--kubeconfig"])
        .arg(api.kubeconfig())
        .output()
        .unwrap();
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    let on_b = wait_endpoint_on(&slices, "node-b", "10.88.2.", dir.path()).await;
    assert_ne!(on_a, on_b);
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client);
    let vmi = vmis.get("mover").await.unwrap();
    let status = vmi.status.unwrap();
    assert_eq!((status.phase, status.node_name.as_deref()), (Some(Phase::Running), Some("node-b")));
}
