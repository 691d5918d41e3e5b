//! WebSocket-style tunnels through a load balancer: an echo server that answers an HTTP/1.1
//! upgrade with `101 Switching Protocols` and then returns every byte it receives, and a load
//! generator that opens connections through the balancer, upgrades each, and sends one message
//! at a time per connection, timing each round trip. Both proxies under comparison only move
//! bytes once a connection is upgraded, so the messages are fixed-size byte strings, not
//! WebSocket frames.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The request each connection upgrades with.
fn upgrade_request(host: &str) -> String {
    format!(
        "GET /socket HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

const SWITCHED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
const HEALTHY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
/// Largest request head the echo server reads.
const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Bytes the echo server reads per read.
const ECHO_BUFFER_BYTES: usize = 64 * 1024;

/// Reads a request or response head; the bytes after it stay in `buffer`. `None` at a close or
/// past [`HEAD_BYTES_MAX`].
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buffer[..end + 4].to_vec();
            buffer.drain(..end + 4);
            return Some(head);
        }
        if buffer.len() > HEAD_BYTES_MAX {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Serves the echo server on `listener` until the process ends: an upgrade request gets `101`
/// and then its bytes back; any other request (a health check) gets 200 on a kept connection.
pub async fn echo_server(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buffer = Vec::new();
            loop {
                let Some(head) = read_head(&mut stream, &mut buffer).await else {
                    return;
                };
                let upgrade = String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .contains("\nupgrade: websocket");
                if !upgrade {
                    if stream.write_all(HEALTHY).await.is_err() {
                        return;
                    }
                    continue;
                }
                if stream.write_all(SWITCHED).await.is_err() || stream.write_all(&buffer).await.is_err() {
                    return;
                }
                let mut chunk = vec![0u8; ECHO_BUFFER_BYTES];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
    }
}

/// One measurement's settings.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub connections: usize,
    pub message_bytes: usize,
    pub duration: Duration,
    /// Round trips before the clock starts (per connection).
    pub warmup_messages: usize,
}

/// What one measurement saw.
#[derive(Clone, Debug)]
pub struct LoadResult {
    pub messages: u64,
    pub seconds: f64,
    /// Round-trip times in microseconds, every message timed.
    pub round_trips_us: Vec<f64>,
    /// Connections whose upgrade or echo failed.
    pub failures: u64,
}

/// Opens `connections` tunnels through `target` and sends one `message_bytes` message at a
/// time on each until `duration` has passed, timing every round trip.
pub async fn load(config: &LoadConfig) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(config.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(config.message_bytes > 0, "--message-bytes must be at least 1");
    let mut tunnels = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        tunnels.push(open(config.target).await?);
    }
    let start_at = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(tunnels.len());
    for mut stream in tunnels {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let message = vec![b'm'; config.message_bytes];
            let mut echo = vec![0u8; config.message_bytes];
            let mut timed = Vec::new();
            for _ in 0..config.warmup_messages {
                round_trip(&mut stream, &message, &mut echo).await?;
            }
            tokio::time::sleep_until(start_at).await;
            let end = Instant::now() + config.duration;
            while Instant::now() < end {
                let sent = Instant::now();
                round_trip(&mut stream, &message, &mut echo).await?;
                timed.push(sent.elapsed().as_secs_f64() * 1e6);
            }
            anyhow::Ok(timed)
        }));
    }
    let mut result = LoadResult {
        messages: 0,
        seconds: config.duration.as_secs_f64(),
        round_trips_us: Vec::new(),
        failures: 0,
    };
    for task in tasks {
        match task.await {
            Ok(Ok(timed)) => {
                result.messages += timed.len() as u64;
                result.round_trips_us.extend(timed);
            }
            _ => result.failures += 1,
        }
    }
    Ok(result)
}

async fn open(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connect to {target}"))?;
    stream.set_nodelay(true)?;
    stream
        .write_all(upgrade_request(&target.to_string()).as_bytes())
        .await?;
    let mut buffer = Vec::new();
    let head = read_head(&mut stream, &mut buffer)
        .await
        .context("the connection closed before the upgrade's answer")?;
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "the upgrade was answered {:?}",
        String::from_utf8_lossy(&head)
    );
    anyhow::ensure!(buffer.is_empty(), "bytes arrived before any message was sent");
    Ok(stream)
}

async fn round_trip(stream: &mut TcpStream, message: &[u8], echo: &mut [u8]) -> anyhow::Result<()> {
    stream.write_all(message).await?;
    stream.read_exact(echo).await?;
    anyhow::ensure!(echo == message, "the echo differs from the message");
    Ok(())
}
