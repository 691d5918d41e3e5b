//! What the fakes share: an HTTP server on loopback that hands every request to one closure,
//! and a checker that collects problems as the controller's config check would.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// A request as a fake sees it.
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn bearer(&self) -> Option<&str> {
        self.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    }
}

/// A JSON answer with optional extra headers.
pub fn answer(status: u16, body: serde_json::Value, headers: &[(&str, &str)]) -> Response {
    let mut response = (
        StatusCode::from_u16(status).expect("a valid status"),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    for (name, value) in headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    response
}

/// DigitalOcean's error body (`id`, `message`, `request_id`) with `status`.
pub fn digitalocean_error(status: u16, id: &str, message: &str) -> Response {
    answer(
        status,
        serde_json::json!({"id": id, "message": message, "request_id": "4d9d8375-3c56-4925-a3e7-eed06f8fa9c6"}),
        &[],
    )
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// Serves `handler` on 127.0.0.1; returns `http://127.0.0.1:PORT`.
pub async fn serve(handler: impl Fn(Request) -> Response + Send + Sync + 'static) -> String {
    let handler: Handler = Arc::new(handler);
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let handler = Arc::clone(&handler);
        let future: Pin<Box<dyn Future<Output = Response> + Send>> = Box::pin(async move {
            let query = uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .collect();
            handler(Request {
                method,
                path: uri.path().to_string(),
                query,
                headers,
                body,
            })
        });
        future
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}")
}

pub use crate::common::Collect;

/// A file holding an API token, removed when dropped.
pub fn token_file(token: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), token).expect("write token");
    file
}

/// An order moving the active region from `from` to `to` at `generation`.
pub fn order(generation: u64, from: Option<&str>, to: &str) -> providers::Order {
    crate::support::order_from(generation, from, to, false)
}

/// The failover every REST test orders: from us-east-1 to eu-west-1 at `generation`.
pub fn failover(generation: u64) -> providers::Order {
    order(generation, Some("us-east-1"), "eu-west-1")
}

/// A fake's throttling: the next `left` requests are answered 429 and counted in `seen`.
#[derive(Default)]
pub struct Throttle {
    pub left: u32,
    pub seen: u32,
}

impl Throttle {
    /// Whether this request is to be throttled (then counted).
    pub fn take(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        self.seen += 1;
        true
    }
}

/// One page of a listing as the request's `page` and `per_page` ask (`per_page_default` when
/// left out; pages count from 1).
pub struct Page {
    pub items: Vec<serde_json::Value>,
    pub page: usize,
    pub per_page: usize,
    pub total: usize,
    pub pages: usize,
}

pub fn page_of(request: &Request, per_page_default: usize, matching: Vec<&serde_json::Value>) -> Page {
    let per_page: usize = request
        .query("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(per_page_default);
    let page: usize = request.query("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let total = matching.len();
    let items = matching
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    Page {
        items,
        page,
        per_page,
        total,
        pages: total.div_ceil(per_page).max(1),
    }
}

/// What every record or address step must do with the [`failover`] of `generation`: move
/// (its outcome names `moved_to` and says it read the value back), then, ordered again,
/// write nothing (`writes` counts the fake's writes before and after).
pub async fn moves_then_stays<F, Fut>(run: F, generation: u64, moved_to: &str, writes: impl Fn() -> usize) -> String
where
    F: Fn(providers::Order) -> Fut,
    Fut: Future<Output = providers::Outcome>,
{
    let done = run(failover(generation)).await.expect("moved");
    assert!(done.contains(moved_to) && done.contains("read back"), "{done}");
    let written = writes();
    let again = run(failover(generation)).await.expect("idempotent");
    assert!(again.contains("already"), "{again}");
    assert_eq!(writes(), written, "nothing written the second time");
    done
}
