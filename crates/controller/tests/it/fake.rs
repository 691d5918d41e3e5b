//! An in-test HTTP server standing in for `switchyard dns`'s admin API and webhooks: records
//! every request and answers with a status the test sets (or hangs).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: serde_json::Value,
}

#[derive(Default)]
struct Inner {
    seen: Vec<Seen>,
    status: u16,
    /// The body of every answer but a view (default `{}`).
    body: Option<String>,
    hang: bool,
    /// Like the DNS admin API: refuse generations older than the highest applied (per path).
    fence: bool,
    applied: std::collections::BTreeMap<String, u64>,
    /// Like the DNS admin API: what `PUT /v1/health` and `PUT /v1/txt` set, answered to
    /// `GET /v1/health` (`{"generation", "targets", "txt"}`). A push with `if_generation`
    /// other than the view's generation is refused with 412, as the DNS admin API does.
    view: serde_json::Value,
    /// A push (path, body) that lands right after the next read of the view: another
    /// leader's push arriving between a read and the push that follows it.
    land_after_read: Option<(String, serde_json::Value)>,
}

/// Applies a push to the modelled view (without checks).
fn apply(view: &mut serde_json::Value, path: &str, body: &serde_json::Value) {
    if view.is_null() {
        *view = serde_json::json!({"generation": 0, "targets": {}, "txt": {}});
    }
    let generation = body["generation"].as_u64().unwrap_or(0);
    view["generation"] = generation.max(view["generation"].as_u64().unwrap_or(0)).into();
    match path {
        "/v1/health" => {
            for (target, health) in body["targets"].as_object().into_iter().flatten() {
                view["targets"][target] = health.clone();
            }
        }
        "/v1/txt" => {
            if let Some(name) = body["name"].as_str() {
                view["txt"][name.to_ascii_lowercase()] = body["value"].clone();
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
pub struct Fake {
    inner: Arc<Mutex<Inner>>,
    pub url: String,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let (status, hang, answer) = {
        let mut inner = inner.lock().expect("lock");
        inner.seen.push(Seen {
            method: method.to_string(),
            path: uri.path().to_string(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            body: body.clone(),
        });
        let mut status = inner.status;
        if method == Method::GET && uri.path() == "/v1/health" && status == 200 {
            let view = if inner.view.is_null() {
                serde_json::json!({"generation": 0, "targets": {}, "txt": {}})
            } else {
                inner.view.clone()
            };
            if let Some((path, push)) = inner.land_after_read.take() {
                apply(&mut inner.view, &path, &push);
            }
            drop(inner);
            return (StatusCode::OK, axum::Json(view)).into_response();
        }
        if inner.fence
            && let Some(generation) = body["generation"].as_u64()
        {
            let applied = inner.applied.entry(uri.path().to_string()).or_insert(0);
            if generation < *applied {
                status = 409;
            } else {
                *applied = generation;
            }
        }
        if let Some(expected) = body["if_generation"].as_u64()
            && status == 200
            && inner.view["generation"].as_u64().unwrap_or(0) != expected
        {
            status = 412;
        }
        // A hanging request is not applied (the roll-forward tests push again).
        if method == Method::PUT && status == 200 && !inner.hang {
            apply(&mut inner.view, uri.path(), &body);
        }
        (
            status,
            inner.hang,
            inner.body.clone().unwrap_or_else(|| "{}".to_string()),
        )
    };
    if hang {
        std::future::pending::<()>().await;
    }
    (StatusCode::from_u16(status).expect("valid status"), answer).into_response()
}

impl Fake {
    pub async fn start() -> Fake {
        let inner = Arc::new(Mutex::new(Inner {
            status: 200,
            ..Inner::default()
        }));
        let app = Router::new().fallback(handle).with_state(Arc::clone(&inner));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake {
            inner,
            url,
            task: Arc::new(task),
        }
    }

    pub fn set_status(&self, status: u16) {
        self.inner.lock().expect("lock").status = status;
    }

    /// Answers `body` (instead of `{}`) from now on.
    pub fn set_body(&self, body: &str) {
        self.inner.lock().expect("lock").body = Some(body.to_string());
    }

    pub fn set_hang(&self, hang: bool) {
        self.inner.lock().expect("lock").hang = hang;
    }

    pub fn set_fence(&self, fence: bool) {
        self.inner.lock().expect("lock").fence = fence;
    }

    /// Lands `push` at `path` right after the next read of the view.
    pub fn land_after_read(&self, path: &str, push: serde_json::Value) {
        self.inner.lock().expect("lock").land_after_read = Some((path.to_string(), push));
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().expect("lock").seen.clone()
    }

    pub fn seen_on(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}
