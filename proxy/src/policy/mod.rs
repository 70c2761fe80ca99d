//! Route table and SPIFFE authorization rules (DESIGN.md §5).

pub mod routes;
pub mod spiffe_pattern;

pub use routes::{Listener, PathTemplate, Route, RouteTable};
pub use spiffe_pattern::SpiffePattern;
