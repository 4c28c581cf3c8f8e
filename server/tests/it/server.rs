//! `deep-recall serve` as a real process on loopback, driven over HTTP, WebSocket
//! (graphql-transport-ws) and the OpenAI-compatible REST API, on both stores.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use recall_core::testing::{PgDb, models_dir};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a server keeps its data.
pub enum Store {
    Embedded(tempfile::TempDir),
    Postgres(PgDb),
}

impl Store {
    pub fn embedded() -> Self {
        Store::Embedded(tempfile::tempdir().unwrap())
    }

    pub async fn postgres() -> Self {
        Store::Postgres(PgDb::create().await)
    }

    fn args(&self) -> Vec<String> {
        match self {
            Store::Embedded(d) => vec!["--data-dir".into(), d.path().display().to_string()],
            Store::Postgres(db) => vec!["--database-url".into(), db.url.clone()],
        }
    }
}

impl Server {
    /// Starts `deep-recall serve` on a free port with the test JWT secret, `extra` flags and
    /// `env` variables, and waits until it listens.
    pub fn start(store: &Store, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deep-recall"));
        cmd.args(store.args())
            .arg("--models-dir")
            .arg(models_dir())
            .arg("--device")
            .arg("cpu")
            .args(["serve", "--bind", "127.0.0.1:0", "--jwt-secret", SECRET])
            .args(extra)
            .env_remove("DATABASE_URL")
            .env_remove("DEEP_RECALL_DATA_DIR")
            .env("DEEP_RECALL__LOG__FILTER", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start deep-recall serve");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("deep-recall: listening on ") else {
            let _ = child.wait();
            panic!("server did not start: {line:?}\n{}", stderr.lock().unwrap());
        };
        Server {
            base: addr.to_owned(),
            child,
            stderr,
        }
    }

    /// What the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Kills the process at once (no graceful shutdown).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }

    pub fn ws_url(&self) -> String {
        format!("{}/graphql", self.base.replacen("http", "ws", 1))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub` that expires in `ttl` seconds (negative: already expired).
pub fn token(sub: &str, admin: bool, ttl: i64) -> String {
    let mut claims = json!({ "sub": sub, "exp": (now() as i64 + ttl) });
    if admin {
        claims["role"] = json!("admin");
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// POSTs a GraphQL request; returns (status, body).
pub async fn gql(server: &Server, auth: Option<&str>, query: &str, vars: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/graphql", server.base))
        .json(&json!({ "query": query, "variables": vars }));
    if let Some(t) = auth {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The `extensions.code` of the first error.
pub fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// The data of a successful response.
pub fn data(body: &Value) -> &Value {
    assert!(body["errors"].is_null(), "errors: {body}");
    &body["data"]
}

const ADD: &str = "mutation($m: [MessageInput!]!) { addMessages(messages: $m) { id session } }";

async fn add(server: &Server, auth: &str, session: &str, content: &str) -> String {
    let (_, body) = gql(
        server,
        Some(auth),
        ADD,
        json!({ "m": [{ "session": session, "role": "USER", "content": content }] }),
    )
    .await;
    data(&body)["addMessages"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn memory_api_and_isolation(store: Store) {
    let server = Server::start(
        &store,
        &["--no-chat"],
        &[("DEEP_RECALL__CORS_ORIGINS", "[\"https://app.example\"]")],
    );
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);

    // CORS: the allowlisted origin is told it may call; another is not.
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("{}/graphql", server.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let ok = preflight("https://app.example").await.unwrap();
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://app.example")
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // Hostile credentials: nothing passes, and the code is UNAUTHENTICATED.
    let me = "{ me { id } }";
    let (status, body) = gql(&server, None, me, json!({})).await;
    assert_eq!((status, code(&body)), (401, "UNAUTHENTICATED"));
    let (status, body) = gql(&server, Some(&token("alice", false, -120)), me, json!({})).await;
    assert_eq!((status, code(&body)), (401, "UNAUTHENTICATED"), "expired");
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": "alice", "exp": now() + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-server-secret-at-all"),
    )
    .unwrap();
    let (status, _) = gql(&server, Some(&forged), me, json!({})).await;
    assert_eq!(status, 401, "forged");
    let (status, _) = gql(
        &server,
        Some("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."),
        me,
        json!({}),
    )
    .await;
    assert_eq!(status, 401, "alg none");
    // X-User-Id means nothing without --allow-anonymous.
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", server.base))
        .header("x-user-id", "alice")
        .json(&json!({ "query": me }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // Alice and Bob write.
    add(
        &server,
        &alice,
        "a1",
        "I moved to Lisbon in May and I love the tram rides.",
    )
    .await;
    add(
        &server,
        &alice,
        "a2",
        "My sister Ana is a marine biologist.",
    )
    .await;
    add(
        &server,
        &bob,
        "b1",
        "Bob's secret: I keep my savings in a Lisbon bank.",
    )
    .await;
    let (_, body) = gql(
        &server,
        Some(&bob),
        "mutation { addMemory(input: { content: \"Bob is allergic to peanuts\" }) { id kind } }",
        json!({}),
    )
    .await;
    let bob_memory = data(&body)["addMemory"]["id"].as_str().unwrap().to_owned();
    assert_eq!(data(&body)["addMemory"]["kind"], "FACT");

    // Search finds only the caller's memories.
    let search = "query($q: String!, $m: SearchMode) { search(query: $q, topK: 10, mode: $m) { score memory { id content } } }";
    for mode in ["HYBRID", "VECTOR", "TEXT"] {
        let (_, body) = gql(
            &server,
            Some(&alice),
            search,
            json!({ "q": "Lisbon savings bank peanuts", "m": mode }),
        )
        .await;
        let hits = data(&body)["search"].as_array().unwrap();
        assert!(!hits.is_empty(), "{mode}: {body}");
        for h in hits {
            let c = h["memory"]["content"].as_str().unwrap();
            assert!(
                !c.contains("Bob") && !c.contains("peanuts"),
                "{mode}: leaked {c}"
            );
        }
    }

    // Bob's ids, used by Alice, find nothing and change nothing.
    let (_, body) = gql(
        &server,
        Some(&alice),
        "query($id: ID!) { memory(id: $id) { id } }",
        json!({ "id": bob_memory }),
    )
    .await;
    assert!(data(&body)["memory"].is_null());
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation($id: ID!) { deleteMemory(id: $id) }",
        json!({ "id": bob_memory }),
    )
    .await;
    assert_eq!(code(&body), "NOT_FOUND");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation($id: ID!) { updateMemory(id: $id, input: { content: \"pwned\" }) { id } }",
        json!({ "id": bob_memory }),
    )
    .await;
    assert_eq!(code(&body), "NOT_FOUND");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "query { messages(session: \"b1\") { edges { node { content } } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        data(&body)["messages"]["edges"].as_array().unwrap().len(),
        0
    );
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { deleteSession(id: \"b1\") }",
        json!({}),
    )
    .await;
    assert_eq!(code(&body), "NOT_FOUND");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { deleteUserData(user: \"bob\") { existed } }",
        json!({}),
    )
    .await;
    assert_eq!(code(&body), "FORBIDDEN");
    let (_, body) = gql(
        &server,
        Some(&bob),
        "query($id: ID!) { memory(id: $id) { content } }",
        json!({ "id": bob_memory }),
    )
    .await;
    assert_eq!(
        data(&body)["memory"]["content"],
        "Bob is allergic to peanuts",
        "Bob's data is intact"
    );

    // Relay pagination over sessions.
    let page = "query($after: String) { sessions(first: 1, after: $after) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }";
    let (_, body) = gql(&server, Some(&alice), page, json!({})).await;
    let s = &data(&body)["sessions"];
    assert_eq!(s["pageInfo"]["hasNextPage"], true);
    let first = s["edges"][0]["node"]["id"].as_str().unwrap().to_owned();
    let (_, body) = gql(
        &server,
        Some(&alice),
        page,
        json!({ "after": s["pageInfo"]["endCursor"] }),
    )
    .await;
    let s = &data(&body)["sessions"];
    assert_eq!(s["pageInfo"]["hasNextPage"], false);
    let second = s["edges"][0]["node"]["id"].as_str().unwrap();
    let mut both = [first.as_str(), second];
    both.sort();
    assert_eq!(both, ["a1", "a2"]);

    // Bad input is refused with BAD_INPUT and writes nothing.
    let (status, body) = gql(
        &server,
        Some(&alice),
        ADD,
        json!({ "m": [
        { "session": "a1", "role": "USER", "content": "fine" },
        { "session": "a1", "role": "USER", "content": "" },
    ] }),
    )
    .await;
    assert_eq!((status, code(&body)), (200, "BAD_INPUT"));
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ messages(session: \"a1\") { edges { node { content } } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        data(&body)["messages"]["edges"].as_array().unwrap().len(),
        1,
        "nothing half-written"
    );
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ search(query: \"x\", topK: 0) { score } }",
        json!({}),
    )
    .await;
    assert_eq!(code(&body), "BAD_INPUT");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ memory(id: \"abc\") { id } }",
        json!({}),
    )
    .await;
    assert_eq!(code(&body), "BAD_INPUT");

    // Settings and data rights, audited.
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { updateSettings(settings: { tone: \"warm\" }) }",
        json!({}),
    )
    .await;
    assert_eq!(data(&body)["updateSettings"]["tone"], "warm");
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { exportMyData }",
        json!({}),
    )
    .await;
    let export = &data(&body)["exportMyData"];
    assert_eq!(export["user"]["id"], "alice");
    let text = export.to_string();
    assert!(
        text.contains("Lisbon in May") && !text.contains("peanuts") && !text.contains("savings")
    );
    let (_, body) = gql(
        &server,
        Some(&alice),
        "mutation { deleteMyData { existed messages memories } }",
        json!({}),
    )
    .await;
    let report = &data(&body)["deleteMyData"];
    assert_eq!(report["existed"], true);
    assert_eq!(report["messages"], 2);
    let (_, body) = gql(
        &server,
        Some(&alice),
        "{ me { memoryCount } search(query: \"Lisbon\") { score } }",
        json!({}),
    )
    .await;
    assert_eq!(data(&body)["me"]["memoryCount"], 0);
    assert_eq!(
        data(&body)["search"].as_array().unwrap().len(),
        0,
        "no cached results survive"
    );
    let (_, body) = gql(&server, Some(&bob), "{ me { memoryCount } }", json!({})).await;
    assert_eq!(data(&body)["me"]["memoryCount"], 2, "Bob keeps his");
    let admin = token("operator", true, 600);
    let (_, body) = gql(
        &server,
        Some(&admin),
        "{ auditLog(user: \"alice\") }",
        json!({}),
    )
    .await;
    let actions: Vec<&str> = data(&body)["auditLog"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"delete_user"), "{actions:?}");

    // Operations endpoints.
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{}/health", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = http
        .get(format!("{}/ready", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("deep_recall_requests_total{transport=\"graphql\""),
        "{metrics}"
    );
    assert!(metrics.contains("deep_recall_request_duration_seconds_bucket"));
    assert!(metrics.contains("outcome=\"UNAUTHENTICATED\""));

    // Logs are JSON with request ids and no message content.
    let logs = server.logs();
    assert!(logs.lines().any(|l| l.contains("\"request_id\"")), "{logs}");
    assert!(!logs.contains("Lisbon"), "message content in the logs");
    assert!(!logs.contains(SECRET), "the secret in the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_api_and_isolation_embedded() {
    memory_api_and_isolation(Store::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_api_and_isolation_postgres() {
    let store = Store::postgres().await;
    memory_api_and_isolation(store).await;
}

/// A graphql-transport-ws client.
struct Ws {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    async fn connect(server: &Server, init: Value) -> Result<Ws, String> {
        let mut req = server.ws_url().into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        socket
            .send(WsMessage::text(
                json!({ "type": "connection_init", "payload": init }).to_string(),
            ))
            .await
            .unwrap();
        let mut ws = Ws { socket };
        match ws.next().await {
            Ok(m) if m["type"] == "connection_ack" => Ok(ws),
            Ok(m) => Err(format!("unexpected {m}")),
            Err(e) => Err(e),
        }
    }

    async fn subscribe(&mut self, id: &str, query: &str, vars: Value) {
        self.socket
            .send(WsMessage::text(
                json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": vars } })
                    .to_string(),
            ))
            .await
            .unwrap();
    }

    /// The next protocol message (pings are answered); Err with the close reason.
    async fn next(&mut self) -> Result<Value, String> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(60), self.socket.next())
                .await
                .map_err(|_| "timed out".to_owned())?;
            match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "ping" {
                        let _ = self
                            .socket
                            .send(WsMessage::text(r#"{"type":"pong"}"#))
                            .await;
                        continue;
                    }
                    return Ok(v);
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(frame.map_or("closed".into(), |f| {
                        format!("{} {}", u16::from(f.code), f.reason)
                    }));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed".into()),
            }
        }
    }
}

const CHAT_SUB: &str = "subscription($i: ChatInput!) { chat(input: $i) { messageId index delta done result { text messageId replyId finishReason confidence model usage { promptTokens completionTokens totalTokens } latency { retrievalMs firstTokenMs totalMs } context { memoryId content score } } } }";

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
    let refused = Ws::connect(&server, json!({ "authorization": "Bearer not.a.token" })).await;
    assert!(refused.is_err(), "a bad token was accepted");
    let refused = Ws::connect(&server, json!({})).await;
    assert!(refused.is_err(), "no credentials were accepted");

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
    let mut ws = Ws::connect(
        &server,
        json!({ "authorization": format!("Bearer {alice}") }),
    )
    .await
    .unwrap();
    ws.subscribe(
        "c1",
        CHAT_SUB,
        json!({ "i": { "session": "s1", "message": "What is the capital of France?", "maxTokens": 24 } }),
    )
    .await;
    let mut text = String::new();
    let mut index = 0;
    let result = loop {
        let m = ws.next().await.unwrap();
        assert_eq!(m["type"], "next", "{m}");
        assert_eq!(m["id"], "c1");
        let e = &m["payload"]["data"]["chat"];
        assert_eq!(e["index"], index, "events in order");
        index += 1;
        if e["done"] == true {
            break e["result"].clone();
        }
        text += e["delta"].as_str().unwrap();
    };
    assert_eq!(ws.next().await.unwrap()["type"], "complete");
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

const JOB_FIELDS: &str = "id kind status progress result error attempts runAt startedAt finishedAt";

/// Two replicas over one Postgres database: memory events and job progress reach a
/// subscriber on the other replica; a scheduled deletion runs at its time, once; another
/// user's job ids are refused everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_deletion_and_job_progress_across_replicas() {
    let store = Store::postgres().await;
    let env = [("DEEP_RECALL__JOBS__POLL_MS", "100")];
    let a = Server::start(&store, &["--no-chat"], &env);
    let b = Server::start(&store, &["--no-chat"], &env);
    let alice = token("alice", false, 600);
    let bob = token("bob", false, 600);
    let init = |t: &str| json!({ "authorization": format!("Bearer {t}") });

    // A memory written through A is announced to Alice's subscriber on B.
    let mut on_b = Ws::connect(&b, init(&alice)).await.unwrap();
    on_b.subscribe(
        "ev",
        "subscription { memoryEvents { action memory { content } } }",
        json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    add(&a, &alice, "s", "Alice's spare key is under the blue pot").await;
    let ev = on_b.next().await.unwrap();
    assert_eq!(
        ev["payload"]["data"]["memoryEvents"]["memory"]["content"],
        "Alice's spare key is under the blue pot",
        "{ev}"
    );
    add(&a, &bob, "s", "Bob's bike is red").await;

    // Scheduling: bad times are refused.
    let schedule =
        format!("mutation($at: DateTime!) {{ scheduleDeleteMyData(at: $at) {{ {JOB_FIELDS} }} }}");
    let far = (chrono::Utc::now() + chrono::Duration::days(800)).to_rfc3339();
    let (_, body) = gql(&a, Some(&alice), &schedule, json!({ "at": far })).await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");
    let (_, body) = gql(&a, Some(&alice), &schedule, json!({ "at": "next tuesday" })).await;
    assert!(body["errors"].is_array(), "{body}");

    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (_, body) = gql(
        &a,
        Some(&alice),
        &schedule,
        json!({ "at": at.to_rfc3339() }),
    )
    .await;
    let job = data(&body)["scheduleDeleteMyData"].clone();
    assert_eq!(
        (job["kind"].as_str(), job["status"].as_str()),
        (Some("DELETE_USER"), Some("QUEUED"))
    );
    let id = job["id"].as_str().unwrap().to_owned();
    let (_, body) = gql(
        &a,
        Some(&alice),
        &schedule,
        json!({ "at": at.to_rfc3339() }),
    )
    .await;
    assert_eq!(
        code(&body),
        "BAD_INPUT",
        "one scheduled deletion at a time: {body}"
    );

    // Bob cannot see, cancel or watch Alice's job.
    let (_, body) = gql(
        &b,
        Some(&bob),
        "query($id: ID!) { job(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await;
    assert!(data(&body)["job"].is_null(), "{body}");
    let (_, body) = gql(
        &b,
        Some(&bob),
        "query { jobs { edges { node { id } } } }",
        json!({}),
    )
    .await;
    assert_eq!(data(&body)["jobs"]["edges"], json!([]));
    let cancel = "mutation($id: ID!) { cancelJob(id: $id) { id status } }";
    let (_, body) = gql(&b, Some(&bob), cancel, json!({ "id": id })).await;
    assert_eq!(code(&body), "NOT_FOUND", "{body}");
    let mut bob_ws = Ws::connect(&b, init(&bob)).await.unwrap();
    bob_ws
        .subscribe(
            "job",
            "subscription($id: ID!) { jobProgress(id: $id) { id status } }",
            json!({ "id": id }),
        )
        .await;
    let refused = bob_ws.next().await.unwrap();
    // (An execution error of a subscription arrives as a `next` with errors, then `complete`.)
    assert_eq!(refused["payload"]["data"], Value::Null, "{refused}");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{refused}"
    );
    assert_eq!(bob_ws.next().await.unwrap()["type"], "complete");

    // Bob schedules his own and changes his mind.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, body) = gql(&b, Some(&bob), &schedule, json!({ "at": later })).await;
    let bobs = data(&body)["scheduleDeleteMyData"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = gql(&a, Some(&bob), cancel, json!({ "id": bobs })).await;
    assert_eq!(data(&body)["cancelJob"]["status"], "CANCELLED");
    let (_, body) = gql(&a, Some(&bob), cancel, json!({ "id": bobs })).await;
    assert_eq!(code(&body), "BAD_INPUT", "{body}");

    // Alice watches her deletion on B while the replicas' runners race for it.
    let mut watch = Ws::connect(&b, init(&alice)).await.unwrap();
    watch
        .subscribe(
            "job",
            &format!("subscription($id: ID!) {{ jobProgress(id: $id) {{ {JOB_FIELDS} }} }}"),
            json!({ "id": id }),
        )
        .await;
    let mut states = Vec::new();
    let last = loop {
        let m = watch.next().await.unwrap();
        if m["type"] == "complete" {
            break None;
        }
        assert_eq!(m["type"], "next", "{m}");
        let j = m["payload"]["data"]["jobProgress"].clone();
        states.push(j["status"].as_str().unwrap().to_owned());
        if j["status"] == "SUCCEEDED" {
            assert_eq!(watch.next().await.unwrap()["type"], "complete");
            break Some(j);
        }
    };
    let last = last.unwrap_or_else(|| panic!("ended without success: {states:?}"));
    assert_eq!(
        states.first().map(String::as_str),
        Some("QUEUED"),
        "{states:?}"
    );
    assert!(states.contains(&"RUNNING".to_owned()), "{states:?}");
    assert_eq!(last["attempts"], 1, "ran once: {last}");
    assert_eq!(last["progress"], 1.0);
    assert_eq!(last["result"]["memories"], 1, "{last}");
    let started =
        chrono::DateTime::parse_from_rfc3339(last["startedAt"].as_str().unwrap()).unwrap();
    assert!(
        started >= at - chrono::Duration::milliseconds(1),
        "not before its time: {last}"
    );

    // Alice's data is gone from both replicas; Bob's is intact.
    for server in [&a, &b] {
        let (_, body) = gql(server, Some(&alice), "{ me { memoryCount } }", json!({})).await;
        assert_eq!(data(&body)["me"]["memoryCount"], 0);
        let (_, body) = gql(server, Some(&bob), "{ me { memoryCount } }", json!({})).await;
        assert_eq!(data(&body)["me"]["memoryCount"], 1);
    }
    let (_, body) = gql(
        &a,
        Some(&alice),
        "query { jobs { edges { node { id status } } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        data(&body)["jobs"]["edges"][0]["node"]["status"],
        "SUCCEEDED",
        "the record stays: {body}"
    );

    drop((a, b));
    if let Store::Postgres(db) = store {
        db.drop_db().await;
    }
}
