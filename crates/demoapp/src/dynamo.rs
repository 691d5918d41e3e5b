//! A small DynamoDB JSON 1.0 client on hyper-util: one POST per operation with `X-Amz-Target`,
//! SigV4-signed when credentials are given (with the signing pieces of `dynamo-protocol`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::tls_client::Connector;
use dynamo_protocol::sigv4;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long one call may take, connection included.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Largest response body read (DynamoDB caps a response at 16 MB; the shop's are far smaller).
pub const RESPONSE_BYTES_MAX: usize = 16 << 20;
/// JSON protocol version of DynamoDB.
pub const CONTENT_TYPE: &str = sigv4::JSON_CONTENT_TYPE;
/// The `X-Amz-Target` prefix of DynamoDB's 2012-08-10 API.
pub const TARGET_PREFIX: &str = "DynamoDB_20120810.";

/// An access key and its secret.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DynamoError {
    /// The store answered with an error: `kind` is DynamoDB's `__type` short name.
    #[error("{kind}: {message}")]
    Api { status: u16, kind: String, message: String },
    /// The store could not be reached or did not answer in time.
    #[error("store {endpoint} unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("store {endpoint} sent an unreadable answer: {reason}")]
    Protocol { endpoint: String, reason: String },
}

impl DynamoError {
    /// DynamoDB's short error name (`ConditionalCheckFailedException`), if the store answered.
    pub fn kind(&self) -> Option<&str> {
        match self {
            DynamoError::Api { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// A client of one regional store.
#[derive(Clone)]
pub struct Client {
    endpoint: String,
    authority: String,
    region: String,
    credentials: Option<AwsCredentials>,
    http: HyperClient<Connector, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `endpoint` is `http://HOST:PORT` or `https://HOST:PORT` (verified against the process's
    /// trust: the Mozilla roots and `--ca-file`).
    pub fn new(endpoint: &str, region: &str, credentials: Option<AwsCredentials>) -> Result<Client, String> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let authority = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .ok_or_else(|| {
                format!("store URL '{endpoint}' must look like http://127.0.0.1:8000 or https://store.example:8000")
            })?
            .to_string();
        let connector = Connector::new(common::tls_client::process_config());
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(Client {
            endpoint,
            authority,
            region: region.to_string(),
            credentials,
            http,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Calls `operation` (e.g. `PutItem`) with a JSON body; returns the JSON answer.
    pub async fn call(&self, operation: &str, body: &Value) -> Result<Value, DynamoError> {
        let body = body.to_string();
        let target = format!("{TARGET_PREFIX}{operation}");
        let mut request = hyper::Request::post(format!("{}/", self.endpoint))
            .header("host", &self.authority)
            .header("content-type", CONTENT_TYPE)
            .header("x-amz-target", &target);
        if let Some(credentials) = &self.credentials {
            let now_secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let amz_date = sigv4::format_amz_date(now_secs);
            let authorization = sign(
                credentials,
                &self.region,
                &self.authority,
                &amz_date,
                &target,
                body.as_bytes(),
            );
            request = request
                .header("x-amz-date", &amz_date)
                .header("authorization", authorization);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| self.protocol(error.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|error| self.unreachable(error))?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|error| self.unreachable(error))?
                .to_bytes();
            Ok::<_, DynamoError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), exchange)
            .await
            .map_err(|_| DynamoError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: format!("no answer within {REQUEST_TIMEOUT_MS} ms"),
            })??;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|error| self.protocol(format!("HTTP {status}, body is not JSON: {error}")))?;
        if status == 200 {
            return Ok(value);
        }
        let kind = value
            .get("__type")
            .and_then(Value::as_str)
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
            .unwrap_or_else(|| format!("HTTP{status}"));
        let message = value
            .get("message")
            .or_else(|| value.get("Message"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Err(DynamoError::Api { status, kind, message })
    }

    fn unreachable(&self, error: impl std::fmt::Display) -> DynamoError {
        DynamoError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: error.to_string(),
        }
    }

    fn protocol(&self, reason: String) -> DynamoError {
        DynamoError::Protocol {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }
}

/// The `Authorization` header of a SigV4-signed DynamoDB POST to `/` with the headers this
/// client sends (`content-type`, `host`, `x-amz-date`, `x-amz-target`).
pub fn sign(
    credentials: &AwsCredentials,
    region: &str,
    host: &str,
    amz_date: &str,
    target: &str,
    body: &[u8],
) -> String {
    sigv4::sign_request(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        region,
        host,
        amz_date,
        target,
        body,
    )
    .expect("the request being signed carries its own x-amz-date")
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocol::sigv4::{Credentials, RequestParts};

    #[test]
    fn signatures_verify_with_the_stores_verifier() {
        let credentials = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".to_string(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
        };
        let now = 1_700_000_000;
        let amz_date = sigv4::format_amz_date(now);
        let body = br#"{"TableName":"orders"}"#;
        let target = "DynamoDB_20120810.DescribeTable";
        let authorization = sign(&credentials, "eu-west-1", "127.0.0.1:8000", &amz_date, target, body);
        let headers: [(&str, &[u8]); 5] = [
            ("Host", b"127.0.0.1:8000"),
            ("Content-Type", CONTENT_TYPE.as_bytes()),
            ("X-Amz-Date", amz_date.as_bytes()),
            ("X-Amz-Target", target.as_bytes()),
            ("Authorization", authorization.as_bytes()),
        ];
        // What the store's server sees of the shop's call: a POST to `/`.
        let (method, path, query) = ("POST", "/", "");
        let parts = RequestParts {
            method,
            path,
            query,
            headers: &headers,
            body,
        };
        let mut known = Credentials::new();
        known.insert("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
        let verified = sigv4::verify(&known, &parts, now).expect("valid signature");
        assert_eq!(verified.region, "eu-west-1");

        let mut wrong = Credentials::new();
        wrong.insert("AKIDEXAMPLE", "another secret");
        assert!(sigv4::verify(&wrong, &parts, now).is_err());
    }

    #[test]
    fn endpoints_must_be_plain_http_urls() {
        assert!(Client::new("http://127.0.0.1:8000/", "r", None).is_ok());
        let error = Client::new("127.0.0.1:8000", "r", None).expect_err("no scheme");
        assert!(error.contains("127.0.0.1:8000"));
        assert!(Client::new("https://example.com", "r", None).is_ok());
        assert!(Client::new("ftp://example.com", "r", None).is_err());
        assert!(Client::new("https://example.com/path", "r", None).is_err());
    }
}
