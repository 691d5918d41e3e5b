//! A minimal DynamoDB JSON-1.0 caller for load generation: one pooled hyper client (`http://`
//! or `https://`), raw JSON bodies, no signing (the benchmark stores run without credentials
//! on loopback).

use bytes::Bytes;
use common::tls_client::Connector;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Idle connections kept per store; above the benchmark's concurrency so none are re-opened.
const POOL_IDLE_PER_HOST_MAX: usize = 64;

#[derive(Clone)]
pub struct Client {
    http: HyperClient<Connector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// For `http://` stores (and `https://` ones with a public certificate).
    pub fn new() -> Client {
        Client::with_tls(common::tls_client::process_config())
    }

    /// For `https://` stores whose certificates `ca_file` signed.
    pub fn with_ca(ca_file: &std::path::Path) -> anyhow::Result<Client> {
        Ok(Client::with_tls(
            common::tls_client::client_config(Some(ca_file)).map_err(anyhow::Error::msg)?,
        ))
    }

    fn with_tls(tls: std::sync::Arc<rustls::ClientConfig>) -> Client {
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST_MAX)
            .build(Connector::new(tls));
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
