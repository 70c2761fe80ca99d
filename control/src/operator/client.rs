//! CLI side of the operator socket.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{OpRequest, OpResponse, SOCKET_FILE};

/// `--socket`, else `<--data-dir>/control.sock`, else `$ZEN_CONTROL_SOCKET`, else the dev
/// stack's socket under `.zen/dev/control/` (DESIGN §2; run from the repo root).
pub fn resolve_socket(socket: Option<&Path>, data_dir: Option<&Path>) -> PathBuf {
    if let Some(s) = socket {
        return s.to_path_buf();
    }
    if let Some(d) = data_dir {
        return d.join(SOCKET_FILE);
    }
    if let Some(s) = std::env::var_os("ZEN_CONTROL_SOCKET") {
        return PathBuf::from(s);
    }
    PathBuf::from(".zen/dev/control").join(SOCKET_FILE)
}

pub async fn call(socket: &Path, req: &OpRequest) -> anyhow::Result<OpResponse> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot connect to the operator socket {} (is zen-control running? pass --socket or --data-dir)",
            socket.display()
        )
    })?;
    let (rd, mut wr) = stream.into_split();
    wr.write_all(format!("{}\n", serde_json::to_string(req)?).as_bytes())
        .await?;
    let mut line = String::new();
    BufReader::new(rd).read_line(&mut line).await?;
    serde_json::from_str(&line).context("malformed response from zen-control")
}
