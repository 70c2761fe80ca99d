//! Bytes written to a buffer and not yet taken by the socket: the downstream
//! socket's write buffer (accept.rs) and the TLS records rustls produced
//! (tls/stream.rs) both hold them only until they are sent.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

/// Writes `buf[*sent..]` to `io`, keeping count in `sent`; once all of it is
/// sent, frees `buf`, so that an idle connection holds no buffer.
pub(crate) fn poll_send<W: AsyncWrite + Unpin>(
    io: &mut W,
    buf: &mut Vec<u8>,
    sent: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while *sent < buf.len() {
        match ready!(Pin::new(&mut *io).poll_write(cx, &buf[*sent..])) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => *sent += n,
            Err(err) => return Poll::Ready(Err(err)),
        }
    }
    *buf = Vec::new();
    *sent = 0;
    Poll::Ready(Ok(()))
}
