//! The proxy's own serving SVID from zen-control (config `tls.from_control`, DESIGN §7, §8):
//! enrolled with a one-use token on first start, confirmed and renewed at ~50 % of its lifetime
//! through the proxy's own agent listener, written atomically into `dir` (cert-manager layout:
//! `tls.key` 0600, `tls.crt`, `ca.crt`; plus `hmac.json` 0600, the proxy's HMAC key for those
//! signed calls). With a valid SVID in `dir` a restart enrolls nothing (the token is spent).
//!
//! This source is the single writer of the serving certificate while it is configured (the file
//! source then leaves it alone).

mod enroll;
mod renew;
mod timing;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use zen_trust::spiffe::SpiffeId;
use zen_trust::UnixTime;

use crate::config::raw::RawSvidFromControl;
use crate::config::ConfigError;
use crate::reload::control::ControlSettings;
use crate::tls::ServingCert;

pub use renew::SvidSource;

pub const TOKEN_ID_ENV: &str = "ZEN_PROXY_TOKEN_ID";
pub const TOKEN_SECRET_ENV: &str = "ZEN_PROXY_TOKEN_SECRET";

pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
/// A renewal's new key before its certificate is in place (see [`settle_next_key`]).
pub const KEY_NEXT_FILE: &str = "tls.key.next";
pub const CA_FILE: &str = "ca.crt";
pub const HMAC_FILE: &str = "hmac.json";
/// Present while an enrollment waits for its confirmation (holds the enrollment id).
pub const PENDING_FILE: &str = "enrollment.json";

/// Validated `tls.from_control`.
#[derive(Debug, Clone)]
pub struct SvidSettings {
    pub dir: PathBuf,
    pub spiffe_id: SpiffeId,
    pub token_file: Option<PathBuf>,
    /// `http://127.0.0.1:8081` (no trailing slash).
    pub enroll_url: String,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub renew_fraction: f64,
    /// The proxy's own agent listener as the proxy itself reaches it (`https://127.0.0.1:9443`).
    pub agent_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("no usable SVID in {dir} ({why}) and no enrollment token: set tls.from_control.token_file or {TOKEN_ID_ENV} + {TOKEN_SECRET_ENV}")]
    NoToken { dir: PathBuf, why: String },
    #[error("enrollment token: {0}")]
    BadToken(String),
    #[error("cannot reach zen-control at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{step} refused by zen-control: {status} {code}: {detail}")]
    Refused {
        step: &'static str,
        status: u16,
        code: String,
        detail: String,
    },
    #[error("the SVID zen-control issued is not usable: {0}")]
    BadSvid(String),
    #[error(transparent)]
    Csr(#[from] zen_agent::csr::CsrError),
    #[error(transparent)]
    Client(#[from] zen_agent::client::ClientError),
    #[error(transparent)]
    Tls(#[from] zen_agent::tls::TlsError),
    #[error(transparent)]
    Files(#[from] zen_agent::files::FilesError),
}

impl SvidError {
    /// Worth another try: control not reachable yet, or a server-side failure.
    pub fn retryable(&self) -> bool {
        match self {
            SvidError::Unreachable { .. } => true,
            SvidError::Client(_) => true,
            SvidError::Refused { status, code, .. } => *status >= 500 || code == "key_unknown",
            _ => false,
        }
    }
}

impl SvidSettings {
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }
    pub fn key_file(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }
    pub fn hmac_file(&self) -> PathBuf {
        self.dir.join(HMAC_FILE)
    }
    pub fn pending_file(&self) -> PathBuf {
        self.dir.join(PENDING_FILE)
    }

    /// Checks `tls.from_control`; every problem goes to `errs` with its YAML path.
    pub fn validate(
        raw: &RawSvidFromControl,
        agent_addr: Option<SocketAddr>,
        control: Option<&ControlSettings>,
        errs: &mut Vec<ConfigError>,
    ) -> Option<SvidSettings> {
        const P: &str = "tls.from_control";
        let before = errs.len();
        let spiffe_id = match SpiffeId::parse(&raw.spiffe_id) {
            Ok(id) if is_proxy_id(&id) => Some(id),
            Ok(_) => {
                errs.push(ConfigError::new(
                    format!("{P}.spiffe_id"),
                    format!(
                        "{:?} is not a proxy identity (spiffe://<trust-domain>/proxy/<name>); zen-control issues host-name SANs to proxies only",
                        raw.spiffe_id
                    ),
                ));
                None
            }
            Err(e) => {
                errs.push(ConfigError::new(format!("{P}.spiffe_id"), e.to_string()));
                None
            }
        };
        let enroll_url = match parse_enroll_url(&raw.enroll_url) {
            Ok(u) => Some(u),
            Err(e) => {
                errs.push(ConfigError::new(format!("{P}.enroll_url"), e));
                None
            }
        };
        for (i, name) in raw.dns.iter().enumerate() {
            if !is_host_name(name) {
                errs.push(ConfigError::new(
                    format!("{P}.dns[{i}]"),
                    format!("{name:?} is not a host name"),
                ));
            }
        }
        let mut ips = Vec::new();
        for (i, ip) in raw.ips.iter().enumerate() {
            match ip.parse::<IpAddr>() {
                Ok(a) => ips.push(a),
                Err(_) => errs.push(ConfigError::new(
                    format!("{P}.ips[{i}]"),
                    format!("{ip:?} is not an IP address"),
                )),
            }
        }
        if !(0.1..=0.9).contains(&raw.renew_fraction) {
            errs.push(ConfigError::new(
                format!("{P}.renew_fraction"),
                format!("{} is outside 0.1 ..= 0.9", raw.renew_fraction),
            ));
        }
        let Some(control) = control else {
            errs.push(ConfigError::new(
                P,
                "needs `control:`: the proxy learns its own HMAC key (for the confirm and renewal calls through its agent listener) from control's state",
            ));
            return None;
        };
        // The proxy calls its own agent listener and must verify its own certificate there.
        let agent_url = agent_addr.and_then(|a| {
            let ip = match a.ip() {
                IpAddr::V4(v) if v.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
                IpAddr::V6(v) if v.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            let url = format!("https://{}", SocketAddr::new(ip, a.port()));
            if ips.contains(&ip) {
                Some(url)
            } else {
                errs.push(ConfigError::new(
                    format!("{P}.ips"),
                    format!("must include {ip}: the proxy confirms and renews its SVID through its own agent listener at {url} and verifies the certificate by that address"),
                ));
                None
            }
        });
        if let Some(host) = control.url.host() {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let covered = match host.parse::<IpAddr>() {
                Ok(ip) => ips.contains(&ip),
                Err(_) => raw.dns.iter().any(|d| d.eq_ignore_ascii_case(host)),
            };
            if !covered {
                errs.push(ConfigError::new(
                    "control.url",
                    format!("host {host} is not among tls.from_control.dns / ips, so the proxy could not verify its own certificate there"),
                ));
            }
        }
        if errs.len() != before {
            return None;
        }
        Some(SvidSettings {
            dir: raw.dir.clone(),
            spiffe_id: spiffe_id?,
            token_file: raw.token_file.clone(),
            enroll_url: enroll_url?,
            dns: raw.dns.clone(),
            ips,
            renew_fraction: raw.renew_fraction,
            agent_url: agent_url?,
        })
    }
}

fn is_proxy_id(id: &SpiffeId) -> bool {
    let segs: Vec<&str> = id.segments().collect();
    matches!(segs.as_slice(), ["proxy", name] if !name.is_empty())
}

fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// The enrollment answer carries the proxy's HMAC secret, and plain HTTP is all the proxy can
/// speak to control before it has a certificate: so loopback only.
fn parse_enroll_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{s:?}: must be http://<loopback>:<port> (zen-control's API; the proxy has no certificate yet to use its own listeners)"
        ));
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(format!(
            "{s:?}: the enrollment answer carries the proxy's HMAC secret in plain HTTP, so the host must be a loopback address"
        ));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{s:?}: give scheme, host and port only"));
    }
    Ok(format!(
        "http://{}",
        uri.authority().map(|a| a.as_str()).unwrap_or(host)
    ))
}

/// The SVID in `dir`, when it is complete and usable: for our SPIFFE ID, unexpired, key matching,
/// HMAC key present. `Err(why)` says what is missing or wrong.
pub struct OwnSvid {
    pub not_after: i64,
}

pub fn load_own(settings: &SvidSettings, provider: &CryptoProvider) -> Result<OwnSvid, String> {
    let cert_file = settings.cert_file();
    if !cert_file.exists() {
        return Err(format!("{} does not exist", cert_file.display()));
    }
    settle_next_key(settings, provider)?;
    let cert = ServingCert::from_files(&cert_file, &settings.key_file(), provider)
        .map_err(|e| e.to_string())?;
    let leaf = zen_trust::check_svid_leaf(
        cert.certified
            .end_entity_cert()
            .map_err(|e| e.to_string())?,
        UnixTime::now(),
    )
    .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if leaf.spiffe_id != settings.spiffe_id {
        return Err(format!(
            "{} names {}, not {}",
            cert_file.display(),
            leaf.spiffe_id,
            settings.spiffe_id
        ));
    }
    zen_agent::files::read_hmac(&settings.hmac_file()).map_err(|e| e.to_string())?;
    zen_agent::files::read_certs(&settings.ca_file()).map_err(|e| e.to_string())?;
    Ok(OwnSvid {
        not_after: leaf.not_after.0,
    })
}

/// Before any listener starts: a usable SVID in `dir`, enrolling with the token when there is
/// none. Returns when the SVID to start with is on disk.
pub fn prepare(settings: &SvidSettings, provider: &Arc<CryptoProvider>) -> Result<(), SvidError> {
    let why = match load_own(settings, provider) {
        Ok(own) => {
            tracing::info!(
                spiffe_id = %settings.spiffe_id,
                not_after = %UnixTime(own.not_after).to_rfc3339(),
                dir = %settings.dir.display(),
                "serving SVID from the previous enrollment; not enrolling again"
            );
            return Ok(());
        }
        Err(why) => why,
    };
    let token = enroll::load_token(settings).map_err(|e| match e {
        SvidError::NoToken { dir, .. } => SvidError::NoToken {
            dir,
            why: why.clone(),
        },
        e => e,
    })?;
    tracing::info!(spiffe_id = %settings.spiffe_id, url = %settings.enroll_url, reason = %why, "enrolling with zen-control");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SvidError::Unreachable {
            url: settings.enroll_url.clone(),
            detail: format!("cannot start a runtime: {e}"),
        })?;
    runtime.block_on(async {
        // Control may still be starting (compose, systemd): retry what can succeed later.
        let deadline = tokio::time::Instant::now() + ENROLL_PATIENCE;
        let mut backoff = crate::reload::control::Backoff::new();
        loop {
            match enroll::enroll(settings, &token, provider).await {
                Ok(()) => return Ok(()),
                Err(e) if e.retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "enrollment failed; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(e) => return Err(e),
            }
        }
    })
}

/// How long a first start waits for zen-control to answer the enrollment.
const ENROLL_PATIENCE: Duration = Duration::from_secs(30);

/// For `zen-proxy check`: `Some` when `dir` holds no SVID yet (so there is nothing to load; `run`
/// enrolls first) — Ok with a note when a token is available, Err when none is.
pub fn before_enrollment(settings: &SvidSettings) -> Option<Result<String, ConfigError>> {
    if settings.cert_file().exists() {
        return None;
    }
    Some(match enroll::load_token(settings) {
        Ok(_) => Ok(format!(
            "tls.from_control: no SVID in {} yet; `zen-proxy run` enrolls {} first",
            settings.dir.display(),
            settings.spiffe_id
        )),
        Err(e) => Err(ConfigError::new(
            "tls.from_control.token_file",
            e.to_string(),
        )),
    })
}

/// Writes one credential file atomically with `mode` (a reader never sees half a file).
/// A renewal writes the new key to `tls.key.next`, then `tls.crt`, then renames the key over
/// `tls.key`, so one of the two keys always matches `tls.crt` — a crash between the writes must not
/// leave a key and certificate that do not belong together (the enrollment token is spent; the
/// proxy could not get a new SVID). A leftover `tls.key.next` is the key of `tls.crt` when the cut
/// came after `tls.crt` was written: it is promoted; otherwise `tls.key` still matches, and the
/// leftover is removed.
pub fn settle_next_key(settings: &SvidSettings, provider: &CryptoProvider) -> Result<(), String> {
    let next = settings.dir.join(KEY_NEXT_FILE);
    if !next.exists() {
        return Ok(());
    }
    if ServingCert::from_files(&settings.cert_file(), &next, provider).is_ok() {
        promote_next_key(settings).map_err(|e| e.to_string())?;
        tracing::warn!(dir = %settings.dir.display(), "completed a renewal cut short: {KEY_NEXT_FILE} is the key of {CERT_FILE}");
    } else {
        std::fs::remove_file(&next)
            .map_err(|e| format!("removing the stale {}: {e}", next.display()))?;
        tracing::warn!(dir = %settings.dir.display(), "removed {KEY_NEXT_FILE} of a renewal cut short before {CERT_FILE} was written");
    }
    Ok(())
}

/// `tls.key.next` → `tls.key`, then the directory is synced so the rename survives a crash.
pub fn promote_next_key(settings: &SvidSettings) -> Result<(), SvidError> {
    let failed = |e: std::io::Error| SvidError::File {
        path: settings.key_file(),
        detail: format!("moving {KEY_NEXT_FILE} into place: {e}"),
    };
    std::fs::rename(settings.dir.join(KEY_NEXT_FILE), settings.key_file()).map_err(failed)?;
    std::fs::File::open(&settings.dir)
        .and_then(|d| d.sync_all())
        .map_err(failed)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SvidError> {
    zen_agent::files::write_atomic(path, bytes, mode).map_err(SvidError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn yaml(tls: &str, extra: &str) -> String {
        format!(
            r#"
listeners:
  agent: {{ address: "0.0.0.0:9443", client_auth: required }}
  admin: {{ address: "127.0.0.1:0" }}
tls: {tls}
control: {{ url: "https://127.0.0.1:9443/proxy/v1/state", cache_file: c.json }}
{extra}
upstreams:
  control: {{ address: "127.0.0.1:8081" }}
routes:
  - name: state
    listener: agent
    methods: [GET]
    path: /proxy/v1/state
    upstream: control
    auth: {{ spiffe: ["spiffe://zen.local/proxy/*"], hmac: off }}
"#
        )
    }

    const FROM_CONTROL: &str = "{ from_control: { dir: /tmp/p, spiffe_id: \"spiffe://zen.local/proxy/p1\", enroll_url: \"http://127.0.0.1:8081\" } }";

    fn load(text: &str) -> Result<Config, crate::config::ConfigErrors> {
        Config::from_yaml(text, Path::new("t.yaml"), None)
    }

    fn paths(text: &str) -> Vec<String> {
        load(text)
            .err()
            .map(|e| e.0.into_iter().map(|e| e.path).collect())
            .unwrap_or_default()
    }

    #[test]
    fn from_control_defaults_and_files() {
        let c = load(&yaml(FROM_CONTROL, "")).unwrap();
        let s = c.svid.unwrap();
        assert_eq!(s.dns, vec!["localhost"]);
        assert_eq!(s.ips, vec![IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(s.renew_fraction, 0.5);
        assert_eq!(s.agent_url, "https://127.0.0.1:9443");
        assert_eq!(s.enroll_url, "http://127.0.0.1:8081");
        assert_eq!(c.files.cert, Path::new("/tmp/p/tls.crt"));
        assert_eq!(c.files.key, Path::new("/tmp/p/tls.key"));
        assert!(c.files.serving_from_control);
        // No trust_bundles: the SVID dir's ca.crt is the bundle of its trust domain.
        assert_eq!(
            c.files.bundles,
            vec![("zen.local".to_string(), PathBuf::from("/tmp/p/ca.crt"))]
        );
    }

    #[test]
    fn exactly_one_source() {
        let both = "{ cert_file: c.pem, key_file: k.pem, from_control: { dir: d, spiffe_id: \"spiffe://zen.local/proxy/p1\", enroll_url: \"http://127.0.0.1:8081\" } }";
        assert_eq!(paths(&yaml(both, "")), vec!["tls.from_control"]);
        assert_eq!(paths(&yaml("{}", "")), vec!["trust_bundles", "tls"]);
        assert_eq!(
            paths(&yaml(
                "{ cert_file: c.pem }",
                "trust_bundles: [{trust_domain: zen.local, file: b.pem}]"
            )),
            vec!["tls.key_file"]
        );
    }

    #[test]
    fn from_control_errors_name_the_key() {
        let with = |field: &str| {
            FROM_CONTROL.replace(
                "enroll_url: \"http://127.0.0.1:8081\"",
                &format!("enroll_url: \"http://127.0.0.1:8081\", {field}"),
            )
        };
        assert_eq!(
            paths(&yaml(
                &FROM_CONTROL.replace("proxy/p1", "cluster/c1/agent/a1"),
                ""
            )),
            vec!["tls.from_control.spiffe_id"]
        );
        for bad in [
            "https://127.0.0.1:8081",
            "http://10.0.0.1:8081",
            "http://127.0.0.1:8081/x",
        ] {
            assert_eq!(
                paths(&yaml(
                    &FROM_CONTROL.replace("http://127.0.0.1:8081", bad),
                    ""
                )),
                vec!["tls.from_control.enroll_url"],
                "{bad}"
            );
        }
        assert_eq!(
            paths(&yaml(&with("renew_fraction: 1.0"), "")),
            vec!["tls.from_control.renew_fraction"]
        );
        assert_eq!(
            paths(&yaml(&with("dns: [\"*.x\"]"), "")),
            vec!["tls.from_control.dns[0]"]
        );
        assert_eq!(
            paths(&yaml(&with("ips: [nope]"), "")),
            vec![
                "tls.from_control.ips[0]",
                "tls.from_control.ips",
                "control.url"
            ]
        );
        // The proxy must be able to verify itself where it calls itself.
        assert_eq!(
            paths(&yaml(&with("ips: [\"::1\"]"), "")),
            vec!["tls.from_control.ips", "control.url"]
        );
        // Without control: there is no key set carrying the proxy's own HMAC key.
        let no_control = yaml(FROM_CONTROL, "").replace(
            "control: { url: \"https://127.0.0.1:9443/proxy/v1/state\", cache_file: c.json }",
            "key_set_file: k.json",
        );
        assert_eq!(paths(&no_control), vec!["tls.from_control"]);
    }

    #[test]
    fn token_is_not_in_the_config_dump() {
        let c = load(&yaml(
            &FROM_CONTROL.replace(
                "dir: /tmp/p",
                "dir: /tmp/p, token_file: /run/secrets/token.json",
            ),
            "",
        ))
        .unwrap();
        let dump = c.raw_dump.to_string();
        assert!(dump.contains("/run/secrets/token.json"), "{dump}");
        assert!(!dump.contains("secret\":"), "{dump}");
    }
}
