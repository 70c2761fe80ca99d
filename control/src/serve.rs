//! `zen-control serve`: API listener, admin listener, operator socket and the controller,
//! until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::App;
use crate::clock::SystemClock;
use crate::config::Config;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.check_bind()?;
    let master = std::env::var(crate::custody::MASTER_KEY_ENV).ok();
    let app = App::open(cfg, Arc::new(SystemClock), master).await?;
    let cfg = &app.cfg;

    let api = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot bind API listener {}", cfg.listen))?;
    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("cannot bind admin listener {}", cfg.admin_listen))?;
    let ops = crate::operator::server::bind(&cfg.socket)?;
    tracing::info!(
        api = %cfg.listen, admin = %cfg.admin_listen, socket = %cfg.socket.display(),
        data_dir = %cfg.data_dir.display(), "zen-control serving"
    );
    if cfg.testing_short_svid_ttl {
        tracing::warn!(
            svid_ttl_secs = cfg.svid_ttl.as_secs(),
            "testing.short_svid_ttl is on: SVID lifetimes below 60s are allowed (test-only)"
        );
    }

    let controller = app.spawn_controller();
    let ops_task = tokio::spawn(crate::operator::server::serve(Arc::clone(&app), ops));
    let admin_task = tokio::spawn({
        let r = crate::admin::router(Arc::clone(&app));
        async move { axum::serve(admin, r).await }
    });
    let api_router = crate::api::router(Arc::clone(&app));
    axum::serve(api, api_router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("API server")?;

    controller.abort();
    ops_task.abort();
    admin_task.abort();
    let _ = std::fs::remove_file(&cfg.socket);
    tracing::info!("zen-control stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
