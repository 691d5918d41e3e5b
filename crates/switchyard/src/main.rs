//! `switchyard`: the one binary. This crate only parses arguments, sets up logging and calls
//! library entry points; it holds no logic of its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use dynamo_protocol::sigv4::Credentials;
use tokio::net::TcpListener;

/// jemalloc instead of glibc's malloc: after a burst (many large request bodies at once) glibc
/// keeps the freed memory in its arenas for good; jemalloc, with its background thread turned
/// on at start (`return_memory_after_bursts`), gives freed pages back to the system on its decay
/// schedule (about 10 s), idle or not. `test_store_limits.py` checks it against the real binary.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Turns on jemalloc's background purging thread; without it freed pages go back to the
/// system only when the process allocates again, so an idle server would keep a burst's peak.
fn return_memory_after_bursts() {
    if let Err(error) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!(
            "switchyard: could not start the allocator's background thread ({error}): memory freed after a burst returns to the system only as the process keeps allocating"
        );
    }
}

mod lab;
mod lock;
mod media;

mod agent;
#[cfg(feature = "aws")]
mod aws_lag;
mod demo_app;

mod controller;
mod fault_proxy;
mod guard;

mod bench;
mod dns;
mod drill;
mod proxy;
mod runbook;
mod ssm_pointer;

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
    /// PEM file of a private CA that Switchyard's own HTTPS clients trust besides the public
    /// roots: the CLI, agents and drills reaching an https:// controller, the controller
    /// reaching an https:// DNS admin API or webhook.
    #[arg(long, global = true, value_name = "FILE", env = "SWITCHYARD_CA_FILE")]
    ca_file: Option<PathBuf>,
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
    Store(Box<StoreArgs>),
    /// A remote vantage point: fetches its checks from the controller, probes them (HTTP, TCP,
    /// DNS, DynamoDB, SQL, Redis) with rise/fall, and reports to the controller, whose quorum
    /// over vantage points decides whether a region is down.
    Agent(agent::AgentArgs),
    /// The benchmark ceiling: a bare HTTP server on the store's stack answering 200 to anything.
    #[command(hide = true)]
    BenchCeiling(CeilingArgs),
    /// The whole system on one machine: stores with a global table, demo shops behind load
    /// balancers, DNS, the controller with three agents, and a fault proxy on every link.
    ///
    /// Components run as child processes of this binary on loopback, with state under --dir;
    /// Ctrl-C stops them all. `--status` checks a running lab.
    Lab(lab::LabArgs),
    /// The demo shop: products, cart, orders kept in the regional store; follows the
    /// active-region pointer for writes.
    ///
    /// The stand-in for a Magento or WooCommerce shop in the lab and in drills: an HTML page
    /// and a JSON API, with a /health that checks the store and the pointer.
    DemoApp(demo_app::DemoAppArgs),
    /// A TCP fault-injection proxy with Toxiproxy's toxics and control API.
    ///
    /// Named proxies (listen → upstream) get toxics per direction: latency and jitter,
    /// bandwidth, timeout (blackhole), reset_peer, slicer, limit_data, slow_close; a disabled
    /// proxy refuses connections. Drive it with Toxiproxy's HTTP API on --listen.
    FaultProxy(fault_proxy::FaultProxyArgs),
    /// Run the regional health-checking HTTP load balancer (HTTP/1.1 and h2c) from the [proxy]
    /// section of the config: round robin or least connections, weights, backup servers,
    /// HAProxy-style active checks (inter, fastinter, downinter, rise, fall) and passive checks,
    /// retries on another server, slow start, drain, a runtime API, /stats and /metrics.
    Proxy(proxy::ProxyArgs),
    /// Talk to a running proxy's runtime API: list servers, or drain / ready / maint one.
    ProxyCtl(proxy::ProxyCtlArgs),
    /// Serve authoritative DNS from the [dns] section of the config, with Route 53-style
    /// failover, weighted and multivalue records driven by the health the controller pushes to
    /// the admin API (PUT /v1/health, PUT /v1/txt), over UDP and TCP, with /metrics.
    Dns(dns::DnsArgs),
    /// The failover controller: aggregates health from every vantage point, decides failover
    /// and failback, runs the runbook with fencing generations, keeps the audit log, and serves
    /// the control API and the active-region pointer (see docs/examples/switchyard.toml).
    Controller(controller::ControllerArgs),
    /// Check a configuration file (`config check FILE`): the controller's, or a store's, DNS,
    /// proxy, fault proxy or drill targets file, told apart by its sections.
    Config(controller::ConfigArgs),
    /// The failover and failback procedure as a document (`runbook show --config FILE [--html]`).
    Runbook(runbook::RunbookArgs),
    /// Make credentials: `token new --role agent|operator|read|member|dns --name NAME` prints a new
    /// token and the config snippet (with its SHA-256) that accepts it.
    Token(controller::TokenArgs),
    /// Show the controller's view: regions, vantage points, generation, and why it waits
    /// (or, with `--lab DIR`, whether every component of a running lab is up).
    Status(controller::StatusArgs),
    /// Planned move of the active region to --to REGION (it becomes the preferred region).
    Switchover(controller::SwitchoverArgs),
    /// Fail over now to the best other region.
    Failover(controller::FailoverArgs),
    /// Move back to the home (highest-priority) region if it is up and caught up.
    Failback(controller::ManualArgs),
    /// Pause automatic failover and failback (manual commands still work).
    Pause(controller::ManualArgs),
    /// Resume automation (also clears a fence after a newer controller was seen).
    Resume(controller::ManualArgs),
    /// Acknowledge alerts and reset the failovers-per-hour limit.
    Acknowledge(controller::ManualArgs),
    /// The active-region pointer (`pointer watch --write-env FILE --exec CMD`).
    Pointer(controller::PointerArgs),
    /// Run a job (cron) only in the active region and under a fenced lease
    /// (`lock run --name NAME -- CMD...`).
    Lock(lock::LockArgs),
    /// Fence this region's database primaries when the controller makes another region active
    /// (and, with `[guard] isolation_fence_ms`, when no controller member has been heard for
    /// that long): one guard per region, beside its databases (`guard --config FILE --region
    /// NAME --controller URL[,URL...]`).
    ///
    /// A failover that cannot reach the old primary (cut off from the controller, not from its
    /// applications) leaves it writable; the guard, on its side of the cut, fences it as the
    /// promote steps would (MySQL/MariaDB read_only, PostgreSQL default_transaction_read_only,
    /// client connections ended; Redis writes paused, renewed while the fence holds).
    Guard(guard::GuardArgs),
    /// Copy product images and uploads to the standby regions, or measure what they lack
    /// (`media sync|lag --config FILE`), with the config's `media_sync` steps (rsync or S3).
    Media(media::MediaArgs),
    /// Benchmarks that need Switchyard's own load generator (results go to BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Run a disaster-recovery drill: inject a scenario's faults into a running lab (--lab DIR)
    /// or deployment (--targets FILE) while a workload drives the shop through DNS and writes
    /// to the global table; report RTO, RPO (Jepsen-style set check), false failovers,
    /// convergence and failback. Exits non-zero when an expectation fails; Ctrl-C heals the
    /// faults it injected.
    Drill(drill::DrillArgs),
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
    /// A file whose `[store]` section sets any of the options below, by their names with `_`
    /// (`region`, `listen`, `data_dir`, `backup_dir`, `credentials`, `tls_cert`, `tls_key`,
    /// `peer_ca`, `peer_client_ca`, `peer_client_cert`, `peer_client_key`, `connections_max`,
    /// `connections_per_client_max`, `header_read_timeout_ms`, `body_read_timeout_ms`,
    /// `idle_timeout_ms`, `buffered_body_bytes_max`, `replication_key_file`,
    /// `replication_backlog_bytes_max`, `clock_offset_alarm_ms`, `clock_offset_max_ms`,
    /// `disk_free_bytes_min`, `disk_reserve_bytes`, `cache_bytes`, `write_ahead_log`,
    /// `stream_retention_ms`, `stream_shard_age_ms`, `stream_shard_records_max`,
    /// `pitr_undo_bytes_max`, `pitr_restorable_lag_ms`, and `[store.peers]` as REGION = "URL"
    /// lines); flags and environment variables override it. See the README.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// The region this store serves (shown in ARNs and used by replication) [default: us-east-1].
    #[arg(long, env = "SWITCHYARD_REGION")]
    region: Option<String>,
    /// Address to listen on; port 0 picks a free port (see --ready-file) [default: 127.0.0.1:8000].
    #[arg(long, env = "SWITCHYARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory holding the database file; created if missing [default: ./data].
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Directory holding on-demand backups (CreateBackup); created if missing
    /// [default: DATA_DIR/backups].
    #[arg(long, env = "SWITCHYARD_BACKUP_DIR")]
    backup_dir: Option<PathBuf>,
    /// File of `ACCESS_KEY_ID SECRET` lines; when given, requests must be SigV4-signed by one.
    #[arg(long, env = "SWITCHYARD_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Once accepting connections, write the bound address (`IP:PORT`) to this file.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Another region's store for global tables, as REGION=URL (repeat for each peer), e.g.
    /// `--peer eu-west-1=http://10.0.1.5:8000`. Needs a replication key. Given on the command
    /// line, these replace the config file's `[store.peers]`.
    #[arg(long = "peer", value_name = "REGION=URL", value_parser = store::global::Peer::parse)]
    peers: Vec<store::global::Peer>,
    /// File holding the secret shared by all regions (at least 16 bytes); it authenticates
    /// replication traffic. Alternatively set SWITCHYARD_REPLICATION_KEY.
    #[arg(long, env = "SWITCHYARD_REPLICATION_KEY_FILE")]
    replication_key_file: Option<PathBuf>,
    /// Accept unsigned requests on a non-loopback address. Only where the network itself keeps
    /// everyone else out (a private network namespace, as `switchyard lab --netns` uses);
    /// anywhere else, pass --credentials.
    #[arg(long)]
    trusted_network: bool,
    /// Compact the database file and exit, without serving: the space of deleted items and
    /// tables goes back to the filesystem (the file never shrinks while the store runs; freed
    /// space is reused inside it). Stop the store first; it replays its write-ahead log and
    /// checkpoints before compacting, so nothing is lost, also at a full disk.
    #[arg(long)]
    compact: bool,
    /// Bytes of replication log kept for a peer that is behind (a number with B, KiB, MiB, GiB
    /// or TiB). An alarm shows in /health at 80 %; past it the log is trimmed and the peer is
    /// repaired by anti-entropy when it returns [default: 1GiB].
    #[arg(long, value_name = "BYTES", env = "SWITCHYARD_REPLICATION_BACKLOG_BYTES_MAX", value_parser = store::config::parse_bytes)]
    replication_backlog_bytes_max: Option<u64>,
    /// A peer whose clock is further off than this (milliseconds, measured from the signing
    /// times of its requests) raises an alarm in /health and /metrics [default: 500].
    #[arg(long, value_name = "MS", env = "SWITCHYARD_CLOCK_OFFSET_ALARM_MS", value_parser = clap::value_parser!(u64).range(store::config::CLOCK_OFFSET_MS_MIN..=store::config::CLOCK_OFFSET_MS_MAX))]
    clock_offset_alarm_ms: Option<u64>,
    /// Local writes are never stamped further ahead of this region's wall clock than this
    /// (milliseconds), even after a peer with a clock running ahead sent writes from its future;
    /// writes to those very items still order after them [default: 1000].
    #[arg(long, value_name = "MS", env = "SWITCHYARD_CLOCK_OFFSET_MAX_MS", value_parser = clap::value_parser!(u64).range(store::config::CLOCK_OFFSET_MS_MIN..=store::config::CLOCK_OFFSET_MS_MAX))]
    clock_offset_max_ms: Option<u64>,
    /// Below this much free space on the data directory's filesystem new writes are refused
    /// (deletes, TTL expiry and replicated tombstones still commit) until space returns; 0 turns
    /// it off [default: the larger of 1GiB and 5 % of the filesystem].
    #[arg(long, value_name = "BYTES", env = "SWITCHYARD_DISK_FREE_BYTES_MIN", value_parser = store::config::parse_disk_free_bytes_min)]
    disk_free_bytes_min: Option<u64>,
    /// Space preallocated in the data directory and released below the watermark, so deletes
    /// can commit on a full disk; 0 keeps none [default: 64MiB].
    #[arg(long, value_name = "BYTES", env = "SWITCHYARD_DISK_RESERVE_BYTES", value_parser = store::config::parse_disk_reserve_bytes)]
    disk_reserve_bytes: Option<u64>,
    /// Memory for the database's page cache: the store's resident memory grows to about this
    /// much beyond its working set; a small machine wants less (at least 4MiB) [default: 1GiB].
    #[arg(long, value_name = "BYTES", env = "SWITCHYARD_CACHE_BYTES", value_parser = store::config::parse_cache_bytes)]
    cache_bytes: Option<u64>,
    /// Commit writes through a write-ahead log (store.wal): one sequential append and sync per
    /// batch, the database file synced at checkpoints. PutItem throughput 1.4-2x, and a start
    /// after a crash replays at most 8 MiB of log instead of walking the whole file (~30 s at 10M
    /// items); but the writer waits while each checkpoint writes its pages (sized to ~20 ms), so
    /// under sustained writes PutItem's p99 rises to about 20-35 ms (BENCHMARKS.md). BOOL:
    /// true/false, 1/0, yes/no, on/off.
    /// [default: false]
    #[arg(
        long,
        value_name = "BOOL",
        env = "SWITCHYARD_WRITE_AHEAD_LOG",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    write_ahead_log: Option<bool>,
    #[command(flatten)]
    limits: ListenerLimitArgs,
    /// PEM certificate chain: with --tls-key, the API and replication are served over HTTPS.
    /// Both files are read again on SIGHUP (open connections keep theirs).
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM file of the CA certificates that sign the peers' certificates: `https://` peers are
    /// verified against it (without it, against the public Mozilla roots).
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_PEER_CA")]
    peer_ca: Option<PathBuf>,
    /// Mutual TLS between regions: PEM file of the CA that signs the peers' client
    /// certificates. Replication requests must then present one (DynamoDB API clients need
    /// none). Needs --tls-cert; reloaded on SIGHUP with it.
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_PEER_CLIENT_CA", requires = "tls_cert")]
    peer_client_ca: Option<PathBuf>,
    /// PEM client certificate this store presents to `https://` peers that ask for one
    /// (with --peer-client-key).
    #[arg(
        long,
        value_name = "FILE",
        env = "SWITCHYARD_PEER_CLIENT_CERT",
        requires = "peer_client_key"
    )]
    peer_client_cert: Option<PathBuf>,
    /// PEM private key of --peer-client-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "SWITCHYARD_PEER_CLIENT_KEY",
        requires = "peer_client_cert"
    )]
    peer_client_key: Option<PathBuf>,
}

/// HTTPS for an HTTP listener of `controller`, `dns` (admin API) or `proxy` (admin API).
#[derive(clap::Args)]
pub(crate) struct TlsArgs {
    /// PEM certificate chain: with --tls-key, this API is served over HTTPS. Both files are
    /// read again on SIGHUP (open connections keep theirs). Clients then use https:// URLs and
    /// trust the signing CA with --ca-file.
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// Reads the certificate and key (and reloads them on SIGHUP); `None` without them.
    pub(crate) fn load(&self, listener: &'static str) -> anyhow::Result<Option<Arc<common::http::Tls>>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let tls = Arc::new(
            common::http::Tls::load(common::http::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
            })
            .map_err(|message| anyhow::anyhow!("--tls-cert / --tls-key: {message}"))?,
        );
        tokio::spawn(common::http::reload_on_hangup(Arc::clone(&tls), listener));
        Ok(Some(tls))
    }
}

/// Limits applied to every connection before authentication (see the README's security model).
#[derive(clap::Args)]
struct ListenerLimitArgs {
    /// Open connections at most; a new one beyond closes the keep-alive connection idle the
    /// longest, or, with none idle, is answered 503 and closed [default: 1024].
    #[arg(long, value_name = "N", env = "SWITCHYARD_CONNECTIONS_MAX")]
    connections_max: Option<usize>,
    /// Open connections from one client IP address (IPv6: its /64) at most [default: 256].
    #[arg(long, value_name = "N", env = "SWITCHYARD_CONNECTIONS_PER_CLIENT_MAX")]
    connections_per_client_max: Option<usize>,
    /// Milliseconds a client may take to send a request head, from its first byte [default: 10000].
    #[arg(long, value_name = "MS", env = "SWITCHYARD_HEADER_READ_TIMEOUT_MS")]
    header_read_timeout_ms: Option<u64>,
    /// Milliseconds a client may take to send a request body, from the end of its head
    /// [default: 60000].
    #[arg(long, value_name = "MS", env = "SWITCHYARD_BODY_READ_TIMEOUT_MS")]
    body_read_timeout_ms: Option<u64>,
    /// Milliseconds a keep-alive connection may wait for its next request [default: 60000].
    #[arg(long, value_name = "MS", env = "SWITCHYARD_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: Option<u64>,
    /// Request body bytes held in memory at once across all connections (a number with B,
    /// KiB, MiB or GiB); further uploads wait, unread, for their share [default: 32MiB].
    #[arg(long, value_name = "BYTES", env = "SWITCHYARD_BUFFERED_BODY_BYTES_MAX", value_parser = store::config::parse_bytes)]
    buffered_body_bytes_max: Option<u64>,
}

impl ListenerLimitArgs {
    fn overrides(self) -> store::settings::LimitOverrides {
        store::settings::LimitOverrides {
            connections_max: self.connections_max,
            connections_per_client_max: self.connections_per_client_max,
            header_read_timeout_ms: self.header_read_timeout_ms,
            body_read_timeout_ms: self.body_read_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            buffered_body_bytes_max: self.buffered_body_bytes_max,
        }
    }
}

impl StoreArgs {
    /// The flags and environment variables, for `store::settings::Settings::merge`.
    fn overrides(self) -> store::settings::Overrides {
        store::settings::Overrides {
            region: self.region,
            listen: self.listen,
            data_dir: self.data_dir,
            backup_dir: self.backup_dir,
            credentials: self.credentials,
            peers: self.peers,
            replication_key_file: self.replication_key_file,
            replication_backlog_bytes_max: self.replication_backlog_bytes_max,
            clock_offset_alarm_ms: self.clock_offset_alarm_ms,
            clock_offset_max_ms: self.clock_offset_max_ms,
            disk_free_bytes_min: self.disk_free_bytes_min,
            disk_reserve_bytes: self.disk_reserve_bytes,
            cache_bytes: self.cache_bytes,
            write_ahead_log: self.write_ahead_log,
            limits: self.limits.overrides(),
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            peer_ca: self.peer_ca,
            peer_client_ca: self.peer_client_ca,
            peer_client_cert: self.peer_client_cert,
            peer_client_key: self.peer_client_key,
        }
    }
}

/// The CA of a `--tls` lab named by the command's `--lab DIR`, when it has one.
fn lab_ca(command: &Command) -> Option<PathBuf> {
    let dir = match command {
        Command::Drill(args) => args.lab_dir()?,
        Command::Status(args) => args.lab_dir()?,
        _ => return None,
    };
    let ca = common::devca::DevCaFiles::in_dir(&::lab::plan::tls_dir(dir)).ca_cert;
    ca.is_file().then_some(ca)
}

/// Errors are printed as anyhow prints them (the message, then its causes), without the
/// backtrace anyhow adds when `RUST_BACKTRACE` is set: a user who keeps that set for panics
/// gets a page of frames under every wrong flag or unreachable address otherwise.
fn main() {
    if let Err(error) = run() {
        eprintln!("{}", error_report(&error));
        std::process::exit(1);
    }
}

/// `Error: message`, then `Caused by:` and the causes (numbered when there are several).
fn error_report(error: &anyhow::Error) -> String {
    let mut out = format!("Error: {error}");
    // A cause that only repeats the one before it (a library wrapping its own error, whose
    // message already quotes it) is left out.
    let mut causes: Vec<String> = Vec::new();
    let mut previous = error.to_string();
    for cause in error.chain().skip(1).map(ToString::to_string) {
        if !previous.contains(&cause) {
            causes.push(cause.clone());
        }
        previous = cause;
    }
    if !causes.is_empty() {
        out.push_str("\n\nCaused by:");
        for (index, cause) in causes.iter().enumerate() {
            if causes.len() == 1 {
                out.push_str(&format!("\n    {cause}"));
            } else {
                out.push_str(&format!("\n    {index}: {cause}"));
            }
        }
    }
    out
}

fn run() -> anyhow::Result<()> {
    return_memory_after_bursts();
    let cli = Cli::parse();
    if let Command::Lock(args) = &cli.command
        && let Some(status) = lock::exec_guard(args)
    {
        std::process::exit(status);
    }
    // A quiet drill prints its one line; its log says only what went wrong.
    let quiet = matches!(&cli.command, Command::Drill(args) if args.quiet());
    init_logging(
        cli.log_format,
        if quiet { QUIET_LOG_FILTER } else { DEFAULT_LOG_FILTER },
    );
    if let Some(path) = &cli.ca_file {
        common::tls_client::set_process_ca(Some(path)).map_err(|message| anyhow::anyhow!("--ca-file: {message}"))?;
    } else if let Some(ca) = lab_ca(&cli.command) {
        // A `--tls` lab's commands (drill --lab, status --lab) trust the lab's own CA.
        common::tls_client::set_process_ca(Some(&ca))
            .map_err(|message| anyhow::anyhow!("{}: {message}", ca.display()))?;
    }
    ::lab::supervisor::exit_with_supervisor();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    // Probes of `dynamodb` checks with `cloudwatch_lag` read AWS through it (controller, agent).
    #[cfg(feature = "aws")]
    aws_lag::install();
    match cli.command {
        Command::Store(args) => runtime.block_on(run_store(*args)),
        Command::Agent(args) => runtime.block_on(agent::run_agent(args)),
        Command::BenchCeiling(args) => runtime.block_on(run_ceiling(args)),
        Command::Lab(args) => runtime.block_on(lab::run(args)),
        Command::DemoApp(args) => runtime.block_on(demo_app::run(args)),
        Command::FaultProxy(args) => runtime.block_on(fault_proxy::run(args)),
        Command::Proxy(args) => runtime.block_on(proxy::run_proxy(args)),
        Command::ProxyCtl(args) => runtime.block_on(proxy::run_proxy_ctl(args)),
        Command::Dns(args) => runtime.block_on(dns::run_dns(args)),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Drill(args) => runtime.block_on(drill::run(args)),
        Command::Controller(args) => {
            let result = runtime.block_on(controller::run_controller(args));
            // Dropping the runtime drops a runbook step still running: a command's process
            // group gets SIGTERM; wait for it to be gone (SIGKILL after the grace).
            drop(runtime);
            ::controller::runbook::wait_for_stopped_commands();
            result
        }
        Command::Config(args) => controller::run_config(args),
        Command::Runbook(args) => runbook::run(args),
        Command::Media(args) => runtime.block_on(media::run(args)),
        Command::Token(args) => controller::run_token(args),
        Command::Status(args) => runtime.block_on(controller::run_status(args)),
        Command::Switchover(args) => runtime.block_on(controller::run_switchover(args)),
        Command::Failover(args) => runtime.block_on(controller::run_failover(args)),
        Command::Failback(args) => runtime.block_on(controller::run_manual(args, "/v1/failback")),
        Command::Pause(args) => runtime.block_on(controller::run_manual(args, "/v1/pause")),
        Command::Resume(args) => runtime.block_on(controller::run_manual(args, "/v1/resume")),
        Command::Acknowledge(args) => runtime.block_on(controller::run_manual(args, "/v1/acknowledge")),
        Command::Pointer(args) => runtime.block_on(controller::run_pointer(args)),
        Command::Guard(args) => runtime.block_on(guard::run(args)),
        Command::Lock(args) => {
            let status = runtime.block_on(lock::run(args))?;
            drop(runtime);
            std::process::exit(status)
        }
    }
}

/// ANSI colours only on a terminal, and never with `NO_COLOR` set to anything
/// (<https://no-color.org>): logs redirected to a file or a journal stay plain text.
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// The log filter without `SWITCHYARD_LOG`: info, but the AWS SDK's credential chain says at
/// info level which profile it read each time a client is built (every step, every drill
/// reading), which buries what Switchyard says; its warnings and errors stay.
const DEFAULT_LOG_FILTER: &str = "info,aws_config=warn";
/// `drill --quiet`: warnings and errors only (SWITCHYARD_LOG still overrides).
const QUIET_LOG_FILTER: &str = "warn";

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_on_stderr())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run_store(args: StoreArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => store::config::load(path)?,
        None => store::config::StoreFileConfig::default(),
    };
    let ready_file = args.ready_file.clone();
    let trusted_network = args.trusted_network;
    let compact = args.compact;
    let args = store::settings::Settings::merge(file, args.overrides())?;
    if compact {
        return compact_store(&args).await;
    }
    let StoreFiles {
        credentials,
        replication,
        tls,
    } = store_files(&args, trusted_network)?;
    if trusted_network && credentials.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(address = %args.listen, "--trusted-network: unsigned requests accepted on a non-loopback address; the network must keep everyone else out");
    }
    let engine = store::Engine::open_with(
        &args.data_dir,
        &args.region,
        Arc::new(store::SystemClock),
        store::engine::EngineOptions {
            disk: args.disk,
            faults: None,
            backup_dir: args.backup_dir.clone(),
            // `parse_cache_bytes` refused anything this machine cannot address.
            cache_bytes: usize::try_from(args.cache_bytes).ok(),
            no_idle_checkpoints: false,
            write_ahead_log: args.write_ahead_log,
        },
    )?;
    // Engine::open_with read the SWITCHYARD_STREAM_* variables; the file's keys go under them.
    engine.set_stream_limits(
        store::streams::StreamLimits::from_file_and_lookup(&args.stream_limits, |name| std::env::var(name).ok())
            .map_err(anyhow::Error::msg)?,
    );
    engine.set_pitr_limits(
        store::engine::PitrLimits::from_file_and_lookup(&args.pitr_limits, |name| std::env::var(name).ok())
            .map_err(anyhow::Error::msg)?,
    );
    let listener = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "listen on {} (is the port in use? pick another with --listen)",
            args.listen
        )
    })?;
    let address = listener.local_addr().context("read the bound address")?;
    if let Some(path) = &ready_file {
        std::fs::write(path, address.to_string()).with_context(|| format!("write ready file {}", path.display()))?;
    }
    tracing::info!(%address, region = %args.region, data_dir = %args.data_dir.display(), authenticated = credentials.is_some(), "store listening");
    if let Some(tls) = &tls {
        tokio::spawn(common::http::reload_on_hangup(Arc::clone(tls), "store"));
    }
    store::server::run_with_limits(
        listener,
        engine,
        store::server::ServerConfig {
            credentials,
            replication,
        },
        args.limits,
        tls,
        shutdown_signal(),
    )
    .await
    .context("serve the API")?;
    tracing::info!("store stopped");
    Ok(())
}

/// What `switchyard store` reads and refuses before it opens its database: the credentials
/// file, an address open to the network without them, the replication key and peers, and the
/// TLS files. `config check` runs it too, so a file it passes is one the store starts with.
pub(crate) struct StoreFiles {
    pub(crate) credentials: Option<Credentials>,
    pub(crate) replication: Option<store::global::ReplicationConfig>,
    pub(crate) tls: Option<Arc<common::http::Tls>>,
}

pub(crate) fn store_files(args: &store::settings::Settings, trusted_network: bool) -> anyhow::Result<StoreFiles> {
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
    if !(trusted_network && credentials.is_none() && !args.listen.ip().is_loopback()) {
        store::server::check_exposure(args.listen, credentials.as_ref())?;
    }
    let replication = args.replication(std::env::var("SWITCHYARD_REPLICATION_KEY").ok())?;
    let tls = match &args.tls {
        Some(files) => Some(Arc::new(
            common::http::Tls::load(files.clone()).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    Ok(StoreFiles {
        credentials,
        replication,
        tls,
    })
}

/// `switchyard store --compact`.
async fn compact_store(args: &store::settings::Settings) -> anyhow::Result<()> {
    let path = args.data_dir.join("store.redb");
    eprintln!("compacting {} (the store must not be running)...", path.display());
    let report = store::engine::compact(
        &args.data_dir,
        &args.region,
        store::engine::EngineOptions {
            // No watermark and no reserve: compacting is how a full disk gets space back.
            disk: store::disk::DiskSettings {
                free_bytes_min: Some(0),
                reserve_bytes: 0,
            },
            faults: None,
            backup_dir: args.backup_dir.clone(),
            cache_bytes: usize::try_from(args.cache_bytes).ok(),
            no_idle_checkpoints: true,
            write_ahead_log: args.write_ahead_log,
        },
    )
    .await
    .with_context(|| format!("compact {}", path.display()))?;
    let shown = common::text::shown_bytes;
    println!(
        "compacted {}: {} -> {} ({} given back to the filesystem) in {:.1} s",
        path.display(),
        shown(report.bytes_before),
        shown(report.bytes_after),
        shown(report.bytes_before.saturating_sub(report.bytes_after)),
        report.took_ms as f64 / 1000.0
    );
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

pub(crate) async fn shutdown_signal() {
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

/// What an empty admin token (DNS server, load balancer) is told.
pub(crate) const EMPTY_CONTROL_TOKEN: &str =
    "the control token is empty; put a secret in the token file (e.g. `openssl rand -hex 32`)";

/// The bearer token from `file` (trimmed), or else from the environment variable `env`;
/// `None` without either. An empty token is refused with `empty`, which names the fix.
pub(crate) fn read_token(file: Option<&std::path::Path>, env: &str, empty: &str) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(path) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("read token file {}", path.display()))?)
        }
        None => std::env::var(env).ok(),
    };
    match token.map(|t| t.trim().to_owned()) {
        Some(t) if t.is_empty() => bail!("{empty}"),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::error_report;
    use anyhow::Context as _;

    #[test]
    fn errors_print_their_causes_as_anyhow_does_without_a_backtrace() {
        let alone = anyhow::anyhow!("--ca-file: not found");
        assert_eq!(error_report(&alone), "Error: --ca-file: not found");
        let one: anyhow::Result<()> = Err(std::io::Error::other("disk full")).context("write the lab's state");
        let one = one.expect_err("an error");
        assert_eq!(
            error_report(&one),
            "Error: write the lab's state\n\nCaused by:\n    disk full"
        );
        let two = one.context("start the lab");
        assert_eq!(
            error_report(&two),
            "Error: start the lab\n\nCaused by:\n    0: write the lab's state\n    1: disk full"
        );
        // A cause that its wrapper's message already quotes is said once.
        let wrapped: anyhow::Result<()> = Err(std::io::Error::other("Database already open"))
            .context("cannot open database: Database already open; another process holds it");
        let wrapped = wrapped.expect_err("an error").context("compact the store");
        assert_eq!(
            error_report(&wrapped),
            "Error: compact the store\n\nCaused by:\n    cannot open database: Database already open; another process holds it"
        );
    }
}
