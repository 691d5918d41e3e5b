//! `faultproxy`: a TCP fault-injection proxy with Toxiproxy's model — named proxies
//! (listen → upstream), each with toxics per direction (latency and jitter, bandwidth, timeout
//! or blackhole, reset_peer, slicer, limit_data, slow_close) and an on/off switch — driven by
//! a Toxiproxy-compatible HTTP control API. The lab puts one on every inter-component link and
//! drills inject faults through it.
//!
//! `toxic` validates, `link` is the sans-IO schedule of one direction (time and randomness
//! passed in, so jitter and slicing are reproducible from a seed), `proxy` runs sockets,
//! `api` is the control API, `config` the `[fault_proxy]` TOML section.
//! Must not depend on other Switchyard crates: it proxies bytes and knows no protocol.

pub mod api;
pub mod config;
pub mod link;
pub mod proxy;
pub mod rng;
pub mod toxic;

use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::{ConfigError, FaultProxyConfig, ProxyConfig};
pub use proxy::{Limits, ProxySpec, ProxyUpdate, ProxyView, Registry, RegistryError};
pub use toxic::{Stream, Toxic, ToxicKind};

#[derive(Debug, thiserror::Error)]
pub enum FaultProxyError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("serve the control API: {0}")]
    Io(#[from] std::io::Error),
}

/// Creates the configured proxies and serves the control API on `listener` until `shutdown`
/// resolves; then closes every proxy.
pub async fn run(
    listener: TcpListener,
    config: FaultProxyConfig,
    seed: u64,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), FaultProxyError> {
    let registry = start(&config, seed).await?;
    api::serve(listener, Arc::clone(&registry), shutdown).await?;
    registry.stop_all().await;
    Ok(())
}

/// A registry holding the configured proxies, already listening.
pub async fn start(config: &FaultProxyConfig, seed: u64) -> Result<Arc<Registry>, RegistryError> {
    let registry = Arc::new(Registry::new(config.limits(), config.seed.unwrap_or(seed)));
    for proxy in &config.proxies {
        registry.create(proxy.clone().into()).await?;
    }
    Ok(registry)
}
