//! A rustls test client speaking raw HTTP/1.1 so tests control every byte
//! (spoofed headers, chunked bodies, exact lengths).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use zen_trust::signature::{self, RequestParts, SignOptions};
use zen_trust::{Secret, UnixTime};

use super::pki::Leaf;

pub fn client_config(ca_pem: &str, leaf: Option<&Leaf>, tls12_only: bool) -> Arc<ClientConfig> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let b = ClientConfig::builder_with_protocol_versions(versions).with_root_certificates(roots);
    let mut cfg = match leaf {
        Some(l) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(l.cert_pem.as_bytes())
                    .map(|c| c.unwrap())
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

#[derive(Debug, Clone, Default)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body with Transfer-Encoding: chunked (in 3 chunks).
    pub chunked: bool,
    /// Header fields the signature covers besides the default set.
    pub cover: Vec<String>,
    /// Bytes replaced on the wire after signing (first occurrence): what a client sends that
    /// differs from what it signed.
    pub wire_patch: Option<(Vec<u8>, Vec<u8>)>,
}

impl Req {
    pub fn get(path: &str) -> Req {
        Req {
            method: "GET".into(),
            path: path.into(),
            ..Req::default()
        }
    }
    pub fn post(path: &str, body: Vec<u8>) -> Req {
        Req {
            method: "POST".into(),
            path: path.into(),
            body,
            ..Req::default()
        }
    }
    pub fn header(mut self, n: &str, v: &str) -> Req {
        self.headers.push((n.into(), v.into()));
        self
    }
    /// Signs as zen-agent does (default cover set, Host = localhost).
    pub fn signed(self, key_id: &str, secret: &Secret) -> Req {
        self.signed_at(key_id, secret, UnixTime::now(), None)
    }
    pub fn signed_at(
        mut self,
        key_id: &str,
        secret: &Secret,
        created: UnixTime,
        nonce: Option<String>,
    ) -> Req {
        let (path, query) = match self.path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (self.path.clone(), None),
        };
        let headers: Vec<(String, String)> = self.headers.clone();
        let parts = RequestParts {
            method: &self.method,
            authority: "localhost",
            path: &path,
            query: query.as_deref(),
            headers: &headers,
        };
        let mut opts = SignOptions::new(key_id, secret, created);
        opts.nonce = nonce;
        opts.extra_headers = self.cover.clone();
        let body = (!self.body.is_empty()).then_some(&self.body[..]);
        let s = signature::sign(&parts, body, &opts).unwrap();
        self.headers
            .push(("signature-input".into(), s.signature_input));
        self.headers.push(("signature".into(), s.signature));
        if let Some(d) = s.content_digest {
            self.headers.push(("content-digest".into(), d));
        }
        self
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: localhost\r\n",
            self.method, self.path
        )
        .into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if self.chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            let third = self.body.len() / 3 + 1;
            for c in self.body.chunks(third) {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            if !self.body.is_empty() || self.method == "POST" {
                out.extend_from_slice(
                    format!("content-length: {}\r\n", self.body.len()).as_bytes(),
                );
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&self.body);
        }
        if let Some((from, to)) = &self.wire_patch {
            let at = out
                .windows(from.len())
                .position(|w| w == &from[..])
                .expect("the bytes to patch are in the request");
            out.splice(at..at + from.len(), to.iter().copied());
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
    /// The refusal's `detail` text (panics if there is none).
    pub fn detail(&self) -> String {
        let v = self.json();
        v["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("no detail in {v}"))
            .to_owned()
    }
}

pub struct Conn {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        let stream = TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn peer_leaf_der(&self) -> Vec<u8> {
        self.stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    pub async fn send(&mut self, req: &Req) -> std::io::Result<Resp> {
        self.stream.write_all(&req.encode()).await?;
        self.stream.flush().await?;
        self.read_response().await
    }

    /// Sends the request in pieces cut at `cuts` (byte offsets), pausing
    /// between them: a client whose request trickles in.
    pub async fn send_in_pieces(
        &mut self,
        req: &Req,
        cuts: &[usize],
        pause: std::time::Duration,
    ) -> std::io::Result<Resp> {
        let wire = req.encode();
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
            self.stream.write_all(&wire[from..cut]).await?;
            self.stream.flush().await?;
            from = cut;
            if cut < wire.len() {
                tokio::time::sleep(pause).await;
            }
        }
        self.read_response().await
    }

    /// Sends the first `upto` bytes of the request and no more, then reads the answer.
    pub async fn send_partial(&mut self, req: &Req, upto: usize) -> std::io::Result<Resp> {
        self.stream.write_all(&req.encode()[..upto]).await?;
        self.stream.flush().await?;
        self.read_response().await
    }

    /// True if the proxy closes this connection (EOF or reset) within
    /// `within` without sending anything.
    pub async fn closed_by_peer(&mut self, within: std::time::Duration) -> bool {
        let mut tmp = [0u8; 1];
        matches!(
            tokio::time::timeout(within, self.stream.read(&mut tmp)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// Sends the head, waits for `100 Continue`, then sends the body.
    pub async fn send_expect_continue(&mut self, req: &Req) -> std::io::Result<Resp> {
        let wire = req.encode();
        let split = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        self.stream.write_all(&wire[..split]).await?;
        self.stream.flush().await?;
        let interim = self.read_response().await?;
        if interim.status != 100 {
            return Ok(interim);
        }
        self.stream.write_all(&wire[split..]).await?;
        self.stream.flush().await?;
        self.read_response().await
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut tmp = [0u8; 16384];
        let n = self.stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    async fn read_response(&mut self) -> std::io::Result<Resp> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(cl) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < cl {
                self.fill().await?;
            }
            body = self.buf.drain(..cl).collect();
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let le = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&self.buf[..le]).trim(), 16)
                        .unwrap();
                self.buf.drain(..le + 2);
                while self.buf.len() < size + 2 {
                    self.fill().await?;
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection.
pub async fn once(addr: SocketAddr, cfg: Arc<ClientConfig>, req: &Req) -> std::io::Result<Resp> {
    Conn::connect(addr, cfg).await?.send(req).await
}
