//! `zen-bench upstream`: a tiny plain-HTTP/1.1 upstream that answers every
//! request `200 ok` after reading its body — the same backend for zen-proxy
//! and its peers, cheap enough not to be what is measured.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the body so keep-alive works for POSTs too.
    let _ = req.into_body().collect().await;
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"ok")))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"ok")))))
}

/// Binds `listen`, prints `upstream listening on ADDR` (port 0 gets a free
/// port; the line tells which), and serves until the process is stopped.
pub async fn serve(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    println!("upstream listening on {local}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            // EMFILE and the like: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service_fn(answer))
                .await;
        });
    }
}
