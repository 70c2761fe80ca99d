//! The proxy state held in memory. Loaded once from the store, then brought forward with the
//! rows the store reports as written since the version held (`Store::proxy_state_rows`), so a
//! change costs the changed rows: no full table read, no re-decryption of unchanged secrets and
//! no re-serialisation of unchanged keys (each key's JSON is kept and the body is spliced).
//!
//! The mirror only learns of a change by reading committed rows, so it is never ahead of the
//! store, and a change committed by another replica on a shared store arrives the same way.

use std::collections::BTreeMap;
use std::io::Write;

use bytes::Bytes;
use zen_trust::spiffe::SpiffeId;
use zeroize::Zeroizing;

use crate::custody::Custody;
use crate::store::StateRows;

/// One key as it appears in the state: its end (to drop it once expired) and its JSON, which
/// holds the secret (hence zeroized on drop).
struct MirrorKey {
    not_after: i64,
    json: Zeroizing<Vec<u8>>,
}

/// Keys, revocations and policy version at one state version; ordered as the store lists them.
#[derive(Default)]
pub struct StateMirror {
    /// `None` until the first load.
    version: Option<u64>,
    policy_version: u64,
    keys: BTreeMap<String, MirrorKey>,
    revoked_ids: BTreeMap<String, SpiffeId>,
    revoked_serials: BTreeMap<String, i64>,
}

impl std::fmt::Debug for StateMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMirror")
            .field("version", &self.version)
            .field("keys", &self.keys.len())
            .field("revoked_ids", &self.revoked_ids.len())
            .field("revoked_serials", &self.revoked_serials.len())
            .finish()
    }
}

/// A rendered `ProxyState` body.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub version: u64,
    pub body: Bytes,
    pub keys: usize,
    /// The earliest end of a key or revoked serial in the body: the body is stale from then on.
    pub valid_until: i64,
}

impl StateMirror {
    /// The state version held; `None` before the first load.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// Applies a snapshot read with `since = self.version()`. Every row is decoded before
    /// anything changes, so an undecryptable or corrupt row leaves the mirror as it was.
    pub fn apply(&mut self, rows: StateRows, custody: &Custody) -> anyhow::Result<()> {
        if let Some(held) = self.version {
            anyhow::ensure!(
                rows.version >= held,
                "store state version {} is behind the mirror's {held}",
                rows.version
            );
        }
        let mut keys = Vec::with_capacity(rows.keys.len());
        for k in &rows.keys {
            let entry = super::to_entry(custody, k)?;
            let json = Zeroizing::new(serde_json::to_vec(&entry)?);
            keys.push((
                k.key_id.clone(),
                MirrorKey {
                    not_after: k.not_after,
                    json,
                },
            ));
        }
        let mut ids = Vec::with_capacity(rows.revoked_ids.len());
        for id in rows.revoked_ids {
            let parsed = SpiffeId::parse(&id)
                .map_err(|e| anyhow::anyhow!("stored revoked id `{id}`: {e}"))?;
            ids.push((id, parsed));
        }
        self.keys.extend(keys);
        self.revoked_ids.extend(ids);
        self.revoked_serials.extend(
            rows.revoked_serials
                .into_iter()
                .map(|r| (r.serial, r.not_after)),
        );
        self.version = Some(rows.version);
        self.policy_version = rows.policy_version;
        Ok(())
    }

    /// The `ProxyState` JSON at `now`, byte for byte what `serde_json::to_vec(&ProxyState)`
    /// gives for the same content (a unit test holds it to that). Keys and serials that have
    /// ended are dropped from memory: a later change to such a row comes back as a changed row.
    pub fn render(
        &mut self,
        now: i64,
        trust_domain: &str,
        bundle_pem: &str,
    ) -> anyhow::Result<Rendered> {
        let version = self
            .version
            .ok_or_else(|| anyhow::anyhow!("proxy state rendered before it was loaded"))?;
        self.keys.retain(|_, k| k.not_after > now);
        self.revoked_serials.retain(|_, not_after| *not_after > now);
        let valid_until = self
            .keys
            .values()
            .map(|k| k.not_after)
            .chain(self.revoked_serials.values().copied())
            .min()
            .unwrap_or(i64::MAX);

        let key_bytes: usize = self.keys.values().map(|k| k.json.len() + 1).sum();
        let mut out = Vec::with_capacity(key_bytes + 2 * bundle_pem.len() + 64 * 1024);
        write!(out, "{{\"version\":{version},\"trust_domain\":")?;
        serde_json::to_writer(&mut out, trust_domain)?;
        out.extend_from_slice(b",\"trust_bundle_pem\":");
        serde_json::to_writer(&mut out, bundle_pem)?;
        out.extend_from_slice(b",\"keys\":[");
        for (i, k) in self.keys.values().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&k.json);
        }
        out.extend_from_slice(b"],\"revoked_spiffe_ids\":");
        serde_json::to_writer(&mut out, &self.revoked_ids.values().collect::<Vec<_>>())?;
        out.extend_from_slice(b",\"revoked_serials\":");
        serde_json::to_writer(&mut out, &self.revoked_serials.keys().collect::<Vec<_>>())?;
        write!(out, ",\"policy_version\":{}}}", self.policy_version)?;
        Ok(Rendered {
            version,
            body: Bytes::from(out),
            keys: self.keys.len(),
            valid_until,
        })
    }
}

#[cfg(test)]
mod tests {
    use zen_trust::keys::ProxyState;

    use super::*;
    use crate::store::{KeyState, RevokedSerial};

    const TD: &str = "zen.local";

    fn custody() -> Custody {
        Custody::from_key(&[7u8; 32])
    }

    fn key(c: &Custody, n: u32, not_after: i64, status: KeyState) -> crate::store::KeyRecord {
        let (mut k, _) = super::super::issue(
            c,
            &format!("spiffe://{TD}/cluster/c1/agent/a{n}"),
            100,
            1000,
        );
        k.not_after = not_after;
        k.status = status;
        k
    }

    fn serial(s: &str, not_after: i64) -> RevokedSerial {
        RevokedSerial {
            serial: s.into(),
            spiffe_id: format!("spiffe://{TD}/cluster/c1/agent/a1"),
            not_after,
        }
    }

    /// What the state must be: the rows still valid at `now`, serialised through `ProxyState`.
    fn expected(c: &Custody, rows: &StateRows, now: i64, bundle: &str) -> Vec<u8> {
        let mut keys: Vec<_> = rows.keys.iter().filter(|k| k.not_after > now).collect();
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        let mut ids = rows.revoked_ids.clone();
        ids.sort();
        let mut serials: Vec<_> = rows
            .revoked_serials
            .iter()
            .filter(|s| s.not_after > now)
            .map(|s| s.serial.clone())
            .collect();
        serials.sort();
        serde_json::to_vec(&ProxyState {
            version: rows.version,
            trust_domain: TD.into(),
            trust_bundle_pem: bundle.into(),
            keys: keys
                .iter()
                .map(|k| super::super::to_entry(c, k).unwrap())
                .collect(),
            revoked_spiffe_ids: ids.iter().map(|i| SpiffeId::parse(i).unwrap()).collect(),
            revoked_serials: serials,
            policy_version: rows.policy_version,
        })
        .unwrap()
    }

    #[test]
    fn render_is_byte_for_byte_the_serialised_proxy_state_and_follows_changes() {
        let c = custody();
        let bundle = "-----BEGIN CERTIFICATE-----\nMII\"\\x\n-----END CERTIFICATE-----\n";
        let k1 = key(&c, 1, 2000, KeyState::Active);
        let k2 = key(&c, 2, 1500, KeyState::Retiring);
        let k3 = key(&c, 3, 900, KeyState::Revoked);
        let mut all = StateRows {
            version: 5,
            policy_version: 2,
            keys: vec![k1.clone(), k2.clone(), k3.clone()],
            revoked_ids: vec![format!("spiffe://{TD}/cluster/c1/agent/a3")],
            revoked_serials: vec![serial("0b", 3000), serial("0a", 800)],
        };
        let mut m = StateMirror::default();
        assert!(m.render(0, TD, bundle).is_err(), "nothing loaded yet");
        m.apply(all.clone(), &c).unwrap();
        let r = m.render(500, TD, bundle).unwrap();
        assert_eq!(r.body.as_ref(), expected(&c, &all, 500, bundle).as_slice());
        assert_eq!((r.version, r.keys, r.valid_until), (5, 3, 800));

        // A change: k2 revoked, k4 issued, a2 revoked with a serial. Only those rows arrive.
        let mut k2r = k2.clone();
        k2r.status = KeyState::Revoked;
        let k4 = key(&c, 4, 5000, KeyState::Active);
        let delta = StateRows {
            version: 6,
            policy_version: 2,
            keys: vec![k2r.clone(), k4.clone()],
            revoked_ids: vec![format!("spiffe://{TD}/cluster/c1/agent/a2")],
            revoked_serials: vec![serial("0c", 4000)],
        };
        m.apply(delta.clone(), &c).unwrap();
        all.version = 6;
        all.keys = vec![k1, k2r, k3, k4];
        all.revoked_ids.extend(delta.revoked_ids);
        all.revoked_serials.extend(delta.revoked_serials);
        // Time passes: k3 and serial 0a end and leave the body.
        let r = m.render(950, TD, bundle).unwrap();
        assert_eq!(r.body.as_ref(), expected(&c, &all, 950, bundle).as_slice());
        assert_eq!((r.version, r.keys, r.valid_until), (6, 3, 1500));
        let parsed: ProxyState = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(parsed.revoked_serials, ["0b", "0c"]);
    }

    #[test]
    fn a_row_that_does_not_decrypt_leaves_the_mirror_unchanged() {
        let c = custody();
        let mut m = StateMirror::default();
        m.apply(
            StateRows {
                version: 3,
                policy_version: 1,
                keys: vec![key(&c, 1, 2000, KeyState::Active)],
                ..Default::default()
            },
            &c,
        )
        .unwrap();
        let before = m.render(0, TD, "").unwrap().body;
        let mut bad = key(&c, 2, 2000, KeyState::Active);
        bad.secret_enc[20] ^= 1;
        let delta = StateRows {
            version: 4,
            policy_version: 1,
            keys: vec![key(&c, 3, 2000, KeyState::Active), bad],
            revoked_ids: vec![format!("spiffe://{TD}/cluster/c1/agent/a9")],
            ..Default::default()
        };
        assert!(m.apply(delta, &c).is_err());
        assert_eq!(m.version(), Some(3));
        assert_eq!(m.render(0, TD, "").unwrap().body, before);
        let behind = StateRows {
            version: 2,
            ..Default::default()
        };
        assert!(m.apply(behind, &c).is_err(), "a store behind the mirror");
    }
}
