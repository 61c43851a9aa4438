//! What every handler shares: the store, and the allocator of Services'
//! cluster IPs and node ports, set up from the API's configuration.

use std::ops::Deref;

use super::services::{Allocator, ServiceCidr};
use super::store::Store;

/// How an embedded API is set up beyond its data directory.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// The range Services' cluster IPs come from (`kvmlet standalone
    /// --service-cidr`; 10.96.0.0/16 by default).
    pub service_cidr: ServiceCidr,
}

/// The state behind the router. Derefs to the [`Store`], which is what most
/// handlers need.
pub struct ApiState {
    store: Store,
    services: Allocator,
}

impl ApiState {
    pub fn new(store: Store, config: &ApiConfig) -> ApiState {
        ApiState { store, services: Allocator::new(config.service_cidr) }
    }

    pub fn services(&self) -> &Allocator {
        &self.services
    }
}

impl Deref for ApiState {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}
