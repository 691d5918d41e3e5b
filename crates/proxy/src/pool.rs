//! Each worker thread's connections to the servers: HTTP/1.1 connections kept open between
//! requests (keep-alive), one request at a time each, reused last-in first-out. The pool holds
//! either hyper client connections (the HTTP/2 path) or raw TCP streams (the HTTP/1.1 core,
//! [`crate::h1`]).
//!
//! A worker owns its pool, so a request and its server connection stay on one thread and a
//! checkout is an uncontended lock, where a pool shared by every thread (hyper-util's client)
//! would take a contended lock and look a key up per request.
//!
//! Invariants: a connection is back in the pool only after its response body was read to the
//! end (a connection whose response was abandoned is closed, never reused); a server has at most
//! `idle_max` idle connections per worker; a connection idle for `idle_ms` or more is closed and
//! never handed out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// A connection to one server, ready to carry a request (or about to be).
pub type Sender = http1::SendRequest<Full<Bytes>>;

/// An error from either data path (hyper's or the HTTP/1.1 core's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response from the server, and whether it may go to another server.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be opened: the server saw nothing, any method may be retried.
    Connect(std::io::Error),
    /// The connection failed before the request was written: the server saw nothing.
    NotSent(BoxError),
    /// The request was (perhaps partly) sent and no complete response came back.
    Failed(BoxError),
}

/// A pooled connection that can tell whether the server closed it while it sat idle.
pub trait Reusable {
    fn is_closed(&self) -> bool;
}

impl Reusable for Sender {
    fn is_closed(&self) -> bool {
        http1::SendRequest::is_closed(self)
    }
}

impl Reusable for tokio::net::TcpStream {
    /// Closed, or holding bytes nobody asked for (either way unusable). Costs one `recv` only
    /// when the socket was last seen readable.
    fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.try_read(&mut probe), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
    }
}

impl UpstreamError {
    /// The server cannot have acted on the request, so retrying a non-idempotent one is safe.
    pub fn unsent(&self) -> bool {
        matches!(self, UpstreamError::Connect(_) | UpstreamError::NotSent(_))
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(error) => write!(f, "could not connect: {error}"),
            UpstreamError::NotSent(error) => write!(f, "connection failed before the request was sent: {error}"),
            UpstreamError::Failed(error) => write!(f, "{error}"),
        }
    }
}

struct Idle<C> {
    connection: C,
    since: Instant,
}

/// One worker's idle connections, per server (indexed like the configuration's servers).
pub struct Pool<C = Sender> {
    addresses: Vec<std::net::SocketAddr>,
    idle: Mutex<Vec<Vec<Idle<C>>>>,
    idle_max: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

impl<C: Reusable> Pool<C> {
    pub fn new(
        addresses: Vec<std::net::SocketAddr>,
        idle_max: usize,
        idle_timeout_ms: u64,
        connect_timeout_ms: u64,
    ) -> Pool<C> {
        Pool {
            idle: Mutex::new(addresses.iter().map(|_| Vec::new()).collect()),
            addresses,
            idle_max,
            idle_timeout: Duration::from_millis(idle_timeout_ms),
            connect_timeout: Duration::from_millis(connect_timeout_ms),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Vec<Idle<C>>>> {
        // Only this worker's thread takes the lock, and nothing panics while holding it.
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used idle connection to `server` that is still open and fresh.
    pub fn checkout(&self, server: usize) -> Option<C> {
        let mut idle = self.idle();
        let connections = idle.get_mut(server)?;
        let now = Instant::now();
        while let Some(entry) = connections.pop() {
            if entry.connection.is_closed() || now.duration_since(entry.since) >= self.idle_timeout {
                continue;
            }
            return Some(entry.connection);
        }
        None
    }

    /// A new TCP connection to `server`, within `connect_ms`, with Nagle off.
    pub async fn connect_tcp(&self, server: usize) -> Result<tokio::net::TcpStream, UpstreamError> {
        let Some(&address) = self.addresses.get(server) else {
            return Err(UpstreamError::Connect(std::io::Error::other("no such server")));
        };
        let stream = match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(UpstreamError::Connect(error)),
            Err(_) => {
                return Err(UpstreamError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {} ms", self.connect_timeout.as_millis()),
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Keeps a connection whose response was read to the end for the next request to `server`.
    pub fn give_back(&self, server: usize, connection: C) {
        let mut idle = self.idle();
        let Some(connections) = idle.get_mut(server) else {
            return;
        };
        if connections.len() >= self.idle_max {
            // Close the oldest, keep the one that just worked.
            connections.remove(0);
        }
        connections.push(Idle {
            connection,
            since: Instant::now(),
        });
    }

    /// Closes connections idle for `idle_ms` or more, and those the server closed. Returns how
    /// many are left.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut idle = self.idle();
        let mut left = 0;
        for connections in idle.iter_mut() {
            connections
                .retain(|entry| !entry.connection.is_closed() && now.duration_since(entry.since) < self.idle_timeout);
            left += connections.len();
        }
        left
    }
}

impl Pool<Sender> {
    /// Sends `request` to server `server` on an idle connection, or on a new one.
    ///
    /// Returns the response head (the body streams from the connection) and the connection, to
    /// be given back with [`Pool::give_back`] once the body was read to the end.
    pub async fn send(
        &self,
        server: usize,
        request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Sender), UpstreamError> {
        let mut request = request;
        // Idle connections first; one the server closed meanwhile hands the request back unsent.
        while let Some(mut sender) = self.checkout(server) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Failed(Box::new(error.into_error()))),
                },
            }
        }
        let mut sender = self.connect(server).await?;
        if let Err(error) = sender.ready().await {
            return Err(UpstreamError::NotSent(Box::new(error)));
        }
        match sender.try_send_request(request).await {
            Ok(response) => Ok((response, sender)),
            Err(mut error) => {
                let unsent = error.take_message().is_some();
                let error: BoxError = Box::new(error.into_error());
                Err(if unsent {
                    UpstreamError::NotSent(error)
                } else {
                    UpstreamError::Failed(error)
                })
            }
        }
    }

    async fn connect(&self, server: usize) -> Result<Sender, UpstreamError> {
        let stream = self.connect_tcp(server).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| UpstreamError::NotSent(Box::new(error)))?;
        tokio::spawn(async move {
            // The connection ends when the server closes it, on an error, or when its sender
            // was dropped (abandoned response, full pool, idle timeout).
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Keeps a connection whose response was read to the end for the next request to `server`.
    pub fn give_back_sender(&self, server: usize, sender: Sender) {
        if !sender.is_closed() {
            self.give_back(server, sender);
        }
    }
}
