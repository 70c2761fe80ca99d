//! State sources: the single writers of the swapped state. This issue ships
//! the file source (notify + SIGHUP); a control-plane source (DESIGN §5
//! `/proxy/v1/state`) implements the same trait later.

pub mod control;
pub mod files;

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;

use crate::state::State;

pub use control::ControlSource;
pub use files::FileSource;

/// Which piece of state a reload concerned (`zen_proxy_reloads_total{what}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum What {
    ServingCert,
    TrustBundles,
    KeySet,
    Revocations,
    Routes,
}

impl What {
    /// Every kind, in the order the file source loads them.
    pub const ALL: [What; 5] = [
        What::ServingCert,
        What::TrustBundles,
        What::KeySet,
        What::Revocations,
        What::Routes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            What::ServingCert => "serving_cert",
            What::TrustBundles => "trust_bundles",
            What::KeySet => "key_set",
            What::Revocations => "revocations",
            What::Routes => "routes",
        }
    }
}

#[async_trait]
pub trait StateSource: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Keep `state` current until `shutdown` fires. An invalid update must
    /// leave the previous value in place (the proxy never serves with nothing).
    async fn run(&self, state: Arc<State>, shutdown: ShutdownWatch);
}

/// Runs a state source as a pingora background service.
pub struct SourceService {
    pub source: Box<dyn StateSource>,
    pub state: Arc<State>,
}

#[async_trait]
impl pingora_core::services::background::BackgroundService for SourceService {
    async fn start(&self, shutdown: ShutdownWatch) {
        tracing::info!(source = self.source.name(), "state source started");
        self.source.run(self.state.clone(), shutdown).await;
    }
}
