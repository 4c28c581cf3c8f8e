//! OpenTelemetry traces, off by default: with `[telemetry] otlp_endpoint` the spans of the
//! `tracing` crate (`request` for each HTTP request, and core's `chat`, `context`,
//! `retrieval`, `embed_query`, `rerank` and `generation`) are exported over OTLP/HTTP
//! (protobuf) in batches, from a thread of their own. An incoming W3C `traceparent` header
//! continues the caller's trace. Spans carry no message text or memory content: names,
//! counts, sizes, models and timings only.
use std::time::Duration;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use recall_core::error::{Error, Result};

use crate::settings::TelemetrySettings;

/// The exporter while the process runs; [`Telemetry::shutdown`] sends what is buffered.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// The URL spans are posted to: the endpoint as given when it names `/v1/traces`, else the
/// collector's base URL with that path added (the OTLP convention).
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

impl Telemetry {
    /// The exporter the settings ask for, if any, and the `tracing` layer that feeds it.
    pub fn start<S>(
        settings: &TelemetrySettings,
    ) -> Result<
        Option<(
            Self,
            tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        )>,
    >
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let Some(endpoint) = settings.otlp_endpoint.as_deref() else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url(endpoint))
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::invalid(format!("telemetry.otlp_endpoint: {e}")))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let tracer = provider.tracer("deep-recall");
        let layer = tracing_opentelemetry::layer().with_tracer(tracer);
        Ok(Some((Self { provider }, layer)))
    }

    /// Sends the buffered spans and stops the exporter (blocks, at most a few seconds).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("telemetry: {e}");
        }
    }
}

/// The trace context of an incoming request (`traceparent`, `tracestate`), for its span.
pub fn remote_context(headers: &axum::http::HeaderMap) -> opentelemetry::Context {
    struct Headers<'a>(&'a axum::http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_follows_the_otlp_convention() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
