//! DNS probe: one query (recursion desired, EDNS0 with a 1232-byte UDP payload) over UDP,
//! and over TCP when the answer comes back truncated, built and parsed with hickory-proto.

use std::net::SocketAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::{Finding, connect, random_u64};

/// The UDP payload size advertised in the query's EDNS0 OPT record (RFC 6891): DNS Flag Day
/// 2020's 1232 bytes, the most that fits the IPv6 minimum MTU (1280) after the IPv6 and UDP
/// headers, so an answer never depends on IP fragments (unreliable, and spoofable). A larger
/// answer comes back truncated (TC) and is asked again over TCP. Without an OPT record at all,
/// servers cap UDP answers at 512 bytes.
pub const EDNS_UDP_PAYLOAD: u16 = 1232;
/// Receive buffer: a whole UDP datagram, so a server that ignores the advertised size is read
/// whole rather than cut into something undecodable.
const DATAGRAM_BYTES_MAX: usize = 65_535;
/// Datagrams skipped (undecodable, another id, not a response, another question) while
/// waiting for the answer, before the probe gives up; they never end it early.
pub const STRAY_DATAGRAMS_MAX: usize = 64;
/// CNAME records followed from the query name to the answer, at most.
pub const CNAME_CHAIN_MAX: usize = 16;

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
    let request = encode_query(id, &name, record_type, true)?;
    let mut response = exchange(address, &request, id, &name, record_type).await?;
    // A server that does not know EDNS answers FORMERR without an OPT record: ask again
    // without one (RFC 6891 §7), as resolvers do.
    if response.response_code() == ResponseCode::FormErr && response.extensions().is_none() {
        let plain = encode_query(id, &name, record_type, false)?;
        response = exchange(address, &plain, id, &name, record_type).await?;
    }
    Ok(judge(&response, &name, record_type, expect))
}

/// The query for `name` and `record_type` with `id`, recursion desired, and (with `edns`) an
/// OPT record offering [`EDNS_UDP_PAYLOAD`] bytes over UDP.
fn encode_query(id: u16, name: &Name, record_type: RecordType, edns: bool) -> Result<Vec<u8>, String> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), record_type));
    if edns {
        let mut opt = Edns::new();
        opt.set_max_payload(EDNS_UDP_PAYLOAD);
        message.set_edns(opt);
    }
    message.to_vec().map_err(|e| format!("encode query: {e}"))
}

/// Asks over UDP, and again over TCP when the UDP answer is truncated.
async fn exchange(
    address: SocketAddr,
    request: &[u8],
    id: u16,
    name: &Name,
    record_type: RecordType,
) -> Result<Message, String> {
    match over_udp(address, request, id, name, record_type).await? {
        response if response.truncated() => over_tcp(address, request, id, name, record_type).await,
        response => Ok(response),
    }
}

/// Whether `response` answers the query: a response with its id, and, when it repeats the
/// question (servers do), the same name (case-insensitively) and type.
fn answers_query(response: &Message, id: u16, name: &Name, record_type: RecordType) -> bool {
    response.id() == id
        && response.message_type() == MessageType::Response
        && response
            .queries()
            .iter()
            .all(|query| query.name().eq_ignore_root(name) && query.query_type() == record_type)
}

/// Sends the query over UDP and waits for its answer, skipping what is not one.
async fn over_udp(
    address: SocketAddr,
    request: &[u8],
    id: u16,
    name: &Name,
    record_type: RecordType,
) -> Result<Message, String> {
    let bind: SocketAddr = if address.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("bind UDP socket: {e}"))?;
    // A connected socket receives only the server's datagrams, and its ICMP refusal.
    socket
        .connect(address)
        .await
        .map_err(|e| format!("connect UDP socket to {address}: {e}"))?;
    socket
        .send(request)
        .await
        .map_err(|e| format!("send query to {address}: {e}"))?;
    let mut buffer = vec![0u8; DATAGRAM_BYTES_MAX];
    let mut undecodable = 0;
    for _ in 0..STRAY_DATAGRAMS_MAX {
        let length = socket
            .recv(&mut buffer)
            .await
            .map_err(|e| format!("receive from {address}: {e}"))?;
        match Message::from_vec(&buffer[..length]) {
            Ok(response) if answers_query(&response, id, name, record_type) => return Ok(response),
            Ok(_) => {}
            Err(_) => undecodable += 1,
        }
    }
    Err(format!(
        "{address} sent {STRAY_DATAGRAMS_MAX} datagrams that answer nothing asked ({undecodable} undecodable)"
    ))
}

/// Asks again over TCP (RFC 7766) after a truncated UDP answer: the same message, with its
/// two-byte length in front.
async fn over_tcp(
    address: SocketAddr,
    request: &[u8],
    id: u16,
    name: &Name,
    record_type: RecordType,
) -> Result<Message, String> {
    let mut stream = connect(&address.to_string())
        .await
        .map_err(|e| format!("answer truncated over UDP; TCP: {e}"))?;
    let length = u16::try_from(request.len()).map_err(|_| "query too long for TCP".to_string())?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(request);
    let failed = |e: std::io::Error| format!("answer truncated over UDP; TCP to {address}: {e}");
    stream.write_all(&framed).await.map_err(failed)?;
    // One answer is expected; a server may send others first (RFC 7766 allows pipelining).
    for _ in 0..STRAY_DATAGRAMS_MAX {
        let length = stream.read_u16().await.map_err(failed)?;
        let mut buffer = vec![0u8; usize::from(length)];
        stream.read_exact(&mut buffer).await.map_err(failed)?;
        let response = Message::from_vec(&buffer)
            .map_err(|e| format!("answer truncated over UDP; TCP answer from {address} is undecodable: {e}"))?;
        if answers_query(&response, id, name, record_type) {
            return Ok(response);
        }
    }
    Err(format!(
        "answer truncated over UDP; {address} sent {STRAY_DATAGRAMS_MAX} TCP messages that answer nothing asked"
    ))
}

/// The answer records of `record_type` for `name`: owned by `name` or, for another type than
/// CNAME, by a name the answer's CNAME chain from `name` leads to (at most [`CNAME_CHAIN_MAX`]
/// links). Records of other owners are not the answer.
fn answer_records<'a>(response: &'a Message, name: &Name, record_type: RecordType) -> Vec<&'a Record> {
    let mut owners = vec![name.clone()];
    if record_type != RecordType::CNAME {
        for _ in 0..CNAME_CHAIN_MAX {
            let last = owners.last().expect("starts with the query name");
            let next = response.answers().iter().find_map(|record| match record.data() {
                RData::CNAME(target) if record.name().eq_ignore_root(last) => Some(target.0.clone()),
                _ => None,
            });
            match next {
                Some(target) if !owners.iter().any(|owner| owner.eq_ignore_root(&target)) => owners.push(target),
                _ => break,
            }
        }
    }
    response
        .answers()
        .iter()
        .filter(|record| {
            record.record_type() == record_type && owners.iter().any(|owner| owner.eq_ignore_root(record.name()))
        })
        .collect()
}

fn judge(response: &Message, name: &Name, record_type: RecordType, expect: Option<&str>) -> Finding {
    let code = response.response_code();
    if code != ResponseCode::NoError {
        return Finding::down(format!("{name} {record_type}: {code}"));
    }
    let values: Vec<String> = answer_records(response, name, record_type)
        .into_iter()
        .map(|record| value_text(record.data()))
        .collect();
    match expect {
        None if values.is_empty() => {
            let others = response.answers().len();
            if others == 0 {
                Finding::down(format!("{name} {record_type}: no answer"))
            } else {
                Finding::down(format!(
                    "{name} {record_type}: no answer ({others} answer record(s) for other names or types)"
                ))
            }
        }
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

    fn a(owner: &str, last: u8) -> Record {
        Record::from_rdata(
            Name::from_ascii(owner).expect("valid"),
            60,
            RData::A(A::new(192, 0, 2, last)),
        )
    }

    fn cname(owner: &str, target: &str) -> Record {
        Record::from_rdata(
            Name::from_ascii(owner).expect("valid"),
            60,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(
                Name::from_ascii(target).expect("valid"),
            )),
        )
    }

    #[test]
    fn only_answers_for_the_query_name_count() {
        let name = Name::from_ascii("www.example.com").expect("valid");
        // An address for another name is no answer (a confused or poisoned server).
        let other = response(ResponseCode::NoError, vec![a("evil.example.net.", 66)]);
        let finding = judge(&other, &name, RecordType::A, None);
        assert!(!finding.success, "{}", finding.detail);
        assert!(finding.detail.contains("other names"), "{}", finding.detail);
        assert!(!judge(&other, &name, RecordType::A, Some("192.0.2.66")).success);
        // Names compare case-insensitively, with or without the root.
        let upper = response(ResponseCode::NoError, vec![a("WWW.Example.COM.", 1)]);
        assert!(judge(&upper, &name, RecordType::A, Some("192.0.2.1")).success);
        // Mixed: only the record for the name counts.
        let mixed = response(
            ResponseCode::NoError,
            vec![a("other.example.com.", 9), a("www.example.com.", 1)],
        );
        let finding = judge(&mixed, &name, RecordType::A, None);
        assert_eq!(finding.detail, "www.example.com A: 192.0.2.1");
    }

    #[test]
    fn a_cname_chain_in_the_answer_is_followed() {
        let name = Name::from_ascii("shop.example.com").expect("valid");
        let chain = response(
            ResponseCode::NoError,
            vec![
                cname("shop.example.com.", "lb.example.net."),
                cname("LB.example.net.", "lb-use1.example.net."),
                a("lb-use1.example.net.", 7),
                a("unrelated.example.org.", 8),
            ],
        );
        let finding = judge(&chain, &name, RecordType::A, None);
        assert_eq!(finding.detail, "shop.example.com A: 192.0.2.7");
        assert!(judge(&chain, &name, RecordType::A, Some("192.0.2.7")).success);
        assert!(!judge(&chain, &name, RecordType::A, Some("192.0.2.8")).success);
        // Asking for the CNAME itself: the first link only.
        let finding = judge(&chain, &name, RecordType::CNAME, None);
        assert_eq!(finding.detail, "shop.example.com CNAME: lb.example.net.");
        // A loop ends the chain without an answer.
        let looped = response(
            ResponseCode::NoError,
            vec![
                cname("shop.example.com.", "a.example.com."),
                cname("a.example.com.", "shop.example.com."),
            ],
        );
        assert!(!judge(&looped, &name, RecordType::A, None).success);
        // A chain longer than the bound is not followed to its end.
        let mut records = Vec::new();
        for i in 0..=CNAME_CHAIN_MAX {
            let from = if i == 0 {
                "shop.example.com.".to_string()
            } else {
                format!("n{i}.example.com.")
            };
            records.push(cname(&from, &format!("n{}.example.com.", i + 1)));
        }
        records.push(a(&format!("n{}.example.com.", CNAME_CHAIN_MAX + 1), 1));
        assert!(!judge(&response(ResponseCode::NoError, records), &name, RecordType::A, None).success);
    }

    #[test]
    fn a_response_answers_only_its_own_question() {
        let name = Name::from_ascii("www.example.com").expect("valid");
        let mut reply = response(ResponseCode::NoError, vec![]);
        reply.set_id(7);
        assert!(answers_query(&reply, 7, &name, RecordType::A), "no question repeated");
        assert!(!answers_query(&reply, 8, &name, RecordType::A), "another id");
        reply.add_query(Query::query(
            Name::from_ascii("WWW.example.com.").expect("valid"),
            RecordType::A,
        ));
        assert!(answers_query(&reply, 7, &name, RecordType::A));
        assert!(!answers_query(&reply, 7, &name, RecordType::AAAA), "another type");
        let mut other = response(ResponseCode::NoError, vec![]);
        other.set_id(7).add_query(Query::query(
            Name::from_ascii("mail.example.com.").expect("valid"),
            RecordType::A,
        ));
        assert!(!answers_query(&other, 7, &name, RecordType::A), "another name");
        let mut query = Message::new();
        query.set_id(7).set_message_type(MessageType::Query);
        assert!(!answers_query(&query, 7, &name, RecordType::A), "not a response");
    }

    #[test]
    fn server_addresses() {
        assert_eq!(server_address("10.0.0.1").ok(), Some(([10, 0, 0, 1], 53).into()));
        assert_eq!(server_address("10.0.0.1:5353").ok(), Some(([10, 0, 0, 1], 5353).into()));
        assert!(server_address("ns1.example.com").is_err());
    }
}
