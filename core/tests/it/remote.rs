//! The OpenAI-compatible remote client against a local fake server that speaks the real wire
//! format (HTTP/1.1, JSON, server-sent events), including failures.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use recall_core::ErrorKind;
use recall_core::context::ChatTurn;
use recall_core::llm::{ChatEvent, FinishReason, GenerationParams, RemoteChat, RemoteConfig};
use recall_core::types::Role;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the fake server does with one request.
#[derive(Clone)]
enum Reply {
    Json(u16, Value),
    /// Status, extra header lines.
    Status(u16, &'static str),
    /// SSE events (each the JSON after `data: `, or raw text), with a pause before each.
    Sse(Vec<String>, Duration),
    /// An event stream written as these raw pieces, with a pause before each (pieces may
    /// end anywhere, inside a character too).
    Raw(Vec<Vec<u8>>, Duration),
    /// Wait this long before answering 200 with this JSON.
    Slow(Duration, Value),
    /// Embeddings of the request's `input` by the real all-MiniLM-L6-v2 (as
    /// text-embeddings-inference would answer), listed in reverse order with their `index`.
    Embed,
}

/// The model the fake embedding provider runs.
static MODEL: std::sync::LazyLock<recall_core::embed::BertEmbedder> =
    std::sync::LazyLock::new(|| {
        recall_core::embed::BertEmbedder::load(
            &crate::fixtures::minilm_dir(),
            &candle_core::Device::Cpu,
            32,
            None,
        )
        .unwrap()
    });

fn embeddings_answer(body: &Value) -> Value {
    let texts: Vec<&str> = body["input"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let vectors = MODEL.embed(&texts).unwrap();
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .rev()
        .map(|(i, v)| json!({ "object": "embedding", "index": i, "embedding": v }))
        .collect();
    json!({ "object": "list", "model": body["model"], "data": data,
            "usage": { "prompt_tokens": 0, "total_tokens": 0 } })
}

struct Fake {
    url: String,
    requests: Arc<Mutex<Vec<Value>>>,
}

async fn fake(script: Vec<Reply>) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let requests: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                // Read the head, then the body by Content-Length.
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let head_end = loop {
                    let n = sock.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while buf.len() < head_end + len {
                    let n = sock.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let body: Value = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
                seen.lock().unwrap().push(body.clone());
                let reply = {
                    let mut s = script.lock().unwrap();
                    if s.len() > 1 {
                        s.pop_front().unwrap()
                    } else {
                        s[0].clone()
                    }
                };
                let write = |status: u16, headers: &str, body: &str| {
                    format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                match reply {
                    Reply::Json(status, v) => {
                        let _ = sock
                            .write_all(write(status, "", &v.to_string()).as_bytes())
                            .await;
                    }
                    Reply::Status(status, headers) => {
                        let _ = sock
                            .write_all(write(status, headers, "{\"error\":\"x\"}").as_bytes())
                            .await;
                    }
                    Reply::Embed => {
                        let v = embeddings_answer(&body);
                        let _ = sock
                            .write_all(write(200, "", &v.to_string()).as_bytes())
                            .await;
                    }
                    Reply::Slow(d, v) => {
                        tokio::time::sleep(d).await;
                        let _ = sock
                            .write_all(write(200, "", &v.to_string()).as_bytes())
                            .await;
                    }
                    Reply::Raw(pieces, pause) => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                            .await;
                        for piece in pieces {
                            tokio::time::sleep(pause).await;
                            if sock.write_all(&piece).await.is_err() {
                                return;
                            }
                        }
                    }
                    Reply::Sse(events, pause) => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                            .await;
                        for e in events {
                            tokio::time::sleep(pause).await;
                            if sock
                                .write_all(format!("data: {e}\n\n").as_bytes())
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    Fake { url, requests }
}

fn config(url: &str) -> RemoteConfig {
    RemoteConfig {
        base_url: url.into(),
        api_key: Some("sk-test".into()),
        model: "fake-model".into(),
        timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(300),
        max_retries: 2,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        breaker_threshold: 2,
        breaker_cooldown: Duration::from_millis(400),
        ..RemoteConfig::default()
    }
}

fn turns() -> Vec<ChatTurn> {
    vec![
        ChatTurn {
            role: Role::System,
            content: "Be brief.".into(),
        },
        ChatTurn {
            role: Role::User,
            content: "Capital of France?".into(),
        },
    ]
}

fn answer(text: &str) -> Value {
    json!({
        "id": "c1", "object": "chat.completion", "model": "fake-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text},
                     "logprobs": {"content": [{"token": "P", "logprob": -0.5}, {"token": "aris", "logprob": -0.1}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    })
}

fn chunk(text: &str, finish: Option<&str>) -> String {
    json!({"id": "c1", "object": "chat.completion.chunk",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completes_and_sends_the_openai_request() {
    let f = fake(vec![Reply::Json(200, answer("Paris."))]).await;
    let c = RemoteChat::new(config(&f.url)).unwrap();
    let params = GenerationParams {
        max_tokens: 20,
        stop: vec!["\n".into()],
        top_p: Some(0.9),
        ..GenerationParams::default()
    };
    let out = c.complete(&turns(), &params).await.unwrap();
    assert_eq!(out.text, "Paris.");
    assert_eq!((out.prompt_tokens, out.completion_tokens), (12, 2));
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert!((out.confidence - (-0.3)).abs() < 1e-6);
    let req = f.requests.lock().unwrap()[0].clone();
    assert_eq!(req["model"], "fake-model");
    assert_eq!(
        req["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(req["messages"][1]["role"], "user");
    assert_eq!(req["max_tokens"], 20);
    assert_eq!(req["stop"], json!(["\n"]));
    assert_eq!(req["stream"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_server_sent_events() {
    let usage =
        json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
            .to_string();
    let f = fake(vec![Reply::Sse(
        vec![
            chunk("Pa", None),
            chunk("ris", None),
            chunk(".", Some("length")),
            usage,
            "[DONE]".into(),
        ],
        Duration::from_millis(5),
    )])
    .await;
    let c = RemoteChat::new(config(&f.url)).unwrap();
    let mut rx = c
        .stream(&turns(), &GenerationParams::default())
        .await
        .unwrap();
    let mut deltas = Vec::new();
    let mut done = None;
    while let Some(e) = rx.recv().await {
        match e.unwrap() {
            ChatEvent::Delta { text } => deltas.push(text),
            ChatEvent::Done { completion } => done = Some(completion),
        }
    }
    assert_eq!(deltas, ["Pa", "ris", "."]);
    let done = done.unwrap();
    assert_eq!(done.text, "Paris.");
    assert_eq!(done.finish_reason, FinishReason::Length);
    assert_eq!((done.prompt_tokens, done.completion_tokens), (9, 3));
    assert_eq!(f.requests.lock().unwrap()[0]["stream"], true);
}

/// A character split between two pieces of the stream (vLLM and Ollama write UTF-8 as is) is
/// streamed and stored whole, not as two replacement characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_character_split_between_pieces_of_the_stream_stays_whole() {
    let event = format!("data: {}\n\ndata: [DONE]\n\n", chunk("café", Some("stop")));
    let bytes = event.into_bytes();
    let split = bytes.iter().position(|&b| b == 0xC3).unwrap() + 1;
    let f = fake(vec![Reply::Raw(
        vec![bytes[..split].to_vec(), bytes[split..].to_vec()],
        Duration::from_millis(40),
    )])
    .await;
    let c = RemoteChat::new(config(&f.url)).unwrap();
    let mut rx = c
        .stream(&turns(), &GenerationParams::default())
        .await
        .unwrap();
    let (mut streamed, mut done) = (String::new(), None);
    while let Some(e) = rx.recv().await {
        match e.unwrap() {
            ChatEvent::Delta { text } => streamed.push_str(&text),
            ChatEvent::Done { completion } => done = Some(completion),
        }
    }
    assert_eq!(streamed, "café");
    assert_eq!(done.unwrap().text, "café");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_server_errors_and_rate_limits_then_succeeds() {
    let f = fake(vec![
        Reply::Status(500, ""),
        Reply::Status(429, "retry-after: 0\r\n"),
        Reply::Json(200, answer("ok")),
    ])
    .await;
    let c = RemoteChat::new(config(&f.url)).unwrap();
    let out = c
        .complete(&turns(), &GenerationParams::default())
        .await
        .unwrap();
    assert_eq!(out.text, "ok");
    assert_eq!(f.requests.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_retried_and_reported() {
    let f = fake(vec![Reply::Slow(Duration::from_secs(2), answer("late"))]).await;
    let c = RemoteChat::new(config(&f.url)).unwrap();
    let err = c
        .complete(&turns(), &GenerationParams::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(
        f.requests.lock().unwrap().len(),
        3,
        "first try and two retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_not_retried() {
    let f = fake(vec![Reply::Status(400, "")]).await;
    let c = RemoteChat::new(config(&f.url)).unwrap();
    let err = c
        .complete(&turns(), &GenerationParams::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(f.requests.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunks_and_silence_end_the_stream_with_an_error() {
    let f = fake(vec![
        Reply::Sse(
            vec![chunk("Pa", None), "{not json".into()],
            Duration::from_millis(5),
        ),
        Reply::Sse(
            vec![chunk("Pa", None), chunk("ris", None)],
            Duration::from_millis(600),
        ),
    ])
    .await;
    let c = RemoteChat::new(config(&f.url)).unwrap();
    for expected in ["malformed chunk", "silent"] {
        let mut rx = c
            .stream(&turns(), &GenerationParams::default())
            .await
            .unwrap();
        let mut last = None;
        while let Some(e) = rx.recv().await {
            last = Some(e);
        }
        let err = last.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_after_repeated_failures_and_closes_after_a_good_trial() {
    let f = fake(vec![
        Reply::Status(503, ""),
        Reply::Status(503, ""),
        Reply::Status(503, ""),
        Reply::Status(503, ""),
        Reply::Status(503, ""),
        Reply::Status(503, ""),
        Reply::Json(200, answer("back")),
    ])
    .await;
    let c = RemoteChat::new(config(&f.url)).unwrap();
    for _ in 0..2 {
        let err = c
            .complete(&turns(), &GenerationParams::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }
    assert_eq!(f.requests.lock().unwrap().len(), 6);
    // Open: refused without a request.
    let err = c
        .complete(&turns(), &GenerationParams::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("circuit open"), "{err}");
    assert_eq!(f.requests.lock().unwrap().len(), 6);
    // After the cooldown one trial goes through; it succeeds and the circuit closes.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        c.complete(&turns(), &GenerationParams::default())
            .await
            .unwrap()
            .text,
        "back"
    );
    assert_eq!(
        c.complete(&turns(), &GenerationParams::default())
            .await
            .unwrap()
            .text,
        "back"
    );
}

/// A trial call whose consumer goes away before the answer ends gives its turn back: the
/// next call is let through (it was refused as "half-open" until the process restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_whose_consumer_leaves_does_not_hold_the_circuit_half_open() {
    let pieces: Vec<String> = (0..20).map(|i| chunk(&format!("w{i} "), None)).collect();
    let mut script = vec![Reply::Status(503, ""); 6];
    script.push(Reply::Sse(pieces, Duration::from_millis(20)));
    script.push(Reply::Json(200, answer("back")));
    let f = fake(script).await;
    let c = RemoteChat::new(config(&f.url)).unwrap();
    for _ in 0..2 {
        c.complete(&turns(), &GenerationParams::default())
            .await
            .unwrap_err();
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    // The trial: a stream, left after its first piece.
    let mut rx = c
        .stream(&turns(), &GenerationParams::default())
        .await
        .unwrap();
    assert!(matches!(rx.recv().await, Some(Ok(ChatEvent::Delta { .. }))));
    drop(rx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = c.complete(&turns(), &GenerationParams::default()).await;
    assert_eq!(out.unwrap().text, "back");
}

/// A stream that flows for longer than `timeout` is read to its end: the timeout bounds the
/// wait for the answer to begin, the idle timeout each pause within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_timeout_is_read_whole() {
    let mut pieces: Vec<String> = (0..8).map(|i| chunk(&format!("w{i} "), None)).collect();
    pieces.push("[DONE]".into());
    // A piece every 200 ms: 1.8 s in all, against a 500 ms timeout and 300 ms idle timeout.
    let f = fake(vec![Reply::Sse(pieces, Duration::from_millis(200))]).await;
    let c = RemoteChat::new(config(&f.url)).unwrap();
    let mut rx = c
        .stream(&turns(), &GenerationParams::default())
        .await
        .unwrap();
    let mut last = None;
    while let Some(e) = rx.recv().await {
        last = Some(e);
    }
    match last.unwrap().unwrap() {
        ChatEvent::Done { completion } => assert!(completion.text.starts_with("w0 w1 ")),
        other => panic!("{other:?}"),
    }
}

// The remote embedder (`POST /embeddings`).

use recall_core::embed::{Embedder, RemoteEmbedder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_embeddings_come_in_batches_in_order_and_equal_the_local_model() {
    std::sync::LazyLock::force(&MODEL);
    let f = fake(vec![Reply::Embed]).await;
    // The fake provider embeds with the real model: on a busy machine that can pass the
    // short timeout the retry tests use, and a retried batch would be counted twice.
    let mut c = config(&f.url);
    c.timeout = Duration::from_secs(30);
    let e = RemoteEmbedder::connect(c, 3).await.unwrap();
    assert_eq!(e.dims(), 384, "asked of the provider at start");
    assert_eq!(e.model_id(), "fake-model");
    let texts: Vec<String> = (0..7)
        .map(|i| format!("text number {i} about {}", ["boats", "cats", "tea"][i % 3]))
        .collect();
    let got = e.embed(texts.clone()).await.unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = MODEL.embed(&refs).unwrap();
    assert_eq!(
        got, want,
        "in input order, whatever order the provider lists them in"
    );
    let requests = f.requests.lock().unwrap().clone();
    let sizes: Vec<usize> = requests
        .iter()
        .map(|r| r["input"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [1, 3, 3, 1], "the probe, then batches of at most 3");
    for r in &requests {
        assert_eq!(r["model"], "fake-model");
        assert_eq!(r["encoding_format"], "float");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_embeddings_retry_failures_and_refuse_bad_answers() {
    std::sync::LazyLock::force(&MODEL);
    // A 503 at start is retried.
    let f = fake(vec![Reply::Status(503, ""), Reply::Embed]).await;
    let e = RemoteEmbedder::connect(config(&f.url), 8).await.unwrap();
    assert_eq!(f.requests.lock().unwrap().len(), 2);
    assert_eq!(e.embed(vec!["a".into()]).await.unwrap()[0].len(), 384);

    // A refused request is the caller's error and is not retried.
    let f = fake(vec![Reply::Embed, Reply::Status(400, "")]).await;
    let e = RemoteEmbedder::connect(config(&f.url), 8).await.unwrap();
    let err = e.embed(vec!["a".into()]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(f.requests.lock().unwrap().len(), 2);

    // Answers that do not fit: a missing vector, another dimension, an index twice, base64,
    // no list at all.
    let (v384, v8) = (vec![0.5f32; 384], vec![0.5f32; 8]);
    for bad in [
        json!({ "data": [{ "index": 0, "embedding": v384 }] }),
        json!({ "data": [{ "index": 0, "embedding": v8 }, { "index": 1, "embedding": v8 }] }),
        json!({ "data": [{ "index": 0, "embedding": v384 }, { "index": 0, "embedding": v384 }] }),
        json!({ "data": [{ "index": 0, "embedding": "AAAA" }, { "index": 1, "embedding": v384 }] }),
        json!({ "nothing": true }),
    ] {
        let f = fake(vec![Reply::Embed, Reply::Json(200, bad.clone())]).await;
        let e = RemoteEmbedder::connect(config(&f.url), 8).await.unwrap();
        let err = e.embed(vec!["a".into(), "b".into()]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{bad}: {err}");
        assert!(err.to_string().contains("embedding provider"), "{err}");
    }

    // Nobody there: a clear error at start.
    let mut c = config("http://127.0.0.1:9/v1");
    c.max_retries = 0;
    let err = RemoteEmbedder::connect(c, 8).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

/// An engine on a new embedded store (kept while the directory lives) that embeds with the
/// fake provider at `url`, given the provider's input limit.
async fn remote_engine(
    url: &str,
    max_tokens: Option<usize>,
) -> (recall_core::Engine, tempfile::TempDir) {
    use recall_core::setup::{EngineOptions, RemoteEmbedding, open_engine};
    use recall_core::store::StoreConfig;
    let dir = tempfile::tempdir().unwrap();
    let mut options = EngineOptions::new(StoreConfig::embedded(dir.path()));
    options.models_dir = dir.path().join("no-models-here");
    options.remote_embedding = Some(RemoteEmbedding {
        // The fake embeds on this machine's CPU, beside the other tests.
        provider: RemoteConfig {
            timeout: Duration::from_secs(60),
            ..config(url)
        },
        max_batch: 16,
        max_tokens,
    });
    (open_engine(&options).await.unwrap(), dir)
}

/// The engine opened with a remote embedder finds memories by meaning, as with the local model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_on_a_remote_embedder() {
    use recall_core::SearchOptions;
    let f = fake(vec![Reply::Embed]).await;
    let (engine, _dir) = remote_engine(&f.url, None).await;
    let file = std::fs::File::open(
        crate::fixtures::repo_root().join("examples/sample-conversation.jsonl"),
    )
    .unwrap();
    let messages =
        recall_core::ingest::parse_jsonl(std::io::BufReader::new(file), engine.limits()).unwrap();
    engine.add_messages("alice", messages).await.unwrap();
    let page = engine
        .search(
            "alice",
            "What is she allergic to?",
            &SearchOptions {
                top_k: 3,
                ..SearchOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(
        page.hits
            .iter()
            .any(|h| h.memory.content.contains("peanuts")),
        "{:?}",
        page.hits
            .iter()
            .map(|h| &h.memory.content)
            .collect::<Vec<_>>()
    );
}

/// With the provider's input limit set, a message longer than it is split into pieces that
/// fit (as for a local model), each its own memory, instead of being sent whole; within the
/// limit a text goes as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_message_is_split_to_the_providers_limit() {
    use recall_core::embed::remote::estimated_tokens;
    use recall_core::types::{NewMessage, Role};

    let f = fake(vec![Reply::Embed]).await;
    let (engine, _dir) = remote_engine(&f.url, Some(48)).await;
    let long = "The estuary was calm and the dolphins came close to the boat. ".repeat(12);
    let short = "My cat is called Miso.";
    let written = engine
        .add_messages(
            "ann",
            vec![
                NewMessage::new("s", Role::User, long.trim()),
                NewMessage::new("s", Role::User, short),
            ],
        )
        .await
        .unwrap();
    assert!(written[0].memory_ids.len() > 1, "{written:?}");
    assert_eq!(written[1].memory_ids.len(), 1);
    let inputs: Vec<String> = f.requests.lock().unwrap()[1..]
        .iter()
        .flat_map(|r| r["input"].as_array().unwrap().clone())
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert!(inputs.iter().any(|t| t == short), "{inputs:?}");
    for t in &inputs {
        assert!(estimated_tokens(t).len() <= 48, "{t:?}");
    }
}
