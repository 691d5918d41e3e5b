//! The workload and the monitors, as tasks that run until told to stop:
//!
//! - shop clients: resolve the shop's name through a caching resolver (TTL honoured), then add
//!   to cart, place an order (with an Idempotency-Key) and read its status over HTTP;
//! - writers, one per region: put unique keys (and now and then a shared "hot" key, so a split
//!   brain has something to conflict on) into the global table through that region's store;
//! - monitors: the authoritative DNS answer, the controller's active region and generation,
//!   the replication lag of every store.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::deployment::Deployment;
use super::dynamo;
use super::http::{HttpClient, HttpError};
use super::recorder::Recorder;
use super::resolver::{self, CachingResolver};
use crate::history::{Action, Phase, ProcessId};
use crate::measure::EventKind;

/// Pause between two iterations of one shop client.
pub const CLIENT_PAUSE_MS: u64 = 100;
/// Deadline of one shop request.
pub const SHOP_TIMEOUT_MS: u64 = 2_000;
/// Pause between two writes of one writer.
pub const WRITE_INTERVAL_MS: u64 = 50;
/// One write in this many goes to a shared hot key.
pub const HOT_WRITE_EVERY: u64 = 5;
/// Shared hot keys.
pub const HOT_KEYS: u64 = 4;
/// How often the monitors sample.
pub const DNS_WATCH_INTERVAL_MS: u64 = 250;
pub const CONTROLLER_POLL_INTERVAL_MS: u64 = 250;
pub const CONTROLLER_TIMEOUT_MS: u64 = 1_000;
pub const LAG_SAMPLE_INTERVAL_MS: u64 = 500;
pub const LAG_TIMEOUT_MS: u64 = 1_000;
/// Product added to carts when the shop's list cannot be read.
pub const PRODUCT_FALLBACK: &str = "mug";

/// Process ids by role, so a history reads at a glance.
pub const CLIENT_PROCESS_BASE: ProcessId = 1;
pub const WRITER_PROCESS_BASE: ProcessId = 100;
pub const DNS_WATCHER_PROCESS: ProcessId = 1_000;

/// What the tasks share.
pub struct Context {
    pub deployment: Deployment,
    pub recorder: Arc<Recorder>,
    pub http: HttpClient,
    /// Keys of this run start with it; values are unique across the run.
    pub key_prefix: String,
    pub stop: watch::Receiver<bool>,
    /// Orders and sessions the shop acknowledged (checked in its databases afterwards).
    pub acked: std::sync::Mutex<super::databases::AckedWrites>,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Context {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps `ms` or until stopped; false when stopped.
    pub(crate) async fn pause(&self, ms: u64) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => !self.stopped(),
            _ = stop.wait_for(|s| *s) => false,
        }
    }
}

fn phase_of_status(status: u16) -> Phase {
    match status {
        200..=299 => Phase::Ok,
        400..=499 => Phase::Fail,
        _ => Phase::Info,
    }
}

fn phase_of_error(error: &HttpError) -> Phase {
    if error.is_definite() { Phase::Fail } else { Phase::Info }
}

/// One request of a shop client.
struct ShopRequest<'a> {
    region: Option<&'a str>,
    operation: &'a str,
    method: &'a str,
    url: String,
    extra: &'a [(&'a str, &'a str)],
    body: Option<serde_json::Value>,
}

struct ShopClient {
    index: u32,
    process: ProcessId,
    resolver: CachingResolver,
    session: Option<String>,
    product: Option<String>,
    orders: u64,
}

impl ShopClient {
    async fn lookup(&mut self, ctx: &Context) -> Option<Ipv4Addr> {
        let answer = match self.resolver.cached() {
            Some(answer) => answer,
            None => {
                let query = Action::Lookup {
                    name: self.resolver.name().to_string(),
                    authoritative: false,
                    answer: Vec::new(),
                    ttl_s: 0,
                };
                ctx.recorder.invoke(self.process, query.clone());
                match self.resolver.refresh().await {
                    Ok(answer) => {
                        let answered = Action::Lookup {
                            name: self.resolver.name().to_string(),
                            authoritative: false,
                            answer: answer.addresses.iter().map(Ipv4Addr::to_string).collect(),
                            ttl_s: answer.ttl_s,
                        };
                        ctx.recorder.complete(self.process, Phase::Ok, Some(answered), None);
                        answer
                    }
                    Err(error) => {
                        ctx.recorder
                            .complete(self.process, Phase::Info, Some(query), Some(error.to_string()));
                        return None;
                    }
                }
            }
        };
        let addresses = &answer.addresses;
        if addresses.is_empty() {
            return None;
        }
        Some(addresses[self.index as usize % addresses.len()])
    }

    async fn request(&mut self, ctx: &Context, request: ShopRequest<'_>) -> Option<super::http::Response> {
        let ShopRequest {
            region,
            operation,
            method,
            url,
            extra,
            body,
        } = request;
        ctx.recorder.invoke(
            self.process,
            Action::Request {
                operation: operation.to_string(),
                region: region.map(str::to_string),
            },
        );
        let cookie = self.session.as_ref().map(|s| format!("shop_session={s}"));
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", ctx.deployment.shop_name.trim_end_matches('.')),
            ("content-type", "application/json"),
        ];
        if let Some(cookie) = &cookie {
            headers.push(("cookie", cookie));
        }
        headers.extend_from_slice(extra);
        let result = ctx
            .http
            .send(
                method,
                &url,
                &headers,
                body.map(|b| b.to_string().into_bytes()),
                SHOP_TIMEOUT_MS,
            )
            .await;
        match result {
            Ok(response) => {
                let phase = phase_of_status(response.status);
                let error = (phase != Phase::Ok).then(|| {
                    format!(
                        "{} {}",
                        response.status,
                        String::from_utf8_lossy(&response.body)
                            .chars()
                            .take(200)
                            .collect::<String>()
                    )
                });
                ctx.recorder.complete(self.process, phase, None, error);
                (phase == Phase::Ok).then_some(response)
            }
            Err(error) => {
                ctx.recorder
                    .complete(self.process, phase_of_error(&error), None, Some(error.to_string()));
                None
            }
        }
    }

    async fn iteration(&mut self, ctx: &Context) {
        let Some(address) = self.lookup(ctx).await else {
            return;
        };
        let region = ctx.deployment.region_of_address(address).map(|r| r.name.clone());
        let base = format!("http://{address}:{}", ctx.deployment.shop_port);
        if self.product.is_none() {
            self.product = Some(PRODUCT_FALLBACK.to_string());
            if let Ok(response) = ctx
                .http
                .send("GET", &format!("{base}/api/products"), &[], None, SHOP_TIMEOUT_MS)
                .await
                && let Some(id) = response.json().and_then(|v| {
                    v["products"][self.index as usize % 5]["id"]
                        .as_str()
                        .map(str::to_string)
                })
            {
                self.product = Some(id);
            }
        }
        let product = self.product.clone().unwrap_or_else(|| PRODUCT_FALLBACK.to_string());
        let Some(response) = self
            .request(
                ctx,
                ShopRequest {
                    region: region.as_deref(),
                    operation: "add_to_cart",
                    method: "POST",
                    url: format!("{base}/api/cart"),
                    extra: &[],
                    body: Some(json!({"product": product, "quantity": 1})),
                },
            )
            .await
        else {
            return;
        };
        if let Some(session) = session_from(&response.headers) {
            // A new session the shop acknowledged (kept in Redis with --databases).
            if let Ok(mut acked) = ctx.acked.lock() {
                acked.sessions.push(crate::databases::Acked {
                    key: session.clone(),
                    region: region.clone(),
                    at_ms: wall_ms(),
                });
            }
            self.session = Some(session);
        }
        self.orders += 1;
        let key = format!("{}c{}-{}", ctx.key_prefix, self.index, self.orders);
        let Some(order) = self
            .request(
                ctx,
                ShopRequest {
                    region: region.as_deref(),
                    operation: "place_order",
                    method: "POST",
                    url: format!("{base}/api/orders"),
                    extra: &[("idempotency-key", &key)],
                    body: None,
                },
            )
            .await
        else {
            return;
        };
        let Some(order_json) = order.json() else { return };
        let Some(order_id) = order_json["order_id"].as_str().map(str::to_string) else {
            return;
        };
        // An order the shop's database took (it names its number and region).
        if order_json["increment_id"].is_string()
            && let Ok(mut acked) = ctx.acked.lock()
        {
            acked.orders.push(crate::databases::Acked {
                key: order_id.clone(),
                region: order_json["database_region"].as_str().map(str::to_string),
                at_ms: wall_ms(),
            });
        }
        self.request(
            ctx,
            ShopRequest {
                region: region.as_deref(),
                operation: "order_status",
                method: "GET",
                url: format!("{base}/api/orders/{order_id}"),
                extra: &[],
                body: None,
            },
        )
        .await;
    }
}

fn session_from(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get_all(hyper::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "shop_session")
        .map(|(_, value)| value.to_string())
}

/// A shop client; it starts after `start_delay_ms`, so the clients' cached answers expire at
/// different moments, as real clients' caches do (all clients filling their caches at the same
/// instant would make the measured RTO depend on the TTL's phase at the fault).
pub async fn shop_client(ctx: Arc<Context>, index: u32, start_delay_ms: u64) {
    if start_delay_ms > 0 && !ctx.pause(start_delay_ms).await {
        return;
    }
    let mut client = ShopClient {
        index,
        process: CLIENT_PROCESS_BASE + index,
        resolver: CachingResolver::new(ctx.deployment.dns_server, &ctx.deployment.shop_name),
        session: None,
        product: None,
        orders: 0,
    };
    while !ctx.stopped() {
        client.iteration(&ctx).await;
        if !ctx.pause(CLIENT_PAUSE_MS).await {
            break;
        }
    }
}

/// Writes to the global table through one region's store.
pub async fn writer(ctx: Arc<Context>, index: u32, region: String, store_url: String, table: String) {
    let process = WRITER_PROCESS_BASE + index;
    let mut seq: u64 = 0;
    while !ctx.stopped() {
        seq += 1;
        let key = if seq.is_multiple_of(HOT_WRITE_EVERY) {
            format!("{}hot-{}", ctx.key_prefix, (seq / HOT_WRITE_EVERY) % HOT_KEYS)
        } else {
            format!("{}{region}-{seq}", ctx.key_prefix)
        };
        let value = format!("{}{region}-{seq}", ctx.key_prefix);
        ctx.recorder.invoke(
            process,
            Action::Write {
                key: key.clone(),
                value: value.clone(),
                region: region.clone(),
            },
        );
        match dynamo::put(&ctx.http, &store_url, &table, &key, &value).await {
            Ok(()) => ctx.recorder.complete(process, Phase::Ok, None, None),
            Err(error) => {
                let phase = if error.is_definite() { Phase::Fail } else { Phase::Info };
                ctx.recorder.complete(process, phase, None, Some(error.to_string()));
            }
        }
        if !ctx.pause(WRITE_INTERVAL_MS).await {
            break;
        }
    }
}

/// Asks the DNS server directly (no cache) and records every answer.
pub async fn dns_watcher(ctx: Arc<Context>) {
    let name = ctx.deployment.shop_name.clone();
    loop {
        let query = Action::Lookup {
            name: name.clone(),
            authoritative: true,
            answer: Vec::new(),
            ttl_s: 0,
        };
        ctx.recorder.invoke(DNS_WATCHER_PROCESS, query.clone());
        match resolver::query(ctx.deployment.dns_server, &name).await {
            Ok(answer) => ctx.recorder.complete(
                DNS_WATCHER_PROCESS,
                Phase::Ok,
                Some(Action::Lookup {
                    name: name.clone(),
                    authoritative: true,
                    answer: answer.addresses.iter().map(Ipv4Addr::to_string).collect(),
                    ttl_s: answer.ttl_s,
                }),
                None,
            ),
            Err(error) => ctx
                .recorder
                .complete(DNS_WATCHER_PROCESS, Phase::Info, Some(query), Some(error.to_string())),
        }
        if !ctx.pause(DNS_WATCH_INTERVAL_MS).await {
            break;
        }
    }
}

/// Why the controller's pointer could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    /// No HTTP answer (refused, reset, timed out): the controller may not be running.
    Unreachable(String),
    /// An answer without a region (a controller that has not decided yet answers 503).
    Answered(String),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::Unreachable(error) | AskError::Answered(error) => f.write_str(error),
        }
    }
}

/// The controller's pointer: `GET /v1/active-region` → `{"region": ..., "generation": N}`.
pub async fn active_region(http: &HttpClient, controller_url: &str) -> Result<(String, u64), AskError> {
    let url = format!("{}/v1/active-region", controller_url.trim_end_matches('/'));
    let response = http
        .send("GET", &url, &[], None, CONTROLLER_TIMEOUT_MS)
        .await
        .map_err(|e| AskError::Unreachable(format!("{url}: {e}")))?;
    if response.status != 200 {
        return Err(AskError::Answered(format!("{url} answered {}", response.status)));
    }
    let value = response
        .json()
        .ok_or_else(|| AskError::Answered(format!("{url} did not answer JSON")))?;
    let region = value["region"]
        .as_str()
        .ok_or_else(|| AskError::Answered(format!("{url} answered without a region: {value}")))?;
    let generation = value["generation"].as_u64().unwrap_or(0);
    Ok((region.to_string(), generation))
}

/// Records the controller's active region and generation whenever they change. With several
/// controllers, every member is asked and the answer with the highest generation counts (a
/// dead member answers nothing, a cut-off one an older pointer).
pub async fn controller_watcher(ctx: Arc<Context>, controller_urls: Vec<String>) {
    let mut last: Option<(String, u64)> = None;
    loop {
        let mut best: Option<(String, u64)> = None;
        for url in &controller_urls {
            if let Ok(current) = active_region(&ctx.http, url).await
                && best.as_ref().is_none_or(|b| current.1 > b.1)
            {
                best = Some(current);
            }
        }
        if let Some(current) = best
            && last.as_ref() != Some(&current)
            // A member that lags behind (its pointer is older) never moves the reading back.
            && last.as_ref().is_none_or(|l| current.1 >= l.1)
        {
            ctx.recorder.event(EventKind::ActiveRegion {
                region: current.0.clone(),
                generation: current.1,
            });
            last = Some(current);
        }
        if !ctx.pause(CONTROLLER_POLL_INTERVAL_MS).await {
            break;
        }
    }
}

/// The largest replication lag any store reports for any peer (its `/health`), or none when
/// a store does not answer.
pub async fn replication_lag(http: &HttpClient, deployment: &Deployment) -> Option<u64> {
    let mut lag_max = 0u64;
    for region in &deployment.regions {
        let url = format!("{}/health", region.store_url.trim_end_matches('/'));
        let response = http.send("GET", &url, &[], None, LAG_TIMEOUT_MS).await.ok()?;
        let value = response.json()?;
        let peers = value["replication"]["peers"].as_object()?;
        for peer in peers.values() {
            lag_max = lag_max.max(peer["lag_ms"].as_u64()?);
        }
    }
    Some(lag_max)
}

pub async fn lag_sampler(ctx: Arc<Context>) {
    loop {
        let lag_ms = replication_lag(&ctx.http, &ctx.deployment).await;
        ctx.recorder.event(EventKind::ReplicationLag { lag_ms });
        if !ctx.pause(LAG_SAMPLE_INTERVAL_MS).await {
            break;
        }
    }
}
