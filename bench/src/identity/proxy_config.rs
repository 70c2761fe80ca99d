//! `zen-bench proxy-config`: a zen-proxy YAML config (format of
//! proxy/src/config/raw.rs) that serves the bench route with the files made
//! by `zen-bench identities`. Used by the smoke test and `bench/compare`.

use std::path::Path;

use anyhow::{Context, Result};

use super::generate::{PROXY_BUNDLE, PROXY_CERT, PROXY_DIR, PROXY_KEY, PROXY_KEYSET};

/// The one route the bench drives. `{cid}` binds the caller's cluster, so a
/// request for another cluster is the `wrong cluster` refusal (403
/// `spiffe_forbidden`).
pub const ROUTE_TEMPLATE: &str = "/agent/v1/clusters/{cid}/desired-state";

#[derive(Debug, Clone)]
pub struct ProxyConfigSpec<'a> {
    pub identities: &'a Path,
    pub trust_domain: &'a str,
    pub agent_listen: &'a str,
    pub admin_listen: &'a str,
    pub upstream: &'a str,
    pub replay_capacity: usize,
}

/// A JSON string literal is a valid YAML double-quoted scalar: paths and
/// addresses need no further escaping rules.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

pub fn render(spec: &ProxyConfigSpec<'_>) -> Result<String> {
    let root = spec
        .identities
        .canonicalize()
        .with_context(|| format!("{}: no such identities dir", spec.identities.display()))?;
    let proxy = root.join(PROXY_DIR);
    let path = |name: &str| q(&proxy.join(name).display().to_string());
    let td = spec.trust_domain;
    Ok(format!(
        r#"# Written by `zen-bench proxy-config`.
listeners:
  agent: {{ address: {agent}, client_auth: required }}
  admin: {{ address: {admin} }}
tls: {{ cert_file: {cert}, key_file: {key} }}
trust_bundles:
  - {{ trust_domain: {td_q}, file: {bundle} }}
key_set_file: {keyset}
replay_cache: {{ capacity: {capacity} }}
reload: {{ watch: true, debounce_ms: 50 }}
upstreams:
  bench: {{ address: {upstream} }}
routes:
  - name: bench-desired-state
    listener: agent
    methods: [GET, POST]
    path: {route}
    upstream: bench
    auth:
      spiffe: [{pattern}]
      hmac: required
"#,
        agent = q(spec.agent_listen),
        admin = q(spec.admin_listen),
        cert = path(PROXY_CERT),
        key = path(PROXY_KEY),
        td_q = q(td),
        bundle = path(PROXY_BUNDLE),
        keyset = path(PROXY_KEYSET),
        capacity = spec.replay_capacity,
        upstream = q(spec.upstream),
        route = q(ROUTE_TEMPLATE),
        pattern = q(&format!("spiffe://{td}/cluster/{{cid}}/agent/*")),
    ))
}
