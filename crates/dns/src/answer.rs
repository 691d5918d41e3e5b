//! The answering logic: a pure function from a query (and the zones and health view) to the
//! response messages. No sockets, clocks or randomness of its own: the caller passes a random
//! `entropy` per query, so the same inputs always give the same bytes.
//!
//! Invariant: `answer()` is pure and never panics; every response it returns encodes, and over
//! UDP fits the client's payload size (else it is truncated with TC set).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable};

use crate::config::txt_strings;
use crate::policy::{self, FAILOVER_TTL_SECS_DEFAULT};
use crate::view::HealthView;
use crate::zone::{Lookup, Node, RrData, RrSet, Zone, Zones};

/// The UDP payload size we advertise and the most we send over UDP (the DNS flag day 2020 value,
/// which avoids IP fragmentation on common paths).
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 1232;
/// UDP payload a client without EDNS(0) can take (RFC 1035).
pub const UDP_PAYLOAD_BYTES_MIN: u16 = 512;
/// Largest DNS message over TCP (the 2-byte length prefix).
pub const TCP_MESSAGE_BYTES_MAX: usize = 65_535;
/// CNAMEs followed inside a zone for one query (stops loops).
pub const CNAME_CHAIN_MAX: usize = 8;
/// Bytes of records packed into one zone-transfer message (well under the 64 KiB maximum).
pub const TRANSFER_MESSAGE_BYTES_TARGET: usize = 16 * 1024;
/// TTL of dynamic TXT records (the controller's pointers change on failover; see failover TTL).
pub const DYNAMIC_TXT_TTL_SECS: u32 = FAILOVER_TTL_SECS_DEFAULT;

/// Metrics label for names outside every zone (one label, however many names are asked).
pub const LABEL_OUTSIDE: &str = "<outside>";
/// Metrics label for names inside a zone that do not exist.
pub const LABEL_NONEXISTENT: &str = "<nonexistent>";
/// Metrics label for names that exist only as dynamic TXT records.
pub const LABEL_DYNAMIC: &str = "<dynamic>";
/// Metrics label for queries that could not be parsed or had no single question.
pub const LABEL_MALFORMED: &str = "<malformed>";

/// The shared `Arc` of a fixed metrics label, so answering allocates no label.
fn fixed_label(label: &'static str) -> Arc<str> {
    static LABELS: OnceLock<[Arc<str>; 4]> = OnceLock::new();
    let labels =
        LABELS.get_or_init(|| [LABEL_OUTSIDE, LABEL_NONEXISTENT, LABEL_DYNAMIC, LABEL_MALFORMED].map(Arc::from));
    labels
        .iter()
        .find(|fixed| &***fixed == label)
        .map(Arc::clone)
        .unwrap_or_else(|| Arc::from(label))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A query as it arrived.
#[derive(Debug, Clone)]
pub struct Request {
    pub message: Message,
    pub transport: Transport,
    pub client: IpAddr,
    /// Randomness for weighted and multivalue answers, drawn by the caller per query.
    pub entropy: u64,
}

/// What to send back: zero messages (drop), one, or several (a zone transfer over TCP).
#[derive(Debug, Clone)]
pub struct Response {
    pub messages: Vec<Message>,
    /// The encoded `messages`, in order (the truncation decision needed them anyway).
    pub wire: Vec<Vec<u8>>,
    pub rcode: ResponseCode,
    /// Bounded metrics label of the queried name.
    pub name_label: Arc<str>,
    pub qtype: Option<RecordType>,
    /// Whether the same query bytes (but the 2-byte id) always get the same bytes back (but the
    /// id) while the zones and view stay the same: false when the answer used the per-query
    /// `entropy` (weighted or multivalue choices) or the client's address (zone transfers).
    /// The UDP workers reuse the wire of a cacheable answer (see [`crate::cache`]).
    pub cacheable: bool,
}

impl Response {
    fn dropped(name_label: &str) -> Response {
        Response {
            messages: Vec::new(),
            wire: Vec::new(),
            rcode: ResponseCode::NoError,
            name_label: Arc::from(name_label),
            qtype: None,
            cacheable: false,
        }
    }
}

/// Parses a packet and answers it; `None` means drop it (not a query, or too broken to answer).
/// Packets with a readable header but a broken body get FORMERR.
pub fn handle_packet(
    zones: &Zones,
    view: &HealthView,
    packet: &[u8],
    transport: Transport,
    client: IpAddr,
    entropy: u64,
) -> Option<Response> {
    match Message::from_vec(packet) {
        Ok(message) => {
            let response = answer(
                zones,
                view,
                &Request {
                    message,
                    transport,
                    client,
                    entropy,
                },
            );
            (!response.messages.is_empty()).then_some(response)
        }
        Err(_) => {
            let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
            if header.message_type() == MessageType::Response {
                return None;
            }
            let mut message = Message::new();
            message
                .set_id(header.id())
                .set_message_type(MessageType::Response)
                .set_op_code(header.op_code())
                .set_recursion_desired(header.recursion_desired())
                .set_response_code(ResponseCode::FormErr);
            let wire = message.to_vec().ok()?;
            Some(Response {
                messages: vec![message],
                wire: vec![wire],
                rcode: ResponseCode::FormErr,
                name_label: fixed_label(LABEL_MALFORMED),
                qtype: None,
                cacheable: true,
            })
        }
    }
}

/// Answers one query. Pure: same zones, view and request, same response.
pub fn answer(zones: &Zones, view: &HealthView, request: &Request) -> Response {
    let query = &request.message;
    if query.message_type() == MessageType::Response {
        return Response::dropped(LABEL_MALFORMED);
    }
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_checking_disabled(query.checking_disabled());
    for question in query.queries() {
        response.add_query(question.clone());
    }
    let client_edns = query.extensions().as_ref();
    if client_edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD_BYTES_MAX).set_version(0);
        response.set_edns(edns);
    }
    let limit = match request.transport {
        Transport::Tcp => TCP_MESSAGE_BYTES_MAX,
        Transport::Udp => usize::from(
            client_edns
                .map(|e| e.max_payload().clamp(UDP_PAYLOAD_BYTES_MIN, UDP_PAYLOAD_BYTES_MAX))
                .unwrap_or(UDP_PAYLOAD_BYTES_MIN),
        ),
    };
    let qtype = query.queries().first().map(Query::query_type);
    let mut label: Arc<str> = fixed_label(LABEL_MALFORMED);
    let mut cacheable = true;
    let rcode = 'rcode: {
        if client_edns.is_some_and(|e| e.version() > 0) {
            break 'rcode ResponseCode::BADVERS;
        }
        if query.op_code() != OpCode::Query {
            break 'rcode ResponseCode::NotImp;
        }
        let [question] = query.queries() else {
            break 'rcode ResponseCode::FormErr;
        };
        let Some(zone) = zones.zone_for(question.name()) else {
            label = fixed_label(LABEL_OUTSIDE);
            break 'rcode ResponseCode::Refused;
        };
        if question.query_class() != DNSClass::IN {
            label = fixed_label(LABEL_OUTSIDE);
            break 'rcode ResponseCode::Refused;
        }
        match question.query_type() {
            RecordType::AXFR | RecordType::IXFR => {
                // Depends on the client's address: never cacheable.
                let mut transferred = transfer(zones, zone, view, request, question, response, limit);
                transferred.cacheable = false;
                return transferred;
            }
            RecordType::OPT => break 'rcode ResponseCode::FormErr,
            _ => {}
        }
        response.set_authoritative(true);
        let mut random = false;
        let (rcode, name_label) = resolve(zone, view, question, request.entropy, &mut random, &mut response);
        label = name_label;
        cacheable = !random;
        rcode
    };
    response.set_response_code(rcode);
    let mut finished = finish(response, limit, label, qtype);
    finished.cacheable &= cacheable;
    finished
}

/// Fills the answer, authority and additional sections; returns the rcode and metrics label.
fn resolve(
    zone: &Zone,
    view: &HealthView,
    question: &Query,
    entropy: u64,
    random: &mut bool,
    response: &mut Message,
) -> (ResponseCode, Arc<str>) {
    let qtype = question.query_type();
    let mut owner = question.name().clone();
    let mut label: Option<Arc<str>> = None;
    let mut answers: Vec<Record> = Vec::new();
    let mut additionals: Vec<Record> = Vec::new();
    let mut rcode = ResponseCode::NoError;
    let mut negative = false;
    for _ in 0..=CNAME_CHAIN_MAX {
        let (node, label_here) = match zone.find(&owner) {
            Lookup::Exact(node) | Lookup::Wildcard(node) => (Some(node), Some(Arc::clone(&node.label))),
            Lookup::NxDomain => (None, None),
        };
        let dynamic = dynamic_txt(view, &owner);
        if node.is_none() && dynamic.is_none() {
            label.get_or_insert_with(|| fixed_label(LABEL_NONEXISTENT));
            rcode = ResponseCode::NXDomain;
            negative = true;
            break;
        }
        label.get_or_insert_with(|| label_here.unwrap_or_else(|| fixed_label(LABEL_DYNAMIC)));
        if let Some(value) = &dynamic
            && matches!(qtype, RecordType::TXT | RecordType::ANY)
        {
            answers.push(Record::from_rdata(
                owner.clone(),
                DYNAMIC_TXT_TTL_SECS,
                RData::TXT(TXT::new(txt_strings(value))),
            ));
            if qtype == RecordType::TXT {
                break;
            }
        }
        let Some(node) = node else {
            negative = answers.is_empty();
            break;
        };
        if qtype != RecordType::CNAME
            && let Some(cname) = node.rrset(RecordType::CNAME)
        {
            let before = answers.len();
            push_set(cname, &owner, view, entropy, random, &mut answers);
            let target = answers[before..].iter().find_map(|r| match r.data() {
                RData::CNAME(target) => Some(target.0.clone()),
                _ => None,
            });
            match target {
                Some(target) if zone.origin.zone_of(&target) => {
                    owner = target;
                    continue;
                }
                _ => break,
            }
        }
        let mut found = false;
        for set in &node.rrsets {
            let wanted = if qtype == RecordType::ANY {
                !(set.rtype == RecordType::TXT && dynamic.is_some())
            } else {
                set.rtype == qtype
            };
            if wanted {
                found = true;
                push_set(set, &owner, view, entropy, random, &mut answers);
            }
        }
        if found {
            add_glue(zone, view, entropy, random, &answers, &mut additionals);
        } else {
            negative = true;
        }
        break;
    }
    response.insert_answers(answers);
    if negative {
        let mut soa = zone.soa.clone();
        soa.set_ttl(zone.negative_ttl);
        response.add_name_server(soa);
    }
    response.insert_additionals(additionals);
    (rcode, label.unwrap_or_else(|| fixed_label(LABEL_NONEXISTENT)))
}

fn dynamic_txt<'v>(view: &'v HealthView, name: &Name) -> Option<&'v String> {
    if view.txt.is_empty() {
        return None;
    }
    let mut key = name.to_lowercase().to_ascii();
    if !key.ends_with('.') {
        key.push('.');
    }
    view.txt.get(&key)
}

/// Adds the records of `set` that answer now (policies resolved against `view`); sets `random`
/// when the choice used `entropy`.
fn push_set(set: &RrSet, owner: &Name, view: &HealthView, entropy: u64, random: &mut bool, out: &mut Vec<Record>) {
    match &set.data {
        RrData::Static { ttl, rdatas } => {
            out.extend(
                rdatas
                    .iter()
                    .map(|rdata| Record::from_rdata(owner.clone(), *ttl, rdata.clone())),
            );
        }
        RrData::Routed(policy) => {
            *random |= policy::uses_entropy(policy);
            for member in policy::select(policy, view, entropy) {
                out.extend(
                    member
                        .rdatas
                        .iter()
                        .map(|rdata| Record::from_rdata(owner.clone(), member.ttl, rdata.clone())),
                );
            }
        }
    }
}

/// Addresses of in-zone MX, SRV and NS targets, so resolvers need no second query.
fn add_glue(
    zone: &Zone,
    view: &HealthView,
    entropy: u64,
    random: &mut bool,
    answers: &[Record],
    out: &mut Vec<Record>,
) {
    for record in answers {
        let target = match record.data() {
            RData::MX(mx) => mx.exchange(),
            RData::SRV(srv) => srv.target(),
            RData::NS(ns) => &ns.0,
            _ => continue,
        };
        if !zone.origin.zone_of(target) || out.iter().any(|r| r.name() == target) {
            continue;
        }
        if let Lookup::Exact(node) = zone.find(target) {
            for rtype in [RecordType::A, RecordType::AAAA] {
                if let Some(set) = node.rrset(rtype) {
                    push_set(set, target, view, entropy, random, out);
                }
            }
        }
    }
}

/// Encodes, dropping the additional section and then setting TC if the message is too big.
fn finish(mut response: Message, limit: usize, label: Arc<str>, qtype: Option<RecordType>) -> Response {
    let mut wire = encode(&response);
    if wire.as_ref().is_some_and(|w| w.len() > limit) && !response.additionals().is_empty() {
        response.take_additionals();
        wire = encode(&response);
    }
    if wire.as_ref().is_some_and(|w| w.len() > limit) {
        response.take_answers();
        response.take_name_servers();
        response.take_additionals();
        response.set_truncated(true);
        wire = encode(&response);
    }
    let wire = match wire {
        Some(wire) => wire,
        None => {
            // Cannot happen with validated zones; answer SERVFAIL rather than nothing.
            response.take_answers();
            response.take_name_servers();
            response.take_additionals();
            response.set_response_code(ResponseCode::ServFail);
            match encode(&response) {
                Some(wire) => wire,
                None => return Response::dropped(&label),
            }
        }
    };
    Response {
        rcode: response.response_code(),
        messages: vec![response],
        wire: vec![wire],
        name_label: label,
        qtype,
        cacheable: true,
    }
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    message.to_vec().ok()
}

/// AXFR over TCP for allowed clients (IXFR is answered with the full zone, as RFC 1995 permits;
/// over UDP an allowed IXFR gets the SOA alone, telling the client to retry over TCP).
fn transfer(
    zones: &Zones,
    zone: &Zone,
    view: &HealthView,
    request: &Request,
    question: &Query,
    mut response: Message,
    limit: usize,
) -> Response {
    let label: Arc<str> = Arc::clone(&zone_label(zone));
    let qtype = Some(question.query_type());
    let refuse = |mut response: Message, rcode| {
        response.set_response_code(rcode);
        finish(response, limit, Arc::clone(&label), qtype)
    };
    if !zones.transfer_allowed(request.client) {
        return refuse(response, ResponseCode::Refused);
    }
    if question.name() != &zone.origin {
        return refuse(response, ResponseCode::NotAuth);
    }
    response.set_authoritative(true);
    let soa = {
        let mut soa = zone.soa.clone();
        soa.set_name(question.name().clone());
        soa
    };
    if request.transport == Transport::Udp {
        if question.query_type() == RecordType::IXFR {
            response.add_answer(soa);
            return finish(response, limit, label, qtype);
        }
        return refuse(response, ResponseCode::Refused);
    }
    let mut records = vec![soa.clone()];
    let mut nodes: Vec<&Node> = zone.nodes().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for node in nodes {
        let dynamic = dynamic_txt(view, &node.name);
        for set in &node.rrsets {
            if set.rtype == RecordType::SOA || (set.rtype == RecordType::TXT && dynamic.is_some()) {
                continue;
            }
            match &set.data {
                RrData::Static { ttl, rdatas } => {
                    records.extend(
                        rdatas
                            .iter()
                            .map(|r| Record::from_rdata(node.name.clone(), *ttl, r.clone())),
                    );
                }
                RrData::Routed(policy) => {
                    for member in policy::in_service(policy, view) {
                        records.extend(
                            member
                                .rdatas
                                .iter()
                                .map(|r| Record::from_rdata(node.name.clone(), member.ttl, r.clone())),
                        );
                    }
                }
            }
        }
    }
    for (name, value) in &view.txt {
        let Ok(name) = Name::from_ascii(name) else { continue };
        if zones.zone_for(&name).is_some_and(|z| z.origin == zone.origin) {
            records.push(Record::from_rdata(
                name,
                DYNAMIC_TXT_TTL_SECS,
                RData::TXT(TXT::new(txt_strings(value))),
            ));
        }
    }
    records.push(soa);
    let mut messages = Vec::new();
    let mut wire = Vec::new();
    let mut current = response.clone();
    let mut bytes = 0;
    for record in records {
        let size = record
            .to_bytes()
            .map(|b| b.len())
            .unwrap_or(TRANSFER_MESSAGE_BYTES_TARGET);
        if bytes > 0 && bytes + size > TRANSFER_MESSAGE_BYTES_TARGET {
            let next = continuation(&response);
            push_encoded(std::mem::replace(&mut current, next), &mut messages, &mut wire);
            bytes = 0;
        }
        bytes += size;
        current.add_answer(record);
    }
    push_encoded(current, &mut messages, &mut wire);
    Response {
        messages,
        wire,
        rcode: ResponseCode::NoError,
        name_label: label,
        qtype,
        cacheable: false,
    }
}

fn zone_label(zone: &Zone) -> Arc<str> {
    zone.node(&zone.origin)
        .map(|node| Arc::clone(&node.label))
        .unwrap_or_else(|| Arc::from(zone.origin.to_ascii()))
}

/// A later message of a transfer: same header, no question, no OPT.
fn continuation(first: &Message) -> Message {
    let mut message = Message::new();
    message
        .set_id(first.id())
        .set_message_type(MessageType::Response)
        .set_op_code(first.op_code())
        .set_authoritative(true);
    message
}

fn push_encoded(message: Message, messages: &mut Vec<Message>, wire: &mut Vec<Vec<u8>>) {
    if let Ok(bytes) = message.to_vec() {
        wire.push(bytes);
        messages.push(message);
    }
}

#[cfg(test)]
mod tests;
