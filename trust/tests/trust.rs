//! Integration tests for zen-trust (one binary; topics in tests/trust/).

mod trust {
    pub mod no_panic;
    pub mod proptests;
    pub mod rfc_vectors;
    pub mod svid_leaf;
}
