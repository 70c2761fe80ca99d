//! HMAC key sets (what a proxy verifies against) and the serde types that
//! carry keys between control, proxies and agents (DESIGN §5, §7).

use std::collections::HashMap;
use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::secret::{Secret, MIN_HMAC_SECRET_LEN};
use crate::spiffe::SpiffeId;
use crate::time::UnixTime;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Lifecycle state of an HMAC key. `Retiring` keys still verify (rotation
/// grace window); `Revoked` keys never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Retiring,
    Revoked,
}

/// One key of a key set, as written in a key-set file or the proxy state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySetEntry {
    pub key_id: String,
    pub secret: Secret,
    pub owner: SpiffeId,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    pub status: KeyStatus,
}

/// The file format (JSON or YAML) of a proxy key set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySetFile {
    pub version: u64,
    pub keys: Vec<KeySetEntry>,
}

impl KeySetFile {
    /// Parses the JSON form. (YAML callers use `serde_yaml` on the same type.)
    pub fn from_json(text: &str) -> Result<KeySetFile, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Why a key set was refused. Never contains secret bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("key set has an entry with an empty key_id")]
    EmptyKeyId,
    #[error("key id {0:?} appears more than once")]
    DuplicateKeyId(String),
    #[error("key {key_id:?}: secret is {len} bytes, at least {MIN_HMAC_SECRET_LEN} are required")]
    SecretTooShort { key_id: String, len: usize },
    #[error("key {key_id:?}: not_before must be earlier than not_after")]
    BadValidity { key_id: String },
}

/// Why a key may not verify a signature right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUnusable {
    Revoked,
    /// Outside `not_before..=not_after`.
    OutsideValidity,
}

/// A verification-ready key: metadata plus the HMAC state precomputed from the
/// secret, so each request only clones it (no key schedule on the hot path).
#[derive(Clone)]
pub struct KeyEntry {
    key_id: String,
    owner: SpiffeId,
    not_before: UnixTime,
    not_after: UnixTime,
    status: KeyStatus,
    mac: HmacSha256,
}

impl KeyEntry {
    pub fn new(
        key_id: impl Into<String>,
        secret: &Secret,
        owner: SpiffeId,
        not_before: UnixTime,
        not_after: UnixTime,
        status: KeyStatus,
    ) -> KeyEntry {
        KeyEntry {
            key_id: key_id.into(),
            owner,
            not_before,
            not_after,
            status,
            mac: hmac_for(secret),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn owner(&self) -> &SpiffeId {
        &self.owner
    }

    pub fn not_before(&self) -> UnixTime {
        self.not_before
    }

    pub fn not_after(&self) -> UnixTime {
        self.not_after
    }

    pub fn status(&self) -> KeyStatus {
        self.status
    }

    /// Whether the key may verify a signature at `now`.
    pub fn usable_at(&self, now: UnixTime) -> Result<(), KeyUnusable> {
        if self.status == KeyStatus::Revoked {
            return Err(KeyUnusable::Revoked);
        }
        if now < self.not_before || now > self.not_after {
            return Err(KeyUnusable::OutsideValidity);
        }
        Ok(())
    }

    /// A fresh MAC instance keyed with this key (cheap clone of the
    /// precomputed inner/outer state).
    pub(crate) fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }
}

pub(crate) fn hmac_for(secret: &Secret) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail; the fallback keeps
    // the signature total without a panic path.
    HmacSha256::new_from_slice(secret.expose())
        .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()))
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("key_id", &self.key_id)
            .field("owner", &self.owner)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Finds the key a signature names by its `keyid`.
pub trait KeyLookup {
    fn lookup(&self, key_id: &str) -> Option<&KeyEntry>;
}

/// A validated, verification-ready key set.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    version: u64,
    keys: HashMap<String, KeyEntry, ahash::RandomState>,
}

impl KeySet {
    pub fn from_file(file: KeySetFile) -> Result<KeySet, KeySetError> {
        Self::from_entries(file.version, &file.keys)
    }

    /// Validates entries (unique non-empty ids, secrets ≥ 32 bytes,
    /// not_before < not_after) and precomputes each key's HMAC state.
    pub fn from_entries(version: u64, entries: &[KeySetEntry]) -> Result<KeySet, KeySetError> {
        let mut keys = HashMap::with_capacity_and_hasher(entries.len(), ahash::RandomState::new());
        for e in entries {
            if e.key_id.is_empty() {
                return Err(KeySetError::EmptyKeyId);
            }
            if e.secret.len() < MIN_HMAC_SECRET_LEN {
                return Err(KeySetError::SecretTooShort {
                    key_id: e.key_id.clone(),
                    len: e.secret.len(),
                });
            }
            if e.not_before >= e.not_after {
                return Err(KeySetError::BadValidity {
                    key_id: e.key_id.clone(),
                });
            }
            if keys.contains_key(&e.key_id) {
                return Err(KeySetError::DuplicateKeyId(e.key_id.clone()));
            }
            let entry = KeyEntry::new(
                e.key_id.clone(),
                &e.secret,
                e.owner.clone(),
                e.not_before,
                e.not_after,
                e.status,
            );
            keys.insert(e.key_id.clone(), entry);
        }
        Ok(KeySet { version, keys })
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, key_id: &str) -> Option<&KeyEntry> {
        self.keys.get(key_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &KeyEntry> {
        self.keys.values()
    }
}

impl KeyLookup for KeySet {
    fn lookup(&self, key_id: &str) -> Option<&KeyEntry> {
        self.get(key_id)
    }
}

/// A lookup holding exactly one key, e.g. an enrollment token whose owner is
/// the SPIFFE ID the token was issued for.
#[derive(Clone, Debug)]
pub struct SingleKey(KeyEntry);

impl SingleKey {
    pub fn new(
        key_id: impl Into<String>,
        secret: &Secret,
        owner: SpiffeId,
        not_before: UnixTime,
        not_after: UnixTime,
    ) -> SingleKey {
        SingleKey(KeyEntry::new(
            key_id,
            secret,
            owner,
            not_before,
            not_after,
            KeyStatus::Active,
        ))
    }

    pub fn from_entry(entry: KeyEntry) -> SingleKey {
        SingleKey(entry)
    }

    pub fn entry(&self) -> &KeyEntry {
        &self.0
    }
}

impl KeyLookup for SingleKey {
    fn lookup(&self, key_id: &str) -> Option<&KeyEntry> {
        (self.0.key_id == key_id).then_some(&self.0)
    }
}

/// `hmac.json` as written by `zen-agent enroll` (DESIGN §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HmacKeyFile {
    pub key_id: String,
    pub secret: Secret,
    pub not_after: UnixTime,
}

/// The enrollment bundle returned by `POST /enroll/v1/request` (DESIGN §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentBundle {
    pub spiffe_id: SpiffeId,
    pub svid_chain_pem: String,
    pub trust_bundle_pem: String,
    pub hmac: HmacKeyFile,
    pub renew_after: UnixTime,
    pub expires_at: UnixTime,
    pub enrollment_id: String,
}

/// Body of `GET /proxy/v1/state` (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyState {
    pub version: u64,
    pub trust_domain: String,
    pub trust_bundle_pem: String,
    pub keys: Vec<KeySetEntry>,
    pub revoked_spiffe_ids: Vec<SpiffeId>,
    pub revoked_serials: Vec<String>,
    pub policy_version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> SpiffeId {
        SpiffeId::parse("spiffe://zen.local/cluster/c1/agent/a1").unwrap()
    }

    fn entry(id: &str, secret: Secret) -> KeySetEntry {
        KeySetEntry {
            key_id: id.into(),
            secret,
            owner: owner(),
            not_before: UnixTime(1000),
            not_after: UnixTime(2000),
            status: KeyStatus::Active,
        }
    }

    #[test]
    fn key_set_json_round_trip_and_lookup() {
        let file = KeySetFile {
            version: 7,
            keys: vec![
                entry("k1", Secret::generate()),
                entry("k2", Secret::generate()),
            ],
        };
        let json = serde_json::to_string(&file).unwrap();
        assert!(json.contains("\"status\":\"active\""));
        assert!(json.contains("\"not_before\":\"1970-01-01T00:16:40Z\""));
        let back = KeySetFile::from_json(&json).unwrap();
        assert_eq!(back, file);
        let set = KeySet::from_file(back).unwrap();
        assert_eq!(set.version(), 7);
        assert_eq!(set.len(), 2);
        assert_eq!(set.lookup("k2").unwrap().owner(), &owner());
        assert!(set.lookup("k3").is_none());
    }

    #[test]
    fn key_set_yaml_parses() {
        let yaml = format!(
            "version: 3\nkeys:\n  - key_id: k1\n    secret: {}\n    owner: spiffe://zen.local/proxy/p1\n    not_before: 2026-01-01T00:00:00Z\n    not_after: 2027-01-01T00:00:00Z\n    status: retiring\n",
            Secret::generate().to_base64()
        );
        let file: KeySetFile = serde_yaml::from_str(&yaml).unwrap();
        let set = KeySet::from_file(file).unwrap();
        assert_eq!(set.get("k1").unwrap().status(), KeyStatus::Retiring);
    }

    #[test]
    fn key_set_refuses_bad_entries() {
        let s = Secret::generate();
        let dup = KeySetFile {
            version: 1,
            keys: vec![entry("k", s.clone()), entry("k", s.clone())],
        };
        assert_eq!(
            KeySet::from_file(dup).unwrap_err(),
            KeySetError::DuplicateKeyId("k".into())
        );
        let short = KeySetFile {
            version: 1,
            keys: vec![entry("k", Secret::from_bytes(vec![1; 31]))],
        };
        assert!(matches!(
            KeySet::from_file(short).unwrap_err(),
            KeySetError::SecretTooShort { len: 31, .. }
        ));
        let mut bad = entry("k", s.clone());
        bad.not_after = bad.not_before;
        assert!(matches!(
            KeySet::from_entries(1, &[bad]).unwrap_err(),
            KeySetError::BadValidity { .. }
        ));
        assert_eq!(
            KeySet::from_entries(1, &[entry("", s)]).unwrap_err(),
            KeySetError::EmptyKeyId
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = format!(
            r#"{{"version":1,"keys":[{{"key_id":"k","secret":"{}","owner":"spiffe://a/b","not_before":"2026-01-01T00:00:00Z","not_after":"2027-01-01T00:00:00Z","status":"active","extra":1}}]}}"#,
            Secret::generate().to_base64()
        );
        assert!(KeySetFile::from_json(&json).is_err());
        let bad_status = json
            .replace(",\"extra\":1", "")
            .replace("active", "expired");
        assert!(KeySetFile::from_json(&bad_status).is_err());
    }

    #[test]
    fn usable_at_checks_status_and_window() {
        let s = Secret::generate();
        let k = KeyEntry::new(
            "k",
            &s,
            owner(),
            UnixTime(10),
            UnixTime(20),
            KeyStatus::Retiring,
        );
        assert_eq!(k.usable_at(UnixTime(10)), Ok(()));
        assert_eq!(k.usable_at(UnixTime(20)), Ok(()));
        assert_eq!(k.usable_at(UnixTime(9)), Err(KeyUnusable::OutsideValidity));
        assert_eq!(k.usable_at(UnixTime(21)), Err(KeyUnusable::OutsideValidity));
        let r = KeyEntry::new(
            "k",
            &s,
            owner(),
            UnixTime(10),
            UnixTime(20),
            KeyStatus::Revoked,
        );
        assert_eq!(r.usable_at(UnixTime(15)), Err(KeyUnusable::Revoked));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = Secret::generate();
        let e = entry("k", s.clone());
        assert!(!format!("{e:?}").contains(&s.to_base64()));
        let set = KeySet::from_entries(1, &[e]).unwrap();
        assert!(!format!("{set:?}").contains(&s.to_base64()));
    }

    #[test]
    fn single_key_matches_only_its_id() {
        let s = Secret::generate();
        let k = SingleKey::new("tok-1", &s, owner(), UnixTime(0), UnixTime(10));
        assert!(k.lookup("tok-1").is_some());
        assert!(k.lookup("tok-2").is_none());
    }

    #[test]
    fn bundle_and_hmac_file_round_trip() {
        let hmac = HmacKeyFile {
            key_id: "k1".into(),
            secret: Secret::generate(),
            not_after: UnixTime(1_795_701_600),
        };
        let json = serde_json::to_string(&hmac).unwrap();
        assert!(json.contains("\"not_after\":\"2026-11-26T14:00:00Z\""));
        assert_eq!(serde_json::from_str::<HmacKeyFile>(&json).unwrap(), hmac);
        let bundle = EnrollmentBundle {
            spiffe_id: owner(),
            svid_chain_pem: "pem".into(),
            trust_bundle_pem: "pem".into(),
            hmac,
            renew_after: UnixTime(1),
            expires_at: UnixTime(2),
            enrollment_id: "e1".into(),
        };
        let json = serde_json::to_string(&bundle).unwrap();
        assert_eq!(
            serde_json::from_str::<EnrollmentBundle>(&json).unwrap(),
            bundle
        );
        let state = ProxyState {
            version: 4,
            trust_domain: "zen.local".into(),
            trust_bundle_pem: "pem".into(),
            keys: vec![entry("k", Secret::generate())],
            revoked_spiffe_ids: vec![owner()],
            revoked_serials: vec!["0a1b".into()],
            policy_version: 2,
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<ProxyState>(&json).unwrap(), state);
    }
}
