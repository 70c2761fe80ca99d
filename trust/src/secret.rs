//! `Secret`: key material that zeroizes on drop and never shows in `Debug`.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// Minimum length of an HMAC key (DESIGN §3: secrets are ≥ 32 random bytes).
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// Why a base64 string is not an acceptable secret. Never contains the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret is not valid standard base64")]
    Base64,
    #[error("secret is empty")]
    Empty,
    #[error("secret is {len} bytes; at least {min} are required")]
    TooShort { len: usize, min: usize },
}

/// Secret bytes. Cloning copies into another zeroizing buffer.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// 32 fresh bytes from the OS-seeded CSPRNG.
    pub fn generate() -> Secret {
        let mut bytes = Zeroizing::new(vec![0u8; 32]);
        rand::rng().fill_bytes(&mut bytes);
        Secret(bytes)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    /// Decodes standard (padded) base64; refuses an empty secret.
    pub fn from_base64(s: &str) -> Result<Secret, SecretError> {
        Self::from_base64_min(s, 1)
    }

    /// Decodes standard base64 and refuses fewer than `min` bytes
    /// (use [`MIN_HMAC_SECRET_LEN`] for HMAC keys).
    pub fn from_base64_min(s: &str, min: usize) -> Result<Secret, SecretError> {
        let bytes = Zeroizing::new(STANDARD.decode(s.trim()).map_err(|_| SecretError::Base64)?);
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        if bytes.len() < min {
            return Err(SecretError::TooShort {
                len: bytes.len(),
                min,
            });
        }
        Ok(Secret(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Standard base64. The returned string is not zeroized: write it where it
    /// must go (a key file, a bundle) and drop it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.expose())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted, {} bytes>)", self.0.len())
    }
}

/// Constant-time equality, so comparing secrets leaks nothing through timing.
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        use subtle::ConstantTimeEq;
        self.expose().ct_eq(other.expose()).into()
    }
}

impl Eq for Secret {}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let encoded = Zeroizing::new(self.to_base64());
        s.serialize_str(&encoded)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        Secret::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::from_bytes(b"super-secret-bytes-0123456789abcdef".to_vec());
        let dbg = format!("{s:?}");
        assert_eq!(dbg, "Secret(<redacted, 35 bytes>)");
        assert!(!dbg.contains("super"));
        assert!(!dbg.contains(&s.to_base64()));
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            secret: Secret,
        }
        let dbg = format!("{:?}", Holder { secret: s.clone() });
        assert!(!dbg.contains("super") && !dbg.contains(&s.to_base64()));
    }

    #[test]
    fn generate_is_random_and_32_bytes() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn base64_round_trip_and_limits() {
        let a = Secret::generate();
        let b = Secret::from_base64_min(&a.to_base64(), MIN_HMAC_SECRET_LEN).unwrap();
        assert_eq!(a, b);
        assert_eq!(Secret::from_base64("!!"), Err(SecretError::Base64));
        assert_eq!(Secret::from_base64(""), Err(SecretError::Empty));
        assert_eq!(
            Secret::from_base64_min("AAAA", 32),
            Err(SecretError::TooShort { len: 3, min: 32 })
        );
    }

    #[test]
    fn serde_is_base64() {
        let s = Secret::from_bytes(vec![1, 2, 3]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"AQID\"");
        let back: Secret = serde_json::from_str(&json).unwrap();
        assert_eq!(back.expose(), &[1, 2, 3]);
        let err = serde_json::from_str::<Secret>("\"not base64!\"").unwrap_err();
        assert!(!err.to_string().contains("not base64!"));
    }
}
