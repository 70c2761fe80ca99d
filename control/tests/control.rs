//! In-process tests of zen-control: the axum router driven with `tower::ServiceExt::oneshot`,
//! a manual clock for everything time-driven, and a temp data dir per test.

#[path = "control/common.rs"]
mod common;

#[path = "control/agent.rs"]
mod agent;
#[path = "control/bench.rs"]
mod bench;
#[path = "control/enroll.rs"]
mod enroll;
#[path = "control/operator.rs"]
mod operator;
#[path = "control/proxy_sans.rs"]
mod proxy_sans;
#[path = "control/proxy_sync.rs"]
mod proxy_sync;
#[path = "control/restart.rs"]
mod restart;
#[path = "control/rotation.rs"]
mod rotation;
