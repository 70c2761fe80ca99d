//! Loopback ports for the processes a test starts.
//!
//! Binding `127.0.0.1:0` and releasing the port races with every other test
//! running in parallel: before the child binds it, the kernel may hand the same
//! port to another test's `bind(0)`, or to an outgoing connection as its local
//! port (both draw from the ephemeral range). A zen-proxy test once waited out
//! its 20 s readiness deadline on "address in use" that way. The ports here
//! come from below the ephemeral range, where neither `bind(0)` nor `connect()`
//! picks; each is handed out at most once per test process, and each is
//! checked bindable first. Test binaries run one after another under
//! `cargo test`, so a process-wide counter is enough to keep tests apart; a
//! start that depends on the process keeps a rerun off the last run's ports.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Lowest port handed out: above the registered services people commonly run
/// on a development machine (8000s, 9000s).
const FLOOR: u16 = 15_000;
/// Fewer ports than this below the ephemeral range and we fall back to the kernel's pick.
const MIN_SPAN: u16 = 2_000;

struct Range {
    floor: u16,
    span: u16,
    next: AtomicU32,
}

/// A TCP port on 127.0.0.1 that nothing in this process has been given before and that could be
/// bound a moment ago.
pub fn free_port() -> u16 {
    let range = RANGE.get_or_init(Range::new);
    if range.span < MIN_SPAN {
        return kernel_pick();
    }
    range.pick()
}

static RANGE: OnceLock<Range> = OnceLock::new();

impl Range {
    fn new() -> Range {
        let ephemeral_low = ephemeral_low().unwrap_or(32_768);
        let span = ephemeral_low.saturating_sub(FLOOR);
        // A random start keeps two concurrent test processes (say, two `cargo test` runs in two
        // clones) apart more often than not.
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let start = if span == 0 {
            0
        } else {
            (h.finish() % u64::from(span)) as u32
        };
        Range {
            floor: FLOOR,
            span,
            next: AtomicU32::new(start),
        }
    }

    /// The next port of the range that binds, going round once at most.
    fn pick(&self) -> u16 {
        for _ in 0..self.span {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % u32::from(self.span);
            let port = self.floor + i as u16;
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return port;
            }
        }
        panic!(
            "no free port on 127.0.0.1 in {}..{}",
            self.floor,
            u32::from(self.floor) + u32::from(self.span)
        );
    }
}

/// Low end of `net.ipv4.ip_local_port_range`.
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The kernel's pick, remembered so that this process never hands it out twice.
fn kernel_pick() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1_000 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("the kernel kept picking ports already handed out");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "a port was handed out twice");
        let low = ephemeral_low().unwrap_or(32_768);
        if low >= FLOOR + MIN_SPAN {
            assert!(ports.iter().all(|p| (FLOOR..low).contains(p)), "{ports:?}");
        }
        for p in &ports[..20] {
            TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).expect("handed-out port binds");
        }
    }

    #[test]
    fn a_taken_port_is_skipped() {
        let taken = free_port();
        let _hold = TcpListener::bind((Ipv4Addr::LOCALHOST, taken)).unwrap();
        // A range of its own that starts at the held port (the process-wide one is shared with
        // the test above).
        let range = Range {
            floor: taken,
            span: 10,
            next: AtomicU32::new(0),
        };
        let next = range.pick();
        assert_ne!(next, taken);
        assert!((taken..taken + 10).contains(&next));
    }
}
