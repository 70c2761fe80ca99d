//! Secret custody: every secret at rest (HMAC keys, token secrets, CA keys) is sealed with
//! AES-256-GCM under the master key, with the record id as associated data so a ciphertext
//! moved to another row does not decrypt.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use zeroize::Zeroizing;

pub const MASTER_KEY_ENV: &str = "ZEN_MASTER_KEY";
pub const MASTER_KEY_FILE: &str = "master.key";
/// Plaintext of the canary row; decrypting it proves the master key belongs to this store.
pub const CANARY_PLAINTEXT: &[u8] = b"zen-control master key canary v1";
pub const CANARY_AAD: &str = "meta:canary";

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    #[error("{MASTER_KEY_ENV} is not base64 of exactly 32 bytes")]
    BadEnvKey,
    #[error("master key file {0} is not base64 of exactly 32 bytes")]
    BadKeyFile(PathBuf),
    #[error("master key file {0} is readable by group or others (mode {1:o}); chmod 600 it")]
    KeyFilePermissions(PathBuf, u32),
    #[error("master key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the data directory holds encrypted secrets but no master key was found \
         ({MASTER_KEY_ENV} unset and {0} missing); restore the master key"
    )]
    MissingKey(PathBuf),
    #[error("decryption failed for record `{0}` (wrong master key or tampered ciphertext)")]
    Decrypt(String),
}

/// Where the master key came from (reported at start, never the key itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File,
    Created,
}

/// AES-256-GCM sealing under the master key.
pub struct Custody {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Custody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Custody(<redacted>)")
    }
}

impl Custody {
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// `nonce || ciphertext+tag`, bound to `record_id`.
    pub fn seal(&self, record_id: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: record_id.as_bytes(),
                },
            )
            .expect("AES-GCM encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, record_id: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(CustodyError::Decrypt(record_id.to_string()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: record_id.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CustodyError::Decrypt(record_id.to_string()))
    }

    pub fn seal_canary(&self) -> Vec<u8> {
        self.seal(CANARY_AAD, CANARY_PLAINTEXT)
    }

    /// True when `sealed` is this key's canary.
    pub fn check_canary(&self, sealed: &[u8]) -> bool {
        matches!(self.open(CANARY_AAD, sealed), Ok(p) if p.as_slice() == CANARY_PLAINTEXT)
    }
}

fn decode_key(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()?,
    );
    let arr: [u8; 32] = bytes.as_slice().try_into().ok()?;
    Some(Zeroizing::new(arr))
}

/// Loads the master key: env `ZEN_MASTER_KEY` first, then `<data_dir>/master.key`; creates the
/// file (0600) only when `may_create` (a fresh store with no canary yet).
pub fn load_master_key(
    data_dir: &Path,
    env_value: Option<String>,
    may_create: bool,
) -> Result<(Zeroizing<[u8; 32]>, KeySource), CustodyError> {
    if let Some(v) = env_value {
        let v = Zeroizing::new(v);
        return decode_key(&v)
            .map(|k| (k, KeySource::Env))
            .ok_or(CustodyError::BadEnvKey);
    }
    let path = data_dir.join(MASTER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let mode = std::fs::metadata(&path)
                .map_err(|source| CustodyError::Io {
                    path: path.clone(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(CustodyError::KeyFilePermissions(path, mode & 0o777));
            }
            decode_key(&text)
                .map(|k| (k, KeySource::File))
                .ok_or(CustodyError::BadKeyFile(path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !may_create {
                return Err(CustodyError::MissingKey(path));
            }
            let key: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
            let encoded =
                Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.as_slice()));
            let io = |source| CustodyError::Io {
                path: path.clone(),
                source,
            };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            f.write_all(encoded.as_bytes()).map_err(io)?;
            f.write_all(b"\n").map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok((key, KeySource::Created))
        }
        Err(source) => Err(CustodyError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_aad_binding() {
        let c = Custody::from_key(&[7u8; 32]);
        let sealed = c.seal("hmac:k1", b"secret");
        assert_eq!(c.open("hmac:k1", &sealed).unwrap().as_slice(), b"secret");
        assert!(c.open("hmac:k2", &sealed).is_err());
        let other = Custody::from_key(&[8u8; 32]);
        assert!(other.open("hmac:k1", &sealed).is_err());
        assert!(c.check_canary(&c.seal_canary()));
        assert!(!other.check_canary(&c.seal_canary()));
    }

    #[test]
    fn key_file_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_master_key(dir.path(), None, false),
            Err(CustodyError::MissingKey(_))
        ));
        let (k1, src) = load_master_key(dir.path(), None, true).unwrap();
        assert_eq!(src, KeySource::Created);
        let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (k2, src) = load_master_key(dir.path(), None, false).unwrap();
        assert_eq!(src, KeySource::File);
        assert_eq!(*k1, *k2);
        assert!(matches!(
            load_master_key(dir.path(), Some("c2hvcnQ=".into()), false),
            Err(CustodyError::BadEnvKey)
        ));
    }
}
