//! zen-control: enrollment, SVID issuance and renewal, HMAC key rotation, key-set and bundle
//! distribution to proxies, the agent routes, encrypted secret custody and a tamper-evident
//! audit log. Sits behind zen-proxy and trusts it for the caller's identity.

pub mod admin;
pub mod api;
pub mod app;
pub mod audit;
pub mod ca;
pub mod clock;
pub mod config;
pub mod custody;
pub mod enroll;
pub mod keys;
pub mod metrics;
pub mod operator;
pub mod serve;
pub mod store;
