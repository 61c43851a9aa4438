//! The manifests in deploy/ are valid Kubernetes objects (checked with the
//! real schema validator `kubernetes-validate`, strict mode), grant the agent
//! and the controller what they need and nothing more, and the CRDs in them
//! are the ones the proto types produce. The example VirtualMachine validates
//! against the generated CRD schema, and broken ones do not.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const NAMESPACE: &str = "kvmlet-system";
/// The oldest Kubernetes kvmlet supports, and the validator's newest schemas.
const KUBERNETES_VERSIONS: [Option<&str>; 2] = [Some("1.30"), None];
/// Every manifest kubectl applies (deploy/kustomization.yaml lists exactly these).
const MANIFESTS: [&str; 4] = ["crds.yaml", "rbac.yaml", "agent-daemonset.yaml", "controller-deployment.yaml"];

fn deploy(file: &str) -> PathBuf {
    e2e::workspace_root().join("deploy").join(file)
}

fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// python3 with the modules scripts/install-deps installs (kubernetes-validate
/// brings PyYAML and jsonschema).
fn python() -> PathBuf {
    let python = e2e::require_tool("python3", "python3");
    let check = Command::new(&python).args(["-c", "import kubernetes_validate, jsonschema, yaml"]).output().unwrap();
    assert!(
        check.status.success(),
        "kubernetes-validate is not installed for {}: run scripts/install-deps (PyPI package kubernetes-validate)\n{}",
        python.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    python
}

/// The documents of a YAML stream, parsed by PyYAML (the parser kubernetes-validate uses).
fn parse_yaml(text: &str) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))";
    let out = run(Command::new(python()).args(["-c", script]), text);
    assert_success(&out, "parse YAML");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn documents(file: &str) -> Vec<Value> {
    let path = deploy(file);
    parse_yaml(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

fn all_documents() -> Vec<Value> {
    MANIFESTS.iter().flat_map(|file| documents(file)).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/"))
}

/// `kubernetes-validate --strict` on files; returns (success, stdout lines).
fn kubernetes_validate(files: &[&Path], version: Option<&str>) -> (bool, Vec<String>) {
    let mut cmd = Command::new(python());
    cmd.args(["-m", "kubernetes_validate", "--strict"]);
    if let Some(version) = version {
        cmd.args(["--kubernetes-version", version]);
    }
    let out = run(cmd.args(files), "");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.lines().map(str::to_owned).collect())
}

/// Every document of `files` passes, none is skipped for want of a schema
/// (kubernetes-validate only warns then).
fn assert_valid(files: &[&Path], documents: usize) {
    for version in KUBERNETES_VERSIONS {
        let (ok, lines) = kubernetes_validate(files, version);
        let passed = lines.iter().filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource ")).count();
        let other: Vec<&String> = lines.iter().filter(|l| !l.starts_with("INFO ")).collect();
        assert!(
            ok && other.is_empty() && passed == documents,
            "kubernetes-validate --strict (Kubernetes {}) on {files:?}: {passed} of {documents} documents passed\n{}",
            version.unwrap_or("newest"),
            lines.join("\n")
        );
    }
}

#[test]
fn every_manifest_passes_kubernetes_validate_strict() {
    let version = run(Command::new(python()).args(["-m", "kubernetes_validate", "--version"]), "");
    assert_success(&version, "kubernetes-validate --version");
    for file in MANIFESTS {
        assert_valid(&[&deploy(file)], documents(file).len());
    }
}

/// The validator rejects what it should, so the test above can fail.
#[test]
fn kubernetes_validate_rejects_broken_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(deploy("agent-daemonset.yaml")).unwrap();
    for (what, broken) in [
        ("unknown field", original.replacen("      hostPID: true", "      hostPID: true\n      hostPIDs: true", 1)),
        ("wrong type", original.replacen("maxUnavailable: 1", "maxUnavailable: [1]", 1)),
    ] {
        assert_ne!(broken, original, "{what}: the DaemonSet changed its layout");
        let path = dir.path().join("broken.yaml");
        std::fs::write(&path, broken).unwrap();
        let (ok, lines) = kubernetes_validate(&[&path], Some("1.30"));
        assert!(!ok && lines.iter().any(|l| l.starts_with("ERROR ")), "{what} accepted:\n{}", lines.join("\n"));
    }
}

/// `kubectl apply -k deploy/` applies exactly the manifests, and what
/// kustomize renders passes the validator too.
#[test]
fn kustomization_renders_every_manifest() {
    let kubectl = e2e::require_tool("kubectl", "kubectl");
    let listed: Vec<String> = documents("kustomization.yaml")[0]["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, MANIFESTS, "deploy/kustomization.yaml resources");
    let mut on_disk: Vec<String> = std::fs::read_dir(e2e::workspace_root().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = MANIFESTS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "a manifest in deploy/ is missing from kustomization.yaml (or MANIFESTS here)");

    let out = Command::new(kubectl).args(["kustomize"]).arg(e2e::workspace_root().join("deploy")).output().unwrap();
    assert_success(&out, "kubectl kustomize deploy/");
    let rendered = parse_yaml(&String::from_utf8_lossy(&out.stdout));
    let key = |d: &Value| format!("{}/{}/{}", d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]);
    let mut got: Vec<String> = rendered.iter().map(key).collect();
    let mut want: Vec<String> = all_documents().iter().map(key).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for doc in &rendered {
        if doc["kind"] == "DaemonSet" || doc["kind"] == "Deployment" {
            assert_eq!(doc["spec"]["template"]["spec"]["containers"][0]["image"], "kvmlet:latest");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rendered.yaml");
    std::fs::write(&path, &out.stdout).unwrap();
    assert_valid(&[&path], rendered.len());
}

#[test]
fn namespaced_objects_live_in_one_namespace() {
    let cluster_scoped = ["Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"];
    let docs = all_documents();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap();
        let namespace = &doc["metadata"]["namespace"];
        if cluster_scoped.contains(&kind) {
            assert!(namespace.is_null(), "{kind} {} is cluster-scoped", doc["metadata"]["name"]);
        } else {
            assert_eq!(namespace, NAMESPACE, "{kind} {}", doc["metadata"]["name"]);
        }
    }
    find(&docs, "Namespace", NAMESPACE);
}

#[test]
fn deploy_crds_are_the_generated_ones() {
    let generated: Vec<Value> = proto::crds().iter().map(|crd| serde_json::to_value(crd).unwrap()).collect();
    let on_disk = documents("crds.yaml");
    assert!(
        on_disk == generated,
        "deploy/crds.yaml differs from proto::crds(); regenerate it with \
         `cargo run -q -p kvmlet-proto --example crds > deploy/crds.yaml`"
    );
}

// ---- the agent's DaemonSet and the controller's Deployment -----------------

fn pod_spec(docs: &[Value], kind: &str, name: &str) -> Value {
    find(docs, kind, name)["spec"]["template"]["spec"].clone()
}

fn args(container: &Value) -> Vec<&str> {
    container["args"].as_array().expect("container args").iter().map(|a| a.as_str().unwrap()).collect()
}

/// The value following `flag` in `args`.
fn flag<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| *a == flag).and_then(|i| args.get(i + 1).copied())
}

fn assert_probes(container: &Value, port: u64) {
    let ports = container["ports"].as_array().expect("ports");
    let named = ports.iter().find(|p| p["containerPort"] == port).expect("health port");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(get["port"] == port || get["port"] == named["name"], "{probe} port: {}", get["port"]);
    }
}

#[test]
fn agent_daemonset_runs_vms_that_survive_it() {
    let docs = documents("agent-daemonset.yaml");
    let daemonset = find(&docs, "DaemonSet", "kvmlet-agent");
    assert_eq!(daemonset["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
    let pod = pod_spec(&docs, "DaemonSet", "kvmlet-agent");
    assert_eq!(pod["serviceAccountName"], "kvmlet-agent");
    assert_eq!(pod["hostPID"], true, "the agent must see VM processes its predecessor started");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    assert!(grace <= 30, "terminationGracePeriodSeconds {grace}");

    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["privileged"], true);
    let args = args(container);
    assert_eq!(args[0], "agent");
    assert_eq!(flag(&args, "--node-name"), Some("$(NODE_NAME)"));
    let node_name = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert_eq!(flag(&args, "--image-dir"), Some("/var/lib/kvmlet/images"));
    assert_eq!(flag(&args, "--cgroup-parent"), Some("/sys/fs/cgroup/kvmlet"));
    assert_eq!(flag(&args, "--health-listen"), Some("0.0.0.0:8186"));
    assert_probes(container, 8186);

    // Each host path is mounted at the same place inside the container.
    let volumes = pod["volumes"].as_array().unwrap();
    let mounts = container["volumeMounts"].as_array().unwrap();
    for (path, kind) in [
        ("/dev/kvm", "CharDevice"),
        ("/run/kvmlet", "DirectoryOrCreate"),
        ("/var/lib/kvmlet", "DirectoryOrCreate"),
        ("/sys/fs/cgroup", "Directory"),
        ("/var/lib/cni", "DirectoryOrCreate"),
        ("/run/netns", "DirectoryOrCreate"),
    ] {
        let volume = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == path)
            .unwrap_or_else(|| panic!("no hostPath volume for {path}"));
        assert_eq!(volume["hostPath"]["type"], kind, "{path}");
        let mount = mounts.iter().find(|m| m["name"] == volume["name"]).unwrap_or_else(|| panic!("{path} not mounted"));
        assert_eq!(mount["mountPath"], path);
        assert!(mount["readOnly"] != true, "{path} must be writable");
    }
    // The cgroup parent is inside the mounted host cgroup tree.
    assert!(flag(&args, "--cgroup-parent").unwrap().starts_with("/sys/fs/cgroup/"));

    // VMs on the pod network: the node's CNI configuration and plugins, read
    // only, where the flags look for them; namespaces made in the pod reach the host.
    assert_eq!(flag(&args, "--network"), Some("masquerade"));
    for (flag_name, path) in [("--cni-conf-dir", "/etc/cni/net.d"), ("--cni-bin-dir", "/opt/cni/bin")] {
        assert_eq!(flag(&args, flag_name), Some(path));
        let volume = volumes.iter().find(|v| v["hostPath"]["path"] == path).unwrap_or_else(|| panic!("no {path}"));
        let mount = mounts.iter().find(|m| m["name"] == volume["name"]).unwrap_or_else(|| panic!("{path} not mounted"));
        assert_eq!((mount["mountPath"].as_str(), mount["readOnly"].as_bool()), (Some(path), Some(true)), "{path}");
    }
    let netns = mounts.iter().find(|m| m["mountPath"] == "/run/netns").expect("/run/netns mounted");
    assert_eq!(netns["mountPropagation"], "Bidirectional");
}

#[test]
fn controller_is_leader_elected_with_two_replicas() {
    let docs = documents("controller-deployment.yaml");
    let deployment = find(&docs, "Deployment", "kvmlet-controller");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = pod_spec(&docs, "Deployment", "kvmlet-controller");
    assert_eq!(pod["serviceAccountName"], "kvmlet-controller");
    let container = &pod["containers"][0];
    let args = args(container);
    assert_eq!(args[0], "controller");
    let lease_namespace = flag(&args, "--lease-namespace").expect("--lease-namespace");
    let env_name = lease_namespace.strip_prefix("$(").and_then(|s| s.strip_suffix(')')).expect("from the pod");
    let env = container["env"].as_array().unwrap().iter().find(|e| e["name"] == env_name).expect("lease namespace env");
    assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_probes(container, 8186);
    assert_ne!(container["securityContext"]["privileged"], true, "the controller needs no privileges");
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
}

#[test]
fn containerfile_builds_the_one_binary() {
    let text = std::fs::read_to_string(deploy("Containerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains("rust:1-bookworm") && froms[0].ends_with(" AS build"), "{}", froms[0]);
    assert!(
        ["gcr.io/distroless/cc-debian12", "debian:bookworm-slim"].iter().any(|base| froms[1].contains(base)),
        "{}",
        froms[1]
    );
    assert!(text.contains("cargo build --release --locked -p kvmlet-agent --bin kvmlet"));
    assert!(text.contains("COPY --from=build /out/kvmlet /usr/local/bin/kvmlet"));
    assert!(text.lines().any(|l| l == r#"ENTRYPOINT ["/usr/local/bin/kvmlet"]"#));
}

// ---- RBAC -----------------------------------------------------------------

/// The rules of a (Cluster)Role, each as (apiGroups, resources, verbs, resourceNames).
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

fn rules(role: &Value) -> Vec<Rule> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Rule {
            groups: strings(&r["apiGroups"]),
            resources: strings(&r["resources"]),
            verbs: strings(&r["verbs"]),
            names: strings(&r["resourceNames"]),
        })
        .collect()
}

fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.groups.iter().any(|g| g == group)
            && r.resources.iter().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

fn assert_grants(rules: &[Rule], role: &str, grants: &[(&str, &str, &[&str])]) {
    for (group, resource, verbs) in grants {
        for verb in *verbs {
            assert!(allows(rules, group, resource, verb), "{role} may not {verb} {resource} (group {group:?})");
        }
    }
}

/// Everything a role's rules allow, as group/resource/verb strings.
fn granted(rules: &[Rule]) -> Vec<String> {
    let mut all: Vec<String> = rules
        .iter()
        .flat_map(|r| {
            r.groups.iter().flat_map(move |g| {
                r.resources.iter().flat_map(move |res| r.verbs.iter().map(move |v| format!("{g}/{res}/{v}")))
            })
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

const EVENTS: [(&str, &str, &[&str]); 2] =
    [("", "events", &["create", "patch"]), ("events.k8s.io", "events", &["create", "patch"])];

#[test]
fn rbac_grants_what_each_part_needs_and_no_wildcards() {
    let docs = documents("rbac.yaml");
    for doc in docs.iter().filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role") {
        for rule in rules(doc) {
            for value in rule.groups.iter().chain(&rule.resources).chain(&rule.verbs).chain(&rule.names) {
                assert!(
                    !value.contains('*'),
                    "{} {} grants a wildcard `{value}`",
                    doc["kind"],
                    doc["metadata"]["name"]
                );
            }
        }
        assert!(doc["aggregationRule"].is_null(), "no aggregated roles");
    }
    for account in ["kvmlet-agent", "kvmlet-controller"] {
        let sa = find(&docs, "ServiceAccount", account);
        assert_eq!(sa["metadata"]["namespace"], NAMESPACE);
    }

    let agent = rules(find(&docs, "ClusterRole", "kvmlet-agent"));
    let agent_needs: &[(&str, &str, &[&str])] = &[
        ("kubevirt.io", "virtualmachineinstances", &["get", "list", "watch", "patch", "update"]),
        ("kubevirt.io", "virtualmachineinstances/status", &["patch", "update"]),
        ("", "secrets", &["get"]),
        ("", "nodes", &["get", "create", "patch"]),
        ("", "nodes/status", &["get", "patch"]),
    ];
    assert_grants(&agent, "kvmlet-agent", agent_needs);
    assert_grants(&agent, "kvmlet-agent", &EVENTS);
    // Nothing beyond that: reading one Secret by name must not become listing all of them.
    let mut expected = granted(&agent_needs.iter().chain(&EVENTS).map(to_rule).collect::<Vec<_>>());
    expected.sort();
    assert_eq!(granted(&agent), expected, "kvmlet-agent grants more than it needs");
    assert!(!allows(&agent, "", "secrets", "list") && !allows(&agent, "", "secrets", "watch"));
    assert!(!allows(&agent, "kubevirt.io", "virtualmachineinstances", "create"));
    assert!(!allows(&agent, "kubevirt.io", "virtualmachines", "get"));

    let controller = rules(find(&docs, "ClusterRole", "kvmlet-controller"));
    let controller_needs: &[(&str, &str, &[&str])] = &[
        ("kubevirt.io", "virtualmachines", &["get", "list", "watch", "update", "patch"]),
        ("kubevirt.io", "virtualmachines/status", &["update", "patch"]),
        ("kubevirt.io", "virtualmachineinstances", &["get", "list", "watch", "create", "delete", "patch", "update"]),
        ("kubevirt.io", "virtualmachineinstances/status", &["update", "patch"]),
        ("", "nodes", &["get", "list", "watch"]),
        // EndpointSlices for the Services that select VMIs (kvmlet writes them: no pods).
        ("", "services", &["get", "list", "watch"]),
        ("discovery.k8s.io", "endpointslices", &["get", "list", "watch", "create", "update", "delete"]),
    ];
    assert_grants(&controller, "kvmlet-controller", controller_needs);
    assert_grants(&controller, "kvmlet-controller", &EVENTS);
    let mut expected = granted(&controller_needs.iter().chain(&EVENTS).map(to_rule).collect::<Vec<_>>());
    expected.sort();
    assert_eq!(granted(&controller), expected, "kvmlet-controller grants more than it needs");
    assert!(!allows(&controller, "", "secrets", "get"), "the controller reads no secrets");
    assert!(!allows(&controller, "coordination.k8s.io", "leases", "get"), "leases only in its namespace (Role)");

    // Leader election: a namespaced Role, the Lease the controller uses.
    let role = find(&docs, "Role", "kvmlet-controller-leader-election");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let lease = rules(role);
    assert_grants(&lease, "leader election", &[("coordination.k8s.io", "leases", &["get", "create", "update"])]);
    for rule in lease.iter().filter(|r| r.verbs.iter().any(|v| v != "create")) {
        assert_eq!(rule.names, ["kvmlet-controller"], "reading and renewing are limited to the controller's Lease");
    }

    // Each role is bound to its ServiceAccount, and only to it.
    for (kind, binding, role, account) in [
        ("ClusterRoleBinding", "kvmlet-agent", "kvmlet-agent", "kvmlet-agent"),
        ("ClusterRoleBinding", "kvmlet-controller", "kvmlet-controller", "kvmlet-controller"),
        ("RoleBinding", "kvmlet-controller-leader-election", "kvmlet-controller-leader-election", "kvmlet-controller"),
    ] {
        let binding = find(&docs, kind, binding);
        assert_eq!(binding["roleRef"]["name"], role);
        assert_eq!(binding["roleRef"]["kind"], kind.trim_end_matches("Binding"));
        assert_eq!(
            binding["subjects"],
            json!([{ "kind": "ServiceAccount", "name": account, "namespace": NAMESPACE }]),
            "{kind} {role}"
        );
    }
}

fn to_rule(grant: &(&str, &str, &[&str])) -> Rule {
    Rule {
        groups: vec![grant.0.to_owned()],
        resources: vec![grant.1.to_owned()],
        verbs: grant.2.iter().map(|v| v.to_string()).collect(),
        names: Vec::new(),
    }
}

// ---- custom resources against the CRD schema ----------------------------------

/// Validates objects against a CRD's `openAPIV3Schema` with python-jsonschema,
/// the way kube-apiserver's strict field validation treats them: `nullable`
/// allows null, `x-kubernetes-int-or-string` allows both, and an object schema
/// with properties rejects unknown fields unless it preserves them.
/// (CEL `x-kubernetes-validations` are not evaluated here; the embedded API
/// server's tests cover them.) Prints one JSON list of errors per object.
const VALIDATE_CR: &str = r#"
import json, sys, jsonschema

crds, kind = json.load(open(sys.argv[1])), sys.argv[2]
crd = next(c for c in crds if c["spec"]["names"]["kind"] == kind)
version = crd["spec"]["versions"][0]

def strict(s):
    if isinstance(s, list):
        return [strict(x) for x in s]
    if not isinstance(s, dict):
        return s
    s = {k: strict(v) if k in ("properties", "items", "additionalProperties", "anyOf", "allOf", "oneOf", "not") else v
         for k, v in s.items()}
    if "properties" in s:
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.pop("nullable", False):
        if "type" in s:
            s["type"] = [s["type"], "null"]
        if "enum" in s and None not in s["enum"]:
            s["enum"] = s["enum"] + [None]
    if s.get("type") in ("object", ["object", "null"]) and "additionalProperties" not in s \
            and not s.get("x-kubernetes-preserve-unknown-fields"):
        s["additionalProperties"] = False
    return s

schema = strict(version["schema"]["openAPIV3Schema"])
# apiVersion, kind and metadata are the API server's, not in the CRD schema.
schema.setdefault("properties", {}).update({
    "apiVersion": {"enum": [crd["spec"]["group"] + "/" + version["name"]]},
    "kind": {"enum": [kind]},
    "metadata": {"type": "object"},
})
schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
validator = jsonschema.Draft4Validator(schema)
for obj in json.load(sys.stdin):
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    print(json.dumps([".".join(str(p) for p in e.absolute_path) + ": " + e.message for e in errors]))
"#;

/// Schema errors for each object, against the CRD of `kind` in deploy/crds.yaml.
fn schema_errors(kind: &str, objects: &[Value]) -> Vec<Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let crds = dir.path().join("crds.json");
    std::fs::write(&crds, serde_json::to_vec(&documents("crds.yaml")).unwrap()).unwrap();
    let out = run(
        Command::new(python()).args(["-c", VALIDATE_CR]).arg(&crds).arg(kind),
        &serde_json::to_string(objects).unwrap(),
    );
    assert_success(&out, "validate against the CRD schema");
    let results: Vec<Vec<String>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON list of errors"))
        .collect();
    assert_eq!(results.len(), objects.len());
    results
}

fn example_vm() -> Value {
    let path = e2e::workspace_root().join("examples/vm-cirros.yaml");
    let mut docs = parse_yaml(&std::fs::read_to_string(path).unwrap());
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

#[test]
fn example_vm_matches_the_crd_schema() {
    let vm = example_vm();
    assert_eq!(schema_errors("VirtualMachine", std::slice::from_ref(&vm)), [Vec::<String>::new()]);
    // The VMI the controller makes from it.
    let vmi = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": { "name": "vm-cirros", "labels": vm["spec"]["template"]["metadata"]["labels"] },
        "spec": vm["spec"]["template"]["spec"],
    });
    assert_eq!(schema_errors("VirtualMachineInstance", &[vmi]), [Vec::<String>::new()]);
}

#[test]
fn crd_schema_rejects_unknown_fields_and_wrong_types() {
    let vm = example_vm();
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut copy = vm.clone();
        edit(&mut copy);
        copy
    };
    // (where the error is reported, what it names, the broken object)
    let cases: [(&str, &str, Value); 5] = [
        ("spec", "'runing' was unexpected", broken(&|v| v["spec"]["runing"] = json!(true))),
        ("spec.running", "'yes' is not of type", broken(&|v| v["spec"]["running"] = json!("yes"))),
        ("spec.runStrategy", "'Sometimes' is not one of", broken(&|v| v["spec"]["runStrategy"] = json!("Sometimes"))),
        (
            "spec.template.spec.domain.devices.disks.0.disk",
            "'buss' was unexpected",
            broken(&|v| v["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["disk"]["buss"] = json!("sata")),
        ),
        (
            "spec.template.spec.domain.resources.requests.memory",
            "['64M']",
            broken(&|v| v["spec"]["template"]["spec"]["domain"]["resources"]["requests"]["memory"] = json!(["64M"])),
        ),
    ];
    let objects: Vec<Value> = cases.iter().map(|(_, _, obj)| obj.clone()).collect();
    for ((path, names, _), errors) in cases.iter().zip(schema_errors("VirtualMachine", &objects)) {
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{path}: ")) && e.contains(names)),
            "a broken {path} ({names}) was not rejected: {errors:?}"
        );
    }
}

/// The command lines the DaemonSet and the Deployment run are ones kvmlet
/// accepts (clap rejects an unknown flag before it reaches `--help`).
#[test]
fn manifest_command_lines_are_accepted_by_kvmlet() {
    let docs = all_documents();
    for (kind, name) in [("DaemonSet", "kvmlet-agent"), ("Deployment", "kvmlet-controller")] {
        let spec = pod_spec(&docs, kind, name);
        let container = &spec["containers"][0];
        let mut command = Command::new(e2e::kvmlet_bin());
        command.args(args(container)).arg("--help");
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{kind} {name}: kvmlet refuses its arguments {:?}: {}",
            args(container),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(e2e::kvmlet_bin()).args(["agent", "--no-such-flag", "--help"]).output().unwrap();
    assert!(!out.status.success(), "an unknown flag is refused even with --help");
}
