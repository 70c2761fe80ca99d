//! The YAML file as written by the operator. Unknown fields are refused.
//! `validate` turns this into the typed `Config`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::Listener;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listeners: RawListeners,
    pub tls: RawTls,
    /// Required unless `tls.from_control` (then `dir/ca.crt` is the bundle of its trust domain).
    #[serde(default)]
    pub trust_bundles: Vec<RawBundle>,
    /// Required unless `control` supplies the key set.
    #[serde(default)]
    pub key_set_file: Option<PathBuf>,
    /// Key set, trust bundle and revocations from zen-control (DESIGN §5 `/proxy/v1/state`).
    #[serde(default)]
    pub control: Option<RawControl>,
    #[serde(default)]
    pub revocations_file: Option<PathBuf>,
    #[serde(default)]
    pub signature: RawSignature,
    #[serde(default)]
    pub replay_cache: RawReplayCache,
    #[serde(default)]
    pub reload: RawReload,
    #[serde(default)]
    pub shutdown: RawShutdown,
    pub upstreams: BTreeMap<String, RawUpstream>,
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    /// `https://HOST:PORT/proxy/v1/state`, reached with the proxy's own SVID (`tls.cert_file`).
    pub url: String,
    /// Last-known state, persisted (0600) so a restart during a control outage still enforces it.
    pub cache_file: PathBuf,
    /// `/readyz` stays ready while the last good state is younger than this.
    #[serde(default = "default_max_state_age")]
    pub max_state_age_secs: u64,
    /// Longest wait for one long-poll answer (control answers within 30 s).
    #[serde(default = "default_control_timeout")]
    pub request_timeout_secs: u64,
}

fn default_max_state_age() -> u64 {
    3600
}
fn default_control_timeout() -> u64 {
    45
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListeners {
    pub agent: RawAgentListener,
    #[serde(default)]
    pub bootstrap: Option<RawBootstrapListener>,
    #[serde(default)]
    pub admin: RawAdminListener,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Required,
    Optional,
    None,
}

fn default_agent_addr() -> String {
    "0.0.0.0:9443".into()
}
fn default_bootstrap_addr() -> String {
    "0.0.0.0:8443".into()
}
fn default_admin_addr() -> String {
    "127.0.0.1:9901".into()
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentListener {
    #[serde(default = "default_agent_addr")]
    pub address: String,
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub allow_tls12: bool,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBootstrapListener {
    #[serde(default = "default_bootstrap_addr")]
    pub address: String,
    #[serde(default)]
    pub require_spiffe: bool,
    #[serde(default)]
    pub allow_tls12: bool,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminListener {
    #[serde(default = "default_admin_addr")]
    pub address: String,
}

impl Default for RawAdminListener {
    fn default() -> Self {
        RawAdminListener {
            address: default_admin_addr(),
        }
    }
}

/// The proxy's own serving SVID: files (cert-manager style) or enrolled with and renewed by
/// zen-control (`from_control`). Exactly one of the two.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_control: Option<RawSvidFromControl>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSvidFromControl {
    /// tls.key (0600), tls.crt, ca.crt and hmac.json (0600) live here.
    pub dir: PathBuf,
    /// `spiffe://<td>/proxy/<name>`.
    pub spiffe_id: String,
    /// `zen-control token create --output json` output; else env ZEN_PROXY_TOKEN_ID /
    /// ZEN_PROXY_TOKEN_SECRET. Read only when `dir` holds no valid SVID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// zen-control's API on loopback (`http://127.0.0.1:8081`): the proxy has no certificate to
    /// serve its own bootstrap listener with yet.
    pub enroll_url: String,
    #[serde(default = "default_svid_dns")]
    pub dns: Vec<String>,
    #[serde(default = "default_svid_ips")]
    pub ips: Vec<String>,
    /// Renew when this fraction of the SVID's lifetime has passed.
    #[serde(default = "default_renew_fraction")]
    pub renew_fraction: f64,
}

fn default_svid_dns() -> Vec<String> {
    vec!["localhost".into()]
}
fn default_svid_ips() -> Vec<String> {
    vec!["127.0.0.1".into()]
}
fn default_renew_fraction() -> f64 {
    0.5
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBundle {
    pub trust_domain: String,
    pub file: PathBuf,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignature {
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
    #[serde(default = "default_max_skew")]
    pub max_skew_secs: u64,
    #[serde(default = "default_true")]
    pub require_nonce: bool,
}

fn default_max_age() -> u64 {
    300
}
fn default_max_skew() -> u64 {
    5
}
fn default_true() -> bool {
    true
}

impl Default for RawSignature {
    fn default() -> Self {
        RawSignature {
            max_age_secs: default_max_age(),
            max_skew_secs: default_max_skew(),
            require_nonce: true,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplayCache {
    #[serde(default = "default_replay_capacity")]
    pub capacity: usize,
}

fn default_replay_capacity() -> usize {
    1_000_000
}

impl Default for RawReplayCache {
    fn default() -> Self {
        RawReplayCache {
            capacity: default_replay_capacity(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    /// Watch the files (inotify) in addition to SIGHUP.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Coalesce bursts of file events (editors write several times).
    #[serde(default = "default_debounce")]
    pub debounce_ms: u64,
}

fn default_debounce() -> u64 {
    100
}

impl Default for RawReload {
    fn default() -> Self {
        RawReload {
            watch: true,
            debounce_ms: default_debounce(),
        }
    }
}

/// SIGTERM: listeners stop accepting at once; in-flight requests get
/// `grace_seconds` (pingora waits this long unconditionally), then runtimes
/// get `timeout_seconds` to wind down.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    #[serde(default = "default_grace")]
    pub grace_seconds: u64,
    #[serde(default = "default_shutdown_timeout")]
    pub timeout_seconds: u64,
}

fn default_grace() -> u64 {
    10
}
fn default_shutdown_timeout() -> u64 {
    5
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            grace_seconds: default_grace(),
            timeout_seconds: default_shutdown_timeout(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub address: String,
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read_ms")]
    pub read_timeout_ms: u64,
    #[serde(default = "default_read_ms")]
    pub write_timeout_ms: u64,
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
}

fn default_connect_ms() -> u64 {
    1_000
}
fn default_read_ms() -> u64 {
    60_000
}
fn default_idle_ms() -> u64 {
    60_000
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub listener: Listener,
    pub methods: Vec<String>,
    pub path: String,
    pub upstream: String,
    pub auth: RawAuth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawHmac {
    Required,
    Off,
}

pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub spiffe: Vec<String>,
    pub hmac: RawHmac,
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
}
