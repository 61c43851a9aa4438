//! `kvmlet`: runs KubeVirt VirtualMachines as rust-vmm microVMs.

fn main() -> anyhow::Result<()> {
    Ok(())
}
