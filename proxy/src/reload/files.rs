//! File state source: reloads on file change (inotify via `notify`, on the
//! parent directories so rename-swaps and symlink flips are seen) and on
//! SIGHUP. Unchanged files (same SHA-256) are not re-parsed.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use rustls::crypto::CryptoProvider;
use sha2::{Digest, Sha256};

use super::{StateSource, What};
use crate::config::{Config, Files};
use crate::state::{self, State};
use crate::tls::{ServingCert, TrustBundles};

pub struct FileSource {
    config_path: PathBuf,
    files: Files,
    provider: Arc<CryptoProvider>,
    watch: bool,
    debounce: Duration,
    upstream_names: HashSet<String>,
    /// A control source owns key set, trust bundles and revocations.
    control: bool,
    /// Content hash of what is currently published, per piece of state.
    published: Mutex<HashMap<What, [u8; 32]>>,
}

impl FileSource {
    pub fn new(cfg: &Config, provider: Arc<CryptoProvider>) -> Self {
        let source = FileSource {
            config_path: cfg.source.clone(),
            files: cfg.files.clone(),
            provider,
            watch: cfg.watch_files,
            debounce: cfg.debounce,
            upstream_names: cfg.upstreams.iter().map(|u| u.name.clone()).collect(),
            control: cfg.control.is_some(),
            published: Mutex::new(HashMap::new()),
        };
        // The initial load published exactly these files.
        for what in What::ALL {
            if let Ok(h) = source.hash_of(what) {
                source.published.lock().expect("poisoned").insert(what, h);
            }
        }
        source
    }

    fn paths(&self, what: What) -> Vec<PathBuf> {
        match what {
            What::ServingCert => vec![self.files.cert.clone(), self.files.key.clone()],
            What::TrustBundles => self.files.bundles.iter().map(|(_, p)| p.clone()).collect(),
            What::KeySet => self.files.key_set.iter().cloned().collect(),
            What::Revocations => self.files.revocations.iter().cloned().collect(),
            What::Routes => vec![self.config_path.clone()],
        }
    }

    /// One writer per value: with a control source, key set, bundles and revocations are its.
    fn owned_elsewhere(&self, what: What) -> bool {
        match what {
            What::KeySet | What::TrustBundles => self.control,
            What::Revocations => self.control || self.files.revocations.is_none(),
            What::ServingCert => self.files.serving_from_control,
            What::Routes => false,
        }
    }

    fn hash_of(&self, what: What) -> std::io::Result<[u8; 32]> {
        let mut h = Sha256::new();
        for p in self.paths(what) {
            let bytes = std::fs::read(&p)?;
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        Ok(h.finalize().into())
    }

    /// Re-reads every file whose content changed; publishes what is valid.
    pub fn reload(&self, state: &State) {
        for what in What::ALL {
            if self.owned_elsewhere(what) {
                continue;
            }
            let hash = match self.hash_of(what) {
                Ok(h) => h,
                Err(e) => {
                    self.count(state, what, Err(format!("cannot read: {e}")));
                    continue;
                }
            };
            if self.published.lock().expect("poisoned").get(&what) == Some(&hash) {
                continue;
            }
            let res = self.apply(state, what);
            if res.is_ok() {
                self.published.lock().expect("poisoned").insert(what, hash);
            }
            self.count(state, what, res);
        }
    }

    fn count(&self, state: &State, what: What, res: Result<(), String>) {
        let result = match &res {
            Ok(()) => {
                tracing::info!(what = what.as_str(), "reloaded");
                "ok"
            }
            Err(e) => {
                tracing::warn!(what = what.as_str(), error = %e, "reload refused; keeping the previous value");
                "error"
            }
        };
        state
            .metrics
            .reloads
            .with_label_values(&[what.as_str(), result])
            .inc();
    }

    fn apply(&self, state: &State, what: What) -> Result<(), String> {
        match what {
            What::ServingCert => {
                let cert =
                    ServingCert::from_files(&self.files.cert, &self.files.key, &self.provider)
                        .map_err(|e| e.to_string())?;
                state.serving.store(Arc::new(cert));
                state.published_serving();
            }
            What::TrustBundles => {
                let b = TrustBundles::from_files(&self.files.bundles).map_err(|e| e.to_string())?;
                state.bundles.store(Arc::new(b));
                state.published_bundles();
            }
            What::KeySet => {
                let Some(path) = &self.files.key_set else {
                    return Err("no key_set_file configured".into());
                };
                let k = state::load_key_set(path).map_err(|e| e.to_string())?;
                state.keys.store(Arc::new(k));
                state.published_keys();
            }
            What::Revocations => {
                let r = state::load_revocations(self.files.revocations.as_deref())
                    .map_err(|e| e.to_string())?;
                state.revocations.store(Arc::new(r));
            }
            What::Routes => {
                let cfg = Config::load(&self.config_path).map_err(|e| e.to_string())?;
                if let Some(r) = cfg
                    .routes
                    .routes()
                    .iter()
                    .find(|r| !self.upstream_names.contains(&r.upstream))
                {
                    return Err(format!(
                        "route {:?} names upstream {:?}, which the running process does not have (restart to add upstreams)",
                        r.name, r.upstream
                    ));
                }
                state.routes.store(Arc::new(cfg.routes));
            }
        }
        Ok(())
    }

    /// Every file loaded from disk (cert and key, bundles, key set, …, the config).
    fn loaded_paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        What::ALL.into_iter().flat_map(|w| self.paths(w))
    }

    /// File names of everything loaded from files (tls.crt, keyset.json, the config …).
    fn watched_names(&self) -> HashSet<OsString> {
        self.loaded_paths()
            .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
            .collect()
    }

    fn watch_dirs(&self) -> HashSet<PathBuf> {
        self.loaded_paths()
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect()
    }
}

/// Whether an event in a watched directory may change what was loaded: it
/// names one of our files, or a `..`-prefixed entry (a Kubernetes volume
/// update renames `..data` and never touches tls.crt itself,
/// tests/proxy/csi_swap.rs), or the watcher lost track (rescan, no paths).
/// Other files in the directory (a log written beside the config, an
/// editor's swap file) do not cost a re-read of every file. Content hashes
/// make a reload of unchanged files a no-op either way.
fn relevant(e: &notify::Event, names: &HashSet<OsString>) -> bool {
    if e.kind.is_access() {
        return false;
    }
    e.need_rescan()
        || e.paths.is_empty()
        || e.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| names.contains(n) || n.as_encoded_bytes().starts_with(b".."))
        })
}

#[async_trait]
impl StateSource for FileSource {
    fn name(&self) -> &'static str {
        "files"
    }

    async fn run(&self, state: Arc<State>, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let _watcher = if self.watch {
            let events = tx.clone();
            let names = self.watched_names();
            match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if ev.as_ref().map_or(true, |e| relevant(e, &names)) {
                    let _ = events.send(());
                }
            }) {
                Ok(mut w) => {
                    for d in self.watch_dirs() {
                        if let Err(e) = w.watch(&d, RecursiveMode::NonRecursive) {
                            tracing::warn!(dir = %d.display(), error = %e, "cannot watch; SIGHUP still reloads");
                        }
                    }
                    // The files were loaded at start, before these watches existed: a change in
                    // between raised no event. Look once now (unchanged content is a no-op).
                    let _ = tx.send(());
                    Some(w)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "file watching unavailable; SIGHUP still reloads");
                    None
                }
            }
        } else {
            None
        };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot install SIGHUP handler");
                None
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = rx.recv() => {
                    // Coalesce a burst of events (write + chmod + rename …).
                    tokio::time::sleep(self.debounce).await;
                    while rx.try_recv().is_ok() {}
                    self.reload(&state);
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading files");
                    self.reload(&state);
                }
                _ = tick.tick() => {
                    state.replay.purge_expired(zen_trust::UnixTime::now());
                    state.metrics.replay_cache_entries.set(state.replay.len() as i64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, EventKind, ModifyKind, RenameMode};

    fn ev(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut e = notify::Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    #[test]
    fn only_events_that_can_touch_our_files_reload() {
        let names: HashSet<OsString> = ["tls.crt", "keyset.json", "proxy.yaml"]
            .into_iter()
            .map(OsString::from)
            .collect();
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(relevant(&ev(modify, &["/etc/zen/tls.crt"]), &names));
        // An editor's or a tool's rename onto the file.
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert!(relevant(
            &ev(rename, &["/etc/zen/.tmp123", "/etc/zen/keyset.json"]),
            &names
        ));
        // Kubernetes atomic writer.
        assert!(relevant(
            &ev(rename, &["/etc/zen/..data_tmp", "/etc/zen/..data"]),
            &names
        ));
        assert!(relevant(
            &ev(
                EventKind::Create(CreateKind::Folder),
                &["/etc/zen/..2026_11_26"]
            ),
            &names
        ));
        // The watcher lost events: look.
        assert!(relevant(&ev(EventKind::Other, &[]), &names));
        // Unrelated files beside ours, and reads of ours.
        assert!(!relevant(&ev(modify, &["/etc/zen/zen-proxy.log"]), &names));
        assert!(!relevant(&ev(modify, &["/etc/zen/.tls.crt.swp"]), &names));
        assert!(!relevant(
            &ev(EventKind::Access(AccessKind::Any), &["/etc/zen/tls.crt"]),
            &names
        ));
    }
}
