//! `kvmlet expose (vm|vmi) NAME --name SVC ...`: `virtctl expose`. kubectl
//! cannot expose a VM (it has no pods to take a selector from), so this
//! builds the Service as virtctl does (`services::expose`) and creates it;
//! kvmlet's EndpointSlice writer then points it at the VM whenever it runs.

use anyhow::Context;
use clap::Args;
use kube::api::{Api, PostParams};
use proto::kubevirt::{VirtualMachine, VirtualMachineInstance};

use super::GlobalArgs;
use crate::services::expose::{service, ExposeOptions, Exposed, ExposedKind};

#[derive(Debug, Args)]
pub struct ExposeArgs {
    /// What to expose: vm (virtualmachine) or vmi (virtualmachineinstance).
    #[arg(value_name = "TYPE")]
    pub kind: String,
    /// Its name (its namespace: -n/--namespace).
    pub target: String,
    /// Name of the Service to create.
    #[arg(long, value_name = "SVC")]
    pub name: String,
    /// The port the Service serves on (default: the ports listed on the VM's pod-network interface).
    #[arg(long)]
    pub port: Option<i32>,
    /// Number or name of the port on the VM that traffic goes to (default: --port).
    #[arg(long, value_name = "PORT")]
    pub target_port: Option<String>,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    /// ClusterIP, NodePort or LoadBalancer.
    #[arg(long = "type", value_name = "TYPE", default_value = "ClusterIP")]
    pub service_type: String,
    /// Name of the Service's port.
    #[arg(long, value_name = "NAME")]
    pub port_name: Option<String>,
    /// The ClusterIP to assign: empty allocates one, `None` makes a headless Service.
    #[arg(long, value_name = "IP")]
    pub cluster_ip: Option<String>,
    /// An external IP the Service also accepts (not managed by the cluster).
    #[arg(long, value_name = "IP")]
    pub external_ip: Option<String>,
    /// IPv4 or IPv6.
    #[arg(long, value_name = "FAMILY")]
    pub ip_family: Option<String>,
    /// SingleStack, PreferDualStack or RequireDualStack.
    #[arg(long, value_name = "POLICY")]
    pub ip_family_policy: Option<String>,
}

pub fn main(args: ExposeArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let kind = ExposedKind::parse(&args.kind)?;
    let options = ExposeOptions {
        service_name: args.name.clone(),
        port: args.port,
        target_port: args.target_port,
        protocol: args.protocol,
        service_type: args.service_type,
        port_name: args.port_name,
        cluster_ip: args.cluster_ip,
        external_ip: args.external_ip,
        ip_family: args.ip_family,
        ip_family_policy: args.ip_family_policy,
    };
    let namespace = &global.namespace;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = super::kube_client(global.kubeconfig.as_deref()).await?;
        let built = match kind {
            ExposedKind::VirtualMachine => {
                let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), namespace);
                let vm = vms
                    .get(&args.target)
                    .await
                    .with_context(|| format!("error fetching VirtualMachine {namespace}/{}", args.target))?;
                service(&Exposed::Vm(&vm), namespace, &options)?
            }
            ExposedKind::VirtualMachineInstance => {
                let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), namespace);
                let vmi = vmis
                    .get(&args.target)
                    .await
                    .with_context(|| format!("error fetching VirtualMachineInstance {namespace}/{}", args.target))?;
                service(&Exposed::Vmi { name: &args.target, spec: &vmi.spec }, namespace, &options)?
            }
        };
        let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client, namespace);
        services.create(&PostParams::default(), &built).await.context("service creation failed")?;
        println!("Service {} successfully exposed for {} {}", args.name, args.kind, args.target);
        Ok(())
    })
}
