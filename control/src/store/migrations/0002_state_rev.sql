-- Proxy-state revisions: every row a proxy receives carries the state_version of the
-- transaction that last wrote it, so a control replica's in-memory copy of the proxy state
-- reads only the rows changed since the version it holds (Store::proxy_state_rows).
-- Rows written before this migration keep rev 0; a replica's first load reads every live row.
ALTER TABLE hmac_keys ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
ALTER TABLE revoked_ids ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
ALTER TABLE revoked_serials ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
CREATE INDEX hmac_keys_rev ON hmac_keys (rev);
CREATE INDEX revoked_ids_rev ON revoked_ids (rev);
CREATE INDEX revoked_serials_rev ON revoked_serials (rev);
