//! Everything the request path reads that can change at runtime. Each piece
//! is an `ArcSwap` with exactly one writer (the state source that loads it);
//! readers `load()` once per request or handshake.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use serde::Deserialize;
use zen_trust::{KeySet, KeySetFile, ReplayCache, SpiffeId};

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::metrics::Metrics;
use crate::policy::RouteTable;
use crate::tls::{ServingCert, TrustBundles};

/// Revoked identities (DESIGN §8: "a revoked agent is refused by every proxy").
#[derive(Debug, Default)]
pub struct Revocations {
    pub version: u64,
    spiffe_ids: HashSet<String>,
    serials: HashSet<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationsFile {
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub revoked_spiffe_ids: Vec<SpiffeId>,
    /// Lowercase hex serials without leading zero bytes (as zen-trust prints them).
    #[serde(default)]
    pub revoked_serials: Vec<String>,
}

impl Revocations {
    pub fn from_file(f: RevocationsFile) -> Self {
        Revocations {
            version: f.version,
            spiffe_ids: f
                .revoked_spiffe_ids
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            serials: f
                .revoked_serials
                .iter()
                .map(|s| s.trim_start_matches("0x").to_ascii_lowercase())
                .collect(),
        }
    }

    pub fn is_revoked(&self, spiffe_id: &str, serial_hex: &str) -> bool {
        self.spiffe_ids.contains(spiffe_id) || self.serials.contains(serial_hex)
    }

    pub fn entries(&self) -> usize {
        self.spiffe_ids.len() + self.serials.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Parse { path: String, detail: String },
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn is_json(path: &Path, text: &str) -> bool {
    path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{')
}

/// Key set file: the shared library's `KeySetFile`, JSON or YAML.
pub fn parse_key_set(text: &str, path: &Path) -> Result<KeySet, LoadError> {
    let perr = |detail: String| LoadError::Parse {
        path: path.display().to_string(),
        detail,
    };
    let file: KeySetFile = if is_json(path, text) {
        serde_json::from_str(text).map_err(|e| perr(e.to_string()))?
    } else {
        serde_yaml::from_str(text).map_err(|e| perr(e.to_string()))?
    };
    KeySet::from_file(file).map_err(|e| perr(e.to_string()))
}

pub fn load_key_set(path: &Path) -> Result<KeySet, LoadError> {
    parse_key_set(&read(path)?, path)
}

pub fn parse_revocations(text: &str, path: &Path) -> Result<Revocations, LoadError> {
    let perr = |detail: String| LoadError::Parse {
        path: path.display().to_string(),
        detail,
    };
    let file: RevocationsFile = if is_json(path, text) {
        serde_json::from_str(text).map_err(|e| perr(e.to_string()))?
    } else {
        serde_yaml::from_str(text).map_err(|e| perr(e.to_string()))?
    };
    Ok(Revocations::from_file(file))
}

pub fn load_revocations(path: Option<&Path>) -> Result<Revocations, LoadError> {
    match path {
        Some(p) => parse_revocations(&read(p)?, p),
        None => Ok(Revocations::default()),
    }
}

/// The first full load, before any listener starts. Every failure is
/// reported with the YAML path of the file that caused it.
pub struct Initial {
    pub serving: ServingCert,
    pub bundles: TrustBundles,
    /// None: a control source will supply it (not ready until then).
    pub keys: Option<KeySet>,
    pub revocations: Revocations,
    /// When the state came from control (or its cache): when it was fetched.
    pub synced_at: Option<zen_trust::UnixTime>,
}

impl Initial {
    pub fn load(cfg: &Config, provider: &CryptoProvider) -> Result<Initial, ConfigErrors> {
        let mut errs = Vec::new();
        let serving = ServingCert::from_files(&cfg.files.cert, &cfg.files.key, provider)
            .map_err(|e| {
                errs.push(ConfigError::new(
                    "tls.cert_file / tls.key_file",
                    e.to_string(),
                ))
            })
            .ok();
        let mut bundles_ok = true;
        for (i, (td, path)) in cfg.files.bundles.iter().enumerate() {
            if let Err(e) = crate::tls::verifier::load_bundle_file(td, path) {
                bundles_ok = false;
                errs.push(ConfigError::new(
                    format!("trust_bundles[{i}].file"),
                    e.to_string(),
                ));
            }
        }
        let bundles = if bundles_ok {
            TrustBundles::from_files(&cfg.files.bundles)
                .map_err(|e| errs.push(ConfigError::new("trust_bundles", e.to_string())))
                .ok()
        } else {
            None
        };
        if let Some(control) = &cfg.control {
            return match (serving, bundles) {
                (Some(serving), Some(bundles)) if errs.is_empty() => {
                    Initial::from_control_cache(control, serving, bundles)
                }
                _ => Err(ConfigErrors(errs)),
            };
        }
        let keys = cfg.files.key_set.as_deref().and_then(|path| {
            load_key_set(path)
                .map_err(|e| errs.push(ConfigError::new("key_set_file", e.to_string())))
                .ok()
        });
        let revocations = load_revocations(cfg.files.revocations.as_deref())
            .map_err(|e| errs.push(ConfigError::new("revocations_file", e.to_string())))
            .ok();
        match (serving, bundles, keys, revocations) {
            (Some(serving), Some(bundles), Some(keys), Some(revocations)) if errs.is_empty() => {
                Ok(Initial {
                    serving,
                    bundles,
                    keys: Some(keys),
                    revocations,
                    synced_at: None,
                })
            }
            _ => Err(ConfigErrors(errs)),
        }
    }

    /// With a control source: the persisted last-known state if there is one (static stability —
    /// a restart during a control outage still enforces it), else the configured bundle files and
    /// no key set yet (not ready until the first sync).
    fn from_control_cache(
        control: &crate::reload::control::ControlSettings,
        serving: ServingCert,
        file_bundles: TrustBundles,
    ) -> Result<Initial, ConfigErrors> {
        use crate::reload::control;
        let cached = control::load_cache(&control.cache_file).map_err(|e| {
            ConfigErrors(vec![ConfigError::new("control.cache_file", e.to_string())])
        })?;
        let Some(cached) = cached else {
            return Ok(Initial {
                serving,
                bundles: file_bundles,
                keys: None,
                revocations: Revocations::default(),
                synced_at: None,
            });
        };
        let prepared = control::prepare(&cached.state).map_err(|e| {
            ConfigErrors(vec![ConfigError::new("control.cache_file", e.to_string())])
        })?;
        Ok(Initial {
            serving,
            bundles: prepared.bundles,
            keys: Some(prepared.keys),
            revocations: prepared.revocations,
            synced_at: Some(cached.fetched_at),
        })
    }
}

/// Readiness per piece of state (`/readyz`).
#[derive(Debug, Default)]
pub struct Readiness {
    pub serving_cert: AtomicBool,
    pub trust_bundles: AtomicBool,
    pub key_set: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.serving_cert.load(Ordering::Acquire)
            && self.trust_bundles.load(Ordering::Acquire)
            && self.key_set.load(Ordering::Acquire)
    }
}

pub struct State {
    pub serving: Arc<ArcSwap<ServingCert>>,
    pub bundles: Arc<ArcSwap<TrustBundles>>,
    pub keys: ArcSwap<KeySet>,
    pub routes: ArcSwap<RouteTable>,
    pub revocations: ArcSwap<Revocations>,
    pub replay: ReplayCache,
    pub metrics: Metrics,
    pub readiness: Readiness,
    /// Unix seconds of the last good control state (0 = never); only with a control source.
    last_sync: AtomicI64,
    /// With a control source: `/readyz` requires the state to be younger than this.
    max_state_age: Option<std::time::Duration>,
}

impl State {
    /// The state a `Config` describes: its routes, replay capacity and (with a
    /// control source) the age after which pulled state counts as stale.
    pub fn from_config(initial: Initial, cfg: &Config, metrics: Metrics) -> Arc<State> {
        State::new(
            initial,
            cfg.routes.clone(),
            cfg.replay_capacity,
            metrics,
            cfg.control.as_ref().map(|c| c.max_state_age),
        )
    }

    pub fn new(
        initial: Initial,
        routes: RouteTable,
        replay_capacity: usize,
        metrics: Metrics,
        max_state_age: Option<std::time::Duration>,
    ) -> Arc<State> {
        let have_keys = initial.keys.is_some();
        let state = State {
            serving: Arc::new(ArcSwap::from_pointee(initial.serving)),
            bundles: Arc::new(ArcSwap::from_pointee(initial.bundles)),
            keys: ArcSwap::from_pointee(initial.keys.unwrap_or_default()),
            routes: ArcSwap::from_pointee(routes),
            revocations: ArcSwap::from_pointee(initial.revocations),
            replay: ReplayCache::new(replay_capacity),
            metrics,
            readiness: Readiness::default(),
            last_sync: AtomicI64::new(initial.synced_at.map_or(0, |t| t.0)),
            max_state_age,
        };
        state.published_serving();
        state.published_bundles();
        if have_keys {
            state.published_keys();
        }
        Arc::new(state)
    }

    /// Records a good state from control.
    pub fn synced_at(&self, at: zen_trust::UnixTime) {
        self.last_sync.store(at.0, Ordering::Release);
        self.refresh_state_age();
    }

    /// Seconds since the last good control state (None without a control source or before one).
    pub fn state_age(&self) -> Option<i64> {
        self.max_state_age?;
        match self.last_sync.load(Ordering::Acquire) {
            0 => None,
            at => Some((zen_trust::UnixTime::now().0 - at).max(0)),
        }
    }

    /// `zen_proxy_state_age_seconds` (-1 before the first state).
    pub fn refresh_state_age(&self) {
        if self.max_state_age.is_some() {
            self.metrics
                .state_age_seconds
                .set(self.state_age().unwrap_or(-1));
        }
    }

    /// `/readyz`: every piece loaded, the serving certificate unexpired and, with a control
    /// source, the state young enough.
    pub fn ready(&self) -> bool {
        if !self.readiness.ready() {
            return false;
        }
        if self.serving.load().not_after <= zen_trust::UnixTime::now().0 {
            return false;
        }
        match (self.max_state_age, self.state_age()) {
            (None, _) => true,
            (Some(max), Some(age)) => age < max.as_secs() as i64,
            (Some(_), None) => false,
        }
    }

    // The `published_*` helpers update readiness and gauges after a store.
    pub fn published_serving(&self) {
        let cert = self.serving.load();
        let left = cert.not_after - zen_trust::UnixTime::now().0;
        self.metrics.serving_cert_expiry_seconds.set(left);
        self.readiness.serving_cert.store(true, Ordering::Release);
        self.metrics
            .loaded
            .with_label_values(&["serving_cert"])
            .set(1);
    }

    pub fn published_bundles(&self) {
        self.readiness.trust_bundles.store(true, Ordering::Release);
        self.metrics
            .loaded
            .with_label_values(&["trust_bundles"])
            .set(1);
    }

    pub fn published_keys(&self) {
        let keys = self.keys.load();
        self.metrics.key_set_version.set(keys.version() as i64);
        self.metrics.key_set_keys.set(keys.len() as i64);
        self.readiness.key_set.store(true, Ordering::Release);
        self.metrics.loaded.with_label_values(&["key_set"]).set(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_cert(not_after_year: i32) -> Arc<State> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let provider = crate::tls::install_crypto_provider();
        let serving = ServingCert::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            Path::new("tls.crt"),
            Path::new("tls.key"),
            &provider,
        )
        .unwrap();
        let initial = Initial {
            serving,
            bundles: TrustBundles::default(),
            keys: Some(KeySet::default()),
            revocations: Revocations::default(),
            synced_at: None,
        };
        State::new(initial, RouteTable::default(), 10, Metrics::new(), None)
    }

    #[test]
    fn not_ready_once_the_serving_certificate_expired() {
        assert!(state_with_cert(2100).ready());
        assert!(!state_with_cert(2020).ready());
    }
}
