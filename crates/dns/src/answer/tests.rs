use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::*;
use crate::view::{Generation, Health, HealthView};

const ZONE: &str = include_str!("../../tests/data/answer-zones.toml");

fn zones() -> Zones {
    crate::config::parse(ZONE, "test.toml")
        .expect("test zone is valid")
        .zones
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("valid name")
}

fn request(qname: &str, qtype: RecordType) -> Request {
    let mut message = Message::new();
    message
        .set_id(4242)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name(qname), qtype));
    Request {
        message,
        transport: Transport::Udp,
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        entropy: 7,
        signed: None,
    }
}

fn with_edns(mut request: Request, payload: u16) -> Request {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    request.message.set_edns(edns);
    request
}

fn ask(request: &Request, view: &HealthView) -> Message {
    let response = answer(&zones(), view, request);
    assert_eq!(response.messages.len(), 1);
    assert_eq!(response.wire.len(), 1);
    let parsed = Message::from_vec(&response.wire[0]).expect("response parses");
    assert_eq!(parsed.id(), request.message.id());
    assert_eq!(parsed.message_type(), MessageType::Response);
    parsed
}

fn query(qname: &str, qtype: RecordType) -> Message {
    ask(&request(qname, qtype), &HealthView::default())
}

fn rdatas(message: &Message) -> Vec<String> {
    message.answers().iter().map(|r| r.data().to_string()).collect()
}

fn down(targets: &[&str], generation: u64) -> HealthView {
    let targets: BTreeMap<String, Health> = targets.iter().map(|t| (t.to_string(), Health::Unhealthy)).collect();
    let mut view = HealthView::default()
        .apply_health(Generation(generation), &targets)
        .expect("valid push");
    count_zone_changes(&zones(), &HealthView::default(), &mut view);
    view
}

#[test]
fn a_record_with_ttl_and_authority_flag() {
    let response = query("plain.shop.example.", RecordType::A);
    assert_eq!(response.response_code(), ResponseCode::NoError);
    assert!(response.authoritative());
    assert!(response.recursion_desired() && !response.recursion_available());
    assert_eq!(rdatas(&response), ["192.0.2.1", "192.0.2.2"]);
    assert!(response.answers().iter().all(|r| r.ttl() == 120));
}

#[test]
fn aaaa_mx_txt_srv_ns_soa() {
    assert_eq!(rdatas(&query("plain.shop.example.", RecordType::AAAA)), ["2001:db8::1"]);
    let mx = query("shop.example.", RecordType::MX);
    assert_eq!(rdatas(&mx), ["10 mail.shop.example."]);
    assert_eq!(
        mx.additionals()
            .iter()
            .map(|r| r.data().to_string())
            .collect::<Vec<_>>(),
        ["192.0.2.25"],
        "in-zone MX target addresses go in the additional section"
    );
    let txt = query("shop.example.", RecordType::TXT);
    assert!(matches!(txt.answers()[0].data(), RData::TXT(t) if t.to_string() == "v=spf1 -all"));
    assert_eq!(
        rdatas(&query("_sip._tcp.shop.example.", RecordType::SRV)),
        ["10 5 5060 mail.shop.example."]
    );
    assert_eq!(rdatas(&query("shop.example.", RecordType::NS)), ["ns1.shop.example."]);
    let soa = query("shop.example.", RecordType::SOA);
    assert_eq!(soa.answers().len(), 1);
    assert!(matches!(soa.answers()[0].data(), RData::SOA(s) if s.mname() == &name("ns1.shop.example.")));
}

#[test]
fn nxdomain_has_soa_with_negative_ttl() {
    let response = query("nope.shop.example.", RecordType::A);
    assert_eq!(response.response_code(), ResponseCode::NXDomain);
    assert!(response.authoritative());
    assert!(response.answers().is_empty());
    assert_eq!(response.name_servers().len(), 1);
    let soa = &response.name_servers()[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.ttl(), 60, "min(SOA TTL 300, MINIMUM 60)");
}

#[test]
fn nodata_is_noerror_with_soa() {
    let response = query("plain.shop.example.", RecordType::MX);
    assert_eq!(response.response_code(), ResponseCode::NoError);
    assert!(response.answers().is_empty());
    assert_eq!(response.name_servers()[0].record_type(), RecordType::SOA);
}

#[test]
fn empty_non_terminal_is_nodata_not_nxdomain() {
    for qname in ["tree.shop.example.", "under.tree.shop.example."] {
        let response = query(qname, RecordType::A);
        assert_eq!(response.response_code(), ResponseCode::NoError, "{qname}");
        assert!(response.answers().is_empty());
    }
    assert_eq!(
        rdatas(&query("deep.under.tree.shop.example.", RecordType::A)),
        ["192.0.2.9"]
    );
}

#[test]
fn names_are_case_insensitive_and_keep_the_query_case() {
    let response = query("PlAiN.ShOp.ExAmPlE.", RecordType::A);
    assert_eq!(rdatas(&response), ["192.0.2.1", "192.0.2.2"]);
    assert_eq!(response.queries()[0].name().to_ascii(), "PlAiN.ShOp.ExAmPlE.");
    assert_eq!(response.answers()[0].name().to_ascii(), "PlAiN.ShOp.ExAmPlE.");
}

#[test]
fn cname_chain_is_followed_inside_the_zone() {
    let response = query("www.shop.example.", RecordType::A);
    assert_eq!(response.response_code(), ResponseCode::NoError);
    assert_eq!(
        rdatas(&response),
        ["alias.shop.example.", "plain.shop.example.", "192.0.21", "192.0.2.2"]
            .iter()
            .map(|s| s.replace("192.0.21", "192.0.2.1"))
            .collect::<Vec<_>>()
    );
    let cname = query("www.shop.example.", RecordType::CNAME);
    assert_eq!(rdatas(&cname), ["alias.shop.example."], "a CNAME query is not chased");
    let external = query("external.shop.example.", RecordType::A);
    assert_eq!(rdatas(&external), ["cdn.other.example."]);
    assert_eq!(external.response_code(), ResponseCode::NoError);
}

#[test]
fn cname_to_missing_name_is_nxdomain() {
    let response = query("dangling.shop.example.", RecordType::A);
    assert_eq!(response.response_code(), ResponseCode::NXDomain);
    assert_eq!(rdatas(&response), ["missing.shop.example."]);
}

/// Zones made without the config loader, which refuses CNAME loops: `a` → `b` → `a`, and `c`
/// → `c`.
fn looping_zones() -> Zones {
    use crate::zone::{RrData, RrSet, Zone};
    use hickory_proto::rr::rdata::{CNAME, NS, SOA};
    let origin = name("loop.example.");
    let soa = Record::from_rdata(
        origin.clone(),
        300,
        RData::SOA(SOA::new(
            name("ns1.loop.example."),
            name("hostmaster.loop.example."),
            1,
            3600,
            600,
            1_209_600,
            60,
        )),
    );
    let mut zone = Zone::new(origin, soa, 60, vec![RData::NS(NS(name("ns1.loop.example.")))], 300);
    for (owner, target) in [("a", "b"), ("b", "a"), ("c", "c")] {
        let set = RrSet {
            rtype: RecordType::CNAME,
            data: RrData::Static {
                ttl: 300,
                rdatas: vec![RData::CNAME(CNAME(name(&format!("{target}.loop.example."))))],
            },
        };
        zone.add(&name(&format!("{owner}.loop.example.")), set).expect("added");
    }
    Zones::new(vec![zone], Vec::new())
}

#[test]
fn a_cname_loop_is_answered_once_without_repeating_a_record() {
    let zones = looping_zones();
    let ask = |qname: &str| {
        let response = answer(&zones, &HealthView::default(), &request(qname, RecordType::A));
        Message::from_vec(&response.wire[0]).expect("parses")
    };
    let looped = ask("a.loop.example.");
    assert_eq!(looped.response_code(), ResponseCode::NoError);
    assert_eq!(
        rdatas(&looped),
        ["b.loop.example.", "a.loop.example."],
        "each CNAME once"
    );
    let to_itself = ask("c.loop.example.");
    assert_eq!(rdatas(&to_itself), ["c.loop.example."]);
}

#[test]
fn wildcard_answers_with_the_query_name() {
    let response = query("anything.wild.shop.example.", RecordType::A);
    assert_eq!(rdatas(&response), ["192.0.2.99"]);
    assert_eq!(response.answers()[0].name(), &name("anything.wild.shop.example."));
    let nodata = query("anything.wild.shop.example.", RecordType::AAAA);
    assert_eq!(nodata.response_code(), ResponseCode::NoError);
    assert!(nodata.answers().is_empty());
    // The wildcard does not cover the parent or names below an existing name.
    assert_eq!(
        query("wild.shop.example.", RecordType::A).response_code(),
        ResponseCode::NoError
    );
    assert_eq!(
        query("x.plain.shop.example.", RecordType::A).response_code(),
        ResponseCode::NXDomain
    );
}

#[test]
fn names_outside_the_zones_are_refused_without_aa() {
    let response = query("www.other.example.", RecordType::A);
    assert_eq!(response.response_code(), ResponseCode::Refused);
    assert!(!response.authoritative());
    assert_eq!(
        &*answer(&zones(), &HealthView::default(), &request("a.b.", RecordType::A)).name_label,
        LABEL_OUTSIDE
    );
}

#[test]
fn edns_is_echoed_and_unknown_versions_get_badvers() {
    let response = ask(
        &with_edns(request("plain.shop.example.", RecordType::A), 4096),
        &HealthView::default(),
    );
    let edns = response.extensions().as_ref().expect("OPT in the response");
    assert_eq!(edns.max_payload(), UDP_PAYLOAD_BYTES_MAX);
    assert!(query("plain.shop.example.", RecordType::A).extensions().is_none());
    let mut bad = with_edns(request("plain.shop.example.", RecordType::A), 1232);
    if let Some(edns) = bad.message.extensions_mut() {
        edns.set_version(1);
    }
    let response = ask(&bad, &HealthView::default());
    // BADVERS and BADSIG share the code 16; decoding reports the latter.
    assert_eq!(u16::from(response.response_code()), u16::from(ResponseCode::BADVERS));
}

#[test]
fn large_answers_are_truncated_over_udp_without_edns_and_whole_over_tcp() {
    let plain = query("big.shop.example.", RecordType::TXT);
    assert!(plain.truncated());
    assert!(plain.answers().is_empty());
    let mut over_tcp = request("big.shop.example.", RecordType::TXT);
    over_tcp.transport = Transport::Tcp;
    let whole = ask(&over_tcp, &HealthView::default());
    assert!(!whole.truncated());
    assert_eq!(whole.answers().len(), 4);
    let edns = ask(
        &with_edns(request("big.shop.example.", RecordType::TXT), 1232),
        &HealthView::default(),
    );
    assert!(!edns.truncated(), "about 850 bytes fit in 1232");
    let small = ask(
        &with_edns(request("big.shop.example.", RecordType::TXT), 100),
        &HealthView::default(),
    );
    assert!(small.truncated(), "payload sizes under 512 count as 512");
    for payload in [512u16, 1232, 4096, 65535] {
        let response = answer(
            &zones(),
            &HealthView::default(),
            &with_edns(request("big.shop.example.", RecordType::TXT), payload),
        );
        assert!(response.wire[0].len() <= usize::from(payload.clamp(512, UDP_PAYLOAD_BYTES_MAX)));
    }
}

#[test]
fn failover_flips_to_secondary_and_back() {
    let healthy = ask(&request("app.shop.example.", RecordType::A), &HealthView::default());
    assert_eq!(rdatas(&healthy), ["192.0.2.10"]);
    assert_eq!(healthy.answers()[0].ttl(), 10, "failover default TTL");
    let failed = ask(&request("app.shop.example.", RecordType::A), &down(&["us-east-1"], 1));
    assert_eq!(rdatas(&failed), ["198.51.100.10"]);
    assert_eq!(failed.answers()[0].ttl(), 20, "the member's own TTL");
    let both = ask(
        &request("app.shop.example.", RecordType::A),
        &down(&["us-east-1", "eu-west-1"], 2),
    );
    assert_eq!(
        rdatas(&both),
        ["192.0.2.10"],
        "all unhealthy: static stability, the primary"
    );
}

#[test]
fn stale_generation_does_not_flip_the_answer() {
    let view = down(&["us-east-1"], 10);
    let stale = view.apply_health(
        Generation(9),
        &[("us-east-1".to_string(), Health::Healthy)].into_iter().collect(),
    );
    assert!(stale.is_err());
    assert_eq!(
        rdatas(&ask(&request("app.shop.example.", RecordType::A), &view)),
        ["198.51.100.10"]
    );
}

#[test]
fn weighted_spreads_by_entropy_and_avoids_unhealthy() {
    let mut seen = std::collections::BTreeSet::new();
    for entropy in 0..64u64 {
        let mut req = request("api.shop.example.", RecordType::A);
        req.entropy = common::rng::Rng::new(entropy).next_u64();
        let response = ask(&req, &HealthView::default());
        assert_eq!(response.answers().len(), 1);
        assert_eq!(response.answers()[0].ttl(), crate::policy::ROUTED_TTL_SECS_DEFAULT);
        seen.insert(rdatas(&response)[0].clone());
        let failed = ask(&req, &down(&["us-east-1"], 1));
        assert_eq!(rdatas(&failed), ["198.51.100.20"]);
        let all_down = ask(&req, &down(&["us-east-1", "eu-west-1"], 1));
        assert_eq!(all_down.answers().len(), 1, "all unhealthy still answers");
    }
    assert_eq!(seen.len(), 2);
}

#[test]
fn multivalue_answers_healthy_members_or_all() {
    let all = query("pool.shop.example.", RecordType::A);
    assert_eq!(all.answers().len(), 3);
    let one_down = ask(&request("pool.shop.example.", RecordType::A), &down(&["us-east-1"], 1));
    assert_eq!(rdatas(&one_down), ["198.51.100.30", "203.0.113.30"]);
}

#[test]
fn dynamic_txt_answers_and_makes_the_name_exist() {
    let view = HealthView::default()
        .apply_txt(Generation(1), "_active-region.shop.example.", Some("eu-west-1"))
        .expect("valid");
    let response = ask(&request("_Active-Region.shop.example.", RecordType::TXT), &view);
    assert_eq!(response.response_code(), ResponseCode::NoError);
    assert!(matches!(response.answers()[0].data(), RData::TXT(t) if t.to_string() == "eu-west-1"));
    assert_eq!(response.answers()[0].ttl(), DYNAMIC_TXT_TTL_SECS);
    let nodata = ask(&request("_active-region.shop.example.", RecordType::A), &view);
    assert_eq!(nodata.response_code(), ResponseCode::NoError);
    assert!(nodata.answers().is_empty());
    let before = query("_active-region.shop.example.", RecordType::TXT);
    assert_eq!(before.response_code(), ResponseCode::NXDomain);
}

/// The view after pushing `value` at `name`.
fn pushed(pushes: &[(&str, &str)]) -> HealthView {
    pushes.iter().fold(HealthView::default(), |view, (name, value)| {
        view.apply_txt(Generation(1), name, Some(value)).expect("valid")
    })
}

#[test]
fn a_pushed_name_makes_its_parents_exist() {
    let view = pushed(&[("_active-region._sy.shop.example.", "eu-west-1")]);
    for qname in ["_sy.shop.example.", "_SY.shop.example."] {
        for qtype in [RecordType::A, RecordType::TXT] {
            let response = ask(&request(qname, qtype), &view);
            assert_eq!(response.response_code(), ResponseCode::NoError, "{qname} {qtype}");
            assert!(response.answers().is_empty());
            assert_eq!(response.name_servers()[0].record_type(), RecordType::SOA, "NODATA");
        }
    }
    let pointer = ask(&request("_active-region._sy.shop.example.", RecordType::TXT), &view);
    assert_eq!(rdatas(&pointer), ["eu-west-1"]);
    // Below the pushed name, and beside it, nothing exists.
    for qname in ["x._active-region._sy.shop.example.", "_other._sy.shop.example."] {
        let response = ask(&request(qname, RecordType::TXT), &view);
        assert_eq!(response.response_code(), ResponseCode::NXDomain, "{qname}");
    }
    // Removed, the parent goes with it.
    let removed = view
        .apply_txt(Generation(2), "_active-region._sy.shop.example.", None)
        .expect("valid");
    let response = ask(&request("_sy.shop.example.", RecordType::A), &removed);
    assert_eq!(response.response_code(), ResponseCode::NXDomain);
}

#[test]
fn a_wildcard_does_not_cover_a_pushed_name_nor_the_names_below_it() {
    let view = pushed(&[("foo.wild.shop.example.", "v"), ("deep.bar.wild.shop.example.", "w")]);
    let a = ask(&request("foo.wild.shop.example.", RecordType::A), &view);
    assert_eq!(a.response_code(), ResponseCode::NoError);
    assert!(a.answers().is_empty(), "NODATA, not the wildcard's A: {a:?}");
    assert_eq!(a.name_servers()[0].record_type(), RecordType::SOA);
    let any = ask(&request("foo.wild.shop.example.", RecordType::ANY), &view);
    assert_eq!(rdatas(&any), ["v"], "the pushed TXT alone");
    // `bar.wild` exists as the parent of a pushed name: an empty non-terminal, no wildcard.
    let parent = ask(&request("bar.wild.shop.example.", RecordType::A), &view);
    assert_eq!(parent.response_code(), ResponseCode::NoError);
    assert!(parent.answers().is_empty());
    // Below a pushed name its closest encloser is that name, which has no wildcard.
    let below = ask(&request("x.foo.wild.shop.example.", RecordType::A), &view);
    assert_eq!(below.response_code(), ResponseCode::NXDomain);
    // Other names under the wildcard still get its records.
    let other = ask(&request("other.wild.shop.example.", RecordType::A), &view);
    assert_eq!(rdatas(&other), ["192.0.2.99"]);
}

#[test]
fn axfr_refused_unless_allowed_and_over_tcp() {
    let mut refused = request("shop.example.", RecordType::AXFR);
    refused.transport = Transport::Tcp;
    assert_eq!(
        ask(&refused, &HealthView::default()).response_code(),
        ResponseCode::Refused
    );
    let mut allowed = refused.clone();
    allowed.client = "10.1.2.3".parse().expect("ip");
    let response = answer(&zones(), &HealthView::default(), &allowed);
    let records: Vec<_> = response
        .wire
        .iter()
        .flat_map(|w| Message::from_vec(w).expect("parses").answers().to_vec())
        .collect();
    assert_eq!(records.first().map(|r| r.record_type()), Some(RecordType::SOA));
    assert_eq!(records.last().map(|r| r.record_type()), Some(RecordType::SOA));
    assert!(
        records
            .iter()
            .any(|r| r.name() == &name("app.shop.example.") && r.data().to_string() == "192.0.2.10")
    );
    assert!(
        !records.iter().any(|r| r.data().to_string() == "198.51.100.10"),
        "only the active failover member"
    );
    let mut over_udp = allowed.clone();
    over_udp.transport = Transport::Udp;
    let refused_over_udp = ask(&over_udp, &HealthView::default());
    assert_eq!(refused_over_udp.response_code(), ResponseCode::Refused);
    assert!(!refused_over_udp.authoritative(), "a refusal has no AA");
    let mut ixfr_udp = over_udp.clone();
    ixfr_udp.message.queries_mut()[0] = Query::query(name("shop.example."), RecordType::IXFR);
    let ixfr = ask(&ixfr_udp, &HealthView::default());
    assert_eq!(ixfr.answers().len(), 1, "IXFR over UDP: the SOA only");
    let mut not_apex = allowed;
    not_apex.message.queries_mut()[0] = Query::query(name("www.shop.example."), RecordType::AXFR);
    assert_eq!(
        ask(&not_apex, &HealthView::default()).response_code(),
        ResponseCode::NotAuth
    );
}

/// A NOTIFY to this server, the primary: answered as BIND 9.18 answers one (checked against
/// `named` serving the same zones as primary).
#[test]
fn a_notify_received_is_answered_as_bind_does_for_a_zone_it_is_primary_for() {
    let notify = |qname: &str, qtype: RecordType| {
        let mut notify = request(qname, qtype);
        notify.message.set_op_code(OpCode::Notify).set_authoritative(true);
        ask(&notify, &HealthView::default())
    };
    let apex = notify("SHOP.example.", RecordType::SOA);
    assert_eq!(apex.response_code(), ResponseCode::NoError);
    assert!(apex.authoritative());
    assert_eq!(apex.op_code(), OpCode::Notify);
    assert_eq!(apex.queries()[0].name(), &name("SHOP.example."), "the question echoed");
    assert!(apex.answers().is_empty());
    let below = notify("plain.shop.example.", RecordType::SOA);
    assert_eq!(below.response_code(), ResponseCode::NotAuth);
    assert!(!below.authoritative());
    assert_eq!(
        notify("example.org.", RecordType::SOA).response_code(),
        ResponseCode::NotAuth
    );
    assert_eq!(
        notify("shop.example.", RecordType::A).response_code(),
        ResponseCode::FormErr
    );
    let mut none = request("shop.example.", RecordType::SOA);
    none.message.set_op_code(OpCode::Notify).take_queries();
    assert_eq!(
        ask(&none, &HealthView::default()).response_code(),
        ResponseCode::FormErr
    );
}

#[test]
fn odd_queries_get_the_right_rcode() {
    let mut update = request("shop.example.", RecordType::SOA);
    update.message.set_op_code(OpCode::Update);
    assert_eq!(
        ask(&update, &HealthView::default()).response_code(),
        ResponseCode::NotImp
    );
    let mut two = request("shop.example.", RecordType::SOA);
    two.message
        .add_query(Query::query(name("plain.shop.example."), RecordType::A));
    assert_eq!(ask(&two, &HealthView::default()).response_code(), ResponseCode::FormErr);
    let mut none = request("shop.example.", RecordType::SOA);
    none.message.take_queries();
    assert_eq!(
        ask(&none, &HealthView::default()).response_code(),
        ResponseCode::FormErr
    );
    let mut chaos = request("shop.example.", RecordType::TXT);
    let mut q = Query::query(name("shop.example."), RecordType::TXT);
    q.set_query_class(DNSClass::CH);
    chaos.message.queries_mut()[0] = q;
    assert_eq!(
        ask(&chaos, &HealthView::default()).response_code(),
        ResponseCode::Refused
    );
    let mut reply = request("shop.example.", RecordType::SOA);
    reply.message.set_message_type(MessageType::Response);
    assert!(
        answer(&zones(), &HealthView::default(), &reply).messages.is_empty(),
        "responses are dropped"
    );
}

#[test]
fn meta_types_as_questions_get_formerr_or_notimp_as_bind_answers() {
    for (qtype, rcode) in [
        (41, ResponseCode::FormErr),
        (249, ResponseCode::FormErr),
        (250, ResponseCode::FormErr),
        (253, ResponseCode::NotImp),
        (254, ResponseCode::NotImp),
    ] {
        for qname in ["plain.shop.example.", "www.other.example."] {
            let response = query(qname, RecordType::from(qtype));
            assert_eq!(response.response_code(), rcode, "{qname} type {qtype}");
            assert!(!response.authoritative());
            assert!(response.answers().is_empty() && response.name_servers().is_empty());
            assert_eq!(response.queries().len(), 1, "the question is echoed");
        }
    }
}

/// A TSIG record signing a query with id `id` with the key `name` (the MAC is made up).
fn tsig_record(key: &str, id: u16) -> Record {
    use hickory_proto::rr::rdata::NULL;
    let mut rdata = Vec::new();
    rdata.extend_from_slice(b"\x0bhmac-sha256\x00");
    rdata.extend_from_slice(&[0x00, 0x00, 0x6b, 0x13, 0xb3, 0x2b]);
    rdata.extend_from_slice(&77u16.to_be_bytes());
    rdata.extend_from_slice(&32u16.to_be_bytes());
    rdata.extend_from_slice(&[0xa5; 32]);
    rdata.extend_from_slice(&id.to_be_bytes());
    rdata.extend_from_slice(&[0, 0, 0, 0]);
    let mut record = Record::from_rdata(
        name(key),
        0,
        RData::Unknown {
            code: RecordType::TSIG,
            rdata: NULL::with(rdata),
        },
    );
    record.set_dns_class(DNSClass::ANY);
    record
}

/// `request`'s bytes with `tsig` as the message's last record.
fn signed(request: &Request, tsig: Record) -> Vec<u8> {
    let mut parts = request.message.clone().into_parts();
    parts.sig0.push(tsig);
    Message::from(parts).to_vec().expect("encodes")
}

fn handle(packet: &[u8]) -> Message {
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let response = handle_packet(
        &zones(),
        &HealthView::default(),
        packet,
        Transport::Udp,
        client,
        0,
        1_700_000_000,
        &Default::default(),
    )
    .expect("answered");
    Message::from_vec(&response.wire[0]).expect("parses")
}

#[test]
fn a_query_signed_with_a_key_we_do_not_have_gets_notauth_badkey_unsigned() {
    for edns in [false, true] {
        let mut plain = request("plain.shop.example.", RecordType::A);
        if edns {
            plain = with_edns(plain, 1232);
        }
        let response = handle(&signed(&plain, tsig_record("unknown-key.", 4242)));
        assert_eq!(response.response_code(), ResponseCode::NotAuth);
        assert!(!response.authoritative());
        assert!(response.answers().is_empty());
        assert_eq!(response.queries().len(), 1);
        assert_eq!(
            response.extensions().is_some(),
            edns,
            "OPT echoed when the query had one"
        );
        let tsig = response.additionals().last().expect("a TSIG record");
        assert_eq!(tsig.record_type(), RecordType::TSIG);
        assert_eq!(tsig.name(), &name("unknown-key."));
        assert_eq!(tsig.dns_class(), DNSClass::ANY);
        // As Knot sends it: the query's algorithm and time, fudge 300, no MAC, the original id,
        // error BADKEY (17), no other data.
        let mut expected = b"\x0bhmac-sha256\x00".to_vec();
        expected.extend_from_slice(&[
            0x00, 0x00, 0x6b, 0x13, 0xb3, 0x2b, 0x01, 0x2c, 0, 0, 0x10, 0x92, 0, 17, 0, 0,
        ]);
        assert_eq!(tsig.data().to_bytes().expect("encodes"), expected);
    }
    // A TSIG record too short to be one: FORMERR.
    let mut broken = tsig_record("unknown-key.", 1);
    broken.set_data(RData::Unknown {
        code: RecordType::TSIG,
        rdata: hickory_proto::rr::rdata::NULL::with(vec![0, 1, 2]),
    });
    let response = handle(&signed(&request("plain.shop.example.", RecordType::A), broken));
    assert_eq!(response.response_code(), ResponseCode::FormErr);
}

#[test]
fn a_tsig_record_anywhere_but_last_or_twice_is_formerr() {
    let plain = request("plain.shop.example.", RecordType::A);
    let tsig = || tsig_record("unknown-key.", 4242);
    // Before the OPT record.
    let mut before_opt = with_edns(plain.clone(), 1232).message;
    before_opt.add_additional(tsig());
    // Before another record.
    let mut before_other = plain.message.clone();
    before_other.add_additional(tsig());
    before_other.add_additional(Record::from_rdata(
        name("x.shop.example."),
        60,
        RData::A("192.0.2.1".parse().expect("address")),
    ));
    // Twice.
    let mut twice = plain.message.clone();
    twice.add_additional(tsig());
    twice.add_additional(tsig());
    // In the answer section.
    let mut in_answers = plain.message.clone();
    in_answers.add_answer(tsig());
    for (what, message) in [
        ("before the OPT", before_opt),
        ("before another record", before_other),
        ("twice", twice),
        ("in the answer section", in_answers),
    ] {
        let response = handle(&message.to_vec().expect("encodes"));
        assert_eq!(response.response_code(), ResponseCode::FormErr, "{what}");
        assert!(!response.authoritative(), "{what}");
        assert_eq!(response.queries().len(), 1, "{what}: the question is echoed");
        assert!(response.additionals().is_empty(), "{what}: no TSIG back");
        // The same message, answered directly (not read from bytes), is FORMERR too, but for
        // the order against the OPT, which only the bytes show.
        if what != "before the OPT" {
            let direct = answer(
                &zones(),
                &HealthView::default(),
                &Request {
                    message,
                    ..plain.clone()
                },
            );
            assert_eq!(direct.rcode, ResponseCode::FormErr, "{what}");
        }
    }
}

#[test]
fn bytes_after_the_query_are_formerr_with_its_question_and_opt() {
    for edns in [false, true] {
        let mut plain = request("plain.shop.example.", RecordType::A);
        if edns {
            plain = with_edns(plain, 1232);
        }
        let mut packet = plain.message.to_vec().expect("encodes");
        packet.extend_from_slice(&[0, 1, 2]);
        let response = handle(&packet);
        assert_eq!(response.response_code(), ResponseCode::FormErr, "edns {edns}");
        assert!(!response.authoritative());
        assert!(response.answers().is_empty());
        assert_eq!(response.queries()[0].name(), &name("plain.shop.example."));
        assert_eq!(
            response.extensions().is_some(),
            edns,
            "OPT echoed when the query had one"
        );
    }
}

#[test]
fn formerr_of_a_broken_body_echoes_what_could_be_read() {
    let with_opt = with_edns(request("plain.shop.example.", RecordType::A), 1232);
    let packet = with_opt.message.to_vec().expect("encodes");
    // One more additional record announced than sent: the question and OPT read, then nothing.
    let mut missing = packet.clone();
    missing[11] += 1;
    let response = handle(&missing);
    assert_eq!(response.response_code(), ResponseCode::FormErr);
    assert_eq!(response.id(), 4242);
    assert!(response.recursion_desired());
    assert_eq!(response.queries()[0].name(), &name("plain.shop.example."));
    assert!(
        response.extensions().is_some(),
        "the OPT was read, so ours is sent (RFC 6891)"
    );
    // Two OPT records (RFC 6891 §6.1.1): FORMERR, with an OPT (§7).
    let mut two = packet.clone();
    two[11] += 1;
    two.extend_from_slice(&packet[packet.len() - 11..]);
    let response = handle(&two);
    assert_eq!(response.response_code(), ResponseCode::FormErr);
    assert!(response.extensions().is_some());
    // The OPT record in the answer section: read as broken, no OPT back.
    let mut misplaced = packet.clone();
    misplaced[7] = 1;
    misplaced[11] = 0;
    let response = handle(&misplaced);
    assert_eq!(response.response_code(), ResponseCode::FormErr);
    assert_eq!(response.queries().len(), 1);
    // A broken question: the header's id and flags, nothing else.
    let mut cut = packet.clone();
    cut.truncate(20);
    let response = handle(&cut);
    assert_eq!(response.response_code(), ResponseCode::FormErr);
    assert!(response.queries().is_empty() && response.extensions().is_none());
}

#[test]
fn any_returns_every_set() {
    let response = query("plain.shop.example.", RecordType::ANY);
    assert_eq!(response.answers().len(), 3);
}

#[test]
fn malformed_packets_get_formerr_or_are_dropped() {
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let zones = zones();
    let view = HealthView::default();
    assert!(
        handle_packet(
            &zones,
            &view,
            &[1, 2, 3],
            Transport::Udp,
            client,
            0,
            1_700_000_000,
            &Default::default()
        )
        .is_none()
    );
    // A header claiming one question, and no question.
    let packet = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let response = handle_packet(
        &zones,
        &view,
        &packet,
        Transport::Udp,
        client,
        0,
        1_700_000_000,
        &Default::default(),
    )
    .expect("FORMERR");
    let parsed = Message::from_vec(&response.wire[0]).expect("parses");
    assert_eq!(parsed.id(), 0x1234);
    assert_eq!(parsed.response_code(), ResponseCode::FormErr);
    // The same with the QR bit set: a response, dropped (no reflection loops).
    let reply = [0x12, 0x34, 0x81, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    assert!(
        handle_packet(
            &zones,
            &view,
            &reply,
            Transport::Udp,
            client,
            0,
            1_700_000_000,
            &Default::default()
        )
        .is_none()
    );
}

#[test]
fn answers_are_deterministic() {
    let view = down(&["eu-west-1"], 3);
    for qname in ["api.shop.example.", "pool.shop.example.", "app.shop.example."] {
        let request = request(qname, RecordType::A);
        assert_eq!(
            answer(&zones(), &view, &request).wire,
            answer(&zones(), &view, &request).wire
        );
    }
}

#[test]
fn only_answers_that_depend_on_the_query_bytes_alone_are_cacheable() {
    let zones = zones();
    let view = HealthView::default();
    let cacheable = |qname: &str, qtype| answer(&zones, &view, &request(qname, qtype)).cacheable;
    assert!(cacheable("plain.shop.example.", RecordType::A));
    assert!(
        cacheable("app.shop.example.", RecordType::A),
        "failover depends on the view only"
    );
    assert!(cacheable("nope.shop.example.", RecordType::A));
    assert!(cacheable("other.example.", RecordType::A));
    assert!(
        !cacheable("api.shop.example.", RecordType::A),
        "weighted uses the entropy"
    );
    assert!(
        !cacheable("pool.shop.example.", RecordType::A),
        "multivalue uses the entropy"
    );
    assert!(
        !cacheable("shop.example.", RecordType::IXFR),
        "transfers depend on the client"
    );
    assert!(!cacheable("shop.example.", RecordType::AXFR));
}

#[test]
fn a_cached_answer_is_the_fresh_answer_with_the_query_id() {
    use crate::cache::AnswerCache;
    let zones = zones();
    let view = down(&["us-east-1"], 2);
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut cache = AnswerCache::default();
    for (qname, qtype) in [
        ("plain.shop.example.", RecordType::A),
        ("WWW.shop.example.", RecordType::A),
        ("app.shop.example.", RecordType::A),
        ("shop.example.", RecordType::MX),
        ("nope.shop.example.", RecordType::AAAA),
        ("big.shop.example.", RecordType::TXT),
    ] {
        let first = request(qname, qtype).message.to_vec().expect("encodes");
        let response = handle_packet(
            &zones,
            &view,
            &first,
            Transport::Udp,
            client,
            1,
            1_700_000_000,
            &Default::default(),
        )
        .expect("answered");
        assert!(response.cacheable, "{qname} {qtype}");
        cache.insert(
            &first,
            &response,
            prometheus_client::metrics::counter::Counter::default(),
        );
        let mut again = request(qname, qtype);
        again.message.set_id(999);
        let again = again.message.to_vec().expect("encodes");
        let fresh = handle_packet(
            &zones,
            &view,
            &again,
            Transport::Udp,
            client,
            2,
            1_700_000_000,
            &Default::default(),
        )
        .expect("answered");
        let cached = cache.get(&again).expect("the same question hits the cache");
        assert_eq!(cached.answer_to(&again), &fresh.wire[0][..], "{qname} {qtype}");
        assert_eq!(cached.rcode, fresh.rcode);
        assert_eq!(cached.answers, fresh.messages[0].answers().len());
    }
    // Other flags (here: no RD) are another key.
    let mut other = request("plain.shop.example.", RecordType::A);
    other.message.set_recursion_desired(false);
    assert!(cache.get(&other.message.to_vec().expect("encodes")).is_none());
    // Entropy-dependent answers are never kept.
    let weighted = request("api.shop.example.", RecordType::A)
        .message
        .to_vec()
        .expect("encodes");
    let response = handle_packet(
        &zones,
        &view,
        &weighted,
        Transport::Udp,
        client,
        1,
        1_700_000_000,
        &Default::default(),
    )
    .expect("answered");
    cache.insert(
        &weighted,
        &response,
        prometheus_client::metrics::counter::Counter::default(),
    );
    assert!(cache.get(&weighted).is_none());
}

#[test]
fn the_answer_cache_is_bounded() {
    use crate::cache::{ANSWER_CACHE_ENTRIES_MAX, AnswerCache};
    let zones = zones();
    let view = HealthView::default();
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut cache = AnswerCache::default();
    for i in 0..ANSWER_CACHE_ENTRIES_MAX + 10 {
        let packet = request(&format!("n{i}.shop.example."), RecordType::A)
            .message
            .to_vec()
            .expect("encodes");
        let response = handle_packet(
            &zones,
            &view,
            &packet,
            Transport::Udp,
            client,
            1,
            1_700_000_000,
            &Default::default(),
        )
        .expect("answered");
        cache.insert(
            &packet,
            &response,
            prometheus_client::metrics::counter::Counter::default(),
        );
        assert!(cache.len() <= ANSWER_CACHE_ENTRIES_MAX);
    }
    assert!(!cache.is_empty());
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn check(packet: &[u8], transport: Transport, zones: &Zones, view: &HealthView) {
        let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        if let Some(response) = handle_packet(
            zones,
            view,
            packet,
            transport,
            client,
            1,
            1_700_000_000,
            &Default::default(),
        ) {
            for wire in &response.wire {
                let parsed = Message::from_vec(wire).expect("every response parses");
                assert_eq!(parsed.message_type(), MessageType::Response);
                if transport == Transport::Udp {
                    assert!(wire.len() <= usize::from(UDP_PAYLOAD_BYTES_MAX));
                }
            }
        }
    }

    fn valid_query() -> impl Strategy<Value = Vec<u8>> {
        let names = prop::sample::select(vec![
            "shop.example.",
            "plain.shop.example.",
            "WWW.shop.example.",
            "x.wild.shop.example.",
            "big.shop.example.",
            "app.shop.example.",
            "nope.shop.example.",
            "other.example.",
            "alias.shop.example.",
        ]);
        let types = prop::sample::select(vec![
            1u16, 2, 5, 6, 12, 15, 16, 28, 33, 41, 249, 250, 251, 252, 253, 254, 255, 65000,
        ]);
        (names, types, any::<Option<u16>>(), any::<u16>()).prop_map(|(qname, qtype, edns, id)| {
            let mut message = Message::new();
            message.set_id(id).add_query(Query::query(
                Name::from_ascii(qname).expect("valid"),
                RecordType::from(qtype),
            ));
            if let Some(payload) = edns {
                let mut opt = Edns::new();
                opt.set_max_payload(payload);
                message.set_edns(opt);
            }
            message.to_vec().expect("encodes")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(packet in prop::collection::vec(any::<u8>(), 0..600)) {
            let zones = zones();
            let view = down(&["us-east-1"], 1);
            check(&packet, Transport::Udp, &zones, &view);
            check(&packet, Transport::Tcp, &zones, &view);
        }

        #[test]
        fn mutated_queries_never_panic(
            packet in valid_query(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let zones = zones();
            let view = HealthView::default();
            check(&packet, Transport::Udp, &zones, &view);
            let mut mutated = packet.clone();
            for (index, byte) in flips {
                let i = index.index(mutated.len());
                mutated[i] = byte;
            }
            check(&mutated, Transport::Udp, &zones, &view);
            check(&mutated[..cut.index(mutated.len() + 1)], Transport::Tcp, &zones, &view);
        }

        /// A cacheable answer is the same bytes (but the id) whatever the id, entropy and client.
        #[test]
        fn cacheable_answers_depend_on_the_query_bytes_alone(
            packet in valid_query(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            id in any::<u16>(),
            entropy in any::<u64>(),
        ) {
            let zones = zones();
            let view = down(&["eu-west-1"], 1);
            let mut packet = packet;
            for (index, byte) in flips {
                let i = index.index(packet.len());
                packet[i] = byte;
            }
            let near = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
            let far = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));
            if let Some(first) = handle_packet(&zones, &view, &packet, Transport::Udp, near, 1, 1_700_000_000, &Default::default())
                && first.cacheable
                && packet.len() > 2
            {
                let mut other = packet.clone();
                other[..2].copy_from_slice(&id.to_be_bytes());
                let second = handle_packet(&zones, &view, &other, Transport::Udp, far, entropy, 1_700_000_000, &Default::default()).expect("answered");
                prop_assert!(second.cacheable);
                prop_assert_eq!(first.wire.len(), second.wire.len());
                for (a, b) in first.wire.iter().zip(&second.wire) {
                    prop_assert_eq!(&a[2..], &b[2..]);
                    prop_assert_eq!(&b[..2], &id.to_be_bytes()[..]);
                }
            }
        }
    }
}

const PARENT_AND_CHILD: &str = r#"
[dns]
axfr_allow = ["10.0.0.0/8"]

[[dns.zones]]
origin = "shop.example."
ns = ["ns1"]

[[dns.zones.records]]
name = "ns1"
type = "A"
values = ["192.0.2.53"]

[[dns.zones.records]]
name = "tosub"
type = "CNAME"
values = ["host.sub.shop.example."]

[[dns.zones]]
origin = "sub.shop.example."
ns = ["ns1.shop.example."]

[[dns.zones.records]]
name = "host"
type = "A"
values = ["192.0.2.98"]
"#;

#[test]
fn a_cname_into_a_child_zone_served_here_is_left_to_the_resolver_not_denied() {
    let zones = crate::config::parse(PARENT_AND_CHILD, "test.toml")
        .expect("valid zones")
        .zones;
    let response = answer(
        &zones,
        &HealthView::default(),
        &request("tosub.shop.example.", RecordType::A),
    );
    let parsed = Message::from_vec(&response.wire[0]).expect("parses");
    // Before: NXDOMAIN with the parent's SOA (the target looked up among the parent's names),
    // which resolvers cache for the target (RFC 2308 §2.1).
    assert_eq!(parsed.response_code(), ResponseCode::NoError);
    assert_eq!(rdatas(&parsed), ["host.sub.shop.example."]);
    assert!(parsed.name_servers().is_empty(), "no negative answer");
    let direct = answer(
        &zones,
        &HealthView::default(),
        &request("host.sub.shop.example.", RecordType::A),
    );
    let direct = Message::from_vec(&direct.wire[0]).expect("parses");
    assert_eq!(rdatas(&direct), ["192.0.2.98"]);
}

#[test]
fn any_at_a_cname_owner_answers_the_cname_without_chasing_it() {
    let response = query("www.shop.example.", RecordType::ANY);
    assert_eq!(response.response_code(), ResponseCode::NoError);
    assert_eq!(rdatas(&response), ["alias.shop.example."]);
}

#[test]
fn the_do_bit_is_copied_into_the_response() {
    let mut asked = with_edns(request("plain.shop.example.", RecordType::A), 1232);
    if let Some(edns) = asked.message.extensions_mut() {
        edns.set_dnssec_ok(true);
    }
    let response = ask(&asked, &HealthView::default());
    assert!(response.extensions().as_ref().is_some_and(|e| e.flags().dnssec_ok));
    let plain = ask(
        &with_edns(request("plain.shop.example.", RecordType::A), 1232),
        &HealthView::default(),
    );
    assert!(plain.extensions().as_ref().is_some_and(|e| !e.flags().dnssec_ok));
}

fn soa_serial(message: &Message) -> u32 {
    message
        .answers()
        .iter()
        .chain(message.name_servers())
        .find_map(|r| match r.data() {
            RData::SOA(soa) => Some(soa.serial()),
            _ => None,
        })
        .expect("an SOA")
}

#[test]
fn every_pushed_change_moves_the_soa_serial_and_ixfr_from_it_gets_the_soa_alone() {
    let before = HealthView::default();
    let configured = soa_serial(&ask(&request("shop.example.", RecordType::SOA), &before));
    let changed = down(&["us-east-1"], 3);
    let after = soa_serial(&ask(&request("shop.example.", RecordType::SOA), &changed));
    assert_eq!(after, configured.wrapping_add(1));
    // The negative answers' SOA is the same one.
    assert_eq!(
        soa_serial(&ask(&request("nowhere.shop.example.", RecordType::A), &changed)),
        after
    );
    // A push that changes nothing moves nothing.
    let mut same = changed
        .apply_health(Generation(3), &[("us-east-1".to_string(), Health::Unhealthy)].into())
        .expect("same push");
    count_zone_changes(&zones(), &changed, &mut same);
    assert_eq!(same.zone_changes, changed.zone_changes);
    let mut txt = changed
        .apply_txt(Generation(3), "_active.shop.example.", Some("eu-west-1"))
        .expect("txt");
    count_zone_changes(&zones(), &changed, &mut txt);
    assert_eq!(
        txt.serial(configured, &name("shop.example.")),
        configured.wrapping_add(2)
    );
    // IXFR over TCP from the current serial: the SOA alone (RFC 1995 §2); from an older one the
    // whole zone.
    let ixfr = |serial: u32| {
        let mut asked = request("shop.example.", RecordType::IXFR);
        asked.transport = Transport::Tcp;
        asked.client = "10.1.2.3".parse().expect("ip");
        let soa = Record::from_rdata(
            name("shop.example."),
            0,
            RData::SOA(hickory_proto::rr::rdata::SOA::new(
                name("ns1.shop.example."),
                name("hostmaster.shop.example."),
                serial,
                0,
                0,
                0,
                0,
            )),
        );
        asked.message.add_name_server(soa);
        let response = answer(&zones(), &changed, &asked);
        response
            .wire
            .iter()
            .flat_map(|w| Message::from_vec(w).expect("parses").answers().to_vec())
            .count()
    };
    assert_eq!(ixfr(after), 1);
    assert!(ixfr(configured) > 2, "an older serial gets the zone");
}

/// A parent zone and a child zone served together, the child with a grandchild of its own.
const NESTED: &str = r#"
[dns]
axfr_allow = ["10.0.0.0/8"]

[[dns.zones]]
origin = "example."
ns = ["ns1"]
[dns.zones.soa]
serial = 100
minimum = 30
[[dns.zones.records]]
name = "ns1"
type = "A"
values = ["192.0.2.1"]
[[dns.zones.records]]
name = "www"
type = "A"
values = ["192.0.2.80"]
[[dns.zones.records]]
name = "old.shop"
type = "A"
values = ["192.0.2.99"]

[[dns.zones]]
origin = "shop.example."
ns = ["ns1", "ns2", "ns.elsewhere.net.", "ns1.example."]
ttl = 600
[dns.zones.soa]
serial = 7
[[dns.zones.records]]
name = "ns1"
type = "A"
values = ["192.0.2.53"]
[[dns.zones.records]]
name = "ns1"
type = "AAAA"
values = ["2001:db8::53"]
[[dns.zones.records]]
name = "ns2"
type = "A"
policy = "failover"
[[dns.zones.records.members]]
role = "primary"
values = ["192.0.2.54"]
health = "ns-east"
[[dns.zones.records.members]]
role = "secondary"
values = ["198.51.100.54"]
health = "ns-west"
[[dns.zones.records]]
name = "www"
type = "A"
values = ["192.0.2.10"]

[[dns.zones]]
origin = "eu.shop.example."
ns = ["ns"]
[[dns.zones.records]]
name = "ns"
type = "A"
values = ["198.51.100.9"]
"#;

fn nested() -> Zones {
    crate::config::parse(NESTED, "nested.toml").expect("valid").zones
}

fn ask_nested(request: &Request) -> Message {
    let response = answer(&nested(), &HealthView::default(), request);
    Message::from_vec(&response.wire[0]).expect("parses")
}

fn transferred(zones: &Zones, origin: &str) -> Vec<Record> {
    let mut request = request(origin, RecordType::AXFR);
    request.transport = Transport::Tcp;
    request.client = "10.1.2.3".parse().expect("ip");
    answer(zones, &HealthView::default(), &request)
        .wire
        .iter()
        .flat_map(|w| Message::from_vec(w).expect("parses").answers().to_vec())
        .collect()
}

fn texts(records: &[Record], owner: &str) -> Vec<String> {
    let mut found: Vec<String> = records
        .iter()
        .filter(|r| r.name() == &name(owner))
        .map(|r| format!("{} {} {}", r.ttl(), r.record_type(), r.data()))
        .collect();
    found.sort();
    found
}

#[test]
fn a_parent_transfer_carries_the_delegation_of_each_child_served_here() {
    let zones = nested();
    let parent = transferred(&zones, "example.");
    // The child's apex NS set as the child answers it, with its TTL.
    assert_eq!(
        texts(&parent, "shop.example."),
        [
            "600 NS ns.elsewhere.net.",
            "600 NS ns1.example.",
            "600 NS ns1.shop.example.",
            "600 NS ns2.shop.example."
        ]
    );
    // Glue for the in-bailiwick name servers, static or routed (its member in service); none
    // for names outside the child (the parent's own ns1 is its record anyway).
    assert_eq!(
        texts(&parent, "ns1.shop.example."),
        ["600 A 192.0.2.53", "600 AAAA 2001:db8::53"]
    );
    assert_eq!(texts(&parent, "ns2.shop.example."), ["10 A 192.0.2.54"]);
    assert_eq!(texts(&parent, "ns1.example."), ["300 A 192.0.2.1"]);
    // Below the cut nothing else is the parent's: the child's records are not copied, the
    // parent's own occluded record is left out, and the grandchild is the child's to delegate.
    assert!(texts(&parent, "www.shop.example.").is_empty());
    assert!(texts(&parent, "old.shop.example.").is_empty());
    assert!(texts(&parent, "eu.shop.example.").is_empty());
    assert_eq!(texts(&parent, "www.example."), ["300 A 192.0.2.80"]);
    let child = transferred(&zones, "shop.example.");
    assert_eq!(texts(&child, "eu.shop.example."), ["300 NS ns.eu.shop.example."]);
    assert_eq!(texts(&child, "ns.eu.shop.example."), ["300 A 198.51.100.9"]);
    assert_eq!(
        texts(&child, "shop.example.").len(),
        4 + 2,
        "its own NS set and SOA, twice"
    );
    // Without the child the parent has no delegation to carry.
    let alone = crate::config::parse(
        &NESTED[..NESTED.find("\n[[dns.zones]]\norigin = \"shop").expect("child")],
        "p.toml",
    )
    .expect("valid")
    .zones;
    let parent_alone = transferred(&alone, "example.");
    assert!(texts(&parent_alone, "shop.example.").is_empty());
    assert_eq!(texts(&parent_alone, "old.shop.example."), ["300 A 192.0.2.99"]);
}

#[test]
fn queries_for_the_child_apex_ns_are_the_child_answer_matching_the_delegation() {
    let response = ask_nested(&request("shop.example.", RecordType::NS));
    assert!(response.authoritative());
    let mut ns: Vec<String> = response
        .answers()
        .iter()
        .map(|r| format!("{} {}", r.ttl(), r.data()))
        .collect();
    ns.sort();
    assert_eq!(
        ns,
        [
            "600 ns.elsewhere.net.",
            "600 ns1.example.",
            "600 ns1.shop.example.",
            "600 ns2.shop.example."
        ]
    );
    let www = ask_nested(&request("www.shop.example.", RecordType::A));
    assert_eq!(rdatas(&www), ["192.0.2.10"], "most specific zone answers");
}

#[test]
fn ds_at_a_child_apex_is_answered_by_the_parent_when_it_is_served_here() {
    let soa_of = |message: &Message| match message.name_servers() {
        [soa] => match soa.data() {
            RData::SOA(data) => (soa.name().to_ascii(), data.serial(), soa.ttl()),
            other => panic!("{other:?}"),
        },
        other => panic!("one SOA in the authority section: {other:?}"),
    };
    let child_apex = ask_nested(&request("shop.example.", RecordType::DS));
    assert_eq!(child_apex.response_code(), ResponseCode::NoError);
    assert!(child_apex.authoritative() && child_apex.answers().is_empty());
    assert_eq!(
        soa_of(&child_apex),
        ("example.".to_string(), 100, 30),
        "the parent's SOA"
    );
    let grandchild = ask_nested(&request("EU.shop.example.", RecordType::DS));
    assert_eq!(soa_of(&grandchild).0, "shop.example.", "its parent is the child zone");
    // Below an apex, or for the topmost zone, the zone itself answers.
    let below = ask_nested(&request("www.shop.example.", RecordType::DS));
    assert_eq!(soa_of(&below).0, "shop.example.");
    let top = ask_nested(&request("example.", RecordType::DS));
    assert_eq!(soa_of(&top).0, "example.");
    // Without the parent here, the child answers (as BIND does).
    let alone = ask(&request("shop.example.", RecordType::DS), &HealthView::default());
    assert_eq!(alone.response_code(), ResponseCode::NoError);
    assert!(alone.answers().is_empty());
    assert!(matches!(alone.name_servers()[0].data(), RData::SOA(_)));
    assert_eq!(alone.name_servers()[0].name(), &name("shop.example."));
}

fn soa_of_zone(zones: &Zones, view: &HealthView, origin: &str) -> u32 {
    soa_serial(&{
        let response = answer(zones, view, &request(origin, RecordType::SOA));
        Message::from_vec(&response.wire[0]).expect("parses")
    })
}

#[test]
fn a_routed_name_server_is_glue_and_a_flip_moves_only_the_serials_of_the_zones_it_changes() {
    let zones = nested();
    let before = HealthView::default();
    let serials = |view: &HealthView| {
        ["example.", "shop.example.", "eu.shop.example."].map(|origin| soa_of_zone(&zones, view, origin))
    };
    let configured = serials(&before);
    assert_eq!(configured[..2], [100, 7]);
    // ns2.shop.example. fails over: the child's record and the parent's glue of it change; the
    // grandchild's answers do not.
    let mut after = before
        .apply_health(Generation(1), &[("ns-east".to_string(), Health::Unhealthy)].into())
        .expect("push");
    count_zone_changes(&zones, &before, &mut after);
    assert_eq!(serials(&after), [configured[0] + 1, configured[1] + 1, configured[2]]);
    let parent = {
        let mut asked = request("example.", RecordType::AXFR);
        asked.transport = Transport::Tcp;
        asked.client = "10.1.2.3".parse().expect("ip");
        answer(&zones, &after, &asked)
            .wire
            .iter()
            .flat_map(|w| Message::from_vec(w).expect("parses").answers().to_vec())
            .collect::<Vec<Record>>()
    };
    assert_eq!(texts(&parent, "ns2.shop.example."), ["10 A 198.51.100.54"]);
    // The child's NS answer carries the routed address too (in its additional section).
    let ns = answer(&zones, &after, &request("shop.example.", RecordType::NS));
    let ns = Message::from_vec(&ns.wire[0]).expect("parses");
    let glue: Vec<String> = ns
        .additionals()
        .iter()
        .filter(|r| r.name() == &name("ns2.shop.example."))
        .map(|r| r.data().to_string())
        .collect();
    assert_eq!(glue, ["198.51.100.54"]);
    // A push about a target no record names changes no zone; neither does the same push again.
    let mut unrelated = after
        .apply_health(Generation(2), &[("elsewhere".to_string(), Health::Unhealthy)].into())
        .expect("push");
    count_zone_changes(&zones, &after, &mut unrelated);
    assert_eq!(serials(&unrelated), serials(&after));
    // A TXT pushed into the grandchild moves the grandchild alone.
    let mut txt = unrelated
        .apply_txt(Generation(2), "_active.eu.shop.example.", Some("eu-west-1"))
        .expect("push");
    count_zone_changes(&zones, &unrelated, &mut txt);
    assert_eq!(serials(&txt), [configured[0] + 1, configured[1] + 1, configured[2] + 1]);
    // A view saved by an earlier version (one count for every zone) keeps every serial.
    let saved: HealthView =
        serde_json::from_str(r#"{"generation": 4, "targets": {}, "txt": {}, "changes": 3}"#).expect("an old view");
    assert_eq!(serials(&saved), configured.map(|serial| serial + 3));
}
