//! The node's per-VM series, read at scrape time from the VM table and from
//! /proc for each VM process.

use std::collections::BTreeMap;

use super::Encoder;
use crate::node::vms::{Process, VmTable};

/// Clock ticks per second for /proc CPU times.
fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100.0, |t| t as f64)
}

/// utime + stime of one /proc stat line, in ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU seconds of each `vcpuN` thread of `pid`, by N.
fn vcpu_seconds(pid: u32) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return found };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let Some(id) = comm.trim().strip_prefix("vcpu") else { continue };
        if let Some(ticks) = std::fs::read_to_string(task.path().join("stat")).ok().as_deref().and_then(cpu_ticks) {
            found.insert(id.to_string(), ticks as f64 / ticks_per_second());
        }
    }
    found
}

fn proc_value(path: &str, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix(key))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// A collector for the VMs in `vms`, labelled with `node`.
pub fn collector(vms: VmTable, node: String) -> super::Collector {
    Box::new(move |out: &mut Encoder| {
        let entries: Vec<_> = vms.lock().values().cloned().collect();
        let mut phases: BTreeMap<String, u64> = BTreeMap::new();
        for entry in &entries {
            let phase = if entry.phase.is_empty() { "Scheduled".to_string() } else { entry.phase.clone() };
            *phases.entry(phase).or_default() += 1;
        }
        out.family("kubevirt_vmi_phase_count", "gauge", "VMIs with a VM on this node, by phase.");
        for (phase, count) in &phases {
            out.sample("kubevirt_vmi_phase_count", &[("node", &node), ("phase", phase)], *count as f64);
        }
        let live: Vec<_> = entries
            .iter()
            .filter(|e| !matches!(e.process, Process::Exited(_)))
            .filter_map(|e| Some((e, e.pid?)))
            .collect();
        out.family("kubevirt_vmi_vcpu_seconds_total", "counter", "CPU time of each vCPU thread.");
        for (entry, pid) in &live {
            for (id, seconds) in vcpu_seconds(*pid) {
                let labels = [
                    ("namespace", entry.identity.namespace.as_str()),
                    ("name", &entry.identity.name),
                    ("node", &node),
                    ("id", &id),
                ];
                out.sample("kubevirt_vmi_vcpu_seconds_total", &labels, seconds);
            }
        }
        let series = [
            (
                "kubevirt_vmi_memory_resident_bytes",
                "gauge",
                "Resident memory of the VM process, guest pages touched included.",
                "status",
                "VmRSS:",
                1024.0,
            ),
            (
                "kubevirt_vmi_storage_read_traffic_bytes_total",
                "counter",
                "Bytes the VM process read from storage (/proc/PID/io read_bytes).",
                "io",
                "read_bytes:",
                1.0,
            ),
            (
                "kubevirt_vmi_storage_write_traffic_bytes_total",
                "counter",
                "Bytes the VM process wrote to storage (/proc/PID/io write_bytes).",
                "io",
                "write_bytes:",
                1.0,
            ),
        ];
        for (name, kind, help, file, key, scale) in series {
            out.family(name, kind, help);
            for (entry, pid) in &live {
                if let Some(value) = proc_value(&format!("/proc/{pid}/{file}"), key) {
                    let labels = [
                        ("namespace", entry.identity.namespace.as_str()),
                        ("name", &entry.identity.name),
                        ("node", &node),
                    ];
                    out.sample(name, &labels, value * scale);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let stat = "42 (vcpu 0) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 0 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("garbage"), None);
        let own = vcpu_seconds(std::process::id());
        assert!(own.is_empty(), "the test process has no vCPU threads");
    }
}
