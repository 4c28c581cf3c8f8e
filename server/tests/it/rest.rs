//! The OpenAI-compatible REST API, driven by the official `openai` Python SDK and by raw HTTP.
use std::process::Command;

use serde_json::{Value, json};

use super::fixtures::{Server, Store, data, gql, python, token};

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_sdk_streams_and_completes() {
    let store = Store::embedded();
    let server = Server::start(&store, &[], &[]);
    let alice = token("alice", false, 600);
    let script = recall_core::testing::repo_root().join("server/tests/openai_client.py");
    let base = server.base.clone();
    let tok = alice.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(base)
            .arg(tok)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "openai client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["models"][0]
            .as_str()
            .unwrap()
            .starts_with("SmolLM2-135M-Instruct"),
        "{r}"
    );
    assert!(r["text"].as_str().unwrap().contains("Paris"), "{r}");
    assert!(["stop", "length"].contains(&r["finish"].as_str().unwrap()));
    assert!(r["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
    let streamed: String = r["stream"]["deltas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        r["stream"]["deltas"].as_array().unwrap().len() > 1,
        "streamed in pieces"
    );
    assert!(streamed.contains("Paris"), "{r}");
    assert!(["stop", "length"].contains(&r["stream"]["finish"].as_str().unwrap()));
    assert_eq!(r["stream"]["roles"], json!(["assistant"]));
    // The second call (another session) remembers the first one: its prompt carries the
    // memories of that exchange.
    let first_prompt = r["usage"]["prompt_tokens"].as_u64().unwrap();
    let second_prompt = r["stream"]["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        second_prompt > first_prompt,
        "{first_prompt} vs {second_prompt}"
    );
    assert_eq!(r["embedding_dims"], 384);
    assert!(
        (r["cosine"].as_f64().unwrap() - 0.7553).abs() < 0.002,
        "{r}"
    );
    assert_eq!(r["other_user"], 403);
    assert_eq!(r["empty"], 400);

    // Both turns of each completion are stored in the session the header named.
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"sdk\") { edges { node { role content } } } }",
        json!({}),
    )
    .await;
    let msgs = data(&body)["messages"]["edges"].as_array().unwrap().clone();
    assert_eq!(msgs.len(), 2, "{body}");
    assert_eq!(msgs[0]["node"]["content"], "What is the capital of France?");
    assert_eq!(msgs[1]["node"]["content"], r["text"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_messages_are_the_conversation_and_users_are_scoped() {
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &[],
        &[("DEEP_RECALL__AUTH__ALLOW_ANONYMOUS", "false")],
    );
    let http = reqwest::Client::new();
    let alice = token("alice", false, 600);
    let complete = |messages: Value, user: Option<&str>| {
        let mut body = json!({ "messages": messages, "max_tokens": 4, "session": "conv" });
        if let Some(u) = user {
            body["user"] = json!(u);
        }
        http.post(format!("{}/v1/chat/completions", server.base))
            .bearer_auth(&alice)
            .json(&body)
            .send()
    };
    let alone: Value = complete(
        json!([{ "role": "user", "content": "What is my name?" }]),
        None,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let with_history: Value = complete(
        json!([
            { "role": "user", "content": "My name is Zorblax and I grow tomatoes on Mars." },
            { "role": "assistant", "content": "Nice to meet you, Zorblax." },
            { "role": "user", "content": "What is my name?" },
        ]),
        Some("alice"),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let p0 = alone["usage"]["prompt_tokens"].as_u64().unwrap();
    let p1 = with_history["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        p1 > p0 + 10,
        "the client's history went into the prompt: {p0} vs {p1}"
    );
    assert_eq!(with_history["object"], "chat.completion");
    assert!(with_history["deep_recall"]["context"].is_array());
    // Only the new user message and the answer of each call are stored.
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"conv\") { edges { node { role content } } } }",
        json!({}),
    )
    .await;
    let msgs = data(&body)["messages"]["edges"].as_array().unwrap().clone();
    let users: Vec<&str> = msgs
        .iter()
        .filter(|m| m["node"]["role"] == "USER")
        .map(|m| m["node"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["What is my name?", "What is my name?"]);

    // Another user's memory cannot be chosen; a malformed body is a clear 400.
    let resp = complete(json!([{ "role": "user", "content": "hi" }]), Some("bob"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "FORBIDDEN");
    let resp = http
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(&alice)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = http
        .post(format!("{}/v1/embeddings", server.base))
        .json(&json!({ "input": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "REST needs credentials too");
    let (_, body) = gql(
        &server,
        Some(&token("bob", false, 600)),
        "{ me { memoryCount } }",
        json!({}),
    )
    .await;
    assert_eq!(
        data(&body)["me"]["memoryCount"],
        0,
        "nothing was written for bob"
    );
}
