//! The kvmlet agent: the command line, and (as they land) the embedded API
//! server, the VM controller and the node loop. `main.rs` is a thin shell.

pub mod apiserver;
pub mod cli;
pub mod clock;
pub mod controller;
pub mod debug_socket;
pub mod errors;
pub mod finalizers;
pub mod images;
pub mod metrics;
pub mod node;
pub mod phase_transitions;
pub mod services;
pub mod vmi;
pub mod vmprocess;
