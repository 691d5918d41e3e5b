//! `demoapp`: the demo shop, the stand-in for a Magento or WooCommerce store in the lab and in
//! drills. Products, a cart behind a session cookie, orders and their status, as an HTML page
//! and a JSON API; sessions, carts and orders live in the regional store through the DynamoDB
//! API. Reads go to the local region's store, writes to the store of the region the
//! active-region pointer names; `/health` checks the local store and the pointer, like the DR
//! guides' `/healthz`, so a load balancer takes an instance out when it cannot serve. The
//! active region's store is reported as a detail only: a standby must stay healthy when the
//! active region dies, or the controller would see every region down and never fail over.
//!
//! With `databases` configured the shop also keeps its orders in MariaDB (Magento's
//! `sales_order`) and its sessions in Redis, on its own region's servers.
//!
//! `dynamo` is a small DynamoDB JSON client (SigV4 with `dynamo-protocol`'s pieces),
//! `pointer` follows the controller's active-region pointer, `tables` creates the tables,
//! `shop` is the HTTP side. Must not depend on the store, controller or proxy crates: it talks
//! to them over HTTP like any application would.

pub mod catalog;
pub mod databases;
pub mod dynamo;
pub mod metrics;
pub mod pointer;
pub mod shop;
pub mod tables;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use dynamo::AwsCredentials;
pub use pointer::{ActiveRegion, PointerView};
pub use shop::{Shop, ShopConfig};
pub use tables::TableNames;

/// Everything the demo app needs to run.
#[derive(Clone, Debug)]
pub struct DemoAppConfig {
    /// The region this instance runs in.
    pub region: String,
    /// A name for this instance, shown in responses.
    pub instance: String,
    /// Region → store URL (`http://HOST:PORT`); must include `region`.
    pub stores: BTreeMap<String, String>,
    /// The active-region pointer's URLs, one per controller member (any of them answering
    /// keeps the pointer fresh); none: the local region takes writes.
    pub pointers: Vec<String>,
    /// Bearer token for the pointer (the controller's `--token-file`).
    pub pointer_token: Option<String>,
    pub credentials: Option<AwsCredentials>,
    pub table_prefix: String,
    /// Create missing tables (global ones when several stores are given) before serving.
    pub tables_create: bool,
    pub pointer_stale_ms: u64,
    /// Orders in MariaDB/MySQL and sessions in Redis besides the store (none: the store only).
    pub databases: databases::ShopDatabases,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoAppError {
    #[error("{0}")]
    Config(String),
    #[error("create the shop's tables: {0}")]
    Tables(#[from] dynamo::DynamoError),
    #[error("serve HTTP: {0}")]
    Io(#[from] std::io::Error),
}

impl DemoAppConfig {
    /// A single-region shop on one store, writes local.
    pub fn single(region: &str, store_url: &str) -> DemoAppConfig {
        DemoAppConfig {
            region: region.to_string(),
            instance: format!("shop-{region}"),
            stores: BTreeMap::from([(region.to_string(), store_url.to_string())]),
            pointers: Vec::new(),
            pointer_token: None,
            credentials: None,
            table_prefix: "shop_".to_string(),
            tables_create: true,
            pointer_stale_ms: pointer::STALE_MS_DEFAULT,
            databases: databases::ShopDatabases::default(),
        }
    }
}

/// Builds the shop: clients for every store and the pointer watcher (spawned on the current
/// runtime; it ends when the shop is dropped). Creates tables first if asked.
pub async fn build(config: &DemoAppConfig) -> Result<Arc<Shop>, DemoAppError> {
    if !config.stores.contains_key(&config.region) {
        return Err(DemoAppError::Config(format!(
            "no store for the local region {0}: pass --store {0}=http://HOST:PORT",
            config.region
        )));
    }
    let mut stores = BTreeMap::new();
    for (region, url) in &config.stores {
        let client = dynamo::Client::new(url, region, config.credentials.clone()).map_err(DemoAppError::Config)?;
        stores.insert(region.clone(), client);
    }
    let tables = TableNames::with_prefix(&config.table_prefix);
    if config.tables_create {
        let others: Vec<String> = stores.keys().filter(|r| **r != config.region).cloned().collect();
        tables::ensure(&stores[&config.region], &tables, &others).await?;
    }
    let receiver = if config.pointers.is_empty() {
        // A fixed pointer never changes: the receiver keeps the value after the sender is gone.
        watch::channel(PointerView::fixed(&config.region)).1
    } else {
        let urls = config
            .pointers
            .iter()
            .map(|url| pointer::resource_url(url))
            .collect::<Result<Vec<_>, _>>()
            .map_err(DemoAppError::Config)?;
        let (sender, receiver) = watch::channel(PointerView::default());
        // One watcher per member, into one view: the newest generation any of them answers
        // wins, and the pointer stays fresh while one of them answers.
        let sender = Arc::new(sender);
        for url in urls {
            tokio::spawn(pointer::watch(url, config.pointer_token.clone(), Arc::clone(&sender)));
        }
        receiver
    };
    let shop = Arc::new(
        Shop::new(
            ShopConfig {
                region: config.region.clone(),
                instance: config.instance.clone(),
                tables,
                pointer_stale_ms: config.pointer_stale_ms,
            },
            stores,
            receiver,
        )
        .with_databases(config.databases.clone()),
    );
    Ok(shop)
}

/// Serves the shop on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: DemoAppConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoAppError> {
    let shop = build(&config).await?;
    serve(listener, shop, shutdown).await
}

/// Serves an already built shop.
pub async fn serve(
    listener: TcpListener,
    shop: Arc<Shop>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoAppError> {
    // The accept loop every listener uses: limits on connections, head and body read times and
    // body size apply before any handler runs. The shop's requests are small JSON bodies.
    let options = common::http::Options::new("demo-app", common::http::Limits::admin());
    common::http::serve(listener, options, shop::router(shop), shutdown).await?;
    Ok(())
}
