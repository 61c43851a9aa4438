//! One VM process per VMI: the state directory both sides share, the VM
//! process itself (`server`), and the agent's handle on it (`client`).

pub mod cgroup;
pub mod client;
pub mod jail_checks;
pub mod server;
pub mod state_dir;

pub use state_dir::{StateDir, VmIdentity, VmRecord};
