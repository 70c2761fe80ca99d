//! A recording upstream: a tiny HTTP/1.1 server that stores every request
//! (and counts every byte) it receives, and answers 200 with a JSON body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
pub struct Log {
    pub requests: Mutex<Vec<Recorded>>,
    pub bytes: AtomicUsize,
    pub connections: AtomicUsize,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub log: Arc<Log>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log::default());
        let l2 = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                l2.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, l2.clone()));
            }
        });
        Upstream { addr, log, task }
    }

    /// An address where nothing listens (for upstream_unavailable): a port that no other test of
    /// this process is given, so no proxy or upstream of a concurrent test comes to life on it.
    pub async fn dead_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], zen_e2e::free_port()))
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.requests.lock().unwrap().clone()
    }

    pub fn bytes(&self) -> usize {
        self.log.bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(h: &[u8], pat: &[u8]) -> Option<usize> {
    h.windows(pat.len()).position(|w| w == pat)
}

async fn serve(mut s: TcpStream, log: Arc<Log>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        // Head
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            log.bytes.fetch_add(n, Ordering::SeqCst);
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        buf.drain(..head_end);
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if let Some(cl) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while buf.len() < cl {
                let n = match s.read(&mut tmp).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                log.bytes.fetch_add(n, Ordering::SeqCst);
                buf.extend_from_slice(&tmp[..n]);
            }
            body = buf.drain(..cl).collect();
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&buf, b"\r\n") {
                        break i;
                    }
                    let n = match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    log.bytes.fetch_add(n, Ordering::SeqCst);
                    buf.extend_from_slice(&tmp[..n]);
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
                        .unwrap_or(0);
                buf.drain(..line_end + 2);
                while buf.len() < size + 2 {
                    let n = match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    log.bytes.fetch_add(n, Ordering::SeqCst);
                    buf.extend_from_slice(&tmp[..n]);
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        }
        let close_after = get("x-test-close").is_some();
        let drop_unanswered = get("x-test-drop").is_some();
        // Lets tests hold a request in flight (SIGTERM drain).
        if let Some(ms) = get("x-test-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        log.requests.lock().unwrap().push(Recorded {
            method,
            target,
            headers,
            body,
        });
        // Lets tests lose a request after it arrived: no answer, connection closed.
        if drop_unanswered {
            return;
        }
        let resp_body = br#"{"ok":true}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            resp_body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() || s.write_all(resp_body).await.is_err() {
            return;
        }
        // Lets tests close a kept-alive connection behind the proxy's back
        // (no `connection: close`, so the proxy keeps it in its pool).
        if close_after {
            return;
        }
    }
}
