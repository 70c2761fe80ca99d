//! Proxy sync: the versioned state every proxy mirrors (key set with secrets, trust bundle,
//! revocations, policy version). Committed changes publish their new version on a watch
//! channel; long-polls wait on it. The serialized state is cached per version so many
//! waiting proxies cost one build.

use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::watch;
use zen_trust::keys::ProxyState;
use zen_trust::spiffe::SpiffeId;

use crate::app::App;

pub struct SyncHub {
    tx: watch::Sender<u64>,
    /// (version, body, key count, valid until): a cached body also goes stale when a key in it ends.
    cache: Mutex<Option<(u64, Bytes, usize, i64)>>,
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
            cache: Mutex::new(None),
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

/// Builds (or reuses) the proxy state at the current version.
pub async fn current_state(app: &App) -> anyhow::Result<BuiltState> {
    let version = app.store.state_version().await?;
    let now = app.now();
    if let Some((v, body, keys, until)) = app.sync.cache.lock().expect("cache lock").as_ref() {
        if *v == version && now < *until {
            return Ok(BuiltState {
                version,
                body: body.clone(),
                keys: *keys,
            });
        }
    }
    let records = app.store.live_keys(now).await?;
    let mut keys = Vec::with_capacity(records.len());
    for k in &records {
        keys.push(super::to_entry(&app.custody, k)?);
    }
    let mut revoked_spiffe_ids = Vec::new();
    for id in app.store.revoked_ids().await? {
        revoked_spiffe_ids.push(
            SpiffeId::parse(&id).map_err(|e| anyhow::anyhow!("stored revoked id `{id}`: {e}"))?,
        );
    }
    let serials = app.store.revoked_serials(now).await?;
    let valid_until = records
        .iter()
        .map(|k| k.not_after)
        .chain(serials.iter().map(|r| r.not_after))
        .min()
        .unwrap_or(i64::MAX);
    let revoked_serials = serials.into_iter().map(|r| r.serial).collect();
    let state = ProxyState {
        version,
        trust_domain: app.cfg.trust_domain.clone(),
        trust_bundle_pem: app.ca.view().bundle_pem.clone(),
        keys,
        revoked_spiffe_ids,
        revoked_serials,
        policy_version: app.store.policy_version().await?,
    };
    let n = state.keys.len();
    let body = Bytes::from(serde_json::to_vec(&state)?);
    *app.sync.cache.lock().expect("cache lock") = Some((version, body.clone(), n, valid_until));
    app.sync.publish(version);
    Ok(BuiltState {
        version,
        body,
        keys: n,
    })
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
