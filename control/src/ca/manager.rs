//! CA lifecycle: first-start creation (or import), and rotation in three stages — the new CA
//! joins the trust bundle (`pending`), issuance switches to it after the propagation delay
//! (`active`, old one `retiring`), and the old CA leaves the bundle once every SVID it signed
//! has expired (`retired`).

use std::sync::{Arc, RwLock};

use anyhow::Context;
use serde_json::json;
use zeroize::Zeroizing;

use super::{generate_ca, random_id, SigningCa};
use crate::app::App;
use crate::audit::{AuditKind, NewEvent};
use crate::config::Config;
use crate::custody::Custody;
use crate::store::{CaRecord, CaState, CaTransition, Store};

/// What the rest of the service sees of the CA at one moment.
#[derive(Debug)]
pub struct CaView {
    pub signing: Arc<SigningCa>,
    /// Roots of every CA in the bundle (pending, active, retiring), PEM concatenated.
    pub bundle_pem: String,
    pub cas: Vec<(String, CaState, Option<i64>, Option<i64>)>,
}

#[derive(Debug)]
pub struct CaManager {
    view: RwLock<Arc<CaView>>,
}

fn aad(id: &str) -> String {
    format!("ca:{id}")
}

fn build_view(custody: &Custody, cas: &[CaRecord]) -> anyhow::Result<CaView> {
    let active = cas
        .iter()
        .find(|c| c.state == CaState::Active)
        .context("no active CA in the store")?;
    let key = custody
        .open(&aad(&active.id), &active.inter_key_enc)
        .context("CA key")?;
    let key_pem =
        Zeroizing::new(String::from_utf8(key.to_vec()).context("CA key is not PEM text")?);
    let signing = SigningCa::load(&active.id, &active.inter_cert_pem, &key_pem)?;
    let mut bundle_pem = String::new();
    for c in cas.iter().filter(|c| c.state != CaState::Retired) {
        bundle_pem.push_str(c.root_cert_pem.trim_end());
        bundle_pem.push('\n');
    }
    Ok(CaView {
        signing: Arc::new(signing),
        bundle_pem,
        cas: cas
            .iter()
            .map(|c| (c.id.clone(), c.state, c.activate_at, c.remove_at))
            .collect(),
    })
}

fn import(cfg: &Config, custody: &Custody, now: i64) -> anyhow::Result<CaRecord> {
    let imp = cfg.ca_import.as_ref().expect("checked by caller");
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .with_context(|| format!("ca.import: cannot read {}", p.display()))
    };
    let root = read(&imp.root_cert)?;
    let inter = read(&imp.intermediate_cert)?;
    let key = Zeroizing::new(read(&imp.intermediate_key)?);
    let id = random_id("ca-");
    // Proves the pair is usable before it is stored.
    SigningCa::load(&id, &inter, &key).context("ca.import: intermediate certificate/key")?;
    Ok(CaRecord {
        inter_key_enc: custody.seal(&aad(&id), key.as_bytes()),
        id,
        created_at: now,
        state: CaState::Active,
        root_cert_pem: root,
        inter_cert_pem: inter,
        activate_at: Some(now),
        remove_at: None,
    })
}

fn generated(
    cfg: &Config,
    custody: &Custody,
    now: i64,
    state: CaState,
) -> anyhow::Result<CaRecord> {
    let g = generate_ca(
        &cfg.trust_domain,
        now,
        cfg.ca_root_ttl,
        cfg.ca_intermediate_ttl,
    )?;
    Ok(CaRecord {
        inter_key_enc: custody.seal(&aad(&g.id), g.inter_key_pem.as_bytes()),
        id: g.id,
        created_at: now,
        state,
        root_cert_pem: g.root_cert_pem,
        inter_cert_pem: g.inter_cert_pem,
        activate_at: None,
        remove_at: None,
    })
}

/// Writes the bundle atomically (temp file + rename) so readers never see half a file.
fn write_bundle(path: &std::path::Path, pem: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, pem).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl CaManager {
    pub async fn init(
        cfg: &Config,
        store: &dyn Store,
        custody: &Custody,
        now: i64,
    ) -> anyhow::Result<Self> {
        let mut cas = store.list_cas().await?;
        if cas.is_empty() {
            let (rec, how) = if cfg.ca_import.is_some() {
                (import(cfg, custody, now)?, "imported")
            } else {
                let mut r = generated(cfg, custody, now, CaState::Active)?;
                r.activate_at = Some(now);
                (r, "generated")
            };
            let ev = NewEvent::new(
                now,
                AuditKind::CaCreate,
                "controller",
                rec.id.clone(),
                json!({"ca_id": rec.id, "source": how, "state": "active"}),
            );
            store.insert_ca(rec, vec![ev]).await?;
            cas = store.list_cas().await?;
        }
        let view = build_view(custody, &cas)?;
        if let Some(p) = &cfg.trust_bundle_file {
            write_bundle(p, &view.bundle_pem)?;
        }
        Ok(Self {
            view: RwLock::new(Arc::new(view)),
        })
    }

    pub fn view(&self) -> Arc<CaView> {
        self.view.read().expect("CA view lock").clone()
    }

    async fn reload(
        &self,
        cfg: &Config,
        store: &dyn Store,
        custody: &Custody,
    ) -> anyhow::Result<()> {
        let cas = store.list_cas().await?;
        let v = Arc::new(build_view(custody, &cas)?);
        if let Some(p) = &cfg.trust_bundle_file {
            write_bundle(p, &v.bundle_pem)?;
        }
        *self.view.write().expect("CA view lock") = v;
        Ok(())
    }
}

/// `zen-control ca rotate`: a new CA joins the bundle now and starts issuing after the
/// propagation delay. Refused while a previous rotation is still propagating.
pub async fn rotate(app: &App, actor: &str) -> anyhow::Result<serde_json::Value> {
    let now = app.now();
    let cas = app.store.list_cas().await?;
    if cas.iter().any(|c| c.state == CaState::Pending) {
        anyhow::bail!("a CA rotation is already in progress (a pending CA exists)");
    }
    let mut rec = generated(&app.cfg, &app.custody, now, CaState::Pending)?;
    let activate_at = now + app.cfg.ca_propagation_delay.as_secs() as i64;
    rec.activate_at = Some(activate_at);
    let id = rec.id.clone();
    let ev = NewEvent::new(
        now,
        AuditKind::CaRotate,
        actor,
        id.clone(),
        json!({"new_ca_id": id, "activate_at": activate_at}),
    );
    let v = app.store.insert_ca(rec, vec![ev]).await?;
    app.audited(1);
    app.ca
        .reload(&app.cfg, app.store.as_ref(), &app.custody)
        .await?;
    app.published(v);
    supersede_stale_bundle(app).await?;
    Ok(json!({"new_ca_id": id, "activate_at": crate::clock::rfc3339(activate_at)}))
}

/// Advances rotation stages that are due.
pub async fn tick(app: &App) -> anyhow::Result<()> {
    let now = app.now();
    let cas = app.store.list_cas().await?;
    let mut changes = Vec::new();
    let mut events = Vec::new();
    if let Some(p) = cas
        .iter()
        .find(|c| c.state == CaState::Pending && c.activate_at.is_some_and(|t| t <= now))
    {
        let remove_at = now + app.cfg.longest_svid_ttl().as_secs() as i64;
        for old in cas.iter().filter(|c| c.state == CaState::Active) {
            changes.push(CaTransition {
                id: old.id.clone(),
                state: CaState::Retiring,
                activate_at: old.activate_at,
                remove_at: Some(remove_at),
            });
            events.push(NewEvent::new(
                now,
                AuditKind::CaRetire,
                "controller",
                old.id.clone(),
                json!({"ca_id": old.id, "stage": "retiring", "remove_at": remove_at}),
            ));
        }
        changes.push(CaTransition {
            id: p.id.clone(),
            state: CaState::Active,
            activate_at: Some(now),
            remove_at: None,
        });
        events.push(NewEvent::new(
            now,
            AuditKind::CaActivate,
            "controller",
            p.id.clone(),
            json!({"ca_id": p.id}),
        ));
    }
    for r in cas
        .iter()
        .filter(|c| c.state == CaState::Retiring && c.remove_at.is_some_and(|t| t <= now))
    {
        changes.push(CaTransition {
            id: r.id.clone(),
            state: CaState::Retired,
            activate_at: r.activate_at,
            remove_at: r.remove_at,
        });
        events.push(NewEvent::new(
            now,
            AuditKind::CaRetire,
            "controller",
            r.id.clone(),
            json!({"ca_id": r.id, "stage": "removed_from_bundle"}),
        ));
    }
    if changes.is_empty() {
        return Ok(());
    }
    let n = events.len();
    let v = app.store.transition_cas(changes, events).await?;
    app.audited(n);
    app.ca
        .reload(&app.cfg, app.store.as_ref(), &app.custody)
        .await?;
    app.published(v);
    supersede_stale_bundle(app).await?;
    Ok(())
}

/// The CA change committed (version v) before this process reloaded its CA view, so a proxy
/// state built in between carries version v with the old bundle — and a proxy that got it would
/// not ask again until something else changes. A version bump after the reload supersedes it.
async fn supersede_stale_bundle(app: &App) -> anyhow::Result<()> {
    let v = app.store.bump_state_version().await?;
    app.published(v);
    Ok(())
}
