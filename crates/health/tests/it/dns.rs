//! DNS probe against a UDP responder in the test, built on hickory-proto.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
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
