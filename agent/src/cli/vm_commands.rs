//! `kvmlet start|stop|restart VM`: virtctl's state changes. Strategies that
//! a user owns (Halted, Always, Once) are switched in the spec; Manual and
//! RerunOnFailure get `status.stateChangeRequests`, appended with a JSON
//! patch that tests what it read, so of two racing commands only one wins.

use anyhow::{bail, Context};
use clap::Args;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use proto::kubevirt::{
    RunStrategy, StateChangeAction, StateChangeRequest, VirtualMachine, VirtualMachineInstance,
    VirtualMachineInstancePhase,
};
use serde_json::{json, Value};

use super::GlobalArgs;

#[derive(Debug, Clone, Args)]
pub struct VmTarget {
    /// The VirtualMachine's name (its namespace: -n/--namespace).
    pub vm: String,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub target: VmTarget,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub target: VmTarget,
    /// Seconds the guest gets to shut down (written into the VMI first).
    #[arg(long, value_name = "SECONDS")]
    pub grace_period: Option<i64>,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub target: VmTarget,
    /// Do not wait for the guest: with --grace-period=0 it is killed at once.
    #[arg(long)]
    pub force: bool,
    /// Only 0 is accepted (with --force).
    #[arg(long, value_name = "SECONDS")]
    pub grace_period: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Start,
    Stop,
    Restart,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
        }
    }
}

/// What a command writes, decided from the VM and its VMI as read.
#[derive(Debug, PartialEq)]
enum Change {
    /// Switch the strategy in the spec (keeping `running` if the VM uses it).
    Strategy(RunStrategy),
    /// Replace the state change requests.
    Requests(Vec<StateChangeRequest>),
}

fn stop_of(vmi: &VirtualMachineInstance) -> StateChangeRequest {
    StateChangeRequest { action: StateChangeAction::Stop, uid: vmi.uid(), data: None }
}

fn start() -> StateChangeRequest {
    StateChangeRequest { action: StateChangeAction::Start, uid: None, data: None }
}

/// KubeVirt's rules (see docs/kubevirt-compat.md, "Start, stop, restart").
/// An error is a conflict with the VM's state, said in words.
fn decide(verb: Verb, vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>) -> Result<Change, String> {
    let strategy = vm.spec.effective_run_strategy().ok_or("the VM has no run strategy")?;
    let requests = vm.status.as_ref().map(|s| s.state_change_requests.clone()).unwrap_or_default();
    let phase = vmi.map(|v| v.status.as_ref().and_then(|s| s.phase).unwrap_or_default());
    let live = phase.is_some_and(|p| !p.is_final());
    let underway = || format!("cannot {}: a stop/start is already underway ({requests:?})", verb.as_str());
    match verb {
        Verb::Start => {
            if live {
                return Err("VM is already running".into());
            }
            match strategy {
                RunStrategy::Halted => Ok(Change::Strategy(RunStrategy::Always)),
                RunStrategy::Always | RunStrategy::Once => {
                    Err(format!("runStrategy {} does not support manual start requests", strategy.as_str()))
                }
                RunStrategy::Manual | RunStrategy::RerunOnFailure => {
                    if !requests.is_empty() {
                        return Err(underway());
                    }
                    let clear_first = match strategy {
                        RunStrategy::Manual => phase.is_some_and(|p| p.is_final()),
                        _ => phase == Some(VirtualMachineInstancePhase::Succeeded),
                    };
                    let mut new = Vec::new();
                    if let (true, Some(vmi)) = (clear_first, vmi) {
                        new.push(stop_of(vmi));
                    }
                    new.push(start());
                    Ok(Change::Requests(new))
                }
            }
        }
        Verb::Stop => match strategy {
            RunStrategy::Always | RunStrategy::Once => Ok(Change::Strategy(RunStrategy::Halted)),
            RunStrategy::Halted => Err("VM is not running (runStrategy Halted)".into()),
            RunStrategy::Manual | RunStrategy::RerunOnFailure => match vmi {
                Some(vmi) if live => {
                    // A stop may take over whatever is pending, but only once.
                    if requests.len() == 1 && requests[0] == stop_of(vmi) {
                        return Err(underway());
                    }
                    Ok(Change::Requests(vec![stop_of(vmi)]))
                }
                _ => Err("VM is not running".into()),
            },
        },
        Verb::Restart => match strategy {
            RunStrategy::Halted | RunStrategy::Once => {
                Err(format!("runStrategy {} does not support manual restart requests", strategy.as_str()))
            }
            _ => {
                let Some(vmi) = vmi else { return Err("VM is not running".into()) };
                if !requests.is_empty() {
                    return Err(underway());
                }
                Ok(Change::Requests(vec![stop_of(vmi), start()]))
            }
        },
    }
}

fn json_patch(ops: Value) -> Patch<()> {
    Patch::Json(serde_json::from_value(ops).expect("a well-formed JSON patch"))
}

/// The patch for `change`, guarded by a test of what it was decided on.
async fn write(api: &Api<VirtualMachine>, vm: &VirtualMachine, change: &Change) -> kube::Result<()> {
    let name = vm.name_any();
    let rv = json!({"op": "test", "path": "/metadata/resourceVersion", "value": vm.resource_version()});
    match change {
        Change::Strategy(strategy) => {
            let op = if vm.spec.running.is_some() {
                json!({"op": "replace", "path": "/spec/running", "value": *strategy == RunStrategy::Always})
            } else {
                json!({"op": "replace", "path": "/spec/runStrategy", "value": strategy})
            };
            api.patch(&name, &PatchParams::default(), &json_patch(json!([rv, op]))).await?;
        }
        Change::Requests(new) => {
            let status = vm.status.clone().unwrap_or_default();
            let mut ops = Vec::new();
            if status.state_change_requests.is_empty() {
                ops.push(rv);
            } else {
                ops.push(
                    json!({"op": "test", "path": "/status/stateChangeRequests", "value": status.state_change_requests}),
                );
            }
            if vm.status.is_none() {
                ops.push(json!({"op": "add", "path": "/status", "value": {}}));
            }
            ops.push(json!({"op": "add", "path": "/status/stateChangeRequests", "value": new}));
            if status.start_failure.is_some() {
                ops.push(json!({"op": "remove", "path": "/status/startFailure"}));
            }
            api.patch_status(&name, &PatchParams::default(), &json_patch(Value::Array(ops))).await?;
        }
    }
    Ok(())
}

/// Reads, decides and writes; a write that lost a race re-reads and
/// decides again (the winner's change may make this one impossible).
async fn change_state(
    client: Client,
    namespace: &str,
    name: &str,
    verb: Verb,
    grace: Option<i64>,
) -> anyhow::Result<()> {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), namespace);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, namespace);
    let what = format!("VirtualMachine {namespace}/{name}");
    for _ in 0..5 {
        let vm = vms.get_opt(name).await?.with_context(|| format!("{what} not found"))?;
        let vmi = vmis.get_opt(name).await?;
        let change = decide(verb, &vm, vmi.as_ref()).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        if let (Some(seconds), Some(vmi)) = (grace, &vmi) {
            let patch = json!({"spec": {"terminationGracePeriodSeconds": seconds}});
            vmis.patch(&vmi.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("set the grace period of VMI {}", vmi.name_any()))?;
        }
        match write(&vms, &vm, &change).await {
            Ok(()) => {
                println!("VM {name} was scheduled to {}", verb.as_str());
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("{what}: {}", verb.as_str())),
        }
    }
    bail!("{what}: kept changing while trying to {}; try again", verb.as_str())
}

fn run(target: &VmTarget, global: &GlobalArgs, verb: Verb, grace: Option<i64>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = super::kube_client(global.kubeconfig.as_deref()).await?;
        change_state(client, &global.namespace, &target.vm, verb, grace).await
    })
}

pub fn start_main(args: StartArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    run(&args.target, global, Verb::Start, None)
}

pub fn stop_main(args: StopArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if let Some(seconds) = args.grace_period {
        anyhow::ensure!(seconds >= 0, "--grace-period {seconds}: must not be negative");
    }
    run(&args.target, global, Verb::Stop, args.grace_period)
}

pub fn restart_main(args: RestartArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    match args.grace_period {
        None => run(&args.target, global, Verb::Restart, None),
        Some(0) if args.force => run(&args.target, global, Verb::Restart, Some(0)),
        Some(0) => bail!("--grace-period=0 needs --force"),
        Some(n) => bail!("--grace-period {n}: only 0 (with --force) is supported by restart"),
    }
}

#[cfg(test)]
mod tests {
    use proto::kubevirt::{VirtualMachineInstanceStatus, VirtualMachineSpec, VirtualMachineStatus};

    use super::*;

    fn vm(strategy: RunStrategy, requests: Vec<StateChangeRequest>) -> VirtualMachine {
        let mut vm =
            VirtualMachine::new("vm", VirtualMachineSpec { run_strategy: Some(strategy), ..Default::default() });
        vm.status = Some(VirtualMachineStatus { state_change_requests: requests, ..Default::default() });
        vm
    }

    fn vmi(phase: VirtualMachineInstancePhase) -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::new("vm", Default::default());
        vmi.metadata.uid = Some("u1".into());
        vmi.status = Some(VirtualMachineInstanceStatus { phase: Some(phase), ..Default::default() });
        vmi
    }

    use RunStrategy::*;
    use VirtualMachineInstancePhase::*;

    #[test]
    fn start_rules() {
        assert_eq!(decide(Verb::Start, &vm(Halted, vec![]), None), Ok(Change::Strategy(Always)));
        assert!(decide(Verb::Start, &vm(Always, vec![]), None).is_err());
        assert!(decide(Verb::Start, &vm(Once, vec![]), None).is_err());
        assert!(decide(Verb::Start, &vm(Manual, vec![]), Some(&vmi(Running))).unwrap_err().contains("already running"));
        assert_eq!(decide(Verb::Start, &vm(Manual, vec![]), None), Ok(Change::Requests(vec![start()])));
        let failed = vmi(Failed);
        assert_eq!(
            decide(Verb::Start, &vm(Manual, vec![]), Some(&failed)),
            Ok(Change::Requests(vec![stop_of(&failed), start()]))
        );
        assert_eq!(
            decide(Verb::Start, &vm(RerunOnFailure, vec![]), Some(&failed)),
            Ok(Change::Requests(vec![start()]))
        );
        assert!(decide(Verb::Start, &vm(Manual, vec![start()]), None).unwrap_err().contains("underway"));
    }

    #[test]
    fn stop_and_restart_rules() {
        let running = vmi(Running);
        assert_eq!(decide(Verb::Stop, &vm(Always, vec![]), Some(&running)), Ok(Change::Strategy(Halted)));
        assert_eq!(decide(Verb::Stop, &vm(Once, vec![]), None), Ok(Change::Strategy(Halted)));
        assert!(decide(Verb::Stop, &vm(Halted, vec![]), None).is_err());
        assert!(decide(Verb::Stop, &vm(Manual, vec![]), None).is_err());
        let stop = Change::Requests(vec![stop_of(&running)]);
        assert_eq!(decide(Verb::Stop, &vm(Manual, vec![]), Some(&running)), Ok(stop));
        let pending = vec![stop_of(&running), start()];
        assert_eq!(
            decide(Verb::Stop, &vm(Manual, pending.clone()), Some(&running)),
            Ok(Change::Requests(vec![stop_of(&running)])),
            "a stop replaces pending requests"
        );
        assert!(decide(Verb::Stop, &vm(Manual, vec![stop_of(&running)]), Some(&running)).is_err(), "but only once");
        assert_eq!(decide(Verb::Restart, &vm(Always, vec![]), Some(&running)), Ok(Change::Requests(pending.clone())));
        assert!(decide(Verb::Restart, &vm(Halted, vec![]), Some(&running)).is_err());
        assert!(decide(Verb::Restart, &vm(Once, vec![]), Some(&running)).is_err());
        assert!(decide(Verb::Restart, &vm(Manual, pending), Some(&running)).unwrap_err().contains("underway"));
    }
}
