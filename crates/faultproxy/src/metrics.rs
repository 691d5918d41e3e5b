//! The fault proxy's `/metrics` (Prometheus text 0.0.4, OpenMetrics on request, through
//! `common::metrics`): per proxy the connections accepted, refused over `connections_max` and
//! ended with an error, those open now, and at scrape time whether it is enabled and how many
//! toxics it carries — so a drill's graphs show when a fault was on.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyLabels {
    pub proxy: String,
}

/// Cheap to clone (the families are shared).
#[derive(Clone, Default)]
pub struct ProxyMetrics {
    pub accepted: Family<ProxyLabels, Counter>,
    pub refused: Family<ProxyLabels, Counter>,
    pub failed: Family<ProxyLabels, Counter>,
    pub open: Family<ProxyLabels, Gauge>,
    pub enabled: Family<ProxyLabels, Gauge>,
    pub toxics: Family<ProxyLabels, Gauge>,
    /// Proxies with series, so a deleted one's series can be removed.
    pub seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl ProxyMetrics {
    pub fn labels(proxy: &str) -> ProxyLabels {
        ProxyLabels { proxy: proxy.into() }
    }

    /// The registry that encodes these families.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("switchyard_faultproxy");
        registry.register(
            "connections_accepted",
            "Client connections accepted, by proxy",
            self.accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at once because connections_max were open, by proxy",
            self.refused.clone(),
        );
        registry.register(
            "connections_failed",
            "Connections that ended with an error (upstream unreachable, reset), by proxy",
            self.failed.clone(),
        );
        registry.register("connections_open", "Connections open now, by proxy", self.open.clone());
        registry.register(
            "proxy_enabled",
            "1 while the proxy accepts connections",
            self.enabled.clone(),
        );
        registry.register(
            "toxics",
            "Toxics on the proxy now (both directions)",
            self.toxics.clone(),
        );
        registry
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> Option<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry()).ok()?;
        Some(text)
    }
}
