#!/usr/bin/env python3
"""Turns bench/compare's raw zen-bench JSON into bench/RESULTS.md.

argv: WORK OUT GIT_REV NGINX_VERSION HAPROXY_VERSION RUSTC PROFILE ROUNDS DURATION CONNS HS_CONC IDLE RATE
"""
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time

(work, out, rev, nginx_v, haproxy_v, rustc_v, profile,
 rounds, duration, conns, hs_conc, idle, rate) = sys.argv[1:14]
TARGETS = ["zen-proxy", "nginx", "haproxy"]
PEERS = ["nginx", "haproxy"]

runs = {}
for path in sorted(glob.glob(os.path.join(work, "results", "*.json"))):
    name = os.path.basename(path)[:-5]
    rnd, rest = name.split("-", 1)
    scenario = rest.rsplit("-", 1)[1]
    target = rest.rsplit("-", 1)[0]
    with open(path) as f:
        runs.setdefault((target, scenario), []).append((int(rnd), json.load(f)))


def med(target, scenario, getter):
    vals = [getter(r) for _, r in runs.get((target, scenario), [])]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def cpu(r):
    return (r.get("target") or {}).get("cpu_us_per_request")


def p99(r):
    return r["latency_us"]["p99"] / 1000.0


def rss_idle(r):
    d = r.get("details") or {}
    m = d.get("target_with_idle") or {}
    return m.get("rss_kb", 0) / 1024.0 if m else None


def pss_idle(r):
    d = r.get("details") or {}
    m = d.get("target_with_idle") or {}
    return m.get("pss_kb", 0) / 1024.0 if m else None


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


with open("/proc/loadavg") as f:
    loadavg = " ".join(f.read().split()[:3])
cpu_model = sh("lscpu | sed -n 's/^Model name: *//p' | head -1") or platform.processor()
mem = sh("free -m | awk '/^Mem:/ {print $2\" MiB\"}'")
lines = []
w = lines.append
w("# zen-bench: zen-proxy vs nginx vs HAProxy")
w("")
w(f"Produced by `bench/compare` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
  "Raw per-run figures below; headline numbers are medians over the rounds.")
w("")
w("**zen-proxy runs its full check chain** (mTLS client-cert verification + SPIFFE route rule + "
  "zen-hmac-v1 signature verification + replay cache). **nginx and HAProxy do mTLS only**: "
  "they cannot check the signatures, which the client still computes and sends to all three. "
  "All three forward to the same upstream (one nginx worker answering `200 ok`) over "
  "keep-alive connections.")
w("")
with open(os.path.join(work, "commands.txt")) as f:
    chained = "--intermediate" in f.readline()
w("Client certificates: " + (
    "each agent presents its SVID and the intermediate CA that signed it, as zen-control issues "
    "them; every target verifies both signatures up to the root it trusts (`INTERMEDIATE=1`, the "
    "default since stop 14)." if chained else
    "agent SVIDs are signed by the root directly (`INTERMEDIATE=0`; stop 13 and earlier)."))
w("")
w("## Machine and versions")
w("")
w(f"- CPU: {cpu_model}, {os.cpu_count()} cores; memory {mem}; kernel {platform.release()}")
w(f"- zen-proxy and zen-bench: git {rev}, cargo profile `{profile}`; {rustc_v}")
w(f"- load average when the report was written: {loadavg} "
  "(other work on the machine skews every figure; the rounds alternate targets so it "
  "skews them alike)")
w(f"- {nginx_v}")
w(f"- {haproxy_v}")
w("- The client (zen-bench), the upstream and the proxy under test share the same cores, "
  "so absolute throughput is bounded by the machine; CPU µs per request is the target's "
  "own utime+stime (its whole process tree) divided by the requests it served.")
w("")
w("## Ratio table (zen-proxy / peer; lower is better)")
w("")
w("| metric | zen-proxy | nginx | haproxy | zen/nginx | zen/haproxy | issue target | met |")
w("|---|---|---|---|---|---|---|---|")


def ratio_row(label, scenario, getter, target_txt, check):
    z = med("zen-proxy", scenario, getter)
    n = med("nginx", scenario, getter)
    h = med("haproxy", scenario, getter)
    rn = z / n if z is not None and n else None
    rh = z / h if z is not None and h else None
    met = check(z, n, h)
    w(f"| {label} | {fmt(z)} | {fmt(n)} | {fmt(h)} | {fmt(rn, 2)} | {fmt(rh, 2)} | {target_txt} | "
      f"{'-' if met is None else ('yes' if met else 'no')} |")


def best(n, h):
    vals = [v for v in (n, h) if v is not None]
    return min(vals) if vals else None


ratio_row(f"CPU µs / request (keep-alive, c={conns})", "keepalive", cpu,
          "≤ 0.5 × better peer",
          lambda z, n, h: None if z is None or best(n, h) is None else z <= 0.5 * best(n, h))
ratio_row(f"CPU µs / new mTLS connection (c={hs_conc})", "handshake", cpu,
          "≤ 0.25 × better peer",
          lambda z, n, h: None if z is None or best(n, h) is None else z <= 0.25 * best(n, h))
ratio_row(f"p99 latency ms (keep-alive, c={conns})", "keepalive", p99,
          "≤ better peer",
          lambda z, n, h: None if z is None or best(n, h) is None else z <= best(n, h))
ratio_row(f"p99 latency ms (open loop, {rate} req/s, CO-corrected)", "rate", p99,
          "(info)", lambda z, n, h: None)
ratio_row(f"CPU µs / request (open loop, {rate} req/s)", "rate", cpu,
          "(info)", lambda z, n, h: None)
# /proc reports kB = KiB; the figures are MiB, the target is 30 MB
# read strictly as 30,000,000 bytes (28.6 MiB).
ratio_row(f"RSS MiB with {idle} idle mTLS connections", "idle", rss_idle,
          "≤ 30 MB = 28.6 MiB (zen-proxy)",
          lambda z, n, h: None if z is None else z * 1024 * 1024 <= 30e6)
ratio_row(f"PSS MiB with {idle} idle mTLS connections", "idle", pss_idle, "(info)",
          lambda z, n, h: None)
w("")
w("RSS of nginx is summed over master + workers (shared pages counted once per process); "
  "PSS splits shared pages and is the fairer sum for a multi-process server.")
w("")
w("## Raw figures")
w("")
w("| round | target | scenario | req/s | 2xx | unexpected | CPU µs/req | target CPU % | p50 ms | p99 ms | p99.9 ms | max ms | RSS MiB | PSS MiB |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for (target, scenario), rs in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    for rnd, r in sorted(rs, key=lambda x: x[0]):
        t = r.get("target") or {}
        d = r.get("details") or {}
        mem_src = d.get("target_with_idle") or t
        lat = r["latency_us"]
        w(f"| {rnd} | {target} | {scenario} | {r['requests_per_sec']:.0f} | {r['ok']} | {r['unexpected']} | "
          f"{fmt(t.get('cpu_us_per_request'))} | {fmt(t.get('cpu_percent'), 0)} | "
          f"{lat['p50']/1000:.2f} | {lat['p99']/1000:.2f} | {lat['p999']/1000:.2f} | {lat['max']/1000:.2f} | "
          f"{fmt(mem_src.get('rss_kb', 0)/1024 if mem_src else None)} | "
          f"{fmt(mem_src.get('pss_kb', 0)/1024 if mem_src else None)} |")
w("")
ref = runs.get(("zen-proxy", "refusals"), [])
if ref:
    w("## Refusals (zen-proxy only; 50 % bad: bad signature, replay, wrong cluster)")
    w("")
    w("| round | kind | expected | sent | as expected | other answers |")
    w("|---|---|---|---|---|---|")
    for rnd, r in sorted(ref, key=lambda x: x[0]):
        for kind, t in r["details"]["kinds"].items():
            other = ", ".join(f"{k}: {v}" for k, v in t["other"].items()) or "-"
            w(f"| {rnd} | {kind} | {t['expected']} | {t['sent']} | {t['as_expected']} | {other} |")
    w("")
    w("| round | accepted p50 / p99 ms | refused p50 / p99 ms | CPU µs/req (mixed) |")
    w("|---|---|---|---|")
    for rnd, r in sorted(ref, key=lambda x: x[0]):
        a = r["details"]["latency_accepted_us"]
        f = r["details"]["latency_refused_us"]
        w(f"| {rnd} | {a['p50']/1000:.2f} / {a['p99']/1000:.2f} | {f['p50']/1000:.2f} / {f['p99']/1000:.2f} | "
          f"{fmt((r.get('target') or {}).get('cpu_us_per_request'))} |")
    w("")
oha_rows = []
oha_tsv = os.path.join(work, "oha.tsv")
if os.path.exists(oha_tsv):
    clk = os.sysconf("SC_CLK_TCK")
    with open(oha_tsv) as f:
        for line in f:
            rnd, target, ticks, path = line.rstrip("\n").split("\t")
            try:
                with open(path) as jf:
                    o = json.load(jf)
            except (OSError, ValueError):
                oha_rows.append((int(rnd), target, None, None, None, None, "no JSON (see the .err file)"))
                continue
            codes = o.get("statusCodeDistribution") or {}
            ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
            total = sum(codes.values())
            # Requests in flight when -z ends are "aborted due to deadline": not failures.
            errors = sum(v for k, v in (o.get("errorDistribution") or {}).items()
                         if k != "aborted due to deadline")
            cpu_us = int(ticks) * 1e6 / clk / ok if ok else None
            p99_ms = ((o.get("latencyPercentiles") or {}).get("p99") or 0) * 1000
            rps = (o.get("summary") or {}).get("requestsPerSec")
            note = "-" if total == ok and not errors else f"{total - ok} non-2xx, {errors} errors"
            oha_rows.append((int(rnd), target, rps, ok, cpu_us, p99_ms, note))
if oha_rows:
    w("## oha, mTLS only (a load generator that is not ours)")
    w("")
    w(f"`oha -c {conns} -z {duration}s` with agent a1's certificate, on a route that needs the client "
      "certificate and (zen-proxy) a SPIFFE rule, but **no signature**: oha cannot sign. So here every "
      "target does the same work: mTLS termination + forwarding. CPU is the target's process tree "
      "(utime+stime from /proc, clock-tick resolution) over the 2xx responses. The requests still in "
      "flight when `-z` ends (oha: \"aborted due to deadline\", up to one per connection) are not "
      "counted as errors.")
    w("")

    def oha_med(target, idx):
        vals = [r[idx] for r in oha_rows if r[1] == target and r[idx] is not None]
        return statistics.median(vals) if vals else None

    w("| metric | zen-proxy | nginx | haproxy | zen/nginx | zen/haproxy |")
    w("|---|---|---|---|---|---|")
    for label, idx in (("CPU µs / request", 4), ("p99 ms", 5), ("req/s", 2)):
        z, n, h = (oha_med(t, idx) for t in TARGETS)
        rn = z / n if z is not None and n else None
        rh = z / h if z is not None and h else None
        w(f"| {label} | {fmt(z)} | {fmt(n)} | {fmt(h)} | {fmt(rn, 2)} | {fmt(rh, 2)} |")
    w("")
    w("| round | target | req/s | 2xx | CPU µs/req | p99 ms | other |")
    w("|---|---|---|---|---|---|---|")
    for rnd, target, rps, ok, cpu_us, p99_ms, note in sorted(oha_rows):
        w(f"| {rnd} | {target} | {fmt(rps, 0)} | {ok if ok is not None else '-'} | {fmt(cpu_us)} | {fmt(p99_ms, 2)} | {note} |")
    w("")
w("## Commands")
w("")
w(f"`ROUNDS={rounds} DURATION={duration} CONNS={conns} HS_CONC={hs_conc} IDLE={idle} RATE={rate} bench/compare` ran, per round "
  "and target (order rotated each round):")
w("")
w("```")
with open(os.path.join(work, "commands.txt")) as f:
    seen = []
    for line in f:
        line = line.strip()
        if line not in seen:
            seen.append(line)
    lines.extend(seen)
w("```")
w("")
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
