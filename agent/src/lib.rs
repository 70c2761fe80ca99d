//! zen-agent: the agent side of Zen Mesh (DESIGN.md §1, §7, §8) — credential files, the mTLS client
//! configuration, a signing HTTPS client, enrollment, and `run`: heartbeat, desired-state polling,
//! SVID renewal and HMAC key pickup over one [`session::Session`].

pub mod backoff;
pub mod client;
pub mod config;
pub mod csr;
pub mod desired;
pub mod enroll;
pub mod files;
pub mod keys;
pub mod renew;
pub mod run;
pub mod session;
pub mod tls;
