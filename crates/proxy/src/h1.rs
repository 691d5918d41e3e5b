//! The HTTP/1.1 forwarding core: one task per client connection parses each request head once
//! (`httparse`), rewrites only what the proxy changes (hop-by-hop headers, `Expect`, `Host`,
//! the forwarding headers) straight into the server's write buffer, and moves the response
//! between a pooled raw server connection and the client in the same task. It serves plain
//! connections and TLS ones whose client chose HTTP/1.1 (ALPN http/1.1, or none) alike
//! ([`ClientStream`]); HTTP/2 (prior knowledge, or ALPN h2) goes to hyper ([`crate::proxy`]).
//!
//! Invariants: a request whose framing is ambiguous (RFC 9112 §6.1, §6.3: `Transfer-Encoding`
//! with `Content-Length`, a final coding other than chunked, differing `Content-Length`s, a bad
//! chunk) is answered 400 and its connection closed, never forwarded; a request body is read
//! whole (up to `request_body_bytes_max`) before any server sees the request, so it can be
//! retried; a server connection goes back to the pool only after its response was read to the
//! end with nothing extra and neither side said `close`; a response is forwarded with its
//! framing checked (chunked as is, `Content-Length`, or until close, which then closes the
//! client connection); nothing here panics on any input.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::pool::{Pool, UpstreamError};
use crate::proxy::{self, ClientProblem, Dispatched, Exchange, HostError, Shared};

/// Header fields a request or response head may have (hyper's default is 100 too).
pub const HEADERS_MAX: usize = 100;
/// A server's response head larger than this is a 502.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most informational (1xx) responses a server may send before its final one.
pub const INTERIM_RESPONSES_MAX: usize = 16;
/// Bytes read from a server per read while streaming a response body (the bounded buffer).
pub const RESPONSE_BUFFER_BYTES: usize = 64 * 1024;
/// Bytes first set aside for a client connection's request buffer.
pub(crate) const REQUEST_BUFFER_BYTES: usize = 8 * 1024;
/// Spare room below which a read first grows the buffer.
const READ_ROOM_BYTES_MIN: usize = 2 * 1024;
/// Chunk extensions on one chunk-size line, and on a whole body.
pub const CHUNK_EXTENSION_BYTES_MAX: usize = 1024;
pub const CHUNK_EXTENSIONS_TOTAL_BYTES_MAX: usize = 16 * 1024;
/// Trailer section of a chunked body.
pub const TRAILER_BYTES_MAX: usize = 16 * 1024;
/// Hex digits of a chunk size (16 fill a u64).
const CHUNK_SIZE_DIGITS_MAX: u8 = 15;
/// Bytes of a response body copied behind the head so both go out in one write.
const FIRST_WRITE_BODY_BYTES_MAX: usize = 16 * 1024;

/// How long a closing connection reads (and drops) what its client still sends.
const CLOSE_LINGER_MS: u64 = 1000;
/// At most this many bytes are read (and dropped) while closing.
const CLOSE_LINGER_BYTES_MAX: usize = 256 * 1024;

/// The answer to an upgrade read while the proxy stops.
const STOPPING: &str = "the load balancer is stopping; reconnect";

/// The interim answer to `Expect: 100-continue` (RFC 9110 §10.1.1).
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the framing
/// ones this core writes itself. Lowercase.
const HOP_BY_HOP: [&[u8]; 10] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
    b"transfer-encoding",
    b"content-length",
];

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the server closes the connection (responses only).
    UntilClose,
}

/// Why a request is refused before any server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// 400, with the reason.
    Bad(&'static str),
    /// 400 for the `Host`.
    Host(HostError),
    /// 431: more than [`HEADERS_MAX`] fields (the byte limit is the caller's).
    TooManyHeaders,
    /// 501: a transfer coding other than chunked.
    UnknownCoding,
}

/// A parsed request: what the core needs after the head's bytes are gone. The rewritten head
/// (without its final empty line) is in the `out` buffer given to [`parse_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    pub head_len: usize,
    pub http10: bool,
    pub keep_alive: bool,
    pub body: Framing,
    pub expect_continue: bool,
    pub idempotent: bool,
    pub head_method: bool,
    /// Where the method ends and the target ends in `out` (for log lines).
    pub method_end: usize,
    pub target_end: usize,
    /// The request had no `Host` (HTTP/1.0): `Host` naming the server goes at this offset of
    /// `out` for each attempt.
    pub host_missing_at: Option<usize>,
    /// The client asked to switch protocols (`Upgrade` named by `Connection`, HTTP/1.1): the
    /// server was sent `Connection: upgrade` and the protocols, and a `101` turns the
    /// connection into a tunnel ([`crate::tunnel`]).
    pub upgrade: bool,
    /// Where the protocols asked for are in `out` (`start..end`; empty without an upgrade): a
    /// `101` must name one of them.
    pub upgrade_protocols: (usize, usize),
}

fn lower_eq(name: &str, lower: &[u8]) -> bool {
    name.as_bytes().eq_ignore_ascii_case(lower)
}

/// Comma-separated list elements (RFC 9110 §5.6.1), trimmed, empty ones skipped.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether `name` is listed in any of the `Connection` header values.
fn named_by_connection(name: &str, headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| lower_eq(h.name, b"connection"))
        .any(|h| list(h.value).any(|token| lower_eq(name, token)))
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|hop| lower_eq(name, hop))
}

/// A line ending must be CRLF: refuses a bare LF (httparse accepts one).
fn bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(index, b)| *b == b'\n' && (index == 0 || head[index - 1] != b'\r'))
}

/// `Content-Length` values: all equal plain digits (a list like `5, 5` counts as its elements).
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, ()> {
    let mut length = None;
    for value in values {
        let mut elements = 0;
        for element in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            elements += 1;
            if element.is_empty() || element.len() > 19 || !element.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let parsed = element.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|seen| seen != parsed) {
                return Err(());
            }
            length = Some(parsed);
        }
        if elements == 0 {
            return Err(());
        }
    }
    Ok(length)
}

/// What a message's `Transfer-Encoding` lines say (RFC 9112 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codings {
    /// No `Transfer-Encoding` line.
    Absent,
    /// `chunked`, alone and once.
    Chunked,
    /// `chunked` last, after codings this proxy does not decode (501 for a request).
    Unsupported,
    /// No coding at all (`Transfer-Encoding:` or `,`): a list of codings cannot be empty.
    Empty,
    /// The final coding is not chunked, or chunked is applied twice.
    FinalNotChunked,
}

/// Reads the codings of a message's `Transfer-Encoding` lines.
fn transfer_coding<'a>(values: impl Iterator<Item = &'a [u8]>) -> Codings {
    let mut lines = 0;
    let mut count = 0;
    let mut chunked_at = None;
    let mut chunked_count = 0;
    for value in values {
        lines += 1;
        for coding in list(value) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked_at = Some(count);
                chunked_count += 1;
            }
            count += 1;
        }
    }
    match (count, chunked_at) {
        (0, _) if lines == 0 => Codings::Absent,
        (0, _) => Codings::Empty,
        (1, Some(0)) => Codings::Chunked,
        // Chunked applied twice is an error (RFC 9112 §6.1).
        (n, Some(at)) if at + 1 == n && chunked_count == 1 => Codings::Unsupported,
        _ => Codings::FinalNotChunked,
    }
}

/// The target's path and query to forward, and its authority for absolute-form (RFC 9112 §3.2).
fn split_target(target: &[u8]) -> Result<(&[u8], Option<&[u8]>), RequestError> {
    // A fragment is the user agent's business (RFC 9112 §3.2: origin-form and absolute-form
    // have none); forwarded, it could reach a server that routes or caches on it (HAProxy
    // refuses it since CVE-2023-45539).
    if target.contains(&b'#') {
        return Err(RequestError::Bad(
            "the request target has a fragment (#), which a request never carries (RFC 9112 section 3.2)",
        ));
    }
    if target.first() == Some(&b'/') || target == b"*" {
        return Ok((target, None));
    }
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return Err(RequestError::Bad(
            "the request target is not origin-form or absolute-form http(s)",
        ));
    };
    let end = rest.iter().position(|b| *b == b'/' || *b == b'?').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || !proxy::valid_host(authority) {
        return Err(RequestError::Host(HostError::Invalid));
    }
    let path: &[u8] = if path.is_empty() { b"/" } else { path };
    if path[0] != b'/' {
        return Err(RequestError::Bad("the request target has a query but no path"));
    }
    Ok((path, Some(authority)))
}

/// Parses a request head from the start of `buf` and writes the head to send to the server
/// (request line, `Host`, the kept headers, the forwarding headers; no framing header and no
/// final empty line) into `out`. `Ok(None)`: the head is not complete yet.
pub fn parse_request(
    buf: &[u8],
    client: SocketAddr,
    proto: proxy::Proto,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, RequestError> {
    let mut storage = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut storage);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(_) => {
            return Err(RequestError::Bad(
                "the request head is malformed (RFC 9112 sections 2 to 5)",
            ));
        }
    };
    // A request may follow empty lines (RFC 9112 §2.2), which httparse skips.
    let head = &buf[..head_len];
    if bare_lf(head.trim_ascii_start()) {
        return Err(RequestError::Bad(
            "a line of the request head ends in a bare LF, not CRLF",
        ));
    }
    let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
        return Err(RequestError::Bad("the request line is incomplete"));
    };
    let headers: &[httparse::Header<'_>] = request.headers;
    let http10 = version == 0;
    let values = |name: &'static [u8]| headers.iter().filter(move |h| lower_eq(h.name, name)).map(|h| h.value);

    let (path, authority) = split_target(target.as_bytes())?;
    let host = proxy::forwarded_host_h1(http10, authority, values(b"host")).map_err(RequestError::Host)?;

    let length = content_length(values(b"content-length"))
        .map_err(|()| RequestError::Bad("the request has Content-Length values that differ or are not numbers"))?;
    let has_te = values(b"transfer-encoding").next().is_some();
    let body = match transfer_coding(values(b"transfer-encoding")) {
        _ if has_te && length.is_some() => {
            return Err(RequestError::Bad(
                "the request has both Transfer-Encoding and Content-Length (RFC 9112 section 6.3)",
            ));
        }
        _ if has_te && http10 => {
            return Err(RequestError::Bad(
                "an HTTP/1.0 request cannot use Transfer-Encoding (RFC 9112 section 6.1)",
            ));
        }
        Codings::Chunked => Framing::Chunked,
        Codings::Absent => match length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        },
        Codings::Unsupported => return Err(RequestError::UnknownCoding),
        Codings::Empty => {
            return Err(RequestError::Bad(
                "the request's Transfer-Encoding names no coding (RFC 9112 section 6.1)",
            ));
        }
        Codings::FinalNotChunked => {
            return Err(RequestError::Bad(
                "the request's final transfer coding is not chunked (RFC 9112 section 6.3)",
            ));
        }
    };
    let connection_has = |token: &[u8]| values(b"connection").any(|v| list(v).any(|t| t.eq_ignore_ascii_case(token)));
    let keep_alive = if http10 {
        connection_has(b"keep-alive")
    } else {
        !connection_has(b"close")
    };
    let expect_continue = values(b"expect").any(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    // RFC 9110 §7.8: `Upgrade` counts only when `Connection` names it; HTTP/1.0 cannot upgrade.
    let upgrade = !http10
        && connection_has(b"upgrade")
        && values(b"upgrade").flat_map(list).any(crate::tunnel::tunnelled_protocol);

    out.clear();
    out.extend_from_slice(method.as_bytes());
    let method_end = out.len();
    out.push(b' ');
    out.extend_from_slice(path);
    let target_end = out.len();
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host_missing_at = match host {
        Some(host) => {
            push_header(out, b"host", host);
            None
        }
        None => Some(out.len()),
    };
    let any_connection = values(b"connection").next().is_some();
    for header in headers {
        let name = header.name;
        if is_hop_by_hop(name)
            || lower_eq(name, b"host")
            || lower_eq(name, b"expect")
            || lower_eq(name, b"x-forwarded-proto")
            // Every line of these is kept, merged into the one this hop writes.
            || lower_eq(name, b"x-forwarded-for")
            || lower_eq(name, b"forwarded")
            || (any_connection && named_by_connection(name, headers))
        {
            continue;
        }
        push_header(out, name.as_bytes(), header.value);
    }
    let mut upgrade_protocols = (0, 0);
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
        upgrade_protocols.0 = out.len();
        let protocols = values(b"upgrade")
            .flat_map(list)
            .filter(|p| crate::tunnel::tunnelled_protocol(p));
        for (index, protocol) in protocols.enumerate() {
            if index > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(protocol);
        }
        upgrade_protocols.1 = out.len();
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    proxy::push_x_forwarded_for(out, values(b"x-forwarded-for"), client);
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(proto.name().as_bytes());
    out.extend_from_slice(b"\r\nforwarded: ");
    proxy::push_forwarded(out, values(b"forwarded"), client, host, proto);
    out.extend_from_slice(b"\r\n");
    Ok(Some(RequestHead {
        head_len,
        http10,
        keep_alive,
        body,
        expect_continue,
        idempotent: proxy::idempotent_method(method.as_bytes()),
        head_method: method == "HEAD",
        method_end,
        target_end,
        host_missing_at,
        upgrade,
        upgrade_protocols,
    }))
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// What the client asked of the response's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSide {
    pub http10: bool,
    pub keep_alive: bool,
    pub head_method: bool,
    /// The request asked to switch protocols: a `101` is its answer, not an error.
    pub upgrade: bool,
}

/// How the response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBody {
    None,
    Length(u64),
    /// Chunked, forwarded byte for byte (after checking its framing).
    Chunked,
    /// Chunked from the server, plain to an HTTP/1.0 client, which then sees the close.
    Dechunk,
    /// Until the server closes, then the client connection closes.
    UntilClose,
    /// The server switched protocols (`101`): from here the connection is a tunnel.
    Tunnel,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub body: ClientBody,
    /// The server connection may carry another request once this body is read.
    pub server_keep_alive: bool,
    /// The client connection closes after this response.
    pub client_close: bool,
}

/// Parses a response head from the start of `buf`. For a final response (not 1xx), writes the
/// head for the client into `out` (cleared first). `Ok(None)`: the head is not complete yet.
/// `asked`: the protocols the request asked to switch to, as forwarded (empty: none).
pub fn parse_response(
    buf: &[u8],
    client: ClientSide,
    asked: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, &'static str> {
    let mut storage = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut storage);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("the response head has too many header fields"),
        Err(_) => return Err("the response head is malformed"),
    };
    let (Some(status), Some(version)) = (response.code, response.version) else {
        return Err("the response status line is incomplete");
    };
    if bare_lf(&buf[..head_len]) {
        return Err("a line of the response head ends in a bare LF");
    }
    if !(100..=999).contains(&status) {
        return Err("the response status is not three digits");
    }
    let headers: &[httparse::Header<'_>] = response.headers;
    if status == 101 {
        return switched_protocols(head_len, &response, client, asked, out);
    }
    let informational = status < 200;
    let values = |name: &'static [u8]| headers.iter().filter(move |h| lower_eq(h.name, name)).map(|h| h.value);
    let connection_has = |token: &[u8]| values(b"connection").any(|v| list(v).any(|t| t.eq_ignore_ascii_case(token)));
    let server_keep_alive = if version == 0 {
        connection_has(b"keep-alive")
    } else {
        !connection_has(b"close")
    };
    let has_te = values(b"transfer-encoding").next().is_some();
    let framing = if client.head_method || informational || status == 204 || status == 304 {
        Framing::None
    } else if has_te {
        match transfer_coding(values(b"transfer-encoding")) {
            Codings::Chunked => Framing::Chunked,
            // Codings on top of chunked (`gzip, chunked`) would need forwarding as they are,
            // and a final coding that is not chunked leaves the client no framing it may
            // trust (RFC 9112 §6.3): refused as HAProxy refuses them, never passed on with
            // the framing stripped.
            _ => return Err("the response uses a transfer coding other than chunked"),
        }
    } else {
        match content_length(values(b"content-length")) {
            Ok(Some(n)) => Framing::Length(n),
            Ok(None) => Framing::UntilClose,
            Err(()) => return Err("the response has Content-Length values that differ or are not numbers"),
        }
    };
    let head = ResponseHead {
        head_len,
        status,
        body: match framing {
            Framing::None => ClientBody::None,
            Framing::Length(n) => ClientBody::Length(n),
            Framing::Chunked if client.http10 => ClientBody::Dechunk,
            Framing::Chunked => ClientBody::Chunked,
            Framing::UntilClose => ClientBody::UntilClose,
        },
        // A response with both framings, or delimited by close, leaves the connection unusable.
        server_keep_alive: server_keep_alive
            && !(has_te && values(b"content-length").next().is_some())
            && framing != Framing::UntilClose,
        client_close: !client.keep_alive
            || matches!(framing, Framing::UntilClose)
            || (framing == Framing::Chunked && client.http10),
    };
    if informational {
        return Ok(Some(head));
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let any_connection = values(b"connection").next().is_some();
    // A 426 must name the protocols the client may upgrade to (RFC 9110 §15.5.22), so its
    // `Upgrade` is passed on (hop-by-hop, so announced in our own `Connection`); HTTP/1.0 has
    // no upgrade. Elsewhere a server's `Upgrade` only advertises what this hop would have to
    // offer (h2c), and is dropped like any hop-by-hop field.
    let pass_upgrade = status == 426 && !client.http10;
    let mut upgrade_passed = false;
    for header in headers {
        let name = header.name;
        let upgrade = lower_eq(name, b"upgrade");
        if upgrade && pass_upgrade {
            if list(header.value).next().is_some() {
                push_header(out, name.as_bytes(), header.value);
                upgrade_passed = true;
            }
            continue;
        }
        if is_hop_by_hop(name) || (any_connection && named_by_connection(name, headers)) {
            continue;
        }
        push_header(out, name.as_bytes(), header.value);
    }
    match head.body {
        ClientBody::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ClientBody::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // HEAD, 204 and 304 carry the length the body would have had.
        ClientBody::None if status != 204 => {
            if let Ok(Some(n)) = content_length(values(b"content-length")) {
                out.extend_from_slice(b"content-length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            } else if has_te && client.head_method && !client.http10 {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
        }
        _ => {}
    }
    match (head.client_close, upgrade_passed) {
        (true, true) => out.extend_from_slice(b"connection: upgrade, close\r\n"),
        (true, false) => out.extend_from_slice(b"connection: close\r\n"),
        (false, true) => out.extend_from_slice(b"connection: upgrade\r\n"),
        (false, false) if client.http10 => out.extend_from_slice(b"connection: keep-alive\r\n"),
        (false, false) => {}
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(head))
}

/// A `101 Switching Protocols` (RFC 9110 §15.2.2): the head for the client, with the
/// server's `Upgrade` and `Connection: upgrade`; the connection becomes a tunnel.
fn switched_protocols(
    head_len: usize,
    response: &httparse::Response<'_, '_>,
    client: ClientSide,
    asked: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, &'static str> {
    if !client.upgrade || asked.is_empty() {
        return Err("the server switched protocols, though the request asked for no upgrade");
    }
    if response.version != Some(1) {
        return Err("an HTTP/1.0 server switched protocols (RFC 9110 section 7.8)");
    }
    let headers: &[httparse::Header<'_>] = response.headers;
    let mut protocols = headers
        .iter()
        .filter(|h| lower_eq(h.name, b"upgrade"))
        .flat_map(|h| list(h.value));
    let Some(first) = protocols.next() else {
        return Err("the server switched protocols without naming one in Upgrade (RFC 9110 section 15.2.2)");
    };
    // RFC 9110 §7.8: the server switches to a protocol the client indicated (the first listed
    // is the one switched to; the rest, if any, layered above it must be asked for too).
    if !std::iter::once(first)
        .chain(protocols)
        .all(|chosen| crate::tunnel::asked_for(chosen, asked))
    {
        return Err("the server switched to a protocol the request did not ask for (RFC 9110 section 7.8)");
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(response.reason.unwrap_or("Switching Protocols").as_bytes());
    out.extend_from_slice(b"\r\n");
    let any_connection = headers.iter().any(|h| lower_eq(h.name, b"connection"));
    for header in headers {
        let name = header.name;
        if (is_hop_by_hop(name) && !lower_eq(name, b"upgrade"))
            || (any_connection && named_by_connection(name, headers) && !lower_eq(name, b"upgrade"))
        {
            continue;
        }
        push_header(out, name.as_bytes(), header.value);
    }
    out.extend_from_slice(b"connection: upgrade\r\n\r\n");
    Ok(Some(ResponseHead {
        head_len,
        status: 101,
        body: ClientBody::Tunnel,
        server_keep_alive: false,
        client_close: true,
    }))
}

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    Invalid,
    SizeTooLarge,
    ExtensionTooLong,
    TrailerTooLong,
    /// The body is over the caller's limit (from the data callback).
    BodyTooLarge,
}

impl ChunkError {
    pub fn message(self) -> &'static str {
        match self {
            ChunkError::Invalid => "the chunked body is malformed (RFC 9112 section 7.1)",
            ChunkError::SizeTooLarge => "a chunk size is too large",
            ChunkError::ExtensionTooLong => "the chunk extensions are too long",
            ChunkError::TrailerTooLong => "the trailer section is too long",
            ChunkError::BodyTooLarge => "the body is over the limit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A streaming chunked-body checker and decoder (RFC 9112 §7.1): strict CRLF, hex sizes that
/// fit, bounded extensions and trailers.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u8,
    extension_bytes: usize,
    extensions_total_bytes: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            extension_bytes: 0,
            extensions_total_bytes: 0,
            trailer_bytes: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes of the body from `input`, handing chunk data to `data`; stops at the end
    /// of the body. Returns how many bytes it consumed.
    pub fn feed(
        &mut self,
        input: &[u8],
        data: &mut dyn FnMut(&[u8]) -> Result<(), ChunkError>,
    ) -> Result<usize, ChunkError> {
        use ChunkState::*;
        let mut at = 0;
        while at < input.len() && self.state != Done {
            let byte = input[at];
            if self.state == Data {
                let take = usize::try_from(self.size).unwrap_or(usize::MAX).min(input.len() - at);
                data(&input[at..at + take])?;
                self.size -= take as u64;
                at += take;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            at += 1;
            self.state = match (self.state, byte) {
                (Size, _) if byte.is_ascii_hexdigit() => {
                    if self.digits >= CHUNK_SIZE_DIGITS_MAX {
                        return Err(ChunkError::SizeTooLarge);
                    }
                    let digit = (byte as char).to_digit(16).unwrap_or(0);
                    self.size = self.size * 16 + u64::from(digit);
                    self.digits += 1;
                    Size
                }
                (Size, _) if self.digits == 0 => return Err(ChunkError::Invalid),
                (Size | SizeSpace, b' ' | b'\t') => SizeSpace,
                (Size | SizeSpace, b';') => Extension,
                (Size | SizeSpace | Extension, b'\r') => SizeLf,
                (Extension, b'\t' | 0x20..=0x7e | 0x80..=0xff) => {
                    self.extension_bytes += 1;
                    self.extensions_total_bytes += 1;
                    if self.extension_bytes > CHUNK_EXTENSION_BYTES_MAX
                        || self.extensions_total_bytes > CHUNK_EXTENSIONS_TOTAL_BYTES_MAX
                    {
                        return Err(ChunkError::ExtensionTooLong);
                    }
                    Extension
                }
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    self.extension_bytes = 0;
                    if self.size == 0 { TrailerStart } else { Data }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | Trailer, b'\t' | 0x20..=0x7e | 0x80..=0xff) => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > TRAILER_BYTES_MAX {
                        return Err(ChunkError::TrailerTooLong);
                    }
                    Trailer
                }
                (Trailer, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(ChunkError::Invalid),
            };
        }
        Ok(at)
    }
}

/// Runs the request parser and the chunked decoder over arbitrary bytes, as a fuzz target and
/// the nasty-input test do: must never panic.
pub fn exercise_parsers(input: &[u8]) {
    let client: SocketAddr = SocketAddr::from(([192, 0, 2, 1], 4711));
    let mut out = Vec::new();
    let _ = parse_request(input, client, proxy::Proto::Https, &mut out);
    if let Ok(Some(head)) = parse_request(input, client, proxy::Proto::Http, &mut out)
        && head.body == Framing::Chunked
    {
        let mut decoder = ChunkedDecoder::default();
        let _ = decoder.feed(&input[head.head_len..], &mut |_| Ok(()));
    }
    // The decoder fed in two pieces must agree with it fed at once.
    let mut whole = ChunkedDecoder::default();
    let at_once = whole.feed(input, &mut |_| Ok(()));
    let mut split = ChunkedDecoder::default();
    let (a, b) = input.split_at(input.len() / 2);
    let in_two = split.feed(a, &mut |_| Ok(())).and_then(|used| {
        if used < a.len() {
            Ok(used)
        } else {
            split.feed(b, &mut |_| Ok(())).map(|more| used + more)
        }
    });
    debug_assert_eq!(at_once.is_ok(), in_two.is_ok());
    for (http10, upgrade) in [(false, false), (true, false), (false, true)] {
        let client_side = ClientSide {
            http10,
            keep_alive: true,
            head_method: false,
            upgrade,
        };
        let asked: &[u8] = if upgrade { b"websocket, foo/2" } else { b"" };
        let _ = parse_response(input, client_side, asked, &mut out);
    }
}

/// A client connection's first bytes put back in front of it, for hyper (HTTP/2).
pub(crate) struct Rewind {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl Rewind {
    pub(crate) fn new(prefix: Vec<u8>, inner: TcpStream) -> Rewind {
        Rewind { prefix, at: 0, inner }
    }
}

impl tokio::io::AsyncRead for Rewind {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rewind {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A local answer (an error made here), written into `out`.
fn write_local(out: &mut Vec<u8>, status: u16, message: &str, close: bool, head_method: bool) {
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    push_decimal(out, message.len() as u64 + 1);
    out.extend_from_slice(if close {
        b"\r\nconnection: close\r\n\r\n" as &[u8]
    } else {
        b"\r\n\r\n"
    });
    if !head_method {
        out.extend_from_slice(message.as_bytes());
        out.push(b'\n');
    }
}

/// A client connection the core serves: plain TCP, or TLS over it (`[proxy] tls_cert`, ALPN
/// http/1.1 or none).
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket under the stream, peeked to notice a client's reset while a server is
    /// slow ([`client_gone`]).
    fn socket(&self) -> &TcpStream;

    /// Reads what is already there without waiting; `WouldBlock` when nothing is (or the
    /// stream cannot tell without waiting).
    fn try_read_now(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let _ = buf;
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }
}

impl ClientStream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }

    fn try_read_now(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.try_read_buf(buf)
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Reads more bytes onto the end of `buf` (at least `READ_ROOM_BYTES_MIN` of room); `Ok(0)` at
/// end of stream, `TimedOut` at `deadline`. Tries without the timer first.
async fn read_more<S: ClientStream>(stream: &mut S, buf: &mut Vec<u8>, deadline: Option<Instant>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_ROOM_BYTES_MIN {
        buf.reserve(buf.capacity().max(REQUEST_BUFFER_BYTES));
    }
    match stream.try_read_now(buf) {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
        other => return other,
    }
    match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut)),
        },
        None => stream.read_buf(buf).await,
    }
}

/// A server's response head, read on a connection that is now the request's.
pub(crate) struct Answer {
    stream: TcpStream,
    server: usize,
    head: ResponseHead,
}

/// One request, sent to a server per attempt.
struct H1Exchange<'a> {
    pool: &'a Pool<TcpStream>,
    authorities: &'a [hyper::http::uri::Authority],
    /// The request as it goes to the server (head and body), without a `Host` when
    /// `host_missing_at` says where the server's goes.
    request: &'a [u8],
    host_missing_at: Option<usize>,
    scratch: &'a mut Vec<u8>,
    /// The server's bytes: the response head and what came after it.
    response: &'a mut Vec<u8>,
    /// The head for the client.
    out: &'a mut Vec<u8>,
    client: ClientSide,
    /// Where the protocols the request asked to switch to are in `request` (empty: none).
    asked: (usize, usize),
    idempotent: bool,
}

fn failed(message: &'static str) -> UpstreamError {
    UpstreamError::Failed(message.into())
}

impl Exchange for H1Exchange<'_> {
    type Answer = Answer;

    async fn attempt(&mut self, server: usize, _last: bool) -> Result<Answer, UpstreamError> {
        let request: &[u8] = match self.host_missing_at {
            Some(at) => {
                let authority = self.authorities.get(server).map_or("", |a| a.as_str());
                self.scratch.clear();
                self.scratch.extend_from_slice(&self.request[..at]);
                push_header(self.scratch, b"host", authority.as_bytes());
                self.scratch.extend_from_slice(&self.request[at..]);
                self.scratch
            }
            None => self.request,
        };
        loop {
            let (mut stream, reused) = match self.pool.checkout(server) {
                Some(stream) => (stream, true),
                None => (self.pool.connect_tcp(server).await?, false),
            };
            if let Err(error) = stream.write_all(request).await {
                if reused {
                    // Closed while idle, unnoticed: nothing reached the server. Next one.
                    continue;
                }
                return Err(UpstreamError::Failed(Box::new(error)));
            }
            self.response.clear();
            if self.response.capacity() < RESPONSE_BUFFER_BYTES {
                self.response.reserve(RESPONSE_BUFFER_BYTES);
            }
            let mut start = 0;
            let mut interim = 0;
            loop {
                let asked = self.request.get(self.asked.0..self.asked.1).unwrap_or_default();
                match parse_response(&self.response[start..], self.client, asked, self.out) {
                    Ok(Some(head)) if head.status < 200 && head.body != ClientBody::Tunnel => {
                        // 1xx (100 Continue, 103 Early Hints): not forwarded, as hyper did;
                        // dropped from the buffer, and only so many, so a server sending them
                        // without end grows nothing.
                        interim += 1;
                        if interim > INTERIM_RESPONSES_MAX {
                            return Err(failed(
                                "the server sent more than INTERIM_RESPONSES_MAX (16) informational (1xx) responses",
                            ));
                        }
                        start += head.head_len;
                        self.response.drain(..start);
                        start = 0;
                        continue;
                    }
                    Ok(Some(mut head)) => {
                        self.response.drain(..start);
                        head.head_len = head.head_len.min(self.response.len());
                        return Ok(Answer { stream, server, head });
                    }
                    Ok(None) if self.response.len() - start >= RESPONSE_HEAD_BYTES_MAX => {
                        return Err(failed("the response head is over RESPONSE_HEAD_BYTES_MAX (64 KiB)"));
                    }
                    Ok(None) => {}
                    Err(message) => return Err(failed(message)),
                }
                let received_before = self.response.len();
                if self.response.capacity() - self.response.len() < READ_ROOM_BYTES_MIN {
                    self.response.reserve(RESPONSE_BUFFER_BYTES);
                }
                match stream.read_buf(self.response).await {
                    Ok(0) | Err(_) if reused && received_before == 0 && self.idempotent => break,
                    Ok(0) => {
                        return Err(failed(
                            "the server closed the connection before a complete response head",
                        ));
                    }
                    Ok(_) => {}
                    Err(error) => return Err(UpstreamError::Failed(Box::new(error))),
                }
            }
            // A reused connection the server had closed: send the (idempotent) request again
            // on another connection, as a browser would.
        }
    }

    fn status(answer: &Answer) -> u16 {
        answer.head.status
    }
}

/// Per-connection buffers, reused request after request.
struct Buffers {
    /// Bytes from the client: the current request head (and body) and pipelined ones after it.
    input: Vec<u8>,
    /// The request as it goes to the server.
    request: Vec<u8>,
    /// A decoded chunked request body.
    body: Vec<u8>,
    /// The request with the server's `Host` (HTTP/1.0 requests without one).
    scratch: Vec<u8>,
    /// The server's response bytes.
    response: Vec<u8>,
    /// Bytes for the client.
    out: Vec<u8>,
}

/// How a connection goes on after a request.
enum Next {
    KeepAlive,
    Close,
}

/// Reads the first bytes of a new client connection (up to the HTTP/2 preface's length) into
/// `buf` within `client_header_ms`. `Ok(true)`: the client speaks HTTP/2 with prior knowledge.
pub(crate) async fn sniff_h2(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> io::Result<bool> {
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        if read_more(stream, buf, Some(deadline)).await? == 0 {
            return Ok(false);
        }
    }
}

/// Serves one HTTP/1 client connection until it closes, fails, times out or `stop` is set.
/// `input` holds the bytes already read from it; `proto` is how it reached the proxy.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_connection<S: ClientStream>(
    shared: Arc<Shared>,
    pool: Arc<Pool<TcpStream>>,
    mut stream: S,
    client: SocketAddr,
    input: Vec<u8>,
    header_deadline: Instant,
    mut stop: watch::Receiver<bool>,
    proto: proxy::Proto,
) {
    let mut buffers = Buffers {
        input,
        request: Vec::with_capacity(1024),
        body: Vec::new(),
        scratch: Vec::new(),
        response: Vec::new(),
        out: Vec::with_capacity(1024),
    };
    let mut first_deadline = Some(header_deadline);
    loop {
        let next = serve_request(
            &shared,
            &pool,
            &mut stream,
            client,
            &mut buffers,
            first_deadline.take(),
            &mut stop,
            proto,
        )
        .await;
        if matches!(next, Next::Close) {
            break;
        }
    }
    // Say we are done, then read what the client still sends for a moment: closing with
    // unread bytes would reset the connection and could destroy the answer in flight.
    // Bounded: over TLS the shutdown first writes what rustls still holds and its close_notify,
    // which never completes for a client that stopped reading (plain TCP's cannot wait).
    let linger = Instant::now() + Duration::from_millis(CLOSE_LINGER_MS);
    if matches!(tokio::time::timeout_at(linger, stream.shutdown()).await, Ok(Ok(()))) {
        buffers.input.clear();
        while let Ok(n) = read_more(&mut stream, &mut buffers.input, Some(linger)).await {
            if n == 0 || buffers.input.len() > CLOSE_LINGER_BYTES_MAX {
                break;
            }
            buffers.input.clear();
        }
    }
}

/// Waits for, reads and answers one request.
#[allow(clippy::too_many_arguments)]
async fn serve_request<S: ClientStream>(
    shared: &Arc<Shared>,
    pool: &Pool<TcpStream>,
    stream: &mut S,
    client: SocketAddr,
    buffers: &mut Buffers,
    first_deadline: Option<Instant>,
    stop: &mut watch::Receiver<bool>,
    proto: proxy::Proto,
) -> Next {
    let config = &shared.config;
    let header_ms = Duration::from_millis(config.timeouts.client_header_ms);
    let header_bytes_max = config.limits.request_header_bytes_max.max(1024);
    let Buffers {
        input,
        request,
        body,
        scratch,
        response,
        out,
    } = buffers;

    // 1. The head: the first byte within client_header_ms of the previous answer (an idle
    //    keep-alive connection: HAProxy's `timeout http-keep-alive`, which defaults to `timeout
    //    http-request`), the whole head within client_header_ms of that byte (of the
    //    connection's start for its first request).
    let mut deadline = first_deadline;
    let head = loop {
        if input.is_empty() {
            if *stop.borrow() {
                return Next::Close;
            }
            let idle = deadline.unwrap_or_else(|| Instant::now() + header_ms);
            let read = tokio::select! {
                read = read_more(stream, input, Some(idle)) => read,
                _ = stop.changed() => return Next::Close,
            };
            match read {
                Ok(0) => return Next::Close,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::TimedOut && first_deadline.is_some() => {
                    shared.note_client_problem(client, ClientProblem::Timeout);
                    return Next::Close;
                }
                Err(_) => return Next::Close,
            }
            deadline.get_or_insert_with(|| Instant::now() + header_ms);
            continue;
        }
        match parse_request(input, client, proto, request) {
            Ok(Some(head)) if head.head_len <= header_bytes_max => break head,
            Ok(Some(_)) => return refuse_head(shared, stream, client, out).await,
            Ok(None) if input.len() >= header_bytes_max => {
                return refuse_head(shared, stream, client, out).await;
            }
            Ok(None) => {}
            Err(RequestError::TooManyHeaders) => {
                return refuse_head(shared, stream, client, out).await;
            }
            Err(RequestError::Host(problem)) => {
                shared.note_bad_host(client, problem);
                shared
                    .stats()
                    .requests_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return answer_local(
                    shared,
                    stream,
                    out,
                    400,
                    proxy::host_error_message(problem),
                    true,
                    false,
                )
                .await;
            }
            Err(RequestError::Bad(message)) => {
                shared
                    .stats()
                    .requests_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shared.note_client_problem(client, ClientProblem::Other(&message));
                return answer_local(shared, stream, out, 400, message, true, false).await;
            }
            Err(RequestError::UnknownCoding) => {
                shared
                    .stats()
                    .requests_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let message = "the request uses a transfer coding other than chunked";
                shared.note_client_problem(client, ClientProblem::Other(&message));
                return answer_local(shared, stream, out, 501, message, true, false).await;
            }
        }
        let deadline_now = deadline.unwrap_or_else(|| Instant::now() + header_ms);
        match read_more(stream, input, Some(deadline_now)).await {
            Ok(0) => return Next::Close,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                shared.note_client_problem(client, ClientProblem::Timeout);
                return answer_local(
                    shared,
                    stream,
                    out,
                    408,
                    "the request head arrived too slowly",
                    true,
                    false,
                )
                .await;
            }
            Err(_) => return Next::Close,
        }
    };
    shared
        .stats()
        .requests_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stopping = *stop.borrow();
    if head.upgrade && stopping {
        // Its tunnel would close at once: no server sees it, and the client reconnects (to
        // another proxy, or to this one once it is back).
        return answer_local(shared, stream, out, 503, STOPPING, true, head.head_method).await;
    }
    let client_side = ClientSide {
        http10: head.http10,
        keep_alive: head.keep_alive && !stopping,
        head_method: head.head_method,
        upgrade: head.upgrade,
    };

    // 2. The body, whole, before any server sees the request.
    let limit = config.limits.request_body_bytes_max;
    let body_deadline = Instant::now() + Duration::from_millis(config.timeouts.client_body_ms);
    let mut consumed = head.head_len;
    let mut budget = BodyBudget::default();
    let continue_sent = |input: &Vec<u8>| input.len() > head.head_len;
    match head.body {
        Framing::None | Framing::UntilClose => request.extend_from_slice(b"\r\n"),
        Framing::Length(length) => {
            if length > limit as u64 {
                shared.note_body_too_large(client, Some(length));
                return answer_local(shared, stream, out, 413, proxy::BODY_TOO_LARGE, true, head.head_method).await;
            }
            let length = length as usize;
            if head.expect_continue
                && !head.http10
                && !continue_sent(input)
                && send(stream, CONTINUE, Duration::from_millis(config.timeouts.idle_ms))
                    .await
                    .is_err()
            {
                return Next::Close;
            }
            loop {
                let arrived = (input.len() - head.head_len).min(length);
                // The whole declared length once the body's first bytes are here (`BodyBudget`).
                let share = if arrived > 0 { length } else { 0 };
                if !budget.cover(shared, share, body_deadline).await {
                    shared.note_body_budget_spent(client);
                    return answer_local(shared, stream, out, 503, proxy::BODY_BUDGET_SPENT, true, false).await;
                }
                if arrived == length {
                    break;
                }
                budget.start_rate(arrived);
                let deadline = budget.read_deadline(arrived, body_deadline);
                let behind_rate = deadline < body_deadline;
                if let Err(next) = read_body_more(shared, stream, client, input, out, deadline, behind_rate).await {
                    return next;
                }
            }
            push_body(request, &input[head.head_len..head.head_len + length]);
            consumed += length;
        }
        Framing::Chunked => {
            if head.expect_continue
                && !head.http10
                && !continue_sent(input)
                && send(stream, CONTINUE, Duration::from_millis(config.timeouts.idle_ms))
                    .await
                    .is_err()
            {
                return Next::Close;
            }
            body.clear();
            let mut decoder = ChunkedDecoder::default();
            loop {
                let fed = decoder.feed(&input[consumed..], &mut |data| {
                    if body.len() + data.len() > limit {
                        return Err(ChunkError::BodyTooLarge);
                    }
                    body.extend_from_slice(data);
                    Ok(())
                });
                match fed {
                    Ok(used) => consumed += used,
                    Err(ChunkError::BodyTooLarge) => {
                        shared.note_body_too_large(client, None);
                        return answer_local(shared, stream, out, 413, proxy::BODY_TOO_LARGE, true, head.head_method)
                            .await;
                    }
                    Err(error) => {
                        shared.note_client_problem(client, ClientProblem::Other(&error.message()));
                        return answer_local(shared, stream, out, 400, error.message(), true, false).await;
                    }
                }
                // No length declared: the body limit's share once its first bytes are here,
                // the unused part given back at its end (`BodyBudget`).
                let share = if body.is_empty() { 0 } else { limit };
                if !budget.cover(shared, share, body_deadline).await {
                    shared.note_body_budget_spent(client);
                    return answer_local(shared, stream, out, 503, proxy::BODY_BUDGET_SPENT, true, false).await;
                }
                if decoder.is_done() {
                    budget.shrink_to(body.len());
                    break;
                }
                // Keep the buffer small: drop what was decoded.
                input.drain(head.head_len..consumed);
                consumed = head.head_len;
                budget.start_rate(body.len());
                let deadline = budget.read_deadline(body.len(), body_deadline);
                let behind_rate = deadline < body_deadline;
                if let Err(next) = read_body_more(shared, stream, client, input, out, deadline, behind_rate).await {
                    return next;
                }
            }
            push_body(request, body);
        }
    }
    // The request's bytes are copied; keep only pipelined ones.
    input.drain(..consumed.min(input.len()));

    // 3. A server, with retries.
    let line = &request[..head.target_end];
    let method = std::str::from_utf8(&line[..head.method_end]).unwrap_or("?");
    let path = std::str::from_utf8(&line[head.method_end + 1..]).unwrap_or("?");
    let mut exchange = H1Exchange {
        pool,
        authorities: shared.authorities(),
        request,
        host_missing_at: head.host_missing_at,
        scratch,
        response,
        out,
        client: client_side,
        asked: head.upgrade_protocols,
        idempotent: head.idempotent,
    };
    let dispatched = shared.dispatch(&mut exchange, head.idempotent, method, path).await;
    // The body is with the server (or refused): its bytes go, then its share of the budget.
    // A buffer a large body grew is given back rather than kept for the connection's life.
    release_body(request, body, input, budget);
    let (answer, guard) = match dispatched {
        Dispatched::Answered(answer, guard) => (answer, guard),
        Dispatched::Refused(status, message) => {
            let close = !client_side.keep_alive;
            write_local(out, status.as_u16(), message, close, head.head_method);
            shared.stats().count_status(status.as_u16());
            let idle = Duration::from_millis(config.timeouts.idle_ms);
            if send(stream, out, idle).await.is_err() || close {
                return Next::Close;
            }
            return Next::KeepAlive;
        }
    };
    shared.stats().count_status(answer.head.status);

    // 4. The response body, streamed.
    let Answer {
        stream: mut upstream,
        server,
        head: response_head,
    } = answer;
    let idle = Duration::from_millis(config.timeouts.idle_ms);
    if response_head.body == ClientBody::Tunnel {
        // A tunnel may live for hours: the request's buffers go now (the tunnel has its own).
        (*request, *body, *scratch) = (Vec::new(), Vec::new(), Vec::new());
        let tunneled = open_tunnel(shared, &mut upstream, stream, input, response, out, response_head, stop).await;
        drop(guard);
        if let Some(tunneled) = tunneled {
            tracing::debug!(%client, server = %config.servers[server].name, end = tunneled.end.as_str(),
                to_server_bytes = tunneled.to_server_bytes, to_client_bytes = tunneled.to_client_bytes,
                "tunnel closed");
        }
        return Next::Close;
    }
    let streamed = stream_body(&mut upstream, stream, response, out, response_head, idle).await;
    drop(guard);
    match streamed {
        Ok(clean) => {
            if clean && response_head.server_keep_alive {
                pool.give_back(server, upstream);
            }
            if response_head.client_close {
                Next::Close
            } else {
                Next::KeepAlive
            }
        }
        Err(()) => Next::Close,
    }
}

/// A request body's share of the shared budget (`buffered_body_bytes_max`), taken whole once
/// its first bytes arrive: its declared length, or the body limit for a chunked body (the part
/// it did not use given back at its end). A declared length alone holds nothing. Taken as the
/// bytes arrived instead, bodies that together passed the budget each held part of it and
/// waited for the rest, which none gave back before its end, so all of them waited until
/// `client_body_ms` and were refused; a share taken whole is held or waited for, never both.
/// Holding its share, the body must keep arriving (`proxy::BODY_HOLDING_BYTES_PER_S_MIN`):
/// one that declares much and stalls is refused (408) and gives its share back.
#[derive(Default)]
struct BodyBudget<'a> {
    permit: Option<tokio::sync::SemaphorePermit<'a>>,
    held: usize,
    /// When the share was taken, and the body bytes arrived by then.
    holding_since: Option<(Instant, usize)>,
}

impl<'a> BodyBudget<'a> {
    /// Holds budget for `bytes` of body in all, waiting for more at most until `deadline`;
    /// false when it could not be had by then.
    async fn cover(&mut self, shared: &'a Shared, bytes: usize, deadline: Instant) -> bool {
        if bytes <= self.held {
            return true;
        }
        let Some(more) = shared.take_body_budget(bytes - self.held, deadline).await else {
            return false;
        };
        match &mut self.permit {
            Some(permit) => permit.merge(more),
            None => self.permit = Some(more),
        }
        self.held = bytes;
        true
    }

    /// Starts the minimum rate's clock once a share is held, with `arrived` body bytes here.
    fn start_rate(&mut self, arrived: usize) {
        if self.held > 0 && self.holding_since.is_none() {
            self.holding_since = Some((Instant::now(), arrived));
        }
    }

    /// Until when the next body bytes may take: the body's own deadline, or sooner when it
    /// holds its share and would fall behind the minimum rate with `arrived` bytes.
    fn read_deadline(&self, arrived: usize, body_deadline: Instant) -> Instant {
        match self.holding_since {
            Some((since, at_start)) => proxy::behind_at(since, arrived.saturating_sub(at_start)).min(body_deadline),
            None => body_deadline,
        }
    }

    /// Gives back what the body holds past `bytes` (a chunked body's unused share).
    fn shrink_to(&mut self, bytes: usize) {
        if let Some(permit) = &mut self.permit
            && permit.num_permits() > bytes
        {
            drop(permit.split(permit.num_permits() - bytes));
            self.held = permit.num_permits();
        }
    }
}

/// Largest capacity a connection's request buffers keep between requests: a body larger than
/// this is freed once the server has it.
pub(crate) const BUFFER_KEPT_BYTES_MAX: usize = 64 * 1024;

/// After a request went to the server: empties the copies of its body and gives back capacity a
/// large body grew (pipelined bytes in `input` are kept), then the body's budget.
fn release_body(request: &mut Vec<u8>, body: &mut Vec<u8>, input: &mut Vec<u8>, budget: BodyBudget<'_>) {
    request.clear();
    body.clear();
    for buffer in [request, body, input] {
        if buffer.capacity() > BUFFER_KEPT_BYTES_MAX {
            buffer.shrink_to(REQUEST_BUFFER_BYTES.max(buffer.len()));
        }
    }
    drop(budget);
}

/// Ends the server's request head with the body's length, then the body.
fn push_body(request: &mut Vec<u8>, body: &[u8]) {
    request.extend_from_slice(b"content-length: ");
    push_decimal(request, body.len() as u64);
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body);
}

/// Reads more of a request body within `deadline`; on failure, how the connection goes on (408
/// when too slow, closed when the client went away).
async fn read_body_more<S: ClientStream>(
    shared: &Shared,
    stream: &mut S,
    client: SocketAddr,
    input: &mut Vec<u8>,
    out: &mut Vec<u8>,
    deadline: Instant,
    behind_rate: bool,
) -> Result<(), Next> {
    match read_more(stream, input, Some(deadline)).await {
        Ok(0) => {
            shared.note_body_failed(client, Some(&"the client closed the connection mid-body"));
            Err(Next::Close)
        }
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::TimedOut => {
            if behind_rate {
                shared.note_body_behind_rate(client);
            } else {
                shared.note_body_failed(client, None);
            }
            Err(answer_local(shared, stream, out, 408, proxy::BODY_TOO_SLOW, true, false).await)
        }
        Err(error) => {
            shared.note_body_failed(client, Some(&error));
            Err(Next::Close)
        }
    }
}

/// Reads the next bytes of a response body into `response` (cleared first), unless the client
/// goes away first: then a stalled server cannot hold the connection's task.
async fn read_upstream<S: ClientStream>(
    upstream: &mut TcpStream,
    client: &S,
    response: &mut Vec<u8>,
    idle: Duration,
) -> io::Result<usize> {
    response.clear();
    tokio::select! {
        read = tokio::time::timeout(idle, upstream.read_buf(response)) => {
            read.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "the server sent nothing for idle_ms")))
        }
        () = client_gone(client.socket()) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the client went away")),
    }
}

/// Writes `bytes` to the client. A client that takes none of them within `idle` (`idle_ms`, as
/// HAProxy's `timeout client`) is given up on, so a client that stops reading cannot hold a
/// server connection and its task for ever.
async fn send<W: AsyncWrite + Unpin>(client: &mut W, bytes: &[u8], idle: Duration) -> Result<(), ()> {
    // Flushed: TLS may keep the last record's bytes until then (plain TCP's flush does nothing).
    let written = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    match tokio::time::timeout(idle, written).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Resolves when the client's connection failed (reset); never when it sends (a pipelined
/// request waits in the socket for its turn), nor when it only closed its sending side: a
/// half-close is legal (RFC 9112 §9.6), and the response still goes out, as HAProxy does
/// without `abortonclose`. A client that closed entirely is noticed when a write to it fails,
/// and a stalled server is bounded by `idle_ms` meanwhile.
async fn client_gone(client: &TcpStream) {
    let mut probe = [0u8; 1];
    match client.peek(&mut probe).await {
        Err(_) => {}
        Ok(0) => std::future::pending().await,
        // Bytes wait in the socket (a pipelined request, a TLS close_notify): a peek returns
        // them even after a reset, so wait for the socket's error instead.
        Ok(_) => match client.ready(tokio::io::Interest::ERROR).await {
            Ok(ready) if ready.is_error() => match client.take_error() {
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => std::future::pending().await,
            },
            Ok(_) => std::future::pending().await,
            Err(_) => {}
        },
    }
}

/// Forwards the response body. `Ok(true)`: complete, with no byte after it (the server
/// connection may be reused); `Err`: the client connection must close (a side failed).
async fn stream_body<S: ClientStream>(
    upstream: &mut TcpStream,
    client: &mut S,
    response: &mut Vec<u8>,
    out: &mut Vec<u8>,
    head: ResponseHead,
    idle: Duration,
) -> Result<bool, ()> {
    let after_head = &response[head.head_len..];
    match head.body {
        ClientBody::None => {
            send(client, out, idle).await?;
            Ok(after_head.is_empty())
        }
        ClientBody::Length(length) => {
            let have = after_head.len().min(usize::try_from(length).unwrap_or(usize::MAX));
            let extra = after_head.len() > have;
            let mut remaining = length - have as u64;
            if have <= FIRST_WRITE_BODY_BYTES_MAX {
                out.extend_from_slice(&after_head[..have]);
                send(client, out, idle).await?;
            } else {
                send(client, out, idle).await?;
                send(client, &response[head.head_len..head.head_len + have], idle).await?;
            }
            let mut extra = extra;
            while remaining > 0 {
                match read_upstream(upstream, client, response, idle).await {
                    Ok(0) | Err(_) => return Err(()),
                    Ok(n) => {
                        let take = n.min(usize::try_from(remaining).unwrap_or(usize::MAX));
                        extra |= n > take;
                        send(client, &response[..take], idle).await?;
                        remaining -= take as u64;
                    }
                }
            }
            Ok(!extra)
        }
        ClientBody::Chunked | ClientBody::Dechunk => {
            let dechunk = head.body == ClientBody::Dechunk;
            let mut decoder = ChunkedDecoder::default();
            let mut start = head.head_len;
            // `out` holds the head: it goes out with the first bytes of the body.
            let mut first = true;
            loop {
                if !first {
                    out.clear();
                }
                let fed = decoder.feed(&response[start..], &mut |data| {
                    if dechunk {
                        out.extend_from_slice(data);
                    }
                    Ok(())
                });
                let Ok(used) = fed else {
                    // The framing broke: the client can only be told by closing.
                    if first {
                        let _ = send(client, out, idle).await;
                    }
                    return Err(());
                };
                let forwarded = &response[start..start + used];
                if dechunk || first {
                    if !dechunk {
                        out.extend_from_slice(forwarded);
                    }
                    send(client, out, idle).await?;
                } else {
                    send(client, forwarded, idle).await?;
                }
                first = false;
                if decoder.is_done() {
                    return Ok(start + used == response.len());
                }
                start = 0;
                match read_upstream(upstream, client, response, idle).await {
                    Ok(0) | Err(_) => return Err(()),
                    Ok(_) => {}
                }
            }
        }
        // The caller tunnels instead (`open_tunnel`).
        ClientBody::Tunnel => Err(()),
        ClientBody::UntilClose => {
            out.extend_from_slice(after_head);
            send(client, out, idle).await?;
            loop {
                match read_upstream(upstream, client, response, idle).await {
                    Ok(0) => return Ok(false),
                    Err(_) => return Err(()),
                    Ok(_) => send(client, response, idle).await?,
                }
            }
        }
    }
}

/// A server switched protocols: sends its `101` and what came after it to the client, the
/// client's bytes that came after its request to the server, then moves bytes both ways
/// ([`crate::tunnel`]). `None`: a side failed before the tunnel began.
#[allow(clippy::too_many_arguments)]
async fn open_tunnel<S: ClientStream>(
    shared: &Arc<Shared>,
    upstream: &mut TcpStream,
    client: &mut S,
    input: &mut Vec<u8>,
    response: &mut Vec<u8>,
    out: &mut Vec<u8>,
    head: ResponseHead,
    stop: &mut watch::Receiver<bool>,
) -> Option<crate::tunnel::Tunneled> {
    let idle = Duration::from_millis(shared.config.timeouts.idle_ms);
    let _open = crate::tunnel::OpenTunnel::new(shared.clone());
    let websocket = switched_to_websocket(out);
    out.extend_from_slice(response.get(head.head_len..).unwrap_or_default());
    send(client, out, idle).await.ok()?;
    if !input.is_empty() {
        send(upstream, input, idle).await.ok()?;
    }
    (*input, *response, *out) = (Vec::new(), Vec::new(), Vec::new());
    let timeouts = crate::tunnel::Timeouts {
        idle: Duration::from_millis(shared.config.timeouts.tunnel_idle_ms),
        fin: Duration::from_millis(shared.config.timeouts.tunnel_fin_ms),
    };
    Some(crate::tunnel::run(&mut *client, &mut *upstream, timeouts, websocket, stop).await)
}

/// Whether the `101` head written for the client (`switched_protocols`) switched to WebSocket:
/// the first protocol of its `Upgrade` (the one switched to, RFC 9110 §7.8).
fn switched_to_websocket(head: &[u8]) -> bool {
    let mut storage = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut storage);
    if !matches!(response.parse(head), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    response
        .headers
        .iter()
        .filter(|h| lower_eq(h.name, b"upgrade"))
        .flat_map(|h| list(h.value))
        .next()
        .is_some_and(|first| {
            let name = first.split(|b| *b == b'/').next().unwrap_or(first).trim_ascii();
            name.eq_ignore_ascii_case(b"websocket")
        })
}

/// Answers 431 to a request head over the limit.
async fn refuse_head<S: ClientStream>(shared: &Shared, stream: &mut S, client: SocketAddr, out: &mut Vec<u8>) -> Next {
    shared.note_client_problem(client, ClientProblem::TooLarge);
    let message = "the request head is larger than limits.request_header_bytes_max";
    answer_local(shared, stream, out, 431, message, true, false).await
}

/// Writes a local answer; `close`: then the connection closes.
async fn answer_local<S: ClientStream>(
    shared: &Shared,
    stream: &mut S,
    out: &mut Vec<u8>,
    status: u16,
    message: &str,
    close: bool,
    head_method: bool,
) -> Next {
    write_local(out, status, message, close, head_method);
    shared.stats().count_status(status);
    let idle = Duration::from_millis(shared.config.timeouts.idle_ms);
    if send(stream, out, idle).await.is_err() || close {
        return Next::Close;
    }
    Next::KeepAlive
}

#[cfg(test)]
mod tests;
