//! The target process's cost, read from /proc: CPU time (utime + stime) of
//! the process and its descendants (nginx workers are children of the
//! master), and its memory (VmRSS, VmHWM, Pss).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// Fields of /proc/PID/stat after the `(comm)` field, which may hold spaces.
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let text = read(&format!("/proc/{pid}/stat"))?;
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .with_context(|| format!("/proc/{pid}/stat: unexpected format"))?;
    Ok(after.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime in clock ticks. Field numbers per proc(5): state is 3,
/// ppid 4, utime 14, stime 15; `stat_fields` starts at state.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let f = stat_fields(pid)?;
    let get = |n: usize| -> Result<u64> {
        f.get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat: field {n} missing"))
    };
    Ok(get(14)? + get(15)?)
}

fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid).ok()?.get(1)?.parse().ok()
}

/// `pid` and every live descendant.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(pp) = parent(p) {
                children.entry(pp).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied());
        }
        i += 1;
    }
    out
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// `VmRSS` and `VmHWM` (kB) from /proc/PID/status.
fn status_kb(pid: u32) -> Result<(u64, u64)> {
    let text = read(&format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Ok((field("VmRSS:").unwrap_or(0), field("VmHWM:").unwrap_or(0)))
}

/// Proportional set size (kB): shared pages split among the processes that
/// map them, so summing a master and its workers does not double count.
fn pss_kb(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Memory of a process tree, summed over its processes.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Memory {
    pub rss_kb: u64,
    /// Sum of each process's VmHWM (its own peak RSS).
    pub peak_rss_kb: u64,
    pub pss_kb: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let mut m = Memory::default();
    for p in process_tree(pid) {
        match status_kb(p) {
            Ok((rss, hwm)) => {
                m.rss_kb += rss;
                m.peak_rss_kb += hwm;
            }
            // A worker that exited between the scan and the read.
            Err(_) if p != pid => continue,
            Err(e) => return Err(e),
        }
        m.pss_kb += pss_kb(p).unwrap_or(0);
    }
    Ok(m)
}

/// CPU of the target during a run.
#[derive(Debug, Clone, Serialize)]
pub struct TargetUsage {
    pub pid: u32,
    pub processes: usize,
    pub cpu_us: u64,
    pub cpu_us_per_request: f64,
    /// Share of one core the target used during the run, in percent.
    pub cpu_percent: f64,
    #[serde(flatten)]
    pub memory: Memory,
}

/// Taken before the load starts; `finish` after it ends.
pub struct TargetProbe {
    pid: u32,
    start: HashMap<u32, u64>,
    at: Instant,
}

impl TargetProbe {
    pub fn start(pid: u32) -> Result<TargetProbe> {
        let mut start = HashMap::new();
        for p in process_tree(pid) {
            match cpu_ticks(p) {
                Ok(t) => {
                    start.insert(p, t);
                }
                Err(e) if p == pid => return Err(e.context("--target-pid")),
                Err(_) => {}
            }
        }
        Ok(TargetProbe {
            pid,
            start,
            at: Instant::now(),
        })
    }

    pub fn finish(&self, requests: u64) -> Result<TargetUsage> {
        let wall = self.at.elapsed();
        let mut ticks = 0u64;
        let tree = process_tree(self.pid);
        for p in &tree {
            let Ok(now) = cpu_ticks(*p) else { continue };
            // A process born during the run counts from zero.
            ticks += now.saturating_sub(self.start.get(p).copied().unwrap_or(0));
        }
        let cpu_us = ticks * 1_000_000 / clock_ticks_per_sec();
        Ok(TargetUsage {
            pid: self.pid,
            processes: tree.len(),
            cpu_us,
            cpu_us_per_request: if requests == 0 {
                0.0
            } else {
                cpu_us as f64 / requests as f64
            },
            cpu_percent: cpu_us as f64 / wall.as_micros().max(1) as f64 * 100.0,
            memory: memory(self.pid)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let probe = TargetProbe::start(me).unwrap();
        // Burn a little CPU so the delta is measurable at 10 ms ticks.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let usage = probe.finish(10).unwrap();
        assert!(usage.cpu_us > 0, "{usage:?}");
        assert!(usage.memory.rss_kb > 0 && usage.memory.peak_rss_kb >= usage.memory.rss_kb);
        assert!(process_tree(me).contains(&me));
    }
}
