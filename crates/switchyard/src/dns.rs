//! `switchyard dns`: argument parsing and socket binding only; the server lives in the `dns` crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, UdpSocket};

/// Tries at binding UDP and TCP to the same free port when the port is 0.
const SAME_PORT_ATTEMPTS_MAX: usize = 20;

#[derive(clap::Args)]
pub(crate) struct DnsArgs {
    /// The deployment TOML; only its [dns] section is read (see docs/examples/dns.toml). Edits
    /// are picked up on SIGHUP and by polling; a bad edit is logged and the old zones keep serving.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: PathBuf,
    /// UDP and TCP address to answer on (overrides dns.listen); port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the admin API the controller pushes health to (overrides dns.admin_listen).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// File holding the bearer token required on admin PUTs (or set SWITCHYARD_CONTROL_TOKEN).
    /// Without a token the admin API only listens on loopback.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Directory keeping the last pushed health view, so a restart answers as before (overrides
    /// dns.state_dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Once answering, write the DNS address (`IP:PORT`) and on a second line the admin API's.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Seed of the randomness of weighted and multivalue answers (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// UDP worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    udp_workers: usize,
    #[command(flatten)]
    tls: crate::TlsArgs,
}

async fn bind_dns(address: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let hint = || format!("listen on {address} (is the port in use? pick another with --listen)");
    for _ in 0..SAME_PORT_ATTEMPTS_MAX {
        // One socket per UDP worker on this address (SO_REUSEPORT); the port must be free.
        let udp = dns::bind_udp(address)
            .and_then(|socket| {
                socket.set_nonblocking(true)?;
                UdpSocket::from_std(socket)
            })
            .with_context(hint)?;
        let bound = udp.local_addr().context("read the bound UDP address")?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(_) if address.port() == 0 => continue,
            Err(e) => return Err(e).with_context(hint),
        }
    }
    bail!("found no port free for both UDP and TCP on {address}; pass --listen with a fixed port")
}

pub(crate) async fn run_dns(args: DnsArgs) -> anyhow::Result<()> {
    let config = dns::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = crate::read_token(
        args.token_file.as_deref(),
        "SWITCHYARD_CONTROL_TOKEN",
        crate::EMPTY_CONTROL_TOKEN,
    )?;
    let listen = args.listen.unwrap_or(config.listen);
    let admin_listen = args.admin_listen.unwrap_or(config.admin_listen);
    dns::server::check_exposure(admin_listen, token.as_deref())?;
    let (udp, tcp) = bind_dns(listen).await?;
    let admin = TcpListener::bind(admin_listen).await.with_context(|| {
        format!("listen on {admin_listen} for the admin API (is the port in use? pick another with --admin-listen)")
    })?;
    let dns_address = udp.local_addr().context("read the bound address")?;
    let admin_address = admin.local_addr().context("read the bound admin address")?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let zones = config.zones.iter().count();
    let options = dns::Options {
        token,
        state_dir: args.state_dir.or(config.state_dir),
        config_path: Some(args.config.clone()),
        reload_interval_ms: config.reload_interval_ms,
        udp_workers: args.udp_workers,
        seed,
        limits: config.limits,
        admin_tls: args.tls.load("dns-admin")?,
    };
    let server = dns::run(
        dns::Sockets { udp, tcp, admin },
        config.zones,
        options,
        crate::shutdown_signal(),
    );
    // Take over SIGHUP before announcing readiness: from here on it reloads the zones (in the
    // server's reloader) instead of terminating the process.
    #[cfg(unix)]
    let _hangup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("install the SIGHUP handler")?;
    tracing::info!(dns = %dns_address, admin = %admin_address, zones, "dns listening");
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{dns_address}\n{admin_address}\n"))
            .with_context(|| format!("write ready file {}", path.display()))?;
    }
    server.await.context("serve DNS")?;
    tracing::info!("dns stopped");
    Ok(())
}
