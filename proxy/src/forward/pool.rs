//! Idle upstream connections, kept per worker thread.
//!
//! Why not pingora's `TransportConnector` pool: zen-proxy runs pingora's
//! no-steal runtime (one single-threaded tokio runtime per worker thread,
//! app.rs), and that pool's release path spawns an idle-watch task on a
//! *random* worker's runtime (`pingora_runtime::current_handle()`). Most
//! reuses then cross threads: an eventfd wake to hand the connection back, a
//! lock wait, and an `Arc::try_unwrap` that loses the race now and then under
//! load ("failed to acquire reusable stream", ~5 % of reuses at c=32 in
//! `strace`), which closes a good connection and opens a new one. Each
//! request also paid a `getpeername` and two non-blocking reads.
//!
//! Here a task never leaves the worker it was spawned on, so a connection
//! released by a worker is reused by that same worker, whose reactor it is
//! registered with: a thread-local stack, no lock, no task per release. This is the hot path, hence hand-written rather than a crate.
//!
//! Staleness: an upstream may close an idle connection. Entries past their
//! deadline (the upstream's idle timeout, or the server's `Keep-Alive:
//! timeout=` if shorter) are never handed out, and a per-thread sweep closes
//! them once a second. An entry idle longer than [`PROBE_AFTER`] is probed
//! with one non-blocking `MSG_PEEK` before use (EOF or unexpected bytes: it
//! is dropped), and so is every entry handed to a request that will not be
//! retried. A connection that fails anyway before any response byte is
//! retried once on a fresh connection by the caller (forward/mod.rs), for
//! idempotent methods only.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pingora_core::protocols::Stream;

/// Idle connections kept per worker thread and upstream; more are closed.
pub const MAX_IDLE_PER_THREAD: usize = 128;
/// An entry idle at least this long is probed before reuse.
pub const PROBE_AFTER: Duration = Duration::from_millis(500);
/// How often each worker closes its expired idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    since: Instant,
    deadline: Instant,
}

type Key = (u64, usize);

thread_local! {
    static IDLE: RefCell<HashMap<Key, VecDeque<Idle>>> = RefCell::new(HashMap::new());
    static SWEEPER: Cell<bool> = const { Cell::new(false) };
}

/// One process-wide set of upstreams' idle connections; `id` keeps two
/// `Pool`s in one process (tests) apart in the thread-local map.
pub struct Pool {
    id: u64,
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

impl Pool {
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Pool {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The most recently released usable connection to upstream `upstream`
    /// (an index into the caller's upstream list), if this thread has one.
    /// `probe`: peek at it however briefly it has been idle (for requests
    /// that must not be retried).
    pub fn take(&self, upstream: usize, probe: bool) -> Option<Stream> {
        let now = Instant::now();
        IDLE.with(|m| {
            let mut m = m.borrow_mut();
            let q = m.get_mut(&(self.id, upstream))?;
            while let Some(idle) = q.pop_back() {
                if idle.deadline <= now {
                    // Closed on drop. Entries below may still be good: a
                    // server's short Keep-Alive timeout gives a later entry
                    // an earlier deadline.
                    continue;
                }
                let fresh = !probe && now.duration_since(idle.since) < PROBE_AFTER;
                if fresh || still_open(&idle.stream) {
                    return Some(idle.stream);
                }
            }
            None
        })
    }

    /// Keeps `stream` for reuse until `idle_for` has passed.
    pub fn put(&self, upstream: usize, stream: Stream, idle_for: Duration) {
        let now = Instant::now();
        let idle = Idle {
            stream,
            since: now,
            deadline: now + idle_for,
        };
        IDLE.with(|m| {
            let mut m = m.borrow_mut();
            let q = m.entry((self.id, upstream)).or_default();
            while q.front().is_some_and(|i| i.deadline <= now) {
                q.pop_front();
            }
            if q.len() >= MAX_IDLE_PER_THREAD {
                q.pop_front();
            }
            q.push_back(idle);
        });
        start_sweeper();
    }

    /// Idle connections this thread holds for `upstream`.
    #[cfg(test)]
    fn idle_here(&self, upstream: usize) -> usize {
        IDLE.with(|m| m.borrow().get(&(self.id, upstream)).map_or(0, |q| q.len()))
    }
}

/// Closes this thread's expired idle connections once a second, so sockets
/// the upstream has closed do not linger in CLOSE_WAIT past their deadline
/// while traffic is quiet. One task per worker thread, spawned on the first release.
fn start_sweeper() {
    if SWEEPER.with(|s| s.replace(true)) {
        return;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        SWEEPER.with(|s| s.set(false));
        return;
    }
    // On pingora's no-steal runtime `tokio::spawn` stays on this thread, so
    // the sweep sees this thread's map.
    tokio::spawn(async {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            sweep(Instant::now());
        }
    });
}

fn sweep(now: Instant) {
    IDLE.with(|m| {
        for q in m.borrow_mut().values_mut() {
            q.retain(|i| i.deadline > now);
        }
    });
}

/// One non-blocking peek: `false` if the upstream closed the connection, sent
/// bytes nobody asked for, or the socket is in error.
fn still_open(stream: &Stream) -> bool {
    let fd = stream.id();
    let mut byte = 0u8;
    // SAFETY: `fd` is the open socket `stream` owns for the duration of this
    // call; `recv` writes at most 1 byte into `byte`.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && {
        let e = std::io::Error::last_os_error().raw_os_error();
        e == Some(libc::EAGAIN) || e == Some(libc::EWOULDBLOCK)
    }
}

/// The server's `Keep-Alive: timeout=N` (seconds), when it sends one.
pub fn server_keepalive(value: Option<&[u8]>) -> Option<Duration> {
    let v = std::str::from_utf8(value?).ok()?;
    v.split(',').find_map(|p| {
        let (k, n) = p.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("timeout") {
            n.trim().parse::<u64>().ok().map(Duration::from_secs)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        let stream: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(
            c.unwrap(),
        ));
        (stream, s.unwrap().0)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reuses_the_most_recent_and_skips_expired() {
        let pool = Pool::new();
        let (a, _sa) = pair().await;
        let (b, _sb) = pair().await;
        let (a_id, b_id) = (a.id(), b.id());
        pool.put(0, a, Duration::from_secs(60));
        pool.put(0, b, Duration::from_secs(60));
        assert_eq!(pool.idle_here(0), 2);
        assert_eq!(pool.take(0, false).map(|s| s.id()), Some(b_id), "LIFO");
        assert_eq!(pool.take(0, false).map(|s| s.id()), Some(a_id));
        assert!(pool.take(0, false).is_none());
        assert!(
            pool.take(1, false).is_none(),
            "another upstream has its own stack"
        );

        let (c, _sc) = pair().await;
        pool.put(0, c, Duration::ZERO);
        assert!(
            pool.take(0, false).is_none(),
            "an expired entry is never handed out"
        );
        assert_eq!(pool.idle_here(0), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn probe_drops_closed_and_chatty_connections() {
        let pool = Pool::new();
        let (closed, server_side) = pair().await;
        drop(server_side);
        let (chatty, mut talker) = pair().await;
        talker.write_all(b"HTTP/1.1 408 x\r\n\r\n").await.unwrap();
        let (fine, _keep) = pair().await;
        let fine_id = fine.id();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!still_open(&closed));
        assert!(!still_open(&chatty));
        assert!(still_open(&fine));

        // Old enough to be probed: the closed and chatty ones are skipped.
        let long_ago = Instant::now() - PROBE_AFTER - Duration::from_millis(1);
        IDLE.with(|m| {
            let mut m = m.borrow_mut();
            let q = m.entry((pool.id, 0)).or_default();
            for s in [fine, chatty, closed] {
                q.push_back(Idle {
                    stream: s,
                    since: long_ago,
                    deadline: Instant::now() + Duration::from_secs(60),
                });
            }
        });
        assert_eq!(pool.take(0, false).map(|s| s.id()), Some(fine_id));
        assert!(pool.take(0, false).is_none());

        // Released just now, closed since: only a probing take notices.
        let (closed, server_side) = pair().await;
        drop(server_side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.put(0, closed, Duration::from_secs(60));
        assert!(pool.take(0, true).is_none(), "probe finds it closed");
        let (closed, server_side) = pair().await;
        drop(server_side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let closed_id2 = closed.id();
        pool.put(0, closed, Duration::from_secs(60));
        assert_eq!(
            pool.take(0, false).map(|s| s.id()),
            Some(closed_id2),
            "a non-probing take trusts a connection idle under {PROBE_AFTER:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bounded_and_swept() {
        let pool = Pool::new();
        let mut keep = Vec::new();
        for _ in 0..MAX_IDLE_PER_THREAD + 3 {
            let (s, peer) = pair().await;
            keep.push(peer);
            pool.put(7, s, Duration::from_millis(200));
        }
        assert_eq!(pool.idle_here(7), MAX_IDLE_PER_THREAD);
        sweep(Instant::now() + Duration::from_secs(1));
        assert_eq!(pool.idle_here(7), 0);
    }

    #[test]
    fn keepalive_header() {
        assert_eq!(
            server_keepalive(Some(b"timeout=5, max=1000")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            server_keepalive(Some(b"max=3,Timeout=2")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(server_keepalive(Some(b"max=3")), None);
        assert_eq!(server_keepalive(Some(b"timeout=x")), None);
        assert_eq!(server_keepalive(None), None);
    }
}
