//! Prometheus metrics, in the text exposition format, with KubeVirt's names
//! where KubeVirt has them.
//!
//! | series | what |
//! |---|---|
//! | `kubevirt_vmi_phase_count{node,phase}` | VMIs with a VM on this node, by the phase last reported |
//! | `kubevirt_vmi_vcpu_seconds_total{namespace,name,node,id}` | CPU time of each vCPU thread |
//! | `kubevirt_vmi_memory_resident_bytes{namespace,name,node}` | resident memory of the VM process (guest pages touched included) |
//! | `kubevirt_vmi_storage_read_traffic_bytes_total`, `..._write_...` | block I/O of the VM process (`/proc/PID/io`) |
//! | `kvmlet_vmi_start_seconds` (histogram) | VMI created → the node reports it `Running` |
//! | `kvmlet_reconcile_errors_total{loop}` | failed reconciles, by control loop |
//! | `kvmlet_reconciles_total{loop}`, `kvmlet_reconcile_cpu_seconds_total{loop}` | reconciles and the CPU time their own code took |
//!
//! One registry per process ([`global`]): the loops record into it and the
//! health server renders it on `/metrics`.

mod cpu;
mod encode;
pub mod vm;

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

pub use cpu::timed;
pub use encode::Encoder;

/// Upper bounds of the start-latency buckets, in seconds.
const START_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Something that writes its own series when `/metrics` is scraped.
pub type Collector = Box<dyn Fn(&mut Encoder) + Send + Sync>;

#[derive(Default)]
struct Histogram {
    counts: [u64; START_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Registry {
    reconcile_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Reconciles and their CPU seconds, by control loop.
    reconciles: Mutex<BTreeMap<&'static str, (u64, f64)>>,
    start_seconds: Mutex<Histogram>,
    collectors: Mutex<Vec<Collector>>,
}

/// The process's registry.
pub fn global() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);
    &REGISTRY
}

impl Registry {
    /// A reconcile of `control_loop` ("node", "vm-controller") failed.
    pub fn reconcile_error(&self, control_loop: &'static str) {
        *self.reconcile_errors.lock().unwrap_or_else(|p| p.into_inner()).entry(control_loop).or_default() += 1;
    }

    /// A reconcile of `control_loop` ran, its own polls taking `cpu_seconds`.
    pub fn reconciled(&self, control_loop: &'static str, cpu_seconds: f64) {
        let mut reconciles = self.reconciles.lock().unwrap_or_else(|p| p.into_inner());
        let entry = reconciles.entry(control_loop).or_default();
        entry.0 += 1;
        entry.1 += cpu_seconds;
    }

    /// A VMI went from created to `Running` in `seconds`.
    pub fn vmi_started(&self, seconds: f64) {
        let mut histogram = self.start_seconds.lock().unwrap_or_else(|p| p.into_inner());
        for (bound, count) in START_BUCKETS.iter().zip(histogram.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    pub fn add_collector(&self, collector: Collector) {
        self.collectors.lock().unwrap_or_else(|p| p.into_inner()).push(collector);
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Encoder::default();
        out.family("kvmlet_reconcile_errors_total", "counter", "Reconciles that failed, by control loop.");
        for (control_loop, count) in self.reconcile_errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.sample("kvmlet_reconcile_errors_total", &[("loop", control_loop)], *count as f64);
        }
        let reconciles = self.reconciles.lock().unwrap_or_else(|p| p.into_inner()).clone();
        out.family("kvmlet_reconciles_total", "counter", "Reconciles run, by control loop.");
        for (control_loop, (count, _)) in &reconciles {
            out.sample("kvmlet_reconciles_total", &[("loop", control_loop)], *count as f64);
        }
        out.family(
            "kvmlet_reconcile_cpu_seconds_total",
            "counter",
            "CPU time spent in reconciles' own code (API server work excluded), by control loop.",
        );
        for (control_loop, (_, seconds)) in &reconciles {
            out.sample("kvmlet_reconcile_cpu_seconds_total", &[("loop", control_loop)], *seconds);
        }
        let histogram = self.start_seconds.lock().unwrap_or_else(|p| p.into_inner());
        out.family(
            "kvmlet_vmi_start_seconds",
            "histogram",
            "Seconds from VMI creation until the node reported it Running.",
        );
        for (bound, count) in START_BUCKETS.iter().zip(histogram.counts.iter()) {
            out.sample("kvmlet_vmi_start_seconds_bucket", &[("le", &bound.to_string())], *count as f64);
        }
        out.sample("kvmlet_vmi_start_seconds_bucket", &[("le", "+Inf")], histogram.count as f64);
        out.sample("kvmlet_vmi_start_seconds_sum", &[], histogram.sum);
        out.sample("kvmlet_vmi_start_seconds_count", &[], histogram.count as f64);
        drop(histogram);
        for collector in self.collectors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            collector(&mut out);
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let registry = Registry::default();
        registry.vmi_started(0.03);
        registry.vmi_started(0.7);
        registry.reconcile_error("node");
        registry.reconcile_error("node");
        let text = registry.render();
        assert!(text.contains("kvmlet_vmi_start_seconds_bucket{le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("kvmlet_vmi_start_seconds_bucket{le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("kvmlet_vmi_start_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("kvmlet_vmi_start_seconds_count 2\n"), "{text}");
        assert!(text.contains("kvmlet_reconcile_errors_total{loop=\"node\"} 2\n"), "{text}");
        assert!(text.contains("# TYPE kvmlet_vmi_start_seconds histogram\n"), "{text}");
    }
}
