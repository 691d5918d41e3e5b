//! The control API, shaped like Toxiproxy's so its clients and habits carry over:
//! `GET/POST /proxies`, `POST /populate`, `GET/POST/DELETE /proxies/{proxy}`,
//! `GET/POST /proxies/{proxy}/toxics`, `GET/POST/DELETE /proxies/{proxy}/toxics/{toxic}`,
//! `POST /reset`, `GET /version`, plus `GET /health`. Errors are `{"error": ..., "status": ...}`.
//!
//! With a token every request but `GET /health` needs `Authorization: Bearer TOKEN` (401
//! otherwise); without one the API serves on loopback only.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::net::TcpListener;

use crate::access::check_exposure;
use crate::proxy::{ProxySpec, ProxyUpdate, Registry, RegistryError};
use crate::toxic::{Toxic, ToxicUpdate};

/// Largest request body the control API reads.
pub const API_BODY_BYTES_MAX: usize = 1 << 20;

pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "status": self.status.as_u16()});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> ApiError {
        let status = match &error {
            RegistryError::ProxyNotFound(_) | RegistryError::ToxicNotFound { .. } => StatusCode::NOT_FOUND,
            RegistryError::ProxyExists(_) | RegistryError::ToxicExists { .. } => StatusCode::CONFLICT,
            RegistryError::BadRequest(_) | RegistryError::Toxic(_) => StatusCode::BAD_REQUEST,
            RegistryError::UpstreamNotAllowed { .. } => StatusCode::FORBIDDEN,
            RegistryError::Listen { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: error.to_string(),
        }
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("bad {what}: {error}"),
    })
}

type Shared = State<Arc<Registry>>;
type ApiResult = Result<Response, ApiError>;

/// The control API's routes over `registry`, open to whoever reaches it (loopback).
pub fn router(registry: Arc<Registry>) -> Router {
    router_with_token(registry, None)
}

/// The control API's routes over `registry`; with a token, every request but `GET /health`
/// must present it as `Authorization: Bearer TOKEN`.
pub fn router_with_token(registry: Arc<Registry>, token: Option<String>) -> Router {
    let token = token.filter(|t| !t.is_empty());
    let guarded = token.is_some();
    let routes = routes(registry).layer(axum::middleware::from_fn(
        move |request: Request, next: Next| async move {
            match common::secret::browser_forgery(request.headers(), guarded) {
                Some(why) => ApiError {
                    status: StatusCode::FORBIDDEN,
                    message: why,
                }
                .into_response(),
                None => next.run(request).await,
            }
        },
    ));
    match token {
        Some(token) => {
            let token: Arc<str> = Arc::from(token);
            routes.layer(axum::middleware::from_fn(move |request: Request, next: Next| {
                let token = Arc::clone(&token);
                async move { authorize(&token, request, next).await }
            }))
        }
        None => routes,
    }
}

async fn authorize(token: &str, request: Request, next: Next) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let presented = common::secret::bearer(request.headers()).unwrap_or_default();
    if common::secret::same_secret(token.as_bytes(), presented.as_bytes()) {
        return next.run(request).await;
    }
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: "this fault proxy needs its token: send Authorization: Bearer TOKEN".to_string(),
    }
    .into_response()
}

fn routes(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .route("/reset", post(reset))
        .route("/populate", post(populate))
        .route("/proxies", get(list).post(create))
        .route("/proxies/{proxy}", get(show).post(update).delete(delete))
        .route("/proxies/{proxy}/toxics", get(toxics).post(add_toxic))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(show_toxic).post(update_toxic).delete(remove_toxic),
        )
        .layer(DefaultBodyLimit::max(API_BODY_BYTES_MAX))
        .with_state(registry)
}

async fn metrics(State(registry): Shared, headers: axum::http::HeaderMap) -> Response {
    match registry.metrics().await.encode() {
        Some(text) => common::metrics::response(&headers, text),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response(),
    }
}

/// Serves the control API on `listener` (which must be on loopback) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_token(listener, registry, None, shutdown).await
}

/// Serves the control API on `listener` until `shutdown` resolves; without a token it refuses
/// a listener beyond loopback.
pub async fn serve_with_token(
    listener: TcpListener,
    registry: Arc<Registry>,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    check_exposure(listener.local_addr()?, token.as_deref()).map_err(std::io::Error::other)?;
    let options = common::http::Options::new(
        "fault-proxy-api",
        common::http::Limits::with_body_limit(API_BODY_BYTES_MAX),
    );
    common::http::serve(listener, options, router_with_token(registry, token), shutdown).await
}

async fn version() -> Response {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION"), "server": "switchyard fault-proxy"})).into_response()
}

async fn reset(State(registry): Shared) -> ApiResult {
    registry.reset().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn populate(State(registry): Shared, body: Bytes) -> ApiResult {
    let specs: Vec<ProxySpec> = parse(&body, "populate body (a JSON array of proxies)")?;
    let proxies = registry.populate(specs).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"proxies": proxies}))).into_response())
}

async fn list(State(registry): Shared) -> ApiResult {
    Ok(axum::Json(registry.list().await).into_response())
}

async fn create(State(registry): Shared, body: Bytes) -> ApiResult {
    let spec: ProxySpec = parse(&body, "proxy")?;
    let view = registry.create(spec).await?;
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn show(State(registry): Shared, Path(proxy): Path<String>) -> ApiResult {
    Ok(axum::Json(registry.get(&proxy).await?).into_response())
}

async fn update(State(registry): Shared, Path(proxy): Path<String>, body: Bytes) -> ApiResult {
    let update: ProxyUpdate = parse(&body, "proxy update")?;
    Ok(axum::Json(registry.update(&proxy, update).await?).into_response())
}

async fn delete(State(registry): Shared, Path(proxy): Path<String>) -> ApiResult {
    registry.delete(&proxy).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn toxics(State(registry): Shared, Path(proxy): Path<String>) -> ApiResult {
    Ok(axum::Json(registry.toxics(&proxy).await?).into_response())
}

async fn add_toxic(State(registry): Shared, Path(proxy): Path<String>, body: Bytes) -> ApiResult {
    let toxic: Toxic = parse(&body, "toxic")?;
    Ok(axum::Json(registry.add_toxic(&proxy, toxic).await?).into_response())
}

async fn show_toxic(State(registry): Shared, Path((proxy, toxic)): Path<(String, String)>) -> ApiResult {
    Ok(axum::Json(registry.toxic(&proxy, &toxic).await?).into_response())
}

async fn update_toxic(State(registry): Shared, Path((proxy, toxic)): Path<(String, String)>, body: Bytes) -> ApiResult {
    let update: ToxicUpdate = parse(&body, "toxic update")?;
    Ok(axum::Json(registry.update_toxic(&proxy, &toxic, &update).await?).into_response())
}

async fn remove_toxic(State(registry): Shared, Path((proxy, toxic)): Path<(String, String)>) -> ApiResult {
    registry.remove_toxic(&proxy, &toxic).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
