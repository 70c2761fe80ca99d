//! Exponential backoff with full jitter (the AWS architecture blog's "full jitter"): the n-th
//! consecutive failure waits a random time up to `min · 2ⁿ`, capped at `max`. The wait never drops
//! below `min`, so a loop that keeps failing can never spin.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The ceiling of the next wait: `min · 2^failures`, capped at `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// Counts one more failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=millis)).max(self.min)
    }

    /// For a failure nothing but an operator can fix (a revoked identity): a wait between half of
    /// `max` and `max`, so the loop neither hammers the mesh nor stalls for longer than `max`.
    pub fn slowest(&mut self) -> Duration {
        self.slowest_with(&mut rand::rng())
    }

    pub fn slowest_with(&mut self, rng: &mut impl Rng) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let half = u64::try_from(self.max.as_millis() / 2).unwrap_or(u64::MAX);
        Duration::from_millis(half.saturating_add(rng.random_range(0..=half))).max(self.min)
    }

    /// After a success: the next failure starts again at `min`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_up_to_max_and_reset_starts_over() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_secs());
            b.next_delay();
        }
        assert_eq!(ceilings, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn delays_are_jittered_within_min_and_ceiling() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut b = Backoff::new(min, max);
            for _ in 0..10 {
                let ceiling = b.ceiling();
                let d = b.next_delay_with(&mut rng);
                assert!(
                    d >= min && d <= ceiling,
                    "{d:?} outside [{min:?}, {ceiling:?}]"
                );
                seen.insert(d);
            }
        }
        assert!(seen.len() > 100, "delays are spread, not fixed");
    }

    #[test]
    fn slowest_waits_between_half_max_and_max() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        for _ in 0..500 {
            let d = b.slowest_with(&mut rng);
            assert!(
                d >= Duration::from_secs(30) && d <= Duration::from_secs(60),
                "{d:?}"
            );
        }
        let mut tiny = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        assert!(tiny.slowest() >= Duration::from_secs(1), "never below min");
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(300));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(300));
    }
}
