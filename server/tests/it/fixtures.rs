//! What the server tests share: `deep-recall serve` as a real process on loopback (on either
//! store), tokens, GraphQL over HTTP, a graphql-transport-ws client, the metrics page, and a
//! fake OpenAI-compatible provider process.
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
    /// A database the test manages itself.
    Url(String),
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
            Store::Url(url) => vec!["--database-url".into(), url.clone()],
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

    /// Sends a signal (`HUP`, say) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
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

    /// Waits for the process to end by itself (after a signal, say).
    pub fn wait(mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }

    pub fn ws_url(&self) -> String {
        format!("{}/graphql", self.base.replacen("http", "ws", 1))
    }
}

pub fn now() -> u64 {
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

pub const ADD: &str = "mutation($m: [MessageInput!]!) { addMessages(messages: $m) { id session } }";

pub async fn add(server: &Server, auth: &str, session: &str, content: &str) -> String {
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

/// Calls an MCP tool over `/mcp` as `token` (streamable HTTP, JSON answers); the text of its
/// result and whether it is an error.
pub async fn mcp_tool(
    server: &Server,
    token: &str,
    tool: &str,
    arguments: Value,
) -> (String, bool) {
    let call = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": tool, "arguments": arguments }
    });
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/mcp", server.base))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&call)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let result = &answer["result"];
    let text = result["content"][0]["text"].as_str();
    let text = text.unwrap_or_else(|| panic!("no text in {answer}"));
    (text.to_owned(), result["isError"] == true)
}

/// A graphql-transport-ws client.
pub struct Ws {
    pub socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    pub async fn connect(server: &Server, init: Value) -> Result<Ws, String> {
        Ws::connect_to(&server.ws_url(), init).await
    }

    /// Connected to the WebSocket at `url` (for tasks that do not hold the `Server`).
    pub async fn connect_to(url: &str, init: Value) -> Result<Ws, String> {
        let mut req = url.into_client_request().unwrap();
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

    /// Connected with a bearer token in `connection_init`.
    pub async fn as_user(server: &Server, token: &str) -> Ws {
        Ws::connect(
            server,
            json!({ "authorization": format!("Bearer {token}") }),
        )
        .await
        .unwrap()
    }

    /// Runs a `chat` subscription to its end: the deltas (checked to come in order, under
    /// `id`), then the final result.
    pub async fn chat(&mut self, id: &str, input: Value) -> (Vec<String>, Value) {
        self.subscribe(id, CHAT_SUB, json!({ "i": input })).await;
        let mut deltas = Vec::new();
        loop {
            let m = self.next().await.unwrap();
            assert_eq!(
                (m["type"].as_str(), m["id"].as_str()),
                (Some("next"), Some(id)),
                "{m}"
            );
            let e = &m["payload"]["data"]["chat"];
            assert_eq!(e["index"], deltas.len(), "events in order: {m}");
            if e["done"] == true {
                let result = e["result"].clone();
                assert_eq!(self.next().await.unwrap()["type"], "complete");
                return (deltas, result);
            }
            deltas.push(e["delta"].as_str().unwrap().to_owned());
        }
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, vars: Value) {
        self.socket
            .send(WsMessage::text(
                json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": vars } })
                    .to_string(),
            ))
            .await
            .unwrap();
    }

    /// Ends the subscription `id` (the client's `complete`).
    pub async fn complete(&mut self, id: &str) {
        self.socket
            .send(WsMessage::text(
                json!({ "id": id, "type": "complete" }).to_string(),
            ))
            .await
            .unwrap();
    }

    /// The next protocol message (pings are answered); Err with the close reason. While
    /// nothing comes, the client pings every 20 s, as graphql-ws clients do (the server
    /// closes a connection silent for 60 s: a long job on a busy machine would lose it), and
    /// gives up after 5 minutes.
    pub async fn next(&mut self) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let msg = match tokio::time::timeout(Duration::from_secs(20), self.socket.next()).await
            {
                Ok(msg) => msg,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    let _ = self
                        .socket
                        .send(WsMessage::text(r#"{"type":"ping"}"#))
                        .await;
                    continue;
                }
                Err(_) => return Err("timed out".into()),
            };
            match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "pong" {
                        continue;
                    }
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

pub const CHAT_SUB: &str = "subscription($i: ChatInput!) { chat(input: $i) { messageId index delta done result { text messageId replyId finishReason confidence model usage { promptTokens completionTokens totalTokens } latency { retrievalMs firstTokenMs totalMs } context { memoryId content score } } } }";

/// The Python of the test venv: `DEEP_RECALL_TEST_PYTHON` (scripts/test.sh sets it from
/// scripts/test-venv.sh), else `python3` if it has the `openai` package.
pub fn python() -> String {
    if let Ok(p) = std::env::var("DEEP_RECALL_TEST_PYTHON") {
        return p;
    }
    let ok = Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the openai SDK is missing: run scripts/test-venv.sh and set DEEP_RECALL_TEST_PYTHON to \
         the python it prints (scripts/test.sh does both)"
    );
    "python3".into()
}

/// The server's metrics page.
pub async fn metrics(server: &Server) -> String {
    reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample on the metrics page (`name` with its labels, as written there);
/// 0 when it is absent.
pub fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `server/tests/fake_openai.py` as a running process: an OpenAI-compatible provider that
/// streams, fails on demand and logs what it was sent. Killed when dropped.
pub struct FakeProvider {
    child: Child,
    /// Its base URL (`http://127.0.0.1:PORT/v1`).
    pub url: String,
    log: tempfile::NamedTempFile,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FakeProvider {
    /// Starts it; the first `fail_first` chat requests fail with 503.
    pub fn start(fail_first: u32) -> FakeProvider {
        let log = tempfile::NamedTempFile::new().unwrap();
        let script = recall_core::testing::repo_root().join("server/tests/fake_openai.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(log.path())
            .args(["--fail-first", &fail_first.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fake provider");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("http://"), "fake provider: {line:?}");
        FakeProvider {
            child,
            url: line.trim().to_owned(),
            log,
        }
    }

    /// Makes the next `n` chat requests fail with 503 (-1: all of them, 0: none).
    pub async fn fail(&self, n: i32) {
        self.control(json!({ "fail": n })).await;
    }

    /// Makes every chat answer wait `seconds` first (0: none).
    pub async fn delay(&self, seconds: f64) {
        self.control(json!({ "delay": seconds })).await;
    }

    async fn control(&self, body: Value) {
        let control = self.url.trim_end_matches("/v1").to_owned() + "/control";
        let resp = reqwest::Client::new()
            .post(control)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }

    /// The embedding requests it received so far: `{path, authorization, body}`.
    pub fn embedding_requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log.path())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["path"] == "/v1/embeddings")
            .collect()
    }

    /// The chat requests it received so far: `{path, authorization, body}`.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log.path())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["path"] == "/v1/chat/completions")
            .collect()
    }
}
