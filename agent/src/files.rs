//! The agent's credential directory (DESIGN.md §7): `svid.pem` (chain), `svid.key` (PKCS#8 PEM, 0600),
//! `bundle.pem` (trust bundle) and `hmac.json`. Every error names the file that is wrong.

use std::io::Write;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zen_trust::keys::HmacKeyFile;

pub const SVID_CHAIN: &str = "svid.pem";
pub const SVID_KEY: &str = "svid.key";
pub const BUNDLE: &str = "bundle.pem";
pub const HMAC_KEY: &str = "hmac.json";
/// Where a renewal puts the new SVID key until the new `svid.pem` is in place (see
/// [`settle_renewed_key`]).
pub const SVID_KEY_NEXT: &str = "svid.key.next";

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Everything an enrolled agent needs to talk to the mesh.
pub struct AgentFiles {
    pub svid_chain: Vec<CertificateDer<'static>>,
    pub svid_key: PrivateKeyDer<'static>,
    pub bundle: Vec<CertificateDer<'static>>,
    pub hmac: HmacKeyFile,
}

impl std::fmt::Debug for AgentFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentFiles")
            .field("svid_chain", &self.svid_chain.len())
            .field("svid_key", &"<redacted>")
            .field("bundle", &self.bundle.len())
            .field("hmac", &self.hmac)
            .finish()
    }
}

impl AgentFiles {
    pub fn load(dir: &Path) -> Result<Self, FilesError> {
        settle_renewed_key(dir)?;
        Ok(Self {
            svid_chain: read_certs(&dir.join(SVID_CHAIN))?,
            svid_key: read_key(&dir.join(SVID_KEY))?,
            bundle: read_certs(&dir.join(BUNDLE))?,
            hmac: read_hmac(&dir.join(HMAC_KEY))?,
        })
    }
}

/// A pre-provisioned SVID in `dir` for presenting as a client certificate: `tls.crt` + `tls.key`
/// (cert-manager / `zen-control ca issue` layout) if `tls.crt` exists, else `svid.pem` + `svid.key`.
pub fn read_client_identity(
    dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), FilesError> {
    let (chain, key) = if dir.join("tls.crt").exists() {
        ("tls.crt", "tls.key")
    } else {
        (SVID_CHAIN, SVID_KEY)
    };
    Ok((read_certs(&dir.join(chain))?, read_key(&dir.join(key))?))
}

fn read(path: &Path) -> Result<Vec<u8>, FilesError> {
    std::fs::read(path).map_err(|source| FilesError::Read {
        path: path.to_owned(),
        source,
    })
}

fn invalid(path: &Path, what: impl Into<String>) -> FilesError {
    FilesError::Invalid {
        path: path.to_owned(),
        what: what.into(),
    }
}

/// All CERTIFICATE blocks of a PEM file; an empty or unparsable file is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FilesError> {
    let pem = read(path)?;
    parse_certs(&pem).map_err(|what| invalid(path, what))
}

pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no CERTIFICATE block".into());
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, FilesError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        invalid(
            path,
            format!("no usable private key (PKCS#8 PEM expected): {e}"),
        )
    })
}

pub fn read_hmac(path: &Path) -> Result<HmacKeyFile, FilesError> {
    let bytes = read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(path, format!("not a valid hmac.json: {e}")))
}

/// Finishes a renewal cut short (a crash, a kill) between replacing `svid.pem` and moving its key
/// into place: a renewal writes the new key to `svid.key.next`, then `svid.pem`, then renames the
/// key to `svid.key`, so `svid.key` always matches `svid.pem` or `svid.key.next` does. When
/// `svid.key.next` is the key of `svid.pem`'s leaf, it becomes `svid.key`; otherwise it is left
/// alone (a renewal in progress, or one cut short before `svid.pem`: the next one replaces it).
pub fn settle_renewed_key(dir: &Path) -> Result<(), FilesError> {
    let next = dir.join(SVID_KEY_NEXT);
    if !next.exists() {
        return Ok(());
    }
    let (Ok(chain), Ok(key)) = (read_certs(&dir.join(SVID_CHAIN)), read_key(&next)) else {
        return Ok(());
    };
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let matches = rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .and_then(|certified| certified.keys_match())
        .is_ok();
    if matches {
        promote_next_key(dir)?;
    }
    Ok(())
}

/// `svid.key.next` → `svid.key`, durably. Already moved (by a loader that settled it) is fine.
pub fn promote_next_key(dir: &Path) -> Result<(), FilesError> {
    let key = dir.join(SVID_KEY);
    let err = |source| FilesError::Write {
        path: key.clone(),
        source,
    };
    match std::fs::rename(dir.join(SVID_KEY_NEXT), &key) {
        Ok(()) => sync_dir(&key).map_err(err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// fsync of the directory holding `path`, so a rename in it reaches the disk.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Writes `bytes` to `path` atomically (temp file in the same dir, fsync, rename, fsync of the
/// dir) with `mode`, so a reader never sees a half-written credential.
///
/// The temp file is always created fresh (`O_EXCL`, after removing a stale one) under a name of
/// its own per target file and per call, and removed when the write fails: a leftover from a failed or crashed write can never
/// be reused, and reusing one would keep *its* mode (`open` applies `mode` only to a new file) —
/// e.g. a 0644 `svid.pem` temp file becoming `svid.key`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FilesError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);

    let err = |source| FilesError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        // Only a crashed process with this PID could have left this name; never write through it.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(source));
    }
    // The rename itself must reach the disk, and in the order the caller wrote.
    sync_dir(path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_corrupt_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = AgentFiles::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("svid.pem"), "{err}");

        std::fs::write(
            dir.path().join(SVID_CHAIN),
            "-----BEGIN CERTIFICATE-----\nAAAA",
        )
        .unwrap();
        let err = AgentFiles::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("svid.pem"), "{err}");

        let err = read_hmac(&write(dir.path(), HMAC_KEY, "{\"key_id\":")).unwrap_err();
        assert!(err.to_string().contains("hmac.json"), "{err}");
        let err = read_key(&write(dir.path(), SVID_KEY, "garbage")).unwrap_err();
        assert!(err.to_string().contains("svid.key"), "{err}");
    }

    #[test]
    fn write_atomic_sets_mode_and_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SVID_KEY);
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file_that_loosens_the_next_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // svid.pem cannot be replaced (a non-empty directory is in the way): the write fails.
        std::fs::create_dir_all(dir.path().join(SVID_CHAIN).join("x")).unwrap();
        assert!(write_atomic(&dir.path().join(SVID_CHAIN), b"chain", 0o644).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![SVID_CHAIN], "the failed write left a temp file");

        // The next write of the private key gets its own mode, not a leftover's 0644.
        let key = dir.path().join(SVID_KEY);
        write_atomic(&key, b"key", 0o600).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "svid.key is {mode:o}");
    }

    #[test]
    fn a_stale_temp_file_is_never_written_through() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // What a crashed write (same PID after a container restart) could leave behind, under
        // every name a temp file of svid.key might take.
        let other = dir.path().join("elsewhere");
        std::fs::write(&other, b"untouched").unwrap();
        for stale in [
            format!("svid.tmp.{}", std::process::id()),
            format!(".svid.key.{}.0.tmp", std::process::id()),
        ] {
            std::os::unix::fs::symlink(&other, dir.path().join(stale)).unwrap();
        }
        let key = dir.path().join(SVID_KEY);
        write_atomic(&key, b"key", 0o600).unwrap();
        assert_eq!(std::fs::read(&other).unwrap(), b"untouched");
        assert_eq!(std::fs::read(&key).unwrap(), b"key");
        let meta = std::fs::symlink_metadata(&key).unwrap();
        assert!(meta.file_type().is_file(), "svid.key is a regular file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}
