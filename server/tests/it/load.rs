//! Load: many chat subscriptions at once over graphql-ws, each from its own user: no delta
//! dropped, repeated or out of order, every stream ends with its result, and meanwhile a
//! checker user's searches never return anyone else's words.
//! `DEEP_RECALL_LOAD_STREAMS` sets how many (100 by default). The chat model is the tiny test
//! model (the streaming machinery under load, in CI's time on 2 cores); with
//! `DEEP_RECALL_LOAD_MODEL=packaged` it is the packaged SmolLM2 (`scripts/soak.sh`, for the
//! time-to-first-token figures).
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;

use super::fixtures::{CHAT_SUB, Server, Store, Ws, data, gql, token};

fn streams() -> usize {
    std::env::var("DEEP_RECALL_LOAD_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

#[tokio::test(flavor = "multi_thread")]
async fn many_chat_streams_at_once_and_isolation_under_load() {
    let store = Store::embedded();
    let models = tempfile::tempdir().unwrap();
    let packaged = std::env::var("DEEP_RECALL_LOAD_MODEL").is_ok_and(|m| m == "packaged");
    let tiny = recall_core::testing::tiny::write_gguf(models.path(), "llama", "llama");
    let model_env = if packaged {
        ("DEEP_RECALL__CHAT__MAX_SEQUENCES", "8")
    } else {
        ("DEEP_RECALL__CHAT__MODEL", tiny.to_str().unwrap())
    };
    let server = Server::start(
        &store,
        &[],
        &[
            model_env,
            ("DEEP_RECALL__CHAT__SUMMARY_TRIGGER_MESSAGES", "0"),
            ("DEEP_RECALL__CHAT__QUEUE_CAPACITY", "256"),
        ],
    );
    let n = streams();
    let checker = token("checker", false, 3600);
    let (_, body) = gql(
        &server,
        Some(&checker),
        "mutation { addMemory(input: { content: \"The checker's own note about gardening.\" }) { id } }",
        json!({}),
    )
    .await;
    data(&body);

    let started = Instant::now();
    let runs = (0..n).map(|i| {
        let t = token(&format!("load-{i}"), false, 3600);
        let url = server.ws_url();
        tokio::spawn(async move {
            let mut ws = Ws::connect_to(&url, json!({ "authorization": format!("Bearer {t}") }))
                .await
                .unwrap();
            let asked = Instant::now();
            ws.subscribe(
                "c",
                CHAT_SUB,
                json!({ "i": { "session": "load", "message": format!("My secret word is zebra{i}. Say hi."), "maxTokens": 8 } }),
            )
            .await;
            let mut first_token = None;
            let mut text = String::new();
            let mut index = 0;
            loop {
                let m = ws.next().await.expect("the stream went on");
                assert_eq!(m["type"], "next", "{m}");
                let e = &m["payload"]["data"]["chat"];
                assert_eq!(e["index"], index, "no delta dropped, repeated or reordered: {m}");
                index += 1;
                if e["done"] == true {
                    assert_eq!(e["result"]["text"].as_str().unwrap(), text);
                    break;
                }
                first_token.get_or_insert_with(|| asked.elapsed());
                text += e["delta"].as_str().unwrap();
            }
            first_token.unwrap_or_else(|| asked.elapsed())
        })
    });
    let runs: Vec<_> = runs.collect();

    // The checker searches while the streams run: never another user's secret.
    let mut searches = 0;
    while runs.iter().any(|r| !r.is_finished()) {
        let (_, body) = gql(
            &server,
            Some(&checker),
            "{ search(query: \"secret word zebra\", topK: 20) { memory { content } } }",
            json!({}),
        )
        .await;
        let found = data(&body)["search"].to_string();
        assert!(
            !found.contains("zebra"),
            "another user's memory leaked: {found}"
        );
        searches += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut firsts: Vec<Duration> = Vec::new();
    for r in join_all(runs).await {
        firsts.push(r.unwrap());
    }
    firsts.sort();
    let p95 = firsts[(firsts.len() * 95 / 100).min(firsts.len() - 1)];
    eprintln!(
        "load: {n} chat streams, all complete in {:.1} s; time to first token p50 {:.0} ms, p95 {:.0} ms; {searches} isolation checks",
        started.elapsed().as_secs_f64(),
        firsts[firsts.len() / 2].as_secs_f64() * 1000.0,
        p95.as_secs_f64() * 1000.0,
    );
}
