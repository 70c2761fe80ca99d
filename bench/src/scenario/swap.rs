//! `swap`: keep-alive load while the proxy's files are rewritten at an
//! interval — a fresh serving certificate (from the bench CA), the key set
//! with its version bumped, and the trust bundle — counting every request
//! that fails meanwhile. Connections are recycled every few requests so new
//! handshakes meet the new certificate; the serials clients saw show whether
//! the swaps took effect.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::watch;
use zen_trust::keys::KeySetFile;
use zen_trust::spiffe::SpiffeId;
use zen_trust::time::UnixTime;

use super::{keepalive, Ctx, Run};
use crate::identity::generate::{
    reissue_proxy_cert, write_key_set, PROXY_BUNDLE, PROXY_CERT, PROXY_KEYSET,
};

#[derive(Debug, Clone)]
pub struct Opts {
    pub load: keepalive::Opts,
    pub interval: Duration,
    /// The proxy's files (`tls.crt`, `tls.key`, `bundle.pem`, `keyset.json`).
    pub proxy_dir: PathBuf,
    /// The CA that issues the new serving certificates (`ca.crt`, `ca.key`).
    pub ca_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct SwapDetails {
    pub interval_ms: u64,
    pub swaps: u64,
    pub swap_errors: Vec<String>,
    /// Serving certificates written during the run.
    pub certs_issued: usize,
    /// Of those, how many clients were served on a new connection.
    pub issued_certs_seen: usize,
    /// Distinct serving certificates clients saw (the initial one included).
    pub distinct_certs_seen: usize,
}

fn proxy_id(proxy_dir: &Path) -> Result<SpiffeId> {
    let path = proxy_dir.join(PROXY_CERT);
    let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let chain = zen_trust::svid::pem_to_der_chain(&pem)
        .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
    let leaf = chain
        .first()
        .with_context(|| format!("{}: no certificate", path.display()))?;
    let leaf = zen_trust::svid::check_svid_leaf(leaf, UnixTime::now())
        .with_context(|| format!("{}: not an SVID", path.display()))?;
    Ok(leaf.spiffe_id)
}

/// One swap: new cert + key, key set version + 1, bundle rewritten.
/// Returns the new certificate's serial.
fn swap_once(opts: &Opts, id: &SpiffeId) -> Result<String> {
    let serial = reissue_proxy_cert(&opts.ca_dir, &opts.proxy_dir, id)?;
    let ks_path = opts.proxy_dir.join(PROXY_KEYSET);
    let text = std::fs::read_to_string(&ks_path)
        .with_context(|| format!("reading {}", ks_path.display()))?;
    let mut ks = KeySetFile::from_json(&text)
        .with_context(|| format!("{}: not a key-set file", ks_path.display()))?;
    ks.version += 1;
    write_key_set(&ks_path, &ks)?;
    let bundle = opts.proxy_dir.join(PROXY_BUNDLE);
    let pem = std::fs::read(&bundle).with_context(|| format!("reading {}", bundle.display()))?;
    zen_agent::files::write_atomic(&bundle, &pem, 0o644)?;
    Ok(serial)
}

pub async fn run(
    ctx: Arc<Ctx>,
    opts: Opts,
    target_pid: Option<u32>,
) -> Result<(Run<Vec<String>>, SwapDetails)> {
    let id = proxy_id(&opts.proxy_dir)?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let swapper = {
        let opts = opts.clone();
        tokio::spawn(async move {
            let mut issued = Vec::new();
            let mut errors = Vec::new();
            let mut tick = tokio::time::interval(opts.interval);
            tick.tick().await; // the first tick is immediate: let load start first
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop_rx.changed() => break,
                }
                let (o, i) = (opts.clone(), id.clone());
                match tokio::task::spawn_blocking(move || swap_once(&o, &i)).await {
                    Ok(Ok(serial)) => issued.push(serial),
                    Ok(Err(e)) => errors.push(format!("{e:#}")),
                    Err(e) => errors.push(format!("swap task: {e}")),
                }
            }
            (issued, errors)
        })
    };
    let mut load = opts.load;
    load.want_serial = true;
    load.recycle_after = Some(load.recycle_after.unwrap_or(20));
    let result = keepalive::run(ctx, load, target_pid).await;
    let _ = stop_tx.send(true);
    let (issued, errors) = swapper.await.context("the swap task panicked")?;
    let run = result?;
    let seen: BTreeSet<&String> = run.outputs.iter().flatten().collect();
    let details = SwapDetails {
        interval_ms: opts.interval.as_millis() as u64,
        swaps: (issued.len() + errors.len()) as u64,
        certs_issued: issued.len(),
        issued_certs_seen: issued.iter().filter(|s| seen.contains(s)).count(),
        distinct_certs_seen: seen.len(),
        swap_errors: errors,
    };
    Ok((run, details))
}
