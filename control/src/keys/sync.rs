//! Proxy sync: the versioned state every proxy mirrors (key set with secrets, trust bundle,
//! revocations, policy version). Committed changes publish their new version on a watch
//! channel; long-polls wait on it. The state itself is a [`StateMirror`] kept in memory and
//! brought forward with the rows changed since its version; its rendering is cached per
//! version so many waiting proxies cost one build.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::mirror::{Rendered, StateMirror};
use crate::app::App;
use crate::ca::CaView;

pub struct SyncHub {
    tx: watch::Sender<u64>,
    /// An async mutex because it is held across the store read that brings the mirror forward:
    /// the proxies woken by one change wait for one update instead of each reading the rows.
    state: tokio::sync::Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    mirror: StateMirror,
    /// The last rendering and the CA view it carries (a CA change replaces the view).
    rendered: Option<(Rendered, Arc<CaView>)>,
}

impl std::fmt::Debug for SyncHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHub")
            .field("version", &*self.tx.borrow())
            .finish()
    }
}

/// A built state: its version, JSON body and how many keys it carries.
#[derive(Clone, Debug)]
pub struct BuiltState {
    pub version: u64,
    pub body: Bytes,
    pub keys: usize,
}

impl SyncHub {
    pub fn new(version: u64) -> Self {
        Self {
            tx: watch::Sender::new(version),
            state: tokio::sync::Mutex::new(HubState::default()),
        }
    }

    pub fn publish(&self, version: u64) {
        self.tx.send_if_modified(|v| {
            if version > *v {
                *v = version;
                true
            } else {
                false
            }
        });
    }

    pub fn version(&self) -> u64 {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// The proxy state at the store's current version: the cached body when nothing changed,
/// otherwise the mirror is brought forward (a full load the first time) and re-rendered.
pub async fn current_state(app: &App) -> anyhow::Result<BuiltState> {
    let version = app.store.state_version().await?;
    let now = app.now();
    let ca = app.ca.view();
    let mut st = app.sync.state.lock().await;
    if let Some((r, r_ca)) = &st.rendered {
        if r.version == version && now < r.valid_until && Arc::ptr_eq(r_ca, &ca) {
            return Ok(built(r));
        }
    }
    let since = match st.mirror.version() {
        // A store behind the mirror was restored from a backup: start over from it.
        Some(held) if held > version => {
            tracing::warn!(
                held,
                store = version,
                "store state version went back; reloading the proxy state"
            );
            st.mirror = StateMirror::default();
            None
        }
        held => held,
    };
    if since != Some(version) {
        let rows = app.store.proxy_state_rows(since, now).await?;
        st.mirror.apply(rows, &app.custody)?;
    }
    let r = st
        .mirror
        .render(now, &app.cfg.trust_domain, &ca.bundle_pem)?;
    app.sync.publish(r.version);
    let out = built(&r);
    st.rendered = Some((r, ca));
    Ok(out)
}

fn built(r: &Rendered) -> BuiltState {
    BuiltState {
        version: r.version,
        body: r.body.clone(),
        keys: r.keys,
    }
}

/// Waits until the state is newer than `known` or `timeout` passes; the waiter gauge counts it.
pub async fn wait_newer(app: &App, known: u64, timeout: std::time::Duration) {
    let mut rx = app.sync.subscribe();
    if *rx.borrow_and_update() > known {
        return;
    }
    app.metrics.longpoll_waiters.inc();
    let _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v > known)).await;
    app.metrics.longpoll_waiters.dec();
}
