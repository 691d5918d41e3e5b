//! A minimal DynamoDB JSON-1.0 caller for load generation: one pooled hyper client, raw JSON
//! bodies, no signing (the benchmark stores run without credentials on loopback).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Idle connections kept per store; above the benchmark's concurrency so none are re-opened.
const POOL_IDLE_PER_HOST_MAX: usize = 64;

#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST_MAX)
            .build(connector);
        Client { http }
    }

    /// Calls `operation` on the store at `url`; an error carries the status and DynamoDB's body.
    pub async fn call(&self, url: &str, operation: &str, body: &Value) -> anyhow::Result<Value> {
        let request = hyper::Request::post(format!("{url}/"))
            .header("x-amz-target", format!("DynamoDB_20120810.{operation}"))
            .header("content-type", "application/x-amz-json-1.0")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let response = self.http.request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("{operation} answered {status}: {value}");
        }
        Ok(value)
    }

    pub async fn get(&self, url: &str, url_path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .request(hyper::Request::get(format!("{url}{url_path}")).body(Full::new(Bytes::new()))?)
            .await?;
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }
}
