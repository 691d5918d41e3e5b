//! The demo shop's `/metrics` (Prometheus text 0.0.4, OpenMetrics on request, through
//! `common::metrics`): responses by method and status class, and orders placed — what a
//! dashboard of a real shop would chart during a drill.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// GET, POST, DELETE or OTHER (bounded).
    pub method: String,
    /// 2xx, 3xx, 4xx or 5xx (bounded).
    pub code: String,
}

pub struct ShopMetrics {
    registry: Registry,
    responses: Family<ResponseLabels, Counter>,
    orders_placed: Counter,
}

impl Default for ShopMetrics {
    fn default() -> Self {
        ShopMetrics::new()
    }
}

impl ShopMetrics {
    pub fn new() -> ShopMetrics {
        let mut registry = Registry::with_prefix("switchyard_demoapp");
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "responses",
            "HTTP responses sent, by method and status class",
            responses.clone(),
        );
        let orders_placed = Counter::default();
        registry.register(
            "orders_placed",
            "Orders written to the store (new orders; a repeated Idempotency-Key is not counted)",
            orders_placed.clone(),
        );
        // Series exist from the start, so a scrape before any traffic is complete.
        for method in ["GET", "POST"] {
            for code in ["2xx", "5xx"] {
                let _ = responses.get_or_create(&ResponseLabels {
                    method: method.into(),
                    code: code.into(),
                });
            }
        }
        ShopMetrics {
            registry,
            responses,
            orders_placed,
        }
    }

    pub fn response(&self, method: &axum::http::Method, status: axum::http::StatusCode) {
        let method = match method.as_str() {
            known @ ("GET" | "POST" | "DELETE") => known,
            _ => "OTHER",
        };
        let code = match status.as_u16() {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.responses
            .get_or_create(&ResponseLabels {
                method: method.into(),
                code: code.into(),
            })
            .inc();
    }

    pub fn order_placed(&self) {
        self.orders_placed.inc();
    }

    /// The OpenMetrics text (`common::metrics::response` converts it when asked).
    pub fn encode(&self) -> Option<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).ok()?;
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_counted_by_method_and_class() {
        let metrics = ShopMetrics::new();
        metrics.response(&axum::http::Method::POST, axum::http::StatusCode::CREATED);
        metrics.response(&axum::http::Method::PUT, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        metrics.order_placed();
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains("switchyard_demoapp_responses_total{method=\"POST\",code=\"2xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_demoapp_responses_total{method=\"OTHER\",code=\"5xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("switchyard_demoapp_orders_placed_total 1"), "{text}");
    }
}
