//! CPU time of the measuring thread, as a criterion measurement. The shared
//! 2-core build box runs other jobs, which inflates wall time by preemption;
//! thread CPU time counts only the cycles the measured code used. The hot-path
//! benchmarks report both.
//!
//! Shared by `trust/benches/hot_path.rs` and `proxy/benches/decision.rs`
//! (included with `#[path]`: a crate for one struct would be heavier).

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};

pub struct ThreadCpu;

pub fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

static WALL: WallTime = WallTime;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, i: Duration) -> Duration {
        thread_cpu_now().saturating_sub(i)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}
