//! The proxy's request decision (`decision::decide`: route → SPIFFE rule → body → signature →
//! replay → key owner → revocation), and the head check before it (`head::check`), on a real
//! `State`: the routes, signature policy and replay capacity of config/dev/proxy.yaml, a 1,000-key key set, and the peer identity the identity
//! check at handshake completion builds from a CA-signed client SVID.
//!
//! cargo bench -p zen-proxy --bench decision -- --warm-up-time 1 --measurement-time 3
//!
//! Requests are signed with zen-trust's signer outside the timed part (a fresh nonce each).
//! Every figure is reported twice, as wall time and as the measuring thread's CPU time (the
//! shared 2-core box runs other jobs; preemption inflates wall time only).

use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use criterion::measurement::Measurement;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use zen_proxy::config::Config;
use zen_proxy::decision::{self, Admitted, BodySource, RequestView};
use zen_proxy::metrics::Metrics;
use zen_proxy::policy::Listener;
use zen_proxy::refusal::Refusal;
use zen_proxy::state::{Initial, Revocations, State};
use zen_proxy::tls::identity::{ConnIdentity, PeerIdentity};
use zen_proxy::tls::{ServingCert, SpiffeClientVerifier, TrustBundles};
use zen_trust::signature::{sign, RequestParts, SignOptions, VerifyPolicy};
use zen_trust::{KeySet, KeySetEntry, KeyStatus, ReplayCache, Secret, SpiffeId, UnixTime};

const DEV_CONFIG: &str = include_str!("../../config/dev/proxy.yaml");
const PEER: &str = "spiffe://zen.local/cluster/c1/agent/a1";
const KEY_ID: &str = "agent-c1-a1";
/// What the agent puts in `Host` (its configured proxy URL).
const AUTHORITY: &str = "localhost:9443";
/// Synthetic clock start (2027-01-15).
const START: i64 = 1_800_000_000;
/// The synthetic clock advances one second per this many signed requests: a proxy at 1,000
/// signed requests/s. With the dev config's 300 s `max_age` the replay cache then holds about
/// 300,000 live entries in steady state and expires a second's worth per tick, well below the
/// dev config's capacity of 1,000,000 (a full cache would be a 503, which the timed code
/// asserts never happens).
const REQUESTS_PER_SECOND: u64 = 1_000;

#[path = "../../trust/benches/support/thread_cpu.rs"]
mod thread_cpu;
use thread_cpu::ThreadCpu;

/// Runs a future that never waits: `decide` awaits only the body source, which is always
/// ready here. One poll with a no-op waker; no runtime, no allocation (its cost is the
/// "executor overhead" benchmark).
fn poll_once<F: Future>(fut: F) -> F::Output {
    match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the decision waited although the body was ready"),
    }
}

/// The whole body in one ready chunk, as a fully buffered small request arrives.
struct ReadyBody(Option<Bytes>);

#[async_trait]
impl BodySource for ReadyBody {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        Ok(self.0.take())
    }
}

struct Request {
    method: &'static str,
    path: &'static str,
    body: Bytes,
}

impl Request {
    fn get(path: &'static str) -> Request {
        Request {
            method: "GET",
            path,
            body: Bytes::new(),
        }
    }
}

/// One signed request, ready to decide.
struct Signed {
    headers: HeaderMap,
    body: ReadyBody,
    now: UnixTime,
}

struct Bench {
    state: Arc<State>,
    policy: VerifyPolicy,
    peer: ConnIdentity,
    secret: Secret,
    /// Signed requests so far (drives the synthetic clock).
    signed: Cell<u64>,
}

impl Bench {
    fn new() -> Bench {
        let cfg = Config::from_yaml(DEV_CONFIG, Path::new("config/dev/proxy.yaml"), None)
            .expect("config/dev/proxy.yaml is valid");
        let provider = zen_proxy::tls::install_crypto_provider();

        let ca = ca("zen.local");
        let (serving_cert, serving_key) = leaf(&ca, "spiffe://zen.local/proxy/dev", 1);
        let serving = ServingCert::from_pem(
            serving_cert.pem().as_bytes(),
            serving_key.serialize_pem().as_bytes(),
            Path::new("tls.crt"),
            Path::new("tls.key"),
            &provider,
        )
        .expect("serving certificate");
        let bundles = TrustBundles::from_pems(&[(
            "zen.local".into(),
            ca.pem().into_bytes(),
            "bundle.pem".into(),
        )])
        .expect("trust bundle");

        let secret = Secret::generate();
        let initial = Initial {
            serving,
            bundles,
            keys: Some(key_set(&secret)),
            revocations: Revocations::default(),
            synced_at: None,
        };
        let metrics = Metrics::new();
        let mut state = State::from_config(initial, &cfg, metrics.clone());
        // Simulated time runs far faster than real time here: entries must age out on it alone,
        // as the serving cache's would on a wall clock that never steps.
        let replay = &mut Arc::get_mut(&mut state)
            .expect("state not yet shared")
            .replay;
        *replay = ReplayCache::wall_clock_only(replay.capacity());
        let policy = VerifyPolicy {
            max_age: cfg.signature.max_age,
            max_skew: cfg.signature.max_skew,
            require_nonce: cfg.signature.require_nonce,
        };

        // The peer identity exactly as the handshake's identity check derives it: the agent listener's
        // verifier checks the client SVID against the bundle, then the XFCC and SPIFFE header
        // values are built once.
        let (peer_cert, _) = leaf(&ca, PEER, 0x0123_4567_89ab_cdef);
        let verifier = Arc::new(SpiffeClientVerifier::new(
            state.bundles.clone(),
            true,
            false,
            "agent",
            metrics,
            provider,
        ));
        let peer = ConnIdentity::Peer(
            PeerIdentity::verify(
                &verifier,
                &[peer_cert.der().clone()],
                rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(START as u64)),
            )
            .expect("the client SVID verifies"),
        );
        Bench {
            state,
            policy,
            peer,
            secret,
            signed: Cell::new(0),
        }
    }

    /// Signs `req` as zen-agent does (default cover set: `@method @authority @path`, plus
    /// `content-digest` with a body; a random nonce) at the synthetic clock's current second.
    fn sign(&self, req: &Request, secret: &Secret) -> Signed {
        let n = self.signed.get();
        self.signed.set(n + 1);
        let now = UnixTime(START + (n / REQUESTS_PER_SECOND) as i64);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_static(AUTHORITY));
        let body = (!req.body.is_empty()).then_some(&req.body[..]);
        let signed = sign(
            &RequestParts {
                method: req.method,
                authority: AUTHORITY,
                path: req.path,
                query: None,
                headers: &headers,
            },
            body,
            &SignOptions::new(KEY_ID, secret, now),
        )
        .expect("sign");
        for (name, value) in signed.pairs() {
            headers.insert(name, HeaderValue::from_str(value).unwrap());
        }
        if body.is_some() {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(http::header::CONTENT_LENGTH, req.body.len().into());
        }
        Signed {
            headers,
            body: ReadyBody(Some(req.body.clone())),
            now,
        }
    }

    fn decide(&self, req: &Request, signed: &mut Signed) -> Result<Admitted, Refusal> {
        let view = RequestView {
            listener: Listener::Agent,
            identity_required: true,
            method: req.method,
            uri_authority: None,
            path: req.path,
            query: None,
            target_is_text: true,
            headers: &signed.headers,
            content_length: (!req.body.is_empty()).then_some(req.body.len()),
        };
        poll_once(decision::decide(
            &self.state,
            &self.policy,
            Some(&self.peer),
            &view,
            &mut signed.body,
            &|| signed.now,
        ))
    }
}

fn ca(trust_domain: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}").try_into().unwrap(),
    )];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// An X.509-SVID leaf signed by `ca`.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    spiffe_id: &str,
    serial: u64,
) -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::URI(spiffe_id.try_into().unwrap()));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2100, 1, 1);
    p.serial_number = Some(SerialNumber::from(serial));
    let key = KeyPair::generate().unwrap();
    (p.signed_by(&key, ca).unwrap(), key)
}

/// 1,000 agents' keys, one of them the peer's.
fn key_set(secret: &Secret) -> KeySet {
    let entries: Vec<KeySetEntry> = (0..1000)
        .map(|i| KeySetEntry {
            key_id: if i == 1 {
                KEY_ID.into()
            } else {
                format!("agent-c{}-a{i}", i % 10)
            },
            secret: if i == 1 {
                secret.clone()
            } else {
                Secret::generate()
            },
            owner: SpiffeId::parse(&format!(
                "spiffe://zen.local/cluster/c{}/agent/a{i}",
                i % 10
            ))
            .unwrap(),
            not_before: UnixTime(0),
            not_after: UnixTime(2_000_000_000),
            status: KeyStatus::Active,
        })
        .collect();
    KeySet::from_entries(1, &entries).unwrap()
}

fn desired_state() -> Request {
    Request::get("/agent/v1/clusters/c1/desired-state")
}

/// POST with a 1 KiB body (JSON-looking; nothing parses it): `adapters-sync`, the fourth route of the dev config (the
/// method filter skips the GET routes; `heartbeat` and `heartbeats` fail on the path), with a
/// path variable bound into its SPIFFE rule.
fn adapters_sync() -> Request {
    let mut body = br#"{"adapters":["#.to_vec();
    while body.len() < 1024 - 2 {
        body.extend_from_slice(br#""x","#);
    }
    body.truncate(1024 - 2);
    body.extend_from_slice(b"]}");
    Request {
        method: "POST",
        path: "/agent/v1/clusters/c1/adapters/sync",
        body: Bytes::from(body),
    }
}

fn code(r: &Result<Admitted, Refusal>) -> &'static str {
    match r {
        Ok(_) => "admitted",
        Err(refusal) => refusal.code(),
    }
}

fn bench_decide<M: Measurement + 'static>(c: &mut Criterion<M>, tag: &str) {
    let b = Bench::new();
    let secret = &b.secret;
    let other_secret = Secret::generate();

    // (name, request, signing secret, expected outcome). Signing happens in the untimed setup,
    // a fresh signature (and so a fresh nonce) per iteration; the admitted ones include the
    // replay insert. Refusals stop before the replay cache.
    let scenarios = [
        (
            "GET desired-state, admitted",
            desired_state(),
            secret,
            "admitted",
        ),
        (
            "POST adapters-sync 1 KiB body, admitted",
            adapters_sync(),
            secret,
            "admitted",
        ),
        (
            "GET other cluster's desired-state, 403 spiffe_forbidden",
            Request::get("/agent/v1/clusters/c2/desired-state"),
            secret,
            "spiffe_forbidden",
        ),
        (
            "GET desired-state, bad signature, 401 signature_invalid",
            desired_state(),
            &other_secret,
            "signature_invalid",
        ),
    ];
    for (name, req, key, expected) in &scenarios {
        assert_eq!(
            code(&b.decide(req, &mut b.sign(req, key))),
            *expected,
            "{name}"
        );
        c.bench_function(&format!("{tag}decide: {name}"), |bencher| {
            bencher.iter_batched_ref(
                || b.sign(req, key),
                |signed| {
                    let r = b.decide(req, black_box(signed));
                    // A replay-cache 503 (or any other outcome) would measure the wrong thing.
                    assert_eq!(code(&r), *expected);
                    r
                },
                // Small batches: the signed headers are still in cache when decided, as a
                // request's just-parsed headers are in the proxy.
                BatchSize::NumIterations(64),
            )
        });
    }

    // The head check the keep-alive wait runs before pingora parses the head (head.rs), on the
    // head as it arrives on the wire (POST: the 1 KiB body follows in the same read).
    for (name, req) in [
        ("GET desired-state", desired_state()),
        ("POST adapters-sync 1 KiB body", adapters_sync()),
    ] {
        let signed = b.sign(&req, secret);
        let mut wire = format!("{} {} HTTP/1.1\r\n", req.method, req.path).into_bytes();
        for (name, value) in &signed.headers {
            wire.extend_from_slice(name.as_str().as_bytes());
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(value.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&req.body);
        assert_eq!(zen_proxy::head::check(&wire), zen_proxy::head::Head::Pass);
        c.bench_function(&format!("{tag}head check: {name}"), |bencher| {
            bencher.iter(|| zen_proxy::head::check(black_box(&wire)))
        });
    }

    c.bench_function(
        &format!("{tag}executor overhead: poll_once of a ready future"),
        |bencher| bencher.iter(|| poll_once(async { black_box(1u64) })),
    );
}

fn wall_clock(c: &mut Criterion) {
    bench_decide(c, "");
}

fn cpu_time(c: &mut Criterion<ThreadCpu>) {
    bench_decide(c, "cpu-time: ");
}

criterion_group!(wall, wall_clock);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = cpu_time
}
criterion_main!(wall, cpu);
