//! `switchyard proxy` and `switchyard proxy-ctl`: argument parsing only; the proxy lives in the
//! `proxy` crate.

use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub(crate) struct ProxyArgs {
    /// The deployment TOML; only its [proxy] section is read (see docs/examples/proxy.toml).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: PathBuf,
    /// File holding the bearer token of the admin API (or set SWITCHYARD_CONTROL_TOKEN). Without
    /// a token the admin API only listens on loopback.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Once accepting connections, write the proxy's address (and on a second line the admin
    /// API's) to this file.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[command(flatten)]
    tls: crate::TlsArgs,
}

#[derive(clap::Args)]
pub(crate) struct ProxyCtlArgs {
    /// The proxy's admin API, e.g. http://127.0.0.1:8404.
    #[arg(long, env = "SWITCHYARD_PROXY_ADMIN", default_value = "http://127.0.0.1:8404")]
    admin: String,
    /// File holding the admin API's bearer token (or set SWITCHYARD_CONTROL_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(clap::Subcommand)]
enum CtlAction {
    /// List servers with their status, weight, connections and counters.
    Servers,
    /// Set a server's state: drain (no new requests, in-flight finish), maint (no traffic),
    /// ready (back in rotation, with slow start).
    SetServer {
        name: String,
        #[arg(value_parser = ["drain", "ready", "maint"])]
        state: String,
    },
    /// Set a server's weight (0 to 256; 0 takes no new requests), like HAProxy's
    /// `set server NAME weight`.
    SetWeight { name: String, weight: u32 },
}

pub(crate) async fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let config = proxy::config::load(&args.config)?;
    let token = crate::read_token(
        args.token_file.as_deref(),
        "SWITCHYARD_CONTROL_TOKEN",
        crate::EMPTY_CONTROL_TOKEN,
    )?;
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "listen on {} (is the port in use? change [proxy] listen)",
            config.listen
        )
    })?;
    let address = listener.local_addr().context("read the bound address")?;
    let admin = match config.admin_listen {
        Some(admin_address) => {
            proxy::admin::check_exposure(admin_address, token.as_deref()).map_err(anyhow::Error::msg)?;
            let admin_listener = TcpListener::bind(admin_address).await.with_context(|| {
                format!("listen on {admin_address} for the admin API (change [proxy] admin_listen)")
            })?;
            Some((admin_listener, token.clone(), args.tls.load("proxy-admin")?))
        }
        None => None,
    };
    let admin_address = match &admin {
        Some((l, _, _)) => Some(l.local_addr().context("read the admin address")?),
        None => None,
    };
    if let Some(path) = &args.ready_file {
        let mut text = format!("{address}\n");
        if let Some(a) = admin_address {
            text.push_str(&format!("{a}\n"));
        }
        std::fs::write(path, text).with_context(|| format!("write ready file {}", path.display()))?;
    }
    tracing::info!(%address, admin = ?admin_address, servers = config.servers.len(), balance = ?config.balance, "proxy listening");
    proxy::run(listener, admin, config, crate::shutdown_signal())
        .await
        .context("serve the proxy")?;
    tracing::info!("proxy stopped");
    Ok(())
}

pub(crate) async fn run_proxy_ctl(args: ProxyCtlArgs) -> anyhow::Result<()> {
    let token = crate::read_token(
        args.token_file.as_deref(),
        "SWITCHYARD_CONTROL_TOKEN",
        crate::EMPTY_CONTROL_TOKEN,
    )?;
    match args.action {
        CtlAction::Servers => {
            let servers = proxy::ctl::servers(&args.admin, token.as_deref()).await?;
            if args.json {
                println!("{}", proxy::ctl::servers_json(&servers));
            } else {
                print!("{}", proxy::ctl::format_servers(&servers));
            }
        }
        CtlAction::SetServer { name, state } => {
            let body = proxy::ctl::set_server(&args.admin, token.as_deref(), &name, &state).await?;
            if args.json {
                println!("{body}");
            } else {
                println!("{name}: {state}");
            }
        }
        CtlAction::SetWeight { name, weight } => {
            let body = proxy::ctl::set_weight(&args.admin, token.as_deref(), &name, weight).await?;
            if args.json {
                println!("{body}");
            } else {
                println!("{name}: weight {weight}");
            }
        }
    }
    Ok(())
}
