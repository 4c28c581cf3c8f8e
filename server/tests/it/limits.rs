//! Request limits: per-user and per-IP rates (over HTTP and over a WebSocket), query
//! complexity and body size.
use serde_json::json;

use super::fixtures::{Server, Store, Ws, code, gql, token};

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_query_limits() {
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[
            ("DEEP_RECALL__LIMITS__REQUESTS_PER_MINUTE", "3"),
            ("DEEP_RECALL__LIMITS__BURST", "2"),
            ("DEEP_RECALL__LIMITS__IP_REQUESTS_PER_MINUTE", "6"),
            ("DEEP_RECALL__LIMITS__IP_BURST", "5"),
            ("DEEP_RECALL__LIMITS__MAX_QUERY_COMPLEXITY", "20"),
            ("DEEP_RECALL__LIMITS__MAX_BODY_BYTES", "4096"),
        ],
    );
    let alice = token("alice", false, 600);
    let many: String = (0..30).map(|i| format!("a{i}: me {{ id }} ")).collect();
    let (_, body) = gql(&server, Some(&alice), &format!("{{ {many} }}"), json!({})).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("complex"),
        "{body}"
    );
    let big = "x".repeat(8192);
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", server.base))
        .bearer_auth(&alice)
        .json(&json!({ "query": format!("{{ search(query: \"{big}\") {{ score }} }}") }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413, "body limit");
    // One steady token and a burst of two: the complexity check above spent one (the 413
    // never reached the limiter), two more pass, the fourth is refused.
    for _ in 0..2 {
        let (status, _) = gql(&server, Some(&alice), "{ me { id } }", json!({})).await;
        assert_eq!(status, 200);
    }
    let (status, body) = gql(&server, Some(&alice), "{ me { id } }", json!({})).await;
    assert_eq!((status, code(&body)), (429, "RATE_LIMITED"), "{body}");
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", server.base))
        .bearer_auth(&alice)
        .json(&json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .unwrap();
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    // Another user has their own bucket, but the address has one too: six requests reached
    // the limiter from 127.0.0.1 (the refused ones included) when Carol asks.
    let (status, _) = gql(
        &server,
        Some(&token("bob", false, 600)),
        "{ me { id } }",
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = gql(
        &server,
        Some(&token("carol", false, 600)),
        "{ me { id } }",
        json!({}),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (429, "RATE_LIMITED"),
        "per-IP limit: {body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("address")
    );
    // Operations over a WebSocket are counted too.
    let mut ws = Ws::connect(
        &server,
        json!({ "authorization": format!("Bearer {alice}") }),
    )
    .await
    .unwrap();
    ws.subscribe("q", "{ me { id } }", json!({})).await;
    let m = ws.next().await.unwrap();
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{m}"
    );
}

/// Behind a trusted proxy each client has its own per-IP bucket (from `X-Forwarded-For`);
/// without one, the header is ignored and cannot be used to dodge the limit.
#[tokio::test(flavor = "multi_thread")]
async fn per_ip_limits_behind_a_trusted_proxy() {
    let store = Store::embedded();
    let env = [
        // One steady token and a burst of one: two requests per address, then refusals.
        ("DEEP_RECALL__LIMITS__IP_REQUESTS_PER_MINUTE", "1"),
        ("DEEP_RECALL__LIMITS__IP_BURST", "1"),
    ];
    let ask = |server: &Server, user: &'static str, from: &'static str| {
        let url = format!("{}/graphql", server.base);
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .bearer_auth(token(user, false, 600))
                .header("x-forwarded-for", from)
                .json(&json!({ "query": "{ me { id } }" }))
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }
    };
    let proxied = Server::start(
        &store,
        &["--no-chat", "--trusted-proxies", "127.0.0.1/32"],
        &env,
    );
    assert_eq!(ask(&proxied, "a", "203.0.113.1").await, 200);
    assert_eq!(ask(&proxied, "b", "203.0.113.1").await, 200);
    assert_eq!(
        ask(&proxied, "c", "203.0.113.1").await,
        429,
        "that client's bucket is empty"
    );
    assert_eq!(
        ask(&proxied, "d", "203.0.113.2").await,
        200,
        "another client has its own"
    );
    // A forged left-most entry does not help: the proxy appended the real address.
    assert_eq!(ask(&proxied, "e", "1.1.1.1, 203.0.113.1").await, 429);
    assert!(
        proxied.logs().contains("\"client\":\"203.0.113.2\""),
        "{}",
        proxied.logs()
    );
    drop(proxied);

    let direct = Server::start(&Store::embedded(), &["--no-chat"], &env);
    assert_eq!(ask(&direct, "a", "203.0.113.1").await, 200);
    assert_eq!(ask(&direct, "b", "203.0.113.2").await, 200);
    assert_eq!(
        ask(&direct, "c", "203.0.113.3").await,
        429,
        "one bucket for 127.0.0.1"
    );
}

/// A request the schema refuses (syntax, a wrong type, too complex however aliased) carries
/// `extensions.code` BAD_INPUT, over HTTP and over a WebSocket; searches hidden in aliases
/// count as the work they are.
#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_carry_a_code() {
    let store = Store::embedded();
    let server = Server::start(&store, &["--no-chat"], &[]);
    let alice = token("alice", false, 600);
    let searches: String = (0..12)
        .map(|i| format!("s{i}: search(query: \"q{i}\", topK: 1) {{ score }} "))
        .collect();
    // Listings that read past their page for metadata conditions are searches too.
    let scans: String = (0..12)
        .map(|i| {
            format!(
                "m{i}: memories(filter: {{ metadata: [{{ key: \"k\", op: EQ, value: {i} }}] }}) \
                 {{ pageInfo {{ hasNextPage }} }} "
            )
        })
        .collect();
    for (query, says) in [
        (format!("{{ {searches} }}"), "complex"),
        (format!("{{ {scans} }}"), "complex"),
        ("{ search(query: 1) { score } }".to_owned(), "String"),
        ("{ me {".to_owned(), ""),
        ("{ me { nosuchfield } }".to_owned(), "nosuchfield"),
    ] {
        let (_, body) = gql(&server, Some(&alice), &query, json!({})).await;
        assert_eq!(code(&body), "BAD_INPUT", "{query}: {body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(says),
            "{body}"
        );
    }
    // A thousand messages cost as a search: eleven such batches in one request are refused,
    // and nothing is stored.
    let batch: String = (0..1000)
        .map(|_| "{ session: \"s\", role: USER, content: \"x\" }")
        .collect::<Vec<_>>()
        .join(", ");
    let batches: String = (0..11)
        .map(|i| format!("b{i}: addMessages(messages: [{batch}]) {{ id }} "))
        .collect();
    let (_, body) = gql(
        &server,
        Some(&alice),
        &format!("mutation {{ {batches} }}"),
        json!({}),
    )
    .await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");
    let (_, body) = gql(&server, Some(&alice), "{ me { memoryCount } }", json!({})).await;
    assert_eq!(body["data"]["me"]["memoryCount"], 0, "{body}");
    // A few searches in one request are fine.
    let three: String = (0..3)
        .map(|i| {
            format!("s{i}: search(query: \"q{i}\", topK: 5) {{ score memory {{ content }} }} ")
        })
        .collect();
    let (status, body) = gql(&server, Some(&alice), &format!("{{ {three} }}"), json!({})).await;
    assert_eq!(status, 200);
    assert!(body["errors"].is_null(), "{body}");

    let mut ws = Ws::as_user(&server, &alice).await;
    ws.subscribe(
        "x",
        "subscription { memoryEvents { nosuchfield } }",
        json!({}),
    )
    .await;
    let m = ws.next().await.unwrap();
    // async-graphql sends a refused subscription as a result with errors.
    let errors = match m["type"].as_str() {
        Some("error") => &m["payload"],
        _ => &m["payload"]["errors"],
    };
    assert_eq!(errors[0]["extensions"]["code"], "BAD_INPUT", "{m}");
}

/// Refused credentials cost their address a request token, as any request does: guessing
/// keys or tokens is held to the per-IP rate on every door (GraphQL over HTTP and WebSocket,
/// REST, MCP), and once the address's tokens are spent a good token from it waits too.
#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_spend_the_address_tokens() {
    let store = Store::embedded();
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[
            // A steady token a minute and a burst of two: three requests, then refusals.
            ("DEEP_RECALL__LIMITS__IP_REQUESTS_PER_MINUTE", "1"),
            ("DEEP_RECALL__LIMITS__IP_BURST", "2"),
        ],
    );
    let guess = "a-guessed-token";
    for i in 0..3 {
        let (_, body) = gql(&server, Some(guess), "{ me { id } }", json!({})).await;
        assert_eq!(code(&body), "UNAUTHENTICATED", "guess {i}: {body}");
    }
    let (status, body) = gql(&server, Some(guess), "{ me { id } }", json!({})).await;
    assert_eq!((status, code(&body)), (429, "RATE_LIMITED"), "{body}");
    let client = reqwest::Client::new();
    for path in ["/v1/chat/completions", "/mcp"] {
        let resp = client
            .post(format!("{}{path}", server.base))
            .bearer_auth(guess)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({ "messages": [{ "role": "user", "content": "hi" }] }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 429, "{path}");
    }
    let refused = Ws::connect(
        &server,
        json!({ "authorization": format!("Bearer {guess}") }),
    )
    .await
    .err()
    .unwrap_or_default();
    assert!(refused.contains("RATE_LIMITED"), "{refused}");
    let alice = token("alice", false, 600);
    let (_, body) = gql(&server, Some(&alice), "{ me { id } }", json!({})).await;
    assert_eq!(code(&body), "RATE_LIMITED", "{body}");
}
