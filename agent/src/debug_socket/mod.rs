//! The node agent's debugging socket: `server` (in the agent) and `client`
//! (behind `kvmlet ps`, `inspect`, `console`).

pub mod client;
pub mod server;

/// The socket's file name inside the run directory.
pub const SOCKET_NAME: &str = "kvmlet.sock";
