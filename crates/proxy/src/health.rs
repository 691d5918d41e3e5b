//! Active health checks: one task per server probes it (HTTP request or TCP connect) at the
//! interval the check state machine asks for and feeds the result back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::balance::ServerId;
use crate::check::Transition;
use crate::config::{CheckConfig, CheckKind};
use crate::proxy::Shared;

/// The outcome of one probe and the detail shown on the stats page (HAProxy's check codes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub success: bool,
    pub detail: String,
}

/// Probes `address` once as `check` says, within `check.timeout_ms`.
pub async fn probe(address: SocketAddr, check: &CheckConfig) -> ProbeResult {
    let started = Instant::now();
    let timeout = Duration::from_millis(check.timeout_ms);
    match tokio::time::timeout(timeout, probe_inner(address, check)).await {
        Ok(Ok(status)) => {
            let elapsed = started.elapsed().as_millis();
            match status {
                None => ProbeResult {
                    success: true,
                    detail: format!("L4OK in {elapsed}ms"),
                },
                Some(code) => {
                    let success = if check.expect_status.is_empty() {
                        (200..400).contains(&code)
                    } else {
                        check.expect_status.contains(&code)
                    };
                    let kind = if success { "L7OK" } else { "L7STS" };
                    ProbeResult {
                        success,
                        detail: format!("{kind} {code} in {elapsed}ms"),
                    }
                }
            }
        }
        Ok(Err(detail)) => ProbeResult { success: false, detail },
        Err(_) => ProbeResult {
            success: false,
            detail: format!("L7TOUT no answer within {}ms", check.timeout_ms),
        },
    }
}

/// `Ok(None)` for a TCP check that connected, `Ok(Some(status))` for an HTTP answer.
async fn probe_inner(address: SocketAddr, check: &CheckConfig) -> Result<Option<u16>, String> {
    let stream = TcpStream::connect(address).await.map_err(|e| format!("L4CON {e}"))?;
    if check.kind == CheckKind::Tcp {
        return Ok(None);
    }
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("L7RSP {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let host = check.host.clone().unwrap_or_else(|| address.to_string());
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.method_mut() = hyper::Method::from_bytes(check.method.as_bytes()).map_err(|e| format!("L7RSP {e}"))?;
    *request.uri_mut() = check.path.parse().map_err(|e| format!("L7RSP bad check path: {e}"))?;
    let headers = request.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, value);
    }
    headers.insert(header::USER_AGENT, HeaderValue::from_static("switchyard-proxy-check"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let response = sender.send_request(request).await.map_err(|e| format!("L7RSP {e}"));
    driver.abort();
    Ok(Some(response?.status().as_u16()))
}

/// Runs the check loop of one server until `stop` flips.
pub async fn run_checks(shared: Arc<Shared>, id: ServerId, mut stop: watch::Receiver<bool>) {
    let servers = shared.config.servers.len().max(1) as u64;
    // Spread the first checks over one interval, as HAProxy does, so they do not all fire at once.
    let first_delay_ms = shared.config.check.inter_ms * id.0 as u64 / servers;
    let mut delay = Duration::from_millis(first_delay_ms);
    let address = shared.config.servers[id.0].address;
    let name = shared.config.servers[id.0].name.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        let result = probe(address, &shared.config.check).await;
        let now = shared.now_ms();
        let (transition, status, next) = {
            let mut balancer = shared.balancer();
            let transition = balancer.on_check(id, result.success, result.detail.clone(), now);
            (transition, balancer.server(id).status(), balancer.next_check_ms(id))
        };
        match transition {
            Some(Transition::Up) => tracing::info!(server = %name, check = %result.detail, %status, "server is UP"),
            Some(Transition::Down) => {
                tracing::warn!(server = %name, check = %result.detail, %status, "server is DOWN")
            }
            None => tracing::debug!(server = %name, check = %result.detail, %status, "check"),
        }
        delay = Duration::from_millis(next);
    }
}
