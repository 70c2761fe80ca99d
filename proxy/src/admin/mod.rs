//! Admin listener: `/metrics`, `/healthz`, `/readyz`, `/config_dump`.
//! Never serves secrets: key material is shown as "<redacted>".

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::config::Config;
use crate::state::State;

pub struct AdminApp {
    pub state: Arc<State>,
    pub config: Arc<Config>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("static response parts")
}

impl AdminApp {
    pub fn config_dump(&self) -> serde_json::Value {
        let keys = self.state.keys.load();
        let mut key_list: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "key_id": k.key_id(),
                    "owner": k.owner().as_str(),
                    "status": format!("{:?}", k.status()).to_ascii_lowercase(),
                    "not_before": k.not_before().to_rfc3339(),
                    "not_after": k.not_after().to_rfc3339(),
                    "secret": "<redacted>",
                })
            })
            .collect();
        key_list.sort_by(|a, b| a["key_id"].as_str().cmp(&b["key_id"].as_str()));
        let serving = self.state.serving.load();
        let bundles = self.state.bundles.load();
        let routes = self.state.routes.load();
        serde_json::json!({
            "config_file": self.config.source.display().to_string(),
            "config": self.config.raw_dump,
            "serving_cert": {
                "leaf_sha256": serving.leaf_sha256_hex,
                "not_after": zen_trust::UnixTime(serving.not_after).to_rfc3339(),
                "private_key": "<redacted>",
            },
            "trust_bundles": bundles.summary.iter().map(|(td, n)| serde_json::json!({"trust_domain": td, "ca_certificates": n})).collect::<Vec<_>>(),
            "key_set": { "version": keys.version(), "keys": key_list },
            "revocations": { "version": self.state.revocations.load().version, "entries": self.state.revocations.load().entries() },
            "routes": routes.routes().iter().map(|r| serde_json::json!({
                "name": r.name,
                "listener": r.listener.as_str(),
                "methods": r.methods,
                "path": r.path.as_str(),
                "upstream": r.upstream,
                "spiffe": r.spiffe.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "hmac": matches!(r.hmac, crate::policy::routes::Hmac::Required),
                "max_body_bytes": r.max_body_bytes,
            })).collect::<Vec<_>>(),
            "replay_cache": { "entries": self.state.replay.len(), "capacity": self.state.replay.capacity() },
        })
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => {
                self.state
                    .metrics
                    .replay_cache_entries
                    .set(self.state.replay.len() as i64);
                let left = self.state.serving.load().not_after - zen_trust::UnixTime::now().0;
                self.state.metrics.serving_cert_expiry_seconds.set(left);
                self.state.refresh_state_age();
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.state.metrics.render(),
                )
            }
            "/healthz" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.state.ready() {
                    reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", b"not ready\n".to_vec())
                }
            }
            "/config_dump" => {
                let body = serde_json::to_vec_pretty(&self.config_dump()).unwrap_or_default();
                reply(StatusCode::OK, "application/json", body)
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":"not_found","detail":"admin paths: /metrics /healthz /readyz /config_dump"}"#.to_vec(),
            ),
        }
    }
}
