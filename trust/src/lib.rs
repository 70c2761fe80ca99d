//! Shared protocol code.
