//! Integration tests for zen-trust (one binary; topics in tests/trust/).

mod trust {
    pub mod rfc_vectors;
}
