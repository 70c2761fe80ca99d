//! `zen-agent run`: four loops over one [`Session`] until shutdown —
//! heartbeat, desired-state polling, SVID renewal and HMAC key pickup.
//!
//! Failures back off exponentially with full jitter (connection errors, timeouts, 5xx, refusals);
//! a refused key wakes the key pickup; a revoked identity is logged as such and keeps backing off
//! at the slowest pace rather than spinning.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use zen_trust::time::UnixTime;

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::desired::{DesiredState, Poll};
use crate::files;
use crate::keys::KeyError;
use crate::renew::{self, RenewError};
use crate::session::{classify, Outcome, Session, SessionError, SessionOptions};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("{path}: {id} is not an agent ID (spiffe://<trust-domain>/cluster/<cluster-id>/agent/<agent-id>); `run` needs the cluster to poll its desired state", path = .path.display())]
    NotAnAgent {
        path: std::path::PathBuf,
        id: String,
    },
    #[error("an agent loop stopped unexpectedly: {0}")]
    LoopFailed(String),
}

/// Shared by the loops.
struct Agent {
    session: Session,
    config: AgentConfig,
    cluster_id: String,
    /// Wakes the key pickup early: a heartbeat said a new key is waiting, or a key was refused.
    key_wake: Notify,
    /// Set when the key pickup itself is refused with `key_revoked` / `key_expired`: no successor
    /// can be fetched, so the identity is as good as revoked.
    key_dead: AtomicBool,
}

/// Runs until `shutdown` resolves. Fails only at startup (unreadable credentials or a non-agent
/// identity); afterwards every error is logged and retried.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let session = Session::load(
        &config.files_dir,
        &config.server,
        SessionOptions {
            request_timeout: config.request_timeout,
            key_unknown_patience: config.key_unknown_patience,
        },
    )?;
    let cluster_id = session
        .cluster_id()
        .ok_or_else(|| RunError::NotAnAgent {
            path: config.files_dir.join(files::SVID_CHAIN),
            id: session.spiffe_id().to_string(),
        })?
        .to_owned();
    let leaf = session.leaf();
    tracing::info!(
        spiffe_id = %session.spiffe_id(),
        cluster = %cluster_id,
        server = %session.server(),
        svid_serial = %leaf.serial_hex,
        svid_not_after = %leaf.not_after,
        key_id = %session.key_id(),
        "zen-agent running"
    );
    let agent = Arc::new(Agent {
        session,
        config,
        cluster_id,
        key_wake: Notify::new(),
        key_dead: AtomicBool::new(false),
    });

    let mut loops = JoinSet::new();
    loops.spawn(heartbeat_loop(agent.clone()));
    loops.spawn(desired_state_loop(agent.clone()));
    loops.spawn(renew_loop(agent.clone()));
    loops.spawn(key_loop(agent.clone()));
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        Some(ended) = loops.join_next() => {
            // The loops never return; one ending means it panicked.
            let detail = match ended {
                Err(e) if e.is_panic() => "panicked".to_owned(),
                Err(e) => e.to_string(),
                Ok(name) => format!("{name} returned"),
            };
            Err(RunError::LoopFailed(detail))
        }
    };
    // Aborting is safe: files are written synchronously between awaits, and the ArcSwaps are
    // swapped right after, so a loop is never cut between a write and its swap.
    loops.shutdown().await;
    tracing::info!("zen-agent stopped");
    result
}

/// The `call` name of the key pickup in logs.
const KEY_PICKUP: &str = "hmac-key";

/// Logs a failed call by what it means and returns how long to wait before the next attempt.
fn after_failure(
    agent: &Agent,
    what: &'static str,
    outcome: &Outcome,
    backoff: &mut Backoff,
) -> Duration {
    let key_dead = matches!(outcome, Outcome::KeyRefused(code) if code != "key_unknown")
        && agent.key_dead.load(Ordering::Relaxed);
    let wait = if matches!(outcome, Outcome::Revoked(_)) || key_dead {
        backoff.slowest()
    } else {
        backoff.next_delay()
    };
    let retry_in = format!("{wait:?}");
    match outcome {
        Outcome::Success => {}
        Outcome::Unavailable(why) => {
            tracing::warn!(call = what, error = %why, %retry_in, "mesh unavailable")
        }
        Outcome::KeyRefused(code) if key_dead => {
            tracing::error!(call = what, code = %code, key_id = %agent.session.key_id(), spiffe_id = %agent.session.spiffe_id(), %retry_in, "identity revoked: its HMAC key is refused and control offers no successor; re-enroll the agent with a new token")
        }
        Outcome::KeyRefused(code) => {
            tracing::warn!(call = what, code = %code, key_id = %agent.session.key_id(), %retry_in, "HMAC key refused; asking control for the current key");
            // The key pickup retries on its own; a wake-up from itself would be stored and spent
            // on an extra pickup (a secret_read audit event) right after it recovers.
            if what != KEY_PICKUP {
                agent.key_wake.notify_one();
            }
        }
        Outcome::Revoked(code) => {
            tracing::error!(call = what, code = %code, spiffe_id = %agent.session.spiffe_id(), %retry_in, "identity revoked: the mesh refuses this agent; re-enroll it with a new token")
        }
        Outcome::Refused {
            status,
            code,
            detail,
        } => {
            tracing::error!(call = what, status = %status, code = %code, detail = %detail, %retry_in, "request refused")
        }
    }
    wait
}

async fn heartbeat_loop(agent: Arc<Agent>) -> &'static str {
    let body = Bytes::from(
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "status": "ok",
            "spiffe_id": agent.session.spiffe_id().as_str(),
        })
        .to_string(),
    );
    let mut backoff = Backoff::new(agent.config.backoff_min, agent.config.backoff_max);
    loop {
        let result = agent
            .session
            .call(Method::POST, "/agent/v1/heartbeat", &[], Some(body.clone()))
            .await;
        let wait = match classify(&result) {
            Outcome::Success => {
                backoff.reset();
                let answer = result
                    .ok()
                    .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                    .unwrap_or_default();
                let hint = answer
                    .pointer("/keys/new_key_available")
                    .and_then(|v| v.as_bool());
                tracing::debug!(new_key_available = hint, "heartbeat accepted");
                if hint == Some(true) {
                    agent.key_wake.notify_one();
                }
                if let Some(pem) = answer.get("trust_bundle_pem").and_then(|v| v.as_str()) {
                    apply_bundle(&agent, pem);
                }
                agent.config.heartbeat_interval
            }
            outcome => after_failure(&agent, "heartbeat", &outcome, &mut backoff),
        };
        tokio::time::sleep(wait).await;
    }
}

/// A CA rotation's new root reaches the agent with its heartbeats, before any proxy serves a
/// certificate issued by it.
fn apply_bundle(agent: &Agent, pem: &str) {
    match agent.session.update_bundle(pem) {
        Ok(true) => tracing::info!(
            roots = agent.session.identity().bundle.len(),
            "trust bundle updated"
        ),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot apply the trust bundle control sent; keeping the current one")
        }
    }
}

async fn desired_state_loop(agent: Arc<Agent>) -> &'static str {
    let mut state = DesiredState::default();
    let mut backoff = Backoff::new(agent.config.backoff_min, agent.config.backoff_max);
    let mut told_not_set = false;
    loop {
        let polled = state.poll(&agent.session, &agent.cluster_id).await;
        let wait = match polled {
            Ok(Poll::Changed { etag, body }) => match write_desired_state(&agent, &body) {
                Ok(()) => {
                    tracing::info!(
                        etag = etag.as_deref().unwrap_or("-"),
                        bytes = body.len(),
                        "desired state updated"
                    );
                    state.accept(etag, body);
                    told_not_set = false;
                    backoff.reset();
                    agent.config.desired_state_interval
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::error!(error = %e, retry_in = ?wait, "cannot write the desired state");
                    wait
                }
            },
            Ok(Poll::NotModified) => {
                tracing::debug!(
                    etag = state.etag().unwrap_or("-"),
                    "desired state not modified"
                );
                backoff.reset();
                agent.config.desired_state_interval
            }
            Ok(Poll::NotSet) => {
                if !told_not_set {
                    tracing::info!(cluster = %agent.cluster_id, "no desired state set for the cluster yet");
                    told_not_set = true;
                }
                state.clear();
                backoff.reset();
                agent.config.desired_state_interval
            }
            Ok(Poll::Other(response)) => after_failure(
                &agent,
                "desired-state",
                &classify(&Ok(response)),
                &mut backoff,
            ),
            Err(e) => after_failure(&agent, "desired-state", &classify(&Err(e)), &mut backoff),
        };
        tokio::time::sleep(wait).await;
    }
}

fn write_desired_state(agent: &Agent, body: &[u8]) -> Result<(), files::FilesError> {
    match &agent.config.desired_state_file {
        Some(path) => files::write_atomic(path, body, 0o644),
        None => Ok(()),
    }
}

/// The outcome a library error stands for, so every loop logs and backs off alike.
fn outcome_of_refusal(status: http::StatusCode, code: &str, detail: String) -> Outcome {
    let response = crate::client::Response {
        status,
        headers: http::HeaderMap::new(),
        body: Bytes::from(serde_json::json!({"error": code, "detail": detail}).to_string()),
    };
    classify(&Ok(response))
}

async fn renew_loop(agent: Arc<Agent>) -> &'static str {
    let mut backoff = Backoff::new(agent.config.backoff_min, agent.config.backoff_max);
    loop {
        let identity = agent.session.identity();
        let leaf = identity.leaf.clone();
        let due = identity.renew_at(agent.config.renew_fraction);
        drop(identity);
        tracing::info!(serial = %leaf.serial_hex, not_after = %leaf.not_after, renew_at = %due, "next SVID renewal");
        tokio::time::sleep(renew::until(due, UnixTime::now())).await;
        loop {
            match agent.session.renew_svid().await {
                Ok(r) => {
                    tracing::info!(serial = %r.serial_hex, not_after = %r.not_after, bundle_written = r.bundle_written, "SVID renewed");
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    if UnixTime::now() >= leaf.not_after {
                        tracing::error!(expired_at = %leaf.not_after, "the SVID has expired; the proxy will refuse the agent until a renewal succeeds or it is re-enrolled");
                    }
                    let wait = renew_failure(&agent, &e, &mut backoff);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

fn renew_failure(agent: &Agent, e: &RenewError, backoff: &mut Backoff) -> Duration {
    let outcome = match e {
        RenewError::Refused {
            status,
            code,
            detail,
        } => outcome_of_refusal(*status, code, detail.clone()),
        RenewError::Call(e) => Outcome::Unavailable(e.to_string()),
        other => {
            let wait = backoff.next_delay();
            tracing::error!(error = %other, retry_in = ?wait, "SVID renewal failed");
            return wait;
        }
    };
    after_failure(agent, "svid-renew", &outcome, backoff)
}

async fn key_loop(agent: Arc<Agent>) -> &'static str {
    let mut backoff = Backoff::new(agent.config.backoff_min, agent.config.backoff_max);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(agent.config.hmac_key_interval) => {}
            _ = agent.key_wake.notified() => {}
        }
        loop {
            match agent.session.refresh_hmac_key().await {
                Ok(r) => {
                    agent.key_dead.store(false, Ordering::Relaxed);
                    match &r.switched_from {
                        Some(old) => {
                            tracing::info!(from = %old, to = %r.key_id, not_after = %r.not_after, "switched to the new HMAC key")
                        }
                        None => tracing::debug!(key_id = %r.key_id, "HMAC key is current"),
                    }
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    let wait = key_failure(&agent, &e, &mut backoff);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

fn key_failure(agent: &Agent, e: &KeyError, backoff: &mut Backoff) -> Duration {
    match e {
        KeyError::Refused {
            status,
            code,
            detail,
        } => {
            let outcome = outcome_of_refusal(*status, code, detail.clone());
            if let Outcome::KeyRefused(code) = &outcome {
                if code != "key_unknown" {
                    // The pickup itself is signed: a revoked or expired key with no successor
                    // known ends this identity's ability to sign. Every loop now waits at the
                    // slowest pace (and says why) until a pickup succeeds.
                    agent.key_dead.store(true, Ordering::Relaxed);
                }
            }
            after_failure(agent, KEY_PICKUP, &outcome, backoff)
        }
        KeyError::Call(e) => after_failure(
            agent,
            KEY_PICKUP,
            &Outcome::Unavailable(e.to_string()),
            backoff,
        ),
        other => {
            let wait = backoff.next_delay();
            tracing::error!(error = %other, retry_in = ?wait, "HMAC key pickup failed");
            wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixture;

    const ID: &str = "spiffe://zen.local/cluster/c1/agent/a1";

    fn agent_at(dir: &std::path::Path, port: u16) -> Arc<Agent> {
        let config = AgentConfig {
            files_dir: dir.to_owned(),
            server: format!("https://localhost:{port}"),
            heartbeat_interval: Duration::from_millis(100),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(200),
            ..AgentConfig::default()
        };
        let session = Session::load(
            dir,
            &config.server,
            SessionOptions {
                request_timeout: Duration::from_secs(5),
                key_unknown_patience: Duration::from_secs(1),
            },
        )
        .unwrap();
        Arc::new(Agent {
            session,
            config,
            cluster_id: "c1".into(),
            key_wake: Notify::new(),
            key_dead: AtomicBool::new(false),
        })
    }

    #[tokio::test]
    async fn a_refused_key_wakes_the_key_pickup_unless_the_pickup_itself_was_refused() {
        let dir = tempfile::tempdir().unwrap();
        fixture::write_dir(dir.path(), ID);
        let agent = agent_at(dir.path(), 9);
        let refused = Outcome::KeyRefused("key_unknown".into());
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let woken = |agent: Arc<Agent>| async move {
            tokio::time::timeout(Duration::from_millis(50), agent.key_wake.notified())
                .await
                .is_ok()
        };

        after_failure(&agent, KEY_PICKUP, &refused, &mut backoff);
        assert!(
            !woken(agent.clone()).await,
            "the pickup does not wake itself"
        );
        after_failure(&agent, "heartbeat", &refused, &mut backoff);
        assert!(
            woken(agent.clone()).await,
            "a refused heartbeat wakes the pickup"
        );
    }

    /// A CA rotation reaches the agent through its heartbeat answer: bundle.pem is rewritten and
    /// the next connection verifies with the new roots, while the SVID stays the same.
    #[tokio::test]
    async fn a_heartbeat_answer_with_a_new_bundle_rewrites_bundle_pem_and_swaps_the_tls_config() {
        let dir = tempfile::tempdir().unwrap();
        let ca = fixture::write_dir(dir.path(), ID);
        let both = format!("{}{}", ca.pem, fixture::ca().pem);
        let answer = serde_json::json!({ "trust_bundle_pem": both }).to_string();
        let heartbeats = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = heartbeats.clone();
        let port = fixture::https_server(&ca, move |head| {
            if head.starts_with("post /agent/v1/heartbeat ") {
                counted.fetch_add(1, Ordering::SeqCst);
                ("200 OK", answer.clone())
            } else {
                ("404 Not Found", r#"{"error":"no_route"}"#.to_owned())
            }
        })
        .await;
        let agent = agent_at(dir.path(), port);
        let before = agent.session.identity();
        assert_eq!(before.bundle.len(), 1);

        let task = tokio::spawn(heartbeat_loop(agent.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while heartbeats.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
        assert!(
            heartbeats.load(Ordering::SeqCst) >= 3,
            "heartbeats were sent"
        );

        assert_eq!(
            std::fs::read_to_string(dir.path().join(files::BUNDLE)).unwrap(),
            both,
            "bundle.pem holds the bundle the heartbeat carried"
        );
        let after = agent.session.identity();
        assert_eq!(
            after.bundle.len(),
            2,
            "the session verifies with both roots"
        );
        assert!(!Arc::ptr_eq(&before.tls, &after.tls), "TLS config swapped");
        assert_eq!(after.leaf, before.leaf, "the SVID is untouched");
    }
}
