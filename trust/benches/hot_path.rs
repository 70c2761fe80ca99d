//! Hot-path benchmarks: what the proxy does per request.
//!
//! cargo bench -p zen-trust -- --warm-up-time 1 --measurement-time 3

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::Measurement;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zen_trust::signature::{sign, verify, RequestParts, SignOptions, VerifyPolicy};
use zen_trust::{KeySet, KeySetEntry, KeyStatus, ReplayCache, Secret, SpiffeId, UnixTime};

const NOW: UnixTime = UnixTime(1_800_000_000);

#[path = "support/thread_cpu.rs"]
mod thread_cpu;
use thread_cpu::{thread_cpu_now, ThreadCpu};

fn key_set(secret: &Secret) -> KeySet {
    let entries: Vec<KeySetEntry> = (0..1000)
        .map(|i| KeySetEntry {
            key_id: if i == 0 {
                "k1".into()
            } else {
                format!("key-{i}")
            },
            secret: if i == 0 {
                secret.clone()
            } else {
                Secret::generate()
            },
            owner: SpiffeId::parse(&format!("spiffe://zen.local/cluster/c1/agent/a{i}")).unwrap(),
            not_before: UnixTime(0),
            not_after: UnixTime(2_000_000_000),
            status: KeyStatus::Active,
        })
        .collect();
    KeySet::from_entries(1, &entries).unwrap()
}

fn signed_headers(
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    secret: &Secret,
) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("host", "api.zen.local".parse().unwrap());
    h.insert("user-agent", "zen-agent/0.1".parse().unwrap());
    h.insert("accept", "application/json".parse().unwrap());
    let parts = RequestParts {
        method,
        authority: "api.zen.local",
        path,
        query: None,
        headers: &h,
    };
    let s = sign(&parts, body, &SignOptions::new("k1", secret, NOW)).unwrap();
    let mut out = h.clone();
    out.insert("signature-input", s.signature_input.parse().unwrap());
    out.insert("signature", s.signature.parse().unwrap());
    if let Some(d) = s.content_digest {
        out.insert("content-digest", d.parse().unwrap());
    }
    out
}

fn bench_verify<M: Measurement<Value = Duration> + 'static>(c: &mut Criterion<M>, tag: &str) {
    let secret = Secret::generate();
    let keys = key_set(&secret);
    let policy = VerifyPolicy::default();

    let get = signed_headers("GET", "/agent/v1/allowlist", None, &secret);
    let get_req = RequestParts {
        method: "GET",
        authority: "api.zen.local",
        path: "/agent/v1/allowlist",
        query: None,
        headers: &get,
    };
    verify(&policy, &get_req, None, &keys, NOW).unwrap();
    c.bench_function(&format!("{tag}verify GET (3 components)"), |b| {
        b.iter(|| verify(&policy, black_box(&get_req), None, &keys, NOW).unwrap())
    });

    // The same request with a Signature-Input that is valid but not in canonical form (a space
    // after '('): verifies the same, through sfv instead of the canonical fast path.
    let mut spaced = get.clone();
    let si = get["signature-input"]
        .to_str()
        .unwrap()
        .replacen('(', "( ", 1);
    spaced.insert("signature-input", si.parse().unwrap());
    let spaced_req = RequestParts {
        headers: &spaced,
        ..get_req
    };
    verify(&policy, &spaced_req, None, &keys, NOW).unwrap();
    c.bench_function(
        &format!("{tag}verify GET (3 components, non-canonical input: sfv path)"),
        |b| b.iter(|| verify(&policy, black_box(&spaced_req), None, &keys, NOW).unwrap()),
    );

    let body = vec![b'x'; 1024];
    let post = signed_headers("POST", "/agent/v1/heartbeat", Some(&body), &secret);
    let post_req = RequestParts {
        method: "POST",
        path: "/agent/v1/heartbeat",
        headers: &post,
        ..get_req
    };
    verify(&policy, &post_req, Some(&body), &keys, NOW).unwrap();
    let mut g = c.benchmark_group(format!("{tag}verify POST"));
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("1 KiB body + content-digest", |b| {
        b.iter(|| {
            verify(
                &policy,
                black_box(&post_req),
                Some(black_box(&body)),
                &keys,
                NOW,
            )
            .unwrap()
        })
    });
    g.finish();

    c.bench_function(&format!("{tag}sign GET (3 components)"), |b| {
        let h = http::HeaderMap::new();
        let req = RequestParts {
            headers: &h,
            ..get_req
        };
        let opts = SignOptions::new("k1", &secret, NOW);
        b.iter(|| sign(black_box(&req), None, &opts).unwrap())
    });
}

/// Formats `n` into `buf` without allocating.
fn fmt_u64(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Two threads insert `iters` distinct nonces each into one cache. Returns
/// (wall time, mean CPU time of the two threads). A synthetic clock advances
/// one second per 100k inserts per thread and entries live 3 s, so the cache
/// holds ~600k live entries and expiry runs continuously, as in steady state
/// (on the synthetic clock alone: `wall_clock_only`).
fn replay_run(iters: u64) -> (Duration, Duration) {
    let cache = Arc::new(ReplayCache::wall_clock_only(2_000_000));
    let start = Instant::now();
    let handles: Vec<_> = (0..2u64)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let cpu0 = thread_cpu_now();
                let mut buf = [0u8; 20];
                for i in 0..iters {
                    let now = UnixTime(NOW.as_secs() + (i / 100_000) as i64);
                    let nonce = fmt_u64(i * 2 + t, &mut buf);
                    cache
                        .insert("k1", nonce, now + Duration::from_secs(3), now)
                        .unwrap();
                }
                thread_cpu_now().saturating_sub(cpu0)
            })
        })
        .collect();
    let cpu: Duration = handles.into_iter().map(|h| h.join().unwrap()).sum();
    // Each iteration is one insert on each of the two threads.
    (start.elapsed(), cpu / 2)
}

fn bench_replay_wall(c: &mut Criterion) {
    c.bench_function("replay insert (2 threads)", |b| {
        b.iter_custom(|iters| replay_run(iters).0)
    });
}

fn bench_replay_cpu(c: &mut Criterion<ThreadCpu>) {
    c.bench_function("cpu-time: replay insert (2 threads)", |b| {
        b.iter_custom(|iters| replay_run(iters).1)
    });
}

fn bench_spiffe<M: Measurement<Value = Duration> + 'static>(c: &mut Criterion<M>, tag: &str) {
    c.bench_function(&format!("{tag}SPIFFE ID parse"), |b| {
        b.iter(|| SpiffeId::parse(black_box("spiffe://zen.local/cluster/c1/agent/a1")).unwrap())
    });
}

/// Pieces of the verify path, for comparison with the totals.
fn bench_baselines(c: &mut Criterion) {
    use hmac::Mac;
    let si = r#"sig1=("@method" "@authority" "@path");created=1800000000;keyid="k1";nonce="Zm9vYmFyYmF6cXV4MTIzNA""#;
    let sg = "sig1=:dGhpcyBpcyBhIDMyIGJ5dGUgc2lnbmF0dXJlIHh4eHg=:";
    c.bench_function("baseline: sfv::Dictionary parse of Signature-Input", |b| {
        b.iter(|| {
            sfv::Parser::new(black_box(si))
                .parse::<sfv::Dictionary>()
                .unwrap()
        })
    });
    c.bench_function("baseline: sfv::Dictionary parse of Signature", |b| {
        b.iter(|| {
            sfv::Parser::new(black_box(sg))
                .parse::<sfv::Dictionary>()
                .unwrap()
        })
    });
    let key = [7u8; 32];
    let base = "\"@method\": GET\n\"@authority\": api.zen.local\n\"@path\": /agent/v1/allowlist\n\"@signature-params\": (\"@method\" \"@authority\" \"@path\");created=1800000000;keyid=\"k1\";nonce=\"Zm9vYmFyYmF6cXV4MTIzNA\"";
    let mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    c.bench_function("baseline: hmac-sha256 of a 3-component base", |b| {
        b.iter(|| {
            let mut m = mac.clone();
            m.update(black_box(base.as_bytes()));
            m.finalize()
        })
    });
    let mut h = http::HeaderMap::new();
    h.insert("host", "a".parse().unwrap());
    h.insert("signature-input", si.parse().unwrap());
    h.insert("signature", sg.parse().unwrap());
    use zen_trust::signature::HeaderLookup;
    c.bench_function(
        "baseline: HeaderMap lookup of both signature headers",
        |b| {
            b.iter(|| {
                (
                    h.combined(black_box("signature-input")).map(|c| c.len()),
                    h.combined(black_box("signature")).map(|c| c.len()),
                )
            })
        },
    );
}

fn wall_clock(c: &mut Criterion) {
    bench_verify(c, "");
    bench_replay_wall(c);
    bench_spiffe(c, "");
    bench_baselines(c);
}

fn cpu_time(c: &mut Criterion<ThreadCpu>) {
    bench_verify(c, "cpu-time: ");
    bench_replay_cpu(c);
    bench_spiffe(c, "cpu-time: ");
}

criterion_group!(wall, wall_clock);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = cpu_time
}
criterion_main!(wall, cpu);
