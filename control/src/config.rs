//! Configuration: parsed and validated once into typed values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Body limit on every API route (DESIGN §6 `body_too_large`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("config `{field}`: {detail}")]
    Invalid { field: &'static str, detail: String },
}

fn invalid(field: &'static str, detail: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        detail: detail.into(),
    }
}

/// A duration written as `<n><unit>` with unit s, m, h or d ("90s", "24h", "3650d").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit (use s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use s, m, h or d)")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    fronted_by_proxy: Option<bool>,
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    trust_bundle_file: Option<PathBuf>,
    trust_domain: Option<String>,
    #[serde(default)]
    svid: RawSvid,
    #[serde(default)]
    ca: RawCa,
    #[serde(default)]
    enrollment: RawEnrollment,
    #[serde(default)]
    hmac: RawHmac,
    #[serde(default)]
    proxy_sync: RawProxySync,
    #[serde(default)]
    controller: RawController,
    #[serde(default)]
    testing: RawTesting,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSvid {
    ttl: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCa {
    root_ttl: Option<String>,
    intermediate_ttl: Option<String>,
    propagation_delay: Option<String>,
    import: Option<CaImport>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnrollment {
    token_ttl: Option<String>,
    token_max_ttl: Option<String>,
    confirm_timeout: Option<String>,
    require_spiffe: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHmac {
    key_lifetime: Option<String>,
    grace: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxySync {
    long_poll_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawController {
    interval: Option<String>,
}

/// Test-only switches; a production config has no `testing:` section.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTesting {
    short_svid_ttl: Option<bool>,
}

/// Existing CA material used on first start instead of generating a root + intermediate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaImport {
    pub root_cert: PathBuf,
    pub intermediate_cert: PathBuf,
    pub intermediate_key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub fronted_by_proxy: bool,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// Where to (re)write the trust bundle PEM on start and on every CA change, if set.
    pub trust_bundle_file: Option<PathBuf>,
    pub trust_domain: String,
    pub svid_ttl: Duration,
    pub ca_root_ttl: Duration,
    pub ca_intermediate_ttl: Duration,
    pub ca_propagation_delay: Duration,
    pub ca_import: Option<CaImport>,
    pub token_ttl: Duration,
    pub token_max_ttl: Duration,
    pub confirm_timeout: Duration,
    pub require_spiffe: bool,
    pub key_lifetime: Duration,
    pub key_grace: Duration,
    pub long_poll_timeout: Duration,
    pub controller_interval: Duration,
    /// `testing.short_svid_ttl`: lowers the `svid.ttl` floor from 60 s to 5 s so end-to-end tests
    /// can watch a whole CA rotation (the old root leaves only after `svid.ttl`) within a minute.
    pub testing_short_svid_ttl: bool,
}

fn dur(
    field: &'static str,
    v: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|e| invalid(field, e)),
    }
}

fn addr(field: &'static str, v: &Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let s = v.as_deref().unwrap_or(default);
    s.parse().map_err(|_| {
        invalid(
            field,
            format!("`{s}` is not an address like 127.0.0.1:8081"),
        )
    })
}

impl Config {
    /// Defaults of the dev stack (DESIGN §2).
    pub fn dev_defaults() -> Self {
        Self::from_raw(RawConfig::default()).expect("defaults are valid")
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: PathBuf::from("<inline>"),
                source,
            })?
        };
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let data_dir = raw
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".zen/dev/control"));
        let socket = raw
            .socket
            .clone()
            .unwrap_or_else(|| data_dir.join("control.sock"));
        let trust_domain = raw
            .trust_domain
            .clone()
            .unwrap_or_else(|| "zen.local".to_string());
        if trust_domain.is_empty()
            || !trust_domain
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
        {
            return Err(invalid(
                "trust_domain",
                format!("`{trust_domain}` is not a lowercase SPIFFE trust domain name"),
            ));
        }
        let h = |n: u64| Duration::from_secs(n * 3600);
        let cfg = Config {
            listen: addr("listen", &raw.listen, "127.0.0.1:8081")?,
            admin_listen: addr("admin_listen", &raw.admin_listen, "127.0.0.1:9902")?,
            fronted_by_proxy: raw.fronted_by_proxy.unwrap_or(false),
            data_dir,
            socket,
            trust_bundle_file: raw.trust_bundle_file.clone(),
            trust_domain,
            svid_ttl: dur("svid.ttl", &raw.svid.ttl, h(24))?,
            ca_root_ttl: dur("ca.root_ttl", &raw.ca.root_ttl, h(24 * 3650))?,
            ca_intermediate_ttl: dur("ca.intermediate_ttl", &raw.ca.intermediate_ttl, h(24 * 365))?,
            ca_propagation_delay: dur(
                "ca.propagation_delay",
                &raw.ca.propagation_delay,
                Duration::from_secs(600),
            )?,
            ca_import: raw.ca.import.clone(),
            token_ttl: dur("enrollment.token_ttl", &raw.enrollment.token_ttl, h(1))?,
            token_max_ttl: dur(
                "enrollment.token_max_ttl",
                &raw.enrollment.token_max_ttl,
                h(24 * 7),
            )?,
            confirm_timeout: dur(
                "enrollment.confirm_timeout",
                &raw.enrollment.confirm_timeout,
                Duration::from_secs(900),
            )?,
            require_spiffe: raw.enrollment.require_spiffe.unwrap_or(false),
            key_lifetime: dur("hmac.key_lifetime", &raw.hmac.key_lifetime, h(24))?,
            key_grace: dur("hmac.grace", &raw.hmac.grace, h(1))?,
            long_poll_timeout: dur(
                "proxy_sync.long_poll_timeout",
                &raw.proxy_sync.long_poll_timeout,
                Duration::from_secs(30),
            )?,
            controller_interval: dur(
                "controller.interval",
                &raw.controller.interval,
                Duration::from_secs(5),
            )?,
            testing_short_svid_ttl: raw.testing.short_svid_ttl.unwrap_or(false),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.key_grace >= self.key_lifetime {
            return Err(invalid(
                "hmac.grace",
                "must be shorter than hmac.key_lifetime",
            ));
        }
        // Below a minute every agent renews more than once a minute; only tests want that.
        let floor = if self.testing_short_svid_ttl { 5 } else { 60 };
        if self.svid_ttl.as_secs() < floor {
            return Err(invalid("svid.ttl", format!("must be at least {floor}s")));
        }
        if self.svid_ttl >= self.ca_intermediate_ttl {
            return Err(invalid(
                "svid.ttl",
                "must be shorter than ca.intermediate_ttl",
            ));
        }
        if self.ca_intermediate_ttl > self.ca_root_ttl {
            return Err(invalid(
                "ca.intermediate_ttl",
                "must not exceed ca.root_ttl",
            ));
        }
        if self.token_ttl > self.token_max_ttl || self.token_ttl.is_zero() {
            return Err(invalid(
                "enrollment.token_ttl",
                "must be non-zero and at most enrollment.token_max_ttl",
            ));
        }
        if self.confirm_timeout.is_zero() {
            return Err(invalid("enrollment.confirm_timeout", "must be non-zero"));
        }
        if self.long_poll_timeout.is_zero() || self.long_poll_timeout.as_secs() > 300 {
            return Err(invalid(
                "proxy_sync.long_poll_timeout",
                "must be between 1s and 300s",
            ));
        }
        if self.controller_interval.is_zero() {
            return Err(invalid("controller.interval", "must be non-zero"));
        }
        Ok(())
    }

    /// The API only faces the loopback unless the operator said a proxy fronts it: it trusts
    /// `x-zen-spiffe-id` blindly, so exposing it directly would let anyone claim any identity.
    pub fn check_bind(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && !self.fronted_by_proxy {
            return Err(invalid(
                "listen",
                format!(
                    "{} is not a loopback address; zen-control trusts identity headers set by \
                     zen-proxy, so bind 127.0.0.1 or set `fronted_by_proxy: true`",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// Env overrides for container deployments (`BOOTSTRAP_REQUIRE_SPIFFE`).
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        if let Ok(v) = std::env::var("BOOTSTRAP_REQUIRE_SPIFFE") {
            self.require_spiffe = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" | "" => false,
                other => {
                    return Err(invalid(
                        "BOOTSTRAP_REQUIRE_SPIFFE",
                        format!("`{other}` is not true/false"),
                    ))
                }
            };
        }
        Ok(())
    }

    /// The longest lifetime an SVID issued by this service can have.
    pub fn longest_svid_ttl(&self) -> Duration {
        self.svid_ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("24").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3x").is_err());
    }

    #[test]
    fn defaults_and_bind_rule() {
        let c = Config::dev_defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9902");
        assert!(c.check_bind().is_ok());
        let c = Config::parse("listen: 0.0.0.0:8081\n").unwrap();
        assert!(c.check_bind().is_err());
        let c = Config::parse("listen: 0.0.0.0:8081\nfronted_by_proxy: true\n").unwrap();
        assert!(c.check_bind().is_ok());
    }

    #[test]
    fn refuses_bad_values() {
        assert!(Config::parse("hmac: {key_lifetime: 1h, grace: 2h}\n").is_err());
        assert!(Config::parse("bogus: 1\n").is_err());
        assert!(Config::parse("trust_domain: Zen.Local\n").is_err());
        assert!(Config::parse("svid: {ttl: 20s}\n").is_err());
    }

    #[test]
    fn short_svid_ttl_only_with_the_testing_switch() {
        let c = Config::parse("svid: {ttl: 20s}\ntesting: {short_svid_ttl: true}\n").unwrap();
        assert_eq!(c.svid_ttl, Duration::from_secs(20));
        assert!(Config::parse("svid: {ttl: 4s}\ntesting: {short_svid_ttl: true}\n").is_err());
        assert!(!Config::dev_defaults().testing_short_svid_ttl);
    }
}
