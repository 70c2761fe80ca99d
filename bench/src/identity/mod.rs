//! Who the load generator is: agent identities (SVID + HMAC key) loaded from
//! zen-agent directories, either made by `zen-bench identities` or enrolled
//! for real with `zen-agent enroll`.

pub mod generate;
pub mod proxy_config;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::client::Resumption;
use rustls::ClientConfig;
use zen_agent::files::AgentFiles;
use zen_trust::secret::Secret;
use zen_trust::spiffe::SpiffeId;
use zen_trust::time::UnixTime;

/// One agent the generator speaks as.
pub struct Identity {
    pub spiffe_id: SpiffeId,
    pub key_id: String,
    pub secret: Secret,
    /// mTLS client config with the agent's SVID; session resumption as
    /// rustls defaults it (in-memory tickets/ids).
    pub tls: Arc<ClientConfig>,
    /// The same without resumption: every new connection is a full handshake.
    pub tls_full_handshake: Arc<ClientConfig>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn load(dir: &Path) -> Result<Identity> {
        let files = AgentFiles::load(dir).map_err(anyhow::Error::new)?;
        let leaf_der = files
            .svid_chain
            .first()
            .with_context(|| format!("{}: empty SVID chain", dir.display()))?;
        let leaf = zen_trust::svid::check_svid_leaf(leaf_der, UnixTime::now())
            .with_context(|| format!("{}: the SVID is not usable", dir.display()))?;
        let tls = zen_agent::tls::mtls_config(&files.bundle, files.svid_chain, files.svid_key)
            .with_context(|| format!("{}: building the mTLS client config", dir.display()))?;
        let mut full = (*tls).clone();
        full.resumption = Resumption::disabled();
        Ok(Identity {
            spiffe_id: leaf.spiffe_id,
            key_id: files.hmac.key_id,
            secret: files.hmac.secret,
            tls,
            tls_full_handshake: Arc::new(full),
        })
    }
}

/// Where identities come from on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct IdentityArgs {
    /// A directory made by `zen-bench identities`: every agent under
    /// `agents/` is used, round-robin over connections.
    #[arg(long, value_name = "DIR")]
    pub identities: Option<PathBuf>,
    /// An enrolled zen-agent directory (svid.pem, svid.key, bundle.pem,
    /// hmac.json). Repeatable.
    #[arg(long = "agent-dir", value_name = "DIR")]
    pub agent_dirs: Vec<PathBuf>,
}

impl IdentityArgs {
    pub fn load(&self) -> Result<Vec<Arc<Identity>>> {
        let mut dirs = self.agent_dirs.clone();
        if let Some(root) = &self.identities {
            let agents = root.join(generate::AGENTS_DIR);
            let mut found: Vec<PathBuf> = std::fs::read_dir(&agents)
                .with_context(|| format!("reading {}", agents.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            // a1, a2, …, a10 in numeric order so runs are reproducible.
            found.sort_by_key(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                (
                    name.trim_start_matches('a')
                        .parse::<u64>()
                        .unwrap_or(u64::MAX),
                    name.to_owned(),
                )
            });
            dirs.extend(found);
        }
        if dirs.is_empty() {
            bail!("no identity: pass --identities DIR (from `zen-bench identities`) or --agent-dir DIR");
        }
        dirs.iter()
            .map(|d| Identity::load(d).map(Arc::new))
            .collect()
    }
}
