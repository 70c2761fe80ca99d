//! zen-proxy: the Zen Mesh enforcement sidecar (DESIGN.md §2–§6).
//!
//! This library exists so that the `zen-proxy` binary, the tests and the
//! benchmarks (`benches/decision.rs`) share one decision path: the binary is
//! only its command line. It is not a stable API; the modules are public only
//! where the binary or a benchmark needs them.

pub mod app;
pub mod config;
pub mod decision;
pub mod inject;
pub mod metrics;
pub mod policy;
pub mod refusal;
pub mod state;
pub mod svid_source;
pub mod tls;

mod accept;
mod admin;
mod downstream;
mod forward;
pub mod head;
mod reload;
mod service;
mod unsent;
