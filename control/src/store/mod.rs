//! Persistence behind one interface. Every method that changes more than one row is a single
//! transaction in the implementation, audit events included, so a crash never leaves a token
//! half-used or an SVID issued without its audit record. SQLite is the embedded default; the
//! trait is the seam for a shared SQL server backing several replicas.

mod sqlite;

pub use sqlite::SqliteStore;

use async_trait::async_trait;

use crate::audit::{AuditRecord, NewEvent};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("token already used")]
    TokenUsed,
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub spiffe_id: String,
    pub secret_enc: Vec<u8>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaState {
    /// In the trust bundle, not yet issuing (propagation).
    Pending,
    Active,
    /// Still in the bundle until SVIDs it signed have expired.
    Retiring,
    Retired,
}

impl CaState {
    pub fn as_str(self) -> &'static str {
        match self {
            CaState::Pending => "pending",
            CaState::Active => "active",
            CaState::Retiring => "retiring",
            CaState::Retired => "retired",
        }
    }
    pub fn parse(s: &str) -> StoreResult<Self> {
        Ok(match s {
            "pending" => CaState::Pending,
            "active" => CaState::Active,
            "retiring" => CaState::Retiring,
            "retired" => CaState::Retired,
            other => return Err(StoreError::Corrupt(format!("ca state `{other}`"))),
        })
    }
}

#[derive(Debug, Clone)]
pub struct CaRecord {
    pub id: String,
    pub created_at: i64,
    pub state: CaState,
    pub root_cert_pem: String,
    pub inter_cert_pem: String,
    pub inter_key_enc: Vec<u8>,
    pub activate_at: Option<i64>,
    pub remove_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct CaTransition {
    pub id: String,
    pub state: CaState,
    pub activate_at: Option<i64>,
    pub remove_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct SvidRecord {
    pub serial: String,
    pub spiffe_id: String,
    pub ca_id: String,
    pub not_before: i64,
    pub not_after: i64,
    pub issued_at: i64,
    /// `enroll` or `renew`.
    pub kind: String,
    pub leaf_sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Retiring,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Revoked => "revoked",
        }
    }
    pub fn parse(s: &str) -> StoreResult<Self> {
        Ok(match s {
            "active" => KeyState::Active,
            "retiring" => KeyState::Retiring,
            "revoked" => KeyState::Revoked,
            other => return Err(StoreError::Corrupt(format!("key status `{other}`"))),
        })
    }
}

#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub key_id: String,
    pub owner: String,
    pub secret_enc: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    pub status: KeyState,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentState {
    Pending,
    Confirmed,
    Revoked,
}

impl EnrollmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentState::Pending => "pending",
            EnrollmentState::Confirmed => "confirmed",
            EnrollmentState::Revoked => "revoked",
        }
    }
    pub fn parse(s: &str) -> StoreResult<Self> {
        Ok(match s {
            "pending" => EnrollmentState::Pending,
            "confirmed" => EnrollmentState::Confirmed,
            "revoked" => EnrollmentState::Revoked,
            other => return Err(StoreError::Corrupt(format!("enrollment status `{other}`"))),
        })
    }
}

#[derive(Debug, Clone)]
pub struct EnrollmentRecord {
    pub id: String,
    pub spiffe_id: String,
    pub token_id: String,
    pub created_at: i64,
    pub confirm_by: i64,
    pub confirmed_at: Option<i64>,
    pub status: EnrollmentState,
    pub svid_serial: String,
    pub key_id: String,
    pub leaf_sha256: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentRecord {
    pub spiffe_id: String,
    pub cluster_id: Option<String>,
    /// `pending` (enrolled, unconfirmed), `active`, `revoked`.
    pub status: String,
    pub enrolled_at: i64,
    pub confirmed_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
    pub agent_version: Option<String>,
    pub agent_status: Option<String>,
}

/// Everything one successful enrollment writes, committed together.
#[derive(Debug, Clone)]
pub struct EnrollmentCommit {
    pub token_id: String,
    pub now: i64,
    pub cluster_id: Option<String>,
    pub enrollment: EnrollmentRecord,
    pub svid: SvidRecord,
    pub key: KeyRecord,
    pub events: Vec<NewEvent>,
}

/// A set of key changes made by the rotation controller or `keys rotate`.
#[derive(Debug, Clone, Default)]
pub struct KeyRotation {
    pub new_keys: Vec<KeyRecord>,
    /// Existing keys that become `retiring`, with their (possibly shortened) end.
    pub retiring: Vec<(String, i64)>,
    pub events: Vec<NewEvent>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RevokeSummary {
    pub keys_revoked: u64,
    pub serials_revoked: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RevokedSerial {
    pub serial: String,
    pub spiffe_id: String,
    pub not_after: i64,
}

/// The rows the proxy state is built from, read in one snapshot (see
/// [`Store::proxy_state_rows`]).
#[derive(Debug, Clone, Default)]
pub struct StateRows {
    /// `state_version` of the snapshot: every transaction up to it is included.
    pub version: u64,
    pub policy_version: u64,
    pub keys: Vec<KeyRecord>,
    pub revoked_ids: Vec<String>,
    pub revoked_serials: Vec<RevokedSerial>,
}

/// A per-cluster document as stored.
#[derive(Debug, Clone)]
pub struct ClusterDoc {
    pub body: Vec<u8>,
    /// Desired state: its ETag. Adapter report: the reporting SPIFFE ID. Allowlist: empty.
    pub tag: String,
    /// Allowlist: its version (bumped on every set). Others: 0.
    pub version: i64,
    pub updated_at: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- meta and versions
    async fn get_meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Inserts unless present; returns whether it inserted.
    async fn insert_meta(&self, key: &str, value: &[u8]) -> StoreResult<bool>;
    /// Version of everything a proxy receives (keys, bundle, revocations, policy).
    async fn state_version(&self) -> StoreResult<u64>;
    /// A new state version with no row changed: for a change held outside the rows (the CA view),
    /// so that an answer built before the process applied it is superseded.
    async fn bump_state_version(&self) -> StoreResult<u64>;
    async fn policy_version(&self) -> StoreResult<u64>;
    async fn ping(&self) -> StoreResult<()>;

    // --- audit
    async fn append_audit(&self, events: Vec<NewEvent>) -> StoreResult<()>;
    async fn list_audit(&self, after_seq: i64, limit: i64) -> StoreResult<Vec<AuditRecord>>;
    async fn audit_count(&self) -> StoreResult<i64>;

    // --- CA
    async fn list_cas(&self) -> StoreResult<Vec<CaRecord>>;
    async fn insert_ca(&self, ca: CaRecord, events: Vec<NewEvent>) -> StoreResult<u64>;
    async fn transition_cas(
        &self,
        changes: Vec<CaTransition>,
        events: Vec<NewEvent>,
    ) -> StoreResult<u64>;

    // --- tokens and enrollment
    async fn create_token(&self, token: TokenRecord, event: NewEvent) -> StoreResult<()>;
    async fn get_token(&self, id: &str) -> StoreResult<Option<TokenRecord>>;
    /// Fails with `TokenUsed` (and writes nothing) if the token was used meanwhile.
    async fn commit_enrollment(&self, commit: EnrollmentCommit) -> StoreResult<u64>;
    async fn get_enrollment(&self, id: &str) -> StoreResult<Option<EnrollmentRecord>>;
    async fn confirm_enrollment(&self, id: &str, now: i64, event: NewEvent) -> StoreResult<()>;
    async fn due_unconfirmed(&self, now: i64) -> StoreResult<Vec<EnrollmentRecord>>;
    /// Revokes the enrollment's key and SVID serial.
    async fn expire_enrollment(&self, id: &str, now: i64, event: NewEvent) -> StoreResult<u64>;

    // --- SVIDs
    async fn record_svid(&self, svid: SvidRecord, event: NewEvent) -> StoreResult<()>;

    // --- HMAC keys
    async fn keys_of(&self, owner: &str) -> StoreResult<Vec<KeyRecord>>;
    /// Keys whose validity has not ended at `now`, any status.
    async fn live_keys(&self, now: i64) -> StoreResult<Vec<KeyRecord>>;
    async fn apply_key_rotation(&self, rotation: KeyRotation) -> StoreResult<u64>;

    // --- agents and revocation
    async fn get_agent(&self, spiffe_id: &str) -> StoreResult<Option<AgentRecord>>;
    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>>;
    async fn count_active_agents(&self) -> StoreResult<i64>;
    async fn record_heartbeat(
        &self,
        spiffe_id: &str,
        now: i64,
        version: &str,
        status: &str,
    ) -> StoreResult<()>;
    async fn is_revoked(&self, spiffe_id: &str) -> StoreResult<bool>;
    async fn revoke_agent(
        &self,
        spiffe_id: &str,
        now: i64,
        event: NewEvent,
    ) -> StoreResult<(RevokeSummary, u64)>;
    async fn revoked_ids(&self) -> StoreResult<Vec<String>>;
    /// Revoked serials whose certificate has not expired at `now` (expired ones need no list).
    async fn revoked_serials(&self, now: i64) -> StoreResult<Vec<RevokedSerial>>;
    /// The proxy state's rows in one consistent snapshot. `since: None`: every key and revoked
    /// serial still valid at `now` and every revoked ID. `since: Some(v)`: only the rows written
    /// by transactions that produced a state version above `v` (whatever their validity), so a
    /// caller holding the state at `v` applies them and is at `version`. Implementations stamp
    /// each such row with the `state_version` of the transaction that writes it.
    async fn proxy_state_rows(&self, since: Option<u64>, now: i64) -> StoreResult<StateRows>;

    // --- clusters
    async fn set_desired_state(
        &self,
        cluster: &str,
        doc: &[u8],
        etag: &str,
        now: i64,
        event: NewEvent,
    ) -> StoreResult<()>;
    async fn get_desired_state(&self, cluster: &str) -> StoreResult<Option<ClusterDoc>>;
    async fn set_allowlist(
        &self,
        cluster: &str,
        doc: &[u8],
        now: i64,
        event: NewEvent,
    ) -> StoreResult<(i64, u64)>;
    async fn get_allowlist(&self, cluster: &str) -> StoreResult<Option<ClusterDoc>>;
    async fn store_adapter_report(
        &self,
        cluster: &str,
        reporter: &str,
        doc: &[u8],
        now: i64,
    ) -> StoreResult<()>;
    async fn get_adapter_report(&self, cluster: &str) -> StoreResult<Option<ClusterDoc>>;
}
