//! Chat: streamed over graphql-transport-ws (our client and the npm `graphql-ws` client) with
//! the user's memory and its events, stream limits, and durability when the server dies
//! mid-answer.
use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::fixtures::{CHAT_SUB, Server, Store, Ws, add, data, gql, mcp_tool, token};

#[tokio::test(flavor = "multi_thread")]
async fn chat_streams_over_graphql_ws_with_memory_and_events() {
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &[],
        &[("DEEP_RECALL__LIMITS__MAX_STREAMS_PER_USER", "1")],
    );
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);

    // A forged token is refused at connection_init.
    // The close reason starts with the code.
    let refused = Ws::connect(&server, json!({ "authorization": "Bearer not.a.token" })).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("UNAUTHENTICATED: invalid credentials")),
        "a bad token was accepted: {:?}",
        refused.err()
    );
    // A refusal whose message is longer than a close frame holds still reaches the client,
    // cut to fit (an oversized frame failed the connection without a reason).
    let refused = Ws::connect(
        &server,
        json!({ "authorization": format!("Bearer {alice}"), "userId": "bob" }),
    )
    .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.starts_with("1002 UNAUTHENTICATED: invalid credentials: X-User-Id")),
        "{:?}",
        refused.err()
    );
    let refused = Ws::connect(&server, json!({})).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("UNAUTHENTICATED: authentication required")),
        "no credentials were accepted: {:?}",
        refused.err()
    );

    // Memory events reach their owner only.
    let mut events = Ws::connect(
        &server,
        json!({ "authorization": format!("Bearer {alice}") }),
    )
    .await
    .unwrap();
    events
        .subscribe(
            "ev",
            "subscription { memoryEvents { action memoryId kind memory { content } } }",
            json!({}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    add(
        &server,
        &bob,
        "b",
        "Bob's thing that Alice must not hear about",
    )
    .await;
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { addMemory(input: { content: \"Alice's favourite city is Paris, the capital of France\" }) { id } }",
        json!({}),
    )
    .await;
    let id = data(&body)["addMemory"]["id"].as_str().unwrap().to_owned();
    let ev = events.next().await.unwrap();
    assert_eq!(ev["type"], "next", "{ev}");
    let e = &ev["payload"]["data"]["memoryEvents"];
    assert_eq!(
        (e["action"].as_str(), e["memoryId"].as_str()),
        (Some("ADDED"), Some(id.as_str())),
        "{ev}"
    );
    assert!(e["memory"]["content"].as_str().unwrap().contains("Paris"));

    // Chat streams ordered deltas, then the result with the memory it used.
    let mut ws = Ws::as_user(&server, &alice).await;
    let (deltas, result) = ws
        .chat(
            "c1",
            json!({ "session": "s1", "message": "What is the capital of France?", "maxTokens": 24 }),
        )
        .await;
    let text = deltas.concat();
    assert_eq!(
        result["text"].as_str().unwrap(),
        text,
        "deltas add up to the answer"
    );
    assert!(text.contains("Paris"), "{text}");
    assert!(result["usage"]["completionTokens"].as_u64().unwrap() > 0);
    assert!(
        result["latency"]["totalMs"].as_f64().unwrap()
            >= result["latency"]["firstTokenMs"].as_f64().unwrap()
    );
    assert!(result["confidence"].as_f64().unwrap() <= 0.0);
    let context = result["context"].as_array().unwrap();
    assert!(
        context.iter().any(|c| c["memoryId"] == id.as_str()),
        "{result}"
    );
    assert!(
        !result.to_string().contains("Bob"),
        "Bob's memory in Alice's context"
    );

    // Both turns are stored; the added events of the chat reach Alice's subscription.
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"s1\") { edges { node { id role content } } } }",
        json!({}),
    )
    .await;
    let msgs = data(&body)["messages"]["edges"].as_array().unwrap().clone();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["node"]["id"], result["messageId"]);
    assert_eq!(msgs[1]["node"]["role"], "ASSISTANT");
    assert_eq!(msgs[1]["node"]["content"], result["text"]);
    for _ in 0..2 {
        let ev = events.next().await.unwrap();
        assert_eq!(ev["payload"]["data"]["memoryEvents"]["action"], "ADDED");
    }

    // One stream per user at a time here: a second one is refused while the first runs, and
    // closing the first frees the slot.
    ws.subscribe(
        "long",
        CHAT_SUB,
        json!({ "i": { "session": "s3", "message": "Tell me a long story about the sea.", "maxTokens": 200 } }),
    )
    .await;
    let m = ws.next().await.unwrap();
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("next"), Some("long")),
        "{m}"
    );
    let mut second = Ws::connect(
        &server,
        json!({ "authorization": format!("Bearer {alice}") }),
    )
    .await
    .unwrap();
    second
        .subscribe(
            "c2",
            CHAT_SUB,
            json!({ "i": { "session": "s4", "message": "Hi", "maxTokens": 4 } }),
        )
        .await;
    let refused = second.next().await.unwrap();
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{refused}"
    );
    assert_eq!(second.next().await.unwrap()["type"], "complete");
    // Through MCP too, with the wait in the text the model reads.
    let hi = json!({ "session": "s4", "message": "Hi" });
    let (text, failed) = mcp_tool(&server, &alice, "chat", hi).await;
    assert!(failed, "{text}");
    assert!(
        text.starts_with("RATE_LIMITED: ") && text.ends_with(" (retry in 1s)"),
        "{text}"
    );
    ws.socket
        .send(WsMessage::text(
            json!({ "id": "long", "type": "complete" }).to_string(),
        ))
        .await
        .unwrap();
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        second
            .subscribe(
                "c3",
                CHAT_SUB,
                json!({ "i": { "session": "s4", "message": "Hi", "maxTokens": 2 } }),
            )
            .await;
        let m = second.next().await.unwrap();
        if m["payload"]["errors"].is_null() {
            freed = true;
            break;
        }
        assert_eq!(second.next().await.unwrap()["type"], "complete");
    }
    assert!(
        freed,
        "the slot was not freed when the subscription completed"
    );
    loop {
        let m = second.next().await.unwrap();
        if m["type"] == "complete" {
            break;
        }
    }
    drop(second);

    // The non-streaming mutation gives the same kind of result.
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { chat(input: { session: \"s2\", message: \"Say hello.\", maxTokens: 8 }) { text finishReason usage { completionTokens } } }",
        json!({}),
    )
    .await;
    let r = &data(&body)["chat"];
    assert!(r["usage"]["completionTokens"].as_u64().unwrap() <= 8);
    assert!(["STOP", "LENGTH"].contains(&r["finishReason"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_npm_graphql_ws_client_streams_chat() {
    let dir = recall_core::testing::repo_root().join("server/tests/graphql-ws-client");
    assert!(
        dir.join("node_modules/graphql-ws").is_dir(),
        "run `npm ci` in {} first (scripts/test.sh does)",
        dir.display()
    );
    let store = Store::embedded();
    let server = Server::start(&store, &[], &[]);
    let alice = token("alice", false, 600);
    let run = |tok: String| {
        let (dir, url) = (dir.clone(), server.ws_url());
        tokio::task::spawn_blocking(move || {
            let out = Command::new("node")
                .arg(dir.join("chat.mjs"))
                .arg(url)
                .arg(tok)
                .arg("What is the capital of France?")
                .output()
                .expect("run node");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let events = run(alice.clone()).await.unwrap();
    assert_eq!(events.last().unwrap()["complete"], true, "{events:?}");
    let chat: Vec<&Value> = events[..events.len() - 1]
        .iter()
        .map(|e| &e["data"]["chat"])
        .collect();
    for (i, e) in chat.iter().enumerate() {
        assert_eq!(e["index"], i, "in order: {events:?}");
    }
    let (last, deltas) = chat.split_last().unwrap();
    assert_eq!(last["done"], true);
    let text: String = deltas
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(last["result"]["text"].as_str().unwrap(), text);
    assert!(text.contains("Paris"), "{text}");

    let refused = run(token("alice", false, -120)).await.unwrap();
    assert!(
        refused[0]["error"].is_string(),
        "an expired token was accepted: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_messages_survive_a_kill_mid_stream() {
    let store = Store::embedded();
    let server = Server::start(&store, &[], &[]);
    let alice = token("alice", false, 600);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(&alice)
        .header("x-session-id", "crash")
        .json(&json!({
            "model": "SmolLM2",
            "stream": true,
            "max_tokens": 200,
            "messages": [{ "role": "user", "content": "Write a long story about a lighthouse keeper." }],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.matches("data: ").count().ge(&3) {
        let chunk = body.next().await.unwrap().unwrap();
        seen += &String::from_utf8_lossy(&chunk);
    }
    let first: Value =
        serde_json::from_str(seen.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    let acked: i64 = first["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("chatcmpl-")
        .parse()
        .unwrap();
    server.kill();

    let server = Server::start(&store, &["--no-chat"], &[]);
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"crash\") { edges { node { id role content } } } }",
        json!({}),
    )
    .await;
    let msgs = data(&body)["messages"]["edges"].as_array().unwrap().clone();
    assert_eq!(
        msgs.len(),
        1,
        "the acknowledged user message, and no half answer: {body}"
    );
    assert_eq!(msgs[0]["node"]["id"], acked.to_string());
    assert_eq!(
        msgs[0]["node"]["content"],
        "Write a long story about a lighthouse keeper."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_holds_up_nobody_else() {
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &[],
        &[("DEEP_RECALL__CHAT__SUMMARY_TRIGGER_MESSAGES", "0")],
    );
    // A slow client asks for a long answer, then does not read for a while.
    let mut slow = Ws::as_user(&server, &token("slow", false, 600)).await;
    slow.subscribe(
        "s",
        CHAT_SUB,
        json!({ "i": { "session": "s", "message": "Tell me a long story about the sea.", "maxTokens": 160 } }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile another user's answer streams in full, promptly.
    let started = std::time::Instant::now();
    let mut quick = Ws::as_user(&server, &token("quick", false, 600)).await;
    let (deltas, result) = tokio::time::timeout(
        Duration::from_secs(60),
        quick.chat(
            "q",
            json!({ "session": "q", "message": "Say hello.", "maxTokens": 12 }),
        ),
    )
    .await
    .expect("the other user's answer was held up");
    assert_eq!(result["text"].as_str().unwrap(), deltas.concat());
    let took = started.elapsed();
    // The slow client then reads everything, in order, to the final result.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut index = 0;
    let mut text = String::new();
    loop {
        let m = slow.next().await.unwrap();
        let e = &m["payload"]["data"]["chat"];
        assert_eq!(e["index"], index, "in order: {m}");
        if e["done"] == true {
            assert_eq!(e["result"]["text"].as_str().unwrap(), text);
            break;
        }
        text += e["delta"].as_str().unwrap();
        index += 1;
    }
    assert!(index > 12, "the long answer streamed: {index} deltas");
    assert!(took < Duration::from_secs(30), "{took:?}");
}
