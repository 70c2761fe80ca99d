//! Test harness: an App on a temp dir with a manual clock, and request builders that sign
//! like an agent does.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use rcgen::{CertificateParams, KeyPair, SanType, SigningKey};
use serde_json::{json, Value};
use tower::ServiceExt;
use zen_control::app::App;
use zen_control::clock::ManualClock;
use zen_control::config::Config;
use zen_control::operator::{dispatch, OpRequest};
use zen_trust::keys::EnrollmentBundle;
use zen_trust::secret::Secret;
use zen_trust::signature::{sign, RequestParts, SignOptions};
use zen_trust::time::UnixTime;

pub const T0: i64 = 1_800_000_000;
pub const HOST: &str = "control.test:8443";

pub fn agent_id(cluster: &str, agent: &str) -> String {
    format!("spiffe://zen.local/cluster/{cluster}/agent/{agent}")
}

pub struct Harness {
    pub app: Arc<App>,
    pub router: Router,
    pub clock: Arc<ManualClock>,
    pub dir: Arc<tempfile::TempDir>,
    pub cfg: Config,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn code(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
    #[track_caller]
    pub fn expect(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status.as_u16(), self.code().as_str()),
            (status, code),
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
    }
}

pub struct Token {
    pub id: String,
    pub secret: Secret,
    pub spiffe_id: String,
}

pub struct Enrolled {
    pub bundle: EnrollmentBundle,
    pub key: KeyPair,
    pub spiffe_id: String,
}

impl Harness {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(f: impl FnOnce(&mut Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut cfg = Config::dev_defaults();
        cfg.data_dir = dir.path().join("data");
        cfg.socket = cfg.data_dir.join("control.sock");
        f(&mut cfg);
        Self::open_in(dir, cfg, T0).await
    }

    pub async fn open_in(dir: Arc<tempfile::TempDir>, cfg: Config, now: i64) -> Self {
        let clock = Arc::new(ManualClock::new(now));
        let app = App::open(cfg.clone(), clock.clone(), None).await.unwrap();
        let router = zen_control::api::router(app.clone());
        Harness {
            app,
            router,
            clock,
            dir,
            cfg,
        }
    }

    /// A second service instance on the same data dir, as after a restart.
    pub async fn reopen(self) -> Self {
        let now = self.clock.now_secs();
        let (dir, cfg) = (self.dir.clone(), self.cfg.clone());
        drop(self);
        Self::open_in(dir, cfg, now).await
    }

    pub fn data_dir(&self) -> PathBuf {
        self.cfg.data_dir.clone()
    }

    pub fn now(&self) -> i64 {
        self.clock.now_secs()
    }

    pub async fn call(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn op(&self, req: OpRequest) -> Value {
        let r = dispatch(&self.app, req, "operator:test").await;
        assert!(r.ok, "operator command failed: {:?}", r.error);
        r.result
    }

    pub async fn op_err(&self, req: OpRequest) -> String {
        let r = dispatch(&self.app, req, "operator:test").await;
        assert!(!r.ok, "operator command should fail");
        r.error.unwrap()
    }

    pub async fn token(&self, spiffe_id: &str) -> Token {
        let v = self
            .op(OpRequest::TokenCreate {
                spiffe_id: spiffe_id.into(),
                ttl_secs: None,
            })
            .await;
        Token {
            id: v["token_id"].as_str().unwrap().into(),
            secret: Secret::from_base64(v["secret"].as_str().unwrap()).unwrap(),
            spiffe_id: spiffe_id.into(),
        }
    }

    /// `POST /enroll/v1/request` with `body`, signed with `secret` under keyid `key_id`.
    pub fn enroll_req(&self, key_id: &str, secret: &Secret, body: &[u8]) -> Request<Body> {
        signed_request(
            "POST",
            "/enroll/v1/request",
            key_id,
            secret,
            body,
            self.now(),
            &[],
        )
    }

    pub async fn enroll_with(&self, t: &Token, csr_pem: &str) -> Resp {
        let body = serde_json::to_vec(&json!({"token_id": t.id, "csr_pem": csr_pem})).unwrap();
        self.call(self.enroll_req(&t.id, &t.secret, &body)).await
    }

    pub async fn enroll(&self, spiffe_id: &str) -> Enrolled {
        let t = self.token(spiffe_id).await;
        let (key, csr) = csr(spiffe_id);
        let r = self.enroll_with(&t, &csr).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        Enrolled {
            bundle: serde_json::from_slice(&r.body).unwrap(),
            key,
            spiffe_id: spiffe_id.into(),
        }
    }

    /// Enroll and confirm.
    pub async fn enroll_confirmed(&self, spiffe_id: &str) -> Enrolled {
        let e = self.enroll(spiffe_id).await;
        let body = json!({"enrollment_id": e.bundle.enrollment_id});
        let r = self
            .call(agent_req(
                "POST",
                "/enroll/v1/confirm",
                spiffe_id,
                Some(&e.bundle.hmac.key_id),
                Some(&body),
            ))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        e
    }

    pub async fn audit_kinds(&self) -> Vec<String> {
        let v = self
            .op(OpRequest::AuditList {
                after: 0,
                limit: 10_000,
            })
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect()
    }

    pub async fn proxy_state(&self, version: u64) -> zen_trust::keys::ProxyState {
        let r = self
            .call(agent_req(
                "GET",
                &format!("/proxy/v1/state?version={version}"),
                "spiffe://zen.local/proxy/p1",
                None,
                None,
            ))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        serde_json::from_slice(&r.body).unwrap()
    }
}

pub trait NowSecs {
    fn now_secs(&self) -> i64;
}
impl NowSecs for ManualClock {
    fn now_secs(&self) -> i64 {
        zen_control::clock::Clock::now(self)
    }
}

pub fn csr_with(spiffe_id: &str, key: &impl SigningKey) -> String {
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(spiffe_id.to_string().try_into().unwrap())];
    p.serialize_request(key).unwrap().pem().unwrap()
}

pub fn csr(spiffe_id: &str) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = csr_with(spiffe_id, &key);
    (key, pem)
}

/// A 1024-bit RSA public key with a junk signature (the key check fires before the signature).
pub struct WeakRsa(Vec<u8>);
impl WeakRsa {
    pub fn new() -> Self {
        let mut der = vec![0x30, 0x81, 0x89, 0x02, 0x81, 0x81, 0x00];
        let mut n = [0xC5u8; 128];
        n[127] |= 1;
        der.extend_from_slice(&n);
        der.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
        WeakRsa(der)
    }
}
impl rcgen::PublicKeyData for WeakRsa {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}
impl SigningKey for WeakRsa {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(vec![1u8; 128])
    }
}

/// A request signed with zen-hmac-v1, as an agent (or the bootstrap client) sends it.
pub fn signed_request(
    method: &str,
    path: &str,
    key_id: &str,
    secret: &Secret,
    body: &[u8],
    now: i64,
    extra: &[(&str, &str)],
) -> Request<Body> {
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let hm = HeaderMap::new();
    let parts = RequestParts {
        method,
        authority: HOST,
        path: p,
        query: q,
        headers: &hm,
    };
    let opts = SignOptions::new(key_id, secret, UnixTime(now));
    let signed = sign(&parts, (!body.is_empty()).then_some(body), &opts).unwrap();
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST)
        .header("content-type", "application/json");
    for (k, v) in signed.pairs() {
        b = b.header(k, v);
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.to_vec())).unwrap()
}

/// A request as the proxy forwards it from the agent listener: identity in x-zen-* headers.
pub fn agent_req(
    method: &str,
    path: &str,
    spiffe_id: &str,
    key_id: Option<&str>,
    body: Option<&Value>,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:8081")
        .header("x-zen-spiffe-id", spiffe_id);
    if let Some(k) = key_id {
        b = b.header("x-zen-key-id", k);
    }
    match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(v).unwrap()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

pub fn raw_req(method: &str, path: &str, spiffe_id: &str, body: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-zen-spiffe-id", spiffe_id)
        .body(Body::from(body))
        .unwrap()
}

pub fn metric(app: &App, name_and_labels: &str) -> f64 {
    app.metrics
        .render()
        .lines()
        .find(|l| l.starts_with(name_and_labels) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
