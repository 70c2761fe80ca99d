//! An accepted downstream TLS connection as pingora's HTTP code sees it:
//! rustls's server connection driven over the socket with buffers of our
//! own, what pingora reads from a stream's digests, and the connection's
//! identity.
//!
//! Why rustls's unbuffered API and not tokio-rustls: rustls's buffered
//! connection keeps a 4 KiB record buffer ready for the next read for the
//! connection's whole life, and an idle agent connection is mostly that
//! (bench/README.md "Idle memory"). Here the received bytes go to a buffer
//! that exists only while a record is incomplete, decrypted data waits only
//! until it is read, and what rustls produces only until the socket takes
//! it: an idle connection holds none of the three. rustls still does all of
//! TLS (handshake, records, alerts, key updates, close_notify); this module
//! only moves bytes between it and the socket.
//!
//! Why not pingora's `TlsStream`: each idle connection kept, besides rustls's
//! own state, pingora's inline slots for a client and a server handshake
//! future (empty once the handshake is done), a second copy of the client's
//! certificate chain (`TlsRef`) and the organization and serial of the leaf,
//! parsed again for a digest nothing in the proxy reads.
//!
//! Where the identity travels: pingora builds every request's session
//! `Digest` from the stream's getters, and the identity must reach HTTP/2
//! requests too, whose sessions see only that `Digest`. `SslDigest`'s
//! extension would be the natural place, but only pingora's own handshake can
//! set it (`SslDigestExtension::set` is crate-private). The one slot a stream
//! of ours can fill is `ProxyDigest::user_data` ("optional arbitrary data");
//! pingora fills a `ProxyDigest` only on upstream connections made through an
//! HTTP CONNECT proxy, never on a downstream one. Its required `response`
//! is an empty header. A stream that carries no identity there reads as no
//! identity: [`identity`] returns `None` and the decision refuses what needs
//! one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_http::ResponseHeader;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::{CommonState, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::tls::identity::ConnIdentity;

/// How much room each read from the socket gets (rustls's own read size).
const READ_SIZE: usize = 4096;

/// The most received bytes held before rustls can make sense of them: a
/// handshake message may span records up to 64 KiB (rustls's own limit for
/// its buffered connection), plus one record being joined. Beyond it the
/// peer is refused.
const MAX_INCOMING: usize = 0xffff + 16 * 1024 + 2048;

/// Plaintext encrypted per `poll_write`: 4 records. The caller's remainder
/// goes in its next write, once the socket has taken this.
const MAX_WRITE: usize = 4 * 16 * 1024;

/// rustls's server connection over `S`, with the three buffers it needs
/// held only while they hold something (see the module doc).
pub struct TlsSession<S> {
    io: S,
    conn: UnbufferedServerConnection,
    /// Received and not yet processed: an incomplete record.
    incoming: Vec<u8>,
    /// Decrypted and not yet read; `plaintext[read..]` is what is left.
    plaintext: Vec<u8>,
    read: usize,
    /// Produced by rustls and not yet taken by the socket;
    /// `outgoing[sent..]` is what is left.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer sent close_notify: a clean end of what it sends.
    peer_closed: bool,
    /// The socket reached end of file.
    eof: bool,
    /// We queued our close_notify.
    close_sent: bool,
    /// rustls reported an error (its alert, if any, is queued): nothing more
    /// is read, decrypted or encrypted on this connection.
    failed: bool,
}

/// Lengths and states only: no record content, decrypted or not.
impl<S: std::fmt::Debug> std::fmt::Debug for TlsSession<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("io", &self.io)
            .field("handshaking", &self.conn.is_handshaking())
            .field("incoming", &self.incoming.len())
            .field("plaintext", &(self.plaintext.len() - self.read))
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .field("peer_closed", &self.peer_closed)
            .field("eof", &self.eof)
            .field("close_sent", &self.close_sent)
            .field("failed", &self.failed)
            .finish()
    }
}

/// What to ask of rustls once it may send application data.
enum Outbound<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// A TLS error as the I/O error tokio-rustls gives for it.
fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

/// Server side of a TLS handshake over `io`: runs until the handshake is
/// done (the caller bounds it in time). A failed handshake sends rustls's
/// alert (e.g. `certificate_required`, which tells a client without a
/// certificate what is wrong) before it returns the error.
///
/// What a TLS 1.3 handshake produces last, once the client's Finished is in,
/// is the session ticket, which the client does not wait for: it is written
/// to `io` but not flushed, so that a buffered `io` (accept.rs) sends it in
/// one segment with the first response instead of a send of its own (until
/// then, or the close, that buffer is held). Every other flight is flushed:
/// the peer waits for it (in TLS 1.2 the server's Finished comes last).
pub async fn handshake<S>(io: S, config: Arc<ServerConfig>) -> io::Result<TlsSession<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut session = TlsSession::new(io, conn);
    loop {
        let processed = session.process(&mut Outbound::Nothing);
        let tickets_only = processed.is_ok()
            && !session.conn.is_handshaking()
            && session.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        // What rustls produced goes out first: its flight, or its alert.
        let sent = match std::future::poll_fn(|cx| session.poll_send(cx)).await {
            Ok(()) if tickets_only => Ok(()),
            Ok(()) => session.io.flush().await,
            Err(err) => Err(err),
        };
        // A TLS error is the reason, even when its alert could not be sent.
        processed?;
        sent?;
        if !session.conn.is_handshaking() {
            return Ok(session);
        }
        if session.peer_closed || session.eof {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        std::future::poll_fn(|cx| session.poll_receive(cx)).await?;
    }
}

impl<S> TlsSession<S> {
    fn new(io: S, conn: UnbufferedServerConnection) -> Self {
        TlsSession {
            io,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            read: 0,
            outgoing: Vec::new(),
            sent: 0,
            peer_closed: false,
            eof: false,
            close_sent: false,
            failed: false,
        }
    }

    /// What the handshake established (version, suite, ALPN, the client's
    /// certificates), for the identity check.
    pub fn state(&self) -> &CommonState {
        &self.conn
    }

    /// Lets rustls process what has been received, until it waits for the
    /// socket, and asks it for `send` once it may send application data
    /// (`send` is then `Nothing`). Decrypted data is appended to
    /// `plaintext`, and what rustls produces (handshake flights, alerts,
    /// tickets, key updates, `send`'s records) to `outgoing`.
    ///
    /// On a TLS error, rustls's alert for it is in `outgoing`.
    fn process(&mut self, send: &mut Outbound<'_>) -> io::Result<()> {
        if self.failed {
            return Err(failed());
        }
        let result = self.process_inner(send);
        if result.is_err() {
            self.failed = true;
            self.queue_alert();
        }
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        result
    }

    fn process_inner(&mut self, send: &mut Outbound<'_>) -> io::Result<()> {
        loop {
            // Always `incoming`, less what rustls said to discard: its
            // handshake joiner keeps positions in it across calls.
            let status = self.conn.process_tls_records(&mut self.incoming[..]);
            let discard = status.discard;
            let mut out = Produced {
                discard: 0,
                plaintext: &mut self.plaintext,
                outgoing: &mut self.outgoing,
                peer_closed: &mut self.peer_closed,
                close_sent: &mut self.close_sent,
            };
            let waits = status
                .state
                .map_err(tls_error)
                .and_then(|s| out.take(s, send));
            // Discarded whatever happened, before rustls is called again.
            self.incoming.drain(..discard + out.discard);
            if waits? {
                return Ok(());
            }
        }
    }

    /// After a TLS error rustls holds its alert for the peer (it comes out as
    /// records to encode): into `outgoing`, for the next send. Only while
    /// rustls has something to send: asked for more, it would process the
    /// record that failed again.
    fn queue_alert(&mut self) {
        while self.conn.wants_write() {
            // Always the same buffer: rustls keeps positions in it. With
            // something to send it returns that before it reads any of it.
            let status = self.conn.process_tls_records(&mut self.incoming[..]);
            let discard = status.discard;
            let encoded = match status.state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode_into(&mut self.outgoing, 64, |out| data.encode(out)).is_ok()
                }
                _ => false,
            };
            self.incoming.drain(..discard);
            if !encoded {
                return;
            }
        }
    }
}

/// Every use of a session after rustls reported an error.
fn failed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "TLS connection failed earlier")
}

/// Where [`TlsSession::process`] puts what rustls hands over.
struct Produced<'s> {
    /// What the records read add to the status's discard (0 in rustls
    /// 0.23, which decrypts into its own buffer; the API asks for the sum).
    discard: usize,
    plaintext: &'s mut Vec<u8>,
    outgoing: &'s mut Vec<u8>,
    peer_closed: &'s mut bool,
    close_sent: &'s mut bool,
}

impl Produced<'_> {
    /// One state of rustls's: what it holds is taken; `true` when rustls
    /// waits for the socket (for bytes from the peer, or for nothing more:
    /// both sides have closed).
    fn take<Data>(
        &mut self,
        state: ConnectionState<'_, '_, Data>,
        send: &mut Outbound<'_>,
    ) -> io::Result<bool> {
        Ok(match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record.map_err(tls_error)?;
                    self.discard += record.discard;
                    self.plaintext.extend_from_slice(record.payload);
                }
                false
            }
            ConnectionState::EncodeTlsData(mut data) => {
                encode_into(self.outgoing, 512, |out| data.encode(out))
                    .map_err(|err| io::Error::other(format!("TLS handshake record: {err}")))?;
                false
            }
            // The records encoded above are in `outgoing`, ahead of anything
            // produced later, and are sent from there.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                false
            }
            ConnectionState::PeerClosed => {
                *self.peer_closed = true;
                false
            }
            ConnectionState::Closed | ConnectionState::BlockedHandshake => true,
            ConnectionState::WriteTraffic(mut traffic) => {
                match std::mem::replace(send, Outbound::Nothing) {
                    Outbound::Nothing => {}
                    Outbound::Data(data) => {
                        // Per record: header, tag, content type.
                        let room = data.len() + (data.len() / 16384 + 1) * 64;
                        encode_into(self.outgoing, room, |out| traffic.encrypt(data, out))
                            .map_err(|err| io::Error::other(format!("TLS record: {err}")))?
                    }
                    Outbound::CloseNotify => {
                        encode_into(self.outgoing, 64, |out| traffic.queue_close_notify(out))
                            .map_err(|err| io::Error::other(format!("TLS close_notify: {err}")))?;
                        *self.close_sent = true;
                    }
                }
                true
            }
            // Early data is not enabled in the listeners' configs.
            ConnectionState::ReadEarlyData(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS early data is not accepted",
                ));
            }
            other => return Err(io::Error::other(format!("unexpected TLS state {other:?}"))),
        })
    }
}

/// Appends what `encode` writes to `out`: `room` bytes first, then as many
/// as rustls asks for.
fn encode_into<E: AsInsufficient>(
    out: &mut Vec<u8>,
    mut room: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), E> {
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(err) => {
                out.truncate(start);
                match err.required_size() {
                    Some(required) if required > room => room = required,
                    _ => return Err(err),
                }
            }
        }
    }
}

/// The size rustls asked for, when that is the error.
trait AsInsufficient {
    fn required_size(&self) -> Option<usize>;
}

impl AsInsufficient for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

impl AsInsufficient for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsSession<S> {
    /// Writes `outgoing` to the socket, then frees it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        crate::unsent::poll_send(&mut self.io, &mut self.outgoing, &mut self.sent, cx)
    }

    /// One read from the socket onto the end of `incoming`; sets `eof`.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let filled = self.incoming.len();
        if filled >= MAX_INCOMING {
            self.failed = true;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message too large",
            )));
        }
        self.incoming.resize(filled + READ_SIZE, 0);
        let mut buf = ReadBuf::new(&mut self.incoming[filled..]);
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut buf);
        let got = buf.filled().len();
        self.incoming.truncate(filled + got);
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        match polled {
            Poll::Ready(Ok(())) => {
                self.eof = got == 0;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    /// Decrypted data for `buf`: what is already decrypted, else what the
    /// socket brings; end of file after the peer's close_notify.
    fn poll_plaintext(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.read < self.plaintext.len() {
                let n = buf.remaining().min(self.plaintext.len() - self.read);
                buf.put_slice(&self.plaintext[self.read..self.read + n]);
                self.read += n;
                if self.read == self.plaintext.len() {
                    self.plaintext = Vec::new();
                    self.read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if self.failed {
                return Poll::Ready(Err(failed()));
            }
            if self.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                // As rustls's buffered connection: an end without
                // close_notify may be a truncation.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            self.push_out(cx)?;
            ready!(self.poll_receive(cx))?;
            if let Err(err) = self.process(&mut Outbound::Nothing) {
                let _ = self.push_out(cx);
                return Poll::Ready(Err(err));
            }
        }
    }

    /// Encrypts up to [`MAX_WRITE`] of `buf` once what was written before
    /// has gone out; tries to send it at once.
    fn poll_encrypt(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_send(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = &buf[..buf.len().min(MAX_WRITE)];
        let mut send = Outbound::Data(data);
        if let Err(err) = self.process(&mut send) {
            let _ = self.push_out(cx);
            return Poll::Ready(Err(err));
        }
        if !matches!(send, Outbound::Nothing) {
            // rustls may not send application data: the connection is closed.
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // What the socket does not take now goes with the next write or
        // flush, before anything else.
        if let Poll::Ready(Err(err)) = self.poll_send(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(data.len()))
    }

    /// close_notify, sent, then the socket's shutdown.
    /// After a failure: no close_notify (rustls's alert, queued, is the
    /// last record), but what is queued is still sent and the socket shut.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_sent && !self.failed {
            ready!(self.poll_send(cx))?;
            // Not sent when rustls has no traffic state left to send it in.
            self.process(&mut Outbound::CloseNotify)?;
            self.close_sent = true;
        }
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    /// What rustls produced on the read side (an alert, a close_notify when
    /// its keys run out, a TLS 1.2 warning) goes out now rather than with
    /// the application's next flush; a full socket does not hold up the read.
    fn push_out(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.outgoing.is_empty() {
            return Ok(());
        }
        if let Poll::Ready(Err(err)) = self.poll_send(cx) {
            return Err(err);
        }
        if let Poll::Ready(Err(err)) = Pin::new(&mut self.io).poll_flush(cx) {
            return Err(err);
        }
        Ok(())
    }
}

/// A completed server handshake over `S`, with the identity decided for it.
#[derive(Debug)]
pub struct TlsConn<S> {
    tls: TlsSession<S>,
    ssl: Arc<SslDigest>,
    identity: Arc<ProxyDigest>,
    timing: TimingDigest,
}

impl<S> TlsConn<S> {
    /// `started`: when the handshake began, for the timing digest.
    pub fn new(tls: TlsSession<S>, identity: ConnIdentity, started: Instant) -> Self {
        let conn = tls.state();
        // The cipher and version only: pingora's own stream also hashes the
        // leaf and parses it for organization and serial, which nothing in
        // the proxy reads (the identity carries the leaf's hash and serial).
        let ssl = SslDigest::new(
            conn.negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or_default(),
            conn.protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or_default(),
            None,
            None,
            Vec::new(),
        );
        // `ProxyDigest` requires a response header; an empty one (no headers,
        // so no allocation beyond the box).
        let empty = Box::new(ResponseHeader::from(http::Response::new(()).into_parts().0));
        TlsConn {
            tls,
            ssl: Arc::new(ssl),
            identity: Arc::new(ProxyDigest::new(empty, Some(Box::new(identity)))),
            timing: TimingDigest {
                established_ts: SystemTime::now(),
                establishment_duration: Some(started.elapsed()),
                ..TimingDigest::default()
            },
        }
    }
}

/// The identity of the connection a request arrived on (see the module doc).
pub fn identity(proxy_digest: &ProxyDigest) -> Option<&ConnIdentity> {
    proxy_digest.user_data.as_ref()?.downcast_ref()
}

/// The part of a request's digest that holds its connection's identity.
pub fn identity_digest(digest: Option<&Digest>) -> Option<Arc<ProxyDigest>> {
    digest?.proxy_digest.clone()
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.tls.poll_plaintext(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.tls.poll_encrypt(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.tls.poll_send(cx))?;
        Pin::new(&mut self.tls.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tls.poll_close(cx)
    }
}

/// As pingora's TLS stream: `close_notify`, then the socket's shutdown.
#[async_trait]
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Shutdown for TlsConn<S> {
    async fn shutdown(&mut self) {
        if let Err(err) = AsyncWriteExt::shutdown(self).await {
            tracing::debug!(%err, "downstream TLS shutdown");
        }
    }
}

impl<S: UniqueID> UniqueID for TlsConn<S> {
    fn id(&self) -> UniqueIDType {
        self.tls.io.id()
    }
}

impl<S> Ssl for TlsConn<S> {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.ssl.clone())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        // The listener offers exactly these two (tls::server_config).
        match self.tls.state().alpn_protocol()? {
            b"h2" => Some(ALPN::H2),
            b"http/1.1" => Some(ALPN::H1),
            _ => None,
        }
    }
}

impl<S: GetTimingDigest> GetTimingDigest for TlsConn<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        let mut layers = self.tls.io.get_timing_digest();
        layers.push(Some(self.timing.clone()));
        layers
    }

    fn get_read_pending_time(&self) -> Duration {
        self.tls.io.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.tls.io.get_write_pending_time()
    }
}

impl<S> GetProxyDigest for TlsConn<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        Some(self.identity.clone())
    }

    /// Never replaced: the slot holds the identity.
    fn set_proxy_digest(&mut self, _digest: ProxyDigest) {}
}

impl<S: GetSocketDigest> GetSocketDigest for TlsConn<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.tls.io.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.tls.io.set_socket_digest(digest)
    }
}

impl<S> Peek for TlsConn<S> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal::Refusal;
    use pingora_core::protocols::Stream;
    use tokio::io::{AsyncReadExt, DuplexStream};

    type Client = tokio_rustls::client::TlsStream<DuplexStream>;

    /// A client of `test_server`'s certificate with no certificate of its
    /// own, TLS 1.3 or `versions`.
    fn client_config(
        roots: rustls::RootCertStore,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(crate::tls::install_crypto_provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }

    /// Both sides of a handshake over an in-memory pipe of `pipe` bytes; the
    /// client runs `then` on its connection while the server finishes.
    async fn connect<T, F: std::future::Future<Output = io::Result<T>>>(
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
        pipe: usize,
        then: impl FnOnce(Client) -> F,
    ) -> (io::Result<TlsSession<DuplexStream>>, io::Result<T>) {
        connect_over(|io| io, Arc::new(server), Arc::new(client), pipe, then).await
    }

    /// [`connect`] with the server's end of the pipe wrapped by `wrap`.
    async fn connect_over<W, T, F>(
        wrap: impl FnOnce(DuplexStream) -> W,
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        pipe: usize,
        then: impl FnOnce(Client) -> F,
    ) -> (io::Result<TlsSession<W>>, io::Result<T>)
    where
        W: AsyncRead + AsyncWrite + Unpin,
        F: std::future::Future<Output = io::Result<T>>,
    {
        let (ours, theirs) = tokio::io::duplex(pipe);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let client_side = async move { then(connector.connect(name, theirs).await?).await };
        tokio::join!(super::handshake(wrap(ours), server), client_side)
    }

    /// A TLS 1.3 handshake with ALPN `alpn`; the server side's session and
    /// the client's stream.
    async fn handshake(alpn: &[&[u8]]) -> (TlsSession<DuplexStream>, Client) {
        let (server, roots) = crate::tls::test_server(&[b"h2", b"http/1.1"]);
        let mut client = client_config(roots, &[&rustls::version::TLS13]);
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let (accepted, connected) = connect(server, client, 16 * 1024, |c| async { Ok(c) }).await;
        (accepted.unwrap(), connected.unwrap())
    }

    /// The client sends `ask`, the server reads it and answers `answer`,
    /// then closes with close_notify, which ends the client's read cleanly.
    async fn ask_then_close(
        conn: &mut TlsConn<DuplexStream>,
        client: &mut Client,
        ask: &[u8],
        answer: &[u8],
    ) {
        client.write_all(ask).await.unwrap();
        client.flush().await.unwrap();
        let mut got = vec![0u8; ask.len()];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(got, ask);
        conn.write_all(answer).await.unwrap();
        Shutdown::shutdown(conn).await;
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, answer);
    }

    #[tokio::test]
    async fn the_identity_rides_with_every_digest_and_cannot_be_replaced() {
        let (server, _client) = handshake(&[b"http/1.1"]).await;
        let mut conn = TlsConn::new(
            server,
            ConnIdentity::Refused(Refusal::TlsVersion),
            Instant::now(),
        );
        conn.set_proxy_digest(ProxyDigest::new(
            Box::new(ResponseHeader::build(200, None).unwrap()),
            Some(Box::new(ConnIdentity::Anonymous)),
        ));
        // As pingora builds each request's digest from the stream.
        let stream: Stream = Box::new(conn);
        let digest = Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        };
        let carried = identity_digest(Some(&digest)).expect("the identity's digest");
        assert!(matches!(
            identity(&carried),
            Some(ConnIdentity::Refused(Refusal::TlsVersion))
        ));
        let ssl = digest.ssl_digest.as_ref().unwrap();
        assert_eq!(ssl.version, "TLSv1_3");
        assert!(!ssl.cipher.is_empty());
        assert_eq!(stream.selected_alpn_proto(), Some(ALPN::H1));
        let tls_layer = digest.timing_digest.last().unwrap().as_ref().unwrap();
        assert!(tls_layer.establishment_duration.is_some());
    }

    #[test]
    fn no_carried_identity_reads_as_none() {
        let bare = ProxyDigest::new(Box::new(ResponseHeader::build(200, None).unwrap()), None);
        assert!(identity(&bare).is_none());
        let other = ProxyDigest::new(
            Box::new(ResponseHeader::build(200, None).unwrap()),
            Some(Box::new("not an identity")),
        );
        assert!(identity(&other).is_none());
        assert!(identity_digest(None).is_none());
    }

    #[tokio::test]
    async fn alpn_h2_is_reported_and_data_flows_both_ways() {
        let (server, mut client) = handshake(&[b"h2", b"http/1.1"]).await;
        let mut conn = TlsConn::new(server, ConnIdentity::Anonymous, Instant::now());
        assert_eq!(conn.selected_alpn_proto(), Some(ALPN::H2));
        ask_then_close(&mut conn, &mut client, b"ping", b"pong").await;
    }

    /// A failed handshake tells the client why before it ends: here rustls's
    /// `certificate_required` alert to a client without a certificate.
    #[tokio::test]
    async fn a_failed_handshake_sends_rustls_alert() {
        let provider = crate::tls::install_crypto_provider();
        let (plain, roots) = crate::tls::test_server(&[b"http/1.1"]);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots.clone()),
            provider.clone(),
        )
        .build()
        .unwrap();
        let resolver = plain.cert_resolver.clone();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver);
        let client = client_config(roots, &[&rustls::version::TLS13]);
        // TLS 1.3: the client's handshake completes before the server has
        // seen its (empty) certificate; the alert ends its first read.
        let (accepted, connected) = connect(server, client, 16 * 1024, |mut tls| async move {
            tls.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
            let mut got = Vec::new();
            tls.read_to_end(&mut got).await.map(|_| got)
        })
        .await;
        let err = accepted.expect_err("no client certificate");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let err = connected.expect_err("refused").to_string();
        assert!(err.contains("CertificateRequired"), "{err}");
    }

    /// A client whose chunks do not line up with records: 1 MiB each way in
    /// odd sizes after a key update, then the connection goes idle
    /// and holds no buffer (the point of the unbuffered API, module doc).
    #[tokio::test]
    async fn large_transfers_both_ways_then_idle_holds_no_buffer() {
        let (server, client) = handshake(&[b"http/1.1"]).await;
        let mut conn = TlsConn::new(server, ConnIdentity::Anonymous, Instant::now());
        let data: Vec<u8> = (0..1024 * 1024u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let mut client = client;
        // rustls's client sends a KeyUpdate with its first record.
        client.get_mut().1.refresh_traffic_keys().unwrap();
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let mut at = 0;
            for size in [1usize, 100, 16_384, 16_385, 70_000, 3].iter().cycle() {
                if at == sent.len() {
                    break;
                }
                let end = (at + size).min(sent.len());
                client_write.write_all(&sent[at..end]).await.unwrap();
                at = end;
            }
            client_write.flush().await.unwrap();
            client_write
        });
        let mut got = vec![0u8; data.len()];
        conn.read_exact(&mut got).await.unwrap();
        assert!(got == data, "server read what the client wrote");
        let _client_write = writer.await.unwrap();
        // And back, in one write the stream takes in pieces.
        let reader = tokio::spawn(async move {
            let mut back = vec![0u8; 1024 * 1024];
            client_read.read_exact(&mut back).await.unwrap();
            back
        });
        conn.write_all(&data).await.unwrap();
        conn.flush().await.unwrap();
        assert!(
            reader.await.unwrap() == data,
            "client read what the server wrote"
        );
        let tls = &conn.tls;
        assert_eq!(
            (
                tls.incoming.capacity(),
                tls.plaintext.capacity(),
                tls.outgoing.capacity()
            ),
            (0, 0, 0),
            "an idle connection holds no buffer"
        );
    }

    /// A record that does not decrypt ends the connection: an error for the
    /// read, rustls's alert to the peer, and nothing encrypted afterwards.
    #[tokio::test]
    async fn a_corrupt_record_fails_the_connection_for_good() {
        let (server, client) = handshake(&[b"http/1.1"]).await;
        let mut conn = TlsConn::new(server, ConnIdentity::Anonymous, Instant::now());
        let (mut socket, _) = client.into_inner();
        // The session tickets the server sent after the handshake, unread.
        let mut tickets = [0u8; 1024];
        while let Ok(read) =
            tokio::time::timeout(Duration::from_millis(50), socket.read(&mut tickets)).await
        {
            assert!(read.unwrap() > 0);
        }
        // An application-data record header and 40 bytes no key made.
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 40];
        record.extend_from_slice(&[0x5a; 40]);
        socket.write_all(&record).await.unwrap();
        let mut buf = [0u8; 64];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(conn.tls.failed);
        let again = conn.write(b"after").await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::InvalidData, "{again}");
        // What reached the client is rustls's alert and not "after": one
        // record of an encrypted alert's size (header, alert, content type,
        // tag).
        drop(conn);
        let mut got = Vec::new();
        socket.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 5 + 2 + 1 + 16, "{got:?}");
        assert_eq!(got[0], 0x17, "{got:?}");
    }

    /// The client's close_notify is a clean end of file, after its data.
    #[tokio::test]
    async fn a_client_close_notify_is_a_clean_end() {
        let (server, mut client) = handshake(&[b"http/1.1"]).await;
        let mut conn = TlsConn::new(server, ConnIdentity::Anonymous, Instant::now());
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        assert!(conn.tls.peer_closed);
        // It may still answer, then close.
        conn.write_all(b"bye").await.unwrap();
        Shutdown::shutdown(&mut conn).await;
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye");
    }

    /// A handshake whose messages come split over many records and many
    /// small reads (rustls joins them in our buffer, across calls).
    #[tokio::test]
    async fn a_handshake_in_small_records_and_reads() {
        let (mut server, roots) = crate::tls::test_server(&[b"http/1.1"]);
        // No session tickets: the handshake returns once they are sent, and
        // through a 37-byte pipe they wait for a client read.
        server.send_tls13_tickets = 0;
        let mut client = client_config(roots, &[&rustls::version::TLS13]);
        client.max_fragment_size = Some(64);
        let (accepted, connected) = connect(server, client, 37, |c| async { Ok(c) }).await;
        let mut conn = TlsConn::new(accepted.unwrap(), ConnIdentity::Anonymous, Instant::now());
        let mut client = connected.unwrap();
        let data = vec![9u8; 3000];
        let mut got = vec![0u8; data.len()];
        let (sent, read) = tokio::join!(
            async {
                client.write_all(&data).await?;
                client.flush().await
            },
            conn.read_exact(&mut got)
        );
        sent.unwrap();
        read.unwrap();
        assert_eq!(got, data);
    }

    /// More unprocessable bytes than any TLS message needs: refused, and the
    /// session is done.
    #[tokio::test]
    async fn a_peer_cannot_grow_the_receive_buffer_past_its_bound() {
        let (mut ours, _theirs) = tokio::io::duplex(16);
        let (server, _) = crate::tls::test_server(&[b"http/1.1"]);
        let conn = UnbufferedServerConnection::new(Arc::new(server)).unwrap();
        let mut session = TlsSession::new(&mut ours, conn);
        session.incoming = vec![0; MAX_INCOMING];
        let err = std::future::poll_fn(|cx| session.poll_receive(cx))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(session.failed);
    }

    /// A key update the client asks for is answered and data keeps flowing.
    #[tokio::test]
    async fn a_client_key_update_is_followed() {
        let (server, mut client) = handshake(&[b"http/1.1"]).await;
        let mut conn = TlsConn::new(server, ConnIdentity::Anonymous, Instant::now());
        for round in 0..3u8 {
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[round; 10]).await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 10];
            conn.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round; 10]);
            conn.write_all(&[round + 100; 5]).await.unwrap();
            conn.flush().await.unwrap();
            let mut back = [0u8; 5];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [round + 100; 5]);
        }
    }

    /// A peer that closes without close_notify may have been cut short: an
    /// error, as rustls's buffered connection reports it, not an end of file.
    #[tokio::test]
    async fn an_end_without_close_notify_is_an_error() {
        let (server, client) = handshake(&[b"http/1.1"]).await;
        let mut conn = TlsConn::new(server, ConnIdentity::Anonymous, Instant::now());
        let (mut socket, _) = client.into_inner();
        AsyncWriteExt::shutdown(&mut socket).await.unwrap();
        drop(socket);
        let mut got = Vec::new();
        let err = conn.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// TLS 1.2 (where a listener allows it): handshake and data.
    #[tokio::test]
    async fn tls12_handshake_and_data() {
        let (server, roots) = crate::tls::test_server(&[b"http/1.1"]);
        let client = client_config(roots, &[&rustls::version::TLS12]);
        let (accepted, connected) = connect(server, client, 16 * 1024, |c| async { Ok(c) }).await;
        let mut conn = TlsConn::new(accepted.unwrap(), ConnIdentity::Anonymous, Instant::now());
        let mut client = connected.unwrap();
        assert_eq!(conn.get_ssl_digest().unwrap().version, "TLSv1_2");
        ask_then_close(&mut conn, &mut client, b"twelve", b"ok").await;
    }

    /// Both sides of a handshake where the server writes through a buffer
    /// that sends only on flush (as accept.rs's socket does), bounded in
    /// time: a flight the handshake left unflushed that the client waits
    /// for shows as a timeout.
    async fn buffered_handshake(
        server: &Arc<rustls::ServerConfig>,
        client: &Arc<rustls::ClientConfig>,
    ) -> (TlsSession<tokio::io::BufWriter<DuplexStream>>, Client) {
        let both = connect_over(
            tokio::io::BufWriter::new,
            server.clone(),
            client.clone(),
            16 * 1024,
            |c| async { Ok(c) },
        );
        let (accepted, connected) = tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("the handshake completes");
        (accepted.unwrap(), connected.unwrap())
    }

    /// TLS 1.3: the session ticket, which the client does not wait for, is
    /// left in the socket's buffer and goes out with the first response; the
    /// client has it then (its next connection resumes).
    #[tokio::test]
    async fn a_tls13_ticket_goes_out_with_the_first_response() {
        let (server, roots) = crate::tls::test_server(&[b"http/1.1"]);
        let server = Arc::new(server);
        let client = Arc::new(client_config(roots, &[&rustls::version::TLS13]));
        let (session, mut tls) = buffered_handshake(&server, &client).await;
        assert!(
            !session.io.buffer().is_empty(),
            "the ticket waits for the first response"
        );
        let mut conn = TlsConn::new(session, ConnIdentity::Anonymous, Instant::now());
        tls.write_all(b"ask").await.unwrap();
        tls.flush().await.unwrap();
        let mut got = [0u8; 3];
        conn.read_exact(&mut got).await.unwrap();
        conn.write_all(b"answer").await.unwrap();
        conn.flush().await.unwrap();
        assert!(conn.tls.io.buffer().is_empty());
        let mut back = [0u8; 6];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"answer");
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        let (_, again) = buffered_handshake(&server, &client).await;
        assert_eq!(
            again.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "the client got the ticket with the response"
        );
    }

    /// TLS 1.2: the server's Finished comes last and the client waits for
    /// it, so the handshake flushes it.
    #[tokio::test]
    async fn a_tls12_handshake_flushes_its_last_flight() {
        let (server, roots) = crate::tls::test_server(&[b"http/1.1"]);
        let client = client_config(roots, &[&rustls::version::TLS12]);
        let (session, _tls) = buffered_handshake(&Arc::new(server), &Arc::new(client)).await;
        assert!(session.io.buffer().is_empty());
    }

    /// What an idle connection keeps: rustls's connection, the socket and a
    /// few words, not pingora's slots for handshake futures (see the module
    /// doc).
    #[test]
    fn the_stream_is_rustls_plus_a_few_words() {
        let ours = std::mem::size_of::<TlsConn<DuplexStream>>();
        let parts =
            std::mem::size_of::<UnbufferedServerConnection>() + std::mem::size_of::<DuplexStream>();
        assert!(
            ours <= parts + 192,
            "TlsConn is {ours} bytes, rustls's connection and the socket {parts}"
        );
    }
}
