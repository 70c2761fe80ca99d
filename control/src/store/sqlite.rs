//! SQLite implementation of [`Store`]: one file under the data dir, WAL, migrations at open.
//! Writes are serialised in-process and run as `BEGIN IMMEDIATE` transactions, so concurrent
//! writers never hit a read→write lock upgrade deadlock.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use super::*;
use crate::audit::{self, AuditRecord, NewEvent};

pub struct SqliteStore {
    pool: SqlitePool,
    write_lock: Mutex<()>,
}

type Tx = Transaction<'static, Sqlite>;

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs pending migrations.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("src/store/migrations").run(&pool).await?;
        Ok(Self {
            pool,
            write_lock: Mutex::new(()),
        })
    }

    /// The pool, for tests that need to play the attacker with raw SQL.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> StoreResult<(MutexGuard<'_, ()>, Tx)> {
        let guard = self.write_lock.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok((guard, tx))
    }
}

async fn append_events(tx: &mut Tx, events: &[NewEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let mut prev = match last {
        Some(r) => Some((r.try_get::<i64, _>("seq")?, r.try_get::<String, _>("hash")?)),
        None => None,
    };
    for ev in events {
        let rec = audit::seal(prev.take(), ev);
        sqlx::query(
            "INSERT INTO audit (seq, at, kind, actor, subject, detail, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(rec.seq)
        .bind(rec.at)
        .bind(&rec.kind)
        .bind(&rec.actor)
        .bind(&rec.subject)
        .bind(&rec.detail)
        .bind(&rec.prev_hash)
        .bind(&rec.hash)
        .execute(&mut **tx)
        .await?;
        prev = Some((rec.seq, rec.hash));
    }
    Ok(())
}

async fn bump(tx: &mut Tx, counter: &str) -> StoreResult<u64> {
    let v: i64 =
        sqlx::query_scalar("UPDATE counters SET value = value + 1 WHERE name = ? RETURNING value")
            .bind(counter)
            .fetch_one(&mut **tx)
            .await?;
    Ok(v as u64)
}

async fn counter(pool: &SqlitePool, name: &str) -> StoreResult<u64> {
    let v: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = ?")
        .bind(name)
        .fetch_one(pool)
        .await?;
    Ok(v as u64)
}

fn token_row(r: &SqliteRow) -> StoreResult<TokenRecord> {
    Ok(TokenRecord {
        id: r.try_get("id")?,
        spiffe_id: r.try_get("spiffe_id")?,
        secret_enc: r.try_get("secret_enc")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        used_at: r.try_get("used_at")?,
    })
}

fn ca_row(r: &SqliteRow) -> StoreResult<CaRecord> {
    Ok(CaRecord {
        id: r.try_get("id")?,
        created_at: r.try_get("created_at")?,
        state: CaState::parse(r.try_get::<&str, _>("state")?)?,
        root_cert_pem: r.try_get("root_cert_pem")?,
        inter_cert_pem: r.try_get("inter_cert_pem")?,
        inter_key_enc: r.try_get("inter_key_enc")?,
        activate_at: r.try_get("activate_at")?,
        remove_at: r.try_get("remove_at")?,
    })
}

fn key_row(r: &SqliteRow) -> StoreResult<KeyRecord> {
    Ok(KeyRecord {
        key_id: r.try_get("key_id")?,
        owner: r.try_get("owner")?,
        secret_enc: r.try_get("secret_enc")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        status: KeyState::parse(r.try_get::<&str, _>("status")?)?,
        created_at: r.try_get("created_at")?,
    })
}

fn enrollment_row(r: &SqliteRow) -> StoreResult<EnrollmentRecord> {
    Ok(EnrollmentRecord {
        id: r.try_get("id")?,
        spiffe_id: r.try_get("spiffe_id")?,
        token_id: r.try_get("token_id")?,
        created_at: r.try_get("created_at")?,
        confirm_by: r.try_get("confirm_by")?,
        confirmed_at: r.try_get("confirmed_at")?,
        status: EnrollmentState::parse(r.try_get::<&str, _>("status")?)?,
        svid_serial: r.try_get("svid_serial")?,
        key_id: r.try_get("key_id")?,
        leaf_sha256: r.try_get("leaf_sha256")?,
    })
}

fn agent_row(r: &SqliteRow) -> StoreResult<AgentRecord> {
    Ok(AgentRecord {
        spiffe_id: r.try_get("spiffe_id")?,
        cluster_id: r.try_get("cluster_id")?,
        status: r.try_get("status")?,
        enrolled_at: r.try_get("enrolled_at")?,
        confirmed_at: r.try_get("confirmed_at")?,
        revoked_at: r.try_get("revoked_at")?,
        last_seen: r.try_get("last_seen")?,
        agent_version: r.try_get("agent_version")?,
        agent_status: r.try_get("agent_status")?,
    })
}

fn revoked_serial_row(r: &SqliteRow) -> StoreResult<RevokedSerial> {
    Ok(RevokedSerial {
        serial: r.try_get("serial")?,
        spiffe_id: r.try_get("spiffe_id")?,
        not_after: r.try_get("not_after")?,
    })
}

fn audit_row(r: &SqliteRow) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        kind: r.try_get("kind")?,
        actor: r.try_get("actor")?,
        subject: r.try_get("subject")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// `rev` is the state version of the inserting transaction (see migration 0002).
async fn insert_key(tx: &mut Tx, k: &KeyRecord, rev: u64) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO hmac_keys (key_id, owner, secret_enc, not_before, not_after, status, created_at, rev) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&k.key_id)
    .bind(&k.owner)
    .bind(&k.secret_enc)
    .bind(k.not_before)
    .bind(k.not_after)
    .bind(k.status.as_str())
    .bind(k.created_at)
    .bind(rev as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_svid(tx: &mut Tx, s: &SvidRecord) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO svids (serial, spiffe_id, ca_id, not_before, not_after, issued_at, kind, leaf_sha256) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&s.serial)
    .bind(&s.spiffe_id)
    .bind(&s.ca_id)
    .bind(s.not_before)
    .bind(s.not_after)
    .bind(s.issued_at)
    .bind(&s.kind)
    .bind(&s.leaf_sha256)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn cluster_doc(
    body: Option<Vec<u8>>,
    tag: String,
    version: i64,
    at: Option<i64>,
) -> Option<ClusterDoc> {
    body.map(|body| ClusterDoc {
        body,
        tag,
        version,
        updated_at: at.unwrap_or(0),
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn get_meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn insert_meta(&self, key: &str, value: &[u8]) -> StoreResult<bool> {
        let (_g, mut tx) = self.begin().await?;
        let n = sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)")
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn state_version(&self) -> StoreResult<u64> {
        counter(&self.pool, "state_version").await
    }

    async fn bump_state_version(&self) -> StoreResult<u64> {
        let (_g, mut tx) = self.begin().await?;
        let v = bump(&mut tx, "state_version").await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn policy_version(&self) -> StoreResult<u64> {
        counter(&self.pool, "policy_version").await
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn append_audit(&self, events: Vec<NewEvent>) -> StoreResult<()> {
        let (_g, mut tx) = self.begin().await?;
        append_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit(&self, after_seq: i64, limit: i64) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_row).collect()
    }

    async fn audit_count(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM audit")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn list_cas(&self) -> StoreResult<Vec<CaRecord>> {
        let rows = sqlx::query("SELECT * FROM cas ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ca_row).collect()
    }

    async fn insert_ca(&self, ca: CaRecord, events: Vec<NewEvent>) -> StoreResult<u64> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query(
            "INSERT INTO cas (id, created_at, state, root_cert_pem, inter_cert_pem, inter_key_enc, activate_at, remove_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&ca.id)
        .bind(ca.created_at)
        .bind(ca.state.as_str())
        .bind(&ca.root_cert_pem)
        .bind(&ca.inter_cert_pem)
        .bind(&ca.inter_key_enc)
        .bind(ca.activate_at)
        .bind(ca.remove_at)
        .execute(&mut *tx)
        .await?;
        append_events(&mut tx, &events).await?;
        let v = bump(&mut tx, "state_version").await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn transition_cas(
        &self,
        changes: Vec<CaTransition>,
        events: Vec<NewEvent>,
    ) -> StoreResult<u64> {
        let (_g, mut tx) = self.begin().await?;
        for c in &changes {
            let n = sqlx::query(
                "UPDATE cas SET state = ?, activate_at = ?, remove_at = ? WHERE id = ?",
            )
            .bind(c.state.as_str())
            .bind(c.activate_at)
            .bind(c.remove_at)
            .bind(&c.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                return Err(StoreError::NotFound(format!("ca {}", c.id)));
            }
        }
        append_events(&mut tx, &events).await?;
        let v = bump(&mut tx, "state_version").await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn create_token(&self, token: TokenRecord, event: NewEvent) -> StoreResult<()> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query(
            "INSERT INTO tokens (id, spiffe_id, secret_enc, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&token.id)
        .bind(&token.spiffe_id)
        .bind(&token.secret_enc)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&mut *tx)
        .await?;
        append_events(&mut tx, &[event]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_token(&self, id: &str) -> StoreResult<Option<TokenRecord>> {
        let r = sqlx::query("SELECT * FROM tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(token_row).transpose()
    }

    async fn commit_enrollment(&self, c: EnrollmentCommit) -> StoreResult<u64> {
        let (_g, mut tx) = self.begin().await?;
        // The conditional update is the one-use guarantee: of N racing requests exactly one
        // sees a row change; the rest roll back with nothing written.
        let n = sqlx::query(
            "UPDATE tokens SET used_at = ?, enrollment_id = ? WHERE id = ? AND used_at IS NULL",
        )
        .bind(c.now)
        .bind(&c.enrollment.id)
        .bind(&c.token_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::TokenUsed);
        }
        let v = bump(&mut tx, "state_version").await?;
        let e = &c.enrollment;
        sqlx::query(
            "INSERT INTO enrollments (id, spiffe_id, token_id, created_at, confirm_by, status, svid_serial, key_id, leaf_sha256) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.id)
        .bind(&e.spiffe_id)
        .bind(&e.token_id)
        .bind(e.created_at)
        .bind(e.confirm_by)
        .bind(e.status.as_str())
        .bind(&e.svid_serial)
        .bind(&e.key_id)
        .bind(&e.leaf_sha256)
        .execute(&mut *tx)
        .await?;
        // Re-enrolling an ID resets it to pending until the new credentials are confirmed.
        sqlx::query(
            "INSERT INTO agents (spiffe_id, cluster_id, status, enrolled_at) VALUES (?, ?, 'pending', ?) \
             ON CONFLICT (spiffe_id) DO UPDATE SET cluster_id = excluded.cluster_id, \
             status = 'pending', enrolled_at = excluded.enrolled_at, confirmed_at = NULL",
        )
        .bind(&e.spiffe_id)
        .bind(&c.cluster_id)
        .bind(c.now)
        .execute(&mut *tx)
        .await?;
        insert_svid(&mut tx, &c.svid).await?;
        insert_key(&mut tx, &c.key, v).await?;
        append_events(&mut tx, &c.events).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn get_enrollment(&self, id: &str) -> StoreResult<Option<EnrollmentRecord>> {
        let r = sqlx::query("SELECT * FROM enrollments WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(enrollment_row).transpose()
    }

    async fn confirm_enrollment(&self, id: &str, now: i64, event: NewEvent) -> StoreResult<()> {
        let (_g, mut tx) = self.begin().await?;
        let spiffe: Option<String> = sqlx::query_scalar(
            "UPDATE enrollments SET status = 'confirmed', confirmed_at = ? \
             WHERE id = ? AND status = 'pending' RETURNING spiffe_id",
        )
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(spiffe) = spiffe else {
            return Err(StoreError::Conflict(format!(
                "enrollment {id} is not pending"
            )));
        };
        sqlx::query(
            "UPDATE agents SET status = 'active', confirmed_at = ? WHERE spiffe_id = ? AND status = 'pending'",
        )
        .bind(now)
        .bind(&spiffe)
        .execute(&mut *tx)
        .await?;
        append_events(&mut tx, &[event]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn due_unconfirmed(&self, now: i64) -> StoreResult<Vec<EnrollmentRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM enrollments WHERE status = 'pending' AND confirm_by <= ? ORDER BY confirm_by",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(enrollment_row).collect()
    }

    async fn expire_enrollment(&self, id: &str, now: i64, event: NewEvent) -> StoreResult<u64> {
        let (_g, mut tx) = self.begin().await?;
        let row = sqlx::query(
            "UPDATE enrollments SET status = 'revoked' WHERE id = ? AND status = 'pending' RETURNING *",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::Conflict(format!(
                "enrollment {id} is not pending"
            )));
        };
        let e = enrollment_row(&row)?;
        let v = bump(&mut tx, "state_version").await?;
        // The enrollment's own key, and every key of the identity issued after it (a rotation while
        // the confirm was pending) — up to a later enrollment of the same ID, whose keys are its own.
        sqlx::query(
            "UPDATE hmac_keys SET status = 'revoked', rev = ?1 \
             WHERE status != 'revoked' AND (key_id = ?2 OR (owner = ?3 AND created_at >= ?4 \
               AND created_at < COALESCE((SELECT MIN(created_at) FROM enrollments \
                                          WHERE spiffe_id = ?3 AND created_at > ?4), 9223372036854775807)))",
        )
        .bind(v as i64)
        .bind(&e.key_id)
        .bind(&e.spiffe_id)
        .bind(e.created_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT OR IGNORE INTO revoked_serials (serial, spiffe_id, revoked_at, not_after, reason, rev) \
             SELECT serial, spiffe_id, ?, not_after, 'enrollment_not_confirmed', ? FROM svids WHERE serial = ?",
        )
        .bind(now)
        .bind(v as i64)
        .bind(&e.svid_serial)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE agents SET status = 'unconfirmed' WHERE spiffe_id = ? AND status = 'pending'",
        )
        .bind(&e.spiffe_id)
        .execute(&mut *tx)
        .await?;
        append_events(&mut tx, &[event]).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn record_svid(&self, svid: SvidRecord, event: NewEvent) -> StoreResult<()> {
        let (_g, mut tx) = self.begin().await?;
        insert_svid(&mut tx, &svid).await?;
        append_events(&mut tx, &[event]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn keys_of(&self, owner: &str) -> StoreResult<Vec<KeyRecord>> {
        let rows =
            sqlx::query("SELECT * FROM hmac_keys WHERE owner = ? ORDER BY not_before, key_id")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(key_row).collect()
    }

    async fn live_keys(&self, now: i64) -> StoreResult<Vec<KeyRecord>> {
        let rows = sqlx::query("SELECT * FROM hmac_keys WHERE not_after > ? ORDER BY key_id")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_row).collect()
    }

    async fn apply_key_rotation(&self, rot: KeyRotation) -> StoreResult<u64> {
        let (_g, mut tx) = self.begin().await?;
        let v = bump(&mut tx, "state_version").await?;
        for (key_id, not_after) in &rot.retiring {
            sqlx::query(
                "UPDATE hmac_keys SET status = 'retiring', not_after = MIN(not_after, ?), rev = ? \
                 WHERE key_id = ? AND status != 'revoked'",
            )
            .bind(not_after)
            .bind(v as i64)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        }
        for k in &rot.new_keys {
            insert_key(&mut tx, k, v).await?;
        }
        append_events(&mut tx, &rot.events).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn get_agent(&self, spiffe_id: &str) -> StoreResult<Option<AgentRecord>> {
        let r = sqlx::query("SELECT * FROM agents WHERE spiffe_id = ?")
            .bind(spiffe_id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(agent_row).transpose()
    }

    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        let rows = sqlx::query("SELECT * FROM agents ORDER BY spiffe_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(agent_row).collect()
    }

    async fn count_active_agents(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM agents WHERE status = 'active'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn record_heartbeat(
        &self,
        spiffe_id: &str,
        now: i64,
        version: &str,
        status: &str,
    ) -> StoreResult<()> {
        let (_g, mut tx) = self.begin().await?;
        let n = sqlx::query(
            "UPDATE agents SET last_seen = MAX(COALESCE(last_seen, 0), ?), agent_version = ?, agent_status = ? \
             WHERE spiffe_id = ?",
        )
        .bind(now)
        .bind(version)
        .bind(status)
        .bind(spiffe_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::NotFound(format!("agent {spiffe_id}")));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn is_revoked(&self, spiffe_id: &str) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM revoked_ids WHERE spiffe_id = ?")
            .bind(spiffe_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    async fn revoke_agent(
        &self,
        spiffe_id: &str,
        now: i64,
        event: NewEvent,
    ) -> StoreResult<(RevokeSummary, u64)> {
        let (_g, mut tx) = self.begin().await?;
        let v = bump(&mut tx, "state_version").await?;
        let keys = sqlx::query(
            "UPDATE hmac_keys SET status = 'revoked', rev = ? WHERE owner = ? AND status != 'revoked'",
        )
        .bind(v as i64)
        .bind(spiffe_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let serials: Vec<String> = sqlx::query_scalar(
            "INSERT OR IGNORE INTO revoked_serials (serial, spiffe_id, revoked_at, not_after, reason, rev) \
             SELECT serial, spiffe_id, ?, not_after, 'agent_revoked', ? FROM svids WHERE spiffe_id = ? \
             RETURNING serial",
        )
        .bind(now)
        .bind(v as i64)
        .bind(spiffe_id)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT OR IGNORE INTO revoked_ids (spiffe_id, revoked_at, rev) VALUES (?, ?, ?)",
        )
        .bind(spiffe_id)
        .bind(now)
        .bind(v as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE agents SET status = 'revoked', revoked_at = ? WHERE spiffe_id = ?")
            .bind(now)
            .bind(spiffe_id)
            .execute(&mut *tx)
            .await?;
        let summary = RevokeSummary {
            keys_revoked: keys,
            serials_revoked: serials,
        };
        let mut event = event;
        event.detail["keys_revoked"] = serde_json::json!(summary.keys_revoked);
        event.detail["serials_revoked"] = serde_json::json!(summary.serials_revoked);
        append_events(&mut tx, &[event]).await?;
        tx.commit().await?;
        Ok((summary, v))
    }

    async fn revoked_ids(&self) -> StoreResult<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT spiffe_id FROM revoked_ids ORDER BY spiffe_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn revoked_serials(&self, now: i64) -> StoreResult<Vec<RevokedSerial>> {
        let rows = sqlx::query(
            "SELECT serial, spiffe_id, not_after FROM revoked_serials WHERE not_after > ? ORDER BY serial",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(revoked_serial_row).collect()
    }

    async fn proxy_state_rows(&self, since: Option<u64>, now: i64) -> StoreResult<StateRows> {
        // One read transaction: the counters and the rows come from the same WAL snapshot, so
        // every row written by a transaction up to `version` is included and none after it.
        let mut tx = self.pool.begin().await?;
        let version: i64 =
            sqlx::query_scalar("SELECT value FROM counters WHERE name = 'state_version'")
                .fetch_one(&mut *tx)
                .await?;
        let policy_version: i64 =
            sqlx::query_scalar("SELECT value FROM counters WHERE name = 'policy_version'")
                .fetch_one(&mut *tx)
                .await?;
        let (keys, ids, serials) = match since {
            None => (
                sqlx::query("SELECT * FROM hmac_keys WHERE not_after > ? ORDER BY key_id")
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await?,
                sqlx::query_scalar("SELECT spiffe_id FROM revoked_ids ORDER BY spiffe_id")
                    .fetch_all(&mut *tx)
                    .await?,
                sqlx::query(
                    "SELECT serial, spiffe_id, not_after FROM revoked_serials WHERE not_after > ? \
                     ORDER BY serial",
                )
                .bind(now)
                .fetch_all(&mut *tx)
                .await?,
            ),
            Some(since) => {
                let since = since as i64;
                (
                    sqlx::query("SELECT * FROM hmac_keys WHERE rev > ? ORDER BY key_id")
                        .bind(since)
                        .fetch_all(&mut *tx)
                        .await?,
                    sqlx::query_scalar(
                        "SELECT spiffe_id FROM revoked_ids WHERE rev > ? ORDER BY spiffe_id",
                    )
                    .bind(since)
                    .fetch_all(&mut *tx)
                    .await?,
                    sqlx::query(
                        "SELECT serial, spiffe_id, not_after FROM revoked_serials WHERE rev > ? \
                         ORDER BY serial",
                    )
                    .bind(since)
                    .fetch_all(&mut *tx)
                    .await?,
                )
            }
        };
        tx.commit().await?;
        Ok(StateRows {
            version: version as u64,
            policy_version: policy_version as u64,
            keys: keys.iter().map(key_row).collect::<StoreResult<_>>()?,
            revoked_ids: ids,
            revoked_serials: serials
                .iter()
                .map(revoked_serial_row)
                .collect::<StoreResult<_>>()?,
        })
    }

    async fn set_desired_state(
        &self,
        cluster: &str,
        doc: &[u8],
        etag: &str,
        now: i64,
        event: NewEvent,
    ) -> StoreResult<()> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query(
            "INSERT INTO clusters (cluster_id, desired_state, desired_etag, desired_updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (cluster_id) DO UPDATE SET desired_state = excluded.desired_state, \
             desired_etag = excluded.desired_etag, desired_updated_at = excluded.desired_updated_at",
        )
        .bind(cluster)
        .bind(doc)
        .bind(etag)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        append_events(&mut tx, &[event]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_desired_state(&self, cluster: &str) -> StoreResult<Option<ClusterDoc>> {
        let r = sqlx::query(
            "SELECT desired_state, desired_etag, desired_updated_at FROM clusters WHERE cluster_id = ?",
        )
        .bind(cluster)
        .fetch_optional(&self.pool)
        .await?;
        match r {
            None => Ok(None),
            Some(r) => Ok(cluster_doc(
                r.try_get("desired_state")?,
                r.try_get::<Option<String>, _>("desired_etag")?
                    .unwrap_or_default(),
                0,
                r.try_get("desired_updated_at")?,
            )),
        }
    }

    async fn set_allowlist(
        &self,
        cluster: &str,
        doc: &[u8],
        now: i64,
        event: NewEvent,
    ) -> StoreResult<(i64, u64)> {
        let (_g, mut tx) = self.begin().await?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO clusters (cluster_id, allowlist, allowlist_version, allowlist_updated_at) VALUES (?, ?, 1, ?) \
             ON CONFLICT (cluster_id) DO UPDATE SET allowlist = excluded.allowlist, \
             allowlist_updated_at = excluded.allowlist_updated_at, \
             allowlist_version = clusters.allowlist_version + 1 RETURNING allowlist_version",
        )
        .bind(cluster)
        .bind(doc)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        append_events(&mut tx, &[event]).await?;
        bump(&mut tx, "policy_version").await?;
        let v = bump(&mut tx, "state_version").await?;
        tx.commit().await?;
        Ok((version, v))
    }

    async fn get_allowlist(&self, cluster: &str) -> StoreResult<Option<ClusterDoc>> {
        let r = sqlx::query(
            "SELECT allowlist, allowlist_version, allowlist_updated_at FROM clusters WHERE cluster_id = ?",
        )
        .bind(cluster)
        .fetch_optional(&self.pool)
        .await?;
        match r {
            None => Ok(None),
            Some(r) => Ok(cluster_doc(
                r.try_get("allowlist")?,
                String::new(),
                r.try_get("allowlist_version")?,
                r.try_get("allowlist_updated_at")?,
            )),
        }
    }

    async fn store_adapter_report(
        &self,
        cluster: &str,
        reporter: &str,
        doc: &[u8],
        now: i64,
    ) -> StoreResult<()> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query(
            "INSERT INTO clusters (cluster_id, adapters_report, adapters_reported_by, adapters_reported_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT (cluster_id) DO UPDATE SET \
             adapters_report = excluded.adapters_report, adapters_reported_by = excluded.adapters_reported_by, \
             adapters_reported_at = excluded.adapters_reported_at",
        )
        .bind(cluster)
        .bind(doc)
        .bind(reporter)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_adapter_report(&self, cluster: &str) -> StoreResult<Option<ClusterDoc>> {
        let r = sqlx::query(
            "SELECT adapters_report, adapters_reported_by, adapters_reported_at FROM clusters WHERE cluster_id = ?",
        )
        .bind(cluster)
        .fetch_optional(&self.pool)
        .await?;
        match r {
            None => Ok(None),
            Some(r) => Ok(cluster_doc(
                r.try_get("adapters_report")?,
                r.try_get::<Option<String>, _>("adapters_reported_by")?
                    .unwrap_or_default(),
                0,
                r.try_get("adapters_reported_at")?,
            )),
        }
    }
}
