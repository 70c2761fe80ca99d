//! Desired-state polling with `ETag` / `If-None-Match`: a 304 keeps the document already held.

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::client::Response;
use crate::session::{CallError, Session};

/// What one poll found.
#[derive(Debug)]
pub enum Poll {
    /// A new document (first fetch, or the ETag changed).
    Changed { etag: Option<String>, body: Bytes },
    /// 304: the held document is still current.
    NotModified,
    /// 404 `desired_state_unknown`: control has no desired state for the cluster yet.
    NotSet,
    /// Anything else: for the caller to classify.
    Other(Response),
}

/// The latest desired state of one cluster and its ETag.
#[derive(Debug, Default)]
pub struct DesiredState {
    etag: Option<String>,
    body: Option<Bytes>,
}

impl DesiredState {
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    pub fn body(&self) -> Option<&Bytes> {
        self.body.as_ref()
    }

    pub fn path(cluster_id: &str) -> String {
        format!("/agent/v1/clusters/{cluster_id}/desired-state")
    }

    /// One conditional GET. The new document is only *returned* on `Changed`; call
    /// [`DesiredState::accept`] once it has been handled, so a failed write is retried by the
    /// next poll instead of being hidden behind a 304.
    pub async fn poll(&self, session: &Session, cluster_id: &str) -> Result<Poll, CallError> {
        let conditional: Vec<(&str, &str)> = match &self.etag {
            Some(tag) => vec![("if-none-match", tag.as_str())],
            None => Vec::new(),
        };
        let response = session
            .call(Method::GET, &Self::path(cluster_id), &conditional, None)
            .await?;
        Ok(match response.status {
            StatusCode::OK => Poll::Changed {
                etag: response
                    .headers
                    .get(http::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: response.body,
            },
            StatusCode::NOT_MODIFIED if self.body.is_some() => Poll::NotModified,
            StatusCode::NOT_FOUND
                if response.error_code().as_deref() == Some("desired_state_unknown") =>
            {
                Poll::NotSet
            }
            _ => Poll::Other(response),
        })
    }

    pub fn accept(&mut self, etag: Option<String>, body: Bytes) {
        self.etag = etag;
        self.body = Some(body);
    }

    /// Control dropped the document: forget the ETag so the next one is fetched whole.
    pub fn clear(&mut self) {
        self.etag = None;
        self.body = None;
    }
}
