//! Response rate limiting (RRL) as BIND 9 and Knot do it, so the server cannot be used to
//! amplify a flood at a spoofed victim: an answer can be ~24× the size of its query.
//!
//! Responses are grouped per client block (the client address cut to `ipv4_prefix_length` /
//! `ipv6_prefix_length`) and per *response class*: the same name (the configured name that
//! answered, so every name a wildcard covers is one) and type for answers; the same name for
//! empty answers (NODATA); all NXDOMAINs together; all other errors together. Each (block,
//! class) has an account credited `per_second` responses a second, holding at most one second
//! of credit; each response debits one. A response whose account is negative is not sent, and
//! the account keeps being debited down to `-window_s × per_second`, so a flood must stop for
//! up to `window_s` seconds before answers flow again. Every `slip`-th limited response is
//! sent as an empty truncated one (TC=1, no larger than the query) instead of being dropped:
//! a real client behind the spoofed address retries over TCP, which is never limited because
//! its handshake proves the address.
//!
//! Sans-IO: the caller passes the time (`now_ms`) and a seed for the table's hash; the table
//! is fixed-size and set-associative (a few entries per set, the least recently used one
//! replaced), so memory is bounded by `table_entries` whatever the flood.
//!
//! Must not do I/O, read a clock or draw randomness of its own.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::config::Prefix;

/// Responses a second per (client block, response class) unless configured: far above what
/// resolvers behind one block ask for one name (they cache for the record's TTL), far below
/// what an amplification flood needs.
pub const RESPONSES_PER_SECOND_DEFAULT: u32 = 50;
/// Most responses a second a class may be configured to allow (BIND's bound).
pub const RESPONSES_PER_SECOND_MAX: u32 = 1_000;
/// Seconds over which a flood is remembered (BIND's default).
pub const WINDOW_S_DEFAULT: u32 = 15;
/// Longest window accepted (BIND's bound).
pub const WINDOW_S_MAX: u32 = 3_600;
/// Every second limited response is sent truncated (BIND's default).
pub const SLIP_DEFAULT: u32 = 2;
/// Largest slip accepted (BIND's bound).
pub const SLIP_MAX: u32 = 10;
/// IPv4 clients are grouped by /24.
pub const IPV4_PREFIX_LENGTH_DEFAULT: u8 = 24;
/// IPv6 clients are grouped by /56 (a typical end-site allocation).
pub const IPV6_PREFIX_LENGTH_DEFAULT: u8 = 56;
/// Accounts kept unless configured (BIND's default `max-table-size`); about 64 bytes each.
pub const TABLE_ENTRIES_DEFAULT: usize = 20_000;
/// Fewest accounts accepted.
pub const TABLE_ENTRIES_MIN: usize = 64;
/// Most accounts accepted (about 64 MiB).
pub const TABLE_ENTRIES_MAX: usize = 1_000_000;
/// Accounts per set of the table; the least recently used one of a set is replaced.
pub const TABLE_WAYS: usize = 4;

/// The `[dns.rate_limit]` settings, validated (see `config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Off: every response is sent.
    pub enabled: bool,
    /// Answers and NODATA per second per (block, class); 0: not limited.
    pub responses_per_second: u32,
    /// NXDOMAIN per second per block; 0: not limited.
    pub nxdomains_per_second: u32,
    /// Other errors (REFUSED, FORMERR, NOTIMP, ...) per second per block; 0: not limited.
    pub errors_per_second: u32,
    pub window_s: u32,
    /// Every `slip`-th limited response is sent truncated; 0: all are dropped.
    pub slip: u32,
    pub ipv4_prefix_length: u8,
    pub ipv6_prefix_length: u8,
    pub table_entries: usize,
    /// Clients never limited (monitoring, your own resolvers).
    pub exempt_clients: Vec<Prefix>,
}

impl Default for RateLimitConfig {
    fn default() -> RateLimitConfig {
        RateLimitConfig {
            enabled: true,
            responses_per_second: RESPONSES_PER_SECOND_DEFAULT,
            nxdomains_per_second: RESPONSES_PER_SECOND_DEFAULT,
            errors_per_second: RESPONSES_PER_SECOND_DEFAULT,
            window_s: WINDOW_S_DEFAULT,
            slip: SLIP_DEFAULT,
            ipv4_prefix_length: IPV4_PREFIX_LENGTH_DEFAULT,
            ipv6_prefix_length: IPV6_PREFIX_LENGTH_DEFAULT,
            table_entries: TABLE_ENTRIES_DEFAULT,
            exempt_clients: Vec::new(),
        }
    }
}

/// Which responses share an account (besides the client block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseClass {
    /// A non-empty answer: `name` is a hash of the name that answered (a wildcard's own name
    /// for every name it covers), with the query type.
    Answer { name: u64, qtype: u16 },
    /// An empty NOERROR answer (NODATA) for a name, whatever the type.
    NoData { name: u64 },
    /// Names that do not exist.
    NxDomain,
    /// Every other error.
    Error,
}

/// What to do with one UDP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send the empty truncated response instead (see [`truncated`]).
    Slip,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    /// The client address cut to its prefix (IPv4 in the low 32 bits).
    block: u128,
    ipv6: bool,
    class: ResponseClass,
}

#[derive(Clone, Copy, Debug)]
struct Account {
    key: Key,
    /// Credit in thousandths of a response.
    balance_milli: i64,
    last_ms: u64,
    /// Limited responses since the account was last in credit (drives the slip).
    limited: u32,
}

/// Counters of what the limiter did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub dropped: u64,
    pub slipped: u64,
    /// Accounts replaced because their set was full.
    pub evicted: u64,
}

/// The limiter's state: a fixed-size table of accounts.
pub struct RateLimiter {
    config: RateLimitConfig,
    seed: u64,
    slots: Vec<Option<Account>>,
    sets: usize,
    counts: Counts,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig, seed: u64) -> RateLimiter {
        let entries = config.table_entries.clamp(TABLE_ENTRIES_MIN, TABLE_ENTRIES_MAX);
        let sets = entries.div_ceil(TABLE_WAYS);
        let slots = if config.enabled {
            vec![None; sets * TABLE_WAYS]
        } else {
            Vec::new()
        };
        RateLimiter {
            config,
            seed,
            slots,
            sets,
            counts: Counts::default(),
        }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Accounts in use.
    pub fn entries(&self) -> usize {
        self.slots.iter().filter(|slot| slot.is_some()).count()
    }

    /// Hashes a response's name label for [`ResponseClass`].
    pub fn name_hash(&self, name: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.seed.hash(&mut hasher);
        name.hash(&mut hasher);
        hasher.finish()
    }

    /// Decides whether a UDP response of `class` to `client` is sent at `now_ms` (milliseconds
    /// on any monotonic clock), and debits its account.
    pub fn check(&mut self, client: IpAddr, class: ResponseClass, now_ms: u64) -> Verdict {
        if !self.config.enabled || self.config.exempt_clients.iter().any(|p| p.contains(client)) {
            return Verdict::Send;
        }
        let rate = match class {
            ResponseClass::Answer { .. } | ResponseClass::NoData { .. } => self.config.responses_per_second,
            ResponseClass::NxDomain => self.config.nxdomains_per_second,
            ResponseClass::Error => self.config.errors_per_second,
        };
        if rate == 0 {
            return Verdict::Send;
        }
        let key = Key {
            block: self.block(client),
            ipv6: is_ipv6(client),
            class,
        };
        let rate_milli = i64::from(rate) * 1_000;
        let floor = -i64::from(self.config.window_s.max(1)) * rate_milli;
        let window_ms = u64::from(self.config.window_s.max(1)) * 1_000;
        let slot = self.slot_for(key, now_ms);
        let account = self.slots[slot].get_or_insert(Account {
            key,
            balance_milli: rate_milli,
            last_ms: now_ms,
            limited: 0,
        });
        let elapsed_ms = now_ms.saturating_sub(account.last_ms);
        if elapsed_ms > window_ms {
            account.balance_milli = rate_milli;
        } else {
            // `rate` responses a second is `rate` thousandths a millisecond.
            let credit = i64::try_from(elapsed_ms)
                .unwrap_or(i64::MAX)
                .saturating_mul(i64::from(rate));
            account.balance_milli = account.balance_milli.saturating_add(credit).min(rate_milli);
        }
        account.last_ms = account.last_ms.max(now_ms);
        account.balance_milli -= 1_000;
        if account.balance_milli >= 0 {
            account.limited = 0;
            return Verdict::Send;
        }
        account.balance_milli = account.balance_milli.max(floor);
        account.limited = account.limited.saturating_add(1);
        let slip = self.config.slip;
        if slip > 0 && account.limited.is_multiple_of(slip) {
            self.counts.slipped += 1;
            Verdict::Slip
        } else {
            self.counts.dropped += 1;
            Verdict::Drop
        }
    }

    /// The client's block: its address with the bits beyond the prefix cleared.
    fn block(&self, client: IpAddr) -> u128 {
        match canonical(client) {
            IpAddr::V4(v4) => {
                let length = u32::from(self.config.ipv4_prefix_length.min(32));
                let mask = u32::MAX.checked_shl(32 - length).unwrap_or(0);
                u128::from(u32::from(v4) & mask)
            }
            IpAddr::V6(v6) => {
                let length = u32::from(self.config.ipv6_prefix_length.min(128));
                let mask = u128::MAX.checked_shl(128 - length).unwrap_or(0);
                u128::from(v6) & mask
            }
        }
    }

    /// The slot holding `key`'s account, or the one to (re)use for it: an empty slot of its
    /// set, else the least recently used one (whose account is forgotten).
    fn slot_for(&mut self, key: Key, now_ms: u64) -> usize {
        let mut hasher = DefaultHasher::new();
        self.seed.hash(&mut hasher);
        key.hash(&mut hasher);
        let set = (hasher.finish() % self.sets as u64) as usize;
        let ways = set * TABLE_WAYS..(set + 1) * TABLE_WAYS;
        let mut victim = ways.start;
        let mut victim_last = u64::MAX;
        for slot in ways {
            match &self.slots[slot] {
                Some(account) if account.key == key => return slot,
                Some(account) => {
                    if account.last_ms < victim_last {
                        victim = slot;
                        victim_last = account.last_ms;
                    }
                }
                None => {
                    victim = slot;
                    victim_last = 0;
                    // Keep looking: the key may sit in a later way.
                }
            }
        }
        if self.slots[victim].is_some() {
            let stale = now_ms.saturating_sub(victim_last) > u64::from(self.config.window_s) * 1_000;
            if !stale {
                self.counts.evicted += 1;
            }
            self.slots[victim] = None;
        }
        victim
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn is_ipv6(ip: IpAddr) -> bool {
    canonical(ip).is_ipv6()
}

/// The class of a response, from what it says: its rcode, whether it has answers, the
/// (bounded) label of the name that answered and the query type.
pub fn classify(
    limiter: &RateLimiter,
    rcode: ResponseCode,
    answers: usize,
    name_label: &str,
    qtype: Option<RecordType>,
) -> ResponseClass {
    match rcode {
        ResponseCode::NoError if answers > 0 => ResponseClass::Answer {
            name: limiter.name_hash(name_label),
            qtype: qtype.map_or(0, u16::from),
        },
        ResponseCode::NoError => ResponseClass::NoData {
            name: limiter.name_hash(name_label),
        },
        ResponseCode::NXDomain => ResponseClass::NxDomain,
        _ => ResponseClass::Error,
    }
}

/// The slipped form of `response`: same id, opcode, flags and question, TC set, no records
/// (so it is no larger than the query that asked), NOERROR — a client must retry over TCP.
pub fn truncated(response: &Message) -> Option<Vec<u8>> {
    let mut slipped = Message::new();
    slipped
        .set_id(response.id())
        .set_message_type(MessageType::Response)
        .set_op_code(response.op_code())
        .set_authoritative(response.authoritative())
        .set_recursion_desired(response.recursion_desired())
        .set_checking_disabled(response.checking_disabled())
        .set_truncated(true)
        .set_response_code(ResponseCode::NoError);
    for question in response.queries() {
        slipped.add_query(question.clone());
    }
    if let Some(edns) = response.extensions() {
        slipped.set_edns(edns.clone());
    }
    slipped.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn limiter(config: RateLimitConfig) -> RateLimiter {
        RateLimiter::new(config, 7)
    }

    fn small() -> RateLimitConfig {
        RateLimitConfig {
            responses_per_second: 5,
            nxdomains_per_second: 5,
            errors_per_second: 2,
            window_s: 3,
            slip: 2,
            ..RateLimitConfig::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address literal")
    }

    const WWW_A: ResponseClass = ResponseClass::Answer { name: 1, qtype: 1 };

    fn verdicts(limiter: &mut RateLimiter, client: &str, class: ResponseClass, now_ms: u64, n: usize) -> Vec<Verdict> {
        (0..n).map(|_| limiter.check(ip(client), class, now_ms)).collect()
    }

    #[test]
    fn a_burst_of_one_second_passes_then_every_second_limited_response_slips() {
        let mut rrl = limiter(small());
        let got = verdicts(&mut rrl, "192.0.2.1", WWW_A, 0, 9);
        use Verdict::*;
        assert_eq!(got, [Send, Send, Send, Send, Send, Drop, Slip, Drop, Slip]);
        assert_eq!(
            rrl.counts(),
            Counts {
                dropped: 2,
                slipped: 2,
                evicted: 0
            }
        );
    }

    #[test]
    fn clients_in_one_block_share_an_account_and_other_blocks_do_not() {
        let mut rrl = limiter(small());
        verdicts(&mut rrl, "192.0.2.1", WWW_A, 0, 5);
        assert_ne!(rrl.check(ip("192.0.2.200"), WWW_A, 0), Verdict::Send, "same /24");
        assert_eq!(rrl.check(ip("192.0.3.1"), WWW_A, 0), Verdict::Send, "another /24");
        assert_eq!(
            rrl.check(ip("::ffff:192.0.3.1"), WWW_A, 0),
            Verdict::Send,
            "mapped is the same"
        );
        verdicts(&mut rrl, "2001:db8:0:100::1", WWW_A, 0, 5);
        assert_ne!(rrl.check(ip("2001:db8:0:1ff::9"), WWW_A, 0), Verdict::Send, "same /56");
        assert_eq!(
            rrl.check(ip("2001:db8:0:200::1"), WWW_A, 0),
            Verdict::Send,
            "another /56"
        );
    }

    #[test]
    fn classes_have_their_own_accounts_and_errors_their_own_rate() {
        let mut rrl = limiter(small());
        verdicts(&mut rrl, "192.0.2.1", WWW_A, 0, 5);
        let other_type = ResponseClass::Answer { name: 1, qtype: 28 };
        assert_eq!(rrl.check(ip("192.0.2.1"), other_type, 0), Verdict::Send);
        let errors = verdicts(&mut rrl, "192.0.2.1", ResponseClass::Error, 0, 3);
        assert_eq!(errors, [Verdict::Send, Verdict::Send, Verdict::Drop]);
        assert_eq!(rrl.check(ip("192.0.2.1"), ResponseClass::NxDomain, 0), Verdict::Send);
    }

    #[test]
    fn credit_accrues_at_the_rate_up_to_one_second() {
        let mut rrl = limiter(small());
        verdicts(&mut rrl, "192.0.2.1", WWW_A, 0, 5);
        // 5 a second is one per 200 ms.
        assert_eq!(rrl.check(ip("192.0.2.1"), WWW_A, 200), Verdict::Send);
        assert_ne!(rrl.check(ip("192.0.2.1"), WWW_A, 200), Verdict::Send);
        // Idle for long, but the credit stops at one second's worth.
        let mut rrl = limiter(small());
        rrl.check(ip("192.0.2.1"), WWW_A, 0);
        let later = verdicts(&mut rrl, "192.0.2.1", WWW_A, 2_500, 6);
        assert_eq!(later.iter().filter(|v| **v == Verdict::Send).count(), 5);
    }

    #[test]
    fn a_flood_stays_limited_until_it_stops_and_then_recovers() {
        let mut rrl = limiter(small());
        // 20 a second for 2 s: the debt reaches its floor (window × rate).
        let mut sent = 0;
        for tick in 0..40u64 {
            if rrl.check(ip("192.0.2.1"), WWW_A, tick * 50) == Verdict::Send {
                sent += 1;
            }
        }
        // A second's credit plus what accrued while it was spent.
        assert_eq!(sent, 6);
        // Still limited right after the flood.
        assert_ne!(rrl.check(ip("192.0.2.1"), WWW_A, 2_100), Verdict::Send);
        // After the window has passed with no query, the account starts afresh.
        assert_eq!(rrl.check(ip("192.0.2.1"), WWW_A, 2_100 + 3_001), Verdict::Send);
    }

    #[test]
    fn slip_zero_drops_all_and_slip_one_truncates_all() {
        let mut rrl = limiter(RateLimitConfig { slip: 0, ..small() });
        let got = verdicts(&mut rrl, "192.0.2.1", WWW_A, 0, 8);
        assert!(got[5..].iter().all(|v| *v == Verdict::Drop), "{got:?}");
        let mut rrl = limiter(RateLimitConfig { slip: 1, ..small() });
        let got = verdicts(&mut rrl, "192.0.2.1", WWW_A, 0, 8);
        assert!(got[5..].iter().all(|v| *v == Verdict::Slip), "{got:?}");
    }

    #[test]
    fn disabled_zero_rates_and_exempt_clients_are_never_limited() {
        let mut rrl = limiter(RateLimitConfig {
            enabled: false,
            ..small()
        });
        assert!(
            verdicts(&mut rrl, "192.0.2.1", WWW_A, 0, 100)
                .iter()
                .all(|v| *v == Verdict::Send)
        );
        let mut rrl = limiter(RateLimitConfig {
            responses_per_second: 0,
            ..small()
        });
        assert!(
            verdicts(&mut rrl, "192.0.2.1", WWW_A, 0, 100)
                .iter()
                .all(|v| *v == Verdict::Send)
        );
        let exempt = vec!["192.0.2.0/28".parse().expect("prefix")];
        let mut rrl = limiter(RateLimitConfig {
            exempt_clients: exempt,
            ..small()
        });
        assert!(
            verdicts(&mut rrl, "192.0.2.1", WWW_A, 0, 100)
                .iter()
                .all(|v| *v == Verdict::Send)
        );
        assert_eq!(verdicts(&mut rrl, "192.0.2.99", WWW_A, 0, 6)[5], Verdict::Drop);
    }

    #[test]
    fn the_table_never_grows_beyond_its_size() {
        let config = RateLimitConfig {
            table_entries: TABLE_ENTRIES_MIN,
            ..small()
        };
        let mut rrl = limiter(config);
        for i in 0..10_000u32 {
            let client = IpAddr::from(std::net::Ipv4Addr::from(i << 8));
            rrl.check(client, WWW_A, 1);
        }
        assert!(rrl.entries() <= TABLE_ENTRIES_MIN, "{}", rrl.entries());
        assert!(rrl.counts().evicted > 0);
        // The account being flooded is the most recently used of its set, so a spray of other
        // clients does not reset it.
        let mut rrl = limiter(RateLimitConfig {
            table_entries: TABLE_ENTRIES_MIN,
            ..small()
        });
        let mut victim_sent = 0;
        for i in 0..2_000u32 {
            let now_ms = 10 + u64::from(i);
            if rrl.check(ip("198.51.100.7"), WWW_A, now_ms) == Verdict::Send {
                victim_sent += 1;
            }
            let other = IpAddr::from(std::net::Ipv4Addr::from((i + 1) << 8));
            rrl.check(other, WWW_A, now_ms);
        }
        assert_eq!(victim_sent, 5);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Whatever the traffic, an account never sends more than one second of burst plus
            /// its rate over the time elapsed, and the table never outgrows its size.
            #[test]
            fn sends_stay_within_the_rate_and_the_table_within_its_size(
                steps in proptest::collection::vec((0u8..4, 0u8..3, 0u64..400), 1..400),
                rate in 1u32..20,
                slip in 0u32..4,
            ) {
                let config = RateLimitConfig {
                    responses_per_second: rate,
                    nxdomains_per_second: rate,
                    errors_per_second: rate,
                    window_s: 2,
                    slip,
                    table_entries: TABLE_ENTRIES_MIN,
                    ..RateLimitConfig::default()
                };
                let mut rrl = RateLimiter::new(config, 3);
                let classes = [WWW_A, ResponseClass::NxDomain, ResponseClass::Error];
                let mut now_ms = 0u64;
                let mut sent = std::collections::HashMap::<(u8, u8), u64>::new();
                for (client, class, advance_ms) in steps {
                    now_ms += advance_ms;
                    let ip = IpAddr::from(std::net::Ipv4Addr::new(198, 51, client, 1));
                    if rrl.check(ip, classes[usize::from(class)], now_ms) == Verdict::Send {
                        *sent.entry((client, class)).or_default() += 1;
                    }
                    prop_assert!(rrl.entries() <= TABLE_ENTRIES_MIN);
                }
                // Few accounts: none was evicted, so each one's budget holds from time 0.
                prop_assert_eq!(rrl.counts().evicted, 0);
                let budget = u64::from(rate) + u64::from(rate) * now_ms / 1_000 + 1;
                for (account, count) in sent {
                    prop_assert!(count <= budget, "{:?} sent {} > {}", account, count, budget);
                }
            }
        }
    }

    #[test]
    fn classification_groups_as_bind_does() {
        let rrl = limiter(small());
        let a = classify(&rrl, ResponseCode::NoError, 1, "www.shop.example.", Some(RecordType::A));
        let aaaa = classify(
            &rrl,
            ResponseCode::NoError,
            1,
            "www.shop.example.",
            Some(RecordType::AAAA),
        );
        assert_ne!(a, aaaa);
        let nodata_mx = classify(
            &rrl,
            ResponseCode::NoError,
            0,
            "www.shop.example.",
            Some(RecordType::MX),
        );
        let nodata_srv = classify(
            &rrl,
            ResponseCode::NoError,
            0,
            "www.shop.example.",
            Some(RecordType::SRV),
        );
        assert_eq!(nodata_mx, nodata_srv);
        assert_eq!(
            classify(&rrl, ResponseCode::NXDomain, 0, "<nonexistent>", Some(RecordType::A)),
            ResponseClass::NxDomain
        );
        assert_eq!(
            classify(&rrl, ResponseCode::Refused, 0, "<outside>", Some(RecordType::A)),
            classify(&rrl, ResponseCode::FormErr, 0, "<malformed>", None)
        );
    }

    #[test]
    fn the_slipped_response_is_empty_truncated_and_keeps_the_question() {
        let mut response = Message::new();
        let name = Name::from_ascii("big.shop.example.").expect("name");
        response
            .set_id(4242)
            .set_message_type(MessageType::Response)
            .set_recursion_desired(true)
            .set_response_code(ResponseCode::NXDomain)
            .add_query(Query::query(name.clone(), RecordType::TXT));
        let wire = truncated(&response).expect("encodes");
        let parsed = Message::from_vec(&wire).expect("parses");
        assert_eq!(parsed.id(), 4242);
        assert!(parsed.truncated());
        assert!(parsed.recursion_desired());
        assert_eq!(parsed.response_code(), ResponseCode::NoError);
        assert_eq!(parsed.queries()[0].name(), &name);
        assert_eq!(parsed.answer_count() + parsed.name_server_count(), 0);
    }
}
