//! The VM controller's flags, shared by `kvmlet standalone` (which runs the
//! controller next to its API) and `kvmlet controller` (cluster mode).

use std::time::Duration;

use clap::Args;

use crate::controller::backoff::Backoff;
use crate::controller::ControllerConfig;

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Delay after the first failed start, in milliseconds (10·n² s by default);
    /// hidden: only tests shorten it.
    #[arg(long, hide = true, value_name = "MS", default_value_t = 10_000, env = "KVMLET_START_BACKOFF_BASE_MS")]
    pub start_backoff_base_ms: u64,
}

impl ControllerArgs {
    pub fn config(&self) -> ControllerConfig {
        ControllerConfig { backoff: Backoff { base: Duration::from_millis(self.start_backoff_base_ms) } }
    }
}
