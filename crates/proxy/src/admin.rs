//! The runtime API on `admin_listen`: server states (`drain`, `ready`, `maint`), the stats page
//! (HTML and JSON) and Prometheus `/metrics`.
//!
//! Invariant: with a token configured every endpoint needs `Authorization: Bearer TOKEN`;
//! without one, [`check_exposure`] refuses any address but loopback.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use crate::balance::{AdminState, ServerId};
use crate::config::WEIGHT_MAX;
use crate::proxy::Shared;
use common::text::escape_html as escape;

/// Largest admin request body (a state change is a few bytes).
const ADMIN_BODY_BYTES_MAX: usize = 4096;

/// Refuses to expose an unauthenticated admin API beyond loopback.
pub fn check_exposure(address: SocketAddr, token: Option<&str>) -> Result<(), String> {
    if common::secret::open_to_network(address, token.is_some()) {
        return Err(format!(
            "admin_listen {address} is not loopback and no token is set: pass --token-file FILE or set SWITCHYARD_CONTROL_TOKEN, or listen on 127.0.0.1"
        ));
    }
    Ok(())
}

/// One server as the API, the stats page and the metrics show it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServerView {
    pub name: String,
    pub address: String,
    pub backup: bool,
    /// HAProxy-style status: UP, UP 2/3, DOWN, DOWN 1/2, DRAIN (UP), MAINT.
    pub status: String,
    pub admin: AdminState,
    /// Healthy by checks (regardless of the admin state).
    pub healthy: bool,
    /// Takes new requests now.
    pub serving: bool,
    pub weight: u32,
    pub effective_weight: u32,
    pub active: u32,
    pub requests: u64,
    pub errors: u64,
    pub retries: u64,
    pub checks_passed: u64,
    pub checks_failed: u64,
    pub last_check: String,
    /// Seconds since the last change of health or admin state.
    pub last_change_seconds: u64,
}

pub fn snapshot(shared: &Shared) -> Vec<ServerView> {
    let now = shared.now_ms();
    let balancer = shared.balancer();
    balancer
        .servers()
        .iter()
        .enumerate()
        .map(|(index, server)| {
            let effective_weight = balancer.effective_weight(ServerId(index), now);
            let healthy = server.check.is_up();
            ServerView {
                name: server.config.name.clone(),
                address: server.config.address.to_string(),
                backup: server.config.backup,
                status: server.status(),
                admin: server.admin,
                healthy,
                serving: healthy && server.admin == AdminState::Ready && server.config.weight > 0,
                weight: server.config.weight,
                effective_weight,
                active: server.active,
                requests: server.requests,
                errors: server.errors,
                retries: server.retries,
                checks_passed: server.checks.passed,
                checks_failed: server.checks.failed,
                last_check: server.checks.last.clone(),
                last_change_seconds: now.saturating_sub(server.last_change_ms) / 1000,
            }
        })
        .collect()
}

#[derive(Clone)]
struct AdminContext {
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
}

/// Serves the admin API until `shutdown` resolves.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    token: Option<String>,
    tls: Option<Arc<common::http::Tls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let context = AdminContext {
        shared,
        token: token.map(Arc::from),
    };
    let router = Router::new()
        .route("/v1/servers", get(list_servers))
        .route("/v1/servers/{name}/state", post(set_state))
        .route("/v1/servers/{name}/weight", post(set_weight))
        .route("/stats", get(stats_html))
        .route("/stats.json", get(stats_json))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(ADMIN_BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(context.clone(), authenticate))
        .with_state(context);
    let options = common::http::Options::new(
        "proxy-admin",
        common::http::Limits::with_body_limit(ADMIN_BODY_BYTES_MAX),
    )
    .tls(tls);
    common::http::serve(listener, options, router, shutdown).await
}

async fn authenticate(State(context): State<AdminContext>, request: Request, next: Next) -> Response {
    if let Some(why) = common::secret::browser_forgery(request.headers(), context.token.is_some()) {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"error": "forbidden", "message": why})),
        )
            .into_response();
    }
    if let Some(token) = &context.token {
        let given = common::secret::bearer(request.headers());
        if !given.is_some_and(|g| common::secret::same_secret(token.as_bytes(), g.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({
                    "error": "unauthorized",
                    "message": "send Authorization: Bearer TOKEN with the proxy's control token"
                })),
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn list_servers(State(context): State<AdminContext>) -> Response {
    axum::Json(snapshot(&context.shared)).into_response()
}

#[derive(Deserialize)]
struct StateChange {
    state: String,
}

async fn set_state(
    State(context): State<AdminContext>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let requested = if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
        || body.first() == Some(&b'{')
    {
        match serde_json::from_slice::<StateChange>(&body) {
            Ok(change) => change.state,
            Err(error) => {
                return bad_request(format!("the body is not {{\"state\": \"drain|ready|maint\"}}: {error}"));
            }
        }
    } else {
        String::from_utf8_lossy(&body).trim().to_owned()
    };
    let state: AdminState = match requested.parse() {
        Ok(state) => state,
        Err(message) => return bad_request(message),
    };
    let (previous, view) = match change_server(&context.shared, &name, |b, id, now| b.set_admin(id, state, now)) {
        Ok(changed) => changed,
        Err(unknown) => return unknown,
    };
    tracing::info!(server = %name, ?previous, ?state, "server state set by the runtime API");
    axum::Json(json!({ "name": name, "previous": previous, "state": state, "server": view })).into_response()
}

#[derive(Deserialize)]
struct WeightChange {
    weight: u32,
}

async fn set_weight(
    State(context): State<AdminContext>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let weight = match serde_json::from_slice::<WeightChange>(&body) {
        Ok(change) if change.weight <= WEIGHT_MAX => change.weight,
        Ok(change) => {
            return bad_request(format!(
                "weight {} is too large; use 0 to {WEIGHT_MAX} (0: no new requests)",
                change.weight
            ));
        }
        Err(error) => return bad_request(format!("the body is not {{\"weight\": 0..{WEIGHT_MAX}}}: {error}")),
    };
    let (previous, view) = match change_server(&context.shared, &name, |b, id, now| b.set_weight(id, weight, now)) {
        Ok(changed) => changed,
        Err(unknown) => return unknown,
    };
    tracing::info!(server = %name, previous, weight, "server weight set by the runtime API");
    axum::Json(json!({ "name": name, "previous": previous, "weight": weight, "server": view })).into_response()
}

/// Applies `change` to the server `name` at the time now: what it returns (the previous state
/// or weight) and the server as it is then; an unknown server is answered 404.
fn change_server<T>(
    shared: &Shared,
    name: &str,
    change: impl FnOnce(&mut crate::balance::Balancer, ServerId, u64) -> T,
) -> Result<(T, Option<ServerView>), Response> {
    let now = shared.now_ms();
    let previous = {
        let mut balancer = shared.balancer();
        let Some(id) = balancer.find(name) else {
            return Err(unknown_server(&balancer, name));
        };
        change(&mut balancer, id, now)
    };
    Ok((previous, snapshot(shared).into_iter().find(|v| v.name == name)))
}

fn unknown_server(balancer: &crate::balance::Balancer, name: &str) -> Response {
    let known: Vec<String> = balancer.servers().iter().map(|s| s.config.name.clone()).collect();
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({
            "error": "unknown_server",
            "message": format!("no server named '{name}'; servers are: {}", known.join(", "))
        })),
    )
        .into_response()
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": "bad_request", "message": message })),
    )
        .into_response()
}

fn frontend_json(shared: &Shared) -> serde_json::Value {
    let s = shared.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    json!({
        "listen": shared.config.listen.to_string(),
        "balance": shared.config.balance,
        "uptime_seconds": shared.now_ms() / 1000,
        "connections_active": load(&s.connections_active),
        "connections_total": load(&s.connections_total),
        "requests_total": load(&s.requests_total),
        "responses": {
            "1xx": load(&s.responses_1xx), "2xx": load(&s.responses_2xx), "3xx": load(&s.responses_3xx),
            "4xx": load(&s.responses_4xx), "5xx": load(&s.responses_5xx),
        },
        "retries_total": load(&s.retries_total),
        "body_too_large_total": load(&s.body_too_large_total),
        "bad_host_total": load(&s.bad_host_total),
        "no_server_total": load(&s.no_server_total),
        "server_timeouts_total": load(&s.server_timeouts_total),
        "client_errors_total": load(&s.client_errors_total),
        "tunnels_total": load(&s.tunnels_total),
        "tunnels_active": load(&s.tunnels_active),
    })
}

async fn stats_json(State(context): State<AdminContext>) -> Response {
    axum::Json(json!({
        "frontend": frontend_json(&context.shared),
        "servers": snapshot(&context.shared),
    }))
    .into_response()
}

async fn stats_html(State(context): State<AdminContext>) -> Html<String> {
    let servers = snapshot(&context.shared);
    let frontend = frontend_json(&context.shared);
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>switchyard proxy statistics</title><style>\
         body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}\
         th,td{border:1px solid #999;padding:2px 6px;text-align:right}th{background:#ccd}\
         td.name{text-align:left}tr.up{background:#cfc}tr.down{background:#fcc}tr.maint{background:#ccf}\
         tr.drain{background:#fda}tr.trans{background:#ffc}</style></head><body>\
         <h1>switchyard proxy statistics</h1>",
    );
    let _ = write!(
        page,
        "<p>listen {} · balance {} · uptime {} s · connections {} active, {} total · requests {}</p>",
        escape(&context.shared.config.listen.to_string()),
        frontend["balance"].as_str().unwrap_or("?"),
        frontend["uptime_seconds"],
        frontend["connections_active"],
        frontend["connections_total"],
        frontend["requests_total"],
    );
    page.push_str(
        "<table><tr><th>name</th><th>address</th><th>status</th><th>weight</th><th>active conns</th>\
         <th>requests</th><th>errors</th><th>retries</th><th>checks ok/failed</th><th>last check</th>\
         <th>backup</th><th>last change</th></tr>",
    );
    for server in &servers {
        let class = match server.status.as_str() {
            "UP" => "up",
            "DOWN" => "down",
            "MAINT" => "maint",
            s if s.starts_with("DRAIN") => "drain",
            _ => "trans",
        };
        let _ = write!(
            page,
            "<tr class=\"{class}\"><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}s</td></tr>",
            escape(&server.name),
            escape(&server.address),
            escape(&server.status),
            server.effective_weight,
            server.weight,
            server.active,
            server.requests,
            server.errors,
            server.retries,
            server.checks_passed,
            server.checks_failed,
            escape(&server.last_check),
            if server.backup { "Y" } else { "-" },
            server.last_change_seconds,
        );
    }
    page.push_str("</table></body></html>\n");
    Html(page)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    server: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

/// Builds the exposition from the current counters (a fresh registry per scrape: the counters
/// live in the balancer, where the hot path already updates them under its lock).
pub fn render_metrics(shared: &Shared) -> String {
    let mut registry = Registry::with_prefix("switchyard_proxy");
    let servers = snapshot(shared);
    let requests = Family::<ServerLabels, Counter>::default();
    let errors = Family::<ServerLabels, Counter>::default();
    let retries = Family::<ServerLabels, Counter>::default();
    let checks = Family::<CheckLabels, Counter>::default();
    let up = Family::<ServerLabels, Gauge>::default();
    let serving = Family::<ServerLabels, Gauge>::default();
    let active = Family::<ServerLabels, Gauge>::default();
    let weight = Family::<ServerLabels, Gauge>::default();
    for server in &servers {
        let labels = ServerLabels {
            server: server.name.clone(),
        };
        requests.get_or_create(&labels).inc_by(server.requests);
        errors.get_or_create(&labels).inc_by(server.errors);
        retries.get_or_create(&labels).inc_by(server.retries);
        for (result, count) in [("passed", server.checks_passed), ("failed", server.checks_failed)] {
            checks
                .get_or_create(&CheckLabels {
                    server: server.name.clone(),
                    result: result.into(),
                })
                .inc_by(count);
        }
        up.get_or_create(&labels).set(i64::from(server.healthy));
        serving.get_or_create(&labels).set(i64::from(server.serving));
        active.get_or_create(&labels).set(i64::from(server.active));
        weight.get_or_create(&labels).set(i64::from(server.effective_weight));
    }
    registry.register("server_requests", "Requests sent to each server", requests);
    registry.register(
        "server_errors",
        "5xx responses, connection errors and timeouts per server",
        errors,
    );
    registry.register("server_retries", "Requests retried away from each server", retries);
    registry.register("server_checks", "Active health checks by result", checks);
    registry.register("server_up", "1 when the server passes its health checks", up);
    registry.register("server_serving", "1 when the server takes new requests", serving);
    registry.register("server_active_requests", "Requests in flight per server", active);
    registry.register(
        "server_effective_weight",
        "Weight in effect (ramps during slow start)",
        weight,
    );
    let s = shared.stats();
    let responses = Family::<ClassLabels, Counter>::default();
    for (class, counter) in [
        ("1xx", &s.responses_1xx),
        ("2xx", &s.responses_2xx),
        ("3xx", &s.responses_3xx),
        ("4xx", &s.responses_4xx),
        ("5xx", &s.responses_5xx),
    ] {
        responses
            .get_or_create(&ClassLabels { class: class.into() })
            .inc_by(counter.load(Ordering::Relaxed));
    }
    registry.register("responses", "Responses to clients by status class", responses);
    let counter = |value: &std::sync::atomic::AtomicU64| {
        let c = Counter::<u64>::default();
        c.inc_by(value.load(Ordering::Relaxed));
        c
    };
    for (name, help, total) in [
        ("requests", "Client requests received", &s.requests_total),
        ("connections", "Client connections accepted", &s.connections_total),
        ("retries", "Retries on another server", &s.retries_total),
        ("body_too_large", "Requests refused with 413", &s.body_too_large_total),
        (
            "bad_host",
            "Requests refused with 400: no Host, several, or an invalid one (RFC 9112 section 3.2)",
            &s.bad_host_total,
        ),
        (
            "no_server",
            "Requests refused with 503: no server available",
            &s.no_server_total,
        ),
        (
            "server_timeouts",
            "Requests answered 504: no response headers in time",
            &s.server_timeouts_total,
        ),
        (
            "client_errors",
            "Client connection errors (header timeouts, oversize heads, bad bodies)",
            &s.client_errors_total,
        ),
        (
            "tunnels",
            "Connections switched to another protocol (WebSocket) and tunnelled",
            &s.tunnels_total,
        ),
    ] {
        registry.register(name, help, counter(total));
    }
    let active_connections = Gauge::<i64>::default();
    active_connections.set(i64::try_from(s.connections_active.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    registry.register("connections_active", "Client connections open", active_connections);
    let active_tunnels = Gauge::<i64>::default();
    active_tunnels.set(i64::try_from(s.tunnels_active.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    registry.register("tunnels_active", "Tunnels open (WebSocket connections)", active_tunnels);
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!(%error, "encode metrics");
    }
    text
}

async fn metrics(State(context): State<AdminContext>, headers: axum::http::HeaderMap) -> Response {
    common::metrics::response(&headers, render_metrics(&context.shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_admin_only_on_loopback() {
        let public: SocketAddr = "0.0.0.0:8404".parse().expect("literal");
        let local: SocketAddr = "127.0.0.1:8404".parse().expect("literal");
        assert!(check_exposure(public, None).is_err());
        assert!(check_exposure(public, Some("t")).is_ok());
        assert!(check_exposure(local, None).is_ok());
    }
}
