//! The HTTP front: DynamoDB's JSON protocol on `POST /`, plus `/health` and `/metrics`.
//!
//! Invariants: every response to an API request is either the operation's JSON or a DynamoDB
//! error shape with a `__type` (404, 405, 408 and 413 included); a panic never crosses this
//! layer because nothing below it panics on input; without configured credentials the server
//! only listens on loopback. Limits come before authentication: connections, timeouts and the
//! body's declared size are checked by `common::http` before a handler runs, and a request's
//! signature head (key, scope, region, time, signed headers; the whole signature when
//! `x-amz-content-sha256` carries the body's hash) before its body is read. A signed request
//! that changes data and signs a call id is accepted once (`sigv4::ReplayGuard`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::http::{Limits, Refusal, Rendered};
use dynamo_protocol::sigv4::{self, Credentials, HeadCheck, ReplayGuard, RequestParts};
use dynamo_protocol::{ApiError, ErrorKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;

use crate::disk::DiskStatus;
use crate::engine::{Engine, INDEX_BACKFILL_RETRY_MS, TTL_SWEEP_INTERVAL_MS, WriterState, WriterStatus};
use crate::global::{Replication, ReplicationConfig};
use crate::ops::Store;

/// Largest request body accepted (DynamoDB's own limit for BatchWriteItem is 16 MB).
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
const TARGET_PREFIX: &str = "DynamoDB_20120810.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// Whether `operation` only reads. A replay of one changes nothing, so their signatures are
/// not remembered; every other target (unknown ones included) counts as changing data. The
/// readers are the DynamoDB Streams operations (a consumer polls GetRecords with the same
/// iterator until records come) and, of the DynamoDB operations, the Describe and List ones
/// and the item reads.
fn read_only_operation(operation: &str) -> bool {
    crate::streams::api::OPERATIONS.contains(&operation)
        || (crate::ops::OPERATIONS.contains(&operation)
            && (operation.starts_with("Describe")
                || operation.starts_with("List")
                || matches!(
                    operation,
                    "GetItem" | "BatchGetItem" | "TransactGetItems" | "Query" | "Scan"
                )))
}

/// The store listener's limits: the defaults of `common::http` with DynamoDB's body limit.
pub fn default_limits() -> Limits {
    Limits::with_body_limit(REQUEST_BODY_BYTES_MAX)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClockLabels {
    peer: String,
}

struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabels, Histogram>,
    items: Family<TableLabels, Gauge>,
    table_bytes: Family<TableLabels, Gauge>,
    storage_bytes: Gauge,
    replication_lag_seconds: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    replication_pending_changes: Family<PeerLabels, Gauge>,
    replication_pending_bytes: Family<PeerLabels, Gauge>,
    replication_acked_seq: Family<PeerLabels, Gauge>,
    replication_log_head: Gauge,
    tombstones_purged: Counter,
    tombstones_waiting: Gauge,
    tombstone_purge_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    peer_clock_offset_seconds: Family<ClockLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    peer_replicas_missing: Family<ClockLabels, Gauge>,
    clock_offset_alarm: Gauge,
    disk_free_bytes: Gauge,
    disk_free_bytes_min: Gauge,
    disk_below_watermark: Gauge,
    disk_reserve_bytes: Gauge,
    writer_state: Family<WriterStateLabels, Gauge>,
    storage_failures: Counter,
    reopens: Counter,
    checkpoints: Counter,
    open_repair_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    write_ahead_log_bytes: Gauge,
    in_flight_bytes: Gauge,
    in_flight_bytes_max: Gauge,
    writes_refused: Counter,
    backups_failed: Counter,
    restores_failed: Counter,
    clock_steps: Counter,
    range_digest_mismatches: Counter,
    /// Held while the counters above catch up with the engine's totals (one scrape at a time).
    mirror: std::sync::Mutex<()>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriterStateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    source: String,
    destination: String,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchyard_store");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "API requests by operation and outcome (ok, client_error, server_error)",
            requests.clone(),
        );
        let latency = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
            ])
        });
        registry.register(
            "request_duration_seconds",
            "API request latency by operation",
            latency.clone(),
        );
        let items = Family::<TableLabels, Gauge>::default();
        registry.register("items", "Items stored per table", items.clone());
        let table_bytes = Family::<TableLabels, Gauge>::default();
        registry.register(
            "table_size_bytes",
            "Bytes of item data per table, as DynamoDB counts them",
            table_bytes.clone(),
        );
        let storage_bytes = Gauge::default();
        registry.register(
            "storage_bytes",
            "Bytes the database file takes on disk",
            storage_bytes.clone(),
        );
        let replication_lag_seconds = Family::<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "replication_lag_seconds",
            "Age of the oldest change the destination region does not have yet (like DynamoDB's ReplicationLatency)",
            replication_lag_seconds.clone(),
        );
        let replication_pending_changes = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "replication_pending_changes",
            "Changes not yet acknowledged by the destination",
            replication_pending_changes.clone(),
        );
        let replication_pending_bytes = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "replication_pending_bytes",
            "Bytes of replication log the destination does not have yet",
            replication_pending_bytes.clone(),
        );
        let replication_acked_seq = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "replication_acked_seq",
            "Last replication-log position the destination applied",
            replication_acked_seq.clone(),
        );
        let replication_log_head = Gauge::default();
        registry.register(
            "replication_log_head",
            "Last position in this region's replication log",
            replication_log_head.clone(),
        );
        let peer_clock_offset_seconds = Family::<ClockLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "peer_clock_offset_seconds",
            "How far a peer region's clock runs ahead of this one (negative: behind), from the signing times of its requests",
            peer_clock_offset_seconds.clone(),
        );
        let peer_replicas_missing = Family::<ClockLabels, Gauge>::default();
        registry.register(
            "peer_replicas_missing",
            "Global tables whose replica in a peer region is missing: the peer answers with a new database (its data directory was wiped) and the replica was not created again since",
            peer_replicas_missing.clone(),
        );
        let clock_offset_alarm = Gauge::default();
        registry.register(
            "clock_offset_alarm",
            "1 while a peer's clock is further off than clock_offset_alarm_ms",
            clock_offset_alarm.clone(),
        );
        let tombstones_purged = Counter::default();
        registry.register(
            "tombstones_purged",
            "Tombstones purged since startup (every replica had them and no older write can arrive)",
            tombstones_purged.clone(),
        );
        let tombstones_waiting = Gauge::default();
        registry.register(
            "tombstones_waiting",
            "Tombstone index entries not yet purged",
            tombstones_waiting.clone(),
        );
        let tombstone_purge_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "tombstone_purge_lag_seconds",
            "How far the tombstone purge watermark trails this store's clock (grows while a peer is down; 0 before the first watermark)",
            tombstone_purge_lag_seconds.clone(),
        );
        let disk_free_bytes = Gauge::default();
        registry.register(
            "disk_free_bytes",
            "Free bytes on the data directory's filesystem, counting the store's own reserve file",
            disk_free_bytes.clone(),
        );
        let disk_free_bytes_min = Gauge::default();
        registry.register(
            "disk_free_bytes_min",
            "The watermark: below this many free bytes new writes are refused",
            disk_free_bytes_min.clone(),
        );
        let disk_below_watermark = Gauge::default();
        registry.register(
            "disk_below_watermark",
            "1 while the disk is below the watermark (read-only but for deletes), else 0",
            disk_below_watermark.clone(),
        );
        let disk_reserve_bytes = Gauge::default();
        registry.register(
            "disk_reserve_bytes",
            "Bytes the reserve file holds now (released below the watermark)",
            disk_reserve_bytes.clone(),
        );
        let writer_state = Family::<WriterStateLabels, Gauge>::default();
        registry.register(
            "writer_state",
            "1 for the writer's current state (ok, reopening), 0 for the others",
            writer_state.clone(),
        );
        let storage_failures = Counter::default();
        registry.register(
            "storage_failures",
            "Write batches failed by a storage error (none of them acknowledged)",
            storage_failures.clone(),
        );
        let reopens = Counter::default();
        registry.register(
            "database_reopens",
            "Times the database was closed and reopened after an I/O error",
            reopens.clone(),
        );
        let checkpoints = Counter::default();
        registry.register(
            "checkpoints",
            "Checkpoints committed: when idle, and whenever the write-ahead log reaches its checkpoint size (after one, an open after a crash has nothing to replay)",
            checkpoints.clone(),
        );
        let open_repair_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "open_repair_seconds",
            "How long redb's repair took at the last open (0: the database opened without one)",
            open_repair_seconds.clone(),
        );
        let write_ahead_log_bytes = Gauge::default();
        registry.register(
            "write_ahead_log_bytes",
            "Bytes of write-ahead log since the last checkpoint: what an open after a crash would replay",
            write_ahead_log_bytes.clone(),
        );
        let in_flight_bytes = Gauge::default();
        registry.register(
            "in_flight_bytes",
            "Bytes of the budget for requests in flight held now (each request's body bytes times the charge per byte)",
            in_flight_bytes.clone(),
        );
        let in_flight_bytes_max = Gauge::default();
        registry.register(
            "in_flight_bytes_max",
            "The budget for requests in flight: buffered_body_bytes_max times the charge per body byte",
            in_flight_bytes_max.clone(),
        );
        let writes_refused = Counter::default();
        registry.register(
            "writes_refused_disk_low",
            "Writes refused because the disk was below the watermark",
            writes_refused.clone(),
        );
        let clock_steps = Counter::default();
        registry.register(
            "clock_steps",
            "Steps of the wall clock (wall and monotonic time apart by a second or more between two looks, a second apart); /health says the last",
            clock_steps.clone(),
        );
        let restores_failed = Counter::default();
        registry.register(
            "restores_failed",
            "Restores (from a backup or to a point in time) that failed while copying; the half-restored table is dropped (/health says why)",
            restores_failed.clone(),
        );
        let backups_failed = Counter::default();
        registry.register(
            "backups_failed",
            "On-demand backups that failed while their items were written (removed; /health says why)",
            backups_failed.clone(),
        );
        let range_digest_mismatches = Counter::default();
        registry.register(
            "range_digest_mismatches",
            "Range digest buckets (anti-entropy) the scrub found different from their records and rewrote; any is a bug",
            range_digest_mismatches.clone(),
        );
        Metrics {
            range_digest_mismatches,
            disk_free_bytes,
            disk_free_bytes_min,
            disk_below_watermark,
            disk_reserve_bytes,
            writer_state,
            storage_failures,
            reopens,
            checkpoints,
            open_repair_seconds,
            write_ahead_log_bytes,
            in_flight_bytes,
            in_flight_bytes_max,
            writes_refused,
            backups_failed,
            restores_failed,
            clock_steps,
            mirror: std::sync::Mutex::new(()),
            tombstones_purged,
            tombstones_waiting,
            peer_clock_offset_seconds,
            peer_replicas_missing,
            clock_offset_alarm,
            tombstone_purge_lag_seconds,
            replication_lag_seconds,
            replication_pending_changes,
            replication_pending_bytes,
            replication_acked_seq,
            replication_log_head,
            registry,
            requests,
            latency,
            items,
            table_bytes,
            storage_bytes,
        }
    }
}

struct AppState {
    store: Store,
    credentials: Option<Credentials>,
    replays: std::sync::Mutex<ReplayGuard>,
    metrics: Metrics,
    /// Requests in flight between their body's end and their answer (`in_flight`).
    in_flight: crate::in_flight::Budget,
}

/// How the API server is set up.
pub struct ServerConfig {
    /// When set, every request must carry a valid SigV4 signature by one of these keys.
    pub credentials: Option<Credentials>,
    /// Peers and key for global tables; `None` serves regional tables only.
    pub replication: Option<ReplicationConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExposureError {
    #[error(
        "refusing to listen on {0} without credentials: anyone who can reach it could read and change every table\n    fix: pass --credentials FILE (lines of `ACCESS_KEY_ID SECRET`), listen on a loopback address such as 127.0.0.1, or, on a network nobody else can reach, pass --trusted-network"
    )]
    OpenToNetwork(SocketAddr),
}

/// Security by default: an unauthenticated store listens on loopback only.
pub fn check_exposure(address: SocketAddr, credentials: Option<&Credentials>) -> Result<(), ExposureError> {
    if common::secret::open_to_network(address, credentials.is_some_and(|c| !c.is_empty())) {
        Err(ExposureError::OpenToNetwork(address))
    } else {
        Ok(())
    }
}

/// Serves the API on `listener` under [`default_limits`] until `shutdown` resolves, then
/// finishes in-flight requests.
pub async fn run(
    listener: TcpListener,
    engine: Engine,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with_limits(listener, engine, config, default_limits(), None, shutdown).await
}

/// [`run`] with the listener's limits given (`switchyard store`'s flags) and, with `tls`,
/// over HTTPS (the DynamoDB API and replication alike).
pub async fn run_with_limits(
    listener: TcpListener,
    engine: Engine,
    config: ServerConfig,
    limits: Limits,
    tls: Option<Arc<common::http::Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let replication = config.replication.map(|c| Replication::new(engine.clone(), c));
    let store = match &replication {
        Some(replication) => Store::with_replication(engine.clone(), Arc::clone(replication)),
        None => Store::new(engine.clone()),
    };
    Arc::clone(store.backups()).recover(&store)?;
    let replication_tasks = replication.as_ref().map(Replication::start).unwrap_or_default();
    let state = Arc::new(AppState {
        store,
        credentials: config.credentials.filter(|c| !c.is_empty()),
        replays: std::sync::Mutex::new(ReplayGuard::new(sigv4::REPLAY_SIGNATURES_MAX)),
        metrics: Metrics::new(),
        in_flight: crate::in_flight::Budget::new(
            crate::in_flight::budget_bytes(limits.buffered_body_bytes_max),
            Duration::from_millis(limits.body_read_timeout_ms),
        ),
    });
    let mut replication_routes = Router::new()
        .route("/replication/v1/batch", post(replication_batch))
        .route("/replication/v1/repair", post(replication_repair))
        .route("/replication/v1/table", post(replication_table))
        .route("/replication/v1/mark", post(replication_mark))
        .route("/replication/v1/digest", post(replication_digest))
        .route("/replication/v1/settings", post(replication_settings));
    // Mutual TLS: with a client CA on the listener, only peers presenting a certificate it
    // signed may replicate (on top of the HMAC key, never instead of it).
    if tls.as_ref().is_some_and(|tls| tls.files().client_ca.is_some()) {
        replication_routes = replication_routes.route_layer(axum::middleware::from_fn(require_peer_certificate));
    }
    let app = Router::new()
        .route(
            "/",
            post(api)
                .get(|State(state): State<Arc<AppState>>, headers: HeaderMap| async move {
                    crate::compat::root_health(&headers, state.store.engine().region())
                })
                .options(|headers: HeaderMap| async move { crate::compat::preflight(&headers) }),
        )
        .layer(axum::middleware::from_fn(crate::compat::with_cors))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(replication_routes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.request_body_bytes_max))
        .layer(axum::middleware::from_fn(crate::compat::with_request_head_limits))
        .layer(axum::middleware::from_fn(crate::compat::with_server_header))
        .layer(axum::middleware::from_fn(crate::compat::with_answer_headers))
        .with_state(Arc::clone(&state));
    let closing = engine.clone();
    let backfiller = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_index_backfills(INDEX_BACKFILL_RETRY_MS).await })
    };
    let sweeper = tokio::spawn(ttl_sweeper(engine));
    let align_interval_ms =
        crate::ops::align_retry_interval_ms(std::env::var(crate::ops::ALIGN_RETRY_INTERVAL_ENV).ok().as_deref())
            .map_err(|message| std::io::Error::new(std::io::ErrorKind::InvalidInput, message))?;
    let aligner = replication
        .is_some()
        .then(|| tokio::spawn(align_loop(state.store.clone(), align_interval_ms)));
    let options = common::http::Options::new("store", limits)
        .render(Arc::new(render_refusal))
        .tls(tls);
    let result = common::http::serve(listener, options, app, shutdown).await;
    sweeper.abort();
    backfiller.abort();
    if let Some(aligner) = aligner {
        aligner.abort();
    }
    for task in replication_tasks {
        task.abort();
    }
    // Last: a checkpoint, so that the next start needs no repair (other handles keep the file
    // open until the process exits, so redb's own clean close would not run).
    if closing.close().await {
        tracing::info!("database checkpointed: the next start opens without a repair");
    } else {
        tracing::warn!(
            "the last checkpoint did not commit (disk below the watermark, or an I/O error): the next start repairs the database"
        );
    }
    result
}

/// A replication endpoint's answer; a 200 answer carries this store's signature of it for the
/// request it answers (`ANSWER_SIGNATURE_HEADER`), which the asker checks before taking it.
fn signed_replication_response(
    state: &AppState,
    path: &str,
    headers: &HeaderMap,
    request: &[u8],
    result: Result<serde_json::Value, ApiError>,
) -> Response {
    let (Ok(value), Some(replication)) = (&result, state.store.replication()) else {
        return replication_response(result);
    };
    let answer = value.to_string();
    let signature = replication.sign_answer_body(path, headers, request, answer.as_bytes());
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], answer).into_response();
    if let Some(value) = signature.and_then(|s| header::HeaderValue::from_str(&s).ok()) {
        response
            .headers_mut()
            .insert(crate::global::ANSWER_SIGNATURE_HEADER, value);
    }
    response
}

fn replication_response(result: Result<serde_json::Value, ApiError>) -> Response {
    match result {
        Ok(value) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response(),
        Err(error) => {
            let status = match error.kind {
                ErrorKind::AccessDenied => StatusCode::FORBIDDEN,
                kind if kind.is_server_fault() => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                error.to_json().to_string(),
            )
                .into_response()
        }
    }
}

fn no_replication() -> ApiError {
    ApiError::new(
        ErrorKind::AccessDenied,
        "this store has no replication peers configured",
    )
}

/// Refuses a replication request whose connection presented no client certificate signed by
/// the listener's client CA (`--peer-client-ca`).
async fn require_peer_certificate(request: Request, next: axum::middleware::Next) -> Response {
    if request
        .extensions()
        .get::<common::http::VerifiedClientCertificate>()
        .is_some()
    {
        return next.run(request).await;
    }
    let body = serde_json::json!({
        "__type": "com.amazonaws.dynamodb.v20120810#AccessDeniedException",
        "message": "replication requests need a client certificate signed by this region's peer client CA (--peer-client-ca); give the sending region --peer-client-cert and --peer-client-key",
    });
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

async fn replication_batch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (headers, body) = match read_request(request).await {
        Ok(read) => read,
        Err(error) => return replication_response(Err(error)),
    };
    let result = match state.store.replication() {
        Some(replication) => replication.receive_batch(&headers, &body).await,
        None => Err(no_replication()),
    };
    signed_replication_response(&state, "/replication/v1/batch", &headers, &body, result)
}

async fn replication_repair(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (headers, body) = match read_request(request).await {
        Ok(read) => read,
        Err(error) => return replication_response(Err(error)),
    };
    let result = match state.store.replication() {
        Some(replication) => replication.receive_repair(&headers, &body).await,
        None => Err(no_replication()),
    };
    signed_replication_response(&state, "/replication/v1/repair", &headers, &body, result)
}

async fn replication_table(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (headers, body) = match read_request(request).await {
        Ok(read) => read,
        Err(error) => return replication_response(Err(error)),
    };
    let result = match state.store.replication() {
        Some(replication) => replication.receive_table(&headers, &body).await,
        None => Err(no_replication()),
    };
    signed_replication_response(&state, "/replication/v1/table", &headers, &body, result)
}

async fn replication_digest(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (headers, body) = match read_request(request).await {
        Ok(read) => read,
        Err(error) => return replication_response(Err(error)),
    };
    let result = match state.store.replication() {
        Some(replication) => replication.receive_digest(&headers, &body).await,
        None => Err(no_replication()),
    };
    signed_replication_response(&state, "/replication/v1/digest", &headers, &body, result)
}

async fn replication_settings(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (headers, body) = match read_request(request).await {
        Ok(read) => read,
        Err(error) => return replication_response(Err(error)),
    };
    let result = match state.store.replication() {
        Some(replication) => replication.receive_settings(&headers, &body).await,
        None => Err(no_replication()),
    };
    signed_replication_response(&state, "/replication/v1/settings", &headers, &body, result)
}

async fn replication_mark(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (headers, body) = match read_request(request).await {
        Ok(read) => read,
        Err(error) => return replication_response(Err(error)),
    };
    let result = match state.store.replication() {
        Some(replication) => replication.receive_mark(&headers, &body).await,
        None => Err(no_replication()),
    };
    signed_replication_response(&state, "/replication/v1/mark", &headers, &body, result)
}

/// Per-peer replication figures for `/health`.
fn replication_health(store: &Store) -> serde_json::Value {
    let Some(replication) = store.replication() else {
        return serde_json::Value::Null;
    };
    let peers: serde_json::Map<String, serde_json::Value> = replication
        .status
        .iter()
        .map(|(region, status)| {
            use std::sync::atomic::Ordering::Relaxed;
            let last_error = status.last_error.lock().expect("status lock is never poisoned").clone();
            (
                region.clone(),
                json!({
                    "lag_ms": status.lag_ms.load(Relaxed),
                    "pending_changes": status.pending_changes.load(Relaxed),
                    "pending_bytes": status.pending_bytes.load(Relaxed),
                    // The same alarm the trimmer logs: this peer's backlog is past 80 % of the
                    // log's bound, beyond which it is repaired by full state transfer.
                    "backlog_alarm": crate::global::backlog_alarm(status.pending_bytes.load(Relaxed), replication.backlog_bytes_max()),
                    "backlog_limit_bytes": replication.backlog_bytes_max(),
                    "acked_seq": status.acked.load(Relaxed),
                    "repairing": status.repairing.load(Relaxed),
                    "consecutive_failures": status.consecutive_failures.load(Relaxed),
                    "answers_refused": status.answers_refused.load(Relaxed),
                    "repairs": status.repairs.load(Relaxed),
                    "last_repair": {
                        "ranges_compared": status.last_repair_ranges_compared.load(Relaxed),
                        "records_pushed": status.last_repair_records_pushed.load(Relaxed),
                    },
                    "last_error": last_error,
                    // When it happened; with consecutive_failures at 0 it is history.
                    "last_error_at_unix_ms": match status.last_error_at_unix_ms.load(Relaxed) {
                        0 => None,
                        at => Some(at),
                    },
                }),
            )
        })
        .collect();
    use std::sync::atomic::Ordering::Relaxed;
    let tombstones = &replication.tombstones;
    let below = tombstones.purge_below.load(Relaxed);
    let engine = store.engine();
    let head = engine.log_head();
    let (log_first, log_bytes) = engine
        .snapshot()
        .and_then(|snapshot| {
            let first = snapshot.log_first(head)?;
            Ok((first, snapshot.log_bytes_after(first.saturating_sub(1))?))
        })
        .unwrap_or((0, 0));
    json!({
        "region": replication.region(),
        "log_head": head,
        // The log holds changes log_first..=log_head, log_bytes in all.
        "log_first": log_first,
        "log_bytes": log_bytes,
        "peers": peers,
        "clock": replication.clock_status().to_json(),
        "tombstones": {
            // Tombstones older than this are purged; it trails the present by a few mark
            // intervals while every peer is up, and stops while one is down.
            "purge_below_age_ms": (below > 0).then(|| engine.now_unix_ms().saturating_sub(below >> replication::hlc::LOGICAL_BITS)),
            "held_back_by": tombstones.held_back_by.lock().expect("status lock is never poisoned").clone(),
            "purged_total": tombstones.purged_total.load(Relaxed),
            "waiting": engine.tombstone_entries(),
        },
    })
}

/// Sends again, every `interval_ms` (`ops::ALIGN_RETRY_INTERVAL_MS` unless set), the TTL, index
/// and capacity changes of global tables made here that some replica has not confirmed, and
/// the ones held here newer than a peer holds (`Replication::compare_settings`): a region down
/// during the change gets it soon after it is back, also from a region that did not make it.
async fn align_loop(store: Store, interval_ms: u64) {
    let mut interval = tokio::time::interval(Duration::from_millis(interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let left = store.align_unconfirmed().await;
        if left > 0 {
            tracing::debug!(
                left,
                "TTL, index or capacity changes not yet in every replica; sending them again later"
            );
        }
    }
}

async fn ttl_sweeper(engine: Engine) {
    let mut interval = tokio::time::interval(Duration::from_millis(TTL_SWEEP_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut digest_cursor = crate::engine::DigestCursor::default();
    loop {
        interval.tick().await;
        engine.observe_clock();
        if let Err(error) = engine.maintain_digests_once(&mut digest_cursor).await {
            tracing::warn!(%error, "range digest upkeep failed; retrying next interval");
        }
        match engine.expire_once().await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "expired items deleted"),
            Err(error) => tracing::warn!(%error, "TTL sweep failed; retrying next interval"),
        }
        match engine.trim_streams_once().await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "stream records past retention trimmed"),
            Err(error) => tracing::warn!(%error, "stream retention sweep failed; retrying next interval"),
        }
        match engine.trim_pitr_once().await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "point-in-time recovery undo entries trimmed"),
            Err(error) => tracing::warn!(%error, "undo log trim sweep failed; retrying next interval"),
        }
    }
}

fn error_response(error: &ApiError) -> Response {
    error_response_as(error, CONTENT_TYPE)
}

fn error_response_as(error: &ApiError, content_type: &'static str) -> Response {
    let status = StatusCode::from_u16(error.kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::to_vec(&error.to_json()).unwrap_or_default();
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The Content-Type of an answer: DynamoDB answers `application/json` to a request sent as
/// `application/json` (which it takes as well as its own `application/x-amz-json-1.0`), and
/// `application/x-amz-json-1.0` otherwise.
fn answer_content_type(request: &HeaderMap) -> &'static str {
    let sent = request
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = sent.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        "application/json"
    } else {
        CONTENT_TYPE
    }
}

/// How the store shows a limit's refusal: a DynamoDB error shape with a stable `__type`.
fn render_refusal(refusal: &Refusal) -> Rendered {
    let (type_name, message) = match refusal {
        // The error kind DynamoDB uses for its other size limits, with the status of the limit.
        Refusal::BodyTooLarge { limit_bytes, .. } => (
            "com.amazon.coral.validate#ValidationException".to_string(),
            format!(
                "Request size has exceeded the maximum allowed size of {limit_bytes} bytes; \
                 split the request (BatchWriteItem takes at most 25 items per call)"
            ),
        ),
        Refusal::BodyTimeout { .. } | Refusal::BodyTooSlow { .. } => (
            "com.amazon.coral.service#RequestTimeoutException".to_string(),
            refusal.to_string(),
        ),
        Refusal::BodyIncomplete { reason } => {
            let error = ApiError::serialization(format!("The request body could not be read: {reason}"));
            (
                format!("{}#{}", error.kind.namespace(), error.kind.name()),
                error.message,
            )
        }
        Refusal::TooManyConnections { .. } | Refusal::BodyWaitersBusy { .. } => {
            let kind = ErrorKind::ServiceUnavailable;
            (format!("{}#{}", kind.namespace(), kind.name()), refusal.to_string())
        }
        Refusal::MissingHost | Refusal::UnsupportedTransferCoding { .. } => (
            "com.amazon.coral.validate#ValidationException".to_string(),
            refusal.to_string(),
        ),
    };
    // DynamoDB spells the key "Message" in a SerializationException, "message" elsewhere.
    let body = Bytes::from(if type_name.ends_with("#SerializationException") {
        json!({"__type": type_name, "Message": message}).to_string()
    } else {
        json!({"__type": type_name, "message": message}).to_string()
    });
    let mut headers = vec![("server", crate::compat::SERVER_HEADER.to_string())];
    headers.extend(crate::compat::answer_headers(&body));
    Rendered {
        status: refusal.status(),
        content_type: CONTENT_TYPE,
        body,
        headers,
    }
}

fn refusal_response(refusal: &Refusal) -> Response {
    common::http::response_of(render_refusal(refusal))
}

/// Reads a body under the listener's limits; a refusal becomes the store's error response. The
/// body is returned with its bytes: it holds the body's share of the listener's budget until
/// it is dropped, which the caller does once the request is admitted to the budget in flight
/// (`in_flight`), after its signature is checked, so the request is never outside both and a
/// request that fails authentication never takes any of the second.
async fn read_body(mut body: axum::body::Body) -> Result<(Bytes, axum::body::Body), Response> {
    use http_body_util::BodyExt;
    match (&mut body).collect().await {
        Ok(collected) => Ok((collected.to_bytes(), body)),
        Err(error) => {
            let refusal = common::http::refusal_of(&error)
                .cloned()
                .unwrap_or(Refusal::BodyIncomplete {
                    reason: error.to_string(),
                });
            Err(refusal_response(&refusal))
        }
    }
}

use crate::in_flight::Admission;

fn budget_spent(spent: crate::in_flight::Spent) -> ApiError {
    tracing::warn!(%spent, "request refused: the budget for requests in flight stayed spent");
    ApiError::new(ErrorKind::ServiceUnavailable, spent.to_string())
}

/// The body as the operation reads it (`compat::inflate`), the admission grown to its inflated
/// size: a compressed body is first inflated only to count its bytes, so its share grows to
/// exactly what the inflated body needs (giving back what it holds while it waits for it), and
/// an inflated body is never held outside the budget.
async fn inflate_within(
    budget: &crate::in_flight::Budget,
    admission: &mut Admission,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Result<Bytes, crate::compat::Inflate>, ApiError> {
    match crate::compat::inflated_bytes(headers, &body, REQUEST_BODY_BYTES_MAX) {
        Ok(None) => Ok(Ok(body)),
        Err(refused) => Ok(Err(refused)),
        Ok(Some(inflated)) => {
            budget.grow(admission, inflated).await.map_err(budget_spent)?;
            Ok(crate::compat::inflate(headers, body, REQUEST_BODY_BYTES_MAX))
        }
    }
}

/// Headers and body of a replication request; a body refused by a limit is an error.
async fn read_request(request: Request) -> Result<(HeaderMap, Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => Ok((parts.headers, body)),
        Err(error) => Err(match common::http::refusal_of(&error) {
            Some(refusal @ Refusal::BodyTooLarge { .. }) => ApiError::validation(refusal.to_string()),
            Some(refusal) => ApiError::serialization(refusal.to_string()),
            None => ApiError::serialization(format!("The request body could not be read: {error}")),
        }),
    }
}

/// 404 for any path but the API's, in the DynamoDB error shape.
async fn not_found(method: Method, uri: Uri) -> Response {
    let error = ApiError::new(
        ErrorKind::UnknownOperation,
        format!(
            "No resource at {method} {}: the DynamoDB API is POST / with an X-Amz-Target header",
            uri.path()
        ),
    );
    let mut response = error_response(&error);
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// 405 for a known path with another method (`GET /`, say), in the DynamoDB error shape.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allowed = if matches!(uri.path(), "/health" | "/metrics") {
        "GET"
    } else {
        "POST"
    };
    let error = ApiError::new(
        ErrorKind::UnknownOperation,
        format!("{method} is not allowed on {}: use {allowed}", uri.path()),
    );
    let mut response = error_response(&error);
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The signed parts of a request as the verifier wants them (with `host` from the URI's
/// authority when an HTTP/2 client sent no Host header).
fn with_parts<T>(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    f: impl FnOnce(&RequestParts<'_>) -> T,
) -> T {
    let mut pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    let host_header;
    if !headers.contains_key(header::HOST)
        && let Some(authority) = uri.authority()
    {
        host_header = authority.as_str().to_string();
        pairs.push(("host", host_header.as_bytes()));
    }
    let parts = RequestParts {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: &pairs,
        body,
    };
    f(&parts)
}

/// What authentication knows once the head has been checked.
enum Admitted {
    /// No credentials configured: every request is served.
    Open,
    /// Signed over the body hash it declared; the body must match it.
    Verified {
        verified: sigv4::Verified,
        payload_sha256: String,
    },
    /// The head is plausible; the signature is checked with the body.
    NeedsBody,
}

/// Checks the head before the body is read.
fn authenticate_head(state: &AppState, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Admitted, ApiError> {
    let Some(credentials) = &state.credentials else {
        return Ok(Admitted::Open);
    };
    let region = state.store.engine().region();
    with_parts(method, uri, headers, b"", |parts| {
        sigv4::verify_head(credentials, parts, Some(region), now_secs())
    })
    .map(|check| match check {
        HeadCheck::Verified {
            verified,
            payload_sha256,
        } => Admitted::Verified {
            verified,
            payload_sha256,
        },
        HeadCheck::NeedsBody => Admitted::NeedsBody,
    })
}

/// Finishes authentication with the body, and admits a request that changes data once; returns
/// the admitted signature (to forget if the request fails in a way clients retry).
fn authenticate_body(
    state: &AppState,
    admitted: Admitted,
    operation: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<sigv4::Verified>, ApiError> {
    let verified = match admitted {
        Admitted::Open => return Ok(None),
        Admitted::Verified {
            verified,
            payload_sha256,
        } => {
            sigv4::check_payload(&payload_sha256, body)?;
            verified
        }
        Admitted::NeedsBody => {
            let Some(credentials) = &state.credentials else {
                return Ok(None);
            };
            let region = state.store.engine().region();
            with_parts(method, uri, headers, body, |parts| {
                sigv4::verify_in(credentials, parts, Some(region), now_secs())
            })?
        }
    };
    if read_only_operation(operation) || crate::partiql::reads_only(operation, body) {
        return Ok(None);
    }
    state
        .replays
        .lock()
        .expect("replay guard lock is never poisoned")
        .admit(&verified, now_secs())?;
    Ok(Some(verified))
}

/// Errors after which nothing was applied and SDKs retry: the retry may carry the same
/// signature, so it must not count as a replay.
fn retried_by_clients(kind: ErrorKind) -> bool {
    kind.is_server_fault()
        || matches!(
            kind,
            ErrorKind::ProvisionedThroughputExceeded
                | ErrorKind::RequestLimitExceeded
                | ErrorKind::TransactionConflict
                | ErrorKind::TransactionInProgress
        )
}

/// An operation's successful answer: a JSON value to serialise, or a body already serialised
/// (GetRecords splices stored records into its body).
enum Answer {
    Json(serde_json::Value),
    Body(Vec<u8>),
}

async fn api(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    let operation = target
        .strip_prefix(TARGET_PREFIX)
        .or_else(|| target.strip_prefix(crate::streams::api::TARGET_PREFIX))
        .unwrap_or(target)
        .to_string();
    // The request's share of the budget for requests in flight, held until its answer is
    // serialised, then its answer's bytes until the client has taken them.
    let mut held: Option<Admission> = None;
    // A body the client encoded wrongly: answered 500 as DynamoDB answers it, but the client's
    // fault, so neither an ERROR line nor a server error in the metrics (any client could
    // fill both).
    let mut badly_encoded = false;
    let result = match authenticate_head(&state, &method, &uri, &headers) {
        Err(error) => Err(error),
        Ok(admitted) => match read_body(body).await {
            Err(response) => return response,
            Ok((body, reading)) => {
                match authenticate_body(&state, admitted, &operation, &method, &uri, &headers, &body) {
                    Err(error) => Err(error),
                    Ok(_)
                        if !target.starts_with(TARGET_PREFIX)
                            && !target.starts_with(crate::streams::api::TARGET_PREFIX) =>
                    {
                        Err(ApiError::new(
                            ErrorKind::UnknownOperation,
                            format!(
                                "Unknown operation: X-Amz-Target must be {TARGET_PREFIX}<Operation>, got '{target}'"
                            ),
                        ))
                    }
                    Ok(signature) => {
                        let admitted = state
                            .in_flight
                            .admit(body.len(), crate::in_flight::answer_reserve_bytes(&operation))
                            .await
                            .map_err(budget_spent);
                        // Admitted (or refused): the body's share of the listener's budget goes.
                        drop(reading);
                        // One endpoint: DynamoDB Streams reads compressed bodies as DynamoDB does.
                        let inflated = match admitted {
                            Err(error) => Err(error),
                            Ok(admission) => {
                                inflate_within(&state.in_flight, held.insert(admission), &headers, body).await
                            }
                        };
                        let result = match inflated {
                            Err(error) => Err(error),
                            Ok(Err(crate::compat::Inflate::TooLarge(refusal))) => return refusal_response(&refusal),
                            Ok(Err(crate::compat::Inflate::Invalid(error))) => {
                                badly_encoded = true;
                                Err(error)
                            }
                            Ok(Ok(body)) if target.starts_with(crate::streams::api::TARGET_PREFIX) => {
                                crate::streams::api::handle(state.store.engine(), &operation, &body)
                                    .await
                                    .map(Answer::Body)
                            }
                            Ok(Ok(_)) if operation == "DescribeEndpoints" => {
                                Ok(Answer::Json(crate::compat::describe_endpoints(&headers)))
                            }
                            Ok(Ok(body)) => state.store.handle(&operation, &body).await.map(Answer::Json),
                        };
                        if let (Err(error), Some(verified)) = (&result, &signature)
                            && retried_by_clients(error.kind)
                        {
                            state
                                .replays
                                .lock()
                                .expect("replay guard lock is never poisoned")
                                .forget(verified);
                        }
                        result
                    }
                }
            }
        },
    };
    let label = if crate::ops::OPERATIONS.contains(&operation.as_str())
        || crate::streams::api::OPERATIONS.contains(&operation.as_str())
    {
        operation
    } else {
        "unknown".to_string()
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(error) if error.kind.is_server_fault() && !badly_encoded => "server_error",
        Err(_) => "client_error",
    };
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            operation: label.clone(),
            outcome: outcome.into(),
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&OperationLabels {
            operation: label.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(answer) => {
            let body = match answer {
                Answer::Body(body) => body,
                // Operations without an output shape (TagResource, UntagResource) answer with
                // an empty body, as DynamoDB does.
                Answer::Json(value)
                    if matches!(label.as_str(), "TagResource" | "UntagResource")
                        && value.as_object().is_some_and(serde_json::Map::is_empty) =>
                {
                    Vec::new()
                }
                Answer::Json(value) => serde_json::to_vec(&value).unwrap_or_default(),
            };
            let mut out = HeaderMap::new();
            let body = crate::compat::encode_response(&headers, body, &mut out);
            let answer_bytes = body.len();
            let mut response = (StatusCode::OK, body).into_response();
            // The share shrinks to the answer's bytes, held until the client has taken them.
            if let Some(mut admission) = held.take() {
                admission.shrink_to(answer_bytes);
                response.extensions_mut().insert(crate::in_flight::Held::new(admission));
            }
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(answer_content_type(&headers)),
            );
            response.headers_mut().extend(out);
            response
        }
        Err(error) => {
            if error.kind.is_server_fault() && !badly_encoded {
                tracing::error!(operation = %label, %error, "request failed");
            } else {
                tracing::debug!(operation = %label, %error, "request refused");
            }
            error_response_as(&error, answer_content_type(&headers))
        }
    }
}

/// What `/health` says: the status, and every reason for it that holds now.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    status: &'static str,
    reasons: Vec<String>,
}

/// The store's health from its parts, worst first: a stopped writer (`not_ready`), a writer
/// reopening the database (`degraded`: nothing is served), a disk below the watermark
/// (`read_only`: reads and deletes are served, new writes refused), replication alarms
/// (`degraded`), else `ready`. Only `ready` answers 200.
fn judge_health(
    writer_alive: bool,
    writer: &WriterStatus,
    disk: &DiskStatus,
    replication_alarms: Vec<String>,
) -> Verdict {
    let mut status = "ready";
    let mut reasons = Vec::new();
    if !writer_alive {
        status = "not_ready";
        reasons.push("the storage writer has stopped; restart the store and check its log".to_string());
    }
    if writer.state == WriterState::Reopening {
        if status == "ready" {
            status = "degraded";
        }
        reasons.push(format!(
            "writer failing: the database is being reopened after a storage I/O error ({} failed attempts; last error: {}); reads and writes fail until it is back",
            writer.reopen_attempts,
            writer.last_error.as_deref().unwrap_or("unknown")
        ));
    }
    if let Some(problem) = &disk.files_gone {
        if status == "ready" {
            status = "read_only";
        }
        reasons.push(format!("new writes are refused: {problem}"));
    }
    if disk.low {
        if status == "ready" {
            status = "read_only";
        }
        reasons.push(format!(
            "disk below watermark: {} bytes free of {}, below disk_free_bytes_min ({} bytes); new writes are refused, reads and deletes are served; free space on the data directory's filesystem and writes resume by themselves",
            disk.free_bytes, disk.total_bytes, disk.free_bytes_min
        ));
    }
    if !replication_alarms.is_empty() && status == "ready" {
        status = "degraded";
    }
    reasons.extend(replication_alarms);
    if reasons.is_empty() {
        reasons.push("serving reads and writes".to_string());
    }
    Verdict { status, reasons }
}

/// Replication conditions that make this region unfit to serve as a global-table replica: its
/// own database new while the peers list replicas here it lacks (they say so in their answers to
/// its marks), or a
/// peer whose clock is beyond the signing window (the two refuse each other's changes, so they
/// diverge until a clock is fixed; failing back to such a region would lose the other's writes).
fn replication_alarms(store: &Store) -> Vec<String> {
    let Some(replication) = store.replication() else {
        return Vec::new();
    };
    let clocks = replication.clock_status();
    let mut alarms: Vec<String> = clocks
        .peers
        .iter()
        .filter(|peer| peer.beyond_window)
        .map(|peer| {
            format!(
                "replication refused for clock skew: {}'s clock is {} ms {} this region's, beyond the {} ms signing window; changes are not exchanged with it until NTP fixes the wrong clock (nothing is lost; the regions converge afterwards)",
                peer.peer,
                peer.offset_ms.unsigned_abs(),
                if peer.offset_ms >= 0 { "ahead of" } else { "behind" },
                crate::global::REQUEST_SKEW_MS_MAX
            )
        })
        .collect();
    // A database wiped or replaced under this region: the peers list replicas here it lacks.
    // This region holds none of their data, so it must not take traffic for them.
    for (peer, missing) in replication.missing_here() {
        if missing.tables.is_empty() {
            alarms.push(format!(
                "this region's database is new since {since} (Unix ms, {peer}'s clock; its data directory was wiped or replaced): before this store last started, {peer} listed replicas of global tables here that this database does not have, so this region serves none of their data until {peer} answers again (its next answer names the tables, or clears this once each was created again from {peer}: UpdateTable ReplicaUpdates Delete, then Create, for {region})",
                since = missing.since,
                region = replication.region(),
            ));
            continue;
        }
        alarms.push(format!(
            "this region's database is new since {since} (Unix ms, {peer}'s clock; its data directory was wiped or replaced): {peer} lists replicas of the global tables {tables} here, which this database does not have, so this region serves none of their data; create each again from {peer} (UpdateTable ReplicaUpdates Delete, then Create, for {region}), which backfills it, and this region is ready again",
            since = missing.since,
            tables = missing.tables.join(", "),
            region = replication.region(),
        ));
    }
    alarms
}

/// Peers whose database is new while global tables still list their replicas
/// (`Replication::tables_missing_at`). A warning, not a reason to fail this region's health:
/// this region is sound, and a check that failed it would send traffic to the empty one.
fn replication_warnings(store: &Store) -> Vec<String> {
    let Some(replication) = store.replication() else {
        return Vec::new();
    };
    replication
        .peers()
        .iter()
        .filter_map(|peer| {
            let (since, tables) = replication.tables_missing_at(&peer.region)?;
            Some(format!(
                "{peer}'s store answers with a new database since {since} (Unix ms): its data directory was wiped or replaced, so its replicas of the global tables ({tables}) are empty or missing while they are listed ACTIVE, and it skips the changes it is sent for them; create each again from this region (UpdateTable ReplicaUpdates Delete, then Create, for {peer}), which backfills it",
                peer = peer.region,
                tables = tables.join(", "),
            ))
        })
        .collect()
}

fn disk_json(disk: &DiskStatus) -> serde_json::Value {
    json!({
        "free_bytes": disk.free_bytes,
        "total_bytes": disk.total_bytes,
        "free_bytes_min": disk.free_bytes_min,
        "below_watermark": disk.low,
        "reserve_held_bytes": disk.reserve_held_bytes,
        "problem": disk.problem,
        "files_gone": disk.files_gone,
    })
}

fn clock_json(clock: &crate::engine::ClockStatus) -> serde_json::Value {
    json!({
        "steps_total": clock.steps_total,
        "last_step_ms": clock.last_step_ms,
        "last_step_at_unix_ms": clock.last_step_at_unix_ms,
    })
}

fn backups_json(backups: &crate::backup::BackupStatus) -> serde_json::Value {
    json!({
        "creating": backups.creating,
        "failed_total": backups.failed_total,
        "last_failure": backups.last_failure,
        "restores_failed_total": backups.restores_failed_total,
        "last_restore_failure": backups.last_restore_failure,
    })
}

fn writer_json(writer: &WriterStatus) -> serde_json::Value {
    json!({
        "state": writer.state.as_str(),
        "reopening_since_unix_ms": writer.reopening_since_unix_ms,
        "reopen_attempts": writer.reopen_attempts,
        "storage_failures_total": writer.storage_failures_total,
        "reopens_total": writer.reopens_total,
        "writes_refused_total": writer.writes_refused_total,
        "last_error": writer.last_error,
        "last_error_at_unix_ms": writer.last_error_at_unix_ms,
        "recovered_at_unix_ms": writer.recovered_at_unix_ms,
        "opened_after_repair": writer.opened.repaired,
        "opened_after_upgrade": writer.opened.upgraded,
        "open_repair_ms": writer.opened.repair_ms,
        "open_replayed_batches": writer.opened.replayed.records,
        "open_replayed_bytes": writer.opened.replayed.bytes,
        "open_replay_ms": writer.opened.replayed.took_ms,
        "log_bytes": writer.log_bytes,
        "last_checkpoint_us": writer.last_checkpoint_us,
        "checkpoint_log_bytes_due": writer.checkpoint_log_bytes_due,
        "checkpoints_total": writer.checkpoints_total,
        "last_checkpoint_unix_ms": writer.last_checkpoint_unix_ms,
        "checkpointed": writer.checkpointed,
        "checkpoint_syncing": writer.checkpoint_syncing,
        "stream_overlay_blocks": writer.stream_overlay_blocks,
        "stream_overlay_bytes": writer.stream_overlay_bytes,
    })
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let engine = state.store.engine();
    let writer_alive = engine.writer_alive();
    let writer = engine.writer_status();
    let disk = engine.disk_status();
    let verdict = judge_health(writer_alive, &writer, &disk, replication_alarms(&state.store));
    let body = json!({
        "status": verdict.status,
        "reason": verdict.reasons.join("; "),
        "reasons": verdict.reasons,
        "warnings": replication_warnings(&state.store),
        "region": engine.region(),
        "tables": engine.table_names().len(),
        "storage_bytes": engine.storage_bytes(),
        "write_queue_free": engine.write_queue_free(),
        "disk": disk_json(&disk),
        "writer": writer_json(&writer),
        "backups": backups_json(&state.store.backups().status()),
        "clock": clock_json(&engine.clock_status()),
        "replication": replication_health(&state.store),
    });
    let status = if verdict.status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    let engine = state.store.engine();
    state.metrics.items.clear();
    state.metrics.table_bytes.clear();
    for table in engine.tables() {
        let stats = engine.stats(table.id, None);
        let labels = TableLabels {
            table: table.name.clone(),
        };
        state.metrics.items.get_or_create(&labels).set(stats.item_count as i64);
        state
            .metrics
            .table_bytes
            .get_or_create(&labels)
            .set(stats.size_bytes as i64);
    }
    state.metrics.storage_bytes.set(engine.storage_bytes() as i64);
    let disk = engine.disk_status();
    let metrics = &state.metrics;
    metrics.disk_free_bytes.set(disk.free_bytes as i64);
    metrics.disk_free_bytes_min.set(disk.free_bytes_min as i64);
    metrics.disk_below_watermark.set(i64::from(disk.low));
    metrics.disk_reserve_bytes.set(disk.reserve_held_bytes as i64);
    let writer = engine.writer_status();
    for candidate in [WriterState::Ok, WriterState::Reopening] {
        metrics
            .writer_state
            .get_or_create(&WriterStateLabels {
                state: candidate.as_str().to_string(),
            })
            .set(i64::from(candidate == writer.state));
    }
    // Counters mirror the engine's totals: add what is new since the last scrape.
    let _mirror = metrics.mirror.lock().expect("metrics lock is never poisoned");
    let advance = |counter: &Counter, total: u64| {
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    };
    advance(&metrics.storage_failures, writer.storage_failures_total);
    advance(&metrics.range_digest_mismatches, engine.digest_mismatches_total());
    advance(&metrics.reopens, writer.reopens_total);
    advance(&metrics.checkpoints, writer.checkpoints_total);
    metrics.open_repair_seconds.set(writer.opened.repair_ms as f64 / 1000.0);
    metrics
        .write_ahead_log_bytes
        .set(i64::try_from(writer.log_bytes).unwrap_or(i64::MAX));
    advance(&metrics.writes_refused, writer.writes_refused_total);
    metrics
        .in_flight_bytes
        .set(i64::try_from(state.in_flight.held_bytes()).unwrap_or(i64::MAX));
    metrics
        .in_flight_bytes_max
        .set(i64::try_from(state.in_flight.total_bytes()).unwrap_or(i64::MAX));
    let backups = state.store.backups().status();
    advance(&metrics.backups_failed, backups.failed_total);
    advance(&metrics.restores_failed, backups.restores_failed_total);
    advance(&metrics.clock_steps, engine.clock_status().steps_total);
    if let Some(replication) = state.store.replication() {
        use std::sync::atomic::Ordering::Relaxed;
        state.metrics.replication_log_head.set(engine.log_head() as i64);
        let tombstones = &replication.tombstones;
        let below = tombstones.purge_below.load(Relaxed);
        advance(&state.metrics.tombstones_purged, tombstones.purged_total.load(Relaxed));
        state.metrics.tombstones_waiting.set(engine.tombstone_entries() as i64);
        for peer in replication.peers() {
            let missing = replication
                .tables_missing_at(&peer.region)
                .map_or(0, |(_, tables)| tables.len());
            state
                .metrics
                .peer_replicas_missing
                .get_or_create(&ClockLabels {
                    peer: peer.region.clone(),
                })
                .set(missing as i64);
        }
        let clocks = replication.clock_status();
        state.metrics.clock_offset_alarm.set(i64::from(clocks.alarm()));
        for peer in &clocks.peers {
            state
                .metrics
                .peer_clock_offset_seconds
                .get_or_create(&ClockLabels {
                    peer: peer.peer.clone(),
                })
                .set(peer.offset_ms as f64 / 1000.0);
        }
        // No watermark yet (nothing purged since startup) is no lag figure: 0, not the
        // milliseconds since 1970.
        state.metrics.tombstone_purge_lag_seconds.set(match below {
            0 => 0.0,
            _ => {
                engine
                    .now_unix_ms()
                    .saturating_sub(below >> replication::hlc::LOGICAL_BITS) as f64
                    / 1000.0
            }
        });
        for (region, status) in &replication.status {
            let labels = PeerLabels {
                source: replication.region().to_string(),
                destination: region.clone(),
            };
            let metrics = &state.metrics;
            metrics
                .replication_lag_seconds
                .get_or_create(&labels)
                .set(status.lag_ms.load(Relaxed) as f64 / 1000.0);
            metrics
                .replication_pending_changes
                .get_or_create(&labels)
                .set(status.pending_changes.load(Relaxed) as i64);
            metrics
                .replication_pending_bytes
                .get_or_create(&labels)
                .set(status.pending_bytes.load(Relaxed) as i64);
            metrics
                .replication_acked_seq
                .get_or_create(&labels)
                .set(status.acked.load(Relaxed) as i64);
        }
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response();
    }
    common::metrics::response(&headers, text)
}

/// A bare server on the same stack that answers `{}` to every request: the ceiling the store's
/// benchmark compares against.
pub async fn run_ceiling(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().fallback(|| async { ([(header::CONTENT_TYPE, CONTENT_TYPE)], "{}") });
    let options = common::http::Options::new("bench-ceiling", default_limits());
    common::http::serve(listener, options, app, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_operations_are_the_readers_and_nothing_else() {
        let mut readers: Vec<&str> = crate::ops::OPERATIONS
            .iter()
            .chain(crate::streams::api::OPERATIONS)
            .copied()
            .filter(|operation| read_only_operation(operation))
            .collect();
        readers.sort_unstable();
        let expected = "BatchGetItem DescribeBackup DescribeContinuousBackups DescribeEndpoints DescribeGlobalTable DescribeGlobalTableSettings DescribeLimits DescribeStream DescribeTable DescribeTimeToLive GetItem GetRecords GetShardIterator ListBackups ListGlobalTables ListStreams ListTables ListTagsOfResource Query Scan TransactGetItems";
        assert_eq!(readers, expected.split(' ').collect::<Vec<_>>());
        assert!(
            !read_only_operation("DescribeNothing"),
            "an unknown target counts as a write"
        );
    }
}
