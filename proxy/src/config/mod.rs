//! Proxy configuration: parsed once from YAML, validated into typed values.
//! Relative file paths are resolved against the process working directory
//! (the dev stack runs from the repo root: `.zen/dev/proxy/tls.crt`).

pub mod raw;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::policy::routes::Hmac;
use crate::policy::{Listener, PathTemplate, Route, RouteTable, SpiffePattern};
pub use raw::{ClientAuth, RawConfig};

/// One problem in the config, located by its YAML path (`routes[2].auth.hmac`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("no errors"),
            [one] => write!(f, "{one}"),
            [first, rest @ ..] => write!(
                f,
                "{first} (and {} more; run `zen-proxy check --config FILE`)",
                rest.len()
            ),
        }
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone)]
pub struct AgentListener {
    pub address: SocketAddr,
    pub allow_tls12: bool,
}

#[derive(Debug, Clone)]
pub struct BootstrapListener {
    pub address: SocketAddr,
    pub require_spiffe: bool,
    pub allow_tls12: bool,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub address: SocketAddr,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SignatureSettings {
    pub max_age: Duration,
    pub max_skew: Duration,
    pub require_nonce: bool,
}

#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `tls.from_control`: the SVID source writes these files and publishes the serving
    /// certificate itself (one writer); the file source leaves it alone.
    pub serving_from_control: bool,
    /// (trust domain, bundle PEM file)
    pub bundles: Vec<(String, PathBuf)>,
    /// None when `control` supplies the key set.
    pub key_set: Option<PathBuf>,
    pub revocations: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub agent: AgentListener,
    pub bootstrap: Option<BootstrapListener>,
    pub admin: SocketAddr,
    pub files: Files,
    pub signature: SignatureSettings,
    pub replay_capacity: usize,
    pub watch_files: bool,
    pub debounce: Duration,
    pub shutdown_grace_secs: u64,
    pub shutdown_timeout_secs: u64,
    pub upstreams: Vec<Upstream>,
    pub routes: RouteTable,
    /// Control-plane source of key set, trust bundle and revocations, if configured.
    pub control: Option<crate::reload::control::ControlSettings>,
    /// `tls.from_control`: the proxy's own SVID is enrolled with and renewed by zen-control.
    pub svid: Option<crate::svid_source::SvidSettings>,
    /// The validated YAML, for `/config_dump` (it holds paths, never secrets).
    pub raw_dump: serde_json::Value,
}

/// Environment override of `listeners.bootstrap.require_spiffe` (DESIGN §2).
pub const BOOTSTRAP_REQUIRE_SPIFFE_ENV: &str = "BOOTSTRAP_REQUIRE_SPIFFE";

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                path.display().to_string(),
                format!("cannot read config file: {e}"),
            )])
        })?;
        let env = std::env::var(BOOTSTRAP_REQUIRE_SPIFFE_ENV).ok();
        Config::from_yaml(&text, path, env.as_deref())
    }

    pub fn from_yaml(
        text: &str,
        source: &Path,
        env_require_spiffe: Option<&str>,
    ) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| {
            let path = e
                .location()
                .map(|l| {
                    format!(
                        "{} line {} column {}",
                        source.display(),
                        l.line(),
                        l.column()
                    )
                })
                .unwrap_or_else(|| source.display().to_string());
            ConfigErrors(vec![ConfigError::new(path, e.to_string())])
        })?;
        validate(raw, source, env_require_spiffe)
    }
}

fn parse_addr(errs: &mut Vec<ConfigError>, path: &str, s: &str) -> Option<SocketAddr> {
    match s.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => Some(a),
        Ok(None) => {
            errs.push(ConfigError::new(
                path,
                format!("{s:?} resolves to no address"),
            ));
            None
        }
        Err(e) => {
            errs.push(ConfigError::new(
                path,
                format!("{s:?} is not host:port ({e})"),
            ));
            None
        }
    }
}

fn parse_bool_env(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn validate(
    raw: RawConfig,
    source: &Path,
    env_require_spiffe: Option<&str>,
) -> Result<Config, ConfigErrors> {
    let mut errs = Vec::new();
    let raw_dump = serde_json::to_value(&raw).unwrap_or(serde_json::Value::Null);

    // Fail closed: the agent listener only ever runs with mandatory client certs.
    if raw.listeners.agent.client_auth != ClientAuth::Required {
        errs.push(ConfigError::new(
            "listeners.agent.client_auth",
            "must be `required`: the agent listener never serves without a verified client certificate",
        ));
    }
    let agent_addr = parse_addr(
        &mut errs,
        "listeners.agent.address",
        &raw.listeners.agent.address,
    );
    let admin = parse_addr(
        &mut errs,
        "listeners.admin.address",
        &raw.listeners.admin.address,
    );

    let env_override = match env_require_spiffe {
        Some(v) => match parse_bool_env(v) {
            Some(b) => Some(b),
            None => {
                errs.push(ConfigError::new(
                    format!("env {BOOTSTRAP_REQUIRE_SPIFFE_ENV}"),
                    format!("{v:?} is not a boolean (true/false)"),
                ));
                None
            }
        },
        None => None,
    };
    let bootstrap = raw.listeners.bootstrap.as_ref().and_then(|b| {
        let address = parse_addr(&mut errs, "listeners.bootstrap.address", &b.address)?;
        Some(BootstrapListener {
            address,
            require_spiffe: env_override.unwrap_or(b.require_spiffe),
            allow_tls12: b.allow_tls12,
        })
    });

    let mut bundles = Vec::new();
    if raw.trust_bundles.is_empty() && raw.tls.from_control.is_none() {
        errs.push(ConfigError::new(
            "trust_bundles",
            "at least one trust bundle is required (or tls.from_control, whose ca.crt is used)",
        ));
    }
    for (i, b) in raw.trust_bundles.iter().enumerate() {
        let td = b.trust_domain.as_str();
        let td_ok = !td.is_empty()
            && td
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-._".contains(&c));
        if !td_ok {
            errs.push(ConfigError::new(
                format!("trust_bundles[{i}].trust_domain"),
                format!("{td:?} is not a valid trust domain name (lowercase letters, digits, '-', '.', '_')"),
            ));
        }
        if bundles.iter().any(|(t, _): &(String, PathBuf)| t == td) {
            errs.push(ConfigError::new(
                format!("trust_bundles[{i}].trust_domain"),
                format!("trust domain {td:?} listed twice"),
            ));
        }
        bundles.push((td.to_string(), b.file.clone()));
    }

    if raw.signature.max_age_secs == 0 {
        errs.push(ConfigError::new("signature.max_age_secs", "must be > 0"));
    }
    if raw.replay_cache.capacity == 0 {
        errs.push(ConfigError::new("replay_cache.capacity", "must be > 0"));
    }

    let mut upstreams = Vec::new();
    for (name, u) in &raw.upstreams {
        let p = format!("upstreams.{name}");
        if let Some(address) = parse_addr(&mut errs, &format!("{p}.address"), &u.address) {
            for (field, v) in [
                ("connect_timeout_ms", u.connect_timeout_ms),
                ("read_timeout_ms", u.read_timeout_ms),
                ("write_timeout_ms", u.write_timeout_ms),
            ] {
                if v == 0 {
                    errs.push(ConfigError::new(format!("{p}.{field}"), "must be > 0"));
                }
            }
            upstreams.push(Upstream {
                name: name.clone(),
                address,
                connect_timeout: Duration::from_millis(u.connect_timeout_ms),
                read_timeout: Duration::from_millis(u.read_timeout_ms),
                write_timeout: Duration::from_millis(u.write_timeout_ms),
                idle_timeout: Duration::from_millis(u.idle_timeout_ms),
            });
        }
    }

    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        if let Some(route) = validate_route(&mut errs, i, r, &raw) {
            routes.push(route);
        }
    }
    if routes.is_empty() && !raw.routes.is_empty() {
        // errors already reported per route
    } else if raw.routes.is_empty() {
        errs.push(ConfigError::new("routes", "at least one route is required"));
    }
    if let Some(dup) = first_duplicate(raw.routes.iter().map(|r| r.name.as_str())) {
        errs.push(ConfigError::new(
            "routes",
            format!("route name {dup:?} used twice"),
        ));
    }

    let control = validate_control(&raw, &mut errs);
    let (cert, key, svid) = validate_tls(&raw, agent_addr, control.as_ref(), &mut errs);
    if let Some(svid) = &svid {
        if bundles.is_empty() {
            bundles.push((svid.spiffe_id.trust_domain().to_string(), svid.ca_file()));
        }
    }

    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    let (Some(agent_addr), Some(admin)) = (agent_addr, admin) else {
        unreachable!("address errors are reported above");
    };
    Ok(Config {
        source: source.to_path_buf(),
        agent: AgentListener {
            address: agent_addr,
            allow_tls12: raw.listeners.agent.allow_tls12,
        },
        bootstrap,
        admin,
        files: Files {
            cert,
            key,
            serving_from_control: svid.is_some(),
            bundles,
            key_set: raw.key_set_file.clone(),
            revocations: raw.revocations_file.clone(),
        },
        signature: SignatureSettings {
            max_age: Duration::from_secs(raw.signature.max_age_secs),
            max_skew: Duration::from_secs(raw.signature.max_skew_secs),
            require_nonce: raw.signature.require_nonce,
        },
        replay_capacity: raw.replay_cache.capacity,
        watch_files: raw.reload.watch,
        debounce: Duration::from_millis(raw.reload.debounce_ms),
        shutdown_grace_secs: raw.shutdown.grace_seconds,
        shutdown_timeout_secs: raw.shutdown.timeout_seconds,
        upstreams,
        routes: RouteTable::new(routes),
        control,
        svid,
        raw_dump,
    })
}

/// `tls:` is either `{cert_file, key_file}` or `{from_control: …}`; returns the serving
/// certificate's files (for `from_control`, the ones it writes) and the SVID source settings.
fn validate_tls(
    raw: &RawConfig,
    agent_addr: Option<SocketAddr>,
    control: Option<&crate::reload::control::ControlSettings>,
    errs: &mut Vec<ConfigError>,
) -> (PathBuf, PathBuf, Option<crate::svid_source::SvidSettings>) {
    let t = &raw.tls;
    match (&t.cert_file, &t.key_file, &t.from_control) {
        (Some(cert), Some(key), None) => (cert.clone(), key.clone(), None),
        (None, None, Some(fc)) => {
            match crate::svid_source::SvidSettings::validate(fc, agent_addr, control, errs) {
                Some(s) => (s.cert_file(), s.key_file(), Some(s)),
                None => (PathBuf::new(), PathBuf::new(), None),
            }
        }
        (Some(_), None, None) => {
            errs.push(ConfigError::new(
                "tls.key_file",
                "required with tls.cert_file",
            ));
            (PathBuf::new(), PathBuf::new(), None)
        }
        (None, Some(_), None) => {
            errs.push(ConfigError::new(
                "tls.cert_file",
                "required with tls.key_file",
            ));
            (PathBuf::new(), PathBuf::new(), None)
        }
        (None, None, None) => {
            errs.push(ConfigError::new(
                "tls",
                "set cert_file + key_file (files), or from_control (enrolled with zen-control)",
            ));
            (PathBuf::new(), PathBuf::new(), None)
        }
        (_, _, Some(_)) => {
            errs.push(ConfigError::new(
                "tls.from_control",
                "not with tls.cert_file / tls.key_file: the serving SVID has exactly one source",
            ));
            (PathBuf::new(), PathBuf::new(), None)
        }
    }
}

/// `control:` and `key_set_file` are two writers of one value: exactly one of them must be set.
fn validate_control(
    raw: &RawConfig,
    errs: &mut Vec<ConfigError>,
) -> Option<crate::reload::control::ControlSettings> {
    let Some(c) = &raw.control else {
        if raw.key_set_file.is_none() {
            errs.push(ConfigError::new(
                "key_set_file",
                "required unless `control:` supplies the key set",
            ));
        }
        return None;
    };
    if raw.key_set_file.is_some() || raw.revocations_file.is_some() {
        errs.push(ConfigError::new(
            "control",
            "with `control:` the key set and revocations come from zen-control; remove key_set_file / revocations_file",
        ));
    }
    let url = match c.url.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => Some(u),
        _ => {
            errs.push(ConfigError::new(
                "control.url",
                format!("{:?} is not an https:// URL with a host", c.url),
            ));
            None
        }
    };
    if c.max_state_age_secs == 0 || c.request_timeout_secs == 0 {
        errs.push(ConfigError::new(
            "control",
            "max_state_age_secs and request_timeout_secs must be > 0",
        ));
    }
    Some(crate::reload::control::ControlSettings {
        url: url?,
        cache_file: c.cache_file.clone(),
        max_state_age: Duration::from_secs(c.max_state_age_secs),
        request_timeout: Duration::from_secs(c.request_timeout_secs),
    })
}

fn first_duplicate<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = std::collections::HashSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
}

fn validate_route(
    errs: &mut Vec<ConfigError>,
    i: usize,
    r: &raw::RawRoute,
    raw: &RawConfig,
) -> Option<Route> {
    let p = format!("routes[{i}]");
    let before = errs.len();
    let path = match PathTemplate::parse(&r.path) {
        Ok(t) => Some(t),
        Err(e) => {
            errs.push(ConfigError::new(format!("{p}.path"), e.to_string()));
            None
        }
    };
    if r.methods.is_empty() {
        errs.push(ConfigError::new(
            format!("{p}.methods"),
            "at least one method is required",
        ));
    }
    let mut methods = Vec::new();
    for (j, m) in r.methods.iter().enumerate() {
        let up = m.to_ascii_uppercase();
        if !["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"].contains(&up.as_str()) {
            errs.push(ConfigError::new(
                format!("{p}.methods[{j}]"),
                format!("unknown method {m:?}"),
            ));
        }
        methods.push(up);
    }
    if !raw.upstreams.contains_key(&r.upstream) {
        errs.push(ConfigError::new(
            format!("{p}.upstream"),
            format!("no upstream named {:?} under `upstreams`", r.upstream),
        ));
    }
    if r.listener == Listener::Bootstrap && raw.listeners.bootstrap.is_none() {
        errs.push(ConfigError::new(
            format!("{p}.listener"),
            "route on the bootstrap listener, but `listeners.bootstrap` is not configured",
        ));
    }
    let hmac = match r.auth.hmac {
        raw::RawHmac::Required => Hmac::Required,
        raw::RawHmac::Off => Hmac::Off,
    };
    // Fail closed: every agent API call carries a request signature.
    if hmac == Hmac::Off && r.path.starts_with("/agent/") {
        errs.push(ConfigError::new(
            format!("{p}.auth.hmac"),
            "`/agent/` routes must have `hmac: required`",
        ));
    }
    if hmac == Hmac::Required && r.listener == Listener::Bootstrap {
        errs.push(ConfigError::new(
            format!("{p}.auth.hmac"),
            "the bootstrap listener has no peer key binding; use `hmac: off` (the upstream verifies token signatures)",
        ));
    }
    let mut spiffe = Vec::new();
    for (j, s) in r.auth.spiffe.iter().enumerate() {
        match SpiffePattern::parse(s) {
            Ok(pat) => {
                if let Some(t) = &path {
                    for v in pat.vars() {
                        if !t.vars().any(|tv| tv == v) {
                            errs.push(ConfigError::new(
                                format!("{p}.auth.spiffe[{j}]"),
                                format!(
                                    "variable {{{v}}} is not a variable of the path {:?}",
                                    r.path
                                ),
                            ));
                        }
                    }
                }
                spiffe.push(pat);
            }
            Err(e) => errs.push(ConfigError::new(
                format!("{p}.auth.spiffe[{j}]"),
                e.to_string(),
            )),
        }
    }
    if spiffe.is_empty() && r.listener == Listener::Agent {
        errs.push(ConfigError::new(
            format!("{p}.auth.spiffe"),
            "agent-listener routes need at least one SPIFFE pattern",
        ));
    }
    let max_body_bytes = r.auth.max_body_bytes.unwrap_or(raw::DEFAULT_MAX_BODY_BYTES);
    if errs.len() != before {
        return None;
    }
    Some(Route {
        name: r.name.clone(),
        listener: r.listener,
        methods,
        path: path?,
        upstream: r.upstream.clone(),
        spiffe,
        hmac,
        max_body_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
listeners:
  agent: { address: "127.0.0.1:0", client_auth: required }
  bootstrap: { address: "127.0.0.1:0" }
  admin: { address: "127.0.0.1:0" }
tls: { cert_file: c.pem, key_file: k.pem }
trust_bundles: [ { trust_domain: zen.local, file: b.pem } ]
key_set_file: keys.json
upstreams:
  control: { address: "127.0.0.1:8081" }
routes:
  - name: ds
    listener: agent
    methods: [GET]
    path: /agent/v1/clusters/{cid}/desired-state
    upstream: control
    auth: { spiffe: ["spiffe://zen.local/cluster/{cid}/agent/*"], hmac: required }
  - name: enroll
    listener: bootstrap
    methods: [POST]
    path: /enroll/v1/request
    upstream: control
    auth: { hmac: off }
"#;

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_yaml(text, Path::new("t.yaml"), None)
    }

    #[test]
    fn minimal_is_valid() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.routes.routes().len(), 2);
        assert_eq!(c.routes.routes()[0].max_body_bytes, 1024 * 1024);
        assert!(!c.bootstrap.unwrap().require_spiffe);
    }

    #[test]
    fn client_auth_must_be_required() {
        let e =
            load(&MINIMAL.replace("client_auth: required", "client_auth: optional")).unwrap_err();
        assert_eq!(e.0[0].path, "listeners.agent.client_auth");
    }

    #[test]
    fn agent_route_needs_hmac() {
        let text = MINIMAL.replace(
            "\"spiffe://zen.local/cluster/{cid}/agent/*\"], hmac: required",
            "\"spiffe://zen.local/cluster/{cid}/agent/*\"], hmac: off",
        );
        let e = load(&text).unwrap_err();
        assert_eq!(e.0[0].path, "routes[0].auth.hmac");
    }

    #[test]
    fn unknown_fields_are_refused_with_location() {
        let e = load(&MINIMAL.replace(
            "key_set_file: keys.json",
            "key_set_file: keys.json\nbogus: 1",
        ))
        .unwrap_err();
        assert!(e.0[0].message.contains("unknown field `bogus`"), "{e}");
        assert!(e.0[0].path.contains("line"), "{e}");
    }

    #[test]
    fn pattern_variable_must_exist_in_path() {
        let text = MINIMAL.replace("cluster/{cid}/agent/*", "cluster/{cluster}/agent/*");
        let e = load(&text).unwrap_err();
        assert_eq!(e.0[0].path, "routes[0].auth.spiffe[0]");
    }

    #[test]
    fn dev_config_covers_every_design_route() {
        let text = include_str!("../../../config/dev/proxy.yaml");
        let c = load(text).unwrap();
        let t = &c.routes;
        for (listener, method, path) in [
            (
                Listener::Agent,
                "GET",
                "/agent/v1/clusters/c1/desired-state",
            ),
            (Listener::Agent, "POST", "/agent/v1/heartbeat"),
            (Listener::Agent, "POST", "/agent/v1/heartbeats"),
            (
                Listener::Agent,
                "POST",
                "/agent/v1/clusters/c1/adapters/sync",
            ),
            (Listener::Agent, "GET", "/agent/v1/allowlist"),
            (Listener::Agent, "POST", "/enroll/v1/confirm"),
            (Listener::Agent, "POST", "/agent/v1/svid/renew"),
            (Listener::Agent, "GET", "/agent/v1/hmac-key"),
            (Listener::Agent, "GET", "/proxy/v1/state"),
            (Listener::Bootstrap, "POST", "/enroll/v1/request"),
        ] {
            assert!(t.find(listener, method, path).is_some(), "{method} {path}");
        }
        let ds = t
            .find(
                Listener::Agent,
                "GET",
                "/agent/v1/clusters/c1/desired-state",
            )
            .unwrap();
        let id = "spiffe://zen.local/cluster/c2/agent/a";
        assert!(!ds.route.spiffe.iter().any(|p| p.matches(id, &ds.vars)));
    }

    #[test]
    fn env_overrides_require_spiffe() {
        let c = Config::from_yaml(MINIMAL, Path::new("t.yaml"), Some("true")).unwrap();
        assert!(c.bootstrap.unwrap().require_spiffe);
        assert!(Config::from_yaml(MINIMAL, Path::new("t.yaml"), Some("maybe")).is_err());
    }
}
