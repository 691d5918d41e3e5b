//! NOTIFY (RFC 1996): telling secondaries that a zone changed, so they transfer it at once
//! instead of at their next SOA refresh.
//!
//! [`NotifyQueue`] is sans-IO: given the serial each (zone, secondary) should know of, it says
//! which NOTIFY messages to send and when, and matches the responses. [`notifier`] is the task
//! around it: it wakes when the zones or the health view change, sends over UDP from an
//! ephemeral socket of its own (never the query path's sockets) and reads the responses; after
//! [`NOTIFY_UDP_TRANSMISSIONS_MAX`] unanswered datagrams, or at once after a truncated answer,
//! it sends over TCP (RFC 1996 allows either; BIND does the same), at most
//! [`NOTIFY_TCP_IN_FLIGHT_MAX`] connections at a time, each bounded by [`NOTIFY_TCP_TIMEOUT_MS`].
//! A zone with a `notify_key` signs each NOTIFY with TSIG (RFC 8945) and takes only an answer
//! signed over the MAC of one of its transmissions.
//!
//! Invariants: one pending NOTIFY per (zone, secondary) — a burst of changes is coalesced into
//! one message carrying the newest serial; a NOTIFY is sent at most
//! [`NOTIFY_TRANSMISSIONS_MAX`] times, at growing intervals (RFC 1996 §3.6), until a response
//! with its ID, opcode and question comes from the secondary's address; nothing here blocks a
//! query.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::answer::Transport;
use crate::server::{State, unix_now_s};
use crate::view::HealthView;
use crate::zone::{Zone, Zones, name_key};
use common::rng::Rng;

/// How long a change waits before its NOTIFY goes out, so that a burst of changes (a runbook
/// pushing several targets) sends one NOTIFY with the last serial (BIND's `notify-delay`).
pub const NOTIFY_COALESCE_MS: u64 = 200;
/// Wait for a response before the first retransmission; each following wait doubles.
pub const NOTIFY_RETRY_INITIAL_MS: u64 = 2_000;
/// The longest wait between two transmissions.
pub const NOTIFY_RETRY_MAX_MS: u64 = 16_000;
/// Transmissions of one NOTIFY at most (the first and four retries: with the waits above, a
/// secondary that never answers is given up after 2 + 4 + 8 + 16 + 16 = 46 s).
pub const NOTIFY_TRANSMISSIONS_MAX: u32 = 5;
/// Bytes of a NOTIFY response read at most (a response echoes our small NOTIFY).
pub const NOTIFY_RESPONSE_BYTES_MAX: usize = 4_096;
/// Transmissions over UDP before the rest go over TCP (a secondary or a path that drops UDP,
/// or answers that do not fit a datagram).
pub const NOTIFY_UDP_TRANSMISSIONS_MAX: u32 = 3;
/// The bound on one NOTIFY over TCP: connect, send, read the answer.
pub const NOTIFY_TCP_TIMEOUT_MS: u64 = 5_000;
/// NOTIFY exchanges over TCP open at once; a transmission due while all are busy waits for its
/// next turn, as a lost datagram does.
pub const NOTIFY_TCP_IN_FLIGHT_MAX: usize = 16;

/// The wait after the `transmissions`-th transmission (1-based) before the next one.
pub fn retry_interval_ms(transmissions: u32) -> u64 {
    let doublings = transmissions.saturating_sub(1).min(16);
    NOTIFY_RETRY_INITIAL_MS
        .saturating_mul(1 << doublings)
        .min(NOTIFY_RETRY_MAX_MS)
}

/// One (zone, secondary): the zone's lower-case wire name and the secondary's address.
type Key = (Vec<u8>, SocketAddr);

/// A NOTIFY not yet acknowledged.
#[derive(Debug, Clone)]
struct Pending {
    zone: Name,
    serial: u32,
    id: u16,
    /// Transmissions so far (0: not sent yet).
    transmissions: u32,
    /// When the next transmission is due (or, after the last one, when it is given up).
    due_ms: u64,
    /// A truncated answer came: the next transmissions go over TCP.
    tcp: bool,
    /// The TSIG MACs of the transmissions of this ID (a signed NOTIFY), one per transmission:
    /// an answer must be signed over one of them.
    macs: Vec<Vec<u8>>,
    /// The last unsigned TSIG error answered to this ID (BADKEY, BADSIG): not believed at once,
    /// since anyone who saw the NOTIFY can send one; reported when the NOTIFY is given up.
    refused: Option<String>,
}

/// A NOTIFY given up after its last transmission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GivenUp {
    pub zone: Name,
    pub target: SocketAddr,
    /// `Some`: only unsigned TSIG errors came (the last one's words): reported as rejected.
    /// `None`: no answer at all.
    pub refused: Option<String>,
}

/// A NOTIFY to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub zone: Name,
    pub target: SocketAddr,
    pub serial: u32,
    pub id: u16,
    pub transport: Transport,
}

/// What became of a NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered NOERROR.
    Acknowledged,
    /// Answered with an error rcode (the secondary does not take NOTIFY from us); not retried.
    Rejected(ResponseCode),
    /// No response after [`NOTIFY_TRANSMISSIONS_MAX`] transmissions.
    Failed,
}

/// The NOTIFY messages owed to secondaries. Sans-IO: the caller passes the time and the IDs.
#[derive(Debug, Default)]
pub struct NotifyQueue {
    /// The serial last scheduled per (zone, secondary): a plan with the same one owes nothing.
    scheduled: HashMap<Key, u32>,
    pending: HashMap<Key, Pending>,
}

impl NotifyQueue {
    /// Takes the serial each (zone, secondary) should know of now. A new pair, or one whose
    /// serial moved, gets a NOTIFY after [`NOTIFY_COALESCE_MS`]; a pending one takes the newer
    /// serial (coalesced: still one message) and starts its retries over. Pairs no longer
    /// listed are forgotten.
    pub fn plan(&mut self, wanted: &[(Name, SocketAddr, u32)], now_ms: u64) {
        let mut keep: HashMap<Key, ()> = HashMap::with_capacity(wanted.len());
        for (zone, target, serial) in wanted {
            let key = (name_key(zone), *target);
            keep.insert(key.clone(), ());
            if self.scheduled.get(&key) == Some(serial) {
                continue;
            }
            self.scheduled.insert(key.clone(), *serial);
            let due_ms = now_ms.saturating_add(NOTIFY_COALESCE_MS);
            match self.pending.get_mut(&key) {
                // Not sent yet: it goes out at its time, with the newer serial.
                Some(pending) if pending.transmissions == 0 => pending.serial = *serial,
                Some(pending) => {
                    pending.serial = *serial;
                    pending.transmissions = 0;
                    pending.due_ms = due_ms;
                    pending.tcp = false;
                }
                None => {
                    self.pending.insert(
                        key,
                        Pending {
                            zone: zone.clone(),
                            serial: *serial,
                            id: 0,
                            transmissions: 0,
                            due_ms,
                            tcp: false,
                            macs: Vec::new(),
                            refused: None,
                        },
                    );
                }
            }
        }
        self.scheduled.retain(|key, _| keep.contains_key(key));
        self.pending.retain(|key, _| keep.contains_key(key));
    }

    /// The NOTIFY messages due at `now_ms` (a first transmission takes a new ID from
    /// `next_id`, a retransmission keeps it), and the ones given up.
    pub fn due(&mut self, now_ms: u64, mut next_id: impl FnMut() -> u16) -> (Vec<Outgoing>, Vec<GivenUp>) {
        let mut send = Vec::new();
        let mut failed = Vec::new();
        self.pending.retain(|(_, target), pending| {
            if pending.due_ms > now_ms {
                return true;
            }
            if pending.transmissions >= NOTIFY_TRANSMISSIONS_MAX {
                failed.push(GivenUp {
                    zone: pending.zone.clone(),
                    target: *target,
                    refused: pending.refused.take(),
                });
                return false;
            }
            if pending.transmissions == 0 {
                pending.id = next_id();
                pending.macs.clear();
                pending.refused = None;
            }
            pending.transmissions += 1;
            pending.due_ms = now_ms.saturating_add(retry_interval_ms(pending.transmissions));
            let transport = if pending.tcp || pending.transmissions > NOTIFY_UDP_TRANSMISSIONS_MAX {
                Transport::Tcp
            } else {
                Transport::Udp
            };
            send.push(Outgoing {
                zone: pending.zone.clone(),
                target: *target,
                serial: pending.serial,
                id: pending.id,
                transport,
            });
            true
        });
        send.sort_by(|a, b| (&a.zone, a.target).cmp(&(&b.zone, b.target)));
        (send, failed)
    }

    /// When the next NOTIFY is due (to send or to give up), if any is pending.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.pending.values().map(|pending| pending.due_ms).min()
    }

    /// The NOTIFY sent that a message received from `from` answers: same ID, a response with
    /// opcode NOTIFY, and the question of the NOTIFY (RFC 1996 §4.7).
    fn matching(&self, from: SocketAddr, message: &Message) -> Option<Key> {
        if message.message_type() != MessageType::Response || message.op_code() != OpCode::Notify {
            return None;
        }
        let [question] = message.queries() else {
            return None;
        };
        if question.query_type() != RecordType::SOA {
            return None;
        }
        let from = canonical(from);
        self.pending.iter().find_map(|(key, pending)| {
            (canonical(key.1) == from
                && pending.transmissions > 0
                && pending.id == message.id()
                && pending.zone == *question.name())
            .then(|| key.clone())
        })
    }

    /// Matches a message received from `from` with a NOTIFY sent (see `matching`). A match
    /// ends that NOTIFY. A truncated answer ends nothing: see [`NotifyQueue::truncated`].
    pub fn response(&mut self, from: SocketAddr, message: &Message) -> Option<(Name, Outcome)> {
        let key = self.matching(from, message)?;
        let pending = self.pending.remove(&key)?;
        let outcome = match message.response_code() {
            ResponseCode::NoError => Outcome::Acknowledged,
            rcode => Outcome::Rejected(rcode),
        };
        Some((pending.zone, outcome))
    }

    /// A truncated answer (TC) to a NOTIFY sent: the next transmission goes over TCP, now.
    /// Says whether it matched one.
    pub fn truncated(&mut self, from: SocketAddr, message: &Message, now_ms: u64) -> bool {
        let Some(key) = self.matching(from, message) else {
            return false;
        };
        let Some(pending) = self.pending.get_mut(&key) else {
            return false;
        };
        if pending.transmissions < NOTIFY_TRANSMISSIONS_MAX {
            pending.tcp = true;
            pending.due_ms = now_ms;
        }
        true
    }

    /// An unsigned TSIG error (BADKEY, BADSIG: RFC 8945 §5.3.2 has a server send those
    /// unsigned) answered to a signed NOTIFY sent: it cannot be told from a forgery, so it ends
    /// nothing; the NOTIFY is retried, and if nothing signed answers by its last transmission it
    /// is given up as refused for `reason`. Says whether it matched one.
    pub fn unsigned_refusal(&mut self, from: SocketAddr, message: &Message, reason: String) -> bool {
        let Some(key) = self.matching(from, message) else {
            return false;
        };
        match self.pending.get_mut(&key) {
            Some(pending) => {
                pending.refused = Some(reason);
                true
            }
            None => false,
        }
    }

    /// Records the TSIG MAC of a transmission just signed.
    pub fn signed(&mut self, outgoing: &Outgoing, mac: Vec<u8>) {
        let key = (name_key(&outgoing.zone), outgoing.target);
        if let Some(pending) = self.pending.get_mut(&key)
            && pending.id == outgoing.id
            && pending.macs.len() < NOTIFY_TRANSMISSIONS_MAX as usize
        {
            pending.macs.push(mac);
        }
    }

    /// The TSIG MACs of the transmissions a message from `from` answers (empty: none matched,
    /// or the NOTIFY was not signed).
    pub fn request_macs(&self, from: SocketAddr, message: &Message) -> &[Vec<u8>] {
        self.matching(from, message)
            .and_then(|key| self.pending.get(&key))
            .map_or(&[], |pending| pending.macs.as_slice())
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// An address with an IPv4-mapped IPv6 address as its IPv4 one.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(common::net::canonical(address.ip()), address.port())
}

/// The serial each (zone, secondary) should know of: every zone's current serial, for each of
/// its `notify` targets.
pub fn wanted(zones: &Zones, view: &HealthView) -> Vec<(Name, SocketAddr, u32)> {
    zones
        .iter()
        .flat_map(|zone| {
            let serial = serial_now(zone, view);
            zone.notify
                .iter()
                .map(move |target| (zone.origin.clone(), *target, serial))
        })
        .collect()
}

/// The zone's serial as answered: the configured one moved on by the view's changes.
fn serial_now(zone: &Zone, view: &HealthView) -> u32 {
    match zone.soa.data() {
        RData::SOA(soa) => view.serial(soa.serial(), &zone.origin),
        _ => view.serial(0, &zone.origin),
    }
}

/// The NOTIFY message: opcode NOTIFY, AA, the zone's SOA as the question and, as a hint of the
/// new version (RFC 1996 §3.7), the current SOA in the answer section.
pub fn message(zone: &Zone, view: &HealthView, id: u16) -> Message {
    let mut message = Message::new();
    let mut question = Query::query(zone.origin.clone(), RecordType::SOA);
    question.set_query_class(DNSClass::IN);
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Notify)
        .set_authoritative(true)
        .add_query(question);
    let mut soa: Record = zone.soa.clone();
    if let RData::SOA(data) = zone.soa.data() {
        let now = hickory_proto::rr::rdata::SOA::new(
            data.mname().clone(),
            data.rname().clone(),
            view.serial(data.serial(), &zone.origin),
            data.refresh(),
            data.retry(),
            data.expire(),
            data.minimum(),
        );
        soa.set_data(RData::SOA(now));
    }
    message.add_answer(soa);
    message
}

/// The sockets NOTIFY messages go out from, one per address family, bound on first use.
#[derive(Default)]
struct Senders {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl Senders {
    async fn socket(&mut self, target: SocketAddr) -> std::io::Result<&UdpSocket> {
        let (slot, any) = if target.is_ipv4() {
            (&mut self.v4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        } else {
            (&mut self.v6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
        };
        if slot.is_none() {
            *slot = Some(UdpSocket::bind(SocketAddr::new(any, 0)).await?);
        }
        slot.as_ref().ok_or_else(|| std::io::Error::other("no socket"))
    }
}

/// Receives one datagram from `socket` if there is one, else waits forever.
async fn receive(socket: Option<&UdpSocket>, buffer: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buffer).await,
        None => std::future::pending().await,
    }
}

/// One NOTIFY over TCP (RFC 7766 framing): connect, send, read one answer of at most
/// [`NOTIFY_RESPONSE_BYTES_MAX`] bytes; the whole bounded by [`NOTIFY_TCP_TIMEOUT_MS`].
async fn exchange_tcp(target: SocketAddr, wire: &[u8]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        let length = u16::try_from(wire.len()).map_err(|_| std::io::Error::other("NOTIFY longer than 64 KiB"))?;
        let mut framed = Vec::with_capacity(wire.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(wire);
        stream.write_all(&framed).await?;
        let length = usize::from(stream.read_u16().await?);
        if length > NOTIFY_RESPONSE_BYTES_MAX {
            return Err(std::io::Error::other(format!(
                "a NOTIFY answer of {length} bytes; at most {NOTIFY_RESPONSE_BYTES_MAX} are read"
            )));
        }
        let mut answer = vec![0u8; length];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    };
    tokio::time::timeout(Duration::from_millis(NOTIFY_TCP_TIMEOUT_MS), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "NOTIFY over TCP timed out"))?
}

/// Sends the NOTIFY messages the zones owe their secondaries, from the first plan (at start)
/// until `stop`: woken by every change of zones or view (`State::changed`), by a due
/// retransmission and by responses (datagrams, or the answers of TCP exchanges).
pub async fn notifier(state: Arc<State>, mut rng: Rng, mut stop: watch::Receiver<bool>) {
    let origin = tokio::time::Instant::now();
    let now_ms = || u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut queue = NotifyQueue::default();
    let mut senders = Senders::default();
    let mut v4_buffer = vec![0u8; NOTIFY_RESPONSE_BYTES_MAX];
    let mut v6_buffer = vec![0u8; NOTIFY_RESPONSE_BYTES_MAX];
    let tcp_slots = Arc::new(tokio::sync::Semaphore::new(NOTIFY_TCP_IN_FLIGHT_MAX));
    let (tcp_answers_tx, mut tcp_answers) =
        tokio::sync::mpsc::channel::<(SocketAddr, Vec<u8>)>(NOTIFY_TCP_IN_FLIGHT_MAX);
    let mut replan = true;
    loop {
        let snapshot = state.snapshot();
        if replan {
            queue.plan(&wanted(&snapshot.zones, &snapshot.view), now_ms());
            replan = false;
        }
        let (send, failed) = queue.due(now_ms(), || rng.next_u64() as u16);
        for given_up in failed {
            report_given_up(&state, &given_up);
        }
        for outgoing in send {
            let Some(zone) = snapshot.zones.iter().find(|zone| zone.origin == outgoing.zone) else {
                continue;
            };
            let mut wire = match message(zone, &snapshot.view, outgoing.id).to_vec() {
                Ok(wire) => wire,
                Err(e) => {
                    tracing::error!(error = %e, zone = %outgoing.zone, "could not encode a NOTIFY");
                    continue;
                }
            };
            if let Some(key) = &zone.notify_key {
                match common::tsig::sign(&wire, key, unix_now_s()) {
                    Ok(signed) => {
                        queue.signed(&outgoing, signed.mac);
                        wire = signed.wire;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, zone = %outgoing.zone, "could not sign a NOTIFY");
                        continue;
                    }
                }
            }
            let sent = match outgoing.transport {
                Transport::Udp => match senders.socket(outgoing.target).await {
                    Ok(socket) => socket.send_to(&wire, outgoing.target).await.map(|_| ()),
                    Err(e) => Err(e),
                },
                Transport::Tcp => match Arc::clone(&tcp_slots).try_acquire_owned() {
                    Ok(slot) => {
                        let answers = tcp_answers_tx.clone();
                        let target = outgoing.target;
                        tokio::spawn(async move {
                            let _slot = slot;
                            match exchange_tcp(target, &wire).await {
                                Ok(answer) => {
                                    let _ = answers.send((target, answer)).await;
                                }
                                // Retried at its next time like a lost datagram.
                                Err(e) => tracing::debug!(error = %e, %target, "NOTIFY over TCP failed"),
                            }
                        });
                        Ok(())
                    }
                    Err(_) => Err(std::io::Error::other(format!(
                        "{NOTIFY_TCP_IN_FLIGHT_MAX} NOTIFY exchanges over TCP already open"
                    ))),
                },
            };
            match sent {
                Ok(()) => {
                    state.metrics.count_notify("sent");
                    tracing::debug!(zone = %outgoing.zone, target = %outgoing.target, serial = outgoing.serial, transport = ?outgoing.transport, "sent NOTIFY");
                }
                // Retried at its next time like a lost one.
                Err(e) => tracing::debug!(error = %e, target = %outgoing.target, "NOTIFY send failed"),
            }
        }
        let wait = queue
            .next_due_ms()
            .map(|due| Duration::from_millis(due.saturating_sub(now_ms())));
        let sleep = async {
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        let received = tokio::select! {
            _ = state.changed.notified() => {
                replan = true;
                None
            }
            _ = sleep => None,
            received = receive(senders.v4.as_ref(), &mut v4_buffer) => received.ok().and_then(|(n, from)| Some((from, v4_buffer.get(..n)?.to_vec()))),
            received = receive(senders.v6.as_ref(), &mut v6_buffer) => received.ok().and_then(|(n, from)| Some((from, v6_buffer.get(..n)?.to_vec()))),
            Some(answer) = tcp_answers.recv() => Some(answer),
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let Some((from, bytes)) = received else {
            continue;
        };
        answered(&state, &snapshot.zones, &mut queue, from, &bytes, now_ms());
    }
}

/// Counts and logs a NOTIFY given up: `rejected` when only unsigned TSIG errors answered it
/// (with the last one's words), `failed` when nothing did.
fn report_given_up(state: &State, given_up: &GivenUp) {
    let GivenUp { zone, target, refused } = given_up;
    match refused {
        Some(reason) => {
            state.metrics.count_notify("rejected");
            tracing::warn!(%zone, %target, attempts = NOTIFY_TRANSMISSIONS_MAX, %reason, "secondary answered every NOTIFY with an unsigned TSIG error and never with a signed answer: given up as rejected (check the key on both sides; a forger on the path can also send such answers)");
        }
        None => {
            state.metrics.count_notify("failed");
            tracing::warn!(%zone, %target, attempts = NOTIFY_TRANSMISSIONS_MAX, "secondary did not answer the NOTIFY (over UDP, then TCP); it will see the change at its next SOA refresh");
        }
    }
}

/// Takes an answer to a NOTIFY: a truncated one moves the NOTIFY to TCP; for a zone with a
/// `notify_key`, one not signed over a transmission's MAC is ignored (the NOTIFY is retried),
/// and so, but remembered, is an unsigned TSIG error (BADKEY, BADSIG), which anyone on the path
/// can forge: it is reported when the NOTIFY is given up. A matching one ends the NOTIFY.
fn answered(state: &State, zones: &Zones, queue: &mut NotifyQueue, from: SocketAddr, bytes: &[u8], now_ms: u64) {
    let Ok(response) = Message::from_vec(bytes) else {
        return;
    };
    if response.truncated() {
        if queue.truncated(from, &response, now_ms) {
            tracing::debug!(target = %from, "truncated NOTIFY answer; retrying over TCP");
        }
        return;
    }
    let key = response
        .queries()
        .first()
        .and_then(|question| zones.iter().find(|zone| zone.origin == *question.name()))
        .and_then(|zone| zone.notify_key.as_ref());
    if let Some(key) = key {
        let macs = queue.request_macs(from, &response);
        if macs.is_empty() {
            return;
        }
        let now_s = unix_now_s();
        let mut verdict = Err(common::tsig::VerifyError::BadMac);
        for mac in macs {
            verdict = common::tsig::verify(bytes, mac, key, now_s).map(|_| ());
            if verdict.is_ok() {
                break;
            }
        }
        match verdict {
            Ok(()) => {}
            Err(error @ common::tsig::VerifyError::Server { signed: true, .. }) => {
                tracing::warn!(target = %from, error = %error.describe(key), "secondary refused the NOTIFY's TSIG");
            }
            Err(error @ common::tsig::VerifyError::Server { signed: false, .. }) => {
                let reason = error.describe(key);
                if queue.unsigned_refusal(from, &response, reason.clone()) {
                    tracing::warn!(target = %from, error = %reason, "an unsigned TSIG error answered the NOTIFY: not believed (anyone on the path can send one), the NOTIFY is retried");
                }
                return;
            }
            Err(error) => {
                tracing::warn!(target = %from, error = %error.describe(key), "ignored a NOTIFY answer that does not verify; the NOTIFY is retried");
                return;
            }
        }
    }
    match queue.response(from, &response) {
        Some((zone, Outcome::Acknowledged)) => {
            state.metrics.count_notify("acknowledged");
            tracing::info!(%zone, target = %from, "secondary acknowledged the NOTIFY");
        }
        Some((zone, Outcome::Rejected(rcode))) => {
            state.metrics.count_notify("rejected");
            tracing::warn!(%zone, target = %from, %rcode, "secondary answered the NOTIFY with an error (does it list this server as its primary, with the same key?)");
        }
        Some((_, Outcome::Failed)) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("name")
    }

    fn target(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    fn reply(to: &Outgoing, rcode: ResponseCode) -> Message {
        let mut message = Message::new();
        message
            .set_id(to.id)
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Notify)
            .set_authoritative(true)
            .set_response_code(rcode)
            .add_query(Query::query(to.zone.clone(), RecordType::SOA));
        message
    }

    fn ids() -> impl FnMut() -> u16 {
        let mut next = 100;
        move || {
            next += 1;
            next
        }
    }

    #[test]
    fn a_burst_of_changes_sends_one_notify_with_the_last_serial() {
        let mut queue = NotifyQueue::default();
        let zone = name("shop.example.");
        let secondary = target("192.0.2.10:53");
        queue.plan(&[(zone.clone(), secondary, 1)], 0);
        queue.plan(&[(zone.clone(), secondary, 2)], 50);
        queue.plan(&[(zone.clone(), secondary, 3)], 100);
        let mut ids = ids();
        assert!(
            queue.due(NOTIFY_COALESCE_MS - 1, &mut ids).0.is_empty(),
            "not before its time"
        );
        let (sent, failed) = queue.due(NOTIFY_COALESCE_MS, &mut ids);
        assert!(failed.is_empty());
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].serial, 3);
        assert_eq!(queue.pending(), 1);
        // The same serial again owes nothing.
        queue.plan(&[(zone, secondary, 3)], 200);
        assert_eq!(queue.due(300, &mut ids).0.len(), 0);
    }

    #[test]
    fn a_notify_is_retried_at_growing_intervals_until_a_matching_response() {
        let mut queue = NotifyQueue::default();
        let zone = name("shop.example.");
        let secondary = target("192.0.2.10:53");
        queue.plan(&[(zone.clone(), secondary, 7)], 0);
        let mut ids = ids();
        let mut now = NOTIFY_COALESCE_MS;
        let first = queue.due(now, &mut ids).0.remove(0);
        // Nothing until the first interval has passed, then the same ID again.
        assert!(queue.due(now + NOTIFY_RETRY_INITIAL_MS - 1, &mut ids).0.is_empty());
        now += NOTIFY_RETRY_INITIAL_MS;
        let second = queue.due(now, &mut ids).0.remove(0);
        assert_eq!(second, first, "a retransmission keeps its ID");
        assert_eq!(
            queue.next_due_ms(),
            Some(now + 2 * NOTIFY_RETRY_INITIAL_MS),
            "the wait doubles"
        );
        // Responses that do not match are ignored: another ID, another opcode, another
        // question, another address, a query.
        let mut wrong_id = reply(&first, ResponseCode::NoError);
        wrong_id.set_id(first.id.wrapping_add(1));
        let mut wrong_opcode = reply(&first, ResponseCode::NoError);
        wrong_opcode.set_op_code(OpCode::Query);
        let mut wrong_question = reply(&first, ResponseCode::NoError);
        wrong_question.take_queries();
        wrong_question.add_query(Query::query(name("other.example."), RecordType::SOA));
        let mut not_response = reply(&first, ResponseCode::NoError);
        not_response.set_message_type(MessageType::Query);
        for message in [&wrong_id, &wrong_opcode, &wrong_question, &not_response] {
            assert_eq!(queue.response(secondary, message), None, "{message:?}");
        }
        assert_eq!(
            queue.response(target("192.0.2.11:53"), &reply(&first, ResponseCode::NoError)),
            None
        );
        assert_eq!(queue.pending(), 1);
        // The matching one ends it (from the IPv4-mapped form of the address too).
        assert_eq!(
            queue.response(target("[::ffff:192.0.2.10]:53"), &reply(&first, ResponseCode::NoError)),
            Some((zone, Outcome::Acknowledged))
        );
        assert_eq!(queue.pending(), 0);
        assert_eq!(queue.next_due_ms(), None);
    }

    #[test]
    fn a_silent_secondary_is_given_up_after_the_last_transmission() {
        let mut queue = NotifyQueue::default();
        let zone = name("shop.example.");
        let secondary = target("192.0.2.10:53");
        queue.plan(&[(zone.clone(), secondary, 7)], 0);
        let mut ids = ids();
        let mut transmissions = 0;
        let mut failures = Vec::new();
        while let Some(due) = queue.next_due_ms() {
            let (sent, failed) = queue.due(due, &mut ids);
            transmissions += sent.len();
            failures.extend(failed);
            assert!(transmissions <= NOTIFY_TRANSMISSIONS_MAX as usize);
        }
        assert_eq!(transmissions, NOTIFY_TRANSMISSIONS_MAX as usize);
        assert_eq!(
            failures,
            vec![GivenUp {
                zone,
                target: secondary,
                refused: None
            }]
        );
        let total: u64 = (1..NOTIFY_TRANSMISSIONS_MAX + 1).map(retry_interval_ms).sum();
        assert_eq!(total, 46_000, "the documented time to give up");
    }

    #[test]
    fn a_change_while_waiting_for_a_response_sends_the_newer_serial_with_a_new_id() {
        let mut queue = NotifyQueue::default();
        let zone = name("shop.example.");
        let secondary = target("192.0.2.10:53");
        queue.plan(&[(zone.clone(), secondary, 1)], 0);
        let mut ids = ids();
        let first = queue.due(NOTIFY_COALESCE_MS, &mut ids).0.remove(0);
        queue.plan(&[(zone.clone(), secondary, 2)], 1_000);
        let second = queue.due(1_000 + NOTIFY_COALESCE_MS, &mut ids).0.remove(0);
        assert_eq!(second.serial, 2);
        assert_ne!(second.id, first.id);
        // A late answer to the first NOTIFY does not end the second.
        assert_eq!(queue.response(secondary, &reply(&first, ResponseCode::NoError)), None);
        assert_eq!(
            queue.response(secondary, &reply(&second, ResponseCode::Refused)),
            Some((zone, Outcome::Rejected(ResponseCode::Refused)))
        );
    }

    #[test]
    fn after_the_udp_transmissions_a_notify_goes_over_tcp() {
        let mut queue = NotifyQueue::default();
        let zone = name("shop.example.");
        queue.plan(&[(zone, target("192.0.2.10:53"), 7)], 0);
        let mut ids = ids();
        let mut transports = Vec::new();
        while let Some(due) = queue.next_due_ms() {
            transports.extend(queue.due(due, &mut ids).0.into_iter().map(|sent| sent.transport));
        }
        let udp = NOTIFY_UDP_TRANSMISSIONS_MAX as usize;
        assert_eq!(transports.len(), NOTIFY_TRANSMISSIONS_MAX as usize);
        assert!(transports[..udp].iter().all(|t| *t == Transport::Udp), "{transports:?}");
        assert!(transports[udp..].iter().all(|t| *t == Transport::Tcp), "{transports:?}");
    }

    #[test]
    fn a_truncated_answer_sends_the_notify_over_tcp_at_once_with_the_same_id() {
        let mut queue = NotifyQueue::default();
        let zone = name("shop.example.");
        let secondary = target("192.0.2.10:53");
        queue.plan(&[(zone.clone(), secondary, 7)], 0);
        let mut ids = ids();
        let first = queue.due(NOTIFY_COALESCE_MS, &mut ids).0.remove(0);
        assert_eq!(first.transport, Transport::Udp);
        let mut truncated = reply(&first, ResponseCode::NoError);
        truncated.set_truncated(true);
        assert!(
            !queue.truncated(target("192.0.2.11:53"), &truncated, 300),
            "another address"
        );
        assert!(queue.truncated(secondary, &truncated, 300));
        assert_eq!(queue.next_due_ms(), Some(300), "due at once");
        let again = queue.due(300, &mut ids).0.remove(0);
        assert_eq!((again.id, again.transport), (first.id, Transport::Tcp));
        assert_eq!(
            queue.response(secondary, &reply(&again, ResponseCode::NoError)),
            Some((zone, Outcome::Acknowledged))
        );
    }

    #[test]
    fn the_macs_of_a_signed_notify_are_kept_per_id_and_bounded() {
        let mut queue = NotifyQueue::default();
        let zone = name("shop.example.");
        let secondary = target("192.0.2.10:53");
        queue.plan(&[(zone.clone(), secondary, 1)], 0);
        let mut ids = ids();
        let first = queue.due(NOTIFY_COALESCE_MS, &mut ids).0.remove(0);
        queue.signed(&first, vec![1; 32]);
        let retry = queue
            .due(NOTIFY_COALESCE_MS + NOTIFY_RETRY_INITIAL_MS, &mut ids)
            .0
            .remove(0);
        queue.signed(&retry, vec![2; 32]);
        for _ in 0..10 {
            queue.signed(&retry, vec![3; 32]);
        }
        let macs = queue.request_macs(secondary, &reply(&first, ResponseCode::NoError));
        assert_eq!(macs.len(), NOTIFY_TRANSMISSIONS_MAX as usize);
        assert_eq!((&macs[0], &macs[1]), (&vec![1; 32], &vec![2; 32]));
        // A newer serial: a new ID, whose MACs start empty.
        queue.plan(&[(zone, secondary, 2)], 5_000);
        let newer = queue.due(5_000 + NOTIFY_COALESCE_MS, &mut ids).0.remove(0);
        assert!(
            queue
                .request_macs(secondary, &reply(&newer, ResponseCode::NoError))
                .is_empty()
        );
        assert!(
            queue
                .request_macs(secondary, &reply(&first, ResponseCode::NoError))
                .is_empty()
        );
    }

    /// A zone `shop.example.` that signs its NOTIFY to 192.0.2.10:53 with key `k`.
    fn signing_state() -> (State, common::tsig::Key) {
        const SECRET: &str = "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=";
        let folder = tempfile::tempdir().expect("temp dir");
        std::fs::write(folder.path().join("k.key"), format!("{SECRET}\n")).expect("write key");
        let text = "[dns]\nnotify = [\"192.0.2.10:53\"]\nnotify_key = \"k\"\n[[dns.tsig_keys]]\nkey_name = \"k\"\nkey = { file = \"k.key\" }\n[[dns.zones]]\norigin = \"shop.example.\"\nns = [\"ns1\"]\n";
        let file = folder.path().join("deploy.toml");
        let zones = crate::config::parse(text, &file.display().to_string())
            .expect("valid")
            .zones;
        let key = common::tsig::Key::new("k", SECRET).expect("key");
        (State::new(zones, HealthView::default(), None, None), key)
    }

    fn notifies(state: &State, outcome: &str) -> bool {
        state
            .metrics
            .encode()
            .lines()
            .any(|line| line == format!("switchyard_dns_notifies_total{{outcome=\"{outcome}\"}} 1"))
    }

    #[test]
    fn an_unsigned_tsig_error_does_not_end_a_signed_notify_until_its_last_transmission() {
        let (state, key) = signing_state();
        let zones = state.zones();
        let secondary = target("192.0.2.10:53");
        let mut queue = NotifyQueue::default();
        queue.plan(&wanted(&zones, &HealthView::default()), 0);
        let mut ids = ids();
        let first = queue.due(NOTIFY_COALESCE_MS, &mut ids).0.remove(0);
        let signed = common::tsig::sign(
            &message(zones.iter().next().expect("zone"), &HealthView::default(), first.id)
                .to_vec()
                .expect("encodes"),
            &key,
            unix_now_s(),
        )
        .expect("signs");
        queue.signed(&first, signed.mac.clone());
        // What anyone who saw the NOTIFY can send: NOTAUTH with an unsigned BADKEY.
        let refusal = reply(&first, ResponseCode::NotAuth);
        let forged = common::tsig::testing::unsigned_error(
            &refusal.to_vec().expect("encodes"),
            &key,
            unix_now_s(),
            common::tsig::BADKEY,
        )
        .expect("forged");
        answered(&state, &zones, &mut queue, secondary, &forged, NOTIFY_COALESCE_MS + 1);
        assert_eq!(queue.pending(), 1, "not ended by an unsigned error");
        assert!(!notifies(&state, "rejected"));
        // Retried to the end of its budget, then given up as rejected, with the reason.
        let mut given_up = Vec::new();
        let mut transmissions = 1;
        while let Some(due) = queue.next_due_ms() {
            let (sent, failed) = queue.due(due, &mut ids);
            transmissions += sent.len();
            given_up.extend(failed);
        }
        assert_eq!(transmissions, NOTIFY_TRANSMISSIONS_MAX as usize);
        let [given_up] = &given_up[..] else {
            panic!("one NOTIFY given up: {given_up:?}");
        };
        let reason = given_up.refused.as_deref().expect("reported as refused");
        assert!(reason.contains("BADKEY") && reason.contains("'k'"), "{reason}");
        report_given_up(&state, given_up);
        assert!(notifies(&state, "rejected"));
        assert!(!notifies(&state, "failed"));
        // A signed answer after an unsigned error still ends the NOTIFY at once.
        let mut queue = NotifyQueue::default();
        queue.plan(&wanted(&zones, &HealthView::default()), 0);
        let first = queue.due(NOTIFY_COALESCE_MS, &mut ids).0.remove(0);
        queue.signed(&first, signed.mac.clone());
        answered(&state, &zones, &mut queue, secondary, &forged, NOTIFY_COALESCE_MS + 1);
        let acknowledged = common::tsig::ResponseSigner::new(&key, &signed.mac, unix_now_s())
            .sign(&reply(&first, ResponseCode::NoError).to_vec().expect("encodes"))
            .expect("signs");
        answered(
            &state,
            &zones,
            &mut queue,
            secondary,
            &acknowledged,
            NOTIFY_COALESCE_MS + 2,
        );
        assert_eq!(queue.pending(), 0);
        assert!(notifies(&state, "acknowledged"));
    }

    #[test]
    fn pairs_no_longer_configured_are_forgotten() {
        let mut queue = NotifyQueue::default();
        let zone = name("shop.example.");
        queue.plan(&[(zone.clone(), target("192.0.2.10:53"), 1)], 0);
        queue.plan(&[(zone, target("192.0.2.11:53"), 1)], 0);
        let sent = queue.due(NOTIFY_COALESCE_MS, ids()).0;
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].target, target("192.0.2.11:53"));
    }

    #[test]
    fn the_message_is_a_notify_with_the_zone_soa_and_current_serial() {
        let config = crate::config::parse(
            "[dns]\nnotify = [\"192.0.2.10\"]\n[[dns.zones]]\norigin = \"shop.example.\"\nns = [\"ns1\"]\n[dns.zones.soa]\nserial = 40\n",
            "t.toml",
        )
        .expect("valid");
        let zone = config.zones.iter().next().expect("zone");
        let mut view = HealthView::default()
            .apply_txt(crate::view::Generation(1), "x.shop.example.", Some("v"))
            .expect("push");
        crate::answer::count_zone_changes(&config.zones, &HealthView::default(), &mut view);
        assert_eq!(
            wanted(&config.zones, &view),
            vec![(name("shop.example."), target("192.0.2.10:53"), 41)]
        );
        let wire = message(zone, &view, 9).to_vec().expect("encodes");
        let parsed = Message::from_vec(&wire).expect("parses");
        assert_eq!(parsed.op_code(), OpCode::Notify);
        assert!(parsed.authoritative());
        assert_eq!(parsed.message_type(), MessageType::Query);
        assert_eq!(parsed.queries()[0].query_type(), RecordType::SOA);
        assert_eq!(parsed.queries()[0].name(), &name("shop.example."));
        assert!(matches!(parsed.answers()[0].data(), RData::SOA(soa) if soa.serial() == 41));
    }

    #[test]
    fn a_failover_in_one_of_two_zones_notifies_that_zone_alone() {
        let config = crate::config::parse(
            "[dns]\nnotify = [\"192.0.2.10\"]\n[[dns.zones]]\norigin = \"shop.example.\"\nns = [\"ns1.other.example.\"]\n[dns.zones.soa]\nserial = 40\n[[dns.zones.records]]\nname = \"app\"\ntype = \"A\"\npolicy = \"failover\"\n[[dns.zones.records.members]]\nrole = \"primary\"\nvalues = [\"192.0.2.10\"]\nhealth = \"us-east-1\"\n[[dns.zones.records.members]]\nrole = \"secondary\"\nvalues = [\"198.51.100.10\"]\nhealth = \"eu-west-1\"\n[[dns.zones]]\norigin = \"other.example.\"\nns = [\"ns1\"]\n[dns.zones.soa]\nserial = 900\n[[dns.zones.records]]\nname = \"ns1\"\ntype = \"A\"\nvalues = [\"192.0.2.53\"]\n",
            "t.toml",
        )
        .expect("valid");
        let secondary = target("192.0.2.10:53");
        let before = HealthView::default();
        let mut queue = NotifyQueue::default();
        queue.plan(&wanted(&config.zones, &before), 0);
        assert_eq!(queue.due(NOTIFY_COALESCE_MS, ids()).0.len(), 2, "both at start");
        let mut after = before
            .apply_health(
                crate::view::Generation(1),
                &[("us-east-1".to_string(), crate::view::Health::Unhealthy)].into(),
            )
            .expect("push");
        crate::answer::count_zone_changes(&config.zones, &before, &mut after);
        let mut serials = wanted(&config.zones, &after);
        serials.sort_by_key(|(zone, _, _)| zone.to_ascii());
        assert_eq!(
            serials,
            vec![
                (name("other.example."), secondary, 900),
                (name("shop.example."), secondary, 41)
            ],
            "the failover's zone moved, the other's serial holds"
        );
        // Only the changed zone is owed a NOTIFY (the start's ones answered first).
        let mut queue = NotifyQueue::default();
        queue.plan(&wanted(&config.zones, &before), 0);
        for outgoing in queue.due(NOTIFY_COALESCE_MS, ids()).0 {
            assert!(
                queue
                    .response(outgoing.target, &reply(&outgoing, ResponseCode::NoError))
                    .is_some()
            );
        }
        queue.plan(&wanted(&config.zones, &after), 1_000);
        let sent = queue.due(1_000 + NOTIFY_COALESCE_MS, ids()).0;
        assert_eq!(
            sent.iter().map(|o| (o.zone.to_ascii(), o.serial)).collect::<Vec<_>>(),
            [("shop.example.".to_string(), 41)]
        );
    }
}
