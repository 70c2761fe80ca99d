//! Accepting agent and bootstrap connections: one accept loop per worker
//! thread, each on a single-threaded runtime of its own, and every
//! connection served, start to end, by the worker that accepted it, over
//! buffers and a TLS stream of the proxy's own (tls/stream.rs, which says
//! why), its identity decided once when the handshake completes.
//!
//! Why not pingora's listening service:
//! - it runs all of a listener's accept loops on one worker and spawns each
//!   accepted connection on a random worker (`current_handle()`); the socket
//!   stays registered with the accepting worker's reactor, so for about half
//!   the connections every read is picked up by one thread and handed to
//!   another (an eventfd write when that one sleeps);
//! - its L4 buffers are sized only inside it (`Stream::set_buffer` is
//!   crate-private), and its 64 KiB read buffer kept ~4.5 kB resident per
//!   idle connection, as did its connection task the handshake's 8.8 KiB.
//!
//! Measured (bench/README.md, "Idle memory" and "Accepting on the serving
//! worker"): 30.4 → 16.4 kB RSS per idle connection, ~10 % less CPU per new
//! connection, the eventfd writes gone; CPU per keep-alive request the same
//! within noise.
//!
//! Each worker polls its own duplicate of the listening socket: the kernel
//! wakes every worker waiting on it, the first `accept()` wins and the others
//! see `EAGAIN`, so a worker busy serving requests tends to come late to the
//! race, as with nginx's workers without `accept_mutex`. One socket, not
//! `SO_REUSEPORT`: the kernel's hash would pin connections to workers
//! whatever their load, and a second socket on the port is something another
//! process of the same user could also add.
//!
//! What stays as pingora's listener does it: waiting up to 30 s for an
//! address in use, TCP_NODELAY on every accepted
//! connection, the 60 s TLS handshake timeout, the peer address in the
//! socket digest, a last write of what is buffered when a stream is dropped,
//! and on a graceful shutdown the accept loops stop while the connections
//! they started are left to finish (the server's shutdown timeout still
//! bounds them).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
#[cfg(unix)]
use pingora_core::server::ListenFds;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::Service;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::tls::stream::TlsConn;
use crate::tls::Termination;

/// pingora's listener allows a new connection this long to finish its TLS
/// handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// pingora's L4 write buffer: one segment. The response header and body are
/// written as two TLS records; buffered, they leave in one `write()`.
const WRITE_BUFFER: usize = 1460;

/// pingora's listen backlog (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 65535;

/// How long an accept loop out of file descriptors waits before trying again.
const OUT_OF_FDS_PAUSE: Duration = Duration::from_secs(1);

/// Returns once a graceful shutdown has begun (or the server that would
/// signal it is gone). Cancel-safe: `changed()` is.
async fn shutdown_begins(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Waits `pause`, or less if a graceful shutdown begins meanwhile; says whether it did.
async fn shutdown_during(shutdown: &mut ShutdownWatch, pause: Duration) -> bool {
    tokio::select! {
        biased;
        () = shutdown_begins(shutdown) => true,
        () = tokio::time::sleep(pause) => false,
    }
}

/// pingora's listener waits this long for an address in use (30 tries, 1 s
/// apart) — e.g. for the previous process on a restart to let go of it.
pub const IN_USE_RETRY: (u32, Duration) = (30, Duration::from_secs(1));

/// Binds `address` once and returns one accept service per worker, each
/// holding its own duplicate of the socket. Binding here, before the server
/// starts, makes an address still in use after `retry` (tries, pause) a
/// startup error with the address in it.
pub fn bind<A>(
    (tries, step): (u32, Duration),
    name: &'static str,
    address: SocketAddr,
    workers: usize,
    tls: Termination,
    app: A,
    handshakes_started: prometheus::IntCounter,
) -> Result<Vec<AcceptService<A>>>
where
    A: ServerApp + Send + Sync + 'static,
{
    let mut attempt = 1;
    let socket = loop {
        match listen(address) {
            Ok(socket) => break socket,
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && attempt < tries => {
                tracing::warn!(listener = name, %address, attempt, "address in use, trying again");
                attempt += 1;
                std::thread::sleep(step);
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("{name} listener: bind {address} (tried {attempt} times)")
                })
            }
        }
    };
    let tls = Arc::new(tls);
    let app = Arc::new(app);
    (0..workers.max(1))
        .map(|worker| {
            let socket = socket
                .try_clone()
                .with_context(|| format!("{name} listener: duplicate the socket of {address}"))?;
            Ok(AcceptService {
                name: format!("{name}-{worker}"),
                socket: Some(socket),
                tls: tls.clone(),
                app: app.clone(),
                handshakes_started: handshakes_started.clone(),
            })
        })
        .collect()
}

fn listen(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // As every server does: a restart must not wait out TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One worker's accept loop for one listener. pingora gives each service a
/// runtime of its own; this one asks for a single thread.
pub struct AcceptService<A> {
    name: String,
    /// Taken when the service starts.
    socket: Option<std::net::TcpListener>,
    tls: Arc<Termination>,
    app: Arc<A>,
    /// Every TCP connection that begins a TLS handshake. Each one ends in
    /// exactly one of: a verdict the verifier or the identity check counts
    /// in `zen_proxy_tls_handshakes_total`, or a failure rustls ends without
    /// asking us (no certificate where one is required, a protocol error, a
    /// client that hangs up). `started − Σ handshakes_total` is therefore the
    /// handshakes that failed before any verdict, plus those in progress.
    handshakes_started: prometheus::IntCounter,
}

#[async_trait]
impl<A> Service for AcceptService<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn start_service(
        &mut self,
        #[cfg(unix)] _fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let Some(socket) = self.socket.take() else {
            tracing::error!(service = %self.name, "accept service started twice");
            return;
        };
        // Registers the socket with this worker's reactor.
        let listener = match TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(service = %self.name, %err, "cannot register the listening socket");
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown_begins(&mut shutdown) => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    self.handshakes_started.inc();
                    // A task on this worker's runtime: the socket was
                    // registered with this worker's reactor by accept().
                    tokio::spawn(serve(
                        tcp,
                        peer,
                        self.tls.clone(),
                        self.app.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(err) => {
                    tracing::warn!(service = %self.name, %err, "accept() failed");
                    // Out of file descriptors: accept() would fail at once
                    // again; give connections in flight time to end.
                    if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
                        && shutdown_during(&mut shutdown, OUT_OF_FDS_PAUSE).await
                    {
                        break;
                    }
                }
            }
        }
        tracing::debug!(service = %self.name, "accept loop stopped");
        drop(listener);
        // Tells the application to end keep-alive after the request in
        // flight (pingora's proxy sets its shutdown flag). Every worker calls
        // it; a second call changes nothing.
        self.app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }
}

/// One connection: TLS handshake, its identity, then requests until the
/// application returns no stream to reuse.
async fn serve<A: ServerApp + Send + Sync + 'static>(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<Termination>,
    app: Arc<A>,
    shutdown: ShutdownWatch,
) {
    let started = Instant::now();
    // Boxed, and so freed when it completes: the handshake's state (8.8 KiB
    // inline) would otherwise stay in this task for the connection's whole
    // life. The stream is built outside for the same reason: built in here,
    // where it is borrowed, it stays in the task's state after it is moved
    // (a borrowed local stays until its scope ends): 968 bytes, not 200.
    let handshake = Box::pin(tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        crate::tls::stream::handshake(socket_stream(tcp, peer), tls.config.clone()),
    ));
    let mut stream = match handshake.await {
        // Within the match arm, so that the stream by value (1.6 KiB) is not
        // part of this task's state while it waits for requests.
        Ok(Ok(done)) => established(done, &tls, started),
        // Counted (handshakes_started and the verifier's verdicts); a
        // scanner would otherwise fill the log.
        Ok(Err(err)) => {
            tracing::debug!(%peer, %err, "downstream TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "downstream TLS handshake timed out");
            return;
        }
    };
    loop {
        match app.process_new(stream, &shutdown).await {
            Some(reuse) => stream = reuse,
            None => return,
        }
    }
}

/// The accepted socket as pingora's stream (TCP_NODELAY, the peer address
/// in its socket digest) under our buffers.
fn socket_stream(tcp: TcpStream, peer: SocketAddr) -> Buffered {
    let mut l4 = L4Stream::from(tcp);
    if let Err(err) = l4.set_nodelay() {
        tracing::debug!(%peer, %err, "TCP_NODELAY");
    }
    let digest = SocketDigest::from_raw_fd(std::os::fd::AsRawFd::as_raw_fd(&l4));
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(peer)));
    l4.set_socket_digest(digest);
    Buffered::new(l4)
}

/// A completed handshake as pingora's HTTP code takes it, with the
/// connection's identity decided once, here; every request on the
/// connection reads it.
fn established(
    done: crate::tls::stream::TlsSession<Buffered>,
    tls: &Termination,
    started: Instant,
) -> Stream {
    let identity = tls.identifier.identify(done.state());
    Box::new(TlsConn::new(done, identity, started))
}

/// The accepted TCP stream under rustls: a write buffer, and a read-ahead
/// buffer that exists only while a large transfer streams in.
///
/// pingora sizes its L4 buffers only inside its own listener
/// (`Stream::set_buffer` is crate-private), and a stream made from a
/// `TcpStream` has none, so they are here:
/// - writes: see [`WRITE_BUFFER`]; written by hand rather than with tokio's
///   `BufWriter`, which holds its 1.4 KiB for the connection's whole life;
/// - reads: the TLS session above (tls/stream.rs) asks for 4 KiB at a time.
///   For a request that fits (nearly all of them) one `recv` into the
///   session's own buffer is all it takes, with no copy and nothing held
///   while the connection is idle — pingora's 64 KiB read buffer kept
///   ~4.5 kB per idle connection resident. When a read fills the whole
///   request, more is probably waiting (a large body): the next reads go
///   through a [`READ_AHEAD`] buffer, one `recv` per 64 KiB instead of per
///   4 KiB, until the socket has nothing more, and then the buffer is freed.
#[derive(Debug)]
struct Buffered {
    io: L4Stream,
    /// Written but not yet sent; allocated on the first write after a flush
    /// and freed by the flush, so an idle connection holds none.
    pending: Vec<u8>,
    /// How much of `pending` a flush interrupted by a full socket has sent.
    sent: usize,
    read_ahead: Option<ReadAhead>,
    /// The last direct read filled the caller's buffer.
    streaming: bool,
    /// Armed while a write waits for the socket, reset whenever the socket
    /// takes some of it: see [`WRITE_TIMEOUT`].
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    write_timeout: Duration,
}

/// How long a write may wait for the socket to take any of it (nginx's
/// `send_timeout`): a client that stops reading is cut off after this, with
/// `TimedOut`, instead of holding its connection and the response it is sent
/// for good. pingora sets no downstream write timeout; this one, being at the
/// bottom of the stream, covers everything written on the connection: TLS
/// handshake flights, HTTP/1 response heads and bodies, HTTP/2 frames.
/// A write that does not wait costs nothing: the timer is made only once one
/// has to wait, and dropped when a write completes.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// See [`Buffered`]: pingora's L4 read buffer size.
const READ_AHEAD: usize = 64 * 1024;

#[derive(Debug)]
struct ReadAhead {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffered {
    fn new(l4: L4Stream) -> Self {
        Buffered {
            io: l4,
            pending: Vec::new(),
            sent: 0,
            read_ahead: None,
            streaming: false,
            stalled: None,
            write_timeout: WRITE_TIMEOUT,
        }
    }

    /// What a write to the socket came to, under the stall deadline: a write
    /// that waits arms it (or, when the socket took part of it, `progressed`,
    /// restarts it), one that is done disarms it, and one that has waited
    /// [`WRITE_TIMEOUT`] without the socket taking anything fails.
    fn deadline<T>(
        &mut self,
        polled: Poll<std::io::Result<T>>,
        progressed: bool,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let until = tokio::time::Instant::now() + self.write_timeout;
        let sleep = match &mut self.stalled {
            Some(sleep) => {
                if progressed {
                    sleep.as_mut().reset(until);
                }
                sleep
            }
            None => self
                .stalled
                .insert(Box::pin(tokio::time::sleep_until(until))),
        };
        std::task::ready!(sleep.as_mut().poll(cx));
        self.stalled = None;
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the client took nothing written to it for {} s",
                self.write_timeout.as_secs_f64()
            ),
        )))
    }
}

impl AsyncRead for Buffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.read_ahead.is_none() && this.streaming {
            this.read_ahead = Some(ReadAhead {
                buf: vec![0; READ_AHEAD].into_boxed_slice(),
                start: 0,
                end: 0,
            });
        }
        let Some(ahead) = this.read_ahead.as_mut() else {
            // Straight into the caller's buffer.
            let wanted = out.remaining();
            let before = out.filled().len();
            let polled = Pin::new(&mut this.io).poll_read(cx, out);
            if let Poll::Ready(Ok(())) = polled {
                this.streaming = wanted > 0 && out.filled().len() - before == wanted;
            }
            return polled;
        };
        if ahead.start == ahead.end {
            let mut fill = ReadBuf::new(&mut ahead.buf);
            match Pin::new(&mut this.io).poll_read(cx, &mut fill) {
                Poll::Ready(Ok(())) => {
                    ahead.start = 0;
                    ahead.end = fill.filled().len();
                }
                Poll::Ready(Err(err)) => {
                    this.read_ahead = None;
                    this.streaming = false;
                    return Poll::Ready(Err(err));
                }
                Poll::Pending => {
                    // The burst is over: free the buffer while we wait.
                    this.read_ahead = None;
                    this.streaming = false;
                    return Poll::Pending;
                }
            }
        }
        let n = (ahead.end - ahead.start).min(out.remaining());
        out.put_slice(&ahead.buf[ahead.start..ahead.start + n]);
        ahead.start += n;
        if ahead.start == ahead.end {
            // Drained. Keep the buffer only if the socket filled it: more is
            // probably waiting. Otherwise (or at EOF) go back to direct reads.
            if ahead.end < ahead.buf.len() {
                this.read_ahead = None;
                this.streaming = false;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Buffered {
    /// Sends everything pending, then frees the buffer.
    fn poll_send_pending(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        if self.sent == self.pending.len() {
            // Nothing waits: the deadline (of a direct write, maybe) is not this one's.
            return Poll::Ready(Ok(()));
        }
        let before = self.sent;
        let polled = crate::unsent::poll_send(&mut self.io, &mut self.pending, &mut self.sent, cx);
        let progressed = self.sent != before;
        self.deadline(polled, progressed, cx)
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.len() + buf.len() > WRITE_BUFFER {
            std::task::ready!(this.poll_send_pending(cx))?;
        }
        if buf.len() >= WRITE_BUFFER {
            let polled = Pin::new(&mut this.io).poll_write(cx, buf);
            return this.deadline(polled, false, cx);
        }
        if this.pending.capacity() == 0 {
            this.pending.reserve_exact(WRITE_BUFFER);
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_send_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_send_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Drop for Buffered {
    /// A last send without waiting, as pingora's L4 stream does on drop: when
    /// a handshake fails, the TLS session writes rustls's alert (e.g. `certificate_required`,
    /// which tells a client without a certificate what is wrong) and the
    /// connection is dropped with no flush.
    fn drop(&mut self) {
        if self.sent < self.pending.len() {
            let mut cx = TaskContext::from_waker(std::task::Waker::noop());
            let last =
                crate::unsent::poll_send(&mut self.io, &mut self.pending, &mut self.sent, &mut cx);
            if let Poll::Ready(Err(err)) = last {
                tracing::debug!(%err, "downstream: last write on close");
            }
        }
    }
}

#[async_trait]
impl Shutdown for Buffered {
    async fn shutdown(&mut self) {
        if let Err(err) = AsyncWriteExt::shutdown(self).await {
            tracing::debug!(%err, "downstream shutdown");
        }
    }
}

impl UniqueID for Buffered {
    fn id(&self) -> UniqueIDType {
        self.io.id()
    }
}

impl Ssl for Buffered {}

impl GetTimingDigest for Buffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.io.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.io.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.io.get_write_pending_time()
    }
}

impl GetProxyDigest for Buffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.io.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.io.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Buffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.io.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.io.set_socket_digest(digest)
    }
}

impl Peek for Buffered {}

impl std::os::fd::AsRawFd for Buffered {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.io.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes `hello` on each connection, then closes it; counts cleanups.
    #[derive(Default)]
    struct Hello {
        cleanups: AtomicUsize,
    }

    #[async_trait]
    impl ServerApp for Hello {
        async fn process_new(
            self: &Arc<Self>,
            mut stream: Stream,
            _shutdown: &ShutdownWatch,
        ) -> Option<Stream> {
            stream.write_all(b"hello").await.unwrap();
            stream.flush().await.unwrap();
            stream.shutdown().await.unwrap();
            None
        }

        async fn cleanup(&self) {
            self.cleanups.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Fixture {
        tls: Termination,
        roots: rustls::RootCertStore,
    }

    fn fixture() -> Fixture {
        let (config, roots) = crate::tls::test_server(&[b"http/1.1"]);
        let provider = crate::tls::install_crypto_provider();
        let metrics = crate::metrics::Metrics::new();
        // Never consulted: these clients send no certificate.
        let verifier = crate::tls::SpiffeClientVerifier::new(
            Default::default(),
            false,
            false,
            "agent",
            metrics.clone(),
            provider,
        );
        Fixture {
            tls: Termination {
                config: Arc::new(config),
                identifier: crate::tls::Identifier {
                    listener: "agent",
                    allow_tls12: false,
                    metrics,
                    verifier: Arc::new(verifier),
                },
            },
            roots,
        }
    }

    fn counter() -> prometheus::IntCounter {
        prometheus::IntCounter::new("started", "test").unwrap()
    }

    fn local_addr(service: &AcceptService<Hello>) -> SocketAddr {
        service.socket.as_ref().unwrap().local_addr().unwrap()
    }

    /// The agent listener's services on `addr`, waiting `retry` for it.
    fn agent(
        retry: (u32, Duration),
        addr: &str,
        workers: usize,
        tls: Termination,
        started: prometheus::IntCounter,
    ) -> Result<Vec<AcceptService<Hello>>> {
        let addr = addr.parse().unwrap();
        bind(
            retry,
            "agent",
            addr,
            workers,
            tls,
            Hello::default(),
            started,
        )
    }

    #[test]
    fn one_service_per_worker_all_on_the_one_socket() {
        let f = fixture();
        let services = agent(IN_USE_RETRY, "127.0.0.1:0", 3, f.tls, counter()).unwrap();
        let names: Vec<_> = services.iter().map(|s| s.name().to_string()).collect();
        assert_eq!(names, ["agent-0", "agent-1", "agent-2"]);
        assert!(services.iter().all(|s| s.threads() == Some(1)));
        let addr = local_addr(&services[0]);
        assert!(services.iter().all(|s| local_addr(s) == addr));
    }

    #[test]
    fn an_address_in_use_is_a_startup_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let f = fixture();
        let retry = (3, Duration::from_millis(10));
        let err = agent(retry, &addr.to_string(), 2, f.tls, counter())
            .err()
            .expect("bind must fail");
        let err = format!("{err:#}");
        assert!(
            err.contains(&format!("agent listener: bind {addr} (tried 3 times)")),
            "{err}"
        );
        assert!(err.contains("in use"), "{err}");
    }

    /// As pingora's listener: an address the previous process is still
    /// letting go of is waited for.
    #[test]
    fn an_address_freed_while_waiting_is_bound() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(taken);
        });
        let f = fixture();
        let retry = (50, Duration::from_millis(20));
        let services = agent(retry, &addr.to_string(), 1, f.tls, counter())
            .expect("bound once the address was free");
        assert_eq!(local_addr(&services[0]), addr);
        release.join().unwrap();
    }

    /// Accept, handshake and serve; a failed handshake is counted; on
    /// shutdown the loop ends, the application is told, and the port closes.
    #[tokio::test]
    async fn serves_counts_handshakes_and_stops_on_shutdown() {
        let f = fixture();
        let started = counter();
        let mut services = agent(IN_USE_RETRY, "127.0.0.1:0", 1, f.tls, started.clone()).unwrap();
        let mut service = services.pop().unwrap();
        let addr = local_addr(&service);
        let app = service.app.clone();
        let (stop, watch) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { service.start_service(None, watch, 1).await });

        let client = rustls::ClientConfig::builder()
            .with_root_certificates(f.roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");

        // Not TLS: the handshake fails, after being counted as started.
        let mut junk = TcpStream::connect(addr).await.unwrap();
        junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = junk.read_to_end(&mut rest).await;
        assert_eq!(started.get(), 2);

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the accept loop stops on shutdown")
            .unwrap();
        assert_eq!(app.cleanups.load(Ordering::SeqCst), 1);
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listening socket is closed once every worker stopped"
        );
    }

    async fn pair() -> (Buffered, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server = Buffered::new(L4Stream::from(server));
        (server, client)
    }

    /// As [`pair`], with `write_timeout` and socket buffers of `buffers` bytes
    /// each way (the kernel doubles them), so that a client that stops reading
    /// blocks the writer after little data.
    async fn small_pair(write_timeout: Duration, buffers: u32) -> (Buffered, TcpStream) {
        let listening = tokio::net::TcpSocket::new_v4().unwrap();
        listening.set_send_buffer_size(buffers).unwrap();
        listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listening.listen(8).unwrap();
        let connecting = tokio::net::TcpSocket::new_v4().unwrap();
        connecting.set_recv_buffer_size(buffers).unwrap();
        let client = connecting
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut server = Buffered::new(L4Stream::from(server));
        server.write_timeout = write_timeout;
        (server, client)
    }

    /// Writes `chunk` (then flushes) until a write fails; the error and how
    /// long the writes went on.
    async fn write_until_refused(
        server: &mut Buffered,
        chunk: &[u8],
    ) -> (std::io::Error, Duration) {
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(err) = server.write_all(chunk).await {
                    return err;
                }
                if let Err(err) = server.flush().await {
                    return err;
                }
            }
        })
        .await
        .expect("cut off, not left waiting");
        (err, started.elapsed())
    }

    /// A client that stops reading is cut off once a write has waited the write
    /// timeout: large writes (straight to the socket), as a response body's, and
    /// small ones (through the buffer, each flushed), as response heads alone
    /// (HTTP/1 pipelined requests or HTTP/2 frames), the case pingora's own
    /// write timeout did not cover.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_off() {
        let limit = Duration::from_millis(300);
        for chunk in [vec![b'x'; 64 * 1024], vec![b'h'; 200]] {
            let (mut server, client) = small_pair(limit, 16 * 1024).await;
            let (err, took) = write_until_refused(&mut server, &chunk).await;
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
            assert!(took >= limit, "{took:?}");
            assert!(server.stalled.is_none(), "the timer goes with the wait");
            drop(client);
        }
    }

    /// A client that reads, late each time but within the timeout, gets the
    /// whole response, however much longer than the timeout all of it takes:
    /// the timeout bounds one wait, not the transfer.
    #[tokio::test]
    async fn a_client_that_reads_late_is_not_cut_off() {
        // Large writes go straight to the socket, small ones through the buffer.
        for size in [64 * 1024, 200] {
            reads_late(size).await;
        }
    }

    async fn reads_late(size: usize) {
        let limit = Duration::from_millis(500);
        let (mut server, client) = small_pair(limit, 16 * 1024).await;
        let total = 1 << 20;
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = vec![0u8; 64 * 1024];
            while got < total {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Everything the socket holds now, then the next pause.
                loop {
                    match client.try_read(&mut buf) {
                        Ok(0) => return got,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            got
        });
        let started = Instant::now();
        let body = vec![b'x'; total];
        for chunk in body.chunks(size) {
            server.write_all(chunk).await.expect("the client reads");
        }
        server.flush().await.unwrap();
        let took = started.elapsed();
        assert_eq!(reader.await.unwrap(), total);
        assert!(
            took > 2 * limit,
            "the transfer outlasts the timeout ({took:?}), so it is the waits that are bounded"
        );
        assert!(server.stalled.is_none());
    }

    #[tokio::test]
    async fn small_writes_leave_together_on_flush() {
        let (mut server, mut client) = pair().await;
        server.write_all(b"header;").await.unwrap();
        server.write_all(b"body").await.unwrap();
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(100), client.read(&mut buf)).await;
        assert!(early.is_err(), "nothing is sent before the flush");
        server.flush().await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"header;body");
    }

    #[tokio::test]
    async fn mixed_writes_arrive_in_order_and_the_buffer_is_freed_by_the_flush() {
        let (mut server, mut client) = pair().await;
        let small = [1u8; 100];
        let large = [2u8; 4000];
        let tail = [3u8; 10];
        server.write_all(&small).await.unwrap();
        assert_eq!(server.pending.len(), 100);
        server.write_all(&large).await.unwrap();
        server.write_all(&tail).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(
            server.pending.capacity(),
            0,
            "an idle connection holds no buffer"
        );
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let want = [&small[..], &large[..], &tail[..]].concat();
        assert!(got == want, "bytes reordered or lost");
    }

    /// What is buffered leaves on a shutdown (TLS close_notify) and on a
    /// plain drop (a failed handshake's alert, written just before it).
    #[tokio::test]
    async fn what_is_buffered_is_sent_on_shutdown_and_on_drop() {
        for shut_down in [true, false] {
            let (mut server, mut client) = pair().await;
            server.write_all(b"last words").await.unwrap();
            if shut_down {
                Shutdown::shutdown(&mut server).await;
            }
            drop(server);
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"last words", "shut down first: {shut_down}");
        }
    }

    #[tokio::test]
    async fn a_small_read_goes_straight_to_the_caller() {
        let (mut server, mut client) = pair().await;
        client.write_all(&[7u8; 700]).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &[7u8; 700][..]);
        assert!(server.read_ahead.is_none() && !server.streaming);
    }

    /// The TLS session reads 4 KiB at a time; a 1 MiB body arrives whole and in
    /// order through the read-ahead, which is freed once the socket is dry.
    #[tokio::test]
    async fn a_large_body_streams_through_the_read_ahead_then_it_is_freed() {
        let (mut server, mut client) = pair().await;
        let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client
        });
        let mut got = Vec::with_capacity(body.len());
        let mut used_read_ahead = false;
        let mut buf = [0u8; 4096];
        while got.len() < body.len() {
            let n = server.read(&mut buf).await.unwrap();
            assert!(n > 0, "early EOF after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            used_read_ahead |= server.read_ahead.is_some();
        }
        assert!(got == body, "the body arrived changed");
        assert!(used_read_ahead, "a 1 MiB body used no read-ahead");
        let _client = writer.await.unwrap();
        let idle = tokio::time::timeout(Duration::from_millis(50), server.read(&mut buf)).await;
        assert!(idle.is_err(), "nothing more was sent");
        assert!(server.read_ahead.is_none(), "freed while waiting");
    }

    #[tokio::test]
    async fn eof_after_a_burst_is_eof() {
        let (mut server, mut client) = pair().await;
        client.write_all(&[1u8; 200_000]).await.unwrap();
        drop(client);
        let mut got = 0;
        let mut buf = [0u8; 4096];
        loop {
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        assert_eq!(got, 200_000);
        assert!(server.read_ahead.is_none());
    }

    #[tokio::test]
    async fn a_pause_for_file_descriptors_ends_with_a_shutdown() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        // No shutdown: the whole pause, then "go on".
        let started = std::time::Instant::now();
        assert!(!shutdown_during(&mut rx, Duration::from_millis(50)).await);
        assert!(started.elapsed() >= Duration::from_millis(50));
        // A shutdown during a long pause ends it at once.
        let signal = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(true).unwrap();
            tx
        });
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            shutdown_during(&mut rx, Duration::from_secs(3600)),
        )
        .await
        .expect("the shutdown ends the pause");
        assert!(ended, "reported as a shutdown");
        // The sender gone (the server ended) counts as a shutdown too.
        drop(signal.await.unwrap());
        assert!(shutdown_during(&mut rx, Duration::from_secs(3600)).await);
    }

    /// An idle connection's task is this future; the handshake's state
    /// (8.8 KiB when it was inline) must stay boxed and freed, and the
    /// stream it was built from must not stay behind (968 bytes in release
    /// when it did, 200 without).
    #[tokio::test]
    async fn the_connection_task_does_not_carry_the_handshake() {
        let f = fixture();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let (_stop, watch) = tokio::sync::watch::channel(false);
        let task = serve(
            tcp,
            peer,
            Arc::new(f.tls),
            Arc::new(Hello::default()),
            watch,
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 512, "the connection future is {size} bytes");
    }
}
