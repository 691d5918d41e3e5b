//! `faultproxy`: a TCP fault-injection proxy with Toxiproxy's model — named proxies
//! (listen → upstream), each with toxics per direction (latency and jitter, bandwidth, timeout
//! or blackhole, reset_peer, slicer, limit_data, slow_close) and an on/off switch — driven by
//! a Toxiproxy-compatible HTTP control API. The lab puts one on every inter-component link and
//! drills inject faults through it.
//!
//! `toxic` validates, `link` is the sans-IO schedule of one direction (time and randomness
//! passed in, so jitter and slicing are reproducible from a seed), `proxy` runs sockets,
//! `api` is the control API, `config` the `[fault_proxy]` TOML section, `access` the control
//! API's token and the allow list of upstream networks.
//! Must not depend on other Switchyard crates: it proxies bytes and knows no protocol.

pub mod access;
pub mod api;
pub mod config;
pub mod link;
pub mod metrics;
pub mod proxy;
pub mod toxic;

use std::sync::Arc;

use tokio::net::TcpListener;

pub use access::{AllowList, Cidr};
pub use config::{ConfigError, FaultProxyConfig, ProxyConfig};
pub use proxy::{Limits, ProxySpec, ProxyUpdate, ProxyView, Registry, RegistryError};
pub use toxic::{Stream, Toxic, ToxicKind};

#[derive(Debug, thiserror::Error)]
pub enum FaultProxyError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Exposure(#[from] access::ExposureError),
    #[error("serve the control API: {0}")]
    Io(#[from] std::io::Error),
}

/// Creates the configured proxies and serves the control API on `listener` until `shutdown`
/// resolves; then closes every proxy. Without a token the listener must be on loopback.
pub async fn run(
    listener: TcpListener,
    config: FaultProxyConfig,
    seed: u64,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), FaultProxyError> {
    access::check_exposure(listener.local_addr()?, token.as_deref())?;
    let registry = start(&config, seed).await?;
    api::serve_with_token(listener, Arc::clone(&registry), token, shutdown).await?;
    registry.stop_all().await;
    Ok(())
}

/// A registry holding the configured proxies, already listening; they may relay to the
/// configured `allow_upstream` networks only (loopback when none are given).
pub async fn start(config: &FaultProxyConfig, seed: u64) -> Result<Arc<Registry>, RegistryError> {
    let registry = Arc::new(Registry::with_allowed(
        config.limits(),
        config.seed.unwrap_or(seed),
        config.allow_list(),
    ));
    for proxy in &config.proxies {
        registry.create(proxy.clone()).await?;
    }
    Ok(registry)
}
