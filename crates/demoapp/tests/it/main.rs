//! The demo shop against real in-process stores (`store::server::run` on loopback) and an
//! in-test active-region pointer that long-polls like the controller's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use bytes::Bytes;
use demoapp::dynamo::Client;
use demoapp::{ActiveRegion, AwsCredentials, DemoAppConfig, TableNames};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use store::global::{Peer, ReplicationConfig};
use store::server::ServerConfig;
use store::{Engine, SystemClock};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// Generous bound for conditions on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(20);
const KEY: &[u8] = b"a-test-replication-key-of-32-bytes";

struct StoreProcess {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl StoreProcess {
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        if let Some(task) = self.task.take() {
            task.await.ok();
        }
    }
}

async fn start_store(region: &str, listener: TcpListener, config: ServerConfig) -> StoreProcess {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let engine = Engine::open(dir.path(), region, Arc::new(SystemClock)).expect("open engine");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        store::server::run(listener, engine, config, async {
            stopped.await.ok();
        })
        .await
        .expect("store runs");
    });
    StoreProcess {
        url,
        stop: Some(stop),
        task: Some(task),
        _dir: dir,
    }
}

async fn plain_store(region: &str) -> StoreProcess {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    start_store(
        region,
        listener,
        ServerConfig {
            credentials: None,
            replication: None,
        },
    )
    .await
}

/// Serves `app` (a pointer) on a free loopback port until the test ends; its URL.
async fn serve_pointer(app: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind pointer");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    url
}

/// An active-region pointer like the controller's: `?wait_generation=N&timeout_ms=T` waits
/// until the generation differs from N or the time is up.
async fn pointer_server(initial: ActiveRegion) -> (String, watch::Sender<ActiveRegion>) {
    let (sender, receiver) = watch::channel(initial);
    async fn handler(
        State(receiver): State<watch::Receiver<ActiveRegion>>,
        Query(query): Query<BTreeMap<String, String>>,
    ) -> axum::Json<ActiveRegion> {
        let mut receiver = receiver.clone();
        if let Some(known) = query.get("wait_generation").and_then(|g| g.parse::<u64>().ok()) {
            let timeout_ms = query.get("timeout_ms").and_then(|t| t.parse().ok()).unwrap_or(1000);
            let changed = receiver.wait_for(|current| current.generation != known);
            tokio::time::timeout(Duration::from_millis(timeout_ms), changed)
                .await
                .ok();
        }
        axum::Json(receiver.borrow().clone())
    }
    let app = axum::Router::new()
        .route("/v1/active-region", axum::routing::get(handler))
        .with_state(receiver);
    let url = serve_pointer(app).await;
    (url, sender)
}

struct ShopUnderTest {
    base: String,
    cookie: Option<String>,
    http: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl ShopUnderTest {
    async fn start(config: DemoAppConfig) -> ShopUnderTest {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind shop");
        let address: SocketAddr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            demoapp::run(listener, config, std::future::pending())
                .await
                .expect("shop runs");
        });
        ShopUnderTest {
            base: format!("http://{address}"),
            cookie: None,
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        }
    }

    async fn request(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = request.body(Full::new(Bytes::from(body))).expect("request");
        // The shop may still be creating its tables: retry while it does not listen yet.
        let deadline = Instant::now() + WAIT;
        let response = loop {
            match self.http.request(request.clone()).await {
                Ok(response) => break response,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("shop unreachable: {error}"),
            }
        };
        if let Some(set_cookie) = response.headers().get("set-cookie") {
            let text = set_cookie.to_str().expect("ascii cookie");
            self.cookie = Some(text.split(';').next().expect("cookie pair").to_string());
        }
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    async fn ok(&mut self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.request(method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {value}");
        value
    }

    /// Polls `/health` until `accept` holds or the wait runs out.
    async fn wait_health(&mut self, what: &str, accept: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.request("GET", "/health", None).await;
            if accept(status, &body) {
                return body;
            }
            assert!(Instant::now() < deadline, "health never became {what}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn session_of(cookie: &Option<String>) -> String {
    cookie
        .as_deref()
        .and_then(|c| c.strip_prefix("shop_session="))
        .expect("session cookie")
        .to_string()
}

async fn items(url: &str, region: &str, table: &str, session: &str) -> Vec<Value> {
    let client = Client::new(url, region, None).expect("client");
    let answer = client
        .call(
            "Query",
            &json!({"TableName": table, "KeyConditionExpression": "#s = :s",
                    "ExpressionAttributeNames": {"#s": "session"},
                    "ExpressionAttributeValues": {":s": {"S": session}}}),
        )
        .await
        .expect("query");
    answer["Items"].as_array().cloned().unwrap_or_default()
}

/// Stores in us-east-1 and eu-west-1 with the shop's tables (prefix `shop_`), a pointer server
/// naming `active` (generation 1), and a shop in us-east-1 that follows the pointer to either
/// store.
async fn two_region_shop(active: &str) -> (StoreProcess, StoreProcess, watch::Sender<ActiveRegion>, ShopUnderTest) {
    let east = plain_store("us-east-1").await;
    let west = plain_store("eu-west-1").await;
    let names = TableNames::with_prefix("shop_");
    for (url, region) in [(&east.url, "us-east-1"), (&west.url, "eu-west-1")] {
        let client = Client::new(url, region, None).expect("client");
        demoapp::tables::ensure(&client, &names, &[]).await.expect("tables");
    }
    let (pointer_url, pointer) = pointer_server(ActiveRegion {
        region: active.to_string(),
        generation: 1,
    })
    .await;
    let mut config = DemoAppConfig::single("us-east-1", &east.url);
    config.stores.insert("eu-west-1".to_string(), west.url.clone());
    config.pointers = vec![pointer_url];
    config.tables_create = false;
    (east, west, pointer, ShopUnderTest::start(config).await)
}

#[tokio::test]
async fn place_an_order_and_read_it_back() {
    let store = plain_store("us-east-1").await;
    let mut shop = ShopUnderTest::start(DemoAppConfig::single("us-east-1", &store.url)).await;
    shop.wait_health("ok", |status, _| status == 200).await;

    let products = shop.ok("GET", "/api/products", None).await;
    assert!(products["products"].as_array().is_some_and(|p| p.len() >= 3));

    let cart = shop
        .ok("POST", "/api/cart", Some(json!({"product": "grinder", "quantity": 2})))
        .await;
    assert_eq!(cart["total_cents"], json!(25800));
    let cart = shop.ok("POST", "/api/cart", Some(json!({"product": "mug"}))).await;
    assert_eq!(cart["items"].as_array().map(Vec::len), Some(2));
    let session = session_of(&shop.cookie);

    let (status, order) = shop.request("POST", "/api/orders", None).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["status"], json!("placed"));
    assert_eq!(order["total_cents"], json!(25800 + 1600));
    assert_eq!(order["region"], json!("us-east-1"));
    let order_id = order["order_id"].as_str().expect("order id").to_string();

    let read_back = shop.ok("GET", &format!("/api/orders/{order_id}"), None).await;
    assert_eq!(read_back, order);
    let cart = shop.ok("GET", "/api/cart", None).await;
    assert_eq!(cart["items"], json!([]), "the order empties the cart");
    let listed = shop.ok("GET", "/api/orders", None).await;
    assert_eq!(listed["orders"], json!([order]));

    // The data lives in the store, through the DynamoDB API.
    let stored = items(&store.url, "us-east-1", "shop_orders", &session).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["order_id"]["S"], json!(order_id));

    let (status, page) = shop.request("GET", "/", None).await;
    assert_eq!(status, 200);
    let page = page.as_str().expect("HTML");
    assert!(page.contains("Burr grinder") && page.contains(&order_id), "{page}");

    let (status, body) = shop.request("GET", "/api/orders/no-such-order", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = shop
        .request("POST", "/api/cart", Some(json!({"product": "unicorn"})))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("unicorn")),
        "{body}"
    );
    let (status, body) = shop.request("POST", "/api/orders", None).await;
    assert_eq!(status, 400, "an empty cart places no order: {body}");
}

#[tokio::test]
async fn idempotency_key_places_one_order() {
    let store = plain_store("us-east-1").await;
    let mut shop = ShopUnderTest::start(DemoAppConfig::single("us-east-1", &store.url)).await;
    shop.ok("POST", "/api/cart", Some(json!({"product": "kettle"}))).await;
    let place = |shop: &mut ShopUnderTest| {
        let request = hyper::Request::post(format!("{}/api/orders", shop.base))
            .header("cookie", shop.cookie.clone().expect("cookie"))
            .header("idempotency-key", "order-42")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let http = shop.http.clone();
        async move {
            let response = http.request(request).await.expect("shop answers");
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await.expect("body").to_bytes();
            (status, serde_json::from_slice::<Value>(&bytes).expect("JSON"))
        }
    };
    let (first_status, first) = place(&mut shop).await;
    let (second_status, second) = place(&mut shop).await;
    assert_eq!((first_status, second_status), (201, 200), "{first} {second}");
    assert_eq!(first["order_id"], json!("k-order-42"));
    assert_eq!(first, second);
    let listed = shop.ok("GET", "/api/orders", None).await;
    assert_eq!(listed["orders"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn pointer_flip_moves_writes_to_the_new_active_region() {
    let (east, west, pointer, mut shop) = two_region_shop("us-east-1").await;
    shop.wait_health("ok on us-east-1", |status, body| {
        status == 200 && body["active_region"] == json!("us-east-1")
    })
    .await;

    shop.ok("POST", "/api/cart", Some(json!({"product": "grinder"}))).await;
    let session = session_of(&shop.cookie);
    assert_eq!(items(&east.url, "us-east-1", "shop_carts", &session).await.len(), 1);
    assert!(items(&west.url, "eu-west-1", "shop_carts", &session).await.is_empty());

    pointer.send_replace(ActiveRegion {
        region: "eu-west-1".to_string(),
        generation: 2,
    });
    let health = shop
        .wait_health("ok on eu-west-1", |status, body| {
            status == 200 && body["active_region"] == json!("eu-west-1")
        })
        .await;
    assert_eq!(health["generation"], json!(2));
    assert_eq!(health["details"]["active_store"], json!("ok"));

    shop.ok("POST", "/api/cart", Some(json!({"product": "mug"}))).await;
    let (status, order) = shop.request("POST", "/api/orders", None).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(
        (&order["region"], &order["generation"]),
        (&json!("eu-west-1"), &json!(2))
    );
    assert_eq!(
        order["items"].as_array().map(Vec::len),
        Some(1),
        "the cart written in eu-west-1"
    );
    assert_eq!(items(&west.url, "eu-west-1", "shop_orders", &session).await.len(), 1);
    assert!(items(&east.url, "us-east-1", "shop_orders", &session).await.is_empty());
    assert_eq!(
        items(&east.url, "us-east-1", "shop_carts", &session).await.len(),
        1,
        "the old region's data is untouched"
    );

    // A pointer going back in generation is ignored.
    pointer.send_replace(ActiveRegion {
        region: "us-east-1".to_string(),
        generation: 1,
    });
    let (_, health) = shop.request("GET", "/health", None).await;
    assert_eq!(health["active_region"], json!("eu-west-1"));
}

#[tokio::test]
async fn health_turns_503_when_the_store_is_gone() {
    let mut store = plain_store("us-east-1").await;
    let mut shop = ShopUnderTest::start(DemoAppConfig::single("us-east-1", &store.url)).await;
    shop.wait_health("ok", |status, body| status == 200 && body["status"] == json!("ok"))
        .await;
    store.stop().await;
    let body = shop.wait_health("503", |status, _| status == 503).await;
    assert_eq!(body["status"], json!("unavailable"));
    let reason = body["reason"].as_str().expect("reason");
    assert!(reason.contains("local_store"), "{reason}");
    let (status, _) = shop.request("POST", "/api/cart", Some(json!({"product": "mug"}))).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn health_turns_503_when_the_store_cannot_write() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (engine, faults) = store::testing::faulty_engine(dir.path(), "us-east-1");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        store::server::run(
            listener,
            engine,
            ServerConfig {
                credentials: None,
                replication: None,
            },
            std::future::pending(),
        )
        .await
        .expect("store runs");
    });
    let mut shop = ShopUnderTest::start(DemoAppConfig::single("us-east-1", &url)).await;
    shop.wait_health("ok", |status, body| status == 200 && body["status"] == json!("ok"))
        .await;
    // The store's disk falls below its watermark: it still reads, but cannot take an order.
    store::testing::leave_free(&faults, dir.path(), 512 << 10);
    let body = shop.wait_health("503", |status, _| status == 503).await;
    let reason = body["reason"].as_str().expect("reason");
    assert!(
        reason.contains("local_store") && reason.contains("cannot write"),
        "{reason}"
    );
    faults.set_capacity_bytes(u64::MAX);
    shop.wait_health("ok again", |status, _| status == 200).await;
}

#[tokio::test]
async fn health_stays_ok_when_only_the_active_regions_store_is_gone() {
    // A standby's health is about its own region: when the active region dies, the standby
    // must stay healthy or the controller sees every region down and cannot fail over.
    let (_east, mut west, _pointer, mut shop) = two_region_shop("eu-west-1").await;
    shop.wait_health("ok with eu-west-1 reachable", |status, body| {
        status == 200 && body["details"]["active_store"] == json!("ok")
    })
    .await;

    west.stop().await;
    let body = shop
        .wait_health("ok with eu-west-1 unreachable", |_, body| {
            body["details"]["active_store"] == json!("unreachable")
        })
        .await;
    let (status, body_now) = shop.request("GET", "/health", None).await;
    assert_eq!(
        status, 200,
        "the active region's store is not a local dependency: {body_now}"
    );
    assert_eq!(body["status"], json!("ok"));
    assert_eq!(body["checks"]["local_store"], json!("ok"));
    assert!(body["checks"].get("active_store").is_none(), "{body}");
    assert!(
        body["details"]["active_store_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    // Reads still come from the local store.
    let (status, _) = shop.request("GET", "/api/cart", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn health_turns_503_while_the_pointer_is_unknown() {
    let store = plain_store("us-east-1").await;
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let nowhere = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let mut config = DemoAppConfig::single("us-east-1", &store.url);
    config.pointers = vec![nowhere];
    let mut shop = ShopUnderTest::start(config).await;
    let body = shop.wait_health("503", |status, _| status == 503).await;
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("pointer")), "{body}");
    assert_eq!(body["checks"]["local_store"], json!("ok"));
    let (status, body) = shop.request("POST", "/api/cart", Some(json!({"product": "mug"}))).await;
    assert_eq!(status, 503, "no writes without a pointer: {body}");
    // Reads still work from the local store.
    let (status, _) = shop.request("GET", "/api/cart", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn with_several_controller_members_one_answering_keeps_the_pointer_and_the_newest_wins() {
    // Three members, as `[controller.ha]` runs them: one never answers (down), one answers
    // an older generation (a follower not caught up), one the newest.
    let store = plain_store("us-east-1").await;
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let down = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let (behind_url, _behind) = pointer_server(ActiveRegion {
        region: "eu-west-1".to_string(),
        generation: 3,
    })
    .await;
    let (leader_url, leader) = pointer_server(ActiveRegion {
        region: "us-east-1".to_string(),
        generation: 4,
    })
    .await;
    let mut config = DemoAppConfig::single("us-east-1", &store.url);
    config.pointers = vec![down, behind_url, leader_url];
    let mut shop = ShopUnderTest::start(config).await;
    let health = shop
        .wait_health("ok on generation 4", |status, body| {
            status == 200 && body["generation"] == json!(4)
        })
        .await;
    assert_eq!(health["active_region"], json!("us-east-1"), "{health}");
    shop.ok("POST", "/api/cart", Some(json!({"product": "mug"}))).await;
    // The leader moves the region: the shop follows whichever member says so first.
    leader.send_replace(ActiveRegion {
        region: "eu-west-1".to_string(),
        generation: 5,
    });
    shop.wait_health("generation 5", |status, body| {
        status == 200 && body["generation"] == json!(5) && body["active_region"] == json!("eu-west-1")
    })
    .await;
}

#[tokio::test]
async fn tables_create_makes_global_tables_and_orders_replicate() {
    let east_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let west_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let east_url = format!("http://{}", east_listener.local_addr().expect("address"));
    let west_url = format!("http://{}", west_listener.local_addr().expect("address"));
    let replication = |peer: &str, url: &str| ServerConfig {
        credentials: None,
        replication: Some(ReplicationConfig::new(
            vec![Peer {
                region: peer.to_string(),
                url: url.to_string(),
            }],
            KEY.to_vec(),
        )),
    };
    let _east = start_store("us-east-1", east_listener, replication("eu-west-1", &west_url)).await;
    let _west = start_store("eu-west-1", west_listener, replication("us-east-1", &east_url)).await;

    let mut config = DemoAppConfig::single("us-east-1", &east_url);
    config.stores.insert("eu-west-1".to_string(), west_url.clone());
    let mut shop = ShopUnderTest::start(config).await;
    shop.ok("POST", "/api/cart", Some(json!({"product": "espresso-beans"})))
        .await;
    let (status, order) = shop.request("POST", "/api/orders", None).await;
    assert_eq!(status, 201, "{order}");
    let session = session_of(&shop.cookie);

    let west = Client::new(&west_url, "eu-west-1", None).expect("client");
    let described = west
        .call("DescribeTable", &json!({"TableName": "shop_orders"}))
        .await
        .expect("the replica exists in eu-west-1");
    let regions: Vec<&str> = described["Table"]["Replicas"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["RegionName"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        regions.contains(&"us-east-1") && regions.contains(&"eu-west-1"),
        "{described}"
    );
    let deadline = Instant::now() + WAIT;
    while items(&west_url, "eu-west-1", "shop_orders", &session).await.is_empty() {
        assert!(Instant::now() < deadline, "the order never reached eu-west-1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn signed_requests_reach_an_authenticated_store() {
    let mut known = dynamo_protocol::sigv4::Credentials::new();
    known.insert("AKIDSHOP", "shop-secret");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let store = start_store(
        "us-east-1",
        listener,
        ServerConfig {
            credentials: Some(known),
            replication: None,
        },
    )
    .await;
    let mut config = DemoAppConfig::single("us-east-1", &store.url);
    config.credentials = Some(AwsCredentials {
        access_key_id: "AKIDSHOP".to_string(),
        secret_access_key: "shop-secret".to_string(),
    });
    let mut shop = ShopUnderTest::start(config).await;
    let cart = shop.ok("POST", "/api/cart", Some(json!({"product": "mug"}))).await;
    assert_eq!(cart["total_cents"], json!(1600));

    let unsigned = Client::new(&store.url, "us-east-1", None).expect("client");
    let error = unsigned
        .call("DescribeTable", &json!({"TableName": "shop_orders"}))
        .await
        .expect_err("the store wants signatures");
    assert!(error.kind().is_some(), "{error}");
}

#[tokio::test]
async fn pointer_token_is_sent_and_an_unchosen_region_blocks_writes() {
    let store = plain_store("us-east-1").await;
    let (sender, receiver) = watch::channel(json!({"region": null, "generation": 0}));
    async fn handler(
        State(receiver): State<watch::Receiver<Value>>,
        headers: axum::http::HeaderMap,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer s3cret") {
            return (axum::http::StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
        }
        axum::Json(receiver.borrow().clone()).into_response()
    }
    let app = axum::Router::new()
        .route("/v1/active-region", axum::routing::get(handler))
        .with_state(receiver);
    let url = serve_pointer(app).await;

    let mut config = DemoAppConfig::single("us-east-1", &store.url);
    config.pointers = vec![url];
    config.pointer_token = Some("s3cret".to_string());
    let mut shop = ShopUnderTest::start(config).await;
    // Healthy (it serves reads, and the controller needs healthy instances to choose a
    // region), but writes wait for the choice.
    let body = shop
        .wait_health("ok without a region", |status, body| {
            status == 200 && body["checks"]["pointer"] == json!("ok")
        })
        .await;
    assert_eq!(body["active_region"], Value::Null);
    let (status, body) = shop.request("POST", "/api/cart", Some(json!({"product": "mug"}))).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("not chosen")),
        "{body}"
    );

    sender.send_replace(json!({"region": "us-east-1", "generation": 1}));
    shop.wait_health("ok with a region", |status, body| {
        status == 200 && body["active_region"] == json!("us-east-1")
    })
    .await;
    shop.ok("POST", "/api/cart", Some(json!({"product": "mug"}))).await;
}
