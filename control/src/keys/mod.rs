//! HMAC keys: issuance, the rotation controller, and their conversion to the key-set entries
//! proxies verify with. A key lives `hmac.key_lifetime`; `hmac.grace` before it ends a successor
//! is issued and both are valid until the old one's end.

mod mirror;
pub mod sync;

use std::collections::BTreeMap;

use serde_json::json;
use zen_trust::keys::{HmacKeyFile, KeySetEntry, KeyStatus};
use zen_trust::secret::Secret;
use zen_trust::spiffe::SpiffeId;
use zen_trust::time::UnixTime;

use crate::app::App;
use crate::audit::{AuditKind, NewEvent};
use crate::custody::{Custody, CustodyError};
use crate::store::{KeyRecord, KeyRotation, KeyState};

pub fn aad(key_id: &str) -> String {
    format!("hmac:{key_id}")
}

pub fn new_key_id() -> String {
    crate::ca::random_id("k-")
}

/// A fresh key for `owner`, sealed for storage; the plaintext secret is returned alongside.
pub fn issue(custody: &Custody, owner: &str, now: i64, lifetime_secs: i64) -> (KeyRecord, Secret) {
    let secret = Secret::generate();
    let key_id = new_key_id();
    let rec = KeyRecord {
        secret_enc: custody.seal(&aad(&key_id), secret.expose()),
        key_id,
        owner: owner.to_string(),
        not_before: now,
        not_after: now + lifetime_secs,
        status: KeyState::Active,
        created_at: now,
    };
    (rec, secret)
}

pub fn open_secret(custody: &Custody, k: &KeyRecord) -> Result<Secret, CustodyError> {
    let plain = custody.open(&aad(&k.key_id), &k.secret_enc)?;
    Ok(Secret::from_bytes(plain.to_vec()))
}

pub fn status(s: KeyState) -> KeyStatus {
    match s {
        KeyState::Active => KeyStatus::Active,
        KeyState::Retiring => KeyStatus::Retiring,
        KeyState::Revoked => KeyStatus::Revoked,
    }
}

pub fn to_entry(custody: &Custody, k: &KeyRecord) -> anyhow::Result<KeySetEntry> {
    Ok(KeySetEntry {
        key_id: k.key_id.clone(),
        secret: open_secret(custody, k)?,
        owner: SpiffeId::parse(&k.owner)
            .map_err(|e| anyhow::anyhow!("stored key owner `{}`: {e}", k.owner))?,
        not_before: UnixTime(k.not_before),
        not_after: UnixTime(k.not_after),
        status: status(k.status),
    })
}

pub fn to_file(custody: &Custody, k: &KeyRecord) -> Result<HmacKeyFile, CustodyError> {
    Ok(HmacKeyFile {
        key_id: k.key_id.clone(),
        secret: open_secret(custody, k)?,
        not_after: UnixTime(k.not_after),
    })
}

/// Plans rotation for one owner's keys (all non-revoked, unexpired). `force` rotates now and
/// shortens the old keys to the grace window.
fn plan_owner(
    app: &App,
    owner: &str,
    keys: &[&KeyRecord],
    now: i64,
    force: bool,
    actor: &str,
    rot: &mut KeyRotation,
) {
    let grace = app.cfg.key_grace.as_secs() as i64;
    let lifetime = app.cfg.key_lifetime.as_secs() as i64;
    let Some(newest) = keys.iter().max_by_key(|k| (k.not_after, k.created_at)) else {
        return;
    };
    let due = newest.not_after - grace <= now;
    if !force && !due {
        return;
    }
    let (rec, _secret) = issue(&app.custody, owner, now, lifetime);
    let old_end = if force { now + grace } else { i64::MAX };
    for k in keys {
        rot.retiring.push((k.key_id.clone(), old_end));
    }
    rot.events.push(NewEvent::new(
        now,
        AuditKind::KeyRotate,
        actor,
        owner,
        json!({
            "new_key_id": rec.key_id,
            "not_after": rec.not_after,
            "retiring": keys.iter().map(|k| k.key_id.clone()).collect::<Vec<_>>(),
            "forced": force,
        }),
    ));
    rot.new_keys.push(rec);
}

async fn rotate_where(
    app: &App,
    only: Option<&str>,
    force: bool,
    actor: &str,
) -> anyhow::Result<Vec<String>> {
    let now = app.now();
    let live = app.store.live_keys(now).await?;
    let revoked: std::collections::HashSet<String> =
        app.store.revoked_ids().await?.into_iter().collect();
    let mut by_owner: BTreeMap<&str, Vec<&KeyRecord>> = BTreeMap::new();
    for k in &live {
        if k.status == KeyState::Revoked || revoked.contains(&k.owner) {
            continue;
        }
        if only.is_some_and(|o| o != k.owner) {
            continue;
        }
        by_owner.entry(&k.owner).or_default().push(k);
    }
    let mut rot = KeyRotation::default();
    for (owner, keys) in &by_owner {
        plan_owner(app, owner, keys, now, force, actor, &mut rot);
    }
    let owners: Vec<String> = rot.new_keys.iter().map(|k| k.owner.clone()).collect();
    if rot.new_keys.is_empty() {
        return Ok(owners);
    }
    let n_keys = rot.new_keys.len() as u64;
    let n_ev = rot.events.len();
    let v = app.store.apply_key_rotation(rot).await?;
    app.audited(n_ev);
    app.metrics.key_rotations.inc_by(n_keys);
    app.published(v);
    Ok(owners)
}

/// Controller pass: successors for keys entering their grace window.
pub async fn tick(app: &App) -> anyhow::Result<()> {
    rotate_where(app, None, false, "controller").await?;
    Ok(())
}

/// `zen-control keys rotate [--spiffe-id ID]`.
pub async fn force_rotate(
    app: &App,
    only: Option<&str>,
    actor: &str,
) -> anyhow::Result<Vec<String>> {
    rotate_where(app, only, true, actor).await
}

/// The caller's keys as the agent sees them: the one it signs with now, and the newest valid
/// one if that is different (a rotation is under way).
pub struct KeyPairView<'a> {
    pub current: Option<&'a KeyRecord>,
    pub next: Option<&'a KeyRecord>,
}

pub fn view_for<'a>(keys: &'a [KeyRecord], using: Option<&str>, now: i64) -> KeyPairView<'a> {
    let valid: Vec<&KeyRecord> = keys
        .iter()
        .filter(|k| k.status != KeyState::Revoked && k.not_before <= now && now < k.not_after)
        .collect();
    // A successor always outlives its predecessor (it is issued `grace` before the old key's end,
    // and a forced rotation cuts the old key to the grace window), so rank by the end of validity.
    // Issue times can tie (same second, or a manual clock); key_id only makes a tie deterministic.
    let rank = |k: &&KeyRecord| (k.not_after, k.not_before, k.created_at, k.key_id.clone());
    let newest = valid.iter().copied().max_by_key(rank);
    let current = using
        .and_then(|id| valid.iter().copied().find(|k| k.key_id == id))
        .or_else(|| valid.iter().copied().min_by_key(rank));
    let next = match (current, newest) {
        (Some(c), Some(n)) if c.key_id != n.key_id => Some(n),
        _ => None,
    };
    KeyPairView { current, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, not_before: i64, not_after: i64) -> KeyRecord {
        KeyRecord {
            key_id: id.into(),
            owner: "spiffe://zen.local/cluster/c1/agent/a1".into(),
            secret_enc: Vec::new(),
            not_before,
            not_after,
            status: KeyState::Active,
            created_at: not_before,
        }
    }

    #[test]
    fn successor_is_found_whatever_the_order_when_issue_times_tie() {
        // Forced rotation at t=100: old key cut to the grace window, successor with a full lifetime,
        // both issued in the same second. The store may list either first.
        let old = key("k-zzz", 100, 100 + 3600);
        let new = key("k-aaa", 100, 100 + 86400);
        for keys in [
            vec![old.clone(), new.clone()],
            vec![new.clone(), old.clone()],
        ] {
            let v = view_for(&keys, Some("k-zzz"), 200);
            assert_eq!(v.current.unwrap().key_id, "k-zzz");
            assert_eq!(v.next.unwrap().key_id, "k-aaa");
            let v = view_for(&keys, None, 200);
            assert_eq!(
                v.current.unwrap().key_id,
                "k-zzz",
                "default current is the one ending first"
            );
            assert_eq!(v.next.unwrap().key_id, "k-aaa");
            let v = view_for(&keys, Some("k-aaa"), 200);
            assert!(v.next.is_none(), "the successor has no successor");
        }
    }
}
