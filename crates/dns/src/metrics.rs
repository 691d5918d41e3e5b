//! Prometheus metrics of the DNS server. Label values are bounded: names are configured names or
//! one of a few fixed labels (see `answer::LABEL_*`), types and rcodes come from fixed lists.

use std::collections::HashMap;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::answer::Transport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub name: String,
    #[prometheus(flatten)]
    pub kind: KindLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub r#type: &'static str,
    pub rcode: &'static str,
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub queries: Family<QueryLabels, Counter>,
    pub dropped: Family<ReasonLabels, Counter>,
    pub reloads: Family<OutcomeLabels, Counter>,
    pub pushes: Family<OutcomeLabels, Counter>,
    pub generation: Gauge,
    pub tcp_connections: Gauge,
    pub rate_limited: Family<ActionLabels, Counter>,
    pub rate_limit_evictions: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchyard_dns");
        let queries = Family::<QueryLabels, Counter>::default();
        registry.register(
            "queries",
            "Queries answered, by name (configured names; <outside>, <nonexistent>, <dynamic>, <malformed> otherwise), type, rcode and transport",
            queries.clone(),
        );
        let dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "dropped_packets",
            "Packets dropped without an answer, by reason",
            dropped.clone(),
        );
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register("config_reloads", "Zone reloads by outcome (ok, error)", reloads.clone());
        let pushes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "view_pushes",
            "Health and TXT pushes from the controller by outcome (applied, stale, rejected, unauthorized)",
            pushes.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "view_generation",
            "Generation of the applied health view",
            generation.clone(),
        );
        let tcp_connections = Gauge::default();
        registry.register(
            "tcp_connections",
            "Open DNS-over-TCP connections",
            tcp_connections.clone(),
        );
        let rate_limited = Family::<ActionLabels, Counter>::default();
        registry.register(
            "rate_limited_responses",
            "UDP responses held back by response rate limiting, by action (dropped; slipped: sent empty with TC set)",
            rate_limited.clone(),
        );
        let rate_limit_evictions = Counter::default();
        registry.register(
            "rate_limit_evictions",
            "Rate-limit accounts forgotten before their window ended because the table was full (raise rate_limit.table_entries if this grows)",
            rate_limit_evictions.clone(),
        );
        Metrics {
            registry,
            rate_limited,
            rate_limit_evictions,
            queries,
            dropped,
            reloads,
            pushes,
            generation,
            tcp_connections,
        }
    }

    pub fn count_query(&self, name: &str, qtype: Option<RecordType>, rcode: ResponseCode, transport: Transport) {
        self.queries
            .get_or_create(&QueryLabels {
                name: name.to_string(),
                kind: KindLabels {
                    r#type: type_label(qtype),
                    rcode: rcode_label(rcode),
                    transport: transport_label(transport),
                },
            })
            .inc();
    }

    pub fn count_rate_limited(&self, action: &'static str) {
        self.rate_limited.get_or_create(&ActionLabels { action }).inc();
    }

    pub fn count_drop(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Counters a [`CounterCache`] keeps before starting over (bounds its memory).
pub const COUNTER_CACHE_ENTRIES_MAX: usize = 4_096;

/// A per-thread cache of query counters, so counting a query allocates nothing and takes no
/// lock once its labels have been seen.
#[derive(Default)]
pub struct CounterCache {
    counters: HashMap<(Arc<str>, Option<RecordType>, ResponseCode, Transport), Counter>,
}

impl CounterCache {
    pub fn count(
        &mut self,
        metrics: &Metrics,
        name: &Arc<str>,
        qtype: Option<RecordType>,
        rcode: ResponseCode,
        transport: Transport,
    ) {
        self.counter(metrics, name, qtype, rcode, transport).inc();
    }

    /// The counter of these labels (a handle: incrementing a clone counts on it).
    pub fn counter(
        &mut self,
        metrics: &Metrics,
        name: &Arc<str>,
        qtype: Option<RecordType>,
        rcode: ResponseCode,
        transport: Transport,
    ) -> Counter {
        let key = (Arc::clone(name), qtype, rcode, transport);
        if let Some(counter) = self.counters.get(&key) {
            return counter.clone();
        }
        if self.counters.len() >= COUNTER_CACHE_ENTRIES_MAX {
            self.counters.clear();
        }
        let counter = metrics
            .queries
            .get_or_create(&QueryLabels {
                name: name.to_string(),
                kind: KindLabels {
                    r#type: type_label(qtype),
                    rcode: rcode_label(rcode),
                    transport: transport_label(transport),
                },
            })
            .clone();
        self.counters.insert(key, counter.clone());
        counter
    }
}

fn transport_label(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    }
}

fn type_label(qtype: Option<RecordType>) -> &'static str {
    match qtype {
        None => "NONE",
        Some(RecordType::A) => "A",
        Some(RecordType::AAAA) => "AAAA",
        Some(RecordType::CNAME) => "CNAME",
        Some(RecordType::TXT) => "TXT",
        Some(RecordType::MX) => "MX",
        Some(RecordType::SRV) => "SRV",
        Some(RecordType::NS) => "NS",
        Some(RecordType::SOA) => "SOA",
        Some(RecordType::ANY) => "ANY",
        Some(RecordType::AXFR) => "AXFR",
        Some(RecordType::IXFR) => "IXFR",
        Some(RecordType::PTR) => "PTR",
        Some(RecordType::CAA) => "CAA",
        Some(RecordType::HTTPS) => "HTTPS",
        Some(RecordType::SVCB) => "SVCB",
        Some(RecordType::DS) => "DS",
        Some(RecordType::DNSKEY) => "DNSKEY",
        Some(_) => "OTHER",
    }
}

fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}
