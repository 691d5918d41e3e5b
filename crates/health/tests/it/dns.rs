//! DNS probe against UDP (and TCP) responders in the test, built on hickory-proto, and BIND 9.

use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use health::ProbeKind;
use health::probe::probe;

use crate::support::spec;

/// Answers `www.example.com. A` with 192.0.2.1, NXDOMAIN otherwise.
async fn start_responder() -> std::net::SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let address = socket.local_addr().expect("address");
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        loop {
            let Ok((length, from)) = socket.recv_from(&mut buffer).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buffer[..length]) else {
                continue;
            };
            let mut response = Message::new();
            response.set_id(query.id()).set_message_type(MessageType::Response);
            let Some(question) = query.queries().first().cloned() else {
                continue;
            };
            response.add_query(question.clone());
            if question.name().to_ascii() == "www.example.com." && question.query_type() == RecordType::A {
                response.add_answer(Record::from_rdata(
                    question.name().clone(),
                    60,
                    RData::A(A::new(192, 0, 2, 1)),
                ));
            } else {
                response.set_response_code(ResponseCode::NXDomain);
            }
            let bytes = response.to_vec().expect("encode");
            let _ = socket.send_to(&bytes, from).await;
        }
    });
    address
}

fn dns(server: String, name: &str, expect: Option<&str>) -> ProbeKind {
    ProbeKind::Dns {
        server,
        name: name.into(),
        record_type: "A".into(),
        expect: expect.map(str::to_string),
    }
}

#[tokio::test]
async fn dns_probe_checks_the_answer() {
    let server = start_responder().await.to_string();
    let ok = probe(&spec(dns(server.clone(), "www.example.com", Some("192.0.2.1")))).await;
    assert!(ok.success, "{ok:?}");
    let wrong = probe(&spec(dns(server.clone(), "www.example.com", Some("192.0.2.7")))).await;
    assert!(!wrong.success);
    assert!(wrong.detail.contains("expected 192.0.2.7"), "{}", wrong.detail);
    let missing = probe(&spec(dns(server.clone(), "nope.example.com", None))).await;
    assert!(!missing.success);
    assert!(missing.detail.contains("nope.example.com"), "{}", missing.detail);
    // Nobody listening: the probe is cut at its timeout (or sees the ICMP refusal).
    let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut check = spec(dns(
        silent.local_addr().expect("address").to_string(),
        "www.example.com",
        None,
    ));
    check.timeout_ms = 200;
    assert!(!probe(&check).await.success);
}

/// Against BIND 9 (`named`) serving a zone from a temporary directory.
#[tokio::test]
async fn dns_probe_against_bind9() {
    let Some(named) = crate::support::find_binary("named") else {
        return crate::support::skip("named", "bind9");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let port = crate::support::free_port();
    let zone = "$TTL 60\n\
        @ IN SOA ns1.example.test. admin.example.test. 1 3600 600 86400 60\n\
        @ IN NS ns1.example.test.\n\
        ns1 IN A 127.0.0.1\n\
        www IN A 192.0.2.10\n\
        www IN TXT \"region=us-east-1\"\n\
        shop IN CNAME www.example.test.\n";
    std::fs::write(dir.path().join("example.test.zone"), zone).expect("write zone");
    let conf = format!(
        "options {{\n  directory \"{dir}\";\n  pid-file \"{dir}/named.pid\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  recursion no;\n}};\ncontrols {{ }};\nzone \"example.test\" {{ type primary; file \"{dir}/example.test.zone\"; }};\n",
        dir = dir.path().display()
    );
    let conf_path = dir.path().join("named.conf");
    std::fs::write(&conf_path, conf).expect("write named.conf");
    let mut command = std::process::Command::new(&named);
    command.args(["-g", "-n", "1", "-c", &conf_path.display().to_string()]);
    let _server = crate::support::Server::start(&mut command, dir.path().join("named.log"));

    let server = format!("127.0.0.1:{port}");
    let a = spec(dns(server.clone(), "www.example.test", Some("192.0.2.10")));
    let up = crate::support::probe_until(&a, crate::support::START_DEADLINE, |o| o.success).await;
    assert_eq!(up.detail, "www.example.test A: 192.0.2.10");

    let txt = spec(ProbeKind::Dns {
        server: server.clone(),
        name: "www.example.test".into(),
        record_type: "TXT".into(),
        expect: Some("region=us-east-1".into()),
    });
    assert!(probe(&txt).await.success);
    let cname = spec(ProbeKind::Dns {
        server: server.clone(),
        name: "shop.example.test".into(),
        record_type: "CNAME".into(),
        expect: Some("www.example.test".into()),
    });
    let cname = probe(&cname).await;
    assert!(cname.success, "{cname:?}");
    let missing = probe(&spec(dns(server.clone(), "gone.example.test", None))).await;
    assert!(!missing.success);
    let elsewhere = probe(&spec(dns(server, "www.example.org", None))).await;
    assert!(!elsewhere.success, "{elsewhere:?}");
}

/// What a scripted server answers one query with.
type Script = Arc<dyn Fn(&Message) -> Vec<Vec<u8>> + Send + Sync>;

/// The queries a scripted server received, by transport.
#[derive(Default)]
struct Received {
    udp: Vec<Message>,
    tcp: Vec<Message>,
}

/// A DNS server on one port over UDP and TCP: each query gets the datagrams (UDP) or messages
/// (TCP) its script gives, in order.
async fn start_scripted(udp: Script, tcp: Script) -> (std::net::SocketAddr, Arc<Mutex<Received>>) {
    // The same port for both: retry until a free UDP port is free over TCP too.
    let (socket, listener) = loop {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let address = socket.local_addr().expect("address");
        if let Ok(listener) = tokio::net::TcpListener::bind(address).await {
            break (socket, listener);
        }
    };
    let address = socket.local_addr().expect("address");
    let received = Arc::new(Mutex::new(Received::default()));
    let record = Arc::clone(&received);
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_535];
        loop {
            let Ok((length, from)) = socket.recv_from(&mut buffer).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buffer[..length]) else {
                continue;
            };
            record.lock().expect("lock").udp.push(query.clone());
            for datagram in udp(&query) {
                let _ = socket.send_to(&datagram, from).await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    });
    let record = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (tcp, record) = (Arc::clone(&tcp), Arc::clone(&record));
            tokio::spawn(async move {
                let Ok(length) = stream.read_u16().await else {
                    return;
                };
                let mut buffer = vec![0u8; usize::from(length)];
                if stream.read_exact(&mut buffer).await.is_err() {
                    return;
                }
                let Ok(query) = Message::from_vec(&buffer) else {
                    return;
                };
                record.lock().expect("lock").tcp.push(query.clone());
                for message in tcp(&query) {
                    let length = u16::try_from(message.len()).expect("fits");
                    let _ = stream.write_all(&length.to_be_bytes()).await;
                    let _ = stream.write_all(&message).await;
                }
            });
        }
    });
    (address, received)
}

/// A response to `query` with its question and `answers` (owner, last octet of 192.0.2.x).
fn reply(query: &Message, answers: &[(&str, u8)]) -> Message {
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_available(true);
    for question in query.queries() {
        response.add_query(question.clone());
    }
    for (owner, last) in answers {
        response.add_answer(Record::from_rdata(
            Name::from_ascii(owner).expect("name"),
            60,
            RData::A(A::new(192, 0, 2, *last)),
        ));
    }
    response
}

fn encode(message: &Message) -> Vec<u8> {
    message.to_vec().expect("encode")
}

#[tokio::test]
async fn a_truncated_answer_is_asked_again_over_tcp() {
    // Over UDP: truncated, no records (as a server whose answer passed the payload size).
    let udp: Script = Arc::new(|query| {
        let mut truncated = reply(query, &[]);
        truncated.set_truncated(true);
        vec![encode(&truncated)]
    });
    // Over TCP: 100 addresses, far more than 512 bytes.
    let tcp: Script = Arc::new(|query| {
        let answers: Vec<(&str, u8)> = (1..=100).map(|i| ("big.example.com.", i)).collect();
        vec![encode(&reply(query, &answers))]
    });
    let (server, received) = start_scripted(udp, tcp).await;
    let outcome = probe(&spec(dns(server.to_string(), "big.example.com", Some("192.0.2.77")))).await;
    assert!(outcome.success, "{outcome:?}");
    let received = received.lock().expect("lock");
    assert_eq!((received.udp.len(), received.tcp.len()), (1, 1));
    let edns = received.udp[0]
        .extensions()
        .as_ref()
        .expect("the query carries an OPT record");
    assert_eq!(edns.max_payload(), 1232);
    assert_eq!(received.tcp[0].queries(), received.udp[0].queries());
}

/// A server that does not know EDNS answers FORMERR without OPT: the probe asks again without
/// it (RFC 6891 §7) instead of calling the server down.
#[tokio::test]
async fn a_server_without_edns_is_asked_again_without_it() {
    let udp: Script = Arc::new(|query| {
        if query.extensions().is_some() {
            let mut refused = reply(query, &[]);
            refused.set_response_code(ResponseCode::FormErr);
            vec![encode(&refused)]
        } else {
            vec![encode(&reply(query, &[("www.example.com.", 1)]))]
        }
    });
    let (server, received) = start_scripted(udp, Arc::new(|_| Vec::new())).await;
    let outcome = probe(&spec(dns(server.to_string(), "www.example.com", Some("192.0.2.1")))).await;
    assert!(outcome.success, "{outcome:?}");
    let received = received.lock().expect("lock");
    assert_eq!(received.udp.len(), 2);
    assert!(received.udp[0].extensions().is_some() && received.udp[1].extensions().is_none());
}

#[tokio::test]
async fn a_truncated_answer_without_tcp_is_down_within_the_timeout() {
    let udp: Script = Arc::new(|query| {
        let mut truncated = reply(query, &[("www.example.com.", 1)]);
        truncated.set_truncated(true);
        vec![encode(&truncated)]
    });
    let (server, _received) = start_scripted(udp, Arc::new(|_| Vec::new())).await;
    let mut check = spec(dns(server.to_string(), "www.example.com", None));
    check.timeout_ms = 500;
    let outcome = probe(&check).await;
    assert!(
        !outcome.success,
        "a truncated answer is never taken as the answer: {outcome:?}"
    );
}

#[tokio::test]
async fn stray_and_undecodable_datagrams_are_skipped() {
    let udp: Script = Arc::new(|query| {
        let mut wrong_id = reply(query, &[("www.example.com.", 9)]);
        wrong_id.set_id(query.id().wrapping_add(1));
        let mut other_question = Message::new();
        other_question
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .add_query(Query::query(
                Name::from_ascii("evil.example.net.").expect("name"),
                RecordType::A,
            ))
            .add_answer(Record::from_rdata(
                Name::from_ascii("evil.example.net.").expect("name"),
                60,
                RData::A(A::new(192, 0, 2, 66)),
            ));
        vec![
            b"\x00\x01garbage".to_vec(),
            Vec::new(),
            encode(&wrong_id),
            encode(&other_question),
            encode(&reply(query, &[("WWW.Example.com.", 1)])),
        ]
    });
    let (server, _received) = start_scripted(udp, Arc::new(|_| Vec::new())).await;
    let outcome = probe(&spec(dns(server.to_string(), "www.example.com", Some("192.0.2.1")))).await;
    assert!(outcome.success, "{outcome:?}");
    assert_eq!(outcome.detail, "www.example.com A: 192.0.2.1");

    // Only garbage: down at the timeout, never early.
    let udp: Script = Arc::new(|_| vec![b"junk".to_vec(), b"more junk".to_vec()]);
    let (server, _received) = start_scripted(udp, Arc::new(|_| Vec::new())).await;
    let mut check = spec(dns(server.to_string(), "www.example.com", None));
    check.timeout_ms = 300;
    let outcome = probe(&check).await;
    assert_eq!(outcome.detail, "timed out after 300 ms");
}

#[tokio::test]
async fn an_answer_for_another_name_is_no_answer() {
    let udp: Script = Arc::new(|query| vec![encode(&reply(query, &[("www.example.org.", 1)]))]);
    let (server, _received) = start_scripted(udp, Arc::new(|_| Vec::new())).await;
    let outcome = probe(&spec(dns(server.to_string(), "www.example.com", Some("192.0.2.1")))).await;
    assert!(!outcome.success, "{outcome:?}");
    assert!(outcome.detail.contains("expected 192.0.2.1"), "{}", outcome.detail);
}
