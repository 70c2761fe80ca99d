//! zen-agent: the agent side of Zen Mesh (DESIGN.md §1, §7) — credential files, the mTLS client
//! configuration, a signing HTTPS client, and enrollment.

pub mod client;
pub mod csr;
pub mod enroll;
pub mod files;
pub mod tls;
