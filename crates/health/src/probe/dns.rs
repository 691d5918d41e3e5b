//! DNS probe: one query over UDP (recursion desired), built and parsed with hickory-proto.

use std::net::SocketAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use super::{Finding, random_u64};

/// Largest UDP DNS response read (EDNS0-sized).
const RESPONSE_BYTES_MAX: usize = 4096;
/// Datagrams from the wrong source or with the wrong id skipped before giving up.
const STRAY_DATAGRAMS_MAX: usize = 16;

pub(super) async fn probe(server: &str, name: &str, record_type: &str, expect: Option<&str>) -> Finding {
    match query(server, name, record_type, expect).await {
        Ok(finding) => finding,
        Err(error) => Finding::down(error),
    }
}

fn server_address(server: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = server.parse::<SocketAddr>() {
        return Ok(address);
    }
    server
        .parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("server '{server}' is not ip or ip:port"))
}

fn record_type_of(text: &str) -> Result<RecordType, String> {
    Ok(match text.to_ascii_uppercase().as_str() {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        "CNAME" => RecordType::CNAME,
        "TXT" => RecordType::TXT,
        "MX" => RecordType::MX,
        "NS" => RecordType::NS,
        "SOA" => RecordType::SOA,
        "SRV" => RecordType::SRV,
        other => return Err(format!("record type '{other}' is not supported")),
    })
}

async fn query(server: &str, name: &str, record_type: &str, expect: Option<&str>) -> Result<Finding, String> {
    let address = server_address(server)?;
    let record_type = record_type_of(record_type)?;
    let name = Name::from_ascii(name).map_err(|e| format!("name '{name}': {e}"))?;
    let id = (random_u64() & 0xffff) as u16;
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), record_type));
    let request = message.to_vec().map_err(|e| format!("encode query: {e}"))?;
    let bind: SocketAddr = if address.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("bind UDP socket: {e}"))?;
    socket
        .send_to(&request, address)
        .await
        .map_err(|e| format!("send query to {address}: {e}"))?;
    let mut buffer = vec![0u8; RESPONSE_BYTES_MAX];
    for _ in 0..STRAY_DATAGRAMS_MAX {
        let (length, from) = socket
            .recv_from(&mut buffer)
            .await
            .map_err(|e| format!("receive from {address}: {e}"))?;
        if from != address {
            continue;
        }
        let Ok(response) = Message::from_vec(&buffer[..length]) else {
            return Ok(Finding::down(format!("{address} sent an undecodable response")));
        };
        if response.id() != id || response.message_type() != MessageType::Response {
            continue;
        }
        return Ok(judge(&response, &name, record_type, expect));
    }
    Err(format!("{address} sent {STRAY_DATAGRAMS_MAX} stray datagrams"))
}

fn judge(response: &Message, name: &Name, record_type: RecordType, expect: Option<&str>) -> Finding {
    let code = response.response_code();
    if code != ResponseCode::NoError {
        return Finding::down(format!("{name} {record_type}: {code}"));
    }
    let values: Vec<String> = response
        .answers()
        .iter()
        .filter(|record| record.record_type() == record_type)
        .map(|record| value_text(record.data()))
        .collect();
    match expect {
        None if values.is_empty() => Finding::down(format!("{name} {record_type}: no answer")),
        None => Finding::up(format!("{name} {record_type}: {}", values.join(", "))),
        Some(expected) => {
            let wanted = normalise(expected);
            if values.iter().any(|value| normalise(value) == wanted) {
                Finding::up(format!("{name} {record_type}: {expected}"))
            } else {
                Finding::down(format!(
                    "{name} {record_type}: [{}], expected {expected}",
                    values.join(", ")
                ))
            }
        }
    }
}

/// The comparable value of an answer: an address, a target name, or the text.
fn value_text(data: &RData) -> String {
    match data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(aaaa) => aaaa.0.to_string(),
        RData::CNAME(name) => name.0.to_string(),
        RData::NS(name) => name.0.to_string(),
        RData::MX(mx) => mx.exchange().to_string(),
        RData::SRV(srv) => srv.target().to_string(),
        RData::SOA(soa) => soa.mname().to_string(),
        RData::TXT(txt) => txt
            .txt_data()
            .iter()
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect(),
        other => other.to_string(),
    }
}

fn normalise(value: &str) -> String {
    value.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::A;

    fn response(code: ResponseCode, answers: Vec<Record>) -> Message {
        let mut message = Message::new();
        message.set_message_type(MessageType::Response).set_response_code(code);
        for answer in answers {
            message.add_answer(answer);
        }
        message
    }

    #[test]
    fn answers_are_matched_and_errors_reported() {
        let name = Name::from_ascii("www.example.com.").expect("valid");
        let record = Record::from_rdata(name.clone(), 60, RData::A(A::new(192, 0, 2, 1)));
        let ok = response(ResponseCode::NoError, vec![record]);
        assert!(judge(&ok, &name, RecordType::A, None).success);
        assert!(judge(&ok, &name, RecordType::A, Some("192.0.2.1")).success);
        let wrong = judge(&ok, &name, RecordType::A, Some("192.0.2.9"));
        assert!(!wrong.success);
        assert!(wrong.detail.contains("expected 192.0.2.9"), "{}", wrong.detail);
        assert!(!judge(&ok, &name, RecordType::AAAA, None).success);
        let nx = judge(&response(ResponseCode::NXDomain, vec![]), &name, RecordType::A, None);
        assert!(!nx.success);
        assert!(
            nx.detail.contains("Non-Existent Domain") || nx.detail.contains("NXDomain"),
            "{}",
            nx.detail
        );
    }

    #[test]
    fn server_addresses() {
        assert_eq!(server_address("10.0.0.1").ok(), Some(([10, 0, 0, 1], 53).into()));
        assert_eq!(server_address("10.0.0.1:5353").ok(), Some(([10, 0, 0, 1], 5353).into()));
        assert!(server_address("ns1.example.com").is_err());
    }
}
