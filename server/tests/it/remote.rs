//! A remote OpenAI-compatible chat provider behind `serve` and `generate` (`--chat-url`),
//! against `server/tests/fake_openai.py` run as its own process: it streams server-sent
//! events, fails on demand, and logs what it was sent.
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::fixtures::{
    FakeProvider, Server, Store, Ws, code, data, gql, mcp_tool, metrics, sample, token,
};

const CHAT: &str = "mutation($i: ChatInput!) { chat(input: $i) { text model confidence finishReason usage { promptTokens completionTokens } context { content } } }";

#[tokio::test(flavor = "multi_thread")]
async fn serve_and_generate_answer_with_a_remote_provider() {
    // The first two calls fail with 503: the client retries past them.
    let fake = FakeProvider::start(2);
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("provider.key");
    std::fs::write(&key_file, "sk-test-0123\n").unwrap();
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &[
            "--chat-url",
            &fake.url,
            "--chat-api-key-file",
            key_file.to_str().unwrap(),
            "--chat-model-name",
            "fake-llm",
        ],
        &[("DEEP_RECALL__CHAT__SUMMARY_TRIGGER_MESSAGES", "0")],
    );
    let alice = token("alice", false, 600);
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { addMemory(input: { content: \"Alice's favourite city is Paris\" }) { id } }",
        json!({}),
    )
    .await;
    data(&body);

    // A whole answer over GraphQL, from the provider, with the user's memory in the prompt.
    let (_, body) = gql(
        &server,
        Some(&alice),
        CHAT,
        json!({ "i": { "session": "s", "message": "Where should I travel next?", "maxTokens": 32 } }),
    )
    .await;
    let r = &data(&body)["chat"];
    let text = r["text"].as_str().unwrap();
    assert!(
        text.starts_with("Remote answer: ") && text.ends_with("first word Where."),
        "{r}"
    );
    assert_eq!(r["model"], "fake-llm");
    // Streamed from the provider, each chunk with a log-probability of -0.5.
    assert_eq!(r["confidence"], -0.5);
    assert_eq!(
        (&r["usage"]["promptTokens"], &r["usage"]["completionTokens"]),
        (&json!(11), &json!(7))
    );
    assert!(r["context"].to_string().contains("Paris"), "{r}");
    let sent = fake.requests();
    assert_eq!(sent.len(), 3, "two failures, then the answer: {sent:?}");
    for req in &sent {
        assert_eq!(
            req["authorization"], "Bearer sk-test-0123",
            "the key from the file"
        );
        assert_eq!(req["body"]["model"], "fake-llm");
        assert_eq!(req["body"]["max_tokens"], 32);
        assert_eq!(req["body"]["stream"], true);
    }
    let messages = sent[2]["body"]["messages"].as_array().unwrap();
    assert!(
        Value::Array(messages.clone()).to_string().contains("Paris"),
        "the memory reaches the prompt: {messages:?}"
    );
    assert_eq!(
        messages.last().unwrap()["content"],
        "Where should I travel next?"
    );
    // Both turns are stored, as with a local model.
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"s\") { edges { node { role content } } } }",
        json!({}),
    )
    .await;
    let stored = data(&body)["messages"]["edges"].as_array().unwrap().clone();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1]["node"]["content"], text);

    // Streamed over graphql-ws: the provider's chunks arrive as deltas, in order.
    let mut ws = Ws::as_user(&server, &alice).await;
    let (deltas, result) = ws
        .chat(
            "c",
            json!({ "session": "s", "message": "Tell me more", "maxTokens": 16 }),
        )
        .await;
    assert_eq!(deltas.len(), 3, "{deltas:?}");
    assert_eq!(result["text"].as_str().unwrap(), deltas.concat());
    assert!(deltas.concat().ends_with("first word Tell."));
    assert_eq!(result["model"], "fake-llm");

    // The OpenAI-compatible API answers through it too.
    let rest: Value = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(&alice)
        .json(&json!({ "messages": [{ "role": "user", "content": "Hello from REST" }] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answer = rest["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        answer.starts_with("Remote answer: ") && answer.ends_with("first word Hello."),
        "{rest}"
    );
    let models: Value = reqwest::Client::new()
        .get(format!("{}/v1/models", server.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "fake-llm", "{models}");

    // A provider that keeps failing: the request fails fast with UNAVAILABLE, after the
    // retries, and nothing but the acknowledged user message is stored.
    fake.fail(-1).await;
    let started = Instant::now();
    let (_, body) = gql(
        &server,
        Some(&alice),
        CHAT,
        json!({ "i": { "session": "down", "message": "Anyone there?" } }),
    )
    .await;
    assert_eq!(code(&body), "UNAVAILABLE", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"down\") { edges { node { role } } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        data(&body)["messages"]["edges"],
        json!([{ "node": { "role": "USER" } }])
    );
    fake.fail(0).await;

    // `generate` takes the same flags; a provider without log-probabilities gives no
    // confidence rather than a made-up one.
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_deep-recall"))
            .args(args)
            .env("DEEP_RECALL__CHAT__API_KEY", "sk-from-env")
            .output()
            .unwrap()
    };
    let out = run(&[
        "--json",
        "generate",
        "--chat-url",
        &fake.url,
        "--chat-model-name",
        "no-logprobs",
        "Hello there",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["text"], "Remote answer: 1 messages, first word Hello.",
        "{v}"
    );
    assert_eq!(v["model"], "no-logprobs");
    assert!(v["confidence"].is_null(), "{v}");
    let last = fake.requests().pop().unwrap();
    assert_eq!(last["authorization"], "Bearer sk-from-env");
    let out = run(&["generate", "--chat-url", &fake.url, "Stream this"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Remote answer: 1 messages, first word Stream."
    );
    // A URL that is not one is bad input; an unreachable provider is unavailable.
    let out = run(&["generate", "--chat-url", "localhost:9", "hi"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["generate", "--chat-url", "http://127.0.0.1:9/v1", "hi"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `[models] embedding_url`: the server embeds through the provider (its model name recorded
/// with every vector, its key sent), and finds memories by those vectors.
#[tokio::test(flavor = "multi_thread")]
async fn serve_embeds_with_a_remote_provider() {
    let fake = FakeProvider::start(0);
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[
            ("DEEP_RECALL__MODELS__EMBEDDING_URL", &fake.url),
            ("DEEP_RECALL__MODELS__EMBEDDING", "fake-embed"),
            ("DEEP_RECALL__MODELS__EMBEDDING_API_KEY", "sk-embed-42"),
            // Nothing local is loaded for embeddings.
            ("DEEP_RECALL__MODELS__DIR", "/nonexistent"),
        ],
    );
    let alice = token("alice", false, 600);
    for content in [
        "My grandfather was a lighthouse keeper in Brittany.",
        "I am allergic to peanuts.",
        "We adopted a cat named Miso.",
    ] {
        let (_, body) = gql(
            &server,
            Some(&alice),
            "mutation($c: String!) { addMemory(input: { content: $c }) { id } }",
            json!({ "c": content }),
        )
        .await;
        assert!(body["errors"].is_null(), "{body}");
    }
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ search(query: \"a cat named Miso\", topK: 1, mode: VECTOR) { memory { content } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        data(&body)["search"][0]["memory"]["content"],
        "We adopted a cat named Miso.",
        "{body}"
    );
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ health { embeddingModel } }",
        json!({}),
    )
    .await;
    assert_eq!(data(&body)["health"]["embeddingModel"], "fake-embed");
    let requests = fake.embedding_requests();
    // The dimension probe at start, three memories, one query.
    assert!(requests.len() >= 5, "{requests:?}");
    for r in &requests {
        assert_eq!(r["authorization"], "Bearer sk-embed-42");
        assert_eq!(r["body"]["model"], "fake-embed");
    }
}

/// A request cut off at `limits.request_timeout_secs` answers `TIMEOUT` (504), which the SDKs
/// and OpenAI's clients do not send again for a write; the turn tried again by hand keeps the
/// one message its first try stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_past_its_time_limit_is_a_timeout() {
    let fake = FakeProvider::start(0);
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &["--chat-url", &fake.url, "--chat-model-name", "fake-llm"],
        &[
            ("DEEP_RECALL__LIMITS__REQUEST_TIMEOUT_SECS", "1"),
            ("DEEP_RECALL__CHAT__SUMMARY_TRIGGER_MESSAGES", "0"),
        ],
    );
    let alice = token("alice", false, 600);
    fake.delay(3.0).await;
    let ask = json!({ "i": { "session": "slow", "message": "Are you still there?" } });
    let (status, body) = gql(&server, Some(&alice), CHAT, ask.clone()).await;
    assert_eq!((status, code(&body)), (504, "TIMEOUT"), "{body}");

    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(&alice)
        .json(&json!({ "messages": [{ "role": "user", "content": "Hello from REST" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 504);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "TIMEOUT", "{err}");
    assert_eq!(err["error"]["type"], "timeout_error", "{err}");

    // A mutation sent over a WebSocket meets the same limit.
    let mut ws = Ws::as_user(&server, &alice).await;
    let sent = Instant::now();
    let over_ws = json!({ "i": { "session": "slow-ws", "message": "Still there?" } });
    let named = "mutation WsChat($i: ChatInput!) { chat(input: $i) { text } }";
    ws.subscribe("1", named, over_ws).await;
    let m = ws.next().await.unwrap();
    assert_eq!(m["type"], "next", "{m}");
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "TIMEOUT",
        "{m}"
    );
    assert!(
        sent.elapsed() < Duration::from_millis(2900),
        "cut off at the limit"
    );
    assert_eq!(ws.next().await.unwrap()["type"], "complete");
    // And is counted as the same mutation over HTTP would be.
    let page = metrics(&server).await;
    let counted = "deep_recall_requests_total{transport=\"graphql\",operation=\"WsChat\",outcome=\"TIMEOUT\"}";
    assert_eq!(sample(&page, counted), 1.0, "{page}");

    // An MCP tool call too, with the code first in the text the model reads.
    let hello = json!({ "session": "slow-mcp", "message": "Hello?" });
    let (text, failed) = mcp_tool(&server, &alice, "chat", hello).await;
    assert!(failed && text.starts_with("TIMEOUT: "), "{text}");

    // Tried again once the provider is quick: answered, to the message already stored.
    fake.delay(0.0).await;
    let (_, body) = gql(&server, Some(&alice), CHAT, ask).await;
    assert!(data(&body)["chat"]["text"].is_string(), "{body}");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"slow\") { edges { node { role content } } } }",
        json!({}),
    )
    .await;
    let stored = data(&body)["messages"]["edges"].as_array().unwrap().clone();
    let roles: Vec<&Value> = stored.iter().map(|e| &e["node"]["role"]).collect();
    assert_eq!(roles, [&json!("USER"), &json!("ASSISTANT")], "{stored:?}");
}
