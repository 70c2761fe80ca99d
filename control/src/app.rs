//! The service core: store, custody, CA, clock, metrics and the proxy-sync hub, shared by the
//! HTTP API, the operator socket and the background controller.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::audit::NewEvent;
use crate::ca::CaManager;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::custody::{self, Custody, KeySource};
use crate::keys::sync::SyncHub;
use crate::metrics::Metrics;
use crate::store::{SqliteStore, Store, StoreResult};

pub const DB_FILE: &str = "control.db";
const CANARY_KEY: &str = "canary";

pub struct App {
    pub cfg: Config,
    pub store: Arc<dyn Store>,
    pub custody: Custody,
    pub clock: SharedClock,
    pub metrics: Metrics,
    pub ca: CaManager,
    pub sync: SyncHub,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("data_dir", &self.cfg.data_dir)
            .finish_non_exhaustive()
    }
}

/// Creates the data dir owner-only (it holds the database, master key and operator socket).
fn ensure_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod 700 data dir {}", dir.display()))?;
    Ok(())
}

impl App {
    /// Opens the data dir: store + migrations, master key + canary, CA. `master_key_env` is the
    /// value of `ZEN_MASTER_KEY` (passed in so tests do not touch the process environment).
    pub async fn open(
        cfg: Config,
        clock: SharedClock,
        master_key_env: Option<String>,
    ) -> anyhow::Result<Arc<App>> {
        ensure_data_dir(&cfg.data_dir)?;
        let db = cfg.data_dir.join(DB_FILE);
        let store = SqliteStore::open(&db)
            .await
            .with_context(|| format!("cannot open store {}", db.display()))?;
        let store: Arc<dyn Store> = Arc::new(store);

        let canary = store.get_meta(CANARY_KEY).await?;
        let (key, source) =
            custody::load_master_key(&cfg.data_dir, master_key_env, canary.is_none())?;
        let custody = Custody::from_key(&key);
        drop(key);
        match canary {
            Some(c) if custody.check_canary(&c) => {}
            Some(_) => bail!(
                "master key does not match this data directory (canary does not decrypt); \
                 refusing to start: set the right {} or restore {}",
                custody::MASTER_KEY_ENV,
                cfg.data_dir.join(custody::MASTER_KEY_FILE).display()
            ),
            None => {
                store
                    .insert_meta(CANARY_KEY, &custody.seal_canary())
                    .await?;
            }
        }
        if source == KeySource::Created {
            tracing::info!(path = %cfg.data_dir.join(custody::MASTER_KEY_FILE).display(), "created master key");
        }

        let metrics = Metrics::new();
        let now = clock.now();
        let ca = CaManager::init(&cfg, store.as_ref(), &custody, now)
            .await
            .context("CA setup")?;
        let sync = SyncHub::new(store.state_version().await?);
        let app = Arc::new(App {
            cfg,
            store,
            custody,
            clock,
            metrics,
            ca,
            sync,
        });
        app.refresh_gauges().await?;
        // The proxy state is read from the store once here; changes are then applied row by row.
        crate::keys::sync::current_state(&app)
            .await
            .context("loading the proxy state (keys, revocations)")?;
        Ok(app)
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn trust_domain(&self) -> &str {
        &self.cfg.trust_domain
    }

    /// Records that a committed change produced a new proxy-state version.
    pub fn published(&self, version: u64) {
        self.sync.publish(version);
    }

    pub fn audited(&self, n: usize) {
        self.metrics.audit_events.inc_by(n as u64);
    }

    /// Appends stand-alone audit events (those not part of a larger transaction).
    pub async fn audit(&self, events: Vec<NewEvent>) -> StoreResult<()> {
        let n = events.len();
        self.store.append_audit(events).await?;
        self.audited(n);
        Ok(())
    }

    pub async fn refresh_gauges(&self) -> StoreResult<()> {
        self.metrics
            .active_agents
            .set(self.store.count_active_agents().await?);
        Ok(())
    }

    /// One pass of every time-driven owner: CA rotation stages, HMAC key rotation, expiry of
    /// unconfirmed enrollments. Driven by the background task or directly by tests.
    pub async fn tick(&self) -> anyhow::Result<()> {
        crate::ca::tick(self).await.context("CA rotation")?;
        crate::keys::tick(self).await.context("HMAC key rotation")?;
        crate::enroll::expire_unconfirmed(self)
            .await
            .context("unconfirmed enrollments")?;
        self.refresh_gauges().await?;
        Ok(())
    }

    /// Runs `tick` every `controller.interval` until the process ends.
    pub fn spawn_controller(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let app = Arc::clone(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(app.cfg.controller_interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = app.tick().await {
                    tracing::error!(error = format!("{e:#}"), "controller pass failed");
                }
            }
        })
    }
}
