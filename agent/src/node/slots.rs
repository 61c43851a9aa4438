//! How many VMs this node runs at once: the node's own check of
//! `--max-vms` (the scheduler checks it too, from the published capacity,
//! but a VMI can reach the node around it: assigned by hand, or by a
//! scheduler with a stale view). A VMI beyond the limit is not started
//! half-way: it waits, `Unschedulable`, until a VM of this node has ended.

use std::collections::HashSet;
use std::sync::Mutex;

use super::vms::VmTable;

/// The node's VM slots.
pub struct VmSlots {
    max: u64,
    /// VMIs being started: admitted, not yet in the VM table.
    starting: Mutex<HashSet<String>>,
}

/// A slot held while a VM is being started; on drop it is left to the VM
/// table (which then has the VM) or freed (the start failed).
pub struct Slot<'a> {
    slots: &'a VmSlots,
    uid: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.starting.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.uid);
    }
}

impl VmSlots {
    pub fn new(max: u64) -> VmSlots {
        VmSlots { max, starting: Mutex::new(HashSet::new()) }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// A slot for `uid`, or `None` when the node's VMs (those in `vms`,
    /// exited ones until cleaned up, and those being started) fill them all.
    pub fn take(&self, uid: &str, vms: &VmTable) -> Option<Slot<'_>> {
        let mut starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        let table = vms.lock();
        let in_use = table.len() + starting.iter().filter(|u| !table.contains_key(*u)).count();
        if starting.contains(uid) || table.contains_key(uid) || (in_use as u64) < self.max {
            starting.insert(uid.to_string());
            return Some(Slot { slots: self, uid: uid.to_string() });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_starting_and_running_vms() {
        let (poke, _pokes) = tokio::sync::mpsc::unbounded_channel();
        let vms = VmTable::new(poke);
        let slots = VmSlots::new(2);
        let a = slots.take("a", &vms).expect("a first slot");
        let b = slots.take("b", &vms).expect("a second slot");
        assert!(slots.take("c", &vms).is_none(), "two VMs being started fill a node of 2");
        drop(a);
        let c = slots.take("c", &vms).expect("a's start failed: its slot is free");
        assert!(slots.take("d", &vms).is_none());
        drop((b, c));
        assert!(slots.take("d", &vms).is_some());
    }
}
