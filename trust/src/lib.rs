//! Shared protocol code for Zen Mesh: SPIFFE IDs, X.509-SVID leaf checks, the
//! "zen-hmac-v1" request signature profile (RFC 9421 + RFC 9530), HMAC key
//! sets, enrollment types and the replay cache. Contract: DESIGN.md §3, §4, §7.

pub mod keys;
pub mod replay;
pub mod secret;
pub mod signature;
pub mod spiffe;
pub mod svid;
pub mod time;

pub use keys::{
    EnrollmentBundle, HmacKeyFile, KeyEntry, KeySet, KeySetEntry, KeySetError, KeySetFile,
    KeyStatus, ProxyState,
};
pub use replay::{ReplayCache, ReplayError, ReplayToken};
pub use secret::{Secret, SecretError};
pub use signature::{SignatureError, VerifyPolicy};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{check_svid_leaf, SvidError, SvidLeaf};
pub use time::UnixTime;
