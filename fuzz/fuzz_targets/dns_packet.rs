//! `dns::handle_packet` on arbitrary bytes over UDP and TCP: never panics, every response parses,
//! and UDP responses fit the advertised payload size.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use dns::answer::UDP_PAYLOAD_BYTES_MAX;
use dns::{HealthView, Transport, Zones, handle_packet};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

fn zones() -> &'static Zones {
    static ZONES: OnceLock<Zones> = OnceLock::new();
    ZONES.get_or_init(|| {
        let text = include_str!("../../docs/examples/dns.toml");
        dns::parse(text, "docs/examples/dns.toml").expect("the example config is valid").zones
    })
}

fuzz_target!(|data: &[u8]| {
    let view = HealthView::default();
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for transport in [Transport::Udp, Transport::Tcp] {
        let Some(response) = handle_packet(zones(), &view, data, transport, client, 7, 1_700_000_000) else { continue };
        for wire in &response.wire {
            Message::from_vec(wire).expect("every response parses");
            if transport == Transport::Udp {
                assert!(wire.len() <= usize::from(UDP_PAYLOAD_BYTES_MAX));
            }
        }
    }
});
