//! Replication lag between real `switchyard store` processes on loopback.
//!
//! Lag is measured end to end, as an application would see it: a sampled write is acknowledged
//! by its origin region, then every other region is polled with a consistent GetItem until the
//! item is there; the lag is the time from the acknowledgement to the first successful read in
//! the last region to see it. Polling adds up to [`POLL_INTERVAL_MS`] plus one loopback round
//! trip to each figure, so the numbers are upper bounds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};

use crate::client::Client;
use crate::stats::quantile;

/// Pause between two reads of a sampled item in a destination region.
pub const POLL_INTERVAL_MS: u64 = 1;
/// A sampled write not visible everywhere after this long counts as unseen.
pub const VISIBILITY_DEADLINE_MS: u64 = 30_000;
/// Sampled writes being watched at once; samples beyond it are skipped (and counted).
pub const WATCHERS_MAX: usize = 64;
/// How long a store may take to start and write its ready file.
pub const START_DEADLINE_MS: u64 = 30_000;
/// Alternating rounds of the throughput comparison; the median of each side is reported.
pub const THROUGHPUT_ROUNDS: usize = 3;
/// Most regions a run starts.
pub const REGIONS_MAX: usize = 5;
/// Longest wait for the peers to apply everything before a throughput round starts.
pub const CATCH_UP_DEADLINE_MS: u64 = 300_000;
/// The benchmark's stores refuse new writes below this much free disk.
const BENCH_DISK_FREE_BYTES_MIN: &str = "256MiB";

const REPLICATION_KEY: &str = "benchmark-replication-key-0123456789abcdef";
const TABLE: &str = "lag";
const REGION_NAMES: [&str; REGIONS_MAX] = ["us-east-1", "eu-west-1", "ap-south-1", "us-west-2", "eu-central-1"];

#[derive(Clone, Debug)]
pub struct Config {
    /// The `switchyard` binary to start stores from.
    pub binary: PathBuf,
    /// Where the stores keep their data (a fresh directory per run).
    pub dir: PathBuf,
    /// Region counts to measure, each from 2 to [`REGIONS_MAX`].
    pub region_counts: Vec<usize>,
    /// Target write rates per second; 0 means as fast as `connections` allow.
    pub rates: Vec<u64>,
    pub duration: Duration,
    /// Writes in flight at once (bounded by a semaphore).
    pub connections: usize,
    /// Every n-th write is watched in the other regions.
    pub sample_every: u64,
    /// Pin the writing region's store to this CPU and the others' to the remaining CPUs.
    pub origin_cpu: Option<usize>,
    /// Also measure every rate on a second cluster serving HTTPS with mutual TLS between
    /// regions (a CA made for the run), right after the plain one, for a side-by-side ratio.
    pub tls: bool,
    /// Write every watched write's lag, with when it was acknowledged, to this CSV file: a
    /// tail that comes in clusters at fixed points (a periodic stall) shows there.
    pub samples: Option<PathBuf>,
}

/// The header of the `--samples` CSV file.
pub const SAMPLES_HEADER: &str = "regions,tls,target_rate,acked_ms,lag_ms";

/// The `taskset -c` CPU list a store of `region` runs on, if pinning.
fn cpu_list(config: &Config, region: &str) -> anyhow::Result<Option<String>> {
    let Some(origin) = config.origin_cpu else {
        return Ok(None);
    };
    // Every CPU of the machine, not only those this process may use (it may be pinned itself).
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .map(|text| text.lines().filter(|l| l.starts_with("processor")).count())
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if origin >= cpus || cpus < 2 {
        bail!(
            "--origin-cpu {origin}: this machine has CPUs 0 to {}; pinning needs at least 2",
            cpus - 1
        );
    }
    if region == REGION_NAMES[0] {
        return Ok(Some(origin.to_string()));
    }
    let others: Vec<String> = (0..cpus).filter(|c| *c != origin).map(|c| c.to_string()).collect();
    Ok(Some(others.join(",")))
}

/// One measured combination of region count and rate.
#[derive(Clone, Debug)]
pub struct LagResult {
    pub regions: usize,
    /// Measured on the HTTPS cluster (mutual TLS between regions).
    pub tls: bool,
    pub target_rate: u64,
    pub achieved_rate: f64,
    pub writes: u64,
    pub errors: u64,
    pub samples: usize,
    pub skipped_samples: u64,
    pub unseen: u64,
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    pub lag_max_ms: Option<f64>,
}

/// Local write throughput of one store with and without replication to its peers.
#[derive(Clone, Debug)]
pub struct ThroughputResult {
    pub regions: usize,
    pub standalone_rate: f64,
    pub replicated_rate: f64,
    /// Replicating with the peers paused (SIGSTOP): the origin still logs every change and
    /// ships, but the peers' apply work no longer competes for this machine's cores, as it
    /// would not with regions on separate machines.
    pub peers_paused_rate: f64,
    /// CPU time (user + system) per write, in microseconds, medians of the rounds: of the store
    /// alone; of the origin while replicating; of all its peers together, from the round's start
    /// until they have applied all of it.
    pub standalone_cpu_us: f64,
    pub origin_cpu_us: f64,
    pub peers_cpu_us: f64,
}

/// Clock ticks per second of `/proc/PID/stat`'s times (`USER_HZ`, 100 on Linux).
const PROC_TICKS_PER_S: f64 = 100.0;

/// CPU time a process has used (user + system, all threads), in seconds; 0 where `/proc` is
/// not there to tell.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses: utime and stime
    // are the 14th and 15th fields of the line, the 12th and 13th after it.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / PROC_TICKS_PER_S
}

/// CPU time of several stores together, in seconds.
fn stores_cpu_seconds(stores: &[Store]) -> f64 {
    stores.iter().map(|s| cpu_seconds(s.child.id())).sum()
}

/// Microseconds of CPU per write.
fn per_write_us(seconds: f64, writes: u64) -> f64 {
    if writes == 0 {
        0.0
    } else {
        seconds * 1e6 / writes as f64
    }
}

struct Store {
    region: String,
    url: String,
    child: Child,
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

fn spawn_store(
    config: &Config,
    dir: &Path,
    region: &str,
    port: u16,
    peers: &[(String, String)],
    tls: Option<&common::devca::DevCaFiles>,
) -> anyhow::Result<Store> {
    let data = dir.join(region);
    std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
    let ready = data.join("ready");
    let _ = std::fs::remove_file(&ready);
    let mut command = match cpu_list(config, region)? {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(&config.binary);
            command
        }
        None => Command::new(&config.binary),
    };
    command
        .args(["store", "--region", region, "--listen", &format!("127.0.0.1:{port}")])
        // Measured stores share the machine's disk: the production watermark (5 % of a large
        // disk) could make them read-only.
        .args(["--disk-free-bytes-min", BENCH_DISK_FREE_BYTES_MIN])
        .arg("--data-dir")
        .arg(&data)
        .arg("--ready-file")
        .arg(&ready)
        .env("SWITCHYARD_REPLICATION_KEY", REPLICATION_KEY)
        .env("SWITCHYARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data.join("store.log"))?);
    for (name, url) in peers {
        command.arg("--peer").arg(format!("{name}={url}"));
    }
    if let Some(files) = tls {
        // HTTPS for the API and replication; peers verified against the run's CA and mutual
        // TLS: replication only from a certificate that CA signed.
        for (flag, path) in [
            ("--tls-cert", &files.cert),
            ("--tls-key", &files.key),
            ("--peer-ca", &files.ca_cert),
            ("--peer-client-ca", &files.ca_cert),
            ("--peer-client-cert", &files.cert),
            ("--peer-client-key", &files.key),
        ] {
            command.arg(flag).arg(path);
        }
    }
    let child = command
        .spawn()
        .with_context(|| format!("start {}", config.binary.display()))?;
    let mut store = Store {
        region: region.to_string(),
        url: format!("{}://127.0.0.1:{port}", if tls.is_some() { "https" } else { "http" }),
        child,
    };
    let deadline = Instant::now() + Duration::from_millis(START_DEADLINE_MS);
    while !ready.exists() {
        if let Some(status) = store.child.try_wait()? {
            bail!(
                "store {region} exited with {status}; see {}",
                data.join("store.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!("store {region} not ready after {START_DEADLINE_MS} ms");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(store)
}

/// Pauses (`-STOP`) or resumes (`-CONT`) store processes with kill(1).
/// Waits until every peer has applied everything the origin logged, so a throughput round
/// measures the steady state and not the peers catching up on the previous round.
async fn wait_caught_up(client: &Client, origin: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(CATCH_UP_DEADLINE_MS);
    loop {
        let health = client.get(origin, "/health").await?;
        let peers = health["replication"]["peers"].as_object().cloned().unwrap_or_default();
        if !peers.is_empty() && peers.values().all(|p| p["pending_changes"].as_u64() == Some(0)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the peers did not catch up within {CATCH_UP_DEADLINE_MS} ms: {peers:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal_peers(stores: &[Store], signal: &str) -> anyhow::Result<()> {
    for store in stores {
        let status = Command::new("kill")
            .arg(signal)
            .arg(store.child.id().to_string())
            .status()
            .context("run kill(1)")?;
        if !status.success() {
            bail!(
                "kill {signal} {} ({}) failed with {status}",
                store.child.id(),
                store.region
            );
        }
    }
    Ok(())
}

fn start_cluster(
    config: &Config,
    dir: &Path,
    regions: usize,
    tls: Option<&common::devca::DevCaFiles>,
) -> anyhow::Result<Vec<Store>> {
    let ports = (0..regions).map(|_| free_port()).collect::<anyhow::Result<Vec<_>>>()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let urls: Vec<(String, String)> = REGION_NAMES[..regions]
        .iter()
        .zip(&ports)
        .map(|(name, port)| (name.to_string(), format!("{scheme}://127.0.0.1:{port}")))
        .collect();
    urls.iter()
        .zip(&ports)
        .map(|((name, _), port)| {
            let peers: Vec<_> = urls.iter().filter(|(peer, _)| peer != name).cloned().collect();
            spawn_store(config, dir, name, *port, &peers, tls)
        })
        .collect()
}

async fn create_table(client: &Client, url: &str) -> anyhow::Result<()> {
    client
        .call(
            url,
            "CreateTable",
            &json!({
                "TableName": TABLE,
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}]
            }),
        )
        .await?;
    Ok(())
}

async fn make_global(client: &Client, stores: &[Store]) -> anyhow::Result<()> {
    let creates: Vec<Value> = stores[1..]
        .iter()
        .map(|s| json!({"Create": {"RegionName": s.region}}))
        .collect();
    client
        .call(
            &stores[0].url,
            "UpdateTable",
            &json!({"TableName": TABLE, "ReplicaUpdates": creates}),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_millis(START_DEADLINE_MS);
    loop {
        let described = client
            .call(&stores[0].url, "DescribeTable", &json!({"TableName": TABLE}))
            .await?;
        let replicas = described["Table"]["Replicas"].as_array().cloned().unwrap_or_default();
        let active = replicas.iter().filter(|r| r["ReplicaStatus"] == "ACTIVE").count();
        if active == stores.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("replicas not ACTIVE after {START_DEADLINE_MS} ms: {replicas:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn item(id: &str) -> Value {
    json!({"TableName": TABLE, "Item": {"id": {"S": id}, "v": {"S": "x".repeat(100)}}})
}

/// Polls every destination until `id` is readable; returns the time since `acked`.
async fn watch(client: &Client, destinations: &[String], id: &str, acked: Instant) -> Option<f64> {
    let deadline = acked + Duration::from_millis(VISIBILITY_DEADLINE_MS);
    let key = json!({"TableName": TABLE, "Key": {"id": {"S": id}}, "ConsistentRead": true});
    for url in destinations {
        loop {
            if let Ok(found) = client.call(url, "GetItem", &key).await
                && found.get("Item").is_some()
            {
                break;
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }
    Some(acked.elapsed().as_secs_f64() * 1000.0)
}

struct Counters {
    writes: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
    unseen: AtomicU64,
}

/// Writes the watched writes' lags as CSV ([`SAMPLES_HEADER`]), one line per sample.
fn write_samples(path: &Path, samples: &[(usize, bool, u64, f64, f64)]) -> anyhow::Result<()> {
    let mut text = String::with_capacity(32 * (samples.len() + 1));
    text.push_str(SAMPLES_HEADER);
    text.push('\n');
    for (regions, tls, rate, at, lag) in samples {
        text.push_str(&format!("{regions},{tls},{rate},{at:.3},{lag:.3}\n"));
    }
    std::fs::write(path, text).with_context(|| format!("write the samples to {}", path.display()))
}

/// Writes to `origin` at `rate` per second (0: as fast as possible) for `duration`, watching
/// every `sample_every`-th write in `destinations` when `destinations` is not empty. The lags
/// come with when each write was acknowledged (ms since the round's start), in that order.
async fn drive(
    client: &Client,
    origin: &str,
    destinations: &[String],
    prefix: &str,
    rate: u64,
    config: &Config,
) -> (f64, Arc<Counters>, Vec<(f64, f64)>) {
    let counters = Arc::new(Counters {
        writes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        unseen: AtomicU64::new(0),
    });
    let lags = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(Semaphore::new(config.connections));
    let watchers = Arc::new(Semaphore::new(WATCHERS_MAX));
    let destinations: Arc<Vec<String>> = Arc::new(destinations.to_vec());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sequence: u64 = 0;
    while started.elapsed() < config.duration {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(sequence as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let (client, origin, counters, lags, watchers, destinations) = (
            client.clone(),
            origin.to_string(),
            counters.clone(),
            lags.clone(),
            watchers.clone(),
            destinations.clone(),
        );
        let id = format!("{prefix}-{sequence}");
        let sampled = !destinations.is_empty() && sequence.is_multiple_of(config.sample_every);
        tasks.spawn(async move {
            let result = client.call(&origin, "PutItem", &item(&id)).await;
            drop(permit);
            let acked = Instant::now();
            if result.is_err() {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            counters.writes.fetch_add(1, Ordering::Relaxed);
            if !sampled {
                return;
            }
            let Ok(_watcher) = watchers.try_acquire() else {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            };
            match watch(&client, &destinations, &id, acked).await {
                Some(lag) => {
                    let at = acked.duration_since(started).as_secs_f64() * 1000.0;
                    lags.lock().await.push((at, lag));
                }
                None => {
                    counters.unseen.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // Reap finished tasks so the set stays bounded by what is in flight or being watched.
        while tasks.try_join_next().is_some() {}
        sequence += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    let writes = counters.writes.load(Ordering::Relaxed);
    let mut lags = std::mem::take(&mut *lags.lock().await);
    lags.sort_by(|a, b| a.0.total_cmp(&b.0));
    (writes as f64 / elapsed, counters, lags)
}

/// Runs every configured combination; `progress` receives one line per finished measurement.
pub async fn run(
    config: &Config,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<(Vec<LagResult>, Vec<ThroughputResult>)> {
    let ca = if config.tls {
        let names = ["127.0.0.1".to_string(), "localhost".to_string()];
        Some(common::devca::generate(&config.dir.join("tls"), &names).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let client = match &ca {
        Some(files) => Client::with_ca(&files.ca_cert)?,
        None => Client::new(),
    };
    let mut lag_results = Vec::new();
    let mut throughput = Vec::new();
    let mut samples: Vec<(usize, bool, u64, f64, f64)> = Vec::new();
    for &regions in &config.region_counts {
        if !(2..=REGIONS_MAX).contains(&regions) {
            bail!("--regions {regions}: measure between 2 and {REGIONS_MAX} regions");
        }
        let dir = config.dir.join(format!("regions-{regions}"));
        let _ = std::fs::remove_dir_all(&dir);
        let stores = start_cluster(config, &dir, regions, None)?;
        create_table(&client, &stores[0].url).await?;
        make_global(&client, &stores).await?;
        // The HTTPS cluster runs beside the plain one; each rate is measured on both in turn.
        let secure = match &ca {
            Some(files) => {
                let secure = start_cluster(config, &dir.join("tls"), regions, Some(files))?;
                create_table(&client, &secure[0].url).await?;
                make_global(&client, &secure).await?;
                Some(secure)
            }
            None => None,
        };
        let clusters: Vec<(bool, &Vec<Store>)> = std::iter::once((false, &stores))
            .chain(secure.iter().map(|s| (true, s)))
            .collect();
        for (&rate, (tls, cluster)) in config
            .rates
            .iter()
            .flat_map(|rate| clusters.iter().map(move |c| (rate, *c)))
        {
            let destinations: Vec<String> = cluster[1..].iter().map(|s| s.url.clone()).collect();
            let prefix = format!("r{regions}-rate{rate}{}", if tls { "-tls" } else { "" });
            let (achieved, counters, timed) =
                drive(&client, &cluster[0].url, &destinations, &prefix, rate, config).await;
            samples.extend(timed.iter().map(|(at, lag)| (regions, tls, rate, *at, *lag)));
            let mut lags: Vec<f64> = timed.into_iter().map(|(_, lag)| lag).collect();
            let result = LagResult {
                regions,
                tls,
                target_rate: rate,
                achieved_rate: achieved,
                writes: counters.writes.load(Ordering::Relaxed),
                errors: counters.errors.load(Ordering::Relaxed),
                samples: lags.len(),
                skipped_samples: counters.skipped.load(Ordering::Relaxed),
                unseen: counters.unseen.load(Ordering::Relaxed),
                lag_p50_ms: quantile(&mut lags, 0.5),
                lag_p99_ms: quantile(&mut lags, 0.99),
                lag_max_ms: quantile(&mut lags, 1.0),
            };
            progress(&format!("{result:?}"));
            lag_results.push(result);
        }
        drop(secure);
        // Local write throughput with replication on (the global table, no watching) and off
        // (a store alone, same table shape, same load), measured in alternating rounds while
        // both run, so a change in the machine's background load hits both sides alike.
        let alone_dir = dir.join("standalone");
        let alone = spawn_store(config, &alone_dir, REGION_NAMES[0], free_port()?, &[], None)?;
        create_table(&client, &alone.url).await?;
        let (mut replicated_rates, mut standalone_rates, mut paused_rates) = (Vec::new(), Vec::new(), Vec::new());
        let (mut standalone_cpu, mut origin_cpu, mut peers_cpu) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..THROUGHPUT_ROUNDS {
            let prefix = format!("r{regions}-max{round}");
            wait_caught_up(&client, &stores[0].url).await?;
            let (origin_before, peers_before) = (stores_cpu_seconds(&stores[..1]), stores_cpu_seconds(&stores[1..]));
            let (rate, counters, _) = drive(&client, &stores[0].url, &[], &prefix, 0, config).await;
            let origin_after = stores_cpu_seconds(&stores[..1]);
            replicated_rates.push(rate);
            wait_caught_up(&client, &stores[0].url).await?;
            let writes = counters.writes.load(Ordering::Relaxed);
            origin_cpu.push(per_write_us(origin_after - origin_before, writes));
            peers_cpu.push(per_write_us(stores_cpu_seconds(&stores[1..]) - peers_before, writes));
            let alone_before = stores_cpu_seconds(std::slice::from_ref(&alone));
            let (rate, counters, _) = drive(&client, &alone.url, &[], &prefix, 0, config).await;
            standalone_rates.push(rate);
            standalone_cpu.push(per_write_us(
                stores_cpu_seconds(std::slice::from_ref(&alone)) - alone_before,
                counters.writes.load(Ordering::Relaxed),
            ));
            signal_peers(&stores[1..], "-STOP")?;
            let paused = drive(&client, &stores[0].url, &[], &format!("{prefix}-paused"), 0, config)
                .await
                .0;
            signal_peers(&stores[1..], "-CONT")?;
            paused_rates.push(paused);
            wait_caught_up(&client, &stores[0].url).await?;
        }
        drop((stores, alone));
        let replicated = quantile(&mut replicated_rates, 0.5).unwrap_or(0.0);
        let standalone = quantile(&mut standalone_rates, 0.5).unwrap_or(0.0);
        let peers_paused = quantile(&mut paused_rates, 0.5).unwrap_or(0.0);
        let result = ThroughputResult {
            regions,
            standalone_rate: standalone,
            replicated_rate: replicated,
            peers_paused_rate: peers_paused,
            standalone_cpu_us: quantile(&mut standalone_cpu, 0.5).unwrap_or(0.0),
            origin_cpu_us: quantile(&mut origin_cpu, 0.5).unwrap_or(0.0),
            peers_cpu_us: quantile(&mut peers_cpu, 0.5).unwrap_or(0.0),
        };
        progress(&format!("{result:?}"));
        throughput.push(result);
    }
    if let Some(path) = &config.samples {
        write_samples(path, &samples)?;
    }
    Ok((lag_results, throughput))
}

fn format_ms(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.1}"))
}

/// The Markdown report: lag per rate, then throughput with replication on and off.
pub fn report(command: &str, config: &Config, lags: &[LagResult], throughput: &[ThroughputResult]) -> String {
    let mut out = format!(
        "Command: `{command}` ({} s per rate, {} writes in flight at most, every {}th write watched; \
         lag = origin's acknowledgement → readable in every other region, polled every {POLL_INTERVAL_MS} ms).\n\n",
        config.duration.as_secs(),
        config.connections,
        config.sample_every
    );
    out.push_str("| regions | target writes/s | achieved writes/s | errors | samples | unseen | lag p50 ms | lag p99 ms | lag max ms |\n");
    out.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in lags.iter().filter(|r| !r.tls) {
        let target = if r.target_rate == 0 {
            "max".to_string()
        } else {
            r.target_rate.to_string()
        };
        out.push_str(&format!(
            "| {} | {target} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            r.regions,
            r.achieved_rate,
            r.errors,
            r.samples,
            r.unseen,
            format_ms(r.lag_p50_ms),
            format_ms(r.lag_p99_ms),
            format_ms(r.lag_max_ms)
        ));
    }
    out.push_str(&format!(
        "\nLocal write throughput at full speed, median of {THROUGHPUT_ROUNDS} alternating rounds per side:\n"
    ));
    out.push_str(
        "\n| regions | writes/s alone | writes/s replicating | cost | writes/s replicating, peers paused | cost, origin side |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let cost = |rate: f64, alone: f64| if alone > 0.0 { (1.0 - rate / alone) * 100.0 } else { 0.0 };
    for t in throughput {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0}% | {:.0} | {:.0}% |\n",
            t.regions,
            t.standalone_rate,
            t.replicated_rate,
            cost(t.replicated_rate, t.standalone_rate),
            t.peers_paused_rate,
            cost(t.peers_paused_rate, t.standalone_rate)
        ));
    }
    out.push_str(
        "\nStore CPU time (user + system, from `/proc/PID/stat`) per write in the same rounds, medians: \
         the peers' is counted from the round's start until they have applied all of it. It moves much \
         less with the machine's other load than writes/s does.\n\n\
         | regions | CPU µs per write, alone | origin, replicating | origin's extra | all peers, applying | peers ÷ alone |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for t in throughput {
        let ratio = |x: f64| {
            if t.standalone_cpu_us > 0.0 {
                x / t.standalone_cpu_us
            } else {
                0.0
            }
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:+.0}% | {:.0} | {:.2}× |\n",
            t.regions,
            t.standalone_cpu_us,
            t.origin_cpu_us,
            (ratio(t.origin_cpu_us) - 1.0) * 100.0,
            t.peers_cpu_us,
            ratio(t.peers_cpu_us)
        ));
    }
    if config.tls {
        out.push_str(
            "\nReplication over HTTPS with mutual TLS between regions (a CA made for the run), each rate measured right after plain HTTP on a cluster of its own:\n\n\
             | regions | target writes/s | achieved writes/s, TLS | lag p50 ms plain / TLS | lag p99 ms plain / TLS | p99 ratio TLS / plain |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for secure in lags.iter().filter(|r| r.tls) {
            let Some(plain) = lags
                .iter()
                .find(|r| !r.tls && r.regions == secure.regions && r.target_rate == secure.target_rate)
            else {
                continue;
            };
            let ratio = match (plain.lag_p99_ms, secure.lag_p99_ms) {
                (Some(p), Some(t)) if p > 0.0 => format!("{:.2}×", t / p),
                _ => "–".to_string(),
            };
            let target = if secure.target_rate == 0 {
                "max".to_string()
            } else {
                secure.target_rate.to_string()
            };
            out.push_str(&format!(
                "| {} | {target} | {:.0} | {} / {} | {} / {} | {ratio} |\n",
                secure.regions,
                secure.achieved_rate,
                format_ms(plain.lag_p50_ms),
                format_ms(secure.lag_p50_ms),
                format_ms(plain.lag_p99_ms),
                format_ms(secure.lag_p99_ms),
            ));
        }
    }
    out
}

/// Replaces the text between `begin` and `end` markers in `document`, or appends a section.
pub fn replace_section(document: &str, heading: &str, begin: &str, end: &str, body: &str) -> String {
    let block = format!("{begin}\n{body}\n{end}");
    match (document.find(begin), document.find(end)) {
        (Some(start), Some(stop)) if stop > start => {
            format!("{}{block}{}", &document[..start], &document[stop + end.len()..])
        }
        _ => format!("{}\n## {heading}\n\n{block}\n", document.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_written_as_csv_one_line_each() {
        let path = std::env::temp_dir().join(format!("switchyard-samples-{}.csv", std::process::id()));
        let samples = [(2, false, 1000, 4182.5, 52.91), (3, true, 0, 0.25, 1.0)];
        write_samples(&path, &samples).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::remove_file(&path).expect("removed");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [SAMPLES_HEADER, "2,false,1000,4182.500,52.910", "3,true,0,0.250,1.000"]
        );
        let missing = Path::new("/nonexistent-dir/samples.csv");
        let error = write_samples(missing, &samples).expect_err("no such folder");
        assert!(
            format!("{error:#}").contains("/nonexistent-dir/samples.csv"),
            "{error:#}"
        );
    }

    #[test]
    fn section_is_replaced_in_place_or_appended() {
        let begin = "<!-- x:begin -->";
        let end = "<!-- x:end -->";
        let appended = replace_section("# Benchmarks\n", "Lag", begin, end, "one");
        assert!(appended.contains("## Lag\n\n<!-- x:begin -->\none\n<!-- x:end -->"));
        let replaced = replace_section(&format!("{appended}\ntail\n"), "Lag", begin, end, "two");
        assert!(replaced.contains("<!-- x:begin -->\ntwo\n<!-- x:end -->"));
        assert!(!replaced.contains("one"));
        assert!(replaced.ends_with("tail\n"));
        assert_eq!(replaced.matches("## Lag").count(), 1);
    }
}
