//! Crash safety: the server killed (SIGKILL) in the middle of ingest and of chat, on both
//! stores, trial after trial on the same data. After every restart each acknowledged write is
//! there whole (a batch of messages all or none, each message with its memory), no answer is
//! stored half-written, and the server starts clean. `DEEP_RECALL_CRASH_TRIALS` sets the
//! trials per case (3 here; `scripts/soak.sh` runs 20).
use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};

use super::fixtures::{CHAT_SUB, Server, Store, Ws, data, gql, token};

fn trials() -> usize {
    std::env::var("DEEP_RECALL_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

const ADD: &str = "mutation($m: [MessageInput!]!) { addMessages(messages: $m) { id } }";

/// Every message of a session (up to 1000), as (role, content).
async fn messages(server: &Server, auth: &str, session: &str) -> Vec<(String, String)> {
    let (_, body) = gql(
        server,
        Some(auth),
        "query($s: ID!) { messages(session: $s, first: 1000) { nodes { role content } } }",
        json!({ "s": session }),
    )
    .await;
    data(&body)["messages"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["role"].as_str().unwrap().to_owned(),
                n["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn memory_count(server: &Server, auth: &str) -> u64 {
    let (_, body) = gql(server, Some(auth), "{ me { memoryCount } }", json!({})).await;
    data(&body)["me"]["memoryCount"].as_u64().unwrap()
}

/// Writers send batches of five messages until the server dies under them; what was
/// acknowledged must all be there after a restart, and nothing else.
async fn ingest_trials(store: &Store) {
    let alice = token("alice", false, 3600);
    // (session, batch) of every acknowledged batch, over all trials.
    let mut acked: Vec<(String, usize)> = Vec::new();
    for trial in 0..trials() {
        let server = Server::start(
            store,
            &["--no-chat"],
            &[("DEEP_RECALL__LIMITS__REQUESTS_PER_MINUTE", "0")],
        );
        let base = server.base.clone();
        let writers = (0..4).map(|w| {
            let (base, alice) = (base.clone(), alice.clone());
            tokio::spawn(async move {
                let session = format!("t{trial}-w{w}");
                let mut done = Vec::new();
                let mut batch = 0;
                loop {
                    let m: Vec<Value> = (0..5)
                        .map(|i| json!({ "session": session, "role": "USER",
                            "content": format!("trial {trial} writer {w} batch {batch} message {i}") }))
                        .collect();
                    let sent = reqwest::Client::new()
                        .post(format!("{base}/graphql"))
                        .bearer_auth(&alice)
                        .json(&json!({ "query": ADD, "variables": { "m": m } }))
                        .send()
                        .await;
                    let Ok(resp) = sent else { break };
                    let Ok(body) = resp.json::<Value>().await else {
                        break;
                    };
                    if body["errors"].is_null() {
                        done.push((session.clone(), batch));
                        batch += 1;
                    } else {
                        // Refused (nothing written): the same batch again.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                done
            })
        });
        let writers: Vec<_> = writers.collect();
        // Kill at a different moment each trial, mid-flight.
        tokio::time::sleep(Duration::from_millis(400 + 250 * (trial as u64 % 5))).await;
        server.kill();
        for w in join_all(writers).await {
            acked.extend(w.unwrap());
        }
    }
    assert!(!acked.is_empty(), "some batches were acknowledged");
    eprintln!(
        "crash trials: {} kills during ingest, {} batches acknowledged",
        trials(),
        acked.len()
    );
    let server = Server::start(
        store,
        &["--no-chat"],
        &[("DEEP_RECALL__LIMITS__REQUESTS_PER_MINUTE", "0")],
    );
    let mut total = 0;
    for trial in 0..trials() {
        for w in 0..4 {
            let session = format!("t{trial}-w{w}");
            let stored = messages(&server, &alice, &session).await;
            // Whole batches only, in order, each acknowledged one present.
            assert_eq!(stored.len() % 5, 0, "a batch is all or none: {stored:?}");
            let batches = stored.len() / 5;
            let acked_here = acked.iter().filter(|(s, _)| *s == session).count();
            assert!(
                batches == acked_here || batches == acked_here + 1,
                "{session}: {batches} batches stored, {acked_here} acknowledged (one more may \
                 have been written as the answer was lost)"
            );
            for (i, (_, content)) in stored.iter().enumerate() {
                let expected =
                    format!("trial {trial} writer {w} batch {} message {}", i / 5, i % 5);
                assert_eq!(content, &expected);
            }
            total += stored.len() as u64;
        }
    }
    // Every stored message has its memory.
    assert_eq!(memory_count(&server, &alice).await, total);
}

/// A chat killed after its first piece: the acknowledged question is stored, and no answer
/// is stored half-written.
async fn chat_trials(store: &Store) {
    let bob = token("bob", false, 3600);
    for trial in 0..trials() {
        let server = Server::start(
            store,
            &[],
            &[("DEEP_RECALL__CHAT__SUMMARY_TRIGGER_MESSAGES", "0")],
        );
        let mut ws = Ws::as_user(&server, &bob).await;
        let question = format!("Trial {trial}: tell me a long story about a lighthouse.");
        ws.subscribe(
            "c",
            CHAT_SUB,
            json!({ "i": { "session": format!("chat-{trial}"), "message": question, "maxTokens": 200 } }),
        )
        .await;
        let first = ws.next().await.unwrap();
        assert!(
            first["payload"]["data"]["chat"]["messageId"].is_string(),
            "{first}"
        );
        server.kill();
        let server = Server::start(store, &["--no-chat"], &[]);
        let stored = messages(&server, &bob, &format!("chat-{trial}")).await;
        assert_eq!(
            stored,
            vec![("USER".to_owned(), question.clone())],
            "the question, and no half answer"
        );
        drop(server);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_during_ingest_and_chat_embedded() {
    let store = Store::embedded();
    ingest_trials(&store).await;
    chat_trials(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_during_ingest_and_chat_postgres() {
    let store = Store::postgres().await;
    ingest_trials(&store).await;
    chat_trials(&store).await;
}
