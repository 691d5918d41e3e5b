//! Prometheus metrics of the DNS server. Label values are bounded: names are configured names or
//! one of a few fixed labels (see `answer::LABEL_*`), types and rcodes come from fixed lists.

use std::collections::HashMap;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

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
    pub notifies: Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("switchyard_dns"),
            queries: Family::<QueryLabels, Counter>::default(),
            dropped: Family::<ReasonLabels, Counter>::default(),
            reloads: Family::<OutcomeLabels, Counter>::default(),
            pushes: Family::<OutcomeLabels, Counter>::default(),
            generation: Gauge::default(),
            tcp_connections: Gauge::default(),
            rate_limited: Family::<ActionLabels, Counter>::default(),
            rate_limit_evictions: Counter::default(),
            notifies: Family::<OutcomeLabels, Counter>::default(),
        };
        let table: [(&str, &str, Box<dyn Metric>); 9] = [
            (
                "queries",
                "Queries answered, by name (configured names; <outside>, <nonexistent>, <dynamic>, <malformed> otherwise; a signed query refused for its TSIG: <tsig-badkey>, <tsig-badsig>, <tsig-badtime>, <tsig-badtrunc>, <tsig-replayed>), type, rcode and transport",
                Box::new(metrics.queries.clone()),
            ),
            (
                "dropped_packets",
                "Packets dropped without an answer, by reason",
                Box::new(metrics.dropped.clone()),
            ),
            (
                "config_reloads",
                "Zone reloads by outcome (ok, error)",
                Box::new(metrics.reloads.clone()),
            ),
            (
                "view_pushes",
                "Health and TXT pushes from the controller by outcome (applied, stale, moved, rejected, unauthorized)",
                Box::new(metrics.pushes.clone()),
            ),
            (
                "view_generation",
                "Generation of the applied health view",
                Box::new(metrics.generation.clone()),
            ),
            (
                "tcp_connections",
                "Open DNS-over-TCP connections",
                Box::new(metrics.tcp_connections.clone()),
            ),
            (
                "rate_limited_responses",
                "UDP responses held back by response rate limiting, by action (dropped; slipped: sent empty with TC set)",
                Box::new(metrics.rate_limited.clone()),
            ),
            (
                "rate_limit_evictions",
                "Rate-limit accounts forgotten before their window ended because the table was full (raise rate_limit.table_entries if this grows)",
                Box::new(metrics.rate_limit_evictions.clone()),
            ),
            (
                "notifies",
                "NOTIFY messages to secondaries by outcome (sent: every transmission, retries included; acknowledged; rejected: answered with an error; failed: no answer after every retry)",
                Box::new(metrics.notifies.clone()),
            ),
        ];
        for (name, help, metric) in table {
            metrics.registry.register(name, help, AnyMetric(metric));
        }
        metrics
    }

    pub fn count_query(&self, name: &str, qtype: Option<RecordType>, rcode: ResponseCode, transport: Transport) {
        self.queries
            .get_or_create(&query_labels(name, qtype, rcode, transport))
            .inc();
    }

    pub fn count_rate_limited(&self, action: &'static str) {
        self.rate_limited.get_or_create(&ActionLabels { action }).inc();
    }

    pub fn count_notify(&self, outcome: &'static str) {
        self.notifies.get_or_create(&OutcomeLabels { outcome }).inc();
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

/// A metric of any type, so that one table registers them all.
#[derive(Debug)]
struct AnyMetric(Box<dyn Metric>);

impl EncodeMetric for AnyMetric {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
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
            .get_or_create(&query_labels(name, qtype, rcode, transport))
            .clone();
        self.counters.insert(key, counter.clone());
        counter
    }
}

/// The labels of a query's counter.
fn query_labels(name: &str, qtype: Option<RecordType>, rcode: ResponseCode, transport: Transport) -> QueryLabels {
    QueryLabels {
        name: name.to_string(),
        kind: KindLabels {
            r#type: type_label(qtype),
            rcode: rcode_label(rcode),
            transport: transport_label(transport),
        },
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
