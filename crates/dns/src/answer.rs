//! The answering logic: a pure function from a query (and the zones and health view) to the
//! response messages. No sockets, clocks or randomness of its own: the caller passes a random
//! `entropy` per query, so the same inputs always give the same bytes.
//!
//! Invariant: `answer()` is pure and never panics; `handle_packet` changes nothing but the TSIG
//! replay record it is passed (a signed request verified is admitted once); every response
//! either one returns encodes, and over UDP fits the client's payload size (else it is truncated
//! with TC set).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use hickory_proto::op::{Edns, Header, Message, MessageParts, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{NULL, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable};

use crate::config::txt_strings;
use crate::policy::{self, FAILOVER_TTL_SECS_DEFAULT};
use crate::view::HealthView;
use crate::zone::{Lookup, Node, RrData, RrSet, Zone, Zones, name_key};
use common::tsig::{self, RequestCheck};

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
/// Metrics labels for signed queries refused for their TSIG (NOTAUTH), by TSIG error: a key
/// not held (BADKEY), a MAC that does not verify (BADSIG), a time outside the fudge (BADTIME),
/// a MAC truncated below policy (BADTRUNC), and a request that verified but is a replay of
/// one already answered (BADTIME too, RFC 8945 §5.2.3).
pub const LABEL_TSIG_BADKEY: &str = "<tsig-badkey>";
pub const LABEL_TSIG_BADSIG: &str = "<tsig-badsig>";
pub const LABEL_TSIG_BADTIME: &str = "<tsig-badtime>";
pub const LABEL_TSIG_BADTRUNC: &str = "<tsig-badtrunc>";
pub const LABEL_TSIG_REPLAYED: &str = "<tsig-replayed>";

/// The shared `Arc` of a fixed metrics label, so answering allocates no label.
fn fixed_label(label: &'static str) -> Arc<str> {
    static LABELS: OnceLock<[Arc<str>; 9]> = OnceLock::new();
    let labels = LABELS.get_or_init(|| {
        [
            LABEL_OUTSIDE,
            LABEL_NONEXISTENT,
            LABEL_DYNAMIC,
            LABEL_MALFORMED,
            LABEL_TSIG_BADKEY,
            LABEL_TSIG_BADSIG,
            LABEL_TSIG_BADTIME,
            LABEL_TSIG_BADTRUNC,
            LABEL_TSIG_REPLAYED,
        ]
        .map(Arc::from)
    });
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
    /// The TSIG key the query was signed with, verified by the caller ([`handle_packet`]
    /// does); `None` for an unsigned query — or a signed one nobody verified, which is
    /// answered as signed with an unknown key (BADKEY).
    pub signed: Option<SignedBy>,
}

/// A verified TSIG signature on a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBy {
    /// The key's lower-case name, as `transfer_key` holds it.
    pub key_name: String,
    /// Bytes the answer's TSIG record will take: kept free in a UDP answer.
    pub record_bytes: usize,
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
    /// Whether the query was signed (TSIG): then `wire` is signed, and so must be anything
    /// else sent for it (see [`Response::slipped`]).
    pub signed: bool,
    /// For a signed query over UDP: the truncated form of the answer, signed, for a rate
    /// limiter that slips it (`None`: nothing may be sent in its place).
    signed_slip: Option<Vec<u8>>,
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
            signed: false,
            signed_slip: None,
        }
    }

    /// What a rate limiter that slips this answer sends instead ([`crate::rrl::truncated`]:
    /// TC, no records): for a signed query that form signed with the query's key (RFC 8945
    /// §5.3: a signed query gets a signed answer), or nothing when there is none (a refused
    /// signature's answer: the client's retry over TCP would be refused the same).
    pub fn slipped(&self) -> Option<Vec<u8>> {
        if self.signed {
            return self.signed_slip.clone();
        }
        self.messages.first().and_then(crate::rrl::truncated)
    }
}

/// Parses a packet and answers it; `None` means drop it (not a query, or too broken to answer).
/// Packets with a readable header but a broken body get FORMERR. A signed query's TSIG is
/// checked against the zones' keys at `now_s` (Unix seconds; RFC 8945 §5.2): a bad one gets
/// NOTAUTH with the TSIG error (BADKEY, BADSIG, BADTIME, BADTRUNC), a good one an answer whose
/// every message is signed, each over the previous one's MAC (§5.3.1). A good one is also
/// checked against `replays`, the server's record of the requests each key signed (§5.2.3):
/// one signed earlier than its key's latest, or a copy of one already answered (but a UDP
/// retransmission from the same `client`), gets a signed BADTIME. That record is the only
/// state this function changes.
#[allow(clippy::too_many_arguments)]
pub fn handle_packet(
    zones: &Zones,
    view: &HealthView,
    packet: &[u8],
    transport: Transport,
    client: IpAddr,
    entropy: u64,
    now_s: u64,
    replays: &Mutex<tsig::Replays>,
) -> Option<Response> {
    match decode(packet)? {
        Decoded::Query(message) => {
            let mut verified = None;
            if let Tsig::Last(_) = tsig(&message) {
                match tsig::verify_request(packet, zones.keys(), now_s) {
                    RequestCheck::Verified(ok) => {
                        let admitted = replays.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).admit(
                            &ok,
                            now_s,
                            (transport == Transport::Udp).then_some(client),
                        );
                        if admitted.is_err() {
                            let refusal = ok.refuse_replay();
                            let label = fixed_label(LABEL_TSIG_REPLAYED);
                            return Some(tsig_refusal(&message, transport, &refusal, now_s, label));
                        }
                        verified = Some(ok);
                    }
                    RequestCheck::Refused(refusal) => {
                        let label = fixed_label(match refusal.error {
                            tsig::BADKEY => LABEL_TSIG_BADKEY,
                            tsig::BADSIG => LABEL_TSIG_BADSIG,
                            tsig::BADTRUNC => LABEL_TSIG_BADTRUNC,
                            _ => LABEL_TSIG_BADTIME,
                        });
                        return Some(tsig_refusal(&message, transport, &refusal, now_s, label));
                    }
                    // Unreadable: the TSIG rules of `answer` say FORMERR (or, unverified, BADKEY).
                    RequestCheck::Unsigned | RequestCheck::Malformed(_) => {
                        let mut response = reply_to(
                            message.header(),
                            the_question(message.queries().to_vec()).as_ref(),
                            message.extensions().as_ref(),
                        );
                        response.set_response_code(ResponseCode::FormErr);
                        let qtype = message.queries().first().map(Query::query_type);
                        let limit = size_limit(transport, message.extensions().as_ref());
                        return Some(finish(response, limit, fixed_label(LABEL_MALFORMED), qtype));
                    }
                }
            }
            let signed = verified.as_ref().map(|ok| SignedBy {
                key_name: ok.key.name.to_ascii_lowercase(),
                record_bytes: tsig::answer_record_bytes(ok.key, &ok.mac),
            });
            let mut response = answer(
                zones,
                view,
                &Request {
                    message,
                    transport,
                    client,
                    entropy,
                    signed,
                },
            );
            if let Some(ok) = verified {
                let mut signer = tsig::ResponseSigner::new(ok.key, &ok.mac, now_s);
                let signed: Result<Vec<Vec<u8>>, String> = response.wire.iter().map(|wire| signer.sign(wire)).collect();
                // Cannot fail: the answer kept room for the record (a transfer's messages are
                // far below 64 KiB); if it did, nothing unsigned goes out.
                response.wire = signed.ok()?;
                response.cacheable = false;
                response.signed = true;
                if transport == Transport::Udp {
                    // Signed apart from the answer: a client takes one or the other, each the
                    // first message of an answer to its request.
                    response.signed_slip = response
                        .messages
                        .first()
                        .and_then(crate::rrl::truncated)
                        .and_then(|slip| tsig::ResponseSigner::new(ok.key, &ok.mac, now_s).sign(&slip).ok());
                }
            }
            (!response.messages.is_empty()).then_some(response)
        }
        Decoded::Malformed { header, question, edns } => {
            let mut response = reply_to(&header, question.as_ref(), edns.as_ref());
            response.set_response_code(ResponseCode::FormErr);
            let qtype = question.as_ref().map(Query::query_type);
            Some(finish(
                response,
                size_limit(transport, edns.as_ref()),
                fixed_label(LABEL_MALFORMED),
                qtype,
            ))
        }
    }
}

/// The NOTAUTH answer to a query whose TSIG failed (RFC 8945 §5.2, §5.3.2): the question and
/// OPT echoed, the TSIG record the refusal makes (unsigned for BADKEY and BADSIG, signed for
/// BADTIME, with the server's time, and BADTRUNC). Never cached.
fn tsig_refusal(
    query: &Message,
    transport: Transport,
    refusal: &tsig::Refusal<'_>,
    now_s: u64,
    label: Arc<str>,
) -> Response {
    let question = match query.queries() {
        [question] => Some(question),
        _ => None,
    };
    let edns = query.extensions().as_ref();
    let mut response = reply_to(query.header(), question, edns);
    response.set_response_code(ResponseCode::NotAuth);
    let qtype = query.queries().first().map(Query::query_type);
    let mut finished = finish(response, size_limit(transport, edns), label, qtype);
    finished.cacheable = false;
    // Never slipped (TC): the retry would be refused the same, and an unsigned TC could stand
    // for a signed BADTIME.
    finished.signed = true;
    let signed: Option<Vec<Vec<u8>>> = finished
        .wire
        .iter()
        .map(|wire| refusal.respond(wire, now_s).ok())
        .collect();
    if let Some(signed) = signed {
        finished.wire = signed;
    }
    finished
}

/// A packet read as a query.
enum Decoded {
    Query(Message),
    /// A query with a readable header and a body that breaks the rules: answered FORMERR with
    /// what could be read of it, its question (when it has one, and it parsed) and, when it
    /// carried an OPT record, ours (RFC 6891 §7: a FORMERR about the OPT itself must have one).
    Malformed {
        header: Header,
        question: Option<Query>,
        edns: Option<Edns>,
    },
}

/// The records after the question, sorted the way `Message` keeps them.
#[derive(Default)]
struct Sections {
    answers: Vec<Record>,
    name_servers: Vec<Record>,
    additionals: Vec<Record>,
    edns: Option<Edns>,
}

/// Reads a query as `Message::from_vec` does, but stricter, as Knot and BIND are: bytes after
/// the last record (Knot), an OPT or TSIG record outside the additional section, two OPT
/// records (RFC 6891 §6.1.1) and a record after a TSIG (RFC 8945 §5.2: the TSIG is the last
/// record) make it malformed. `None`: not a query (a response, or no header), to be dropped.
fn decode(packet: &[u8]) -> Option<Decoded> {
    let mut decoder = BinDecoder::new(packet);
    let header = Header::read(&mut decoder).ok()?;
    if header.message_type() == MessageType::Response {
        return None;
    }
    let mut queries = Vec::with_capacity(usize::from(header.query_count().min(1)));
    for _ in 0..header.query_count() {
        let Ok(query) = Query::read(&mut decoder) else {
            return Some(Decoded::Malformed {
                header,
                question: None,
                edns: None,
            });
        };
        queries.push(query);
    }
    match read_sections(&mut decoder, &header) {
        Ok(sections) => Some(Decoded::Query(Message::from(MessageParts {
            header,
            queries,
            answers: sections.answers,
            name_servers: sections.name_servers,
            additionals: sections.additionals,
            sig0: Vec::new(),
            edns: sections.edns,
        }))),
        Err(edns) => Some(Decoded::Malformed {
            header,
            question: the_question(queries),
            edns,
        }),
    }
}

/// The question of a question section that has exactly one (the only kind echoed in an error,
/// as BIND does: a longer one could make the error larger than the answer size).
fn the_question(mut queries: Vec<Query>) -> Option<Query> {
    if queries.len() == 1 { queries.pop() } else { None }
}

/// The answer, authority and additional sections; on a broken one, the error carries the OPT
/// record read before it, if any.
fn read_sections(decoder: &mut BinDecoder<'_>, header: &Header) -> Result<Sections, Option<Edns>> {
    let mut sections = Sections::default();
    let mut after_tsig = false;
    let counts = [
        header.answer_count(),
        header.name_server_count(),
        header.additional_count(),
    ];
    for (section, count) in counts.into_iter().enumerate() {
        let additional = section == 2;
        for _ in 0..count {
            let Ok(record) = Record::read(decoder) else {
                return Err(sections.edns);
            };
            if after_tsig {
                return Err(sections.edns);
            }
            match record.record_type() {
                RecordType::OPT if additional && sections.edns.is_none() => {
                    sections.edns = Some(Edns::from(&record));
                }
                RecordType::TSIG if additional => {
                    after_tsig = true;
                    sections.additionals.push(record);
                }
                RecordType::OPT | RecordType::TSIG => return Err(sections.edns),
                _ => match section {
                    0 => sections.answers.push(record),
                    1 => sections.name_servers.push(record),
                    _ => sections.additionals.push(record),
                },
            }
        }
    }
    if !decoder.is_empty() {
        return Err(sections.edns);
    }
    Ok(sections)
}

/// The start of every response to `header`'s query: id, opcode, RD and CD copied, the question
/// echoed, and our OPT record when the query had one (RFC 6891 §6.1.1).
fn reply_to(header: &Header, question: Option<&Query>, edns: Option<&Edns>) -> Message {
    let mut response = Message::new();
    response
        .set_id(header.id())
        .set_message_type(MessageType::Response)
        .set_op_code(header.op_code())
        .set_recursion_desired(header.recursion_desired())
        .set_checking_disabled(header.checking_disabled());
    if let Some(question) = question {
        response.add_query(question.clone());
    }
    if let Some(theirs) = edns {
        let mut ours = Edns::new();
        // The DO bit is copied (RFC 3225 §3), though no answer is signed.
        ours.set_max_payload(UDP_PAYLOAD_BYTES_MAX)
            .set_version(0)
            .set_dnssec_ok(theirs.flags().dnssec_ok);
        response.set_edns(ours);
    }
    response
}

/// The largest response the client takes over `transport`.
fn size_limit(transport: Transport, client_edns: Option<&Edns>) -> usize {
    match transport {
        Transport::Tcp => TCP_MESSAGE_BYTES_MAX,
        Transport::Udp => usize::from(
            client_edns
                .map(|e| e.max_payload().clamp(UDP_PAYLOAD_BYTES_MIN, UDP_PAYLOAD_BYTES_MAX))
                .unwrap_or(UDP_PAYLOAD_BYTES_MIN),
        ),
    }
}

/// Question types that only name records of a message's own machinery (OPT, TKEY, TSIG):
/// FORMERR as BIND answers them (Knot answers NODATA).
const QTYPES_FORMERR: [u16; 3] = [41, 249, 250];
/// MAILB and MAILA (RFC 1035's mailbox queries, obsolete): NOTIMP, as BIND answers them.
const QTYPES_NOT_IMPLEMENTED: [u16; 2] = [253, 254];

/// Answers one query. Pure: same zones, view and request, same response.
pub fn answer(zones: &Zones, view: &HealthView, request: &Request) -> Response {
    let query = &request.message;
    if query.message_type() == MessageType::Response {
        return Response::dropped(LABEL_MALFORMED);
    }
    let question = match query.queries() {
        [question] => Some(question),
        _ => None,
    };
    let client_edns = query.extensions().as_ref();
    let mut response = reply_to(query.header(), question, client_edns);
    // A signed answer keeps room for its TSIG record.
    let limit = size_limit(request.transport, client_edns)
        .saturating_sub(request.signed.as_ref().map_or(0, |signed| signed.record_bytes));
    let qtype = query.queries().first().map(Query::query_type);
    let mut label: Arc<str> = fixed_label(LABEL_MALFORMED);
    let mut cacheable = true;
    let rcode = 'rcode: {
        if client_edns.is_some_and(|e| e.version() > 0) {
            break 'rcode ResponseCode::BADVERS;
        }
        match tsig(query) {
            Tsig::Absent => {}
            Tsig::Misplaced => break 'rcode ResponseCode::FormErr,
            // Verified by the caller: answered, and the caller signs the answer.
            Tsig::Last(_) if request.signed.is_some() => {}
            Tsig::Last(record) => match bad_key(record) {
                // Nobody verified it (`answer` called directly, not through `handle_packet`):
                // answered as signed with a key not held (RFC 8945 §5.2.1).
                Some(error) => {
                    let mut parts = response.into_parts();
                    parts.sig0.push(error);
                    response = Message::from(parts);
                    break 'rcode ResponseCode::NotAuth;
                }
                None => break 'rcode ResponseCode::FormErr,
            },
        }
        if query.op_code() == OpCode::Notify {
            // A NOTIFY (RFC 1996) to this server, the primary of its zones: answered as BIND
            // answers one for a zone it is primary for — NOERROR with AA (nothing to fetch);
            // NOTAUTH for a name that is no zone's apex here; FORMERR without exactly one
            // question, or with one that is not an SOA.
            let Some(question) = question.filter(|q| q.query_type() == RecordType::SOA) else {
                break 'rcode ResponseCode::FormErr;
            };
            match zones.zone_for(question.name()) {
                Some(zone) if zone.origin == *question.name() => {
                    response.set_authoritative(true);
                    label = zone_label(zone);
                    break 'rcode ResponseCode::NoError;
                }
                _ => {
                    label = fixed_label(LABEL_OUTSIDE);
                    break 'rcode ResponseCode::NotAuth;
                }
            }
        }
        if query.op_code() != OpCode::Query {
            break 'rcode ResponseCode::NotImp;
        }
        let Some(question) = question else {
            break 'rcode ResponseCode::FormErr;
        };
        let asked = u16::from(question.query_type());
        if QTYPES_FORMERR.contains(&asked) {
            break 'rcode ResponseCode::FormErr;
        }
        if QTYPES_NOT_IMPLEMENTED.contains(&asked) {
            break 'rcode ResponseCode::NotImp;
        }
        let Some(zone) = zones.zone_for(question.name()) else {
            label = fixed_label(LABEL_OUTSIDE);
            break 'rcode ResponseCode::Refused;
        };
        if question.query_class() != DNSClass::IN {
            label = fixed_label(LABEL_OUTSIDE);
            break 'rcode ResponseCode::Refused;
        }
        if let RecordType::AXFR | RecordType::IXFR = question.query_type() {
            // Depends on the client's address: never cacheable.
            // IXFR names the client's version in an SOA of its authority section.
            let ixfr_serial = query.name_servers().iter().find_map(|record| match record.data() {
                RData::SOA(soa) => Some(soa.serial()),
                _ => None,
            });
            let mut transferred = transfer((zones, zone, ixfr_serial), view, request, question, response, limit);
            transferred.cacheable = false;
            return transferred;
        }
        // The DS set of a zone's apex belongs to the parent side of the cut (RFC 4035
        // §3.1.4.1): when the parent is served here too, it answers — NODATA with its SOA, as
        // no DS is held — as BIND does; without the parent, the child answers as for any type.
        if question.query_type() == RecordType::DS
            && zone.origin == *question.name()
            && let Some(parent) = zones.zone_for(&zone.origin.base_name())
        {
            response.set_authoritative(true);
            let mut soa = soa_now(parent, view);
            soa.set_ttl(parent.negative_ttl);
            response.add_name_server(soa);
            label = zone_label(zone);
            break 'rcode ResponseCode::NoError;
        }
        response.set_authoritative(true);
        let mut random = false;
        let (rcode, name_label) = resolve(
            (zones, zone),
            view,
            question,
            request.entropy,
            &mut random,
            &mut response,
        );
        label = name_label;
        cacheable = !random;
        rcode
    };
    response.set_response_code(rcode);
    let mut finished = finish(response, limit, label, qtype);
    finished.cacheable &= cacheable;
    finished
}

/// Where a query's TSIG record is.
enum Tsig<'a> {
    Absent,
    /// Last in the additional section, and the only one.
    Last(&'a Record),
    /// Elsewhere, or more than one: FORMERR (RFC 8945 §5.2).
    Misplaced,
}

fn tsig(query: &Message) -> Tsig<'_> {
    let is_tsig = |record: &Record| record.record_type() == RecordType::TSIG;
    let count = query
        .answers()
        .iter()
        .chain(query.name_servers())
        .chain(query.additionals())
        .chain(query.signature())
        .filter(|record| is_tsig(record))
        .count();
    if count == 0 {
        return Tsig::Absent;
    }
    // The message's last record: signatures are written after the additional section.
    match query.signature().last().or(query.additionals().last()) {
        Some(last) if count == 1 && is_tsig(last) => Tsig::Last(last),
        _ => Tsig::Misplaced,
    }
}

/// The unsigned TSIG record of a NOTAUTH answer to a query signed with an unknown key (RFC 8945
/// §5.2.1, §5.3.2): the query's key name, algorithm, time signed (as Knot does: this function
/// reads no clock) and original id, no MAC, error BADKEY. `None` when the query's TSIG record is
/// not a well-formed one (FORMERR).
fn bad_key(tsig: &Record) -> Option<Record> {
    let rdata = tsig.data().to_bytes().ok()?;
    // Algorithm name (uncompressed, RFC 8945 §4.2), time signed (48 bits), fudge, MAC size.
    let algorithm = uncompressed_name_bytes(&rdata)?;
    let fixed = rdata.get(algorithm..algorithm + 10)?;
    let mac_bytes = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let after_mac = algorithm + 10 + mac_bytes;
    // Original id, error, other length, other data.
    let tail = rdata.get(after_mac..after_mac + 6)?;
    let other_bytes = usize::from(u16::from_be_bytes([tail[4], tail[5]]));
    if rdata.len() != after_mac + 6 + other_bytes {
        return None;
    }
    let mut answer = Vec::with_capacity(algorithm + 16);
    answer.extend_from_slice(&rdata[..algorithm]);
    answer.extend_from_slice(&fixed[..6]);
    answer.extend_from_slice(&tsig::FUDGE_S.to_be_bytes());
    answer.extend_from_slice(&0u16.to_be_bytes());
    answer.extend_from_slice(&tail[..2]);
    answer.extend_from_slice(&tsig::BADKEY.to_be_bytes());
    answer.extend_from_slice(&0u16.to_be_bytes());
    let mut record = Record::from_rdata(
        tsig.name().clone(),
        0,
        RData::Unknown {
            code: RecordType::TSIG,
            rdata: NULL::with(answer),
        },
    );
    record.set_dns_class(DNSClass::ANY);
    Some(record)
}

/// The length of the uncompressed domain name at the start of `bytes`.
fn uncompressed_name_bytes(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let length = usize::from(*bytes.get(at)?);
        if length == 0 {
            return Some(at + 1);
        }
        if length > 63 {
            return None;
        }
        at += 1 + length;
    }
}

/// Fills the answer, authority and additional sections; returns the rcode and metrics label.
fn resolve(
    (zones, zone): (&Zones, &Zone),
    view: &HealthView,
    question: &Query,
    entropy: u64,
    random: &mut bool,
    response: &mut Message,
) -> (ResponseCode, Arc<str>) {
    let qtype = question.query_type();
    let pushed = view.dynamic_names();
    let pushed_exists = |key: &[u8]| !pushed.is_empty() && pushed.exists(key);
    let mut owner = question.name().clone();
    let mut label: Option<Arc<str>> = None;
    let mut answers: Vec<Record> = Vec::new();
    let mut additionals: Vec<Record> = Vec::new();
    let mut rcode = ResponseCode::NoError;
    let mut negative = false;
    for _ in 0..=CNAME_CHAIN_MAX {
        let key = name_key(&owner);
        let node = match zone.find_key(&key, pushed_exists) {
            Lookup::Exact(node) | Lookup::Wildcard(node) => Some(node),
            Lookup::NoRecords => None,
        };
        if node.is_none() && !pushed_exists(&key) {
            label.get_or_insert_with(|| fixed_label(LABEL_NONEXISTENT));
            rcode = ResponseCode::NXDomain;
            negative = true;
            break;
        }
        label.get_or_insert_with(|| node.map_or_else(|| fixed_label(LABEL_DYNAMIC), |n| Arc::clone(&n.label)));
        let dynamic = if pushed.is_empty() { None } else { pushed.record(&key) };
        let before = answers.len();
        if let Some(txt) = dynamic
            && matches!(qtype, RecordType::TXT | RecordType::ANY)
        {
            answers.push(Record::from_rdata(owner.clone(), DYNAMIC_TXT_TTL_SECS, txt.clone()));
            if qtype == RecordType::TXT {
                break;
            }
        }
        let Some(node) = node else {
            // Exists through pushed records only: a pushed name or an ancestor of one.
            negative = answers.len() == before;
            break;
        };
        // An ANY question matches the CNAME itself, which is not chased (RFC 1034 §4.3.2 step
        // 3a, §3.7.1): the loop below answers it with the node's records.
        if !matches!(qtype, RecordType::CNAME | RecordType::ANY)
            && let Some(cname) = node.rrset(RecordType::CNAME)
        {
            push_set(cname, &owner, view, entropy, random, &mut answers);
            let target = answers[before..].iter().find_map(|r| match r.data() {
                RData::CNAME(target) => Some(target.0.clone()),
                _ => None,
            });
            match target {
                // A chain that comes back to a name it passed is answered once (RFC 2181 §5:
                // no record twice); the config loader refuses loops, this guards the rest. A
                // target in another zone — a child zone served here too included — is left to
                // the resolver: looked up in this zone's names it would be a false NXDOMAIN.
                Some(target) if in_zone(zones, zone, &target) && !chain_passed(&answers, &target) => {
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
                if set.rtype == RecordType::SOA {
                    answers.push(soa_now(zone, view));
                } else {
                    push_set(set, &owner, view, entropy, random, &mut answers);
                }
            }
        }
        if found {
            add_glue((zones, zone), view, entropy, random, &answers, &mut additionals);
        } else {
            negative = answers.len() == before;
        }
        break;
    }
    response.insert_answers(answers);
    if negative {
        let mut soa = soa_now(zone, view);
        soa.set_ttl(zone.negative_ttl);
        response.add_name_server(soa);
    }
    response.insert_additionals(additionals);
    (rcode, label.unwrap_or_else(|| fixed_label(LABEL_NONEXISTENT)))
}

/// The zone's SOA as it stands: the configured serial moved on by every push since that changed
/// the zone ([`HealthView::serial`], [`count_zone_changes`]).
fn soa_now(zone: &Zone, view: &HealthView) -> Record {
    let mut record = zone.soa.clone();
    if let RData::SOA(soa) = zone.soa.data() {
        let now = hickory_proto::rr::rdata::SOA::new(
            soa.mname().clone(),
            soa.rname().clone(),
            view.serial(soa.serial(), &zone.origin),
            soa.refresh(),
            soa.retry(),
            soa.expire(),
            soa.minimum(),
        );
        record.set_data(RData::SOA(now));
    }
    record
}

/// Whether `name`'s closest zone here is `zone` (not a parent's name that a child zone serves).
fn in_zone(zones: &Zones, zone: &Zone, name: &Name) -> bool {
    zones.zone_for(name).is_some_and(|closest| std::ptr::eq(closest, zone))
}

/// Whether serial `a` is `b` or after it in RFC 1982 arithmetic.
fn serial_at_least(a: u32, b: u32) -> bool {
    a == b || (a.wrapping_sub(b) as i32) > 0
}

/// Whether a CNAME chain already answered has `name` as an owner.
fn chain_passed(answers: &[Record], name: &Name) -> bool {
    answers
        .iter()
        .any(|record| record.record_type() == RecordType::CNAME && record.name() == name)
}

/// The TXT record pushed at `name`, if any.
fn pushed_txt<'v>(view: &'v HealthView, name: &Name) -> Option<&'v RData> {
    let pushed = view.dynamic_names();
    if pushed.is_empty() {
        return None;
    }
    pushed.record(&name_key(name))
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
    (zones, zone): (&Zones, &Zone),
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
        if !in_zone(zones, zone, target) || out.iter().any(|r| r.name() == target) {
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
        response.take_signature();
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
        signed: false,
        signed_slip: None,
    }
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    message.to_vec().ok()
}

/// AXFR over TCP for allowed clients. An IXFR from the server's current serial (or a newer one)
/// gets the SOA alone (RFC 1995 §2); from an older one the full zone, as RFC 1995 permits (no
/// history is kept); over UDP an allowed IXFR gets the SOA alone, telling the client to retry
/// over TCP.
fn transfer(
    (zones, zone, ixfr_serial): (&Zones, &Zone, Option<u32>),
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
    let signed_with = request.signed.as_ref().map(|signed| signed.key_name.as_str());
    if !zones.transfer_allowed(zone, request.client, signed_with) {
        return refuse(response, ResponseCode::Refused);
    }
    if question.name() != &zone.origin {
        return refuse(response, ResponseCode::NotAuth);
    }
    let soa = {
        let mut soa = soa_now(zone, view);
        soa.set_name(question.name().clone());
        soa
    };
    // An IXFR from the version the server has (or a newer one): the SOA alone says it is
    // current (RFC 1995 §2), over either transport.
    let current = match soa.data() {
        RData::SOA(ours) => ours.serial(),
        _ => 0,
    };
    if question.query_type() == RecordType::IXFR && ixfr_serial.is_some_and(|theirs| serial_at_least(theirs, current)) {
        response.set_authoritative(true);
        response.add_answer(soa);
        return finish(response, limit, label, qtype);
    }
    if request.transport == Transport::Udp {
        if question.query_type() == RecordType::IXFR {
            response.set_authoritative(true);
            response.add_answer(soa);
            return finish(response, limit, label, qtype);
        }
        // Refused without AA, as every refusal is.
        return refuse(response, ResponseCode::Refused);
    }
    response.set_authoritative(true);
    let mut records = vec![soa.clone()];
    records.extend(zone_records(zones, zone, view, Records::All));
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
        signed: false,
        signed_slip: None,
    }
}

/// Which records [`zone_records`] lists.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Records {
    /// Every record a transfer carries but the SOA.
    All,
    /// Only those that depend on the view: the in-service members of routed sets, pushed TXT
    /// records and delegations (whose glue may be routed). Static records are the same in every
    /// view, so two views give a zone the same transfer exactly when these are the same.
    ViewDependent,
}

/// The records of `zone` as its transfer carries them under `view`, apart from the SOA: its
/// nodes in name order (routed sets as their in-service members, a pushed TXT in place of a
/// configured one), the delegations of the child zones served here (the parent's own nodes at
/// and below a cut left out), then the pushed TXT records inside the zone.
fn zone_records(zones: &Zones, zone: &Zone, view: &HealthView, which: Records) -> Vec<Record> {
    let mut records = Vec::new();
    let children = delegated_from(zones, zone);
    let mut nodes: Vec<&Node> = zone
        .nodes()
        // At and below a cut only the delegation is the parent's (it follows the nodes).
        .filter(|node| !children.iter().any(|child| child.origin.zone_of(&node.name)))
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for node in nodes {
        let dynamic = pushed_txt(view, &node.name);
        for set in &node.rrsets {
            if set.rtype == RecordType::SOA || (set.rtype == RecordType::TXT && dynamic.is_some()) {
                continue;
            }
            match &set.data {
                RrData::Static { .. } if which == Records::ViewDependent => {}
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
    for child in children {
        records.extend(delegation(zones, child, view));
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
    records
}

/// Counts in `after` a change of every zone whose answers and transfer differ between `before`
/// and `after` (the views before and after a push, with the zones served), so that only those
/// zones' SOA serials move and only their secondaries are sent a NOTIFY (RFC 1996 §4.7: a
/// NOTIFY says the zone changed). What a zone answers depends on the view only through the
/// records of [`Records::ViewDependent`] (answers pick among a routed set's in-service members;
/// NS, MX and SRV glue is those of the same zone), so comparing those is exact: a push that flips
/// a failover in one zone leaves every other zone's serial where it was — but a parent's, when
/// the flipped address is the glue of a child's name server that the parent's transfer carries.
pub fn count_zone_changes(zones: &Zones, before: &HealthView, after: &mut HealthView) {
    if before.targets == after.targets && before.txt == after.txt {
        return;
    }
    for zone in zones.iter() {
        let was = zone_records(zones, zone, before, Records::ViewDependent);
        let is = zone_records(zones, zone, after, Records::ViewDependent);
        if was != is {
            after.count_zone_change(&zone.origin);
        }
    }
    after.bound_zone_counts(|key| zones.iter().any(|zone| crate::view::zone_key(&zone.origin) == key));
}

/// The zones served here whose parent side is `parent`: the closest zone above each one's apex
/// is `parent` (a grandchild is delegated from its own parent, not from here).
fn delegated_from<'z>(zones: &'z Zones, parent: &Zone) -> Vec<&'z Zone> {
    let mut children: Vec<&Zone> = zones
        .iter()
        .filter(|child| {
            child.origin.num_labels() > parent.origin.num_labels()
                && parent.origin.zone_of(&child.origin)
                && zones
                    .zone_for(&child.origin.base_name())
                    .is_some_and(|closest| std::ptr::eq(closest, parent))
        })
        .collect();
    children.sort_by(|a, b| a.origin.cmp(&b.origin));
    children
}

/// The delegation of `child` in its parent zone (RFC 1034 §4.2.1): the child's apex NS set as
/// the child answers it (same names and TTL), and glue — the A and AAAA records of each name
/// server inside the child (in-bailiwick), from the zone that serves that name. A secondary of
/// the parent refers queries for the child with this glue, and without it a resolver cannot
/// reach a name server named inside the zone it serves (RFC 9471 §2.1: such glue MUST be in a
/// referral). A routed address is glue as the transfer shows routed records (its in-service
/// members under `view`); when health moves it, the parent's transfer changes with it, so the
/// parent's serial moves and its secondaries are notified ([`count_zone_changes`]).
fn delegation(zones: &Zones, child: &Zone, view: &HealthView) -> Vec<Record> {
    let Some(RrData::Static { ttl, rdatas }) = child
        .node(&child.origin)
        .and_then(|apex| apex.rrset(RecordType::NS))
        .map(|set| &set.data)
    else {
        return Vec::new();
    };
    let mut records: Vec<Record> = rdatas
        .iter()
        .map(|rdata| Record::from_rdata(child.origin.clone(), *ttl, rdata.clone()))
        .collect();
    let mut glued: Vec<&Name> = Vec::new();
    for rdata in rdatas {
        let RData::NS(ns) = rdata else { continue };
        let host = &ns.0;
        if !child.origin.zone_of(host) || glued.contains(&host) {
            continue;
        }
        glued.push(host);
        let Some(node) = zones.zone_for(host).and_then(|zone| zone.node(host)) else {
            continue;
        };
        for rtype in [RecordType::A, RecordType::AAAA] {
            match node.rrset(rtype).map(|set| &set.data) {
                Some(RrData::Static { ttl, rdatas }) => records.extend(
                    rdatas
                        .iter()
                        .map(|rdata| Record::from_rdata(host.clone(), *ttl, rdata.clone())),
                ),
                Some(RrData::Routed(policy)) => {
                    for member in policy::in_service(policy, view) {
                        records.extend(
                            member
                                .rdatas
                                .iter()
                                .map(|rdata| Record::from_rdata(host.clone(), member.ttl, rdata.clone())),
                        );
                    }
                }
                None => {}
            }
        }
    }
    records
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
#[cfg(test)]
mod tsig_tests;
