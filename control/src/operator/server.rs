//! The operator socket: owner-only file mode plus a peer-credential check, one JSON request
//! line and one JSON response line per command.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{dispatch, OpRequest, OpResponse};
use crate::app::App;

const MAX_LINE: usize = 4 * 1024 * 1024;

pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        // A live server answers; a stale file from a crash is replaced.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "operator socket {} is in use by another zen-control",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind operator socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod 600 {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(app: Arc<App>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let app = Arc::clone(&app);
                tokio::spawn(async move {
                    if let Err(e) = handle(app, stream).await {
                        tracing::warn!(error = format!("{e:#}"), "operator connection failed");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "operator socket accept failed"),
        }
    }
}

async fn handle(app: Arc<App>, stream: UnixStream) -> anyhow::Result<()> {
    let cred = stream.peer_cred().context("peer credentials")?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let (rd, mut wr) = stream.into_split();
    if cred.uid() != me && cred.uid() != 0 {
        let resp = OpResponse::err("operator socket: peer uid not allowed");
        wr.write_all(format!("{}\n", serde_json::to_string(&resp)?).as_bytes())
            .await?;
        return Ok(());
    }
    let mut reader = BufReader::new(rd).take(MAX_LINE as u64);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let resp = match serde_json::from_str::<OpRequest>(&line) {
        Ok(req) => dispatch(&app, req, &format!("operator:uid={}", cred.uid())).await,
        Err(e) => OpResponse::err(format!("bad operator request: {e}")),
    };
    wr.write_all(format!("{}\n", serde_json::to_string(&resp)?).as_bytes())
        .await?;
    wr.shutdown().await?;
    Ok(())
}
