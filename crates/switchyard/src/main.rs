//! `switchyard`: the one binary. This crate only parses arguments, sets up logging and calls
//! library entry points; it holds no logic of its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use dynamo_protocol::sigv4::Credentials;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Self-hosted multi-region disaster recovery in one binary"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SWITCHYARD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the DynamoDB API for one region, with data on disk.
    ///
    /// Existing DynamoDB code works unchanged: point boto3, the AWS CLI or an AWS SDK at
    /// `--endpoint-url http://LISTEN`. Every acknowledged write is durable (fsync, with group
    /// commit). Without --credentials any signature is accepted, so the store then refuses to
    /// listen anywhere but loopback.
    Store(StoreArgs),
    /// The benchmark ceiling: a bare HTTP server on the store's stack answering 200 to anything.
    #[command(hide = true)]
    BenchCeiling(CeilingArgs),
}

#[derive(clap::Args)]
struct CeilingArgs {
    #[arg(long, default_value = "127.0.0.1:8099")]
    listen: SocketAddr,
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct StoreArgs {
    /// The region this store serves (shown in ARNs and used by replication).
    #[arg(long, env = "SWITCHYARD_REGION", default_value = "us-east-1")]
    region: String,
    /// Address to listen on; port 0 picks a free port (see --ready-file).
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Directory holding the database file; created if missing.
    #[arg(long, env = "SWITCHYARD_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// File of `ACCESS_KEY_ID SECRET` lines; when given, requests must be SigV4-signed by one.
    #[arg(long, env = "SWITCHYARD_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Once accepting connections, write the bound address (`IP:PORT`) to this file.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match cli.command {
        Command::Store(args) => runtime.block_on(run_store(args)),
        Command::BenchCeiling(args) => runtime.block_on(run_ceiling(args)),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run_store(args: StoreArgs) -> anyhow::Result<()> {
    let credentials = match &args.credentials {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("read credentials file {}", path.display()))?;
            let credentials = Credentials::parse_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if credentials.is_empty() {
                bail!(
                    "{} holds no credentials: add lines of `ACCESS_KEY_ID SECRET`",
                    path.display()
                );
            }
            Some(credentials)
        }
        None => None,
    };
    store::server::check_exposure(args.listen, credentials.as_ref())?;
    let engine = store::Engine::open(&args.data_dir, &args.region, Arc::new(store::SystemClock))?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "listen on {} (is the port in use? pick another with --listen)",
            args.listen
        )
    })?;
    let address = listener.local_addr().context("read the bound address")?;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, address.to_string()).with_context(|| format!("write ready file {}", path.display()))?;
    }
    tracing::info!(%address, region = %args.region, data_dir = %args.data_dir.display(), authenticated = credentials.is_some(), "store listening");
    store::server::run(
        listener,
        engine,
        store::server::ServerConfig { credentials },
        shutdown_signal(),
    )
    .await
    .context("serve the API")?;
    tracing::info!("store stopped");
    Ok(())
}

async fn run_ceiling(args: CeilingArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, listener.local_addr()?.to_string())
            .with_context(|| format!("write ready file {}", path.display()))?;
    }
    store::server::run_ceiling(listener, shutdown_signal())
        .await
        .context("serve the ceiling")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
