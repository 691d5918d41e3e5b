//! `switchyard fault-proxy`: argument parsing for the fault-injection proxy.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use faultproxy::config::{BufferBytes, ConnectionsMax};
use faultproxy::{Cidr, FaultProxyConfig, ProxyConfig};
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct FaultProxyArgs {
    /// TOML file whose `[fault_proxy]` section lists proxies and toxics; flags override it.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the control API (Toxiproxy's port is 8474); port 0 picks a free one. Beyond
    /// loopback a token is required.
    #[arg(long, env = "SWITCHYARD_FAULT_PROXY_LISTEN")]
    listen: Option<String>,
    /// File holding the bearer token the control API requires (or set
    /// SWITCHYARD_FAULT_PROXY_TOKEN). Required when --listen is not a loopback address.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A network proxies may relay to, as CIDR (repeat; adds to allow_upstream in the config).
    /// When none is given anywhere, only loopback upstreams are allowed.
    #[arg(long = "allow-upstream", value_name = "CIDR")]
    allow_upstream: Vec<Cidr>,
    /// A proxy as NAME=LISTEN=UPSTREAM (repeat), e.g.
    /// `--proxy store-eu=127.0.0.1:21000=127.0.0.1:8001`.
    #[arg(long = "proxy", value_name = "NAME=LISTEN=UPSTREAM", value_parser = parse_proxy)]
    proxies: Vec<ProxyConfig>,
    /// Seed for jitter, slicing and toxicity draws (same seed, same choices); default: the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Open connections per proxy; more are closed at once.
    #[arg(long)]
    connections_max: Option<u64>,
    /// Read buffer per direction of a connection, in bytes.
    #[arg(long)]
    buffer_bytes: Option<u64>,
    /// Once every proxy listens, write the control API's address (`IP:PORT`) to this file.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn parse_proxy(text: &str) -> Result<ProxyConfig, String> {
    let parts: Vec<&str> = text.splitn(3, '=').collect();
    let [name, listen, upstream] = parts.as_slice() else {
        return Err(format!(
            "'{text}' is not NAME=LISTEN=UPSTREAM; write it like store-eu=127.0.0.1:21000=127.0.0.1:8001"
        ));
    };
    Ok(ProxyConfig {
        name: name.to_string(),
        listen: listen.to_string(),
        upstream: upstream.to_string(),
        enabled: true,
        toxics: Vec::new(),
    })
}

pub async fn run(args: FaultProxyArgs) -> anyhow::Result<()> {
    let token = crate::read_token(
        args.token_file.as_deref(),
        faultproxy::access::TOKEN_ENV,
        "the fault proxy's token is empty; put a secret in the token file (e.g. `openssl rand -hex 32`)",
    )?;
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
            faultproxy::config::from_toml(&text, &path.display().to_string())?
        }
        None => FaultProxyConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(value) = args.connections_max {
        config.connections_max =
            ConnectionsMax::try_from(value).map_err(|e| anyhow::anyhow!("--connections-max: {e}"))?;
    }
    if let Some(value) = args.buffer_bytes {
        config.buffer_bytes = BufferBytes::try_from(value).map_err(|e| anyhow::anyhow!("--buffer-bytes: {e}"))?;
    }
    config.allow_upstream.extend(args.allow_upstream);
    for proxy in args.proxies {
        if config.proxies.iter().any(|p| p.name == proxy.name) {
            bail!("proxy '{}' is given twice; give each name once", proxy.name);
        }
        config.proxies.push(proxy);
    }
    let seed = args.seed.or(config.seed).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let listener = TcpListener::bind(config.listen.as_str()).await.with_context(|| {
        format!(
            "listen on {} (is the port in use? pick another with --listen)",
            config.listen
        )
    })?;
    let address = listener.local_addr().context("read the bound address")?;
    faultproxy::access::check_exposure(address, token.as_deref())?;
    let registry = faultproxy::start(&config, seed).await.context("start the proxies")?;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, address.to_string()).with_context(|| format!("write ready file {}", path.display()))?;
    }
    tracing::info!(%address, seed, proxies = config.proxies.len(), allow_upstream = %config.allow_list().describe(),
        token = token.is_some(), "fault proxy control API listening");
    faultproxy::api::serve_with_token(listener, Arc::clone(&registry), token, crate::shutdown_signal())
        .await
        .context("serve the control API")?;
    registry.stop_all().await;
    tracing::info!("fault proxy stopped");
    Ok(())
}
