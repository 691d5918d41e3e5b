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
