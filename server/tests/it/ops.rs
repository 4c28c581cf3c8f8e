//! Operations: health, readiness, metrics (with the query cache's hits and misses), graceful
//! shutdown, the committed schema, and the web UI's assets at the root.
use std::process::Command;

use serde_json::{Value, json};

use super::fixtures::{CHAT_SUB, Server, Store, Ws, add, data, gql, metrics, sample, token};

const SEARCH: &str =
    "query($q: String!) { search(query: $q, topK: 5) { score memory { content } } }";

async fn search(server: &Server, auth: &str, q: &str) -> Vec<String> {
    let (_, body) = gql(server, Some(auth), SEARCH, json!({ "q": q })).await;
    data(&body)["search"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["memory"]["content"].as_str().unwrap().to_owned())
        .collect()
}

fn cache(page: &str) -> (f64, f64) {
    (
        sample(page, "deep_recall_query_cache_hits_total"),
        sample(page, "deep_recall_query_cache_misses_total"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn operations_endpoints_and_the_query_cache() {
    let store = Store::embedded();
    // An hour's clock step: the two searches below cannot straddle a step.
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[("DEEP_RECALL__CACHE__CLOCK_STEP_SECS", "3600")],
    );
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);
    add(&server, &alice, "s", "I moved to Lisbon in May.").await;
    add(&server, &alice, "s", "My sister Ana is a marine biologist.").await;

    let http = reqwest::Client::new();
    let health = http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = http
        .get(format!("{}/ready", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["store"].as_str()),
        (Some("ready"), Some("embedded")),
        "{ready}"
    );

    // A repeated search is answered from the cache; a write by the user makes the next one
    // a miss, and its answer sees the write.
    let (hits0, misses0) = cache(&metrics(&server).await);
    let first = search(&server, &alice, "Where does she live?").await;
    assert!(first.iter().any(|c| c.contains("Lisbon")), "{first:?}");
    let (hits, misses) = cache(&metrics(&server).await);
    assert_eq!(
        (hits, misses),
        (hits0, misses0 + 1.0),
        "the first search is a miss"
    );
    let again = search(&server, &alice, "Where does she live?").await;
    assert_eq!(again, first);
    let (hits, misses) = cache(&metrics(&server).await);
    assert_eq!(
        (hits, misses),
        (hits0 + 1.0, misses0 + 1.0),
        "the repeat is a hit"
    );
    // Bob's same search is his own (a miss), and shows nothing of Alice's.
    assert!(
        search(&server, &bob, "Where does she live?")
            .await
            .is_empty()
    );
    let (hits, misses) = cache(&metrics(&server).await);
    assert_eq!((hits, misses), (hits0 + 1.0, misses0 + 2.0));
    add(
        &server,
        &alice,
        "t",
        "Before Lisbon I lived in Porto for years.",
    )
    .await;
    let after = search(&server, &alice, "Where does she live?").await;
    assert!(after.iter().any(|c| c.contains("Porto")), "{after:?}");
    let (hits, misses) = cache(&metrics(&server).await);
    assert_eq!(
        (hits, misses),
        (hits0 + 1.0, misses0 + 3.0),
        "a write makes the next search a miss"
    );

    // Requests are counted per operation and outcome, with latency histograms.
    let (status, _) = gql(&server, None, "{ me { id } }", json!({})).await;
    assert_eq!(status, 401);
    let page = metrics(&server).await;
    assert!(
        page.contains("deep_recall_requests_total{transport=\"graphql\""),
        "{page}"
    );
    assert!(page.contains("deep_recall_request_duration_seconds_bucket"));
    assert!(page.contains("outcome=\"UNAUTHENTICATED\""));
    assert!(
        page.contains("deep_recall_summary_failures_total 0"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_ends_cleanly() {
    let store = Store::embedded();
    let server = Server::start(&store, &["--no-chat"], &[]);
    let alice = token("alice", false, 600);
    add(&server, &alice, "s", "Something to keep.").await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    let server = Server::start(&store, &["--no-chat"], &[]);
    let (_, body) = gql(&server, Some(&alice), "{ me { memoryCount } }", json!({})).await;
    assert_eq!(data(&body)["me"]["memoryCount"], 1);
}

/// A server told to stop lets a chat answer under way over a WebSocket finish and be stored
/// (the HTTP server's own graceful shutdown does not wait for upgraded connections).
#[tokio::test(flavor = "multi_thread")]
async fn a_chat_under_way_finishes_when_the_server_stops() {
    let store = Store::embedded();
    let server = Server::start(&store, &[], &[]);
    let alice = token("alice", false, 600);
    let mut ws = Ws::as_user(&server, &alice).await;
    let input = json!({
        "session": "sea",
        "message": "Tell me a long story about the sea.",
        "maxTokens": 48,
    });
    ws.subscribe("c", CHAT_SUB, json!({ "i": input })).await;
    let first = ws.next().await.unwrap();
    assert_eq!(first["type"], "next", "{first}");
    server.signal("TERM");
    let mut done = first["payload"]["data"]["chat"]["done"] == true;
    let mut text = String::new();
    while !done {
        let m = ws.next().await.unwrap();
        assert_eq!(m["type"], "next", "the stream ended early: {m}");
        let e = &m["payload"]["data"]["chat"];
        done = e["done"] == true;
        if done {
            text = e["result"]["text"].as_str().unwrap().to_owned();
        }
    }
    assert!(!text.is_empty());
    let status = server.wait();
    assert!(status.success(), "{status:?}");
    // The answer was stored before the server went.
    let server = Server::start(&store, &["--no-chat"], &[]);
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"sea\") { edges { node { role content } } } }",
        json!({}),
    )
    .await;
    let roles: Vec<&str> = data(&body)["messages"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["USER", "ASSISTANT"], "{body}");
}

#[test]
fn committed_schema_matches_the_code() {
    let out = Command::new(env!("CARGO_BIN_EXE_deep-recall"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let sdl = String::from_utf8(out.stdout).unwrap();
    let committed =
        std::fs::read_to_string(recall_core::testing::repo_root().join("schema.graphql"))
            .unwrap_or_default();
    assert!(
        sdl == committed,
        "schema.graphql is out of date: run `cargo run -p recall-server -- schema > schema.graphql`"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_ui_is_served_at_the_root_or_explained() {
    let get = |url: String| async move {
        let r = reqwest::get(url).await.unwrap();
        let status = r.status().as_u16();
        let kind = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, kind, r.text().await.unwrap())
    };

    // Not built: the root says how to build it; the API is untouched.
    let store = Store::embedded();
    let missing = tempfile::tempdir().unwrap();
    let dir = missing.path().join("dist");
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[("DEEP_RECALL__WEB__DIR", dir.to_str().unwrap())],
    );
    let (status, _, page) = get(format!("{}/", server.base)).await;
    assert_eq!(status, 200);
    assert!(page.contains("npm run build"), "{page}");
    assert_eq!(get(format!("{}/some/page", server.base)).await.0, 404);
    assert_eq!(get(format!("{}/health", server.base)).await.0, 200);
    drop(server);

    // Built: its files, and index.html for the page's own routes.
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html><title>UI</title>").unwrap();
    std::fs::write(dir.join("assets/app.js"), "console.log('ui')").unwrap();
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[("DEEP_RECALL__WEB__DIR", dir.to_str().unwrap())],
    );
    let (status, kind, body) = get(format!("{}/", server.base)).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "<!doctype html><title>UI</title>")
    );
    assert!(kind.starts_with("text/html"), "{kind}");
    let (status, kind, body) = get(format!("{}/assets/app.js", server.base)).await;
    assert_eq!((status, body.as_str()), (200, "console.log('ui')"));
    assert!(kind.contains("javascript"), "{kind}");
    assert_eq!(
        get(format!("{}/sessions/abc", server.base)).await.2,
        "<!doctype html><title>UI</title>"
    );
    assert_eq!(get(format!("{}/health", server.base)).await.0, 200);
    let (status, _, _) = get(format!("{}/v1/models", server.base)).await;
    assert_eq!(status, 401, "the API keeps its routes");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_require_an_operator_or_move_to_their_own_address() {
    let store = Store::embedded();
    let status = |url: String, auth: Option<String>| async move {
        let mut req = reqwest::Client::new().get(url);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap().status().as_u16()
    };
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[("DEEP_RECALL__METRICS__REQUIRE_ADMIN", "true")],
    );
    let url = format!("{}/metrics", server.base);
    assert_eq!(status(url.clone(), None).await, 401);
    assert_eq!(
        status(url.clone(), Some(token("alice", false, 60))).await,
        403
    );
    assert_eq!(status(url, Some(token("op", true, 60))).await, 200);
    drop(server);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[("DEEP_RECALL__METRICS__BIND", &format!("127.0.0.1:{port}"))],
    );
    assert_eq!(status(format!("{}/metrics", server.base), None).await, 404);
    let page = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("deep_recall_active_streams"), "{page}");
}
