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
    // The usage comes once, in a chunk of its own after the finish, with no choices.
    assert_eq!(r["stream"]["usage_choices"], json!([0]));
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

/// What OpenAI clients send beyond the plain case: SillyTavern's system note after the last
/// user message and blank history turns, an admin naming the user, a path that is not a
/// route, and a body larger than axum's own default cap.
#[tokio::test(flavor = "multi_thread")]
async fn what_openai_clients_send() {
    let store = Store::embedded();
    let server = Server::start(&store, &[], &[]);
    let http = reqwest::Client::new();
    let alice = token("alice", false, 600);
    let complete_as = |tok: &str, messages: Value| {
        http.post(format!("{}/v1/chat/completions", server.base))
            .bearer_auth(tok)
            .json(&json!({ "messages": messages, "max_tokens": 4, "session": "st" }))
            .send()
    };
    let complete = |messages: Value| complete_as(&alice, messages);
    let resp = complete(json!([
        { "role": "system", "content": "" },
        { "role": "user", "content": "My name is Zorblax." },
        { "role": "assistant", "content": null },
        { "role": "user", "content": "What is my name?" },
        { "role": "system", "content": "[Write the next reply only as Bob.]" },
    ]))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let answered: Value = resp.json().await.unwrap();
    assert_eq!(answered["object"], "chat.completion");
    // The system note went into the prompt: it is longer than without it (asked by a user
    // with no memories, as the first was).
    let without: Value = complete_as(
        &token("carol", false, 600),
        json!([
        { "role": "user", "content": "My name is Zorblax." },
        { "role": "user", "content": "What is my name?" },
        ]),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(
        answered["usage"]["prompt_tokens"].as_u64().unwrap()
            > without["usage"]["prompt_tokens"].as_u64().unwrap(),
        "{answered} {without}"
    );
    // The message answered (the last user message) is what was stored.
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"st\") { edges { node { role content } } } }",
        json!({}),
    )
    .await;
    let users: Vec<String> = data(&body)["messages"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["node"]["role"] == "USER")
        .map(|m| m["node"]["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users, ["What is my name?"]);
    // A prefill (an assistant message last) and no user message at all are clear 400s.
    for messages in [
        json!([{ "role": "user", "content": "hi" }, { "role": "assistant", "content": "Hel" }]),
        json!([{ "role": "system", "content": "You are Bob." }]),
    ] {
        let resp = complete(messages).await.unwrap();
        assert_eq!(resp.status(), 400);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "BAD_INPUT", "{err}");
    }

    // A path under /v1 that is no route is an OpenAI-shaped 404, not the web app.
    let resp = http
        .get(format!("{}/v1/models/no-such-model", server.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "NOT_FOUND", "{err}");

    // Where anonymous callers are let in, an admin may still name the user; a user may not.
    let embed = |tok: String| {
        http.post(format!("{}/v1/embeddings", server.base))
            .bearer_auth(tok)
            .json(&json!({ "input": "hello", "user": "bob" }))
            .send()
    };
    assert_eq!(embed(token("root", true, 600)).await.unwrap().status(), 200);
    assert_eq!(embed(alice.clone()).await.unwrap().status(), 403);

    // A `max_body_bytes` above axum's default 2 MiB is the limit that holds.
    let big_store = Store::embedded();
    let big = Server::start(
        &big_store,
        &["--no-chat"],
        &[("DEEP_RECALL__LIMITS__MAX_BODY_BYTES", "3145728")],
    );
    let padded = |bytes: usize| {
        http.post(format!("{}/v1/embeddings", big.base))
            .bearer_auth(&alice)
            .json(&json!({ "input": "hello", "padding": "x".repeat(bytes) }))
            .send()
    };
    assert_eq!(padded(2_600_000).await.unwrap().status(), 200);
    // Refused: a 413, or, when the server answers before the client has written the whole
    // body and closes, a write that fails (a loaded machine sees both).
    match padded(3_200_000).await {
        Ok(resp) => assert_eq!(resp.status(), 413),
        Err(e) => assert!(e.is_request() && !e.is_timeout(), "{e:?}"),
    }
    // On a new connection (the refused one was closed under the client's pool).
    let alive = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", big.base))
        .bearer_auth(&alice)
        .json(&json!({ "input": "hello" }))
        .send()
        .await
        .unwrap();
    assert_eq!(alive.status(), 200, "the server is still up");
}
