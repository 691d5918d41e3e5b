use super::*;

fn client() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 4711))
}

fn parse(text: &str) -> (Result<Option<RequestHead>, RequestError>, String) {
    let mut out = Vec::new();
    let result = parse_request(text.as_bytes(), client(), crate::proxy::Proto::Http, &mut out);
    (result, String::from_utf8_lossy(&out).into_owned())
}

fn head_of(text: &str) -> (RequestHead, String) {
    match parse(text) {
        (Ok(Some(head)), out) => (head, out),
        (other, _) => panic!("{text:?}: {other:?}"),
    }
}

fn bad(text: &str) -> RequestError {
    match parse(text).0 {
        Err(error) => error,
        other => panic!("{text:?} was accepted: {other:?}"),
    }
}

#[test]
fn a_request_head_is_rewritten_with_only_the_proxys_changes() {
    let (head, out) = head_of(
        "GET /cart?id=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Secret\r\n\
         X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: websocket\r\n\
         X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nExpect: 100-continue\r\n\
         Accept: */*\r\n\r\n",
    );
    assert_eq!(
        out,
        "GET /cart?id=1 HTTP/1.1\r\nhost: shop.example\r\nAccept: */*\r\n\
         x-forwarded-for: 203.0.113.7, 192.0.2.1\r\nx-forwarded-proto: http\r\n\
         forwarded: for=192.0.2.1;proto=http;host=shop.example\r\n"
    );
    assert!(head.keep_alive && !head.http10 && head.expect_continue && head.idempotent);
    assert_eq!(head.body, Framing::None);
    assert_eq!(&out[..head.method_end], "GET");
    assert_eq!(&out[head.method_end + 1..head.target_end], "/cart?id=1");
}

#[test]
fn a_host_that_is_not_a_token_is_quoted_in_forwarded_so_it_cannot_add_an_element() {
    // Unquoted, `host=x,for=6.6.6.6` is two elements (RFC 7239 §4), the last the client's.
    let (_, out) = head_of("GET / HTTP/1.1\r\nHost: x,for=6.6.6.6\r\n\r\n");
    assert!(
        out.ends_with("forwarded: for=192.0.2.1;proto=http;host=\"x,for=6.6.6.6\"\r\n"),
        "{out}"
    );
    let (_, out) = head_of("GET http://x,for=7.7.7.7;by=evil/ HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        out.ends_with("forwarded: for=192.0.2.1;proto=http;host=\"x,for=7.7.7.7;by=evil\"\r\n"),
        "{out}"
    );
    let (_, out) = head_of("GET / HTTP/1.1\r\nHost: shop.example:8080\r\n\r\n");
    assert!(out.ends_with(";host=\"shop.example:8080\"\r\n"), "{out}");
    let (_, out) = head_of("GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n");
    assert!(out.ends_with(";host=\"[2001:db8::1]\"\r\n"), "{out}");
    let (_, out) = head_of("GET / HTTP/1.1\r\nHost:\r\n\r\n");
    assert!(out.ends_with(";host=\"\"\r\n"), "{out}");
    let (_, out) = head_of("GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    assert!(out.ends_with(";host=shop.example\r\n"), "a token stays bare: {out}");
}

#[test]
fn every_forwarding_line_is_kept_in_order_with_this_hop_last() {
    let (_, out) = head_of(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\
         X-Forwarded-For: 10.9.9.9, 10.8.8.8\r\nForwarded: for=10.9.9.9;proto=https\r\nX-Forwarded-For:\r\n\r\n",
    );
    assert!(
        out.contains("x-forwarded-for: 6.6.6.6, 10.9.9.9, 10.8.8.8, 192.0.2.1\r\n"),
        "{out}"
    );
    assert!(
        out.contains("forwarded: for=6.6.6.6, for=10.9.9.9;proto=https, for=192.0.2.1;proto=http;host=a\r\n"),
        "{out}"
    );
    assert_eq!(out.matches("x-forwarded-for").count(), 1, "{out}");
    assert_eq!(out.to_ascii_lowercase().matches("\nforwarded:").count(), 1, "{out}");
}

#[test]
fn a_previous_forwarded_line_that_is_not_a_valid_list_is_dropped() {
    // The open quote would swallow this hop's element: `x=", for=192.0.2.1;...` is one pair.
    let (_, out) =
        head_of("GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=6.6.6.6;x=\"\r\nForwarded: for=\"_hidden\";by=b\r\n\r\n");
    assert!(
        out.ends_with("forwarded: for=\"_hidden\";by=b, for=192.0.2.1;proto=http;host=a\r\n"),
        "{out}"
    );
}

#[test]
fn a_fragment_in_the_target_is_refused() {
    for text in [
        "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a?b=1#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /# HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/b#c HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a#c HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        match bad(text) {
            RequestError::Bad(message) => assert!(message.contains("fragment"), "{text:?}: {message}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn an_empty_transfer_encoding_is_refused() {
    for text in [
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  , ,\r\n\r\n",
    ] {
        match bad(text) {
            RequestError::Bad(message) => assert!(message.contains("no coding"), "{text:?}: {message}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
    // An empty line next to a chunked one adds nothing to the list (RFC 9110 §5.6.1).
    let (head, _) = head_of("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(head.body, Framing::Chunked);
}

#[test]
fn an_absolute_target_replaces_host() {
    let (head, out) = head_of("GET http://shop.example:8080/a HTTP/1.1\r\nHost: other.example\r\n\r\n");
    assert!(
        out.starts_with("GET /a HTTP/1.1\r\nhost: shop.example:8080\r\n"),
        "{out}"
    );
    assert_eq!(head.host_missing_at, None);
    let (_, out) = head_of("GET http://shop.example HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    assert!(out.starts_with("GET / HTTP/1.1\r\n"), "{out}");
    assert_eq!(
        bad("GET http://user@shop.example/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        RequestError::Host(HostError::Invalid)
    );
    assert!(matches!(
        bad("CONNECT shop.example:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
        RequestError::Bad(_)
    ));
}

#[test]
fn host_rules_match_the_hyper_path() {
    assert_eq!(bad("GET / HTTP/1.1\r\n\r\n"), RequestError::Host(HostError::Missing));
    assert_eq!(
        bad("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        RequestError::Host(HostError::Repeated)
    );
    assert_eq!(
        bad("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        RequestError::Host(HostError::Invalid)
    );
    let (head, out) = head_of("GET / HTTP/1.0\r\n\r\n");
    assert!(head.http10 && !head.keep_alive);
    assert_eq!(head.host_missing_at, Some("GET / HTTP/1.1\r\n".len()));
    assert!(!out.contains("host"), "{out}");
}

#[test]
fn http10_keeps_alive_only_when_asked() {
    assert!(head_of("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").0.keep_alive);
    assert!(!head_of("GET / HTTP/1.0\r\n\r\n").0.keep_alive);
    assert!(
        !head_of("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .0
            .keep_alive
    );
}

#[test]
fn smuggling_shapes_are_refused() {
    for text in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert!(
            matches!(bad(text), RequestError::Bad(_) | RequestError::Host(_)),
            "{text:?}: {:?}",
            bad(text)
        );
    }
    assert_eq!(
        bad("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        RequestError::UnknownCoding
    );
    // Equal repeated lengths are one length (RFC 9112 §6.3).
    let (head, out) = head_of("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n");
    assert_eq!(head.body, Framing::Length(5));
    assert!(!out.to_ascii_lowercase().contains("content-length"), "{out}");
    let (head, _) = head_of("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
    assert_eq!(head.body, Framing::Chunked);
}

#[test]
fn too_many_headers_is_431_material() {
    let mut text = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for index in 0..HEADERS_MAX {
        text.push_str(&format!("X-{index}: v\r\n"));
    }
    text.push_str("\r\n");
    assert_eq!(bad(&text), RequestError::TooManyHeaders);
}

fn decode(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
    let mut decoder = ChunkedDecoder::default();
    let mut data = Vec::new();
    let used = decoder.feed(input, &mut |d| {
        data.extend_from_slice(d);
        Ok(())
    })?;
    Ok((data, used, decoder.is_done()))
}

#[test]
fn chunked_bodies_decode_byte_by_byte_and_at_once() {
    let body = b"4;ext=1\r\nWiki\r\n5 ;x\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\nGET";
    let (data, used, done) = decode(body).expect("valid");
    assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
    assert!(done);
    assert_eq!(&body[used..], b"GET", "stops at the end of the body");
    let mut decoder = ChunkedDecoder::default();
    let mut data = Vec::new();
    let mut at = 0;
    while !decoder.is_done() {
        at += decoder
            .feed(&body[at..at + 1], &mut |d| {
                data.extend_from_slice(d);
                Ok(())
            })
            .expect("valid");
    }
    assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
    assert_eq!(at, used);
}

#[test]
fn bad_chunk_framing_is_refused() {
    for (input, expected) in [
        (&b"x\r\n"[..], ChunkError::Invalid),
        (b"\r\n", ChunkError::Invalid),
        (b"-1\r\n", ChunkError::Invalid),
        (b"4\nWiki\r\n0\r\n\r\n", ChunkError::Invalid),
        (b"4\r\nWiki\n0\r\n\r\n", ChunkError::Invalid),
        (b"4\r\nWikiX\r\n", ChunkError::Invalid),
        (b"0\r\n\n", ChunkError::Invalid),
        (b"0\r\nX: 1\n\r\n", ChunkError::Invalid),
        (b"4;a\x00b\r\n", ChunkError::Invalid),
        (b"4 4\r\n", ChunkError::Invalid),
        (b"0x4\r\n", ChunkError::Invalid),
        (b"1000000000000000\r\n", ChunkError::SizeTooLarge),
        (b"ffffffffffffffffff\r\n", ChunkError::SizeTooLarge),
    ] {
        assert_eq!(
            decode(input).map(|_| ()),
            Err(expected),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    let long_extension = format!("1;{}\r\n", "a".repeat(CHUNK_EXTENSION_BYTES_MAX + 1));
    assert_eq!(
        decode(long_extension.as_bytes()).map(|_| ()),
        Err(ChunkError::ExtensionTooLong)
    );
    let long_trailer = format!("0\r\nX: {}\r\n\r\n", "a".repeat(TRAILER_BYTES_MAX));
    assert_eq!(
        decode(long_trailer.as_bytes()).map(|_| ()),
        Err(ChunkError::TrailerTooLong)
    );
}

/// What the upgrade tests ask for.
const ASKED: &[u8] = b"websocket, chat/2";

fn response(text: &str, client: ClientSide) -> (ResponseHead, String) {
    let mut out = Vec::new();
    let asked: &[u8] = if client.upgrade { ASKED } else { b"" };
    match parse_response(text.as_bytes(), client, asked, &mut out) {
        Ok(Some(head)) => (head, String::from_utf8_lossy(&out).into_owned()),
        other => panic!("{text:?}: {other:?}"),
    }
}

const H11: ClientSide = ClientSide {
    http10: false,
    keep_alive: true,
    head_method: false,
    upgrade: false,
};

#[test]
fn response_framing_follows_rfc_9112_section_6_3() {
    let (head, out) = response(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-Kept: 1\r\n\r\nabc",
        H11,
    );
    assert_eq!(head.body, ClientBody::Length(3));
    assert!(head.server_keep_alive && !head.client_close);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nX-Kept: 1\r\ncontent-length: 3\r\n\r\n");
    let (head, out) = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", H11);
    assert_eq!(head.body, ClientBody::Chunked);
    assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
    let http10 = ClientSide {
        http10: true,
        keep_alive: true,
        head_method: false,
        upgrade: false,
    };
    let (head, out) = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", http10);
    assert_eq!(head.body, ClientBody::Dechunk);
    assert!(head.client_close && out.contains("connection: close\r\n"), "{out}");
    let (head, out) = response("HTTP/1.1 200 OK\r\n\r\n", H11);
    assert_eq!(head.body, ClientBody::UntilClose);
    assert!(head.client_close && !head.server_keep_alive, "{out}");
    for status in ["204 No Content", "304 Not Modified"] {
        let (head, _) = response(&format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n"), H11);
        assert_eq!(head.body, ClientBody::None, "{status}");
    }
    let head_request = ClientSide {
        head_method: true,
        ..H11
    };
    let (head, out) = response("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", head_request);
    assert_eq!(head.body, ClientBody::None);
    assert!(out.contains("content-length: 10\r\n"), "{out}");
    let (head, _) = response(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        H11,
    );
    assert_eq!(head.body, ClientBody::Chunked);
    assert!(
        !head.server_keep_alive,
        "a response with both framings closes its connection"
    );
    // A transfer coding besides chunked (close-delimited by §6.3's rule 4, or under chunked)
    // cannot be passed on honestly once the proxy frames the body itself: refused, as HAProxy
    // refuses it, never forwarded with the coding's header dropped.
    for coded in [
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\n",
    ] {
        let mut out = Vec::new();
        assert!(
            parse_response(coded.as_bytes(), H11, b"", &mut out).is_err(),
            "{coded:?}"
        );
    }
    let (head, _) = response("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", H11);
    assert!(!head.server_keep_alive);
    let (head, _) = response("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", H11);
    assert_eq!(head.status, 103);
    let mut out = Vec::new();
    for bad_response in [
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "SMTP ready\r\n\r\n",
    ] {
        assert!(
            parse_response(bad_response.as_bytes(), H11, b"", &mut out).is_err(),
            "{bad_response:?}"
        );
    }
}

#[test]
fn local_answers_are_complete_messages() {
    let mut out = Vec::new();
    write_local(&mut out, 413, "too big", true, false);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "HTTP/1.1 413 Payload Too Large\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 8\r\n\
         connection: close\r\n\r\ntoo big\n"
    );
}

/// Inputs built to break parsers: none may panic, and the decoder agrees with itself fed in
/// pieces (the fuzz target `proxy_h1` runs the same entry point on random input).
#[test]
fn nasty_inputs_never_panic() {
    let mut corpus: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\r\n\r\n".to_vec(),
        b"\n\n\n".to_vec(),
        b"GET".to_vec(),
        b"GET / HTTP/1.1\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        b"POST http://[::1]:99999/ HTTP/1.1\r\nHost: [::1\r\n\r\n".to_vec(),
        b"GET http:// HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        b"GET http://a?b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\nHost: a\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nConnection: ,,,,\r\nHost: a\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n".to_vec(),
        b"HTTP/1.1 999 \r\n\r\n".to_vec(),
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n".to_vec(),
        b"0;\xff\xfe\r\n\r\n".to_vec(),
        b"0\r\n\xff: \xff\r\n\r\n".to_vec(),
        H2_PREFACE.to_vec(),
    ];
    for byte in 0..=255u8 {
        corpus.push(vec![byte; 64]);
        corpus.push(format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", byte as char).into_bytes());
        let mut with = b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab".to_vec();
        with.push(byte);
        with.extend_from_slice(b"de\r\n0\r\n\r\n");
        corpus.push(with);
    }
    // Every prefix of a few valid messages, as a slow client would send them.
    for full in [
        &b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
    ] {
        for end in 0..=full.len() {
            corpus.push(full[..end].to_vec());
        }
    }
    // A cheap deterministic mutator over the corpus (xorshift).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seeds = corpus.clone();
    for _ in 0..4000 {
        let mut input = seeds[(next() as usize) % seeds.len()].clone();
        for _ in 0..(next() % 4) {
            if input.is_empty() {
                input.push(next() as u8);
                continue;
            }
            let at = (next() as usize) % input.len();
            match next() % 3 {
                0 => input[at] = next() as u8,
                1 => input.insert(at, b"\r\n:;, 0f"[(next() % 8) as usize]),
                _ => {
                    input.remove(at);
                }
            }
        }
        corpus.push(input);
    }
    for input in &corpus {
        exercise_parsers(input);
    }
}

#[test]
fn a_large_body_gives_its_buffers_back_once_the_server_has_it() {
    let mut request = Vec::with_capacity(10 << 20);
    request.extend_from_slice(&[b'x'; 1 << 20]);
    let mut body = Vec::with_capacity(4 << 20);
    let mut input = Vec::with_capacity(8 << 20);
    // A pipelined request waits in the input: it is kept.
    input.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    release_body(&mut request, &mut body, &mut input, BodyBudget::default());
    assert!(request.is_empty() && body.is_empty());
    for buffer in [&request, &body, &input] {
        assert!(buffer.capacity() <= BUFFER_KEPT_BYTES_MAX, "{}", buffer.capacity());
    }
    assert_eq!(input, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    // Small buffers keep what they have: no reallocation per request.
    let mut small = Vec::with_capacity(REQUEST_BUFFER_BYTES * 2);
    let before = small.capacity();
    release_body(&mut small, &mut Vec::new(), &mut Vec::new(), BodyBudget::default());
    assert_eq!(small.capacity(), before);
}

#[test]
fn an_upgrade_named_by_connection_goes_to_the_server_and_others_do_not() {
    let (head, out) = head_of(
        "GET /chat HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
    );
    assert!(head.upgrade);
    assert!(
        out.contains("\r\nconnection: upgrade\r\nupgrade: websocket\r\n"),
        "{out}"
    );
    assert_eq!(&out[head.upgrade_protocols.0..head.upgrade_protocols.1], "websocket");
    assert!(out.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), "{out}");
    assert!(!out.contains("keep-alive"), "{out}");
    // Several protocols, h2c (retired by RFC 9113) left out.
    let (head, out) = head_of(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c, websocket/13\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    );
    assert!(head.upgrade);
    assert!(out.contains("upgrade: websocket/13\r\n"), "{out}");
    assert!(!out.contains("h2c") && !out.contains("HTTP2-Settings"), "{out}");
    // Not upgrades: Upgrade not named by Connection, only h2c, HTTP/1.0, Connection alone.
    for text in [
        "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: ,\r\n\r\n",
    ] {
        let (head, out) = head_of(text);
        assert!(!head.upgrade, "{text:?}");
        assert!(!out.to_ascii_lowercase().contains("upgrade"), "{text:?}: {out}");
    }
}

#[test]
fn a_tunnel_knows_whether_it_carries_a_websocket() {
    for (head, websocket) in [
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            true,
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket/13\r\n\r\n",
            true,
        ),
        ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: tcp\r\n\r\n", false),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: chat, websocket\r\n\r\n",
            false,
        ),
        ("HTTP/1.1 101 Switching", false),
    ] {
        assert_eq!(switched_to_websocket(head.as_bytes()), websocket, "{head:?}");
    }
}

#[test]
fn a_426_keeps_the_protocols_it_asks_for() {
    // RFC 9110 §15.5.22: a 426 names in Upgrade what the client must switch to.
    let (head, out) = response(
        "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Content-Length: 0\r\n\r\n",
        H11,
    );
    assert_eq!(head.status, 426);
    assert!(!head.client_close);
    assert_eq!(
        out,
        "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\ncontent-length: 0\r\nconnection: upgrade\r\n\r\n"
    );
    let closing = ClientSide {
        keep_alive: false,
        ..H11
    };
    let (_, out) = response(
        "HTTP/1.1 426 Upgrade Required\r\nUpgrade: TLS/1.2, HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        closing,
    );
    assert!(
        out.contains("Upgrade: TLS/1.2, HTTP/1.1\r\n") && out.contains("connection: upgrade, close\r\n"),
        "{out}"
    );
    // HTTP/1.0 has no upgrade, an empty Upgrade names nothing, and other statuses' Upgrade
    // (an h2c advertisement) is this hop's, not the client's.
    let http10 = ClientSide {
        http10: true,
        keep_alive: false,
        ..H11
    };
    for (text, client) in [
        (
            "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
            http10,
        ),
        (
            "HTTP/1.1 426 Upgrade Required\r\nUpgrade: ,\r\nContent-Length: 0\r\n\r\n",
            H11,
        ),
        (
            "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n",
            H11,
        ),
    ] {
        let (_, out) = response(text, client);
        let headers = out.split_once("\r\n").map_or("", |(_, rest)| rest).to_ascii_lowercase();
        assert!(!headers.contains("upgrade"), "{text:?}: {out}");
    }
}

#[test]
fn a_101_answers_an_upgrade_and_nothing_else() {
    let upgrade = ClientSide { upgrade: true, ..H11 };
    let (head, out) = response(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\n\
         X-Hop: 1\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x01\x02hi",
        upgrade,
    );
    assert_eq!(head.body, ClientBody::Tunnel);
    assert_eq!(head.status, 101);
    assert!(head.client_close && !head.server_keep_alive);
    assert_eq!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nconnection: upgrade\r\n\r\n"
    );
    let mut out = Vec::new();
    for bad_response in [
        // No protocol named.
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: ,\r\n\r\n",
        // HTTP/1.0 has no upgrade.
        "HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        // A protocol not asked for (RFC 9110 section 7.8), h2c (never forwarded), or a version
        // other than the one asked.
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: irc\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket, irc\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: chat/3\r\n\r\n",
    ] {
        assert!(
            parse_response(bad_response.as_bytes(), upgrade, ASKED, &mut out).is_err(),
            "{bad_response:?}"
        );
    }
    // Nothing asked (the request did not upgrade): any 101 is refused.
    let plain_101 = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
    assert!(parse_response(plain_101, upgrade, b"", &mut out).is_err());
    // What was asked, in any case, with or without the version asked.
    for good in ["WebSocket", "chat/2", "chat", "CHAT/2"] {
        let (head, _) = response(
            &format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: {good}\r\n\r\n"),
            upgrade,
        );
        assert_eq!(head.body, ClientBody::Tunnel, "{good}");
    }
    // An upgrade request answered otherwise is an ordinary response.
    let (head, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", upgrade);
    assert_eq!(head.body, ClientBody::Length(2));
    assert!(head.server_keep_alive);
}
