//! `switchyard demo-app`: argument parsing for the demo shop.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use demoapp::{AwsCredentials, DemoAppConfig};
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct DemoAppArgs {
    /// Address to listen on; port 0 picks a free port (see --ready-file).
    #[arg(long, env = "SWITCHYARD_DEMO_APP_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// The region this instance runs in: reads go to this region's store.
    #[arg(long, env = "SWITCHYARD_REGION", default_value = "us-east-1")]
    region: String,
    /// A regional store as REGION=URL (repeat per region; the local region is required), e.g.
    /// `--store us-east-1=http://127.0.0.1:8000`.
    #[arg(long = "store", value_name = "REGION=URL", value_parser = parse_store, required = true)]
    stores: Vec<(String, String)>,
    /// The controller's active-region pointer (`http://HOST:PORT` means
    /// `http://HOST:PORT/v1/active-region`); writes follow it. With several controllers
    /// (`[controller.ha]`) give every member (repeat the flag, or separate with commas): the
    /// pointer stays fresh while any of them answers, and the newest generation wins. Without
    /// it the local region takes writes.
    #[arg(long = "pointer", env = "SWITCHYARD_POINTER", value_delimiter = ',')]
    pointers: Vec<String>,
    /// File holding the bearer token the controller wants (its --token-file).
    #[arg(long, env = "SWITCHYARD_POINTER_TOKEN_FILE")]
    pointer_token_file: Option<PathBuf>,
    /// Writes stop (503) and /health fails when the pointer was not confirmed for this long.
    #[arg(long, default_value_t = demoapp::pointer::STALE_MS_DEFAULT)]
    pointer_stale_ms: u64,
    /// Name shown in the `x-switchyard-instance` header and on the page; default shop-REGION.
    #[arg(long)]
    instance: Option<String>,
    /// Prefix of the tables: PREFIXsessions, PREFIXcarts, PREFIXorders.
    #[arg(long, default_value = "shop_")]
    table_prefix: String,
    /// Create the tables if missing (global tables across every --store region) before serving.
    #[arg(long)]
    tables_create: bool,
    /// Access key for SigV4-signed store requests (with --secret-access-key).
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key_id: Option<String>,
    /// Secret key for SigV4-signed store requests (with --access-key-id).
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_access_key: Option<String>,
    /// Keep orders in this MariaDB/MySQL server too (`HOST:PORT`, database `shop`, table
    /// `sales_order` as `switchyard lab --databases` makes it): an order is acknowledged once
    /// its row is committed there. Without it the shop keeps orders in the store only.
    #[arg(long, value_name = "HOST:PORT")]
    orders_mysql: Option<String>,
    /// The account for --orders-mysql.
    #[arg(long, default_value = "shop")]
    orders_mysql_user: String,
    /// File holding --orders-mysql-user's password.
    #[arg(long)]
    orders_mysql_password_file: Option<PathBuf>,
    /// Keep sessions in this Redis server too (`HOST:PORT`; keys `session:ID`).
    #[arg(long, value_name = "HOST:PORT")]
    sessions_redis: Option<String>,
    /// The Redis ACL user for --sessions-redis (none: the default user).
    #[arg(long)]
    sessions_redis_user: Option<String>,
    /// File holding the Redis password.
    #[arg(long)]
    sessions_redis_password_file: Option<PathBuf>,
    /// Once accepting connections, write the bound address (`IP:PORT`) to this file.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn read_secret(path: &Option<PathBuf>, what: &str) -> anyhow::Result<Option<String>> {
    match path {
        Some(path) => Ok(Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("read {what} {}", path.display()))?
                .trim()
                .to_string(),
        )),
        None => Ok(None),
    }
}

fn parse_store(text: &str) -> Result<(String, String), String> {
    let (region, url) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not REGION=URL; write it like us-east-1=http://127.0.0.1:8000"))?;
    store::global::check_region_name(region)?;
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(format!(
            "'{url}' is not an http:// or https:// URL: write it like http://127.0.0.1:8000 (https:// URLs are verified against --ca-file)"
        ));
    }
    Ok((region.to_string(), url.trim_end_matches('/').to_string()))
}

pub async fn run(args: DemoAppArgs) -> anyhow::Result<()> {
    let mut stores = BTreeMap::new();
    for (region, url) in args.stores {
        if stores.insert(region.clone(), url).is_some() {
            bail!("--store {region} is given twice; give each region once");
        }
    }
    if !stores.contains_key(&args.region) {
        bail!(
            "no --store for the local region {0}: add --store {0}=http://HOST:PORT (or set --region)",
            args.region
        );
    }
    let credentials = match (args.access_key_id, args.secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => Some(AwsCredentials {
            access_key_id,
            secret_access_key,
        }),
        (None, None) => None,
        _ => bail!("give both --access-key-id and --secret-access-key (or neither, for an open store)"),
    };
    let pointer_token = match &args.pointer_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("read pointer token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let mut databases = demoapp::databases::ShopDatabases::default();
    if let Some(address) = &args.orders_mysql {
        let (host, port) = demoapp::databases::split_address(address)
            .map_err(|e| anyhow::anyhow!("--orders-mysql {e}: write it like 127.0.0.1:3306"))?;
        databases.orders = Some(demoapp::databases::SqlTarget {
            host,
            port,
            user: args.orders_mysql_user.clone(),
            password: read_secret(&args.orders_mysql_password_file, "--orders-mysql-password-file")?
                .unwrap_or_default(),
            database: Some("shop".to_string()),
        });
    }
    if let Some(address) = &args.sessions_redis {
        let (host, port) = demoapp::databases::split_address(address)
            .map_err(|e| anyhow::anyhow!("--sessions-redis {e}: write it like 127.0.0.1:6379"))?;
        databases.sessions = Some(demoapp::databases::RedisTarget {
            host,
            port,
            user: args.sessions_redis_user.clone(),
            password: read_secret(&args.sessions_redis_password_file, "--sessions-redis-password-file")?,
        });
    }
    let config = DemoAppConfig {
        databases,
        instance: args.instance.unwrap_or_else(|| format!("shop-{}", args.region)),
        region: args.region,
        stores,
        pointers: args.pointers,
        pointer_token,
        credentials,
        table_prefix: args.table_prefix,
        tables_create: args.tables_create,
        pointer_stale_ms: args.pointer_stale_ms,
    };
    let shop = demoapp::build(&config).await.context("start the shop")?;
    let listener = TcpListener::bind(args.listen.as_str()).await.with_context(|| {
        format!(
            "listen on {} (is the port in use? pick another with --listen)",
            args.listen
        )
    })?;
    let address = listener.local_addr().context("read the bound address")?;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, address.to_string()).with_context(|| format!("write ready file {}", path.display()))?;
    }
    tracing::info!(%address, region = %config.region, instance = %config.instance, "demo shop listening");
    demoapp::serve(listener, shop, crate::shutdown_signal())
        .await
        .context("serve the shop")?;
    tracing::info!("demo shop stopped");
    Ok(())
}
