//! When to renew: `fraction` of the way from `start` to `not_after`.
//!
//! `start` is the certificate's `not_before` for one found on disk, and the moment it arrived for
//! one just issued: control backdates `not_before` by a minute for clock skew, which on a
//! short-lived SVID would otherwise put the renewal point at (or before) its issuance.

/// Unix seconds at which to renew.
pub fn renew_at(start: i64, not_after: i64, fraction: f64) -> i64 {
    let lifetime = (not_after - start).max(0);
    start + (lifetime as f64 * fraction) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halfway_through_the_lifetime() {
        assert_eq!(renew_at(1_000, 1_000 + 86_400, 0.5), 1_000 + 43_200);
        assert_eq!(renew_at(0, 100, 0.8), 80);
    }

    #[test]
    fn a_fresh_short_lived_svid_is_not_due_at_once() {
        // A 90 s SVID backdated by 60 s, received at t=1060: due at 1105, not 15 s after arrival.
        let (not_before, received, not_after) = (1_000, 1_060, 1_150);
        assert_eq!(renew_at(not_before, not_after, 0.5), 1_075);
        assert_eq!(renew_at(received, not_after, 0.5), 1_105);
    }

    #[test]
    fn an_expired_or_inverted_window_is_due_now() {
        assert_eq!(renew_at(500, 400, 0.5), 500);
    }
}
