//! kvmlet's virtual machine monitor: one x86_64 microVM on `/dev/kvm`.
//!
//! `VmConfig` says what the VM is made of; `Vm` builds and runs it. This crate
//! knows nothing of Kubernetes: the agent translates VMIs into `VmConfig`s.

pub mod arch;
pub mod config;
pub mod devices;
pub mod firmware;
pub mod nocloud;

pub use config::{ConfigError, ConsoleConfig, DiskConfig, KernelFormat, VmConfig};
