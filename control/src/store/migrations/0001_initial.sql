-- zen-control schema v1. Times are Unix seconds. *_enc columns hold AES-256-GCM ciphertext
-- (nonce || ciphertext || tag) sealed with the record id as associated data.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('state_version', 1), ('policy_version', 1);

CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    spiffe_id     TEXT NOT NULL,
    secret_enc    BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    used_at       INTEGER,
    enrollment_id TEXT
);

CREATE TABLE agents (
    spiffe_id     TEXT PRIMARY KEY,
    cluster_id    TEXT,
    status        TEXT NOT NULL,
    enrolled_at   INTEGER NOT NULL,
    confirmed_at  INTEGER,
    revoked_at    INTEGER,
    last_seen     INTEGER,
    agent_version TEXT,
    agent_status  TEXT
);

CREATE TABLE enrollments (
    id           TEXT PRIMARY KEY,
    spiffe_id    TEXT NOT NULL,
    token_id     TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    confirm_by   INTEGER NOT NULL,
    confirmed_at INTEGER,
    status       TEXT NOT NULL,
    svid_serial  TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    leaf_sha256  TEXT NOT NULL
);
CREATE INDEX enrollments_pending ON enrollments (status, confirm_by);

CREATE TABLE svids (
    serial      TEXT PRIMARY KEY,
    spiffe_id   TEXT NOT NULL,
    ca_id       TEXT NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    leaf_sha256 TEXT NOT NULL
);
CREATE INDEX svids_owner ON svids (spiffe_id);

CREATE TABLE hmac_keys (
    key_id     TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    secret_enc BLOB NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX hmac_keys_owner ON hmac_keys (owner);
CREATE INDEX hmac_keys_not_after ON hmac_keys (not_after);

CREATE TABLE revoked_ids (
    spiffe_id  TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL
);

CREATE TABLE revoked_serials (
    serial     TEXT PRIMARY KEY,
    spiffe_id  TEXT NOT NULL,
    revoked_at INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    reason     TEXT NOT NULL
);

CREATE TABLE cas (
    id             TEXT PRIMARY KEY,
    created_at     INTEGER NOT NULL,
    state          TEXT NOT NULL,
    root_cert_pem  TEXT NOT NULL,
    inter_cert_pem TEXT NOT NULL,
    inter_key_enc  BLOB NOT NULL,
    activate_at    INTEGER,
    remove_at      INTEGER
);

CREATE TABLE clusters (
    cluster_id           TEXT PRIMARY KEY,
    desired_state        BLOB,
    desired_etag         TEXT,
    desired_updated_at   INTEGER,
    allowlist            BLOB,
    allowlist_version    INTEGER NOT NULL DEFAULT 0,
    allowlist_updated_at INTEGER,
    adapters_report      BLOB,
    adapters_reported_by TEXT,
    adapters_reported_at INTEGER
);

CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    subject   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

-- Append-only: the service never rewrites history; someone with the file can still drop
-- these triggers, which is what the hash chain catches.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
