//! OpenTelemetry traces: a server started with `--otlp-endpoint` sends its spans to a local
//! collector stand-in (OTLP/HTTP, protobuf, decoded with the reference `opentelemetry-proto`
//! types). A chat request carrying a W3C `traceparent` gives one trace under the caller's
//! span: request → chat → context → retrieval → embed_query, and chat → generation, with
//! counts and timings but no message text.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde_json::json;

use super::fixtures::{FakeProvider, Server, Store, data, token};

/// One received span.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    service: String,
    trace: String,
    id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// A collector stand-in on a free port: every span it is sent.
async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut got = sink.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .map(|a| text(&a.value))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            got.push(Span {
                                name: s.name,
                                service: service.clone(),
                                trace: hex::encode(s.trace_id),
                                id: hex::encode(s.span_id),
                                parent: hex::encode(s.parent_span_id),
                                attributes: s
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(&a.value)))
                                    .collect(),
                            });
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_spans_reach_an_otlp_collector() {
    let (url, spans) = collector().await;
    let fake = FakeProvider::start(0);
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &[
            "--chat-url",
            &fake.url,
            "--chat-model-name",
            "fake-llm",
            "--otlp-endpoint",
            &url,
        ],
        &[
            ("DEEP_RECALL__TELEMETRY__SERVICE_NAME", "recall-under-test"),
            ("DEEP_RECALL__CHAT__SUMMARY_TRIGGER_MESSAGES", "0"),
            // Export every 100 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let alice = token("alice", false, 600);
    let (_, body) = super::fixtures::gql(
        &server,
        Some(&alice),
        "mutation { addMemory(input: { content: \"Alice's favourite city is Paris\" }) { id } }",
        json!({}),
    )
    .await;
    data(&body);

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", server.base))
        .bearer_auth(&alice)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({
            "query": "mutation($i: ChatInput!) { chat(input: $i) { text usage { completionTokens } } }",
            "variables": { "i": { "session": "s", "message": "Where should I travel next?", "maxTokens": 32 } },
        }))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        data(&body)["chat"]["usage"]["completionTokens"],
        7,
        "{body}"
    );

    let wanted = [
        "request",
        "chat",
        "context",
        "retrieval",
        "embed_query",
        "generation",
    ];
    let started = Instant::now();
    let trace: Vec<Span> = loop {
        let trace: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace == caller_trace)
            .cloned()
            .collect();
        if wanted.iter().all(|w| trace.iter().any(|s| s.name == *w)) {
            break trace;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "spans of the trace so far: {trace:#?}\nserver: {}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let one = |name: &str| {
        let found: Vec<&Span> = trace.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span: {trace:#?}");
        found[0].clone()
    };
    let (request, chat, context, retrieval, embed, generation) = (
        one("request"),
        one("chat"),
        one("context"),
        one("retrieval"),
        one("embed_query"),
        one("generation"),
    );
    assert_eq!(request.parent, caller_span, "under the caller's span");
    assert_eq!(chat.parent, request.id);
    assert_eq!(context.parent, chat.id);
    assert_eq!(retrieval.parent, context.id);
    assert_eq!(embed.parent, retrieval.id);
    assert_eq!(generation.parent, chat.id);
    assert_eq!(request.service, "recall-under-test");
    assert_eq!(request.attributes["url.path"], "/graphql");
    assert_eq!(request.attributes["http.response.status_code"], "200");
    assert_eq!(retrieval.attributes["mode"], "hybrid");
    assert_eq!(generation.attributes["model"], "fake-llm");
    assert_eq!(generation.attributes["completion_tokens"], "7");
    // Names, counts and timings; never what the user said or what is remembered.
    for s in &trace {
        for v in s.attributes.values() {
            assert!(
                !v.contains("travel") && !v.contains("Paris"),
                "{} carries content: {v}",
                s.name
            );
        }
    }

    // A request without a traceparent starts its own trace.
    reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let roots: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| {
                s.name == "request"
                    && s.attributes.get("url.path").map(String::as_str) == Some("/health")
            })
            .cloned()
            .collect();
        if let Some(root) = roots.first() {
            assert!(root.parent.is_empty(), "{root:?}");
            assert_ne!(root.trace, caller_trace);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no /health span"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
