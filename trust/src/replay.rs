//! Replay cache: remembers `(keyid, nonce)` until the signature ages out.
//! A signature without a nonce (allowed only when the policy does not
//! require one) is remembered by its signature bytes instead, in a namespace
//! of its own: the same signed bytes are refused again, while other requests
//! under that key are not mistaken for replays of it.
//!
//! Sharded (short per-shard critical sections), bounded (a global count of
//! granted slots, handed to shards in small batches so the shared counter is
//! not touched on every insert; when full it refuses rather than forgetting
//! live entries), and
//! time-bucketed (each shard keeps its entries grouped by age-out second, so
//! expiry pops whole buckets: O(1) amortised per entry). Entries are stored
//! as a 64-bit keyed hash of the pair, so no per-entry string allocation.
//! A hash can only make two different pairs look alike (a fresh request
//! refused as a replay: fail closed, ~10⁻¹³ per request with a million live
//! entries), never let the same pair through twice.
//!
//! Expiry is judged on two clocks, and an entry goes only when both agree:
//! the wall clock the signature window is checked on has passed its age-out
//! second, and the monotonic clock says its remaining lifetime (as the wall
//! clock told it at insert) has really elapsed. A wall clock stepped forward
//! (then corrected back) would otherwise drop entries whose signatures are
//! valid again after the correction; a wall clock stepped back keeps them by
//! the first rule.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use crate::time::UnixTime;

const SHARDS: usize = 64;

/// What a signature is remembered by, under its key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplayToken<'a> {
    /// The signature's `nonce` parameter.
    Nonce(&'a str),
    /// The signature itself, when it carries no nonce. Hashed with its own
    /// discriminant, so it can never equal a nonce.
    Signature(&'a [u8; 32]),
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("this (keyid, nonce) was already used within the signature's lifetime")]
    Replay,
    #[error("replay cache is full; refusing rather than forgetting live nonces")]
    Full,
}

impl ReplayError {
    /// The DESIGN §6 error code.
    pub fn code(&self) -> &'static str {
        match self {
            ReplayError::Replay => "replay",
            ReplayError::Full => "replay_cache_full",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ReplayError::Replay => 401,
            ReplayError::Full => 503,
        }
    }
}

/// The keys are already uniformly random (keyed hashes), so the map only
/// needs to take 64 of their bits.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[derive(Default, Clone, Copy)]
struct BuildPassThrough;

impl BuildHasher for BuildPassThrough {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// The entries that age out in one wall-clock second.
#[derive(Default)]
struct Bucket {
    hashes: Vec<u64>,
    /// Monotonic millisecond from which every entry here has outlived its lifetime.
    held_until: u64,
}

#[derive(Default)]
struct Shard {
    /// Hashes of the recorded pairs (their age-out second is the bucket they
    /// sit in; no value here keeps the table at 8 bytes per entry, which is
    /// what decides cache misses with hundreds of thousands of live entries).
    entries: HashSet<u64, BuildPassThrough>,
    /// age-out second → hashes that age out then.
    buckets: BTreeMap<i64, Bucket>,
    /// Emptied bucket vectors, reused to keep inserts allocation-free.
    spare: Vec<Vec<u64>>,
    /// Slots granted to this shard by the global count and not yet used.
    allowance: usize,
}

impl Shard {
    /// Drops every entry whose age-out second is before `now` and whose
    /// lifetime has passed on the monotonic clock (`mono`, ms); returns how many.
    /// Stops at the first bucket one clock still holds: later ones wait for
    /// the next call (they are kept, never dropped early).
    fn expire(&mut self, now: i64, mono: u64) -> usize {
        let mut freed = 0;
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() >= now || entry.get().held_until > mono {
                break;
            }
            let mut hashes = entry.remove().hashes;
            for h in hashes.drain(..) {
                if self.entries.remove(&h) {
                    freed += 1;
                }
            }
            if self.spare.len() < 8 {
                self.spare.push(hashes);
            }
        }
        freed
    }

    fn insert(&mut self, h: u64, age_out: i64, held_until: u64) {
        self.entries.insert(h);
        let spare = &mut self.spare;
        let bucket = self.buckets.entry(age_out).or_insert_with(|| Bucket {
            hashes: spare.pop().unwrap_or_default(),
            held_until: 0,
        });
        bucket.hashes.push(h);
        bucket.held_until = bucket.held_until.max(held_until);
    }
}

#[repr(align(64))]
struct PaddedShard(Mutex<Shard>);

/// Bounded, concurrent insert-if-absent set of `(key id, nonce)` pairs.
///
/// Capacity accounting: `granted` counts slots handed out, and every slot is
/// either an entry or part of some shard's `allowance`, so entries never
/// exceed `capacity`. A shard takes up to `batch` slots at a time and keeps
/// the slots its expired entries free (up to `2 × batch`), so with two
/// threads inserting the shared counter's cache line moves once per `batch`
/// inserts instead of on every one. Before refusing as full, every shard's
/// expired entries and unused allowance go back to the global count and the
/// insert is tried again. `batch` is 1 for small caches, where the behaviour
/// is that of an exact global count.
pub struct ReplayCache {
    shards: Box<[PaddedShard]>,
    granted: AtomicUsize,
    batch: usize,
    capacity: usize,
    hasher: ahash::RandomState,
    clock: Monotonic,
}

/// The clock an entry's lifetime is also measured on (module docs), in
/// milliseconds: whole seconds on two clocks with different phases could end
/// a hold up to a second before the wall clock's age-out second does.
/// `Instant` stands still while the machine is suspended, which only holds
/// entries longer.
enum Monotonic {
    /// Milliseconds since the cache was made.
    Since(Instant),
    /// No second clock: expiry follows the caller's `now` alone. For
    /// simulations that run the wall clock faster than real time.
    WallOnly,
    #[cfg(test)]
    Manual(std::sync::Arc<std::sync::atomic::AtomicU64>),
}

impl Monotonic {
    fn millis(&self) -> u64 {
        match self {
            Monotonic::Since(epoch) => {
                u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
            }
            // Every hold has passed (held_until saturates to MAX too).
            Monotonic::WallOnly => u64::MAX,
            #[cfg(test)]
            Monotonic::Manual(ms) => ms.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("granted", &self.granted.load(Ordering::Relaxed))
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ReplayCache {
    /// A cache holding at most `capacity` live entries. Hash keys are random
    /// per process, so entries cannot be aimed at one shard or slot.
    pub fn new(capacity: usize) -> ReplayCache {
        Self::with_clock(capacity, Monotonic::Since(Instant::now()))
    }

    /// A cache whose expiry follows the `now` it is given and nothing else,
    /// so a simulation may advance time faster than real time (benchmarks).
    /// Not for serving: a wall clock stepped forward and back would reopen
    /// the replay window (module docs).
    pub fn wall_clock_only(capacity: usize) -> ReplayCache {
        Self::with_clock(capacity, Monotonic::WallOnly)
    }

    fn with_clock(capacity: usize, clock: Monotonic) -> ReplayCache {
        let shards = (0..SHARDS)
            .map(|_| PaddedShard(Mutex::new(Shard::default())))
            .collect();
        ReplayCache {
            shards,
            granted: AtomicUsize::new(0),
            // At most 1/8 of the capacity can sit in allowances (SHARDS × 2 × batch).
            batch: (capacity / (SHARDS * 16)).clamp(1, 64),
            capacity,
            hasher: ahash::RandomState::new(),
            clock,
        }
    }

    fn hash(&self, key_id: &str, token: ReplayToken<'_>) -> u64 {
        // Hashing the tuple delimits the two parts ("ab","c" ≠ "a","bc").
        self.hasher.hash_one((key_id, token))
    }

    /// Takes up to `want` slots from the global count; returns how many.
    fn reserve(&self, want: usize) -> usize {
        match self
            .granted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                let take = want.min(self.capacity.saturating_sub(n));
                (take > 0).then_some(n + take)
            }) {
            Ok(n) => want.min(self.capacity - n),
            Err(_) => 0,
        }
    }

    /// Expires a locked shard's aged-out entries; their slots join its
    /// allowance, beyond `keep` they go back to the global count.
    fn expire_locked(&self, s: &mut Shard, now: i64, mono: u64, keep: usize) {
        s.allowance += s.expire(now, mono);
        if s.allowance > keep {
            self.granted.fetch_sub(s.allowance - keep, Ordering::AcqRel);
            s.allowance = keep;
        }
    }

    /// Records `(key_id, nonce)` until `age_out` (inclusive). Refuses a pair
    /// that is still recorded, and refuses anything when the cache is full of
    /// live entries.
    pub fn insert(
        &self,
        key_id: &str,
        nonce: &str,
        age_out: UnixTime,
        now: UnixTime,
    ) -> Result<(), ReplayError> {
        self.insert_token(key_id, ReplayToken::Nonce(nonce), age_out, now)
    }

    /// [`ReplayCache::insert`] for any [`ReplayToken`].
    pub fn insert_token(
        &self,
        key_id: &str,
        token: ReplayToken<'_>,
        age_out: UnixTime,
        now: UnixTime,
    ) -> Result<(), ReplayError> {
        let h = self.hash(key_id, token);
        // Bits 40..46: not the low bits hashbrown indexes a shard's table with,
        // nor the top 7 it keeps as tag bytes (both would cluster per shard).
        let shard_idx = ((h >> 40) as usize) % SHARDS;
        let shard = &self.shards[shard_idx].0;
        let now = now.as_secs();
        // An already-aged-out signature is remembered for the current second
        // at least, so a caller bug cannot open a replay window.
        let age_out = age_out.as_secs().max(now);
        let mono = self.clock.millis();
        // Live through its age-out second on this clock too: from this instant,
        // the whole seconds left plus the one under way (at most a second more
        // than the wall clock's count, never less).
        let held_until =
            mono.saturating_add(age_out.abs_diff(now).saturating_add(1).saturating_mul(1000));
        for attempt in 0..2 {
            {
                let mut s = shard.lock();
                self.expire_locked(&mut s, now, mono, 2 * self.batch);
                if s.entries.contains(&h) {
                    return Err(ReplayError::Replay);
                }
                if s.allowance == 0 {
                    s.allowance = self.reserve(self.batch);
                }
                if s.allowance > 0 {
                    s.allowance -= 1;
                    s.insert(h, age_out, held_until);
                    return Ok(());
                }
            }
            if attempt == 0 {
                // Other shards expire lazily and may hold unused slots:
                // reclaim both before refusing.
                self.purge_expired(UnixTime(now));
            }
        }
        Err(ReplayError::Full)
    }

    /// Drops aged-out entries from every shard and returns every unused slot
    /// to the global count.
    pub fn purge_expired(&self, now: UnixTime) {
        let mono = self.clock.millis();
        for shard in self.shards.iter() {
            self.expire_locked(&mut shard.0.lock(), now.as_secs(), mono, 0);
        }
    }

    /// Live entries (entries not yet purged are counted until a purge). Locks
    /// each shard in turn: for metrics, not for the request path.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn duplicate_is_refused_until_age_out() {
        let c = ReplayCache::wall_clock_only(10);
        let t = UnixTime(1000);
        c.insert("k", "n1", UnixTime(1300), t).unwrap();
        assert_eq!(
            c.insert("k", "n1", UnixTime(1300), t),
            Err(ReplayError::Replay)
        );
        // Same nonce under another key is a different pair.
        c.insert("k2", "n1", UnixTime(1300), t).unwrap();
        // Still refused at the age-out second itself.
        assert_eq!(
            c.insert("k", "n1", UnixTime(1300), UnixTime(1300)),
            Err(ReplayError::Replay)
        );
        // After age-out the pair is accepted again.
        c.insert("k", "n1", UnixTime(1601), UnixTime(1301)).unwrap();
        c.purge_expired(UnixTime(1301));
        assert_eq!(c.len(), 1);
    }

    /// A cache on a monotonic clock the test sets (milliseconds).
    fn manual(capacity: usize) -> (ReplayCache, Arc<std::sync::atomic::AtomicU64>) {
        let secs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = ReplayCache::with_clock(capacity, Monotonic::Manual(secs.clone()));
        (c, secs)
    }

    #[test]
    fn a_wall_clock_stepped_forward_and_back_does_not_reopen_the_window() {
        let (c, mono) = manual(10);
        c.insert("k", "n", UnixTime(1300), UnixTime(1000)).unwrap();
        // 10 s later the wall clock jumps an hour ahead; a purge there must not forget the
        // nonce, because the step is corrected 10 s after that, inside the signature's window.
        mono.store(10_000, Ordering::Relaxed);
        c.purge_expired(UnixTime(4610));
        assert_eq!(c.len(), 1);
        mono.store(20_000, Ordering::Relaxed);
        assert_eq!(
            c.insert("k", "n", UnixTime(1300), UnixTime(1020)),
            Err(ReplayError::Replay)
        );
        // On the wall clock alone the same sequence lets the replay through.
        let w = ReplayCache::wall_clock_only(10);
        w.insert("k", "n", UnixTime(1300), UnixTime(1000)).unwrap();
        w.purge_expired(UnixTime(4610));
        w.insert("k", "n", UnixTime(1300), UnixTime(1020)).unwrap();
        // Once both clocks say the 300 s are over (through the age-out second, counted from the
        // insert on the monotonic clock: 301 s), the entry goes.
        mono.store(300_999, Ordering::Relaxed);
        c.purge_expired(UnixTime(1301));
        assert_eq!(c.len(), 1, "the monotonic clock is a millisecond short");
        mono.store(301_000, Ordering::Relaxed);
        c.purge_expired(UnixTime(1301));
        assert_eq!(c.len(), 0);
    }

    /// The wall-clock rule, which the monotonic one must not override: on the monotonic clock
    /// alone the entry would go here.
    #[test]
    fn a_wall_clock_stepped_back_keeps_entries_until_it_passes_their_age_out() {
        let (c, mono) = manual(10);
        c.insert("k", "n", UnixTime(1300), UnixTime(1000)).unwrap();
        // Far more than the lifetime passes on the monotonic clock, but the wall clock went
        // back: the signature becomes valid again once it reaches 1000, so the entry stays.
        mono.store(400_000, Ordering::Relaxed);
        c.purge_expired(UnixTime(900));
        mono.store(600_000, Ordering::Relaxed);
        assert_eq!(
            c.insert("k", "n", UnixTime(1300), UnixTime(1100)),
            Err(ReplayError::Replay)
        );
        mono.store(801_000, Ordering::Relaxed);
        c.insert("k", "n", UnixTime(1601), UnixTime(1301)).unwrap();
    }

    #[test]
    fn a_wall_clock_stepped_forward_for_good_holds_entries_only_their_lifetime() {
        let (c, mono) = manual(10);
        c.insert("k", "n", UnixTime(1300), UnixTime(1000)).unwrap();
        // A clock that was behind and is put right: entries go once their remaining 300 s have
        // passed for real, not later (the cache does not fill with the dead).
        mono.store(10_000, Ordering::Relaxed);
        c.purge_expired(UnixTime(5000));
        assert_eq!(c.len(), 1);
        mono.store(301_000, Ordering::Relaxed);
        c.purge_expired(UnixTime(5291));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_signature_token_is_its_own_namespace() {
        let c = ReplayCache::new(10);
        let (s1, s2) = ([1u8; 32], [2u8; 32]);
        let t = UnixTime(0);
        c.insert_token("k", ReplayToken::Signature(&s1), UnixTime(10), t)
            .unwrap();
        assert_eq!(
            c.insert_token("k", ReplayToken::Signature(&s1), UnixTime(10), t),
            Err(ReplayError::Replay)
        );
        // Another signature under the same key is not a replay of the first.
        c.insert_token("k", ReplayToken::Signature(&s2), UnixTime(10), t)
            .unwrap();
        // Nor is a nonce made of the same bytes.
        let same_bytes = std::str::from_utf8(&s1).unwrap();
        c.insert("k", same_bytes, UnixTime(10), t).unwrap();
    }

    #[test]
    fn tuple_boundaries_are_kept() {
        let c = ReplayCache::new(10);
        c.insert("ab", "c", UnixTime(10), UnixTime(0)).unwrap();
        c.insert("a", "bc", UnixTime(10), UnixTime(0)).unwrap();
    }

    #[test]
    fn full_refuses_then_recovers_after_age_out() {
        let c = ReplayCache::wall_clock_only(100);
        for i in 0..100 {
            c.insert("k", &format!("n{i}"), UnixTime(50), UnixTime(0))
                .unwrap();
        }
        assert_eq!(c.len(), 100);
        assert_eq!(
            c.insert("k", "new", UnixTime(50), UnixTime(10)),
            Err(ReplayError::Full)
        );
        // A duplicate is still reported as a replay, not as full.
        assert_eq!(
            c.insert("k", "n5", UnixTime(50), UnixTime(10)),
            Err(ReplayError::Replay)
        );
        assert_eq!(c.len(), 100);
        // Once everything aged out (now > 50), inserts work again and the
        // count reflects only live entries.
        c.insert("k", "new", UnixTime(100), UnixTime(51)).unwrap();
        // Other shards expire lazily; a purge brings the count to live entries.
        c.purge_expired(UnixTime(51));
        assert_eq!(c.len(), 1);
        c.insert("k", "n5", UnixTime(100), UnixTime(51)).unwrap();
    }

    #[test]
    fn batched_slots_still_fill_to_exact_capacity_and_recover() {
        // Large enough that shards take slots in batches of 64.
        let cap = 100_000;
        let c = ReplayCache::wall_clock_only(cap);
        assert_eq!(c.batch, 64);
        for i in 0..cap {
            c.insert("k", &i.to_string(), UnixTime(50), UnixTime(0))
                .unwrap_or_else(|e| panic!("insert {i} of {cap}: {e}"));
        }
        assert_eq!(c.len(), cap);
        assert_eq!(
            c.insert("k", "one-more", UnixTime(50), UnixTime(10)),
            Err(ReplayError::Full)
        );
        // After age-out, every slot can be used again.
        for i in 0..cap {
            c.insert("k2", &i.to_string(), UnixTime(100), UnixTime(51))
                .unwrap_or_else(|e| panic!("insert {i} after age-out: {e}"));
        }
        assert_eq!(
            c.insert("k2", "one-more", UnixTime(100), UnixTime(60)),
            Err(ReplayError::Full)
        );
        c.purge_expired(UnixTime(51));
        assert_eq!(c.len(), cap);
    }

    #[test]
    fn zero_capacity_is_always_full() {
        let c = ReplayCache::new(0);
        assert_eq!(
            c.insert("k", "n", UnixTime(5), UnixTime(0)),
            Err(ReplayError::Full)
        );
    }

    #[test]
    fn stale_age_out_is_still_remembered_for_now() {
        let c = ReplayCache::new(10);
        c.insert("k", "n", UnixTime(5), UnixTime(10)).unwrap();
        assert_eq!(
            c.insert("k", "n", UnixTime(5), UnixTime(10)),
            Err(ReplayError::Replay)
        );
    }

    #[test]
    fn concurrent_same_nonce_exactly_one_wins() {
        for round in 0..50 {
            let c = Arc::new(ReplayCache::new(1000));
            let barrier = Arc::new(std::sync::Barrier::new(4));
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let c = c.clone();
                    let b = barrier.clone();
                    std::thread::spawn(move || {
                        b.wait();
                        c.insert("k", &format!("nonce-{round}"), UnixTime(100), UnixTime(0))
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
            assert!(results
                .iter()
                .all(|r| r.is_ok() || *r == Err(ReplayError::Replay)));
        }
    }

    /// 4 threads each insert `per_thread` distinct nonces; returns how many were accepted.
    fn insert_from_4_threads(c: &Arc<ReplayCache>, per_thread: usize) -> usize {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..per_thread)
                        .filter(|i| {
                            c.insert("k", &format!("{t}-{i}"), UnixTime(100), UnixTime(0))
                                .is_ok()
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    }

    #[test]
    fn concurrent_distinct_nonces_respect_capacity() {
        let c = Arc::new(ReplayCache::new(1000));
        let ok = insert_from_4_threads(&c, 500);
        assert_eq!(ok, 1000);
        assert_eq!(c.len(), 1000);
    }

    #[test]
    fn concurrent_batched_inserts_never_exceed_capacity_and_top_up_exactly() {
        let cap = 65_536;
        let c = Arc::new(ReplayCache::new(cap));
        assert_eq!(c.batch, 64);
        let ok = insert_from_4_threads(&c, 20_000);
        assert!(ok <= cap, "{ok} accepted, capacity {cap}");
        assert_eq!(c.len(), ok);
        // Slots parked in shards' allowances are reclaimed before a refusal:
        // topping up from one thread reaches the capacity exactly.
        let mut i = 0;
        while c
            .insert("k", &format!("top-{i}"), UnixTime(100), UnixTime(0))
            .is_ok()
        {
            i += 1;
        }
        assert_eq!(c.len(), cap);
    }

    #[test]
    fn codes() {
        assert_eq!(ReplayError::Replay.code(), "replay");
        assert_eq!(ReplayError::Replay.status(), 401);
        assert_eq!(ReplayError::Full.code(), "replay_cache_full");
        assert_eq!(ReplayError::Full.status(), 503);
    }
}
