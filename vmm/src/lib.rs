//! kvmlet's virtual machine monitor: one x86_64 microVM on `/dev/kvm`.
//!
//! `VmConfig` says what the VM is made of; `Vm` builds and runs it. This crate
//! knows nothing of Kubernetes: the agent translates VMIs into `VmConfig`s.

// The one crate that talks to KVM: its ioctls and guest memory need `unsafe`
// (the workspace denies it everywhere else), each block with a SAFETY comment.
#![allow(unsafe_code)]

pub mod arch;
mod boot;
pub mod bootdisk;
pub mod config;
pub mod console;
pub mod devices;
pub mod dhcp;
mod error;
mod exit;
pub mod firmware;
mod host_files;
pub mod image;
pub mod jail;
pub mod malloc;
pub mod net_config;
pub mod nocloud;
pub mod seccomp;
mod vcpu;
mod vm;

pub use config::{ConfigError, ConsoleConfig, DiskConfig, KernelFormat, VmConfig};
pub use console::ConsoleRing;
pub use error::Error;
pub use exit::ExitReason;
pub use host_files::HostFiles;
pub use net_config::{DhcpLease, MacAddr, NetConfig, PrivateOption, TapSource};
pub use vm::{Vm, VmHandle};
