//! The I/O side: listeners, connections and the per-direction pumps that execute a [`Link`]'s
//! schedule, and the [`Registry`] of named proxies the control API edits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::access::AllowList;
use crate::link::{Deadline, Link};
use crate::toxic::{Stream, Toxic, ToxicError, ToxicUpdate, check_name};
use common::rng::Rng;

/// Most proxies one fault proxy holds.
pub const PROXIES_MAX: usize = 1024;
/// Most toxics on one proxy.
pub const TOXICS_PER_PROXY_MAX: usize = 64;
/// Scheduled pieces queued between a direction's reader and writer; the reader waits beyond.
pub const QUEUE_PIECES_MAX: usize = 1024;
/// How long connecting to the upstream may take before the client is closed.
pub const UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
pub const ACCEPT_BACKOFF_MS: u64 = 100;
/// How long resolving an upstream's name may take when a proxy is created or updated.
pub const UPSTREAM_RESOLVE_TIMEOUT_MS: u64 = 5_000;

/// Limits every proxy of one fault proxy shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per proxy; more are accepted and closed at once.
    pub connections_max: usize,
    /// Read buffer per direction of a connection.
    pub buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections_max: 1024,
            buffer_bytes: 16 * 1024,
        }
    }
}

/// A proxy as the control API shows it (Toxiproxy's shape).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxyView {
    pub name: String,
    /// The bound address while enabled (a port 0 shows as the port picked), else as configured.
    pub listen: String,
    pub upstream: String,
    pub enabled: bool,
    pub toxics: Vec<Toxic>,
}

/// A new proxy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    pub name: String,
    pub listen: String,
    pub upstream: String,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Toxiproxy ignores toxics on create; Switchyard takes them, so a config is one document.
    #[serde(default)]
    pub toxics: Vec<Toxic>,
}

fn enabled_default() -> bool {
    true
}

/// A change to a proxy: fields not given stay.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub toxics: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("proxy '{0}' not found")]
    ProxyNotFound(String),
    #[error("proxy '{0}' already exists; delete it first or update it with POST /proxies/{0}")]
    ProxyExists(String),
    #[error("toxic '{toxic}' not found on proxy '{proxy}'")]
    ToxicNotFound { proxy: String, toxic: String },
    #[error("toxic '{toxic}' already exists on proxy '{proxy}'; give the new one another name")]
    ToxicExists { proxy: String, toxic: String },
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "upstream '{upstream}' is {address}, outside the networks this fault proxy may relay to ({allowed}); start it with --allow-upstream CIDR (or allow_upstream in [fault_proxy]) to allow it"
    )]
    UpstreamNotAllowed {
        upstream: String,
        address: std::net::IpAddr,
        allowed: String,
    },
    #[error(transparent)]
    Toxic(#[from] ToxicError),
    #[error("proxy '{name}' cannot listen on {listen}: {source} (is the port in use? pick another)")]
    Listen {
        name: String,
        listen: String,
        source: std::io::Error,
    },
}

struct Entry {
    name: String,
    /// As configured; may have port 0.
    listen: String,
    /// The address bound the first time, reused when re-enabled so clients find it again.
    bound: Option<SocketAddr>,
    upstream: String,
    toxics: Vec<Toxic>,
    toxics_tx: watch::Sender<Arc<Vec<Toxic>>>,
    accept: Option<JoinHandle<()>>,
}

impl Entry {
    fn view(&self) -> ProxyView {
        ProxyView {
            name: self.name.clone(),
            listen: match (&self.accept, self.bound) {
                (Some(_), Some(bound)) => bound.to_string(),
                _ => self.listen.clone(),
            },
            upstream: self.upstream.clone(),
            enabled: self.accept.is_some(),
            toxics: self.toxics.clone(),
        }
    }

    fn publish(&self) {
        self.toxics_tx.send_replace(Arc::new(self.toxics.clone()));
    }

    fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            // Aborting drops the listener and the connection set, which closes every connection.
            accept.abort();
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The named proxies of one fault proxy.
pub struct Registry {
    proxies: Mutex<BTreeMap<String, Entry>>,
    limits: Limits,
    rng: std::sync::Mutex<Rng>,
    allowed: Arc<AllowList>,
    metrics: crate::metrics::ProxyMetrics,
}

impl Registry {
    /// A registry whose proxies may relay to loopback only.
    pub fn new(limits: Limits, seed: u64) -> Registry {
        Registry::with_allowed(limits, seed, AllowList::default())
    }

    /// A registry whose proxies may relay to the networks in `allowed` only.
    pub fn with_allowed(limits: Limits, seed: u64, allowed: AllowList) -> Registry {
        Registry {
            proxies: Mutex::new(BTreeMap::new()),
            limits,
            rng: std::sync::Mutex::new(Rng::new(seed)),
            allowed: Arc::new(allowed),
            metrics: crate::metrics::ProxyMetrics::default(),
        }
    }

    /// The metrics, with the enabled and toxics gauges read from the proxies now.
    pub async fn metrics(&self) -> crate::metrics::ProxyMetrics {
        let proxies = self.list().await;
        for (name, view) in &proxies {
            let labels = crate::metrics::ProxyMetrics::labels(name);
            self.metrics.enabled.get_or_create(&labels).set(i64::from(view.enabled));
            self.metrics
                .toxics
                .get_or_create(&labels)
                .set(i64::try_from(view.toxics.len()).unwrap_or(i64::MAX));
            for family in [&self.metrics.accepted, &self.metrics.refused, &self.metrics.failed] {
                let _ = family.get_or_create(&labels);
            }
            let _ = self.metrics.open.get_or_create(&labels);
        }
        // A deleted proxy's series go away.
        let mut seen = self
            .metrics
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for gone in seen.iter().filter(|name| !proxies.contains_key(*name)) {
            let labels = crate::metrics::ProxyMetrics::labels(gone);
            for family in [&self.metrics.enabled, &self.metrics.toxics, &self.metrics.open] {
                family.remove(&labels);
            }
            for family in [&self.metrics.accepted, &self.metrics.refused, &self.metrics.failed] {
                family.remove(&labels);
            }
        }
        *seen = proxies.keys().cloned().collect();
        drop(seen);
        self.metrics.clone()
    }

    pub fn allowed(&self) -> &AllowList {
        &self.allowed
    }

    /// Resolves `upstream` and refuses it unless every address it names is allowed.
    async fn check_upstream(&self, upstream: &str) -> Result<(), RegistryError> {
        check_address("upstream", upstream)?;
        let resolve = tokio::net::lookup_host(upstream);
        let addresses: Vec<SocketAddr> = match tokio::time::timeout(
            Duration::from_millis(UPSTREAM_RESOLVE_TIMEOUT_MS),
            resolve,
        )
        .await
        {
            Ok(Ok(addresses)) => addresses.collect(),
            Ok(Err(error)) => {
                return Err(RegistryError::BadRequest(format!(
                    "upstream '{upstream}' does not resolve ({error}); give an address like 127.0.0.1:6379"
                )));
            }
            Err(_) => {
                return Err(RegistryError::BadRequest(format!(
                    "resolving upstream '{upstream}' took over {UPSTREAM_RESOLVE_TIMEOUT_MS} ms; give an address like 127.0.0.1:6379"
                )));
            }
        };
        if addresses.is_empty() {
            return Err(RegistryError::BadRequest(format!(
                "upstream '{upstream}' resolves to no address; give an address like 127.0.0.1:6379"
            )));
        }
        match addresses.iter().find(|a| !self.allowed.allows(a.ip())) {
            Some(address) => Err(RegistryError::UpstreamNotAllowed {
                upstream: upstream.to_string(),
                address: address.ip(),
                allowed: self.allowed.describe(),
            }),
            None => Ok(()),
        }
    }

    fn fork_rng(&self) -> Rng {
        let mut rng = self.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        rng.fork(0)
    }

    pub async fn list(&self) -> BTreeMap<String, ProxyView> {
        let proxies = self.proxies.lock().await;
        proxies
            .iter()
            .map(|(name, entry)| (name.clone(), entry.view()))
            .collect()
    }

    pub async fn get(&self, name: &str) -> Result<ProxyView, RegistryError> {
        let proxies = self.proxies.lock().await;
        proxies
            .get(name)
            .map(Entry::view)
            .ok_or_else(|| RegistryError::ProxyNotFound(name.to_string()))
    }

    pub async fn create(&self, spec: ProxySpec) -> Result<ProxyView, RegistryError> {
        check_name(&spec.name).map_err(RegistryError::BadRequest)?;
        check_address("listen", &spec.listen)?;
        self.check_upstream(&spec.upstream).await?;
        check_toxics(&spec.name, &spec.toxics)?;
        let mut proxies = self.proxies.lock().await;
        if proxies.contains_key(&spec.name) {
            return Err(RegistryError::ProxyExists(spec.name));
        }
        if proxies.len() >= PROXIES_MAX {
            return Err(RegistryError::BadRequest(format!(
                "this fault proxy already holds {PROXIES_MAX} proxies; delete some first"
            )));
        }
        let (toxics_tx, _) = watch::channel(Arc::new(spec.toxics.clone()));
        let mut entry = Entry {
            name: spec.name.clone(),
            listen: spec.listen,
            bound: None,
            upstream: spec.upstream,
            toxics: spec.toxics,
            toxics_tx,
            accept: None,
        };
        if spec.enabled {
            self.start(&mut entry).await?;
        }
        let view = entry.view();
        proxies.insert(spec.name, entry);
        Ok(view)
    }

    /// Creates or replaces each proxy in the list, as Toxiproxy's `/populate` does.
    pub async fn populate(&self, specs: Vec<ProxySpec>) -> Result<Vec<ProxyView>, RegistryError> {
        let mut views = Vec::with_capacity(specs.len());
        for spec in specs {
            self.delete(&spec.name).await.ok();
            views.push(self.create(spec).await?);
        }
        Ok(views)
    }

    pub async fn update(&self, name: &str, update: ProxyUpdate) -> Result<ProxyView, RegistryError> {
        if let Some(new_name) = &update.name
            && new_name != name
        {
            return Err(RegistryError::BadRequest(format!(
                "proxy '{name}' cannot be renamed to '{new_name}'; delete it and create a new one"
            )));
        }
        // Resolved before the registry is locked: a slow resolver must not hold up the rest.
        if let Some(upstream) = &update.upstream {
            self.check_upstream(upstream).await?;
        }
        let mut proxies = self.proxies.lock().await;
        let entry = proxies
            .get_mut(name)
            .ok_or_else(|| RegistryError::ProxyNotFound(name.to_string()))?;
        let mut restart = false;
        if let Some(listen) = update.listen
            && listen != entry.listen
        {
            check_address("listen", &listen)?;
            entry.listen = listen;
            entry.bound = None;
            restart = true;
        }
        if let Some(upstream) = update.upstream
            && upstream != entry.upstream
        {
            entry.upstream = upstream;
            restart = true;
        }
        let enabled = update.enabled.unwrap_or(entry.accept.is_some());
        if !enabled || restart {
            entry.stop();
        }
        if enabled && entry.accept.is_none() {
            self.start(entry).await?;
        }
        Ok(entry.view())
    }

    pub async fn delete(&self, name: &str) -> Result<(), RegistryError> {
        let mut proxies = self.proxies.lock().await;
        match proxies.remove(name) {
            Some(_) => Ok(()),
            None => Err(RegistryError::ProxyNotFound(name.to_string())),
        }
    }

    pub async fn toxics(&self, proxy: &str) -> Result<Vec<Toxic>, RegistryError> {
        Ok(self.get(proxy).await?.toxics)
    }

    pub async fn toxic(&self, proxy: &str, toxic: &str) -> Result<Toxic, RegistryError> {
        self.toxics(proxy)
            .await?
            .into_iter()
            .find(|t| t.name == toxic)
            .ok_or_else(|| RegistryError::ToxicNotFound {
                proxy: proxy.to_string(),
                toxic: toxic.to_string(),
            })
    }

    pub async fn add_toxic(&self, proxy: &str, toxic: Toxic) -> Result<Toxic, RegistryError> {
        let mut proxies = self.proxies.lock().await;
        let entry = proxies
            .get_mut(proxy)
            .ok_or_else(|| RegistryError::ProxyNotFound(proxy.to_string()))?;
        if entry.toxics.iter().any(|t| t.name == toxic.name) {
            return Err(RegistryError::ToxicExists {
                proxy: proxy.to_string(),
                toxic: toxic.name,
            });
        }
        if entry.toxics.len() >= TOXICS_PER_PROXY_MAX {
            return Err(RegistryError::BadRequest(format!(
                "proxy '{proxy}' already has {TOXICS_PER_PROXY_MAX} toxics; remove some first"
            )));
        }
        entry.toxics.push(toxic.clone());
        entry.publish();
        Ok(toxic)
    }

    pub async fn update_toxic(&self, proxy: &str, name: &str, update: &ToxicUpdate) -> Result<Toxic, RegistryError> {
        let mut proxies = self.proxies.lock().await;
        let entry = proxies
            .get_mut(proxy)
            .ok_or_else(|| RegistryError::ProxyNotFound(proxy.to_string()))?;
        let toxic = entry
            .toxics
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or_else(|| RegistryError::ToxicNotFound {
                proxy: proxy.to_string(),
                toxic: name.to_string(),
            })?;
        *toxic = toxic.updated(update)?;
        let updated = toxic.clone();
        entry.publish();
        Ok(updated)
    }

    pub async fn remove_toxic(&self, proxy: &str, name: &str) -> Result<(), RegistryError> {
        let mut proxies = self.proxies.lock().await;
        let entry = proxies
            .get_mut(proxy)
            .ok_or_else(|| RegistryError::ProxyNotFound(proxy.to_string()))?;
        let before = entry.toxics.len();
        entry.toxics.retain(|t| t.name != name);
        if entry.toxics.len() == before {
            return Err(RegistryError::ToxicNotFound {
                proxy: proxy.to_string(),
                toxic: name.to_string(),
            });
        }
        entry.publish();
        Ok(())
    }

    /// Removes every toxic and enables every proxy (Toxiproxy's `POST /reset`).
    pub async fn reset(&self) -> Result<(), RegistryError> {
        let mut proxies = self.proxies.lock().await;
        for entry in proxies.values_mut() {
            entry.toxics.clear();
            entry.publish();
            if entry.accept.is_none() {
                self.start(entry).await?;
            }
        }
        Ok(())
    }

    /// Stops every proxy (closing their connections); the registry stays usable.
    pub async fn stop_all(&self) {
        let mut proxies = self.proxies.lock().await;
        for entry in proxies.values_mut() {
            entry.stop();
        }
    }

    async fn start(&self, entry: &mut Entry) -> Result<(), RegistryError> {
        let bind_result = match entry.bound {
            Some(address) => TcpListener::bind(address).await,
            None => TcpListener::bind(entry.listen.as_str()).await,
        };
        let listener = bind_result.map_err(|source| RegistryError::Listen {
            name: entry.name.clone(),
            listen: entry.listen.clone(),
            source,
        })?;
        entry.bound = listener.local_addr().ok();
        tracing::info!(proxy = %entry.name, listen = ?entry.bound, upstream = %entry.upstream, "proxy enabled");
        entry.accept = Some(tokio::spawn(accept_loop(
            listener,
            entry.name.clone(),
            entry.upstream.clone(),
            entry.toxics_tx.subscribe(),
            self.limits,
            self.fork_rng(),
            (Arc::clone(&self.allowed), self.metrics.clone()),
        )));
        Ok(())
    }
}

fn check_address(what: &str, address: &str) -> Result<(), RegistryError> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(RegistryError::BadRequest(format!(
            "{what} '{address}' is not HOST:PORT; write it like 127.0.0.1:6379"
        ))),
    }
}

fn check_toxics(proxy: &str, toxics: &[Toxic]) -> Result<(), RegistryError> {
    if toxics.len() > TOXICS_PER_PROXY_MAX {
        return Err(RegistryError::BadRequest(format!(
            "proxy '{proxy}' has {} toxics; at most {TOXICS_PER_PROXY_MAX} are allowed",
            toxics.len()
        )));
    }
    for (index, toxic) in toxics.iter().enumerate() {
        if toxics[..index].iter().any(|t| t.name == toxic.name) {
            return Err(RegistryError::ToxicExists {
                proxy: proxy.to_string(),
                toxic: toxic.name.clone(),
            });
        }
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    name: String,
    upstream: String,
    toxics: watch::Receiver<Arc<Vec<Toxic>>>,
    limits: Limits,
    mut rng: Rng,
    // What every connection of the proxy shares: the upstreams allowed, and the counters.
    (allowed, metrics): (Arc<AllowList>, crate::metrics::ProxyMetrics),
) {
    let labels = crate::metrics::ProxyMetrics::labels(&name);
    let mut connections = JoinSet::new();
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (client, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(proxy = %name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                        continue;
                    }
                };
                if connections.len() >= limits.connections_max {
                    tracing::warn!(proxy = %name, %peer, connections_max = limits.connections_max, "connection refused: too many open connections");
                    drop(client);
                    metrics.refused.get_or_create(&labels).inc();
                    continue;
                }
                metrics.accepted.get_or_create(&labels).inc();
                sequence += 1;
                let upstream = upstream.clone();
                let toxics = toxics.clone();
                let rng = rng.fork(sequence);
                let name = name.clone();
                let allowed = Arc::clone(&allowed);
                let (metrics, labels) = (metrics.clone(), labels.clone());
                metrics.open.get_or_create(&labels).inc();
                connections.spawn(async move {
                    if let Err(error) = serve(client, &upstream, &allowed, toxics, rng, limits.buffer_bytes).await {
                        tracing::debug!(proxy = %name, %peer, %error, "connection ended with an error");
                        metrics.failed.get_or_create(&labels).inc();
                    }
                    metrics.open.get_or_create(&labels).dec();
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// How one direction (or the whole connection) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// End of stream passed on; the other direction may continue.
    Eof,
    /// Close both sides (FIN).
    Close,
    /// Reset both sides (RST).
    Reset,
}

async fn serve(
    mut client: TcpStream,
    upstream_address: &str,
    allowed: &AllowList,
    toxics: watch::Receiver<Arc<Vec<Toxic>>>,
    mut rng: Rng,
    buffer_bytes: usize,
) -> std::io::Result<()> {
    let connect = TcpStream::connect(upstream_address);
    let mut upstream = match tokio::time::timeout(Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS), connect).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => return Err(error),
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect to upstream timed out",
            ));
        }
    };
    // The name was checked when the proxy was made; check where it leads now too, so a name
    // that changed its address since cannot take the relay elsewhere.
    let peer = upstream.peer_addr()?;
    if !allowed.allows(peer.ip()) {
        tracing::warn!(upstream = upstream_address, %peer, allowed = %allowed.describe(),
            "closed a connection: the upstream now resolves outside the allowed networks");
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "upstream address not allowed",
        ));
    }
    client.set_nodelay(true).ok();
    upstream.set_nodelay(true).ok();
    let origin = Instant::now();
    let ending = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let up = pump(
            client_read,
            upstream_write,
            toxics.clone(),
            Link::new(Stream::Upstream, rng.fork(1)),
            origin,
            buffer_bytes,
        );
        let down = pump(
            upstream_read,
            client_write,
            toxics,
            Link::new(Stream::Downstream, rng.fork(2)),
            origin,
            buffer_bytes,
        );
        tokio::pin!(up, down);
        tokio::select! {
            ending = &mut up => if ending == Ending::Eof { down.await } else { ending },
            ending = &mut down => if ending == Ending::Eof { up.await } else { ending },
        }
    };
    if ending == Ending::Reset {
        client.set_zero_linger().ok();
        upstream.set_zero_linger().ok();
    }
    Ok(())
}

enum Delivery {
    Data { at: Instant, bytes: Vec<u8> },
    End { at: Instant, ending: Ending },
}

fn micros_since(origin: Instant) -> u64 {
    origin.elapsed().as_micros() as u64
}

/// Moves one direction: a reader that schedules (and may end the connection on a deadline)
/// and a writer that delivers on schedule, joined by a bounded queue.
async fn pump<R, W>(
    reader: R,
    writer: W,
    toxics: watch::Receiver<Arc<Vec<Toxic>>>,
    link: Link,
    origin: Instant,
    buffer_bytes: usize,
) -> Ending
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel(QUEUE_PIECES_MAX);
    let read_side = read_side(reader, tx, toxics, link, origin, buffer_bytes);
    let write_side = write_side(writer, rx);
    tokio::pin!(read_side, write_side);
    tokio::select! {
        ending = &mut read_side => match ending {
            Some(ending) => ending,
            None => write_side.await,
        },
        ending = &mut write_side => ending,
    }
}

/// Returns `Some` to end the connection at once, `None` once the rest is queued for the writer.
async fn read_side<R: AsyncRead + Unpin>(
    mut reader: R,
    tx: mpsc::Sender<Delivery>,
    mut toxics: watch::Receiver<Arc<Vec<Toxic>>>,
    mut link: Link,
    origin: Instant,
    buffer_bytes: usize,
) -> Option<Ending> {
    let mut buffer = vec![0u8; buffer_bytes];
    link.set_toxics(0, &toxics.borrow_and_update());
    loop {
        let deadline = link.deadline();
        let sleep = tokio::time::sleep_until(origin + Duration::from_micros(deadline.map_or(0, Deadline::at_us)));
        tokio::select! {
            changed = toxics.changed() => {
                if changed.is_err() {
                    // The proxy was deleted.
                    return Some(Ending::Close);
                }
                let current = toxics.borrow_and_update().clone();
                link.set_toxics(micros_since(origin), &current);
            }
            () = sleep, if deadline.is_some() => {
                return Some(match deadline {
                    Some(Deadline::Reset { .. }) => Ending::Reset,
                    _ => Ending::Close,
                });
            }
            read = reader.read(&mut buffer), if !link.holding() => {
                let now_us = micros_since(origin);
                match read {
                    Ok(0) => {
                        let at = origin + Duration::from_micros(link.on_eof(now_us));
                        tx.send(Delivery::End { at, ending: Ending::Eof }).await.ok();
                        return None;
                    }
                    Ok(read) => {
                        let plan = link.on_data(now_us, read);
                        let mut offset = 0;
                        let mut last = origin + Duration::from_micros(now_us);
                        for piece in plan.pieces {
                            last = origin + Duration::from_micros(piece.at_us);
                            let bytes = buffer[offset..offset + piece.len].to_vec();
                            offset += piece.len;
                            if tx.send(Delivery::Data { at: last, bytes }).await.is_err() {
                                return None;
                            }
                        }
                        if plan.close_after {
                            tx.send(Delivery::End { at: last, ending: Ending::Close }).await.ok();
                            return None;
                        }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return Some(Ending::Reset),
                    Err(_) => return Some(Ending::Close),
                }
            }
        }
    }
}

async fn write_side<W: AsyncWrite + Unpin>(mut writer: W, mut rx: mpsc::Receiver<Delivery>) -> Ending {
    while let Some(delivery) = rx.recv().await {
        match delivery {
            Delivery::Data { at, bytes } => {
                tokio::time::sleep_until(at).await;
                if let Err(error) = writer.write_all(&bytes).await {
                    return if error.kind() == std::io::ErrorKind::ConnectionReset {
                        Ending::Reset
                    } else {
                        Ending::Close
                    };
                }
            }
            Delivery::End { at, ending } => {
                tokio::time::sleep_until(at).await;
                if ending == Ending::Eof {
                    writer.shutdown().await.ok();
                }
                return ending;
            }
        }
    }
    Ending::Close
}
