//! `switchyard bench`: benchmarks that need our own load generator (results for BENCHMARKS.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// Markers around the replication section of BENCHMARKS.md, rewritten by each run.
const SECTION_BEGIN: &str = "<!-- bench-replication:begin -->";
const SECTION_END: &str = "<!-- bench-replication:end -->";

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand)]
enum Which {
    /// Global-table replication lag between real store processes on loopback, at fixed write
    /// rates and at the maximum, plus local write throughput with replication on and off.
    ///
    /// Starts `switchyard store` processes from this binary (build it with --release for
    /// meaningful numbers), writes in the first region, and for every n-th write measures the
    /// time from its acknowledgement until every other region serves it.
    Replication(ReplicationArgs),
    /// An echo server for `tunnel`: answers an HTTP/1.1 upgrade (WebSocket) with 101 and then
    /// every byte with itself; any other request (a health check) with 200. Runs until killed.
    TunnelEcho(TunnelEchoArgs),
    /// Round trips of fixed-size messages on upgraded (WebSocket) connections through a load
    /// balancer in front of `tunnel-echo`; prints one JSON line (messages per second, round-trip
    /// percentiles in microseconds). `scripts/bench-websocket.py` runs it against `switchyard
    /// proxy` and HAProxy, alternating.
    Tunnel(TunnelArgs),
}

#[derive(clap::Args)]
struct TunnelEchoArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: std::net::SocketAddr,
}

#[derive(clap::Args)]
struct TunnelArgs {
    /// The load balancer's address.
    #[arg(long)]
    target: std::net::SocketAddr,
    /// Upgraded connections, each with one message in flight.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Bytes per message (each way).
    #[arg(long, default_value_t = 128)]
    message_bytes: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Untimed round trips per connection first.
    #[arg(long, default_value_t = 200)]
    warmup_messages: usize,
}

#[derive(clap::Args)]
struct ReplicationArgs {
    /// Region counts to measure (2 to 5), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    regions: Vec<usize>,
    /// Target writes per second, comma-separated; 0 means as fast as --connections allow.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,0")]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// Most writes in flight at once.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Watch every n-th write in the other regions.
    #[arg(long, default_value_t = 20)]
    sample_every: u64,
    /// Working directory for the stores' data (wiped per run).
    #[arg(long, default_value = "target/bench/replication")]
    dir: PathBuf,
    /// Rewrite the replication section of this Markdown file with the results.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Run the writing region's store (and the store alone it is compared with) on this CPU
    /// only and the other regions' stores on the remaining CPUs (with `taskset`), as if the
    /// regions had machines of their own. Run the bench itself off this CPU too, e.g.
    /// `taskset -c 1 switchyard bench replication --origin-cpu 0`.
    #[arg(long, value_name = "CPU")]
    origin_cpu: Option<usize>,
    /// Also run every rate on a second cluster serving HTTPS with mutual TLS between regions
    /// (a CA made for the run), right after the plain cluster, and report the lag side by side
    /// with its ratio.
    #[arg(long)]
    tls: bool,
    /// Write every watched write's lag to this CSV file (regions, tls, target_rate, acked_ms
    /// since the round's start, lag_ms): a tail that comes in clusters at fixed times is a
    /// periodic stall, one spread out is the machine.
    #[arg(long, value_name = "FILE")]
    samples: Option<PathBuf>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.which {
        Which::Replication(args) => replication(args).await,
        Which::TunnelEcho(args) => {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("listen on {}", args.listen))?;
            bench::tunnel::echo_server(listener).await;
            Ok(())
        }
        Which::Tunnel(args) => tunnel(args).await,
    }
}

async fn tunnel(args: TunnelArgs) -> anyhow::Result<()> {
    let config = bench::tunnel::LoadConfig {
        target: args.target,
        connections: args.connections,
        message_bytes: args.message_bytes,
        duration: Duration::from_secs(args.duration_s.max(1)),
        warmup_messages: args.warmup_messages,
    };
    let mut result = bench::tunnel::load(&config).await?;
    let messages_per_s = result.messages as f64 / result.seconds;
    let p50 = bench::stats::quantile(&mut result.round_trips_us, 0.5).unwrap_or(0.0);
    let p99 = bench::stats::quantile(&mut result.round_trips_us, 0.99).unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({
            "messages": result.messages,
            "messages_per_s": messages_per_s,
            "p50_us": p50,
            "p99_us": p99,
            "failures": result.failures,
        })
    );
    anyhow::ensure!(result.failures == 0, "{} connections failed", result.failures);
    Ok(())
}

async fn replication(args: ReplicationArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.sample_every > 0, "--sample-every must be at least 1");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let config = bench::replication::Config {
        binary: std::env::current_exe().context("find this binary")?,
        dir: args.dir.clone(),
        region_counts: args.regions.clone(),
        rates: args.rates.clone(),
        duration: Duration::from_secs(args.duration_s),
        connections: args.connections,
        sample_every: args.sample_every,
        origin_cpu: args.origin_cpu,
        tls: args.tls,
        samples: args.samples.clone(),
    };
    let (lags, throughput) = bench::replication::run(&config, |line| eprintln!("{line}")).await?;
    let command = format!("switchyard {}", std::env::args().skip(1).collect::<Vec<_>>().join(" "));
    let report = bench::replication::report(&command, &config, &lags, &throughput);
    println!("{report}");
    if let Some(path) = &args.write {
        let document = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
        let updated = bench::replication::replace_section(
            &document,
            "Global tables: replication lag",
            SECTION_BEGIN,
            SECTION_END,
            report.trim_end(),
        );
        std::fs::write(path, updated).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
