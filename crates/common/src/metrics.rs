//! Serving `/metrics`: every component encodes its registry with prometheus-client (OpenMetrics
//! 1.0 text); this module answers in the Prometheus text format 0.0.4 unless the scraper's
//! `Accept` header prefers OpenMetrics, as Prometheus' own content negotiation does.
//!
//! The 0.0.4 rendering of an OpenMetrics text: a counter family `x` (samples `x_total`) is
//! described as `x_total`, an info family `x` as the gauge `x_info`, `unknown` becomes
//! `untyped`; `# UNIT` and `# EOF` lines, `_created` samples and exemplars are dropped, and
//! HELP texts lose OpenMetrics' escaping of `"`. Everything else is the same in both formats.

use std::collections::HashMap;

use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

/// The OpenMetrics 1.0 text format.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The quality a media range of `accept` gives `media_type` (`type/subtype`), if it names it
/// exactly; wildcards do not count.
fn quality(accept: &str, media_type: &str) -> Option<f32> {
    accept
        .split(',')
        .filter_map(|range| {
            let mut parts = range.split(';').map(str::trim);
            let name = parts.next()?;
            if !name.eq_ignore_ascii_case(media_type) {
                return None;
            }
            let q = parts
                .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            Some(q)
        })
        .reduce(f32::max)
}

/// Whether a scraper sending `accept` should get OpenMetrics: it names
/// `application/openmetrics-text` with a quality above 0 and at least that of `text/plain`.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    match quality(accept, "application/openmetrics-text") {
        Some(q) if q > 0.0 => q >= quality(accept, "text/plain").unwrap_or(0.0),
        _ => false,
    }
}

/// Rewrites an OpenMetrics text (as prometheus-client encodes it) into the Prometheus text
/// format 0.0.4.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            types.insert(name, kind.trim());
        }
    }
    let renamed = |family: &str| -> String {
        match types.get(family).copied() {
            Some("counter") if !family.ends_with("_total") => format!("{family}_total"),
            Some("info") => format!("{family}_info"),
            _ => family.to_string(),
        }
    };
    let created: Vec<String> = types
        .iter()
        .filter(|(_, kind)| matches!(**kind, "counter" | "histogram" | "summary"))
        .map(|(family, _)| format!("{family}_created"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {}\n", renamed(family), help.replace("\\\"", "\"")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind.trim() {
                "info" | "stateset" => "gauge",
                "gaugehistogram" => "histogram",
                "unknown" => "untyped",
                other => other,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(family)));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        if created.iter().any(|c| c == &line[..name_end]) {
            continue;
        }
        // An exemplar follows the value after " # " (outside the quoted label values).
        let value_start = labels_end(line, name_end);
        let sample = match line[value_start..].find(" # ") {
            Some(at) => &line[..value_start + at],
            None => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// Where the label set of a sample line that starts at `name_end` ends (after its `}`), quoted
/// label values (with their `\\` escapes) skipped.
fn labels_end(line: &str, name_end: usize) -> usize {
    if !line[name_end..].starts_with('{') {
        return name_end;
    }
    let mut quoted = false;
    let mut escaped = false;
    for (offset, c) in line[name_end..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return name_end + offset + 1,
            _ => {}
        }
    }
    line.len()
}

/// The sort key of a sample line: its label set without `le` and `quantile`, so the lines of
/// one histogram or summary series stay together and in order.
fn series_key(line: &str) -> String {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let end = labels_end(line, name_end);
    let inner = line[name_end..end].trim_start_matches('{').trim_end_matches('}');
    if !inner.contains("le=\"") && !inner.contains("quantile=\"") {
        return inner.to_string();
    }
    let mut pairs = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (offset, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                pairs.push(&inner[start..offset]);
                start = offset + 1;
            }
            _ => {}
        }
    }
    pairs.push(&inner[start..]);
    pairs
        .into_iter()
        .filter(|pair| !pair.starts_with("le=") && !pair.starts_with("quantile="))
        .collect::<Vec<_>>()
        .join(",")
}

/// Orders the series of every family by their labels (prometheus-client keeps a family's
/// series in a hash map, so two scrapes would list them in different orders).
pub fn stable_order(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut samples: Vec<&str> = Vec::new();
    let flush = |samples: &mut Vec<&str>, out: &mut String| {
        samples.sort_by_cached_key(|line| series_key(line));
        for line in samples.drain(..) {
            out.push_str(line);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut samples, &mut out);
            out.push_str(line);
            out.push('\n');
        } else if !line.is_empty() {
            samples.push(line);
        }
    }
    flush(&mut samples, &mut out);
    out
}

/// The `/metrics` answer for a request with `headers`, from the registry's OpenMetrics text.
pub fn response(headers: &HeaderMap, openmetrics: String) -> Response {
    let openmetrics = stable_order(&openmetrics);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], openmetrics).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
            to_prometheus_text(&openmetrics),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "# HELP app_requests Requests \\\"served\\\".\n\
# TYPE app_requests counter\n\
app_requests_total{code=\"200\"} 3\n\
app_requests_created{code=\"200\"} 1700000000.0\n\
# HELP app_lag_seconds Lag.\n\
# TYPE app_lag_seconds gauge\n\
# UNIT app_lag_seconds seconds\n\
app_lag_seconds 0.25\n\
# HELP app_build Build.\n\
# TYPE app_build info\n\
app_build_info{version=\"1\"} 1\n\
# HELP app_latency_seconds Latency.\n\
# TYPE app_latency_seconds histogram\n\
app_latency_seconds_sum 1.5\n\
app_latency_seconds_count 2\n\
app_latency_seconds_bucket{le=\"0.5\"} 1 # {trace_id=\"a\"} 0.3\n\
app_latency_seconds_bucket{le=\"+Inf\"} 2\n\
# EOF\n";

    #[test]
    fn openmetrics_becomes_the_0_0_4_text() {
        let text = to_prometheus_text(OPENMETRICS);
        assert_eq!(
            text,
            "# HELP app_requests_total Requests \"served\".\n\
# TYPE app_requests_total counter\n\
app_requests_total{code=\"200\"} 3\n\
# HELP app_lag_seconds Lag.\n\
# TYPE app_lag_seconds gauge\n\
app_lag_seconds 0.25\n\
# HELP app_build_info Build.\n\
# TYPE app_build_info gauge\n\
app_build_info{version=\"1\"} 1\n\
# HELP app_latency_seconds Latency.\n\
# TYPE app_latency_seconds histogram\n\
app_latency_seconds_sum 1.5\n\
app_latency_seconds_count 2\n\
app_latency_seconds_bucket{le=\"0.5\"} 1\n\
app_latency_seconds_bucket{le=\"+Inf\"} 2\n"
        );
    }

    #[test]
    fn a_label_value_holding_a_hash_is_not_an_exemplar() {
        let text = to_prometheus_text("# TYPE x gauge\nx{path=\"a # b\"} 1\n# EOF\n");
        assert_eq!(text, "# TYPE x gauge\nx{path=\"a # b\"} 1\n");
    }

    #[test]
    fn series_are_sorted_within_their_family_and_histograms_keep_their_order() {
        let text = "# TYPE b counter\nb_total{s=\"z\"} 1\nb_total{s=\"a\"} 2\n\
# TYPE h histogram\nh_sum{op=\"put\"} 1\nh_count{op=\"put\"} 1\nh_bucket{op=\"put\",le=\"0.5\"} 1\n\
h_bucket{op=\"put\",le=\"+Inf\"} 1\nh_sum{op=\"get\"} 2\nh_count{op=\"get\"} 2\n\
h_bucket{op=\"get\",le=\"0.5\"} 2\nh_bucket{op=\"get\",le=\"+Inf\"} 2\n# EOF\n";
        assert_eq!(
            stable_order(text),
            "# TYPE b counter\nb_total{s=\"a\"} 2\nb_total{s=\"z\"} 1\n\
# TYPE h histogram\nh_sum{op=\"get\"} 2\nh_count{op=\"get\"} 2\nh_bucket{op=\"get\",le=\"0.5\"} 2\n\
h_bucket{op=\"get\",le=\"+Inf\"} 2\nh_sum{op=\"put\"} 1\nh_count{op=\"put\"} 1\n\
h_bucket{op=\"put\",le=\"0.5\"} 1\nh_bucket{op=\"put\",le=\"+Inf\"} 1\n# EOF\n"
        );
    }

    #[test]
    fn negotiation_follows_the_accept_header() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some(
            "text/plain;version=0.0.4,application/openmetrics-text;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(wants_openmetrics(Some("Application/OpenMetrics-Text")));
    }
}
