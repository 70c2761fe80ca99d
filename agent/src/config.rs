//! `agent.yaml` for `zen-agent run`: parsed and validated once into [`AgentConfig`]. Every key is
//! optional; the defaults fit the dev stack (`make run`). Relative paths are relative to the working
//! directory, as for zen-control.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    #[error("config file {path}: `{key}` {detail}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        detail: String,
    },
}

/// The validated configuration of `zen-agent run`.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The credential directory written by `zen-agent enroll --out` (svid.pem, svid.key, bundle.pem,
    /// hmac.json); renewed files are written back into it.
    pub files_dir: PathBuf,
    /// The proxy's agent listener, `https://HOST:PORT`, without a trailing slash.
    pub server: String,
    pub heartbeat_interval: Duration,
    pub desired_state_interval: Duration,
    /// Where the latest desired-state document is written (atomically); None keeps it in memory.
    pub desired_state_file: Option<PathBuf>,
    /// How often `GET /agent/v1/hmac-key` is asked even without a hint from a heartbeat or a refusal.
    pub hmac_key_interval: Duration,
    /// Renew the SVID when this fraction of its lifetime (notBefore → notAfter) has passed.
    pub renew_fraction: f64,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Upper bound on one request (connect + TLS + response).
    pub request_timeout: Duration,
    /// How long a request refused with `key_unknown` is retried (every second) before it counts as
    /// failed: proxies learn new keys by long-poll, so a fresh key can be unknown for a moment.
    pub key_unknown_patience: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            files_dir: PathBuf::from(".zen/dev/agent"),
            server: "https://localhost:9443".into(),
            heartbeat_interval: Duration::from_secs(30),
            desired_state_interval: Duration::from_secs(30),
            desired_state_file: None,
            hmac_key_interval: Duration::from_secs(600),
            renew_fraction: 0.5,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            key_unknown_patience: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    files_dir: Option<PathBuf>,
    server: Option<String>,
    heartbeat_interval: Option<String>,
    desired_state_interval: Option<String>,
    desired_state_file: Option<PathBuf>,
    hmac_key_interval: Option<String>,
    renew_fraction: Option<f64>,
    backoff_min: Option<String>,
    backoff_max: Option<String>,
    request_timeout: Option<String>,
    key_unknown_patience: Option<String>,
}

/// `<n><unit>` with unit ms, s, m, h or d: "500ms", "30s", "10m", "24h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration `{s}` has no unit (use ms, s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration `{s}` does not start with a number"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "duration `{s}`: unknown unit `{unit}` (use ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration `{s}` is too large"))
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        AgentConfig::parse(&text, path)
    }

    /// Parses YAML text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        // An empty file is an all-defaults config, not a YAML error.
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?
        };
        let invalid = |key: &'static str, detail: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            detail,
        };
        let dur = |key: &'static str, value: &Option<String>, default: Duration| match value {
            Some(text) => parse_duration(text).map_err(|detail| invalid(key, detail)),
            None => Ok(default),
        };
        let d = AgentConfig::default();
        let config = AgentConfig {
            heartbeat_interval: dur(
                "heartbeat_interval",
                &raw.heartbeat_interval,
                d.heartbeat_interval,
            )?,
            desired_state_interval: dur(
                "desired_state_interval",
                &raw.desired_state_interval,
                d.desired_state_interval,
            )?,
            hmac_key_interval: dur(
                "hmac_key_interval",
                &raw.hmac_key_interval,
                d.hmac_key_interval,
            )?,
            backoff_min: dur("backoff_min", &raw.backoff_min, d.backoff_min)?,
            backoff_max: dur("backoff_max", &raw.backoff_max, d.backoff_max)?,
            request_timeout: dur("request_timeout", &raw.request_timeout, d.request_timeout)?,
            key_unknown_patience: dur(
                "key_unknown_patience",
                &raw.key_unknown_patience,
                d.key_unknown_patience,
            )?,
            files_dir: raw.files_dir.unwrap_or(d.files_dir),
            server: raw
                .server
                .map(|s| s.trim_end_matches('/').to_owned())
                .unwrap_or(d.server),
            desired_state_file: raw.desired_state_file,
            renew_fraction: raw.renew_fraction.unwrap_or(d.renew_fraction),
        };
        config
            .validate()
            .map_err(|(key, detail)| invalid(key, detail))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let uri: http::Uri = self
            .server
            .parse()
            .map_err(|_| ("server", format!("{:?} is not a URL", self.server)))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err((
                "server",
                format!(
                    "{:?} must be https://HOST[:PORT] (the proxy's agent listener)",
                    self.server
                ),
            ));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(("server", format!("{:?} must not carry a path", self.server)));
        }
        for (key, value) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("desired_state_interval", self.desired_state_interval),
            ("hmac_key_interval", self.hmac_key_interval),
            ("backoff_min", self.backoff_min),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return Err((key, "must be greater than zero".into()));
            }
        }
        if !(0.05..=0.95).contains(&self.renew_fraction) {
            return Err((
                "renew_fraction",
                format!(
                    "is {}; it must be between 0.05 and 0.95 (0.5 renews at half the SVID's lifetime)",
                    self.renew_fraction
                ),
            ));
        }
        if self.backoff_max < self.backoff_min {
            return Err((
                "backoff_max",
                format!(
                    "({:?}) is below backoff_min ({:?})",
                    self.backoff_max, self.backoff_min
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, String> {
        AgentConfig::parse(text, Path::new("agent.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.files_dir, PathBuf::from(".zen/dev/agent"));
        assert_eq!(c.server, "https://localhost:9443");
        assert_eq!(c.renew_fraction, 0.5);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.desired_state_file, None);
    }

    #[test]
    fn every_key_parses() {
        let c = parse(
            "files_dir: /var/lib/zen/agent\n\
             server: https://mesh.example:9443/\n\
             heartbeat_interval: 5s\n\
             desired_state_interval: 500ms\n\
             desired_state_file: /run/zen/desired.json\n\
             hmac_key_interval: 2m\n\
             renew_fraction: 0.25\n\
             backoff_min: 200ms\n\
             backoff_max: 1h\n\
             request_timeout: 3s\n\
             key_unknown_patience: 20s\n",
        )
        .unwrap();
        assert_eq!(c.files_dir, PathBuf::from("/var/lib/zen/agent"));
        assert_eq!(
            c.server, "https://mesh.example:9443",
            "trailing slash dropped"
        );
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.desired_state_interval, Duration::from_millis(500));
        assert_eq!(
            c.desired_state_file,
            Some(PathBuf::from("/run/zen/desired.json"))
        );
        assert_eq!(c.hmac_key_interval, Duration::from_secs(120));
        assert_eq!(c.renew_fraction, 0.25);
        assert_eq!(c.backoff_min, Duration::from_millis(200));
        assert_eq!(c.backoff_max, Duration::from_secs(3600));
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert_eq!(c.key_unknown_patience, Duration::from_secs(20));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let err = parse("heartbeat_intervall: 5s\n").unwrap_err();
        assert!(
            err.contains("agent.yaml") && err.contains("heartbeat_intervall"),
            "{err}"
        );
        let err = parse("heartbeat_interval: 5\n").unwrap_err();
        assert!(
            err.contains("heartbeat_interval") && err.contains("no unit"),
            "{err}"
        );
        let err = parse("desired_state_interval: 3 weeks\n").unwrap_err();
        assert!(err.contains("`desired_state_interval`"), "{err}");
        let err = parse("renew_fraction: half\n").unwrap_err();
        assert!(err.contains("renew_fraction"), "{err}");
        let err = parse("renew_fraction: 1.5\n").unwrap_err();
        assert!(err.contains("`renew_fraction`"), "{err}");
        let err = parse("backoff_min: 10s\nbackoff_max: 1s\n").unwrap_err();
        assert!(err.contains("`backoff_max`"), "{err}");
        let err = parse("server: http://localhost:9443\n").unwrap_err();
        assert!(err.contains("`server`"), "{err}");
        let err = parse("server: https://localhost:9443/agent\n").unwrap_err();
        assert!(err.contains("`server`"), "{err}");
        let err = parse("heartbeat_interval: 0s\n").unwrap_err();
        assert!(err.contains("`heartbeat_interval`"), "{err}");
    }

    #[test]
    fn the_shipped_examples_parse() {
        let dev = parse(include_str!("../../config/dev/agent.yaml")).unwrap();
        assert_eq!(dev.files_dir, PathBuf::from(".zen/dev/agent"));
        assert_eq!(dev.server, "https://localhost:9443");
        assert_eq!(
            AgentConfig {
                desired_state_file: None,
                ..dev
            },
            AgentConfig::default(),
            "config/dev/agent.yaml documents the defaults (except desired_state_file)"
        );
        parse(include_str!("../../config/compose/agent.yaml")).unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3w").is_err());
    }
}
