//! zen-agent library (see issue 5).
