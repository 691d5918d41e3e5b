//! `proxy`: the regional health-checking HTTP load balancer (`switchyard proxy`), in the role
//! HAProxy or a cloud load balancer plays in front of a region's app servers.
//!
//! - [`config`]: the `[proxy]` section of the deployment TOML.
//! - [`check`] and [`balance`]: the sans-IO core — HAProxy's rise/fall health machine and the
//!   balancer (round robin, least connections, weights, backups, slow start, drain).
//! - [`proxy`]: the data plane: accept loop, worker threads, retries and the books (shared by
//!   both paths), hyper for HTTP/2 with prior knowledge.
//! - [`h1`]: the HTTP/1.1 forwarding core (one task per client connection, raw pooled server
//!   connections, `httparse`).
//! - [`health`]: active checks. [`admin`]: runtime API, stats page, metrics. [`ctl`]: its client.
//!
//! Must not depend on other Switchyard crates: the controller drives it through the runtime
//! API, like it drives HAProxy's.

pub mod admin;
pub mod balance;
pub mod check;
pub mod config;
pub mod ctl;
pub mod h1;
pub mod health;
pub mod pool;
pub mod proxy;
mod ratelog;
pub mod tunnel;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::ProxyConfig;
pub use proxy::Shared;

/// Runs the proxy on `listener` (and the admin API on `admin`, with its optional bearer token)
/// until `shutdown` resolves; then stops checks and lets requests in flight finish.
pub async fn run(
    listener: TcpListener,
    admin: Option<(TcpListener, Option<String>, Option<Arc<common::http::Tls>>)>,
    config: ProxyConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = match &config.tls {
        None => None,
        Some(paths) => {
            let tls = common::http::Tls::load(common::http::TlsFiles {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
                client_ca: None,
            })
            .map_err(|message| std::io::Error::other(format!("[proxy] tls_cert / tls_key: {message}")))?;
            let tls = Arc::new(tls);
            #[cfg(unix)]
            tokio::spawn(common::http::reload_on_hangup(Arc::clone(&tls), "proxy"));
            Some(tls)
        }
    };
    let shared = Shared::with_tls(config, tls);
    run_shared(shared, listener, admin, shutdown).await
}

/// As [`run`], with state the caller already holds (tests inspect it).
pub async fn run_shared(
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<(TcpListener, Option<String>, Option<Arc<common::http::Tls>>)>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_sender, stop) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if shared.config.check.enabled {
        for index in 0..shared.config.servers.len() {
            tasks.spawn(health::run_checks(
                shared.clone(),
                balance::ServerId(index),
                stop.clone(),
            ));
        }
    }
    let admin_task = admin.map(|(listener, token, tls)| {
        let mut stop = stop.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(error) = admin::serve(shared, listener, token, tls, stopped).await {
                tracing::error!(%error, "admin API stopped");
            }
        })
    });
    let result = proxy::serve(shared, listener, shutdown).await;
    let _ = stop_sender.send(true);
    while tasks.join_next().await.is_some() {}
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    result
}
