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
    /// Wait this long before answering 200 with this JSON.
    Slow(Duration, Value),
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
                seen.lock().unwrap().push(body);
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
                    Reply::Slow(d, v) => {
                        tokio::time::sleep(d).await;
                        let _ = sock
                            .write_all(write(200, "", &v.to_string()).as_bytes())
                            .await;
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
