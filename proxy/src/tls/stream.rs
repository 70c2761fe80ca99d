//! An accepted downstream TLS connection as pingora's HTTP code sees it:
//! tokio-rustls's server stream, what pingora reads from a stream's digests,
//! and the connection's identity.
//!
//! Why not pingora's `TlsStream`: each idle connection kept, besides rustls's
//! own state, pingora's inline slots for a client and a server handshake
//! future (empty once the handshake is done: 4.9 KiB boxed against our
//! 1.6), a second copy of the client's certificate chain (`TlsRef`, 0.9 KiB
//! with an intermediate) and the organization and serial of the leaf, parsed
//! again for a digest nothing in the proxy reads. bench/README.md "Idle
//! memory" has the figures.
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

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_http::ResponseHeader;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::tls::identity::ConnIdentity;

/// A completed server handshake over `S`, with the identity decided for it.
#[derive(Debug)]
pub struct TlsConn<S> {
    tls: TlsStream<S>,
    ssl: Arc<SslDigest>,
    identity: Arc<ProxyDigest>,
    timing: TimingDigest,
}

impl<S> TlsConn<S> {
    /// `started`: when the handshake began, for the timing digest.
    pub fn new(tls: TlsStream<S>, identity: ConnIdentity, started: Instant) -> Self {
        let (_, conn) = tls.get_ref();
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
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
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
        self.tls.get_ref().0.id()
    }
}

impl<S> Ssl for TlsConn<S> {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.ssl.clone())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        // The listener offers exactly these two (tls::server_config).
        match self.tls.get_ref().1.alpn_protocol()? {
            b"h2" => Some(ALPN::H2),
            b"http/1.1" => Some(ALPN::H1),
            _ => None,
        }
    }
}

impl<S: GetTimingDigest> GetTimingDigest for TlsConn<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        let mut layers = self.tls.get_ref().0.get_timing_digest();
        layers.push(Some(self.timing.clone()));
        layers
    }

    fn get_read_pending_time(&self) -> Duration {
        self.tls.get_ref().0.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.tls.get_ref().0.get_write_pending_time()
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
        self.tls.get_ref().0.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.tls.get_mut().0.set_socket_digest(digest)
    }
}

impl<S> Peek for TlsConn<S> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal::Refusal;
    use pingora_core::protocols::Stream;
    use tokio::io::{AsyncReadExt, DuplexStream};

    /// A TLS 1.3 handshake over an in-memory pipe; the server side's stream
    /// and the client's.
    async fn handshake(
        alpn: &[&[u8]],
    ) -> (
        TlsStream<DuplexStream>,
        tokio_rustls::client::TlsStream<DuplexStream>,
    ) {
        let (server, roots) = crate::tls::test_server(&[b"h2", b"http/1.1"]);
        let provider = crate::tls::install_crypto_provider();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let (ours, theirs) = tokio::io::duplex(16 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let (accepted, connected) =
            tokio::join!(acceptor.accept(ours), connector.connect(name, theirs));
        (accepted.unwrap(), connected.unwrap())
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
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 4];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        conn.write_all(b"pong").await.unwrap();
        Shutdown::shutdown(&mut conn).await;
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong", "close_notify ends the client's read cleanly");
    }

    /// What an idle connection keeps: rustls's stream and a few pointers,
    /// not pingora's slots for handshake futures (see the module doc).
    #[test]
    fn the_stream_is_rustls_plus_a_few_words() {
        let ours = std::mem::size_of::<TlsConn<DuplexStream>>();
        let rustls = std::mem::size_of::<TlsStream<DuplexStream>>();
        assert!(
            ours <= rustls + 128,
            "TlsConn is {ours} bytes, rustls's stream {rustls}"
        );
    }
}
