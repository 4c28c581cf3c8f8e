//! Prometheus metrics with [prometheus_client] (the OpenMetrics text format): request counts
//! and latency histograms per operation, tokens generated, retrieval latency, rate-limited
//! requests, and values read when scraped (queue depth, open streams and subscriptions, the
//! query cache's hits and misses, rolling summaries written and failed).
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the latency histograms.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    transport: String,
    operation: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    transport: String,
    operation: String,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Values read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Chat requests waiting or being generated.
    pub queue_depth: usize,
    /// Open GraphQL subscriptions and streamed completions.
    pub active_streams: usize,
    /// Subscribers of memory events.
    pub memory_subscribers: usize,
    /// Retrievals answered from the query cache.
    pub cache_hits: u64,
    /// Retrievals that were not.
    pub cache_misses: u64,
    /// Rolling summaries stored.
    pub summaries_written: u64,
    /// Rolling summaries that failed.
    pub summary_failures: u64,
}

/// The scrape-time values, encoded when the registry is.
#[derive(Debug, Default, Clone)]
struct Snapshot(Arc<Mutex<Gauges>>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = *self.0.lock().expect("metrics snapshot");
        let gauges = [
            (
                "deep_recall_chat_queue_depth",
                "Chat requests waiting or being generated.",
                g.queue_depth,
            ),
            (
                "deep_recall_active_streams",
                "Open chat subscriptions and streamed completions.",
                g.active_streams,
            ),
            (
                "deep_recall_memory_event_subscribers",
                "Open memoryEvents subscriptions.",
                g.memory_subscribers,
            ),
        ];
        for (name, help, v) in gauges {
            let gauge = ConstGauge::new(v as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters = [
            (
                "deep_recall_query_cache_hits",
                "Retrievals answered from the query cache.",
                g.cache_hits,
            ),
            (
                "deep_recall_query_cache_misses",
                "Retrievals computed (not in the query cache).",
                g.cache_misses,
            ),
            (
                "deep_recall_summaries_written",
                "Rolling summaries stored.",
                g.summaries_written,
            ),
            (
                "deep_recall_summary_failures",
                "Rolling summaries that failed (see the log).",
                g.summary_failures,
            ),
        ];
        for (name, help, v) in counters {
            let counter = ConstCounter::new(v);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Distinct `operation` label values kept at most; later ones are counted as `other`.
/// GraphQL operation names come from clients, and each new label value is a new time series.
pub const MAX_OPERATIONS: usize = 100;

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    operations: std::sync::Mutex<std::collections::HashSet<String>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    retrieval: Histogram,
    tokens: Counter,
    rate_limited: Counter,
    snapshot: Snapshot,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "deep_recall_requests",
            "Requests by transport, operation and outcome",
            requests.clone(),
        );
        let latency = Family::new_with_constructor(histogram as fn() -> Histogram);
        registry.register(
            "deep_recall_request_duration_seconds",
            "Request latency",
            latency.clone(),
        );
        let retrieval = histogram();
        registry.register(
            "deep_recall_retrieval_duration_seconds",
            "Retrieval and prompt assembly",
            retrieval.clone(),
        );
        let tokens = Counter::default();
        registry.register(
            "deep_recall_generated_tokens",
            "Tokens generated by the chat model",
            tokens.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "deep_recall_rate_limited",
            "Requests refused by a rate limit",
            rate_limited.clone(),
        );
        let snapshot = Snapshot::default();
        registry.register_collector(Box::new(snapshot.clone()));
        Self {
            registry,
            operations: Default::default(),
            requests,
            latency,
            retrieval,
            tokens,
            rate_limited,
            snapshot,
        }
    }
}

impl Metrics {
    /// Counts one request of `operation` over `transport` ("graphql", "rest", "ws") that ended
    /// with `outcome` ("ok" or an error code) after `took`.
    pub fn request(&self, transport: &str, operation: &str, outcome: &str, took: Duration) {
        let operation = self.operation_label(operation);
        let operation = operation.as_str();
        self.requests
            .get_or_create(&RequestLabels {
                transport: transport.into(),
                operation: operation.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.latency
            .get_or_create(&OperationLabels {
                transport: transport.into(),
                operation: operation.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// `operation` as a label: itself when it is a plain name (letters, digits, `_`, `.`,
    /// `-`; at most 64 bytes) among the first [`MAX_OPERATIONS`] seen, else `other`.
    fn operation_label(&self, operation: &str) -> String {
        let plain = !operation.is_empty()
            && operation.len() <= 64
            && operation
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !plain {
            return "other".into();
        }
        let mut known = self.operations.lock().expect("operation labels");
        if known.contains(operation) || known.len() < MAX_OPERATIONS {
            known.insert(operation.to_owned());
            operation.to_owned()
        } else {
            "other".into()
        }
    }

    /// Records one retrieval (context building) taking `took`.
    pub fn retrieval(&self, took: Duration) {
        self.retrieval.observe(took.as_secs_f64());
    }

    /// Adds generated tokens.
    pub fn tokens(&self, n: usize) {
        self.tokens.inc_by(n as u64);
    }

    /// Counts a request refused by a rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// The exposition text, with `g` as the scrape-time values.
    pub fn render(&self, g: Gauges) -> String {
        *self.snapshot.0.lock().expect("metrics snapshot") = g;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_chosen_operation_names_cannot_grow_the_series_without_bound() {
        let m = Metrics::default();
        for i in 0..1000 {
            m.request("graphql", &format!("op{i}"), "ok", Duration::from_millis(1));
        }
        m.request("graphql", "op0", "ok", Duration::from_millis(1));
        m.request("graphql", "bad name\"}", "ok", Duration::from_millis(1));
        let text = m.render(Gauges::default());
        let series = text
            .lines()
            .filter(|l| l.starts_with("deep_recall_requests_total{"))
            .count();
        assert_eq!(series, MAX_OPERATIONS + 1, "the first 100 names and other");
        assert!(
            text.contains("operation=\"op0\",outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("operation=\"other\",outcome=\"ok\"} 901"),
            "{text}"
        );
        assert!(!text.contains("bad name"));
    }

    #[test]
    fn exposition_has_counts_cumulative_buckets_and_scrape_time_values() {
        let m = Metrics::default();
        m.request("graphql", "search", "ok", Duration::from_millis(3));
        m.request("graphql", "search", "ok", Duration::from_millis(300));
        m.request(
            "rest",
            "chat.completions",
            "BAD_INPUT",
            Duration::from_millis(1),
        );
        m.tokens(12);
        let text = m.render(Gauges {
            queue_depth: 2,
            cache_hits: 5,
            cache_misses: 7,
            ..Gauges::default()
        });
        assert!(
            text.contains(
                "deep_recall_requests_total{transport=\"graphql\",operation=\"search\",outcome=\"ok\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "deep_recall_request_duration_seconds_bucket{le=\"0.005\",transport=\"graphql\",operation=\"search\"} 1"
        ) || text.contains(
            "deep_recall_request_duration_seconds_bucket{transport=\"graphql\",operation=\"search\",le=\"0.005\"} 1"
        ), "{text}");
        assert!(
            text.contains("deep_recall_generated_tokens_total 12"),
            "{text}"
        );
        assert!(text.contains("deep_recall_chat_queue_depth 2"), "{text}");
        assert!(
            text.contains("deep_recall_query_cache_hits_total 5"),
            "{text}"
        );
        assert!(
            text.contains("deep_recall_query_cache_misses_total 7"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
