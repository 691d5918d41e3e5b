//! TSIG on the answering path (RFC 8945): zone transfers that need a key, the NOTAUTH answers
//! with their TSIG errors, and answers signed message by message.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use common::tsig::{self, Key, ResponseVerifier, VerifyError};
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use proptest::prelude::*;

use super::*;
use crate::view::HealthView;

const SECRET: &str = "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=";
const OTHER_SECRET: &str = "c3dpdGNoeWFyZC1vdGhlci1rZXktc2VjcmV0LTMyYg==";
const NOW: u64 = 1_700_000_000;
/// Records in the keyed zone: enough for a transfer of several messages.
const HOSTS: usize = 2_000;

fn client() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77))
}

fn xfr_key() -> Key {
    Key::new("xfr-key", SECRET).expect("key")
}

fn other_key() -> Key {
    Key::new("other-key", OTHER_SECRET).expect("key")
}

/// The config of a zone whose transfers need `xfr-key` (no address list: the key alone
/// admits, as BIND's `allow-transfer { key "xfr-key"; }`), with `other-key` held too.
fn config_text() -> String {
    let mut text = String::from(
        "[dns]\ntransfer_key = \"xfr-key\"\n\n[[dns.tsig_keys]]\nkey = { file = \"xfr.key\" }\n\n[[dns.tsig_keys]]\nkey_name = \"other-key\"\nkey = { file = \"other.key\" }\n\n[[dns.zones]]\norigin = \"shop.example.\"\nns = [\"ns1\"]\n",
    );
    text.push_str("[[dns.zones.records]]\nname = \"big\"\ntype = \"TXT\"\nvalues = [\"");
    text.push_str(&"x".repeat(200));
    text.push_str("\", \"");
    text.push_str(&"y".repeat(200));
    text.push_str("\"]\n");
    for i in 0..HOSTS {
        text.push_str(&format!(
            "[[dns.zones.records]]\nname = \"h{i}\"\ntype = \"A\"\nvalues = [\"198.51.100.{}\"]\n",
            i % 250
        ));
    }
    text
}

fn write_keys(folder: &Path) {
    std::fs::write(
        folder.join("xfr.key"),
        format!("key \"xfr-key\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{SECRET}\";\n}};\n"),
    )
    .expect("write key");
    std::fs::write(folder.join("other.key"), format!("{OTHER_SECRET}\n")).expect("write key");
}

fn keyed_zones() -> Zones {
    let folder = tempfile::tempdir().expect("temp dir");
    write_keys(folder.path());
    let file = folder.path().join("deploy.toml");
    crate::config::parse(&config_text(), &file.display().to_string())
        .expect("valid")
        .zones
}

fn query(qname: &str, qtype: RecordType, id: u16, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .add_query(Query::query(Name::from_ascii(qname).expect("name"), qtype));
    if let Some(payload) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(payload);
        message.set_edns(opt);
    }
    message.to_vec().expect("encodes")
}

fn ask(zones: &Zones, packet: &[u8], transport: Transport, now: u64) -> Response {
    handle_packet(
        zones,
        &HealthView::default(),
        packet,
        transport,
        client(),
        1,
        now,
        &Default::default(),
    )
    .expect("answered")
}

/// As [`ask`], from `from`, with the server's replay record kept across calls.
fn ask_from(
    zones: &Zones,
    packet: &[u8],
    transport: Transport,
    now: u64,
    replays: &Mutex<tsig::Replays>,
    from: IpAddr,
) -> Response {
    handle_packet(zones, &HealthView::default(), packet, transport, from, 1, now, replays).expect("answered")
}

/// As [`ask_from`], from [`client`].
fn ask_again(zones: &Zones, packet: &[u8], transport: Transport, now: u64, replays: &Mutex<tsig::Replays>) -> Response {
    ask_from(zones, packet, transport, now, replays, client())
}

fn rcode(wire: &[u8]) -> ResponseCode {
    Message::from_vec(wire).expect("parses").response_code()
}

/// Verifies every message of a signed answer in order; the messages without their TSIG.
fn verified(response: &Response, key: &Key, request_mac: &[u8], now: u64) -> Vec<Message> {
    let mut verifier = ResponseVerifier::new(key, request_mac);
    response
        .wire
        .iter()
        .enumerate()
        .map(|(index, wire)| {
            let stripped = verifier
                .verify_next(wire, now)
                .unwrap_or_else(|e| panic!("message {index} verifies: {e:?}"));
            Message::from_vec(&stripped).expect("parses")
        })
        .collect()
}

#[test]
fn a_keyed_zone_is_transferred_only_with_its_key_and_each_message_signs_over_the_previous() {
    let zones = keyed_zones();
    // Unsigned: refused, as BIND refuses a transfer its allow-transfer does not match.
    let unsigned = ask(
        &zones,
        &query("shop.example.", RecordType::AXFR, 1, None),
        Transport::Tcp,
        NOW,
    );
    assert_eq!(unsigned.wire.len(), 1);
    assert_eq!(rcode(&unsigned.wire[0]), ResponseCode::Refused);
    assert_eq!(
        tsig::read_record(&unsigned.wire[0]),
        Ok(None),
        "no TSIG on an unsigned answer"
    );
    // Signed with the zone's key: the whole zone, every message signed.
    let request = tsig::sign(&query("shop.example.", RecordType::AXFR, 2, None), &xfr_key(), NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Tcp, NOW + 10);
    assert!(
        response.wire.len() >= 2,
        "a transfer of several messages: {}",
        response.wire.len()
    );
    assert!(!response.cacheable);
    let messages = verified(&response, &xfr_key(), &request.mac, NOW + 10);
    let records: Vec<_> = messages.iter().flat_map(|m| m.answers().iter()).collect();
    assert_eq!(records.first().map(|r| r.record_type()), Some(RecordType::SOA));
    assert_eq!(records.last().map(|r| r.record_type()), Some(RecordType::SOA));
    let hosts = records.iter().filter(|r| r.record_type() == RecordType::A).count();
    assert_eq!(hosts, HOSTS);
    assert!(messages.iter().all(|m| m.response_code() == ResponseCode::NoError));
    // An IXFR signed with the key too.
    let request = tsig::sign(&query("shop.example.", RecordType::IXFR, 3, None), &xfr_key(), NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Tcp, NOW);
    assert!(verified(&response, &xfr_key(), &request.mac, NOW).len() >= 2);
    // Signed with another key held here: verified, but not the zone's key — refused, and the
    // refusal is signed with the request's key.
    let request = tsig::sign(&query("shop.example.", RecordType::AXFR, 4, None), &other_key(), NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Tcp, NOW);
    let messages = verified(&response, &other_key(), &request.mac, NOW);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].response_code(), ResponseCode::Refused);
}

#[test]
fn the_axfr_allow_list_still_applies_next_to_a_transfer_key_when_it_lists_addresses() {
    let folder = tempfile::tempdir().expect("temp dir");
    write_keys(folder.path());
    let text = config_text().replacen("[dns]\n", "[dns]\naxfr_allow = [\"10.0.0.0/8\"]\n", 1);
    let zones = crate::config::parse(&text, &folder.path().join("d.toml").display().to_string())
        .expect("valid")
        .zones;
    let request = tsig::sign(&query("shop.example.", RecordType::AXFR, 2, None), &xfr_key(), NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Tcp, NOW);
    let messages = verified(&response, &xfr_key(), &request.mac, NOW);
    assert_eq!(
        messages[0].response_code(),
        ResponseCode::Refused,
        "192.0.2.77 is not listed"
    );
}

/// The TSIG record of an answer, read.
fn tsig_of(wire: &[u8]) -> tsig::Record {
    tsig::read_record(wire).expect("readable").expect("a TSIG record")
}

#[test]
fn bad_keys_macs_and_times_get_notauth_with_the_tsig_error_rfc_8945_asks_for() {
    let zones = keyed_zones();
    let axfr = query("shop.example.", RecordType::AXFR, 5, None);
    // A key not held: NOTAUTH, BADKEY, unsigned, the request's key name echoed.
    let stranger = Key::new("stranger", SECRET).expect("key");
    let request = tsig::sign(&axfr, &stranger, NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Tcp, NOW);
    assert_eq!(response.wire.len(), 1);
    assert_eq!(rcode(&response.wire[0]), ResponseCode::NotAuth);
    let record = tsig_of(&response.wire[0]);
    assert_eq!((record.error, record.mac.len()), (tsig::BADKEY, 0));
    assert_eq!(record.key_name(), "stranger");
    assert_eq!(record.original_id, 5);
    // The zone's key name with another secret: BADSIG, unsigned.
    let forged = Key::new("xfr-key", OTHER_SECRET).expect("key");
    let request = tsig::sign(&axfr, &forged, NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Tcp, NOW);
    assert_eq!(rcode(&response.wire[0]), ResponseCode::NotAuth);
    let record = tsig_of(&response.wire[0]);
    assert_eq!((record.error, record.mac.len()), (tsig::BADSIG, 0));
    assert!(
        Message::from_vec(&response.wire[0])
            .expect("parses")
            .answers()
            .is_empty()
    );
    // A good request altered on the way (the question's name): BADSIG.
    let mut altered = tsig::sign(&axfr, &xfr_key(), NOW).expect("sign").wire;
    altered[13] = b'S';
    let response = ask(&zones, &altered, Transport::Tcp, NOW);
    assert_eq!(rcode(&response.wire[0]), ResponseCode::NotAuth);
    assert_eq!(tsig_of(&response.wire[0]).error, tsig::BADSIG);
    // Signed 301 s before the server's clock (fudge 300): BADTIME, signed over the request's
    // MAC, the request's time echoed, the server's time in Other Data.
    let request = tsig::sign(&axfr, &xfr_key(), NOW - 301).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Tcp, NOW);
    assert_eq!(response.wire.len(), 1);
    assert_eq!(rcode(&response.wire[0]), ResponseCode::NotAuth);
    let record = tsig_of(&response.wire[0]);
    assert_eq!(record.error, tsig::BADTIME);
    assert_eq!(record.time_signed, NOW - 301);
    assert_eq!(record.other, NOW.to_be_bytes()[2..].to_vec());
    assert_eq!(
        tsig::verify(&response.wire[0], &request.mac, &xfr_key(), NOW - 301),
        Err(VerifyError::Server {
            error: tsig::BADTIME,
            rcode: 9,
            signed: true
        }),
        "the client can verify the BADTIME answer"
    );
    // 300 s off is within the fudge: transferred.
    let response = ask(&zones, &request.wire, Transport::Tcp, NOW - 1);
    assert!(verified(&response, &xfr_key(), &request.mac, NOW - 1).len() >= 2);
    // A TSIG record that cannot be read (cut MAC): FORMERR.
    let mut cut = tsig::sign(&axfr, &xfr_key(), NOW).expect("sign").wire;
    let length = cut.len();
    cut.truncate(length - 20);
    let response = ask(&zones, &cut, Transport::Tcp, NOW);
    assert_eq!(rcode(&response.wire[0]), ResponseCode::FormErr);
}

#[test]
fn a_message_tampered_with_or_lost_in_the_middle_of_a_signed_transfer_breaks_verification() {
    let zones = keyed_zones();
    let request = tsig::sign(&query("shop.example.", RecordType::AXFR, 6, None), &xfr_key(), NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Tcp, NOW);
    assert!(
        response.wire.len() >= 3,
        "three messages at least: {}",
        response.wire.len()
    );
    let key = xfr_key();
    // A record's address changed in the second message.
    let mut verifier = ResponseVerifier::new(&key, &request.mac);
    verifier.verify_next(&response.wire[0], NOW).expect("first");
    let mut tampered = response.wire[1].clone();
    let start = tsig_of(&tampered).start;
    tampered[start - 1] ^= 0x01;
    assert_eq!(verifier.verify_next(&tampered, NOW), Err(VerifyError::BadMac));
    // The second message dropped: the third does not verify after the first.
    let mut verifier = ResponseVerifier::new(&key, &request.mac);
    verifier.verify_next(&response.wire[0], NOW).expect("first");
    assert_eq!(verifier.verify_next(&response.wire[2], NOW), Err(VerifyError::BadMac));
    // The second message's TSIG stripped (as by a middlebox): unsigned.
    let mut verifier = ResponseVerifier::new(&key, &request.mac);
    verifier.verify_next(&response.wire[0], NOW).expect("first");
    let (stripped, _) = tsig::testing::unsigned_request(&response.wire[1]).expect("signed");
    assert_eq!(verifier.verify_next(&stripped, NOW), Err(VerifyError::Unsigned));
    // Messages swapped.
    let mut verifier = ResponseVerifier::new(&key, &request.mac);
    assert_eq!(verifier.verify_next(&response.wire[1], NOW), Err(VerifyError::BadMac));
}

#[test]
fn a_signed_udp_query_gets_a_signed_answer_that_still_fits_the_clients_size() {
    let zones = keyed_zones();
    let request = tsig::sign(&query("h7.shop.example.", RecordType::A, 7, None), &xfr_key(), NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Udp, NOW);
    let messages = verified(&response, &xfr_key(), &request.mac, NOW);
    assert!(matches!(messages[0].answers()[0].data(), RData::A(a) if a.0 == Ipv4Addr::new(198, 51, 100, 7)));
    assert!(!response.cacheable, "a signed answer carries a time: never reused");
    // Without EDNS (512 bytes): the two 200-byte strings fit unsigned, not with a TSIG, so the
    // signed answer is truncated and still verifies.
    let unsigned = ask(
        &zones,
        &query("big.shop.example.", RecordType::TXT, 8, None),
        Transport::Udp,
        NOW,
    );
    assert!(!Message::from_vec(&unsigned.wire[0]).expect("parses").truncated());
    let request = tsig::sign(&query("big.shop.example.", RecordType::TXT, 8, None), &xfr_key(), NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Udp, NOW);
    assert!(response.wire[0].len() <= usize::from(UDP_PAYLOAD_BYTES_MIN));
    let messages = verified(&response, &xfr_key(), &request.mac, NOW);
    assert!(messages[0].truncated());
    // A signed transfer over UDP is refused (signed), as an unsigned one is.
    let request = tsig::sign(&query("shop.example.", RecordType::AXFR, 9, None), &xfr_key(), NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Udp, NOW);
    assert_eq!(
        verified(&response, &xfr_key(), &request.mac, NOW)[0].response_code(),
        ResponseCode::Refused
    );
}

#[test]
fn transfer_key_and_tsig_keys_are_checked_with_their_line() {
    let folder = tempfile::tempdir().expect("temp dir");
    write_keys(folder.path());
    let file = folder.path().join("d.toml").display().to_string();
    let zone = "[[dns.zones]]\norigin = \"shop.example.\"\nns = [\"ns1\"]\n";
    let error =
        crate::config::parse(&format!("[dns]\ntransfer_key = \"nope\"\n{zone}"), &file).expect_err("no such key");
    assert_eq!(error.line, 2, "{error}");
    assert!(
        error.message.contains("'nope'") && error.message.contains("[[dns.tsig_keys]]"),
        "{error}"
    );
    let inline = format!("[dns]\n[[dns.tsig_keys]]\nkey_name = \"k\"\nkey = \"{SECRET}\"\n{zone}");
    let error = crate::config::parse(&inline, &file).expect_err("inline");
    assert_eq!(error.line, 4, "{error}");
    assert!(
        error.message.contains("inline") && !error.message.contains(SECRET),
        "{error}"
    );
    let missing = format!("[dns]\n[[dns.tsig_keys]]\nkey = {{ file = \"absent.key\" }}\n{zone}");
    let error = crate::config::parse(&missing, &file).expect_err("missing");
    assert!(error.message.contains("absent.key"), "{error}");
    let bare = format!("[dns]\n[[dns.tsig_keys]]\nkey = {{ file = \"other.key\" }}\n{zone}");
    let error = crate::config::parse(&bare, &file).expect_err("a bare secret needs its name");
    assert!(error.message.contains("key_name"), "{error}");
    let twice = format!(
        "[dns]\n[[dns.tsig_keys]]\nkey = {{ file = \"xfr.key\" }}\n[[dns.tsig_keys]]\nkey_name = \"XFR-key\"\nkey = {{ file = \"other.key\" }}\n{zone}"
    );
    assert!(
        crate::config::parse(&twice, &file)
            .expect_err("twice")
            .message
            .contains("twice")
    );
    // A zone's own notify_key replaces the server-wide one; names match case-insensitively.
    let text = format!(
        "[dns]\nnotify_key = \"xfr-key\"\n[[dns.tsig_keys]]\nkey = {{ file = \"xfr.key\" }}\n[[dns.tsig_keys]]\nkey_name = \"other-key\"\nkey = {{ file = \"other.key\" }}\n{zone}notify_key = \"OTHER-KEY\"\ntransfer_key = \"xfr-key.\"\n"
    );
    let config = crate::config::parse(&text, &file).expect("valid");
    let zone = config.zones.iter().next().expect("zone");
    assert_eq!(zone.notify_key.as_ref().map(|k| k.name.as_str()), Some("other-key"));
    assert_eq!(zone.transfer_key.as_deref(), Some("xfr-key"));
}

#[test]
fn keys_of_every_rfc_8945_algorithm_sign_transfers_and_another_algorithm_is_badkey() {
    let folder = tempfile::tempdir().expect("temp dir");
    // A tsig-keygen -a hmac-sha512 file, and a bare secret whose algorithm the config names.
    std::fs::write(
        folder.path().join("xfr.key"),
        format!("key \"xfr-key\" {{\n\talgorithm hmac-sha512;\n\tsecret \"{SECRET}\";\n}};\n"),
    )
    .expect("write key");
    std::fs::write(folder.path().join("other.key"), format!("{OTHER_SECRET}\n")).expect("write key");
    let file = folder.path().join("deploy.toml").display().to_string();
    let text = config_text().replacen(
        "key = { file = \"other.key\" }\n",
        "key = { file = \"other.key\" }\nalgorithm = \"hmac-sha1\"\n",
        1,
    );
    let zones = crate::config::parse(&text, &file).expect("valid").zones;
    let sha512 = Key::with_algorithm("xfr-key", SECRET, tsig::Algorithm::HmacSha512).expect("key");
    let request = tsig::sign(&query("shop.example.", RecordType::AXFR, 5, None), &sha512, NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Tcp, NOW);
    assert!(response.wire.len() >= 2, "a transfer of several messages");
    let messages = verified(&response, &sha512, &request.mac, NOW);
    assert_eq!(messages[0].response_code(), ResponseCode::NoError);
    assert!(
        messages.iter().map(|m| m.answers().len()).sum::<usize>() > HOSTS,
        "the whole zone"
    );
    // The key's name and secret with hmac-sha256: not the key held (BADKEY), no zone.
    let sha256 = Key::new("xfr-key", SECRET).expect("key");
    let request = tsig::sign(&query("shop.example.", RecordType::AXFR, 6, None), &sha256, NOW).expect("sign");
    let refused = ask(&zones, &request.wire, Transport::Tcp, NOW);
    assert_eq!(&*refused.name_label, LABEL_TSIG_BADKEY);
    assert_eq!(
        tsig::verify(&refused.wire[0], &request.mac, &sha256, NOW),
        Err(VerifyError::Server {
            error: tsig::BADKEY,
            rcode: ResponseCode::NotAuth.low(),
            signed: false
        })
    );
    // The bare secret held as hmac-sha1 answers a query signed so, signed so.
    let sha1 = Key::with_algorithm("other-key", OTHER_SECRET, tsig::Algorithm::HmacSha1).expect("key");
    let request = tsig::sign(&query("h1.shop.example.", RecordType::A, 7, Some(1232)), &sha1, NOW).expect("sign");
    let answer = ask(&zones, &request.wire, Transport::Udp, NOW);
    assert_eq!(verified(&answer, &sha1, &request.mac, NOW)[0].answers().len(), 1);
    // Refused algorithms and contradictions name the line of `algorithm` and the fix.
    let zone = "[[dns.zones]]\norigin = \"shop.example.\"\nns = [\"ns1\"]\n";
    let md5 = format!(
        "[dns]\n[[dns.tsig_keys]]\nkey_name = \"k\"\nkey = {{ file = \"other.key\" }}\nalgorithm = \"hmac-md5\"\n{zone}"
    );
    let error = crate::config::parse(&md5, &file).expect_err("md5");
    assert_eq!(error.line, 5, "{error}");
    assert!(
        error.message.contains("MD5 is broken") && error.message.contains("tsig-keygen"),
        "{error}"
    );
    let mismatch =
        format!("[dns]\n[[dns.tsig_keys]]\nkey = {{ file = \"xfr.key\" }}\nalgorithm = \"hmac-sha256\"\n{zone}");
    let error = crate::config::parse(&mismatch, &file).expect_err("mismatch");
    assert_eq!(error.line, 4, "{error}");
    assert!(error.message.contains("hmac-sha512"), "{error}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Signed requests with bytes changed anywhere: never a panic; every answer parses, fits UDP
    /// and carries a TSIG record unless it is a FORMERR.
    #[test]
    fn mutated_signed_requests_never_panic(
        qtype in prop::sample::select(vec![RecordType::AXFR, RecordType::IXFR, RecordType::A, RecordType::SOA]),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let zones = zones_once();
        let request = tsig::sign(&query("shop.example.", qtype, 10, Some(1232)), &xfr_key(), NOW).expect("sign");
        let mut bytes = request.wire.clone();
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        for transport in [Transport::Udp, Transport::Tcp] {
            let Some(response) = handle_packet(zones, &HealthView::default(), &bytes, transport, client(), 1, NOW, &Default::default()) else {
                continue;
            };
            for wire in &response.wire {
                prop_assert!(Message::from_vec(wire).is_ok());
                if transport == Transport::Udp {
                    prop_assert!(wire.len() <= usize::from(UDP_PAYLOAD_BYTES_MAX));
                }
            }
        }
    }
}

/// The keyed zones, built once for the property test (a zone of 2,000 records).
fn zones_once() -> &'static Zones {
    static ZONES: std::sync::OnceLock<Zones> = std::sync::OnceLock::new();
    ZONES.get_or_init(keyed_zones)
}

#[test]
fn a_replayed_transfer_request_or_notify_gets_a_signed_badtime_and_requests_in_one_second_pass() {
    let zones = keyed_zones();
    let replays = Mutex::new(tsig::Replays::default());
    // A secondary's SOA query over UDP, then its IXFR over TCP, in the same second: both served.
    let soa = tsig::sign(&query("shop.example.", RecordType::SOA, 1, None), &xfr_key(), NOW).expect("sign");
    let response = ask_again(&zones, &soa.wire, Transport::Udp, NOW, &replays);
    assert_eq!(
        verified(&response, &xfr_key(), &soa.mac, NOW)[0].response_code(),
        ResponseCode::NoError
    );
    let axfr = tsig::sign(&query("shop.example.", RecordType::AXFR, 2, None), &xfr_key(), NOW).expect("sign");
    let response = ask_again(&zones, &axfr.wire, Transport::Tcp, NOW, &replays);
    assert!(verified(&response, &xfr_key(), &axfr.mac, NOW).len() >= 2);
    assert_ne!(&*response.name_label, LABEL_TSIG_REPLAYED);
    // The captured transfer request replayed a minute later: NOTAUTH, BADTIME, signed with the
    // key over the request's MAC, and no zone data.
    let replayed = ask_again(&zones, &axfr.wire, Transport::Tcp, NOW + 60, &replays);
    assert_eq!(replayed.wire.len(), 1);
    assert_eq!(rcode(&replayed.wire[0]), ResponseCode::NotAuth);
    assert_eq!(
        tsig::verify(&replayed.wire[0], &axfr.mac, &xfr_key(), NOW + 60),
        Err(VerifyError::Server {
            error: tsig::BADTIME,
            rcode: 9,
            signed: true
        })
    );
    assert_eq!(&*replayed.name_label, LABEL_TSIG_REPLAYED);
    assert!(!replayed.cacheable);
    // After a newer request, the old one is refused for being earlier, over UDP too.
    let newer = tsig::sign(&query("shop.example.", RecordType::SOA, 3, None), &xfr_key(), NOW + 30).expect("sign");
    let response = ask_again(&zones, &newer.wire, Transport::Udp, NOW + 30, &replays);
    verified(&response, &xfr_key(), &newer.mac, NOW + 30);
    let replayed = ask_again(&zones, &soa.wire, Transport::Udp, NOW + 31, &replays);
    assert_eq!(tsig_of(&replayed.wire[0]).error, tsig::BADTIME);
    // A signed NOTIFY to this server, replayed: refused the same.
    let notify = crate::notify::message(zones.iter().next().expect("a zone"), &HealthView::default(), 4)
        .to_vec()
        .expect("encodes");
    let notify = tsig::sign(&notify, &xfr_key(), NOW + 40).expect("sign");
    let first = ask_again(&zones, &notify.wire, Transport::Udp, NOW + 40, &replays);
    verified(&first, &xfr_key(), &notify.mac, NOW + 40);
    // Sent again by its sender within seconds (its answer was lost): answered again.
    let retransmitted = ask_again(&zones, &notify.wire, Transport::Udp, NOW + 42, &replays);
    verified(&retransmitted, &xfr_key(), &notify.mac, NOW + 42);
    // From another address, or later: refused.
    let elsewhere: IpAddr = "203.0.113.66".parse().expect("address");
    let replayed = ask_from(&zones, &notify.wire, Transport::Udp, NOW + 43, &replays, elsewhere);
    assert_eq!(rcode(&replayed.wire[0]), ResponseCode::NotAuth);
    assert_eq!(tsig_of(&replayed.wire[0]).error, tsig::BADTIME);
    let later = NOW + 40 + tsig::REPLAY_RETRANSMIT_WINDOW_S + 1;
    let replayed = ask_again(&zones, &notify.wire, Transport::Udp, later, &replays);
    assert_eq!(tsig_of(&replayed.wire[0]).error, tsig::BADTIME);
}

#[test]
fn a_rate_limited_answer_to_a_signed_query_is_signed_or_not_sent() {
    let zones = keyed_zones();
    let request = tsig::sign(&query("h7.shop.example.", RecordType::A, 7, None), &xfr_key(), NOW).expect("sign");
    let response = ask(&zones, &request.wire, Transport::Udp, NOW);
    let slipped = response.slipped().expect("a signed truncated form");
    let stripped = tsig::verify(&slipped, &request.mac, &xfr_key(), NOW).expect("the client verifies it");
    let message = Message::from_vec(&stripped).expect("parses");
    assert!(message.truncated());
    assert!(message.answers().is_empty());
    assert_eq!(message.id(), 7);
    // Unsigned query: the unsigned truncated form, as before.
    let unsigned = ask(
        &zones,
        &query("h7.shop.example.", RecordType::A, 8, None),
        Transport::Udp,
        NOW,
    );
    let slipped = unsigned.slipped().expect("truncated");
    assert!(tsig::read_record(&slipped).expect("reads").is_none());
    assert!(Message::from_vec(&slipped).expect("parses").truncated());
    // A refused signature (here BADTIME): nothing in its place, never an unsigned TC.
    let stale = tsig::sign(
        &query("h7.shop.example.", RecordType::A, 9, None),
        &xfr_key(),
        NOW - 301,
    )
    .expect("sign");
    let refused = ask(&zones, &stale.wire, Transport::Udp, NOW);
    assert_eq!(tsig_of(&refused.wire[0]).error, tsig::BADTIME);
    assert_eq!(refused.slipped(), None);
}

#[test]
fn tsig_refusals_are_counted_under_their_own_labels_not_malformed() {
    let zones = keyed_zones();
    let axfr = query("shop.example.", RecordType::AXFR, 5, None);
    let stranger = Key::new("stranger", SECRET).expect("key");
    let label = |wire: &[u8]| ask(&zones, wire, Transport::Tcp, NOW).name_label.to_string();
    assert_eq!(
        label(&tsig::sign(&axfr, &stranger, NOW).expect("sign").wire),
        LABEL_TSIG_BADKEY
    );
    let forged = Key::new("xfr-key", OTHER_SECRET).expect("key");
    assert_eq!(
        label(&tsig::sign(&axfr, &forged, NOW).expect("sign").wire),
        LABEL_TSIG_BADSIG
    );
    assert_eq!(
        label(&tsig::sign(&axfr, &xfr_key(), NOW - 301).expect("sign").wire),
        LABEL_TSIG_BADTIME
    );
    // An unreadable TSIG record stays FORMERR under <malformed>.
    let mut cut = tsig::sign(&axfr, &xfr_key(), NOW).expect("sign").wire;
    let length = cut.len();
    cut.truncate(length - 1);
    assert_eq!(label(&cut), LABEL_MALFORMED);
}
