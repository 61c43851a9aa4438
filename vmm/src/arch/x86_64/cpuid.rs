//! CPUID for each vCPU: what KVM supports, with this vCPU's APIC id and the
//! VM's topology (one socket, one thread per core), TSC-deadline and the
//! hypervisor bit set. KVM's own hypervisor leaves (0x4000_0000: "KVMKVMKVM",
//! paravirt features such as kvm-clock) are kept: Linux guests use them.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;

const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types in leaves 0xB / 0x1F.
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits of the APIC id needed to number `count` cores.
fn apic_id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

fn topology_leaf(entry: &mut kvm_cpuid_entry2, vcpu: u8, vcpus: u8) {
    let apic_id = u32::from(vcpu);
    entry.edx = apic_id;
    match entry.index {
        0 => {
            // SMT level: one thread per core.
            entry.eax = 0;
            entry.ebx = 1;
            entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
        }
        1 => {
            entry.eax = apic_id_bits(vcpus);
            entry.ebx = u32::from(vcpus);
            entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
        }
        _ => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = (LEVEL_TYPE_INVALID << 8) | entry.index;
        }
    }
}

/// Adjusts KVM's supported CPUID for vCPU `vcpu` of `vcpus`.
pub fn configure(cpuid: &mut CpuId, vcpu: u8, vcpus: u8) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                entry.ebx = (entry.ebx & 0x0000_ffff) | (u32::from(vcpu) << 24) | (u32::from(vcpus) << 16);
                entry.ecx |= ECX_TSC_DEADLINE | ECX_HYPERVISOR;
                if vcpus > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
                let cores = u32::from(vcpus.max(1)) - 1;
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cores } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | (cores << 26) | (sharing << 14);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => topology_leaf(entry, vcpu, vcpus),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, ebx: 0x0000_0800, ..Default::default() }
    }

    #[test]
    fn apic_id_and_topology_are_per_vcpu() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)]).unwrap();
        configure(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].edx), (1, 3));
        assert_eq!((e[2].eax, e[2].ebx), (2, 4));
        assert_eq!((e[3].ecx >> 8) & 0xff, LEVEL_TYPE_INVALID);
    }

    #[test]
    fn apic_id_bits_round_up() {
        assert_eq!(apic_id_bits(1), 0);
        assert_eq!(apic_id_bits(2), 1);
        assert_eq!(apic_id_bits(3), 2);
        assert_eq!(apic_id_bits(32), 5);
    }
}
