//! A tiny caching stub resolver for A records over UDP, behaving as real resolvers do: an
//! answer is reused until its TTL runs out, then asked again. That is what makes the record's
//! TTL part of the measured RTO.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

/// How long one query waits for its answer.
pub const QUERY_TIMEOUT_MS: u64 = 1_000;
/// Largest UDP answer read.
pub const ANSWER_BYTES_MAX: usize = 4096;
/// TTLs above this are capped (a drill cannot wait a day for a cache).
pub const TTL_S_MAX: u32 = 3_600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("'{0}' is not a DNS name")]
    BadName(String),
    #[error("no answer from {server} within {QUERY_TIMEOUT_MS} ms")]
    Timeout { server: SocketAddr },
    #[error("DNS server {server} answered {code}")]
    Refused { server: SocketAddr, code: String },
    #[error("DNS query to {server}: {reason}")]
    Io { server: SocketAddr, reason: String },
}

/// An answer: the addresses (sorted) and the smallest TTL among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addresses: Vec<Ipv4Addr>,
    pub ttl_s: u32,
}

/// Asks `server` for the A records of `name`, without any cache.
pub async fn query(server: SocketAddr, name: &str) -> Result<Answer, ResolveError> {
    let fqdn = Name::from_ascii(name).map_err(|_| ResolveError::BadName(name.to_string()))?;
    let id: u16 = rand_id();
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(false)
        .add_query(Query::query(fqdn, RecordType::A));
    let packet = message.to_vec().map_err(|e| ResolveError::Io {
        server,
        reason: e.to_string(),
    })?;
    let io = |e: std::io::Error| ResolveError::Io {
        server,
        reason: e.to_string(),
    };
    let bind: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind).await.map_err(io)?;
    socket.connect(server).await.map_err(io)?;
    socket.send(&packet).await.map_err(io)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(QUERY_TIMEOUT_MS);
    let mut buffer = vec![0u8; ANSWER_BYTES_MAX];
    loop {
        let length = match tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await {
            Ok(result) => result.map_err(io)?,
            Err(_) => return Err(ResolveError::Timeout { server }),
        };
        // Ignore anything that is not the answer to this query (a late answer to another).
        let Ok(response) = Message::from_vec(&buffer[..length]) else {
            continue;
        };
        if response.id() != id || response.message_type() != MessageType::Response {
            continue;
        }
        return answer_of(server, &response);
    }
}

fn answer_of(server: SocketAddr, response: &Message) -> Result<Answer, ResolveError> {
    match response.response_code() {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => {
            return Err(ResolveError::Refused {
                server,
                code: code.to_string(),
            });
        }
    }
    let mut addresses = Vec::new();
    let mut ttl_s = TTL_S_MAX;
    for record in response.answers() {
        if let RData::A(a) = record.data() {
            addresses.push(a.0);
            ttl_s = ttl_s.min(record.ttl());
        }
    }
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        ttl_s = 0;
    }
    Ok(Answer { addresses, ttl_s })
}

fn rand_id() -> u16 {
    // Query ids only need to differ between concurrent queries of one socket; the socket is
    // fresh per query, so the clock's low bits are enough.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}

/// What [`CachingResolver::resolve`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub answer: Answer,
    /// False when the server was asked (a cache miss).
    pub from_cache: bool,
}

/// One client's cache for one name.
pub struct CachingResolver {
    server: SocketAddr,
    name: String,
    cache: Mutex<Option<(Answer, Instant)>>,
}

impl CachingResolver {
    pub fn new(server: SocketAddr, name: &str) -> CachingResolver {
        CachingResolver {
            server,
            name: name.to_string(),
            cache: Mutex::new(None),
        }
    }

    /// The cached answer while its TTL lasts.
    pub fn cached(&self) -> Option<Answer> {
        let cache = self.cache.lock().expect("resolver cache lock is never poisoned");
        cache
            .as_ref()
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(answer, _)| answer.clone())
    }

    /// Asks the server and caches a non-empty answer for its TTL.
    pub async fn refresh(&self) -> Result<Answer, ResolveError> {
        let answer = query(self.server, &self.name).await?;
        let mut cache = self.cache.lock().expect("resolver cache lock is never poisoned");
        *cache = if answer.addresses.is_empty() {
            None
        } else {
            let ttl = Duration::from_secs(u64::from(answer.ttl_s.min(TTL_S_MAX)));
            Some((answer.clone(), Instant::now() + ttl))
        };
        Ok(answer)
    }

    pub async fn resolve(&self) -> Result<Resolved, ResolveError> {
        if let Some(answer) = self.cached() {
            return Ok(Resolved {
                answer,
                from_cache: true,
            });
        }
        Ok(Resolved {
            answer: self.refresh().await?,
            from_cache: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}
