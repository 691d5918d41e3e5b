//! The admin API the controller pushes to: `PUT /v1/health`, `PUT /v1/txt`, `GET /v1/health`,
//! plus `/metrics` and `/health`.
//!
//! Invariants: a push with a generation older than the applied one gets 409 and changes nothing;
//! one more than `view::GENERATION_STEP_MAX` above it gets 400 and changes nothing; PUTs need
//! the bearer token (the controller's DNS token, role `dns`) when one is configured.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::dns_admin::{AdminError, HEALTH_PATH, HealthApplied, HealthPush, TXT_PATH, TxtApplied, TxtPush, View};
use hickory_proto::rr::{Name, RecordType};
use serde::Deserialize;
use serde_json::json;

use crate::metrics::OutcomeLabels;
use crate::server::State;
use crate::view::{Generation, ViewError};
use crate::zone::Lookup;

/// Largest admin request body.
pub const ADMIN_BODY_BYTES_MAX: usize = 1024 * 1024;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(HEALTH_PATH, get(get_view).put(put_health))
        .route(TXT_PATH, axum::routing::put(put_txt))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_BYTES_MAX))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    refusal(status, code, message, None)
}

fn refusal(status: StatusCode, code: &str, message: String, generation: Option<u64>) -> Response {
    let body = AdminError {
        error: code.to_string(),
        generation,
        message,
    };
    (status, axum::Json(body)).into_response()
}

fn outcome(state: &State, outcome: &'static str) {
    state.metrics.pushes.get_or_create(&OutcomeLabels { outcome }).inc();
}

fn authorize(state: &State, headers: &HeaderMap) -> Result<(), Response> {
    if let Some(why) = common::secret::browser_forgery(headers, state.token.is_some()) {
        outcome(state, "forbidden");
        return Err(error(StatusCode::FORBIDDEN, "forbidden", why));
    }
    let Some(token) = &state.token else { return Ok(()) };
    match common::secret::bearer(headers) {
        Some(offered) if common::secret::same_secret(token.as_bytes(), offered.as_bytes()) => Ok(()),
        _ => {
            outcome(state, "unauthorized");
            Err(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the control token as `Authorization: Bearer TOKEN`".to_string(),
            ))
        }
    }
}

fn view_error(state: &State, e: ViewError) -> Response {
    match e {
        ViewError::Stale { applied, .. } => {
            outcome(state, "stale");
            tracing::warn!("refused a stale push: {e}");
            refusal(StatusCode::CONFLICT, "stale_generation", e.to_string(), Some(applied))
        }
        ViewError::TooFarAhead { applied, .. } => {
            outcome(state, "rejected");
            tracing::warn!("refused a push too far ahead: {e}");
            refusal(
                StatusCode::BAD_REQUEST,
                "generation_too_far_ahead",
                e.to_string(),
                Some(applied),
            )
        }
        other => {
            outcome(state, "rejected");
            error(StatusCode::BAD_REQUEST, "invalid", other.to_string())
        }
    }
}

/// 412 `generation_moved` when a conditional push's expected generation is not the view's.
fn moved(state: &State, expected: Option<u64>, applied: u64) -> Option<Response> {
    let expected = expected.filter(|&expected| expected != applied)?;
    outcome(state, "moved");
    Some(refusal(
        StatusCode::PRECONDITION_FAILED,
        "generation_moved",
        format!(
            "the view is at generation {applied}, not {expected} as the push expected: read it again (GET {HEALTH_PATH}) and push only what is still missing"
        ),
        Some(applied),
    ))
}

fn parse<T: for<'de> Deserialize<'de>>(state: &State, body: &Bytes, example: &str) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        outcome(state, "rejected");
        error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("the body is not valid ({e}); send JSON like {example}"),
        )
    })
}

async fn put_health(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = authorize(&state, &headers) {
        return response;
    }
    let push: HealthPush = match parse(
        &state,
        &body,
        r#"{"generation": 7, "targets": {"us-east-1": "unhealthy"}}"#,
    ) {
        Ok(push) => push,
        Err(response) => return response,
    };
    let _writer = state.view_writer.lock().unwrap_or_else(|e| e.into_inner());
    let current = state.view();
    if let Some(response) = moved(&state, push.if_generation, current.generation.0) {
        return response;
    }
    match current.apply_health(Generation(push.generation), &push.targets) {
        Ok(next) => {
            let changed = next.targets != current.targets || next.generation != current.generation;
            if changed {
                tracing::info!(generation = push.generation, targets = ?push.targets, "applied a health push");
            }
            let (generation, targets) = (next.generation.0, next.targets.clone());
            let persisted = state.publish_view(next);
            outcome(&state, "applied");
            let body = HealthApplied {
                generation,
                persisted,
                targets,
            };
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => view_error(&state, e),
    }
}

async fn put_txt(Extract(state): Extract<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = authorize(&state, &headers) {
        return response;
    }
    let push: TxtPush = match parse(
        &state,
        &body,
        r#"{"generation": 7, "name": "_active-region.shop.example.", "value": "eu-west-1"}"#,
    ) {
        Ok(push) => push,
        Err(response) => return response,
    };
    let raw = push.name.trim();
    let fqdn = if raw.ends_with('.') {
        raw.to_string()
    } else {
        format!("{raw}.")
    };
    let Ok(name) = Name::from_ascii(&fqdn) else {
        outcome(&state, "rejected");
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("'{raw}' is not a domain name; write it like _active-region.shop.example."),
        );
    };
    if name.iter().any(|label| label == b"*") {
        outcome(&state, "rejected");
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "{fqdn} has a wildcard label: a pushed TXT record answers its own name only; push it at the names to answer, or configure a wildcard record"
            ),
        );
    }
    let zones = state.zones();
    let Some(zone) = zones.zone_for(&name) else {
        outcome(&state, "rejected");
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("{fqdn} is outside every zone this server serves; use a name inside one of them"),
        );
    };
    if let Lookup::Exact(node) = zone.find(&name)
        && node.rrset(RecordType::CNAME).is_some()
    {
        outcome(&state, "rejected");
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("{fqdn} is a CNAME in the config, so it cannot have a TXT record; pick another name"),
        );
    }
    let key = name.to_lowercase().to_ascii();
    let _writer = state.view_writer.lock().unwrap_or_else(|e| e.into_inner());
    let current = state.view();
    if let Some(response) = moved(&state, push.if_generation, current.generation.0) {
        return response;
    }
    match current.apply_txt(Generation(push.generation), &key, push.value.as_deref()) {
        Ok(next) => {
            tracing::info!(generation = push.generation, name = %key, value = ?push.value, "applied a TXT push");
            let generation = next.generation;
            let persisted = state.publish_view(next);
            outcome(&state, "applied");
            let body = TxtApplied {
                generation: generation.0,
                name: key,
                persisted,
                value: push.value,
            };
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => view_error(&state, e),
    }
}

async fn get_view(Extract(state): Extract<Arc<State>>) -> Response {
    let view = state.view();
    axum::Json(View {
        generation: view.generation.0,
        targets: view.targets.clone(),
        txt: view.txt.clone(),
    })
    .into_response()
}

async fn metrics(Extract(state): Extract<Arc<State>>, headers: axum::http::HeaderMap) -> Response {
    common::metrics::response(&headers, state.metrics.encode())
}

async fn health(Extract(state): Extract<Arc<State>>) -> Response {
    let zones = state.zones().iter().count();
    axum::Json(json!({"status": "ok", "zones": zones})).into_response()
}
