//! The shop's HTTP side: JSON API, HTML page, `/health`, session cookies.
//!
//! Reads (cart, orders) go to the local region's store; writes (sessions, cart changes,
//! orders) go to the store of the region the active-region pointer names, as an application
//! following Switchyard's pointer does. Placing an order reads the cart from the write region,
//! where the cart's own writes went.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::catalog::{self, PRODUCTS};
use crate::dynamo::{Client, DynamoError};
use crate::pointer::{ActiveRegion, PointerView};
use crate::tables::TableNames;
use common::text::escape_html as escape;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "shop_session";
/// Most of one product per cart line.
pub const QUANTITY_MAX: u64 = 99;
/// Most lines one cart (and so one order) holds.
pub const CART_LINES_MAX: usize = 50;
/// Most orders listed.
pub const ORDERS_LISTED_MAX: usize = 100;
/// Largest request body.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// How long `/health` waits for the local store.
pub const HEALTH_PROBE_MS: u64 = 2_000;
/// How long `/health` waits for the active region's store. Only reported, never failing the
/// check, so it must not slow the answer either: a hung active region (accepting connections,
/// answering nothing) would otherwise make every standby's `/health` outlast its checkers'
/// timeouts, and the standbys would look down exactly when they are needed.
pub const ACTIVE_STORE_PROBE_MS: u64 = 100;
/// The store's reserved table for write probes (Switchyard's store creates it, never lists it
/// and never replicates it).
pub const HEARTBEAT_TABLE: &str = "__switchyard_health";
/// Longest Idempotency-Key.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 64;

#[derive(Clone, Debug)]
pub struct ShopConfig {
    /// The region this instance runs in: its reads go to this region's store.
    pub region: String,
    /// Shown in responses (`x-switchyard-instance`) so a client sees which server answered.
    pub instance: String,
    pub tables: TableNames,
    /// Writes stop when the pointer was not confirmed for this long.
    pub pointer_stale_ms: u64,
}

pub struct Shop {
    config: ShopConfig,
    stores: BTreeMap<String, Client>,
    pointer: watch::Receiver<PointerView>,
    metrics: crate::metrics::ShopMetrics,
    /// Orders in MariaDB and sessions in Redis, when configured.
    databases: crate::databases::ShopDatabases,
}

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] DynamoError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
}

impl IntoResponse for ShopError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ShopError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            ShopError::Store(DynamoError::Unreachable { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable"),
            ShopError::Store(_) => (StatusCode::BAD_GATEWAY, "StoreError"),
            ShopError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            ShopError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        (status, axum::Json(json!({"error": code, "message": self.to_string()}))).into_response()
    }
}

type ShopResult = Result<Response, ShopError>;
type Shared = State<Arc<Shop>>;

impl Shop {
    /// `stores` must hold the local region (checked by the caller's configuration).
    pub fn new(config: ShopConfig, stores: BTreeMap<String, Client>, pointer: watch::Receiver<PointerView>) -> Shop {
        Shop {
            config,
            stores,
            pointer,
            metrics: crate::metrics::ShopMetrics::new(),
            databases: crate::databases::ShopDatabases::default(),
        }
    }

    /// Keeps orders (and sessions) in these databases too.
    pub fn with_databases(mut self, databases: crate::databases::ShopDatabases) -> Shop {
        self.databases = databases;
        self
    }

    fn local(&self) -> Result<&Client, ShopError> {
        self.stores.get(&self.config.region).ok_or_else(|| {
            ShopError::Unavailable(format!(
                "no store for the local region {0}: pass --store {0}=URL",
                self.config.region
            ))
        })
    }

    /// The store writes go to now, and the pointer that chose it.
    fn writer(&self) -> Result<(&Client, ActiveRegion), ShopError> {
        let active = {
            let view = self.pointer.borrow();
            view.usable(Instant::now(), self.config.pointer_stale_ms)
                .map_err(ShopError::Unavailable)?
                .clone()
        };
        let store = self.stores.get(&active.region).ok_or_else(|| {
            ShopError::Unavailable(format!(
                "the active region is {0} but this shop has no store for it: pass --store {0}=URL",
                active.region
            ))
        })?;
        Ok((store, active))
    }

    /// Removes `product` from the cart of `session`.
    async fn delete_cart_line(&self, store: &Client, session: &str, product: &str) -> Result<(), ShopError> {
        let key = json!({"session": {"S": session}, "product": {"S": product}});
        let request = json!({"TableName": self.config.tables.carts, "Key": key});
        store.call("DeleteItem", &request).await?;
        Ok(())
    }

    async fn cart_lines(&self, store: &Client, session: &str) -> Result<Vec<(String, u64)>, ShopError> {
        let mut query = session_query(&self.config.tables.carts, session, CART_LINES_MAX);
        query["ConsistentRead"] = json!(true);
        let answer = store.call("Query", &query).await?;
        Ok(answer["Items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| {
                        let product = item["product"]["S"].as_str()?.to_string();
                        let quantity = item["quantity"]["N"].as_str()?.parse().ok()?;
                        Some((product, quantity))
                    })
                    .filter(|(_, quantity)| *quantity > 0)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn cart_json(&self, store: &Client, session: Option<&str>) -> Result<Value, ShopError> {
        let lines = match session {
            Some(session) => self.cart_lines(store, session).await?,
            None => Vec::new(),
        };
        Ok(cart_view(session, &lines))
    }

    async fn create_session(&self, store: &Client, active: &ActiveRegion) -> Result<String, ShopError> {
        let session = new_id();
        self.databases
            .put_session(
                &session,
                &json!({"region": active.region, "instance": self.config.instance, "created_at_ms": now_ms()})
                    .to_string(),
            )
            .await
            .map_err(ShopError::Unavailable)?;
        store
            .call(
                "PutItem",
                &json!({
                    "TableName": self.config.tables.sessions,
                    "Item": {
                        "session": {"S": session},
                        "created_at_ms": {"N": now_ms().to_string()},
                        "region": {"S": active.region},
                        "instance": {"S": self.config.instance}
                    }
                }),
            )
            .await?;
        Ok(session)
    }

    /// The caller's session, created (in the write region) if the request has none.
    async fn session_for_write(
        &self,
        headers: &HeaderMap,
        store: &Client,
        active: &ActiveRegion,
    ) -> Result<(String, Option<HeaderValue>), ShopError> {
        if let Some(session) = session_cookie(headers) {
            return Ok((session, None));
        }
        let session = self.create_session(store, active).await?;
        let cookie = HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax; Max-Age=2592000"
        ))
        .expect("a hex session id makes a valid header value");
        Ok((session, Some(cookie)))
    }

    async fn add_to_cart(&self, headers: &HeaderMap, product: &str, quantity: u64) -> ShopResult {
        let Some(found) = catalog::find(product) else {
            return Err(ShopError::BadRequest(format!(
                "unknown product '{product}'; GET /api/products lists them"
            )));
        };
        if !(1..=QUANTITY_MAX).contains(&quantity) {
            return Err(ShopError::BadRequest(format!(
                "quantity {quantity} must be from 1 to {QUANTITY_MAX}"
            )));
        }
        let (store, active) = self.writer()?;
        let (session, cookie) = self.session_for_write(headers, store, &active).await?;
        let lines = self.cart_lines(store, &session).await?;
        if lines.len() >= CART_LINES_MAX && !lines.iter().any(|(p, _)| p == found.id) {
            return Err(ShopError::BadRequest(format!(
                "the cart already has {CART_LINES_MAX} different products; place an order first"
            )));
        }
        let result = store
            .call(
                "UpdateItem",
                &json!({
                    "TableName": self.config.tables.carts,
                    "Key": {"session": {"S": session}, "product": {"S": found.id}},
                    "UpdateExpression": "ADD quantity :q SET updated_at_ms = :t",
                    "ConditionExpression": "attribute_not_exists(quantity) OR quantity <= :room",
                    "ExpressionAttributeValues": {
                        ":q": {"N": quantity.to_string()},
                        ":t": {"N": now_ms().to_string()},
                        ":room": {"N": (QUANTITY_MAX - quantity).to_string()}
                    }
                }),
            )
            .await;
        match result {
            Ok(_) => {}
            Err(error) if error.kind() == Some("ConditionalCheckFailedException") => {
                return Err(ShopError::BadRequest(format!(
                    "at most {QUANTITY_MAX} of one product per cart"
                )));
            }
            Err(error) => return Err(error.into()),
        }
        let cart = self.cart_json(store, Some(&session)).await?;
        Ok(with_cookie(axum::Json(cart).into_response(), cookie))
    }

    async fn remove_from_cart(&self, headers: &HeaderMap, product: &str) -> ShopResult {
        let Some(session) = session_cookie(headers) else {
            return Ok(axum::Json(cart_view(None, &[])).into_response());
        };
        let (store, _) = self.writer()?;
        self.delete_cart_line(store, &session, product).await?;
        Ok(axum::Json(self.cart_json(store, Some(&session)).await?).into_response())
    }

    /// Places an order from the cart. With an `Idempotency-Key`, a retry returns the order the
    /// first attempt placed instead of placing another.
    async fn place_order(&self, headers: &HeaderMap) -> Result<(Value, bool), ShopError> {
        let Some(session) = session_cookie(headers) else {
            return Err(ShopError::BadRequest(
                "no session: add something to the cart first (the shop_session cookie holds the cart)".to_string(),
            ));
        };
        let order_id = match headers.get("idempotency-key") {
            Some(key) => {
                let key = key.to_str().unwrap_or_default();
                if key.is_empty()
                    || key.len() > IDEMPOTENCY_KEY_BYTES_MAX
                    || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(ShopError::BadRequest(format!(
                        "Idempotency-Key '{key}' must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} letters, digits, '-' or '_'"
                    )));
                }
                format!("k-{key}")
            }
            None => format!("{:013}-{}", now_ms(), &new_id()[..8]),
        };
        let (store, active) = self.writer()?;
        let lines = self.cart_lines(store, &session).await?;
        if lines.is_empty() {
            if order_id.starts_with("k-")
                && let Some(existing) = self.order(store, &session, &order_id).await?
            {
                return Ok((existing, false));
            }
            return Err(ShopError::BadRequest("the cart is empty".to_string()));
        }
        let mut items = Vec::new();
        let mut total_cents = 0u64;
        for (product, quantity) in &lines {
            let Some(found) = catalog::find(product) else { continue };
            total_cents += found.price_cents * quantity;
            items.push(json!({"M": {
                "product": {"S": found.id},
                "name": {"S": found.name},
                "quantity": {"N": quantity.to_string()},
                "price_cents": {"N": found.price_cents.to_string()}
            }}));
        }
        // The orders database first, as the record of the order (Magento's sales_order): an
        // order is acknowledged only once its row is committed there.
        let lines_text = serde_json::to_string(
            &lines
                .iter()
                .map(|(p, q)| json!({"product": p, "quantity": q}))
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        let stored = self
            .databases
            .insert_order(&order_id, &self.config.region, &session, &lines_text, total_cents)
            .await
            .map_err(ShopError::Unavailable)?;
        let mut item = json!({
            "session": {"S": session},
            "order_id": {"S": order_id},
            "status": {"S": "placed"},
            "items": {"L": items},
            "total_cents": {"N": total_cents.to_string()},
            "region": {"S": active.region},
            "generation": {"N": active.generation.to_string()},
            "instance": {"S": self.config.instance},
            "created_at_ms": {"N": now_ms().to_string()}
        });
        if let Some(stored) = &stored {
            item["increment_id"] = json!({"S": stored.increment_id});
            item["database_region"] = json!({"S": self.config.region});
        }
        let put = store
            .call(
                "PutItem",
                &json!({
                    "TableName": self.config.tables.orders,
                    "Item": item,
                    "ConditionExpression": "attribute_not_exists(order_id)"
                }),
            )
            .await;
        match put {
            Ok(_) => {}
            Err(error) if error.kind() == Some("ConditionalCheckFailedException") => {
                let existing = self.order(store, &session, &order_id).await?;
                return existing
                    .map(|order| (order, false))
                    .ok_or_else(|| ShopError::Unavailable(format!("order {order_id} exists but cannot be read")));
            }
            Err(error) => return Err(error.into()),
        }
        for (product, _) in &lines {
            self.delete_cart_line(store, &session, product).await?;
        }
        Ok((order_view(&item), true))
    }

    async fn order(&self, store: &Client, session: &str, order_id: &str) -> Result<Option<Value>, ShopError> {
        let answer = store
            .call(
                "GetItem",
                &json!({
                    "TableName": self.config.tables.orders,
                    "Key": {"session": {"S": session}, "order_id": {"S": order_id}},
                    "ConsistentRead": true
                }),
            )
            .await?;
        Ok(answer.get("Item").filter(|i| i.is_object()).map(order_view))
    }

    async fn orders(&self, session: Option<&str>) -> Result<Vec<Value>, ShopError> {
        let Some(session) = session else { return Ok(Vec::new()) };
        let mut query = session_query(&self.config.tables.orders, session, ORDERS_LISTED_MAX);
        query["ScanIndexForward"] = json!(false);
        let answer = self.local()?.call("Query", &query).await?;
        Ok(answer["Items"]
            .as_array()
            .map(|items| items.iter().map(order_view).collect())
            .unwrap_or_default())
    }

    /// Checks what this region's shop needs to serve: the local store and the pointer. The
    /// active region's store (when another region is active) is reported under
    /// `details.active_store` but never fails the check: a region's health is about the region
    /// itself, so when the active region dies the standbys stay healthy and can take over.
    pub async fn health(&self) -> (bool, Value) {
        let mut checks = serde_json::Map::new();
        let mut details = serde_json::Map::new();
        let mut reasons = Vec::new();
        let (reachable, active) = {
            let view = self.pointer.borrow();
            let now = Instant::now();
            (
                view.reachable(now, self.config.pointer_stale_ms),
                view.usable(now, self.config.pointer_stale_ms).ok().cloned(),
            )
        };
        // The local store must read and write: this region's shop writes to it once it is
        // active, so a store that cannot write (a full disk) makes the region unfit to serve.
        let local = async {
            match self.local() {
                Ok(store) => {
                    let instance = &self.config.instance;
                    let checks = async {
                        probe(store, &self.config.tables.orders).await?;
                        probe_write(store, instance).await
                    };
                    within(store, HEALTH_PROBE_MS, checks).await
                }
                Err(error) => Err(error.to_string()),
            }
        };
        let remote_active = active.as_ref().is_some_and(|a| a.region != self.config.region);
        let write = async {
            if !remote_active {
                return None;
            }
            Some(match self.writer() {
                Ok((store, _)) => within(store, ACTIVE_STORE_PROBE_MS, probe(store, &self.config.tables.orders)).await,
                Err(error) => Err(error.to_string()),
            })
        };
        // The databases' roles are details, bounded so a slow database never slows the answer.
        let roles = async {
            tokio::time::timeout(
                std::time::Duration::from_millis(crate::databases::DB_ROLE_PROBE_MS),
                self.databases.roles(),
            )
            .await
        };
        // All at once: the answer takes as long as the local store, at most.
        let (local, write, roles) = tokio::join!(local, write, roles);
        record(&mut checks, &mut reasons, "local_store", local);
        record(&mut checks, &mut reasons, "pointer", reachable);
        // No region placed yet: the shop refuses writes (503), yet stays healthy, since the
        // controller places the first region only on regions its checks find healthy.
        if active.is_none() && checks.get("pointer").is_some_and(|c| c == "ok") {
            details.insert(
                "pointer".to_string(),
                json!("no active region yet: writes are answered 503 until the controller places one"),
            );
        }
        if let Some(write) = write {
            match write {
                Ok(()) => {
                    details.insert("active_store".to_string(), json!("ok"));
                }
                Err(reason) => {
                    details.insert("active_store".to_string(), json!("unreachable"));
                    details.insert("active_store_error".to_string(), json!(reason));
                }
            }
        }
        match roles {
            Ok(roles) => {
                for (name, role) in roles {
                    details.insert(name.to_string(), json!(role));
                }
            }
            Err(_) => {
                details.insert(
                    "databases".to_string(),
                    json!(format!("no answer within {} ms", crate::databases::DB_ROLE_PROBE_MS)),
                );
            }
        }
        let healthy = reasons.is_empty();
        let body = json!({
            "status": if healthy { "ok" } else { "unavailable" },
            "reason": if healthy { Value::Null } else { Value::String(reasons.join("; ")) },
            "region": self.config.region,
            "instance": self.config.instance,
            "active_region": active.as_ref().map(|a| a.region.clone()),
            "generation": active.as_ref().map(|a| a.generation),
            "checks": checks,
            "details": details,
        });
        (healthy, body)
    }
}

fn record(
    checks: &mut serde_json::Map<String, Value>,
    reasons: &mut Vec<String>,
    name: &str,
    result: Result<(), String>,
) {
    match result {
        Ok(()) => {
            checks.insert(name.to_string(), json!("ok"));
        }
        Err(reason) => {
            reasons.push(format!("{name}: {reason}"));
            checks.insert(name.to_string(), json!(reason));
        }
    }
}

async fn probe(store: &Client, table: &str) -> Result<(), String> {
    let request = json!({"TableName": table});
    store
        .call("DescribeTable", &request)
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// A conditional put of this instance's heartbeat into the store's reserved table. A store
/// without that table (not Switchyard's) is not write-checked.
async fn probe_write(store: &Client, instance: &str) -> Result<(), String> {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // Never used before by this process, so the condition holds and only a store that cannot
    // write fails the put.
    let nonce = format!(
        "{now_ms}-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let request = json!({
        "TableName": HEARTBEAT_TABLE,
        "Item": {"pk": {"S": format!("demo-app/{instance}")}, "nonce": {"S": nonce}, "at_unix_ms": {"N": now_ms.to_string()}},
        "ConditionExpression": "attribute_not_exists(nonce) OR nonce <> :nonce",
        "ExpressionAttributeValues": {":nonce": {"S": nonce}},
    });
    match store.call("PutItem", &request).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == Some("ResourceNotFoundException") => Ok(()),
        Err(error) => Err(format!("the store cannot write: {error}")),
    }
}

/// `checks` cut at `timeout_ms`.
async fn within(
    store: &Client,
    timeout_ms: u64,
    checks: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), checks).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "store {} did not answer within {timeout_ms} ms",
            store.endpoint()
        )),
    }
}

fn cart_view(session: Option<&str>, lines: &[(String, u64)]) -> Value {
    let mut total_cents = 0;
    let items: Vec<Value> = lines
        .iter()
        .filter_map(|(product, quantity)| {
            let found = catalog::find(product)?;
            total_cents += found.price_cents * quantity;
            Some(json!({"product": found.id, "name": found.name, "quantity": quantity, "price_cents": found.price_cents}))
        })
        .collect();
    json!({"session": session, "items": items, "total_cents": total_cents})
}

/// An order item as the API shows it (plain JSON, not DynamoDB JSON).
fn order_view(item: &Value) -> Value {
    let number = |v: &Value| v["N"].as_str().and_then(|n| n.parse::<u64>().ok());
    let items: Vec<Value> = item["items"]["L"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .map(|line| {
                    let line = &line["M"];
                    json!({
                        "product": line["product"]["S"],
                        "name": line["name"]["S"],
                        "quantity": number(&line["quantity"]),
                        "price_cents": number(&line["price_cents"]),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "order_id": item["order_id"]["S"],
        "status": item["status"]["S"],
        "items": items,
        "total_cents": number(&item["total_cents"]),
        "region": item["region"]["S"],
        "generation": number(&item["generation"]),
        "instance": item["instance"]["S"],
        "created_at_ms": number(&item["created_at_ms"]),
        // With an orders database: Magento's order number and whose database took the row.
        "increment_id": item["increment_id"]["S"],
        "database_region": item["database_region"]["S"],
    })
}

fn with_cookie(mut response: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The session id from the `Cookie` header, if well-formed (32 hex digits).
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|value| value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 128 random bits as hex: from the OS, or (should /dev/urandom be missing) a hash of time,
/// process and a counter, still unique per process.
fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes))
        .is_ok();
    if !from_os {
        let mut hasher = Sha256::new();
        hasher.update(now_ms().to_le_bytes());
        hasher.update(std::process::id().to_le_bytes());
        hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        bytes.copy_from_slice(&hasher.finalize()[..16]);
    }
    hex::encode(bytes)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddToCart {
    product: String,
    #[serde(default = "one")]
    quantity: u64,
}

fn one() -> u64 {
    1
}

/// The shop's routes.
pub fn router(shop: Arc<Shop>) -> Router {
    let region = HeaderValue::from_str(&shop.config.region).ok();
    let instance = HeaderValue::from_str(&shop.config.instance).ok();
    Router::new()
        .route("/", get(page))
        .route("/cart", post(form_add_to_cart))
        .route("/checkout", post(form_checkout))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/products", get(products))
        .route("/api/cart", get(cart).post(api_add_to_cart))
        .route("/api/cart/{product}", delete(api_remove_from_cart))
        .route("/api/orders", get(api_orders).post(api_place_order))
        .route("/api/orders/{order_id}", get(api_order))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shop),
            |State(shop): Shared, request: axum::extract::Request, next: axum::middleware::Next| async move {
                let method = request.method().clone();
                let response = next.run(request).await;
                shop.metrics.response(&method, response.status());
                response
            },
        ))
        .layer(axum::middleware::map_response(move |mut response: Response| {
            let region = region.clone();
            let instance = instance.clone();
            async move {
                let headers = response.headers_mut();
                if let Some(region) = region {
                    headers.insert("x-switchyard-region", region);
                }
                if let Some(instance) = instance {
                    headers.insert("x-switchyard-instance", instance);
                }
                response
            }
        }))
        .with_state(shop)
}

async fn metrics(State(shop): Shared, headers: HeaderMap) -> Response {
    match shop.metrics.encode() {
        Some(text) => common::metrics::response(&headers, text),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response(),
    }
}

async fn health(State(shop): Shared) -> Response {
    let (healthy, body) = shop.health().await;
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn products() -> Response {
    axum::Json(json!({"products": PRODUCTS})).into_response()
}

async fn cart(State(shop): Shared, headers: HeaderMap) -> ShopResult {
    let session = session_cookie(&headers);
    Ok(axum::Json(shop.cart_json(shop.local()?, session.as_deref()).await?).into_response())
}

async fn api_add_to_cart(State(shop): Shared, headers: HeaderMap, body: Bytes) -> ShopResult {
    let request: AddToCart = serde_json::from_slice(&body).map_err(|error| {
        ShopError::BadRequest(format!(
            "bad cart request ({error}); send {{\"product\": \"grinder\", \"quantity\": 1}}"
        ))
    })?;
    shop.add_to_cart(&headers, &request.product, request.quantity).await
}

async fn api_remove_from_cart(State(shop): Shared, headers: HeaderMap, Path(product): Path<String>) -> ShopResult {
    shop.remove_from_cart(&headers, &product).await
}

async fn api_place_order(State(shop): Shared, headers: HeaderMap) -> ShopResult {
    let (order, created) = shop.place_order(&headers).await?;
    if created {
        shop.metrics.order_placed();
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let location = format!("/api/orders/{}", order["order_id"].as_str().unwrap_or_default());
    Ok((status, [(header::LOCATION, location)], axum::Json(order)).into_response())
}

async fn api_orders(State(shop): Shared, headers: HeaderMap) -> ShopResult {
    let orders = shop.orders(session_cookie(&headers).as_deref()).await?;
    Ok(axum::Json(json!({"orders": orders})).into_response())
}

async fn api_order(State(shop): Shared, headers: HeaderMap, Path(order_id): Path<String>) -> ShopResult {
    let not_found = || ShopError::NotFound(format!("no order {order_id} in this session"));
    let session = session_cookie(&headers).ok_or_else(not_found)?;
    shop.order(shop.local()?, &session, &order_id)
        .await?
        .map(|order| axum::Json(order).into_response())
        .ok_or_else(not_found)
}

async fn form_add_to_cart(State(shop): Shared, headers: HeaderMap, body: Bytes) -> ShopResult {
    let fields = form_fields(&body);
    let product = fields.get("product").cloned().unwrap_or_default();
    let quantity = match fields.get("quantity") {
        Some(text) => text
            .parse()
            .map_err(|_| ShopError::BadRequest(format!("quantity '{text}' is not a whole number")))?,
        None => 1,
    };
    let response = shop.add_to_cart(&headers, &product, quantity).await?;
    let cookie = response.headers().get(header::SET_COOKIE).cloned();
    Ok(with_cookie(redirect_home(), cookie))
}

async fn form_checkout(State(shop): Shared, headers: HeaderMap) -> ShopResult {
    let (_, created) = shop.place_order(&headers).await?;
    if created {
        shop.metrics.order_placed();
    }
    Ok(redirect_home())
}

fn redirect_home() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
}

async fn page(State(shop): Shared, headers: HeaderMap) -> Response {
    let session = session_cookie(&headers);
    let local = shop.local();
    let (cart, orders, problem) = match local {
        Ok(store) => match (
            shop.cart_json(store, session.as_deref()).await,
            shop.orders(session.as_deref()).await,
        ) {
            (Ok(cart), Ok(orders)) => (cart, orders, None),
            (Err(error), _) | (_, Err(error)) => (cart_view(None, &[]), Vec::new(), Some(error.to_string())),
        },
        Err(error) => (cart_view(None, &[]), Vec::new(), Some(error.to_string())),
    };
    let active = shop.pointer.borrow().active.clone();
    Html(render_page(
        &shop.config,
        active.as_ref(),
        &cart,
        &orders,
        problem.as_deref(),
    ))
    .into_response()
}

fn render_page(
    config: &ShopConfig,
    active: Option<&ActiveRegion>,
    cart: &Value,
    orders: &[Value],
    problem: Option<&str>,
) -> String {
    let money = |cents: u64| format!("{}.{:02}", cents / 100, cents % 100);
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Switchyard demo shop</title>\
         <style>body{font-family:sans-serif;max-width:48rem;margin:2rem auto}table{border-collapse:collapse}\
         td,th{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:left}.note{color:#666}\
         .problem{background:#fee;padding:.5rem}</style></head><body><h1>Switchyard demo shop</h1>",
    );
    html.push_str(&format!(
        "<p class=\"note\">served by {} in {}; writes go to {}</p>",
        escape(&config.instance),
        escape(&config.region),
        active.map_or("an unknown region".to_string(), |a| format!(
            "{} (generation {})",
            escape(&a.region),
            a.generation
        ))
    ));
    if let Some(problem) = problem {
        html.push_str(&format!("<p class=\"problem\">{}</p>", escape(problem)));
    }
    html.push_str("<h2>Products</h2><table><tr><th>product</th><th>price</th><th></th></tr>");
    for product in PRODUCTS {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td><form method=\"post\" action=\"/cart\">\
             <input type=\"hidden\" name=\"product\" value=\"{}\">\
             <input name=\"quantity\" value=\"1\" size=\"2\"> <button>add to cart</button></form></td></tr>",
            escape(product.name),
            money(product.price_cents),
            escape(product.id)
        ));
    }
    html.push_str("</table><h2>Cart</h2>");
    let lines = cart["items"].as_array().cloned().unwrap_or_default();
    if lines.is_empty() {
        html.push_str("<p class=\"note\">empty</p>");
    } else {
        html.push_str("<table><tr><th>product</th><th>quantity</th></tr>");
        for line in &lines {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(line["name"].as_str().unwrap_or_default()),
                line["quantity"]
            ));
        }
        html.push_str(&format!(
            "</table><p>total {}</p><form method=\"post\" action=\"/checkout\"><button>place order</button></form>",
            money(cart["total_cents"].as_u64().unwrap_or(0))
        ));
    }
    html.push_str("<h2>Orders</h2>");
    if orders.is_empty() {
        html.push_str("<p class=\"note\">none yet</p>");
    } else {
        html.push_str("<table><tr><th>order</th><th>status</th><th>total</th><th>written in</th></tr>");
        for order in orders {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(order["order_id"].as_str().unwrap_or_default()),
                escape(order["status"].as_str().unwrap_or_default()),
                money(order["total_cents"].as_u64().unwrap_or(0)),
                escape(order["region"].as_str().unwrap_or_default())
            ));
        }
        html.push_str("</table>");
    }
    html.push_str("</body></html>");
    html
}

/// A `Query` of `table`'s items of one `session` (the partition key of the carts and orders
/// tables), at most `limit` of them.
fn session_query(table: &str, session: &str, limit: usize) -> Value {
    json!({
        "TableName": table,
        "KeyConditionExpression": "#s = :s",
        "ExpressionAttributeNames": {"#s": "session"},
        "ExpressionAttributeValues": {":s": {"S": session}},
        "Limit": limit
    })
}

/// Parses an `application/x-www-form-urlencoded` body.
fn form_fields(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (url_decode(k), url_decode(v)))
        .collect()
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let decoded = std::str::from_utf8(&bytes[index + 1..index + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match decoded {
                    Some(byte) => {
                        out.push(byte);
                        index += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookie_is_read_and_checked() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; shop_session=0123456789abcdef0123456789abcdef"),
        );
        assert_eq!(
            session_cookie(&headers).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        headers.insert(header::COOKIE, HeaderValue::from_static("shop_session=../../etc"));
        assert_eq!(session_cookie(&headers), None);
    }

    #[test]
    fn forms_decode() {
        let fields = form_fields(b"product=espresso-beans&quantity=2&note=a+b%21&bad=%zz&end=%4");
        assert_eq!(fields["product"], "espresso-beans");
        assert_eq!(fields["quantity"], "2");
        assert_eq!(fields["note"], "a b!");
        assert_eq!(fields["bad"], "%zz");
        assert_eq!(fields["end"], "%4");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn ids_are_unique_hex() {
        let a = new_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_id());
    }
}
