//! zen-proxy integration tests: the real binary, real sockets on 127.0.0.1,
//! rcgen certificates, a recording upstream and a rustls client.

#[path = "proxy/accepted.rs"]
mod accepted;
#[path = "proxy/client.rs"]
mod client;
#[path = "proxy/config.rs"]
mod config;
#[path = "proxy/csi_swap.rs"]
mod csi_swap;
#[path = "proxy/harness.rs"]
mod harness;
#[path = "proxy/inject.rs"]
mod inject;
#[path = "proxy/pki.rs"]
mod pki;
#[path = "proxy/refusals.rs"]
mod refusals;
#[path = "proxy/reload.rs"]
mod reload;
#[path = "proxy/upstream.rs"]
mod upstream;
