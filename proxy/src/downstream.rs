//! Downstream HTTP/1 keep-alive: an idle connection waits for its next
//! request in a small future of ours, not inside pingora's proxy session.
//!
//! Why: pingora's `ServerApp` loop for an `HttpServerApp` builds the next
//! request's session and enters `process_new_http` straight away, so an idle
//! keep-alive connection holds that boxed future (13 KiB for the proxy's
//! state machine), the loop's own boxed future (3.8 KiB) and a 4 KiB header
//! buffer while it waits for bytes that may take minutes to come: about 21 of
//! the ~57 kB each idle agent connection cost (heaptrack, 1,000 idle
//! connections; bench/README.md "Idle memory"). Here the wait happens first, for
//! one byte, and pingora gets that byte as the session's pipelined prefix
//! (`set_pipelined_prefix`, which its header parser reads before the
//! socket).
//!
//! The rest of the head is read here too (usually one read from rustls's
//! already-decrypted buffer, not a syscall), and checked (head.rs) for what
//! pingora would refuse with its bare `400`: such a head is answered here
//! with the contract's `request_malformed` JSON and metric, and the
//! connection closed. A head that passes goes to pingora whole, as the
//! prefix, and pingora parses it without another read.
//!
//! What stays as pingora does it: the 60 s idle timeout between requests
//! (the same value pingora sets for every new HTTP/1 session), closing idle
//! connections when a graceful shutdown starts, the keep-alive request
//! limit, and HTTP/2 (ALPN h2), which is handed to pingora unchanged.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::head;
use crate::metrics::Metrics;
use crate::refusal::Refusal;

/// Idle time allowed before a request's first byte: pingora's value for every
/// new HTTP/1 session (`ServerApp for HttpServerApp`), so that moving the wait
/// here changes nothing a client can see.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// pingora's header parser takes this buffer over as its own, so it is sized
/// like the one it would allocate (`INIT_HEADER_BUF_SIZE`).
const HEADER_BUF: usize = 4096;

/// Wraps an HTTP application (the agent or bootstrap listener's proxy) so
/// that its HTTP/1 connections wait for each request's first byte before the
/// proxy session is built.
pub struct WaitForRequest<A> {
    inner: Arc<A>,
    refused: HeadRefusals,
}

impl<A> WaitForRequest<A> {
    pub fn new(inner: A, refused: HeadRefusals) -> Self {
        WaitForRequest {
            inner: Arc::new(inner),
            refused,
        }
    }
}

/// The series a head refused here counts in, as the service counts its
/// refusals: `zen_proxy_refusals_total{reason="request_malformed"}`,
/// `zen_proxy_requests_total{listener,route="-",status="400"}` (no route was
/// looked up) and `zen_proxy_request_duration_seconds{listener}`, from the
/// head's verdict to the answer's end, as the service's requests from their
/// parsed head.
#[derive(Clone)]
pub struct HeadRefusals {
    refusals: prometheus::IntCounter,
    requests: prometheus::IntCounter,
    seconds: prometheus::Histogram,
}

impl HeadRefusals {
    pub fn new(metrics: &Metrics, listener: &str) -> Self {
        let probe = Refusal::RequestMalformed {
            detail: String::new(),
        };
        let status = probe.status().to_string();
        HeadRefusals {
            refusals: metrics.refusals.with_label_values(&[probe.code()]),
            requests: metrics
                .requests
                .with_label_values(&[listener, "-", status.as_str()]),
            seconds: metrics.request_seconds.with_label_values(&[listener]),
        }
    }
}

/// Why an idle connection is closed instead of served.
#[derive(Debug, PartialEq, Eq)]
enum Closed {
    /// The client closed it (EOF) or the read failed.
    Client,
    /// No byte within [`KEEPALIVE_IDLE`].
    IdleTimeout,
    /// A graceful shutdown started.
    Shutdown,
}

/// Waits for the next request's first byte, then reads and checks the rest
/// of its head ([`rest_of_head`]). Returns the head in a buffer for
/// pingora's header parser (`Ok(Ok)`), the detail of a head to refuse
/// (`Ok(Err)`), or why the connection should be closed.
async fn next_head(
    stream: &mut Stream,
    shutdown: &mut ShutdownWatch,
    idle: Duration,
) -> Result<Result<BytesMut, String>, Closed> {
    if *shutdown.borrow() {
        return Err(Closed::Shutdown);
    }
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(idle, stream.read(&mut byte));
    tokio::pin!(read);
    let read = loop {
        tokio::select! {
            biased;
            read = &mut read => break read,
            changed = shutdown.changed() => {
                // A closed channel means the server is gone: close too.
                if changed.is_err() || *shutdown.borrow_and_update() {
                    return Err(Closed::Shutdown);
                }
            }
        }
    };
    let mut buf = match read {
        Ok(Ok(1)) => {
            let mut buf = BytesMut::with_capacity(HEADER_BUF);
            buf.extend_from_slice(&byte);
            buf
        }
        Ok(_) => return Err(Closed::Client),
        Err(_) => return Err(Closed::IdleTimeout),
    };
    Ok(
        match rest_of_head(stream, shutdown, &mut buf, idle).await? {
            None => Ok(buf),
            Some(detail) => Err(detail),
        },
    )
}

/// Reads until `buf` holds the whole request head. `Ok(None)`: the head
/// passes and goes to pingora; `Ok(Some(detail))`: it is refused as
/// `request_malformed`. Usually the head came in the TLS record that brought
/// its first byte, and this is one read from rustls's buffer, without a
/// timer, and two parses (the first byte's, the whole head's). A head in
/// more pieces than that is read by [`head_on_its_way`].
async fn rest_of_head(
    stream: &mut Stream,
    shutdown: &mut ShutdownWatch,
    buf: &mut BytesMut,
    idle: Duration,
) -> Result<Option<String>, Closed> {
    let mut parsed = 0;
    for _ in 0..2 {
        if let Some(done) = head::check(buf).done() {
            return Ok(done);
        }
        parsed = buf.len();
        let ready = std::future::poll_fn(|cx| {
            let read = stream.read_buf(buf);
            tokio::pin!(read);
            std::task::Poll::Ready(match read.poll(cx) {
                std::task::Poll::Ready(read) => Some(read),
                std::task::Poll::Pending => None,
            })
        })
        .await;
        match ready {
            Some(Ok(0) | Err(_)) => return Err(Closed::Client),
            Some(Ok(_)) => {}
            None => break,
        }
    }
    // Boxed: the rare case, and its timer inline would enlarge the wait that every idle
    // connection holds.
    Box::pin(head_on_its_way(stream, shutdown, buf, idle, parsed)).await
}

/// The rest of a head that is not all in yet: it must be whole within
/// `idle` from here. pingora allows `idle` for each read, so a head trickled
/// in a byte at a time could take as long as it liked; nginx's
/// `client_header_timeout` bounds the whole head the same way. A graceful
/// shutdown closes the connection, as pingora's proxy does while it reads a
/// head. Judged by [`head::Incoming`], which does not parse the head from
/// the start after every piece; `parsed`: the length [`head::check`] last
/// judged incomplete.
async fn head_on_its_way(
    stream: &mut Stream,
    shutdown: &mut ShutdownWatch,
    buf: &mut BytesMut,
    idle: Duration,
    parsed: usize,
) -> Result<Option<String>, Closed> {
    let deadline = tokio::time::Instant::now() + idle;
    let mut incoming = head::Incoming::new(parsed);
    if let Some(done) = incoming.check(buf).done() {
        return Ok(done);
    }
    loop {
        // The read comes first, as in pingora's proxy: what has arrived is not dropped. Once a
        // shutdown has begun, only what is already there is read.
        let until = if *shutdown.borrow() {
            tokio::time::Instant::now()
        } else {
            deadline
        };
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout_at(until, stream.read_buf(buf)) => read,
            // The loop looks at the flag again; a closed channel means the server is gone.
            changed = shutdown.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return Err(Closed::Shutdown),
            },
        };
        match read {
            Ok(Ok(0) | Err(_)) => return Err(Closed::Client),
            Ok(Ok(_)) => {}
            Err(_) if *shutdown.borrow() => return Err(Closed::Shutdown),
            Err(_) => return Err(Closed::IdleTimeout),
        }
        if let Some(done) = incoming.check(buf).done() {
            return Ok(done);
        }
    }
}

/// Answers a head refused by [`next_head`] and closes: what follows it on
/// the connection cannot be framed safely.
async fn refuse_head(stream: &mut Stream, refused: &HeadRefusals, detail: String) {
    let started = std::time::Instant::now();
    let refusal = Refusal::RequestMalformed { detail };
    refused.refusals.inc();
    refused.requests.inc();
    let body = refusal.body();
    let status = http::StatusCode::from_u16(refusal.status()).expect("a refusal's status");
    let mut wire = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(&body);
    let sent = async {
        stream.write_all(&wire).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    if let Err(err) = tokio::time::timeout(REFUSAL_SEND, sent)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ))
        })
    {
        tracing::debug!(%err, "request_malformed answer not delivered");
    }
    refused.seconds.observe(started.elapsed().as_secs_f64());
}

/// How long a refused head's answer may take to leave before the connection
/// is dropped (a client that does not read must not hold it).
const REFUSAL_SEND: Duration = Duration::from_secs(10);

#[async_trait]
impl<A> ServerApp for WaitForRequest<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        http1(&self.inner, &self.refused, stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

/// An HTTP/1 connection: wait for a request's head and check it, hand the
/// request to pingora (or answer a refused head and close), again until the
/// connection is not reused.
///
/// Its future is the keep-alive wait each idle connection holds (boxed by
/// `ServerApp::process_new`), so no local that is borrowed here may hold
/// anything large: the future keeps a borrowed local in its state until the
/// local's scope ends, even once it is moved out. Hence [`session`] builds
/// and configures the session outside: done in here, it made this future
/// 864 bytes instead of 504 (release; 608 since the head is read here too).
async fn http1<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    refused: &HeadRefusals,
    mut stream: Stream,
    shutdown: &ShutdownWatch,
) -> Option<Stream> {
    // Our own receiver: `changed()` needs `&mut`, and a clone per
    // connection (not per request) is one Arc increment.
    let mut shutdown_rx = shutdown.clone();
    let mut persistent: Option<HttpPersistentSettings> = None;
    loop {
        // pingora enables pipelining (and so a prefix carried over from
        // the previous request) only when the application asks for it,
        // which zen-proxy never does: a reused connection starts clean.
        let prefix = match next_head(&mut stream, &mut shutdown_rx, KEEPALIVE_IDLE).await {
            Ok(Ok(prefix)) => prefix,
            Ok(Err(detail)) => {
                // Boxed: a rare path, kept out of the wait every idle connection holds.
                Box::pin(refuse_head(&mut stream, refused, detail)).await;
                return None;
            }
            Err(why) => {
                tracing::trace!(?why, "downstream connection closed before a request");
                return None;
            }
        };
        let closing = *shutdown_rx.borrow();
        let (next, settings) = app
            .process_new_http(
                session(app.as_ref(), stream, prefix, persistent.take(), closing),
                shutdown,
            )
            .await?
            .consume();
        stream = next;
        persistent = settings;
    }
}

/// The next request's pingora session: the previous request's keep-alive
/// settings (or pingora's for a new connection), and `prefix` as the bytes
/// already read.
fn session<A: HttpServerApp>(
    app: &A,
    stream: Stream,
    prefix: BytesMut,
    persistent: Option<HttpPersistentSettings>,
    closing: bool,
) -> ServerSession {
    let mut session = ServerSession::new_http1(stream);
    match persistent {
        Some(settings) => settings.apply_to_session(&mut session),
        None => {
            session.set_keepalive(Some(KEEPALIVE_IDLE.as_secs()));
            session.set_keepalive_reuses_remaining(
                app.server_options().and_then(|o| o.keepalive_request_limit),
            );
        }
    }
    if closing {
        session.set_keepalive(None);
    }
    // No write timeout here: the stream under the session has one for every write
    // (accept.rs `WRITE_TIMEOUT`); pingora's would time body writes only.
    session.set_pipelined_prefix(prefix);
    session
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn pair() -> (Stream, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64);
        (Box::new(ours), theirs)
    }

    #[tokio::test]
    async fn the_head_becomes_the_prefix_read_in_pieces_and_what_follows_it_may_come_along() {
        let (mut stream, mut client) = pair();
        let (_tx, mut rx) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(async move {
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(b"host: a\r\n\r\n").await.unwrap();
            client
        });
        let prefix = next_head(&mut stream, &mut rx, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&prefix[..], b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        assert!(prefix.capacity() >= HEADER_BUF);
        // The next head starts clean.
        let mut client = writer.await.unwrap();
        client
            .write_all(b"GET /2 HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let next = next_head(&mut stream, &mut rx, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&next[..], b"GET /2 HTTP/1.1\r\nhost: a\r\n\r\n");
    }

    #[tokio::test]
    async fn a_head_pingora_would_refuse_is_refused_here() {
        let (mut stream, mut client) = pair();
        let (_tx, mut rx) = tokio::sync::watch::channel(false);
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n")
            .await
            .unwrap();
        let got = next_head(&mut stream, &mut rx, Duration::from_secs(5)).await;
        assert_eq!(got.unwrap(), Err("more than one Host field".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_in_must_still_be_whole_within_the_idle_time() {
        let (mut stream, mut client) = pair();
        let (_tx, mut rx) = tokio::sync::watch::channel(false);
        let reader =
            tokio::spawn(
                async move { next_head(&mut stream, &mut rx, Duration::from_secs(60)).await },
            );
        // One byte every 10 s: each read well inside 60 s, the head not whole after 60 s.
        let started = tokio::time::Instant::now();
        let trickle = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let mut sent = 0;
        while sent < trickle.len() && !reader.is_finished() {
            client.write_all(&trickle[sent..=sent]).await.unwrap();
            sent += 1;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        assert!(sent < trickle.len(), "the trickled head was read whole");
        assert!(
            started.elapsed() <= Duration::from_secs(80),
            "{:?}",
            started.elapsed()
        );
        let got = reader.await.unwrap();
        assert_eq!(got.unwrap_err(), Closed::IdleTimeout);
    }

    #[tokio::test]
    async fn a_shutdown_closes_a_connection_whose_head_is_partly_in() {
        let (mut stream, mut client) = pair();
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        client.write_all(b"GET / HT").await.unwrap();
        let reading = tokio::spawn(async move {
            next_head(&mut stream, &mut rx, Duration::from_secs(3600)).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reading.is_finished());
        tx.send(true).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reading)
            .await
            .expect("closed at shutdown")
            .unwrap();
        assert_eq!(got.unwrap_err(), Closed::Shutdown);
        drop(client);
    }

    #[tokio::test]
    async fn eof_or_silence_within_a_head_closes() {
        let (mut stream, mut client) = pair();
        let (_tx, mut rx) = tokio::sync::watch::channel(false);
        client.write_all(b"GET / HT").await.unwrap();
        drop(client);
        let got = next_head(&mut stream, &mut rx, Duration::from_secs(5)).await;
        assert_eq!(got.unwrap_err(), Closed::Client);

        let (mut stream, mut client) = pair();
        client.write_all(b"GET / HT").await.unwrap();
        let got = next_head(&mut stream, &mut rx, Duration::from_millis(100)).await;
        assert_eq!(got.unwrap_err(), Closed::IdleTimeout);
    }

    #[tokio::test]
    async fn eof_closes() {
        let (mut stream, client) = pair();
        let (_tx, mut rx) = tokio::sync::watch::channel(false);
        drop(client);
        let got = next_head(&mut stream, &mut rx, Duration::from_secs(5)).await;
        assert_eq!(got.unwrap_err(), Closed::Client);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_past_the_idle_timeout_closes() {
        let (mut stream, _client) = pair();
        let (_tx, mut rx) = tokio::sync::watch::channel(false);
        let got = next_head(&mut stream, &mut rx, Duration::from_secs(60)).await;
        assert_eq!(got.unwrap_err(), Closed::IdleTimeout);
    }

    #[tokio::test]
    async fn a_shutdown_closes_a_waiting_connection_and_refuses_a_new_wait() {
        let (mut stream, _client) = pair();
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let waiting = tokio::spawn(async move {
            let got = next_head(&mut stream, &mut rx, Duration::from_secs(3600)).await;
            (got.map(|_| ()), stream, rx)
        });
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        let (got, mut stream, mut rx) = waiting.await.unwrap();
        assert_eq!(got.unwrap_err(), Closed::Shutdown);
        let again = next_head(&mut stream, &mut rx, Duration::from_secs(3600)).await;
        assert_eq!(again.unwrap_err(), Closed::Shutdown);
    }

    /// Takes each request and closes the connection.
    struct Closes;

    #[async_trait]
    impl HttpServerApp for Closes {
        async fn process_new_http(
            self: &Arc<Self>,
            _session: ServerSession,
            _shutdown: &ShutdownWatch,
        ) -> Option<pingora_core::apps::ReusedHttpStream> {
            None
        }
    }

    /// Every idle HTTP/1 connection holds this future (boxed): the wait,
    /// not the session it builds (864 bytes in release when it kept it, 504
    /// without; 608 since it also reads the rest of the head for head.rs,
    /// ~0.1 MB per 1,000 idle connections).
    #[test]
    fn the_keepalive_wait_stays_small() {
        let (stream, _client) = pair();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let app = Arc::new(Closes);
        let refused = HeadRefusals::new(&Metrics::new(), "agent");
        let wait = http1(&app, &refused, stream, &rx);
        let size = std::mem::size_of_val(&wait);
        assert!(size <= 616, "the keep-alive wait is {size} bytes");
    }
}
