//! Operator interface: a line-delimited JSON protocol over a unix socket in the data dir
//! (mode 0600, same-uid peers only). `dispatch` is the whole command set.

pub mod client;
pub mod server;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::audit::{AuditKind, NewEvent, Verifier};
use crate::clock::rfc3339;

pub const SOCKET_FILE: &str = "control.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum OpRequest {
    TokenCreate {
        spiffe_id: String,
        ttl_secs: Option<u64>,
    },
    AgentList,
    AgentRevoke {
        spiffe_id: String,
    },
    KeysRotate {
        spiffe_id: Option<String>,
    },
    CaRotate,
    /// Sign an SVID for a workload that cannot enroll through the proxy — the proxy itself (its
    /// serving certificate must exist before its bootstrap listener can). The key stays with the
    /// CLI; only the CSR crosses the socket.
    CaIssue {
        spiffe_id: String,
        csr_pem: String,
        #[serde(default)]
        dns: Vec<String>,
        #[serde(default)]
        ips: Vec<std::net::IpAddr>,
        ttl_secs: Option<u64>,
    },
    ClusterSetDesiredState {
        cluster: String,
        document: Value,
    },
    ClusterSetAllowlist {
        cluster: String,
        entries: Value,
    },
    AuditList {
        after: i64,
        limit: i64,
    },
    AuditVerify,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpResponse {
    pub ok: bool,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub error: Option<String>,
}

impl OpResponse {
    fn ok(result: Value) -> Self {
        Self {
            ok: true,
            result,
            error: None,
        }
    }
    fn err(e: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            result: Value::Null,
            error: Some(e.to_string()),
        }
    }
}

fn check_cluster_id(c: &str) -> anyhow::Result<()> {
    if c.is_empty()
        || c.len() > 128
        || !c
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        || c == "."
        || c == ".."
    {
        anyhow::bail!("cluster id `{c}` must be 1..128 of [A-Za-z0-9-_.] (a SPIFFE path segment)");
    }
    Ok(())
}

/// Runs one operator command. `actor` names the operator in audit events.
pub async fn dispatch(app: &App, req: OpRequest, actor: &str) -> OpResponse {
    match run(app, req, actor).await {
        Ok(v) => OpResponse::ok(v),
        Err(e) => OpResponse::err(format!("{e:#}")),
    }
}

async fn run(app: &App, req: OpRequest, actor: &str) -> anyhow::Result<Value> {
    match req {
        OpRequest::TokenCreate {
            spiffe_id,
            ttl_secs,
        } => {
            let t = crate::enroll::create_token(
                app,
                &spiffe_id,
                ttl_secs.map(Duration::from_secs),
                actor,
            )
            .await?;
            Ok(json!({
                "token_id": t.token_id,
                "secret": t.secret.to_base64(),
                "spiffe_id": t.spiffe_id,
                "expires_at": rfc3339(t.expires_at),
            }))
        }
        OpRequest::AgentList => {
            let agents = app.store.list_agents().await?;
            Ok(serde_json::to_value(agents)?)
        }
        OpRequest::AgentRevoke { spiffe_id } => {
            let id = crate::enroll::own_id(app, &spiffe_id).map_err(anyhow::Error::msg)?;
            let now = app.now();
            let ev = NewEvent::new(now, AuditKind::AgentRevoke, actor, id.as_str(), json!({}));
            let (summary, v) = app.store.revoke_agent(id.as_str(), now, ev).await?;
            app.audited(1);
            app.published(v);
            app.refresh_gauges().await?;
            Ok(
                json!({"spiffe_id": id.as_str(), "keys_revoked": summary.keys_revoked,
                      "serials_revoked": summary.serials_revoked, "state_version": v}),
            )
        }
        OpRequest::KeysRotate { spiffe_id } => {
            if let Some(id) = &spiffe_id {
                crate::enroll::own_id(app, id).map_err(anyhow::Error::msg)?;
            }
            let owners = crate::keys::force_rotate(app, spiffe_id.as_deref(), actor).await?;
            if spiffe_id.is_some() && owners.is_empty() {
                anyhow::bail!("no live, unrevoked HMAC key found for that SPIFFE ID");
            }
            Ok(json!({"rotated": owners}))
        }
        OpRequest::CaRotate => crate::ca::rotate(app, actor).await,
        OpRequest::CaIssue {
            spiffe_id,
            csr_pem,
            dns,
            ips,
            ttl_secs,
        } => {
            crate::ca::issue_for_operator(
                app,
                &spiffe_id,
                &csr_pem,
                &dns,
                &ips,
                ttl_secs.map(Duration::from_secs),
                actor,
            )
            .await
        }
        OpRequest::ClusterSetDesiredState { cluster, document } => {
            check_cluster_id(&cluster)?;
            let body = serde_json::to_vec(&document)?;
            let etag = format!("\"{}\"", hex::encode(Sha256::digest(&body)));
            let now = app.now();
            let ev = NewEvent::new(
                now,
                AuditKind::DesiredStateSet,
                actor,
                cluster.clone(),
                json!({"etag": etag, "bytes": body.len()}),
            );
            app.store
                .set_desired_state(&cluster, &body, &etag, now, ev)
                .await?;
            app.audited(1);
            Ok(json!({"cluster": cluster, "etag": etag}))
        }
        OpRequest::ClusterSetAllowlist { cluster, entries } => {
            check_cluster_id(&cluster)?;
            let entries = match entries {
                Value::Array(_) => entries,
                Value::Object(mut o) => match o.remove("entries") {
                    Some(e @ Value::Array(_)) => e,
                    _ => anyhow::bail!(
                        "allowlist file must be a list, or a map with an `entries` list"
                    ),
                },
                _ => {
                    anyhow::bail!("allowlist file must be a list, or a map with an `entries` list")
                }
            };
            let body = serde_json::to_vec(&entries)?;
            let now = app.now();
            let n = entries.as_array().map_or(0, Vec::len);
            let ev = NewEvent::new(
                now,
                AuditKind::AllowlistSet,
                actor,
                cluster.clone(),
                json!({"entries": n}),
            );
            let (version, v) = app.store.set_allowlist(&cluster, &body, now, ev).await?;
            app.audited(1);
            app.published(v);
            Ok(json!({"cluster": cluster, "version": version, "entries": n}))
        }
        OpRequest::AuditList { after, limit } => {
            let limit = limit.clamp(1, 10_000);
            let rows = app.store.list_audit(after, limit).await?;
            Ok(serde_json::to_value(rows)?)
        }
        OpRequest::AuditVerify => Ok(verify_audit(app.store.as_ref()).await?),
    }
}

/// Walks the whole chain; `{"ok":true,"checked":N}` or the first broken sequence number.
pub async fn verify_audit(store: &dyn crate::store::Store) -> anyhow::Result<Value> {
    let mut v = Verifier::default();
    let mut after = 0;
    loop {
        let page = store.list_audit(after, 5000).await?;
        if page.is_empty() {
            break;
        }
        for r in &page {
            if let Err(b) = v.feed(r) {
                return Ok(
                    json!({"ok": false, "checked": v.checked, "broken_seq": b.seq, "reason": b.reason}),
                );
            }
        }
        after = page.last().map_or(after, |r| r.seq);
    }
    Ok(json!({"ok": true, "checked": v.checked}))
}
