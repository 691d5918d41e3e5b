//! DynamoDB probe: `GetItem` of a key, or `Scan` with `Limit = 1`, against any endpoint that
//! speaks DynamoDB's JSON protocol; SigV4-signed when credentials are given.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::Request;
use sha2::{Digest, Sha256};

use dynamo_protocol::sigv4::{RequestParts, canonical_request, format_amz_date, signing_key};

use super::{Finding, http::exchange};

pub(super) async fn probe(
    endpoint: &str,
    table: &str,
    key: Option<&serde_json::Value>,
    region: &str,
    credentials: Option<(&str, &str)>,
) -> Finding {
    let uri: hyper::Uri = match endpoint.parse() {
        Ok(uri) => uri,
        Err(error) => return Finding::down(format!("endpoint '{endpoint}': {error}")),
    };
    let https = uri.scheme_str() == Some("https");
    let Some(authority) = uri.authority().map(|a| a.as_str().to_string()) else {
        return Finding::down(format!("endpoint '{endpoint}' is not http(s)://host:port"));
    };
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let (operation, body) = match key {
        Some(key) => ("GetItem", serde_json::json!({"TableName": table, "Key": key})),
        None => ("Scan", serde_json::json!({"TableName": table, "Limit": 1})),
    };
    let body = body.to_string().into_bytes();
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let request = match build_request(&authority, operation, body, region, credentials, now_secs) {
        Ok(request) => request,
        Err(error) => return Finding::down(error),
    };
    match exchange(&host, port, https, request).await {
        Err(error) => Finding::down(error),
        Ok((status, body)) => judge(operation, table, status, &body),
    }
}

fn build_request(
    authority: &str,
    operation: &str,
    body: Vec<u8>,
    region: &str,
    credentials: Option<(&str, &str)>,
    now_secs: i64,
) -> Result<Request<Full<Bytes>>, String> {
    let amz_date = format_amz_date(now_secs);
    let target = format!("DynamoDB_20120810.{operation}");
    let content_type = "application/x-amz-json-1.0";
    let mut builder = Request::builder()
        .method("POST")
        .uri("/")
        .header("host", authority)
        .header("content-type", content_type)
        .header("x-amz-date", &amz_date)
        .header("x-amz-target", &target)
        .header("user-agent", "switchyard-health/1");
    if let Some((access_key_id, secret)) = credentials {
        let headers: [(&str, &[u8]); 4] = [
            ("content-type", content_type.as_bytes()),
            ("host", authority.as_bytes()),
            ("x-amz-date", amz_date.as_bytes()),
            ("x-amz-target", target.as_bytes()),
        ];
        let signed: Vec<String> = headers.iter().map(|(name, _)| name.to_string()).collect();
        let parts = RequestParts {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: &body,
        };
        let canonical = canonical_request(&parts, &signed, false).map_err(|e| format!("sign request: {e:?}"))?;
        let date = &amz_date[..8];
        let scope = format!("{date}/{region}/dynamodb/aws4_request");
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let key = signing_key(secret, date, region, "dynamodb");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts keys of any length");
        mac.update(string_to_sign.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        builder = builder.header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={signature}",
                signed.join(";")
            ),
        );
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("build request: {e}"))
}

fn judge(operation: &str, table: &str, status: u16, body: &[u8]) -> Finding {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if status == 200 {
        let found = match (operation, &json) {
            ("GetItem", Some(json)) => {
                if json.get("Item").is_some() {
                    "item found".to_string()
                } else {
                    "no such item".to_string()
                }
            }
            (_, Some(json)) => format!("{} items", json.get("Count").and_then(|c| c.as_u64()).unwrap_or(0)),
            (_, None) => return Finding::down(format!("{operation} {table}: HTTP 200 with a body that is not JSON")),
        };
        return Finding::up(format!("{operation} {table}: {found}"));
    }
    let kind = json
        .as_ref()
        .and_then(|j| j.get("__type"))
        .and_then(|t| t.as_str())
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        .unwrap_or_default();
    let message = json
        .as_ref()
        .and_then(|j| j.get("message").or_else(|| j.get("Message")))
        .and_then(|m| m.as_str())
        .unwrap_or("");
    Finding::down(
        format!("{operation} {table}: HTTP {status} {kind} {message}")
            .trim_end()
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocol::sigv4::{Credentials, verify};

    #[test]
    fn signed_requests_verify() {
        let body = br#"{"TableName":"t","Limit":1}"#.to_vec();
        let now = 1_700_000_000;
        let request = build_request(
            "127.0.0.1:8000",
            "Scan",
            body.clone(),
            "eu-west-1",
            Some(("AKID", "SECRET")),
            now,
        )
        .expect("builds");
        let headers: Vec<(String, Vec<u8>)> = request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        let parts = RequestParts {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: &body,
        };
        let mut credentials = Credentials::new();
        credentials.insert("AKID", "SECRET");
        verify(&credentials, &parts, now).expect("the store's verifier accepts the signature");
        let mut wrong = Credentials::new();
        wrong.insert("AKID", "OTHER");
        assert!(verify(&wrong, &parts, now).is_err());
    }

    #[test]
    fn errors_name_the_type() {
        let body = br#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException","message":"Requested resource not found"}"#;
        let finding = judge("Scan", "t", 400, body);
        assert!(!finding.success);
        assert_eq!(
            finding.detail,
            "Scan t: HTTP 400 ResourceNotFoundException Requested resource not found"
        );
        assert!(judge("GetItem", "t", 200, br#"{"Item":{}}"#).success);
        assert!(!judge("GetItem", "t", 200, b"<html>").success);
    }
}
